//! The server's protocol logic driven with scripted frames and a scripted clock: no
//! sockets, tokio's paused time, every timer run by hand (`Server::timers`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::socket::SessionCleanup;
use super::*;
use crate::protocol::{RoomOp, RoomReply, RoomRequest, decode_body};
use crate::server::state::MailRx;
use crate::server::store::{StoreHandle, StorePath};
use crate::server::{AcceptAll, S2cQosConfig, ServerConfig, serve::settle_lost};

/// A server's shared state with an in-memory store.
fn server(config: ServerConfig) -> Arc<Shared> {
    let store = StoreHandle::open(&StorePath::Memory, config.store_limits.clone()).unwrap();
    let addr = "127.0.0.1:0".parse().unwrap();
    Arc::new(Shared::new(config, Box::new(AcceptAll), addr, None, store))
}

fn social() -> ServerConfig {
    ServerConfig {
        extensions: true,
        rate_limit: None,
        user_rate_limit: None,
        ..ServerConfig::default()
    }
}

/// Runs every timer due now, then settles what ran out of resends.
async fn timers(shared: &Arc<Shared>) {
    let (lost, _) = shared.run_timers(Instant::now());
    for (user, frame) in lost {
        settle_lost(shared.clone(), user, frame).await;
    }
}

/// One accepted socket, as its task would hold it.
struct Sock {
    session: Session,
    rx: MailRx,
    queued: Arc<AtomicUsize>,
    cleanup: SessionCleanup,
    /// Written after the login reply, not yet looked at.
    held: Vec<Frame>,
}

impl Sock {
    fn open(shared: &Arc<Shared>) -> Self {
        let (id, rx, queued) = shared.open_session();
        Self {
            session: Session::new(id, shared.clone(), Instant::now()),
            rx,
            queued,
            cleanup: SessionCleanup::new(shared.clone(), id),
            held: Vec::new(),
        }
    }

    async fn login(shared: &Arc<Shared>, user: &str) -> Self {
        let mut sock = Self::open(shared);
        let step = sock
            .feed(&Frame::login(&LoginInfo {
                login_user_id: user.to_owned(),
                login_token: String::new(),
                extra: None,
                first_login_time: 0,
                app: None,
            }))
            .await;
        assert_eq!(step, Step::Continue);
        let mut written = sock.written();
        let reply = written.remove(0);
        sock.held = written;
        let reply: LoginResponse = decode_body(reply.data_content.as_deref()).unwrap();
        assert_eq!(reply.code, 0);
        sock
    }

    /// Handles one frame as the read loop does, with the work that waits for the store.
    async fn feed(&mut self, frame: &Frame) -> Step {
        let step = self.session.handle_text(&frame.to_json(), Instant::now());
        self.session.run_jobs().await;
        step
    }

    /// Everything this socket would write now: its own replies, then what other
    /// sessions and the timers handed to it. A kickout shows as a frame too.
    fn written(&mut self) -> Vec<Frame> {
        let mut texts: Vec<String> = self.session.out.drain(..).map(|o| o.text).collect();
        while let Some(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Send(o) => {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    texts.push(o.text);
                }
                Command::Kick { code, reason } => {
                    let user = self.session.user.clone().unwrap_or_default();
                    let info = KickoutInfo {
                        code: code.code(),
                        reason,
                    };
                    texts.push(Frame::kickout(Default::default(), &user, &info).to_json());
                }
            }
        }
        let mut frames = std::mem::take(&mut self.held);
        frames.extend(texts.iter().map(|t| Frame::decode(t).unwrap()));
        frames
    }

    /// The data frames among what this socket would write now.
    fn data(&mut self) -> Vec<Frame> {
        self.written()
            .into_iter()
            .filter(|f| f.client_kind() == ClientKind::Data)
            .collect()
    }

    /// Ends the socket as its task does when the link is lost (`end`).
    fn close(mut self, end: LogoutReason) {
        self.cleanup.end = end;
    }
}

fn contents(frames: &[Frame]) -> Vec<&str> {
    frames.iter().map(Frame::content).collect()
}

#[tokio::test(start_paused = true)]
async fn an_unacked_relay_is_resent_on_the_clients_schedule_then_kept_for_the_next_login() {
    let shared = server(social());
    let mut alice = Sock::login(&shared, "alice").await;
    let mut bob = Sock::login(&shared, "bob").await;
    alice
        .feed(&Frame::data(
            "alice",
            "bob",
            "hi",
            true,
            Some("fp1".into()),
            0,
        ))
        .await;
    let acks = alice.written();
    let kind = acks[0].server_kind(shared.config.dialect);
    assert_eq!(kind, ServerKind::Ack, "relayed at once");
    assert_eq!(contents(&bob.data()), ["hi"]);

    // The defaults: one resend 5 s after the write, the loss 5 s after that.
    tokio::time::advance(Duration::from_millis(4_999)).await;
    timers(&shared).await;
    assert!(bob.data().is_empty(), "nothing is due before 5 s");
    tokio::time::advance(Duration::from_millis(1)).await;
    timers(&shared).await;
    assert_eq!(contents(&bob.data()), ["hi"], "one resend at 5 s");
    tokio::time::advance(Duration::from_millis(4_999)).await;
    timers(&shared).await;
    assert!(bob.data().is_empty(), "no third write of the relayed copy");
    tokio::time::advance(Duration::from_millis(1)).await;
    timers(&shared).await;
    let m = shared.snapshot();
    assert_eq!((m.qos_resends, m.qos_lost, m.s2c_kept), (1, 1, 1));
    // Never acknowledged, so kept, and sent from the box while bob is online.
    let boxed = bob.data();
    assert_eq!(contents(&boxed), ["hi"]);
    assert!(boxed[0].mid.is_some());
    // Its loss leaves it in the box, where the next login finds it.
    tokio::time::advance(Duration::from_secs(10)).await;
    timers(&shared).await;
    assert_eq!(shared.snapshot().s2c_kept, 1, "kept once");
    bob.close(LogoutReason::TimedOut);
    let mut bob = Sock::login(&shared, "bob").await;
    let kept = bob.data();
    assert_eq!(contents(&kept), ["hi"]);
    assert_eq!(kept[0].from_id(), "alice");
    assert!(kept[0].mid.is_some(), "it came from the box");
    bob.feed(&Frame::ack_of(&kept[0]).unwrap()).await;
    shared.store.flush().await.unwrap();
    bob.close(LogoutReason::Logout);
    let bob_again = Sock::login(&shared, "bob").await.data();
    assert!(bob_again.is_empty(), "an ACKed message leaves the box");
}

#[tokio::test(start_paused = true)]
async fn a_resend_due_while_the_receiver_is_away_is_written_once_at_its_login() {
    let shared = server(social());
    let mut alice = Sock::login(&shared, "alice").await;
    let mut bob = Sock::login(&shared, "bob").await;
    alice
        .feed(&Frame::data(
            "alice",
            "bob",
            "one",
            true,
            Some("a".into()),
            0,
        ))
        .await;
    tokio::time::advance(Duration::from_secs(1)).await;
    alice
        .feed(&Frame::data(
            "alice",
            "bob",
            "two",
            true,
            Some("b".into()),
            0,
        ))
        .await;
    assert_eq!(contents(&bob.data()), ["one", "two"]);
    // The link drops before bob's ACKs leave; "one"'s resend falls due meanwhile.
    bob.close(LogoutReason::Closed);
    tokio::time::advance(Duration::from_secs(5)).await;
    timers(&shared).await;
    assert_eq!(
        shared.snapshot().qos_resends,
        0,
        "nothing is written to a user away"
    );

    // Back in time: both are written again at the login, in sending order, once.
    let mut bob = Sock::login(&shared, "bob").await;
    let again = bob.data();
    assert_eq!(contents(&again), ["one", "two"]);
    for f in &again {
        bob.feed(&Frame::ack_of(f).unwrap()).await;
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    timers(&shared).await;
    assert!(bob.data().is_empty());
    let m = shared.snapshot();
    assert_eq!((m.qos_resends, m.qos_lost), (2, 0), "one owed, one flushed");
}

#[tokio::test(start_paused = true)]
async fn with_no_resends_a_frame_is_written_once_and_lost_after_lost_after() {
    let mut config = social();
    config.extensions = false;
    config.s2c_qos = S2cQosConfig {
        resend_after: Duration::from_secs(5),
        max_resends: 0,
        lost_after: Duration::from_secs(2),
    };
    let shared = server(config);
    let mut alice = Sock::login(&shared, "alice").await;
    let mut bob = Sock::login(&shared, "bob").await;
    alice
        .feed(&Frame::data("alice", "bob", "x", true, Some("f".into()), 0))
        .await;
    assert_eq!(bob.data().len(), 1);
    tokio::time::advance(Duration::from_millis(1_999)).await;
    timers(&shared).await;
    assert_eq!(shared.snapshot().qos_lost, 0);
    tokio::time::advance(Duration::from_millis(1)).await;
    timers(&shared).await;
    assert!(bob.data().is_empty(), "never written again");
    let m = shared.snapshot();
    assert_eq!((m.qos_resends, m.qos_lost, m.s2c_kept), (0, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn two_senders_with_one_fingerprint_are_acked_apart() {
    let shared = server(social());
    let mut alice = Sock::login(&shared, "alice").await;
    let mut carol = Sock::login(&shared, "carol").await;
    let mut bob = Sock::login(&shared, "bob").await;
    alice
        .feed(&Frame::data(
            "alice",
            "bob",
            "from a",
            true,
            Some("same".into()),
            0,
        ))
        .await;
    carol
        .feed(&Frame::data(
            "carol",
            "bob",
            "from c",
            true,
            Some("same".into()),
            0,
        ))
        .await;
    let got = bob.data();
    assert_eq!(contents(&got), ["from a", "from c"]);
    bob.feed(&Frame::ack_of(&got[1]).unwrap()).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    timers(&shared).await;
    assert_eq!(
        contents(&bob.data()),
        ["from a"],
        "only alice's is still pending"
    );
}

fn reply(frame: &Frame) -> RoomReply {
    decode_body(frame.data_content.as_deref()).unwrap()
}

async fn join(sock: &mut Sock, user: &str, room: &str) -> RoomReply {
    let request = RoomRequest::new(1, RoomOp::Join).room(room);
    sock.feed(&Frame::room_request(user, &request)).await;
    reply(sock.written().last().unwrap())
}

#[tokio::test(start_paused = true)]
async fn room_presence_follows_a_dropped_link_and_the_grace_period_on_the_clock() {
    let mut config = social();
    config.rooms.grace = Duration::from_secs(30);
    let shared = server(config);
    let mut alice = Sock::login(&shared, "alice").await;
    let mut bob = Sock::login(&shared, "bob").await;
    join(&mut alice, "alice", "lobby").await;
    let joined = join(&mut bob, "bob", "lobby").await;
    assert_eq!(joined.members.len(), 2);
    let event = reply(&alice.written()[0]);
    assert_eq!(
        (event.op, event.user.as_deref()),
        (RoomOp::Joined, Some("bob"))
    );

    bob.close(LogoutReason::TimedOut);
    let event = reply(&alice.written()[0]);
    assert_eq!((event.op, event.online), (RoomOp::Presence, Some(false)));
    tokio::time::advance(Duration::from_millis(29_999)).await;
    timers(&shared).await;
    assert!(
        alice.written().is_empty(),
        "still in the room within the grace"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    timers(&shared).await;
    let event = reply(&alice.written()[0]);
    assert_eq!(
        (event.op, event.user.as_deref()),
        (RoomOp::Left, Some("bob"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_newer_login_kicks_the_old_socket_and_takes_its_messages() {
    let shared = server(social());
    let mut alice = Sock::login(&shared, "alice").await;
    let mut old = Sock::login(&shared, "bob").await;
    let mut new = Sock::login(&shared, "bob").await;
    let kicked = old.written();
    assert_eq!(
        kicked[0].server_kind(Default::default()),
        ServerKind::Kickout
    );
    alice
        .feed(&Frame::data("alice", "bob", "hello", true, None, 0))
        .await;
    assert_eq!(contents(&new.data()), ["hello"]);
    assert!(old.data().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_member_whose_queue_is_full_is_told_what_it_missed_and_catches_up() {
    let mut config = social();
    config.max_pending_s2c_per_user = 2;
    let shared = server(config);
    let mut alice = Sock::login(&shared, "alice").await;
    let mut bob = Sock::login(&shared, "bob").await;
    join(&mut bob, "bob", "lobby").await;
    join(&mut alice, "alice", "lobby").await;
    bob.written();
    for (i, text) in ["m1", "m2", "m3"].into_iter().enumerate() {
        let frame = Frame::data("alice", "#lobby", text, true, Some(format!("f{i}")), 0);
        alice.feed(&frame).await;
    }
    let acks = alice.written();
    assert_eq!(acks.len(), 3, "every message is stored and ACKed");
    let live = bob.data();
    assert_eq!(
        contents(&live),
        ["m1", "m2"],
        "the third finds bob's table full"
    );
    assert_eq!(shared.snapshot().room_gaps, 1);

    // Bob reads again: one ACK, and he hears which room he missed copies of.
    bob.feed(&Frame::ack_of(&live[0]).unwrap()).await;
    let told = bob.written();
    assert_eq!(told.len(), 1);
    let event = reply(&told[0]);
    assert_eq!(
        (event.op, event.room.as_deref()),
        (RoomOp::Missed, Some("lobby"))
    );
    bob.feed(&Frame::ack_of(&live[1]).unwrap()).await;
    assert!(bob.written().is_empty(), "told once");

    // The catch-up: a re-join after the last id seen brings the third.
    let mut request = RoomRequest::new(2, RoomOp::Join).room("lobby");
    request.after = live[1].mid;
    bob.feed(&Frame::room_request("bob", &request)).await;
    let caught_up = reply(bob.written().last().unwrap());
    let missed: Vec<&str> = caught_up
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(missed, ["m3"]);
}

/// Records what reached `on_c2s_message`, as (user, content).
#[derive(Default)]
struct C2sLog(std::sync::Mutex<Vec<(String, String)>>);

impl crate::server::ServerHooks for C2sLog {
    fn on_c2s_message(&self, frame: &Frame) {
        let entry = (frame.from_id().to_owned(), frame.content().to_owned());
        self.0.lock().unwrap().push(entry);
    }
}

/// Sends `frame` and returns the fingerprints of the ACKs written back.
async fn acked(sock: &mut Sock, frame: &Frame, dialect: crate::protocol::Dialect) -> Vec<String> {
    sock.feed(frame).await;
    sock.written()
        .iter()
        .filter(|f| f.server_kind(dialect) == ServerKind::Ack)
        .map(|f| f.content().to_owned())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_c2s_dedup_window_runs_from_the_last_copy_per_user_and_every_copy_is_acked() {
    let mut config = social();
    config.c2s_dedup_window = Duration::from_secs(10);
    let dialect = config.dialect;
    let log = Arc::new(C2sLog::default());
    let store = StoreHandle::open(&StorePath::Memory, config.store_limits.clone()).unwrap();
    let addr = "127.0.0.1:0".parse().unwrap();
    let shared = Arc::new(Shared::new(
        config,
        Box::new(log.clone()),
        addr,
        None,
        store,
    ));
    let mut alice = Sock::login(&shared, "alice").await;
    let mut bob = Sock::login(&shared, "bob").await;
    let copy = |user: &str, text: &str| Frame::data(user, "0", text, true, Some("fp".into()), 1);
    let heard = || log.0.lock().unwrap().len();
    let dups = || shared.snapshot().c2s_duplicates;

    assert_eq!(
        acked(&mut alice, &copy("alice", "a0"), dialect).await,
        ["fp"]
    );
    // Another user's frame with the same fingerprint is his own.
    assert_eq!(acked(&mut bob, &copy("bob", "b0"), dialect).await, ["fp"]);
    assert_eq!((heard(), dups()), (2, 0));
    // 1 ms before the window ends: a duplicate, ACKed, not passed on.
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert_eq!(
        acked(&mut alice, &copy("alice", "a1"), dialect).await,
        ["fp"]
    );
    assert_eq!((heard(), dups()), (2, 1));
    // Past the first copy's window, within the second's: the copy refreshed it.
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert_eq!(
        acked(&mut alice, &copy("alice", "a2"), dialect).await,
        ["fp"]
    );
    assert_eq!((heard(), dups()), (2, 2));
    // Exactly a window after the last copy: forgotten, so passed on again.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        acked(&mut alice, &copy("alice", "a3"), dialect).await,
        ["fp"]
    );
    assert_eq!((heard(), dups()), (3, 2));
    let log = log.0.lock().unwrap().clone();
    let expected = [("alice", "a0"), ("bob", "b0"), ("alice", "a3")];
    assert_eq!(log, expected.map(|(u, c)| (u.to_owned(), c.to_owned())));
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_refills_at_its_rate_up_to_its_burst() {
    let mut config = social();
    config.rate_limit = Some(crate::server::RateLimit {
        per_second: 2,
        burst: 5,
    });
    let dialect = config.dialect;
    let shared = server(config);
    let mut sock = Sock::open(&shared);
    let mut sent = 0;
    // Sends `count` echoes now; returns how many were answered, and checks that the
    // others came back in rate-limit error frames, in order.
    let mut burst = |sock: &mut Sock, count: usize| -> usize {
        let texts: Vec<String> = (sent..sent + count)
            .map(|i| Frame::echo("x", format!("e{i}")).to_json())
            .collect();
        sent += count;
        for t in &texts {
            assert_eq!(sock.session.handle_text(t, Instant::now()), Step::Continue);
        }
        let mut echoed = 0;
        let mut refused = Vec::new();
        for f in sock.written() {
            match f.server_kind(dialect) {
                ServerKind::EchoResponse => echoed += 1,
                ServerKind::Error => {
                    let e: ErrorResponse = decode_body(f.data_content.as_deref()).unwrap();
                    assert_eq!(e.error_code, ERROR_RATE_LIMITED);
                    refused.push(e.error_msg);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(refused, texts[echoed..], "the refused ones come back");
        echoed
    };
    assert_eq!(burst(&mut sock, 10), 5, "the burst passes");
    // Two tokens a second: one more at 500 ms, not before.
    tokio::time::advance(Duration::from_millis(499)).await;
    assert_eq!(burst(&mut sock, 1), 0, "0.998 tokens");
    tokio::time::advance(Duration::from_millis(2)).await;
    assert_eq!(burst(&mut sock, 2), 1, "1.002 tokens");
    // A long pause refills up to the burst, no further.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(burst(&mut sock, 7), 5);
    let m = shared.snapshot();
    assert_eq!(m.rejected(RejectReason::RateLimited), 5 + 1 + 1 + 2);
}

#[tokio::test(start_paused = true)]
async fn another_users_ack_leaves_a_frame_pending_and_the_receivers_own_clears_it() {
    let shared = server(social());
    let mut alice = Sock::login(&shared, "alice").await;
    let mut bob = Sock::login(&shared, "bob").await;
    let mut eve = Sock::login(&shared, "eve").await;
    alice
        .feed(&Frame::data(
            "alice",
            "bob",
            "hi",
            true,
            Some("f1".into()),
            0,
        ))
        .await;
    let got = bob.data();
    assert_eq!(contents(&got), ["hi"]);
    // Eve sends the very ACK bob would send (to alice, for f1), and one to the server.
    let mut forged = Frame::ack_of(&got[0]).unwrap();
    forged.from = Some("eve".into());
    eve.feed(&forged).await;
    let mut to_server = Frame::new(forged.ty, "eve", crate::protocol::SERVER_ID);
    to_server.data_content = Some("f1".into());
    eve.feed(&to_server).await;
    assert!(eve.written().is_empty(), "an ACK is not answered");

    // Bob's copy is still pending: resent on schedule, at 5 s.
    tokio::time::advance(Duration::from_millis(4_999)).await;
    timers(&shared).await;
    assert!(bob.data().is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    timers(&shared).await;
    let resent = bob.data();
    assert_eq!(contents(&resent), ["hi"], "eve's ACKs did not clear it");
    // Bob's own ACK does: no loss, nothing kept, nothing written again.
    bob.feed(&Frame::ack_of(&resent[0]).unwrap()).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    timers(&shared).await;
    assert!(bob.data().is_empty());
    let m = shared.snapshot();
    assert_eq!((m.qos_resends, m.qos_lost, m.s2c_kept), (1, 0, 0));
}

/// Records what reached `on_s2c_lost`, as (user, frame).
#[derive(Default)]
struct LostLog(std::sync::Mutex<Vec<(String, Frame)>>);

impl crate::server::ServerHooks for LostLog {
    fn on_s2c_lost(&self, user: &str, frame: &Frame) {
        let entry = (user.to_owned(), frame.clone());
        self.0.lock().unwrap().push(entry);
    }
}

/// A server whose `on_s2c_lost` is recorded.
fn server_losing(config: ServerConfig) -> (Arc<Shared>, Arc<LostLog>) {
    let log = Arc::new(LostLog::default());
    let store = StoreHandle::open(&StorePath::Memory, config.store_limits.clone()).unwrap();
    let addr = "127.0.0.1:0".parse().unwrap();
    let hooks = Box::new(log.clone());
    let shared = Arc::new(Shared::new(config, hooks, addr, None, store));
    (shared, log)
}

/// The fingerprints `on_s2c_lost` heard of, with their users.
fn lost(log: &LostLog) -> Vec<(String, Option<String>)> {
    let log = log.0.lock().unwrap();
    log.iter().map(|(u, f)| (u.clone(), f.fp.clone())).collect()
}

/// `ServerHandle::push` on the clock (the socket test in `tests/it/server_extensions.rs`
/// checks only its wiring): a QoS push is written at once, resent once at exactly
/// 5 s, given up at exactly 10 s and reported to `on_s2c_lost` once; an ACK, at once
/// or after the resend, stops it.
#[tokio::test(start_paused = true)]
async fn a_qos_push_is_resent_at_5_s_lost_at_10_s_and_reported_once_unless_acked() {
    let (shared, log) = server_losing(social());
    let handle = crate::server::ServerHandle::over(shared.clone());
    let mut bob = Sock::login(&shared, "bob").await;
    let m = || {
        let m = shared.snapshot();
        (m.qos_resends, m.qos_lost, m.s2c_kept)
    };

    // ACKed at once: never written again.
    let fp = handle.push("bob", "hello bob", true, 7).unwrap().unwrap();
    let got = bob.data();
    assert_eq!(
        got.iter().map(Frame::to_json).collect::<Vec<_>>(),
        [format!(
            r#"{{"bridge":false,"type":2,"dataContent":"hello bob","from":"0","to":"bob","fp":"{fp}","QoS":true,"typeu":7,"sm":-1}}"#
        )]
    );
    bob.feed(&Frame::ack_of(&got[0]).unwrap()).await;
    assert!(bob.written().is_empty(), "an ACK is not answered");
    tokio::time::advance(Duration::from_secs(30)).await;
    timers(&shared).await;
    assert!(bob.data().is_empty());
    assert_eq!((m(), lost(&log)), ((0, 0, 0), vec![]));

    // Never ACKed: the same frame once more at 5 s, nothing more, the loss at 10 s.
    let lost_fp = handle.push("bob", "never acked", true, 0).unwrap().unwrap();
    let first = bob.data();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].fp.as_deref(), Some(lost_fp.as_str()));
    tokio::time::advance(Duration::from_millis(4_999)).await;
    timers(&shared).await;
    assert!(bob.data().is_empty(), "nothing is due before 5 s");
    tokio::time::advance(Duration::from_millis(1)).await;
    timers(&shared).await;
    let resent = bob.data();
    assert_eq!(
        resent.iter().map(Frame::to_json).collect::<Vec<_>>(),
        [first[0].to_json()],
        "the resend is the same frame"
    );
    tokio::time::advance(Duration::from_millis(4_999)).await;
    timers(&shared).await;
    assert!(bob.data().is_empty(), "one resend only");
    assert_eq!(
        (m(), lost(&log)),
        ((1, 0, 0), vec![]),
        "not lost before 10 s"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    timers(&shared).await;
    let want = vec![("bob".to_owned(), Some(lost_fp.clone()))];
    assert_eq!((m(), lost(&log)), ((1, 1, 0), want.clone()), "lost at 10 s");
    assert_eq!(log.0.lock().unwrap()[0].1.content(), "never acked");
    assert!(bob.data().is_empty(), "a push is not kept in the box");

    // ACKed after the resend: no loss, nothing more.
    handle.push("bob", "late ack", true, 0).unwrap().unwrap();
    assert_eq!(bob.data().len(), 1);
    tokio::time::advance(Duration::from_secs(5)).await;
    timers(&shared).await;
    let resent = bob.data();
    assert_eq!(contents(&resent), ["late ack"]);
    bob.feed(&Frame::ack_of(&resent[0]).unwrap()).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    timers(&shared).await;
    assert!(bob.data().is_empty());
    assert_eq!(
        (m(), lost(&log)),
        ((2, 1, 0), want),
        "reported once, in all"
    );

    // Without QoS: no fingerprint, nothing pending.
    assert_eq!(handle.push("bob", "plain", false, 0), Ok(None));
    assert_eq!(contents(&bob.data()), ["plain"]);
    tokio::time::advance(Duration::from_secs(30)).await;
    timers(&shared).await;
    assert!(bob.data().is_empty());
}

/// Scenario 02 of the capture on the clock, upstream's rules (no social extension),
/// default timings; the socket version is `tests/it/server_upstream.rs`
/// (`s2c_qos_resend_and_loss_02`). A relayed message never ACKed: the sender gets one
/// relay ACK, the receiver the frame at 0 and 5 s, the host its loss at 10 s, once.
#[tokio::test(start_paused = true)]
async fn scenario_02_a_relay_never_acked_is_resent_at_5_s_and_reported_lost_at_10_s() {
    let mut config = social();
    config.extensions = false;
    let (shared, log) = server_losing(config);
    let dialect = shared.config.dialect;
    let mut alice = Sock::login(&shared, "alice").await;
    let mut bob = Sock::login(&shared, "bob").await;
    let msg = Frame::data("alice", "bob", "no-ack test 0", true, None, -1);
    alice.feed(&msg).await;
    let acks = alice.written();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].server_kind(dialect), ServerKind::Ack);
    assert_eq!(acks[0].content(), msg.fp.as_deref().unwrap());
    let first = bob.written();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].to_json(), msg.to_json(), "relayed as sent");

    tokio::time::advance(Duration::from_millis(4_999)).await;
    timers(&shared).await;
    assert!(bob.written().is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    timers(&shared).await;
    let second = bob.written();
    assert_eq!(second.len(), 1);
    assert_eq!(
        second[0].to_json(),
        msg.to_json(),
        "the resend is the same frame"
    );
    tokio::time::advance(Duration::from_millis(4_999)).await;
    timers(&shared).await;
    assert!(bob.written().is_empty());
    assert!(lost(&log).is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    timers(&shared).await;
    assert_eq!(lost(&log), [("bob".to_owned(), msg.fp.clone())]);
    assert!(bob.written().is_empty() && alice.written().is_empty());
    let m = shared.snapshot();
    assert_eq!((m.qos_resends, m.qos_lost, m.s2c_kept), (1, 1, 0));

    // An ACK after the resend stops it; an ACK at once means no resend.
    let late = Frame::data("alice", "bob", "ack-the-resend", true, None, -1);
    alice.feed(&late).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    timers(&shared).await;
    assert_eq!(contents(&bob.data()), ["ack-the-resend", "ack-the-resend"]);
    bob.feed(&Frame::ack_of(&late).unwrap()).await;
    let at_once = Frame::data("alice", "bob", "ack-at-once", true, None, -1);
    alice.feed(&at_once).await;
    assert_eq!(contents(&bob.data()), ["ack-at-once"]);
    bob.feed(&Frame::ack_of(&at_once).unwrap()).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    timers(&shared).await;
    assert!(bob.written().is_empty());
    assert_eq!(alice.written().len(), 2, "one relay ACK each");
    let m = shared.snapshot();
    assert_eq!((m.qos_resends, m.qos_lost), (2, 1));
    assert_eq!(lost(&log).len(), 1, "reported once");
}

/// A socket task (`run`) over an in-memory stream, with a WebSocket client on the
/// other end: the deadlines the task keeps, on the paused clock.
async fn socket_client(
    shared: &Arc<Shared>,
) -> (
    tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>,
    tokio::task::JoinHandle<()>,
) {
    let (server_end, client_end) = tokio::io::duplex(64 * 1024);
    let slots = Arc::new(tokio::sync::Semaphore::new(1));
    let permit = slots.acquire_owned().await.unwrap();
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let task = tokio::spawn(run(shared.clone(), server_end, deadline, permit));
    let url = format!("ws://127.0.0.1{}", shared.config.path);
    let (ws, _) = tokio_tungstenite::client_async(url, client_end)
        .await
        .unwrap();
    (ws, task)
}

/// What the client reads next, as (text, close): pings and pongs skipped.
async fn next_message(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>,
) -> (Option<Frame>, Option<(u16, String)>) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        return match ws.next().await {
            Some(Ok(Message::Text(t))) => (Some(Frame::decode(t.as_str()).unwrap()), None),
            Some(Ok(Message::Close(Some(c)))) => {
                (None, Some((c.code.into(), c.reason.to_string())))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        };
    }
}

/// The twin of `tests/it/server_reliability.rs` (`a_socket_that_never_logs_in_...`) on
/// the clock: echoes every 3 s keep the read timeout (11 s) away, but a socket that
/// has not logged in is closed at exactly the login timeout (10 s) after the
/// upgrade, with 1008. (A login waits for the store on its own thread, which would
/// let the paused clock jump, so the socket test keeps the logged-in side.)
#[tokio::test(start_paused = true)]
async fn a_socket_that_never_logs_in_is_closed_at_exactly_the_login_timeout() {
    use futures_util::SinkExt;
    let mut config = social();
    config.read_timeout = Duration::from_secs(11);
    let shared = server(config);
    assert_eq!(shared.config.login_timeout, Duration::from_secs(10));
    let (mut idle, idle_task) = socket_client(&shared).await;
    let start = Instant::now();
    for at in [0, 3, 6, 9] {
        tokio::time::sleep_until(start + Duration::from_secs(at)).await;
        let echo = Frame::echo("x", "ping").to_json();
        idle.send(echo.into()).await.unwrap();
        let (echo, close) = next_message(&mut idle).await;
        assert_eq!((echo.map(|f| f.ty), close), (Some(53), None), "at {at} s");
        assert_eq!(start.elapsed(), Duration::from_secs(at), "answered at once");
    }
    let (text, close) = next_message(&mut idle).await;
    assert_eq!(text, None);
    assert_eq!(close, Some((1008, "login timeout".to_owned())));
    assert_eq!(start.elapsed(), Duration::from_secs(10), "exactly at 10 s");
    let m = shared.snapshot();
    assert_eq!(m.rejected(RejectReason::LoginTimeout), 1);
    assert_eq!(m.rejected(RejectReason::ReadTimeout), 0);
    drop(idle);
    idle_task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_history_page_too_long_for_a_frame_leaves_out_its_oldest_and_says_more() {
    let mut config = social();
    config.max_frame_bytes = 1024;
    let shared = server(config);
    let mut alice = Sock::login(&shared, "alice").await;
    let mut bob = Sock::login(&shared, "bob").await;
    for n in 0..3 {
        let text = format!("{n}{}", "x".repeat(400));
        alice
            .feed(&Frame::data(
                "alice",
                "bob",
                text,
                true,
                Some(format!("f{n}")),
                0,
            ))
            .await;
    }
    assert_eq!(bob.data().len(), 3, "each message fits a frame on its own");
    alice.written();
    shared.store.flush().await.unwrap();
    let mut request = RoomRequest::new(5, RoomOp::History);
    request.peer = Some("bob".into());
    alice.feed(&Frame::room_request("alice", &request)).await;
    let written = alice.written();
    let text = written.last().unwrap().to_json();
    assert!(text.len() <= 1024, "{} bytes", text.len());
    let page = reply(written.last().unwrap());
    assert_eq!(page.code, 0);
    assert!(page.more, "what was left out can be paged for");
    let kept: Vec<char> = page
        .messages
        .iter()
        .map(|m| m.content.chars().next().unwrap())
        .collect();
    assert!(!kept.is_empty() && kept.len() < 3, "{kept:?}");
    assert_eq!(kept.last(), Some(&'2'), "the newest are kept");
}

#[tokio::test(start_paused = true)]
async fn a_forged_mid_cannot_take_another_senders_message_out_of_a_box() {
    let shared = server(social());
    let mut carol = Sock::login(&shared, "carol").await;
    carol
        .feed(&Frame::data(
            "carol",
            "bob",
            "for later",
            true,
            Some("c1".into()),
            0,
        ))
        .await;
    shared.store.flush().await.unwrap();
    let mut bob = Sock::login(&shared, "bob").await;
    let boxed = bob.data();
    assert_eq!(contents(&boxed), ["for later"]);
    let mid = boxed[0].mid;
    assert!(mid.is_some());
    // Alice forges the box message's id and "stored" on a message of her own.
    let mut alice = Sock::login(&shared, "alice").await;
    let mut forged = Frame::data("alice", "bob", "forged", true, Some("a1".into()), 0);
    forged.mid = mid;
    forged.stored = true;
    alice.feed(&forged).await;
    let got = bob.data();
    assert_eq!(contents(&got), ["forged"]);
    assert_eq!(
        (got[0].mid, got[0].stored),
        (None, false),
        "the server's fields only"
    );
    bob.feed(&Frame::ack_of(&got[0]).unwrap()).await;
    shared.store.flush().await.unwrap();
    // Carol's message, never ACKed, is still in the box at bob's next login.
    bob.close(LogoutReason::Logout);
    let mut bob = Sock::login(&shared, "bob").await;
    assert_eq!(contents(&bob.data()), ["for later"]);
}
