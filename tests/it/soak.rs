//! The soak: thousands of QoS messages between several plugin clients and the
//! `im-server` binary (file store), through a proxy that cuts links, stalls them past
//! both sides' keepalive timeouts and delays every chunk, with a `kill -9` of the
//! server and a restart on the same store file in the middle.
//!
//! Client and server share one clock here, the real one: the faults are what is
//! tested, and both sides' timers (the client's dead-link timeout and resends, the
//! server's read timeout and server-to-client resends) must fire inside the run.
//! Nothing sleeps for a timer: the loop updates the apps and injects faults by the
//! elapsed time.
//!
//! Checked per message, against the set of messages sent:
//! - every message the receiver got was sent, and it got it at most once;
//! - every message sent has exactly one outcome at its sender (delivered, lost or
//!   refused);
//! - every message ACKed as stored was received; every message ACKed as relayed was
//!   received, except, with upstream's relay ACK (sent when the message is handed to
//!   the receiver's link), one relayed in the seconds before the kill: the
//!   server-to-client QoS of a message lives in the server's memory, and a crash
//!   loses the resends of what it relayed just before. With `--ack-on-receipt` there
//!   is no exception;
//! - most messages are delivered and received (a run that loses everything fails).
#![cfg(all(unix, feature = "server", feature = "testing"))]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::proxy::Proxy;
use bevy::time::TimeUpdateStrategy;
use bevy_im::client::SenseMode;
use bevy_im::prelude::*;
use bevy_im::testing::ImTestApp;

/// The server's process, killed when dropped (a failing test leaves none behind).
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `im-server` on `store`, listening on `listen` (port 0: any); returns the process
/// and the address it listens on.
fn start_server(
    store: &std::path::Path,
    listen: &str,
    ack_on_receipt: bool,
) -> (ServerProcess, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-server"));
    if ack_on_receipt {
        child.arg("--ack-on-receipt");
    }
    let mut child = child
        .args(["--listen", listen, "--dialect", "mobileimsdk-v6"])
        .args([
            "--sense-mode",
            "3s",
            "--rate-limit",
            "0",
            "--user-rate-limit",
            "0",
        ])
        .arg("--store")
        .arg(store)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start im-server");
    let stderr = child.stderr.take().unwrap();
    let child = ServerProcess(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("ws://") {
                let url = line[i + 5..].split(['/', ' ']).next().unwrap_or("");
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("im-server logs its URL");
    (child, addr.parse().expect("an address"))
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    logins: usize,
    logged_in: bool,
    /// (sender, fp) of every message received, in order.
    received: Vec<(String, String)>,
    /// fp → (stored, when) of each delivery report.
    delivered: HashMap<String, Vec<(bool, Duration)>>,
    lost: HashMap<String, usize>,
    refused: HashMap<String, usize>,
}

struct Player {
    name: String,
    t: ImTestApp,
    seen: Seen,
    sent: Vec<(String, String)>,
}

impl Player {
    fn new(url: &str, name: &str, seed: u64) -> Self {
        let mut config = ImConfig::new(url).dialect(Dialect::MobileImSdkV6);
        config.client.sense_mode = SenseMode::Mode3s;
        config.client.jitter_seed = Some(seed);
        let mut t = ImTestApp::connected(config);
        t.app.insert_resource(TimeUpdateStrategy::Automatic);
        t.start_login(name, "token");
        Self {
            name: name.to_owned(),
            t,
            seen: Seen::default(),
            sent: Vec::new(),
        }
    }

    fn update(&mut self, at: Duration) {
        self.t.step();
        self.seen.logins += self.t.heard::<LoginSucceeded>().len();
        self.seen.logged_in = self.t.core().is_logged_in();
        for d in self.t.heard::<DataReceived>() {
            let fp = d.fp.expect("QoS messages have a fingerprint");
            self.seen.received.push((d.from, fp));
        }
        for d in self.t.heard::<MessageDelivered>() {
            let e = self.seen.delivered.entry(d.fp).or_default();
            e.push((d.stored, at));
        }
        for l in self.t.heard::<MessagesLost>() {
            for f in l.frames {
                *self.seen.lost.entry(f.fp.unwrap_or_default()).or_default() += 1;
            }
        }
        for r in self.t.heard::<MessageRefused>() {
            *self
                .seen
                .refused
                .entry(r.fp.unwrap_or_default())
                .or_default() += 1;
        }
    }

    /// Sends up to `n` messages while fewer than `window` wait for their outcome.
    fn send(&mut self, to: &str, n: usize, window: usize, quota: usize) {
        for _ in 0..n {
            if self.sent.len() >= quota || self.t.core().pending_count() >= window {
                return;
            }
            if !self.t.core().is_logged_in() {
                return;
            }
            let body = format!("{}->{to} #{}", self.name, self.sent.len());
            let target = to.to_owned();
            let fp = self
                .t
                .run(move |mut im: ImClient| im.send(Outgoing::new(target.clone(), body.clone())))
                .expect("a send while logged in is accepted")
                .expect("QoS messages have a fingerprint");
            self.sent.push((fp, to.to_owned()));
        }
    }

    fn settled(&self) -> bool {
        self.sent.iter().all(|(fp, _)| {
            self.seen.delivered.contains_key(fp)
                || self.seen.lost.contains_key(fp)
                || self.seen.refused.contains_key(fp)
        })
    }
}

/// A fault, for one player's link (`Some(i)`) or every link (`None`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Cut(Option<usize>),
    Delay(u64),
    Stall(usize, bool),
    Kill,
}

/// The fault schedule, by seconds since the start of a cycle. Each player has a link
/// of its own through the proxy, so a fault can hit one player while the others
/// keep writing to it: relayed into a stalled link, stored while it is offline.
const SCHEDULE: &[(f64, Fault)] = &[
    (2.0, Fault::Cut(Some(2))),
    (4.0, Fault::Delay(20)),
    (7.0, Fault::Delay(0)),
    // Past the client's dead-link timeout (5 s) and the server's read timeout (7 s).
    (8.0, Fault::Stall(1, true)),
    (16.0, Fault::Stall(1, false)),
    (17.0, Fault::Stall(3, true)),
    (19.0, Fault::Kill),
    (21.0, Fault::Stall(3, false)),
    (22.0, Fault::Cut(None)),
];

/// One cycle of the schedule, repeated while messages remain to be sent.
const CYCLE: f64 = 24.0;

/// One soak at a time: each loads both cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn soak(messages: usize, players: usize, limit: Duration, ack_on_receipt: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Removed with SQLite's -wal and -shm files when the soak ends, a failing one too.
    let dir = tempfile::Builder::new()
        .prefix("bevy_im-soak-")
        .tempdir()
        .expect("a temporary folder");
    let store = dir.path().join("im.db");
    let (mut server, addr) = start_server(&store, "127.0.0.1:0", ack_on_receipt);
    let proxies: Vec<Proxy> = (0..players).map(|_| Proxy::start(addr)).collect();
    let names: Vec<String> = (0..players).map(|i| format!("p{i}")).collect();
    let mut ps: Vec<Player> = names
        .iter()
        .zip(&proxies)
        .enumerate()
        .map(|(i, (n, proxy))| Player::new(&proxy.url(), n, i as u64 + 1))
        .collect();
    let quota = messages / players;
    // Each player's sends per second: 10,000 messages take about one cycle.
    let per_second = 10_000.0 / players as f64 / (CYCLE - 2.0);
    let started = Instant::now();
    let mut kills = Vec::new();
    let mut next_fault = 0usize;
    let mut cycle = 0u32;
    let mut faults_done = 0usize;

    // Send, with the faults on their schedule, until every message is sent and every
    // fault has happened at least once.
    loop {
        let now = started.elapsed();
        assert!(now < limit, "the soak ran out of time: {}", report(&ps));
        let in_cycle = now.as_secs_f64() - f64::from(cycle) * CYCLE;
        if let Some(&(at, fault)) = SCHEDULE.get(next_fault)
            && in_cycle >= at
        {
            match fault {
                Fault::Cut(Some(i)) => proxies[i % players].cut_all(),
                Fault::Cut(None) => proxies.iter().for_each(Proxy::cut_all),
                Fault::Delay(ms) => {
                    let max = Duration::from_millis(ms);
                    proxies.iter().for_each(|p| p.delay(max));
                }
                Fault::Stall(i, on) => proxies[i % players].stall(on),
                Fault::Kill => {
                    server.0.kill().expect("SIGKILL");
                    let _ = server.0.wait();
                    kills.push(now);
                    server = start_server(&store, &addr.to_string(), ack_on_receipt).0;
                }
            }
            next_fault += 1;
            faults_done += 1;
        }
        if next_fault == SCHEDULE.len() && in_cycle >= CYCLE {
            next_fault = 0;
            cycle += 1;
        }
        let all_sent = ps.iter().all(|p| p.sent.len() >= quota);
        if all_sent && faults_done >= SCHEDULE.len() {
            break;
        }
        for i in 0..ps.len() {
            let to = names[(i + 1 + ps[i].sent.len() % (players - 1)) % players].clone();
            // Spread over the run, so that every fault meets messages in flight.
            let due = (now.as_secs_f64() * per_second).ceil() as usize;
            ps[i].send(&to, 8, 64, due.min(quota));
            ps[i].update(now);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for proxy in &proxies {
        proxy.stall(false);
        proxy.delay(Duration::ZERO);
    }

    // Settle: every outcome in, then one more link drop, so that whatever waits in an
    // offline box is handed over at the re-login, then quiet.
    let settle = |ps: &mut Vec<Player>, until: &dyn Fn(&[Player]) -> bool| {
        while !until(ps) {
            let now = started.elapsed();
            assert!(now < limit, "the soak did not settle: {}", report(ps));
            for p in ps.iter_mut() {
                p.update(now);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    settle(&mut ps, &|ps| ps.iter().all(Player::settled));
    let logins: Vec<usize> = ps.iter().map(|p| p.seen.logins).collect();
    proxies.iter().for_each(Proxy::cut_all);
    settle(&mut ps, &|ps| {
        ps.iter()
            .zip(&logins)
            .all(|(p, n)| p.seen.logins > *n && p.seen.logged_in)
    });
    let quiet_from = started.elapsed();
    settle(&mut ps, &|_| {
        started.elapsed() > quiet_from + Duration::from_secs(2)
    });

    // The invariants.
    let sent: HashSet<(String, String)> = ps
        .iter()
        .flat_map(|p| p.sent.iter().map(|(fp, _)| (p.name.clone(), fp.clone())))
        .collect();
    let mut received: HashSet<(String, String)> = HashSet::new();
    for p in &ps {
        for key in &p.seen.received {
            assert!(sent.contains(key), "{} got {key:?}, never sent", p.name);
            assert!(received.insert(key.clone()), "{} got {key:?} twice", p.name);
        }
    }
    let (mut delivered, mut stored, mut lost, mut refused) = (0, 0, 0, 0);
    let mut relayed_missing = Vec::new();
    for p in &ps {
        for (fp, _) in &p.sent {
            let d = p.seen.delivered.get(fp).map_or(0, Vec::len);
            let l = p.seen.lost.get(fp).copied().unwrap_or(0);
            let r = p.seen.refused.get(fp).copied().unwrap_or(0);
            assert_eq!(
                d + l + r,
                1,
                "{} {fp}: delivered {d} lost {l} refused {r}",
                p.name
            );
            let key = (p.name.clone(), fp.clone());
            if let Some(&[(was_stored, at)]) = p.seen.delivered.get(fp).map(Vec::as_slice) {
                delivered += 1;
                if was_stored {
                    stored += 1;
                    assert!(
                        received.contains(&key),
                        "{key:?} was stored, never received"
                    );
                } else if !received.contains(&key) {
                    assert!(
                        !ack_on_receipt,
                        "{key:?} was ACKed at {at:?}, never received"
                    );
                    let near_a_kill = kills.iter().any(|k| {
                        at + Duration::from_secs(11) >= *k && at <= *k + Duration::from_secs(1)
                    });
                    assert!(near_a_kill, "{key:?} was relayed at {at:?}, never received");
                    relayed_missing.push(key);
                }
            }
            lost += l;
            refused += r;
        }
    }
    let total = sent.len();
    println!(
        "soak: sent {total}, delivered {delivered} (stored {stored}), lost {lost}, refused \
         {refused}, received {}, relayed-then-lost-in-a-crash {}, kills {}, logins {:?}, {:.1} s",
        received.len(),
        relayed_missing.len(),
        kills.len(),
        ps.iter().map(|p| p.seen.logins).collect::<Vec<_>>(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(total, messages - messages % players);
    assert!(
        delivered * 10 >= total * 9,
        "most are delivered: {delivered} of {total}"
    );
    assert!(
        received.len() * 10 >= total * 9,
        "most are received: {} of {total}",
        received.len()
    );
    // Every player: the first login, one after the kill, one after the last cut;
    // p1 and p2 one more each for their own fault.
    let logins: Vec<usize> = ps.iter().map(|p| p.seen.logins).collect();
    assert!(
        logins.iter().all(|n| *n >= 3),
        "re-logins after the faults: {logins:?}"
    );
    assert!(
        logins[1] >= 4 && logins[2] >= 4,
        "re-logins after the faults: {logins:?}"
    );
    assert!(stored > 0, "some messages waited in an offline box");

    drop(ps);
    drop(proxies);
    drop(server);
}

fn report(ps: &[Player]) -> String {
    ps.iter()
        .map(|p| {
            format!(
                "{}: sent {} delivered {} lost {} received {} logins {} pending {}",
                p.name,
                p.sent.len(),
                p.seen.delivered.len(),
                p.seen.lost.len(),
                p.seen.received.len(),
                p.seen.logins,
                p.sent.len()
                    - p.sent
                        .iter()
                        .filter(|(fp, _)| {
                            p.seen.delivered.contains_key(fp)
                                || p.seen.lost.contains_key(fp)
                                || p.seen.refused.contains_key(fp)
                        })
                        .count()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn ten_thousand_messages_through_cuts_stalls_delays_and_a_kill_9() {
    soak(10_000, 4, Duration::from_secs(60), false);
}

/// With ACK on receipt, an ACK always means received: not one exception, even for
/// what the crash caught in flight.
#[test]
fn with_ack_on_receipt_every_acked_message_is_received_through_a_kill_9() {
    soak(10_000, 4, Duration::from_secs(60), true);
}

/// The long variant, by hand: `cargo test --release --features server,testing --test
/// it -- --ignored --nocapture soak::`.
#[test]
#[ignore = "long: 100,000 messages"]
fn a_hundred_thousand_messages_through_repeated_faults() {
    soak(100_000, 4, Duration::from_secs(600), false);
    soak(100_000, 4, Duration::from_secs(600), true);
}
