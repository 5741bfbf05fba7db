//! Several `im-server` nodes sharing users over one NATS server (feature `cluster`):
//! direct messages across nodes with QoS, a login on another node kicking the first,
//! a node killed (`kill -9`) letting its users go within its lease and, with ACK on
//! receipt, losing nothing that was ACKed, a node cut off from NATS past its lease
//! handing over what was stored for its users meanwhile and kicking a session that a
//! login elsewhere replaced meanwhile, a private room created through one node
//! private on all (and its members kept by a node restarted), NATS itself
//! restarted under a message in flight, a room with members on two nodes, and
//! offline boxes and room history shared by the nodes. Each test starts its own `nats-server` (a
//! free port, a temporary JetStream folder) and stops it; without `nats-server`
//! installed they say so and pass, unless `BEVY_IM_REQUIRE_NATS` is set (`.ci/run`
//! sets it).
#![cfg(all(unix, feature = "cluster"))]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::nats::Nats;
use crate::support::proxy::Proxy;
use crate::support::{Client, Event, Recorder, eventually, eventually_within, logged_in};
use bevy_im::protocol::{Dialect, Frame, ServerKind};
use bevy_im::server::{ClusterConfig, ServerConfig, ServerHandle};

const DIALECT: Dialect = Dialect::Seed;

fn node_config(nats: &Nats, id: &str) -> ServerConfig {
    let mut cluster = ClusterConfig::new(nats.url(), id);
    cluster.lease = Duration::from_secs(1);
    cluster.request_timeout = Duration::from_secs(1);
    ServerConfig {
        // The raw test clients send no keepalives.
        read_timeout: Duration::from_secs(30),
        cluster: Some(cluster),
        ..crate::support::config(DIALECT)
    }
}

async fn node(nats: &Nats, id: &str) -> ServerHandle {
    crate::support::start(node_config(nats, id), Recorder::new()).await
}

fn ack_type() -> i32 {
    DIALECT.server_type(ServerKind::Ack)
}

/// The next frame of `client` that is not a keepalive reply.
async fn next_frame(client: &mut Client) -> Frame {
    loop {
        let frame = client.recv().await;
        if frame.ty != 51 {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_cross_nodes_with_qos_both_ways() {
    let Some(nats) = Nats::start() else { return };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut alice = logged_in(&a.url(), "alice").await;
    let mut bob = logged_in(&b.url(), "bob").await;
    eventually("a sees bob on b", || {
        a.node_of("bob").as_deref() == Some("b")
    })
    .await;
    eventually("b sees alice on a", || {
        b.node_of("alice").as_deref() == Some("a")
    })
    .await;

    exchange(("alice", &mut alice), ("bob", &mut bob)).await;
    exchange(("bob", &mut bob), ("alice", &mut alice)).await;
    // Each node counted one forward each way, answered, with its round trip.
    for handle in [&a, &b] {
        let c = handle.metrics().cluster.expect("a node's metrics");
        assert_eq!(
            (c.forwarded, c.forward_failures, c.received),
            (1, 0, 1),
            "{c:?}"
        );
        assert!(c.forward_rtt_us > 0, "{c:?}");
        let text = handle.metrics().to_prometheus();
        assert!(text.contains("im_cluster_forwarded_total 1"), "{text}");
    }
    // The pair's history is the same from either node, with the same ids.
    let mut pages = Vec::new();
    for (client, user, peer) in [(&mut alice, "alice", "bob"), (&mut bob, "bob", "alice")] {
        let page = pair_history(client, user, peer, 2).await;
        pages.push(page);
    }
    assert_eq!(pages[0], pages[1]);
    let texts: Vec<&str> = pages[0].iter().map(|(_, _, text)| text.as_str()).collect();
    assert_eq!(texts, ["alice to bob", "bob to alice"]);
    // A node started later knows who is online where already.
    let c = node(&nats, "c").await;
    eventually("c sees bob on b", || {
        c.node_of("bob").as_deref() == Some("b")
    })
    .await;
    assert_eq!(c.node_of("alice").as_deref(), Some("a"));
}

/// A QoS message from one client to another on another node: it arrives, and the
/// sender's ACK (the receiving node accepted it) follows; the receiver ACKs it.
async fn exchange(sender: (&str, &mut Client), receiver: (&str, &mut Client)) {
    let ((from, sender), (to, receiver)) = (sender, receiver);
    let text = format!("{from} to {to}");
    let message = Frame::data(from, to, text.clone(), true, None, 0);
    let fp = message.fp.clone().unwrap();
    sender.send(&message).await;
    let got = next_frame(receiver).await;
    assert_eq!(
        (got.from_id(), got.content(), got.fp.as_deref()),
        (from, text.as_str(), Some(fp.as_str()))
    );
    let ack = next_frame(sender).await;
    assert_eq!((ack.ty, ack.content()), (ack_type(), fp.as_str()));
    receiver.send(&Frame::ack_of(&got).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_on_another_node_follows_the_first_login_time_rule() {
    let Some(nats) = Nats::start() else { return };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut first = Client::connect(&a.url()).await;
    let t = first.login("alice").await;
    eventually("b sees alice on a", || {
        b.node_of("alice").as_deref() == Some("a")
    })
    .await;

    // An older session coming back on b is the one kicked.
    let mut stale = Client::connect(&b.url()).await;
    stale.login_at("alice", t - 60_000).await;
    let kick = next_frame(&mut stale).await;
    assert_eq!(
        kick.ty,
        DIALECT.server_type(ServerKind::Kickout),
        "{kick:?}"
    );
    assert_eq!(a.node_of("alice").as_deref(), Some("a"));

    // A fresh login on b wins: a's session is kicked there.
    let mut second = logged_in(&b.url(), "alice").await;
    let kick = next_frame(&mut first).await;
    assert_eq!(
        kick.ty,
        DIALECT.server_type(ServerKind::Kickout),
        "{kick:?}"
    );
    eventually("a sees alice on b", || {
        a.node_of("alice").as_deref() == Some("b")
    })
    .await;
    assert!(!a.is_online("alice"));

    // Messages for alice written on a reach her on b.
    let mut carol = logged_in(&a.url(), "carol").await;
    carol
        .send(&Frame::data(
            "carol",
            "alice",
            "after the kick",
            true,
            None,
            0,
        ))
        .await;
    let got = next_frame(&mut second).await;
    assert_eq!((got.from_id(), got.content()), ("carol", "after the kick"));
}

/// `im-server` as a process of its own, killed with SIGKILL on drop.
struct NodeProcess {
    child: Child,
    url: String,
}

impl NodeProcess {
    fn start(nats: &Nats, id: &str) -> NodeProcess {
        Self::start_with(nats, id, &[])
    }

    /// A node with more `im-server` flags.
    fn start_with(nats: &Nats, id: &str, flags: &[&str]) -> NodeProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_im-server"))
            .args(["--store", "memory", "--log-level", "error", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "--cluster",
                &nats.url(),
                "--node-id",
                id,
                "--cluster-lease",
                "1",
            ])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("im-server");
        // Owned at once: a failed start below still kills it.
        let node = NodeProcess {
            child,
            url: format!("ws://127.0.0.1:{port}/websocket"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "node {id} did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    /// Logs `user` in, retrying while the node is still joining the cluster (it
    /// listens before it serves).
    async fn logged_in(&self, user: &str) -> Client {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = tokio_tungstenite::connect_async(self.url.as_str());
            if let Ok(Ok((ws, _))) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
                let mut client = Client { ws };
                client.login(user).await;
                return client;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the node never served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_lets_its_users_go_within_its_lease() {
    let Some(nats) = Nats::start() else { return };
    let mut a = NodeProcess::start(&nats, "a");
    let b = node(&nats, "b").await;
    let mut bob = a.logged_in("bob").await;
    eventually("b sees bob on a", || {
        b.node_of("bob").as_deref() == Some("a")
    })
    .await;

    a.kill();
    assert!(matches!(
        bob.next_event_within(Duration::from_secs(2)).await,
        Some(Event::Ended | Event::Close(..)) | None
    ));
    // The lease is 1 s; a third of it later every node has looked again.
    eventually_within("b lets bob go", Duration::from_secs(4), || {
        b.node_of("bob").is_none()
    })
    .await;

    // A message for bob now waits in his offline box, ACKed as stored...
    let mut alice = logged_in(&b.url(), "alice").await;
    let message = Frame::data("alice", "bob", "while a was down", true, None, 0);
    let fp = message.fp.clone().unwrap();
    alice.send(&message).await;
    let ack = next_frame(&mut alice).await;
    assert_eq!(
        (ack.ty, ack.content(), ack.stored),
        (ack_type(), fp.as_str(), true)
    );
    // ...and bob, logging in on b at once, gets it.
    let mut bob = logged_in(&b.url(), "bob").await;
    let got = next_frame(&mut bob).await;
    assert_eq!(
        (got.from_id(), got.content()),
        ("alice", "while a was down")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ack_on_receipt_a_killed_receiving_node_loses_nothing_that_was_acked() {
    let Some(nats) = Nats::start() else { return };
    let a = crate::support::start(
        ServerConfig {
            ack_on_receipt: true,
            ..node_config(&nats, "a")
        },
        Recorder::new(),
    )
    .await;
    let mut b = NodeProcess::start_with(&nats, "b", &["--ack-on-receipt"]);
    let mut alice = logged_in(&a.url(), "alice").await;
    let mut bob = b.logged_in("bob").await;
    eventually("a sees bob on b", || {
        a.node_of("bob").as_deref() == Some("b")
    })
    .await;

    let messages: Vec<Frame> = (1..=6)
        .map(|i| Frame::data("alice", "bob", format!("m{i}"), true, None, 0))
        .collect();
    for m in &messages {
        alice.send(m).await;
    }
    // Bob's client gets all six and ACKs the first three only.
    let mut received = Vec::new();
    for _ in 0..6 {
        received.push(next_frame(&mut bob).await);
    }
    for got in &received[..3] {
        bob.send(&Frame::ack_of(got).unwrap()).await;
    }
    // Alice's ACKs are bob's: exactly the three he sent, from his node.
    let fps: Vec<String> = messages.iter().map(|m| m.fp.clone().unwrap()).collect();
    let mut acked = Vec::new();
    while let Some(Event::Text(text)) = alice.next_event_within(Duration::from_secs(1)).await {
        let ack = Frame::decode(&text).unwrap();
        assert_eq!(ack.ty, ack_type(), "{text}");
        acked.push(ack.content().to_owned());
    }
    acked.sort();
    let mut first_three = fps[..3].to_vec();
    first_three.sort();
    assert_eq!(acked, first_three, "only what bob ACKed is ACKed to alice");
    // A resend of one whose ACK alice missed is ACKed again, not handed over again.
    alice.send(&messages[0]).await;
    let again = next_frame(&mut alice).await;
    assert_eq!((again.ty, again.content()), (ack_type(), fps[0].as_str()));
    assert_eq!(
        bob.next_event_within(Duration::from_millis(300)).await,
        None
    );

    // Node b dies with m4..m6 handed to bob but not ACKed by him.
    b.kill();
    drop(bob);
    let mut bob = logged_in(&a.url(), "bob").await;
    // Alice's QoS resends the three still unACKed; bob, now on a, gets them.
    for m in &messages[3..] {
        alice.send(m).await;
    }
    let mut later = Vec::new();
    for _ in 0..3 {
        let got = next_frame(&mut bob).await;
        bob.send(&Frame::ack_of(&got).unwrap()).await;
        later.push(got.content().to_owned());
    }
    later.sort();
    assert_eq!(later, ["m4", "m5", "m6"]);
    let mut acked = Vec::new();
    for _ in 0..3 {
        let ack = next_frame(&mut alice).await;
        assert_eq!(ack.ty, ack_type());
        acked.push(ack.content().to_owned());
    }
    acked.sort();
    let mut last_three = fps[3..].to_vec();
    last_three.sort();
    assert_eq!(acked, last_three);
    let c = a.metrics().cluster.expect("a node's metrics");
    assert!(c.received >= 3, "bob's receipts came to a: {c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_flight_while_nats_restarts_is_never_acked_unless_delivered() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut alice = logged_in(&a.url(), "alice").await;
    let mut bob = logged_in(&b.url(), "bob").await;
    eventually("a sees bob on b", || {
        a.node_of("bob").as_deref() == Some("b")
    })
    .await;

    nats.kill();
    let message = Frame::data("alice", "bob", "through the outage", true, None, 0);
    let fp = message.fp.clone().unwrap();
    alice.send(&message).await;
    // No answer from b within the request timeout: no ACK, nothing delivered.
    assert_eq!(alice.next_event_within(Duration::from_secs(2)).await, None);
    assert_eq!(
        bob.next_event_within(Duration::from_millis(100)).await,
        None
    );
    nats.restart();

    // The client resends (same fingerprint) until it is ACKed; it arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let acked = loop {
        alice.send(&message).await;
        if let Some(Event::Text(text)) = alice.next_event_within(Duration::from_secs(1)).await {
            break Frame::decode(&text).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ACK after NATS came back"
        );
    };
    assert_eq!((acked.ty, acked.content()), (ack_type(), fp.as_str()));
    if acked.stored {
        // Node a took b for dead for a moment (b's lease lapsed during the outage)
        // and stored the message in bob's box: it is bob's at his next login.
        drop(bob);
        bob = logged_in(&b.url(), "bob").await;
    }
    let got = next_frame(&mut bob).await;
    assert_eq!(got.content(), "through the outage");
}

/// Runs a test on its own runtime. Not a `tokio::test`: the proxy runs (and stops)
/// its own runtime, which must be outside this one.
fn block_on(test: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// A node that reaches NATS through `link`, a proxy that can cut it off.
async fn node_through(nats: &Nats, link: &Proxy, id: &str) -> ServerHandle {
    let mut config = node_config(nats, id);
    if let Some(cluster) = config.cluster.as_mut() {
        cluster.url = format!("nats://{}", link.addr());
    }
    crate::support::start(config, Recorder::new()).await
}

#[test]
fn a_node_cut_off_from_nats_past_its_lease_hands_over_what_was_stored_meanwhile() {
    let Some(nats) = Nats::start() else { return };
    let link = Proxy::start(([127, 0, 0, 1], nats.port).into());
    block_on(cut_off(&nats, &link));
}

async fn cut_off(nats: &Nats, link: &Proxy) {
    let a = node(nats, "a").await;
    let b = node_through(nats, link, "b").await;
    let mut alice = logged_in(&a.url(), "alice").await;
    let mut bob = logged_in(&b.url(), "bob").await;
    eventually("a sees bob on b", || {
        a.node_of("bob").as_deref() == Some("b")
    })
    .await;

    // b is cut off; its lease (1 s) lapses, and a takes bob for offline.
    link.refuse(true);
    eventually_within("a lets bob go", Duration::from_secs(5), || {
        a.node_of("bob").is_none()
    })
    .await;
    let message = Frame::data("alice", "bob", "stored while b was away", true, None, 0);
    alice.send(&message).await;
    let ack = next_frame(&mut alice).await;
    assert_eq!(
        (ack.ty, ack.content(), ack.stored),
        (ack_type(), message.fp.as_deref().unwrap(), true)
    );
    // b could not hear the announcement. Back on NATS, it hands the message to bob,
    // who never left b: no new login needed, and only once.
    link.refuse(false);
    // NATS's client reconnects after a back-off of up to 4 s.
    let Some(Event::Text(text)) = bob.next_event_within(Duration::from_secs(20)).await else {
        panic!("the stored message was not handed over once b was back");
    };
    let got = Frame::decode(&text).unwrap();
    assert_eq!(
        (got.from_id(), got.content()),
        ("alice", "stored while b was away")
    );
    bob.send(&Frame::ack_of(&got).unwrap()).await;
    eventually("a routes to bob on b again", || {
        a.node_of("bob").as_deref() == Some("b")
    })
    .await;
    assert_eq!(
        bob.next_event_within(Duration::from_millis(500)).await,
        None
    );
}

#[test]
fn a_login_elsewhere_while_a_node_was_cut_off_kicks_its_session_there_once_it_is_back() {
    let Some(nats) = Nats::start() else { return };
    let link = Proxy::start(([127, 0, 0, 1], nats.port).into());
    block_on(login_while_cut_off(&nats, &link));
}

async fn login_while_cut_off(nats: &Nats, link: &Proxy) {
    let a = node(nats, "a").await;
    let b = node_through(nats, link, "b").await;
    let mut on_b = logged_in(&b.url(), "bob").await;
    eventually("a sees bob on b", || {
        a.node_of("bob").as_deref() == Some("b")
    })
    .await;
    link.refuse(true);
    eventually_within("a lets bob go", Duration::from_secs(5), || {
        a.node_of("bob").is_none()
    })
    .await;
    // Bob logs in on a; b, cut off, hears no kick.
    let _on_a = logged_in(&a.url(), "bob").await;
    assert_eq!(
        on_b.next_event_within(Duration::from_millis(300)).await,
        None
    );
    // Back on NATS, b sees the newer login in the presence bucket and kicks its own.
    link.refuse(false);
    let Some(Event::Text(text)) = on_b.next_event_within(Duration::from_secs(20)).await else {
        panic!("bob's older session on b was not kicked");
    };
    let kick = Frame::decode(&text).unwrap();
    assert_eq!(kick.ty, DIALECT.server_type(ServerKind::Kickout), "{text}");
    eventually("b lets its bob go", || !b.is_online("bob")).await;
    assert_eq!(a.node_of("bob").as_deref(), Some("a"));
    eventually("b routes bob to a", || {
        b.node_of("bob").as_deref() == Some("a")
    })
    .await;
}

/// A room request from a raw client, and its reply (events before it are skipped).
async fn room_request(
    client: &mut Client,
    user: &str,
    op: bevy_im::protocol::RoomOp,
    room: &str,
) -> bevy_im::protocol::RoomReply {
    let reply = room_reply(client, user, op, room).await;
    assert_eq!(reply.code, 0, "{reply:?}");
    reply
}

/// A room request's reply, whatever its code.
async fn room_reply(
    client: &mut Client,
    user: &str,
    op: bevy_im::protocol::RoomOp,
    room: &str,
) -> bevy_im::protocol::RoomReply {
    use bevy_im::protocol::{RoomReply, RoomRequest, decode_body};
    let request = RoomRequest::new(1, op).room(room);
    client.send(&Frame::room_request(user, &request)).await;
    loop {
        let frame = next_frame(client).await;
        let reply: RoomReply = decode_body(frame.data_content.as_deref()).unwrap();
        if reply.op == op {
            return reply;
        }
    }
}

/// A host that lets into private rooms only users named `vip-…`.
struct Vip;

impl bevy_im::server::ServerHooks for Vip {
    fn may_join(&self, user_id: &str, _room: &str) -> bool {
        user_id.starts_with("vip-")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_room_created_through_one_node_is_private_on_every_node() {
    use bevy_im::protocol::RoomOp;
    let Some(nats) = Nats::start() else { return };
    let a = crate::support::start(node_config(&nats, "a"), Vip).await;
    // Node b keeps a file store, and is restarted on it below.
    let dir = tempfile::Builder::new()
        .prefix("bevy_im-cluster-")
        .tempdir()
        .unwrap();
    let b_config = ServerConfig {
        store: bevy_im::server::StorePath::File(dir.path().join("b.db")),
        ..node_config(&nats, "b")
    };
    let b = crate::support::start(b_config.clone(), Vip).await;
    a.create_room("backstage", true, None).await.unwrap();
    eventually("b has the room", || {
        b.rooms().iter().any(|(room, _)| room == "backstage")
    })
    .await;
    // On b, the host's hook decides, as on a.
    let mut fan = logged_in(&b.url(), "fan").await;
    let refused = room_reply(&mut fan, "fan", RoomOp::Join, "backstage").await;
    assert_eq!(refused.code, 403, "{refused:?}");
    let mut vip_b = logged_in(&b.url(), "vip-b").await;
    join(&mut vip_b, "vip-b", "backstage").await;
    eventually("a sees vip-b on b", || {
        a.node_of("vip-b").as_deref() == Some("b")
    })
    .await;
    let mut vip_a = logged_in(&a.url(), "vip-a").await;
    let joined = join(&mut vip_a, "vip-a", "backstage").await;
    assert_eq!(names(&joined), ["vip-a", "vip-b"], "{joined:?}");
    // A node started later has it before it serves anyone.
    let c = crate::support::start(node_config(&nats, "c"), Vip).await;
    assert!(c.rooms().iter().any(|(room, _)| room == "backstage"));
    let mut fan_c = logged_in(&c.url(), "fan-c").await;
    let refused = room_reply(&mut fan_c, "fan-c", RoomOp::Join, "backstage").await;
    assert_eq!(refused.code, 403, "{refused:?}");
    // Node b, restarted on its store, has its member of the room back (offline).
    drop(vip_b);
    b.shutdown().await;
    let b = crate::support::start(b_config, Vip).await;
    let rooms = b.rooms();
    let backstage = rooms.iter().find(|(room, _)| room == "backstage");
    let members: Vec<&str> = backstage
        .map(|(_, members)| members.iter().map(|m| m.user.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(members, ["vip-b"], "{rooms:?}");

    // Made public through b: a lets a fan in, within a moment.
    b.create_room("backstage", false, None).await.unwrap();
    let mut fan_a = logged_in(&a.url(), "fan-a").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = room_reply(&mut fan_a, "fan-a", RoomOp::Join, "backstage").await;
        if reply.code == 0 {
            break;
        }
        assert_eq!(reply.code, 403, "{reply:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "a kept the room private"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn join(client: &mut Client, user: &str, room: &str) -> bevy_im::protocol::RoomReply {
    room_request(client, user, bevy_im::protocol::RoomOp::Join, room).await
}

fn names(reply: &bevy_im::protocol::RoomReply) -> Vec<&str> {
    reply.members.iter().map(|m| m.user.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_nodes_for_messages_and_member_events() {
    use bevy_im::protocol::{RoomOp, RoomReply, decode_body, room_address};
    let Some(nats) = Nats::start() else { return };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut alice = logged_in(&a.url(), "alice").await;
    let mut bob = logged_in(&b.url(), "bob").await;
    let mut carol = logged_in(&b.url(), "carol").await;
    join(&mut alice, "alice", "hall").await;
    // The member list spans nodes.
    let joined = join(&mut bob, "bob", "hall").await;
    assert_eq!(names(&joined), ["alice", "bob"], "{joined:?}");
    // Alice, alone in the room on a, hears bob join on b.
    let event = next_frame(&mut alice).await;
    let event: RoomReply = decode_body(event.data_content.as_deref()).unwrap();
    assert_eq!(
        (event.op, event.room.as_deref(), event.user.as_deref()),
        (RoomOp::Joined, Some("hall"), Some("bob"))
    );
    join(&mut carol, "carol", "hall").await;
    let event: RoomReply =
        decode_body(next_frame(&mut alice).await.data_content.as_deref()).unwrap();
    assert_eq!(
        (event.op, event.user.as_deref()),
        (RoomOp::Joined, Some("carol"))
    );
    // Bob hears carol join on his own node, once. (Alice's join, published by a,
    // may reach b after bob's own join listed her: the same fact twice, harmless.)
    loop {
        let event: RoomReply =
            decode_body(next_frame(&mut bob).await.data_content.as_deref()).unwrap();
        match (event.op, event.user.as_deref()) {
            (RoomOp::Joined, Some("carol")) => break,
            (RoomOp::Joined, Some("alice")) => continue,
            other => panic!("bob heard {other:?}"),
        }
    }

    // A message from a reaches both members on b, once each; one from b reaches a.
    let hall = room_address("hall");
    alice
        .send(&Frame::data("alice", &hall, "hello hall", true, None, 0))
        .await;
    for member in [&mut bob, &mut carol] {
        let got = next_frame(member).await;
        assert_eq!((got.from_id(), got.content()), ("alice", "hello hall"));
    }
    bob.send(&Frame::data("bob", &hall, "hi from b", true, None, 0))
        .await;
    let mut from_bob = Vec::new();
    for _ in 0..2 {
        let got = next_frame(&mut alice).await;
        if got.ty == 2 {
            from_bob.push(got.content().to_owned());
        }
    }
    assert_eq!(
        from_bob,
        ["hi from b"],
        "alice got it once (the other frame: her ACK)"
    );
    let got = next_frame(&mut carol).await;
    assert_eq!((got.from_id(), got.content()), ("bob", "hi from b"));
    assert_eq!(
        carol.next_event_within(Duration::from_millis(300)).await,
        None
    );
    let listed = room_request(&mut carol, "carol", RoomOp::Members, "hall").await;
    assert_eq!(names(&listed), ["alice", "bob", "carol"], "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_boxes_and_room_history_are_shared_by_the_nodes() {
    use bevy_im::protocol::{RoomOp, RoomReply, RoomRequest, decode_body, room_address};
    let Some(nats) = Nats::start() else { return };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);

    // Stored through a for bob, who is nowhere online...
    let mut alice = logged_in(&a.url(), "alice").await;
    let message = Frame::data("alice", "bob", "kept for bob", true, None, 0);
    alice.send(&message).await;
    let ack = next_frame(&mut alice).await;
    assert_eq!((ack.ty, ack.stored), (ack_type(), true), "{ack:?}");
    // ...delivered when he logs in on b; his ACK takes it out of the box.
    let mut bob = logged_in(&b.url(), "bob").await;
    let got = next_frame(&mut bob).await;
    assert_eq!((got.from_id(), got.content()), ("alice", "kept for bob"));
    assert!(got.mid.is_some(), "a box message has its id: {got:?}");
    bob.send(&Frame::ack_of(&got).unwrap()).await;
    bob.barrier().await;
    drop(bob);
    // Logging in again, on a this time: the box is empty.
    eventually_within("the box emptied", Duration::from_secs(5), || {
        b.metrics().users_online == 0
    })
    .await;
    let mut bob = logged_in(&a.url(), "bob").await;
    assert_eq!(
        bob.next_event_within(Duration::from_millis(500)).await,
        None
    );
    drop(bob);

    // Room history: a message posted on a is in the history a joiner on b gets, with
    // the same id.
    join(&mut alice, "alice", "annals").await;
    let hall = room_address("annals");
    alice
        .send(&Frame::data(
            "alice",
            &hall,
            "for the record",
            true,
            None,
            0,
        ))
        .await;
    let ack = next_frame(&mut alice).await;
    let posted_mid = ack.mid.expect("a room message's id");
    let mut carol = logged_in(&b.url(), "carol").await;
    let request = RoomRequest::new(7, RoomOp::Join).room("annals");
    carol.send(&Frame::room_request("carol", &request)).await;
    let reply: RoomReply =
        decode_body(next_frame(&mut carol).await.data_content.as_deref()).unwrap();
    assert_eq!((reply.op, reply.code), (RoomOp::Join, 0), "{reply:?}");
    let history: Vec<(i64, &str)> = reply
        .messages
        .iter()
        .map(|m| (m.mid, m.content.as_str()))
        .collect();
    assert_eq!(history, [(posted_mid, "for the record")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_gracefully_hands_its_users_over() {
    let Some(nats) = Nats::start() else { return };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let mut bob = logged_in(&a.url(), "bob").await;
    eventually("b sees bob on a", || {
        b.node_of("bob").as_deref() == Some("a")
    })
    .await;

    a.shutdown().await;
    // Told to go elsewhere, and let go at once: a gave its lease back first.
    let (code, _) = bob.expect_close().await;
    assert_eq!(code, 1001);
    eventually_within("b lets bob go", Duration::from_secs(1), || {
        b.node_of("bob").is_none()
    })
    .await;
    let mut bob = logged_in(&b.url(), "bob").await;
    let mut alice = logged_in(&b.url(), "alice").await;
    alice
        .send(&Frame::data("alice", "bob", "on b now", true, None, 0))
        .await;
    let got = next_frame(&mut bob).await;
    assert_eq!(got.content(), "on b now");
}

/// The direct history of `user` with `peer`, once it holds `count` messages (the
/// history is written after the relay): (id, sender, text) of each, oldest first.
async fn pair_history(
    client: &mut Client,
    user: &str,
    peer: &str,
    count: usize,
) -> Vec<(i64, String, String)> {
    use bevy_im::protocol::{RoomOp, RoomReply, RoomRequest, decode_body};
    for attempt in 0..50 {
        let mut request = RoomRequest::new(attempt, RoomOp::History);
        request.peer = Some(peer.to_owned());
        client.send(&Frame::room_request(user, &request)).await;
        let reply: RoomReply = loop {
            let frame = next_frame(client).await;
            let reply: RoomReply = decode_body(frame.data_content.as_deref()).unwrap();
            if reply.op == RoomOp::History {
                break reply;
            }
        };
        assert_eq!(reply.code, 0, "{reply:?}");
        if reply.messages.len() >= count {
            return reply
                .messages
                .iter()
                .map(|m| (m.mid, m.from.clone(), m.content.clone()))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{user}'s history with {peer} never held {count} messages");
}
