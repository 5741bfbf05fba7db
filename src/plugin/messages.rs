//! The Bevy messages the plugin writes, one per callback of the seed API.

use std::time::Duration;

use bevy::prelude::Message;

use crate::client::FrameProblem;
use crate::protocol::{Frame, KickoutCode, ResultCode};
use crate::transport::TransportError;

/// A login or re-login succeeded (`onLoginOrReloginSuccessCB`).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct LoginSucceeded {
    /// The user now logged in.
    pub user_id: String,
    /// True for an automatic re-login.
    pub relogin: bool,
    /// The server's time of the first login.
    pub first_login_time: i64,
}

/// A login or re-login failed (`onLoginOrReloginFailCB`).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct LoginFailed {
    /// The server's code, or 202 when the link could not be made.
    pub code: ResultCode,
    /// True for an automatic re-login attempt.
    pub relogin: bool,
}

/// The link to the server closed (`onLinkCloseMessageCB`).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct LinkClosed {
    /// -1 for a lost link or keepalive timeout, 301 for "not logged in", or the
    /// server's close code.
    pub code: i32,
    /// Why, in words.
    pub reason: String,
}

/// Data from another user or the server (`onTransBufferCB`).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct DataReceived {
    /// The sender's fingerprint, for QoS messages.
    pub fp: Option<String>,
    /// The sender's user id (`"0"` for the server).
    pub from: String,
    /// The message.
    pub content: String,
    /// The app-defined sub-type.
    pub typeu: i32,
}

/// An error frame from the server (`onTransErrorCB`).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The error code (301: not logged in).
    pub code: i32,
    /// The server's message.
    pub msg: String,
}

/// QoS messages the server never ACKed (`handleMessageLost`), or that were still
/// waiting when the session ended (logout, release, kickout, another user's login).
/// The frames are complete, so the game can send their content again.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct MessagesLost {
    /// The lost frames.
    pub frames: Vec<Frame>,
}

/// The server refused a frame for its rate limit (error 429). Not a failure: a QoS
/// message stays pending, is written again after `retry_in`, and still ends in
/// [`MessageDelivered`] or [`MessagesLost`]. [`ServerError`] is not written for it.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct SendThrottled {
    /// The refused message's fingerprint, when the refused frame was data and named one.
    pub fp: Option<String>,
    /// When it is written again; `None` when it is not (not a pending QoS message, or
    /// its throttled retries are used up and its normal resends go on).
    pub retry_in: Option<Duration>,
}

/// The server ACKed a QoS message (`messagesBeReceivedCB`): relayed to an online
/// receiver, or accepted by the server.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct MessageDelivered {
    /// The message's fingerprint, as returned by `ImClient::send`.
    pub fp: String,
}

/// The server ended the session (kickout); no re-login follows.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct Kicked {
    /// Why.
    pub code: KickoutCode,
    /// The server's reason, if given.
    pub reason: Option<String>,
}

/// An automatic re-login attempt started.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct ReloginStarted {
    /// 1 for the first attempt after the link was lost.
    pub attempt: u32,
}

/// A logout finished (the seed's `logout(callBack)`).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct LoggedOut {
    /// 0 when the logout frame was sent, 1 when not logged in.
    pub code: ResultCode,
}

/// The outcome of writing a message the game sent (the seed's `send(callBack)`).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// The message's fingerprint (`None` for a message without QoS or fingerprint).
    pub fp: Option<String>,
    /// 0 when written, 3 when the link could not take it.
    pub code: ResultCode,
}

/// A keepalive reply arrived.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct KeepaliveReply {
    /// The round-trip time of the keepalive it answered.
    pub rtt: Option<Duration>,
}

/// The link reported an error.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct LinkError {
    /// What went wrong.
    pub error: TransportError,
}

/// A frame from the server could not be used.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    /// Why.
    pub problem: FrameProblem,
}
