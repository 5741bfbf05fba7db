//! The frame (`Protocal` upstream) and its JSON codec.

use serde::Serialize;
use serde_json::{Map, Value};

use super::body::{ErrorResponse, KeepAlive, KickoutInfo, LoginInfo, LoginResponse, encode_body};
use super::error::{DecodeError, EncodeError};
use super::kind::{ClientKind, Dialect, ServerKind, wire};
use super::lenient::{Coerced, replace_lone_surrogates, to_bool, to_int, to_long, to_string};

/// The largest text frame upstream accepts: 65536 bytes of payload.
pub const MAX_FRAME_BYTES: usize = 65536;

/// The user id that stands for the server in `from` and `to`.
pub const SERVER_ID: &str = "0";

/// The id upstream writes where no user applies (`to` of an error frame).
pub const UNSET_ID: &str = "-1";

/// One protocol frame: a JSON object in one WebSocket text frame.
///
/// Encoding writes the keys in upstream order and leaves out `None` fields, so frames
/// we build are byte-identical to upstream's. Decoding is as tolerant as upstream:
/// unknown keys are ignored, a missing or `null` field takes the value upstream gives
/// it (0, `false` or `None`), and values are coerced as upstream's Gson does:
///
/// - a string field takes a number or boolean as its JSON text (`42` is `"42"`);
/// - an integer field takes an integral number (`3.0` is 3) or a string holding one
///   (`"12"`, `" 12 "`, `"3.0"`, `"1e3"`); `type` and `typeu` must fit in 32 bits;
/// - a boolean field takes the strings `"true"` and `"false"`, in any case.
///
/// Anything else is a [`DecodeError::BadField`] naming the field. The bodies inside
/// `dataContent` follow the same rules (see [`decode_body`](super::decode_body)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, bevy::prelude::Reflect)]
pub struct Frame {
    /// Whether the frame crossed the server-to-server bridge.
    pub bridge: bool,
    /// The type number; its meaning comes from [`ClientKind`] or [`Dialect::server_kind`].
    #[serde(rename = "type")]
    pub ty: i32,
    /// The payload: the app's string for data, a JSON document as a string for
    /// control frames, the acked fingerprint for ACKs.
    #[serde(rename = "dataContent", skip_serializing_if = "Option::is_none")]
    pub data_content: Option<String>,
    /// The sender's user id (`"0"` is the server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The receiver's user id (`"0"` is the server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The fingerprint that identifies a QoS message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fp: Option<String>,
    /// Whether the receiver must ACK the frame.
    #[serde(rename = "QoS")]
    pub qos: bool,
    /// The app-defined sub-type, passed through untouched.
    pub typeu: i32,
    /// The server timestamp in ms, or -1.
    pub sm: i64,
    /// Extension (`docs/PROTOCOL-EXTENSIONS.md`): the server's id of a stored message
    /// (increasing per room, per pair of users, or per offline box). Left out when
    /// `None`, so upstream frames keep their bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mid: Option<i64>,
    /// Extension: on the server's ACK, the message was stored for a receiver who is
    /// offline (not relayed to a device). Left out when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stored: bool,
}

impl Frame {
    /// A frame of type `ty` with upstream's builder defaults: no bridge, no QoS,
    /// `typeu` and `sm` of -1, `from` and `to` set.
    pub fn new(ty: i32, from: impl Into<String>, to: impl Into<String>) -> Self {
        Self {
            bridge: false,
            ty,
            data_content: None,
            from: Some(from.into()),
            to: Some(to.into()),
            fp: None,
            qos: false,
            typeu: -1,
            sm: -1,
            mid: None,
            stored: false,
        }
    }

    fn with_content(mut self, content: impl Into<String>) -> Self {
        self.data_content = Some(content.into());
        self
    }

    /// A login (type 0) carrying `info`.
    pub fn login(info: &LoginInfo) -> Self {
        Self::new(wire::LOGIN, info.login_user_id.clone(), SERVER_ID)
            .with_content(encode_body(info))
    }

    /// A keepalive (type 1).
    pub fn keepalive(user_id: &str) -> Self {
        Self::new(wire::KEEP_ALIVE, user_id, SERVER_ID).with_content(encode_body(&KeepAlive {}))
    }

    /// A logout (type 3), which has no body.
    pub fn logout(user_id: &str) -> Self {
        Self::new(wire::LOGOUT, user_id, SERVER_ID)
    }

    /// Application data (type 2). A QoS frame gets `fp`, or a new fingerprint when
    /// `fp` is `None`; a frame without QoS keeps `fp` only when one is given.
    pub fn data(
        from: &str,
        to: &str,
        content: impl Into<String>,
        qos: bool,
        fp: Option<String>,
        typeu: i32,
    ) -> Self {
        let mut frame = Self::new(wire::COMMON_DATA, from, to).with_content(content);
        frame.qos = qos;
        frame.fp = match (qos, fp) {
            (_, Some(fp)) => Some(fp),
            (true, None) => Some(super::new_fingerprint()),
            (false, None) => None,
        };
        frame.typeu = typeu;
        frame
    }

    /// The ACK (type 4) of a QoS frame this side received: sent by the receiver to
    /// the original sender, the acked fingerprint as content, the bridge flag copied.
    pub fn ack_of(received: &Frame) -> Option<Self> {
        let fp = received.fp.clone()?;
        let mut ack = Self::new(
            wire::RECEIVED,
            received.to.clone().unwrap_or_default(),
            received.from.clone().unwrap_or_default(),
        )
        .with_content(fp);
        ack.bridge = received.bridge;
        Some(ack)
    }

    /// An ACK (type 4 or 54, by dialect) of `fp` from `from` to `to`, written by the server.
    pub fn server_ack(dialect: Dialect, from: &str, to: &str, fp: &str) -> Self {
        Self::new(dialect.server_type(ServerKind::Ack), from, to).with_content(fp)
    }

    /// An echo request (type 5).
    pub fn echo(from: &str, content: impl Into<String>) -> Self {
        Self::new(wire::ECHO, from, SERVER_ID).with_content(content)
    }

    /// The server's login reply (type 50). A failure goes to `"-1"` as upstream does.
    pub fn login_response(to: &str, response: &LoginResponse) -> Self {
        let to = if response.code == 0 { to } else { UNSET_ID };
        Self::new(wire::RESPONSE_LOGIN, SERVER_ID, to).with_content(encode_body(response))
    }

    /// The server's keepalive reply (type 51).
    pub fn keepalive_response(to: &str) -> Self {
        Self::new(wire::RESPONSE_KEEP_ALIVE, SERVER_ID, to).with_content(encode_body(&KeepAlive {}))
    }

    /// The server's error frame (type 52), always to `"-1"` as upstream does.
    pub fn error_response(error: &ErrorResponse) -> Self {
        Self::new(wire::RESPONSE_FOR_ERROR, SERVER_ID, UNSET_ID).with_content(encode_body(error))
    }

    /// A room request (type 100, an extension), from `from` to the server.
    pub fn room_request(from: &str, request: &super::RoomRequest) -> Self {
        Self::new(wire::ROOM_REQUEST, from, SERVER_ID).with_content(encode_body(request))
    }

    /// A room reply or event (type 150, an extension), from the server to `to`.
    pub fn room_reply(to: &str, reply: &super::RoomReply) -> Self {
        Self::new(wire::ROOM_REPLY, SERVER_ID, to).with_content(encode_body(reply))
    }

    /// The server's kickout (type 54 in v6, 55 in the seed dialect).
    pub fn kickout(dialect: Dialect, to: &str, info: &KickoutInfo) -> Self {
        Self::new(dialect.server_type(ServerKind::Kickout), SERVER_ID, to)
            .with_content(encode_body(info))
    }

    /// What this frame means when a client sent it.
    pub fn client_kind(&self) -> ClientKind {
        ClientKind::from_type(self.ty)
    }

    /// What this frame means when the server sent it, in `dialect`.
    pub fn server_kind(&self, dialect: Dialect) -> ServerKind {
        dialect.server_kind(self.ty)
    }

    /// `from`, or `""` when absent.
    pub fn from_id(&self) -> &str {
        self.from.as_deref().unwrap_or("")
    }

    /// `to`, or `""` when absent.
    pub fn to_id(&self) -> &str {
        self.to.as_deref().unwrap_or("")
    }

    /// `dataContent`, or `""` when absent.
    pub fn content(&self) -> &str {
        self.data_content.as_deref().unwrap_or("")
    }

    /// The JSON text of this frame, checked against [`MAX_FRAME_BYTES`].
    pub fn encode(&self) -> Result<String, EncodeError> {
        self.encode_with_limit(MAX_FRAME_BYTES)
    }

    /// The JSON text of this frame, checked against `limit` bytes.
    pub fn encode_with_limit(&self, limit: usize) -> Result<String, EncodeError> {
        let text = self.to_json();
        if text.len() > limit {
            return Err(EncodeError::TooLarge {
                len: text.len(),
                limit,
            });
        }
        Ok(text)
    }

    /// The JSON text of this frame with no size check.
    pub fn to_json(&self) -> String {
        // A struct of strings, integers and booleans always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses one frame, as tolerantly as upstream and no more.
    ///
    /// A lone UTF-16 surrogate escape in any string decodes to U+FFFD (see
    /// [`replace_lone_surrogates`](super::replace_lone_surrogates)); values are
    /// coerced as [`Frame`] describes.
    ///
    /// ```
    /// use bevy_im::protocol::Frame;
    /// let f = Frame::decode(r#"{"type":"2","dataContent":"half \ud83d here","from":42}"#).unwrap();
    /// assert_eq!((f.ty, f.content(), f.from_id()), (2, "half \u{FFFD} here", "42"));
    /// ```
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let text = replace_lone_surrogates(text);
        let value: Value = serde_json::from_str(&text).map_err(|e| DecodeError::NotJson {
            reason: e.to_string(),
        })?;
        Self::from_value(value)
    }

    /// Builds a frame from a parsed JSON value (see [`Frame::decode`]).
    pub fn from_value(value: Value) -> Result<Self, DecodeError> {
        let Value::Object(mut map) = value else {
            return Err(DecodeError::NotAnObject {
                found: json_kind(&value),
            });
        };
        Ok(Self {
            bridge: take(&mut map, "bridge", to_bool)?.unwrap_or(false),
            ty: take(&mut map, "type", to_int)?.unwrap_or(0),
            data_content: take(&mut map, "dataContent", to_string)?,
            from: take(&mut map, "from", to_string)?,
            to: take(&mut map, "to", to_string)?,
            fp: take(&mut map, "fp", to_string)?,
            qos: take(&mut map, "QoS", to_bool)?.unwrap_or(false),
            typeu: take(&mut map, "typeu", to_int)?.unwrap_or(0),
            sm: take(&mut map, "sm", to_long)?.unwrap_or(0),
            mid: take(&mut map, "mid", to_long)?,
            stored: take(&mut map, "stored", to_bool)?.unwrap_or(false),
        })
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Takes `field` out of `map` and coerces it with `coerce` (see `lenient.rs`).
fn take<T>(
    map: &mut Map<String, Value>,
    field: &'static str,
    coerce: fn(Value) -> Coerced<T>,
) -> Result<Option<T>, DecodeError> {
    let Some(v) = map.remove(field) else {
        return Ok(None);
    };
    coerce(v).map_err(|e| DecodeError::BadField {
        field,
        expected: e.expected,
        found: e.found_short(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURED_DATA: &str = r#"{"bridge":false,"type":2,"dataContent":"hi bob (QoS)","from":"alice","to":"bob","fp":"98a4e2bf-a4a8-4ed5-aadf-bf4c34825e41","QoS":true,"typeu":7,"sm":-1}"#;

    #[test]
    fn a_captured_frame_round_trips_byte_for_byte() {
        let f = Frame::decode(CAPTURED_DATA).unwrap();
        assert_eq!(f.ty, 2);
        assert_eq!(f.typeu, 7);
        assert!(f.qos);
        assert_eq!(f.encode().unwrap(), CAPTURED_DATA);
    }

    #[test]
    fn missing_fields_take_upstreams_zero_values() {
        let f = Frame::decode("{}").unwrap();
        assert_eq!(f.ty, 0, "an empty object is a login, as upstream reads it");
        assert_eq!((f.bridge, f.qos, f.typeu, f.sm), (false, false, 0, 0));
        assert_eq!(
            (f.from, f.to, f.fp, f.data_content),
            (None, None, None, None)
        );
    }

    #[test]
    fn numbers_and_booleans_given_as_strings_are_coerced() {
        let f =
            Frame::decode(r#"{"type":"5","QoS":"true","typeu":"7","sm":"12","from":42}"#).unwrap();
        assert_eq!((f.ty, f.qos, f.typeu, f.sm), (5, true, 7, 12));
        assert_eq!(f.from.as_deref(), Some("42"));
    }

    #[test]
    fn lone_surrogate_escapes_decode_to_replacement_characters() {
        let f = Frame::decode(
            r#"{"bridge":false,"type":2,"dataContent":"half \ud83d here","from":"u\udc00","to":"\ud800\u0041","fp":"\ud83d\ude00","QoS":true,"typeu":0,"sm":-1}"#,
        )
        .unwrap();
        assert_eq!(f.content(), "half \u{FFFD} here");
        assert_eq!(f.from_id(), "u\u{FFFD}");
        assert_eq!(f.to_id(), "\u{FFFD}A");
        assert_eq!(f.fp.as_deref(), Some("😀"), "a pair stays one character");
        // Re-encoded, the text is valid Unicode and decodes to the same frame.
        assert_eq!(Frame::decode(&f.to_json()), Ok(f));
    }

    #[test]
    fn a_body_escape_inside_the_frame_string_is_decoded_by_the_body() {
        // The frame's string holds `\ud83d` as six characters (its backslash escaped);
        // the body's parser sees the escape.
        let f = Frame::decode(
            r#"{"type":0,"dataContent":"{\"loginUserId\":\"a\\ud83d\",\"firstLoginTime\":\"5\"}"}"#,
        )
        .unwrap();
        assert_eq!(
            f.content(),
            r#"{"loginUserId":"a\ud83d","firstLoginTime":"5"}"#
        );
        let info: LoginInfo = crate::protocol::decode_body(f.data_content.as_deref()).unwrap();
        assert_eq!(
            (info.login_user_id.as_str(), info.first_login_time),
            ("a\u{FFFD}", 5)
        );
    }

    #[test]
    fn integral_strings_in_any_notation_are_integers() {
        let f = Frame::decode(r#"{"type":"3.0","typeu":"1e2","sm":-7.0}"#).unwrap();
        assert_eq!((f.ty, f.typeu, f.sm), (3, 100, -7));
        let e = Frame::decode(r#"{"sm":"1.5"}"#).unwrap_err();
        assert_eq!(
            e,
            DecodeError::BadField {
                field: "sm",
                expected: "an integer",
                found: r#""1.5""#.into()
            }
        );
    }

    #[test]
    fn lowercase_qos_is_an_unknown_key_not_qos() {
        let f = Frame::decode(r#"{"type":2,"qos":true}"#).unwrap();
        assert!(!f.qos);
    }

    #[test]
    fn uncoercible_types_name_the_field() {
        let e = Frame::decode(r#"{"type":"five"}"#).unwrap_err();
        assert!(
            matches!(e, DecodeError::BadField { field: "type", .. }),
            "{e}"
        );
        let e = Frame::decode(r#"{"QoS":3}"#).unwrap_err();
        assert!(
            matches!(e, DecodeError::BadField { field: "QoS", .. }),
            "{e}"
        );
        let e = Frame::decode(r#"{"from":[1]}"#).unwrap_err();
        assert!(
            matches!(e, DecodeError::BadField { field: "from", .. }),
            "{e}"
        );
        let e = Frame::decode(r#"{"type":4294967296}"#).unwrap_err();
        assert!(
            matches!(e, DecodeError::BadField { field: "type", .. }),
            "{e}"
        );
    }

    #[test]
    fn non_objects_are_rejected() {
        assert_eq!(
            Frame::decode("null"),
            Err(DecodeError::NotAnObject { found: "null" })
        );
        assert_eq!(
            Frame::decode("[1,2,3]"),
            Err(DecodeError::NotAnObject { found: "an array" })
        );
        assert!(matches!(
            Frame::decode("garbage{"),
            Err(DecodeError::NotJson { .. })
        ));
    }

    #[test]
    fn encoding_refuses_frames_over_the_limit() {
        let big = Frame::data("a", "b", "x".repeat(MAX_FRAME_BYTES), false, None, 0);
        match big.encode() {
            Err(EncodeError::TooLarge { len, limit }) => {
                assert_eq!(limit, MAX_FRAME_BYTES);
                assert!(len > MAX_FRAME_BYTES);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let exact = Frame::data("a", "b", "", false, None, 0);
        let room = MAX_FRAME_BYTES - exact.to_json().len();
        let fits = Frame::data("a", "b", "x".repeat(room), false, None, 0);
        assert_eq!(fits.encode().unwrap().len(), MAX_FRAME_BYTES);
    }

    #[test]
    fn qos_data_gets_a_fingerprint_and_plain_data_does_not() {
        assert!(Frame::data("a", "b", "x", true, None, 0).fp.is_some());
        assert!(Frame::data("a", "b", "x", false, None, 0).fp.is_none());
        let own = Frame::data("a", "b", "x", true, Some("my-id".into()), 0);
        assert_eq!(own.fp.as_deref(), Some("my-id"));
    }

    #[test]
    fn an_ack_goes_back_to_the_sender_with_the_fingerprint() {
        let mut received = Frame::decode(CAPTURED_DATA).unwrap();
        received.bridge = true;
        let ack = Frame::ack_of(&received).unwrap();
        assert_eq!(ack.ty, wire::RECEIVED);
        assert_eq!(ack.from.as_deref(), Some("bob"));
        assert_eq!(ack.to.as_deref(), Some("alice"));
        assert_eq!(ack.content(), "98a4e2bf-a4a8-4ed5-aadf-bf4c34825e41");
        assert!(ack.bridge && !ack.qos && ack.fp.is_none());
    }
}
