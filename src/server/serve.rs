//! The listener, the accept loop, graceful shutdown, and the host program's handle.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::config::{ServerConfig, TlsConfig};
use super::hooks::ServerHooks;
use super::metrics::{Metrics, MetricsSnapshot, RejectReason, serve_metrics};
use super::session::{self, ConnectionGuard};
use super::state::{Command, DeliverError, Shared};
use super::store::{StoreError, StoreHandle};
use crate::protocol::{Frame, KickoutCode};

/// Why [`ServerHandle::push`] could not hand a frame to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The user has no session messages are routed to.
    #[error("the user is not online")]
    NotOnline,
    /// The user already has the maximum of unacknowledged QoS frames.
    #[error("too many unacknowledged QoS frames for this user")]
    TooManyPending,
    /// The user's socket has the maximum of frames waiting to be written.
    #[error("the user's outbound queue is full")]
    QueueFull,
    /// The encoded frame is larger than the frame limit.
    #[error("the frame is larger than the frame limit")]
    TooLarge,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Why [`ServerHandle::create_room`] did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateRoomError {
    /// The name is not a valid room name; nothing changed.
    #[error(transparent)]
    Name(#[from] crate::protocol::RoomNameError),
    /// The room is open on this node, but the store did not keep it: after a
    /// restart it is not private.
    #[error("the room is open but not stored: {0}")]
    Store(StoreError),
    /// The room is open on this node, but the other nodes of the cluster did not
    /// hear of it (NATS is away): there it is not private.
    #[cfg(feature = "cluster")]
    #[error("the room is open on this node but not shared with the others: {0}")]
    Cluster(super::cluster::ClusterError),
}

fn tls_acceptor(tls: &TlsConfig) -> io::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let cert_pem = tls.cert_chain.load()?;
    let key_pem = tls.private_key.load()?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("bad certificate PEM", &e))?;
    if certs.is_empty() {
        return Err(invalid("bad certificate PEM", &"no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| invalid("bad key PEM", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("certificate and key", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A bound server, ready to [`serve`](Server::serve).
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use bevy_im::server::{AcceptAll, Server, ServerConfig};
/// let server = Server::bind(ServerConfig::default(), AcceptAll).await?;
/// let handle = server.handle();
/// tokio::spawn(server.serve());
/// // ... later
/// handle.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.shared.local_addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Server {
    /// Binds the listener (and the metrics listener), loads TLS material, and checks
    /// nothing else: the server does no work until [`serve`](Self::serve).
    pub async fn bind(config: ServerConfig, hooks: impl ServerHooks) -> io::Result<Self> {
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener = listen(config.listen, config.listen_backlog)?;
        let local_addr = listener.local_addr()?;
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let metrics_addr = metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let store = StoreHandle::open(&config.store, config.store_limits.clone())
            .map_err(io::Error::other)?;
        let private = store.private_rooms().await.map_err(io::Error::other)?;
        let shared = Arc::new(Shared::new(
            config,
            Box::new(hooks),
            local_addr,
            metrics_addr,
            store,
        ));
        // Rooms hosts created on any node of a cluster.
        #[cfg(feature = "cluster")]
        let mut shared_rooms = Vec::new();
        #[cfg(feature = "cluster")]
        if let Some(config) = shared.config.cluster.clone() {
            let limits = shared.config.store_limits.clone();
            let cluster = super::cluster::Cluster::connect(config, limits)
                .await
                .map_err(io::Error::other)?;
            shared_rooms = cluster.shared_rooms().await.map_err(io::Error::other)?;
            let _ = shared.cluster.set(Arc::new(cluster));
        }
        #[cfg(not(feature = "cluster"))]
        if shared.config.cluster.is_some() {
            return Err(io::Error::other(
                "this im-server was built without the `cluster` feature",
            ));
        }
        {
            // Private rooms and their members survive a restart.
            let mut state = shared.lock();
            for (room, members) in private {
                state.rooms.create(&room, true, None);
                for user in members {
                    state.rooms.restore_member(&room, &user);
                }
            }
        }
        // The cluster's settings win over what this node's store remembers; the store
        // learns which rooms are private, to keep their members here.
        #[cfg(feature = "cluster")]
        for (room, settings) in shared_rooms {
            shared
                .lock()
                .rooms
                .create(&room, settings.private, settings.cap);
            shared
                .store
                .set_private(&room, settings.private)
                .await
                .map_err(io::Error::other)?;
        }
        Ok(Self {
            shared,
            listener,
            metrics_listener,
            tls,
        })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The address of the metrics endpoint, when one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.shared.metrics_addr
    }

    /// A handle for the host program; it stays valid after the server stops.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
            tls: self.tls.is_some(),
        }
    }

    /// Accepts and serves connections until [`ServerHandle::shutdown`] is called; then
    /// stops accepting, closes every session with a close frame, and returns within
    /// the configured shutdown timeout (sessions still open then are aborted).
    pub async fn serve(self) {
        let Self {
            shared,
            listener,
            metrics_listener,
            tls,
        } = self;
        shared
            .serving
            .store(true, std::sync::atomic::Ordering::Release);
        let mut shutdown = shared.shutdown.subscribe();
        let mut background = JoinSet::new();
        background.spawn(qos_loop(shared.clone()));
        #[cfg(feature = "cluster")]
        if let Some(cluster) = shared.cluster.get() {
            background.spawn(cluster.clone().run(shared.clone()));
        }
        if let Some(l) = metrics_listener {
            let s = shared.clone();
            background.spawn(serve_metrics(
                l,
                move || s.snapshot(),
                shared.shutdown.subscribe(),
            ));
        }
        let slots = Arc::new(Semaphore::new(shared.config.max_connections));
        let handshakes = Arc::new(Semaphore::new(shared.config.max_handshakes));
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = super::state::until_shutdown(&mut shutdown) => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            shared.metrics.reject(RejectReason::ConnectionLimit);
                            refuse_over_capacity(&tcp, tls.is_some());
                            continue;
                        };
                        let _ = tcp.set_nodelay(true);
                        let guard = ConnectionGuard::new(shared.clone(), permit);
                        connections.spawn(connection(
                            shared.clone(),
                            tcp,
                            peer,
                            tls.clone(),
                            guard,
                            handshakes.clone(),
                        ));
                    }
                    Err(e) => {
                        // Out of descriptors or a reset before accept: back off briefly.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        tracing::debug!(
            sessions = connections.len(),
            "stopped accepting; closing sessions"
        );
        let bound = shared.config.shutdown_timeout;
        let drained = tokio::time::timeout(bound, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "{} sessions still open after {bound:?}; aborting them",
                connections.len()
            );
        }
        connections.shutdown().await;
        background.shutdown().await;
        tracing::debug!("stopped");
        shared.stopped.send_replace(true);
    }
}

fn refuse_over_capacity(tcp: &TcpStream, tls: bool) {
    if !tls {
        let _ = tcp.try_write(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    }
}

async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    guard: ConnectionGuard,
    handshakes: Arc<Semaphore>,
) {
    let deadline = Instant::now() + shared.config.handshake_timeout;
    tracing::trace!(%peer, "accepted");
    // At most `max_handshakes` are in their handshake at once; the others wait for a
    // slot (in order) within their handshake deadline, so a login storm is served,
    // late rather than refused, while slow handshakes cannot take every slot.
    let Ok(Ok(handshake)) = tokio::time::timeout_at(deadline, handshakes.acquire_owned()).await
    else {
        shared.metrics.reject(RejectReason::HandshakeLimit);
        refuse_over_capacity(&tcp, tls.is_some());
        return;
    };
    // What is awaited lives in the task for the connection's life: a TLS session's
    // state (several KiB) is boxed, so that a plain connection does not carry room
    // for it.
    let Some(acceptor) = tls else {
        session::run(shared, tcp, deadline, handshake).await;
        drop(guard);
        return;
    };
    // Bound before the session's await, so that the task does not keep room for the
    // accept's result beside the session.
    let stream = match tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(tcp))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            shared.metrics.reject(RejectReason::BadHandshake);
            return;
        }
        Err(_) => {
            shared.metrics.reject(RejectReason::HandshakeTimeout);
            return;
        }
    };
    Box::pin(session::run(shared, stream, deadline, handshake)).await;
    drop(guard);
}

/// Binds `addr` with a listen backlog of `backlog` (and `SO_REUSEADDR`, so a
/// restarted server gets its address back at once).
fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Resends and loss reports of server-to-client QoS, on each frame's own deadline.
async fn qos_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let (lost, next) = shared.run_timers(Instant::now());
        for (user, frame) in lost {
            tokio::spawn(settle_lost(shared.clone(), user, frame));
        }
        let next = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shared.qos_wake.notified() => {}
            _ = super::state::until_shutdown(&mut shutdown) => return,
        }
    }
}

/// What becomes of a server-to-client frame that ran out of resends: a user's
/// direct message relayed live, on a server with the social extension, goes to the
/// receiver's offline box, and from there at once to the receiver while it is
/// online (the box keeps it until it is ACKed); a message from the box stays there;
/// anything else (the host's own pushes included), or what
/// the box refuses, is reported to the host. Room messages are in the room's history (a client catches up on its next
/// join), and a frame that came from the box (it has a `mid`) is still there.
pub(crate) async fn settle_lost(shared: Arc<Shared>, user: String, frame: Frame) {
    if frame.mid.is_some() && !frame.to_id().starts_with(crate::protocol::ROOM_PREFIX) {
        // From the offline box, where it stays until the user ACKs it.
        return;
    }
    let keep = shared.config.extensions
        && frame.mid.is_none()
        && frame.from_id() != crate::protocol::SERVER_ID
        && !frame.to_id().starts_with(crate::protocol::ROOM_PREFIX);
    if !keep {
        return s2c_lost(&shared, &user, &frame);
    }
    let stored = shared
        .log()
        .offline_push(
            &user,
            frame.from_id(),
            frame.content(),
            frame.typeu,
            frame.fp.as_deref(),
            session::now_ms(),
        )
        .await;
    match stored {
        Ok(m) => {
            Metrics::inc(&shared.metrics.s2c_kept);
            // Online (again): delivered from the box at once.
            let frame = session::offline_frame(&user, m);
            let text = frame.to_json();
            let mut state = shared.lock();
            if let Err(DeliverError::Refused(r)) =
                shared.deliver(&mut state, &user, &frame, text, None)
            {
                // Left in the box for the next login.
                shared.metrics.reject(r);
            }
        }
        Err(e) => {
            tracing::warn!(%user, "an unacknowledged frame could not be kept: {e}");
            s2c_lost(&shared, &user, &frame);
        }
    }
}

/// Reports a server-to-client frame given up to the host.
fn s2c_lost(shared: &Shared, user: &str, frame: &Frame) {
    tracing::debug!(%user, fp = ?frame.fp, "server-to-client QoS frame lost");
    // A panicking hook must not stop every other user's resends.
    let call = std::panic::AssertUnwindSafe(|| shared.hooks.on_s2c_lost(user, frame));
    if std::panic::catch_unwind(call).is_err() {
        tracing::error!(%user, "the on_s2c_lost hook panicked");
    }
}

/// The host program's handle on a server: push data, kick users, read presence and
/// metrics, shut down. Cheap to clone; every method is safe to call from any thread.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    tls: bool,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.shared.local_addr)
            .finish()
    }
}

impl ServerHandle {
    /// A handle on `shared` alone, with no listener: the scripted server tests push
    /// through it.
    #[cfg(test)]
    pub(crate) fn over(shared: Arc<Shared>) -> Self {
        Self { shared, tls: false }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The WebSocket URL clients connect to, such as `ws://127.0.0.1:3000/websocket`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!(
            "{scheme}://{}{}",
            self.shared.local_addr, self.shared.config.path
        )
    }

    /// The address of the metrics endpoint, when one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.shared.metrics_addr
    }

    /// Sends data from the server (`from` = `"0"`, type 2) to `user`'s socket.
    ///
    /// With `qos` the frame gets a fingerprint, which is returned; it is resent until
    /// the client acknowledges it, and [`ServerHooks::on_s2c_lost`] hears of it when it
    /// never does.
    pub fn push(
        &self,
        user: &str,
        content: impl Into<String>,
        qos: bool,
        typeu: i32,
    ) -> Result<Option<String>, PushError> {
        if self.shared.is_shutting_down() {
            return Err(PushError::ShuttingDown);
        }
        let frame = Frame::data(crate::protocol::SERVER_ID, user, content, qos, None, typeu);
        let text = frame
            .encode_with_limit(self.shared.config.max_frame_bytes)
            .map_err(|_| PushError::TooLarge)?;
        let mut state = self.shared.lock();
        match self.shared.deliver(&mut state, user, &frame, text, None) {
            Ok(()) => {}
            Err(DeliverError::NotOnline) => return Err(PushError::NotOnline),
            Err(DeliverError::Refused(r)) => {
                self.shared.metrics.reject(r);
                return Err(match r {
                    RejectReason::PendingS2cFull => PushError::TooManyPending,
                    _ => PushError::QueueFull,
                });
            }
        }
        let fp = frame.fp.clone();
        Ok(fp)
    }

    /// Creates (or updates) room `name`: kept when empty; a `private` room lets in only
    /// the users [`ServerHooks::may_join`] allows, and its members are stored (they
    /// survive a restart); `cap` overrides the member cap. In a cluster (feature
    /// `cluster`), every node has the room with the same settings, within a moment.
    ///
    /// # Errors
    /// [`CreateRoomError::Name`] for an invalid name, and nothing changed. The others
    /// say the room is open on this node but not kept everywhere it should be:
    /// [`CreateRoomError::Store`] (a private room would be public after a restart)
    /// and `CreateRoomError::Cluster` (feature `cluster`: the other nodes did not hear of it); calling
    /// again once the store or NATS is back completes it.
    pub async fn create_room(
        &self,
        name: &str,
        private: bool,
        cap: Option<usize>,
    ) -> Result<(), CreateRoomError> {
        crate::protocol::validate_room_name(name)?;
        self.shared.lock().rooms.create(name, private, cap);
        self.shared
            .store
            .set_private(name, private)
            .await
            .map_err(CreateRoomError::Store)?;
        #[cfg(feature = "cluster")]
        if let Some(cluster) = self.shared.cluster.get() {
            let settings = super::cluster::RoomSettings { private, cap };
            if let Err(e) = cluster.share_room(name, settings).await {
                self.shared.metrics.reject(RejectReason::ClusterFailed);
                return Err(CreateRoomError::Cluster(e));
            }
        }
        Ok(())
    }

    /// Every room with its members and their presence, by name.
    pub fn rooms(&self) -> Vec<(String, Vec<crate::protocol::Member>)> {
        self.shared.lock().rooms.snapshot()
    }

    /// Kicks every socket logged in as `user` (kickout code 2, `KICKOUT_FOR_ADMIN`,
    /// with `reason`), then closes them. Returns how many sockets were told.
    pub fn kick(&self, user: &str, reason: Option<&str>) -> usize {
        let state = self.shared.lock();
        state
            .sessions
            .values()
            .filter(|e| e.user.as_deref() == Some(user))
            .filter(|e| {
                e.tx.send(Command::Kick {
                    code: KickoutCode::Admin,
                    reason: reason.map(str::to_owned),
                })
                .is_ok()
            })
            .count()
    }

    /// The users with a session messages are routed to, sorted.
    pub fn online_users(&self) -> Vec<String> {
        let mut users: Vec<String> = self.shared.lock().online.keys().cloned().collect();
        users.sort();
        users
    }

    /// Whether `user` has a session messages are routed to.
    pub fn is_online(&self, user: &str) -> bool {
        self.shared.lock().online.contains_key(user)
    }

    /// Where `user` is online as this node sees the cluster (feature `cluster`): this
    /// node's id when logged in here, another live node's id, or `None`.
    #[cfg(feature = "cluster")]
    pub fn node_of(&self, user: &str) -> Option<String> {
        let cluster = self.shared.cluster.get()?;
        if self.is_online(user) {
            return Some(cluster.node_id().to_owned());
        }
        cluster.route(user)
    }

    /// A copy of the counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.snapshot()
    }

    /// Starts a graceful shutdown and returns at once; [`Server::serve`] returns once
    /// it is done.
    pub fn begin_shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Shuts down gracefully: stops accepting, sends every session a close frame
    /// (1001), and waits until the server has stopped, which takes at most the
    /// configured shutdown timeout plus the close linger. Returns at once if the
    /// server was never served.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        if !self
            .shared
            .serving
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        self.stopped().await;
    }

    /// Waits until the server has stopped.
    pub async fn stopped(&self) {
        let mut stopped = self.shared.stopped.subscribe();
        let _ = stopped.wait_for(|s| *s).await;
    }
}
