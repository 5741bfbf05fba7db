//! The social extension of the reference server over real sockets on 127.0.0.1, with
//! raw protocol clients: negotiation, rooms, presence, room messages with QoS per
//! receiver, history, offline messages, block lists, moderation, bad input, and what
//! survives a restart on the same store file.
#![cfg(all(feature = "server", not(target_arch = "wasm32")))]

use std::sync::Arc;
use std::time::Duration;

use crate::support::{Client, WAIT, config, logged_in, start};
use bevy_im::protocol::{
    Dialect, ErrorResponse, Frame, LoginResponse, RoomOp, RoomReply, RoomRequest, decode_body,
    room_code,
};
use bevy_im::server::{
    AcceptAll, Moderation, RejectReason, RoomsConfig, ServerConfig, ServerHooks, StorePath,
};

fn rooms_config() -> ServerConfig {
    config(Dialect::MobileImSdkV6)
}

async fn request(c: &mut Client, user: &str, request: RoomRequest) {
    c.send(&Frame::room_request(user, &request)).await;
}

/// The next frame, which must be a room reply or event.
async fn room_reply(c: &mut Client) -> RoomReply {
    let f = c.recv().await;
    assert_eq!(f.ty, 150, "a room reply: {f:?}");
    decode_body(f.data_content.as_deref()).unwrap()
}

async fn join(c: &mut Client, user: &str, room: &str, req: u64) -> RoomReply {
    request(c, user, RoomRequest::new(req, RoomOp::Join).room(room)).await;
    let reply = room_reply(c).await;
    assert_eq!(
        (reply.op, reply.req, reply.code),
        (RoomOp::Join, Some(req), 0),
        "{reply:?}"
    );
    reply
}

fn error_of(f: &Frame) -> ErrorResponse {
    assert_eq!(f.ty, 52, "an error frame: {f:?}");
    decode_body(f.data_content.as_deref()).unwrap()
}

fn users(reply: &RoomReply) -> Vec<(String, bool)> {
    reply
        .members
        .iter()
        .map(|m| (m.user.clone(), m.online))
        .collect()
}

#[tokio::test]
async fn the_login_reply_lists_the_extensions_and_room_like_ids_are_refused() {
    let server = start(rooms_config(), AcceptAll).await;
    let mut alice = Client::connect(&server.url()).await;
    let reply = alice.login_at("alice", 0).await;
    let body: LoginResponse = decode_body(reply.data_content.as_deref()).unwrap();
    assert_eq!(
        body.ext,
        ["rooms", "presence", "history", "offline", "block"]
    );
    let mut mallory = Client::connect(&server.url()).await;
    let reply = mallory.login_at("#lobby", 0).await;
    let body: LoginResponse = decode_body(reply.data_content.as_deref()).unwrap();
    assert_eq!(body.code, 4, "a user id that looks like a room");
    server.shutdown().await;
}

#[tokio::test]
async fn three_members_chat_in_a_room_with_qos_per_receiver_and_history_on_join() {
    let server = start(rooms_config(), AcceptAll).await;
    let url = server.url();
    let mut alice = logged_in(&url, "alice").await;
    let mut bob = logged_in(&url, "bob").await;
    let mut carol = logged_in(&url, "carol").await;

    let reply = join(&mut alice, "alice", "lobby", 1).await;
    assert_eq!(users(&reply), [("alice".to_owned(), true)]);
    assert!(reply.messages.is_empty());
    let reply = join(&mut bob, "bob", "lobby", 1).await;
    assert_eq!(users(&reply).len(), 2);
    let joined = room_reply(&mut alice).await;
    assert_eq!(
        (joined.op, joined.user.as_deref(), joined.req),
        (RoomOp::Joined, Some("bob"), None)
    );
    join(&mut carol, "carol", "lobby", 1).await;
    for c in [&mut alice, &mut bob] {
        assert_eq!(room_reply(c).await.user.as_deref(), Some("carol"));
    }

    // Alice posts with QoS: one ACK for her, carrying the room's message id; a copy
    // for bob and for carol, with the real sender and the room.
    let post = Frame::data("alice", "#lobby", "gg all", true, None, 3);
    let fp = post.fp.clone().unwrap();
    alice.send(&post).await;
    let ack = alice.recv().await;
    assert_eq!((ack.ty, ack.content(), ack.mid), (4, fp.as_str(), Some(1)));
    for c in [&mut bob, &mut carol] {
        let copy = c.recv().await;
        assert_eq!(
            (copy.ty, copy.from_id(), copy.to_id(), copy.content()),
            (2, "alice", "#lobby", "gg all")
        );
        assert_eq!(
            (copy.fp.as_deref(), copy.mid, copy.typeu),
            (Some(&*fp), Some(1), 3)
        );
        assert!(copy.qos && copy.sm > 1_600_000_000_000, "server time in sm");
        c.send(&Frame::ack_of(&copy).unwrap()).await;
    }
    // Bob posts twice: ids go on increasing.
    for text in ["one", "two"] {
        bob.send(&Frame::data("bob", "#lobby", text, true, None, 0))
            .await;
    }
    let mids: Vec<_> = [bob.recv().await, bob.recv().await]
        .iter()
        .map(|a| a.mid)
        .collect();
    assert_eq!(mids, [Some(2), Some(3)]);
    for c in [&mut alice, &mut carol] {
        for _ in 0..2 {
            let copy = c.recv().await;
            c.send(&Frame::ack_of(&copy).unwrap()).await;
        }
    }
    // Dave joins: the history comes with the member list.
    let mut dave = logged_in(&url, "dave").await;
    let reply = join(&mut dave, "dave", "lobby", 9).await;
    let history: Vec<_> = reply
        .messages
        .iter()
        .map(|m| (m.mid, m.from.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        history,
        [(1, "alice", "gg all"), (2, "bob", "one"), (3, "bob", "two")]
    );
    assert!(!reply.more);
    // Paging back from id 3, one at a time.
    let mut page = RoomRequest::new(10, RoomOp::History).room("lobby");
    page.before = Some(3);
    page.limit = Some(1);
    request(&mut dave, "dave", page).await;
    let reply = room_reply(&mut dave).await;
    assert_eq!(reply.messages.len(), 1);
    assert_eq!((reply.messages[0].mid, reply.more), (2, true));
    // Leaving tells the others.
    request(
        &mut dave,
        "dave",
        RoomRequest::new(11, RoomOp::Leave).room("lobby"),
    )
    .await;
    assert_eq!(room_reply(&mut dave).await.code, 0);
    for c in [&mut alice, &mut bob, &mut carol] {
        let e1 = room_reply(c).await; // dave joined
        let e2 = room_reply(c).await; // dave left
        assert_eq!((e1.op, e2.op), (RoomOp::Joined, RoomOp::Left));
    }
    assert_eq!(server.rooms()[0].1.len(), 3);
    server.shutdown().await;
}

#[tokio::test]
async fn presence_follows_a_dropped_link_and_the_grace_period_removes_the_member() {
    let mut config = rooms_config();
    config.rooms = RoomsConfig {
        grace: Duration::from_millis(400),
        ..RoomsConfig::default()
    };
    let server = start(config, AcceptAll).await;
    let url = server.url();
    let mut alice = logged_in(&url, "alice").await;
    let mut bob = logged_in(&url, "bob").await;
    join(&mut alice, "alice", "lobby", 1).await;
    join(&mut bob, "bob", "lobby", 1).await;
    room_reply(&mut alice).await; // bob joined

    // Bob's link drops: offline, still a member.
    drop(bob);
    let e = room_reply(&mut alice).await;
    assert_eq!(
        (e.op, e.user.as_deref(), e.online),
        (RoomOp::Presence, Some("bob"), Some(false))
    );
    // Bob is back within the grace period: online again, membership kept.
    let mut bob = logged_in(&url, "bob").await;
    let e = room_reply(&mut alice).await;
    assert_eq!((e.op, e.online), (RoomOp::Presence, Some(true)));
    request(
        &mut bob,
        "bob",
        RoomRequest::new(2, RoomOp::Members).room("lobby"),
    )
    .await;
    let reply = room_reply(&mut bob).await;
    assert_eq!(
        users(&reply),
        [("alice".to_owned(), true), ("bob".to_owned(), true)]
    );
    // Gone again and not back: removed once the grace period ends.
    drop(bob);
    assert_eq!(room_reply(&mut alice).await.op, RoomOp::Presence);
    let e = room_reply(&mut alice).await;
    assert_eq!((e.op, e.user.as_deref()), (RoomOp::Left, Some("bob")));
    // A logout leaves at once.
    let mut carol = logged_in(&url, "carol").await;
    join(&mut carol, "carol", "lobby", 1).await;
    room_reply(&mut alice).await; // carol joined
    carol.send(&Frame::logout("carol")).await;
    let e = room_reply(&mut alice).await;
    assert_eq!((e.op, e.user.as_deref()), (RoomOp::Left, Some("carol")));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_room_requests_and_room_messages_get_codes() {
    let mut config = rooms_config();
    config.rooms.member_cap = 2;
    let server = start(config, AcceptAll).await;
    let url = server.url();
    // Before login: 301 and the close, as any frame before login.
    let mut early = Client::connect(&url).await;
    request(&mut early, "x", RoomRequest::new(1, RoomOp::Rooms)).await;
    assert_eq!(error_of(&early.recv().await).error_code, 301);

    let mut alice = logged_in(&url, "alice").await;
    let cases = [
        (RoomRequest::new(1, RoomOp::Join).room("bad name"), 400),
        (RoomRequest::new(2, RoomOp::Join), 400),
        (RoomRequest::new(3, RoomOp::Members).room("nowhere"), 404),
        (RoomRequest::new(4, RoomOp::Leave).room("nowhere"), 404),
        (RoomRequest::new(5, RoomOp::Unknown), 400),
        (
            RoomRequest {
                limit: Some(0),
                ..RoomRequest::new(6, RoomOp::History).room("lobby")
            },
            400,
        ),
        (
            RoomRequest {
                limit: Some(10_000),
                ..RoomRequest::new(7, RoomOp::History).room("lobby")
            },
            400,
        ),
        (
            RoomRequest {
                before: Some(-5),
                ..RoomRequest::new(8, RoomOp::History).room("lobby")
            },
            400,
        ),
        (RoomRequest::new(9, RoomOp::History).room("lobby"), 404),
        (RoomRequest::new(10, RoomOp::Block), 400),
        // The direct history of a pair needs a user as the peer, not a room.
        (
            RoomRequest {
                peer: Some("#lobby".into()),
                ..RoomRequest::new(11, RoomOp::History)
            },
            400,
        ),
        (
            RoomRequest {
                peer: Some(String::new()),
                ..RoomRequest::new(12, RoomOp::History)
            },
            400,
        ),
    ];
    for (req, code) in cases {
        let id = req.req;
        request(&mut alice, "alice", req).await;
        let reply = room_reply(&mut alice).await;
        assert_eq!((reply.req, reply.code), (Some(id), code), "{reply:?}");
    }
    // Garbage as a request body: a 400 without a req.
    let mut garbage = Frame::room_request("alice", &RoomRequest::new(0, RoomOp::Rooms));
    garbage.data_content = Some("not json".into());
    alice.send(&garbage).await;
    assert_eq!(room_reply(&mut alice).await.code, 400);

    // A room message from a non-member: 404 with the frame, no ACK.
    let stray = Frame::data("alice", "#lobby", "hi?", true, None, 0);
    alice.send(&stray).await;
    let error = error_of(&alice.recv().await);
    assert_eq!(error.error_code, room_code::NOT_FOUND);
    assert_eq!(Frame::decode(&error.error_msg).unwrap().fp, stray.fp);
    // The member cap: a third member is refused with 409.
    join(&mut alice, "alice", "lobby", 20).await;
    let mut bob = logged_in(&url, "bob").await;
    join(&mut bob, "bob", "lobby", 1).await;
    let mut carol = logged_in(&url, "carol").await;
    request(
        &mut carol,
        "carol",
        RoomRequest::new(1, RoomOp::Join).room("lobby"),
    )
    .await;
    assert_eq!(room_reply(&mut carol).await.code, room_code::FULL);
    // The server keeps serving: a list of rooms.
    request(&mut carol, "carol", RoomRequest::new(2, RoomOp::Rooms)).await;
    let reply = room_reply(&mut carol).await;
    assert_eq!(reply.rooms.len(), 1);
    assert_eq!(
        (reply.rooms[0].room.as_str(), reply.rooms[0].members),
        ("lobby", 2)
    );
    server.shutdown().await;
}

/// Lets only `vip-*` users into private rooms, refuses "spoiler", masks "darn".
struct Host;

impl ServerHooks for Host {
    fn may_join(&self, user_id: &str, _room: &str) -> bool {
        user_id.starts_with("vip-")
    }

    fn moderate(&self, _from: &str, _to: &str, content: &str) -> Moderation {
        if content.contains("spoiler") {
            Moderation::Refuse
        } else if content.contains("darn") {
            Moderation::Rewrite(content.replace("darn", "****"))
        } else {
            Moderation::Pass
        }
    }
}

#[tokio::test]
async fn private_rooms_block_lists_and_moderation() {
    let server = start(rooms_config(), Arc::new(Host)).await;
    let url = server.url();
    server.create_room("backstage", true, None).await.unwrap();
    let mut fan = logged_in(&url, "fan").await;
    request(
        &mut fan,
        "fan",
        RoomRequest::new(1, RoomOp::Join).room("backstage"),
    )
    .await;
    assert_eq!(room_reply(&mut fan).await.code, room_code::FORBIDDEN);
    let mut vip = logged_in(&url, "vip-1").await;
    join(&mut vip, "vip-1", "backstage", 1).await;
    // Private rooms are not listed.
    request(&mut fan, "fan", RoomRequest::new(2, RoomOp::Rooms)).await;
    assert!(room_reply(&mut fan).await.rooms.is_empty());

    // Moderation: refused (403, nothing delivered), rewritten.
    let refused = Frame::data("fan", "vip-1", "spoiler: ...", true, None, 0);
    fan.send(&refused).await;
    assert_eq!(error_of(&fan.recv().await).error_code, room_code::FORBIDDEN);
    fan.send(&Frame::data("fan", "vip-1", "darn it", true, None, 0))
        .await;
    assert_eq!(fan.recv().await.ty, 4, "relayed");
    assert_eq!(vip.recv().await.content(), "**** it");

    // vip-1 blocks fan: fan's direct messages are refused with 403.
    let mut block = RoomRequest::new(3, RoomOp::Block);
    block.user = Some("fan".into());
    request(&mut vip, "vip-1", block).await;
    assert_eq!(room_reply(&mut vip).await.code, 0);
    fan.send(&Frame::data("fan", "vip-1", "hello?", true, None, 0))
        .await;
    assert_eq!(error_of(&fan.recv().await).error_code, room_code::FORBIDDEN);
    vip.expect_silence(Duration::from_millis(200)).await;
    let mut unblock = RoomRequest::new(4, RoomOp::Unblock);
    unblock.user = Some("fan".into());
    request(&mut vip, "vip-1", unblock).await;
    room_reply(&mut vip).await;
    fan.send(&Frame::data("fan", "vip-1", "hello!", true, None, 0))
        .await;
    assert_eq!(fan.recv().await.ty, 4);
    assert_eq!(vip.recv().await.content(), "hello!");
    server.shutdown().await;
}

#[tokio::test]
async fn a_message_to_an_offline_user_is_stored_and_delivered_at_login() {
    let mut config = rooms_config();
    config.store_limits.offline_max = 2;
    let server = start(config, AcceptAll).await;
    let url = server.url();
    let mut alice = logged_in(&url, "alice").await;
    let mut sent = Vec::new();
    for text in ["are you there?", "call me"] {
        let m = Frame::data("alice", "bob", text, true, None, 0);
        alice.send(&m).await;
        let ack = alice.recv().await;
        assert_eq!((ack.ty, ack.content()), (4, m.fp.as_deref().unwrap()));
        assert!(ack.stored, "the ACK says stored, not relayed");
        assert!(ack.mid.is_some());
        sent.push(m);
    }
    // The box holds two: a third is refused with 507 and no ACK.
    let third = Frame::data("alice", "bob", "!!!", true, None, 0);
    alice.send(&third).await;
    assert_eq!(
        error_of(&alice.recv().await).error_code,
        room_code::BOX_FULL
    );
    // Without QoS nothing is stored (as upstream).
    alice
        .send(&Frame::data(
            "alice",
            "bob",
            "fire and forget",
            false,
            None,
            0,
        ))
        .await;

    // Bob logs in: both arrive after the login reply, oldest first, with QoS.
    let mut bob = logged_in(&url, "bob").await;
    for m in &sent {
        let got = bob.recv().await;
        assert_eq!((got.from_id(), got.content()), ("alice", m.content()));
        assert_eq!(got.fp, m.fp);
        assert!(got.qos && got.mid.is_some() && got.sm > 0);
        bob.send(&Frame::ack_of(&got).unwrap()).await;
    }
    bob.expect_silence(Duration::from_millis(300)).await;
    drop(bob);
    // ACKed messages left the box: the next login brings nothing.
    let mut bob = logged_in(&url, "bob").await;
    bob.expect_silence(Duration::from_millis(300)).await;
    server.shutdown().await;
}

/// A store file in a folder of its own, removed with SQLite's `-wal` and `-shm` files
/// when the returned guard drops (a failing test's too).
fn temp_store() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("bevy_im-store-")
        .tempdir()
        .expect("a temporary folder");
    let path = dir.path().join("im.db");
    (dir, path)
}

#[tokio::test]
async fn history_offline_messages_and_private_rooms_survive_a_restart() {
    let (_dir, path) = temp_store();
    let mut config = rooms_config();
    config.store = StorePath::File(path.clone());
    let server = start(config.clone(), Arc::new(Host)).await;
    let url = server.url();
    server.create_room("backstage", true, None).await.unwrap();
    let mut vip = logged_in(&url, "vip-1").await;
    join(&mut vip, "vip-1", "backstage", 1).await;
    join(&mut vip, "vip-1", "lobby", 2).await;
    vip.send(&Frame::data(
        "vip-1",
        "#lobby",
        "before the restart",
        true,
        None,
        0,
    ))
    .await;
    assert_eq!(vip.recv().await.mid, Some(1));
    let offline = Frame::data("vip-1", "bob", "while you were away", true, None, 0);
    vip.send(&offline).await;
    assert!(vip.recv().await.stored);
    server.shutdown().await;

    let server = start(config, Arc::new(Host)).await;
    let url = server.url();
    // The private room and its member are back; the member is offline until it logs in.
    let rooms = server.rooms();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].0, "backstage");
    assert_eq!(rooms[0].1[0].user, "vip-1");
    // The offline message is delivered.
    let mut bob = logged_in(&url, "bob").await;
    let got = bob.recv().await;
    assert_eq!(
        (got.content(), got.fp.clone()),
        ("while you were away", offline.fp)
    );
    bob.send(&Frame::ack_of(&got).unwrap()).await;
    // The room's history is there, and its ids go on.
    let reply = join(&mut bob, "bob", "lobby", 1).await;
    assert_eq!(reply.messages.len(), 1);
    assert_eq!(reply.messages[0].content, "before the restart");
    bob.send(&Frame::data("bob", "#lobby", "after", true, None, 0))
        .await;
    assert_eq!(bob.recv().await.mid, Some(2));
    server.shutdown().await;
}

#[tokio::test]
async fn the_per_user_rate_limit_is_shared_by_all_of_the_users_sockets() {
    let mut config = rooms_config();
    config.rate_limit = None;
    config.user_rate_limit = Some(bevy_im::server::RateLimit {
        per_second: 1,
        burst: 3,
    });
    let server = start(config, AcceptAll).await;
    let url = server.url();
    let mut first = Client::connect(&url).await;
    let t = first.login("alice").await;
    // A second socket of the same user with the same firstLoginTime: both stay open.
    let mut second = Client::connect(&url).await;
    second.login_at("alice", t).await;
    let (mut acks, mut refused) = (0, 0);
    for c in [&mut first, &mut second] {
        for i in 0..2 {
            c.send(&Frame::data("alice", "0", format!("m{i}"), true, None, 0))
                .await;
            let f = c.recv().await;
            match f.ty {
                4 => acks += 1,
                52 => {
                    assert_eq!(error_of(&f).error_code, 429);
                    refused += 1;
                }
                other => panic!("unexpected type {other}"),
            }
        }
    }
    assert_eq!((acks, refused), (3, 1), "one budget of 3 for both sockets");
    server.shutdown().await;
}

#[tokio::test]
async fn a_resend_after_a_lost_ack_is_acked_again_and_stored_once() {
    let server = start(rooms_config(), AcceptAll).await;
    let url = server.url();
    let mut alice = logged_in(&url, "alice").await;
    join(&mut alice, "alice", "lobby", 1).await;
    let post = Frame::data("alice", "#lobby", "once", true, None, 0);
    let offline = Frame::data("alice", "bob", "later", true, None, 0);
    for _ in 0..2 {
        alice.send(&post).await;
        assert_eq!(alice.recv().await.mid, Some(1), "the same id both times");
        alice.send(&offline).await;
        let ack = alice.recv().await;
        assert!(ack.stored);
    }
    let mut bob = logged_in(&url, "bob").await;
    assert_eq!(bob.recv().await.content(), "later");
    bob.expect_silence(Duration::from_millis(200)).await;
    let reply = join(&mut bob, "bob", "lobby", 1).await;
    assert_eq!(reply.messages.len(), 1, "stored once");
    server.shutdown().await;
}

#[tokio::test]
async fn room_messages_without_qos_are_fanned_out_and_never_stored() {
    let server = start(rooms_config(), AcceptAll).await;
    let url = server.url();
    let mut alice = logged_in(&url, "alice").await;
    let mut bob = logged_in(&url, "bob").await;
    join(&mut alice, "alice", "lobby", 1).await;
    join(&mut bob, "bob", "lobby", 1).await;
    room_reply(&mut alice).await; // bob joined
    alice
        .send(&Frame::data("alice", "#lobby", "x=3,y=4", false, None, 7))
        .await;
    let copy = bob.recv().await;
    assert_eq!(
        (copy.content(), copy.qos, copy.mid),
        ("x=3,y=4", false, None)
    );
    alice.expect_silence(Duration::from_millis(150)).await;
    let mut carol = logged_in(&url, "carol").await;
    let reply = join(&mut carol, "carol", "lobby", 1).await;
    assert!(reply.messages.is_empty(), "nothing stored");
    server.shutdown().await;
}

#[tokio::test]
async fn a_busy_receiver_gets_the_sender_a_503_naming_the_message_never_silence() {
    let mut config = rooms_config();
    config.max_pending_s2c_per_user = 1;
    let server = start(config, AcceptAll).await;
    let url = server.url();
    let mut alice = logged_in(&url, "alice").await;
    let mut bob = logged_in(&url, "bob").await;
    let first = Frame::data("alice", "bob", "one", true, None, 0);
    alice.send(&first).await;
    assert_eq!(alice.recv().await.ty, 4, "relayed");
    assert_eq!(bob.recv().await.content(), "one"); // and bob never ACKs it
    let second = Frame::data("alice", "bob", "two", true, None, 0);
    alice.send(&second).await;
    let error = error_of(&alice.recv().await);
    assert_eq!(error.error_code, room_code::RECEIVER_BUSY);
    assert_eq!(Frame::decode(&error.error_msg).unwrap().fp, second.fp);
    bob.expect_silence(Duration::from_millis(150)).await;
    assert_eq!(server.metrics().receiver_busy, 1);
    server.shutdown().await;
}

/// A client whose socket has a small receive buffer, so that a server writing to it
/// while it does not read is soon blocked.
async fn small_buffer_client(url: &str) -> Client {
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/websocket")
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    Client { ws }
}

#[tokio::test]
async fn a_full_outbound_queue_is_counted_and_gets_the_qos_sender_a_503_naming_the_message() {
    let mut config = rooms_config();
    config.max_outbound_queue = 4;
    // Long enough that the stalled receiver is not dropped for its blocked write
    // (nor for its silence) before the test ends.
    config.read_timeout = Duration::from_secs(15);
    let server = start(config, AcceptAll).await;
    let url = server.url();
    let mut alice = logged_in(&url, "alice").await;
    let mut bob = small_buffer_client(&url).await;
    bob.login("bob").await;
    // Bob stops reading. Host pushes fill the socket, then his outbound queue; the
    // queue is full for good once it stays full while his session has time to write.
    let chunk = "b".repeat(60_000);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut accepted = 0;
        while server.push("bob", chunk.clone(), false, 0).is_ok() {
            accepted += 1;
            assert!(accepted <= 4, "the queue holds at most 4 frames");
        }
        if accepted == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's socket never blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let full = server.metrics().rejected(RejectReason::OutboundQueueFull);
    assert!(full >= 1);
    let busy = server.metrics().receiver_busy;

    // A QoS message to bob: refused with 503 carrying it, no ACK; counted.
    let m = Frame::data("alice", "bob", "are you there?", true, None, 0);
    alice.send(&m).await;
    let error = error_of(&alice.recv().await);
    assert_eq!(error.error_code, room_code::RECEIVER_BUSY);
    assert_eq!(Frame::decode(&error.error_msg).unwrap().fp, m.fp);
    alice.expect_silence(Duration::from_millis(150)).await;
    let metrics = server.metrics();
    assert_eq!(metrics.rejected(RejectReason::OutboundQueueFull), full + 1);
    assert_eq!(metrics.receiver_busy, busy + 1);
    // Alice's own socket is not affected.
    alice.send(&Frame::echo("alice", "me?")).await;
    assert_eq!(alice.recv().await.content(), "me?");
    drop(bob);
    server.shutdown().await;
}

/// Makes every insert of a room message or an offline message fail, through a second
/// connection to the server's store file (SQLite re-reads the schema on the server's
/// next statement): the store can no longer be written there.
fn break_store_writes(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(WAIT).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER no_room_writes BEFORE INSERT ON room_messages
             BEGIN SELECT RAISE(ABORT, 'the store cannot be written'); END;
         CREATE TRIGGER no_offline_writes BEFORE INSERT ON offline
             BEGIN SELECT RAISE(ABORT, 'the store cannot be written'); END;",
    )
    .unwrap();
    conn
}

fn mend_store_writes(conn: rusqlite::Connection) {
    conn.execute_batch("DROP TRIGGER no_room_writes; DROP TRIGGER no_offline_writes;")
        .unwrap();
}

#[tokio::test]
async fn a_store_that_cannot_be_written_gets_the_sender_a_500_and_no_ack_and_the_server_goes_on() {
    let (_dir, path) = temp_store();
    let mut config = rooms_config();
    config.store = StorePath::File(path.clone());
    let server = start(config, AcceptAll).await;
    let url = server.url();
    let mut alice = logged_in(&url, "alice").await;
    let mut bob = logged_in(&url, "bob").await;
    join(&mut alice, "alice", "lobby", 1).await;
    join(&mut bob, "bob", "lobby", 1).await;
    room_reply(&mut alice).await; // bob joined

    let conn = break_store_writes(&path);
    // A room message: 500 carrying the frame, no ACK, no copy for bob.
    let post = Frame::data("alice", "#lobby", "gg", true, None, 0);
    alice.send(&post).await;
    let error = error_of(&alice.recv().await);
    assert_eq!(error.error_code, room_code::STORE_FAILED);
    assert_eq!(Frame::decode(&error.error_msg).unwrap().fp, post.fp);
    // A message to an offline user: 500 carrying the frame, no ACK.
    let offline = Frame::data("alice", "carol", "later", true, None, 0);
    alice.send(&offline).await;
    let error = error_of(&alice.recv().await);
    assert_eq!(error.error_code, room_code::STORE_FAILED);
    assert_eq!(Frame::decode(&error.error_msg).unwrap().fp, offline.fp);
    alice.expect_silence(Duration::from_millis(200)).await;
    bob.expect_silence(Duration::from_millis(50)).await;
    assert_eq!(server.metrics().rejected(RejectReason::StoreFailed), 2);

    // The server goes on serving: echoes, direct messages to online users.
    alice.send(&Frame::echo("alice", "still here")).await;
    assert_eq!(alice.recv().await.content(), "still here");
    let direct = Frame::data("alice", "bob", "hi bob", true, None, 0);
    alice.send(&direct).await;
    assert_eq!(bob.recv().await.content(), "hi bob");
    let ack = alice.recv().await;
    assert_eq!((ack.ty, ack.content()), (4, direct.fp.as_deref().unwrap()));

    // Once the store can be written again, the sender's resends go through: nothing
    // of the failed writes was left behind (the room's first id is still free).
    mend_store_writes(conn);
    alice.send(&post).await;
    let ack = alice.recv().await;
    assert_eq!(
        (ack.ty, ack.content(), ack.mid),
        (4, post.fp.as_deref().unwrap(), Some(1))
    );
    let copy = bob.recv().await;
    assert_eq!((copy.content(), copy.mid), ("gg", Some(1)));
    alice.send(&offline).await;
    let ack = alice.recv().await;
    assert!(ack.ty == 4 && ack.stored, "{ack:?}");
    let mut carol = logged_in(&url, "carol").await;
    assert_eq!(carol.recv().await.content(), "later");
    server.shutdown().await;
}
