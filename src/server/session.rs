//! One connection's protocol state: what each frame does (PROTOCOL.md §6–§11, with
//! the changes of DESIGN.md §5), split by job. `Session` is plain state: it takes a
//! frame and the time, changes the shared state, and queues its replies; the socket
//! task around it (`socket`) only reads, writes and keeps the deadlines.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::{ERROR_INVALID_FRAME, ERROR_RATE_LIMITED, MAX_FINGERPRINT_BYTES};

#[cfg(feature = "cluster")]
mod cluster;
mod login;
mod relay;
mod social;
mod socket;
#[cfg(test)]
mod tests;

#[cfg(feature = "cluster")]
pub(crate) use social::fan_out;
pub(crate) use social::offline_frame;
use social::{Job, served_extensions};
#[cfg(feature = "fuzzing")]
pub(crate) use socket::SessionCleanup;
pub(crate) use socket::{ConnectionGuard, run};

use super::hooks::LogoutReason;
use super::metrics::{Metrics, RejectReason};
use super::state::{Command, DeliverError, HookCall, Outgoing, Registered, SessionId, Shared};
use crate::protocol::{
    ClientKind, ErrorResponse, Frame, KickoutCode, KickoutInfo, LoginInfo, LoginResponse,
    ROOM_PREFIX, ResultCode, ServerKind, decode_body, room_code, room_of_address,
};

/// The close reason upstream writes on every close it makes.
const BYE: &str = "Bye";

/// Milliseconds since the Unix epoch: the `firstLoginTime` a fresh login is given.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A token bucket: per connection, or per user in the shared state.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(limit: super::RateLimit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.burst.max(1)),
            capacity: f64::from(limit.burst.max(1)),
            per_second: f64::from(limit.per_second),
            last: now,
        }
    }

    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How handling a frame ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Keep reading.
    Continue,
    /// Write what is queued, then close with this code and reason.
    Close {
        code: u16,
        reason: String,
        end: LogoutReason,
    },
}

impl Step {
    fn bye(end: LogoutReason) -> Self {
        Self::Close {
            code: 1000,
            reason: BYE.to_owned(),
            end,
        }
    }
}

/// The protocol state of one socket. Handling a frame is synchronous: it updates the
/// shared state, queues replies for this socket in `out`, and says whether to close.
pub(crate) struct Session {
    id: SessionId,
    shared: Arc<Shared>,
    user: Option<String>,
    first_login_time: i64,
    bucket: Option<TokenBucket>,
    pub(crate) out: Vec<Outgoing>,
    /// Work that waits for the store, run before this frame's replies are written.
    jobs: Vec<Job>,
}

impl Session {
    pub(crate) fn new(id: SessionId, shared: Arc<Shared>, now: Instant) -> Self {
        let bucket = shared.config.rate_limit.map(|r| TokenBucket::new(r, now));
        Self {
            id,
            shared,
            user: None,
            first_login_time: 0,
            bucket,
            out: Vec::new(),
            jobs: Vec::new(),
        }
    }

    fn dialect(&self) -> crate::protocol::Dialect {
        self.shared.config.dialect
    }

    fn push(&mut self, frame: &Frame, kind: ServerKind) {
        self.out.push(Outgoing {
            text: frame.to_json(),
            kind,
        });
    }

    /// An error frame whose message is cut until the frame fits the size limit.
    fn push_error(&mut self, code: i32, msg: &str) {
        let limit = self.shared.config.max_frame_bytes;
        let mut msg = msg.to_owned();
        loop {
            let frame = Frame::error_response(&ErrorResponse {
                error_code: code,
                error_msg: msg.clone(),
            });
            let text = frame.to_json();
            if text.len() <= limit || msg.is_empty() {
                self.out.push(Outgoing {
                    text,
                    kind: ServerKind::Error,
                });
                return;
            }
            let mut cut = msg.len() / 2;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
        }
    }

    /// Handles one inbound text frame.
    pub(crate) fn handle_text(&mut self, text: &str, now: Instant) -> Step {
        let shared = self.shared.clone();
        let limit = shared.config.max_frame_bytes;
        if text.len() > limit {
            shared.metrics.reject(RejectReason::FrameTooLarge);
            return too_large(limit);
        }
        if let Some(bucket) = &mut self.bucket
            && !bucket.take(now)
        {
            shared.metrics.reject(RejectReason::RateLimited);
            self.push_error(ERROR_RATE_LIMITED, text);
            return Step::Continue;
        }
        let frame = match Frame::decode(text) {
            Ok(f) => f,
            Err(e) => {
                // Upstream closes without a word; the client is told why first.
                tracing::debug!(session = self.id, "closing on a bad frame: {e}");
                shared.metrics.reject(RejectReason::BadFrame);
                self.push_error(ERROR_INVALID_FRAME, &format!("bad frame: {e}"));
                return Step::bye(LogoutReason::Closed);
            }
        };
        let kind = frame.client_kind();
        shared.metrics.frame_in(kind);
        // The per-user limit: shared by all of the user's sockets.
        if let (Some(user), Some(limit), ClientKind::Data | ClientKind::Room) =
            (&self.user, shared.config.user_rate_limit, kind)
        {
            let allowed = shared
                .lock()
                .user_buckets
                .entry(user.clone())
                .or_insert_with(|| TokenBucket::new(limit, now))
                .take(now);
            if !allowed {
                shared.metrics.reject(RejectReason::RateLimited);
                self.push_error(ERROR_RATE_LIMITED, text);
                return Step::Continue;
            }
        }
        match kind {
            ClientKind::Login => self.login(&frame),
            ClientKind::Echo => {
                let mut echo = frame;
                echo.ty = self.dialect().server_type(ServerKind::EchoResponse);
                if echo
                    .encode_with_limit(self.shared.config.max_frame_bytes)
                    .is_ok()
                {
                    self.push(&echo, ServerKind::EchoResponse);
                } else {
                    self.shared.metrics.reject(RejectReason::FrameTooLarge);
                    self.push_error(ERROR_INVALID_FRAME, "the echo would exceed the frame limit");
                }
                Step::Continue
            }
            ClientKind::Logout => Step::bye(LogoutReason::Logout),
            ClientKind::Room if !shared.config.extensions => {
                let ty = frame.ty;
                tracing::debug!(session = self.id, ty, "ignoring an unsupported type");
                shared.metrics.reject(RejectReason::UnknownType);
                Step::Continue
            }
            ClientKind::Other(_) => {
                let ty = frame.ty;
                tracing::debug!(session = self.id, ty, "ignoring an unsupported type");
                shared.metrics.reject(RejectReason::UnknownType);
                Step::Continue
            }
            ClientKind::KeepAlive | ClientKind::Data | ClientKind::Ack | ClientKind::Room => {
                let Some(user) = self.user.clone() else {
                    shared.metrics.reject(RejectReason::NotLoggedIn);
                    self.push_error(ResultCode::ResponseForUnlogin.code(), &frame.to_json());
                    return Step::bye(LogoutReason::Closed);
                };
                match kind {
                    ClientKind::KeepAlive => self.keepalive(&user),
                    ClientKind::Data => self.data(&user, frame, now),
                    ClientKind::Room => self.room_request(&user, &frame),
                    _ => {
                        let acked = {
                            let mut state = shared.lock();
                            shared.ack_pending(&mut state, &user, frame.to_id(), frame.content())
                        };
                        if let Some(acked) = &acked
                            && acked.mid.is_none()
                            && shared.config.ack_on_receipt
                        {
                            shared.receipt(&user, acked);
                        }
                        // A message from the offline box leaves it once ACKed.
                        if let Some(acked) = acked
                            && let Some(mid) = acked.mid
                            && !acked.to_id().starts_with(ROOM_PREFIX)
                        {
                            let (shared, user) = (shared.clone(), user.to_owned());
                            tokio::spawn(async move {
                                if let Err(e) = shared.log().offline_remove(&user, mid).await {
                                    tracing::warn!("offline message not removed: {e}");
                                }
                            });
                        }
                    }
                }
                Step::Continue
            }
        }
    }
}

fn too_large(limit: usize) -> Step {
    Step::Close {
        code: 1009,
        reason: format!("Max frame length of {limit} has been exceeded."),
        end: LogoutReason::Closed,
    }
}
