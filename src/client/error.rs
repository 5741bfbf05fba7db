//! Local failures: a call the client refused at once, having written nothing.

use std::time::Duration;

use crate::protocol::{ResultCode, RoomNameError};

/// Why `login` was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// No server URL is configured (seed code 205).
    #[error("no server URL is configured")]
    NoServerUrl,
    /// The user id is empty (seed code 4).
    #[error("the user id is empty")]
    EmptyUserId,
    /// The login frame would exceed the frame limit (seed code 4).
    #[error("the login frame is {len} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// The encoded frame's size in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
}

impl LoginError {
    /// The seed's result code for this failure.
    pub fn code(&self) -> ResultCode {
        match self {
            Self::NoServerUrl => ResultCode::ToServerNetInfoNotSetup,
            Self::EmptyUserId | Self::TooLarge { .. } => ResultCode::InvalidProtocol,
        }
    }
}

/// Why `send` was refused. Nothing was written or queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Not logged in, and no re-login is under way that could take the message: before
    /// the first login, after a logout, a kickout or a refused login, or a message
    /// without QoS during a re-login (seed code 1).
    #[error("not logged in")]
    NotLoggedIn,
    /// The client was released (seed code 203).
    #[error("the client was released")]
    Released,
    /// The receiver is empty (seed code 4).
    #[error("the receiver is empty")]
    EmptyReceiver,
    /// The data frame would exceed the frame limit (seed code 4).
    #[error("the frame is {len} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// The encoded frame's size in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A re-login is under way and [`ClientConfig::max_queued`](super::ClientConfig)
    /// messages already wait for it (seed code 1).
    #[error("{0} messages already wait for the re-login")]
    QueueFull(usize),
    /// The payload could not be serialised to JSON (`send_json`; seed code 4).
    #[error("the payload is not serialisable: {0}")]
    Serialize(String),
    /// A message to a room (`to` is `#name`) that the client cannot send: the
    /// server did not announce rooms, or the name is not valid.
    #[error(transparent)]
    Room(#[from] RoomError),
}

impl SendError {
    /// The seed's result code for this failure.
    pub fn code(&self) -> ResultCode {
        match self {
            Self::NotLoggedIn | Self::QueueFull(_) => ResultCode::NoLogin,
            Self::Released => ResultCode::ClientSdkNotInitialized,
            Self::EmptyReceiver | Self::TooLarge { .. } | Self::Serialize(_) => {
                ResultCode::InvalidProtocol
            }
            Self::Room(e) => e.code(),
        }
    }
}

/// Why a room or social request failed (`docs/PROTOCOL-EXTENSIONS.md`).
///
/// A call refuses at once, writing nothing, with one of the first group
/// ([`NotLoggedIn`](Self::NotLoggedIn) to [`TooManyPending`](Self::TooManyPending));
/// a request that was written ends later in its success message or in
/// [`RoomRequestFailed`](super::RoomRequestFailed) with one of the second group
/// ([`Refused`](Self::Refused), [`TimedOut`](Self::TimedOut),
/// [`SessionEnded`](Self::SessionEnded), or [`NotSupported`](Self::NotSupported) when
/// the server stopped serving the extension across a re-login). Every variant's text
/// is a sentence a game can show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// Not logged in, and no re-login is under way that the request could wait for.
    #[error("not logged in")]
    NotLoggedIn,
    /// The server did not list `ext` in its login reply (an upstream MobileIMSDK
    /// server lists nothing): the request would never be answered.
    #[error("the server does not serve \"{ext}\"")]
    NotSupported {
        /// The missing extension ([`ext`](crate::protocol::ext) names).
        ext: &'static str,
    },
    /// The room name is not valid (1 to 64 ASCII letters, digits, `-`, `_`, `.`).
    #[error("bad room name: {0}")]
    BadName(#[from] RoomNameError),
    /// The user id is empty or is a room address.
    #[error("bad user id {0:?}: empty, or a room address")]
    BadUser(String),
    /// A history page of `limit` messages: it must be 1 to 100.
    #[error("a history page holds 1 to 100 messages, not {0}")]
    BadLimit(u32),
    /// [`ClientConfig::max_queued`](super::ClientConfig) requests already wait for
    /// their replies.
    #[error("{0} room requests already wait for a reply")]
    TooManyPending(usize),
    /// The server answered with a code ([`room_code`](crate::protocol::room_code)).
    #[error("refused by the server (code {code}): {msg}")]
    Refused {
        /// The server's code: 400, 403, 404, 409, 429, 500.
        code: i32,
        /// The server's reason, possibly empty.
        msg: String,
    },
    /// No reply came within [`ClientConfig::room_request_timeout`](super::ClientConfig).
    #[error("the server did not answer within {0:?}")]
    TimedOut(Duration),
    /// The session ended (logout, release, kickout, a login as another user) before
    /// the reply.
    #[error("the session ended before the server answered")]
    SessionEnded,
}

impl RoomError {
    /// A result code for this failure: the seed's where one fits (1 not logged in,
    /// 4 invalid), the server's code for [`Refused`](Self::Refused), 408 for a
    /// timeout.
    pub fn code(&self) -> ResultCode {
        match self {
            Self::NotLoggedIn | Self::TooManyPending(_) | Self::SessionEnded => ResultCode::NoLogin,
            Self::NotSupported { .. } | Self::BadName(_) | Self::BadUser(_) | Self::BadLimit(_) => {
                ResultCode::InvalidProtocol
            }
            Self::Refused { code, .. } => ResultCode::from_code(*code),
            Self::TimedOut(_) => ResultCode::Other(408),
        }
    }
}
