//! `ImClientPlugin`: the client core tied to a transport, as Bevy resources, systems
//! and messages.
//!
//! # Systems
//!
//! | set | schedule | what |
//! |---|---|---|
//! | [`ImSystems::Receive`] | `PreUpdate` | drain transport events, decode frames, update each client, write messages, set [`ImConnection`] |
//! | [`ImSystems::Tick`] | `PostUpdate` | keepalive, QoS resends and losses, dedup expiry, re-login (time from `Time<Real>`) |
//! | [`ImSystems::Send`] | `PostUpdate`, after `Tick` | hand every queued frame to the transport in one flush; write messages; diagnostics |
//!
//! What a game sends in frame N is handed to the transport in frame N's `PostUpdate`;
//! what arrives is visible to game systems in the next `Update`.
//!
//! # Clients are entities
//!
//! Each client is an entity holding a [`ClientCore`], its [`ImUrl`], its
//! [`ImTransport`] and its [`ImInbox`]. The plugin spawns one, the primary client
//! ([`ImPrimaryClient`]), which [`ImClient`], the run conditions, [`ImConnection`]
//! and the diagnostics follow. Bots, load tools and split-screen games spawn more with
//! [`ImClientBundle`] and reach any of them through [`ImClients`]; every message names
//! its `client`.

mod client;
pub mod conditions;
pub mod diagnostics;
mod inbox;
#[cfg(any(target_arch = "wasm32", all(test, feature = "testing")))]
mod keeper;

use std::sync::Mutex;
use std::time::Duration;

use bevy::ecs::query::QueryState;
use bevy::prelude::*;
use bevy::state::app::StatesPlugin;
use bevy::time::Real;

pub use crate::client::{
    BadFrame, BlockUpdated, ClientEvent, CloseReason, DataReceived, ImConnection, KeepaliveReply,
    Kicked, LinkClosed, LinkError, LoggedOut, LoginFailed, LoginSucceeded, MemberJoined,
    MemberLeft, MessageDelivered, MessageRefused, MessagesLost, PresenceChanged, ReloginStarted,
    ReloginStop, ReloginStopped, RoomError, RoomHistory, RoomJoined, RoomLeft, RoomLeftReason,
    RoomList, RoomMembers, RoomRequestFailed, RoomState, Rooms, SendResult, SendThrottled,
    ServerError,
};
pub use client::{ImClient, ImClientMut, ImClients};
pub use inbox::ImInbox;

use crate::client::{
    Action, ClientConfig, ClientCore, DedupConfig, QosSendConfig, ReloginPolicy, SenseMode,
};
use crate::protocol::{Dialect, ResultCode};
use crate::transport::{Transport, TransportConfig, TransportEvent};

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

/// The client's settings: the seed's `WSOptions` and the daemons' constants. As a
/// resource: the primary client's (inserted by the plugin, or read from it by
/// [`ImClientPlugin::from_resource`]).
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

    /// Sets how long a room or social request waits for its reply (10 s by default).
    pub fn room_request_timeout(mut self, timeout: Duration) -> Self {
        self.client.room_request_timeout = timeout;
        self
    }
}

/// The server URL of one client entity.
#[derive(Component, Debug, Clone, PartialEq, Eq)]
pub struct ImUrl(pub String);

/// The transport of one client entity.
#[derive(Component)]
pub struct ImTransport(pub Box<dyn Transport>);

/// Marks the primary client: the one the plugin spawned, which [`ImClient`], the run
/// conditions, [`ImConnection`] and the diagnostics follow.
#[derive(Component, Debug, Default, Clone, Copy)]
pub struct ImPrimaryClient;

/// Per-frame changes of the primary client, for run conditions.
#[derive(Resource, Debug, Default)]
pub struct ImStatus {
    was_logged_in: bool,
    /// A login or re-login succeeded in this frame's `PreUpdate`.
    pub just_logged_in: bool,
    /// The session stopped being logged in since the previous frame's `PreUpdate`.
    pub just_logged_out: bool,
}

/// Everything a client entity holds. Spawn one per extra client (bots, tools,
/// split-screen); the plugin spawns the primary one.
///
/// ```no_run
/// use bevy::prelude::*;
/// use bevy_im::prelude::*;
///
/// fn spawn_bot(mut commands: Commands, mut clients: ImClients) {
///     let bot = ImClientBundle::new(ImConfig::new("ws://127.0.0.1:3000/websocket"))
///         .spawn(&mut commands);
///     // Next frame: clients.get_mut(bot).unwrap().login(LoginRequest::new("bot", "t"))
/// }
/// ```
pub struct ImClientBundle {
    config: ImConfig,
    transport: Option<Box<dyn Transport>>,
}

impl ImClientBundle {
    /// A client with `config` and the platform's WebSocket transport.
    pub fn new(config: ImConfig) -> Self {
        Self {
            config,
            transport: None,
        }
    }

    /// Uses `transport` instead of the platform's (for tests: `MemoryTransport`).
    pub fn with_transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Box::new(transport));
        self
    }

    fn parts(self, entity: Entity) -> impl Bundle {
        let transport = self
            .transport
            .unwrap_or_else(|| platform_transport(&self.config.transport));
        let mut core = ClientCore::new(self.config.client.clone());
        core.set_entity(entity);
        (
            core,
            ImTransport(transport),
            ImInbox::new(self.config.inbox_capacity),
            ImUrl(self.config.url),
        )
    }

    /// Spawns the client; it can log in from the next command flush on.
    pub fn spawn(self, commands: &mut Commands) -> Entity {
        let entity = commands.spawn_empty().id();
        commands.entity(entity).insert(self.parts(entity));
        entity
    }

    /// Spawns the client into `world` at once.
    pub fn spawn_in(self, world: &mut World) -> Entity {
        let entity = world.spawn_empty().id();
        world.entity_mut(entity).insert(self.parts(entity));
        entity
    }
}

/// Adds the client: the primary client entity, systems, messages, observer events and
/// the [`ImConnection`] state (adding Bevy's `StatesPlugin` when missing, so add this
/// plugin after `DefaultPlugins` or `MinimalPlugins`).
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
///     .add_systems(OnEnter(ImConnection::LoggedIn), || info!("online"))
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
            .take();
        let bundle = ImClientBundle {
            config: config.clone(),
            transport,
        };
        let primary = bundle.spawn_in(app.world_mut());
        app.world_mut().entity_mut(primary).insert(ImPrimaryClient);
        if !app.is_plugin_added::<StatesPlugin>() {
            app.add_plugins(StatesPlugin);
        }
        ClientEvent::add_messages(app);
        app.insert_resource(config)
            .init_resource::<ImStatus>()
            .init_state::<ImConnection>()
            .register_type::<ImConnection>()
            .register_type::<LoginSucceeded>()
            .register_type::<LoginFailed>()
            .register_type::<LinkClosed>()
            .register_type::<DataReceived>()
            .register_type::<ServerError>()
            .register_type::<MessagesLost>()
            .register_type::<MessageDelivered>()
            .register_type::<SendThrottled>()
            .register_type::<Kicked>()
            .register_type::<ReloginStarted>()
            .register_type::<ReloginStopped>()
            .register_type::<LoggedOut>()
            .register_type::<SendResult>()
            .register_type::<KeepaliveReply>()
            .register_type::<MessageRefused>()
            .register_type::<RoomLeft>()
            .register_type::<MemberJoined>()
            .register_type::<MemberLeft>()
            .register_type::<PresenceChanged>()
            .register_type::<BlockUpdated>()
            .configure_sets(PostUpdate, (ImSystems::Tick, ImSystems::Send).chain())
            .add_systems(PreUpdate, receive.in_set(ImSystems::Receive))
            .add_systems(PostUpdate, tick.in_set(ImSystems::Tick))
            .add_systems(PostUpdate, send.in_set(ImSystems::Send));
        diagnostics::register(app);
        #[cfg(target_arch = "wasm32")]
        {
            // Between frames the clients are parked where socket events and a worker's
            // timer drive them; see `keeper`.
            let mut order = app
                .world_mut()
                .resource_mut::<bevy::app::MainScheduleOrder>();
            order.insert_before(First, ImUnpark);
            order.insert_after(Last, ImPark);
            app.add_systems(ImUnpark, keeper::unpark)
                .add_systems(ImPark, keeper::park);
        }
    }
}

/// On wasm, before `First`: the clients come back from between frames.
#[cfg(target_arch = "wasm32")]
#[derive(bevy::ecs::schedule::ScheduleLabel, Debug, Clone, PartialEq, Eq, Hash)]
struct ImUnpark;

/// On wasm, after `Last`: the clients go where they run between frames.
#[cfg(target_arch = "wasm32")]
#[derive(bevy::ecs::schedule::ScheduleLabel, Debug, Clone, PartialEq, Eq, Hash)]
struct ImPark;

#[cfg(not(target_arch = "wasm32"))]
fn platform_transport(config: &TransportConfig) -> Box<dyn Transport> {
    Box::new(crate::transport::NativeTransport::new(config.clone()))
}

#[cfg(target_arch = "wasm32")]
fn platform_transport(config: &TransportConfig) -> Box<dyn Transport> {
    Box::new(crate::transport::WebTransport::new(config.clone()))
}

// The three systems are exclusive: each runs on the schedule's own thread, so a frame
// pays no task dispatch for them (which costs far more than their work on a small
// machine; see BENCHMARKS.md). They are ordered anyway.

type Clients<'w> = (
    &'w mut ClientCore,
    &'w mut ImTransport,
    &'w ImUrl,
    &'w mut ImInbox,
);

/// `ImSystems::Receive`: feeds every transport event to its client's core (the core
/// ignores stale links), writes the events, and updates [`ImStatus`] and
/// [`ImConnection`].
fn receive(
    world: &mut World,
    clients: &mut QueryState<Clients>,
    primary: &mut QueryState<&ClientCore, With<ImPrimaryClient>>,
) {
    let now = world.resource::<Time<Real>>().elapsed();
    for (mut core, mut transport, ..) in clients.iter_mut(world) {
        while let Some(event) = transport.0.poll() {
            core.on_transport_event(event, now);
        }
    }
    deliver(world, clients);
    update_status(world, primary);
}

/// `ImSystems::Tick`: every client's timers.
fn tick(world: &mut World, clients: &mut QueryState<&mut ClientCore>) {
    let now = world.resource::<Time<Real>>().elapsed();
    for mut core in clients.iter_mut(world) {
        core.tick(now);
    }
}

/// `ImSystems::Send`: hands every queued action to its client's transport, in order,
/// writes the events (the write outcomes among them), and measures diagnostics.
fn send(
    world: &mut World,
    clients: &mut QueryState<Clients>,
    primary: &mut QueryState<&ClientCore, With<ImPrimaryClient>>,
) {
    for (mut core, mut transport, url, _) in clients.iter_mut(world) {
        if core.has_output() {
            core.flush_into(&mut *transport.0, &url.0);
        }
    }
    deliver(world, clients);
    diagnostics::measure(world, primary);
}

/// Writes every event the clients produced as messages and observer events, and
/// keeps received data in each client's inbox.
fn deliver(world: &mut World, clients: &mut QueryState<Clients>) {
    let mut events = Vec::new();
    for (mut core, _, _, mut inbox) in clients.iter_mut(world) {
        if !core.has_output() {
            continue;
        }
        for event in core.take_events() {
            if let ClientEvent::DataReceived(data) = &event {
                inbox.push(data.clone());
            }
            events.push(event);
        }
    }
    for event in events {
        event.deliver(world);
    }
}

/// The primary client's state: [`ImStatus`] for the run conditions, and
/// [`ImConnection`] when it changed.
fn update_status(world: &mut World, primary: &mut QueryState<&ClientCore, With<ImPrimaryClient>>) {
    let Ok(core) = primary.single(world) else {
        return;
    };
    let (logged_in, connection) = (core.is_logged_in(), core.state());
    let mut status = world.resource_mut::<ImStatus>();
    status.just_logged_in = logged_in && !status.was_logged_in;
    status.just_logged_out = !logged_in && status.was_logged_in;
    status.was_logged_in = logged_in;
    if world.resource::<State<ImConnection>>().get() != &connection {
        world
            .resource_mut::<NextState<ImConnection>>()
            .set(connection);
    }
}

impl ClientCore {
    /// Takes in one event of the client's transport.
    fn on_transport_event(&mut self, event: TransportEvent, now: Duration) {
        match event {
            TransportEvent::Opened { link } => self.on_link_opened(link, now),
            TransportEvent::Text { link, text } => self.on_text(link, &text, now),
            TransportEvent::Closed { link, code, reason } => {
                self.on_link_closed(link, code, &reason, now)
            }
            TransportEvent::Error { link, error } => self.on_link_error(link, error),
        }
    }

    /// Carries out the queued actions on `transport`, reporting the game's own writes
    /// as [`SendResult`].
    fn flush_into(&mut self, transport: &mut dyn Transport, url: &str) {
        for action in self.take_actions() {
            match action {
                Action::Connect { link } => transport.connect(link, url),
                Action::Close { link } => transport.close(link),
                Action::Send {
                    link,
                    text,
                    fp,
                    report,
                } => {
                    let written = transport.send(link, text);
                    if let Err(e) = &written {
                        debug!("frame not written: {e}");
                    }
                    if report {
                        let code = match written {
                            Ok(()) => ResultCode::Ok,
                            Err(_) => ResultCode::DataSendFailed,
                        };
                        let client = self.entity();
                        self.push_event(SendResult { client, fp, code });
                    }
                }
            }
        }
    }
}
