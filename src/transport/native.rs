//! The native transport: one background thread per client running a small tokio runtime
//! with tokio-tungstenite, connected to the ECS side by channels.
//!
//! The ECS side ([`NativeTransport`]) never blocks: commands go to the I/O thread through
//! an unbounded tokio channel (which also wakes it), and events come back through a
//! crossbeam channel drained by [`Transport::poll`]. Inside the thread every link is its
//! own task, so closing an old link never delays opening a new one.
//!
//! The thread starts with the first connect and stops by itself once every link it
//! carried has closed and the `Closed` event has been polled; the next connect starts a
//! fresh one. Dropping the transport stops it too, and waits for it within a bound.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{LinkId, Transport, TransportConfig, TransportError, TransportEvent};

/// How long a closing handshake (our close frame and the peer's echo) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the I/O thread lets its links close when it is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// How long the runtime may wait for blocking work (name lookups) when the thread ends.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(100);
/// How long dropping a [`NativeTransport`] waits for its I/O threads to end.
const DROP_JOIN_BOUND: Duration = Duration::from_secs(2);

/// Numbers the I/O threads of the process, for their names.
static THREAD_SEQ: AtomicU64 = AtomicU64::new(1);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type WsSink = SplitSink<Ws, Message>;
type WsRead = SplitStream<Ws>;
type Writing = Pin<Box<dyn Future<Output = Result<WsSink, WsError>> + Send>>;

/// A WebSocket client transport for native targets (`ws://` and `wss://`).
///
/// TLS is rustls with the ring provider, chosen explicitly (the process-wide default is
/// never consulted), trusting the webpki roots plus
/// [`TransportConfig::extra_roots_der`]. No subprotocol and no compression are requested;
/// only text frames are accepted, and `max_frame_bytes` is enforced both ways.
///
/// ```no_run
/// use bevy_im::transport::{LinkId, NativeTransport, Transport, TransportConfig};
///
/// let mut transport = NativeTransport::new(TransportConfig::default());
/// transport.connect(LinkId(1), "ws://127.0.0.1:3000/websocket");
/// // each frame: drain the events
/// while let Some(event) = transport.poll() {
///     println!("{event:?}");
/// }
/// ```
#[derive(Debug)]
pub struct NativeTransport {
    config: Arc<TransportConfig>,
    events_tx: Sender<TransportEvent>,
    events_rx: Receiver<TransportEvent>,
    /// The thread new links go to.
    active: Option<IoThread>,
    /// Threads told to stop, not joined yet.
    retiring: Vec<IoThread>,
    /// Links connected whose `Closed` has not been polled yet, with their thread's number.
    live: Vec<(LinkId, u64)>,
    /// The link most recently connected, unless it was closed since.
    current: Option<LinkId>,
    /// The link that may send: `current`, once its `Opened` was polled.
    open: Option<LinkId>,
}

/// Watches one I/O thread of a [`NativeTransport`]; it stays valid after the transport
/// is dropped.
#[derive(Debug, Clone)]
pub struct IoThreadWatch {
    finished: Arc<AtomicBool>,
    name: Arc<str>,
}

impl IoThreadWatch {
    /// Whether the thread has run to its end.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// The thread's OS name (unique in the process, at most 15 bytes).
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[derive(Debug)]
struct IoThread {
    generation: u64,
    cmds: UnboundedSender<Cmd>,
    handle: Option<JoinHandle<()>>,
    watch: IoThreadWatch,
}

impl IoThread {
    fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Joins the thread if it has ended; true when there is nothing left to wait for.
    fn try_join(&mut self) -> bool {
        if !self.is_finished() {
            return false;
        }
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            tracing::warn!(thread = %self.watch.name, "the WebSocket I/O thread panicked");
        }
        true
    }
}

/// A command from the ECS side to the I/O thread.
#[derive(Debug)]
enum Cmd {
    Connect { link: LinkId, url: String },
    Send { link: LinkId, text: String },
    Close { link: LinkId },
    Shutdown,
}

/// A command from the I/O thread's dispatcher to one link's task.
#[derive(Debug)]
enum LinkCmd {
    Send(String),
    Close(CloseWhy),
}

/// Why we close a link ourselves.
#[derive(Debug, Clone, Copy)]
enum CloseWhy {
    Client,
    Replaced,
    Shutdown,
}

impl CloseWhy {
    fn code(self) -> u16 {
        match self {
            Self::Client | Self::Replaced => 1000,
            Self::Shutdown => 1001,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Client => "closed by client",
            Self::Replaced => "replaced by a new link",
            Self::Shutdown => "transport shut down",
        }
    }
}

/// Marks an [`IoThreadWatch`] finished when the thread's closure ends, even by panic.
struct FinishGuard(Arc<AtomicBool>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Default for NativeTransport {
    fn default() -> Self {
        Self::new(TransportConfig::default())
    }
}

impl NativeTransport {
    /// A transport with `config`. No thread is started until the first connect.
    pub fn new(config: TransportConfig) -> Self {
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        Self {
            config: Arc::new(config),
            events_tx,
            events_rx,
            active: None,
            retiring: Vec::new(),
            live: Vec::new(),
            current: None,
            open: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// A watch on the I/O thread most recently started, if any was; it can tell when the
    /// thread has ended, also after the transport is dropped.
    pub fn io_thread(&self) -> Option<IoThreadWatch> {
        self.active
            .as_ref()
            .or_else(|| self.retiring.last())
            .map(|io| io.watch.clone())
    }

    /// How many I/O threads this transport has that have not been joined yet (at most one
    /// carries links; others are stopping).
    pub fn io_threads(&self) -> usize {
        self.active.iter().chain(&self.retiring).count()
    }

    fn emit_failure(&self, link: LinkId, error: TransportError) {
        let reason = error.to_string();
        // The transport holds the receiver, so these sends cannot fail.
        let _ = self.events_tx.send(TransportEvent::Error { link, error });
        let _ = self.events_tx.send(TransportEvent::Closed {
            link,
            code: None,
            reason,
        });
    }

    /// Joins retired threads that have ended.
    fn reap(&mut self) {
        self.retiring.retain_mut(|io| !io.try_join());
    }

    /// The running I/O thread, starting one if there is none (or the last one died).
    fn ensure_thread(&mut self) -> Result<&IoThread, String> {
        if self.active.as_ref().is_some_and(IoThread::is_finished)
            && let Some(dead) = self.active.take()
        {
            self.retiring.push(dead);
        }
        if self.active.is_none() {
            self.active = Some(spawn_io_thread(
                self.config.clone(),
                self.events_tx.clone(),
            )?);
        }
        self.active
            .as_ref()
            .ok_or_else(|| "the I/O thread is missing".to_owned())
    }

    /// Tells the active thread to stop once no link is left on it.
    fn retire_if_idle(&mut self) {
        if self.live.is_empty()
            && let Some(io) = self.active.take()
        {
            let _ = io.cmds.send(Cmd::Shutdown);
            self.retiring.push(io);
        }
    }

    fn thread_finished(&self, generation: u64) -> bool {
        self.active
            .iter()
            .chain(&self.retiring)
            .find(|io| io.generation == generation)
            .is_none_or(IoThread::is_finished)
    }

    /// Tracks which links are open from the events handed to the caller.
    fn observe(&mut self, event: &TransportEvent) {
        match event {
            TransportEvent::Opened { link } => {
                if self.current == Some(*link) {
                    self.open = Some(*link);
                }
            }
            TransportEvent::Closed { link, .. } => {
                self.live.retain(|(l, _)| l != link);
                if self.open == Some(*link) {
                    self.open = None;
                }
                if self.current == Some(*link) {
                    self.current = None;
                }
            }
            TransportEvent::Text { .. } | TransportEvent::Error { .. } => {}
        }
    }
}

impl Transport for NativeTransport {
    fn connect(&mut self, link: LinkId, url: &str) {
        self.reap();
        self.current = Some(link);
        self.open = None;
        let sent = match self.ensure_thread() {
            Ok(io) => {
                let generation = io.generation;
                let ok = io
                    .cmds
                    .send(Cmd::Connect {
                        link,
                        url: url.to_owned(),
                    })
                    .is_ok();
                ok.then_some(generation)
                    .ok_or_else(|| "the I/O thread has stopped".to_owned())
            }
            Err(e) => Err(e),
        };
        match sent {
            Ok(generation) => {
                self.live.retain(|(l, _)| *l != link);
                self.live.push((link, generation));
            }
            Err(why) => self.emit_failure(link, TransportError::Protocol(why)),
        }
    }

    fn send(&mut self, link: LinkId, text: String) -> Result<(), TransportError> {
        if self.open != Some(link) {
            return Err(TransportError::NotOpen);
        }
        let limit = self.config.max_frame_bytes;
        if text.len() > limit {
            return Err(TransportError::FrameTooLarge {
                len: text.len(),
                limit,
            });
        }
        match &self.active {
            Some(io) if io.cmds.send(Cmd::Send { link, text }).is_ok() => Ok(()),
            _ => Err(TransportError::Protocol(
                "the I/O thread has stopped".into(),
            )),
        }
    }

    fn close(&mut self, link: LinkId) {
        if self.current != Some(link) {
            return;
        }
        self.current = None;
        self.open = None;
        if let Some(io) = &self.active {
            let _ = io.cmds.send(Cmd::Close { link });
        }
    }

    fn poll(&mut self) -> Option<TransportEvent> {
        loop {
            // Links whose thread has ended, looked at before the channel: whatever such a
            // thread sent is already in the channel by now.
            let orphans: Vec<LinkId> = self
                .live
                .iter()
                .filter(|(_, generation)| self.thread_finished(*generation))
                .map(|(link, _)| *link)
                .collect();
            if let Ok(event) = self.events_rx.try_recv() {
                self.observe(&event);
                return Some(event);
            }
            if orphans.is_empty() {
                self.retire_if_idle();
                self.reap();
                return None;
            }
            for link in orphans {
                self.emit_failure(
                    link,
                    TransportError::Protocol("the I/O thread ended unexpectedly".into()),
                );
            }
        }
    }
}

impl Drop for NativeTransport {
    fn drop(&mut self) {
        if let Some(io) = self.active.take() {
            let _ = io.cmds.send(Cmd::Shutdown);
            self.retiring.push(io);
        }
        let deadline = Instant::now() + DROP_JOIN_BOUND;
        let mut nap = Duration::from_micros(200);
        loop {
            self.reap();
            if self.retiring.is_empty() {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                for io in &self.retiring {
                    tracing::warn!(
                        thread = %io.watch.name,
                        "the WebSocket I/O thread did not stop in time; detaching it"
                    );
                }
                return;
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(10));
        }
    }
}

/// Everything a link task needs from its thread.
struct Ctx {
    config: Arc<TransportConfig>,
    /// The TLS client configuration, or why it could not be built.
    tls: Result<Arc<rustls::ClientConfig>, String>,
    events: Sender<TransportEvent>,
}

impl Ctx {
    fn emit(&self, event: TransportEvent) {
        // The receiver lives in the transport; once it is gone nobody is listening.
        let _ = self.events.send(event);
    }

    fn fail(&self, link: LinkId, error: TransportError) {
        let reason = error.to_string();
        self.emit(TransportEvent::Error { link, error });
        self.emit(TransportEvent::Closed {
            link,
            code: None,
            reason,
        });
    }

    fn ws_config(&self) -> WebSocketConfig {
        let limit = self.config.max_frame_bytes;
        WebSocketConfig::default()
            .max_frame_size(Some(limit))
            .max_message_size(Some(limit))
    }
}

fn spawn_io_thread(
    config: Arc<TransportConfig>,
    events: Sender<TransportEvent>,
) -> Result<IoThread, String> {
    let generation = THREAD_SEQ.fetch_add(1, Ordering::Relaxed);
    let name: Arc<str> = format!("im-ws-{generation}").into();
    let finished = Arc::new(AtomicBool::new(false));
    let (cmds_tx, cmds_rx) = unbounded_channel();
    let guard = FinishGuard(finished.clone());
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _guard = guard;
            io_thread_main(config, events, cmds_rx);
        })
        .map_err(|e| format!("could not start the I/O thread: {e}"))?;
    Ok(IoThread {
        generation,
        cmds: cmds_tx,
        handle: Some(handle),
        watch: IoThreadWatch { finished, name },
    })
}

fn io_thread_main(
    config: Arc<TransportConfig>,
    events: Sender<TransportEvent>,
    mut cmds: UnboundedReceiver<Cmd>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            // Without a runtime no link can open: fail every connect until told to stop.
            let why = format!("could not start the I/O runtime: {e}");
            while let Some(cmd) = cmds.blocking_recv() {
                match cmd {
                    Cmd::Connect { link, .. } => {
                        let _ = events.send(TransportEvent::Error {
                            link,
                            error: TransportError::Protocol(why.clone()),
                        });
                        let _ = events.send(TransportEvent::Closed {
                            link,
                            code: None,
                            reason: why.clone(),
                        });
                    }
                    Cmd::Shutdown => break,
                    Cmd::Send { .. } | Cmd::Close { .. } => {}
                }
            }
            return;
        }
    };
    let ctx = Arc::new(Ctx {
        tls: tls_config(&config),
        config,
        events,
    });
    runtime.block_on(dispatch(ctx, cmds));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
}

/// The rustls client configuration: ring, webpki roots and the configured extra roots.
fn tls_config(config: &TransportConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for (i, der) in config.extra_roots_der.iter().enumerate() {
        roots
            .add(CertificateDer::from(der.as_slice()))
            .map_err(|e| format!("extra root certificate #{i} is not usable: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// Routes commands to link tasks until told to stop, then lets the links close.
async fn dispatch(ctx: Arc<Ctx>, mut cmds: UnboundedReceiver<Cmd>) {
    let mut tasks = JoinSet::new();
    let mut task_links: HashMap<tokio::task::Id, LinkId> = HashMap::new();
    let mut current: Option<(LinkId, UnboundedSender<LinkCmd>)> = None;
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Connect { link, url }) => {
                    if let Some((_, old)) = current.take() {
                        let _ = old.send(LinkCmd::Close(CloseWhy::Replaced));
                    }
                    let (tx, rx) = unbounded_channel();
                    let task = tasks.spawn(run_link(link, url, ctx.clone(), rx));
                    task_links.insert(task.id(), link);
                    current = Some((link, tx));
                }
                Some(Cmd::Send { link, text }) => {
                    if let Some((l, tx)) = &current
                        && *l == link
                    {
                        let _ = tx.send(LinkCmd::Send(text));
                    }
                }
                Some(Cmd::Close { link }) => {
                    if current.as_ref().is_some_and(|(l, _)| *l == link)
                        && let Some((_, tx)) = current.take()
                    {
                        let _ = tx.send(LinkCmd::Close(CloseWhy::Client));
                    }
                }
                Some(Cmd::Shutdown) | None => break,
            },
            Some(done) = tasks.join_next_with_id() => match done {
                Ok((id, ())) => {
                    task_links.remove(&id);
                }
                Err(e) => {
                    // A link task that died without saying so: say it for it.
                    if let Some(link) = task_links.remove(&e.id()) {
                        if current.as_ref().is_some_and(|(l, _)| *l == link) {
                            current = None;
                        }
                        ctx.fail(link, TransportError::Protocol(format!("the link task failed: {e}")));
                    }
                }
            },
        }
    }
    if let Some((_, tx)) = current.take() {
        let _ = tx.send(LinkCmd::Close(CloseWhy::Shutdown));
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

/// Opens the socket: TCP, then TLS for `wss://`, then the WebSocket handshake.
async fn open_socket(url: &str, ctx: &Ctx) -> Result<Ws, TransportError> {
    let request = url
        .into_client_request()
        .map_err(|e| TransportError::InvalidUrl(format!("{url}: {e}")))?;
    let uri = request.uri();
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => {
            return Err(TransportError::InvalidUrl(format!(
                "{url}: the scheme must be ws or wss"
            )));
        }
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| TransportError::InvalidUrl(format!("{url}: no host")))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });

    let tcp = TcpStream::connect(format!("{host}:{port}"))
        .await
        .map_err(|e| TransportError::Refused(format!("{host}:{port}: {e}")))?;
    // Chat frames are small and latency matters more than packing.
    let _ = tcp.set_nodelay(true);

    let stream = if tls {
        let config = ctx.tls.clone().map_err(TransportError::Tls)?;
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name = ServerName::try_from(bare)
            .map_err(|e| TransportError::InvalidUrl(format!("{url}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        MaybeTlsStream::Rustls(tls)
    } else {
        MaybeTlsStream::Plain(tcp)
    };

    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ctx.ws_config()))
            .await
            .map_err(handshake_error)?;
    Ok(ws)
}

fn handshake_error(e: WsError) -> TransportError {
    match e {
        WsError::Http(response) => {
            TransportError::HandshakeRejected(format!("HTTP {}", response.status()))
        }
        WsError::Url(e) => TransportError::InvalidUrl(e.to_string()),
        WsError::Tls(e) => TransportError::Tls(e.to_string()),
        WsError::Protocol(ProtocolError::HandshakeIncomplete) | WsError::ConnectionClosed => {
            TransportError::Protocol("the connection ended during the WebSocket handshake".into())
        }
        other => TransportError::Protocol(format!("WebSocket handshake failed: {other}")),
    }
}

/// How the open phase of a link ended.
enum End {
    /// The peer sent a close frame (tungstenite queues the echo).
    Peer(Option<CloseFrame>),
    /// We close, with this code and reason, after a command or a protocol breach.
    Local { code: u16, reason: String },
    /// The socket failed; after `FrameTooLarge` a close frame is still worth sending.
    Broken {
        error: TransportError,
        close_code: Option<u16>,
    },
}

/// One link from connect to `Closed`.
async fn run_link(link: LinkId, url: String, ctx: Arc<Ctx>, mut cmds: UnboundedReceiver<LinkCmd>) {
    let limit = ctx.config.connect_timeout;
    let opening = tokio::time::timeout(limit, open_socket(&url, &ctx));
    tokio::pin!(opening);
    let ws = loop {
        tokio::select! {
            res = &mut opening => match res {
                Ok(Ok(ws)) => break ws,
                Ok(Err(error)) => return ctx.fail(link, error),
                Err(_) => return ctx.fail(link, TransportError::TimedOut(limit)),
            },
            cmd = cmds.recv() => match cmd {
                // Not open yet: the ECS side refuses sends, so this cannot carry data.
                Some(LinkCmd::Send(_)) => {}
                Some(LinkCmd::Close(why)) => {
                    return ctx.emit(TransportEvent::Closed { link, code: None, reason: why.reason().into() });
                }
                None => {
                    return ctx.emit(TransportEvent::Closed {
                        link,
                        code: None,
                        reason: CloseWhy::Shutdown.reason().into(),
                    });
                }
            },
        }
    };
    ctx.emit(TransportEvent::Opened { link });

    let (sink, mut stream) = ws.split();
    let mut sink = Some(sink);
    let mut writing: Option<Writing> = None;
    // Frames that arrive while a write is blocked wait here, so that a close is
    // still read (and the link can end) when the peer stops reading.
    let mut backlog: Vec<Message> = Vec::new();
    let end = loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => ctx.emit(TransportEvent::Text {
                    link,
                    text: text.as_str().to_owned(),
                }),
                Some(Ok(Message::Binary(data))) => {
                    ctx.emit(TransportEvent::Error { link, error: TransportError::BinaryFrame(data.len()) });
                    break End::Local { code: 1003, reason: "binary frames are not supported".into() };
                }
                Some(Ok(Message::Close(frame))) => break End::Peer(frame),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) => break broken(e),
                None => break End::Broken {
                    error: TransportError::Protocol("the connection ended".into()),
                    close_code: None,
                },
            },
            done = finish(&mut writing) => match done {
                Ok(s) if backlog.is_empty() => sink = Some(s),
                Ok(s) => writing = Some(write_batch(s, std::mem::take(&mut backlog))),
                Err(e) => break broken(e),
            },
            cmd = cmds.recv() => match cmd {
                Some(LinkCmd::Send(first)) => {
                    backlog.push(Message::text(first));
                    let mut close_after = None;
                    while backlog.len() < 256 {
                        match cmds.try_recv() {
                            Ok(LinkCmd::Send(text)) => backlog.push(Message::text(text)),
                            Ok(LinkCmd::Close(why)) => {
                                close_after = Some(why);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if let Some(s) = sink.take() {
                        writing = Some(write_batch(s, std::mem::take(&mut backlog)));
                    }
                    if let Some(why) = close_after {
                        break End::Local { code: why.code(), reason: why.reason().into() };
                    }
                }
                Some(LinkCmd::Close(why)) => {
                    break End::Local { code: why.code(), reason: why.reason().into() };
                }
                None => break End::Local {
                    code: CloseWhy::Shutdown.code(),
                    reason: CloseWhy::Shutdown.reason().into(),
                },
            },
        }
    };

    match end {
        End::Peer(frame) => {
            let (code, reason) = match frame {
                Some(f) if !f.reason.is_empty() => {
                    (Some(u16::from(f.code)), f.reason.as_str().to_owned())
                }
                Some(f) => (Some(u16::from(f.code)), "closed by the server".to_owned()),
                None => (None, "closed by the server".to_owned()),
            };
            ctx.emit(TransportEvent::Closed { link, code, reason });
            // Keep reading so tungstenite can flush its echo, until the server hangs up.
            drop(writing);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        }
        End::Local { code, reason } => {
            let (code, reason) = close_handshake(sink, writing, &mut stream, code, reason).await;
            ctx.emit(TransportEvent::Closed { link, code, reason });
        }
        End::Broken { error, close_code } => {
            let reason = error.to_string();
            ctx.emit(TransportEvent::Error { link, error });
            if let Some(code) = close_code {
                send_close(sink, writing, code, &reason).await;
            }
            ctx.emit(TransportEvent::Closed {
                link,
                code: None,
                reason,
            });
        }
    }
}

/// Maps a failure on an open socket.
fn broken(e: WsError) -> End {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => End::Broken {
            error: TransportError::FrameTooLarge {
                len: size,
                limit: max_size,
            },
            close_code: Some(1009),
        },
        WsError::Utf8(_) => End::Broken {
            error: TransportError::Protocol("a text frame is not valid UTF-8".into()),
            close_code: Some(1007),
        },
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | WsError::ConnectionClosed
        | WsError::AlreadyClosed => End::Broken {
            error: TransportError::Protocol(
                "the connection was reset without a closing handshake".into(),
            ),
            close_code: None,
        },
        WsError::Io(e) => End::Broken {
            error: TransportError::Protocol(format!("connection failed: {e}")),
            close_code: None,
        },
        other => End::Broken {
            error: TransportError::Protocol(other.to_string()),
            close_code: Some(1002),
        },
    }
}

/// Awaits the write in progress, if any.
async fn finish(writing: &mut Option<Writing>) -> Result<WsSink, WsError> {
    match writing {
        Some(w) => {
            let done = w.await;
            *writing = None;
            done
        }
        None => std::future::pending().await,
    }
}

fn write_batch(mut sink: WsSink, batch: Vec<Message>) -> Writing {
    Box::pin(async move {
        for message in batch {
            sink.feed(message).await?;
        }
        sink.flush().await?;
        Ok(sink)
    })
}

/// Gets the sink back from a write in progress, within `deadline`.
async fn reclaim_sink(
    sink: Option<WsSink>,
    writing: Option<Writing>,
    deadline: tokio::time::Instant,
) -> Option<WsSink> {
    match (sink, writing) {
        (Some(s), _) => Some(s),
        (None, Some(w)) => tokio::time::timeout_at(deadline, w).await.ok()?.ok(),
        (None, None) => None,
    }
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    }))
}

/// Sends a close frame without waiting for the echo (the read side is unusable).
async fn send_close(sink: Option<WsSink>, writing: Option<Writing>, code: u16, reason: &str) {
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    if let Some(mut s) = reclaim_sink(sink, writing, deadline).await {
        let _ = tokio::time::timeout_at(deadline, s.send(close_message(code, reason))).await;
    }
}

/// Our side of a closing handshake: send the close frame, wait for the peer's. Returns
/// the code and reason for the `Closed` event.
async fn close_handshake(
    sink: Option<WsSink>,
    writing: Option<Writing>,
    stream: &mut WsRead,
    code: u16,
    reason: String,
) -> (Option<u16>, String) {
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    let Some(mut sink) = reclaim_sink(sink, writing, deadline).await else {
        return (None, reason);
    };
    let sent = tokio::time::timeout_at(deadline, sink.send(close_message(code, &reason))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return (None, reason);
    }
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(Message::Close(Some(echo))))) => {
                let echoed = echo.reason.as_str();
                let text = if echoed.is_empty() {
                    reason
                } else {
                    echoed.to_owned()
                };
                return (Some(u16::from(echo.code)), text);
            }
            Ok(Some(Ok(Message::Close(None)))) => return (None, reason),
            // Frames that cross our close frame are dropped: we asked to close.
            Ok(Some(Ok(_))) => {}
            _ => return (None, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_refused_until_opened_and_after_close() {
        let mut t = NativeTransport::default();
        assert_eq!(t.send(LinkId(1), "x".into()), Err(TransportError::NotOpen));
        t.current = Some(LinkId(1));
        t.observe(&TransportEvent::Opened { link: LinkId(1) });
        assert_eq!(t.open, Some(LinkId(1)));
        t.close(LinkId(1));
        assert_eq!(t.send(LinkId(1), "x".into()), Err(TransportError::NotOpen));
        // An `Opened` that crossed the close does not reopen the link.
        t.observe(&TransportEvent::Opened { link: LinkId(1) });
        assert_eq!(t.open, None);
    }

    #[test]
    fn an_invalid_url_fails_with_a_typed_error_and_the_thread_retires() {
        let mut t = NativeTransport::default();
        t.connect(LinkId(7), "http://example.invalid/");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Vec::new();
        while events.len() < 2 && Instant::now() < deadline {
            match t.poll() {
                Some(e) => events.push(e),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert!(
            matches!(
                &events[..],
                [
                    TransportEvent::Error {
                        link: LinkId(7),
                        error: TransportError::InvalidUrl(_)
                    },
                    TransportEvent::Closed {
                        link: LinkId(7),
                        code: None,
                        ..
                    }
                ]
            ),
            "{events:?}"
        );
        let watch = t.io_thread().expect("a thread was started");
        while !watch.is_finished() && Instant::now() < deadline {
            assert!(t.poll().is_none());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(watch.is_finished());
    }

    #[test]
    fn a_bad_extra_root_is_a_tls_setup_error() {
        let config = TransportConfig {
            extra_roots_der: vec![b"not a certificate".to_vec()],
            ..Default::default()
        };
        let err = tls_config(&config).expect_err("garbage is not a root");
        assert!(err.contains("#0"), "{err}");
        assert!(tls_config(&TransportConfig::default()).is_ok());
    }
}
