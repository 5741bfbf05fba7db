//! Drives a `ClientCore` through a fuzzed script: the game's calls, link events, time
//! moving forward, and server frames that are either arbitrary text or built from
//! fuzzed fields around what the client really wrote (login replies, ACKs of its
//! fingerprints, error frames naming its messages, kickouts, room replies and events).
//!
//! Invariants, checked after every step:
//! - every frame the client writes decodes and fits its frame limit;
//! - every QoS fingerprint the client sent gets at most one outcome
//!   (`MessageDelivered`, `MessagesLost` or a `MessageRefused` of the QoS frame) per
//!   send, so never both delivered and lost, and the messages still waiting are
//!   exactly those in the core's QoS send table;
//! - after a tick, `poll_timeout()` is not in the past;
//! - after `release()` (or `logout()`) nothing more is written or connected until
//!   the next login.

#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use arbitrary::Arbitrary;
use bevy_im::client::{
    Action, ClientConfig, ClientCore, ClientEvent, LoginRequest, Outgoing, QosSendConfig,
    ReloginLimits, ReloginPolicy, SenseMode,
};
use bevy_im::protocol::{
    Dialect, ErrorResponse, Frame, HistoryMessage, KickoutInfo, LoginResponse, Member, RoomInfo,
    RoomOp, RoomReply, RoomRequest, ServerKind, decode_body, ext, wire,
};
use bevy_im::transport::{LinkId, TransportError};
use libfuzzer_sys::fuzz_target;

const USERS: [&str; 5] = ["alice", "bob", "carol", "0", ""];
const ROOMS: [&str; 6] = ["lobby", "r", "x", "", "#r", "a b"];
const FPS: [&str; 4] = ["f1", "f2", "", "a-much-longer-fingerprint-0123456789"];
const EXTS: [&str; 6] = [
    ext::ROOMS,
    ext::PRESENCE,
    ext::HISTORY,
    ext::OFFLINE,
    ext::BLOCK,
    "zzz",
];

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

/// The client's configuration: small timings and limits so that deep states come
/// within a few steps.
#[derive(Arbitrary, Debug)]
struct Knobs {
    v6: bool,
    auto_relogin: bool,
    fixed_relogin: bool,
    sense: u8,
    max_resends: u8,
    max_throttled: u8,
    max_queued: u8,
    max_attempts: Option<u8>,
    max_duration_s: Option<u8>,
    small_frames: bool,
    seed: u64,
}

impl Knobs {
    fn config(&self) -> ClientConfig {
        let sense = [SenseMode::Mode3s, SenseMode::Mode5s, SenseMode::Mode10s];
        ClientConfig {
            dialect: if self.v6 {
                Dialect::MobileImSdkV6
            } else {
                Dialect::Seed
            },
            sense_mode: sense[usize::from(self.sense) % sense.len()],
            qos: QosSendConfig {
                max_resends: u32::from(self.max_resends % 4),
                max_throttled: u32::from(self.max_throttled % 4),
                ..QosSendConfig::default()
            },
            auto_relogin: self.auto_relogin,
            relogin: if self.fixed_relogin {
                ReloginPolicy::UPSTREAM
            } else {
                ReloginPolicy::default()
            },
            max_frame_bytes: if self.small_frames { 400 } else { 65536 },
            jitter_seed: Some(self.seed),
            max_queued: usize::from(self.max_queued % 8),
            relogin_limits: ReloginLimits {
                max_attempts: self.max_attempts.map(|n| u32::from(n % 5)),
                max_duration: self
                    .max_duration_s
                    .map(|s| Duration::from_secs(u64::from(s % 60))),
            },
            ..ClientConfig::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Time moves on by `ms`; `step`: tick at every deadline on the way, as the
    /// plugin does, else once at the end (a late frame).
    Wait {
        ms: u16,
        step: bool,
    },
    Login {
        user: u8,
        refuse_token: bool,
    },
    /// A login that works: the call, the link opens, the server says yes and
    /// serves the extensions `ext` does not mask out.
    Session {
        user: u8,
        ext: u8,
    },
    /// The link event goes to the current link, or to an older one (`stale`).
    Opened {
        stale: u8,
    },
    Closed {
        stale: u8,
        code: Option<u16>,
    },
    LinkError {
        stale: u8,
    },
    Send(Send),
    SendToRoom {
        room: u8,
        content: String,
    },
    Logout,
    Release,
    SetToken {
        refuse: bool,
    },
    Room(RoomCall),
    /// A frame from the server.
    Server {
        stale: u8,
        frame: ServerFrame,
    },
}

#[derive(Arbitrary, Debug)]
struct Send {
    to: u8,
    room: bool,
    qos: bool,
    fp: Option<u8>,
    content: String,
    typeu: i32,
}

#[derive(Arbitrary, Debug)]
enum RoomCall {
    Join(u8),
    Leave(u8),
    Members(u8),
    History {
        room: u8,
        before: Option<i64>,
        limit: u8,
    },
    DirectHistory {
        peer: u8,
        before: Option<i64>,
        limit: u8,
    },
    List,
    Block(u8),
    Unblock(u8),
}

#[derive(Arbitrary, Debug)]
enum ServerFrame {
    Raw(String),
    LoginReply {
        code: Code,
        ext: u8,
        qos: bool,
        first_login_time: i64,
    },
    /// The ACK of a fingerprint the client sent (`pick` among them), in either
    /// dialect's type.
    Ack {
        pick: u8,
        other_type: bool,
        stored: bool,
        mid: Option<i64>,
        qos: bool,
    },
    KeepaliveReply,
    Kickout {
        code: i32,
        reason: Option<String>,
        other_type: bool,
    },
    /// An error frame naming one of the client's data frames (`pick`; the frame as
    /// written, or with QoS turned off), or any message.
    Error {
        code: Code,
        about: About,
    },
    Data {
        from: u8,
        room: Option<u8>,
        qos: bool,
        fp: u8,
        mid: Option<i64>,
        content: String,
    },
    /// A reply to one of the client's room requests (`pick`), or to any `req`.
    RoomReply {
        pick: u8,
        any_req: Option<u64>,
        code: Code,
        members: Vec<(u8, bool)>,
        messages: Vec<Msg>,
        more: bool,
        rooms: Vec<(u8, u8)>,
    },
    RoomEvent {
        op: u8,
        room: u8,
        user: u8,
        online: Option<bool>,
    },
    Echo(String),
    Unknown(i32),
}

#[derive(Arbitrary, Debug)]
enum Code {
    Zero,
    RateLimited,
    Busy,
    Forbidden,
    NotFound,
    Full,
    NotLoggedIn,
    Other(i32),
}

impl Code {
    fn code(&self) -> i32 {
        match self {
            Code::Zero => 0,
            Code::RateLimited => 429,
            Code::Busy => 503,
            Code::Forbidden => 403,
            Code::NotFound => 404,
            Code::Full => 409,
            Code::NotLoggedIn => 301,
            Code::Other(c) => *c,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum About {
    Sent { pick: u8, strip_qos: bool },
    Text(String),
}

#[derive(Arbitrary, Debug)]
struct Msg {
    mid: i64,
    from: u8,
    fp: Option<u8>,
    own_fp: bool,
    content: String,
}

/// What the harness knows of the client.
struct World {
    core: ClientCore,
    dialect: Dialect,
    max_frame: usize,
    now: Duration,
    /// The newest link the client asked for.
    link: u64,
    /// Data frames written, as written.
    data: Vec<Frame>,
    /// Fingerprints of QoS data frames written.
    qos_fps: Vec<String>,
    /// Room requests written.
    requests: Vec<RoomRequest>,
    /// QoS fingerprints sent and still without an outcome.
    pending: HashSet<String>,
    /// Released or logged out, and not logged in since.
    released: bool,
}

impl World {
    fn new(knobs: &Knobs) -> Self {
        let config = knobs.config();
        Self {
            dialect: config.dialect,
            max_frame: config.max_frame_bytes,
            core: ClientCore::new(config),
            now: Duration::ZERO,
            link: 0,
            data: Vec::new(),
            qos_fps: Vec::new(),
            requests: Vec::new(),
            pending: HashSet::new(),
            released: false,
        }
    }

    fn link(&self, stale: u8) -> LinkId {
        // Mostly the current link; sometimes an older (or never made) one.
        LinkId(self.link.saturating_sub(u64::from(stale % 4)))
    }

    fn me(&self) -> String {
        self.core.user_id().unwrap_or_default().to_owned()
    }

    fn step(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::Wait { ms, step } => {
                let until = now + Duration::from_millis(u64::from(ms) * 10);
                if step {
                    for _ in 0..1000 {
                        match self.core.poll_timeout() {
                            Some(due) if due <= until => {
                                self.now = due.max(self.now);
                                self.tick();
                            }
                            _ => break,
                        }
                    }
                }
                self.now = until.max(self.now);
                self.tick();
            }
            Op::Login { user, refuse_token } => {
                let token = if refuse_token { "refuse" } else { "t" };
                let request = LoginRequest::new(pick(&USERS, user), token);
                if self.core.login(request, now).is_ok() {
                    self.released = false;
                }
            }
            Op::Session { user, ext } => {
                let request = LoginRequest::new(pick(&USERS, user), "t");
                if self.core.login(request, now).is_ok() {
                    self.released = false;
                }
                self.check();
                self.core.on_link_opened(self.link(0), now);
                let reply = ServerFrame::LoginReply {
                    code: Code::Zero,
                    ext,
                    qos: false,
                    first_login_time: 1,
                };
                let text = self.server_text(reply);
                self.core.on_text(self.link(0), &text, now);
            }
            Op::Opened { stale } => self.core.on_link_opened(self.link(stale), now),
            Op::Closed { stale, code } => {
                self.core
                    .on_link_closed(self.link(stale), code, "closed", now)
            }
            Op::LinkError { stale } => self
                .core
                .on_link_error(self.link(stale), TransportError::NotOpen),
            Op::Send(send) => {
                let to = if send.room {
                    format!("#{}", pick(&ROOMS, send.to))
                } else {
                    pick(&USERS, send.to).to_owned()
                };
                let msg = Outgoing {
                    to,
                    content: send.content,
                    qos: send.qos,
                    fp: send.fp.map(|i| pick(&FPS, i).to_owned()),
                    typeu: send.typeu,
                };
                if let Ok(Some(fp)) = self.core.send(msg, now)
                    && send.qos
                {
                    self.pending.insert(fp);
                }
            }
            Op::SendToRoom { room, content } => {
                if let Ok(Some(fp)) = self.core.send_to_room(pick(&ROOMS, room), content, now) {
                    self.pending.insert(fp);
                }
            }
            Op::Logout => {
                self.core.logout(now);
            }
            Op::Release => self.core.release(now),
            Op::SetToken { refuse } => self
                .core
                .set_token(if refuse { "refuse" } else { "t2" }, now),
            Op::Room(call) => {
                let _ = match call {
                    RoomCall::Join(r) => self.core.join_room(pick(&ROOMS, r), now),
                    RoomCall::Leave(r) => self.core.leave_room(pick(&ROOMS, r), now),
                    RoomCall::Members(r) => self.core.room_members(pick(&ROOMS, r), now),
                    RoomCall::History {
                        room,
                        before,
                        limit,
                    } => self
                        .core
                        .room_history(pick(&ROOMS, room), before, u32::from(limit), now),
                    RoomCall::DirectHistory {
                        peer,
                        before,
                        limit,
                    } => {
                        self.core
                            .direct_history(pick(&USERS, peer), before, u32::from(limit), now)
                    }
                    RoomCall::List => self.core.list_rooms(now),
                    RoomCall::Block(u) => self.core.block(pick(&USERS, u), now),
                    RoomCall::Unblock(u) => self.core.unblock(pick(&USERS, u), now),
                };
            }
            Op::Server { stale, frame } => {
                let text = self.server_text(frame);
                self.core.on_text(self.link(stale), &text, now);
            }
        }
        self.check();
    }

    fn tick(&mut self) {
        let now = self.now;
        self.core.tick(now);
        if let Some(due) = self.core.poll_timeout() {
            assert!(
                due > now,
                "poll_timeout {due:?} is not after the tick at {now:?}"
            );
        }
        self.check();
    }

    /// Takes what the client produced and checks it.
    fn check(&mut self) {
        for action in self.core.take_actions() {
            assert!(!self.released, "released, yet the client acts: {action:?}");
            match action {
                Action::Connect { link } => {
                    assert!(link.0 > self.link, "a link id is never reused");
                    self.link = link.0;
                }
                Action::Send { text, fp, .. } => {
                    assert!(
                        text.len() <= self.max_frame,
                        "a frame of {} bytes over the limit of {}",
                        text.len(),
                        self.max_frame
                    );
                    let frame = Frame::decode(&text).expect("a written frame decodes");
                    assert_eq!(frame.fp, fp);
                    match frame.ty {
                        wire::COMMON_DATA => {
                            if frame.qos
                                && let Some(fp) = &frame.fp
                            {
                                self.qos_fps.push(fp.clone());
                            }
                            self.data.push(frame);
                        }
                        wire::ROOM_REQUEST => {
                            let request: RoomRequest = decode_body(frame.data_content.as_deref())
                                .expect("a room request decodes");
                            self.requests.push(request);
                        }
                        _ => {}
                    }
                }
                Action::Close { .. } => {}
            }
        }
        for event in self.core.take_events() {
            match event {
                ClientEvent::MessageDelivered(e) => self.outcome(&e.fp, "delivered"),
                ClientEvent::MessagesLost(e) => {
                    for frame in &e.frames {
                        assert!(frame.qos, "only QoS messages are lost");
                        self.outcome(frame.fp.as_deref().unwrap_or_default(), "lost");
                    }
                }
                ClientEvent::MessageRefused(e) if e.frame.qos => {
                    assert_eq!(e.fp, e.frame.fp);
                    self.outcome(e.fp.as_deref().unwrap_or_default(), "refused");
                }
                _ => {}
            }
        }
        // Exactly the messages without an outcome wait in the table.
        assert_eq!(self.core.pending_count(), self.pending.len());
        for fp in &self.pending {
            assert!(
                self.core.qos_send().contains(fp.as_str()),
                "{fp} left silently"
            );
        }
    }

    fn outcome(&mut self, fp: &str, what: &str) {
        assert!(
            self.pending.remove(fp),
            "{what}: {fp:?} had no send waiting for an outcome"
        );
    }

    fn server_text(&self, frame: ServerFrame) -> String {
        let me = self.me();
        let dialect = self.dialect;
        match frame {
            ServerFrame::Raw(text) => text,
            ServerFrame::LoginReply {
                code,
                ext,
                qos,
                first_login_time,
            } => {
                let ext = (0..EXTS.len())
                    .filter(|i| ext & (1 << i) == 0)
                    .map(|i| EXTS[i].to_owned())
                    .collect();
                let mut frame = Frame::login_response(
                    &me,
                    &LoginResponse {
                        code: code.code(),
                        first_login_time,
                        ext,
                    },
                );
                frame.qos = qos;
                if qos {
                    frame.fp = Some("login-fp".into());
                }
                frame.to_json()
            }
            ServerFrame::Ack {
                pick,
                other_type,
                stored,
                mid,
                qos,
            } => {
                let fp = recent(&self.qos_fps, pick)
                    .cloned()
                    .unwrap_or_else(|| "none".into());
                let mut frame = Frame::server_ack(dialect, "bob", &me, &fp);
                if other_type {
                    frame.ty = wire::RECEIVED;
                }
                frame.stored = stored;
                frame.mid = mid;
                frame.qos = qos;
                if qos {
                    frame.fp = Some(format!("ack-{fp}"));
                }
                frame.to_json()
            }
            ServerFrame::KeepaliveReply => Frame::keepalive_response(&me).to_json(),
            ServerFrame::Kickout {
                code,
                reason,
                other_type,
            } => {
                let mut frame = Frame::kickout(dialect, &me, &KickoutInfo { code, reason });
                if other_type {
                    frame.ty = wire::SEED_ACK_OR_V6_KICKOUT;
                }
                frame.to_json()
            }
            ServerFrame::Error { code, about } => {
                let msg = match about {
                    About::Sent { pick, strip_qos } => match recent(&self.data, pick) {
                        Some(f) => {
                            let mut f = f.clone();
                            if strip_qos {
                                f.qos = false;
                            }
                            f.to_json()
                        }
                        None => String::new(),
                    },
                    About::Text(text) => text,
                };
                Frame::error_response(&ErrorResponse {
                    error_code: code.code(),
                    error_msg: msg,
                })
                .to_json()
            }
            ServerFrame::Data {
                from,
                room,
                qos,
                fp,
                mid,
                content,
            } => {
                let to = match room {
                    Some(r) => format!("#{}", pick(&ROOMS, r)),
                    None => me,
                };
                let fp = Some(pick(&FPS, fp).to_owned());
                let mut frame = Frame::data(pick(&USERS, from), &to, content, qos, fp, 0);
                frame.mid = mid;
                frame.sm = 1;
                frame.to_json()
            }
            ServerFrame::RoomReply {
                pick: i,
                any_req,
                code,
                members,
                messages,
                more,
                rooms,
            } => {
                let request = match (any_req, recent(&self.requests, i)) {
                    (None, Some(request)) => request.clone(),
                    (req, _) => RoomRequest::new(req.unwrap_or_default(), RoomOp::Join)
                        .room(pick(&ROOMS, i)),
                };
                let mut reply = RoomReply::to(&request, code.code());
                reply.members = members
                    .into_iter()
                    .map(|(u, online)| Member {
                        user: pick(&USERS, u).to_owned(),
                        online,
                    })
                    .collect();
                reply.messages = messages
                    .into_iter()
                    .map(|m| HistoryMessage {
                        mid: m.mid,
                        ts: 1,
                        from: if m.own_fp {
                            self.me()
                        } else {
                            pick(&USERS, m.from).to_owned()
                        },
                        to: request
                            .room
                            .as_deref()
                            .map(|r| format!("#{r}"))
                            .unwrap_or_default(),
                        content: m.content,
                        typeu: 0,
                        fp: match (m.own_fp, m.fp) {
                            (true, Some(i)) if !self.qos_fps.is_empty() => {
                                recent(&self.qos_fps, i).cloned()
                            }
                            (_, fp) => fp.map(|i| pick(&FPS, i).to_owned()),
                        },
                    })
                    .collect();
                reply.more = more;
                reply.rooms = rooms
                    .into_iter()
                    .map(|(r, n)| RoomInfo {
                        room: pick(&ROOMS, r).to_owned(),
                        members: usize::from(n),
                    })
                    .collect();
                Frame::room_reply(&me, &reply).to_json()
            }
            ServerFrame::RoomEvent {
                op,
                room,
                user,
                online,
            } => {
                let ops = [
                    RoomOp::Joined,
                    RoomOp::Left,
                    RoomOp::Presence,
                    RoomOp::Missed,
                    RoomOp::Join,
                ];
                let op = ops[usize::from(op) % ops.len()];
                let user = if user % 4 == 0 {
                    me.clone()
                } else {
                    pick(&USERS, user).to_owned()
                };
                let event = RoomReply::event(op, pick(&ROOMS, room), &user, online);
                Frame::room_reply(&me, &event).to_json()
            }
            ServerFrame::Echo(content) => {
                let mut frame = Frame::echo(&me, content);
                frame.ty = dialect.server_type(ServerKind::EchoResponse);
                frame.to_json()
            }
            ServerFrame::Unknown(ty) => Frame::new(ty, "0", &me).to_json(),
        }
    }
}

fuzz_target!(|input: Input| {
    let mut world = World::new(&input.knobs);
    for op in input.ops {
        let releases = matches!(op, Op::Release | Op::Logout);
        world.step(op);
        if releases {
            world.released = true;
            assert!(world.pending.is_empty(), "released with messages waiting");
            assert_eq!(world.core.pending_requests(), 0);
            assert!(world.core.rooms().is_empty());
        }
    }
});
