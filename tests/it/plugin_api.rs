//! The game-facing API of the plugin: connection states, observers, typed payloads,
//! sending during a re-login, re-login limits and fresh tokens, several clients in
//! one app. Headless, hand-driven time, through the crate's test kit.
#![cfg(feature = "testing")]

use bevy::prelude::*;
use bevy_im::client::PayloadError;
use bevy_im::prelude::*;
use bevy_im::protocol::{Frame, KickoutInfo, LoginResponse, wire};
use bevy_im::testing::ImTestApp;

fn config() -> ImConfig {
    let mut c = ImConfig::new("mem://server").dialect(Dialect::MobileImSdkV6);
    c.client.jitter_seed = Some(5);
    c
}

fn state(t: &ImTestApp) -> ImConnection {
    *t.app.world().resource::<State<ImConnection>>().get()
}

/// Every `ImConnection` the app entered, in order.
#[derive(Resource, Default)]
struct Entered(Vec<ImConnection>);

fn track_entries(app: &mut App) {
    app.init_resource::<Entered>();
    for s in [
        ImConnection::Offline,
        ImConnection::Connecting,
        ImConnection::LoggedIn,
        ImConnection::Relogging,
        ImConnection::Kicked,
    ] {
        app.add_systems(OnEnter(s), move |mut e: ResMut<Entered>| e.0.push(s));
    }
}

#[test]
fn the_connection_is_a_bevy_state_that_follows_the_session() {
    let mut t = ImTestApp::memory(config());
    track_entries(&mut t.app);
    assert_eq!(state(&t), ImConnection::Offline);

    // A marker that lives only while logged in.
    #[derive(Component)]
    struct OnlineBadge;
    t.app
        .add_systems(OnEnter(ImConnection::LoggedIn), |mut commands: Commands| {
            commands.spawn((OnlineBadge, DespawnOnExit(ImConnection::LoggedIn)));
        });
    let badges = |t: &mut ImTestApp| {
        t.app
            .world_mut()
            .query::<&OnlineBadge>()
            .iter(t.app.world())
            .count()
    };

    t.login("alice");
    assert_eq!(state(&t), ImConnection::LoggedIn);
    assert_eq!(badges(&mut t), 1);

    // The link drops: re-logging in, and the badge is gone.
    t.peer().drop_link();
    t.step();
    assert_eq!(state(&t), ImConnection::Relogging);
    assert_eq!(badges(&mut t), 0);
    // The re-login succeeds.
    t.step();
    t.wire();
    t.push(Frame::login_response(
        "alice",
        &LoginResponse {
            code: 0,
            first_login_time: 1,
            ext: Vec::new(),
        },
    ));
    t.step();
    assert_eq!(state(&t), ImConnection::LoggedIn);

    // Kicked out: Kicked, and it stays so.
    t.push(Frame::kickout(
        Dialect::MobileImSdkV6,
        "alice",
        &KickoutInfo {
            code: 1,
            reason: Some("another device".into()),
        },
    ));
    t.steps(3);
    assert_eq!(state(&t), ImConnection::Kicked);
    t.run(|mut im: ImClient| im.logout());
    t.step();
    assert_eq!(state(&t), ImConnection::Offline);

    assert_eq!(
        t.app.world().resource::<Entered>().0,
        [
            ImConnection::Connecting,
            ImConnection::LoggedIn,
            ImConnection::Relogging,
            ImConnection::LoggedIn,
            ImConnection::Kicked,
            ImConnection::Offline,
        ]
    );
    // The run conditions still agree with the state.
    assert!(!t.run(im_logged_in));
}

#[test]
fn every_message_can_also_be_observed() {
    #[derive(Resource, Default)]
    struct Observed(Vec<String>);
    let mut t = ImTestApp::memory(config());
    t.app
        .init_resource::<Observed>()
        .add_observer(|ev: On<LoginSucceeded>, mut o: ResMut<Observed>| {
            o.0.push(format!("login {}", ev.user_id));
        })
        .add_observer(|ev: On<DataReceived>, mut o: ResMut<Observed>| {
            o.0.push(format!("data {}", ev.content));
        })
        .add_observer(|ev: On<MessageDelivered>, mut o: ResMut<Observed>| {
            o.0.push(format!("delivered {}", ev.fp));
        });
    t.login("alice");
    t.deliver("bob", "hello");
    let fp = t
        .run(|mut im: ImClient| im.send(Outgoing::new("bob", "hi")))
        .unwrap()
        .unwrap();
    t.step();
    t.ack_all();
    let observed = &t.app.world().resource::<Observed>().0;
    assert_eq!(
        observed,
        &[
            "login alice".to_owned(),
            "data hello".into(),
            format!("delivered {fp}")
        ]
    );
    // The same events also arrived as messages, each naming the client.
    let client = t.client();
    assert!(t.heard::<DataReceived>().iter().all(|d| d.client == client));
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
struct Move {
    x: f32,
    y: f32,
}

impl TypedMessage for Move {
    const TYPEU: i32 = 7;
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
struct Chat {
    text: String,
}

impl TypedMessage for Chat {
    const TYPEU: i32 = 8;
}

#[test]
fn typed_payloads_travel_as_json_with_their_typeu() {
    let mut t = ImTestApp::memory(config());
    t.login("alice");
    t.run(|mut im: ImClient| {
        im.send_typed("bob", &Move { x: 1.5, y: -2.0 }).unwrap();
        im.send_json("bob", &Chat { text: "gg".into() }).unwrap();
    });
    t.step();
    let sent = t.wire();
    assert_eq!(sent[0].typeu, 7);
    assert_eq!(sent[0].content(), r#"{"x":1.5,"y":-2.0}"#);
    assert_eq!(sent[1].typeu, 0, "send_json keeps typeu 0");

    // Bob's side: route by type, no string matching.
    for frame in sent {
        let mut back = frame.clone();
        back.from = Some("bob".into());
        back.to = Some("alice".into());
        t.push(back);
    }
    t.push(Frame::data("bob", "alice", "not json", true, None, 7));
    t.steps(2);
    let got = t.heard::<DataReceived>();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].parse::<Move>(), Some(Ok(Move { x: 1.5, y: -2.0 })));
    assert_eq!(got[0].parse::<Chat>(), None, "another type's typeu");
    assert_eq!(got[1].parse_json::<Chat>(), Ok(Chat { text: "gg".into() }));
    assert!(matches!(
        got[2].parse::<Move>(),
        Some(Err(PayloadError::Json(_)))
    ));
}

#[test]
fn a_hundred_messages_sent_while_relogging_arrive_once_in_order() {
    let mut t = ImTestApp::memory(config());
    t.login("alice");
    t.heard::<LoginSucceeded>();
    // The link drops and the server is unreachable for a while.
    t.peer().refuse_connects(true);
    t.peer().drop_link();
    t.step();
    assert_eq!(state(&t), ImConnection::Relogging);
    let fps: Vec<String> = t.run(|mut im: ImClient| {
        (0..100)
            .map(|i| {
                im.send(Outgoing::new("bob", format!("m{i}")))
                    .expect("queued during the re-login")
                    .unwrap()
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(t.run(|im: ImClient| im.pending_count()), 100);
    t.steps(5);
    assert!(t.wire().is_empty(), "nothing written while down");
    assert!(t.heard::<SendResult>().is_empty());

    // The server is back: the next attempt logs in and the 100 go out in order.
    t.peer().refuse_connects(false);
    let mut logged_in = false;
    for _ in 0..100 {
        t.advance_to_next_deadline();
        if t.peer().is_open() {
            t.step();
            let sent = t.wire();
            assert!(sent.iter().any(|f| f.ty == wire::LOGIN));
            t.push(Frame::login_response(
                "alice",
                &LoginResponse {
                    code: 0,
                    first_login_time: 1,
                    ext: Vec::new(),
                },
            ));
            t.step();
            logged_in = true;
            break;
        }
    }
    assert!(logged_in);
    let acked = t.ack_all();
    assert_eq!(acked, fps, "all 100, once, in the order they were sent");
    t.step();
    let mut delivered: Vec<String> = t
        .heard::<MessageDelivered>()
        .into_iter()
        .map(|d| d.fp)
        .collect();
    assert_eq!(delivered.len(), 100);
    delivered.dedup();
    assert_eq!(delivered, fps);
    assert!(t.heard::<MessagesLost>().is_empty());
    assert_eq!(t.run(|im: ImClient| im.pending_count()), 0);
}

#[test]
fn a_hundred_messages_sent_while_relogging_are_lost_once_if_the_link_never_returns() {
    let mut t = ImTestApp::memory(config());
    t.login("alice");
    t.peer().refuse_connects(true);
    t.peer().drop_link();
    t.step();
    let fps: Vec<String> = t.run(|mut im: ImClient| {
        (0..100)
            .map(|i| {
                im.send(Outgoing::new("bob", format!("m{i}")))
                    .unwrap()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    });
    let mut lost = Vec::new();
    for _ in 0..200 {
        t.advance_to_next_deadline();
        t.step();
        lost.extend(t.heard::<MessagesLost>().into_iter().flat_map(|l| l.frames));
        if lost.len() >= 100 {
            break;
        }
    }
    let lost: Vec<String> = lost.into_iter().filter_map(|f| f.fp).collect();
    assert_eq!(lost, fps, "each reported lost exactly once, in order");
    assert!(t.heard::<MessageDelivered>().is_empty());
    t.steps(200);
    assert!(
        t.heard::<MessagesLost>().is_empty(),
        "never a second outcome"
    );
}

#[test]
fn a_refused_relogin_stops_until_the_game_gives_a_fresh_token() {
    let mut t = ImTestApp::memory(config());
    t.login("alice");
    t.peer().drop_link();
    t.step();
    // The first attempt, within the re-login spread.
    t.advance_to_next_deadline();
    t.steps(2);
    assert!(t.wire().iter().any(|f| f.ty == wire::LOGIN));
    // The token expired: the server refuses the re-login.
    t.push(Frame::login_response(
        "alice",
        &LoginResponse {
            code: 1100,
            first_login_time: -1,
            ext: Vec::new(),
        },
    ));
    t.steps(2);
    let client = t.client();
    assert_eq!(
        t.heard::<ReloginStopped>(),
        [ReloginStopped {
            client,
            reason: ReloginStop::Refused(ResultCode::Other(1100)),
        }]
    );
    assert_eq!(state(&t), ImConnection::Offline);
    let connects = t.peer().connects().len();
    for _ in 0..5 {
        t.advance_to_next_deadline();
    }
    t.steps(400);
    assert_eq!(
        t.peer().connects().len(),
        connects,
        "no retry with the same token"
    );

    // A fresh token: re-login starts again at once and succeeds.
    t.run(|mut im: ImClient| im.set_token("fresh"));
    t.steps(2);
    let login = t
        .wire()
        .into_iter()
        .find(|f| f.ty == wire::LOGIN)
        .expect("a new login");
    assert!(login.content().contains(r#""loginToken":"fresh""#));
    t.push(Frame::login_response(
        "alice",
        &LoginResponse {
            code: 0,
            first_login_time: 1,
            ext: Vec::new(),
        },
    ));
    t.steps(2);
    let ok = t.heard::<LoginSucceeded>();
    assert!(ok.last().is_some_and(|l| l.relogin));
    assert_eq!(state(&t), ImConnection::LoggedIn);
}

#[test]
fn relogin_gives_up_after_its_attempt_limit() {
    let mut c = config();
    c.client.relogin_limits.max_attempts = Some(3);
    let mut t = ImTestApp::memory(c);
    t.login("alice");
    t.peer().refuse_connects(true);
    t.peer().drop_link();
    let mut stopped = Vec::new();
    for _ in 0..50 {
        if t.advance_to_next_deadline().is_none() {
            t.step();
        }
        stopped.extend(t.heard::<ReloginStopped>());
        if !stopped.is_empty() {
            break;
        }
    }
    assert_eq!(
        stopped.iter().map(|s| s.reason).collect::<Vec<_>>(),
        [ReloginStop::AttemptsExhausted]
    );
    let started = t.heard::<ReloginStarted>();
    assert_eq!(
        started.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(t.peer().connects().len(), 1 + 3);
    assert_eq!(state(&t), ImConnection::Offline);
}

#[test]
fn the_state_and_messages_are_reflected_for_inspectors() {
    use bevy::reflect::{ReflectRef, TypeRegistry};
    let t = ImTestApp::memory(config());
    let registry = t.app.world().resource::<AppTypeRegistry>().read();
    let registered = |r: &TypeRegistry, id| r.get(id).is_some();
    assert!(registered(
        &registry,
        std::any::TypeId::of::<ImConnection>()
    ));
    assert!(registered(
        &registry,
        std::any::TypeId::of::<DataReceived>()
    ));
    assert!(registered(
        &registry,
        std::any::TypeId::of::<MessagesLost>()
    ));
    // A message reads field by field, as an inspector shows it.
    let msg = DataReceived {
        client: Entity::PLACEHOLDER,
        fp: None,
        from: "bob".into(),
        content: "gg".into(),
        typeu: 3,
        room: Some("lobby".into()),
        mid: Some(12),
        sent_at_ms: Some(1_795_643_500_123),
    };
    let ReflectRef::Struct(fields) = msg.reflect_ref() else {
        panic!("a struct");
    };
    assert_eq!(
        fields
            .field("content")
            .and_then(|f| f.try_downcast_ref::<String>()),
        Some(&"gg".to_owned())
    );
}

/// Runs `updates` updates, answering every keepalive, and returns the frames written
/// meanwhile with the time each was seen at.
fn run_answering_keepalives(
    t: &mut ImTestApp,
    updates: usize,
) -> Vec<(std::time::Duration, Frame)> {
    let mut seen = Vec::new();
    for _ in 0..updates {
        t.step();
        let now = t.now();
        for f in t.wire() {
            if f.ty == wire::KEEP_ALIVE {
                t.push(Frame::keepalive_response("alice"));
            }
            seen.push((now, f));
        }
    }
    seen
}

#[test]
fn the_config_builders_reach_the_client_and_change_what_it_does() {
    use bevy_im::client::{DedupConfig, QosSendConfig};
    use std::time::Duration;
    let secs = Duration::from_secs;
    let mut c = ImConfig::new("mem://server")
        .dialect(Dialect::MobileImSdkV6)
        .sense_mode(SenseMode::Mode3s)
        .qos(QosSendConfig {
            resend_after: secs(1),
            max_resends: 1,
            lost_after: secs(2),
            ..QosSendConfig::default()
        })
        .dedup(DedupConfig {
            window: secs(30),
            max_entries: 2,
        })
        .max_frame_bytes(600)
        .connect_timeout(secs(2))
        .room_request_timeout(secs(4));
    c.inbox_capacity = 2;
    let mut t = ImTestApp::memory(c.clone());
    assert_eq!(*t.app.world().resource::<ImConfig>(), c);
    assert_eq!(t.core().config(), &c.client);
    assert_eq!(
        (
            c.transport.connect_timeout,
            c.transport.max_frame_bytes,
            c.client.max_frame_bytes,
            c.client.room_request_timeout,
        ),
        (secs(2), 600, 600, secs(4))
    );
    t.login("alice");
    let logged_in = t.now();

    // sense_mode(Mode3s): the first keepalive 3 s after the login, not 5 s.
    let first_keepalive = run_answering_keepalives(&mut t, 40)
        .into_iter()
        .find(|(_, f)| f.ty == wire::KEEP_ALIVE)
        .map(|(at, _)| at - logged_in)
        .expect("a keepalive within 4 s");
    assert_eq!(first_keepalive, secs(3));

    // qos(..): one resend 1 s after the send, lost 2 s after it.
    let sent_at = t.now();
    let fp = t
        .run(|mut im: ImClient| im.send(Outgoing::new("bob", "anyone?")))
        .unwrap()
        .unwrap();
    let mut writes = Vec::new();
    let mut lost_at = None;
    for _ in 0..60 {
        for (at, f) in run_answering_keepalives(&mut t, 1) {
            if f.fp.as_deref() == Some(&*fp) {
                writes.push(at - sent_at);
            }
        }
        if !t.heard::<MessagesLost>().is_empty() {
            lost_at = Some(t.now() - sent_at);
            break;
        }
    }
    assert_eq!(writes, [secs(0) + t_step(), secs(1)]);
    // Lost in the tick at 3 s; the game hears it in the next update.
    assert_eq!(lost_at, Some(secs(3) + t_step()));

    // max_frame_bytes(600): a frame of exactly 600 bytes is written, 601 is refused.
    let base = Frame::data("alice", "bob", "", false, None, 0)
        .to_json()
        .len();
    let sized = |n: usize| Outgoing::new("bob", "z".repeat(n - base)).qos(false);
    let (fits, over) = (sized(600), sized(601));
    assert_eq!(
        t.run(move |mut im: ImClient| im.send(fits.clone())),
        Ok(None)
    );
    assert_eq!(
        t.run(move |mut im: ImClient| im.send(over.clone())),
        Err(SendError::TooLarge {
            len: 601,
            limit: 600
        })
    );
    t.step();
    let written: Vec<usize> = t
        .wire()
        .iter()
        .filter(|f| f.ty == wire::COMMON_DATA)
        .map(|f| f.to_json().len())
        .collect();
    assert_eq!(written, [600]);

    // dedup(window 30 s, at most 2): a third fingerprint pushes the first out.
    let copy = |fp: &str, n: u32| {
        Frame::data("bob", "alice", format!("{fp}{n}"), true, Some(fp.into()), 0)
    };
    for (n, fp) in ["a", "b", "c", "a", "c"].into_iter().enumerate() {
        t.push(copy(fp, n as u32));
    }
    t.step();
    let contents = |t: &mut ImTestApp| -> Vec<String> {
        t.heard::<DataReceived>()
            .into_iter()
            .map(|d| d.content)
            .collect()
    };
    assert_eq!(
        contents(&mut t),
        ["a0", "b1", "c2", "a3"],
        "a was forgotten at 2 entries"
    );
    // The window: c, seen 29 s ago, is still a duplicate; a is forgotten at 30 s.
    run_answering_keepalives(&mut t, 290);
    t.push(copy("c", 5));
    t.step();
    assert!(contents(&mut t).is_empty(), "c is within 30 s");
    run_answering_keepalives(&mut t, 9);
    t.push(copy("a", 6));
    t.step();
    assert_eq!(contents(&mut t), ["a6"], "a again after 30 s");

    // inbox_capacity = 2: of the five deliveries the inbox kept the last two, over
    // the 300 updates in which the game did not drain it.
    let (kept, overflowed) = t.run(|mut im: ImClient| {
        let mut client = im.get();
        let inbox = client.inbox();
        let overflowed = inbox.overflowed();
        let kept: Vec<String> = inbox.drain().map(|d| d.content).collect();
        (kept, overflowed)
    });
    assert_eq!(kept, ["a3", "a6"]);
    assert_eq!(overflowed, 3);
}

/// One update's worth of time, as the test kit steps.
fn t_step() -> std::time::Duration {
    bevy_im::testing::STEP
}

#[test]
fn relogin_none_and_auto_relogin_false_mean_no_relogin_after_a_lost_link() {
    let by_builder = config().relogin(None);
    assert!(!by_builder.client.auto_relogin);
    let mut by_field = config();
    by_field.client.auto_relogin = false;
    for (name, c) in [
        ("relogin(None)", by_builder),
        ("auto_relogin = false", by_field),
    ] {
        let mut t = ImTestApp::memory(c);
        t.login("alice");
        t.heard::<LoginSucceeded>();
        t.peer().drop_link();
        t.step();
        assert_eq!(t.heard::<LinkClosed>().len(), 1, "{name}");
        for _ in 0..5 {
            t.advance_to_next_deadline();
        }
        t.steps(400);
        assert_eq!(t.peer().connects().len(), 1, "{name}: no reconnect");
        assert!(t.heard::<ReloginStarted>().is_empty(), "{name}");
        assert_eq!(state(&t), ImConnection::Offline, "{name}");
        assert_eq!(t.core().poll_timeout(), None, "{name}: nothing scheduled");
        // The game can still log in again by hand.
        t.login("alice");
        assert_eq!(t.peer().connects().len(), 2, "{name}");
    }

    // relogin(Some(policy)) keeps re-login on, with that policy's delays.
    let mut c = config().relogin(Some(ReloginPolicy::Fixed(std::time::Duration::from_secs(
        7,
    ))));
    c.client.relogin_spread = std::time::Duration::ZERO;
    let mut t = ImTestApp::memory(c);
    t.login("alice");
    t.peer().refuse_connects(true);
    t.peer().drop_link();
    t.step();
    assert_eq!(t.peer().connects().len(), 2, "the first attempt at once");
    t.step(); // its refusal
    assert_eq!(
        t.advance_to_next_deadline(),
        Some(std::time::Duration::from_secs(7))
    );
    assert_eq!(t.peer().connects().len(), 3, "the second 7 s later");
}
