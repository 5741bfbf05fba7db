//! `ImClientPlugin`: the client core tied to a transport, as Bevy resources, systems
//! and messages.
//!
//! # Systems
//!
//! | set | schedule | what |
//! |---|---|---|
//! | [`ImSystems::Receive`] | `PreUpdate` | drain transport events, decode frames, update the session and QoS tables, write messages |
//! | [`ImSystems::Tick`] | `PostUpdate` | keepalive, QoS resends and losses, dedup expiry, re-login (time from `Time<Real>`) |
//! | [`ImSystems::Send`] | `PostUpdate`, after `Tick` | encode and hand every queued frame to the transport in one flush; write messages; diagnostics |
//!
//! What a game sends in frame N is handed to the transport in frame N's `PostUpdate`;
//! what arrives is visible to game systems in the next `Update`.

mod client;
pub mod conditions;
pub mod diagnostics;
mod inbox;
mod messages;

use std::sync::Mutex;
use std::time::Duration;

use bevy::prelude::*;
use bevy::time::Real;

pub use client::ImClient;
pub use inbox::ImInbox;
pub use messages::{
    BadFrame, DataReceived, KeepaliveReply, Kicked, LinkClosed, LinkError, LoggedOut, LoginFailed,
    LoginSucceeded, MessageDelivered, MessagesLost, ReloginStarted, SendResult, SendThrottled,
    ServerError,
};

use crate::client::{
    Action, ClientConfig, ClientCore, ClientEvent, Core, CoreOutput, DedupConfig, Keepalive,
    QosReceiveFilter, QosSendConfig, QosSendTable, Relogin, ReloginPolicy, SenseMode, Session,
};
use crate::protocol::{Dialect, ResultCode};
use crate::transport::{LinkId, Transport, TransportConfig, TransportEvent};

/// Where the plugin's systems run, for ordering game systems against them.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImSystems {
    /// `PreUpdate`: inbound frames and link events become state and messages.
    Receive,
    /// `PostUpdate`: timers (keepalive, QoS, re-login).
    Tick,
    /// `PostUpdate`, after `Tick`: one flush of outbound frames to the transport.
    Send,
}

/// The client's settings: the seed's `WSOptions` and the daemons' constants.
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct ImConfig {
    /// The server, such as `ws://127.0.0.1:3000/websocket` (no query string).
    pub url: String,
    /// The session, QoS, keepalive and re-login settings.
    pub client: ClientConfig,
    /// Connect timeout, frame limit and TLS trust.
    pub transport: TransportConfig,
    /// How many received messages [`ImInbox`] keeps.
    pub inbox_capacity: usize,
}

impl Default for ImConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            client: ClientConfig::default(),
            transport: TransportConfig::default(),
            inbox_capacity: 1024,
        }
    }
}

impl ImConfig {
    /// The defaults, talking to `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets the dialect the server speaks.
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.client.dialect = dialect;
        self
    }

    /// Sets the keepalive sense mode.
    pub fn sense_mode(mut self, mode: SenseMode) -> Self {
        self.client.sense_mode = mode;
        self
    }

    /// Sets QoS resend and loss timing.
    pub fn qos(mut self, qos: QosSendConfig) -> Self {
        self.client.qos = qos;
        self
    }

    /// Sets duplicate suppression of received messages.
    pub fn dedup(mut self, dedup: DedupConfig) -> Self {
        self.client.dedup = dedup;
        self
    }

    /// Sets the re-login policy; `None` turns automatic re-login off.
    pub fn relogin(mut self, policy: Option<ReloginPolicy>) -> Self {
        self.client.auto_relogin = policy.is_some();
        if let Some(p) = policy {
            self.client.relogin = p;
        }
        self
    }

    /// Sets the frame limit, for both the client core and the transport.
    pub fn max_frame_bytes(mut self, limit: usize) -> Self {
        self.client.max_frame_bytes = limit;
        self.transport.max_frame_bytes = limit;
        self
    }

    /// Trusts a certificate (DER) for `wss://`, beside the webpki roots.
    pub fn trust_certificate(mut self, der: Vec<u8>) -> Self {
        self.transport.extra_roots_der.push(der);
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.transport.connect_timeout = timeout;
        self
    }
}

/// The transport the plugin drives.
#[derive(Resource)]
pub struct ImTransport(pub Box<dyn Transport>);

/// The link the session is using; events from any other link are ignored.
#[derive(Resource, Debug, Default)]
pub struct ImLink {
    current: Option<LinkId>,
    next: u64,
}

impl ImLink {
    /// The current link.
    pub fn current(&self) -> Option<LinkId> {
        self.current
    }
}

/// Per-frame changes, for run conditions.
#[derive(Resource, Debug, Default)]
pub struct ImStatus {
    was_logged_in: bool,
    /// A login or re-login succeeded in this frame's `PreUpdate`.
    pub just_logged_in: bool,
    /// The session stopped being logged in since the previous frame's `PreUpdate`.
    pub just_logged_out: bool,
}

/// Adds the client: resources, systems and messages.
///
/// ```no_run
/// use bevy::prelude::*;
/// use bevy_im::prelude::*;
///
/// App::new()
///     .add_plugins(MinimalPlugins)
///     .add_plugins(ImClientPlugin::new(ImConfig::new("ws://127.0.0.1:3000/websocket")))
///     .add_systems(Startup, |mut im: ImClient| {
///         im.login(LoginRequest::new("alice", "token")).unwrap();
///     })
///     .run();
/// ```
pub struct ImClientPlugin {
    config: Option<ImConfig>,
    transport: Mutex<Option<Box<dyn Transport>>>,
}

impl ImClientPlugin {
    /// A client with `config` and the platform's WebSocket transport.
    pub fn new(config: ImConfig) -> Self {
        Self {
            config: Some(config),
            transport: Mutex::new(None),
        }
    }

    /// A client configured by an [`ImConfig`] resource inserted before the plugin
    /// (or the defaults, with no URL, if there is none).
    pub fn from_resource() -> Self {
        Self {
            config: None,
            transport: Mutex::new(None),
        }
    }

    /// Uses `transport` instead of the platform's (for tests: `MemoryTransport`).
    pub fn with_transport(self, transport: impl Transport) -> Self {
        Self {
            transport: Mutex::new(Some(Box::new(transport))),
            ..self
        }
    }
}

impl Plugin for ImClientPlugin {
    fn build(&self, app: &mut App) {
        let config = match &self.config {
            Some(c) => c.clone(),
            None => app
                .world()
                .get_resource::<ImConfig>()
                .cloned()
                .unwrap_or_default(),
        };
        let transport = self
            .transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| platform_transport(&config.transport));
        let core = ClientCore::new(config.client.clone());
        app.insert_resource(ImTransport(transport))
            .insert_resource(ImInbox::new(config.inbox_capacity))
            .insert_resource(config)
            .insert_resource(core.session)
            .insert_resource(core.qos_send)
            .insert_resource(core.qos_recv)
            .insert_resource(core.keepalive)
            .insert_resource(core.relogin)
            .insert_resource(core.out)
            .init_resource::<ImLink>()
            .init_resource::<ImStatus>()
            .add_message::<LoginSucceeded>()
            .add_message::<LoginFailed>()
            .add_message::<LinkClosed>()
            .add_message::<DataReceived>()
            .add_message::<ServerError>()
            .add_message::<MessagesLost>()
            .add_message::<MessageDelivered>()
            .add_message::<Kicked>()
            .add_message::<ReloginStarted>()
            .add_message::<LoggedOut>()
            .add_message::<SendResult>()
            .add_message::<KeepaliveReply>()
            .add_message::<LinkError>()
            .add_message::<BadFrame>()
            .add_message::<SendThrottled>()
            .configure_sets(PostUpdate, (ImSystems::Tick, ImSystems::Send).chain())
            .add_systems(
                PreUpdate,
                (receive, emit_messages, update_status)
                    .chain()
                    .in_set(ImSystems::Receive),
            )
            .add_systems(
                PostUpdate,
                (tick_keepalive, tick_qos_send, tick_qos_recv, tick_relogin)
                    .chain()
                    .in_set(ImSystems::Tick),
            )
            .add_systems(
                PostUpdate,
                (flush, emit_messages, diagnostics::measure)
                    .chain()
                    .in_set(ImSystems::Send),
            );
        diagnostics::register(app);
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn platform_transport(config: &TransportConfig) -> Box<dyn Transport> {
    Box::new(crate::transport::NativeTransport::new(config.clone()))
}

#[cfg(target_arch = "wasm32")]
fn platform_transport(config: &TransportConfig) -> Box<dyn Transport> {
    Box::new(crate::transport::WebTransport::new(config.clone()))
}

/// The client's parts as system parameters.
#[derive(bevy::ecs::system::SystemParam)]
pub(crate) struct Parts<'w> {
    session: ResMut<'w, Session>,
    qos_send: ResMut<'w, QosSendTable>,
    qos_recv: ResMut<'w, QosReceiveFilter>,
    keepalive: ResMut<'w, Keepalive>,
    relogin: ResMut<'w, Relogin>,
    out: ResMut<'w, CoreOutput>,
}

impl Parts<'_> {
    pub(crate) fn core(&mut self) -> Core<'_> {
        Core {
            session: &mut self.session,
            qos_send: &mut self.qos_send,
            qos_recv: &mut self.qos_recv,
            keepalive: &mut self.keepalive,
            relogin: &mut self.relogin,
            out: &mut self.out,
        }
    }
}

fn receive(
    mut transport: ResMut<ImTransport>,
    mut link: ResMut<ImLink>,
    time: Res<Time<Real>>,
    mut parts: Parts,
) {
    let now = time.elapsed();
    while let Some(event) = transport.0.poll() {
        if link.current != Some(event.link()) {
            continue;
        }
        // The core already let go of this link (a login, release, kickout or failed
        // login since the last flush): nothing more from it may reach the session.
        let replacing = parts
            .out
            .actions
            .iter()
            .any(|a| matches!(a, Action::Close | Action::Connect));
        if replacing {
            continue;
        }
        let mut core = parts.core();
        match event {
            TransportEvent::Opened { .. } => core.on_link_opened(now),
            TransportEvent::Text { text, .. } => core.on_text(&text, now),
            TransportEvent::Closed { code, reason, .. } => {
                link.current = None;
                core.on_link_closed(code, &reason, now);
            }
            TransportEvent::Error { error, .. } => core.on_link_error(error),
        }
    }
}

fn tick_keepalive(time: Res<Time<Real>>, mut parts: Parts) {
    parts.core().tick_keepalive(time.elapsed());
}

fn tick_qos_send(time: Res<Time<Real>>, mut parts: Parts) {
    parts.core().tick_qos_send(time.elapsed());
}

fn tick_qos_recv(time: Res<Time<Real>>, mut parts: Parts) {
    parts.core().tick_qos_recv(time.elapsed());
}

fn tick_relogin(time: Res<Time<Real>>, mut parts: Parts) {
    parts.core().tick_relogin(time.elapsed());
}

/// Hands every queued action to the transport, in order.
fn flush(
    mut transport: ResMut<ImTransport>,
    mut link: ResMut<ImLink>,
    config: Res<ImConfig>,
    mut out: ResMut<CoreOutput>,
    mut results: MessageWriter<SendResult>,
) {
    for action in std::mem::take(&mut out.actions) {
        match action {
            Action::Connect => {
                if let Some(old) = link.current.take() {
                    transport.0.close(old);
                }
                link.next += 1;
                let id = LinkId(link.next);
                link.current = Some(id);
                transport.0.connect(id, &config.url);
            }
            Action::Close => {
                if let Some(old) = link.current.take() {
                    transport.0.close(old);
                }
            }
            Action::Send { text, fp, report } => {
                let written = match link.current {
                    Some(id) => transport.0.send(id, text),
                    None => Err(crate::transport::TransportError::NotOpen),
                };
                if let Err(e) = &written {
                    debug!("frame not written: {e}");
                }
                if report {
                    let code = match written {
                        Ok(()) => ResultCode::Ok,
                        Err(_) => ResultCode::DataSendFailed,
                    };
                    results.write(SendResult { fp, code });
                }
            }
        }
    }
}

/// The game-facing messages for every event the core produced.
#[derive(bevy::ecs::system::SystemParam)]
struct Writers<'w> {
    login_ok: MessageWriter<'w, LoginSucceeded>,
    login_failed: MessageWriter<'w, LoginFailed>,
    link_closed: MessageWriter<'w, LinkClosed>,
    data: MessageWriter<'w, DataReceived>,
    server_error: MessageWriter<'w, ServerError>,
    lost: MessageWriter<'w, MessagesLost>,
    delivered: MessageWriter<'w, MessageDelivered>,
    kicked: MessageWriter<'w, Kicked>,
    relogin: MessageWriter<'w, ReloginStarted>,
    logged_out: MessageWriter<'w, LoggedOut>,
    keepalive: MessageWriter<'w, KeepaliveReply>,
    link_error: MessageWriter<'w, LinkError>,
    bad_frame: MessageWriter<'w, BadFrame>,
    throttled: MessageWriter<'w, SendThrottled>,
}

fn emit_messages(mut out: ResMut<CoreOutput>, mut inbox: ResMut<ImInbox>, mut w: Writers) {
    for event in std::mem::take(&mut out.events) {
        match event {
            ClientEvent::LoginSucceeded {
                user_id,
                relogin,
                first_login_time,
            } => {
                w.login_ok.write(LoginSucceeded {
                    user_id,
                    relogin,
                    first_login_time,
                });
            }
            ClientEvent::LoginFailed { code, relogin } => {
                w.login_failed.write(LoginFailed { code, relogin });
            }
            ClientEvent::LinkClosed { code, reason } => {
                w.link_closed.write(LinkClosed { code, reason });
            }
            ClientEvent::DataReceived {
                fp,
                from,
                content,
                typeu,
            } => {
                let msg = DataReceived {
                    fp,
                    from,
                    content,
                    typeu,
                };
                inbox.push(msg.clone());
                w.data.write(msg);
            }
            ClientEvent::ServerError { code, msg } => {
                w.server_error.write(ServerError { code, msg });
            }
            ClientEvent::MessagesLost(frames) => {
                w.lost.write(MessagesLost { frames });
            }
            ClientEvent::MessageDelivered { fp } => {
                w.delivered.write(MessageDelivered { fp });
            }
            ClientEvent::Kicked { code, reason } => {
                w.kicked.write(Kicked { code, reason });
            }
            ClientEvent::ReloginStarted { attempt } => {
                w.relogin.write(ReloginStarted { attempt });
            }
            ClientEvent::LoggedOut { code } => {
                w.logged_out.write(LoggedOut { code });
            }
            ClientEvent::KeepaliveReply { rtt } => {
                w.keepalive.write(KeepaliveReply { rtt });
            }
            ClientEvent::LinkError(error) => {
                w.link_error.write(LinkError { error });
            }
            ClientEvent::BadFrame(problem) => {
                w.bad_frame.write(BadFrame { problem });
            }
            ClientEvent::SendThrottled { fp, retry_in } => {
                w.throttled.write(SendThrottled { fp, retry_in });
            }
        }
    }
}

fn update_status(session: Res<Session>, mut status: ResMut<ImStatus>) {
    let now = session.is_logged_in();
    status.just_logged_in = now && !status.was_logged_in;
    status.just_logged_out = !now && status.was_logged_in;
    status.was_logged_in = now;
}
