//! What the core asks of the transport and tells the game.

use std::time::Duration;

use crate::protocol::{DecodeError, Frame, KickoutCode, ResultCode};
use crate::transport::TransportError;

/// What the core asks of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a new link to the configured server.
    Connect,
    /// Write one text frame on the current link.
    Send {
        /// The encoded frame.
        text: String,
        /// The fingerprint of a data frame, to report the write's outcome against.
        fp: Option<String>,
        /// Whether this is application data sent by the game (not a control frame
        /// or a resend), whose write outcome the game is told.
        report: bool,
    },
    /// Close the current link and ignore anything more from it.
    Close,
}

/// Something the game should hear about. Each maps to a Bevy message in the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A login or re-login succeeded (the seed's `onLoginOrReloginSuccessCB`).
    LoginSucceeded {
        /// The user now logged in.
        user_id: String,
        /// True for an automatic re-login, false for a login the game asked for.
        relogin: bool,
        /// The server's time of the first login, presented on every re-login.
        first_login_time: i64,
    },
    /// A login or re-login failed (the seed's `onLoginOrReloginFailCB`).
    LoginFailed {
        /// The server's code, or a local one (202 when the link could not be made).
        code: ResultCode,
        /// True for an automatic re-login attempt.
        relogin: bool,
    },
    /// The link to the server closed (the seed's `onLinkCloseMessageCB`).
    LinkClosed {
        /// -1 for a lost link or a keepalive timeout, 301 after "not logged in", or
        /// the close code the server sent.
        code: i32,
        /// Why, in words.
        reason: String,
    },
    /// Data from another user or the server (the seed's `onTransBufferCB`).
    DataReceived {
        /// The sender's fingerprint, for QoS messages.
        fp: Option<String>,
        /// The sender's user id (`"0"` for the server).
        from: String,
        /// The message.
        content: String,
        /// The app-defined sub-type.
        typeu: i32,
    },
    /// An error frame from the server (the seed's `onTransErrorCB`).
    ServerError {
        /// The error code (301: not logged in).
        code: i32,
        /// The server's message; upstream puts the rejected frame here.
        msg: String,
    },
    /// QoS messages that were never ACKed (the seed's `handleMessageLost`), or that
    /// were still waiting when the session ended (logout, release, kickout, another
    /// user's login).
    MessagesLost(Vec<Frame>),
    /// The server refused a frame for its rate limit (error 429). Not a failure: a
    /// QoS message stays pending and is written again after `retry_in`.
    SendThrottled {
        /// The refused message's fingerprint, when the refused frame was data and
        /// named one.
        fp: Option<String>,
        /// When the message is written again; `None` when it is not (not a pending
        /// QoS message, or its throttled retries are used up: its normal resends and
        /// loss go on).
        retry_in: Option<Duration>,
    },
    /// The server ACKed a QoS message (the seed's `messagesBeReceivedCB`).
    MessageDelivered {
        /// The message's fingerprint.
        fp: String,
    },
    /// The server ended the session; no re-login follows.
    Kicked {
        /// Why.
        code: KickoutCode,
        /// The server's reason, if given.
        reason: Option<String>,
    },
    /// An automatic re-login attempt started.
    ReloginStarted {
        /// 1 for the first attempt after the link was lost.
        attempt: u32,
    },
    /// The game's logout finished: 0 when the logout frame was sent, 1 when the
    /// client was not logged in (nothing sent).
    LoggedOut {
        /// The outcome.
        code: ResultCode,
    },
    /// A keepalive reply arrived.
    KeepaliveReply {
        /// The round-trip time of the keepalive it answered.
        rtt: Option<Duration>,
    },
    /// A frame from the server could not be used.
    BadFrame(FrameProblem),
    /// The link reported an error (a `LinkClosed` or `LoginFailed` follows if it ends
    /// the session).
    LinkError(TransportError),
}

/// Why an inbound frame was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameProblem {
    /// The text is not a valid frame, or its body is malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The type number has no meaning for a client in this dialect.
    #[error("unknown frame type {0}")]
    UnknownType(i32),
    /// A login reply arrived while no login was in progress.
    #[error("login reply while not logging in")]
    UnexpectedLoginReply,
}

/// Counters for diagnostics, cumulative since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Frames received from the server.
    pub frames_in: u64,
    /// Frames queued for the wire.
    pub frames_out: u64,
    /// QoS resends.
    pub resends: u64,
    /// QoS messages reported lost.
    pub lost: u64,
    /// Re-login attempts.
    pub relogins: u64,
    /// Frames the server refused for its rate limit.
    pub throttled: u64,
}

/// The queue of actions and events the core produced, drained by its driver.
#[derive(Debug, Default, bevy::prelude::Resource)]
pub struct CoreOutput {
    /// Link actions, in order.
    pub actions: Vec<Action>,
    /// Events for the game, in order.
    pub events: Vec<ClientEvent>,
    /// Counters.
    pub stats: CoreStats,
}
