//! Transports move text frames and link events between a WebSocket and the ECS, and
//! nothing more (the seed's `LocalWSProvider`).
//!
//! The plugin talks to a [`Transport`] through four calls: [`connect`](Transport::connect),
//! [`send`](Transport::send), [`close`](Transport::close) and [`poll`](Transport::poll).
//! None of them blocks. Every link has a [`LinkId`] chosen by the caller; a reconnect uses
//! a new id, so an event from an old socket can never be mistaken for the new one.
//!
//! - [`MemoryTransport`]: an in-process pair for tests, with fault injection.
//! - `NativeTransport` (not on wasm): one background thread per client running a small
//!   tokio runtime with tokio-tungstenite, connected by crossbeam channels.
//! - `WebTransport` (wasm32 only): the browser's WebSocket through ewebsock.

mod memory;
#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(target_arch = "wasm32")]
mod web;

use std::time::Duration;

pub use memory::{MemoryPeer, MemoryTransport};
#[cfg(not(target_arch = "wasm32"))]
pub use native::{IoThreadWatch, NativeTransport};
#[cfg(target_arch = "wasm32")]
pub use web::WebTransport;
#[cfg(target_arch = "wasm32")]
pub(crate) use web::set_socket_event_hook;

use crate::protocol::MAX_FRAME_BYTES;

/// Identifies one link (one socket). Chosen by the caller, never reused by the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LinkId(pub u64);

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "link#{}", self.0)
    }
}

/// Something that happened on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// The WebSocket handshake completed.
    Opened {
        /// The link.
        link: LinkId,
    },
    /// A text frame arrived.
    Text {
        /// The link.
        link: LinkId,
        /// The frame's text.
        text: String,
    },
    /// The link is closed; no more events come for it.
    Closed {
        /// The link.
        link: LinkId,
        /// The close code the peer sent, if it sent a close frame.
        code: Option<u16>,
        /// The close reason the peer sent, or a description of why the link ended.
        reason: String,
    },
    /// Something went wrong on the link. A fatal error is followed by `Closed`.
    Error {
        /// The link.
        link: LinkId,
        /// What went wrong.
        error: TransportError,
    },
}

impl TransportEvent {
    /// The link this event belongs to.
    pub fn link(&self) -> LinkId {
        match self {
            Self::Opened { link }
            | Self::Text { link, .. }
            | Self::Closed { link, .. }
            | Self::Error { link, .. } => *link,
        }
    }
}

/// A typed link failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL could not be used (bad syntax, unsupported scheme).
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The server refused the TCP connection, or could not be reached.
    #[error("connection refused: {0}")]
    Refused(String),
    /// The TCP connect, TLS or WebSocket handshake did not finish in time.
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    /// The TLS handshake failed (untrusted certificate, wrong name...).
    #[error("TLS error: {0}")]
    Tls(String),
    /// The server answered the WebSocket handshake with something other than 101.
    #[error("handshake rejected: {0}")]
    HandshakeRejected(String),
    /// The server sent a binary frame; this protocol is text only.
    #[error("binary frame of {0} bytes received; the protocol is text only")]
    BinaryFrame(usize),
    /// A frame over the size limit was received or was about to be sent.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The frame's size in bytes.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A send or close named a link that is not open.
    #[error("link is not open")]
    NotOpen,
    /// The WebSocket protocol was violated, or the socket failed mid-stream.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Settings shared by every transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// How long the TCP connect plus TLS and WebSocket handshakes may take.
    pub connect_timeout: Duration,
    /// The largest text frame accepted in either direction.
    pub max_frame_bytes: usize,
    /// Extra trusted root certificates (DER) for `wss://`, beside the webpki roots;
    /// for self-signed test servers.
    pub extra_roots_der: Vec<Vec<u8>>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            max_frame_bytes: MAX_FRAME_BYTES,
            extra_roots_der: Vec::new(),
        }
    }
}

/// What the plugin drives: commands in, events out. No call blocks.
pub trait Transport: Send + Sync + 'static {
    /// Opens a new link to `url` (`ws://` or `wss://`). The outcome arrives as
    /// [`TransportEvent::Opened`], or as an error followed by `Closed`.
    fn connect(&mut self, link: LinkId, url: &str);
    /// Queues one text frame on `link`. A frame over the limit, or a link that is not
    /// open, is refused here and nothing is written.
    fn send(&mut self, link: LinkId, text: String) -> Result<(), TransportError>;
    /// Closes `link` with a normal close frame. A `Closed` event follows.
    fn close(&mut self, link: LinkId);
    /// The next event, if any.
    fn poll(&mut self) -> Option<TransportEvent>;
}
