//! A load generator for the reference server, in two modes:
//!
//! - `direct` (the default): pairs of raw WebSocket clients log in, one of each pair
//!   sends QoS messages to the other, and the tool reports throughput, relay-ACK
//!   latency and memory.
//! - `room`: `--members` clients join one room and each posts `--room-messages` QoS
//!   messages to it (at most `--room-window` waiting for their ACK); every member ACKs
//!   every copy it receives. The tool reports posts and delivered copies per second
//!   and the sender's ACK latency, and checks that every post was ACKed and reached
//!   every other member exactly once (the counts per fingerprint are printed).
//!
//! ```text
//! cargo run --release --example im_load -- --pairs 200 --messages 200
//! cargo run --release --example im_load -- --mode room --members 100 --room-messages 50
//! cargo run --release --example im_load -- --compare-store --pairs 100 --messages 200 \
//!     --room-messages 50 --room-window 1 --max-pending-s2c 100000 --rounds 3
//! cargo run --release --example im_load -- --url ws://127.0.0.1:3000/websocket --dialect seed
//! ```
//!
//! Without `--url` the server runs in this process on 127.0.0.1 (rate limits off), with
//! the store `--store` (`memory` or a file path), `--direct-history` and
//! `--max-pending-s2c`. `--compare-store` measures the store's cost in one run: the direct
//! load against a server that keeps no direct history and against one that writes
//! every relayed message to its pair's history in a store file, then the room load on
//! a memory store and on a file store (the files in a temporary directory, removed at
//! the end).
//!
//! Every run is bounded by `--timeout`; a run that loses, duplicates or fails to ACK
//! a message exits non-zero.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy_im::protocol::{
    Dialect, Frame, LoginInfo, RoomOp, RoomReply, RoomRequest, ServerKind, decode_body,
    room_address, wire,
};
use bevy_im::server::{ServerConfig, ServerHandle, StoreConfig, StorePath};
use clap::{Parser, ValueEnum};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for the bevy_im reference server")]
struct Args {
    /// Server URL; without it a server is started in this process.
    #[arg(long)]
    url: Option<String>,
    /// Direct mode: the receivers log in here instead (another node of a cluster),
    /// so that every message crosses nodes.
    #[arg(long, requires = "url")]
    receiver_url: Option<String>,
    /// Wire dialect of the server.
    #[arg(long, default_value = "seed")]
    dialect: Dialect,
    /// What to load: direct messages between pairs, or one room.
    #[arg(long, value_enum, default_value_t = Mode::Direct)]
    mode: Mode,
    /// Sender/receiver pairs (two connections each), direct mode.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Members of the room, room mode.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// The room's name, room mode.
    #[arg(long, default_value = "lobby")]
    room: String,
    /// QoS messages each sender sends (each member too, unless `--room-messages`).
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// QoS messages each room member posts (default: `--messages`).
    #[arg(long)]
    room_messages: Option<usize>,
    /// Messages a sender may have waiting for their ACK.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Posts a room member may have waiting for their ACK (default: `--window`).
    #[arg(long)]
    room_window: Option<usize>,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// The in-process server's store: `memory` or a file path.
    #[arg(long, default_value = "memory", conflicts_with_all = ["url", "compare_store"])]
    store: StorePath,
    /// Whether the in-process server writes each relayed direct message to the pair's
    /// history in the store.
    #[arg(long, value_enum, default_value_t = OnOff::On,
          conflicts_with_all = ["url", "compare_store"])]
    direct_history: OnOff,
    /// The in-process server's cap on unacknowledged server-to-client QoS frames per
    /// user (`max_pending_s2c_per_user`); a room copy over it is not sent. Default: the
    /// server's.
    #[arg(long, conflicts_with = "url")]
    max_pending_s2c: Option<usize>,
    /// Measure the store's cost: the direct load with direct history off and on (file
    /// store), then the room load on a memory and on a file store, in this process.
    #[arg(long, conflicts_with = "url")]
    compare_store: bool,
    /// With `--compare-store`: how many times to run each comparison (the order of
    /// the two sides alternates from round to round).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Process id of a server started separately, to report its memory and CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Clients that log in at once, logins mode.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

impl Args {
    fn room_messages(&self) -> usize {
        self.room_messages.unwrap_or(self.messages)
    }

    fn room_window(&self) -> usize {
        self.room_window.unwrap_or(self.window)
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Room,
    /// `--clients` connect and log in at once, then stay idle: login latency, and
    /// with `--server-pid` the server's memory per idle connection.
    Logins,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A room member that hears nothing for this long while others still post gives up
/// (and the run reports what is missing).
const STALL: Duration = Duration::from_secs(10);

/// Once every post is ACKed, a member still missing copies waits this long for them.
const DRAIN: Duration = Duration::from_secs(1);

/// Resident memory of this process, or of `pid`, in KiB (Linux only).
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or("/proc/self/status".to_owned(), |p| {
        format!("/proc/{p}/status")
    });
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) of `pid` so far (Linux only).
fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // Fields after the command (which may hold spaces) end at its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|t| *t > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn rate(count: usize, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64().max(1e-9)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts a server in this process on a free port.
async fn start_server(
    args: &Args,
    store: StorePath,
    direct_history: bool,
) -> Result<ServerHandle, String> {
    let mut config = ServerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        dialect: args.dialect,
        rate_limit: None,
        user_rate_limit: None,
        store,
        direct_history,
        ..Default::default()
    };
    config.rooms.member_cap = config.rooms.member_cap.max(args.members);
    if let Some(max) = args.max_pending_s2c {
        config.max_pending_s2c_per_user = max;
    }
    let s = bevy_im::server::Server::bind(config, bevy_im::server::AcceptAll)
        .await
        .map_err(|e| e.to_string())?;
    let handle = s.handle();
    tokio::spawn(s.serve());
    Ok(handle)
}

/// Prints what the server refused, resent or lost, when anything.
fn print_server_trouble(h: &ServerHandle) {
    let m = h.metrics();
    let rejected: BTreeMap<_, _> = m.rejected.into_iter().filter(|(_, n)| *n > 0).collect();
    if !rejected.is_empty() || m.qos_resends > 0 || m.qos_lost > 0 {
        println!(
            "  server: rejected={rejected:?} qos_resends={} qos_lost={}",
            m.qos_resends, m.qos_lost
        );
    }
}

async fn login(url: &str, user: &str) -> Result<Ws, String> {
    // Small buffers, like the server's, so that the clients in this process do not
    // dominate its memory.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024);
    let (mut ws, _) = connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|e| format!("{user}: {e}"))?;
    let info = LoginInfo {
        login_user_id: user.to_owned(),
        login_token: "load".into(),
        extra: None,
        first_login_time: 0,
        app: Some("im_load".into()),
    };
    ws.send(Message::text(Frame::login(&info).to_json()))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg.map_err(|e| e.to_string())? {
            let frame = Frame::decode(t.as_str()).map_err(|e| e.to_string())?;
            if frame.ty == 50 {
                return Ok(ws);
            }
        }
    }
    Err(format!("{user}: closed before the login reply"))
}

async fn send(ws: &mut Ws, frame: &Frame) -> Result<(), String> {
    ws.send(Message::text(frame.to_json()))
        .await
        .map_err(|e| e.to_string())
}

/// Sends a room request and waits for its reply (events on the way are skipped).
async fn request(ws: &mut Ws, me: &str, request: &RoomRequest) -> Result<RoomReply, String> {
    send(ws, &Frame::room_request(me, request)).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg.map_err(|e| e.to_string())? {
            let frame = Frame::decode(t.as_str()).map_err(|e| e.to_string())?;
            if frame.ty == wire::ROOM_REPLY {
                let reply: RoomReply =
                    decode_body(frame.data_content.as_deref()).map_err(|e| e.to_string())?;
                if reply.req == Some(request.req) {
                    return Ok(reply);
                }
            }
        }
    }
    Err(format!("{me}: closed before the reply to {:?}", request.op))
}

// ---------------------------------------------------------------------------------
// Direct mode
// ---------------------------------------------------------------------------------

/// Sends `n` QoS messages with at most `window` unacknowledged; returns each one's
/// relay-ACK latency.
async fn sender(mut ws: Ws, me: String, to: String, args: Args) -> Result<Vec<Duration>, String> {
    let body = "x".repeat(args.size);
    let mut in_flight: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(args.messages);
    let mut sent = 0;
    while latencies.len() < args.messages {
        while sent < args.messages && in_flight.len() < args.window {
            let frame = Frame::data(&me, &to, body.clone(), true, None, 0);
            in_flight.insert(frame.fp.clone().unwrap_or_default(), Instant::now());
            send(&mut ws, &frame).await?;
            sent += 1;
        }
        let Some(msg) = ws.next().await else {
            return Err(format!("{me}: closed"));
        };
        if let Message::Text(t) = msg.map_err(|e| e.to_string())? {
            let frame = Frame::decode(t.as_str()).map_err(|e| e.to_string())?;
            if frame.server_kind(args.dialect) == ServerKind::Ack
                && let Some(at) = in_flight.remove(frame.content())
            {
                latencies.push(at.elapsed());
            } else if frame.ty == wire::RESPONSE_FOR_ERROR {
                return Err(format!("{me}: error frame {}", frame.content()));
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(latencies)
}

/// Receives `n` distinct messages, ACKing each copy; returns how many arrived and the
/// socket, still open.
async fn receiver(mut ws: Ws, n: usize) -> Result<(usize, Ws), String> {
    let mut seen = HashSet::new();
    while seen.len() < n {
        let Some(msg) = ws.next().await else {
            return Err("receiver closed".into());
        };
        if let Message::Text(t) = msg.map_err(|e| e.to_string())? {
            let frame = Frame::decode(t.as_str()).map_err(|e| e.to_string())?;
            if frame.ty == wire::COMMON_DATA {
                if let Some(ack) = Frame::ack_of(&frame) {
                    send(&mut ws, &ack).await?;
                }
                if let Some(fp) = frame.fp {
                    seen.insert(fp);
                }
            }
        }
    }
    Ok((seen.len(), ws))
}

struct DirectRun {
    acked: usize,
    received: usize,
    logins: Duration,
    /// From the first message sent to the last one ACKed and received.
    took: Duration,
    latencies: Vec<Duration>,
    rss_before: Option<u64>,
    rss_connected: Option<u64>,
    /// CPU time the server process (`--server-pid`) used while the messages flowed.
    server_cpu: Option<Duration>,
    /// In-process only: from the first message sent until a history request, queued
    /// behind every store write the load caused, was answered; and the pair history
    /// of the first pair it returned (messages kept, last id).
    settled: Option<(Duration, usize, i64)>,
}

async fn direct_load(url: &str, args: &Args, probe: bool) -> Result<DirectRun, String> {
    let rss_before = rss_kib(args.server_pid);
    let started = Instant::now();
    let mut links = Vec::with_capacity(args.pairs);
    let receiver_url = args.receiver_url.as_deref().unwrap_or(url);
    for i in 0..args.pairs {
        let (a, b) = (format!("load-a-{i}"), format!("load-b-{i}"));
        let rx = login(receiver_url, &b).await?;
        let tx = login(url, &a).await?;
        links.push((a, b, tx, rx));
    }
    let logins = started.elapsed();
    if args.receiver_url.is_some() {
        // The receivers' presence spreads to the senders' node (a key-value watch).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rss_connected = rss_kib(args.server_pid);
    let cpu_before = cpu_time(args.server_pid);
    let sending_started = Instant::now();
    let tasks: Vec<_> = links
        .into_iter()
        .map(|(a, b, tx, rx)| {
            let recv = tokio::spawn(receiver(rx, args.messages));
            let send = tokio::spawn(sender(tx, a, b, args.clone()));
            (send, recv)
        })
        .collect();
    let mut latencies = Vec::new();
    let mut received = 0;
    let mut kept = None;
    for (send, recv) in tasks {
        latencies.extend(send.await.map_err(|e| e.to_string())??);
        let (n, mut ws) = recv.await.map_err(|e| e.to_string())??;
        received += n;
        if kept.is_none() {
            kept = Some(ws);
        } else {
            let _ = ws.close(None).await;
        }
    }
    let took = sending_started.elapsed();
    let server_cpu = cpu_time(args.server_pid)
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let mut settled = None;
    if let Some(mut ws) = kept {
        if probe {
            // The store's writer runs its queue in order: this read is answered once
            // every history write of the load is committed.
            let mut history = RoomRequest::new(1, RoomOp::History);
            history.peer = Some("load-a-0".into());
            history.limit = Some(100);
            let reply = request(&mut ws, "load-b-0", &history).await?;
            if reply.code != 0 {
                return Err(format!("history request failed: {reply:?}"));
            }
            let last = reply.messages.last().map_or(0, |m| m.mid);
            settled = Some((sending_started.elapsed(), reply.messages.len(), last));
        }
        let _ = ws.close(None).await;
    }
    latencies.sort();
    Ok(DirectRun {
        acked: latencies.len(),
        received,
        logins,
        took,
        latencies,
        rss_before,
        rss_connected,
        server_cpu,
        settled,
    })
}

impl DirectRun {
    fn rate(&self) -> f64 {
        rate(self.acked, self.took)
    }

    /// Checks that every message was ACKed and received, and that the pair history
    /// holds what `direct_history` says it should.
    fn check(&self, args: &Args, direct_history: Option<bool>) -> Result<(), String> {
        let expected = args.pairs * args.messages;
        if self.received != expected || self.acked != expected {
            return Err(format!(
                "expected {expected} messages, {} acknowledged and {} received",
                self.acked, self.received
            ));
        }
        if let (Some(on), Some((_, kept, last))) = (direct_history, self.settled) {
            let want = if on {
                // The probe asks for a page of at most 100.
                let kept = args
                    .messages
                    .min(StoreConfig::default().pair_history)
                    .min(100);
                (kept, args.messages as i64)
            } else {
                (0, 0)
            };
            if (kept, last) != want {
                return Err(format!(
                    "pair history: expected {} messages up to id {}, found {kept} up to {last}",
                    want.0, want.1
                ));
            }
        }
        Ok(())
    }

    fn print_settled(&self) {
        if let Some((settled, kept, last)) = self.settled {
            println!(
                "store_settled={:.2}s (history of pair 0: {kept} kept, last id {last})",
                settled.as_secs_f64()
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Room mode
// ---------------------------------------------------------------------------------

/// What one room member saw.
struct MemberRun {
    /// The fingerprints of its posts.
    posted: Vec<String>,
    /// The ACK latency of each post ACKed.
    latencies: Vec<Duration>,
    /// The message id of each post ACKed.
    mids: Vec<i64>,
    /// How many copies of each fingerprint it received.
    copies: HashMap<String, u32>,
    last_ack: Option<Instant>,
    last_copy: Option<Instant>,
}

impl MemberRun {
    /// Counts a frame a member received; returns the ACK it owes for a room copy.
    fn take(
        &mut self,
        me: &str,
        room: &str,
        dialect: Dialect,
        in_flight: &mut HashMap<String, Instant>,
        msg: Result<Message, WsError>,
    ) -> Result<Option<Frame>, String> {
        let Message::Text(t) = msg.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let frame = Frame::decode(t.as_str()).map_err(|e| e.to_string())?;
        if frame.ty == wire::COMMON_DATA && frame.to_id() == room {
            let ack = Frame::ack_of(&frame);
            *self.copies.entry(frame.fp.unwrap_or_default()).or_default() += 1;
            self.last_copy = Some(Instant::now());
            return Ok(ack);
        }
        if frame.server_kind(dialect) == ServerKind::Ack {
            if let Some(at) = in_flight.remove(frame.content()) {
                self.latencies.push(at.elapsed());
                self.mids.push(frame.mid.unwrap_or(-1));
                self.last_ack = Some(Instant::now());
            }
        } else if frame.ty == wire::RESPONSE_FOR_ERROR {
            return Err(format!("{me}: error frame {}", frame.content()));
        }
        Ok(None)
    }
}

/// Logs in as `me` and joins the room.
async fn join(url: &str, me: &str, room: &str) -> Result<Ws, String> {
    let mut ws = login(url, me).await?;
    let reply = request(&mut ws, me, &RoomRequest::new(1, RoomOp::Join).room(room)).await?;
    if reply.code != 0 {
        return Err(format!("{me}: join refused: {reply:?}"));
    }
    Ok(ws)
}

/// Posts `--room-messages` QoS messages to the room with at most `--room-window`
/// waiting for their ACK and ACKs every copy it receives. Ends when its posts are
/// ACKed and it has every other member's posts; or, once everyone's posts are ACKed,
/// when nothing more arrives for [`DRAIN`]; or when nothing arrives for [`STALL`].
async fn member(
    mut ws: Ws,
    me: String,
    expected_copies: usize,
    args: Args,
    posters_done: Arc<watch::Sender<usize>>,
) -> Result<MemberRun, String> {
    let to = room_address(&args.room);
    let body = "x".repeat(args.size);
    let n = args.room_messages();
    let mut run = MemberRun {
        posted: Vec::with_capacity(n),
        latencies: Vec::with_capacity(n),
        mids: Vec::with_capacity(n),
        copies: HashMap::with_capacity(expected_copies),
        last_ack: None,
        last_copy: None,
    };
    let mut in_flight: HashMap<String, Instant> = HashMap::new();
    let mut done_rx = posters_done.subscribe();
    let mut announced = false;
    let mut everyone_done = false;
    loop {
        while run.posted.len() < n && in_flight.len() < args.room_window() {
            let frame = Frame::data(&me, &to, body.clone(), true, None, 0);
            let fp = frame.fp.clone().unwrap_or_default();
            in_flight.insert(fp.clone(), Instant::now());
            run.posted.push(fp);
            ws.feed(Message::text(frame.to_json()))
                .await
                .map_err(|e| e.to_string())?;
        }
        ws.flush().await.map_err(|e| e.to_string())?;
        if !announced && run.latencies.len() == n {
            announced = true;
            posters_done.send_modify(|done| *done += 1);
        }
        if announced && run.copies.len() >= expected_copies {
            break;
        }
        let idle = if everyone_done { DRAIN } else { STALL };
        let msg = tokio::select! {
            msg = ws.next() => msg,
            _ = done_rx.wait_for(|d| *d == args.members), if !everyone_done => {
                everyone_done = true;
                continue;
            }
            _ = tokio::time::sleep(idle) => break,
        };
        let Some(msg) = msg else {
            return Err(format!("{me}: closed"));
        };
        // This frame and whatever else has arrived already, with one flush of the ACKs.
        let mut next = Some(msg);
        let mut acks = 0;
        while let Some(msg) = next {
            if let Some(ack) = run.take(&me, &to, args.dialect, &mut in_flight, msg)? {
                ws.feed(Message::text(ack.to_json()))
                    .await
                    .map_err(|e| e.to_string())?;
                acks += 1;
            }
            next = ws.next().now_or_never().flatten();
        }
        if acks > 0 {
            ws.flush().await.map_err(|e| e.to_string())?;
        }
    }
    let _ = ws.close(None).await;
    Ok(run)
}

struct RoomRun {
    posts: usize,
    acked: usize,
    copies: usize,
    posts_took: Duration,
    copies_took: Duration,
    latencies: Vec<Duration>,
    /// Over every (member, post of another member): how often that many copies
    /// arrived (0 is missing, 2 or more duplicated).
    copy_counts: BTreeMap<u32, usize>,
    /// Copies of a member's own posts, or of posts nobody made.
    unexpected: usize,
    distinct_mids: usize,
    min_copies: usize,
    max_copies: usize,
}

async fn room_load(url: &str, args: &Args) -> Result<RoomRun, String> {
    let members = args.members;
    let mut sockets = Vec::with_capacity(members);
    for i in 0..members {
        let me = format!("member-{i}");
        let ws = join(url, &me, &args.room).await?;
        sockets.push((me, ws));
    }
    let expected_copies = (members - 1) * args.room_messages();
    let posters_done = Arc::new(watch::channel(0).0);
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|(me, ws)| {
            tokio::spawn(member(
                ws,
                me,
                expected_copies,
                args.clone(),
                posters_done.clone(),
            ))
        })
        .collect();
    let mut runs = Vec::with_capacity(members);
    for task in tasks {
        runs.push(task.await.map_err(|e| e.to_string())??);
    }
    let since_start = |at: Option<Instant>| at.map_or(Duration::ZERO, |at| at - started);
    let owner: HashMap<&str, usize> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.posted.iter().map(move |fp| (fp.as_str(), i)))
        .collect();
    let mut copy_counts = BTreeMap::new();
    let mut unexpected = 0;
    for (i, run) in runs.iter().enumerate() {
        for (j, other) in runs.iter().enumerate() {
            if i != j {
                for fp in &other.posted {
                    let n = run.copies.get(fp).copied().unwrap_or(0);
                    *copy_counts.entry(n).or_default() += 1;
                }
            }
        }
        unexpected += run
            .copies
            .iter()
            .filter(|(fp, _)| owner.get(fp.as_str()).is_none_or(|&o| o == i))
            .map(|(_, &n)| n as usize)
            .sum::<usize>();
    }
    let mut latencies: Vec<Duration> = runs.iter().flat_map(|r| r.latencies.clone()).collect();
    latencies.sort();
    let mids: HashSet<i64> = runs.iter().flat_map(|r| r.mids.iter().copied()).collect();
    let received = |r: &MemberRun| r.copies.values().map(|&n| n as usize).sum::<usize>();
    Ok(RoomRun {
        posts: runs.iter().map(|r| r.posted.len()).sum(),
        acked: latencies.len(),
        copies: runs.iter().map(received).sum(),
        posts_took: since_start(runs.iter().filter_map(|r| r.last_ack).max()),
        copies_took: since_start(runs.iter().filter_map(|r| r.last_copy).max()),
        latencies,
        copy_counts,
        unexpected,
        distinct_mids: mids.len(),
        min_copies: runs.iter().map(received).min().unwrap_or(0),
        max_copies: runs.iter().map(received).max().unwrap_or(0),
    })
}

impl RoomRun {
    fn post_rate(&self) -> f64 {
        rate(self.acked, self.posts_took)
    }

    fn copy_rate(&self) -> f64 {
        rate(self.copies, self.copies_took)
    }

    fn print(&self, label: &str) {
        println!(
            "{label}posts={} acked={} took={:.2}s rate={:.0} posts/s",
            self.posts,
            self.acked,
            self.posts_took.as_secs_f64(),
            self.post_rate()
        );
        println!(
            "{label}copies={} took={:.2}s rate={:.0} copies/s (per member {}..{})",
            self.copies,
            self.copies_took.as_secs_f64(),
            self.copy_rate(),
            self.min_copies,
            self.max_copies
        );
        println!(
            "{label}room_ack_latency p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms; \
             distinct mids={}",
            ms(percentile(&self.latencies, 0.5)),
            ms(percentile(&self.latencies, 0.9)),
            ms(percentile(&self.latencies, 0.99)),
            ms(percentile(&self.latencies, 1.0)),
            self.distinct_mids
        );
        println!(
            "{label}copies per (member, other member's post): {:?}; unexpected={}",
            self.copy_counts, self.unexpected
        );
    }

    fn check(&self, args: &Args) -> Result<(), String> {
        let posts = args.members * args.room_messages();
        let pairs = posts * (args.members - 1);
        let once = self.copy_counts.get(&1).copied().unwrap_or(0);
        let mut problems = Vec::new();
        if self.acked != posts {
            problems.push(format!("{} of {posts} posts ACKed", self.acked));
        }
        if self.distinct_mids != self.acked {
            problems.push(format!(
                "{} distinct ids for {} ACKs",
                self.distinct_mids, self.acked
            ));
        }
        if once != pairs || self.unexpected > 0 {
            problems.push(format!(
                "{once} of {pairs} copies arrived exactly once; counts {:?}; {} unexpected",
                self.copy_counts, self.unexpected
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

// ---------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------

/// `--clients` connections that connect and log in at once; reports the latency of
/// each login (connect, upgrade and reply) and, with `--server-pid`, the server's
/// memory per idle logged-in connection once all are in.
async fn logins(url: &str, args: &Args) -> Result<(), String> {
    let rss_before = rss_kib(args.server_pid);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let at = Instant::now();
                login(&url, &format!("storm-{i}"))
                    .await
                    .map(|ws| (ws, at.elapsed()))
            })
        })
        .collect();
    let mut sockets = Vec::with_capacity(args.clients);
    let mut latencies = Vec::with_capacity(args.clients);
    let mut failed = Vec::new();
    for task in tasks {
        match task.await.map_err(|e| e.to_string())? {
            Ok((ws, took)) => {
                sockets.push(ws);
                latencies.push(took);
            }
            Err(e) => failed.push(e),
        }
    }
    let took = started.elapsed();
    latencies.sort();
    println!(
        "url={url} clients={} logged_in={} failed={} took={:.2}s",
        args.clients,
        latencies.len(),
        failed.len(),
        took.as_secs_f64()
    );
    println!(
        "login_latency p50={:.1}ms p90={:.1}ms p99={:.1}ms max={:.1}ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0))
    );
    // Idle for a moment, so that what each connection keeps is all that is left.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let (Some(before), Some(after)) = (rss_before, rss_kib(args.server_pid)) {
        println!(
            "server rss_kib before={before} idle={after} per_idle_connection={:.2} KiB",
            after.saturating_sub(before) as f64 / latencies.len().max(1) as f64
        );
    }
    if let Some(e) = failed.first() {
        return Err(format!("{} logins failed, the first: {e}", failed.len()));
    }
    drop(sockets);
    Ok(())
}

fn print_direct(args: &Args, r: &DirectRun) {
    println!(
        "connections={} logins_took={:.2}s",
        args.pairs * 2,
        r.logins.as_secs_f64()
    );
    println!(
        "messages={} received={} took={:.2}s rate={:.0} msg/s",
        r.acked,
        r.received,
        r.took.as_secs_f64(),
        r.rate()
    );
    println!(
        "relay_ack_latency p50={:?} p90={:?} p99={:?} max={:?}",
        percentile(&r.latencies, 0.5),
        percentile(&r.latencies, 0.9),
        percentile(&r.latencies, 0.99),
        percentile(&r.latencies, 1.0)
    );
    r.print_settled();
    if let Some(cpu) = r.server_cpu {
        println!(
            "server_cpu={:.2}s per_message={:.2}us cores={:.2}",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / r.acked.max(1) as f64,
            cpu.as_secs_f64() / r.took.as_secs_f64().max(1e-9)
        );
    }
    if let (Some(before), Some(connected)) = (r.rss_before, r.rss_connected) {
        println!(
            "rss_kib ({}) before={before} connected={connected} per_connection={:.1}",
            if args.server_pid.is_some() {
                "server"
            } else {
                "this process: server and clients"
            },
            (connected.saturating_sub(before)) as f64 / (args.pairs * 2) as f64
        );
    }
}

/// One load against `--url` or a server in this process.
async fn run_one(args: &Args) -> Result<(), String> {
    let direct_history = args.direct_history == OnOff::On;
    let (url, server) = match &args.url {
        Some(url) => (url.clone(), None),
        None => {
            let h = start_server(args, args.store.clone(), direct_history).await?;
            (h.url(), Some(h))
        }
    };
    let result = match args.mode {
        Mode::Direct => {
            println!(
                "url={url} pairs={} messages={} window={} size={} store={} direct_history={}",
                args.pairs, args.messages, args.window, args.size, args.store, direct_history
            );
            let r = direct_load(&url, args, server.is_some()).await?;
            print_direct(args, &r);
            r.check(args, server.as_ref().map(|_| direct_history))
        }
        Mode::Logins => logins(&url, args).await,
        Mode::Room => {
            println!(
                "url={url} room=#{} members={} messages={} window={} size={} store={}",
                args.room,
                args.members,
                args.room_messages(),
                args.room_window(),
                args.size,
                args.store
            );
            let r = room_load(&url, args).await?;
            r.print("");
            r.check(args)
        }
    };
    if let Some(h) = server {
        println!("server {:?}", h.metrics());
        h.shutdown().await;
    }
    result
}

/// A directory of store files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!("im_load-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The direct load with direct history off and on, then the room load on a memory and
/// on a file store: each against a fresh server in this process.
async fn compare_store(args: &Args) -> Result<(), String> {
    let dir = TempDir::new()?;
    let mut problems = Vec::new();
    println!(
        "compare-store: direct {} pairs x {} messages, window {}; room {} members x {} \
         messages, window {}; size={} rounds={} dir={}",
        args.pairs,
        args.messages,
        args.window,
        args.members,
        args.room_messages(),
        args.room_window(),
        args.size,
        args.rounds,
        dir.0.display()
    );
    let mut direct_ratios = Vec::new();
    let mut settled_ratios = Vec::new();
    let mut room_ratios = Vec::new();
    for round in 0..args.rounds {
        // The second side of each comparison goes first every other round.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut direct = [None, None];
        for on in order {
            let name = format!("direct-{round}-{}.db", if on { "on" } else { "off" });
            let h = start_server(args, StorePath::File(dir.0.join(name)), on).await?;
            let r = direct_load(&h.url(), args, true).await?;
            let label = if on { "history on " } else { "history off" };
            let (settled, kept) = r.settled.map_or((Duration::ZERO, 0), |s| (s.0, s.1));
            println!(
                "round {round} direct {label}: {:.0} msg/s in {:.2}s; relay ACK p50={:.2}ms \
                 p99={:.2}ms; store settled at {:.2}s ({:.0} msg/s), pair 0 kept {kept}",
                r.rate(),
                r.took.as_secs_f64(),
                ms(percentile(&r.latencies, 0.5)),
                ms(percentile(&r.latencies, 0.99)),
                settled.as_secs_f64(),
                rate(r.acked, settled)
            );
            print_server_trouble(&h);
            h.shutdown().await;
            if let Err(e) = r.check(args, Some(on)) {
                problems.push(format!("direct, history {on}: {e}"));
            }
            direct[usize::from(on)] = Some(r);
        }
        if let [Some(off), Some(on)] = &direct {
            let ratio = on.rate() / off.rate();
            let settled = |r: &DirectRun| rate(r.acked, r.settled.map_or(r.took, |s| s.0));
            let settled_ratio = settled(on) / settled(off);
            println!(
                "round {round} direct ratio (history on / off): relay {ratio:.3}, \
                 until stored {settled_ratio:.3}"
            );
            direct_ratios.push(ratio);
            settled_ratios.push(settled_ratio);
        }
        let mut room = [None, None];
        for file in order {
            let store = if file {
                StorePath::File(dir.0.join(format!("room-{round}.db")))
            } else {
                StorePath::Memory
            };
            let h = start_server(args, store, true).await?;
            let r = room_load(&h.url(), args).await?;
            let label = if file { "file  " } else { "memory" };
            println!(
                "round {round} room {label}: {:.0} posts/s, {:.0} copies/s; ACK p50={:.2}ms \
                 p99={:.2}ms; copies per (member, post) {:?}",
                r.post_rate(),
                r.copy_rate(),
                ms(percentile(&r.latencies, 0.5)),
                ms(percentile(&r.latencies, 0.99)),
                r.copy_counts
            );
            print_server_trouble(&h);
            h.shutdown().await;
            if let Err(e) = r.check(args) {
                problems.push(format!("room, {}: {e}", label.trim()));
            }
            room[usize::from(file)] = Some(r);
        }
        if let [Some(memory), Some(file)] = &room {
            let ratio = file.copy_rate() / memory.copy_rate();
            println!("round {round} room ratio (file / memory store): {ratio:.3}");
            room_ratios.push(ratio);
        }
    }
    let target = 0.8;
    let direct = median(direct_ratios);
    println!(
        "direct store cost: throughput ratio (history on / off) {direct:.3}, \
         until stored {:.3}: target >= {target}: {}",
        median(settled_ratios),
        if direct >= target { "met" } else { "NOT met" }
    );
    println!(
        "room fan-out ratio (file / memory store): {:.3}",
        median(room_ratios)
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.mode == Mode::Room && args.members < 2 {
        return Err("--members must be at least 2".into());
    }
    if args.compare_store {
        if args.members < 2 || args.rounds == 0 {
            return Err("--compare-store needs --members >= 2 and --rounds >= 1".into());
        }
        compare_store(&args).await
    } else {
        run_one(&args).await
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let limit = Duration::from_secs(args.timeout);
    match runtime.block_on(async { tokio::time::timeout(limit, run(args)).await }) {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("load failed: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("load timed out after {limit:?}");
            std::process::ExitCode::FAILURE
        }
    }
}
