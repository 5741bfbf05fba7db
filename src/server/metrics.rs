//! Counters the server keeps, their snapshot, and the Prometheus text endpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::protocol::{ClientKind, ServerKind};

/// Why the server refused a connection or a frame, or closed a socket on bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The upgrade request named another path; it gets no answer (as upstream).
    WrongPath,
    /// An HTTP request on the path without a WebSocket upgrade (answered 400).
    NotWebSocket,
    /// A malformed, oversized or unsupported upgrade request, or a failed TLS handshake.
    BadHandshake,
    /// The TLS and HTTP upgrade did not finish within the handshake timeout.
    HandshakeTimeout,
    /// The connection cap was reached.
    ConnectionLimit,
    /// A text frame over the size limit (closed with 1009).
    FrameTooLarge,
    /// A binary frame (the protocol is text only).
    BinaryFrame,
    /// Text that is not a frame: not JSON, not an object, or a field of the wrong type.
    BadFrame,
    /// A WebSocket protocol violation (bad masking, invalid UTF-8, bad opcode).
    ProtocolViolation,
    /// A login without a readable `PLoginInfo` or user id, or as the server's id `"0"`.
    BadLogin,
    /// A login the hook refused.
    LoginRefused,
    /// Keepalive, data or ACK before login (error 301).
    NotLoggedIn,
    /// Over the per-connection rate limit (error frame, frame dropped).
    RateLimited,
    /// A frame type the server does not handle (ignored).
    UnknownType,
    /// Data with no `to` (dropped).
    NoReceiver,
    /// The receiver already has the maximum of pending S2C QoS frames.
    PendingS2cFull,
    /// The receiver's outbound queue is full.
    OutboundQueueFull,
    /// No text frame within the read timeout.
    ReadTimeout,
    /// The peer did not take our frames within the read timeout.
    WriteTimeout,
    /// A message the receiver's block list or the moderation hook refused (403).
    Refused,
    /// A room message from a user who is not a member (404).
    NotMember,
    /// A malformed room request (400), or one refused with another code.
    BadRoomRequest,
    /// The store could not be written (500): nothing was stored or delivered.
    StoreFailed,
    /// The receiver's offline box is full (507).
    OfflineBoxFull,
    /// A socket did not log in within the login timeout (closed with 1008).
    LoginTimeout,
    /// Too many handshakes in progress (refused like the connection limit).
    HandshakeLimit,
    /// A cluster call failed: a login's presence not claimed, or a message another
    /// node did not answer for (its sender gets no ACK and resends).
    ClusterFailed,
}

impl RejectReason {
    /// Every reason, in label order.
    pub const ALL: [RejectReason; 27] = [
        Self::WrongPath,
        Self::NotWebSocket,
        Self::BadHandshake,
        Self::HandshakeTimeout,
        Self::ConnectionLimit,
        Self::FrameTooLarge,
        Self::BinaryFrame,
        Self::BadFrame,
        Self::ProtocolViolation,
        Self::BadLogin,
        Self::LoginRefused,
        Self::NotLoggedIn,
        Self::RateLimited,
        Self::UnknownType,
        Self::NoReceiver,
        Self::PendingS2cFull,
        Self::OutboundQueueFull,
        Self::ReadTimeout,
        Self::WriteTimeout,
        Self::Refused,
        Self::NotMember,
        Self::BadRoomRequest,
        Self::StoreFailed,
        Self::OfflineBoxFull,
        Self::LoginTimeout,
        Self::HandshakeLimit,
        Self::ClusterFailed,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::WrongPath => "wrong_path",
            Self::NotWebSocket => "not_websocket",
            Self::BadHandshake => "bad_handshake",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::ConnectionLimit => "connection_limit",
            Self::FrameTooLarge => "frame_too_large",
            Self::BinaryFrame => "binary_frame",
            Self::BadFrame => "bad_frame",
            Self::ProtocolViolation => "protocol_violation",
            Self::BadLogin => "bad_login",
            Self::LoginRefused => "login_refused",
            Self::NotLoggedIn => "not_logged_in",
            Self::RateLimited => "rate_limited",
            Self::UnknownType => "unknown_type",
            Self::NoReceiver => "no_receiver",
            Self::PendingS2cFull => "pending_s2c_full",
            Self::OutboundQueueFull => "outbound_queue_full",
            Self::ReadTimeout => "read_timeout",
            Self::WriteTimeout => "write_timeout",
            Self::Refused => "refused",
            Self::NotMember => "not_member",
            Self::BadRoomRequest => "bad_room_request",
            Self::StoreFailed => "store_failed",
            Self::OfflineBoxFull => "offline_box_full",
            Self::LoginTimeout => "login_timeout",
            Self::HandshakeLimit => "handshake_limit",
            Self::ClusterFailed => "cluster_failed",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

const IN_LABELS: [&str; 8] = [
    "login",
    "keepalive",
    "data",
    "logout",
    "ack",
    "echo",
    "other",
    "room",
];
const OUT_LABELS: [&str; 9] = [
    "login_response",
    "keepalive_response",
    "error",
    "echo_response",
    "kickout",
    "data",
    "ack",
    "other",
    "room",
];

fn in_index(kind: ClientKind) -> usize {
    match kind {
        ClientKind::Login => 0,
        ClientKind::KeepAlive => 1,
        ClientKind::Data => 2,
        ClientKind::Logout => 3,
        ClientKind::Ack => 4,
        ClientKind::Echo => 5,
        ClientKind::Other(_) => 6,
        ClientKind::Room => 7,
    }
}

pub(crate) fn out_index(kind: ServerKind) -> usize {
    match kind {
        ServerKind::LoginResponse => 0,
        ServerKind::KeepAliveResponse => 1,
        ServerKind::Error => 2,
        ServerKind::EchoResponse => 3,
        ServerKind::Kickout => 4,
        ServerKind::Data => 5,
        ServerKind::Ack => 6,
        ServerKind::Other(_) => 7,
        ServerKind::Room => 8,
    }
}

/// The live counters, shared by every task of one server.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub logins_ok: AtomicU64,
    pub kickouts: AtomicU64,
    pub c2s_duplicates: AtomicU64,
    pub receiver_busy: AtomicU64,
    pub qos_resends: AtomicU64,
    pub qos_lost: AtomicU64,
    pub s2c_kept: AtomicU64,
    pub room_gaps: AtomicU64,
    frames_in: [AtomicU64; 8],
    frames_out: [AtomicU64; 9],
    rejected: [AtomicU64; RejectReason::ALL.len()],
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn frame_in(&self, kind: ClientKind) {
        Self::inc(&self.frames_in[in_index(kind)]);
    }

    pub fn frame_out(&self, index: usize) {
        Self::inc(&self.frames_out[index.min(OUT_LABELS.len() - 1)]);
    }

    pub fn reject(&self, reason: RejectReason) {
        Self::inc(&self.rejected[reason.index()]);
    }

    pub fn snapshot(&self, users_online: usize) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            connections_open: load(&self.connections_open),
            connections_total: load(&self.connections_total),
            users_online: users_online as u64,
            logins_ok: load(&self.logins_ok),
            kickouts: load(&self.kickouts),
            c2s_duplicates: load(&self.c2s_duplicates),
            receiver_busy: load(&self.receiver_busy),
            qos_resends: load(&self.qos_resends),
            qos_lost: load(&self.qos_lost),
            s2c_kept: load(&self.s2c_kept),
            room_gaps: load(&self.room_gaps),
            frames_in: IN_LABELS
                .iter()
                .zip(&self.frames_in)
                .map(|(l, a)| (*l, load(a)))
                .collect(),
            frames_out: OUT_LABELS
                .iter()
                .zip(&self.frames_out)
                .map(|(l, a)| (*l, load(a)))
                .collect(),
            rejected: RejectReason::ALL
                .iter()
                .zip(&self.rejected)
                .map(|(r, a)| (r.label(), load(a)))
                .collect(),
            cluster: None,
        }
    }
}

/// A copy of the server's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// Sockets open now (upgraded or still in the handshake).
    pub connections_open: u64,
    /// Sockets accepted since start.
    pub connections_total: u64,
    /// Users with a session messages are routed to.
    pub users_online: u64,
    /// Successful logins since start.
    pub logins_ok: u64,
    /// Kickout frames sent (duplicate login and admin).
    pub kickouts: u64,
    /// Client-to-server QoS copies recognised as duplicates.
    pub c2s_duplicates: u64,
    /// QoS messages answered "receiver busy" (503) because the receiver's queue or
    /// pending table was full; the sender resends them.
    pub receiver_busy: u64,
    /// Server-to-client QoS resends.
    pub qos_resends: u64,
    /// Server-to-client QoS frames that ran out of resends (kept or lost).
    pub qos_lost: u64,
    /// Of those, direct messages kept in the receiver's offline box for its next
    /// login instead of being lost (social extension only).
    pub s2c_kept: u64,
    /// Times a member missed live copies of a room's messages (its queue was full)
    /// and was sent a `missed` event to fetch them from the history.
    pub room_gaps: u64,
    /// Inbound text frames by meaning (`login`, `keepalive`, `data`, `logout`, `ack`,
    /// `echo`, `other`).
    pub frames_in: BTreeMap<&'static str, u64>,
    /// Outbound frames by meaning (`login_response`, `keepalive_response`, `error`,
    /// `echo_response`, `kickout`, `data`, `ack`, `other`).
    pub frames_out: BTreeMap<&'static str, u64>,
    /// Refusals and bad input by [`RejectReason::label`].
    pub rejected: BTreeMap<&'static str, u64>,
    /// This node's traffic with the other nodes, when it is one of several (feature
    /// `cluster`).
    pub cluster: Option<ClusterSnapshot>,
}

/// One node's traffic with the others (feature `cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterSnapshot {
    /// This node's id.
    pub node: String,
    /// Messages handed to another node for a user online there.
    pub forwarded: u64,
    /// Of those, how many got no answer in time (their senders got no ACK).
    pub forward_failures: u64,
    /// The answered forwards' round trips through NATS and the other node, summed,
    /// in microseconds: divided by `forwarded - forward_failures`, the mean.
    pub forward_rtt_us: u64,
    /// Messages other nodes handed to this one.
    pub received: u64,
    /// Kickouts sent to other nodes (a login here won over a session there).
    pub kicks_sent: u64,
    /// Kickouts other nodes sent here.
    pub kicks_received: u64,
    /// Room messages and member events published for the other nodes.
    pub room_casts_sent: u64,
    /// Room messages and member events other nodes published.
    pub room_casts_received: u64,
}

impl MetricsSnapshot {
    /// Inbound frames of one meaning (0 for an unknown label).
    pub fn frames_in(&self, label: &str) -> u64 {
        self.frames_in.get(label).copied().unwrap_or(0)
    }

    /// Outbound frames of one meaning (0 for an unknown label).
    pub fn frames_out(&self, label: &str) -> u64 {
        self.frames_out.get(label).copied().unwrap_or(0)
    }

    /// How often one reason occurred.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected.get(reason.label()).copied().unwrap_or(0)
    }

    /// The snapshot in the Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut single = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        single(
            "im_connections_open",
            "gauge",
            "Sockets open now.",
            self.connections_open,
        );
        single(
            "im_connections_total",
            "counter",
            "Sockets accepted since start.",
            self.connections_total,
        );
        single(
            "im_users_online",
            "gauge",
            "Users with a routed session.",
            self.users_online,
        );
        single(
            "im_logins_total",
            "counter",
            "Successful logins.",
            self.logins_ok,
        );
        single(
            "im_kickouts_total",
            "counter",
            "Kickout frames sent.",
            self.kickouts,
        );
        single(
            "im_c2s_duplicates_total",
            "counter",
            "Duplicate client-to-server QoS copies.",
            self.c2s_duplicates,
        );
        single(
            "im_receiver_busy_total",
            "counter",
            "QoS messages answered receiver busy (503); the sender resends them.",
            self.receiver_busy,
        );
        single(
            "im_qos_resends_total",
            "counter",
            "Server-to-client QoS resends.",
            self.qos_resends,
        );
        single(
            "im_qos_lost_total",
            "counter",
            "Server-to-client QoS frames that ran out of resends.",
            self.qos_lost,
        );
        single(
            "im_s2c_kept_total",
            "counter",
            "Unacknowledged direct messages kept in the receiver's offline box.",
            self.s2c_kept,
        );
        single(
            "im_room_gaps_total",
            "counter",
            "Members that missed live room messages and were told to fetch them.",
            self.room_gaps,
        );
        if let Some(c) = &self.cluster {
            single(
                "im_cluster_forwarded_total",
                "counter",
                "Messages handed to another node for a user online there.",
                c.forwarded,
            );
            single(
                "im_cluster_forward_failures_total",
                "counter",
                "Forwarded messages another node did not answer for in time.",
                c.forward_failures,
            );
            single(
                "im_cluster_forward_rtt_microseconds_total",
                "counter",
                "Round trips of the answered forwards, summed.",
                c.forward_rtt_us,
            );
            single(
                "im_cluster_received_total",
                "counter",
                "Messages other nodes handed to this one.",
                c.received,
            );
            single(
                "im_cluster_kicks_sent_total",
                "counter",
                "Kickouts sent to other nodes.",
                c.kicks_sent,
            );
            single(
                "im_cluster_kicks_received_total",
                "counter",
                "Kickouts other nodes sent here.",
                c.kicks_received,
            );
            single(
                "im_cluster_room_casts_sent_total",
                "counter",
                "Room messages and member events published for the other nodes.",
                c.room_casts_sent,
            );
            single(
                "im_cluster_room_casts_received_total",
                "counter",
                "Room messages and member events received from the other nodes.",
                c.room_casts_received,
            );
        }
        let mut family = |name: &str, help: &str, label: &str, map: &BTreeMap<&str, u64>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (k, v) in map {
                let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
            }
        };
        family(
            "im_frames_in_total",
            "Inbound text frames by kind.",
            "kind",
            &self.frames_in,
        );
        family(
            "im_frames_out_total",
            "Outbound frames by kind.",
            "kind",
            &self.frames_out,
        );
        family(
            "im_rejected_total",
            "Refused connections and bad input by reason.",
            "reason",
            &self.rejected,
        );
        out
    }
}

/// Where the metrics endpoint takes its connections from: the listener, or a test's
/// script.
trait Accept {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn accept(&mut self) -> std::io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true. Any other request
/// gets 404; a request that does not arrive within 5 s is dropped.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    snapshot: impl Fn() -> MetricsSnapshot + Send + Sync + 'static,
    shutdown: watch::Receiver<bool>,
) {
    serve_metrics_from(listener, snapshot, shutdown).await;
}

async fn serve_metrics_from<A: Accept>(
    mut listener: A,
    snapshot: impl Fn() -> MetricsSnapshot + Send + Sync + 'static,
    mut shutdown: watch::Receiver<bool>,
) {
    let snapshot = std::sync::Arc::new(snapshot);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = super::state::until_shutdown(&mut shutdown) => return,
        };
        let Ok(mut stream) = accepted else {
            // Out of file descriptors and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                let mut chunk = [0u8; 1024];
                loop {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok::<bool, std::io::Error>(false);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        return Ok(true);
                    }
                    if buf.len() > 8192 {
                        return Ok(false);
                    }
                }
            })
            .await;
            if !matches!(read, Ok(Ok(true))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf);
            let mut words = head.split_whitespace();
            let (method, target) = (words.next(), words.next());
            let response = if method == Some("GET") && target == Some("/metrics") {
                let body = snapshot().to_prometheus();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_label() {
        let m = Metrics::default();
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            for _ in 0..=i {
                m.reject(*r);
            }
        }
        let s = m.snapshot(0);
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(s.rejected(*r), i as u64 + 1, "{}", r.label());
        }
    }

    #[test]
    fn prometheus_text_has_types_and_labels() {
        let m = Metrics::default();
        m.frame_in(ClientKind::Echo);
        m.frame_out(out_index(ServerKind::Ack));
        Metrics::inc(&m.qos_resends);
        let text = m.snapshot(3).to_prometheus();
        assert!(text.contains("# TYPE im_users_online gauge\nim_users_online 3\n"));
        assert!(text.contains("im_frames_in_total{kind=\"echo\"} 1\n"));
        assert!(text.contains("im_frames_out_total{kind=\"ack\"} 1\n"));
        assert!(text.contains("im_qos_resends_total 1\n"));
        assert!(text.contains("im_rejected_total{reason=\"rate_limited\"} 0\n"));
    }

    /// Accepts as scripted: `errors` failures (as when out of descriptors), then one
    /// in-memory connection, then nothing more. Records when it was asked.
    struct Script {
        errors: usize,
        good: Option<tokio::io::DuplexStream>,
        calls: std::sync::Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
    }

    impl Accept for Script {
        type Stream = tokio::io::DuplexStream;
        async fn accept(&mut self) -> std::io::Result<Self::Stream> {
            self.calls.lock().unwrap().push(tokio::time::Instant::now());
            if self.errors > 0 {
                self.errors -= 1;
                return Err(std::io::Error::other("too many open files"));
            }
            match self.good.take() {
                Some(stream) => Ok(stream),
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_50_ms_and_a_good_connection_is_served_after() {
        let (server_end, mut client) = tokio::io::duplex(4096);
        let calls = std::sync::Arc::default();
        let script = Script {
            errors: 40,
            good: Some(server_end),
            calls: std::sync::Arc::clone(&calls),
        };
        let (stop, shutdown) = watch::channel(false);
        let start = tokio::time::Instant::now();
        let snapshot = || Metrics::default().snapshot(7);
        let task = tokio::spawn(serve_metrics_from(script, snapshot, shutdown));

        // The request is waiting before the first accept; it is answered after the
        // 40 failures, each followed by a 50 ms pause.
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("\nim_users_online 7\n"), "{reply}");

        let at: Vec<Duration> = calls.lock().unwrap().iter().map(|t| *t - start).collect();
        // Asked at once, then 50 ms after each failure; after the good one, at once.
        let mut want: Vec<Duration> = (0..=40).map(|i| Duration::from_millis(50 * i)).collect();
        want.push(Duration::from_secs(2));
        assert_eq!(at, want);
        let first_second = at.iter().filter(|t| **t < Duration::from_secs(1)).count();
        assert_eq!(first_second, 20, "20 accepts per second while they fail");

        stop.send_replace(true);
        task.await.unwrap();
    }
}
