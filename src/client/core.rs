//! The rules that move the parts together.

use std::time::Duration;

use crate::protocol::{
    ErrorResponse, Frame, KickoutCode, KickoutInfo, LoginInfo, LoginResponse, ResultCode,
    ServerKind, decode_body,
};
use crate::transport::TransportError;

use super::{
    Action, ClientConfig, ClientEvent, CoreOutput, FrameProblem, Keepalive, KeepaliveTick,
    LoginRequest, Outgoing, QosReceiveFilter, QosSendTable, Relogin, Session, SessionState,
};

/// The error code upstream uses for "not logged in" inside an error frame.
const NOT_LOGGED_IN: i32 = 301;

/// The error code of a frame refused for the server's rate limit (`im-server`'s
/// `ERROR_RATE_LIMITED`, HTTP's 429).
pub const RATE_LIMITED: i32 = 429;

/// The parts of one client, borrowed together. Each method takes `now` and records
/// what to do in [`CoreOutput`].
pub struct Core<'a> {
    /// The login session.
    pub session: &'a mut Session,
    /// QoS frames waiting for an ACK.
    pub qos_send: &'a mut QosSendTable,
    /// Fingerprints already delivered.
    pub qos_recv: &'a mut QosReceiveFilter,
    /// The keepalive clock.
    pub keepalive: &'a mut Keepalive,
    /// The re-login schedule.
    pub relogin: &'a mut Relogin,
    /// What to do next.
    pub out: &'a mut CoreOutput,
}

/// All parts of one client, owned: for use outside Bevy and in tests.
#[derive(Debug)]
pub struct ClientCore {
    /// The login session.
    pub session: Session,
    /// QoS frames waiting for an ACK.
    pub qos_send: QosSendTable,
    /// Fingerprints already delivered.
    pub qos_recv: QosReceiveFilter,
    /// The keepalive clock.
    pub keepalive: Keepalive,
    /// The re-login schedule.
    pub relogin: Relogin,
    /// What to do next.
    pub out: CoreOutput,
}

impl ClientCore {
    /// A disconnected client.
    pub fn new(config: ClientConfig) -> Self {
        let seed = config.jitter_seed.unwrap_or_else(|| fastrand::u64(..));
        Self {
            qos_send: QosSendTable::new(config.qos),
            qos_recv: QosReceiveFilter::new(config.dedup),
            keepalive: Keepalive::new(config.sense_mode),
            relogin: Relogin::new(config.relogin, seed),
            out: CoreOutput::default(),
            session: Session::new(config),
        }
    }

    /// Borrows the parts together.
    pub fn core(&mut self) -> Core<'_> {
        Core {
            session: &mut self.session,
            qos_send: &mut self.qos_send,
            qos_recv: &mut self.qos_recv,
            keepalive: &mut self.keepalive,
            relogin: &mut self.relogin,
            out: &mut self.out,
        }
    }

    /// Takes the queued link actions.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out.actions)
    }

    /// Takes the queued events.
    pub fn take_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.out.events)
    }
}

impl Core<'_> {
    fn emit(&mut self, event: ClientEvent) {
        self.out.events.push(event);
    }

    fn write(&mut self, frame: &Frame, report: bool) {
        // Control frames and ACKs are small; data was size-checked in `send`.
        let text = frame.to_json();
        self.out.stats.frames_out += 1;
        self.out.actions.push(Action::Send {
            text,
            fp: frame.fp.clone(),
            report,
        });
    }

    fn close_link(&mut self) {
        self.out.actions.push(Action::Close);
    }

    fn user(&self) -> String {
        self.session.user_id().unwrap_or_default().to_owned()
    }

    /// Starts a login: a new link, then the login frame, then nothing until the reply.
    /// A session in progress is closed first. Fails at once, with nothing written,
    /// when the user id is empty or the login frame would exceed the frame limit.
    ///
    /// Logging in again as the same user keeps the messages waiting for an ACK (they
    /// are written again once logged in) and the received fingerprints; logging in as
    /// someone else reports the waiting messages lost.
    pub fn login(&mut self, request: LoginRequest, now: Duration) -> Result<(), ResultCode> {
        if request.user_id.is_empty() {
            return Err(ResultCode::InvalidProtocol);
        }
        let info = LoginInfo {
            login_user_id: request.user_id,
            login_token: request.token,
            extra: request.extra,
            first_login_time: 0,
            app: request.app,
        };
        if Frame::login(&info)
            .encode_with_limit(self.session.config.max_frame_bytes)
            .is_err()
        {
            return Err(ResultCode::InvalidProtocol);
        }
        if self.session.state != SessionState::Disconnected {
            self.close_link();
        }
        self.keepalive.stop();
        self.relogin.stop();
        if self.session.user_id() != Some(info.login_user_id.as_str()) {
            self.report_lost();
            self.qos_recv.clear();
        }
        self.session.login = Some(info);
        self.session.login_has_init = false;
        self.session.kicked = None;
        self.session.released = false;
        self.begin_attempt(false, now);
        Ok(())
    }

    fn begin_attempt(&mut self, relogin: bool, now: Duration) {
        self.session.state = SessionState::Connecting;
        self.session.relogin_attempt = relogin;
        self.session.attempt_started = now;
        self.out.actions.push(Action::Connect);
    }

    /// Logs out: the logout frame only when logged in, then everything is released.
    /// Reports [`ClientEvent::LoggedOut`] and returns its code.
    pub fn logout(&mut self) -> ResultCode {
        let code = if self.session.state == SessionState::LoggedIn {
            let frame = Frame::logout(&self.user());
            self.write(&frame, false);
            ResultCode::Ok
        } else {
            ResultCode::NoLogin
        };
        self.release();
        self.emit(ClientEvent::LoggedOut { code });
        code
    }

    /// Stops everything and forgets the login and both QoS tables. Messages still
    /// waiting for an ACK are reported lost ([`ClientEvent::MessagesLost`]), so every
    /// QoS message ends delivered or lost exactly once.
    pub fn release(&mut self) {
        if self.session.state != SessionState::Disconnected {
            self.close_link();
        }
        self.report_lost();
        self.reset_daemons();
        self.session.state = SessionState::Disconnected;
        self.session.login = None;
        self.session.login_has_init = false;
        self.session.released = true;
    }

    fn reset_daemons(&mut self) {
        self.keepalive.stop();
        self.relogin.stop();
        self.qos_recv.clear();
    }

    /// Reports every message still waiting for an ACK as lost.
    fn report_lost(&mut self) {
        let lost = self.qos_send.drain();
        if !lost.is_empty() {
            self.out.stats.lost += lost.len() as u64;
            self.emit(ClientEvent::MessagesLost(lost));
        }
    }

    /// Queues a data frame. Returns its fingerprint (`None` for a message without QoS
    /// and without a caller fingerprint), or a code with nothing written: 203 after
    /// release, 1 when not logged in, 4 for an empty receiver or a frame over the limit.
    ///
    /// While an automatic re-login is under way a QoS message is not refused: it
    /// waits (at most [`ClientConfig::max_queued`] of them) and is written, in order,
    /// once logged in again, keeping its fingerprint and its deadlines.
    pub fn send(&mut self, msg: Outgoing, now: Duration) -> Result<Option<String>, ResultCode> {
        if self.session.released {
            return Err(ResultCode::ClientSdkNotInitialized);
        }
        let queue = self.session.state != SessionState::LoggedIn;
        if queue
            && !(msg.qos
                && self.session.is_relogging()
                && self.qos_send.owed() < self.session.config.max_queued)
        {
            return Err(ResultCode::NoLogin);
        }
        if msg.to.is_empty() {
            return Err(ResultCode::InvalidProtocol);
        }
        let frame = Frame::data(
            &self.user(),
            &msg.to,
            msg.content,
            msg.qos,
            msg.fp,
            msg.typeu,
        );
        let text = frame
            .encode_with_limit(self.session.config.max_frame_bytes)
            .map_err(|_| ResultCode::InvalidProtocol)?;
        let fp = frame.fp.clone();
        if !queue {
            self.out.stats.frames_out += 1;
            self.out.actions.push(Action::Send {
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
    pub fn on_link_opened(&mut self, _now: Duration) {
        if self.session.state != SessionState::Connecting {
            return;
        }
        let Some(info) = self.session.login.clone() else {
            return;
        };
        self.write(&Frame::login(&info), false);
        self.session.state = SessionState::LoggingIn;
    }

    /// The link reported an error; a close follows if it ended.
    pub fn on_link_error(&mut self, error: TransportError) {
        self.emit(ClientEvent::LinkError(error));
    }

    /// The link closed.
    pub fn on_link_closed(&mut self, code: Option<u16>, reason: &str, now: Duration) {
        match self.session.state {
            SessionState::Disconnected => {}
            SessionState::Connecting | SessionState::LoggingIn => {
                self.attempt_failed(ResultCode::BadConnectToServer, now);
            }
            SessionState::LoggedIn => {
                let code = code.map_or(-1, i32::from);
                self.link_lost(code, reason.to_owned(), now);
            }
        }
    }

    /// A login attempt ended without a reply: report it and, for a re-login,
    /// schedule the next one.
    fn attempt_failed(&mut self, code: ResultCode, now: Duration) {
        let relogin = self.session.relogin_attempt;
        self.session.state = SessionState::Disconnected;
        self.emit(ClientEvent::LoginFailed { code, relogin });
        if relogin {
            self.relogin.failed(now);
        }
    }

    fn link_lost(&mut self, code: i32, reason: String, now: Duration) {
        self.session.state = SessionState::Disconnected;
        self.keepalive.stop();
        self.emit(ClientEvent::LinkClosed { code, reason });
        if self.session.config.auto_relogin && self.session.login_has_init {
            // A session that died sooner than a dead link would be noticed is a link
            // that keeps dropping: go on backing off instead of starting at once.
            let lasted = now.saturating_sub(self.session.logged_in_at);
            if lasted < self.session.config.sense_mode.timeout() {
                self.relogin.resume(now);
            } else {
                self.relogin.start(now);
            }
        }
    }

    /// A text frame arrived on the current link.
    pub fn on_text(&mut self, text: &str, now: Duration) {
        self.out.stats.frames_in += 1;
        match Frame::decode(text) {
            Ok(frame) => self.on_frame(frame, now),
            Err(e) => self.emit(ClientEvent::BadFrame(e.into())),
        }
    }

    /// A decoded frame arrived on the current link.
    pub fn on_frame(&mut self, frame: Frame, now: Duration) {
        let kind = frame.server_kind(self.session.config.dialect);
        if frame.qos && kind != ServerKind::LoginResponse {
            self.ack(&frame);
        }
        match kind {
            ServerKind::LoginResponse => self.on_login_response(&frame, now),
            ServerKind::KeepAliveResponse => {
                let rtt = self.keepalive.on_reply(now);
                self.emit(ClientEvent::KeepaliveReply { rtt });
            }
            ServerKind::Error => self.on_error(&frame, now),
            ServerKind::EchoResponse => {}
            ServerKind::Kickout => self.on_kickout(&frame),
            ServerKind::Data => self.on_data(frame, now),
            ServerKind::Ack => {
                let fp = frame.content();
                if self.qos_send.ack(fp) {
                    self.emit(ClientEvent::MessageDelivered { fp: fp.to_owned() });
                }
            }
            ServerKind::Other(ty) => {
                self.emit(ClientEvent::BadFrame(FrameProblem::UnknownType(ty)))
            }
        }
    }

    fn ack(&mut self, received: &Frame) {
        if let Some(ack) = Frame::ack_of(received) {
            self.write(&ack, false);
        }
    }

    fn on_login_response(&mut self, frame: &Frame, now: Duration) {
        let response: LoginResponse = match decode_body(frame.data_content.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                self.emit(ClientEvent::BadFrame(e.into()));
                return;
            }
        };
        if self.session.state != SessionState::LoggingIn {
            self.emit(ClientEvent::BadFrame(FrameProblem::UnexpectedLoginReply));
            return;
        }
        if frame.qos && response.code == 0 {
            self.ack(frame);
        }
        let relogin = self.session.relogin_attempt;
        if response.code != 0 {
            self.session.state = SessionState::Disconnected;
            // A refused re-login is retried with backoff (the server may be coming
            // back up); a refused login the game asked for is final.
            if relogin {
                self.relogin.failed(now);
            } else {
                self.relogin.stop();
            }
            self.close_link();
            self.emit(ClientEvent::LoginFailed {
                code: ResultCode::from_code(response.code),
                relogin,
            });
            return;
        }
        if !self.session.login_has_init {
            if let Some(login) = &mut self.session.login {
                login.first_login_time = response.first_login_time;
            }
            self.session.login_has_init = true;
        }
        self.session.state = SessionState::LoggedIn;
        self.session.logged_in_at = now;
        self.relogin.succeeded();
        self.keepalive.start(now);
        let first_login_time = self.session.first_login_time().unwrap_or_default();
        self.emit(ClientEvent::LoginSucceeded {
            user_id: self.user(),
            relogin,
            first_login_time,
        });
        let (frames, resends) = self.qos_send.login_flush(now);
        self.out.stats.resends += resends;
        for frame in &frames {
            self.write(frame, false);
        }
    }

    fn on_error(&mut self, frame: &Frame, now: Duration) {
        let error: ErrorResponse = match decode_body(frame.data_content.as_deref()) {
            Ok(e) => e,
            Err(e) => {
                self.emit(ClientEvent::BadFrame(e.into()));
                return;
            }
        };
        let code = error.error_code;
        if code == RATE_LIMITED {
            self.on_throttled(&error.error_msg, now);
            return;
        }
        self.emit(ClientEvent::ServerError {
            code,
            msg: error.error_msg,
        });
        if code != NOT_LOGGED_IN || self.session.state == SessionState::Disconnected {
            return;
        }
        // The server forgot this session: drop the link and log in again later.
        let was_attempt = self.session.state != SessionState::LoggedIn;
        self.close_link();
        self.keepalive.stop();
        self.session.state = SessionState::Disconnected;
        self.emit(ClientEvent::LinkClosed {
            code,
            reason: "server says not logged in".into(),
        });
        if was_attempt && self.session.relogin_attempt {
            self.relogin.failed(now);
        } else if self.session.config.auto_relogin && self.session.login.is_some() {
            self.relogin.start(now + self.session.config.relogin.base());
        }
    }

    /// The server refused a frame for its rate limit; upstream's error frames carry
    /// the refused frame as their message. A pending QoS message is written again
    /// after a back-off; the game hears [`ClientEvent::SendThrottled`].
    fn on_throttled(&mut self, refused: &str, now: Duration) {
        self.out.stats.throttled += 1;
        let fp = Frame::decode(refused)
            .ok()
            .filter(|f| f.client_kind() == crate::protocol::ClientKind::Data)
            .and_then(|f| f.fp);
        let retry_in = fp.as_deref().and_then(|fp| self.qos_send.throttled(fp, now));
        self.emit(ClientEvent::SendThrottled { fp, retry_in });
    }

    fn on_kickout(&mut self, frame: &Frame) {
        let info: KickoutInfo = decode_body(frame.data_content.as_deref()).unwrap_or_else(|e| {
            self.emit(ClientEvent::BadFrame(e.into()));
            KickoutInfo {
                code: -1,
                reason: None,
            }
        });
        self.report_lost();
        if self.session.state != SessionState::Disconnected {
            self.close_link();
        }
        self.keepalive.stop();
        self.relogin.stop();
        self.qos_recv.clear();
        self.session.state = SessionState::Disconnected;
        self.emit(ClientEvent::Kicked {
            code: KickoutCode::from_code(info.code),
            reason: info.reason.clone(),
        });
        self.emit(ClientEvent::LinkClosed {
            code: -1,
            reason: "kicked out".into(),
        });
        self.session.kicked = Some(info);
    }

    fn on_data(&mut self, frame: Frame, now: Duration) {
        if frame.qos
            && let Some(fp) = &frame.fp
            && !self.qos_recv.accept(fp, now)
        {
            return;
        }
        self.emit(ClientEvent::DataReceived {
            fp: frame.fp,
            from: frame.from.unwrap_or_default(),
            content: frame.data_content.unwrap_or_default(),
            typeu: frame.typeu,
        });
    }

    /// Runs every timer due at `now`: keepalive, QoS resends and losses, dedup
    /// expiry, the login timeout and re-login.
    pub fn tick(&mut self, now: Duration) {
        self.tick_keepalive(now);
        self.tick_qos_send(now);
        self.tick_qos_recv(now);
        self.tick_relogin(now);
    }

    /// Keepalive: send when due; a dead link is reported and re-login begins.
    pub fn tick_keepalive(&mut self, now: Duration) {
        if self.session.state != SessionState::LoggedIn {
            return;
        }
        match self.keepalive.tick(now) {
            KeepaliveTick::Idle => {}
            KeepaliveTick::Send => {
                let frame = Frame::keepalive(&self.user());
                self.write(&frame, false);
            }
            KeepaliveTick::Dead => {
                self.close_link();
                self.link_lost(-1, "keepalive timeout".into(), now);
            }
        }
    }

    /// QoS send: resends and losses due now. While the link is down a due resend
    /// still counts, so a message is reported lost on time even if no link returns.
    pub fn tick_qos_send(&mut self, now: Duration) {
        let due = self
            .qos_send
            .tick(now, self.session.state == SessionState::LoggedIn);
        for frame in due.resend.iter().chain(&due.retry) {
            self.write(frame, false);
        }
        self.out.stats.resends += due.resend.len() as u64;
        if !due.lost.is_empty() {
            self.out.stats.lost += due.lost.len() as u64;
            self.emit(ClientEvent::MessagesLost(due.lost));
        }
    }

    /// QoS receive: forget fingerprints whose window passed.
    pub fn tick_qos_recv(&mut self, now: Duration) {
        self.qos_recv.expire(now);
    }

    /// Login timeout and re-login attempts.
    pub fn tick_relogin(&mut self, now: Duration) {
        let waiting = matches!(
            self.session.state,
            SessionState::Connecting | SessionState::LoggingIn
        );
        if waiting
            && now.saturating_sub(self.session.attempt_started) >= self.session.config.login_timeout
        {
            self.close_link();
            self.emit(ClientEvent::LinkError(TransportError::TimedOut(
                self.session.config.login_timeout,
            )));
            self.attempt_failed(ResultCode::BadConnectToServer, now);
        }
        if self.session.state != SessionState::Disconnected
            || self.session.kicked.is_some()
            || self.session.login.is_none()
        {
            return;
        }
        if let Some(attempt) = self.relogin.tick(now) {
            self.out.stats.relogins += 1;
            self.emit(ClientEvent::ReloginStarted { attempt });
            self.begin_attempt(true, now);
        }
    }
}
