//! The rules that move the parts together.

mod social;

use std::time::Duration;

use bevy::prelude::{Component, Entity};

use crate::protocol::{
    ClientKind, ErrorResponse, Frame, KickoutCode, KickoutInfo, LoginInfo, LoginResponse,
    ResultCode, ServerKind, decode_body, room_of_address,
};
use crate::transport::{LinkId, TransportError};

use super::messages::*;
use super::rooms::RoomRequests;
use super::{
    Action, ClientConfig, CoreOutput, CoreStats, FrameProblem, ImConnection, Keepalive,
    KeepaliveTick, LoginError, LoginRequest, Outgoing, QosReceiveFilter, QosSendTable, Relogin,
    Rooms, SendError,
};

/// The error code upstream uses for "not logged in" inside an error frame.
const NOT_LOGGED_IN: i32 = 301;

/// The error code of a frame refused for the server's rate limit (`im-server`'s
/// `ERROR_RATE_LIMITED`, HTTP's 429).
pub const RATE_LIMITED: i32 = 429;

/// The error code of a message the server could not hand to its receiver for now
/// (the receiver's queue or pending QoS table is full; HTTP's 503): resent after a
/// back-off, as for [`RATE_LIMITED`].
pub const RECEIVER_BUSY: i32 = crate::protocol::room_code::RECEIVER_BUSY;

/// Where the session stands. One value replaces a state plus flags: each phase holds
/// what only it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// No session: never logged in, logged out, released, a refused first login, or a
    /// re-login that gave up (`stopped`).
    Offline {
        released: bool,
        stopped: Option<ReloginStop>,
    },
    /// A connect and login in progress; `open` once the link is open and the login
    /// frame is out.
    Attempt {
        relogin: bool,
        started: Duration,
        open: bool,
    },
    /// Logged in since `since`.
    LoggedIn { since: Duration },
    /// Logged in once, the link is gone, and the next re-login attempt is scheduled.
    Relogging,
    /// Kicked out; nothing more happens until the game logs in again.
    Kicked(KickoutInfo),
}

/// Why a link ends. [`ClientCore::end_link`] applies the effects of each in one place.
#[derive(Debug)]
enum LinkEnd {
    /// The game starts a login: the old session (if any) ends.
    NewLogin { other_user: bool },
    /// The game logged out or released the client.
    Released,
    /// A connect or login attempt failed before a reply (closed, timed out).
    AttemptFailed(ResultCode),
    /// The server answered the login with a non-zero code.
    Refused(ResultCode),
    /// A logged-in link closed or went silent.
    Lost(CloseReason),
    /// The server said 301: it no longer knows this session.
    NotLoggedIn,
    /// The server kicked this session out.
    Kicked(KickoutInfo),
}

/// What to do with the re-login schedule when a link ends.
enum ReloginStep {
    Stop,
    /// Start afresh, the first attempt after this delay.
    Start(Duration),
    /// Start afresh at once, or go on backing off if the session did not last.
    StartOrResume,
    /// The attempt failed: schedule the next one.
    Failed,
    /// Whatever it was doing, leave it.
    Keep,
}

/// One client: the login session, the QoS send table, the QoS receive filter,
/// keepalive and re-login, as one plain deterministic state machine.
///
/// Every call takes `now` (time since an arbitrary start, never going back) and
/// records what to do: link [`Action`]s for the transport (take them with
/// [`take_actions`](Self::take_actions)) and [`ClientEvent`]s for the game
/// ([`take_events`](Self::take_events)). The core owns link identity: every
/// [`Action::Connect`] names a new [`LinkId`], and events from any other link are
/// ignored. [`poll_timeout`](Self::poll_timeout) says when the next timer is due.
///
/// In Bevy it is a component of the client entity, driven by the plugin.
#[derive(Debug, Component)]
pub struct ClientCore {
    entity: Entity,
    config: ClientConfig,
    phase: Phase,
    /// The login that (re-)logins present; its `first_login_time` is the server's once
    /// the first login succeeded.
    login: Option<LoginInfo>,
    /// Whether the first login succeeded (upstream's `loginHasInit`).
    login_has_init: bool,
    /// When the link was lost, for the re-login time limit.
    lost_at: Option<Duration>,
    /// Re-login attempts since the link was lost, for the attempt limit (the
    /// schedule's own count goes on across short sessions, for the backoff).
    attempts_since_loss: u32,
    link: Option<LinkId>,
    next_link: u64,
    qos_send: QosSendTable,
    qos_recv: QosReceiveFilter,
    keepalive: Keepalive,
    relogin: Relogin,
    /// What the server serves beyond upstream's protocol: its last login reply's
    /// `ext`, kept across re-logins, forgotten when the session ends.
    server_ext: Vec<String>,
    /// The rooms the client is in.
    rooms: Rooms,
    /// Room and social requests waiting for their replies.
    requests: RoomRequests,
    out: CoreOutput,
}

impl ClientCore {
    /// A client that is offline.
    pub fn new(config: ClientConfig) -> Self {
        let seed = config.jitter_seed.unwrap_or_else(|| fastrand::u64(..));
        Self {
            entity: Entity::PLACEHOLDER,
            qos_send: QosSendTable::new(config.qos),
            qos_recv: QosReceiveFilter::new(config.dedup),
            keepalive: Keepalive::new(config.sense_mode),
            relogin: Relogin::new(config.relogin, seed),
            phase: Phase::Offline {
                released: false,
                stopped: None,
            },
            login: None,
            login_has_init: false,
            lost_at: None,
            attempts_since_loss: 0,
            link: None,
            next_link: 0,
            server_ext: Vec::new(),
            rooms: Rooms::default(),
            requests: RoomRequests::default(),
            out: CoreOutput::default(),
            config,
        }
    }

    /// Sets the entity named in every event (the plugin sets the client's own).
    pub fn set_entity(&mut self, entity: Entity) {
        self.entity = entity;
    }

    /// The entity named in every event.
    pub fn entity(&self) -> Entity {
        self.entity
    }

    /// The configuration in force.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Takes the queued link actions, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out.actions)
    }

    /// Takes the queued events, in order.
    pub fn take_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.out.events)
    }

    /// Whether actions or events are waiting to be taken.
    pub fn has_output(&self) -> bool {
        !self.out.actions.is_empty() || !self.out.events.is_empty()
    }

    /// Counters since the client was made.
    pub fn stats(&self) -> CoreStats {
        self.out.stats
    }

    /// Where the connection stands.
    pub fn state(&self) -> ImConnection {
        match &self.phase {
            Phase::Offline { .. } => ImConnection::Offline,
            Phase::Attempt { relogin: false, .. } => ImConnection::Connecting,
            Phase::Attempt { relogin: true, .. } | Phase::Relogging => ImConnection::Relogging,
            Phase::LoggedIn { .. } => ImConnection::LoggedIn,
            Phase::Kicked(_) => ImConnection::Kicked,
        }
    }

    /// Whether the session is logged in.
    pub fn is_logged_in(&self) -> bool {
        matches!(self.phase, Phase::LoggedIn { .. })
    }

    /// Whether a re-login is under way or scheduled.
    pub fn is_relogging(&self) -> bool {
        self.state() == ImConnection::Relogging
    }

    /// Whether the client was released (and not logged in since).
    pub fn is_released(&self) -> bool {
        matches!(self.phase, Phase::Offline { released: true, .. })
    }

    /// Why re-login stopped, while the client is offline because of it.
    pub fn relogin_stopped(&self) -> Option<ReloginStop> {
        match self.phase {
            Phase::Offline { stopped, .. } => stopped,
            _ => None,
        }
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

    /// The kickout that ended the session, while kicked.
    pub fn kickout(&self) -> Option<&KickoutInfo> {
        match &self.phase {
            Phase::Kicked(info) => Some(info),
            _ => None,
        }
    }

    /// The current link, if one is open or opening.
    pub fn link(&self) -> Option<LinkId> {
        self.link
    }

    /// The QoS send table (read only: only the core changes it, so that every
    /// message keeps exactly one outcome).
    pub fn qos_send(&self) -> &QosSendTable {
        &self.qos_send
    }

    /// The received-fingerprint filter (read only).
    pub fn qos_recv(&self) -> &QosReceiveFilter {
        &self.qos_recv
    }

    /// The keepalive clock (read only).
    pub fn keepalive(&self) -> &Keepalive {
        &self.keepalive
    }

    /// The re-login schedule (read only).
    pub fn relogin(&self) -> &Relogin {
        &self.relogin
    }

    /// How many QoS messages wait for an ACK (including those queued for a re-login).
    pub fn pending_count(&self) -> usize {
        self.qos_send.len()
    }

    /// The latest keepalive round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.keepalive.rtt()
    }

    /// When the next timer is due: a keepalive, a QoS resend or loss, a dedup expiry,
    /// the login timeout, a re-login attempt or a room request's timeout. `None` when
    /// nothing is scheduled. It
    /// may be early (a deadline that was cancelled since), never late: calling
    /// [`tick`](Self::tick) at that time (and after every input) runs everything on
    /// time.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let login_timeout = match self.phase {
            Phase::Attempt { started, .. } => Some(started + self.config.login_timeout),
            _ => None,
        };
        let relogin = match self.phase {
            Phase::Relogging => self.relogin.due(),
            _ => None,
        };
        let give_up = match (self.phase.clone(), self.config.relogin_limits.max_duration) {
            (Phase::Relogging | Phase::Attempt { relogin: true, .. }, Some(max)) => {
                self.lost_at.map(|lost| lost + max)
            }
            _ => None,
        };
        [
            self.keepalive.next_deadline(),
            self.qos_send.next_deadline(),
            self.qos_recv.next_deadline(),
            login_timeout,
            relogin,
            give_up,
            self.requests.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn emit(&mut self, event: impl Into<ClientEvent>) {
        self.out.events.push(event.into());
    }

    /// Queues an event from the driver (the write outcome of a send).
    pub(crate) fn push_event(&mut self, event: impl Into<ClientEvent>) {
        self.emit(event);
    }

    fn write(&mut self, frame: &Frame) {
        let Some(link) = self.link else { return };
        // Control frames and ACKs are small; data was size-checked in `send`.
        self.out.stats.frames_out += 1;
        self.out.actions.push(Action::Send {
            link,
            text: frame.to_json(),
            fp: frame.fp.clone(),
            report: false,
        });
    }

    fn user(&self) -> String {
        self.user_id().unwrap_or_default().to_owned()
    }

    fn connect(&mut self, relogin: bool, now: Duration) {
        self.next_link += 1;
        let link = LinkId(self.next_link);
        self.link = Some(link);
        self.phase = Phase::Attempt {
            relogin,
            started: now,
            open: false,
        };
        self.out.actions.push(Action::Connect { link });
    }

    /// Ends the current link for `cause`. Every way a session or an attempt ends goes
    /// through here; the effects of each cause are in the table below.
    fn end_link(&mut self, cause: LinkEnd, now: Duration) {
        let relogin_attempt = matches!(self.phase, Phase::Attempt { relogin: true, .. });
        let session_lasted = match self.phase {
            Phase::LoggedIn { since } => now.saturating_sub(since),
            _ => Duration::MAX,
        };
        let auto = self.config.auto_relogin && self.login_has_init;
        // (re-login step, report pending messages lost, forget received fingerprints,
        //  next phase)
        let (step, lose_pending, forget_received, next) = match &cause {
            LinkEnd::NewLogin { other_user } => (ReloginStep::Stop, *other_user, *other_user, None),
            LinkEnd::Released => (ReloginStep::Stop, true, true, Some(offline(true, None))),
            LinkEnd::AttemptFailed(_) if relogin_attempt => {
                (ReloginStep::Failed, false, false, Some(Phase::Relogging))
            }
            LinkEnd::AttemptFailed(_) => {
                (ReloginStep::Stop, false, false, Some(offline(false, None)))
            }
            LinkEnd::Refused(code) if relogin_attempt => {
                let stop = ReloginStop::Refused(*code);
                (
                    ReloginStep::Stop,
                    false,
                    false,
                    Some(offline(false, Some(stop))),
                )
            }
            LinkEnd::Refused(_) => (ReloginStep::Stop, false, false, Some(offline(false, None))),
            LinkEnd::Lost(_) if auto => (
                ReloginStep::StartOrResume,
                false,
                false,
                Some(Phase::Relogging),
            ),
            LinkEnd::NotLoggedIn if relogin_attempt => {
                (ReloginStep::Failed, false, false, Some(Phase::Relogging))
            }
            LinkEnd::NotLoggedIn if auto => (
                ReloginStep::Start(self.config.relogin.base()),
                false,
                false,
                Some(Phase::Relogging),
            ),
            LinkEnd::Lost(_) | LinkEnd::NotLoggedIn => {
                (ReloginStep::Keep, false, false, Some(offline(false, None)))
            }
            LinkEnd::Kicked(info) => (
                ReloginStep::Stop,
                true,
                true,
                Some(Phase::Kicked(info.clone())),
            ),
        };

        if let Some(link) = self.link.take() {
            self.out.actions.push(Action::Close { link });
        }
        self.keepalive.stop();
        match step {
            ReloginStep::Stop => {
                self.relogin.stop();
                self.lost_at = None;
            }
            ReloginStep::Start(delay) => {
                self.lost_at.get_or_insert(now);
                self.attempts_since_loss = 0;
                self.relogin.start(now + delay);
            }
            ReloginStep::StartOrResume => {
                self.lost_at.get_or_insert(now);
                self.attempts_since_loss = 0;
                // A session that died sooner than a dead link would be noticed is a
                // link that keeps dropping: go on backing off instead of starting at once.
                if session_lasted < self.config.sense_mode.timeout() {
                    self.relogin.resume(now, self.config.relogin_spread);
                } else {
                    self.relogin
                        .start_after_loss(now, self.config.relogin_spread);
                }
            }
            ReloginStep::Failed => self.relogin.failed(now),
            ReloginStep::Keep => {}
        }
        if lose_pending {
            self.report_lost();
            self.end_social_session();
        }
        if forget_received {
            self.qos_recv.clear();
        }
        let was_logged_in = self.is_logged_in();
        let stopped = match &next {
            Some(Phase::Offline { stopped, .. }) => *stopped,
            _ => None,
        };
        if let Some(next) = next {
            self.phase = next;
        }

        let client = self.entity;
        match cause {
            LinkEnd::AttemptFailed(code) | LinkEnd::Refused(code) => {
                self.emit(LoginFailed {
                    client,
                    code,
                    relogin: relogin_attempt,
                });
            }
            LinkEnd::Lost(reason) if was_logged_in => self.emit(LinkClosed { client, reason }),
            LinkEnd::NotLoggedIn => self.emit(LinkClosed {
                client,
                reason: CloseReason::NotLoggedIn,
            }),
            LinkEnd::Kicked(info) => {
                self.emit(Kicked {
                    client,
                    code: KickoutCode::from_code(info.code),
                    reason: info.reason,
                });
                self.emit(LinkClosed {
                    client,
                    reason: CloseReason::Kicked,
                });
            }
            _ => {}
        }
        if let Some(reason) = stopped {
            self.emit(ReloginStopped { client, reason });
        }
        self.check_relogin_limits(now);
    }

    /// Gives re-login up when a limit is reached: at once after the failed attempt
    /// that used the last one, or when the time limit passes.
    fn check_relogin_limits(&mut self, now: Duration) {
        if self.phase != Phase::Relogging {
            return;
        }
        let limits = self.config.relogin_limits;
        let reason = if limits
            .max_attempts
            .is_some_and(|max| self.attempts_since_loss >= max)
        {
            ReloginStop::AttemptsExhausted
        } else if let (Some(max), Some(lost)) = (limits.max_duration, self.lost_at)
            && now.saturating_sub(lost) >= max
        {
            ReloginStop::TimeExhausted
        } else {
            return;
        };
        self.relogin.stop();
        self.lost_at = None;
        self.phase = offline(false, Some(reason));
        self.emit(ReloginStopped {
            client: self.entity,
            reason,
        });
    }

    /// Reports every message still waiting for an ACK as lost.
    fn report_lost(&mut self) {
        let frames = self.qos_send.drain();
        if !frames.is_empty() {
            self.out.stats.lost += frames.len() as u64;
            self.emit(MessagesLost {
                client: self.entity,
                frames,
            });
        }
    }

    /// Starts a login: a new link, then the login frame, then nothing until the reply.
    /// A session in progress is closed first.
    ///
    /// Logging in again as the same user keeps the messages waiting for an ACK (they
    /// are written again once logged in) and the received fingerprints; logging in as
    /// someone else reports the waiting messages lost.
    ///
    /// # Errors
    /// [`LoginError::EmptyUserId`], or [`LoginError::TooLarge`] when the login frame
    /// would exceed the frame limit; nothing is written.
    pub fn login(&mut self, request: LoginRequest, now: Duration) -> Result<(), LoginError> {
        if request.user_id.is_empty() {
            return Err(LoginError::EmptyUserId);
        }
        let info = LoginInfo {
            login_user_id: request.user_id,
            login_token: request.token,
            extra: request.extra,
            first_login_time: 0,
            app: request.app,
        };
        let len = Frame::login(&info).to_json().len();
        let limit = self.config.max_frame_bytes;
        if len > limit {
            return Err(LoginError::TooLarge { len, limit });
        }
        let other_user = self.user_id() != Some(info.login_user_id.as_str());
        self.end_link(LinkEnd::NewLogin { other_user }, now);
        self.login = Some(info);
        self.login_has_init = false;
        self.connect(false, now);
        Ok(())
    }

    /// Logs out: the logout frame only when logged in, then everything is released.
    /// Reports [`LoggedOut`] (after [`MessagesLost`] for what was pending) and returns
    /// its code: 0 when the frame was written, 1 when not logged in.
    pub fn logout(&mut self, now: Duration) -> ResultCode {
        let code = if self.is_logged_in() {
            let frame = Frame::logout(&self.user());
            self.write(&frame);
            ResultCode::Ok
        } else {
            ResultCode::NoLogin
        };
        self.release(now);
        self.emit(LoggedOut {
            client: self.entity,
            code,
        });
        code
    }

    /// Stops everything and forgets the login and both QoS tables. Messages still
    /// waiting for an ACK are reported lost ([`MessagesLost`]), so every QoS message
    /// ends delivered, refused or lost exactly once; room requests still waiting fail
    /// ([`RoomRequestFailed`]) and every room is left ([`RoomLeft`]). Upstream's
    /// `release` reports nothing.
    pub fn release(&mut self, now: Duration) {
        self.end_link(LinkEnd::Released, now);
        self.login = None;
        self.login_has_init = false;
    }

    /// Replaces the token that logins present, for the next attempt. When re-login
    /// stopped because the server refused the old token, it starts again at once.
    pub fn set_token(&mut self, token: impl Into<String>, now: Duration) {
        let Some(login) = &mut self.login else { return };
        login.login_token = token.into();
        if matches!(self.relogin_stopped(), Some(ReloginStop::Refused(_))) && self.login_has_init {
            self.phase = Phase::Relogging;
            self.lost_at = Some(now);
            self.attempts_since_loss = 0;
            self.relogin.start(now);
        }
    }

    /// Queues a data frame. Returns its fingerprint (`None` for a message without QoS
    /// and without a caller fingerprint).
    ///
    /// While an automatic re-login is under way a QoS message is not refused: it
    /// waits (at most [`ClientConfig::max_queued`] of them) and is written, in order,
    /// once logged in again, keeping its fingerprint and its deadlines.
    ///
    /// A message whose `to` is a room address (`#name`, see
    /// [`Outgoing::to_room`]) goes to every other member of the room; it needs a
    /// server that serves `rooms`.
    ///
    /// # Errors
    /// With nothing written or queued: [`SendError::Released`],
    /// [`SendError::NotLoggedIn`], [`SendError::QueueFull`],
    /// [`SendError::EmptyReceiver`], [`SendError::TooLarge`], and for a room
    /// [`SendError::Room`] ([`RoomError::BadName`](super::RoomError::BadName) or
    /// [`RoomError::NotSupported`](super::RoomError::NotSupported)).
    pub fn send(&mut self, msg: Outgoing, now: Duration) -> Result<Option<String>, SendError> {
        if self.is_released() {
            return Err(SendError::Released);
        }
        let queue = !self.is_logged_in();
        if queue {
            if !(msg.qos && self.is_relogging()) {
                return Err(SendError::NotLoggedIn);
            }
            let queued = self.qos_send.owed();
            if queued >= self.config.max_queued {
                return Err(SendError::QueueFull(queued));
            }
        }
        if msg.to.is_empty() {
            return Err(SendError::EmptyReceiver);
        }
        if let Some(room) = msg.room() {
            self.check_room(room)?;
        }
        let frame = Frame::data(
            &self.user(),
            &msg.to,
            msg.content,
            msg.qos,
            msg.fp,
            msg.typeu,
        );
        let limit = self.config.max_frame_bytes;
        let text = frame
            .encode_with_limit(limit)
            .map_err(|_| SendError::TooLarge {
                len: frame.to_json().len(),
                limit,
            })?;
        let fp = frame.fp.clone();
        if let (false, Some(link)) = (queue, self.link) {
            self.out.stats.frames_out += 1;
            self.out.actions.push(Action::Send {
                link,
                text,
                fp: fp.clone(),
                report: true,
            });
        }
        if frame.qos {
            self.qos_send.track(frame, !queue, now);
        }
        Ok(fp)
    }

    /// The link opened: send the login frame.
    pub fn on_link_opened(&mut self, link: LinkId, _now: Duration) {
        if self.link != Some(link) {
            return;
        }
        let Phase::Attempt {
            open: open @ false, ..
        } = &mut self.phase
        else {
            return;
        };
        *open = true;
        if let Some(info) = self.login.clone() {
            self.write(&Frame::login(&info));
        }
    }

    /// The link reported an error; a close follows if it ended.
    pub fn on_link_error(&mut self, link: LinkId, error: TransportError) {
        if self.link == Some(link) {
            self.emit(LinkError {
                client: self.entity,
                error,
            });
        }
    }

    /// The link closed.
    pub fn on_link_closed(&mut self, link: LinkId, code: Option<u16>, reason: &str, now: Duration) {
        if self.link != Some(link) {
            return;
        }
        // Already closed by the peer: nothing to close.
        self.link = None;
        match self.phase {
            Phase::Attempt { .. } => {
                self.end_link(LinkEnd::AttemptFailed(ResultCode::BadConnectToServer), now)
            }
            Phase::LoggedIn { .. } => {
                let reason = CloseReason::ByServer {
                    code,
                    reason: reason.to_owned(),
                };
                self.end_link(LinkEnd::Lost(reason), now);
            }
            _ => {}
        }
    }

    /// A text frame arrived on `link`.
    pub fn on_text(&mut self, link: LinkId, text: &str, now: Duration) {
        if self.link != Some(link) {
            return;
        }
        self.out.stats.frames_in += 1;
        match Frame::decode(text) {
            Ok(frame) => self.on_frame(frame, now),
            Err(e) => self.bad_frame(e.into()),
        }
    }

    fn bad_frame(&mut self, problem: FrameProblem) {
        self.emit(BadFrame {
            client: self.entity,
            problem,
        });
    }

    fn on_frame(&mut self, frame: Frame, now: Duration) {
        let kind = frame.server_kind(self.config.dialect);
        if frame.qos && kind != ServerKind::LoginResponse {
            self.ack(&frame);
        }
        match kind {
            ServerKind::LoginResponse => self.on_login_response(&frame, now),
            ServerKind::KeepAliveResponse => {
                let rtt = self.keepalive.on_reply(now);
                self.emit(KeepaliveReply {
                    client: self.entity,
                    rtt,
                });
            }
            ServerKind::Error => self.on_error(&frame, now),
            ServerKind::EchoResponse => {}
            ServerKind::Kickout => self.on_kickout(&frame, now),
            ServerKind::Data => self.on_data(frame, now),
            ServerKind::Ack => self.on_ack(&frame),
            ServerKind::Room => self.on_room_frame(&frame, now),
            ServerKind::Other(_) => self.bad_frame(FrameProblem::UnknownType(frame.ty)),
        }
    }

    /// The server's ACK of a QoS message: delivered (relayed, or `stored` for an
    /// offline receiver; a room message's id is recorded as seen).
    fn on_ack(&mut self, frame: &Frame) {
        let fp = frame.content();
        let Some(sent) = self.qos_send.remove(fp) else {
            return;
        };
        if let Some(mid) = frame.mid {
            self.saw_own_room_message(&sent, mid);
        }
        self.emit(MessageDelivered {
            client: self.entity,
            fp: fp.to_owned(),
            stored: frame.stored,
            mid: frame.mid,
        });
    }

    fn ack(&mut self, received: &Frame) {
        if let Some(ack) = Frame::ack_of(received) {
            self.write(&ack);
        }
    }

    fn on_login_response(&mut self, frame: &Frame, now: Duration) {
        let response: LoginResponse = match decode_body(frame.data_content.as_deref()) {
            Ok(r) => r,
            Err(e) => return self.bad_frame(e.into()),
        };
        let Phase::Attempt {
            relogin,
            open: true,
            ..
        } = self.phase
        else {
            return self.bad_frame(FrameProblem::UnexpectedLoginReply);
        };
        if frame.qos && response.code == 0 {
            self.ack(frame);
        }
        if response.code != 0 {
            return self.end_link(LinkEnd::Refused(ResultCode::from_code(response.code)), now);
        }
        if !self.login_has_init {
            if let Some(login) = &mut self.login {
                login.first_login_time = response.first_login_time;
            }
            self.login_has_init = true;
        }
        self.server_ext = response.ext;
        self.phase = Phase::LoggedIn { since: now };
        self.lost_at = None;
        self.relogin.succeeded();
        self.keepalive.start(now);
        self.emit(LoginSucceeded {
            client: self.entity,
            user_id: self.user(),
            relogin,
            first_login_time: self.first_login_time().unwrap_or_default(),
        });
        // Room requests first (re-joins among them), so that messages to a room
        // queued during a re-login reach it as a member.
        self.resume_social_session(now);
        let (frames, resends) = self.qos_send.login_flush(now);
        self.out.stats.resends += resends;
        for frame in &frames {
            self.write(frame);
        }
    }

    fn on_error(&mut self, frame: &Frame, now: Duration) {
        let error: ErrorResponse = match decode_body(frame.data_content.as_deref()) {
            Ok(e) => e,
            Err(e) => return self.bad_frame(e.into()),
        };
        let code = error.error_code;
        if code == RATE_LIMITED || code == RECEIVER_BUSY {
            return self.on_throttled(&error.error_msg, now);
        }
        if code != NOT_LOGGED_IN && self.on_refused(code, &error.error_msg) {
            return;
        }
        self.emit(ServerError {
            client: self.entity,
            code: ResultCode::from_code(code),
            msg: error.error_msg,
        });
        let active = matches!(
            self.phase,
            Phase::LoggedIn { .. } | Phase::Attempt { open: true, .. }
        );
        if code == NOT_LOGGED_IN && active {
            // The server forgot this session: drop the link and log in again later.
            self.end_link(LinkEnd::NotLoggedIn, now);
        }
    }

    /// The server refused a frame for its rate limit, or its receiver is busy;
    /// upstream's error frames carry the refused frame as their message. A pending QoS message is written again
    /// after a back-off; the game hears [`SendThrottled`].
    fn on_throttled(&mut self, refused: &str, now: Duration) {
        self.out.stats.throttled += 1;
        let fp = Frame::decode(refused)
            .ok()
            .filter(|f| f.client_kind() == ClientKind::Data)
            .and_then(|f| f.fp);
        let retry_in = fp
            .as_deref()
            .and_then(|fp| self.qos_send.throttled(fp, now));
        self.emit(SendThrottled {
            client: self.entity,
            fp,
            retry_in,
        });
    }

    /// An error frame whose message is one of this client's data frames: the server
    /// refused that message (403, 404, 500, 507, ...). A pending QoS message leaves
    /// the table: [`MessageRefused`] is its one outcome. Returns false when the error
    /// is not about one of this client's messages (a [`ServerError`] then), or
    /// names a QoS message that is settled already.
    fn on_refused(&mut self, code: i32, refused: &str) -> bool {
        let Ok(frame) = Frame::decode(refused) else {
            return false;
        };
        if frame.client_kind() != ClientKind::Data {
            return false;
        }
        let fp = frame.fp.clone();
        let frame = match (&fp, frame.qos) {
            (Some(fp), true) => match self.qos_send.remove(fp) {
                Some(sent) => sent,
                None => return false,
            },
            _ => frame,
        };
        self.emit(MessageRefused {
            client: self.entity,
            fp,
            code,
            frame,
        });
        true
    }

    fn on_kickout(&mut self, frame: &Frame, now: Duration) {
        let info: KickoutInfo = decode_body(frame.data_content.as_deref()).unwrap_or_else(|e| {
            self.bad_frame(e.into());
            KickoutInfo {
                code: -1,
                reason: None,
            }
        });
        self.end_link(LinkEnd::Kicked(info), now);
    }

    fn on_data(&mut self, frame: Frame, now: Duration) {
        if frame.qos
            && let Some(fp) = &frame.fp
            && !self.qos_recv.accept(fp, now)
        {
            return;
        }
        let room = room_of_address(frame.to_id()).map(str::to_owned);
        if let (Some(room), Some(mid)) = (&room, frame.mid)
            && !self.saw_room_message(room, mid)
        {
            return;
        }
        self.emit(DataReceived {
            client: self.entity,
            fp: frame.fp,
            from: frame.from.unwrap_or_default(),
            content: frame.data_content.unwrap_or_default(),
            typeu: frame.typeu,
            room,
            mid: frame.mid,
            sent_at_ms: (frame.sm > 0).then_some(frame.sm),
        });
    }

    /// Runs every timer due at `now`, in this order: keepalive, QoS resends and
    /// losses, dedup expiry, the login timeout, re-login, room request timeouts.
    pub fn tick(&mut self, now: Duration) {
        self.tick_keepalive(now);
        self.tick_qos_send(now);
        self.qos_recv.expire(now);
        self.tick_relogin(now);
        self.tick_requests(now);
    }

    fn tick_keepalive(&mut self, now: Duration) {
        if !self.is_logged_in() {
            return;
        }
        match self.keepalive.tick(now) {
            KeepaliveTick::Idle => {}
            KeepaliveTick::Send => {
                let frame = Frame::keepalive(&self.user());
                self.write(&frame);
            }
            KeepaliveTick::Dead => self.end_link(LinkEnd::Lost(CloseReason::KeepaliveTimeout), now),
        }
    }

    /// QoS send: resends and losses due now. While the link is down a due resend
    /// still counts, so a message is reported lost on time even if no link returns.
    fn tick_qos_send(&mut self, now: Duration) {
        let due = self.qos_send.tick(now, self.is_logged_in());
        for frame in due.resend.iter().chain(&due.retry) {
            self.write(frame);
        }
        self.out.stats.resends += due.resend.len() as u64;
        if !due.lost.is_empty() {
            self.out.stats.lost += due.lost.len() as u64;
            self.emit(MessagesLost {
                client: self.entity,
                frames: due.lost,
            });
        }
    }

    fn tick_relogin(&mut self, now: Duration) {
        if let Phase::Attempt { started, .. } = self.phase
            && now.saturating_sub(started) >= self.config.login_timeout
        {
            self.emit(LinkError {
                client: self.entity,
                error: TransportError::TimedOut(self.config.login_timeout),
            });
            self.end_link(LinkEnd::AttemptFailed(ResultCode::BadConnectToServer), now);
        }
        if let Phase::Attempt { relogin: true, .. } = self.phase
            && let (Some(max), Some(lost)) = (self.config.relogin_limits.max_duration, self.lost_at)
            && now.saturating_sub(lost) >= max
        {
            // The time limit passed during an attempt: the attempt ends, unanswered.
            self.end_link(LinkEnd::AttemptFailed(ResultCode::BadConnectToServer), now);
        }
        self.check_relogin_limits(now);
        if self.phase != Phase::Relogging {
            return;
        }
        if let Some(attempt) = self.relogin.tick(now) {
            self.attempts_since_loss += 1;
            self.out.stats.relogins += 1;
            self.emit(ReloginStarted {
                client: self.entity,
                attempt,
            });
            self.connect(true, now);
        }
    }
}

fn offline(released: bool, stopped: Option<ReloginStop>) -> Phase {
    Phase::Offline { released, stopped }
}
