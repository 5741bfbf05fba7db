//! The control bodies that travel, JSON-encoded as a string, inside `dataContent`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::DecodeError;

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
/// ```
/// use bevy_im::protocol::{LoginResponse, decode_body};
/// let r: LoginResponse = decode_body(Some(r#"{"code":0,"firstLoginTime":17}"#)).unwrap();
/// assert_eq!(r.first_login_time, 17);
/// ```
pub fn decode_body<B: Body>(content: Option<&str>) -> Result<B, DecodeError> {
    let text = content.ok_or_else(|| DecodeError::BadBody {
        body: B::NAME,
        reason: "dataContent is missing".into(),
    })?;
    serde_json::from_str(text).map_err(|e| DecodeError::BadBody {
        body: B::NAME,
        reason: e.to_string(),
    })
}

/// `PLoginInfo`: what a client logs in with (type 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginInfo {
    /// `loginUserId`: the user id; required.
    #[serde(rename = "loginUserId")]
    pub login_user_id: String,
    /// `loginToken`: the credential the login hook checks.
    #[serde(rename = "loginToken", default)]
    pub login_token: String,
    /// `extra`: free-form data for the login hook.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub extra: Option<String>,
    /// `firstLoginTime`: 0 on a first login; on a re-login, the time the server gave
    /// at the first login, which settles duplicate logins.
    #[serde(rename = "firstLoginTime", default)]
    pub first_login_time: i64,
    /// `app`: the seed's application name (upstream ignores it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub app: Option<String>,
}

impl Body for LoginInfo {
    const NAME: &'static str = "PLoginInfo";
}

/// `PLoginInfoResponse`: the server's answer to a login (type 50).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResponse {
    /// 0 for success, otherwise the login hook's code.
    pub code: i32,
    /// `firstLoginTime`: the server's time of the first login, or -1 on failure.
    #[serde(rename = "firstLoginTime", default)]
    pub first_login_time: i64,
}

impl Body for LoginResponse {
    const NAME: &'static str = "PLoginInfoResponse";
}

/// `PErrorResponse`: an error from the server (type 52).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// `errorCode`: 301 means "not logged in".
    #[serde(rename = "errorCode")]
    pub error_code: i32,
    /// `errorMsg`: upstream puts the whole offending frame here, as JSON.
    #[serde(rename = "errorMsg", default)]
    pub error_msg: String,
}

impl Body for ErrorResponse {
    const NAME: &'static str = "PErrorResponse";
}

/// `PKickoutInfo`: why the server ends a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KickoutInfo {
    /// 1 for a duplicate login, 2 for an admin kick (see [`KickoutCode`](super::KickoutCode)).
    pub code: i32,
    /// A human-readable reason, when given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
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
    fn kickout_without_reason_is_just_the_code() {
        let k = KickoutInfo {
            code: 1,
            reason: None,
        };
        assert_eq!(encode_body(&k), r#"{"code":1}"#);
        assert_eq!(encode_body(&KeepAlive {}), "{}");
    }
}
