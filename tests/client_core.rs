//! Timeline tests of the client core: made-up times, scripted server frames, no
//! sockets and no sleeps.

use std::time::Duration;

use bevy_im::client::{
    Action, ClientConfig, ClientCore, ClientEvent, LoginRequest, Outgoing, ReloginPolicy,
    SessionState,
};
use bevy_im::protocol::{
    Dialect, ErrorResponse, Frame, KickoutCode, KickoutInfo, LoginInfo, LoginResponse, ResultCode,
    decode_body, wire,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A client driven by hand, with helpers to read what it wrote.
struct Script {
    c: ClientCore,
}

impl Script {
    fn new(dialect: Dialect) -> Self {
        Self::with(ClientConfig {
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

    fn actions(&mut self) -> Vec<Action> {
        self.c.take_actions()
    }

    fn events(&mut self) -> Vec<ClientEvent> {
        self.c.take_events()
    }

    fn server(&mut self, frame: Frame, now: Duration) {
        self.c.core().on_text(&frame.to_json(), now);
    }

    /// Logs `alice` in at `now`; the server answers with `first_login_time`.
    fn logged_in(dialect: Dialect, now: Duration, first_login_time: i64) -> Self {
        let mut t = Self::new(dialect);
        t.c.core()
            .login(LoginRequest::new("alice", "secret").with_app("lobby"), now)
            .unwrap();
        t.c.core().on_link_opened(now);
        t.sent();
        t.server(login_ok("alice", first_login_time), now);
        t.events();
        t
    }
}

fn login_ok(to: &str, first_login_time: i64) -> Frame {
    Frame::login_response(
        to,
        &LoginResponse {
            code: 0,
            first_login_time,
        },
    )
}

fn login_body(frame: &Frame) -> LoginInfo {
    assert_eq!(frame.ty, wire::LOGIN);
    decode_body(frame.data_content.as_deref()).unwrap()
}

#[test]
fn clean_login_sends_only_the_login_and_reports_success() {
    let mut t = Script::new(Dialect::Seed);
    t.c.core()
        .login(
            LoginRequest::new("alice", "secret")
                .with_app("lobby")
                .with_extra("x"),
            s(0),
        )
        .unwrap();
    assert_eq!(t.actions(), [Action::Connect]);
    assert_eq!(t.c.session.state(), SessionState::Connecting);
    t.c.core().on_link_opened(ms(20));
    let sent = t.sent();
    assert_eq!(sent.len(), 1, "nothing but the login until the reply");
    let body = login_body(&sent[0]);
    assert_eq!(body.login_user_id, "alice");
    assert_eq!(body.login_token, "secret");
    assert_eq!(body.app.as_deref(), Some("lobby"));
    assert_eq!(body.extra.as_deref(), Some("x"));
    assert_eq!(body.first_login_time, 0);
    assert_eq!(
        t.c.core().send(Outgoing::new("bob", "too early"), ms(30)),
        Err(ResultCode::NoLogin)
    );
    t.server(login_ok("alice", 1_795_643_442_840), ms(40));
    assert_eq!(
        t.events(),
        [ClientEvent::LoginSucceeded {
            user_id: "alice".into(),
            relogin: false,
            first_login_time: 1_795_643_442_840
        }]
    );
    assert!(t.c.session.is_logged_in());
}

#[test]
fn failed_login_reports_the_servers_code_and_does_not_retry() {
    let mut t = Script::new(Dialect::MobileImSdkV6);
    t.c.core()
        .login(LoginRequest::new("alice", "bad"), s(0))
        .unwrap();
    t.c.core().on_link_opened(s(0));
    t.sent();
    t.server(
        Frame::login_response(
            "alice",
            &LoginResponse {
                code: 1025,
                first_login_time: -1,
            },
        ),
        s(0),
    );
    assert_eq!(
        t.events(),
        [ClientEvent::LoginFailed {
            code: ResultCode::Other(1025),
            relogin: false
        }]
    );
    assert_eq!(t.actions(), [Action::Close]);
    t.c.core().on_link_closed(Some(1000), "Bye", s(0));
    t.c.core().tick(s(600));
    assert!(t.actions().is_empty(), "no re-login after a refused login");
}

#[test]
fn a_refused_connect_is_a_failed_login_with_code_202() {
    let mut t = Script::new(Dialect::Seed);
    t.c.core()
        .login(LoginRequest::new("alice", "t"), s(0))
        .unwrap();
    t.actions();
    t.c.core().on_link_closed(None, "refused", s(0));
    assert_eq!(
        t.events(),
        [ClientEvent::LoginFailed {
            code: ResultCode::BadConnectToServer,
            relogin: false
        }]
    );
}

#[test]
fn dead_link_is_reported_and_relogin_presents_the_saved_first_login_time() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 777);
    // Keepalives at 5 s and 10 s go unanswered; the link is dead at 13 s.
    t.c.core().tick(s(5));
    assert_eq!(t.sent()[0].ty, wire::KEEP_ALIVE);
    t.c.core().tick(s(10));
    assert_eq!(t.sent().len(), 1);
    t.c.core().tick(ms(12_999));
    assert!(t.events().is_empty());
    t.c.core().tick(s(13));
    assert_eq!(
        t.actions(),
        [Action::Close, Action::Connect],
        "first attempt at once"
    );
    assert_eq!(
        t.events(),
        [
            ClientEvent::LinkClosed {
                code: -1,
                reason: "keepalive timeout".into()
            },
            ClientEvent::ReloginStarted { attempt: 1 }
        ]
    );
    t.c.core().on_link_opened(s(13));
    let body = login_body(&t.sent()[0]);
    assert_eq!(
        body.first_login_time, 777,
        "the server's time from the first login"
    );
    t.server(login_ok("alice", 777), s(13));
    assert_eq!(
        t.events(),
        [ClientEvent::LoginSucceeded {
            user_id: "alice".into(),
            relogin: true,
            first_login_time: 777
        }]
    );
}

#[test]
fn failed_relogin_attempts_back_off_and_each_is_reported() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.c.core().on_link_closed(None, "reset", s(1));
    t.c.core().tick(s(1));
    assert_eq!(t.actions(), [Action::Connect]);
    t.c.core().on_link_closed(None, "refused", s(1));
    let ev = t.events();
    assert!(ev.contains(&ClientEvent::LoginFailed {
        code: ResultCode::BadConnectToServer,
        relogin: true
    }));
    let due = t.c.relogin.due().unwrap();
    assert!(
        due >= ms(2_500) && due <= s(4),
        "1.5–3 s after the failure: {due:?}"
    );
    t.c.core().tick(due - ms(1));
    assert!(t.actions().is_empty());
    t.c.core().tick(due);
    assert_eq!(t.actions(), [Action::Connect]);
    assert!(
        t.events()
            .contains(&ClientEvent::ReloginStarted { attempt: 2 })
    );
}

#[test]
fn upstream_parity_relogin_retries_every_3_seconds() {
    let mut t = Script::with(ClientConfig {
        relogin: ReloginPolicy::UPSTREAM,
        ..ClientConfig::default()
    });
    t.c.core()
        .login(LoginRequest::new("alice", "t"), s(0))
        .unwrap();
    t.c.core().on_link_opened(s(0));
    t.server(login_ok("alice", 1), s(0));
    t.c.core().on_link_closed(None, "reset", s(10));
    for n in 0..3u64 {
        let at = s(10 + 3 * n);
        t.actions();
        t.c.core().tick(at);
        assert_eq!(t.actions(), [Action::Connect], "attempt at {at:?}");
        t.c.core().on_link_closed(None, "refused", at);
    }
}

#[test]
fn kickout_in_the_v6_dialect_ends_the_session_with_no_relogin() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let kick = Frame::kickout(
        Dialect::MobileImSdkV6,
        "alice",
        &KickoutInfo {
            code: 1,
            reason: None,
        },
    );
    assert_eq!(kick.ty, 54);
    t.server(kick, s(1));
    assert_eq!(
        t.events(),
        [
            ClientEvent::Kicked {
                code: KickoutCode::DuplicateLogin,
                reason: None
            },
            ClientEvent::LinkClosed {
                code: -1,
                reason: "kicked out".into()
            }
        ]
    );
    assert_eq!(t.actions(), [Action::Close]);
    t.c.core().on_link_closed(Some(1000), "Bye", s(1));
    for at in [1, 5, 30, 300] {
        t.c.core().tick(s(at));
    }
    assert!(t.actions().is_empty(), "never re-login after a kickout");
    assert_eq!(
        t.c.core().send(Outgoing::new("bob", "x"), s(300)),
        Err(ResultCode::NoLogin)
    );
}

#[test]
fn kickout_in_the_seed_dialect_is_type_55_and_54_is_an_ack() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let fp =
        t.c.core()
            .send(Outgoing::new("bob", "hi"), s(0))
            .unwrap()
            .unwrap();
    t.sent();
    t.server(Frame::server_ack(Dialect::Seed, "bob", "alice", &fp), s(0));
    assert_eq!(t.events(), [ClientEvent::MessageDelivered { fp }]);
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
        ClientEvent::Kicked {
            code: KickoutCode::Admin,
            reason: Some("admin".into())
        }
    );
    t.c.core().tick(s(60));
    assert!(!t.actions().contains(&Action::Connect));
}

#[test]
fn a_kickout_right_after_login_success_is_handled() {
    let mut t = Script::new(Dialect::MobileImSdkV6);
    t.c.core()
        .login(LoginRequest::new("alice", "t"), s(0))
        .unwrap();
    t.c.core().on_link_opened(s(0));
    t.server(login_ok("alice", 1), s(0));
    t.server(
        Frame::kickout(
            Dialect::MobileImSdkV6,
            "alice",
            &KickoutInfo {
                code: 1,
                reason: None,
            },
        ),
        s(0),
    );
    let ev = t.events();
    assert!(matches!(ev[0], ClientEvent::LoginSucceeded { .. }));
    assert!(matches!(ev[1], ClientEvent::Kicked { .. }));
    assert_eq!(t.c.session.state(), SessionState::Disconnected);
    t.actions();
    t.c.core().tick(s(100));
    assert!(!t.actions().contains(&Action::Connect));
}

#[test]
fn pending_messages_are_reported_lost_on_kickout_not_dropped() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let fp =
        t.c.core()
            .send(Outgoing::new("bob", "hi"), s(0))
            .unwrap()
            .unwrap();
    t.server(
        Frame::kickout(
            Dialect::MobileImSdkV6,
            "alice",
            &KickoutInfo {
                code: 1,
                reason: None,
            },
        ),
        s(1),
    );
    match &t.events()[0] {
        ClientEvent::MessagesLost(frames) => assert_eq!(frames[0].fp.as_deref(), Some(&*fp)),
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
    t.server(err, s(2));
    assert_eq!(
        t.events(),
        [
            ClientEvent::ServerError {
                code: 301,
                msg: "{\"type\":1}".into()
            },
            ClientEvent::LinkClosed {
                code: 301,
                reason: "server says not logged in".into()
            }
        ]
    );
    assert_eq!(t.actions(), [Action::Close]);
    t.c.core().on_link_closed(Some(1000), "Bye", s(2));
    t.c.core().tick(ms(4_999));
    assert!(t.actions().is_empty(), "not at once after a 301");
    t.c.core().tick(s(5));
    assert_eq!(t.actions(), [Action::Connect], "3 s after the 301");
}

#[test]
fn a_throttled_message_is_resent_after_a_backoff_and_is_no_server_error() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let fp =
        t.c.core()
            .send(Outgoing::new("bob", "x"), s(0))
            .unwrap()
            .unwrap();
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
        [ClientEvent::SendThrottled {
            fp: Some(fp.clone()),
            retry_in: Some(ms(500)),
        }]
    );
    t.c.core().tick(ms(599));
    assert!(t.sent().is_empty());
    t.c.core().tick(ms(600));
    assert_eq!(t.sent(), [original], "the same frame, after the back-off");
    t.server(
        Frame::server_ack(Dialect::Seed, "bob", "alice", &fp),
        ms(700),
    );
    assert_eq!(t.events(), [ClientEvent::MessageDelivered { fp }]);
    assert_eq!(t.c.out.stats.throttled, 1);
    assert_eq!(t.c.out.stats.resends, 0, "a throttled retry is not a resend");
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
        [ClientEvent::SendThrottled {
            fp: None,
            retry_in: None
        }]
    );
    t.c.core().tick(s(2));
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
        [ClientEvent::ServerError {
            code: 500,
            msg: "slow down".into()
        }]
    );
    assert!(t.c.session.is_logged_in());
}

#[test]
fn a_qos_message_is_resent_at_3_and_6_seconds_and_lost_at_9() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let fp =
        t.c.core()
            .send(Outgoing::new("bob", "hello").typeu(7), ms(100))
            .unwrap()
            .unwrap();
    let first = t.sent();
    assert_eq!(first.len(), 1);
    assert!(first[0].qos);
    assert_eq!(first[0].typeu, 7);
    let resent_at = |t: &mut Script, at: Duration| {
        t.c.core().tick_qos_send(at);
        t.sent()
            .into_iter()
            .filter(|f| f.ty == wire::COMMON_DATA)
            .count()
    };
    assert_eq!(resent_at(&mut t, ms(3_099)), 0);
    assert_eq!(resent_at(&mut t, ms(3_100)), 1);
    assert_eq!(resent_at(&mut t, ms(6_099)), 0);
    assert_eq!(resent_at(&mut t, ms(6_100)), 1);
    t.c.core().tick_qos_send(ms(9_099));
    assert!(t.events().is_empty());
    t.c.core().tick_qos_send(ms(9_100));
    match &t.events()[..] {
        [ClientEvent::MessagesLost(frames)] => {
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].fp.as_deref(), Some(&*fp));
            assert_eq!(frames[0].content(), "hello");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.c.out.stats.resends, 2);
    assert_eq!(t.c.out.stats.lost, 1);
}

#[test]
fn an_ack_between_resends_reports_delivery_once_and_stops_resending() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let fp =
        t.c.core()
            .send(Outgoing::new("bob", "x"), s(0))
            .unwrap()
            .unwrap();
    t.c.core().tick_qos_send(s(3));
    assert_eq!(t.sent().len(), 2);
    let ack = Frame::server_ack(Dialect::MobileImSdkV6, "bob", "alice", &fp);
    t.server(ack.clone(), ms(3_500));
    t.server(ack, ms(3_600));
    assert_eq!(t.events(), [ClientEvent::MessageDelivered { fp }]);
    for at in [6, 9, 12] {
        t.c.core().tick_qos_send(s(at));
    }
    assert!(t.sent().is_empty());
    assert!(t.events().is_empty());
}

#[test]
fn messages_without_qos_get_no_fingerprint_and_no_resend() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    assert_eq!(
        t.c.core().send(Outgoing::new("bob", "x").qos(false), s(0)),
        Ok(None)
    );
    let own =
        t.c.core()
            .send(Outgoing::new("bob", "y").fingerprint("mine"), s(0));
    assert_eq!(own, Ok(Some("mine".into())));
    t.sent();
    t.c.core().tick_qos_send(s(3));
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
        [ClientEvent::DataReceived {
            fp: Some("fp-1".into()),
            from: "bob".into(),
            content: "hey".into(),
            typeu: 3
        }]
    );
}

#[test]
fn the_dedup_window_expires_after_ten_minutes() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let msg = Frame::data("bob", "alice", "hey", true, Some("fp-1".into()), 0);
    t.server(msg.clone(), s(0));
    t.server(msg.clone(), s(599));
    assert_eq!(t.events().len(), 1);
    t.c.core().tick_qos_recv(s(1199));
    t.server(msg.clone(), s(1199));
    assert_eq!(
        t.events().len(),
        1,
        "a duplicate refreshed the window to 1199 s"
    );
    t.c.core().tick_qos_recv(s(1799));
    t.server(msg, s(1799));
    assert_eq!(
        t.events().len(),
        1,
        "delivered again once the window passed"
    );
}

#[test]
fn a_keepalive_reply_keeps_the_link_alive_and_measures_rtt() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    for n in 1..=10u64 {
        t.c.core().tick(s(5 * n));
        assert_eq!(t.sent().len(), 1);
        t.server(Frame::keepalive_response("alice"), s(5 * n) + ms(30));
    }
    let ev = t.events();
    assert_eq!(ev.len(), 10);
    assert!(
        ev.iter()
            .all(|e| *e == ClientEvent::KeepaliveReply { rtt: Some(ms(30)) })
    );
    assert!(t.c.session.is_logged_in());
}

#[test]
fn keepalives_are_sent_only_while_logged_in() {
    let mut t = Script::new(Dialect::Seed);
    t.c.core()
        .login(LoginRequest::new("alice", "t"), s(0))
        .unwrap();
    t.c.core().on_link_opened(s(0));
    t.sent();
    t.c.core().tick(s(6));
    assert!(t.sent().is_empty());
}

#[test]
fn a_stalled_login_times_out() {
    let mut t = Script::new(Dialect::Seed);
    t.c.core()
        .login(LoginRequest::new("alice", "t"), s(0))
        .unwrap();
    t.c.core().on_link_opened(s(0));
    t.actions();
    t.c.core().tick(s(10));
    assert_eq!(t.actions(), [Action::Close]);
    assert!(t.events().contains(&ClientEvent::LoginFailed {
        code: ResultCode::BadConnectToServer,
        relogin: false
    }));
}

#[test]
fn logout_sends_the_logout_frame_only_when_logged_in() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let fps: Vec<String> = (0..3)
        .map(|i| {
            t.c.core()
                .send(Outgoing::new("bob", format!("m{i}")), s(0))
                .unwrap()
                .unwrap()
        })
        .collect();
    t.sent();
    assert_eq!(t.c.core().logout(), ResultCode::Ok);
    let actions = t.actions();
    match &actions[..] {
        [Action::Send { text, .. }, Action::Close] => {
            assert_eq!(Frame::decode(text).unwrap().ty, wire::LOGOUT)
        }
        other => panic!("{other:?}"),
    }
    // The three unconfirmed messages are reported lost, in order, before LoggedOut.
    match &t.events()[..] {
        [
            ClientEvent::MessagesLost(lost),
            ClientEvent::LoggedOut {
                code: ResultCode::Ok,
            },
        ] => {
            let lost: Vec<String> = lost.iter().map(|f| f.fp.clone().unwrap()).collect();
            assert_eq!(lost, fps);
        }
        other => panic!("{other:?}"),
    }
    t.c.core().tick(s(60));
    assert!(
        t.actions().is_empty(),
        "no resends, no re-login after logout"
    );
    assert!(
        t.events().is_empty(),
        "pending messages are cleared, not reported"
    );

    let mut never = Script::new(Dialect::Seed);
    assert_eq!(never.c.core().logout(), ResultCode::NoLogin);
    assert!(never.actions().is_empty());
}

#[test]
fn release_clears_everything_and_send_then_reports_203() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.c.core().send(Outgoing::new("bob", "x"), s(0)).unwrap();
    t.c.core().release();
    assert_eq!(t.c.qos_send.len(), 0);
    assert!(t.c.session.user_id().is_none());
    assert_eq!(
        t.c.core().send(Outgoing::new("bob", "x"), s(1)),
        Err(ResultCode::ClientSdkNotInitialized)
    );
    t.actions();
    t.c.core().tick(s(60));
    assert!(t.actions().is_empty());
}

#[test]
fn local_errors_write_nothing() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.actions();
    assert_eq!(
        t.c.core().send(Outgoing::new("", "x"), s(0)),
        Err(ResultCode::InvalidProtocol)
    );
    assert_eq!(
        t.c.core()
            .send(Outgoing::new("bob", "x".repeat(70_000)), s(0)),
        Err(ResultCode::InvalidProtocol)
    );
    assert_eq!(
        t.c.core().login(LoginRequest::new("", "t"), s(0)),
        Err(ResultCode::InvalidProtocol)
    );
    assert!(t.actions().is_empty());
    assert_eq!(t.c.qos_send.len(), 0);
}

#[test]
fn pending_messages_are_resent_after_relogin() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let fp =
        t.c.core()
            .send(Outgoing::new("bob", "x"), s(0))
            .unwrap()
            .unwrap();
    t.sent();
    t.c.core().on_link_closed(None, "reset", s(1));
    t.c.core().tick(s(1));
    t.c.core().on_link_opened(s(1));
    t.sent();
    t.server(login_ok("alice", 5), ms(1_200));
    let resent = t.sent();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].fp.as_deref(), Some(&*fp));
}

#[test]
fn garbage_and_unknown_types_are_reported_not_fatal() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.c.core().on_text("garbage{", s(1));
    t.c.core().on_text("[1,2]", s(1));
    t.server(Frame::new(99, "0", "alice"), s(1));
    let ev = t.events();
    assert_eq!(ev.len(), 3);
    assert!(ev.iter().all(|e| matches!(e, ClientEvent::BadFrame(_))));
    assert!(t.c.session.is_logged_in());
}

#[test]
fn a_refused_relogin_is_retried_with_backoff() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.c.core().on_link_closed(None, "reset", s(20));
    t.c.core().tick(s(20));
    t.c.core().on_link_opened(s(20));
    t.actions();
    t.server(
        Frame::login_response(
            "alice",
            &LoginResponse {
                code: 1025,
                first_login_time: -1,
            },
        ),
        s(20),
    );
    assert!(t.events().contains(&ClientEvent::LoginFailed {
        code: ResultCode::Other(1025),
        relogin: true
    }));
    assert_eq!(t.actions(), [Action::Close]);
    let due = t.c.relogin.due().expect("another attempt is scheduled");
    assert!(due > s(20), "not at once: {due:?}");
    t.c.core().tick(due);
    assert_eq!(t.actions(), [Action::Connect]);
}

#[test]
fn a_link_that_drops_right_after_relogin_is_not_hammered() {
    let mut t = Script::with(ClientConfig {
        relogin: ReloginPolicy::UPSTREAM,
        ..ClientConfig::default()
    });
    t.c.core()
        .login(LoginRequest::new("alice", "t"), s(0))
        .unwrap();
    t.c.core().on_link_opened(s(0));
    t.server(login_ok("alice", 1), s(0));
    // A long session ends: the first attempt is at once.
    t.c.core().on_link_closed(None, "reset", s(60));
    t.actions();
    t.c.core().tick(s(60));
    assert_eq!(t.actions(), [Action::Connect]);
    t.c.core().on_link_opened(s(60));
    t.server(login_ok("alice", 1), s(60));
    // The new session dies a second later: the next attempt waits 3 s.
    t.c.core().on_link_closed(None, "reset", s(61));
    t.actions();
    t.c.core().tick(s(61));
    assert!(t.actions().is_empty());
    t.c.core().tick(s(64));
    assert_eq!(t.actions(), [Action::Connect]);
}

#[test]
fn a_message_is_lost_on_time_even_if_the_link_keeps_coming_back() {
    let mut t = Script::logged_in(Dialect::MobileImSdkV6, s(0), 5);
    let fp =
        t.c.core()
            .send(Outgoing::new("bob", "x"), s(0))
            .unwrap()
            .unwrap();
    let mut writes = 0;
    let mut lost_at = None;
    for second in 0..=12u64 {
        if second > 0 {
            // Every second the link drops and the re-login succeeds at once.
            t.c.core().on_link_closed(None, "reset", s(second));
            t.c.core().tick(s(second));
            t.c.core().on_link_opened(s(second));
            t.server(login_ok("alice", 5), s(second));
            t.c.core().tick(s(second));
        }
        writes += t
            .sent()
            .iter()
            .filter(|f| f.fp.as_deref() == Some(&*fp))
            .count();
        if t.events()
            .iter()
            .any(|e| matches!(e, ClientEvent::MessagesLost(f) if f[0].fp.as_deref() == Some(&*fp)))
        {
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
    let fp =
        t.c.core()
            .send(Outgoing::new("bob", "x"), s(0))
            .unwrap()
            .unwrap();
    let mut writes = t.sent().len();
    t.c.core().on_link_closed(None, "reset", ms(500));
    t.c.core().tick(ms(500));
    assert_eq!(t.actions(), [Action::Connect]);
    t.c.core().on_link_opened(ms(600));
    t.server(login_ok("alice", 5), ms(600));
    let flushed = t.sent();
    assert_eq!(flushed.len(), 2, "login frame and the pending message");
    writes += 1;
    // The flush was resend 1: resend 2 comes 3 s later, the loss 3 s after that.
    for at in [ms(3_599), ms(3_600), ms(6_599), ms(6_600)] {
        t.c.core().tick(at);
        writes += t
            .sent()
            .iter()
            .filter(|f| f.fp.as_deref() == Some(&*fp))
            .count();
    }
    assert_eq!(writes, 3);
    assert_eq!(t.c.out.stats.resends, 2);
    assert!(matches!(&t.events()[..], [.., ClientEvent::MessagesLost(f)] if f.len() == 1));
}

#[test]
fn qos_messages_sent_while_relogging_are_queued_and_written_in_order() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.c.core().on_link_closed(None, "reset", s(1));
    t.events();
    let fps: Vec<String> = (0..100)
        .map(|i| {
            t.c.core()
                .send(Outgoing::new("bob", format!("m{i}")), s(1))
                .expect("queued, not refused")
                .unwrap()
        })
        .collect();
    // Without QoS nothing can be kept for later: refused as before.
    assert_eq!(
        t.c.core().send(Outgoing::new("bob", "x").qos(false), s(1)),
        Err(ResultCode::NoLogin)
    );
    t.c.core().tick(s(1));
    assert_eq!(t.actions(), [Action::Connect], "nothing written while down");
    t.c.core().on_link_opened(s(2));
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
        .filter(|e| matches!(e, ClientEvent::MessageDelivered { .. }))
        .count();
    assert_eq!(delivered, 100);
    assert_eq!(t.c.out.stats.resends, 0, "first writes, not resends");
}

#[test]
fn the_queue_while_relogging_is_bounded_and_loses_on_time() {
    let mut t = Script::with(ClientConfig {
        max_queued: 2,
        jitter_seed: Some(1),
        ..ClientConfig::default()
    });
    t.c.core()
        .login(LoginRequest::new("alice", "secret"), s(0))
        .unwrap();
    t.c.core().on_link_opened(s(0));
    t.server(login_ok("alice", 5), s(0));
    t.c.core().on_link_closed(None, "reset", s(0));
    t.events();
    for _ in 0..2 {
        t.c.core().send(Outgoing::new("bob", "x"), s(0)).unwrap();
    }
    assert_eq!(
        t.c.core().send(Outgoing::new("bob", "x"), s(0)),
        Err(ResultCode::NoLogin),
        "a full queue refuses"
    );
    // The link never returns: both are lost 9 s after they were sent.
    t.c.core().tick(ms(8_999));
    assert!(!t.events().iter().any(|e| matches!(e, ClientEvent::MessagesLost(_))));
    t.c.core().tick(s(9));
    assert!(matches!(&t.events()[..], [.., ClientEvent::MessagesLost(f)] if f.len() == 2));
}

#[test]
fn release_reports_waiting_messages_lost() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    t.c.core().send(Outgoing::new("bob", "x"), s(0)).unwrap();
    t.c.core().release();
    assert!(matches!(&t.events()[..], [ClientEvent::MessagesLost(f)] if f.len() == 1));
    t.c.core().tick(s(60));
    assert!(t.events().is_empty(), "reported once");
}

#[test]
fn logging_in_again_as_the_same_user_keeps_pending_messages() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let fp =
        t.c.core()
            .send(Outgoing::new("bob", "x"), s(0))
            .unwrap()
            .unwrap();
    t.c.core()
        .login(LoginRequest::new("alice", "t"), s(1))
        .unwrap();
    assert!(t.events().is_empty());
    t.c.core().on_link_opened(s(1));
    t.sent();
    t.server(login_ok("alice", 6), s(1));
    let resent = t.sent();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].fp.as_deref(), Some(&*fp));
}

#[test]
fn logging_in_as_someone_else_reports_pending_messages_lost() {
    let mut t = Script::logged_in(Dialect::Seed, s(0), 5);
    let fp =
        t.c.core()
            .send(Outgoing::new("bob", "x"), s(0))
            .unwrap()
            .unwrap();
    t.c.core()
        .login(LoginRequest::new("carol", "t"), s(1))
        .unwrap();
    match &t.events()[..] {
        [ClientEvent::MessagesLost(frames)] => assert_eq!(frames[0].fp.as_deref(), Some(&*fp)),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.c.qos_send.len(), 0);
}

#[test]
fn a_login_over_the_frame_limit_is_refused_locally() {
    let mut t = Script::new(Dialect::Seed);
    assert_eq!(
        t.c.core().login(
            LoginRequest::new("alice", "t").with_extra("e".repeat(70_000)),
            s(0)
        ),
        Err(ResultCode::InvalidProtocol)
    );
    assert!(t.actions().is_empty());
}
