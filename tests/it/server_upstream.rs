//! The reference server against the captured upstream traffic: the scenarios of
//! `tests/data/wire/*.jsonl` (a copy of the v6.5 capture) are replayed against the
//! server in the upstream dialect, with every timing scaled down by [`SCALE`], and
//! the server must answer with the same frames, ACKs and closes. The same scenarios
//! run in the seed dialect with its type numbers. Scenario 02 (S2C QoS timing) and 07
//! (the HTTP gateway) are checked by hand-written tests below.
//!
//! One deliberate difference is allowed for: where upstream closes on a login or a
//! text it cannot read without a word, ours first answers (a login reply or an error
//! frame of code 4). The replayer collects those answers, and each test names exactly
//! the ones it expects.
#![cfg(feature = "server")]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::support::{Client, Event, Recorder, WAIT, config, logged_in, raw_exchange, start};
use bevy_im::protocol::{Dialect, ErrorResponse, Frame, LoginResponse, decode_body};
use bevy_im::server::{AcceptAll, RejectReason, ServerConfig, ServerHandle};
use futures_util::SinkExt;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Upstream's timings (11 s read timeout) times this.
const SCALE: f64 = 0.1;

/// Every test ends within this, whatever happens.
const BOUND: Duration = Duration::from_secs(20);

fn scaled(secs: f64) -> Duration {
    Duration::from_secs_f64(secs * SCALE)
}

fn replay_config(dialect: Dialect) -> ServerConfig {
    let mut c = config(dialect);
    c.read_timeout = scaled(11.0);
    // The S2C QoS clock too, so a resend upstream did not send shows in the replay.
    c.s2c_qos.resend_after = c.s2c_qos.resend_after.mul_f64(SCALE);
    c.s2c_qos.lost_after = c.s2c_qos.lost_after.mul_f64(SCALE);
    // Upstream's protocol only: byte for byte what upstream writes.
    c.extensions = false;
    c
}

struct Line {
    t: f64,
    conn: String,
    dir: String,
    frame: String,
    payload: String,
    close: Option<(u16, String)>,
    silent_for: Option<f64>,
}

fn load(name: &str) -> Vec<Line> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/wire")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            Line {
                t: v["t"].as_f64().unwrap_or(0.0),
                conn: s("conn"),
                dir: s("dir"),
                frame: s("frame"),
                payload: s("payload"),
                close: v["close_code_seen_by_client"].as_u64().map(|c| {
                    (
                        u16::try_from(c).unwrap(),
                        v["close_reason"].as_str().unwrap_or_default().to_owned(),
                    )
                }),
                silent_for: v["seconds_since_last_client_frame"].as_f64(),
            }
        })
        .collect()
}

/// Rewrites every `firstLoginTime` number in `text` with `f`.
fn map_login_times(text: &str, mut f: impl FnMut(i64) -> i64) -> String {
    const KEY: &str = "firstLoginTime";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(KEY) {
        let after = i + KEY.len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        let digits_at = rest
            .find(|c: char| c.is_ascii_digit() || c == '-')
            .unwrap_or(rest.len());
        out.push_str(&rest[..digits_at]);
        rest = &rest[digits_at..];
        let end = rest
            .char_indices()
            .find(|(i, c)| !(c.is_ascii_digit() || (*i == 0 && *c == '-')))
            .map_or(rest.len(), |(i, _)| i);
        match rest[..end].parse::<i64>() {
            Ok(n) => out.push_str(&f(n).to_string()),
            Err(_) => out.push_str(&rest[..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn login_time_of(text: &str) -> Option<i64> {
    let mut found = None;
    map_login_times(text, |n| {
        found = Some(n);
        n
    });
    found
}

struct Conn {
    client: Client,
    last_text: Instant,
    last_login_time: Option<i64>,
    closed: bool,
    /// The client sent a close: the server's close answers it, not a timer.
    client_closed: bool,
}

/// Rewrites an expected server frame (connection name, frame text).
type ExpectFix = Box<dyn Fn(&str, String) -> String>;

/// Plays a capture against a running server.
struct Replay {
    url: String,
    conns: HashMap<String, Conn>,
    /// Server-assigned login times: (upstream's, ours).
    times: Vec<(i64, i64)>,
    /// Adjusts an expected server frame for a deliberate difference or the dialect.
    expect_fix: ExpectFix,
    skip_conns: Vec<&'static str>,
    /// What ours said before a close where upstream said nothing: (connection, what).
    said_before_close: Vec<(String, String)>,
    /// How long a connection still open at the end must stay silent: one S2C resend.
    quiet_at_end: Duration,
}

impl Replay {
    fn new(url: String, quiet_at_end: Duration) -> Self {
        Self {
            url,
            quiet_at_end,
            conns: HashMap::new(),
            times: Vec::new(),
            expect_fix: Box::new(|_, s| s),
            skip_conns: Vec::new(),
            said_before_close: Vec::new(),
        }
    }

    /// Upstream's login time `n` as ours: times near one the server assigned keep
    /// their offset from it (a client presenting "older" or "newer" times).
    fn map_time(&self, n: i64) -> i64 {
        self.times
            .iter()
            .filter(|(up, _)| (n - up).abs() <= 3_600_000)
            .min_by_key(|(up, _)| (n - up).abs())
            .map_or(n, |(up, ours)| n - up + ours)
    }

    fn conn(&mut self, name: &str) -> &mut Conn {
        self.conns
            .get_mut(name)
            .unwrap_or_else(|| panic!("no connection {name}"))
    }

    /// Plays `lines`; returns what ours said before a close where upstream said nothing.
    async fn run(mut self, lines: Vec<Line>) -> Vec<(String, String)> {
        let start = Instant::now();
        for line in lines {
            if line.dir == "meta" && line.frame != "handshake" {
                continue;
            }
            if self.skip_conns.contains(&line.conn.as_str()) {
                continue;
            }
            let due = start + scaled(line.t);
            if line.dir == "c2s" || line.frame == "handshake" {
                tokio::time::sleep_until(due).await;
            }
            let what = format!("{} {} {} {}", line.t, line.conn, line.dir, line.frame);
            match (line.dir.as_str(), line.frame.as_str()) {
                ("meta", "handshake") => {
                    let client = Client::connect(&self.url).await;
                    self.conns.insert(
                        line.conn.clone(),
                        Conn {
                            client,
                            last_text: Instant::now(),
                            last_login_time: None,
                            closed: false,
                            client_closed: false,
                        },
                    );
                }
                ("c2s", "text") => {
                    let text = map_login_times(&line.payload, |n| self.map_time(n));
                    let login_time = Frame::decode(&text)
                        .ok()
                        .filter(|f| f.ty == 0)
                        .and_then(|f| login_time_of(f.content()));
                    let conn = self.conn(&line.conn);
                    if login_time.is_some() {
                        conn.last_login_time = login_time;
                    }
                    conn.client.send_text(&text).await;
                    conn.last_text = Instant::now();
                }
                ("c2s", "binary") => {
                    let bytes: Vec<u8> = (0..line.payload.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&line.payload[i..i + 2], 16).unwrap())
                        .collect();
                    let conn = self.conn(&line.conn);
                    conn.client
                        .ws
                        .send(Message::Binary(bytes.into()))
                        .await
                        .unwrap();
                }
                ("c2s", "ping") => {
                    let conn = self.conn(&line.conn);
                    conn.client
                        .ws
                        .send(Message::Ping(b"p".to_vec().into()))
                        .await
                        .unwrap();
                }
                ("c2s", "close") => {
                    let conn = self.conn(&line.conn);
                    let frame = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "bye".into(),
                    };
                    conn.client.ws.close(Some(frame)).await.unwrap();
                    conn.client_closed = true;
                }
                ("s2c", "pong") => {
                    let conn = self.conn(&line.conn);
                    let got = tokio::time::timeout(WAIT, async {
                        loop {
                            match conn.client.ws.next().await {
                                Some(Ok(Message::Pong(_))) => return true,
                                Some(Ok(Message::Ping(_))) => continue,
                                _ => return false,
                            }
                        }
                    })
                    .await;
                    assert_eq!(got, Ok(true), "{what}: expected a pong");
                }
                ("s2c", "text") => {
                    let got = match self.conn(&line.conn).client.next_event().await {
                        Event::Text(t) => t,
                        other => panic!("{what}: expected {}, got {other:?}", line.payload),
                    };
                    self.check_text(&line, &what, got);
                }
                ("s2c", "close") => {
                    let conn = self.conn(&line.conn);
                    let mut said = Vec::new();
                    let (code, reason) = loop {
                        match conn.client.next_event().await {
                            Event::Text(t) => {
                                said.push(answer_before_close(&t).unwrap_or_else(|| {
                                    panic!("{what}: expected the close, got {t}")
                                }))
                            }
                            Event::Close(code, reason) => break (code, reason),
                            Event::Ended => panic!("{what}: no close frame"),
                        }
                    };
                    // Measured when the close arrived, from the last text frame sent.
                    let since_text = conn.last_text.elapsed();
                    let timed = !conn.client_closed;
                    let end = conn.client.next_event_within(WAIT).await;
                    assert!(
                        matches!(end, Some(Event::Ended) | None),
                        "{what}: after close: {end:?}"
                    );
                    conn.closed = true;
                    self.said_before_close
                        .extend(said.into_iter().map(|s| (line.conn.clone(), s)));
                    let (want_code, want_reason) = line.close.clone().unwrap();
                    assert_eq!(
                        (code, reason.as_str()),
                        (want_code, want_reason.as_str()),
                        "{what}"
                    );
                    if let Some(silent) = line.silent_for.filter(|s| timed && *s > 1.0) {
                        // A close by the read timeout: not early, and not much late
                        // (a liveness bound: a slow machine only makes it later).
                        let want = scaled(silent);
                        assert!(
                            since_text >= want.mul_f64(0.8)
                                && since_text <= want + Duration::from_secs(1),
                            "{what}: closed {since_text:?} after the last text frame, upstream {silent} s scaled to {want:?}"
                        );
                    }
                }
                _ => panic!("{what}: the replayer does not know this line"),
            }
        }
        // Nothing more arrives where upstream sent nothing more, not even a resend:
        // every connection still open stays silent for one scaled resend (a negative
        // check; the captures end with every connection closed).
        let quiet = self.quiet_at_end;
        let open = self.conns.iter_mut().filter(|(_, c)| !c.closed);
        let heard =
            futures_util::future::join_all(open.map(|(name, conn)| async move {
                (name, conn.client.next_event_within(quiet).await)
            }))
            .await;
        for (name, e) in heard {
            assert!(e.is_none(), "{name}: unexpected {e:?} after the scenario");
        }
        self.said_before_close
    }

    fn check_text(&mut self, line: &Line, what: &str, got: String) {
        let want = (self.expect_fix)(&line.conn, line.payload.clone());
        let mapped = map_login_times(&want, |n| self.map_time(n));
        if got == mapped {
            return;
        }
        // A fresh login gets the server's clock: learn the pair and compare again.
        let fresh = self.conns[&line.conn].last_login_time == Some(0);
        if let (true, Some(up), Some(ours)) = (fresh, login_time_of(&want), login_time_of(&got)) {
            assert!(ours > 0, "{what}: a fresh login gets a positive time");
            self.times.push((up, ours));
            let mapped = map_login_times(&want, |n| self.map_time(n));
            assert_eq!(got, mapped, "{what}");
            return;
        }
        assert_eq!(got, mapped, "{what}");
    }
}

/// The answer ours gives before closing on what it cannot read, where upstream closes
/// without a word: a failed login reply of code 4 (`"login 4"`), or an error frame of
/// code 4 (`"error 4: "` and its message). `None` for any other frame.
fn answer_before_close(text: &str) -> Option<String> {
    let f = Frame::decode(text).ok()?;
    match f.ty {
        50 => {
            let body: LoginResponse = decode_body(f.data_content.as_deref()).ok()?;
            let expected = LoginResponse {
                code: 4,
                first_login_time: -1,
                ext: Vec::new(),
            };
            (body == expected && f.to_id() == "-1" && f.from_id() == "0")
                .then(|| "login 4".to_owned())
        }
        52 => {
            let body: ErrorResponse = decode_body(f.data_content.as_deref()).ok()?;
            (body.error_code == 4 && f.to_id() == "-1")
                .then(|| format!("error 4: {}", body.error_msg))
        }
        _ => None,
    }
}

/// In the seed dialect the server's ACK is 54 and its kickout 55.
fn to_seed_numbers(_conn: &str, expected: String) -> String {
    let Ok(f) = Frame::decode(&expected) else {
        return expected;
    };
    let ty = match f.ty {
        4 if f.from.as_deref() != f.to.as_deref() || f.from.as_deref() == Some("0") => 54,
        54 => 55,
        other => other,
    };
    expected.replacen(&format!("\"type\":{}", f.ty), &format!("\"type\":{ty}"), 1)
}

/// `from` of data is the sender's login on our server, and so is `to` of its ACK.
fn unspoof(_conn: &str, expected: String) -> String {
    expected
        .replace("\"from\":\"mallory\"", "\"from\":\"alice\"")
        .replace("\"to\":\"mallory\"", "\"to\":\"alice\"")
}

/// Replays a scenario in which ours answers nothing where upstream does not.
async fn replay(
    name: &str,
    dialect: Dialect,
    fix: fn(&str, String) -> String,
    skip: Vec<&'static str>,
) -> ServerHandle {
    replay_saying(name, dialect, fix, skip, &[]).await
}

/// Replays a scenario; ours must answer before a close where upstream did not exactly
/// as `said` lists, in order: (connection, the answer or the start of its message).
async fn replay_saying(
    name: &str,
    dialect: Dialect,
    fix: fn(&str, String) -> String,
    skip: Vec<&'static str>,
    said: &[(&str, &str)],
) -> ServerHandle {
    let config = replay_config(dialect);
    let quiet = config.s2c_qos.resend_after + Duration::from_millis(100);
    let handle = start(config, AcceptAll).await;
    let mut r = Replay::new(handle.url(), quiet);
    r.expect_fix = Box::new(move |c, s| {
        let s = unspoof(c, s);
        fix(c, s)
    });
    r.skip_conns = skip;
    let got = r.run(load(name)).await;
    assert_eq!(got.len(), said.len(), "answers before a close: {got:?}");
    for ((conn, what), (want_conn, want)) in got.iter().zip(said) {
        assert!(
            conn == want_conn && what.starts_with(want),
            "{conn}: {what:?}, expected {want_conn}: {want:?}"
        );
    }
    handle
}

fn same(_: &str, s: String) -> String {
    s
}

async fn bounded(f: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("the test finished in time");
}

#[tokio::test]
async fn replay_01_basic_flow_v6() {
    bounded(async {
        let h = replay("01_basic_flow.jsonl", Dialect::MobileImSdkV6, same, vec![]).await;
        let m = h.metrics();
        assert_eq!(m.c2s_duplicates, 1, "the second C2S copy is a duplicate");
        assert_eq!(m.logins_ok, 2);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn replay_01_basic_flow_seed() {
    bounded(async {
        let h = replay(
            "01_basic_flow.jsonl",
            Dialect::Seed,
            to_seed_numbers,
            vec![],
        )
        .await;
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn replay_03_offline_target_v6() {
    bounded(async {
        let h = replay(
            "03_offline_target.jsonl",
            Dialect::MobileImSdkV6,
            same,
            vec![],
        )
        .await;
        assert_eq!(h.metrics().rejected(RejectReason::NoReceiver), 1);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn replay_04_keepalive_timeout_v6() {
    bounded(async {
        let h = replay(
            "04_keepalive_timeout.jsonl",
            Dialect::MobileImSdkV6,
            same,
            vec![],
        )
        .await;
        assert_eq!(h.metrics().rejected(RejectReason::ReadTimeout), 3);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn replay_05_duplicate_login_v6() {
    bounded(async {
        let h = replay(
            "05_duplicate_login.jsonl",
            Dialect::MobileImSdkV6,
            same,
            vec![],
        )
        .await;
        assert_eq!(h.metrics().kickouts, 3);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn replay_05_duplicate_login_seed() {
    bounded(async {
        let h = replay(
            "05_duplicate_login.jsonl",
            Dialect::Seed,
            to_seed_numbers,
            vec![],
        )
        .await;
        h.shutdown().await;
    })
    .await;
}

/// Scenario 06: where upstream closes without a word, ours says why first.
const SAID_IN_06: &[(&str, &str)] = &[
    ("login_without_loginUserId", "login 4"),
    ("login_dataContent_not_json", "login 4"),
    ("empty_json_object", "login 4"),
    (
        "json_null",
        "error 4: bad frame: expected a JSON object, found null",
    ),
    (
        "json_array",
        "error 4: bad frame: expected a JSON object, found an array",
    ),
    ("garbage_text", "error 4: bad frame: not JSON: "),
    ("after_login_garbage", "error 4: bad frame: not JSON: "),
];

#[tokio::test]
async fn replay_06_errors_and_garbage_v6() {
    bounded(async {
        // Upstream closes on a fragmented message; ours reassembles it (see
        // server_extensions.rs), so that connection is left out here.
        let h = replay_saying(
            "06_errors_and_garbage.jsonl",
            Dialect::MobileImSdkV6,
            same,
            vec!["after_login_fragmented_message"],
            SAID_IN_06,
        )
        .await;
        let m = h.metrics();
        assert_eq!(m.rejected(RejectReason::NotLoggedIn), 3);
        assert_eq!(m.rejected(RejectReason::BinaryFrame), 1);
        assert_eq!(m.rejected(RejectReason::FrameTooLarge), 1);
        assert_eq!(
            m.rejected(RejectReason::BadLogin),
            3,
            "no user id, not JSON, {{}}"
        );
        assert_eq!(
            m.rejected(RejectReason::BadFrame),
            4,
            "null, array, two garbage texts"
        );
        assert_eq!(m.rejected(RejectReason::UnknownType), 3, "99 twice and 50");
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn replay_03_offline_target_seed() {
    bounded(async {
        let h = replay(
            "03_offline_target.jsonl",
            Dialect::Seed,
            to_seed_numbers,
            vec![],
        )
        .await;
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn replay_06_errors_and_garbage_seed() {
    bounded(async {
        let h = replay_saying(
            "06_errors_and_garbage.jsonl",
            Dialect::Seed,
            to_seed_numbers,
            vec!["after_login_fragmented_message"],
            SAID_IN_06,
        )
        .await;
        h.shutdown().await;
    })
    .await;
}

/// Scenario 02 with the QoS clock scaled down: a receiver that never ACKs gets the
/// original and one resend, the sender exactly one relay ACK, and the loss is
/// reported; an ACK after the resend stops it; an immediate ACK means no resend.
/// Upstream's rules: without the social extension, whose server keeps such a
/// message in the receiver's offline box instead (`server::session::tests`). Waits
/// on events only; the exact times (5 s, 10 s) are checked on a paused clock in
/// `server::session::tests` (`scenario_02_...`).
#[tokio::test]
async fn s2c_qos_resend_and_loss_02() {
    bounded(async {
        let resend_after = Duration::from_millis(300);
        let mut c = config(Dialect::MobileImSdkV6);
        c.extensions = false;
        c.s2c_qos.resend_after = resend_after;
        c.s2c_qos.lost_after = Duration::from_millis(300);
        // One pending frame per receiver: each relay below finds room only if the
        // one before was ACKed or given up (else the sender would hear 503).
        c.max_pending_s2c_per_user = 1;
        let hooks = Recorder::new();
        let h = start(c, hooks.clone()).await;
        let mut alice = logged_in(&h.url(), "alice").await;
        let mut bob = logged_in(&h.url(), "bob").await;

        // Never ACKed.
        let sent = Instant::now();
        let msg = Frame::data("alice", "bob", "no-ack test 0", true, None, -1);
        alice.send(&msg).await;
        let first = bob.recv_text().await;
        assert_eq!(first, msg.to_json());
        let ack = alice.recv().await;
        assert_eq!((ack.ty, ack.content()), (4, msg.fp.as_deref().unwrap()));
        let second = bob.recv_text().await;
        let gap = sent.elapsed();
        assert_eq!(second, first, "the resend is the same frame");
        assert!(gap >= resend_after, "resent after {gap:?}");
        crate::support::eventually("the loss", || !hooks.lost.lock().unwrap().is_empty()).await;
        {
            let lost = hooks.lost.lock().unwrap();
            assert_eq!(lost.len(), 1);
            assert_eq!(lost[0].0, "bob");
            assert_eq!(lost[0].1.fp, msg.fp);
        }
        // Given up: no third copy, no second ACK.
        bob.barrier().await;
        alice.barrier().await;

        // ACK after the resend.
        let msg = Frame::data("alice", "bob", "ack-the-resend", true, None, -1);
        alice.send(&msg).await;
        assert_eq!(bob.recv().await.fp, msg.fp);
        assert_eq!(alice.recv().await.ty, 4);
        assert_eq!(bob.recv().await.fp, msg.fp);
        bob.send(&Frame::ack_of(&msg).unwrap()).await;
        bob.barrier().await;

        // ACK at once (its relay ACK shows the ACK above cleared bob's table).
        let msg = Frame::data("alice", "bob", "ack-at-once", true, None, -1);
        alice.send(&msg).await;
        let got = bob.recv().await;
        bob.send(&Frame::ack_of(&got).unwrap()).await;
        assert_eq!(alice.recv().await.ty, 4);
        bob.barrier().await;
        alice.barrier().await;
        let m = h.metrics();
        assert_eq!((m.qos_resends, m.qos_lost), (2, 1));
        // Bob's table is empty again: a QoS push finds room.
        assert!(h.push("bob", "probe", true, 0).is_ok());
        h.shutdown().await;
        assert_eq!(hooks.lost.lock().unwrap().len(), 1, "reported once");
    })
    .await;
}

/// Scenario 02 in the seed dialect: the relay ACK is type 54.
#[tokio::test]
async fn relay_ack_is_54_in_the_seed_dialect() {
    bounded(async {
        let h = start(config(Dialect::Seed), AcceptAll).await;
        let mut alice = logged_in(&h.url(), "alice").await;
        let mut bob = logged_in(&h.url(), "bob").await;
        let msg = Frame::data("alice", "bob", "hi", true, None, 0);
        alice.send(&msg).await;
        assert_eq!(bob.recv_text().await, msg.to_json());
        let ack = alice.recv().await;
        assert_eq!(
            ack.to_json(),
            Frame::server_ack(Dialect::Seed, "bob", "alice", msg.fp.as_deref().unwrap()).to_json()
        );
        assert_eq!(ack.ty, 54);
        let c2s = Frame::data("alice", "0", "to server", true, None, 0);
        alice.send(&c2s).await;
        let ack = alice.recv().await;
        assert_eq!((ack.ty, ack.from_id(), ack.to_id()), (54, "0", "alice"));
        h.shutdown().await;
    })
    .await;
}

/// Writes `request` on a fresh TCP connection and returns the reply's head, read up
/// to its blank line (or what came before the server closed), within `WAIT`.
async fn upgrade_reply(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no reply head within {WAIT:?}: {got:?}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// Scenario 07: the exact path and only it; the reply headers; plain HTTP.
#[tokio::test]
async fn gateway_http_07() {
    bounded(async {
        let mut c = config(Dialect::MobileImSdkV6);
        c.read_timeout = scaled(11.0);
        let h = start(c, AcceptAll).await;
        let addr = h.local_addr();
        let upgraded = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let req = format!("GET /websocket HTTP/1.1\r\nHost: 127.0.0.1:3000\r\n{UPGRADE}\r\n");
        assert_eq!(upgrade_reply(addr, &req).await, upgraded);

        // Wrong paths: no answer at all, then dropped after the read timeout.
        let held = ["/websocket?uid=1", "/websocket/", "/", "/ws"].map(|path| async move {
            let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:3000\r\n{UPGRADE}\r\n");
            let t = Instant::now();
            // Returns at the close; the bound is for liveness only.
            let limit = scaled(11.0) + WAIT;
            let (got, closed) = raw_exchange(addr, &req, limit).await;
            (path, got, closed, t.elapsed())
        });
        for (path, got, closed, held) in futures_util::future::join_all(held).await {
            assert_eq!(got, "", "{path}");
            assert!(closed, "{path}: dropped after the read timeout");
            assert!(held >= scaled(11.0).mul_f64(0.8), "{path}: held {held:?}");
        }

        // A subprotocol is not echoed; permessage-deflate is not negotiated.
        let req = format!(
            "GET /websocket HTTP/1.1\r\nHost: 127.0.0.1:3000\r\n{UPGRADE}Sec-WebSocket-Protocol: mobileimsdk\r\n\r\n"
        );
        assert_eq!(upgrade_reply(addr, &req).await, upgraded);
        let req = format!(
            "GET /websocket HTTP/1.1\r\nHost: 127.0.0.1:3000\r\n{UPGRADE}Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        );
        assert_eq!(upgrade_reply(addr, &req).await, upgraded);

        // Plain HTTP on the path.
        let (got, closed) = raw_exchange(
            addr,
            "GET /websocket HTTP/1.1\r\nHost: 127.0.0.1:3000\r\n\r\n",
            WAIT,
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nnot a WebSocket handshake request: missing upgrade"), "{got}");
        assert!(closed);

        let m = h.metrics();
        assert_eq!(m.rejected(RejectReason::WrongPath), 4);
        assert_eq!(m.rejected(RejectReason::NotWebSocket), 1);

        // A client close is echoed.
        let mut client = Client::connect(&h.url()).await;
        client
            .ws
            .close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() }))
            .await
            .unwrap();
        assert_eq!(client.next_event().await, Event::Close(1000, "bye".into()));
        h.shutdown().await;
    })
    .await;
}

#[test]
fn login_times_are_rewritten_inside_escaped_bodies() {
    let text =
        r#"{"type":0,"dataContent":"{\"loginUserId\":\"a\",\"firstLoginTime\":1795643546796}"}"#;
    let out = map_login_times(text, |n| n - 1795643546796 + 7);
    assert_eq!(
        out,
        r#"{"type":0,"dataContent":"{\"loginUserId\":\"a\",\"firstLoginTime\":7}"}"#
    );
    assert_eq!(login_time_of(&out), Some(7));
}
