//! The reference server: MobileIMSDK over WebSocket, as upstream's v6.5 server behaves
//! (PROTOCOL.md §1, §6–§13), in either dialect, with the changes of DESIGN.md §5–§6.
//!
//! Compiled with the cargo feature `server`; the `im-server` binary wraps it.
//!
//! # Starting one
//!
//! In async code, [`Server::bind`] then [`Server::serve`], keeping a [`ServerHandle`];
//! elsewhere, [`spawn_background`] runs it on its own thread. The host program decides
//! logins, receives messages to the server and stores offline messages through
//! [`ServerHooks`]; [`AcceptAll`] is upstream's demo (everyone in, nothing stored).
//!
//! # Like upstream
//!
//! - Only the exact path (default `/websocket`) is upgraded; any other path gets no
//!   answer and is held until the read timeout; plain HTTP on the path gets 400.
//!   The reply carries no subprotocol and no extensions.
//! - Text frames only, one frame per message, at most 64 KiB: a binary frame closes
//!   the socket, an oversize one closes it with 1009. Every other close the server
//!   makes is 1000 "Bye".
//! - A socket that sends no text frame within the read timeout (11 s in the 5 s sense
//!   mode) is closed; pings do not count.
//! - Frames and bodies are read as tolerantly as upstream reads them: numbers and
//!   booleans may arrive as strings and ids as numbers (the rules are on
//!   [`Frame`](crate::protocol::Frame)), and a lone UTF-16 surrogate escape in any string
//!   is read as U+FFFD, so such a message is relayed and acknowledged.
//! - Login through [`ServerHooks::verify_login`]; a re-login on the same socket is
//!   answered again; a second login of the same user is settled by `firstLoginTime`
//!   (PROTOCOL.md §8.2) with the dialect's kickout.
//! - Keepalive, data or ACK before login get error 301 and a close; logout closes;
//!   echo works before login; unknown types are ignored.
//! - Data to an online user is forwarded and the sender gets the relay ACK (type 4 in
//!   the v6 dialect, 54 in the seed's); for a user who is not online the offline hook
//!   decides whether the sender gets it. Data to `"0"` goes to
//!   [`ServerHooks::on_c2s_message`], deduplicated by fingerprint for 10 minutes,
//!   with an ACK for every copy. QoS frames the server writes are resent until
//!   acknowledged and reported to [`ServerHooks::on_s2c_lost`] when they never are.
//!
//! # Different on purpose
//!
//! - `from` of data is overwritten with the sender's logged-in user id, so nobody can
//!   send as someone else. The C2S dedup is therefore per user and fingerprint, and a
//!   client's ACK only clears that client's own pending frames.
//! - A per-connection rate limit answers each frame over it with an error frame
//!   (type 52) of code [`ERROR_RATE_LIMITED`] whose message is the refused text; the
//!   frame is not processed and the socket stays open.
//! - A cap on open connections (refused with HTTP 503 before the upgrade), on pending
//!   S2C QoS frames per user (a forwarded message over it takes the offline path), and
//!   on frames queued for one socket. A client that stops reading is dropped once a
//!   write has waited for the read timeout. The C2S dedup remembers at most
//!   `c2s_dedup_max_entries` fingerprints.
//! - Data or echo the server will not pass on (a fingerprint over
//!   [`MAX_FINGERPRINT_BYTES`], or a frame that would exceed the frame limit once
//!   `from` is rewritten) is answered with an error frame of code
//!   [`ERROR_INVALID_FRAME`]; the socket stays open.
//! - Nobody may log in as `"0"`, the server's own id.
//! - A login or a text frame the server cannot read is answered before the close
//!   (upstream closes the socket without a word):
//!   - a login the server cannot read (no body, a body that is not JSON, a field that
//!     cannot be coerced, no or an empty `loginUserId`, or `"0"`) gets a login reply
//!     (type 50) of code 4, [`ResultCode::InvalidProtocol`](crate::protocol::ResultCode)
//!     (`COMMON_INVALID_PROTOCAL`), with `firstLoginTime` -1, as a refused login does,
//!     and then the close;
//!   - a text that is not a frame (not JSON, not an object, or a field that cannot be
//!     coerced) gets an error frame (type 52) of code [`ERROR_INVALID_FRAME`] whose
//!     `errorMsg` says what was wrong (`bad frame: ...`), and then the close.
//! - Graceful shutdown: stop accepting, close every socket with 1001, finish within a
//!   bound.
//! - Metrics ([`MetricsSnapshot`]), also served in the Prometheus text format.
//! - TLS (`wss://`) with a given certificate and key.
//! - Echo replies are not kept for resending (upstream queues them to user `"0"`,
//!   where every resend fails), and a message split into WebSocket fragments is
//!   reassembled rather than refused.

mod background;
#[cfg(feature = "cluster")]
pub mod cluster;
mod config;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod history;
mod hooks;
mod metrics;
mod rooms;
mod serve;
mod session;
mod state;
mod store;

pub use background::{RunningServer, spawn_background};
pub use config::{ClusterConfig, PemSource, RateLimit, S2cQosConfig, ServerConfig, TlsConfig};
pub use hooks::{AcceptAll, LogoutReason, Moderation, ServerHooks};
pub use metrics::{ClusterSnapshot, MetricsSnapshot, RejectReason};
pub use rooms::RoomsConfig;
pub use serve::{CreateRoomError, PushError, Server, ServerHandle};
pub use store::{Store, StoreConfig, StoreError, StoreHandle, StorePath, StoredMessage};

/// The `errorCode` of the error frame (type 52) that answers a frame over the rate
/// limit. Outside the seed's code table (0–4, 201–205, 301); 429 as in HTTP's
/// "Too Many Requests".
pub const ERROR_RATE_LIMITED: i32 = 429;

/// The `errorCode` of the error frame that answers a frame the server will not take.
/// The seed's `COMMON_INVALID_PROTOCAL`.
///
/// For a data or echo frame it will not pass on (a fingerprint over
/// [`MAX_FINGERPRINT_BYTES`], or a frame that would exceed the frame limit once `from`
/// is rewritten) the socket stays open. For a text that is not a frame at all (not
/// JSON, not an object, or a field that cannot be coerced) the socket is closed after
/// it, and `errorMsg` says what was wrong.
pub const ERROR_INVALID_FRAME: i32 = 4;

/// The longest fingerprint the server accepts (a UUID is 36 bytes).
pub const MAX_FINGERPRINT_BYTES: usize = 128;
