//! What the core asks of the transport and tells the game.

use crate::protocol::DecodeError;
use crate::transport::LinkId;

/// What the core asks of the link. Every action names its link: the core owns link
/// identity, and the driver only carries actions out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a new link, `link`, to the configured server.
    Connect {
        /// The new link's identity; events from it carry it back.
        link: LinkId,
    },
    /// Write one text frame on `link`.
    Send {
        /// The link to write on.
        link: LinkId,
        /// The encoded frame.
        text: String,
        /// The fingerprint of a data frame, to report the write's outcome against.
        fp: Option<String>,
        /// Whether this is application data sent by the game (not a control frame
        /// or a resend), whose write outcome the game is told.
        report: bool,
    },
    /// Close `link`; anything more from it is ignored.
    Close {
        /// The link to close.
        link: LinkId,
    },
}

/// Why an inbound frame was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
#[derive(Debug, Default)]
pub struct CoreOutput {
    /// Link actions, in order.
    pub actions: Vec<Action>,
    /// Events for the game, in order.
    pub events: Vec<super::ClientEvent>,
    /// Counters.
    pub stats: CoreStats,
}
