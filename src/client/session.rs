//! The client's settings, the calls' arguments, and the connection state.

use std::time::Duration;

use bevy::prelude::{Reflect, States};

use crate::protocol::{Dialect, MAX_FRAME_BYTES, room_address, room_of_address};

use super::{DedupConfig, QosSendConfig, ReloginPolicy, SenseMode};

/// Everything the core needs to know, with the product's defaults (DESIGN.md §5).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Which numbering the server speaks.
    pub dialect: Dialect,
    /// Keepalive interval and dead-link timeout.
    pub sense_mode: SenseMode,
    /// Resend and loss timing of QoS messages.
    pub qos: QosSendConfig,
    /// Duplicate suppression of received QoS messages.
    pub dedup: DedupConfig,
    /// Whether a lost link is followed by automatic re-login.
    pub auto_relogin: bool,
    /// The delays between re-login attempts.
    pub relogin: ReloginPolicy,
    /// The first re-login attempt after a lost link comes at a random point within
    /// this (default 0.5 s; zero: at once, as upstream), so that the clients of a
    /// server that went away do not all connect in the same instant when it is back.
    pub relogin_spread: Duration,
    /// How long a connect plus login may take before the attempt is given up.
    pub login_timeout: Duration,
    /// The largest frame the client writes.
    pub max_frame_bytes: usize,
    /// Seed for the re-login jitter; `None` picks a random one.
    pub jitter_seed: Option<u64>,
    /// How many QoS messages sent while a re-login is under way wait for it (and are
    /// then written in order); one more is refused with
    /// [`SendError::QueueFull`](super::SendError).
    pub max_queued: usize,
    /// When automatic re-login gives up.
    pub relogin_limits: ReloginLimits,
    /// How long a room or social request waits for its reply, from the call, before
    /// it fails with [`RoomError::TimedOut`](super::RoomError) (a re-login in between
    /// does not extend it).
    pub room_request_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            dialect: Dialect::Seed,
            sense_mode: SenseMode::Mode5s,
            qos: QosSendConfig::default(),
            dedup: DedupConfig::default(),
            auto_relogin: true,
            relogin: ReloginPolicy::default(),
            relogin_spread: Duration::from_millis(500),
            login_timeout: Duration::from_secs(10),
            max_frame_bytes: MAX_FRAME_BYTES,
            jitter_seed: None,
            max_queued: 1024,
            relogin_limits: ReloginLimits::default(),
            room_request_timeout: Duration::from_secs(10),
        }
    }
}

/// A login: the seed's `login({loginUserId, loginToken, app, extra})`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginRequest {
    /// The user id.
    pub user_id: String,
    /// The token the server's login hook checks.
    pub token: String,
    /// The seed's application name, sent as `app` in the login body.
    pub app: Option<String>,
    /// Free-form data for the login hook.
    pub extra: Option<String>,
}

impl LoginRequest {
    /// A login with a user id and token, no `app` and no `extra`.
    pub fn new(user_id: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            token: token.into(),
            ..Self::default()
        }
    }

    /// Sets `app`.
    pub fn with_app(mut self, app: impl Into<String>) -> Self {
        self.app = Some(app.into());
        self
    }

    /// Sets `extra`.
    pub fn with_extra(mut self, extra: impl Into<String>) -> Self {
        self.extra = Some(extra.into());
        self
    }
}

/// A message to send: the seed's `send({dataContent, toId, Qos, fingerPrint, typeu})`.
/// To a user ([`new`](Self::new)) or to a room ([`to_room`](Self::to_room)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The receiver's user id; `"0"` for the server; `"#name"` for room `name`.
    pub to: String,
    /// The message.
    pub content: String,
    /// Whether the message is ACKed, resent and reported lost. On by default.
    pub qos: bool,
    /// The caller's own fingerprint; a new one is made for QoS messages without it.
    pub fp: Option<String>,
    /// The app-defined sub-type; 0 by default.
    pub typeu: i32,
}

impl Outgoing {
    /// A QoS message with `typeu` 0.
    pub fn new(to: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            to: to.into(),
            content: content.into(),
            qos: true,
            fp: None,
            typeu: 0,
        }
    }

    /// A QoS message with `typeu` 0 to room `room` (its name, without `#`): every
    /// other member gets it; the server ACKs once it has accepted and stored it.
    ///
    /// ```
    /// use bevy_im::client::Outgoing;
    /// assert_eq!(Outgoing::to_room("lobby", "gg").to, "#lobby");
    /// ```
    pub fn to_room(room: &str, content: impl Into<String>) -> Self {
        Self::new(room_address(room), content)
    }

    /// The room this message goes to (its name), when it goes to a room.
    pub fn room(&self) -> Option<&str> {
        room_of_address(&self.to)
    }

    /// Sets whether the message uses QoS.
    pub fn qos(mut self, qos: bool) -> Self {
        self.qos = qos;
        self
    }

    /// Uses the caller's fingerprint.
    pub fn fingerprint(mut self, fp: impl Into<String>) -> Self {
        self.fp = Some(fp.into());
        self
    }

    /// Sets the app-defined sub-type.
    pub fn typeu(mut self, typeu: i32) -> Self {
        self.typeu = typeu;
        self
    }
}

/// Where the connection stands: a Bevy [`States`] kept by the plugin in
/// `ImSystems::Receive`, so games can use `in_state`, `OnEnter`/`OnExit` and
/// `DespawnOnExit`. It follows the primary client.
#[derive(States, Reflect, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ImConnection {
    /// No session: not logged in yet, logged out, released, a refused login, or a
    /// re-login that gave up.
    #[default]
    Offline,
    /// A login the game asked for is connecting or waiting for the server's reply.
    Connecting,
    /// Logged in.
    LoggedIn,
    /// The link was lost; an automatic re-login is scheduled or in progress. QoS
    /// messages sent now wait for it.
    Relogging,
    /// The server kicked the session out; nothing happens until the next login.
    Kicked,
}

/// When automatic re-login gives up ([`ReloginStopped`](super::ReloginStopped)).
/// A login the server refuses with a code always stops it (the same token would be
/// refused again), until the game gives a fresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReloginLimits {
    /// At most this many attempts after a link is lost; `None` (the default, as
    /// upstream) for no limit.
    pub max_attempts: Option<u32>,
    /// Give up once this long has passed since the link was lost; `None` (the
    /// default) for no limit.
    pub max_duration: Option<Duration>,
}
