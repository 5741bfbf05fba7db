//! The socket task around a [`Session`]: the upgrade, the read loop with its
//! deadlines, writes within the read timeout, and the cleanup however it ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::{sleep_until, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::*;
use crate::server::handshake::{Handshake, upgrade};
use crate::server::metrics::out_index;
use crate::server::state::MailRx;

/// The most queued frames written with one flush.
const WRITE_BURST: usize = 64;

/// The read and write buffer each socket starts with; larger frames grow them.
const SOCKET_BUFFER_BYTES: usize = 512;

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
pub(crate) struct SessionCleanup {
    shared: Arc<Shared>,
    id: SessionId,
    pub(crate) end: LogoutReason,
    /// Set once the session left routing: the user it was routed as, with its
    /// `firstLoginTime`, if any.
    unrouted: Option<Option<(String, i64)>>,
}

impl SessionCleanup {
    pub(crate) fn new(shared: Arc<Shared>, id: SessionId) -> Self {
        Self {
            shared,
            id,
            end: LogoutReason::Closed,
            unrouted: None,
        }
    }

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
                let t = state.online.remove(&u).map_or(0, |r| r.first_login_time);
                Some((u, t))
            }
            _ => None,
        };
        self.unrouted = Some(user);
    }
}

impl Drop for SessionCleanup {
    fn drop(&mut self) {
        self.unroute();
        if let Some(Some((user, first_login_time))) = self.unrouted.take() {
            #[cfg(not(feature = "cluster"))]
            let _ = first_login_time;
            {
                // Rooms: a logout leaves them; anything else shows the user offline
                // for the grace period, unless another socket already took over.
                let mut state = self.shared.lock();
                state
                    .hook_queue
                    .push_back(HookCall::Logout(user.clone(), self.end));
                if !state.online.contains_key(&user) {
                    state.user_buckets.remove(&user);
                    #[cfg(feature = "cluster")]
                    state.box_sent.remove(&user);
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
            // The other nodes stop routing the user here (unless a newer login
            // claimed it meanwhile).
            #[cfg(feature = "cluster")]
            if let Some(cluster) = self.shared.cluster.get().cloned()
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                runtime.spawn(async move {
                    if let Err(e) = cluster.release(&user, first_login_time).await {
                        tracing::debug!(%user, "cluster: presence not released: {e}");
                    }
                });
            }
        }
    }
}

/// Writes the frames already handed to this socket (their senders may hold relay
/// ACKs for them), within `linger`. Call after [`SessionCleanup::unroute`], so that
/// no more can arrive.
async fn flush_queued<S>(
    ws: &mut WebSocketStream<S>,
    shared: &Shared,
    rx: &mut MailRx,
    queued: &AtomicUsize,
    linger: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    while let Some(cmd) = rx.try_recv() {
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
        o = timeout_at(handshake_deadline, Box::pin(upgrade(&mut stream, &config.path))) => o,
        _ = crate::server::state::until_shutdown(&mut shutdown) => return,
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
            Box::pin(hold_silently(
                &mut stream,
                config.read_timeout,
                &mut shutdown,
            ))
            .await;
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
            _ = crate::server::state::until_shutdown(shutdown) => return,
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
    let (id, mut rx, queued) = shared.open_session();
    let mut cleanup = SessionCleanup::new(shared.clone(), id);
    let linger = shared.config.close_linger;
    let read_timeout = shared.config.read_timeout;
    let mut session = Session::new(id, shared.clone(), Instant::now());
    let mut deadline = Instant::now() + read_timeout;
    let login_deadline = Instant::now() + shared.config.login_timeout;
    loop {
        tokio::select! {
            biased;
            _ = crate::server::state::until_shutdown(&mut shutdown) => {
                cleanup.unroute();
                Box::pin(flush_queued(&mut ws, &shared, &mut rx, &queued, linger)).await;
                Box::pin(send_close(&mut ws, 1001, "Going away", linger)).await;
                cleanup.end = LogoutReason::Shutdown;
                break;
            }
            cmd = rx.recv() => match cmd {
                Some(Command::Send(out)) => {
                    // The frames queued behind it go in the same write: one flush, and
                    // one syscall, for a burst instead of one per frame.
                    let mut burst = vec![out];
                    while burst.len() < WRITE_BURST
                        && let Some(next) = rx.try_recv_frame()
                    {
                        burst.push(next);
                    }
                    queued.fetch_sub(burst.len(), Ordering::Relaxed);
                    if !write_out(&mut ws, &shared, burst).await {
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
                    Box::pin(flush_queued(&mut ws, &shared, &mut rx, &queued, linger)).await;
                    if write_out(&mut ws, &shared, [out]).await {
                        Box::pin(send_close(&mut ws, 1000, BYE, linger)).await;
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
                        // RFC 6455 §7.4.1: 1002, a protocol error.
                        tracing::debug!(session = id, "protocol violation: {e}");
                        shared.metrics.reject(RejectReason::ProtocolViolation);
                        Step::Close {
                            code: 1002,
                            reason: "protocol error".to_owned(),
                            end: LogoutReason::Closed,
                        }
                    }
                    Some(Err(WsError::Utf8(_))) => {
                        // RFC 6455 §7.4.1: 1007, data inconsistent with its type.
                        shared.metrics.reject(RejectReason::ProtocolViolation);
                        Step::Close {
                            code: 1007,
                            reason: "text is not UTF-8".to_owned(),
                            end: LogoutReason::Closed,
                        }
                    }
                    Some(Err(_)) => break,
                };
                Box::pin(session.run_jobs()).await;
                let out: Vec<Outgoing> = session.out.drain(..).collect();
                if !write_out(&mut ws, &shared, out).await {
                    break;
                }
                if let Step::Close { code, reason, end } = step {
                    cleanup.unroute();
                    Box::pin(flush_queued(&mut ws, &shared, &mut rx, &queued, linger)).await;
                    Box::pin(send_close(&mut ws, code, &reason, linger)).await;
                    cleanup.end = end;
                    break;
                }
            }
            _ = sleep_until(login_deadline), if session.user.is_none() => {
                shared.metrics.reject(RejectReason::LoginTimeout);
                cleanup.unroute();
                Box::pin(flush_queued(&mut ws, &shared, &mut rx, &queued, linger)).await;
                Box::pin(send_close(&mut ws, 1008, "login timeout", linger)).await;
                break;
            }
            _ = sleep_until(deadline) => {
                shared.metrics.reject(RejectReason::ReadTimeout);
                cleanup.unroute();
                Box::pin(flush_queued(&mut ws, &shared, &mut rx, &queued, linger)).await;
                Box::pin(send_close(&mut ws, 1000, BYE, linger)).await;
                cleanup.end = LogoutReason::TimedOut;
                break;
            }
        }
    }
    tracing::debug!(session = id, user = ?session.user, end = ?cleanup.end, "session ended");
    drop(session);
    drop(cleanup);
}
