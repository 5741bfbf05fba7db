//! Drives the server's session logic (`bevy_im::server::fuzzing::Driver`: the shared
//! state with an in-memory store, fake sockets, tokio's paused clock) through a fuzzed
//! script: sockets open and close, log in as a few users, send data with and without
//! QoS to users, rooms and the server, ACK what they got, make room requests with odd
//! cursors, log out, stop reading; time moves on and the timers run.
//!
//! Invariants, checked after every step:
//! - every frame the server writes decodes, and fits the frame limit;
//! - a socket gets at most one ACK per QoS data frame it sent with that fingerprint
//!   (so never two for one relay unless it resent);
//! - no socket's queue holds more than `max_outbound_queue` frames, and its counter
//!   matches what is in it.

#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use bevy_im::protocol::{
    ClientKind, Dialect, Frame, KickoutCode, LoginInfo, RoomOp, RoomRequest, ServerKind,
};
use bevy_im::server::fuzzing::{Driver, Written};
use bevy_im::server::{LogoutReason, RateLimit, RoomsConfig, S2cQosConfig, ServerConfig};
use libfuzzer_sys::fuzz_target;

const USERS: [&str; 7] = ["alice", "bob", "carol", "dave", "0", "#r", ""];
const ROOMS: [&str; 6] = ["lobby", "r", "x", "", "#r", "a b"];
const FPS: [&str; 4] = ["f1", "f2", "", "a-much-longer-fingerprint-0123456789"];
const MAX_SOCKETS: usize = 8;

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

/// The `i`-th newest of `list`.
fn recent<T>(list: &[T], i: u8) -> Option<&T> {
    let back = usize::from(i) % list.len().max(1);
    list.len().checked_sub(1 + back).map(|at| &list[at])
}

#[derive(Arbitrary, Debug)]
struct Input {
    knobs: Knobs,
    ops: Vec<Op>,
}

/// The server's configuration: small bounds so that they are reached.
#[derive(Arbitrary, Debug)]
struct Knobs {
    v6: bool,
    no_extensions: bool,
    rate_limit: bool,
    user_rate_limit: bool,
    max_outbound_queue: u8,
    max_pending: u8,
    max_resends: u8,
    small_frames: bool,
    member_cap: u8,
    history_on_join: u8,
    direct_history: bool,
    dedup_entries: u8,
}

impl Knobs {
    fn config(&self) -> ServerConfig {
        let limit = RateLimit {
            per_second: 5,
            burst: 5,
        };
        ServerConfig {
            dialect: if self.v6 {
                Dialect::MobileImSdkV6
            } else {
                Dialect::Seed
            },
            max_frame_bytes: if self.small_frames { 1024 } else { 65536 },
            s2c_qos: S2cQosConfig {
                max_resends: u32::from(self.max_resends % 3),
                ..S2cQosConfig::default()
            },
            c2s_dedup_max_entries: usize::from(self.dedup_entries % 8) + 1,
            rate_limit: self.rate_limit.then_some(limit),
            user_rate_limit: self.user_rate_limit.then_some(limit),
            max_pending_s2c_per_user: usize::from(self.max_pending % 6) + 1,
            max_outbound_queue: usize::from(self.max_outbound_queue % 6) + 1,
            rooms: RoomsConfig {
                member_cap: usize::from(self.member_cap % 4) + 1,
                history_on_join: usize::from(self.history_on_join % 25),
                ..RoomsConfig::default()
            },
            direct_history: self.direct_history,
            extensions: !self.no_extensions,
            ..ServerConfig::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Open,
    /// A new socket that logs in at once.
    Connect {
        user: u8,
        first_login_time: Flt,
    },
    Login {
        sock: u8,
        user: u8,
        refuse: bool,
        first_login_time: Flt,
    },
    Data {
        sock: u8,
        to: To,
        qos: bool,
        fp: Option<u8>,
        content: Content,
        /// Fields a client should not set: the server's id and time, `stored`.
        mid: Option<i64>,
        stored: bool,
    },
    /// A data frame this socket sent before, again.
    Resend {
        sock: u8,
        pick: u8,
    },
    /// The ACK of a QoS data frame this socket got (`pick`), with or without `to`.
    Ack {
        sock: u8,
        pick: u8,
        no_to: bool,
    },
    /// An ACK of anything.
    AckAny {
        sock: u8,
        to: u8,
        fp: u8,
    },
    Room {
        sock: u8,
        op: u8,
        req: u64,
        room: Option<u8>,
        peer: Option<u8>,
        user: Option<u8>,
        before: Option<i64>,
        after: Option<i64>,
        limit: Option<u32>,
    },
    KeepAlive {
        sock: u8,
    },
    Logout {
        sock: u8,
    },
    Echo {
        sock: u8,
        content: Content,
    },
    Raw {
        sock: u8,
        text: String,
    },
    /// The socket's task writes what was queued for it (otherwise it stays queued,
    /// as for a client that stops reading).
    Read {
        sock: u8,
    },
    Close {
        sock: u8,
        how: u8,
    },
    /// Time moves on by `ms` × 10 ms; the timers run.
    Advance {
        ms: u16,
    },
}

#[derive(Arbitrary, Debug)]
enum To {
    User(u8),
    Room(u8),
    Server,
    Nobody,
}

#[derive(Arbitrary, Debug)]
enum Content {
    Text(String),
    /// Content the hooks act on.
    Hook(u8),
    /// A long content (16 bytes a unit), to reach the frame limit.
    Big(u8),
}

impl Content {
    fn text(self) -> String {
        match self {
            Content::Text(t) => t,
            Content::Hook(i) => pick(&["refuse", "rewrite", "host"], i).to_owned(),
            Content::Big(n) => "x".repeat(usize::from(n) * 16),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Flt {
    Zero,
    Negative,
    Small(u8),
    Huge,
    Any(i64),
}

impl Flt {
    fn value(&self) -> i64 {
        match self {
            Flt::Zero => 0,
            Flt::Negative => -1,
            Flt::Small(n) => i64::from(*n),
            Flt::Huge => i64::MAX,
            Flt::Any(t) => *t,
        }
    }
}

/// What one socket was sent and got.
#[derive(Default)]
struct Peer {
    /// QoS data frames sent, by fingerprint.
    sent: HashMap<String, usize>,
    /// ACKs got, by fingerprint.
    acks: HashMap<String, usize>,
    /// Data frames sent, as sent.
    data: Vec<String>,
    /// QoS data frames got.
    got: Vec<Frame>,
}

struct World {
    driver: Driver,
    dialect: Dialect,
    max_frame: usize,
    max_queue: usize,
    peers: Vec<Peer>,
}

impl World {
    fn new(knobs: &Knobs) -> Self {
        let config = knobs.config();
        Self {
            dialect: config.dialect,
            max_frame: config.max_frame_bytes,
            max_queue: config.max_outbound_queue,
            driver: Driver::new(config),
            peers: Vec::new(),
        }
    }

    fn open(&mut self) -> usize {
        let sock = self.driver.open();
        self.peers.push(Peer::default());
        sock
    }

    /// The socket `i` names; one is opened when there is none.
    fn sock(&mut self, i: u8) -> usize {
        match self.driver.sockets() {
            0 => self.open(),
            n => usize::from(i) % n,
        }
    }

    fn feed(&mut self, sock: usize, frame: &Frame) {
        self.feed_text(sock, &frame.to_json());
    }

    fn feed_text(&mut self, sock: usize, text: &str) {
        if !self.driver.is_open(sock) {
            return;
        }
        if let Ok(frame) = Frame::decode(text)
            && frame.client_kind() == ClientKind::Data
        {
            let peer = &mut self.peers[sock];
            peer.data.push(text.to_owned());
            if frame.qos
                && let Some(fp) = frame.fp
            {
                *peer.sent.entry(fp).or_default() += 1;
            }
        }
        if let Some(written) = self.driver.feed(sock, text) {
            self.took(sock, written);
        }
    }

    /// Checks what socket `sock` wrote.
    fn took(&mut self, sock: usize, written: Written) {
        assert!(written.from_queue <= written.frames.len());
        assert_eq!(
            written.counter, written.from_queue,
            "the queue counter says {} but {} were queued",
            written.counter, written.from_queue
        );
        let peer = &mut self.peers[sock];
        for text in &written.frames {
            let frame = Frame::decode(text).expect("a written frame decodes");
            assert!(
                text.len() <= self.max_frame,
                "a frame of {} bytes over the limit of {}: {}",
                text.len(),
                self.max_frame,
                text.chars().take(300).collect::<String>()
            );
            match frame.server_kind(self.dialect) {
                ServerKind::Ack => {
                    let fp = frame.content().to_owned();
                    let acks = peer.acks.entry(fp.clone()).or_default();
                    *acks += 1;
                    let sent = peer.sent.get(&fp).copied().unwrap_or_default();
                    assert!(
                        *acks <= sent,
                        "socket {sock}: ACK #{acks} of {fp:?}, sent {sent} times"
                    );
                }
                ServerKind::Data if frame.qos && frame.fp.is_some() => peer.got.push(frame),
                _ => {}
            }
        }
    }

    fn login(&mut self, sock: usize, user: u8, refuse: bool, first_login_time: Flt) {
        let info = LoginInfo {
            login_user_id: pick(&USERS, user).to_owned(),
            login_token: if refuse { "refuse" } else { "" }.to_owned(),
            extra: None,
            first_login_time: first_login_time.value(),
            app: None,
        };
        self.feed(sock, &Frame::login(&info));
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Open => {
                if self.driver.sockets() < MAX_SOCKETS {
                    self.open();
                }
            }
            Op::Connect {
                user,
                first_login_time,
            } => {
                if self.driver.sockets() < MAX_SOCKETS {
                    let sock = self.open();
                    self.login(sock, user, false, first_login_time);
                }
            }
            Op::Login {
                sock,
                user,
                refuse,
                first_login_time,
            } => {
                let sock = self.sock(sock);
                self.login(sock, user, refuse, first_login_time);
            }
            Op::Data {
                sock,
                to,
                qos,
                fp,
                content,
                mid,
                stored,
            } => {
                let sock = self.sock(sock);
                let to = match to {
                    To::User(u) => Some(pick(&USERS, u).to_owned()),
                    To::Room(r) => Some(format!("#{}", pick(&ROOMS, r))),
                    To::Server => Some("0".to_owned()),
                    To::Nobody => None,
                };
                let fp = fp.map(|i| pick(&FPS, i).to_owned());
                let mut frame = Frame::data("alice", "", content.text(), qos, fp, 0);
                frame.to = to;
                frame.mid = mid;
                frame.stored = stored;
                self.feed(sock, &frame);
            }
            Op::Resend { sock, pick } => {
                let sock = self.sock(sock);
                let data = &self.peers[sock].data;
                if let Some(text) = recent(data, pick).cloned() {
                    self.feed_text(sock, &text);
                }
            }
            Op::Ack { sock, pick, no_to } => {
                let sock = self.sock(sock);
                let got = &self.peers[sock].got;
                if let Some(frame) = recent(got, pick) {
                    let mut ack = Frame::ack_of(frame).expect("a QoS frame has a fingerprint");
                    if no_to {
                        ack.to = None;
                    }
                    self.feed(sock, &ack);
                }
            }
            Op::AckAny { sock, to, fp } => {
                let sock = self.sock(sock);
                let mut ack = Frame::new(4, "alice", pick(&USERS, to));
                ack.data_content = Some(pick(&FPS, fp).to_owned());
                self.feed(sock, &ack);
            }
            Op::Room {
                sock,
                op,
                req,
                room,
                peer,
                user,
                before,
                after,
                limit,
            } => {
                let sock = self.sock(sock);
                let ops = [
                    RoomOp::Join,
                    RoomOp::Leave,
                    RoomOp::Members,
                    RoomOp::History,
                    RoomOp::Rooms,
                    RoomOp::Block,
                    RoomOp::Unblock,
                    RoomOp::Joined,
                    RoomOp::Missed,
                    RoomOp::Unknown,
                ];
                let mut request = RoomRequest::new(req, ops[usize::from(op) % ops.len()]);
                request.room = room.map(|r| pick(&ROOMS, r).to_owned());
                request.peer = peer.map(|u| pick(&USERS, u).to_owned());
                request.user = user.map(|u| pick(&USERS, u).to_owned());
                request.before = before;
                request.after = after;
                request.limit = limit;
                self.feed(sock, &Frame::room_request("alice", &request));
            }
            Op::KeepAlive { sock } => {
                let sock = self.sock(sock);
                self.feed(sock, &Frame::keepalive("alice"));
            }
            Op::Logout { sock } => {
                let sock = self.sock(sock);
                self.feed(sock, &Frame::logout("alice"));
            }
            Op::Echo { sock, content } => {
                let sock = self.sock(sock);
                self.feed(sock, &Frame::echo("alice", content.text()));
            }
            Op::Raw { sock, text } => {
                let sock = self.sock(sock);
                self.feed_text(sock, &text);
            }
            Op::Read { sock } => {
                let sock = self.sock(sock);
                if let Some(written) = self.driver.read(sock) {
                    self.took(sock, written);
                }
            }
            Op::Close { sock, how } => {
                let sock = self.sock(sock);
                let ends = [
                    LogoutReason::Closed,
                    LogoutReason::TimedOut,
                    LogoutReason::Logout,
                    LogoutReason::Shutdown,
                    LogoutReason::Kicked(KickoutCode::DuplicateLogin),
                ];
                self.driver.close(sock, ends[usize::from(how) % ends.len()]);
            }
            Op::Advance { ms } => {
                self.driver
                    .advance(Duration::from_millis(u64::from(ms) * 10));
            }
        }
        for sock in 0..self.driver.sockets() {
            if let Some(queued) = self.driver.queued(sock) {
                assert!(
                    queued <= self.max_queue,
                    "socket {sock} has {queued} queued, over {}",
                    self.max_queue
                );
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut world = World::new(&input.knobs);
    for op in input.ops {
        world.step(op);
    }
    // Whatever is still queued is written too, and checked.
    for sock in 0..world.driver.sockets() {
        if let Some(written) = world.driver.read(sock) {
            world.took(sock, written);
        }
    }
});
