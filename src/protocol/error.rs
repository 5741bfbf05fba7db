use thiserror::Error;

/// Why an inbound text could not be turned into a [`Frame`](super::Frame) or a body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The text is not JSON at all (or is truncated).
    #[error("not JSON: {reason}")]
    NotJson {
        /// What the JSON parser reported.
        reason: String,
    },
    /// The text is JSON, but not an object (`null`, an array, a number...).
    #[error("expected a JSON object, found {found}")]
    NotAnObject {
        /// The JSON kind that was found instead.
        found: &'static str,
    },
    /// A known key holds a value that cannot be coerced to its type.
    #[error("field `{field}`: expected {expected}, found {found}")]
    BadField {
        /// The JSON key, exactly as on the wire.
        field: &'static str,
        /// What the field must hold.
        expected: &'static str,
        /// A short rendering of what it held.
        found: String,
    },
    /// A control body inside `dataContent` is missing or malformed.
    #[error("bad {body} body: {reason}")]
    BadBody {
        /// The body's name, such as `PLoginInfo`.
        body: &'static str,
        /// What was wrong with it.
        reason: String,
    },
}

/// Why a frame could not be encoded for the wire.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The encoded frame is larger than the limit; nothing should be written.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The encoded length in bytes.
        len: usize,
        /// The limit that was checked.
        limit: usize,
    },
}
