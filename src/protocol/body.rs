//! The control bodies that travel, JSON-encoded as a string, inside `dataContent`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::DecodeError;
use super::lenient::{field, replace_lone_surrogates};

/// A control body: a JSON object carried as a string in `dataContent`.
pub trait Body: Serialize + DeserializeOwned {
    /// The body's upstream class name, used in errors.
    const NAME: &'static str;
}

/// Encodes a body as the string that goes into `dataContent`.
pub fn encode_body<B: Body>(body: &B) -> String {
    // Bodies hold only strings and integers, which always serialise.
    serde_json::to_string(body).unwrap_or_default()
}

/// Decodes a body from a frame's `dataContent` (`None` when the frame has none).
///
/// As tolerant as [`Frame::decode`](super::Frame::decode), with the same rules: a lone
/// UTF-16 surrogate escape decodes to U+FFFD, unknown keys are ignored, and every field
/// is coerced as [`Frame`](super::Frame) describes (`12345` for a string field is
/// `"12345"`, `"0"` for an integer field is 0). A `null` is the same as an absent
/// field. A required field that is absent or null, or a value that cannot be coerced,
/// is a [`DecodeError::BadBody`] whose reason says what was wrong.
///
/// ```
/// use bevy_im::protocol::{LoginInfo, LoginResponse, decode_body};
/// let r: LoginResponse = decode_body(Some(r#"{"code":0,"firstLoginTime":17}"#)).unwrap();
/// assert_eq!(r.first_login_time, 17);
/// let r: LoginResponse = decode_body(Some(r#"{"code":"0","firstLoginTime":"17"}"#)).unwrap();
/// assert_eq!((r.code, r.first_login_time), (0, 17));
/// let i: LoginInfo = decode_body(Some(r#"{"loginUserId":12345,"firstLoginTime":null}"#)).unwrap();
/// assert_eq!((i.login_user_id.as_str(), i.first_login_time), ("12345", 0));
/// ```
pub fn decode_body<B: Body>(content: Option<&str>) -> Result<B, DecodeError> {
    let text = content.ok_or_else(|| DecodeError::BadBody {
        body: B::NAME,
        reason: "dataContent is missing".into(),
    })?;
    serde_json::from_str(&replace_lone_surrogates(text)).map_err(|e| DecodeError::BadBody {
        body: B::NAME,
        reason: e.to_string(),
    })
}

/// `PLoginInfo`: what a client logs in with (type 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginInfo {
    /// `loginUserId`: the user id; required.
    #[serde(rename = "loginUserId", deserialize_with = "field::string")]
    pub login_user_id: String,
    /// `loginToken`: the credential the login hook checks; empty when absent.
    #[serde(
        rename = "loginToken",
        default,
        deserialize_with = "field::string_or_default"
    )]
    pub login_token: String,
    /// `extra`: free-form data for the login hook.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "field::opt_string"
    )]
    pub extra: Option<String>,
    /// `firstLoginTime`: 0 on a first login; on a re-login, the time the server gave
    /// at the first login, which settles duplicate logins. 0 when absent.
    #[serde(
        rename = "firstLoginTime",
        default,
        deserialize_with = "field::long_or_default"
    )]
    pub first_login_time: i64,
    /// `app`: the seed's application name (upstream ignores it).
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "field::opt_string"
    )]
    pub app: Option<String>,
}

impl Body for LoginInfo {
    const NAME: &'static str = "PLoginInfo";
}

/// `PLoginInfoResponse`: the server's answer to a login (type 50).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResponse {
    /// 0 for success, otherwise the login hook's code (or
    /// [`ResultCode::InvalidProtocol`](super::ResultCode::InvalidProtocol) for a login
    /// the reference server could not read); required.
    #[serde(deserialize_with = "field::int")]
    pub code: i32,
    /// `firstLoginTime`: the server's time of the first login, or -1 on failure; 0
    /// when absent.
    #[serde(
        rename = "firstLoginTime",
        default,
        deserialize_with = "field::long_or_default"
    )]
    pub first_login_time: i64,
    /// Extension (`docs/PROTOCOL-EXTENSIONS.md`): what the server serves beyond
    /// upstream's protocol ([`ext`](super::ext) names). Left out when empty, so the
    /// reply keeps upstream's bytes; upstream clients ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ext: Vec<String>,
}

impl Body for LoginResponse {
    const NAME: &'static str = "PLoginInfoResponse";
}

/// `PErrorResponse`: an error from the server (type 52).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// `errorCode`: 301 means "not logged in"; required.
    #[serde(rename = "errorCode", deserialize_with = "field::int")]
    pub error_code: i32,
    /// `errorMsg`: upstream puts the whole offending frame here, as JSON; empty when
    /// absent.
    #[serde(
        rename = "errorMsg",
        default,
        deserialize_with = "field::string_or_default"
    )]
    pub error_msg: String,
}

impl Body for ErrorResponse {
    const NAME: &'static str = "PErrorResponse";
}

/// `PKickoutInfo`: why the server ends a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KickoutInfo {
    /// 1 for a duplicate login, 2 for an admin kick (see [`KickoutCode`](super::KickoutCode));
    /// required.
    #[serde(deserialize_with = "field::int")]
    pub code: i32,
    /// A human-readable reason, when given.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "field::opt_string"
    )]
    pub reason: Option<String>,
}

impl Body for KickoutInfo {
    const NAME: &'static str = "PKickoutInfo";
}

/// `PKeepAlive` and `PKeepAliveResponse`: an empty object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeepAlive {}

impl Body for KeepAlive {
    const NAME: &'static str = "PKeepAlive";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_body_matches_the_captured_bytes() {
        let info = LoginInfo {
            login_user_id: "alice".into(),
            login_token: "token".into(),
            extra: Some("hello-extra".into()),
            first_login_time: 0,
            app: Some("test".into()),
        };
        assert_eq!(
            encode_body(&info),
            r#"{"loginUserId":"alice","loginToken":"token","extra":"hello-extra","firstLoginTime":0,"app":"test"}"#
        );
        let back: LoginInfo = decode_body(Some(&encode_body(&info))).unwrap();
        assert_eq!(back, info);
    }

    #[test]
    fn login_without_user_id_is_a_bad_body() {
        let e = decode_body::<LoginInfo>(Some(r#"{"loginToken":"t"}"#)).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::BadBody {
                    body: "PLoginInfo",
                    ..
                }
            ),
            "{e}"
        );
        let e = decode_body::<LoginInfo>(Some("not json")).unwrap_err();
        assert!(matches!(e, DecodeError::BadBody { .. }));
        let e = decode_body::<LoginInfo>(None).unwrap_err();
        assert!(matches!(e, DecodeError::BadBody { .. }));
    }

    #[test]
    fn login_fields_are_coerced_as_frame_fields_are() {
        let login = |text: &str| decode_body::<LoginInfo>(Some(text));
        let i = login(r#"{"loginUserId":12345,"loginToken":"t","firstLoginTime":0}"#).unwrap();
        assert_eq!((i.login_user_id.as_str(), i.first_login_time), ("12345", 0));
        let i = login(r#"{"loginUserId":"u3","loginToken":"t","firstLoginTime":"0"}"#).unwrap();
        assert_eq!((i.login_user_id.as_str(), i.first_login_time), ("u3", 0));
        let i = login(r#"{"loginUserId":"u4","loginToken":"t","firstLoginTime":"1700000000000"}"#)
            .unwrap();
        assert_eq!(i.first_login_time, 1_700_000_000_000);
        let i = login(
            r#"{"loginUserId":7.5,"loginToken":99,"extra":true,"app":0,"firstLoginTime":3.0}"#,
        )
        .unwrap();
        assert_eq!(
            i,
            LoginInfo {
                login_user_id: "7.5".into(),
                login_token: "99".into(),
                extra: Some("true".into()),
                first_login_time: 3,
                app: Some("0".into()),
            }
        );
        let i =
            login(r#"{"loginUserId":"u","loginToken":null,"extra":null,"firstLoginTime":null}"#)
                .unwrap();
        assert_eq!(
            (i.login_token.as_str(), i.extra, i.first_login_time),
            ("", None, 0)
        );
    }

    #[test]
    fn uncoercible_or_null_required_fields_are_bad_bodies() {
        for (text, says) in [
            (
                r#"{"loginUserId":"u","firstLoginTime":"soon"}"#,
                r#"expected an integer, found "soon""#,
            ),
            (r#"{"loginUserId":[1]}"#, "expected a string, found [1]"),
            (
                r#"{"loginUserId":{"a":1}}"#,
                r#"expected a string, found {"a":1}"#,
            ),
            (r#"{"loginUserId":null}"#, "a required field is null"),
            (r#"{"loginToken":"t"}"#, "missing field `loginUserId`"),
            (
                r#"{"loginUserId":"u","extra":[]}"#,
                "expected a string, found []",
            ),
        ] {
            match decode_body::<LoginInfo>(Some(text)) {
                Err(DecodeError::BadBody { body, reason }) => {
                    assert_eq!(body, "PLoginInfo");
                    assert!(reason.starts_with(says), "{text}: {reason}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let e = decode_body::<LoginResponse>(Some(r#"{"code":"2147483648"}"#)).unwrap_err();
        assert!(e.to_string().contains("expected a 32-bit integer"), "{e}");
        let e = decode_body::<KickoutInfo>(Some(r#"{"code":null}"#)).unwrap_err();
        assert!(e.to_string().contains("a required field is null"), "{e}");
    }

    #[test]
    fn bodies_decode_lone_surrogates_lossily() {
        // The body's own escapes, as they are once the frame's string is decoded.
        let i: LoginInfo = decode_body(Some(
            r#"{"loginUserId":"a\ud83d","extra":"\udc00\ud83d\ude00"}"#,
        ))
        .unwrap();
        assert_eq!(i.login_user_id, "a\u{FFFD}");
        assert_eq!(i.extra.as_deref(), Some("\u{FFFD}😀"));
        let e: ErrorResponse =
            decode_body(Some(r#"{"errorCode":"4","errorMsg":"x\ud800y"}"#)).unwrap();
        assert_eq!((e.error_code, e.error_msg.as_str()), (4, "x\u{FFFD}y"));
    }

    #[test]
    fn kickout_without_reason_is_just_the_code() {
        let k = KickoutInfo {
            code: 1,
            reason: None,
        };
        assert_eq!(encode_body(&k), r#"{"code":1}"#);
        assert_eq!(encode_body(&KeepAlive {}), "{}");
    }
}
