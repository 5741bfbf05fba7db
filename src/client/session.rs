//! The login session: who is logged in, on which stage of the link, and the saved
//! login that re-logins present.

use std::time::Duration;

use crate::protocol::{Dialect, KickoutInfo, LoginInfo, MAX_FRAME_BYTES};

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
    /// How long a connect plus login may take before the attempt is given up.
    pub login_timeout: Duration,
    /// The largest frame the client writes.
    pub max_frame_bytes: usize,
    /// Seed for the re-login jitter; `None` picks a random one.
    pub jitter_seed: Option<u64>,
    /// How many QoS messages sent while a re-login is under way wait for it (and are
    /// then written in order); one more is refused with 1, as before any login.
    pub max_queued: usize,
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
            login_timeout: Duration::from_secs(10),
            max_frame_bytes: MAX_FRAME_BYTES,
            jitter_seed: None,
            max_queued: 1024,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The receiver's user id; `"0"` for the server.
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

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum SessionState {
    /// No link.
    #[default]
    Disconnected,
    /// A link is being opened.
    Connecting,
    /// The link is open and the login frame is out; waiting for the reply.
    LoggingIn,
    /// Logged in.
    LoggedIn,
}

/// The login session (the seed's `ClientCoreSDK` state).
#[derive(Debug, Default, bevy::prelude::Resource)]
pub struct Session {
    pub(super) config: ClientConfig,
    pub(super) state: SessionState,
    /// The login that (re-)logins present; its `first_login_time` is the server's
    /// once the first login succeeded.
    pub(super) login: Option<LoginInfo>,
    /// Whether the first login succeeded (upstream's `loginHasInit`).
    pub(super) login_has_init: bool,
    /// Whether the attempt in progress is an automatic re-login.
    pub(super) relogin_attempt: bool,
    /// When the attempt in progress started.
    pub(super) attempt_started: Duration,
    /// When the session last logged in.
    pub(super) logged_in_at: Duration,
    pub(super) kicked: Option<KickoutInfo>,
    pub(super) released: bool,
}

impl Session {
    /// A disconnected session.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Where the session stands.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Whether the session is logged in.
    pub fn is_logged_in(&self) -> bool {
        self.state == SessionState::LoggedIn
    }

    /// The user id of the current (or last) login.
    pub fn user_id(&self) -> Option<&str> {
        self.login.as_ref().map(|l| l.login_user_id.as_str())
    }

    /// The server's time of the first login, once it succeeded.
    pub fn first_login_time(&self) -> Option<i64> {
        self.login
            .as_ref()
            .filter(|_| self.login_has_init)
            .map(|l| l.first_login_time)
    }

    /// The kickout that ended the session, if one did.
    pub fn kickout(&self) -> Option<&KickoutInfo> {
        self.kicked.as_ref()
    }

    /// Whether an automatic re-login is under way or scheduled: the session logged in
    /// once, is not logged in now, and was not kicked, logged out or released.
    pub fn is_relogging(&self) -> bool {
        self.state != SessionState::LoggedIn
            && self.login_has_init
            && self.config.auto_relogin
            && self.kicked.is_none()
            && !self.released
    }

    /// Whether the client was released (or never logged in).
    pub fn is_released(&self) -> bool {
        self.released
    }
}
