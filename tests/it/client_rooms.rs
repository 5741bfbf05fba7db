//! The social extension on the client (`docs/PROTOCOL-EXTENSIONS.md`): negotiation,
//! room requests and replies, presence, room messages and their de-duplication by
//! id, refused and stored messages, timeouts, and re-joins after a re-login.
//!
//! The core is driven by hand with made-up times and scripted server frames; the
//! `plugin` module does the same through the test kit and the memory transport.

use std::time::Duration;

use bevy::prelude::Entity;
use bevy_im::client::{
    Action, BlockUpdated, ClientConfig, ClientCore, ClientEvent, DataReceived, LoginRequest,
    MemberJoined, MemberLeft, MessageDelivered, MessageRefused, Outgoing, PresenceChanged,
    RoomError, RoomHistory, RoomJoined, RoomLeft, RoomLeftReason, RoomList, RoomMembers,
    RoomRequestFailed, SendError, ServerError,
};
use bevy_im::protocol::{
    Dialect, ErrorResponse, Frame, HistoryMessage, KickoutInfo, LoginResponse, Member, ResultCode,
    RoomInfo, RoomNameError, RoomOp, RoomReply, RoomRequest, decode_body, encode_body, ext, wire,
};

const ME: Entity = Entity::PLACEHOLDER;

/// Everything the reference server serves.
const ALL: &[&str] = &[
    ext::ROOMS,
    ext::PRESENCE,
    ext::HISTORY,
    ext::OFFLINE,
    ext::BLOCK,
];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn config() -> ClientConfig {
    ClientConfig {
        relogin_spread: Duration::ZERO,
        dialect: Dialect::MobileImSdkV6,
        jitter_seed: Some(1),
        ..ClientConfig::default()
    }
}

fn login_ok(ext: &[&str]) -> Frame {
    Frame::login_response(
        "alice",
        &LoginResponse {
            code: 0,
            first_login_time: 5,
            ext: ext.iter().map(|e| (*e).to_owned()).collect(),
        },
    )
}

fn room_frame(reply: &RoomReply) -> Frame {
    let mut f = Frame::new(wire::ROOM_REPLY, "0", "alice");
    f.data_content = Some(encode_body(reply));
    f
}

fn member(user: &str, online: bool) -> Member {
    Member {
        user: user.into(),
        online,
    }
}

fn history(mid: i64, from: &str, content: &str) -> HistoryMessage {
    HistoryMessage {
        mid,
        ts: 1_795_643_400_000 + mid,
        from: from.into(),
        to: "#lobby".into(),
        content: content.into(),
        typeu: 0,
        fp: Some(format!("fp-{mid}")),
    }
}

/// A copy of `from`'s QoS message in room `lobby`, as the server fans it out.
fn room_copy(from: &str, mid: i64, fp: &str) -> Frame {
    let mut f = Frame::data(from, "#lobby", format!("m{mid}"), true, Some(fp.into()), 0);
    f.mid = Some(mid);
    f.sm = 1_795_643_500_000 + mid;
    f
}

fn received(from: &str, room: Option<&str>, mid: Option<i64>, fp: &str) -> DataReceived {
    DataReceived {
        client: ME,
        fp: Some(fp.into()),
        from: from.into(),
        content: mid.map_or("direct".into(), |m| format!("m{m}")),
        typeu: 0,
        room: room.map(str::to_owned),
        mid,
        sent_at_ms: mid.map(|m| 1_795_643_500_000 + m),
    }
}

fn left(room: &str, reason: RoomLeftReason) -> ClientEvent {
    ClientEvent::RoomLeft(RoomLeft {
        client: ME,
        room: room.into(),
        reason,
    })
}

fn failed(req: u64, op: RoomOp, room: Option<&str>, error: RoomError) -> ClientEvent {
    ClientEvent::RoomRequestFailed(RoomRequestFailed {
        client: ME,
        req,
        op,
        room: room.map(str::to_owned),
        user: None,
        error,
    })
}

struct Script {
    c: ClientCore,
}

impl Script {
    /// `alice` logged in at 0 s to a server that serves `ext`.
    fn logged_in(ext: &[&str]) -> Self {
        Self::logged_in_with(config(), ext)
    }

    fn logged_in_with(config: ClientConfig, ext: &[&str]) -> Self {
        let mut t = Self {
            c: ClientCore::new(config),
        };
        t.c.login(LoginRequest::new("alice", "t"), s(0)).unwrap();
        t.opened(s(0));
        t.sent();
        t.server(login_ok(ext), s(0));
        t.events();
        assert!(t.c.is_logged_in());
        t
    }

    fn opened(&mut self, now: Duration) {
        let link = self.c.link().unwrap();
        self.c.on_link_opened(link, now);
    }

    fn server(&mut self, frame: Frame, now: Duration) {
        let link = self.c.link().unwrap();
        self.c.on_text(link, &frame.to_json(), now);
    }

    fn reply(&mut self, reply: &RoomReply, now: Duration) {
        self.server(room_frame(reply), now);
    }

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

    /// The bodies of the requests written since the last call, as written.
    fn request_texts(&mut self) -> Vec<String> {
        self.sent()
            .into_iter()
            .filter(|f| f.ty == wire::ROOM_REQUEST)
            .map(|f| f.data_content.unwrap())
            .collect()
    }

    fn requests(&mut self) -> Vec<RoomRequest> {
        self.request_texts()
            .iter()
            .map(|t| decode_body(Some(t)).unwrap())
            .collect()
    }

    fn events(&mut self) -> Vec<ClientEvent> {
        self.c.take_events()
    }

    /// Joins `lobby` at `now`; the server answers with `members` and `messages`.
    fn join_lobby(&mut self, members: Vec<Member>, messages: Vec<HistoryMessage>, now: Duration) {
        let req = self.c.join_room("lobby", now).unwrap();
        let sent = self.requests();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].req, req);
        let mut reply = RoomReply::to(&sent[0], 0);
        reply.members = members;
        reply.messages = messages;
        self.reply(&reply, now);
        assert!(matches!(&self.events()[..], [ClientEvent::RoomJoined(_)]));
    }

    /// Drops the link at `lost` (the session must have lasted 8 s, so that the first
    /// re-login attempt is at once) and logs in again at `back` (ext `ext`).
    fn relogin(&mut self, lost: Duration, back: Duration, ext: &[&str]) {
        let link = self.c.link().unwrap();
        self.c.on_link_closed(link, None, "reset", lost);
        self.c.tick(lost);
        assert!(self.c.is_relogging());
        assert_ne!(self.c.link(), Some(link), "a new link at once");
        self.opened(back);
        let sent = self.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].ty, wire::LOGIN);
        self.server(login_ok(ext), back);
    }
}

#[test]
fn against_a_server_without_the_extension_every_call_fails_at_once_and_writes_nothing() {
    // Before any login: not logged in.
    let mut c = ClientCore::new(config());
    assert_eq!(c.join_room("lobby", s(0)), Err(RoomError::NotLoggedIn));
    assert_eq!(c.list_rooms(s(0)), Err(RoomError::NotLoggedIn));

    // An upstream server lists nothing.
    let mut t = Script::logged_in(&[]);
    assert!(t.c.server_extensions().is_empty());
    assert!(!t.c.supports(ext::ROOMS));
    let rooms = RoomError::NotSupported { ext: ext::ROOMS };
    assert_eq!(t.c.join_room("lobby", s(1)), Err(rooms.clone()));
    assert_eq!(t.c.leave_room("lobby", s(1)), Err(rooms.clone()));
    assert_eq!(t.c.room_members("lobby", s(1)), Err(rooms.clone()));
    assert_eq!(
        t.c.room_history("lobby", None, 20, s(1)),
        Err(rooms.clone())
    );
    assert_eq!(t.c.list_rooms(s(1)), Err(rooms.clone()));
    assert_eq!(
        t.c.direct_history("bob", None, 20, s(1)),
        Err(RoomError::NotSupported { ext: ext::HISTORY })
    );
    assert_eq!(
        t.c.block("bob", s(1)),
        Err(RoomError::NotSupported { ext: ext::BLOCK })
    );
    assert_eq!(
        t.c.unblock("bob", s(1)),
        Err(RoomError::NotSupported { ext: ext::BLOCK })
    );
    let send = t.c.send_to_room("lobby", "gg", s(1));
    assert_eq!(send, Err(SendError::Room(rooms.clone())));
    assert_eq!(send.unwrap_err().code(), ResultCode::InvalidProtocol);
    assert_eq!(
        t.c.send(Outgoing::new("#lobby", "gg"), s(1)),
        Err(SendError::Room(rooms.clone())),
        "a room address in a plain send is checked too"
    );
    assert_eq!(rooms.to_string(), r#"the server does not serve "rooms""#);
    assert!(t.c.take_actions().is_empty(), "nothing written");
    assert!(
        t.events().is_empty(),
        "no message: the error is the outcome"
    );
    assert_eq!(t.c.pending_requests(), 0);
    assert_eq!(t.c.pending_count(), 0);
    assert_eq!(t.c.poll_timeout(), Some(s(5)), "only the keepalive is due");

    // Rooms but no history: history of a room needs both.
    let mut t = Script::logged_in(&[ext::ROOMS]);
    assert_eq!(
        t.c.room_history("lobby", None, 20, s(1)),
        Err(RoomError::NotSupported { ext: ext::HISTORY })
    );
    // Bad arguments are refused before anything else.
    assert_eq!(
        t.c.join_room("", s(1)),
        Err(RoomError::BadName(RoomNameError::Empty))
    );
    assert_eq!(
        t.c.join_room("#lobby", s(1)),
        Err(RoomError::BadName(RoomNameError::BadCharacter))
    );
    assert_eq!(
        t.c.send_to_room(&"x".repeat(65), "gg", s(1)),
        Err(SendError::Room(RoomError::BadName(RoomNameError::TooLong)))
    );
    assert_eq!(
        t.c.room_history("lobby", None, 0, s(1)),
        Err(RoomError::BadLimit(0))
    );
    assert_eq!(
        t.c.room_history("lobby", None, 101, s(1)),
        Err(RoomError::BadLimit(101))
    );
    assert_eq!(
        t.c.block("#lobby", s(1)),
        Err(RoomError::BadUser("#lobby".into()))
    );
    assert!(t.c.take_actions().is_empty());
    assert!(t.events().is_empty());
}

#[test]
fn a_join_brings_members_and_history_and_events_keep_presence_current() {
    let mut t = Script::logged_in(ALL);
    assert_eq!(t.c.server_extensions().len(), 5);
    let req = t.c.join_room("lobby", s(1)).unwrap();
    assert_eq!(req, 1);
    assert_eq!(
        t.request_texts(),
        [r#"{"req":1,"op":"join","room":"lobby"}"#],
        "a first join asks for no `after`"
    );
    assert!(
        t.c.rooms().is_empty(),
        "not in the room until the server says so"
    );
    let mut reply = RoomReply::to(&RoomRequest::new(1, RoomOp::Join).room("lobby"), 0);
    reply.members = vec![member("alice", true), member("bob", false)];
    reply.messages = vec![history(11, "bob", "hi"), history(12, "bob", "anyone?")];
    reply.more = true;
    t.reply(&reply, ms(1_200));
    assert_eq!(
        t.events(),
        [ClientEvent::RoomJoined(RoomJoined {
            client: ME,
            room: "lobby".into(),
            members: vec![member("alice", true), member("bob", false)],
            messages: vec![history(11, "bob", "hi"), history(12, "bob", "anyone?")],
            more: true,
            rejoin: false,
        })]
    );
    assert_eq!(t.c.pending_requests(), 0);
    let lobby = t.c.rooms().get("lobby").unwrap();
    assert_eq!(
        lobby.members().collect::<Vec<_>>(),
        [("alice", true), ("bob", false)]
    );
    assert_eq!(lobby.last_mid(), Some(12));

    // Events: carol joins, bob comes online (twice: one change), carol leaves.
    t.reply(
        &RoomReply::event(RoomOp::Joined, "lobby", "carol", None),
        s(2),
    );
    t.reply(
        &RoomReply::event(RoomOp::Presence, "lobby", "bob", Some(true)),
        s(3),
    );
    t.reply(
        &RoomReply::event(RoomOp::Presence, "lobby", "bob", Some(true)),
        s(3),
    );
    assert_eq!(t.c.rooms().get("lobby").unwrap().online_count(), 3);
    t.reply(
        &RoomReply::event(RoomOp::Left, "lobby", "carol", None),
        s(4),
    );
    // Nothing for a member who is not there, nor for a room the client is not in.
    t.reply(&RoomReply::event(RoomOp::Left, "lobby", "zed", None), s(4));
    t.reply(&RoomReply::event(RoomOp::Joined, "team", "zed", None), s(4));
    t.reply(
        &RoomReply::event(RoomOp::Presence, "lobby", "bob", Some(false)),
        s(5),
    );
    assert_eq!(
        t.events(),
        [
            ClientEvent::MemberJoined(MemberJoined {
                client: ME,
                room: "lobby".into(),
                user: "carol".into()
            }),
            ClientEvent::PresenceChanged(PresenceChanged {
                client: ME,
                room: "lobby".into(),
                user: "bob".into(),
                online: true
            }),
            ClientEvent::MemberLeft(MemberLeft {
                client: ME,
                room: "lobby".into(),
                user: "carol".into()
            }),
            ClientEvent::PresenceChanged(PresenceChanged {
                client: ME,
                room: "lobby".into(),
                user: "bob".into(),
                online: false
            }),
        ]
    );
    let lobby = t.c.rooms().get("lobby").unwrap();
    assert_eq!(
        lobby.members().collect::<Vec<_>>(),
        [("alice", true), ("bob", false)]
    );
    assert_eq!(lobby.online("bob"), Some(false));
    assert_eq!(lobby.online("carol"), None);
    assert_eq!(t.c.rooms().names().collect::<Vec<_>>(), ["lobby"]);
    assert!(t.c.take_actions().is_empty(), "events are not answered");
}

#[test]
fn a_room_message_arrives_with_its_room_id_and_time_once_per_id() {
    let mut t = Script::logged_in(ALL);
    t.join_lobby(
        vec![member("alice", true)],
        vec![history(12, "bob", "m12")],
        s(1),
    );
    t.server(room_copy("bob", 13, "f13"), s(2));
    let acks = t.sent();
    assert_eq!(acks.len(), 1);
    assert_eq!((acks[0].ty, acks[0].content()), (wire::RECEIVED, "f13"));
    assert_eq!(
        t.events(),
        [ClientEvent::DataReceived(received(
            "bob",
            Some("lobby"),
            Some(13),
            "f13"
        ))]
    );
    // The same message again: under its fingerprint (a QoS resend), or under
    // another (a second copy): ACKed, not delivered.
    t.server(room_copy("bob", 13, "f13"), s(3));
    t.server(room_copy("bob", 13, "f13-again"), s(3));
    // A message already in the join's history.
    t.server(room_copy("bob", 12, "f12"), s(3));
    assert_eq!(t.sent().len(), 3, "every copy is ACKed");
    assert!(t.events().is_empty());
    assert_eq!(t.c.rooms().get("lobby").unwrap().last_mid(), Some(13));

    // A direct message is no room message; an offline one has an id and a time.
    t.server(
        Frame::data("bob", "alice", "direct", true, Some("d1".into()), 0),
        s(4),
    );
    let mut stored = Frame::data("carol", "alice", "m7", true, Some("o7".into()), 0);
    stored.mid = Some(7);
    stored.sm = 1_795_643_500_007;
    t.server(stored, s(4));
    assert_eq!(
        t.events(),
        [
            ClientEvent::DataReceived(received("bob", None, None, "d1")),
            ClientEvent::DataReceived(received("carol", None, Some(7), "o7")),
        ]
    );
}

#[test]
fn acks_say_stored_or_relayed_and_carry_the_id() {
    let mut t = Script::logged_in(ALL);
    t.join_lobby(vec![member("alice", true)], vec![], s(1));
    let to_room = t.c.send_to_room("lobby", "gg", s(2)).unwrap().unwrap();
    let to_carol =
        t.c.send(Outgoing::new("carol", "later"), s(2))
            .unwrap()
            .unwrap();
    let to_bob =
        t.c.send(Outgoing::new("bob", "now"), s(2))
            .unwrap()
            .unwrap();
    let sent = t.sent();
    assert_eq!(sent[0].to_id(), "#lobby");
    assert!(sent[0].qos);
    let ack = |fp: &str, mid: Option<i64>, stored: bool| {
        let mut a = Frame::server_ack(Dialect::MobileImSdkV6, "0", "alice", fp);
        a.mid = mid;
        a.stored = stored;
        a
    };
    t.server(ack(&to_room, Some(14), false), s(3));
    t.server(ack(&to_carol, Some(7), true), s(3));
    t.server(ack(&to_bob, None, false), s(3));
    let delivered = |fp: &str, stored: bool, mid: Option<i64>| {
        ClientEvent::MessageDelivered(MessageDelivered {
            client: ME,
            fp: fp.into(),
            stored,
            mid,
        })
    };
    assert_eq!(
        t.events(),
        [
            delivered(&to_room, false, Some(14)),
            delivered(&to_carol, true, Some(7)),
            delivered(&to_bob, false, None),
        ]
    );
    // The client's own message, seen in the room under its id, is not delivered back.
    let lobby = t.c.rooms().get("lobby").unwrap();
    assert!(lobby.has_seen(14));
    assert_eq!(
        lobby.last_mid(),
        None,
        "an own id does not move the catch-up point"
    );
    t.server(room_copy("alice", 14, &to_room), s(4));
    assert!(t.events().is_empty());
}

#[test]
fn history_pages_members_lists_and_blocks_are_answered_by_request_id() {
    let mut t = Script::logged_in(ALL);
    t.join_lobby(
        vec![member("alice", true)],
        vec![history(11, "bob", "m11"), history(12, "bob", "m12")],
        s(1),
    );
    assert_eq!(t.c.room_history("lobby", Some(11), 2, s(2)), Ok(2));
    assert_eq!(t.c.direct_history("bob", None, 50, s(2)), Ok(3));
    assert_eq!(t.c.list_rooms(s(2)), Ok(4));
    assert_eq!(t.c.room_members("lobby", s(2)), Ok(5));
    assert_eq!(t.c.block("mallory", s(2)), Ok(6));
    assert_eq!(t.c.unblock("mallory", s(2)), Ok(7));
    let texts = t.request_texts();
    assert_eq!(
        texts,
        [
            r#"{"req":2,"op":"history","room":"lobby","before":11,"limit":2}"#,
            r#"{"req":3,"op":"history","peer":"bob","limit":50}"#,
            r#"{"req":4,"op":"rooms"}"#,
            r#"{"req":5,"op":"members","room":"lobby"}"#,
            r#"{"req":6,"op":"block","user":"mallory"}"#,
            r#"{"req":7,"op":"unblock","user":"mallory"}"#,
        ]
    );
    assert_eq!(t.c.pending_requests(), 6);
    let requests: Vec<RoomRequest> = texts
        .iter()
        .map(|t| decode_body(Some(t)).unwrap())
        .collect();
    // Answered out of order: matched by id.
    let mut members = RoomReply::to(&requests[3], 0);
    members.members = vec![member("alice", true), member("dave", false)];
    t.reply(&members, s(3));
    let mut page = RoomReply::to(&requests[0], 0);
    page.messages = vec![history(9, "bob", "m9"), history(10, "bob", "m10")];
    page.more = true;
    t.reply(&page, s(3));
    let mut direct = RoomReply::to(&requests[1], 0);
    direct.messages = vec![HistoryMessage {
        to: "alice".into(),
        ..history(3, "bob", "psst")
    }];
    t.reply(&direct, s(3));
    let mut list = RoomReply::to(&requests[2], 0);
    list.rooms = vec![RoomInfo {
        room: "lobby".into(),
        members: 2,
    }];
    t.reply(&list, s(3));
    t.reply(&RoomReply::to(&requests[4], 0), s(3));
    t.reply(&RoomReply::to(&requests[5], 0), s(3));
    assert_eq!(
        t.events(),
        [
            ClientEvent::RoomMembers(RoomMembers {
                client: ME,
                req: 5,
                room: "lobby".into(),
                members: vec![member("alice", true), member("dave", false)],
            }),
            ClientEvent::RoomHistory(RoomHistory {
                client: ME,
                req: 2,
                room: Some("lobby".into()),
                peer: None,
                messages: vec![history(9, "bob", "m9"), history(10, "bob", "m10")],
                more: true,
            }),
            ClientEvent::RoomHistory(RoomHistory {
                client: ME,
                req: 3,
                room: None,
                peer: Some("bob".into()),
                messages: vec![HistoryMessage {
                    to: "alice".into(),
                    ..history(3, "bob", "psst")
                }],
                more: false,
            }),
            ClientEvent::RoomList(RoomList {
                client: ME,
                req: 4,
                rooms: vec![RoomInfo {
                    room: "lobby".into(),
                    members: 2
                }],
            }),
            ClientEvent::BlockUpdated(BlockUpdated {
                client: ME,
                req: 6,
                user: "mallory".into(),
                blocked: true
            }),
            ClientEvent::BlockUpdated(BlockUpdated {
                client: ME,
                req: 7,
                user: "mallory".into(),
                blocked: false
            }),
        ]
    );
    assert_eq!(t.c.pending_requests(), 0);
    let lobby = t.c.rooms().get("lobby").unwrap();
    assert_eq!(
        lobby.members().collect::<Vec<_>>(),
        [("alice", true), ("dave", false)],
        "the member list replaced the state"
    );
    assert_eq!(lobby.last_mid(), Some(12), "paging back moves nothing");
    // A second answer to the same request is ignored.
    t.reply(&RoomReply::to(&requests[4], 0), s(4));
    assert!(t.events().is_empty());
}

#[test]
fn a_refused_message_is_reported_once_and_never_lost() {
    let mut t = Script::logged_in(ALL);
    let fp =
        t.c.send(Outgoing::new("carol", "hello"), s(0))
            .unwrap()
            .unwrap();
    let sent = t.sent().remove(0);
    let refusal = |code: i32, frame: &Frame| {
        Frame::error_response(&ErrorResponse {
            error_code: code,
            error_msg: frame.to_json(),
        })
    };
    t.server(refusal(507, &sent), s(1));
    assert_eq!(
        t.events(),
        [ClientEvent::MessageRefused(MessageRefused {
            client: ME,
            fp: Some(fp.clone()),
            code: 507,
            frame: sent.clone(),
        })]
    );
    assert_eq!(t.c.pending_count(), 0);
    // No resend and no loss report, ever.
    for at in [3, 6, 9, 12] {
        t.c.tick(s(at));
    }
    assert!(t.sent().iter().all(|f| f.ty != wire::COMMON_DATA));
    assert!(
        t.events()
            .iter()
            .all(|e| !matches!(e, ClientEvent::MessagesLost(_)))
    );
    assert_eq!(t.c.stats().lost, 0);
    // The same refusal again: the message is settled, so it is only a server error.
    t.server(refusal(507, &sent), s(13));
    assert!(matches!(
        &t.events()[..],
        [ClientEvent::ServerError(ServerError {
            code: ResultCode::Other(507),
            ..
        })]
    ));

    // A message without QoS is reported refused too, with no fingerprint.
    t.c.send(Outgoing::new("dave", "psst").qos(false), s(14))
        .unwrap();
    let plain = t.sent().remove(0);
    t.server(refusal(403, &plain), s(14));
    assert_eq!(
        t.events(),
        [ClientEvent::MessageRefused(MessageRefused {
            client: ME,
            fp: None,
            code: 403,
            frame: plain,
        })]
    );
    // An error that names no message of ours stays a server error.
    t.server(
        Frame::error_response(&ErrorResponse {
            error_code: 404,
            error_msg: "no such thing".into(),
        }),
        s(15),
    );
    assert!(matches!(&t.events()[..], [ClientEvent::ServerError(_)]));
}

#[test]
fn a_request_without_a_reply_fails_at_its_deadline_and_a_late_reply_is_ignored() {
    let mut t = Script::logged_in_with(
        ClientConfig {
            relogin_spread: Duration::ZERO,
            room_request_timeout: s(4),
            ..config()
        },
        ALL,
    );
    let req = t.c.join_room("lobby", s(2)).unwrap();
    let request = t.requests().remove(0);
    assert_eq!(t.c.poll_timeout(), Some(s(5)), "the keepalive first");
    t.c.tick(s(5));
    t.sent();
    assert_eq!(
        t.c.poll_timeout(),
        Some(s(6)),
        "then the request's deadline"
    );
    t.c.tick(ms(5_999));
    assert!(t.events().is_empty());
    t.c.tick(s(6));
    assert_eq!(
        t.events(),
        [failed(
            req,
            RoomOp::Join,
            Some("lobby"),
            RoomError::TimedOut(s(4))
        )]
    );
    assert_eq!(t.c.pending_requests(), 0);
    assert!(t.c.rooms().is_empty());
    // The reply comes after all: ignored.
    let mut late = RoomReply::to(&request, 0);
    late.members = vec![member("alice", true)];
    t.reply(&late, s(7));
    assert!(t.events().is_empty());
    assert!(t.c.rooms().is_empty());

    // A refusal names the server's code and reason.
    let req = t.c.join_room("lobby", s(8)).unwrap();
    let request = t.requests().remove(0);
    t.reply(
        &RoomReply::to(&request, 409).msg("the room is full (64 members)"),
        s(8),
    );
    let error = RoomError::Refused {
        code: 409,
        msg: "the room is full (64 members)".into(),
    };
    assert_eq!(error.code(), ResultCode::Other(409));
    assert_eq!(
        t.events(),
        [failed(req, RoomOp::Join, Some("lobby"), error)]
    );
    assert!(t.c.rooms().is_empty());
    assert_eq!(t.c.poll_timeout(), Some(s(10)), "only the keepalive");
}

#[test]
fn after_a_relogin_rooms_are_rejoined_from_the_last_id_and_nothing_is_delivered_twice() {
    let mut t = Script::logged_in(ALL);
    t.join_lobby(
        vec![member("alice", true), member("bob", true)],
        vec![history(11, "bob", "m11"), history(12, "bob", "m12")],
        s(1),
    );
    t.server(room_copy("bob", 13, "f13"), s(2));
    let own = t.c.send_to_room("lobby", "mine", s(3)).unwrap().unwrap();
    t.sent();
    let mut ack = Frame::server_ack(Dialect::MobileImSdkV6, "0", "alice", &own);
    ack.mid = Some(14);
    t.server(ack, s(3));
    assert_eq!(t.events().len(), 2, "m13 and the ACK");
    // One more own message, whose ACK the link will take with it.
    let unacked =
        t.c.send_to_room("lobby", "lost ack", s(19))
            .unwrap()
            .unwrap();
    t.sent();

    // The link drops at 20 s; a history request made during the re-login waits.
    let link = t.c.link().unwrap();
    t.c.on_link_closed(link, None, "reset", s(20));
    assert!(
        t.c.rooms().contains("lobby"),
        "still in the room while relogging"
    );
    let page = t.c.room_history("lobby", Some(11), 5, ms(20_100)).unwrap();
    assert_eq!(page, 2);
    assert!(t.sent().is_empty());
    t.c.tick(ms(20_100));
    t.opened(ms(20_100));
    t.sent();
    t.events(); // the link closed, the re-login started
    t.server(login_ok(ALL), ms(20_200));
    // The waiting request, then the re-join, after the last id received (13: 14 is
    // the client's own), then the own message whose ACK was lost, as a member.
    let written: Vec<(i32, String)> = t
        .sent()
        .into_iter()
        .map(|f| (f.ty, f.data_content.unwrap_or_default()))
        .collect();
    assert_eq!(
        written,
        [
            (
                wire::ROOM_REQUEST,
                r#"{"req":2,"op":"history","room":"lobby","before":11,"limit":5}"#.into()
            ),
            (
                wire::ROOM_REQUEST,
                r#"{"req":3,"op":"join","room":"lobby","after":13}"#.into()
            ),
            (wire::COMMON_DATA, "lost ack".into()),
        ]
    );
    // A live copy overtakes the re-join's reply.
    t.server(room_copy("bob", 16, "f16"), ms(20_300));
    let mut rejoin = RoomReply::to(&RoomRequest::new(3, RoomOp::Join).room("lobby"), 0);
    rejoin.members = vec![member("alice", true), member("carol", true)];
    rejoin.messages = vec![
        HistoryMessage {
            from: "alice".into(),
            fp: Some(own.clone()),
            ..history(14, "alice", "mine")
        },
        history(15, "bob", "m15"),
        history(16, "bob", "m16"),
        HistoryMessage {
            from: "alice".into(),
            fp: Some(unacked.clone()),
            ..history(17, "alice", "lost ack")
        },
    ];
    t.reply(&rejoin, ms(20_400));
    assert_eq!(
        t.events(),
        [
            ClientEvent::LoginSucceeded(bevy_im::client::LoginSucceeded {
                client: ME,
                user_id: "alice".into(),
                relogin: true,
                first_login_time: 5,
            }),
            ClientEvent::DataReceived(received("bob", Some("lobby"), Some(16), "f16")),
            ClientEvent::RoomJoined(RoomJoined {
                client: ME,
                room: "lobby".into(),
                members: vec![member("alice", true), member("carol", true)],
                messages: vec![history(15, "bob", "m15")],
                more: false,
                rejoin: true,
            }),
        ]
    );
    let lobby = t.c.rooms().get("lobby").unwrap();
    assert_eq!(
        lobby.members().collect::<Vec<_>>(),
        [("alice", true), ("carol", true)]
    );
    assert_eq!(lobby.last_mid(), Some(16));
    assert!(
        lobby.has_seen(17),
        "the own message, known by its fingerprint"
    );
    // A late live copy of 15 is a duplicate now.
    t.server(room_copy("bob", 15, "f15"), ms(20_500));
    assert!(t.events().is_empty());
    // The own message's ACK settles it.
    let mut ack = Frame::server_ack(Dialect::MobileImSdkV6, "0", "alice", &unacked);
    ack.mid = Some(17);
    t.server(ack, ms(20_600));
    assert_eq!(
        t.events(),
        [ClientEvent::MessageDelivered(MessageDelivered {
            client: ME,
            fp: unacked,
            stored: false,
            mid: Some(17),
        })]
    );
}

#[test]
fn a_request_in_flight_when_the_link_drops_is_written_again_and_keeps_its_deadline() {
    let mut t = Script::logged_in(ALL);
    t.c.tick(s(5));
    t.server(Frame::keepalive_response("alice"), s(5));
    let req = t.c.room_members("lobby", s(9)).unwrap();
    assert_eq!(t.requests().len(), 1);
    t.relogin(s(10), s(10), ALL);
    assert_eq!(
        t.request_texts(),
        [r#"{"req":1,"op":"members","room":"lobby"}"#],
        "the same request, again"
    );
    t.events();
    assert_eq!(
        t.c.poll_timeout(),
        Some(s(15)),
        "keepalive 5 s after the re-login"
    );
    t.c.tick(s(15));
    t.sent();
    assert_eq!(t.c.poll_timeout(), Some(s(19)), "the call's deadline");
    t.c.tick(s(19));
    assert_eq!(
        t.events(),
        [failed(
            req,
            RoomOp::Members,
            Some("lobby"),
            RoomError::TimedOut(s(10))
        )]
    );

    // A request made while the re-login takes too long fails while relogging.
    let link = t.c.link().unwrap();
    t.c.on_link_closed(link, None, "reset", s(20));
    t.c.tick(s(20));
    t.c.on_link_closed(t.c.link().unwrap(), None, "refused", s(20));
    let req = t.c.list_rooms(s(21)).unwrap();
    t.events();
    t.c.tick(s(31));
    assert!(t.events().contains(&failed(
        req,
        RoomOp::Rooms,
        None,
        RoomError::TimedOut(s(10))
    )));
    assert!(t.c.is_relogging());
}

#[test]
fn a_failed_rejoin_leaves_the_room_and_a_server_without_rooms_leaves_them_all() {
    let mut t = Script::logged_in(ALL);
    t.join_lobby(vec![member("alice", true)], vec![], s(1));
    t.relogin(s(10), s(11), ALL);
    let rejoin = t.requests().remove(0);
    assert_eq!(rejoin.after, None, "no message seen yet");
    t.events();
    t.reply(&RoomReply::to(&rejoin, 409).msg("full"), s(11));
    assert_eq!(
        t.events(),
        [
            failed(
                rejoin.req,
                RoomOp::Join,
                Some("lobby"),
                RoomError::Refused {
                    code: 409,
                    msg: "full".into()
                }
            ),
            left("lobby", RoomLeftReason::RejoinFailed),
        ]
    );
    assert!(t.c.rooms().is_empty());

    // The server comes back without the extension: the rooms are left, the waiting
    // requests fail, and nothing is written.
    t.join_lobby(vec![member("alice", true)], vec![], s(12));
    let link = t.c.link().unwrap();
    t.c.on_link_closed(link, None, "reset", s(20));
    let req = t.c.list_rooms(s(20)).unwrap();
    t.c.tick(s(20));
    t.opened(s(20));
    t.sent();
    t.events();
    t.server(login_ok(&[]), s(20));
    assert!(t.requests().is_empty());
    let events = t.events();
    assert_eq!(
        events[1..],
        [
            failed(
                req,
                RoomOp::Rooms,
                None,
                RoomError::NotSupported { ext: ext::ROOMS }
            ),
            left("lobby", RoomLeftReason::RejoinFailed),
        ]
    );
    assert!(t.c.rooms().is_empty());
    assert_eq!(t.c.pending_requests(), 0);
}

#[test]
fn the_end_of_the_session_fails_every_request_and_leaves_every_room() {
    let mut t = Script::logged_in(ALL);
    t.join_lobby(vec![member("alice", true)], vec![], s(1));
    let req = t.c.room_members("lobby", s(2)).unwrap();
    t.sent();
    t.c.logout(s(3));
    assert_eq!(
        t.events(),
        [
            failed(req, RoomOp::Members, Some("lobby"), RoomError::SessionEnded),
            left("lobby", RoomLeftReason::SessionEnded),
            ClientEvent::LoggedOut(bevy_im::client::LoggedOut {
                client: ME,
                code: ResultCode::Ok
            }),
        ]
    );
    assert!(t.c.rooms().is_empty());
    assert!(t.c.server_extensions().is_empty());
    assert_eq!(t.c.join_room("lobby", s(4)), Err(RoomError::NotLoggedIn));

    // Kicked out: the same.
    let mut t = Script::logged_in(ALL);
    t.join_lobby(vec![member("alice", true)], vec![], s(1));
    t.server(
        Frame::kickout(
            Dialect::MobileImSdkV6,
            "alice",
            &KickoutInfo {
                code: 1,
                reason: None,
            },
        ),
        s(2),
    );
    let events = t.events();
    assert_eq!(events[0], left("lobby", RoomLeftReason::SessionEnded));
    assert!(matches!(events[1], ClientEvent::Kicked(_)));
    assert!(t.c.rooms().is_empty());
}

#[test]
fn leaving_and_being_removed_take_the_room_out_and_it_is_not_rejoined() {
    let mut t = Script::logged_in(ALL);
    t.join_lobby(vec![member("alice", true)], vec![], s(1));
    let req = t.c.leave_room("lobby", s(2)).unwrap();
    let request = t.requests().remove(0);
    assert_eq!(request.req, req);
    assert!(t.c.rooms().contains("lobby"), "until the server agrees");
    t.reply(&RoomReply::to(&request, 0), s(2));
    assert_eq!(t.events(), [left("lobby", RoomLeftReason::Requested)]);

    // Joined again, then removed by the server (a `left` naming this user).
    t.join_lobby(vec![member("alice", true)], vec![], s(3));
    t.reply(
        &RoomReply::event(RoomOp::Left, "lobby", "alice", None),
        s(4),
    );
    assert_eq!(t.events(), [left("lobby", RoomLeftReason::Removed)]);
    assert!(t.c.rooms().is_empty());
    t.relogin(s(10), s(11), ALL);
    assert!(t.requests().is_empty(), "no room to re-join");
}

/// The same through the plugin: `ImClient`, messages, observers and the test kit
/// over the memory transport.
#[cfg(feature = "testing")]
mod plugin {
    use bevy::prelude::*;
    use bevy_im::prelude::*;
    use bevy_im::protocol::{
        ErrorResponse, Frame, LoginResponse, RoomOp, RoomReply, RoomRequest, wire,
    };
    use bevy_im::testing::ImTestApp;

    use super::{ALL, history, member};

    fn config() -> ImConfig {
        let mut c = ImConfig::new("mem://server").dialect(Dialect::MobileImSdkV6);
        c.client.jitter_seed = Some(7);
        c
    }

    /// Joins `lobby` through `ImClient`; the server answers with `members` and
    /// `messages`.
    fn join_lobby(t: &mut ImTestApp, members: Vec<Member>, messages: Vec<HistoryMessage>) {
        let req = t.run(|mut im: ImClient| im.join_room("lobby")).unwrap();
        t.step();
        let requests = t.room_requests();
        assert_eq!(
            requests,
            [RoomRequest::new(req, RoomOp::Join).room("lobby")]
        );
        let mut reply = RoomReply::to(&requests[0], 0);
        reply.members = members;
        reply.messages = messages;
        t.push_room_reply(&reply);
        t.step();
    }

    #[test]
    fn a_game_joins_sees_presence_chats_and_leaves_through_im_client() {
        #[derive(Resource, Default)]
        struct Observed(Vec<String>);
        let mut t = ImTestApp::memory(config());
        t.app
            .init_resource::<Observed>()
            .add_observer(|ev: On<RoomJoined>, mut o: ResMut<Observed>| {
                o.0.push(format!("joined {} ({} members)", ev.room, ev.members.len()));
            })
            .add_observer(|ev: On<PresenceChanged>, mut o: ResMut<Observed>| {
                o.0.push(format!("{} online: {}", ev.user, ev.online));
            });
        t.login_with_ext("alice", ALL);
        assert!(t.run(|im: ImClient| im.supports(ext::ROOMS)));
        assert_eq!(
            t.run(|im: ImClient| im.server_extensions().to_vec()),
            ALL.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        );
        join_lobby(
            &mut t,
            vec![member("alice", true), member("bob", true)],
            vec![history(11, "bob", "hi")],
        );
        assert_eq!(
            t.heard::<RoomJoined>(),
            [RoomJoined {
                client: t.client(),
                room: "lobby".into(),
                members: vec![member("alice", true), member("bob", true)],
                messages: vec![history(11, "bob", "hi")],
                more: false,
                rejoin: false,
            }]
        );

        // Bob's link drops: the game hears it and reads it from the state.
        t.push_room_reply(&RoomReply::event(
            RoomOp::Presence,
            "lobby",
            "bob",
            Some(false),
        ));
        t.step();
        assert_eq!(t.heard::<PresenceChanged>().len(), 1);
        let bob = t.run(|im: ImClient| im.rooms().get("lobby").and_then(|r| r.online("bob")));
        assert_eq!(bob, Some(false));

        // A room message arrives (and is ACKed), and is kept in the inbox too.
        let fp = t.deliver_to_room("carol", "lobby", "gg", 12);
        let got = t.heard::<DataReceived>();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].room.as_deref(), got[0].mid, got[0].from.as_str()),
            (Some("lobby"), Some(12), "carol")
        );
        assert_eq!(got[0].sent_at_ms, Some(1_795_643_500_012));
        let inbox = t.run(|mut im: ImClient| im.get().inbox().drain().collect::<Vec<_>>());
        assert_eq!(inbox, got);

        // The game posts to the room; the ACK carries the message's id.
        let mine = t
            .run(|mut im: ImClient| im.send_to_room("lobby", "hi all"))
            .unwrap()
            .unwrap();
        t.step();
        let sent = t.wire();
        assert!(
            sent.iter()
                .any(|f| f.ty == wire::RECEIVED && f.content() == fp),
            "the copy was ACKed"
        );
        let post = sent.iter().find(|f| f.ty == wire::COMMON_DATA).unwrap();
        assert_eq!(
            (post.to_id(), post.content(), post.fp.as_deref()),
            ("#lobby", "hi all", Some(&*mine))
        );
        t.push_ack(&mine, Some(13), false);
        t.step();
        assert_eq!(
            t.heard::<MessageDelivered>(),
            [MessageDelivered {
                client: t.client(),
                fp: mine,
                stored: false,
                mid: Some(13),
            }]
        );

        // Leaving.
        let req = t.run(|mut im: ImClient| im.leave_room("lobby")).unwrap();
        t.step();
        let leave = t.room_requests();
        assert_eq!(leave, [RoomRequest::new(req, RoomOp::Leave).room("lobby")]);
        t.push_room_reply(&RoomReply::to(&leave[0], 0));
        t.step();
        assert_eq!(
            t.heard::<RoomLeft>(),
            [RoomLeft {
                client: t.client(),
                room: "lobby".into(),
                reason: RoomLeftReason::Requested,
            }]
        );
        assert!(t.run(|im: ImClient| im.rooms().is_empty()));
        assert_eq!(
            t.app.world().resource::<Observed>().0,
            ["joined lobby (2 members)", "bob online: false"]
        );
        assert!(t.heard::<RoomRequestFailed>().is_empty());
    }

    #[test]
    fn against_an_upstream_server_room_calls_fail_at_once_and_write_nothing() {
        let mut t = ImTestApp::memory(config());
        t.login("alice");
        let (join, history, post) = t.run(|mut im: ImClient| {
            (
                im.join_room("lobby"),
                im.direct_history("bob", None, 20),
                im.send_to_room("lobby", "gg"),
            )
        });
        assert_eq!(join, Err(RoomError::NotSupported { ext: ext::ROOMS }));
        assert_eq!(history, Err(RoomError::NotSupported { ext: ext::HISTORY }));
        assert_eq!(
            post,
            Err(SendError::Room(RoomError::NotSupported { ext: ext::ROOMS }))
        );
        t.steps(2);
        assert!(t.wire().is_empty());
        assert!(t.heard::<SendResult>().is_empty());
        assert!(t.heard::<RoomRequestFailed>().is_empty());
        assert_eq!(t.run(|im: ImClient| im.core().pending_requests()), 0);
    }

    #[test]
    fn a_refused_message_is_heard_once_and_never_reported_lost() {
        let mut t = ImTestApp::memory(config());
        t.login_with_ext("alice", ALL);
        let fp = t
            .run(|mut im: ImClient| im.send(Outgoing::new("carol", "hello")))
            .unwrap()
            .unwrap();
        t.step();
        let sent = t.wire().remove(0);
        t.push(Frame::error_response(&ErrorResponse {
            error_code: 507,
            error_msg: sent.to_json(),
        }));
        t.step();
        assert_eq!(
            t.heard::<MessageRefused>(),
            [MessageRefused {
                client: t.client(),
                fp: Some(fp.clone()),
                code: 507,
                frame: sent,
            }]
        );
        assert_eq!(t.run(|im: ImClient| im.pending_count()), 0);
        // Well past its loss deadline (9 s): no resend, no loss, no server error.
        for _ in 0..15 {
            t.advance(std::time::Duration::from_secs(1));
        }
        assert!(t.wire().iter().all(|f| f.fp.as_deref() != Some(&*fp)));
        assert!(t.heard::<MessagesLost>().is_empty());
        assert!(t.heard::<ServerError>().is_empty());
        assert!(t.heard::<MessageDelivered>().is_empty());
    }

    #[test]
    fn after_a_relogin_the_room_is_rejoined_and_the_game_sees_no_gap_and_no_duplicate() {
        let mut t = ImTestApp::memory(config());
        t.login_with_ext("alice", ALL);
        join_lobby(
            &mut t,
            vec![member("alice", true), member("bob", true)],
            vec![history(11, "bob", "m11")],
        );
        t.deliver_to_room("bob", "lobby", "m12", 12);
        t.wire();
        t.heard::<LoginSucceeded>();

        // The link drops; the client logs in again by itself.
        t.peer().drop_link();
        t.step();
        assert!(t.run(|im: ImClient| im.rooms().contains("lobby")));
        let mut back = false;
        for _ in 0..50 {
            if t.wire().iter().any(|f| f.ty == wire::LOGIN) {
                t.push(Frame::login_response(
                    "alice",
                    &LoginResponse {
                        code: 0,
                        first_login_time: 1,
                        ext: ALL.iter().map(|e| e.to_string()).collect(),
                    },
                ));
                t.step();
                back = true;
                break;
            }
            // Step while a link is connecting; otherwise wait for the next attempt.
            if t.core().link().is_some() {
                t.step();
            } else {
                t.advance_to_next_deadline();
            }
        }
        assert!(back, "logged in again");
        assert_eq!(t.heard::<LoginSucceeded>().len(), 1);
        let rejoin = t.room_requests();
        assert_eq!(rejoin.len(), 1);
        assert_eq!(
            (rejoin[0].op, rejoin[0].room.as_deref(), rejoin[0].after),
            (RoomOp::Join, Some("lobby"), Some(12))
        );
        // A live copy of 14 comes before the reply, which holds 12, 13 and 14.
        t.deliver_to_room("bob", "lobby", "m14", 14);
        let mut reply = RoomReply::to(&rejoin[0], 0);
        reply.members = vec![member("alice", true), member("bob", true)];
        reply.messages = vec![
            history(12, "bob", "m12"),
            history(13, "bob", "m13"),
            history(14, "bob", "m14"),
        ];
        t.push_room_reply(&reply);
        t.step();
        let joined = t.heard::<RoomJoined>();
        assert_eq!(joined.len(), 2, "the first join and the re-join");
        assert!(joined[1].rejoin);
        assert_eq!(joined[1].messages, [history(13, "bob", "m13")]);
        // What the game saw of the room, in all: 11 (join), 12 and 14 (live), 13
        // (catch-up); each once.
        let live: Vec<i64> = t
            .heard::<DataReceived>()
            .iter()
            .filter_map(|d| d.mid)
            .collect();
        assert_eq!(live, [12, 14]);
        assert!(t.heard::<RoomLeft>().is_empty());
        assert_eq!(
            t.run(|im: ImClient| im.rooms().get("lobby").and_then(|r| r.last_mid())),
            Some(14)
        );
    }

    #[test]
    fn the_room_messages_are_registered_for_reflection() {
        let t = ImTestApp::memory(config());
        let registry = t.app.world().resource::<AppTypeRegistry>().read();
        for id in [
            std::any::TypeId::of::<RoomLeft>(),
            std::any::TypeId::of::<MemberJoined>(),
            std::any::TypeId::of::<MemberLeft>(),
            std::any::TypeId::of::<PresenceChanged>(),
            std::any::TypeId::of::<MessageRefused>(),
            std::any::TypeId::of::<BlockUpdated>(),
        ] {
            assert!(registry.get(id).is_some());
        }
    }
}

#[test]
fn a_missed_event_rejoins_from_the_last_id_once_and_fills_the_gap() {
    let mut t = Script::logged_in(ALL);
    t.join_lobby(
        vec![member("alice", true), member("bob", true)],
        vec![history(11, "bob", "m11")],
        s(1),
    );
    t.server(room_copy("bob", 12, "f12"), s(2));
    t.events();
    // Copies 13 and 14 never reached alice: the server says so, twice.
    let missed = RoomReply::event(RoomOp::Missed, "lobby", "alice", None);
    t.reply(&missed, s(3));
    t.reply(&missed, s(3));
    let asked = t.requests();
    assert_eq!(asked.len(), 1, "one catch-up while one is in flight");
    assert_eq!((asked[0].op, asked[0].after), (RoomOp::Join, Some(12)));
    let mut reply = RoomReply::to(&asked[0], 0);
    reply.members = vec![member("alice", true), member("bob", true)];
    reply.messages = vec![history(13, "bob", "m13"), history(14, "bob", "m14")];
    t.reply(&reply, s(4));
    let events = t.events();
    let [ClientEvent::RoomJoined(joined)] = &events[..] else {
        panic!("{events:?}");
    };
    assert!(joined.rejoin);
    let mids: Vec<i64> = joined.messages.iter().map(|m| m.mid).collect();
    assert_eq!(mids, [13, 14]);
    assert_eq!(t.c.rooms().get("lobby").unwrap().last_mid(), Some(14));
    // A room the client is not in asks nothing.
    t.reply(
        &RoomReply::event(RoomOp::Missed, "other", "alice", None),
        s(5),
    );
    assert!(t.requests().is_empty());
    assert!(t.events().is_empty());
}

#[test]
fn a_500_naming_a_pending_message_is_one_refusal_and_never_resent() {
    // What the server answers when its store cannot be written: 500 with the frame.
    let mut t = Script::logged_in(ALL);
    let store_failed = |frame: &Frame| {
        Frame::error_response(&ErrorResponse {
            error_code: 500,
            error_msg: frame.to_json(),
        })
    };
    let room_fp = t.c.send_to_room("lobby", "gg", s(0)).unwrap().unwrap();
    let direct_fp =
        t.c.send(Outgoing::new("carol", "later"), s(0))
            .unwrap()
            .unwrap();
    let sent = t.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(t.c.pending_count(), 2);
    for (frame, fp) in sent.iter().zip([&room_fp, &direct_fp]) {
        t.server(store_failed(frame), s(1));
        assert_eq!(
            t.events(),
            [ClientEvent::MessageRefused(MessageRefused {
                client: ME,
                fp: Some(fp.clone()),
                code: 500,
                frame: frame.clone(),
            })]
        );
    }
    assert_eq!(t.c.pending_count(), 0);
    // No resend and no loss report, ever.
    for at in [3, 6, 9, 12] {
        t.c.tick(s(at));
    }
    assert!(t.sent().iter().all(|f| f.ty != wire::COMMON_DATA));
    assert!(t.events().iter().all(|e| !matches!(
        e,
        ClientEvent::MessagesLost(_) | ClientEvent::MessageRefused(_)
    )));
    assert_eq!(t.c.stats().lost, 0);
    // The same 500 again: settled, so only a server error, and still no resend.
    t.server(store_failed(&sent[0]), s(13));
    assert!(matches!(
        &t.events()[..],
        [ClientEvent::ServerError(ServerError {
            code: ResultCode::Other(500),
            ..
        })]
    ));
    assert!(t.sent().is_empty());
    assert!(t.c.is_logged_in());
}

#[test]
fn too_many_room_requests_in_flight_are_refused_at_once_and_write_nothing() {
    let mut t = Script::logged_in_with(
        ClientConfig {
            relogin_spread: Duration::ZERO,
            max_queued: 2,
            ..config()
        },
        ALL,
    );
    t.c.join_room("lobby", s(1)).unwrap();
    t.c.list_rooms(s(1)).unwrap();
    let written = t.requests();
    assert_eq!(written.len(), 2);
    assert_eq!(t.c.pending_requests(), 2);
    // Every kind of request is refused while two wait for their replies.
    let full = RoomError::TooManyPending(2);
    assert_eq!(t.c.join_room("other", s(1)), Err(full.clone()));
    assert_eq!(t.c.leave_room("lobby", s(1)), Err(full.clone()));
    assert_eq!(t.c.room_members("lobby", s(1)), Err(full.clone()));
    assert_eq!(t.c.room_history("lobby", None, 20, s(1)), Err(full.clone()));
    assert_eq!(t.c.direct_history("bob", None, 20, s(1)), Err(full.clone()));
    assert_eq!(t.c.list_rooms(s(1)), Err(full.clone()));
    assert_eq!(t.c.block("bob", s(1)), Err(full.clone()));
    assert_eq!(t.c.unblock("bob", s(1)), Err(full.clone()));
    assert_eq!(full.code(), ResultCode::NoLogin);
    assert!(t.c.take_actions().is_empty(), "nothing written");
    assert!(t.events().is_empty(), "the error is the outcome");
    assert_eq!(t.c.pending_requests(), 2);
    assert!(
        t.c.rooms().get("other").is_none(),
        "the refused join is not tracked"
    );
    // A reply frees a place.
    let mut rooms = RoomReply::to(&written[1], 0);
    rooms.rooms = Vec::new();
    t.reply(&rooms, s(2));
    assert!(matches!(&t.events()[..], [ClientEvent::RoomList(_)]));
    assert_eq!(t.c.pending_requests(), 1);
    t.c.room_members("lobby", s(2)).unwrap();
    assert_eq!(t.requests().len(), 1);
    assert_eq!(t.c.join_room("other", s(2)), Err(full));
}
