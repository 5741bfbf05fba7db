//! A test kit for games (feature `testing`): a headless app with the plugin,
//! `MinimalPlugins` and time driven by hand, over the in-memory transport (the test
//! plays the server) or a real server (the reference server in-process, say).
//!
//! Every message the plugin writes is collected in `Update`, as a game system would
//! read it; [`ImTestApp::heard`] takes those of one type. Time moves only when the test says: [`step`](ImTestApp::step) advances
//! by the fixed step, [`advance_to_next_deadline`](ImTestApp::advance_to_next_deadline)
//! jumps to the client's next timer, so no test guesses protocol times or sleeps.
//!
//! ```
//! use bevy_im::prelude::*;
//! use bevy_im::testing::ImTestApp;
//!
//! let mut t = ImTestApp::memory(ImConfig::new("mem://server"));
//! t.login("alice");
//! let fp = t.run(|mut im: ImClient| im.send(Outgoing::new("bob", "hi")).unwrap());
//! t.step();
//! assert_eq!(t.wire()[0].content(), "hi");
//! # let _ = t.heard::<MessagesLost>();
//! // The server never answers: resent twice, then reported lost 9 s after the send.
//! let mut lost = Vec::new();
//! while lost.is_empty() {
//!     t.advance_to_next_deadline();
//!     t.step(); // the game hears it in the next Update
//!     lost = t.heard::<MessagesLost>();
//! }
//! assert_eq!(lost[0].frames[0].fp, fp);
//! let resent = t.wire().into_iter().filter(|f| f.fp == fp).count();
//! assert_eq!(resent, 2);
//! ```

use std::time::Duration;

use bevy::ecs::system::RunSystemOnce;
use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;

use crate::client::{ClientCore, ClientEvent};
use crate::plugin::{ImClientPlugin, ImConfig, ImPrimaryClient};
use crate::protocol::{
    Dialect, Frame, LoginResponse, RoomReply, RoomRequest, SERVER_ID, decode_body, encode_body,
    room_address, wire,
};
use crate::transport::{MemoryPeer, MemoryTransport, TransportConfig};

/// The fixed step of [`ImTestApp::step`]: 100 ms of protocol time per update.
pub const STEP: Duration = Duration::from_millis(100);

/// Every message of type `T` written so far and not yet taken.
#[derive(Resource)]
struct Heard<T>(Vec<T>);

fn collect<T: Message + Clone>(mut reader: MessageReader<T>, mut heard: ResMut<Heard<T>>) {
    heard.0.extend(reader.read().cloned());
}

/// Collects every message of type `T` into a resource the kit reads, in `Update`:
/// what a game system sees, when it sees it (a message written in `PostUpdate` is
/// heard in the next frame's `Update`).
pub(crate) fn collect_messages<T: Message + Clone>(app: &mut App) {
    app.insert_resource(Heard::<T>(Vec::new()))
        .add_systems(Update, collect::<T>);
}

/// A headless app with [`ImClientPlugin`] and hand-driven time.
pub struct ImTestApp {
    /// The app; add the game's own systems to it.
    pub app: App,
    peer: Option<MemoryPeer>,
    dialect: Dialect,
    client: Entity,
    step: Duration,
}

impl ImTestApp {
    /// A client on the in-memory transport: the test plays the server through
    /// [`peer`](Self::peer), [`wire`](Self::wire) and [`push`](Self::push).
    pub fn memory(config: ImConfig) -> Self {
        let transport = config.transport.clone();
        Self::memory_with(config, transport)
    }

    /// [`memory`](Self::memory) with the memory transport's own settings (its frame
    /// limit, for example).
    pub fn memory_with(config: ImConfig, transport: TransportConfig) -> Self {
        let (transport, peer) = MemoryTransport::pair_with(transport);
        let plugin = ImClientPlugin::new(config.clone()).with_transport(transport);
        let mut t = Self::build(plugin, &config);
        t.peer = Some(peer);
        t
    }

    /// The primary client's entity, named in every message it writes.
    pub fn client(&self) -> Entity {
        self.client
    }

    /// The dialect the client speaks.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// A client on the platform's transport, for a server listening at
    /// `config.url` (the reference server in-process, for example). Time still moves
    /// only by hand; only I/O takes real time, so wait for it with
    /// [`update_until`](Self::update_until).
    pub fn connected(config: ImConfig) -> Self {
        Self::build(ImClientPlugin::new(config.clone()), &config)
    }

    fn build(plugin: ImClientPlugin, config: &ImConfig) -> Self {
        let mut app = App::new();
        app.add_plugins(MinimalPlugins)
            .insert_resource(TimeUpdateStrategy::ManualDuration(STEP))
            .add_plugins(plugin);
        ClientEvent::collect_all(&mut app);
        app.update();
        let client = app
            .world_mut()
            .query_filtered::<Entity, With<ImPrimaryClient>>()
            .single(app.world())
            .expect("the plugin spawned the primary client");
        Self {
            app,
            peer: None,
            dialect: config.client.dialect,
            client,
            step: STEP,
        }
    }

    /// Sets the time one [`step`](Self::step) advances (default [`STEP`]).
    pub fn set_step(&mut self, step: Duration) {
        self.step = step;
        self.app
            .insert_resource(TimeUpdateStrategy::ManualDuration(step));
    }

    /// Logs in as `user` with `token` without answering for the server (for a real
    /// server; over the memory transport [`login`](Self::login) plays both sides).
    ///
    /// # Panics
    /// When the login is refused locally.
    pub fn start_login(&mut self, user: &str, token: &str) {
        let request = crate::client::LoginRequest::new(user, token);
        self.run(move |mut im: crate::plugin::ImClient| {
            im.login(request.clone()).expect("a valid login")
        });
    }

    /// Runs one update, one step later.
    pub fn step(&mut self) {
        self.app.update();
    }

    /// Runs `n` updates.
    pub fn steps(&mut self, n: usize) {
        for _ in 0..n {
            self.app.update();
        }
    }

    /// Runs one update whose time is `by` later than the last.
    pub fn advance(&mut self, by: Duration) {
        self.app
            .insert_resource(TimeUpdateStrategy::ManualDuration(by));
        self.app.update();
        self.app
            .insert_resource(TimeUpdateStrategy::ManualDuration(self.step));
    }

    /// Runs one update at the primary client's next timer (a keepalive, a resend or
    /// loss, a re-login, the login timeout), and returns how far that was; `None`
    /// (and no update) when nothing is scheduled.
    pub fn advance_to_next_deadline(&mut self) -> Option<Duration> {
        let due = self.core().poll_timeout()?;
        let by = due.saturating_sub(self.now());
        self.advance(by);
        Some(by)
    }

    /// Updates until `done` holds, at most `max_updates` times, sleeping 1 ms of real
    /// time between updates so that real I/O can progress. Returns whether it held.
    pub fn update_until(
        &mut self,
        max_updates: usize,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        for _ in 0..max_updates {
            if done(self) {
                return true;
            }
            self.app.update();
            std::thread::sleep(Duration::from_millis(1));
        }
        done(self)
    }

    /// The time the client sees (`Time<Real>` elapsed).
    pub fn now(&self) -> Duration {
        self.app.world().resource::<Time<Real>>().elapsed()
    }

    /// Runs a one-shot system, such as `|mut im: ImClient| im.send(..)`.
    ///
    /// # Panics
    /// When the system cannot run (its parameters are invalid).
    pub fn run<O: 'static, M>(&mut self, system: impl IntoSystem<(), O, M>) -> O {
        self.app
            .world_mut()
            .run_system_once(system)
            .expect("the system's parameters are valid")
    }

    /// The primary client's core, read only.
    ///
    /// # Panics
    /// When the primary client entity was despawned.
    pub fn core(&mut self) -> &ClientCore {
        let mut query = self
            .app
            .world_mut()
            .query_filtered::<&ClientCore, With<ImPrimaryClient>>();
        query
            .single(self.app.world())
            .expect("the primary client exists")
    }

    /// Takes every message of type `T` written since the last call.
    ///
    /// # Panics
    /// When `T` is not one of the plugin's messages.
    pub fn heard<T: Message + Clone>(&mut self) -> Vec<T> {
        let mut heard = self
            .app
            .world_mut()
            .get_resource_mut::<Heard<T>>()
            .expect("a message type the plugin writes");
        std::mem::take(&mut heard.0)
    }

    /// The server side of the memory link.
    ///
    /// # Panics
    /// On a real transport.
    pub fn peer(&self) -> &MemoryPeer {
        self.peer.as_ref().expect("an ImTestApp::memory app")
    }

    /// The frames the client wrote since the last call (memory transport).
    ///
    /// # Panics
    /// On a real transport, or when the client wrote something that is not a frame.
    pub fn wire(&self) -> Vec<Frame> {
        self.peer()
            .take_sent()
            .iter()
            .map(|t| Frame::decode(t).expect("the client writes frames"))
            .collect()
    }

    /// The server sends `frame` (memory transport); the client sees it next update.
    ///
    /// # Panics
    /// When no link is open.
    pub fn push(&self, frame: Frame) {
        assert!(self.peer().push_text(frame.to_json()), "no link is open");
    }

    /// Logs `user` in over the memory transport: the login goes out and the server
    /// accepts it. The client is logged in when this returns; `LoginSucceeded` is
    /// still to be taken with [`heard`](Self::heard).
    ///
    /// # Panics
    /// When the login is refused locally or the client does not write a login frame.
    pub fn login(&mut self, user: &str) {
        self.login_as(user, 1);
    }

    /// [`login`](Self::login), the server answering with `first_login_time`.
    ///
    /// # Panics
    /// As [`login`](Self::login).
    pub fn login_as(&mut self, user: &str, first_login_time: i64) {
        self.login_full(user, first_login_time, &[]);
    }

    /// [`login`](Self::login) to a server that serves the extensions `ext`
    /// ([`protocol::ext`](crate::protocol::ext) names, such as `ext::ROOMS`), as its
    /// login reply lists them.
    ///
    /// # Panics
    /// As [`login`](Self::login).
    pub fn login_with_ext(&mut self, user: &str, ext: &[&str]) {
        self.login_full(user, 1, ext);
    }

    fn login_full(&mut self, user: &str, first_login_time: i64, ext: &[&str]) {
        let u = user.to_owned();
        self.run(move |mut im: crate::plugin::ImClient| {
            im.login(crate::client::LoginRequest::new(u.clone(), "token"))
                .expect("a valid login")
        });
        self.step(); // connect
        self.step(); // opened: the login frame goes out
        let sent = self.wire();
        assert!(
            sent.iter().any(|f| f.ty == wire::LOGIN),
            "the client wrote a login frame: {sent:?}"
        );
        self.push(Frame::login_response(
            user,
            &LoginResponse {
                code: 0,
                first_login_time,
                ext: ext.iter().map(|e| (*e).to_owned()).collect(),
            },
        ));
        self.step();
        assert!(self.core().is_logged_in(), "logged in");
    }

    /// The room and social requests (type 100) the client wrote since the last
    /// [`wire`](Self::wire) (memory transport); other frames are dropped.
    ///
    /// # Panics
    /// As [`wire`](Self::wire), or when a request's body does not decode.
    pub fn room_requests(&self) -> Vec<RoomRequest> {
        self.wire()
            .iter()
            .filter(|f| f.ty == wire::ROOM_REQUEST)
            .map(|f| decode_body(f.data_content.as_deref()).expect("a room request body"))
            .collect()
    }

    /// The server sends a room reply or event (type 150) to the logged-in user
    /// (memory transport); the client sees it next update. Answer a request with
    /// `RoomReply::to(&request, code)`.
    ///
    /// # Panics
    /// When no link is open.
    pub fn push_room_reply(&mut self, reply: &RoomReply) {
        let to = self.core().user_id().unwrap_or_default().to_owned();
        let mut frame = Frame::new(wire::ROOM_REPLY, SERVER_ID, to);
        frame.data_content = Some(encode_body(reply));
        self.push(frame);
    }

    /// The server delivers a copy of `from`'s QoS message `content` in room `room`
    /// with message id `mid` and server time `sm` (memory transport), and runs one
    /// update. Returns its fingerprint.
    pub fn deliver_to_room(&mut self, from: &str, room: &str, content: &str, mid: i64) -> String {
        let mut frame = Frame::data(from, &room_address(room), content, true, None, 0);
        frame.mid = Some(mid);
        frame.sm = 1_795_643_500_000 + mid;
        let fp = frame.fp.clone().unwrap_or_default();
        self.push(frame);
        self.step();
        fp
    }

    /// The server ACKs `fp` with the extension's fields: the message's id `mid`, and
    /// `stored` when it was stored for an offline receiver (memory transport).
    pub fn push_ack(&mut self, fp: &str, mid: Option<i64>, stored: bool) {
        let user = self.core().user_id().unwrap_or_default().to_owned();
        let mut ack = Frame::server_ack(self.dialect, SERVER_ID, &user, fp);
        ack.mid = mid;
        ack.stored = stored;
        self.push(ack);
    }

    /// The server delivers a QoS message `content` from `from` (memory transport).
    /// Returns its fingerprint.
    pub fn deliver(&mut self, from: &str, content: &str) -> String {
        let to = self.core().user_id().unwrap_or_default().to_owned();
        let frame = Frame::data(from, &to, content, true, None, 0);
        let fp = frame.fp.clone().unwrap_or_default();
        self.push(frame);
        self.step();
        fp
    }

    /// The server ACKs every QoS data frame the client wrote since the last
    /// [`wire`](Self::wire) (memory transport); returns their fingerprints.
    pub fn ack_all(&mut self) -> Vec<String> {
        let user = self.core().user_id().unwrap_or_default().to_owned();
        let fps: Vec<String> = self
            .wire()
            .into_iter()
            .filter(|f| f.ty == wire::COMMON_DATA && f.qos)
            .filter_map(|f| f.fp)
            .collect();
        for fp in &fps {
            self.push(Frame::server_ack(self.dialect, "0", &user, fp));
        }
        self.step();
        fps
    }
}
