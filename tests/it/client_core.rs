//! Timeline tests of the client core: made-up times, scripted server frames, no
//! sockets and no sleeps.

use std::time::Duration;

use bevy::prelude::Entity;
use bevy_im::client::{
    Action, ClientConfig, ClientCore, ClientEvent, CloseReason, DataReceived, ImConnection,
    KeepaliveReply, Kicked, LinkClosed, LinkError, LoggedOut, LoginError, LoginFailed,
    LoginRequest, LoginSucceeded, MessageDelivered, MessagesLost, Outgoing, ReloginLimits,
    ReloginPolicy, ReloginStarted, ReloginStop, ReloginStopped, SendError, SendThrottled,
    SenseMode, ServerError,
};
use bevy_im::protocol::{
    Dialect, ErrorResponse, Frame, KickoutCode, KickoutInfo, LoginInfo, LoginResponse,
    MAX_FRAME_BYTES, ResultCode, decode_body, wire,
};
use bevy_im::transport::{LinkId, TransportError};

/// The entity named in every event of a core driven outside Bevy.
const ME: Entity = Entity::PLACEHOLDER;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An action with its link left out, so that a list of them can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Act {
    Connect,
    /// A frame written, by its type.
    Send(i32),
    Close,
}

/// A client driven by hand, with helpers to read what it wrote. The link helpers
/// name the current link, as a transport would.
struct Script {
    c: ClientCore,
}

impl Script {
    fn new(dialect: Dialect) -> Self {
        Self::with(ClientConfig {
            relogin_spread: Duration::ZERO,
            dialect,
            jitter_seed: Some(1),
            ..ClientConfig::default()
        })
    }

    fn with(config: ClientConfig) -> Self {
        Self {
            c: ClientCore::new(config),
        }
    }

    /// The current link; panics when there is none.
    fn link(&self) -> LinkId {
        self.c.link().expect("a current link")
    }

    fn opened(&mut self, now: Duration) {
        let link = self.link();
        self.c.on_link_opened(link, now);
    }

    fn closed(&mut self, code: Option<u16>, reason: &str, now: Duration) {
        let link = self.link();
        self.c.on_link_closed(link, code, reason, now);
    }

    fn text(&mut self, text: &str, now: Duration) {
        let link = self.link();
        self.c.on_text(link, text, now);
    }

    fn server(&mut self, frame: Frame, now: Duration) {
        self.text(&frame.to_json(), now);
    }

    /// Frames written since the last call (connects and closes are dropped).
    fn sent(&mut self) -> Vec<Frame> {
        self.c
            .take_actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Send { text, .. } => Some(Frame::decode(&text).unwrap()),
                _ => None,
            })
            .collect()
    }

    /// Data frames written since the last call (keepalives and the rest dropped).
    fn data_sent(&mut self) -> Vec<Frame> {
        self.sent()
            .into_iter()
            .filter(|f| f.ty == wire::COMMON_DATA)
            .collect()
    }

    fn actions(&mut self) -> Vec<Action> {
        self.c.take_actions()
    }

    /// Actions since the last call, without their links.
    fn acts(&mut self) -> Vec<Act> {
        self.c
            .take_actions()
            .into_iter()
            .map(|a| match a {
                Action::Connect { .. } => Act::Connect,
                Action::Send { text, .. } => Act::Send(Frame::decode(&text).unwrap().ty),
                Action::Close { .. } => Act::Close,
            })
            .collect()
    }

    fn events(&mut self) -> Vec<ClientEvent> {
        self.c.take_events()
    }

    /// Logs `alice` in at `now`; the server answers with `first_login_time`.
    fn logged_in(dialect: Dialect, now: Duration, first_login_time: i64) -> Self {
        Self::logged_in_with(
            ClientConfig {
                relogin_spread: Duration::ZERO,
                dialect,
                jitter_seed: Some(1),
                ..ClientConfig::default()
            },
            now,
            first_login_time,
        )
    }

    fn logged_in_with(config: ClientConfig, now: Duration, first_login_time: i64) -> Self {
        let mut t = Self::with(config);
        t.c.login(LoginRequest::new("alice", "secret").with_app("lobby"), now)
            .unwrap();
        t.opened(now);
        t.sent();
        t.server(login_ok("alice", first_login_time), now);
        t.events();
        assert!(t.c.is_logged_in());
        t
    }
}

fn login_ok(to: &str, first_login_time: i64) -> Frame {
    Frame::login_response(
        to,
        &LoginResponse {
            code: 0,
            first_login_time,
            ext: Vec::new(),
        },
    )
}

fn login_refused(to: &str, code: i32) -> Frame {
    Frame::login_response(
        to,
        &LoginResponse {
            code,
            first_login_time: -1,
            ext: Vec::new(),
        },
    )
}

fn login_body(frame: &Frame) -> LoginInfo {
    assert_eq!(frame.ty, wire::LOGIN);
    decode_body(frame.data_content.as_deref()).unwrap()
}

fn login_succeeded(relogin: bool, first_login_time: i64) -> ClientEvent {
    ClientEvent::LoginSucceeded(LoginSucceeded {
        client: ME,
        user_id: "alice".into(),
        relogin,
        first_login_time,
    })
}

fn login_failed(code: ResultCode, relogin: bool) -> ClientEvent {
    ClientEvent::LoginFailed(LoginFailed {
        client: ME,
        code,
        relogin,
    })
}

fn link_closed(reason: CloseReason) -> ClientEvent {
    ClientEvent::LinkClosed(LinkClosed { client: ME, reason })
}

fn relogin_started(attempt: u32) -> ClientEvent {
    ClientEvent::ReloginStarted(ReloginStarted {
        client: ME,
        attempt,
    })
}

fn relogin_stopped(reason: ReloginStop) -> ClientEvent {
    ClientEvent::ReloginStopped(ReloginStopped { client: ME, reason })
}

fn delivered(fp: &str) -> ClientEvent {
    ClientEvent::MessageDelivered(MessageDelivered {
        client: ME,
        fp: fp.into(),
        stored: false,
        mid: None,
    })
}

fn v6_kickout(code: i32) -> Frame {
    Frame::kickout(
        Dialect::MobileImSdkV6,
        "alice",
        &KickoutInfo { code, reason: None },
    )
}

#[test]
fn clean_login_sends_only_the_login_and_reports_success() {
    let mut t = Script::new(Dialect::Seed);
    t.c.login(
        LoginRequest::new("alice", "secret")
            .with_app("lobby")
            .with_extra("x"),
        s(0),
    )
    .unwrap();
    let link = t.link();
    assert_eq!(t.actions(), [Action::Connect { link }]);
    assert_eq!(t.c.state(), ImConnection::Connecting);
    t.opened(ms(20));
    let sent = t.sent();
    assert_eq!(sent.len(), 1, "nothing but the login until the reply");
    let body = login_body(&sent[0]);
    assert_eq!(body.login_user_id, "alice");
    assert_eq!(body.login_token, "secret");
    assert_eq!(body.app.as_deref(), Some("lobby"));
    assert_eq!(body.extra.as_deref(), Some("x"));
    assert_eq!(body.first_login_time, 0);
    let early = t.c.send(Outgoing::new("bob", "too early"), ms(30));
    assert_eq!(early, Err(SendError::NotLoggedIn));
    assert_eq!(early.unwrap_err().code(), ResultCode::NoLogin);
    t.server(login_ok("alice", 1_795_643_442_840), ms(40));
    assert_eq!(t.events(), [login_succeeded(false, 1_795_643_442_840)]);
    assert!(t.c.is_logged_in());
    assert_eq!(t.c.state(), ImConnection::LoggedIn);
    assert_eq!(t.c.user_id(), Some("alice"));
    assert_eq!(t.c.first_login_time(), Some(1_795_643_442_840));
}

#[test]
fn failed_login_reports_the_servers_code_and_does_not_retry() {
    let mut t = Script::new(Dialect::MobileImSdkV6);
    t.c.login(LoginRequest::new("alice", "bad"), s(0)).unwrap();
    t.opened(s(0));
    t.sent();
    let link = t.link();
    t.server(login_refused("alice", 1025), s(0));
    assert_eq!(t.events(), [login_failed(ResultCode::Other(1025), false)]);
    assert_eq!(t.actions(), [Action::Close { link }]);
    assert_eq!(t.c.state(), ImConnection::Offline);
    assert_eq!(t.c.relogin_stopped(), None, "a first login is no re-login");
    // The close the server sends after it is for a link the core already closed.
    t.c.on_link_closed(link, Some(1000), "Bye", s(0));
    t.c.tick(s(600));
    assert!(t.actions().is_empty(), "no re-login after a refused login");
    assert!(t.events().is_empty());
}

#[test]
fn a_refused_connect_is_a_failed_login_with_code_202() {
    let mut t = Script::new(Dialect::Seed);
    t.c.login(LoginRequest::new("alice", "t"), s(0)).unwrap();
    t.actions();
    t.closed(None, "refused", s(0));
    assert_eq!(
        t.events(),
        [login_failed(ResultCode::BadConnectToServer, false)]
    );
    assert!(t.actions().is_empty(), "the link is closed already");
    assert_eq!(t.c.state(), ImConnection::Offline);
}

#[test]
fn dead_link_is_reported_and_relogin_presents_the_saved_first_login_time() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 777);
    // Keepalives at 5 s and 10 s go unanswered; the link is dead at 13 s.
    t.c.tick(s(5));
    assert_eq!(t.sent()[0].ty, wire::KEEP_ALIVE);
    t.c.tick(s(10));
    assert_eq!(t.sent().len(), 1);
    assert_eq!(
        t.c.poll_timeout(),
        Some(s(13)),
        "8 s after the first keepalive"
    );
    t.c.tick(ms(12_999));
    assert!(t.events().is_empty());
    assert!(t.actions().is_empty());
    let old = t.link();
    t.c.tick(s(13));
    let new = t.link();
    assert_ne!(new, old);
    assert_eq!(
        t.actions(),
        [Action::Close { link: old }, Action::Connect { link: new }],
        "first attempt at once"
    );
    assert_eq!(
        t.events(),
        [
            link_closed(CloseReason::KeepaliveTimeout),
            relogin_started(1)
        ]
    );
    assert_eq!(CloseReason::KeepaliveTimeout.seed_code(), -1);
    t.opened(s(13));
    let body = login_body(&t.sent()[0]);
    assert_eq!(
        body.first_login_time, 777,
        "the server's time from the first login"
    );
    t.server(login_ok("alice", 777), s(13));
    assert_eq!(t.events(), [login_succeeded(true, 777)]);
}

#[test]
fn failed_relogin_attempts_back_off_and_each_is_reported() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.closed(None, "reset", s(1));
    t.c.tick(s(1));
    assert_eq!(t.acts(), [Act::Connect]);
    t.closed(None, "refused", s(1));
    let ev = t.events();
    assert!(ev.contains(&login_failed(ResultCode::BadConnectToServer, true)));
    let due = t.c.relogin().due().unwrap();
    assert_eq!(t.c.poll_timeout(), Some(due));
    assert!(
        due >= ms(2_500) && due <= s(4),
        "1.5–3 s after the failure: {due:?}"
    );
    t.c.tick(due - ms(1));
    assert!(t.actions().is_empty());
    assert!(t.events().is_empty());
    t.c.tick(due);
    assert_eq!(t.acts(), [Act::Connect]);
    assert!(t.events().contains(&relogin_started(2)));
}

#[test]
fn upstream_parity_relogin_retries_every_3_seconds() {
    let mut t = Script::with(ClientConfig {
        relogin_spread: Duration::ZERO,
        relogin: ReloginPolicy::UPSTREAM,
        ..ClientConfig::default()
    });
    t.c.login(LoginRequest::new("alice", "t"), s(0)).unwrap();
    t.opened(s(0));
    t.server(login_ok("alice", 1), s(0));
    t.actions();
    t.closed(None, "reset", s(10));
    assert!(t.actions().is_empty(), "nothing before the tick");
    for n in 0..3u64 {
        let at = s(10 + 3 * n);
        if n > 0 {
            t.c.tick(at - ms(1));
            assert!(t.actions().is_empty(), "nothing before {at:?}");
        }
        t.c.tick(at);
        assert_eq!(t.acts(), [Act::Connect], "attempt at {at:?}");
        t.closed(None, "refused", at);
        assert!(t.actions().is_empty(), "no reconnect at once after {at:?}");
    }
}

#[test]
fn kickout_in_the_v6_dialect_ends_the_session_with_no_relogin() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let kick = v6_kickout(1);
    assert_eq!(kick.ty, 54);
    let link = t.link();
    t.server(kick, s(1));
    assert_eq!(
        t.events(),
        [
            ClientEvent::Kicked(Kicked {
                client: ME,
                code: KickoutCode::DuplicateLogin,
                reason: None
            }),
            link_closed(CloseReason::Kicked),
        ]
    );
    assert_eq!(t.actions(), [Action::Close { link }]);
    assert_eq!(t.c.state(), ImConnection::Kicked);
    assert_eq!(t.c.kickout().map(|k| k.code), Some(1));
    t.c.on_link_closed(link, Some(1000), "Bye", s(1));
    for at in [1, 5, 30, 300] {
        t.c.tick(s(at));
    }
    assert!(t.actions().is_empty(), "never re-login after a kickout");
    let refused = t.c.send(Outgoing::new("bob", "x"), s(300));
    assert_eq!(refused, Err(SendError::NotLoggedIn));
    assert_eq!(refused.unwrap_err().code(), ResultCode::NoLogin);
}

#[test]
fn kickout_in_the_seed_dialect_is_type_55_and_54_is_an_ack() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let fp = t.c.send(Outgoing::new("bob", "hi"), s(0)).unwrap().unwrap();
    t.sent();
    t.server(Frame::server_ack(Dialect::Seed, "bob", "alice", &fp), s(0));
    assert_eq!(t.events(), [delivered(&fp)]);
    let kick = Frame::kickout(
        Dialect::Seed,
        "alice",
        &KickoutInfo {
            code: 2,
            reason: Some("admin".into()),
        },
    );
    assert_eq!(kick.ty, 55);
    t.server(kick, s(1));
    assert_eq!(
        t.events()[0],
        ClientEvent::Kicked(Kicked {
            client: ME,
            code: KickoutCode::Admin,
            reason: Some("admin".into())
        })
    );
    t.c.tick(s(60));
    assert!(!t.acts().contains(&Act::Connect));
}

#[test]
fn a_kickout_right_after_login_success_is_handled() {
    let mut t = Script::new(Dialect::MobileImSdkV6);
    t.c.login(LoginRequest::new("alice", "t"), s(0)).unwrap();
    t.opened(s(0));
    t.server(login_ok("alice", 1), s(0));
    t.server(v6_kickout(1), s(0));
    let ev = t.events();
    assert!(matches!(ev[0], ClientEvent::LoginSucceeded(_)));
    assert!(matches!(ev[1], ClientEvent::Kicked(_)));
    assert_eq!(t.c.state(), ImConnection::Kicked);
    t.actions();
    t.c.tick(s(100));
    assert!(!t.acts().contains(&Act::Connect));
}

#[test]
fn pending_messages_are_reported_lost_on_kickout_not_dropped() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let fp = t.c.send(Outgoing::new("bob", "hi"), s(0)).unwrap().unwrap();
    t.server(v6_kickout(1), s(1));
    match &t.events()[0] {
        ClientEvent::MessagesLost(MessagesLost { client, frames }) => {
            assert_eq!(*client, ME);
            assert_eq!(frames[0].fp.as_deref(), Some(&*fp));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn error_301_reports_and_relogs_in_after_the_delay() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let err = Frame::error_response(&ErrorResponse {
        error_code: 301,
        error_msg: "{\"type\":1}".into(),
    });
    let link = t.link();
    t.server(err, s(2));
    assert_eq!(
        t.events(),
        [
            ClientEvent::ServerError(ServerError {
                client: ME,
                code: ResultCode::ResponseForUnlogin,
                msg: "{\"type\":1}".into()
            }),
            link_closed(CloseReason::NotLoggedIn),
        ]
    );
    assert_eq!(CloseReason::NotLoggedIn.seed_code(), 301);
    assert_eq!(t.actions(), [Action::Close { link }]);
    t.c.on_link_closed(link, Some(1000), "Bye", s(2));
    assert_eq!(t.c.poll_timeout(), Some(s(5)));
    t.c.tick(ms(4_999));
    assert!(t.actions().is_empty(), "not at once after a 301");
    t.c.tick(s(5));
    assert_eq!(t.acts(), [Act::Connect], "3 s after the 301");
}

#[test]
fn a_throttled_message_is_resent_after_a_backoff_and_is_no_server_error() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let fp = t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap().unwrap();
    let original = t.sent().remove(0);
    // The server refuses it for its rate limit: the error frame carries the frame.
    t.server(
        Frame::error_response(&ErrorResponse {
            error_code: 429,
            error_msg: original.to_json(),
        }),
        ms(100),
    );
    assert_eq!(
        t.events(),
        [ClientEvent::SendThrottled(SendThrottled {
            client: ME,
            fp: Some(fp.clone()),
            retry_in: Some(ms(500)),
        })]
    );
    t.c.tick(ms(599));
    assert!(t.sent().is_empty());
    t.c.tick(ms(600));
    assert_eq!(t.sent(), [original], "the same frame, after the back-off");
    t.server(
        Frame::server_ack(Dialect::Seed, "bob", "alice", &fp),
        ms(700),
    );
    assert_eq!(t.events(), [delivered(&fp)]);
    assert_eq!(t.c.stats().throttled, 1);
    assert_eq!(t.c.stats().resends, 0, "a throttled retry is not a resend");
}

#[test]
fn a_throttled_frame_that_is_not_pending_is_reported_but_not_resent() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.server(
        Frame::error_response(&ErrorResponse {
            error_code: 429,
            error_msg: Frame::keepalive("alice").to_json(),
        }),
        s(1),
    );
    assert_eq!(
        t.events(),
        [ClientEvent::SendThrottled(SendThrottled {
            client: ME,
            fp: None,
            retry_in: None
        })]
    );
    t.c.tick(s(2));
    assert!(t.sent().is_empty());
}

#[test]
fn other_server_errors_are_reported_and_keep_the_session() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.server(
        Frame::error_response(&ErrorResponse {
            error_code: 500,
            error_msg: "slow down".into(),
        }),
        s(1),
    );
    assert_eq!(
        t.events(),
        [ClientEvent::ServerError(ServerError {
            client: ME,
            code: ResultCode::Other(500),
            msg: "slow down".into()
        })]
    );
    assert!(t.c.is_logged_in());
}

#[test]
fn a_qos_message_is_resent_at_3_and_6_seconds_and_lost_at_9() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let fp =
        t.c.send(Outgoing::new("bob", "hello").typeu(7), ms(100))
            .unwrap()
            .unwrap();
    let first = t.sent();
    assert_eq!(first.len(), 1);
    assert!(first[0].qos);
    assert_eq!(first[0].typeu, 7);
    let resent_at = |t: &mut Script, at: Duration| {
        t.c.tick(at);
        t.data_sent().len()
    };
    assert_eq!(resent_at(&mut t, ms(3_099)), 0);
    assert_eq!(resent_at(&mut t, ms(3_100)), 1);
    assert_eq!(resent_at(&mut t, ms(6_099)), 0);
    assert_eq!(resent_at(&mut t, ms(6_100)), 1);
    t.c.tick(ms(9_099));
    assert!(t.events().is_empty());
    t.c.tick(ms(9_100));
    match &t.events()[..] {
        [ClientEvent::MessagesLost(MessagesLost { client, frames })] => {
            assert_eq!(*client, ME);
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].fp.as_deref(), Some(&*fp));
            assert_eq!(frames[0].content(), "hello");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.c.stats().resends, 2);
    assert_eq!(t.c.stats().lost, 1);
}

#[test]
fn an_ack_between_resends_reports_delivery_once_and_stops_resending() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let fp = t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap().unwrap();
    t.c.tick(s(3));
    assert_eq!(t.sent().len(), 2);
    let ack = Frame::server_ack(Dialect::MobileImSdkV6, "bob", "alice", &fp);
    t.server(ack.clone(), ms(3_500));
    t.server(ack, ms(3_600));
    assert_eq!(t.events(), [delivered(&fp)]);
    for at in [6, 9, 12] {
        t.c.tick(s(at));
    }
    assert!(t.data_sent().is_empty(), "keepalives only");
    assert!(t.events().is_empty());
    assert_eq!(t.c.pending_count(), 0);
}

#[test]
fn messages_without_qos_get_no_fingerprint_and_no_resend() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    assert_eq!(
        t.c.send(Outgoing::new("bob", "x").qos(false), s(0)),
        Ok(None)
    );
    let own =
        t.c.send(Outgoing::new("bob", "y").fingerprint("mine"), s(0));
    assert_eq!(own, Ok(Some("mine".into())));
    t.sent();
    t.c.tick(s(3));
    let resent = t.sent();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].fp.as_deref(), Some("mine"));
}

#[test]
fn received_qos_data_is_acked_every_time_and_delivered_once() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let msg = Frame::data("bob", "alice", "hey", true, Some("fp-1".into()), 3);
    t.server(msg.clone(), s(1));
    t.server(msg.clone(), s(2));
    let acks = t.sent();
    assert_eq!(acks.len(), 2, "a duplicate is ACKed too");
    for ack in &acks {
        assert_eq!(ack.ty, wire::RECEIVED);
        assert_eq!(ack.content(), "fp-1");
        assert_eq!(ack.to.as_deref(), Some("bob"));
        assert_eq!(ack.from.as_deref(), Some("alice"));
    }
    assert_eq!(
        t.events(),
        [ClientEvent::DataReceived(DataReceived {
            client: ME,
            fp: Some("fp-1".into()),
            from: "bob".into(),
            content: "hey".into(),
            typeu: 3,
            room: None,
            mid: None,
            sent_at_ms: None,
        })]
    );
}

#[test]
fn the_dedup_window_expires_after_ten_minutes() {
    // Keepalives every hour, so that ticking over 30 minutes keeps the session.
    let mut t = Script::logged_in_with(
        ClientConfig {
            relogin_spread: Duration::ZERO,
            dialect: Dialect::MobileImSdkV6,
            sense_mode: SenseMode::Custom {
                interval: s(3600),
                timeout: s(7200),
            },
            ..ClientConfig::default()
        },
        s(0),
        5,
    );
    let msg = Frame::data("bob", "alice", "hey", true, Some("fp-1".into()), 0);
    t.server(msg.clone(), s(0));
    t.server(msg.clone(), s(599));
    assert_eq!(t.events().len(), 1);
    // Without the refresh at 599 s the window would have ended at 600 s.
    t.c.tick(s(1198));
    t.server(msg.clone(), s(1198));
    assert_eq!(
        t.events().len(),
        0,
        "a duplicate at 599 s refreshed the window to 1199 s"
    );
    // The copy at 1198 s refreshed it again, to exactly 1798 s.
    t.c.tick(s(1798) - ms(1));
    assert_eq!(t.c.qos_recv().len(), 1);
    t.c.tick(s(1798));
    assert_eq!(t.c.qos_recv().len(), 0, "forgotten 600 s after last seen");
    t.server(msg, s(1798));
    assert_eq!(
        t.events().len(),
        1,
        "delivered again once the window passed"
    );
    assert!(t.c.is_logged_in());
}

#[test]
fn a_keepalive_reply_keeps_the_link_alive_and_measures_rtt() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    for n in 1..=10u64 {
        t.c.tick(s(5 * n));
        assert_eq!(t.sent().len(), 1);
        t.server(Frame::keepalive_response("alice"), s(5 * n) + ms(30));
    }
    let ev = t.events();
    assert_eq!(ev.len(), 10);
    assert!(ev.iter().all(|e| *e
        == ClientEvent::KeepaliveReply(KeepaliveReply {
            client: ME,
            rtt: Some(ms(30))
        })));
    assert!(t.c.is_logged_in());
    assert_eq!(t.c.rtt(), Some(ms(30)));
}

#[test]
fn keepalives_are_sent_only_while_logged_in() {
    // Before the login reply.
    let mut t = Script::new(Dialect::Seed);
    t.c.login(LoginRequest::new("alice", "t"), s(0)).unwrap();
    t.opened(s(0));
    t.sent();
    t.c.tick(s(6));
    assert!(t.sent().is_empty());

    // After the link is lost (re-login attempts connect but never open).
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.c.tick(s(5));
    assert_eq!(t.sent()[0].ty, wire::KEEP_ALIVE);
    t.closed(None, "reset", s(6));
    for at in 6..=60 {
        t.c.tick(s(at));
        assert!(t.sent().is_empty(), "nothing written at {at} s");
    }

    // After a kickout.
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    t.server(v6_kickout(1), s(1));
    t.actions();
    for at in 1..=60 {
        t.c.tick(s(at));
        assert!(t.actions().is_empty(), "nothing at {at} s");
    }

    // After a logout.
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.c.logout(s(1));
    assert_eq!(t.acts(), [Act::Send(wire::LOGOUT), Act::Close]);
    for at in 1..=60 {
        t.c.tick(s(at));
        assert!(t.actions().is_empty(), "nothing at {at} s");
    }
}

#[test]
fn a_stalled_login_times_out() {
    let mut t = Script::new(Dialect::Seed);
    t.c.login(LoginRequest::new("alice", "t"), s(0)).unwrap();
    assert_eq!(t.c.poll_timeout(), Some(s(10)));
    t.actions();
    // The link opens late; the 10 s run from the connect, not from the open.
    t.c.tick(s(4));
    t.opened(s(4));
    assert_eq!(t.acts(), [Act::Send(wire::LOGIN)]);
    assert_eq!(t.c.poll_timeout(), Some(s(10)));
    t.c.tick(ms(9_999));
    assert!(t.actions().is_empty());
    assert!(t.events().is_empty());
    t.c.tick(s(10));
    assert_eq!(t.acts(), [Act::Close]);
    assert_eq!(
        t.events(),
        [
            ClientEvent::LinkError(LinkError {
                client: ME,
                error: TransportError::TimedOut(s(10)),
            }),
            login_failed(ResultCode::BadConnectToServer, false),
        ]
    );
    assert_eq!(t.c.state(), ImConnection::Offline);
    assert_eq!(t.c.poll_timeout(), None);
}

#[test]
fn logout_sends_the_logout_frame_only_when_logged_in() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let fps: Vec<String> = (0..3)
        .map(|i| {
            t.c.send(Outgoing::new("bob", format!("m{i}")), s(0))
                .unwrap()
                .unwrap()
        })
        .collect();
    t.sent();
    let link = t.link();
    assert_eq!(t.c.logout(s(0)), ResultCode::Ok);
    let actions = t.actions();
    match &actions[..] {
        [
            Action::Send { link: a, text, .. },
            Action::Close { link: b },
        ] => {
            assert_eq!(Frame::decode(text).unwrap().ty, wire::LOGOUT);
            assert_eq!((*a, *b), (link, link));
        }
        other => panic!("{other:?}"),
    }
    // The three unconfirmed messages are reported lost, in order, before LoggedOut.
    match &t.events()[..] {
        [
            ClientEvent::MessagesLost(MessagesLost { frames: lost, .. }),
            ClientEvent::LoggedOut(logged_out),
        ] => {
            let lost: Vec<String> = lost.iter().map(|f| f.fp.clone().unwrap()).collect();
            assert_eq!(lost, fps);
            assert_eq!(
                *logged_out,
                LoggedOut {
                    client: ME,
                    code: ResultCode::Ok
                }
            );
        }
        other => panic!("{other:?}"),
    }
    t.c.tick(s(60));
    assert!(
        t.actions().is_empty(),
        "no resends, no re-login after logout"
    );
    assert!(
        t.events().is_empty(),
        "pending messages are cleared, not reported"
    );

    let mut never = Script::new(Dialect::Seed);
    assert_eq!(never.c.logout(s(0)), ResultCode::NoLogin);
    assert!(never.actions().is_empty());
    assert_eq!(
        never.events(),
        [ClientEvent::LoggedOut(LoggedOut {
            client: ME,
            code: ResultCode::NoLogin
        })]
    );
}

#[test]
fn release_clears_everything_and_send_then_reports_203() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap();
    t.c.release(s(0));
    assert_eq!(t.c.pending_count(), 0);
    assert!(t.c.user_id().is_none());
    let refused = t.c.send(Outgoing::new("bob", "x"), s(1));
    assert_eq!(refused, Err(SendError::Released));
    assert_eq!(
        refused.unwrap_err().code(),
        ResultCode::ClientSdkNotInitialized
    );
    t.actions();
    t.c.tick(s(60));
    assert!(t.actions().is_empty());
}

#[test]
fn local_errors_write_nothing() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.actions();
    let empty = t.c.send(Outgoing::new("", "x"), s(0)).unwrap_err();
    assert_eq!(empty, SendError::EmptyReceiver);
    assert_eq!(empty.code(), ResultCode::InvalidProtocol);
    let big =
        t.c.send(Outgoing::new("bob", "x".repeat(70_000)), s(0))
            .unwrap_err();
    match big {
        SendError::TooLarge { len, limit } => {
            assert_eq!(limit, MAX_FRAME_BYTES);
            assert!(len > 70_000, "{len}");
        }
        ref other => panic!("{other:?}"),
    }
    assert_eq!(big.code(), ResultCode::InvalidProtocol);
    let no_user = t.c.login(LoginRequest::new("", "t"), s(0)).unwrap_err();
    assert_eq!(no_user, LoginError::EmptyUserId);
    assert_eq!(no_user.code(), ResultCode::InvalidProtocol);
    assert!(t.actions().is_empty());
    assert_eq!(t.c.pending_count(), 0);
    assert!(
        t.c.is_logged_in(),
        "a refused login leaves the session alone"
    );
}

#[test]
fn pending_messages_are_resent_after_relogin() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let seen = Frame::data("bob", "alice", "hey", true, Some("in-1".into()), 0);
    t.server(seen.clone(), ms(500));
    let fp = t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap().unwrap();
    t.sent();
    t.closed(None, "reset", s(1));
    t.c.tick(s(1));
    t.opened(s(1));
    t.sent();
    t.server(login_ok("alice", 5), ms(1_200));
    let resent = t.sent();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].fp.as_deref(), Some(&*fp));
    // The received fingerprints survive the automatic re-login.
    t.events();
    t.server(seen, ms(1_300));
    assert_eq!(t.acts(), [Act::Send(wire::RECEIVED)], "ACKed again");
    assert!(t.events().is_empty(), "not delivered a second time");
}

#[test]
fn garbage_and_unknown_types_are_reported_not_fatal() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.text("garbage{", s(1));
    t.text("[1,2]", s(1));
    t.server(Frame::new(99, "0", "alice"), s(1));
    let ev = t.events();
    assert_eq!(ev.len(), 3);
    assert!(ev.iter().all(|e| matches!(e, ClientEvent::BadFrame(_))));
    assert!(t.c.is_logged_in());
}

/// Logs in at 0 s, loses the link at 20 s, and has the first re-login refused (1025)
/// at 20 s. Re-login is stopped.
fn refused_relogin() -> Script {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.closed(None, "reset", s(20));
    t.c.tick(s(20));
    t.opened(s(20));
    t.actions();
    t.events();
    let link = t.link();
    t.server(login_refused("alice", 1025), s(20));
    assert_eq!(
        t.events(),
        [
            login_failed(ResultCode::Other(1025), true),
            relogin_stopped(ReloginStop::Refused(ResultCode::Other(1025))),
        ]
    );
    assert_eq!(t.actions(), [Action::Close { link }]);
    t
}

#[test]
fn a_refused_relogin_stops_relogin() {
    let mut t = refused_relogin();
    assert_eq!(t.c.state(), ImConnection::Offline);
    assert_eq!(
        t.c.relogin_stopped(),
        Some(ReloginStop::Refused(ResultCode::Other(1025)))
    );
    assert_eq!(t.c.link(), None);
    assert_eq!(t.c.poll_timeout(), None, "no attempt is scheduled");
    for at in [21, 23, 30, 60, 600] {
        t.c.tick(s(at));
    }
    assert!(t.actions().is_empty(), "the same token is not tried again");
    assert!(t.events().is_empty());
    assert_eq!(
        t.c.send(Outgoing::new("bob", "x"), s(600)),
        Err(SendError::NotLoggedIn),
        "nothing waits for a re-login that stopped"
    );
}

#[test]
fn a_fresh_token_restarts_a_relogin_refused_by_the_server() {
    let mut t = refused_relogin();
    t.c.set_token("fresh", s(30));
    assert_eq!(t.c.state(), ImConnection::Relogging);
    assert_eq!(t.c.relogin_stopped(), None);
    assert_eq!(t.c.poll_timeout(), Some(s(30)), "at once");
    t.c.tick(s(30));
    assert_eq!(t.acts(), [Act::Connect]);
    assert_eq!(t.events(), [relogin_started(1)]);
    t.opened(s(30));
    let body = login_body(&t.sent()[0]);
    assert_eq!(body.login_token, "fresh");
    assert_eq!(body.first_login_time, 5);
    t.server(login_ok("alice", 5), s(30));
    assert_eq!(t.events(), [login_succeeded(true, 5)]);
    assert!(t.c.is_logged_in());
}

/// A client logged in at 0 s with re-login every 3 s (exact times), whose link is
/// lost at 20 s.
fn lost_at_20(limits: ReloginLimits) -> Script {
    let mut t = Script::logged_in_with(
        ClientConfig {
            relogin_spread: Duration::ZERO,
            relogin: ReloginPolicy::UPSTREAM,
            relogin_limits: limits,
            ..ClientConfig::default()
        },
        s(0),
        5,
    );
    t.closed(None, "reset", s(20));
    t.events();
    t
}

#[test]
fn relogin_stops_after_max_attempts() {
    let mut t = lost_at_20(ReloginLimits {
        max_attempts: Some(3),
        max_duration: None,
    });
    for (n, at) in [(1, 20), (2, 23), (3, 26)] {
        if n > 1 {
            t.c.tick(s(at) - ms(1));
            assert!(t.actions().is_empty(), "nothing before {at} s");
        }
        t.c.tick(s(at));
        assert_eq!(t.acts(), [Act::Connect], "attempt {n} at {at} s");
        assert_eq!(t.events(), [relogin_started(n)]);
        t.closed(None, "refused", s(at));
        t.c.tick(s(at));
        let ev = t.events();
        assert_eq!(ev[0], login_failed(ResultCode::BadConnectToServer, true));
        if n < 3 {
            assert_eq!(ev.len(), 1, "{ev:?}");
            assert_eq!(t.c.state(), ImConnection::Relogging);
        } else {
            // The third failure ends it at once: no fourth attempt is scheduled.
            assert_eq!(ev[1..], [relogin_stopped(ReloginStop::AttemptsExhausted)]);
        }
    }
    assert_eq!(t.c.state(), ImConnection::Offline);
    assert_eq!(t.c.relogin_stopped(), Some(ReloginStop::AttemptsExhausted));
    assert_eq!(t.c.poll_timeout(), None);
    for at in [29, 32, 60, 600] {
        t.c.tick(s(at));
    }
    assert!(t.actions().is_empty());
    assert!(t.events().is_empty());
    assert_eq!(t.c.stats().relogins, 3);
}

#[test]
fn relogin_stops_when_max_duration_has_passed_since_the_loss() {
    let mut t = lost_at_20(ReloginLimits {
        max_attempts: None,
        max_duration: Some(s(10)),
    });
    for (n, at) in [(1, 20), (2, 23), (3, 26), (4, 29)] {
        t.c.tick(s(at));
        assert_eq!(t.acts(), [Act::Connect], "attempt {n} at {at} s");
        t.closed(None, "refused", s(at));
        t.c.tick(s(at));
        t.events();
    }
    t.c.tick(ms(29_999));
    assert!(t.events().is_empty());
    assert_eq!(t.c.state(), ImConnection::Relogging);
    t.c.tick(s(30));
    assert_eq!(t.events(), [relogin_stopped(ReloginStop::TimeExhausted)]);
    assert!(t.actions().is_empty());
    assert_eq!(t.c.state(), ImConnection::Offline);
    assert_eq!(t.c.relogin_stopped(), Some(ReloginStop::TimeExhausted));
    assert_eq!(t.c.poll_timeout(), None);
    t.c.tick(s(32));
    assert!(t.actions().is_empty(), "no attempt at the old due time");
}

/// `poll_timeout` names the re-login time limit, so a driver that sleeps until it
/// stops re-login at the limit (30 s), not at the next attempt's due time (32 s).
#[test]
fn poll_timeout_names_the_relogin_time_limit() {
    let mut t = lost_at_20(ReloginLimits {
        max_attempts: None,
        max_duration: Some(s(10)),
    });
    for at in [20, 23, 26, 29] {
        t.c.tick(s(at));
        t.closed(None, "refused", s(at));
        t.c.tick(s(at));
    }
    assert_eq!(t.c.poll_timeout(), Some(s(30)));
}

/// The attempt limit counts attempts since the link was lost: a session that drops
/// again (even within the keepalive timeout, where the backoff goes on) gets its own.
#[test]
fn a_successful_relogin_gives_the_next_loss_its_own_attempts() {
    let mut t = lost_at_20(ReloginLimits {
        max_attempts: Some(1),
        max_duration: None,
    });
    t.c.tick(s(20));
    t.opened(s(20));
    t.server(login_ok("alice", 5), s(20));
    assert!(t.c.is_logged_in());
    t.closed(None, "reset", s(21));
    t.events();
    t.acts();
    t.c.tick(s(21));
    assert_eq!(t.c.relogin_stopped(), None, "{:?}", t.events());
    let due = t.c.poll_timeout().expect("an attempt is scheduled");
    t.c.tick(due);
    assert_eq!(t.acts(), [Act::Connect]);
}

#[test]
fn a_link_that_drops_right_after_relogin_is_not_hammered() {
    let mut t = Script::with(ClientConfig {
        relogin_spread: Duration::ZERO,
        relogin: ReloginPolicy::UPSTREAM,
        ..ClientConfig::default()
    });
    t.c.login(LoginRequest::new("alice", "t"), s(0)).unwrap();
    t.opened(s(0));
    t.server(login_ok("alice", 1), s(0));
    // A long session ends: the first attempt is at once.
    t.closed(None, "reset", s(60));
    t.actions();
    t.c.tick(s(60));
    assert_eq!(t.acts(), [Act::Connect]);
    t.opened(s(60));
    t.server(login_ok("alice", 1), s(60));
    // The new session dies a second later: the next attempt waits 3 s.
    t.closed(None, "reset", s(61));
    t.actions();
    t.c.tick(s(61));
    assert!(t.actions().is_empty());
    t.c.tick(ms(63_999));
    assert!(t.actions().is_empty());
    t.c.tick(s(64));
    assert_eq!(t.acts(), [Act::Connect]);
}

#[test]
fn a_link_that_keeps_dropping_after_relogin_backs_off_further_by_default() {
    // The default policy (backoff from 3 s, jitter of seed 1).
    let mut t = Script::logged_in(Dialect::Seed, s(0), 1);
    t.closed(None, "reset", s(60));
    t.c.tick(s(60));
    assert_eq!(t.acts(), [Act::Connect], "a long session: at once");
    let mut at = s(60);
    // Each short-lived session waits inside the next, growing, bounds.
    for (n, (lo, hi)) in [(ms(1_500), s(3)), (s(3), s(6)), (s(6), s(12))]
        .into_iter()
        .enumerate()
    {
        t.opened(at);
        t.server(login_ok("alice", 1), at);
        let dropped = at + s(1);
        t.closed(None, "reset", dropped);
        t.c.tick(dropped);
        t.actions();
        let due = t.c.poll_timeout().expect("an attempt is scheduled");
        assert_eq!(Some(due), t.c.relogin().due());
        assert!(
            due >= dropped + lo && due <= dropped + hi,
            "session {n}: {:?} after the drop",
            due - dropped
        );
        t.c.tick(due - ms(1));
        assert!(t.actions().is_empty(), "nothing at due - 1 ms");
        t.c.tick(due);
        assert_eq!(t.acts(), [Act::Connect]);
        at = due;
    }
}

#[test]
fn a_message_is_lost_on_time_even_if_the_link_keeps_coming_back() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let fp = t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap().unwrap();
    let mut writes = 0;
    let mut lost_at = None;
    for second in 0..=12u64 {
        if second > 0 {
            // Every second the link drops and the re-login succeeds as soon as it
            // is attempted.
            if t.c.link().is_some() {
                t.closed(None, "reset", s(second));
            }
            t.c.tick(s(second));
            if t.c.link().is_some() {
                t.opened(s(second));
                t.server(login_ok("alice", 5), s(second));
            }
            t.c.tick(s(second));
        }
        writes += t
            .sent()
            .iter()
            .filter(|f| f.fp.as_deref() == Some(&*fp))
            .count();
        if t.events().iter().any(|e| {
            matches!(e, ClientEvent::MessagesLost(MessagesLost { frames, .. })
                if frames[0].fp.as_deref() == Some(&*fp))
        }) {
            lost_at = Some(second);
            break;
        }
    }
    // Sent at 0 s; the re-login at 1 s writes it as resend 1 (next due at 4 s). The
    // link that drops again at 2 s backs off, so resend 2 comes due at 4 s while it
    // is down and is written once the next re-login succeeds; the loss follows 3 s
    // after it was due. Never written a fourth time, never later than 9 s.
    assert_eq!(writes, 3);
    assert_eq!(lost_at, Some(7));
}

#[test]
fn a_relogin_flush_counts_as_a_resend() {
    // The field report: a message never ACKed went out four times (original,
    // re-login flush, two timed resends). Now: at most 1 + 2 writes.
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let fp = t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap().unwrap();
    let mut writes = t.sent().len();
    t.closed(None, "reset", ms(500));
    t.c.tick(ms(500));
    assert_eq!(t.acts(), [Act::Connect]);
    t.opened(ms(600));
    t.server(login_ok("alice", 5), ms(600));
    let flushed = t.sent();
    assert_eq!(flushed.len(), 2, "login frame and the pending message");
    writes += 1;
    // The flush was resend 1: resend 2 comes 3 s later, the loss 3 s after that.
    for at in [ms(3_599), ms(3_600), ms(6_599), ms(6_600)] {
        t.c.tick(at);
        writes += t
            .sent()
            .iter()
            .filter(|f| f.fp.as_deref() == Some(&*fp))
            .count();
    }
    assert_eq!(writes, 3);
    assert_eq!(t.c.stats().resends, 2);
    assert!(matches!(
        &t.events()[..],
        [.., ClientEvent::MessagesLost(MessagesLost { frames, .. })] if frames.len() == 1
    ));
}

#[test]
fn qos_messages_sent_while_relogging_are_queued_and_written_in_order() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.closed(None, "reset", s(1));
    t.events();
    let fps: Vec<String> = (0..100)
        .map(|i| {
            t.c.send(Outgoing::new("bob", format!("m{i}")), s(1))
                .expect("queued, not refused")
                .unwrap()
        })
        .collect();
    // Without QoS nothing can be kept for later: refused as before.
    let refused = t.c.send(Outgoing::new("bob", "x").qos(false), s(1));
    assert_eq!(refused, Err(SendError::NotLoggedIn));
    assert_eq!(refused.unwrap_err().code(), ResultCode::NoLogin);
    t.c.tick(s(1));
    assert_eq!(t.acts(), [Act::Connect], "nothing written while down");
    t.opened(s(2));
    t.sent();
    t.server(login_ok("alice", 5), s(2));
    let written: Vec<String> = t.sent().into_iter().filter_map(|f| f.fp).collect();
    assert_eq!(written, fps, "all 100, once, in order");
    for fp in &fps {
        t.server(Frame::server_ack(Dialect::Seed, "0", "alice", fp), s(2));
    }
    let delivered = t
        .events()
        .into_iter()
        .filter(|e| matches!(e, ClientEvent::MessageDelivered(_)))
        .count();
    assert_eq!(delivered, 100);
    assert_eq!(t.c.stats().resends, 0, "first writes, not resends");
}

#[test]
fn the_queue_while_relogging_is_bounded_and_loses_on_time() {
    let mut t = Script::with(ClientConfig {
        relogin_spread: Duration::ZERO,
        max_queued: 2,
        jitter_seed: Some(1),
        ..ClientConfig::default()
    });
    t.c.login(LoginRequest::new("alice", "secret"), s(0))
        .unwrap();
    t.opened(s(0));
    t.server(login_ok("alice", 5), s(0));
    t.closed(None, "reset", s(0));
    t.events();
    for _ in 0..2 {
        t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap();
    }
    let full = t.c.send(Outgoing::new("bob", "x"), s(0));
    assert_eq!(full, Err(SendError::QueueFull(2)), "a full queue refuses");
    assert_eq!(full.unwrap_err().code(), ResultCode::NoLogin);
    // The link never returns: both are lost 9 s after they were sent.
    t.c.tick(ms(8_999));
    assert!(
        !t.events()
            .iter()
            .any(|e| matches!(e, ClientEvent::MessagesLost(_)))
    );
    t.c.tick(s(9));
    assert!(matches!(
        &t.events()[..],
        [.., ClientEvent::MessagesLost(MessagesLost { frames, .. })] if frames.len() == 2
    ));
}

#[test]
fn release_reports_waiting_messages_lost() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap();
    t.c.release(s(0));
    assert!(matches!(
        &t.events()[..],
        [ClientEvent::MessagesLost(MessagesLost { frames, .. })] if frames.len() == 1
    ));
    t.c.tick(s(60));
    assert!(t.events().is_empty(), "reported once");
}

#[test]
fn logging_in_again_as_the_same_user_keeps_pending_messages() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let seen = Frame::data("bob", "alice", "hey", true, Some("in-1".into()), 0);
    t.server(seen.clone(), s(0));
    t.events();
    let fp = t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap().unwrap();
    t.actions();
    let old = t.link();
    t.c.login(LoginRequest::new("alice", "t"), s(1)).unwrap();
    assert!(t.events().is_empty());
    let new = t.link();
    assert_eq!(
        t.actions(),
        [Action::Close { link: old }, Action::Connect { link: new }]
    );
    t.opened(s(1));
    t.sent();
    t.server(login_ok("alice", 6), s(1));
    let resent = t.sent();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].fp.as_deref(), Some(&*fp));
    // The received fingerprints are kept too.
    t.events();
    t.server(seen, s(2));
    assert_eq!(t.acts(), [Act::Send(wire::RECEIVED)], "ACKed again");
    assert!(t.events().is_empty(), "not delivered a second time");
}

#[test]
fn logging_in_as_someone_else_reports_pending_messages_lost() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let fp = t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap().unwrap();
    t.c.login(LoginRequest::new("carol", "t"), s(1)).unwrap();
    match &t.events()[..] {
        [ClientEvent::MessagesLost(MessagesLost { frames, .. })] => {
            assert_eq!(frames[0].fp.as_deref(), Some(&*fp))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.c.pending_count(), 0);
}

#[test]
fn a_login_over_the_frame_limit_is_refused_locally() {
    let mut t = Script::new(Dialect::Seed);
    let err =
        t.c.login(
            LoginRequest::new("alice", "t").with_extra("e".repeat(70_000)),
            s(0),
        )
        .unwrap_err();
    match err {
        LoginError::TooLarge { len, limit } => {
            assert_eq!(limit, MAX_FRAME_BYTES);
            assert!(len > 70_000, "{len}");
        }
        ref other => panic!("{other:?}"),
    }
    assert_eq!(err.code(), ResultCode::InvalidProtocol);
    assert!(t.actions().is_empty());
    assert_eq!(t.c.state(), ImConnection::Offline);
}

#[test]
fn poll_timeout_names_the_next_deadline() {
    let mut t = Script::new(Dialect::Seed);
    assert_eq!(t.c.poll_timeout(), None, "nothing before a login");
    // The login timeout, 10 s after the login.
    t.c.login(LoginRequest::new("alice", "t"), s(2)).unwrap();
    assert_eq!(t.c.poll_timeout(), Some(s(12)));
    t.opened(s(4));
    assert_eq!(t.c.poll_timeout(), Some(s(12)));
    // Logged in at 5 s: the first keepalive, one interval later.
    t.server(login_ok("alice", 5), s(5));
    assert_eq!(t.c.poll_timeout(), Some(s(10)));
    // A QoS message sent at 5.5 s: its resend 3 s later comes first.
    t.c.send(Outgoing::new("bob", "x"), ms(5_500)).unwrap();
    assert_eq!(t.c.poll_timeout(), Some(ms(8_500)));
    t.actions();
    t.c.tick(ms(8_500));
    assert_eq!(t.data_sent().len(), 1, "the resend");
    // The keepalive at 10 s, then the second resend at 11.5 s.
    assert_eq!(t.c.poll_timeout(), Some(s(10)));
    t.c.tick(s(10));
    assert_eq!(t.acts(), [Act::Send(wire::KEEP_ALIVE)]);
    assert_eq!(t.c.poll_timeout(), Some(ms(11_500)));
    t.c.logout(s(11));
    assert_eq!(t.c.poll_timeout(), None, "nothing after a logout");

    // A re-login due time (every 3 s, exact).
    let mut t = lost_at_20(ReloginLimits::default());
    assert_eq!(t.c.poll_timeout(), Some(s(20)), "the first attempt at once");
    t.c.tick(s(20));
    assert_eq!(t.acts(), [Act::Connect]);
    assert_eq!(t.c.poll_timeout(), Some(s(30)), "its login timeout");
    t.closed(None, "refused", s(21));
    assert_eq!(t.c.poll_timeout(), Some(s(24)), "3 s after the failure");
}

#[test]
fn a_lost_message_driven_only_by_poll_timeout() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let fp = t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap().unwrap();
    assert_eq!(t.data_sent().len(), 1);
    let mut woke = Vec::new();
    let mut resent = Vec::new();
    let mut lost = None;
    while lost.is_none() {
        let at = t.c.poll_timeout().expect("something is due");
        assert!(woke.last().is_none_or(|&last| at > last), "time goes on");
        assert!(woke.len() < 10, "woke at {woke:?}");
        woke.push(at);
        t.c.tick(at);
        for f in t.data_sent() {
            assert_eq!(f.fp.as_deref(), Some(&*fp));
            resent.push(at);
        }
        for e in t.events() {
            if let ClientEvent::MessagesLost(MessagesLost { frames, .. }) = e {
                assert_eq!(frames.len(), 1);
                assert_eq!(frames[0].fp.as_deref(), Some(&*fp));
                lost = Some(at);
            }
        }
    }
    assert_eq!(resent, [s(3), s(6)]);
    assert_eq!(lost, Some(s(9)));
    // The keepalive at 5 s is the only other wake-up.
    assert_eq!(woke, [s(3), s(5), s(6), s(9)]);
}

#[test]
fn events_from_a_stale_link_are_ignored() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let old = t.link();
    t.closed(None, "reset", s(20));
    t.c.tick(s(20));
    let new = t.link();
    assert_ne!(new, old);
    assert_eq!(t.actions(), [Action::Connect { link: new }]);
    t.events();
    let frames_in = t.c.stats().frames_in;
    let data = Frame::data("bob", "alice", "late", true, Some("stale-1".into()), 0);

    // While the new link is connecting, the old one says things.
    t.c.on_link_opened(old, s(20));
    t.c.on_text(old, &login_ok("alice", 5).to_json(), s(20));
    t.c.on_text(old, &data.to_json(), s(20));
    t.c.on_link_error(old, TransportError::Refused("late".into()));
    t.c.on_link_closed(old, Some(1006), "late", s(20));
    assert!(t.actions().is_empty(), "no login, no ACK, no close");
    assert!(t.events().is_empty());
    assert_eq!(t.c.stats().frames_in, frames_in);
    assert_eq!(t.c.link(), Some(new));
    assert_eq!(t.c.state(), ImConnection::Relogging);

    // The new link goes on as if nothing happened.
    t.opened(s(21));
    assert_eq!(t.acts(), [Act::Send(wire::LOGIN)]);
    t.server(login_ok("alice", 5), s(21));
    assert_eq!(t.events(), [login_succeeded(true, 5)]);

    // Once logged in on the new link, the old one still cannot end the session.
    t.c.on_text(
        old,
        &Frame::kickout(
            Dialect::Seed,
            "alice",
            &KickoutInfo {
                code: 1,
                reason: None,
            },
        )
        .to_json(),
        s(22),
    );
    t.c.on_text(old, &data.to_json(), s(22));
    t.c.on_link_closed(old, None, "late", s(22));
    assert!(t.actions().is_empty());
    assert!(t.events().is_empty());
    assert!(t.c.is_logged_in());
    assert_eq!(t.c.link(), Some(new));
    // The data the old link carried was never seen: on the current link it is new.
    t.server(data, s(23));
    assert!(matches!(&t.events()[..], [ClientEvent::DataReceived(_)]));
}

#[test]
fn a_busy_receiver_is_retried_like_throttling_not_refused() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let fp = t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap().unwrap();
    let original = t.sent().remove(0);
    t.server(
        Frame::error_response(&ErrorResponse {
            error_code: bevy_im::client::RECEIVER_BUSY,
            error_msg: original.to_json(),
        }),
        ms(100),
    );
    assert!(matches!(
        &t.events()[..],
        [ClientEvent::SendThrottled(SendThrottled { fp: Some(f), retry_in: Some(_), .. })] if *f == fp
    ));
    t.c.tick(ms(600));
    assert_eq!(t.sent(), [original], "written again after the back-off");
    assert_eq!(t.c.pending_count(), 1, "still pending, not refused");
}

#[test]
fn the_default_dedup_remembers_100_000_fingerprints_then_forgets_the_oldest() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let copy = |n: usize| {
        format!(
            r#"{{"bridge":false,"type":2,"dataContent":"m","from":"bob","to":"alice","fp":"fp-{n}","QoS":true,"typeu":0,"sm":-1}}"#
        )
    };
    let mut delivered = 0;
    for n in 0..100_000 {
        t.text(&copy(n), s(1));
        if n % 1_000 == 999 {
            t.actions();
            delivered += t.events().len();
        }
    }
    assert_eq!(delivered, 100_000);
    assert_eq!(t.c.qos_recv().len(), 100_000, "all remembered at the cap");
    // Every one of them is still a duplicate, the oldest included.
    t.text(&copy(0), ms(1_500));
    assert!(t.events().is_empty(), "fp-0 is remembered at 100,000");
    // One more fingerprint: the oldest not seen since (fp-1) is forgotten.
    t.text(&copy(100_000), s(2));
    assert_eq!(t.events().len(), 1);
    assert_eq!(t.c.qos_recv().len(), 100_000, "the cap holds");
    t.text(&copy(0), s(2));
    assert!(t.events().is_empty(), "fp-0 was refreshed, so kept");
    t.text(&copy(1), s(2));
    assert_eq!(t.events().len(), 1, "fp-1 was forgotten: delivered again");
    t.text(&copy(3), s(2));
    assert!(t.events().is_empty(), "fp-3 is still remembered");
    assert_eq!(t.c.qos_recv().len(), 100_000);
}

#[test]
fn an_ack_that_arrives_after_the_loss_is_no_second_outcome() {
    for dialect in [Dialect::MobileImSdkV6, Dialect::Seed] {
        let mut t = Script::logged_in(dialect, s(0), 5);
        let fp = t.c.send(Outgoing::new("bob", "x"), s(0)).unwrap().unwrap();
        for at in [3, 6] {
            t.c.tick(s(at));
        }
        assert!(t.events().is_empty());
        t.c.tick(s(9));
        match &t.events()[..] {
            [ClientEvent::MessagesLost(MessagesLost { frames, .. })] => {
                assert_eq!(frames.len(), 1);
                assert_eq!(frames[0].fp.as_deref(), Some(&*fp));
            }
            other => panic!("{dialect}: {other:?}"),
        }
        t.actions();
        // The ACK of the first write, or of a resend, arrives late: twice.
        let ack = Frame::server_ack(dialect, "bob", "alice", &fp);
        t.server(ack.clone(), ms(9_200));
        t.server(ack, ms(9_400));
        assert!(t.events().is_empty(), "{dialect}: lost is the only outcome");
        assert!(t.sent().is_empty(), "{dialect}: a server ACK is not ACKed");
        assert_eq!(t.c.pending_count(), 0);
        assert_eq!(t.c.stats().lost, 1);
        assert!(t.c.is_logged_in(), "{dialect}");
        for at in [12, 15, 18] {
            t.c.tick(s(at));
        }
        assert!(
            !t.events()
                .iter()
                .any(|e| matches!(e, ClientEvent::MessageDelivered(_))),
            "{dialect}"
        );
    }
}

#[test]
fn the_first_relogin_attempt_comes_within_the_spread_at_a_seeded_point() {
    // The default spread, 0.5 s: clients that lose one server together spread out.
    let firsts: Vec<Duration> = (1..=20)
        .map(|seed| {
            let mut t = Script::logged_in_with(
                ClientConfig {
                    jitter_seed: Some(seed),
                    ..ClientConfig::default()
                },
                s(0),
                5,
            );
            t.closed(None, "reset", s(60));
            t.actions();
            let due = t.c.relogin().due().expect("re-login is scheduled");
            assert!(due >= s(60) && due < ms(60_500), "{due:?}");
            t.c.tick(due - ms(1).min(due - s(60)));
            if due > s(60) {
                assert!(t.actions().is_empty(), "nothing before its point");
            }
            t.c.tick(due);
            assert_eq!(t.acts(), [Act::Connect]);
            due - s(60)
        })
        .collect();
    let distinct: std::collections::HashSet<_> = firsts.iter().collect();
    assert!(
        distinct.len() >= 18,
        "seeds pick different points: {firsts:?}"
    );
}
