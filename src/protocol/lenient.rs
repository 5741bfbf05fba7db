//! Upstream's tolerance, in one place: lone UTF-16 surrogate escapes are decoded
//! lossily, and values are coerced between JSON types the way upstream's Gson does.
//! [`Frame::decode`](super::Frame::decode) and [`decode_body`](super::decode_body)
//! both build on it, so every frame field and every body field gets the same rules.

use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer};
use serde_json::Value;

/// The escape that replaces a lone surrogate escape: U+FFFD, as six ASCII bytes, the
/// same length as the escape it replaces.
const REPLACEMENT_ESCAPE: &str = "\\uFFFD";

/// Rewrites every lone UTF-16 surrogate escape in JSON text to `\uFFFD`, so that a
/// strict parser reads it as one U+FFFD REPLACEMENT CHARACTER instead of refusing the
/// whole text.
///
/// JSON grammar allows any `\uXXXX` escape, but a string of Unicode scalar values
/// cannot hold a surrogate: Java and JavaScript senders can still produce one (a
/// string cut in the middle of an emoji, for instance). Upstream's parser replaces it
/// and goes on; this does the same:
///
/// - a high surrogate escape (`\uD800`–`\uDBFF`) immediately followed by a low one
///   (`\uDC00`–`\uDFFF`) is a pair, one character, and is left as it is;
/// - any other high or low surrogate escape becomes `\uFFFD`, one replacement
///   character for each; the escape after an unpaired high one is read on its own.
///
/// An escaped backslash (`\\`) is skipped as a whole, so `\\ud83d` (a backslash, then
/// the letters `ud83d`) is not an escape and is left alone. Outside strings JSON has
/// no backslashes, so reading every backslash as the start of an escape is the same as
/// tracking strings. Text that is not valid JSON stays as invalid as it was, with its
/// errors at the same offsets (each replacement has the length of what it replaces).
///
/// Text with nothing to replace is returned borrowed, without allocating.
///
/// ```
/// use bevy_im::protocol::replace_lone_surrogates;
/// assert_eq!(replace_lone_surrogates(r#""half \ud83d here""#), r#""half \uFFFD here""#);
/// assert_eq!(replace_lone_surrogates(r#""\ud83d\ude00""#), r#""\ud83d\ude00""#);
/// ```
pub fn replace_lone_surrogates(text: &str) -> Cow<'_, str> {
    if !text.contains('\\') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = String::new();
    // Everything before `copied` is already in `out`.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        // A backslash and the byte after it are one escape (continuation bytes of
        // UTF-8 are never a backslash, so `i` only ever stops on ASCII).
        let Some(unit) = unicode_escape(bytes, i) else {
            i += 2;
            continue;
        };
        let lone = match unit {
            0xD800..=0xDBFF => {
                if unicode_escape(bytes, i + 6)
                    .is_some_and(|next| (0xDC00..=0xDFFF).contains(&next))
                {
                    i += 12;
                    continue;
                }
                true
            }
            0xDC00..=0xDFFF => true,
            _ => false,
        };
        if lone {
            // `i` and `i + 6` follow ASCII bytes, so both are char boundaries.
            out.push_str(&text[copied..i]);
            out.push_str(REPLACEMENT_ESCAPE);
            copied = i + 6;
        }
        i += 6;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// The code unit of a `\uXXXX` escape starting at `at`, if one does.
fn unicode_escape(bytes: &[u8], at: usize) -> Option<u16> {
    let escape = bytes.get(at..at + 6)?;
    if escape[0] != b'\\' || escape[1] != b'u' {
        return None;
    }
    escape[2..].iter().try_fold(0u16, |n, &b| {
        let digit = char::from(b).to_digit(16)?;
        Some((n << 4) | u16::try_from(digit).ok()?)
    })
}

/// A JSON value that cannot be coerced to a field's type.
#[derive(Debug)]
pub(crate) struct Uncoercible {
    /// What the field must hold, such as "an integer".
    pub(crate) expected: &'static str,
    /// What it held.
    pub(crate) found: Value,
}

impl Uncoercible {
    fn new(expected: &'static str, found: Value) -> Self {
        Self { expected, found }
    }

    /// A short rendering of the value found: at most 40 bytes of its JSON, then `…`.
    pub(crate) fn found_short(&self) -> String {
        let mut found = self.found.to_string();
        if found.len() > 40 {
            let mut cut = 40;
            while !found.is_char_boundary(cut) {
                cut -= 1;
            }
            found.truncate(cut);
            found.push('…');
        }
        found
    }
}

impl std::fmt::Display for Uncoercible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected {}, found {}",
            self.expected,
            self.found_short()
        )
    }
}

/// The result of coercing one value: `None` for JSON `null`.
pub(crate) type Coerced<T> = Result<Option<T>, Uncoercible>;

/// A boolean field: `true`/`false`, or the strings `"true"`/`"false"` in any case.
pub(crate) fn to_bool(v: Value) -> Coerced<bool> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        v => Err(Uncoercible::new("a boolean", v)),
    }
}

/// A 64-bit integer field: an integral number (`3.0` is 3), or a string holding one
/// (`"12"`, `" 12 "`, `"3.0"`, `"1e3"`), as Gson's `nextLong` reads them.
pub(crate) fn to_long(v: Value) -> Coerced<i64> {
    let n = match &v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(integral)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(integral))
        }
        _ => None,
    };
    n.map(Some).ok_or_else(|| Uncoercible::new("an integer", v))
}

/// A 32-bit integer field: as [`to_long`], and in range.
pub(crate) fn to_int(v: Value) -> Coerced<i32> {
    let original = v.clone();
    match to_long(v)? {
        None => Ok(None),
        Some(n) => i32::try_from(n)
            .map(Some)
            .map_err(|_| Uncoercible::new("a 32-bit integer", original)),
    }
}

/// A string field: a string, or a number or boolean as its JSON text (`42` is `"42"`).
pub(crate) fn to_string(v: Value) -> Coerced<String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        v => Err(Uncoercible::new("a string", v)),
    }
}

/// `f` as an `i64` when it is a whole number that fits.
fn integral(f: f64) -> Option<i64> {
    // 2^63 is the first f64 beyond i64::MAX; -2^63 is i64::MIN itself.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f)).then_some(f as i64)
}

/// `deserialize_with` helpers for body fields, built on the same coercions as the
/// frame's fields. A `null` is the same as an absent field: `None` for an optional
/// field, the default for a defaulted one, an error for a required one.
pub(crate) mod field {
    use super::{Coerced, Deserialize, Deserializer, Uncoercible, Value};
    use serde::de::Error as _;

    fn coerce<'de, D, T>(d: D, f: fn(Value) -> Coerced<T>) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
    {
        let v = Value::deserialize(d)?;
        f(v).map_err(|e: Uncoercible| D::Error::custom(e))
    }

    fn required<'de, D, T>(d: D, f: fn(Value) -> Coerced<T>) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
    {
        coerce(d, f)?.ok_or_else(|| D::Error::custom("a required field is null"))
    }

    /// A required string.
    pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        required(d, super::to_string)
    }

    /// A string that is empty when absent or null.
    pub(crate) fn string_or_default<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(coerce(d, super::to_string)?.unwrap_or_default())
    }

    /// An optional string.
    pub(crate) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        coerce(d, super::to_string)
    }

    /// A required 32-bit integer.
    pub(crate) fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        required(d, super::to_int)
    }

    /// A 64-bit integer that is 0 when absent or null.
    pub(crate) fn long_or_default<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        Ok(coerce(d, super::to_long)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixed(text: &str) -> String {
        replace_lone_surrogates(text).into_owned()
    }

    #[test]
    fn text_without_lone_surrogates_is_borrowed() {
        for text in [
            "",
            "plain",
            r#"{"a":"b\n\"c\\"}"#,
            r#""\ud83d\ude00""#,
            r#""\u00e9\uD7FF\uE000""#,
            r#""\\ud83d""#,
            r#""\\\\ud83d""#,
            r#""\ud83""#,
            "\"trailing\\",
        ] {
            assert!(
                matches!(replace_lone_surrogates(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn lone_surrogates_become_one_replacement_each() {
        let cases = [
            (r#""half \ud83d here""#, r#""half \uFFFD here""#),
            (r#""\udc00""#, r#""\uFFFD""#),
            (r#""\uD83D""#, r#""\uFFFD""#),
            (r#""\ud83d\n""#, r#""\uFFFD\n""#),
            (r#""\ud83d\u0041""#, r#""\uFFFD\u0041""#),
            (r#""\ud83d\ud83d\ude00""#, r#""\uFFFD\ud83d\ude00""#),
            (r#""\ude00\ud83d""#, r#""\uFFFD\uFFFD""#),
            (r#""\\\ud83d""#, r#""\\\uFFFD""#),
            (r#""é\udfffü""#, r#""é\uFFFDü""#),
            (r#""\ud83d"#, r#""\uFFFD"#),
        ];
        for (text, want) in cases {
            assert_eq!(fixed(text), want, "{text}");
        }
    }

    #[test]
    fn the_rewritten_text_parses_to_replacement_characters() {
        let v: String = serde_json::from_str(&fixed(r#""a\ud83db\udc00c\ud83d\ude00""#)).unwrap();
        assert_eq!(v, "a\u{FFFD}b\u{FFFD}c😀");
    }

    #[test]
    fn coercions_follow_upstream() {
        assert_eq!(to_long(json!(3.0)).unwrap(), Some(3));
        assert_eq!(to_long(json!("12")).unwrap(), Some(12));
        assert_eq!(to_long(json!(" -7 ")).unwrap(), Some(-7));
        assert_eq!(to_long(json!("3.0")).unwrap(), Some(3));
        assert_eq!(to_long(json!("1e3")).unwrap(), Some(1000));
        assert_eq!(to_long(json!(null)).unwrap(), None);
        assert_eq!(to_long(json!(i64::MIN)).unwrap(), Some(i64::MIN));
        for bad in [
            json!(3.5),
            json!("soon"),
            json!(""),
            json!("NaN"),
            json!("inf"),
            json!(true),
            json!([1]),
            json!(1e19),
            json!(u64::MAX),
        ] {
            let e = to_long(bad.clone()).unwrap_err();
            assert_eq!((e.expected, &e.found), ("an integer", &bad));
        }
        assert_eq!(to_int(json!("42")).unwrap(), Some(42));
        let e = to_int(json!("2147483648")).unwrap_err();
        assert_eq!(
            (e.expected, e.found),
            ("a 32-bit integer", json!("2147483648"))
        );
        assert_eq!(to_string(json!(42)).unwrap().as_deref(), Some("42"));
        assert_eq!(to_string(json!(-1.5)).unwrap().as_deref(), Some("-1.5"));
        assert_eq!(to_string(json!(false)).unwrap().as_deref(), Some("false"));
        assert_eq!(to_string(json!({})).unwrap_err().expected, "a string");
        assert_eq!(to_bool(json!("TRUE")).unwrap(), Some(true));
        assert_eq!(to_bool(json!("False")).unwrap(), Some(false));
        assert_eq!(to_bool(json!("yes")).unwrap_err().expected, "a boolean");
        assert_eq!(to_bool(json!(1)).unwrap_err().expected, "a boolean");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let e = to_long(json!("x".repeat(100))).unwrap_err();
        let short = e.found_short();
        assert!(
            short.ends_with('…') && short.len() == 40 + '…'.len_utf8(),
            "{short}"
        );
        assert_eq!(e.to_string(), format!("expected an integer, found {short}"));
    }
}
