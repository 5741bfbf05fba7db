//! Local failures: a call the client refused at once, having written nothing.

use crate::protocol::ResultCode;

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
        }
    }
}
