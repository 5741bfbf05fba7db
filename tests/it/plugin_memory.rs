//! The plugin, headless, over the in-memory transport, with time driven by hand
//! through the crate's own test kit.
#![cfg(feature = "testing")]

use bevy::diagnostic::{DiagnosticPath, DiagnosticsStore};
use bevy::ecs::system::RunSystemOnce;
use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_im::client::QosSendConfig;
use bevy_im::plugin::diagnostics;
use bevy_im::prelude::*;
use bevy_im::protocol::{
    Frame, KickoutInfo, LoginInfo, LoginResponse, MAX_FRAME_BYTES, decode_body, wire,
};
use bevy_im::testing::{ImTestApp, STEP};
use bevy_im::transport::{TransportConfig, TransportError};

/// Re-login's first attempt at once (no spread), so that timelines read simply;
/// `plugin_api` and `client_core` show the spread.
fn config(dialect: Dialect) -> ImConfig {
    let mut c = ImConfig::new("mem://server").dialect(dialect);
    c.client.jitter_seed = Some(3);
    c.client.relogin_spread = std::time::Duration::ZERO;
    c
}

#[test]
fn login_reaches_the_game_as_a_message_in_the_next_update() {
    let mut h = ImTestApp::memory(config(Dialect::Seed));
    h.run(|mut im: ImClient| {
        im.login(LoginRequest::new("alice", "token").with_app("lobby"))
            .unwrap()
    });
    h.step();
    assert_eq!(h.peer().connects().len(), 1);
    h.step();
    let sent = h.wire();
    let body: LoginInfo = decode_body(sent[0].data_content.as_deref()).unwrap();
    assert_eq!(body.app.as_deref(), Some("lobby"));
    h.push(Frame::login_response(
        "alice",
        &LoginResponse {
            code: 0,
            first_login_time: 42,
            ext: Vec::new(),
        },
    ));
    assert!(h.heard::<LoginSucceeded>().is_empty());
    h.step();
    assert_eq!(
        h.heard::<LoginSucceeded>(),
        [LoginSucceeded {
            client: h.client(),
            user_id: "alice".into(),
            relogin: false,
            first_login_time: 42
        }]
    );
    assert!(h.core().is_logged_in());
    assert_eq!(
        h.run(|im: ImClient| im.user_id().map(str::to_owned)),
        Some("alice".into())
    );
}

#[test]
fn a_refused_login_is_reported_with_the_servers_code() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.run(|mut im: ImClient| im.login(LoginRequest::new("alice", "bad")).unwrap());
    h.steps(2);
    h.wire();
    h.push(Frame::login_response(
        "alice",
        &LoginResponse {
            code: 1100,
            first_login_time: -1,
            ext: Vec::new(),
        },
    ));
    h.step();
    assert_eq!(
        h.heard::<LoginFailed>(),
        [LoginFailed {
            client: h.client(),
            code: ResultCode::Other(1100),
            relogin: false
        }]
    );
    assert!(!h.peer().is_open(), "the client closed the link");
}

#[test]
fn what_a_game_sends_in_a_frame_leaves_in_that_frames_flush() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.login("alice");
    h.app
        .add_systems(Update, |mut im: ImClient, mut sent: Local<bool>| {
            if !*sent {
                for i in 0..3 {
                    im.send(Outgoing::new("bob", format!("m{i}"))).unwrap();
                }
                *sent = true;
            }
        });
    h.step();
    let frames = h.wire();
    let contents: Vec<_> = frames.iter().map(|f| f.content().to_owned()).collect();
    assert_eq!(contents, ["m0", "m1", "m2"]);
    assert!(
        frames
            .iter()
            .all(|f| f.qos && f.typeu == 0 && f.from_id() == "alice")
    );
    // The write outcomes come from that flush, so the game reads them next Update.
    assert!(h.heard::<SendResult>().is_empty());
    h.step();
    let results = h.heard::<SendResult>();
    assert_eq!(results.len(), 3);
    assert!(
        results
            .iter()
            .all(|r| r.code == ResultCode::Ok && r.fp.is_some())
    );
}

#[test]
fn a_qos_message_is_delivered_when_the_server_acks_it() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.login("alice");
    let fp = h
        .run(|mut im: ImClient| im.send(Outgoing::new("bob", "hi").typeu(9)))
        .unwrap()
        .unwrap();
    assert_eq!(h.run(|im: ImClient| im.pending_count()), 1);
    h.step();
    let sent = h.wire();
    assert_eq!(sent[0].fp.as_deref(), Some(&*fp));
    assert_eq!(sent[0].typeu, 9);
    h.push(Frame::server_ack(h.dialect(), "bob", "alice", &fp));
    h.step();
    assert_eq!(
        h.heard::<MessageDelivered>(),
        [MessageDelivered {
            client: h.client(),
            fp,
            stored: false,
            mid: None,
        }]
    );
    assert_eq!(h.run(|im: ImClient| im.pending_count()), 0);
}

#[test]
fn seed_dialect_acks_arrive_as_type_54() {
    let mut h = ImTestApp::memory(config(Dialect::Seed));
    h.login("alice");
    let fp = h
        .run(|mut im: ImClient| im.send(Outgoing::new("0", "to server")))
        .unwrap()
        .unwrap();
    h.step();
    // The seed server's ACK, written out by hand rather than by the crate's builder.
    assert!(h.peer().push_text(format!(
        r#"{{"bridge":false,"type":54,"dataContent":"{fp}","from":"0","to":"alice","QoS":false,"typeu":-1,"sm":-1}}"#
    )));
    h.step();
    assert_eq!(
        h.heard::<MessageDelivered>(),
        [MessageDelivered {
            client: h.client(),
            fp,
            stored: false,
            mid: None,
        }]
    );
    assert_eq!(h.run(|im: ImClient| im.pending_count()), 0);
    assert!(h.heard::<Kicked>().is_empty(), "54 is not a kickout here");
    assert!(h.core().is_logged_in());
}

#[test]
fn a_message_without_qos_has_no_fingerprint_and_is_never_resent() {
    let mut h = ImTestApp::memory(config(Dialect::Seed));
    h.login("alice");
    let fp = h
        .run(|mut im: ImClient| im.send(Outgoing::new("bob", "fire and forget").qos(false)))
        .unwrap();
    assert_eq!(fp, None);
    h.step();
    let sent = h.wire();
    assert!(!sent[0].qos && sent[0].fp.is_none());
    h.steps(100);
    assert!(h.wire().iter().all(|f| f.ty != wire::COMMON_DATA));
    assert!(h.heard::<MessagesLost>().is_empty());
}

#[test]
fn an_unacked_message_is_resent_twice_then_reported_lost_at_the_exact_frames() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.login("alice");
    let sent_at = h.now();
    let fp = h
        .run(|mut im: ImClient| im.send(Outgoing::new("bob", "anyone?")))
        .unwrap()
        .unwrap();
    let mut data_frames = Vec::new();
    let mut lost_at = None;
    for _ in 0..120 {
        h.step();
        let now = h.now() - sent_at;
        for f in h.wire() {
            if f.ty == wire::COMMON_DATA {
                data_frames.push(now);
            } else if f.ty == wire::KEEP_ALIVE {
                h.push(Frame::keepalive_response("alice"));
            }
        }
        if let Some(lost) = h.heard::<MessagesLost>().pop() {
            assert_eq!(lost.frames[0].fp.as_deref(), Some(&*fp));
            assert_eq!(lost.frames[0].content(), "anyone?");
            lost_at = Some(now);
            break;
        }
    }
    let secs: Vec<f64> = data_frames.iter().map(|d| d.as_secs_f64()).collect();
    // Sent at once (the flush of that frame), resent at 3 s and 6 s, lost at 9 s;
    // the lost message is written in the tick at 9 s and read in the next Update.
    assert_eq!(secs.len(), 3, "{secs:?}");
    assert!((secs[0] - 0.1).abs() < 1e-6, "{secs:?}");
    assert!((secs[1] - 3.0).abs() < 0.101, "{secs:?}");
    assert!((secs[2] - 6.0).abs() < 0.101, "{secs:?}");
    let lost_at = lost_at.expect("reported lost").as_secs_f64();
    assert!((9.0..=9.2).contains(&lost_at), "{lost_at}");
    assert!(h.heard::<MessageDelivered>().is_empty());
}

#[test]
fn received_data_is_acked_deduplicated_and_kept_in_the_inbox() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.login("alice");
    let msg = Frame::data("bob", "alice", "hello alice", true, Some("fp-9".into()), 4);
    h.push(msg.clone());
    h.push(msg);
    h.step();
    let acks: Vec<_> = h
        .wire()
        .into_iter()
        .filter(|f| f.ty == wire::RECEIVED)
        .collect();
    assert_eq!(acks.len(), 2, "both copies are ACKed");
    assert!(
        acks.iter()
            .all(|a| a.content() == "fp-9" && a.to_id() == "bob")
    );
    let got = h.heard::<DataReceived>();
    assert_eq!(
        got,
        [DataReceived {
            client: h.client(),
            fp: Some("fp-9".into()),
            from: "bob".into(),
            content: "hello alice".into(),
            typeu: 4,
            room: None,
            mid: None,
            sent_at_ms: None,
        }]
    );
    let inbox: Vec<DataReceived> =
        h.run(|mut im: ImClient| im.get().inbox().drain().collect::<Vec<_>>());
    assert_eq!(inbox, got);
}

#[test]
fn a_dead_link_is_reported_then_relogin_succeeds_with_the_saved_time() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.login_as("alice", 555);
    assert_eq!(h.heard::<LoginSucceeded>().len(), 1);
    h.peer().stall(true);
    let mut closed_at = None;
    for _ in 0..200 {
        h.step();
        if !h.heard::<LinkClosed>().is_empty() {
            closed_at = Some(h.now());
            break;
        }
    }
    // Login at 0.3 s; keepalives at 5.3 s and 10.3 s; dead 8 s after the first.
    let closed_at = closed_at.expect("link declared dead").as_secs_f64();
    assert!((13.3..=13.5).contains(&closed_at), "{closed_at}");
    // The first attempt starts in the same tick as the loss, so the new link's
    // login is already waiting behind the stall.
    assert_eq!(
        h.heard::<ReloginStarted>(),
        [ReloginStarted {
            client: h.client(),
            attempt: 1
        }]
    );
    assert_eq!(h.peer().connects().len(), 2);
    h.peer().stall(false);
    let login = h.wire().into_iter().find(|f| f.ty == wire::LOGIN).unwrap();
    let body: LoginInfo = decode_body(login.data_content.as_deref()).unwrap();
    assert_eq!(body.first_login_time, 555);
    h.push(Frame::login_response(
        "alice",
        &LoginResponse {
            code: 0,
            first_login_time: 555,
            ext: Vec::new(),
        },
    ));
    h.step();
    assert_eq!(
        h.heard::<LoginSucceeded>(),
        [LoginSucceeded {
            client: h.client(),
            user_id: "alice".into(),
            relogin: true,
            first_login_time: 555
        }]
    );
}

fn kicked_in(dialect: Dialect) {
    let mut h = ImTestApp::memory(config(dialect));
    h.login("alice");
    h.push(Frame::kickout(
        dialect,
        "alice",
        &KickoutInfo {
            code: 1,
            reason: None,
        },
    ));
    h.peer().close(1000, "Bye");
    h.step();
    assert_eq!(
        h.heard::<Kicked>(),
        [Kicked {
            client: h.client(),
            code: KickoutCode::DuplicateLogin,
            reason: None
        }]
    );
    assert_eq!(h.heard::<LinkClosed>().len(), 1);
    h.steps(400);
    assert_eq!(h.peer().connects().len(), 1, "no re-login after a kickout");
    assert!(h.heard::<ReloginStarted>().is_empty());
    assert!(!h.core().is_logged_in());
}

#[test]
fn kickout_in_the_v6_dialect_stops_the_client_for_good() {
    kicked_in(Dialect::MobileImSdkV6);
}

#[test]
fn kickout_in_the_seed_dialect_stops_the_client_for_good() {
    kicked_in(Dialect::Seed);
}

#[test]
fn logout_sends_the_logout_frame_and_reports_it() {
    let mut h = ImTestApp::memory(config(Dialect::Seed));
    h.login("alice");
    let fp = h.run(|mut im: ImClient| im.send(Outgoing::new("bob", "pending")).unwrap());
    let code = h.run(|mut im: ImClient| im.logout());
    assert_eq!(code, ResultCode::Ok);
    h.step();
    let sent = h.wire();
    assert_eq!(sent.last().unwrap().ty, wire::LOGOUT);
    assert_eq!(
        h.heard::<LoggedOut>(),
        [LoggedOut {
            client: h.client(),
            code: ResultCode::Ok
        }]
    );
    // The unconfirmed message is reported lost, once.
    let lost = h.heard::<MessagesLost>();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].frames[0].fp, fp);
    assert!(!h.peer().is_open());
    h.steps(150);
    assert!(h.heard::<MessagesLost>().is_empty(), "reported once");
    assert_eq!(h.peer().connects().len(), 1);
}

#[test]
fn release_forgets_the_session_and_later_sends_get_203() {
    let mut h = ImTestApp::memory(config(Dialect::Seed));
    h.login("alice");
    h.run(|mut im: ImClient| im.release());
    h.step();
    assert!(!h.peer().is_open());
    assert_eq!(
        h.run(|mut im: ImClient| im.send(Outgoing::new("bob", "x"))),
        Err(SendError::Released)
    );
}

#[test]
fn every_local_error_code_is_returned_at_once_and_writes_nothing() {
    let mut h = ImTestApp::memory(ImConfig::default());
    assert_eq!(
        h.run(|mut im: ImClient| im.login(LoginRequest::new("alice", "t"))),
        Err(LoginError::NoServerUrl)
    );
    h.steps(2);
    assert!(h.peer().connects().is_empty(), "no connect without a URL");
    let mut h = ImTestApp::memory_with(
        config(Dialect::Seed),
        TransportConfig {
            max_frame_bytes: 300,
            ..TransportConfig::default()
        },
    );
    assert_eq!(
        h.run(|mut im: ImClient| im.login(LoginRequest::new("", "t"))),
        Err(LoginError::EmptyUserId)
    );
    assert_eq!(
        h.run(|mut im: ImClient| im.send(Outgoing::new("bob", "x"))),
        Err(SendError::NotLoggedIn)
    );
    h.login("alice");
    assert_eq!(
        h.run(|mut im: ImClient| im.send(Outgoing::new("", "x"))),
        Err(SendError::EmptyReceiver)
    );
    assert_eq!(
        h.run(|mut im: ImClient| im
            .send(Outgoing::new("bob", "x".repeat(70_000)))
            .map_err(|e| e.code())),
        Err(ResultCode::InvalidProtocol)
    );
    h.step();
    assert!(h.wire().is_empty());
    // The core accepts 400 bytes but the link's limit is 300: the write fails with 3.
    let fp = h
        .run(|mut im: ImClient| im.send(Outgoing::new("bob", "y".repeat(400)).qos(false)))
        .unwrap();
    h.steps(2);
    assert_eq!(
        h.heard::<SendResult>(),
        [SendResult {
            client: h.client(),
            fp,
            code: ResultCode::DataSendFailed
        }]
    );
    h.run(|mut im: ImClient| im.release());
    assert_eq!(
        h.run(|mut im: ImClient| im.send(Outgoing::new("bob", "x"))),
        Err(SendError::Released)
    );
    assert_eq!(h.run(|mut im: ImClient| im.logout()), ResultCode::NoLogin);
}

#[test]
fn run_conditions_follow_the_session() {
    #[derive(Resource, Default)]
    struct Seen {
        just_in: u32,
        in_frames: u32,
        just_out: u32,
    }
    let mut h = ImTestApp::memory(config(Dialect::Seed));
    h.app.init_resource::<Seen>().add_systems(
        Update,
        (
            (|mut s: ResMut<Seen>| s.just_in += 1).run_if(im_just_logged_in),
            (|mut s: ResMut<Seen>| s.in_frames += 1).run_if(im_logged_in),
            (|mut s: ResMut<Seen>| s.just_out += 1).run_if(im_just_logged_out),
        ),
    );
    h.login("alice");
    h.steps(4);
    h.peer().drop_link();
    h.step();
    let seen = h.app.world().resource::<Seen>();
    assert_eq!(seen.just_in, 1);
    assert_eq!(seen.in_frames, 5);
    assert_eq!(seen.just_out, 1);
}

#[test]
fn diagnostics_report_pending_frames_and_rtt() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6).qos(QosSendConfig::default()));
    h.login("alice");
    h.run(|mut im: ImClient| im.send(Outgoing::new("bob", "x")).unwrap());
    for _ in 0..100 {
        h.step();
        if h.wire().iter().any(|f| f.ty == wire::KEEP_ALIVE) {
            h.push(Frame::keepalive_response("alice"));
        }
    }
    let store = h.app.world().resource::<DiagnosticsStore>();
    let value = |p: &DiagnosticPath| -> f64 { store.get(p).and_then(|d| d.value()).unwrap() };
    assert_eq!(value(&diagnostics::PENDING_QOS), 0.0, "lost by now");
    assert_eq!(value(&diagnostics::LOST), 1.0);
    assert_eq!(value(&diagnostics::RESENDS), 2.0);
    assert_eq!(value(&diagnostics::RTT_MS), 100.0, "one frame of 100 ms");
    assert_eq!(value(&diagnostics::RELOGINS), 0.0);
    assert_eq!(value(&diagnostics::THROTTLED), 0.0);
}

/// The frame counts are exact: every frame the peer read or wrote, once.
#[test]
fn diagnostics_count_every_frame_once() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.login("alice"); // one frame each way
    h.run(|mut im: ImClient| im.send(Outgoing::new("bob", "x")).unwrap());
    let (mut out, mut replies) = (Vec::new(), 0);
    for n in 0..=100 {
        h.step();
        for f in h.wire() {
            // The last update only reads the last reply.
            if f.ty == wire::KEEP_ALIVE && n < 100 {
                h.push(Frame::keepalive_response("alice"));
                replies += 1;
            }
            out.push(f.ty);
        }
    }
    // 10 s after the login: the message, its two resends, keepalives at 5 s and 10 s.
    let count = |ty: i32| out.iter().filter(|t| **t == ty).count();
    assert_eq!((count(wire::COMMON_DATA), count(wire::KEEP_ALIVE)), (3, 2));
    assert_eq!((out.len(), replies), (5, 2));
    assert_eq!(h.heard::<KeepaliveReply>().len(), 2);
    let store = h.app.world().resource::<DiagnosticsStore>();
    let value = |p: &DiagnosticPath| -> f64 { store.get(p).and_then(|d| d.value()).unwrap() };
    assert_eq!(
        value(&diagnostics::FRAMES_OUT),
        6.0,
        "the login and those five"
    );
    assert_eq!(
        value(&diagnostics::FRAMES_IN),
        3.0,
        "the login reply and two replies"
    );
}

#[test]
fn the_frame_limit_is_exact_through_the_plugin() {
    let mut h = ImTestApp::memory(config(Dialect::Seed));
    h.login("alice");
    h.wire();
    let base = Frame::data("alice", "bob", "", false, None, 0)
        .to_json()
        .len();
    let sized = |n: usize| Outgoing::new("bob", "z".repeat(n - base)).qos(false);
    let (fits, over) = (sized(MAX_FRAME_BYTES), sized(MAX_FRAME_BYTES + 1));
    assert_eq!(
        h.run(move |mut im: ImClient| im.send(fits.clone())),
        Ok(None)
    );
    assert_eq!(
        h.run(move |mut im: ImClient| im.send(over.clone())),
        Err(SendError::TooLarge {
            len: MAX_FRAME_BYTES + 1,
            limit: MAX_FRAME_BYTES
        })
    );
    h.steps(2);
    let sent: Vec<usize> = h.peer().take_sent().iter().map(String::len).collect();
    assert_eq!(sent, [MAX_FRAME_BYTES]);
    assert_eq!(
        h.heard::<SendResult>(),
        [SendResult {
            client: h.client(),
            fp: None,
            code: ResultCode::Ok
        }]
    );
}

#[test]
fn im_has_pending_and_the_relogin_count_follow_the_session() {
    #[derive(Resource, Default)]
    struct PendingFrames(u32);
    // Upstream's schedule: the first re-login attempt at once, then every 3 s.
    let mut h =
        ImTestApp::memory(config(Dialect::MobileImSdkV6).relogin(Some(ReloginPolicy::UPSTREAM)));
    h.app.init_resource::<PendingFrames>().add_systems(
        Update,
        (|mut n: ResMut<PendingFrames>| n.0 += 1).run_if(im_has_pending),
    );
    let pending_frames = |h: &ImTestApp| h.app.world().resource::<PendingFrames>().0;
    h.login("alice");
    h.steps(2);
    assert_eq!(pending_frames(&h), 0);
    let fp = h
        .run(|mut im: ImClient| im.send(Outgoing::new("bob", "x")))
        .unwrap()
        .unwrap();
    h.steps(3);
    assert_eq!(pending_frames(&h), 3, "every frame while the message waits");
    h.push(Frame::server_ack(
        Dialect::MobileImSdkV6,
        "bob",
        "alice",
        &fp,
    ));
    h.step();
    assert_eq!(pending_frames(&h), 3, "the ACK is read before Update");
    h.run(|mut im: ImClient| im.send(Outgoing::new("bob", "y").qos(false)).unwrap());
    h.steps(3);
    assert_eq!(
        pending_frames(&h),
        3,
        "a message without QoS is never pending"
    );

    let relogins = |h: &ImTestApp| -> f64 {
        h.app
            .world()
            .resource::<DiagnosticsStore>()
            .get(&diagnostics::RELOGINS)
            .and_then(|d| d.value())
            .unwrap()
    };
    assert_eq!(relogins(&h), 0.0);
    h.peer().refuse_connects(true);
    h.peer().drop_link();
    h.steps(2);
    assert_eq!(relogins(&h), 1.0, "the first attempt, at once");
    // The refusal was read: the next attempt 3 s later (upstream's fixed delay).
    let due = h
        .core()
        .relogin()
        .due()
        .expect("the next attempt is scheduled");
    assert_eq!(due - h.now(), std::time::Duration::from_secs(3));
    for _ in 0..5 {
        if h.peer().connects().len() == 3 {
            break;
        }
        h.advance_to_next_deadline();
    }
    assert_eq!((h.peer().connects().len(), h.now()), (3, due));
    h.step();
    assert_eq!(relogins(&h), 2.0);
    h.peer().refuse_connects(false);
    for _ in 0..5 {
        if h.peer().connects().len() == 4 {
            break;
        }
        h.advance_to_next_deadline();
    }
    h.step();
    assert_eq!(h.peer().connects().len(), 4);
    assert_eq!(relogins(&h), 3.0);
    h.wire();
    h.push(Frame::login_response(
        "alice",
        &LoginResponse {
            code: 0,
            first_login_time: 1,
            ext: Vec::new(),
        },
    ));
    h.steps(50);
    assert!(h.core().is_logged_in());
    assert_eq!(relogins(&h), 3.0, "a session that holds adds none");
    assert_eq!(
        h.heard::<ReloginStarted>()
            .iter()
            .map(|r| r.attempt)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(h.peer().connects().len(), 4);
}

#[test]
fn a_login_that_never_opens_is_a_link_error_at_the_login_timeout() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.peer().hold_connects(true);
    let asked_at = h.now();
    h.run(|mut im: ImClient| im.login(LoginRequest::new("alice", "t")).unwrap());
    h.step();
    assert_eq!(h.peer().connects().len(), 1);
    assert_eq!(
        h.advance_to_next_deadline(),
        Some(std::time::Duration::from_secs(10) - STEP),
        "10 s from the login"
    );
    assert_eq!(h.now() - asked_at, std::time::Duration::from_secs(10));
    h.step();
    assert_eq!(
        h.heard::<LinkError>(),
        [LinkError {
            client: h.client(),
            error: TransportError::TimedOut(std::time::Duration::from_secs(10)),
        }]
    );
    assert_eq!(
        h.heard::<LoginFailed>(),
        [LoginFailed {
            client: h.client(),
            code: ResultCode::BadConnectToServer,
            relogin: false,
        }]
    );
    assert!(h.heard::<LinkClosed>().is_empty(), "never logged in");
}

#[test]
fn a_corrupt_frame_is_reported_and_the_session_survives() {
    let mut h = ImTestApp::memory(config(Dialect::Seed));
    h.login("alice");
    h.peer().corrupt_next();
    h.push(Frame::data("bob", "alice", "x", false, None, 0));
    h.step();
    assert_eq!(h.heard::<BadFrame>().len(), 1);
    assert!(h.core().is_logged_in());
}

#[test]
fn the_plugin_can_take_its_config_from_a_resource() {
    let (t, peer) = bevy_im::transport::MemoryTransport::pair();
    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .insert_resource(TimeUpdateStrategy::ManualDuration(STEP))
        .insert_resource(ImConfig::new("mem://from-resource").dialect(Dialect::MobileImSdkV6))
        .add_plugins(ImClientPlugin::from_resource().with_transport(t));
    app.update();
    app.world_mut()
        .run_system_once(|mut im: ImClient| im.login(LoginRequest::new("alice", "t")))
        .unwrap()
        .unwrap();
    app.update();
    assert_eq!(peer.connects()[0].1, "mem://from-resource");
    // The client core itself runs with the resource's dialect.
    let dialect = app
        .world_mut()
        .run_system_once(|im: ImClient| im.core().config().dialect)
        .unwrap();
    assert_eq!(dialect, Dialect::MobileImSdkV6);
}

#[test]
fn nothing_from_a_link_the_client_let_go_reaches_the_game() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.login("alice");
    h.heard::<LoginSucceeded>();
    // A kickout and then data arrive in one batch: the data is not delivered.
    h.push(Frame::kickout(
        Dialect::MobileImSdkV6,
        "alice",
        &KickoutInfo {
            code: 1,
            reason: None,
        },
    ));
    h.push(Frame::data("bob", "alice", "late", false, None, 0));
    h.step();
    assert_eq!(h.heard::<Kicked>().len(), 1);
    assert!(h.heard::<DataReceived>().is_empty());

    // A new login is asked for while the old link still delivers: nothing from the
    // old link counts, and the new link gets the login frame.
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.login("alice");
    h.heard::<LoginSucceeded>();
    h.run(|mut im: ImClient| im.login(LoginRequest::new("alice", "token")).unwrap());
    h.push(Frame::data("bob", "alice", "old link", false, None, 0));
    h.step();
    assert!(h.heard::<DataReceived>().is_empty());
    assert_eq!(h.peer().connects().len(), 2);
    h.step();
    let sent = h.wire();
    assert!(sent.iter().any(|f| f.ty == wire::LOGIN), "{sent:?}");
}

/// Field report: valid JSON whose text holds a lone UTF-16 surrogate. The message is
/// delivered with U+FFFD in its place and ACKed, not refused as a bad frame.
#[test]
fn text_with_a_lone_surrogate_is_delivered_lossily_and_acked() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.login("alice");
    h.wire();
    assert!(h.peer().push_text(
        r#"{"bridge":false,"type":2,"dataContent":"half \ud83d here","from":"bob","to":"alice","fp":"fp-1","QoS":true,"typeu":0,"sm":-1}"#
    ));
    h.steps(2);
    let got = h.heard::<DataReceived>();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].content, "half \u{FFFD} here");
    let acks: Vec<Frame> = h
        .wire()
        .into_iter()
        .filter(|f| f.ty == wire::RECEIVED)
        .collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].content(), "fp-1");
    assert!(h.heard::<BadFrame>().is_empty());
}

/// Field report: numbers as strings in a login reply (as web servers send them).
#[test]
fn a_login_reply_with_numbers_as_strings_logs_in() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.run(|mut im: ImClient| im.login(LoginRequest::new("alice", "t")).unwrap());
    h.steps(2);
    h.wire();
    assert!(h.peer().push_text(
        r#"{"bridge":false,"type":"50","dataContent":"{\"code\":\"0\",\"firstLoginTime\":\"17\"}","from":0,"to":"alice","QoS":"false","typeu":-1,"sm":-1}"#
    ));
    h.steps(2);
    let ok = h.heard::<LoginSucceeded>();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].first_login_time, 17);
    assert!(h.core().is_logged_in());
}

fn writes_of(h: &ImTestApp, fp: &str) -> usize {
    h.wire()
        .iter()
        .filter(|f| f.fp.as_deref() == Some(fp))
        .count()
}

/// Field report: a message never ACKed went out four times (original, re-login
/// flush, two timed resends). The re-login flush is a resend: three writes at most.
#[test]
fn an_unacked_message_is_written_three_times_at_most_across_a_relogin() {
    let mut h = ImTestApp::memory(config(Dialect::MobileImSdkV6));
    h.login("alice");
    let fp = h
        .run(|mut im: ImClient| im.send(Outgoing::new("bob", "x")).unwrap())
        .unwrap();
    h.step();
    let mut writes = writes_of(&h, &fp);
    assert_eq!(writes, 1);
    h.peer().drop_link();
    h.steps(2);
    assert!(h.peer().connects().len() == 2, "re-login started");
    h.push(Frame::login_response(
        "alice",
        &LoginResponse {
            code: 0,
            first_login_time: 1,
            ext: Vec::new(),
        },
    ));
    h.step();
    writes += writes_of(&h, &fp);
    assert_eq!(writes, 2, "the re-login wrote it again, as resend 1");
    let mut lost = Vec::new();
    for _ in 0..200 {
        h.step();
        writes += writes_of(&h, &fp);
        lost.extend(h.heard::<MessagesLost>());
        if !lost.is_empty() {
            break;
        }
    }
    assert_eq!(lost.len(), 1);
    assert_eq!(writes, 3, "the send and two resends, never a fourth");
}
