//! One connection: the upgrade, the read loop with its deadline, and what each frame
//! does (PROTOCOL.md §6–§11, with the changes of DESIGN.md §5).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::{ERROR_INVALID_FRAME, ERROR_RATE_LIMITED, MAX_FINGERPRINT_BYTES};

mod social;

use social::{Job, served_extensions};

/// The read and write buffer each socket starts with; larger frames grow them.
const SOCKET_BUFFER_BYTES: usize = 8 * 1024;
use super::handshake::{Handshake, upgrade};
use super::hooks::LogoutReason;
use super::metrics::{Metrics, RejectReason, out_index};
use super::state::{
    Command, DeliverError, HookCall, Outgoing, Registered, SessionEntry, SessionId, Shared,
};
use crate::protocol::{
    ClientKind, ErrorResponse, Frame, KickoutCode, KickoutInfo, LoginInfo, LoginResponse,
    ROOM_PREFIX, ResultCode, ServerKind, decode_body, room_code, room_of_address,
};

/// The close reason upstream writes on every close it makes.
const BYE: &str = "Bye";

/// Milliseconds since the Unix epoch: the `firstLoginTime` a fresh login is given.
fn now_ms() -> i64 {
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
    out: Vec<Outgoing>,
    /// Work that waits for the store, run before this frame's replies are written.
    jobs: Vec<Job>,
}

impl Session {
    fn new(id: SessionId, shared: Arc<Shared>, now: Instant) -> Self {
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
                        // A message from the offline box leaves it once ACKed.
                        if let Some(acked) = acked
                            && let Some(mid) = acked.mid
                            && !acked.to_id().starts_with(ROOM_PREFIX)
                        {
                            let done = shared.store.offline_remove(&user, mid);
                            tokio::spawn(async move {
                                if let Err(e) = done.await {
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

    fn login(&mut self, frame: &Frame) -> Step {
        let shared = self.shared.clone();
        let info = match decode_body::<LoginInfo>(frame.data_content.as_deref()) {
            Ok(info) if info.login_user_id.is_empty() => Err("loginUserId is empty".to_owned()),
            // "0" is the server: a user with that id could pass for it.
            Ok(info) if info.login_user_id == crate::protocol::SERVER_ID => {
                Err("loginUserId \"0\" is the server's".to_owned())
            }
            // Room addresses start with '#': no user may look like one.
            Ok(info) if info.login_user_id.starts_with(ROOM_PREFIX) => {
                Err("loginUserId may not start with '#'".to_owned())
            }
            Ok(info) => Ok(info),
            Err(e) => Err(e.to_string()),
        };
        let info: LoginInfo = match info {
            Ok(info) => info,
            Err(why) => {
                // Upstream closes without a word; the client gets a failed login reply.
                tracing::debug!(session = self.id, "refusing a bad login: {why}");
                shared.metrics.reject(RejectReason::BadLogin);
                let reply = Frame::login_response(
                    frame.from_id(),
                    &LoginResponse {
                        code: ResultCode::InvalidProtocol.code(),
                        first_login_time: -1,
                        ext: Vec::new(),
                    },
                );
                self.push(&reply, ServerKind::LoginResponse);
                return Step::bye(LogoutReason::Closed);
            }
        };
        let user = info.login_user_id.clone();
        if self.user.as_deref() == Some(user.as_str()) {
            // Already logged in on this socket: answer again without checking the token.
            let t = if info.first_login_time > 0 {
                info.first_login_time
            } else {
                self.first_login_time
            };
            let reply = Frame::login_response(
                &user,
                &LoginResponse {
                    code: 0,
                    first_login_time: t,
                    ext: served_extensions(&shared.config),
                },
            );
            self.push(&reply, ServerKind::LoginResponse);
            return Step::Continue;
        }
        let code = shared.hooks.verify_login(
            &user,
            &info.login_token,
            info.extra.as_deref(),
            info.app.as_deref(),
        );
        if code != 0 {
            shared.metrics.reject(RejectReason::LoginRefused);
            let reply = Frame::login_response(
                &user,
                &LoginResponse {
                    code,
                    first_login_time: -1,
                    ext: Vec::new(),
                },
            );
            self.push(&reply, ServerKind::LoginResponse);
            return Step::bye(LogoutReason::Closed);
        }
        let t = if info.first_login_time <= 0 {
            now_ms()
        } else {
            info.first_login_time
        };
        let reply = Frame::login_response(
            &user,
            &LoginResponse {
                code: 0,
                first_login_time: t,
                ext: served_extensions(&shared.config),
            },
        );
        self.push(&reply, ServerKind::LoginResponse);
        Metrics::inc(&shared.metrics.logins_ok);

        let mut calls = Vec::new();
        let mut kick_self = false;
        {
            let mut state = shared.lock();
            // A different user on the same socket: the old one leaves first.
            if let Some(old) = self.user.take()
                && state.online.get(&old).is_some_and(|r| r.session == self.id)
            {
                state.online.remove(&old);
                calls.push(HookCall::Logout(old, LogoutReason::Replaced));
            }
            if let Some(entry) = state.sessions.get_mut(&self.id) {
                entry.user = Some(user.clone());
            }
            let me = Registered {
                session: self.id,
                first_login_time: t,
            };
            match state.online.get(&user).copied() {
                None => {
                    state.online.insert(user.clone(), me);
                    calls.push(HookCall::Login(user.clone(), t));
                }
                Some(old) if info.first_login_time <= 0 || t > old.first_login_time => {
                    // A fresh or newer login: the old socket is kicked.
                    if let Some(entry) = state.sessions.get(&old.session) {
                        let _ = entry.tx.send(Command::Kick {
                            code: KickoutCode::DuplicateLogin,
                            reason: None,
                        });
                    }
                    state.online.insert(user.clone(), me);
                    calls.push(HookCall::Logout(
                        user.clone(),
                        LogoutReason::Kicked(KickoutCode::DuplicateLogin),
                    ));
                    calls.push(HookCall::Login(user.clone(), t));
                }
                Some(old) if t < old.first_login_time => {
                    // A stale session coming back: it is the one kicked.
                    kick_self = true;
                }
                Some(_) => {
                    // Equal times: routing moves here, the old socket stays open.
                    state.online.insert(user.clone(), me);
                    calls.push(HookCall::Logout(user.clone(), LogoutReason::Replaced));
                    calls.push(HookCall::Login(user.clone(), t));
                }
            }
            // Queued in the order decided here; run in that order, outside the lock.
            state.hook_queue.extend(calls);
        }
        tracing::debug!(session = self.id, %user, first_login_time = t, kick_self, "logged in");
        self.user = Some(user.clone());
        self.first_login_time = t;
        shared.run_hooks();
        if kick_self {
            Metrics::inc(&shared.metrics.kickouts);
            let kick = Frame::kickout(
                self.dialect(),
                &user,
                &KickoutInfo {
                    code: KickoutCode::DuplicateLogin.code(),
                    reason: None,
                },
            );
            self.push(&kick, ServerKind::Kickout);
            return Step::bye(LogoutReason::Kicked(KickoutCode::DuplicateLogin));
        }
        {
            // Back within the grace period: shown online again in its rooms.
            let mut state = shared.lock();
            let notices = state.rooms.came_online(&user);
            shared.notify(&mut state, notices);
        }
        self.jobs.push(Job::DeliverOffline);
        Step::Continue
    }

    /// The reply goes to the socket the user is routed to, as upstream's does.
    fn keepalive(&mut self, user: &str) {
        let shared = self.shared.clone();
        let reply = Frame::keepalive_response(user);
        let state = shared.lock();
        match state.online.get(user).map(|r| r.session) {
            Some(s) if s == self.id => {
                drop(state);
                self.push(&reply, ServerKind::KeepAliveResponse);
            }
            Some(s) => {
                let out = Outgoing {
                    text: reply.to_json(),
                    kind: ServerKind::KeepAliveResponse,
                };
                if let Err(DeliverError::Refused(r)) = shared.send_to_session(&state, s, out) {
                    shared.metrics.reject(r);
                }
            }
            None => {}
        }
    }

    fn data(&mut self, user: &str, mut frame: Frame, now: Instant) {
        let shared = self.shared.clone();
        if frame
            .fp
            .as_ref()
            .is_some_and(|fp| fp.len() > MAX_FINGERPRINT_BYTES)
        {
            shared.metrics.reject(RejectReason::BadFrame);
            self.push_error(
                ERROR_INVALID_FRAME,
                &format!("fingerprint longer than {MAX_FINGERPRINT_BYTES} bytes"),
            );
            return;
        }
        // Deliberate difference: nobody can send as someone else.
        frame.from = Some(user.to_owned());
        let Some(to) = frame.to.clone() else {
            shared.metrics.reject(RejectReason::NoReceiver);
            return;
        };
        let dialect = self.dialect();
        let qos_fp = frame.fp.clone().filter(|_| frame.qos);
        if to == crate::protocol::SERVER_ID {
            if let Some(fp) = &qos_fp {
                let duplicate = shared.lock().dedup.seen(user, fp, now);
                let ack = Frame::server_ack(dialect, crate::protocol::SERVER_ID, user, fp);
                self.push(&ack, ServerKind::Ack);
                if duplicate {
                    Metrics::inc(&shared.metrics.c2s_duplicates);
                    return;
                }
            }
            shared.hooks.on_c2s_message(&frame);
            return;
        }
        // The social extension: stored resends, rooms, block lists, moderation.
        if shared.config.extensions {
            // A resend of a message already stored (its ACK was lost): the same ACK again.
            if let Some(fp) = &qos_fp {
                let ack = shared.lock().recent_acks.get(user, fp).cloned();
                if let Some(ack) = ack {
                    Metrics::inc(&shared.metrics.c2s_duplicates);
                    self.push(&ack, ServerKind::Ack);
                    return;
                }
            }
            if let Some(room) = room_of_address(&to) {
                let room = room.to_owned();
                return self.room_message(user, room, frame);
            }
            let blocked = shared
                .lock()
                .blocks
                .get(&to)
                .is_some_and(|b| b.contains(user));
            if blocked {
                shared.metrics.reject(RejectReason::Refused);
                self.push_error(room_code::FORBIDDEN, &frame.to_json());
                return;
            }
            if !self.moderate(user, &to, &mut frame) {
                return;
            }
        }
        // Rewriting `from` (and writing the fields the sender left out) can push a
        // frame over the limit; the receiver's link would be closed by it.
        let Ok(text) = frame.encode_with_limit(shared.config.max_frame_bytes) else {
            shared.metrics.reject(RejectReason::FrameTooLarge);
            self.push_error(
                ERROR_INVALID_FRAME,
                "the forwarded frame would exceed the frame limit",
            );
            return;
        };
        let delivered = {
            let mut state = shared.lock();
            shared.deliver(
                &mut state,
                &to,
                &frame,
                text,
                Some((self.id, &mut self.out)),
            )
        };
        let relay_ack = match delivered {
            Ok(()) => {
                self.keep_pair_history(user, &to, &frame);
                true
            }
            Err(e) => {
                if let DeliverError::Refused(r) = e {
                    shared.metrics.reject(r);
                }
                let host_stored = shared.hooks.on_offline_message(&frame);
                let offline_box = shared.config.extensions && e == DeliverError::NotOnline;
                if !host_stored && offline_box && qos_fp.is_some() {
                    // Stored in the receiver's offline box; the ACK waits for the commit.
                    self.jobs.push(Job::Offline { to, frame });
                    return;
                }
                if !host_stored && matches!(e, DeliverError::Refused(_)) && qos_fp.is_some() {
                    // Never a silent refusal: the sender resends after a back-off.
                    Metrics::inc(&shared.metrics.receiver_busy);
                    self.push_error(room_code::RECEIVER_BUSY, &frame.to_json());
                    return;
                }
                host_stored
            }
        };
        if relay_ack && let Some(fp) = &qos_fp {
            // The relay ACK: from the receiver, to the sender, down the sender's socket.
            let ack = Frame::server_ack(dialect, &to, user, fp);
            self.push(&ack, ServerKind::Ack);
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

/// Counts an open connection and releases its slot however its task ends.
pub(crate) struct ConnectionGuard {
    shared: Arc<Shared>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ConnectionGuard {
    pub(crate) fn new(shared: Arc<Shared>, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        Metrics::inc(&shared.metrics.connections_total);
        Metrics::inc(&shared.metrics.connections_open);
        Self {
            shared,
            _permit: permit,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Removes the session from the shared state however its task ends, and reports the
/// user's logout when this socket was the one routed to.
struct SessionCleanup {
    shared: Arc<Shared>,
    id: SessionId,
    end: LogoutReason,
    /// Set once the session left routing: the user it was routed as, if any.
    unrouted: Option<Option<String>>,
}

impl SessionCleanup {
    /// Takes the session out of routing, so that nothing more is handed to a socket
    /// that is closing; the logout hook still runs when the cleanup is dropped.
    fn unroute(&mut self) {
        if self.unrouted.is_some() {
            return;
        }
        let mut state = self.shared.lock();
        let user = state.sessions.remove(&self.id).and_then(|e| e.user);
        let user = match user {
            Some(u) if state.online.get(&u).is_some_and(|r| r.session == self.id) => {
                state.online.remove(&u);
                Some(u)
            }
            _ => None,
        };
        self.unrouted = Some(user);
    }
}

impl Drop for SessionCleanup {
    fn drop(&mut self) {
        self.unroute();
        if let Some(Some(user)) = self.unrouted.take() {
            {
                // Rooms: a logout leaves them; anything else shows the user offline
                // for the grace period, unless another socket already took over.
                let mut state = self.shared.lock();
                state
                    .hook_queue
                    .push_back(HookCall::Logout(user.clone(), self.end));
                if !state.online.contains_key(&user) {
                    state.user_buckets.remove(&user);
                    let notices = if self.end == LogoutReason::Logout {
                        state.rooms.logged_out(&user)
                    } else {
                        let now = self.shared.uptime(Instant::now());
                        state.rooms.went_offline(&user, now)
                    };
                    self.shared.notify(&mut state, notices);
                    self.shared.qos_wake.notify_one();
                }
            }
            self.shared.run_hooks();
        }
    }
}

/// Writes the frames already handed to this socket (their senders may hold relay
/// ACKs for them), within `linger`. Call after [`SessionCleanup::unroute`], so that
/// no more can arrive.
async fn flush_queued<S>(
    ws: &mut WebSocketStream<S>,
    shared: &Shared,
    rx: &mut mpsc::UnboundedReceiver<Command>,
    queued: &AtomicUsize,
    linger: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    while let Ok(cmd) = rx.try_recv() {
        if let Command::Send(o) = cmd {
            queued.fetch_sub(1, Ordering::Relaxed);
            out.push(o);
        }
    }
    if !out.is_empty() {
        let _ = timeout(linger, write_out(ws, shared, out)).await;
    }
}

/// Serves one accepted socket (after TLS, if any) until it closes.
/// Runs one connection: the upgrade (holding `handshake`, one of the bounded
/// handshake slots, until it ends), then the session.
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    mut stream: S,
    handshake_deadline: Instant,
    handshake: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let config = &shared.config;
    let mut shutdown = shared.shutdown.subscribe();
    let outcome = tokio::select! {
        o = timeout_at(handshake_deadline, upgrade(&mut stream, &config.path)) => o,
        _ = super::state::until_shutdown(&mut shutdown) => return,
    };
    let rest = match outcome {
        Err(_) => {
            shared.metrics.reject(RejectReason::HandshakeTimeout);
            return;
        }
        Ok(Err(_)) => {
            shared.metrics.reject(RejectReason::BadHandshake);
            return;
        }
        Ok(Ok(Handshake::Refused(reason))) => {
            shared.metrics.reject(reason);
            return;
        }
        Ok(Ok(Handshake::WrongPath)) => {
            shared.metrics.reject(RejectReason::WrongPath);
            hold_silently(&mut stream, config.read_timeout, &mut shutdown).await;
            return;
        }
        Ok(Ok(Handshake::Upgraded { rest })) => rest,
    };
    drop(handshake);
    // Tungstenite may read somewhat larger frames so that an oversize one is read
    // whole and answered with 1009 instead of a reset.
    let hard_limit = config.max_frame_bytes.saturating_mul(2).max(1024);
    // Chat frames are small: tungstenite's 128 KiB buffers would make each idle
    // connection cost about a quarter of a megabyte.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        .max_frame_size(Some(hard_limit))
        .max_message_size(Some(hard_limit));
    let ws =
        WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(ws_config)).await;
    serve_socket(shared, ws, shutdown).await;
}

/// A wrong path gets no answer; the socket is held until it has been silent for the
/// read timeout, as upstream's gateway does.
async fn hold_silently<S: AsyncRead + Unpin>(
    stream: &mut S,
    read_timeout: Duration,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) {
    // Upstream holds such a socket for as long as bytes keep trickling in; a cap of a
    // few read timeouts keeps a trickle from occupying a connection slot for ever.
    let give_up = tokio::time::sleep(read_timeout.saturating_mul(4));
    tokio::pin!(give_up);
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            r = timeout(read_timeout, stream.read(&mut buf)) => match r {
                Ok(Ok(n)) if n > 0 => continue,
                _ => return,
            },
            _ = &mut give_up => return,
            _ = super::state::until_shutdown(shutdown) => return,
        }
    }
}

async fn send_close<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str, linger: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    if timeout(linger, ws.close(Some(frame))).await.is_err() {
        return;
    }
    // Wait briefly for the client's close frame so TCP ends cleanly.
    let _ = timeout(linger, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

async fn write_all<S>(
    ws: &mut WebSocketStream<S>,
    metrics: &Metrics,
    out: impl IntoIterator<Item = Outgoing>,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut any = false;
    for o in out {
        metrics.frame_out(out_index(o.kind));
        ws.feed(Message::text(o.text)).await?;
        any = true;
    }
    if any {
        ws.flush().await?;
    }
    Ok(())
}

/// Writes frames; false when the socket failed or the peer has not taken them within
/// the read timeout (a client that stops reading cannot hold a task forever).
async fn write_out<S>(
    ws: &mut WebSocketStream<S>,
    shared: &Shared,
    out: impl IntoIterator<Item = Outgoing>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match timeout(
        shared.config.read_timeout,
        write_all(ws, &shared.metrics, out),
    )
    .await
    {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            shared.metrics.reject(RejectReason::WriteTimeout);
            false
        }
    }
}

async fn serve_socket<S>(
    shared: Arc<Shared>,
    mut ws: WebSocketStream<S>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let id = shared.next_session_id();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    shared.lock().sessions.insert(
        id,
        SessionEntry {
            tx,
            queued: queued.clone(),
            user: None,
        },
    );
    let mut cleanup = SessionCleanup {
        shared: shared.clone(),
        id,
        end: LogoutReason::Closed,
        unrouted: None,
    };
    let linger = shared.config.close_linger;
    let read_timeout = shared.config.read_timeout;
    let mut session = Session::new(id, shared.clone(), Instant::now());
    let mut deadline = Instant::now() + read_timeout;
    let login_deadline = Instant::now() + shared.config.login_timeout;
    loop {
        tokio::select! {
            biased;
            _ = super::state::until_shutdown(&mut shutdown) => {
                cleanup.unroute();
                flush_queued(&mut ws, &shared, &mut rx, &queued, linger).await;
                send_close(&mut ws, 1001, "Going away", linger).await;
                cleanup.end = LogoutReason::Shutdown;
                break;
            }
            cmd = rx.recv() => match cmd {
                Some(Command::Send(out)) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    if !write_out(&mut ws, &shared, [out]).await {
                        break;
                    }
                }
                Some(Command::Kick { code, reason }) => {
                    let user = session.user.clone().unwrap_or_default();
                    let kick = Frame::kickout(
                        shared.config.dialect,
                        &user,
                        &KickoutInfo { code: code.code(), reason },
                    );
                    Metrics::inc(&shared.metrics.kickouts);
                    let out = Outgoing { text: kick.to_json(), kind: ServerKind::Kickout };
                    cleanup.unroute();
                    flush_queued(&mut ws, &shared, &mut rx, &queued, linger).await;
                    if write_out(&mut ws, &shared, [out]).await {
                        send_close(&mut ws, 1000, BYE, linger).await;
                    }
                    cleanup.end = LogoutReason::Kicked(code);
                    break;
                }
                None => break,
            },
            msg = ws.next() => {
                let step = match msg {
                    None => break,
                    Some(Ok(Message::Text(text))) => {
                        deadline = Instant::now() + read_timeout;
                        session.handle_text(text.as_str(), Instant::now())
                    }
                    Some(Ok(Message::Binary(_))) => {
                        shared.metrics.reject(RejectReason::BinaryFrame);
                        Step::bye(LogoutReason::Closed)
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        Step::Continue
                    }
                    Some(Ok(Message::Close(_))) => {
                        // The close reply is queued; draining sends it and ends the stream.
                        let _ = timeout(linger, async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                        break;
                    }
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                        shared.metrics.reject(RejectReason::FrameTooLarge);
                        too_large(shared.config.max_frame_bytes)
                    }
                    Some(Err(WsError::Protocol(e))) => {
                        tracing::debug!(session = id, "protocol violation: {e}");
                        shared.metrics.reject(RejectReason::ProtocolViolation);
                        Step::bye(LogoutReason::Closed)
                    }
                    Some(Err(WsError::Utf8(_))) => {
                        shared.metrics.reject(RejectReason::ProtocolViolation);
                        Step::bye(LogoutReason::Closed)
                    }
                    Some(Err(_)) => break,
                };
                session.run_jobs().await;
                let out: Vec<Outgoing> = session.out.drain(..).collect();
                if !write_out(&mut ws, &shared, out).await {
                    break;
                }
                if let Step::Close { code, reason, end } = step {
                    cleanup.unroute();
                    flush_queued(&mut ws, &shared, &mut rx, &queued, linger).await;
                    send_close(&mut ws, code, &reason, linger).await;
                    cleanup.end = end;
                    break;
                }
            }
            _ = sleep_until(login_deadline), if session.user.is_none() => {
                shared.metrics.reject(RejectReason::LoginTimeout);
                cleanup.unroute();
                flush_queued(&mut ws, &shared, &mut rx, &queued, linger).await;
                send_close(&mut ws, 1008, "login timeout", linger).await;
                break;
            }
            _ = sleep_until(deadline) => {
                shared.metrics.reject(RejectReason::ReadTimeout);
                cleanup.unroute();
                flush_queued(&mut ws, &shared, &mut rx, &queued, linger).await;
                send_close(&mut ws, 1000, BYE, linger).await;
                cleanup.end = LogoutReason::TimedOut;
                break;
            }
        }
    }
    tracing::debug!(session = id, user = ?session.user, end = ?cleanup.end, "session ended");
    drop(session);
    drop(cleanup);
}
