//! The server's protocol logic driven with scripted frames and a scripted clock: no
//! sockets, tokio's paused time, every timer run by hand (`Server::timers`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::socket::SessionCleanup;
use super::*;
use crate::protocol::{RoomOp, RoomReply, RoomRequest, decode_body};
use crate::server::state::SessionEntry;
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
    rx: mpsc::UnboundedReceiver<Command>,
    queued: Arc<AtomicUsize>,
    cleanup: SessionCleanup,
    /// Written after the login reply, not yet looked at.
    held: Vec<Frame>,
}

impl Sock {
    fn open(shared: &Arc<Shared>) -> Self {
        let id = shared.next_session_id();
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let entry = SessionEntry {
            tx,
            queued: queued.clone(),
            user: None,
        };
        shared.lock().sessions.insert(id, entry);
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
        while let Ok(cmd) = self.rx.try_recv() {
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
