//! The plugin over real sockets on 127.0.0.1 against the reference server in the
//! same process. The apps run on the real clock (`TimeUpdateStrategy::Automatic`), as
//! the server does: the client's login timeout, keepalive and dead-link timers run at
//! the server's speed, so a slow machine makes the test slower, never wrong. Every
//! wait ends on an event, bounded in real time; none sleeps for a timer.
#![cfg(all(feature = "server", feature = "testing", not(target_arch = "wasm32")))]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bevy::ecs::system::RunSystemOnce;
use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_im::client::QosSendConfig;
use bevy_im::prelude::*;
use bevy_im::server::{
    AcceptAll, RateLimit, RunningServer, ServerConfig, TlsConfig, spawn_background,
};
use bevy_im::testing::ImTestApp;

/// Everything a client app heard, in order.
#[derive(Resource, Default, Debug)]
struct Heard {
    logins: Vec<LoginSucceeded>,
    data: Vec<DataReceived>,
    delivered: Vec<String>,
    lost: Vec<String>,
    throttled: Vec<SendThrottled>,
    server_errors: usize,
    closed: usize,
}

fn listen(
    mut heard: ResMut<Heard>,
    mut ok: MessageReader<LoginSucceeded>,
    mut data: MessageReader<DataReceived>,
    mut delivered: MessageReader<MessageDelivered>,
    mut lost: MessageReader<MessagesLost>,
    mut closed: MessageReader<LinkClosed>,
) {
    heard.logins.extend(ok.read().cloned());
    heard.data.extend(data.read().cloned());
    heard
        .delivered
        .extend(delivered.read().map(|m| m.fp.clone()));
    for m in lost.read() {
        heard
            .lost
            .extend(m.frames.iter().filter_map(|f| f.fp.clone()));
    }
    heard.closed += closed.read().count();
}

fn listen_for_refusals(
    mut heard: ResMut<Heard>,
    mut throttled: MessageReader<SendThrottled>,
    mut server_errors: MessageReader<ServerError>,
) {
    heard.throttled.extend(throttled.read().cloned());
    heard.server_errors += server_errors.read().count();
}

fn server_at(addr: SocketAddr, dialect: Dialect) -> RunningServer {
    server_with(ServerConfig {
        listen: addr,
        dialect,
        shutdown_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    })
}

fn server_with(config: ServerConfig) -> RunningServer {
    let addr = config.listen;
    // A restart may find the port briefly busy; retry for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match spawn_background(config.clone(), AcceptAll) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

fn client(url: &str, dialect: Dialect, user: &str) -> App {
    client_with(ImConfig::new(url).dialect(dialect), user)
}

/// An app on the real clock, logging in as `user`.
fn client_with(mut config: ImConfig, user: &str) -> App {
    config.client.jitter_seed = Some(9);
    let mut t = ImTestApp::connected(config);
    t.app.insert_resource(TimeUpdateStrategy::Automatic);
    t.app
        .init_resource::<Heard>()
        .add_systems(Update, (listen, listen_for_refusals));
    t.start_login(user, "token");
    t.app
}

/// How long a test waits for what should happen (real time).
const WAIT: Duration = Duration::from_secs(10);

/// Updates every app until `done` holds for all of them, for at most [`WAIT`].
fn pump(apps: &mut [&mut App], mut done: impl FnMut(&mut [&mut App]) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(apps) {
        assert!(Instant::now() < deadline, "timed out");
        update_all(apps);
    }
}

/// Updates every app at least `updates` times and until `until` has passed.
fn pump_past(apps: &mut [&mut App], updates: usize, until: Instant) {
    let mut n = 0;
    while n < updates || Instant::now() < until {
        update_all(apps);
        n += 1;
    }
}

fn update_all(apps: &mut [&mut App]) {
    for app in apps.iter_mut() {
        app.update();
    }
    std::thread::sleep(Duration::from_millis(1));
}

fn heard(app: &App) -> &Heard {
    app.world().resource::<Heard>()
}

fn send(app: &mut App, to: &str, text: &str) -> String {
    let (to, text) = (to.to_owned(), text.to_owned());
    app.world_mut()
        .run_system_once(move |mut im: ImClient| {
            im.send(Outgoing::new(to.clone(), text.clone())).unwrap()
        })
        .unwrap()
        .unwrap()
}

fn two_apps_chat_both_ways(dialect: Dialect) {
    let server = server_at("127.0.0.1:0".parse().unwrap(), dialect);
    let mut alice = client(&server.url(), dialect, "alice");
    let mut bob = client(&server.url(), dialect, "bob");
    pump(&mut [&mut alice, &mut bob], |a| {
        a.iter().all(|app| heard(app).logins.len() == 1)
    });
    let to_bob = send(&mut alice, "bob", "hi bob");
    let to_alice = send(&mut bob, "alice", "hi alice");
    pump(&mut [&mut alice, &mut bob], |a| {
        a.iter()
            .all(|app| heard(app).delivered.len() == 1 && heard(app).data.len() == 1)
    });
    assert_eq!(heard(&alice).delivered, std::slice::from_ref(&to_bob));
    assert_eq!(heard(&bob).delivered, std::slice::from_ref(&to_alice));
    let got = &heard(&bob).data[0];
    assert_eq!(
        (got.from.as_str(), got.content.as_str(), got.fp.as_deref()),
        ("alice", "hi bob", Some(&*to_bob))
    );
    let got = &heard(&alice).data[0];
    assert_eq!(
        (got.from.as_str(), got.content.as_str()),
        ("bob", "hi alice")
    );
    assert_eq!(server.handle().online_users().len(), 2);
    server.shutdown();
}

#[test]
fn two_apps_chat_both_ways_with_qos_in_the_seed_dialect() {
    two_apps_chat_both_ways(Dialect::Seed);
}

#[test]
fn two_apps_chat_both_ways_with_qos_in_the_v6_dialect() {
    two_apps_chat_both_ways(Dialect::MobileImSdkV6);
}

#[test]
fn throttled_messages_are_retried_until_delivered_without_a_server_error() {
    // A bucket of 5 with a fast refill: a burst of 30 messages is mostly refused
    // at first, and every refused one must still arrive, once.
    let server = server_with(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rate_limit: Some(RateLimit {
            per_second: 1000,
            burst: 5,
        }),
        ..ServerConfig::default()
    });
    // On the real clock the client's default back-off (0.5 s, doubled) would make the
    // six or so rounds of refusals take about ten seconds; 20 ms keeps it short. A
    // round lets at least the burst (5) through, so no message is refused more than
    // six times, within `max_throttled`.
    let qos = QosSendConfig {
        throttle_backoff: Duration::from_millis(20),
        ..QosSendConfig::default()
    };
    let mut alice = client_with(
        ImConfig::new(server.url()).dialect(Dialect::Seed).qos(qos),
        "alice",
    );
    let mut bob = client(&server.url(), Dialect::Seed, "bob");
    pump(&mut [&mut alice, &mut bob], |a| {
        a.iter().all(|app| heard(app).logins.len() == 1)
    });
    let sent: Vec<String> = (0..30)
        .map(|i| send(&mut alice, "bob", &format!("m{i}")))
        .collect();
    pump(&mut [&mut alice, &mut bob], |a| {
        heard(a[0]).delivered.len() + heard(a[0]).lost.len() == sent.len()
            && heard(a[1]).data.len() >= heard(a[0]).delivered.len()
    });
    let a = heard(&alice);
    assert!(a.lost.is_empty(), "lost: {:?}", a.lost);
    let mut delivered = a.delivered.clone();
    delivered.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(delivered, expected, "every message delivered once");
    let mut received: Vec<String> = heard(&bob)
        .data
        .iter()
        .filter_map(|d| d.fp.clone())
        .collect();
    received.sort();
    assert_eq!(received, expected, "bob got each message once");
    assert!(
        a.throttled
            .iter()
            .any(|t| t.fp.is_some() && t.retry_in.is_some()),
        "the burst was throttled: {:?}",
        a.throttled
    );
    assert_eq!(a.server_errors, 0, "throttling is not an error");
    server.shutdown();
}

/// How often `fp` is among `fps`.
fn count(fps: &[String], fp: &str) -> usize {
    fps.iter().filter(|f| *f == fp).count()
}

/// How many copies of `fp` the app received.
fn copies(app: &App, fp: &str) -> usize {
    heard(app)
        .data
        .iter()
        .filter(|d| d.fp.as_deref() == Some(fp))
        .count()
}

/// Exactly one outcome for `fp` at alice, at most one copy at bob, and exactly one
/// copy when alice heard it delivered (the server ACKs a relay once it is handed to
/// bob's socket or stored in his box, either of which reaches him).
fn one_outcome_and_no_duplicate(alice: &App, bob: &App, fp: &str) {
    let h = heard(alice);
    let outcomes = (count(&h.delivered, fp), count(&h.lost, fp));
    assert!(
        outcomes == (1, 0) || outcomes == (0, 1),
        "exactly one outcome (delivered, lost) for {fp}: {outcomes:?}, {h:?}"
    );
    let copies = copies(bob, fp);
    if outcomes.0 == 1 {
        assert_eq!(copies, 1, "a delivered message reached bob once");
    } else {
        assert!(copies <= 1, "never delivered twice: {copies}");
    }
}

#[test]
fn a_client_survives_a_server_restart_and_settles_what_was_pending() {
    let dialect = Dialect::MobileImSdkV6;
    let server = server_at("127.0.0.1:0".parse().unwrap(), dialect);
    let addr = server.local_addr();
    let url = server.url();
    // Alice's schedule for a QoS message is shortened to 3 s (resends at 1 s and 2 s,
    // the loss at 3 s), so that the test can outlast it.
    let qos = QosSendConfig {
        resend_after: Duration::from_secs(1),
        max_resends: 2,
        lost_after: Duration::from_secs(1),
        ..QosSendConfig::default()
    };
    let schedule = Duration::from_secs(3);
    let mut alice = client_with(ImConfig::new(&url).dialect(dialect).qos(qos), "alice");
    let mut bob = client(&url, dialect, "bob");
    pump(&mut [&mut alice, &mut bob], |a| {
        a.iter().all(|app| heard(app).logins.len() == 1)
    });

    // A message goes out in the same frame the server goes away: it may or may not
    // have reached bob; either way alice must hear exactly one outcome.
    let pending = send(&mut alice, "bob", "in flight");
    let sent_at = Instant::now();
    alice.update();
    server.shutdown();
    pump(&mut [&mut alice, &mut bob], |a| {
        a.iter().all(|app| heard(app).closed >= 1)
    });

    let server = server_at(addr, dialect);
    pump(&mut [&mut alice, &mut bob], |a| {
        a.iter().all(|app| heard(app).logins.len() == 2)
    });
    for app in [&alice, &bob] {
        let relogin = &heard(app).logins[1];
        assert!(relogin.relogin, "the second login is a re-login");
    }
    pump(&mut [&mut alice, &mut bob], |a| {
        let h = heard(a[0]);
        h.delivered.contains(&pending) || h.lost.contains(&pending)
    });
    if heard(&alice).delivered.contains(&pending) {
        // The ACK may come before bob's copy (from his box, after his login).
        pump(&mut [&mut alice, &mut bob], |a| copies(a[1], &pending) >= 1);
    }
    one_outcome_and_no_duplicate(&alice, &bob, &pending);

    // And the link works again, both ways.
    let after = send(&mut alice, "bob", "after the restart");
    pump(&mut [&mut alice, &mut bob], |a| {
        heard(a[0]).delivered.contains(&after) && copies(a[1], &after) >= 1
    });

    // Everything settled. Keep running past the end of alice's schedule for the
    // pending message (and 200 updates at least): a late resend, ACK or loss report
    // would show as a second copy or a second outcome.
    pump_past(
        &mut [&mut alice, &mut bob],
        200,
        sent_at + schedule + Duration::from_millis(500),
    );
    one_outcome_and_no_duplicate(&alice, &bob, &pending);
    one_outcome_and_no_duplicate(&alice, &bob, &after);
    assert_eq!(count(&heard(&alice).delivered, &after), 1);
    assert_eq!(heard(&alice).logins.len(), 2, "no further re-login");
    assert_eq!(heard(&bob).logins.len(), 2, "no further re-login");
    server.shutdown();
}

#[test]
fn the_development_certificate_carries_a_chat_over_wss() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/dev-tls");
    let server = spawn_background(
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: Some(TlsConfig::from_pem_files(
                format!("{dir}/localhost.cert.pem"),
                format!("{dir}/localhost.key.pem"),
            )),
            ..ServerConfig::default()
        },
        AcceptAll,
    )
    .unwrap();
    let url = server.url();
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    let pem = std::fs::read_to_string(format!("{dir}/localhost.cert.pem")).unwrap();
    let der = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .insert_resource(TimeUpdateStrategy::Automatic)
        .add_plugins(ImClientPlugin::new(
            ImConfig::new(url).trust_certificate(der),
        ))
        .init_resource::<Heard>()
        .add_systems(Update, (listen, listen_for_refusals));
    app.update();
    app.world_mut()
        .run_system_once(|mut im: ImClient| im.login(LoginRequest::new("alice", "t")).unwrap())
        .unwrap();
    pump(&mut [&mut app], |a| heard(a[0]).logins.len() == 1);
    let fp = send(&mut app, "alice", "over tls");
    pump(&mut [&mut app], |a| heard(a[0]).delivered.contains(&fp));
    assert_eq!(heard(&app).data[0].content, "over tls");
    server.shutdown();
}

#[test]
fn three_clients_in_one_app_chat_through_the_server() {
    let server = server_at("127.0.0.1:0".parse().unwrap(), Dialect::MobileImSdkV6);
    let config = ImConfig::new(server.url()).dialect(Dialect::MobileImSdkV6);
    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .insert_resource(TimeUpdateStrategy::Automatic)
        .add_plugins(ImClientPlugin::new(config.clone()));
    app.update();
    let primary = app
        .world_mut()
        .run_system_once(|im: ImClient| im.core().entity())
        .unwrap();
    let bots: Vec<Entity> = (0..2)
        .map(|_| ImClientBundle::new(config.clone()).spawn_in(app.world_mut()))
        .collect();
    let clients = [primary, bots[0], bots[1]];
    let users = ["ann", "ben", "cat"];
    for (entity, user) in clients.into_iter().zip(users) {
        app.world_mut()
            .run_system_once(move |mut all: ImClients| {
                all.get_mut(entity)
                    .unwrap()
                    .login(LoginRequest::new(user, "t"))
                    .unwrap()
            })
            .unwrap();
    }
    let logged_in = |app: &mut App| {
        app.world_mut()
            .run_system_once(|all: ImClients| all.iter().filter(|c| c.is_logged_in()).count())
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while logged_in(&mut app) < 3 {
        assert!(Instant::now() < deadline, "all three log in");
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    }
    // Everyone greets everyone else.
    for (i, from) in clients.into_iter().enumerate() {
        for (j, to) in users.into_iter().enumerate() {
            if i != j {
                app.world_mut()
                    .run_system_once(move |mut all: ImClients| {
                        all.get_mut(from)
                            .unwrap()
                            .send(Outgoing::new(to, format!("{i}->{j}")))
                            .unwrap()
                    })
                    .unwrap();
            }
        }
    }
    // Collect what each client entity received, by the `client` every message names.
    #[derive(Resource, Default)]
    struct Inboxes(Vec<(Entity, String, String)>, usize);
    app.init_resource::<Inboxes>().add_systems(
        Update,
        |mut data: MessageReader<DataReceived>,
         mut delivered: MessageReader<MessageDelivered>,
         mut inboxes: ResMut<Inboxes>| {
            for d in data.read() {
                inboxes
                    .0
                    .push((d.client, d.from.clone(), d.content.clone()));
            }
            inboxes.1 += delivered.read().count();
        },
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let inboxes = app.world().resource::<Inboxes>();
        if inboxes.0.len() == 6 && inboxes.1 == 6 {
            break;
        }
        assert!(Instant::now() < deadline, "six messages, six ACKs");
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut got = app.world().resource::<Inboxes>().0.clone();
    got.sort_by(|a, b| a.2.cmp(&b.2));
    let index = |e: Entity| clients.iter().position(|c| *c == e).unwrap();
    let got: Vec<(usize, String, String)> = got
        .into_iter()
        .map(|(e, from, content)| (index(e), from, content))
        .collect();
    let expected: Vec<(usize, String, String)> = [
        (1, "ann", "0->1"),
        (2, "ann", "0->2"),
        (0, "ben", "1->0"),
        (2, "ben", "1->2"),
        (0, "cat", "2->0"),
        (1, "cat", "2->1"),
    ]
    .into_iter()
    .map(|(i, f, c)| (i, f.to_owned(), c.to_owned()))
    .collect();
    assert_eq!(got, expected, "each message reached the right entity once");
    assert_eq!(server.handle().online_users().len(), 3);
    server.shutdown();
}

#[test]
fn logins_as_the_server_or_as_a_room_get_code_4_and_no_retry() {
    let server = server_at("127.0.0.1:0".parse().unwrap(), Dialect::MobileImSdkV6);
    for user in ["0", "#lobby"] {
        let mut t =
            ImTestApp::connected(ImConfig::new(server.url()).dialect(Dialect::MobileImSdkV6));
        // The real clock: the client's 10 s login timeout is real time too.
        t.app.insert_resource(TimeUpdateStrategy::Automatic);
        t.start_login(user, "token");
        let mut failed = Vec::new();
        let deadline = Instant::now() + WAIT;
        while failed.is_empty() && Instant::now() < deadline {
            t.update_until(1, |_| false);
            failed.extend(t.heard::<LoginFailed>());
        }
        assert!(!failed.is_empty(), "{user}: no LoginFailed");
        assert_eq!(failed.len(), 1, "{user}: {failed:?}");
        assert_eq!(failed[0].code, ResultCode::InvalidProtocol, "{user}");
        assert_eq!(failed[0].code.code(), 4);
        assert!(!failed[0].relogin);
        assert!(t.heard::<LoginSucceeded>().is_empty());
        // No retry: nothing is scheduled any more, nothing more is heard, and the
        // client stays offline.
        assert_eq!(t.core().poll_timeout(), None, "{user}: a timer is left");
        t.update_until(100, |_| false);
        assert!(t.heard::<LoginFailed>().is_empty(), "{user}");
        assert!(t.heard::<LoginSucceeded>().is_empty(), "{user}");
        assert_eq!(t.core().state(), ImConnection::Offline, "{user}");
    }
    assert!(server.handle().online_users().is_empty());
    server.shutdown();
}
