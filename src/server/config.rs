//! The server's settings: listen address, dialect, timings, limits, TLS and metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::rooms::RoomsConfig;
use super::store::{StoreConfig, StorePath};
use crate::client::SenseMode;
use crate::protocol::{Dialect, MAX_FRAME_BYTES};

/// Server-to-client QoS: when an unacknowledged frame is sent again, and when it is
/// declared lost.
///
/// Each pending frame has its own deadline. With the defaults a frame that is never
/// acknowledged is written twice (at 0 s and 5 s) and declared lost at 10 s, inside
/// the 9.8–10.8 s upstream was measured at (PROTOCOL.md §6.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S2cQosConfig {
    /// Time from a write to the next resend.
    pub resend_after: Duration,
    /// How many times a frame is sent again before it is given up (upstream: 1).
    pub max_resends: u32,
    /// Time from the last resend to the loss report.
    pub lost_after: Duration,
}

impl Default for S2cQosConfig {
    fn default() -> Self {
        Self {
            resend_after: Duration::from_secs(5),
            max_resends: 1,
            lost_after: Duration::from_secs(5),
        }
    }
}

/// A per-connection token bucket on inbound text frames.
///
/// A frame over the limit is not processed; the sender gets an error frame (type 52)
/// with [`ERROR_RATE_LIMITED`](super::ERROR_RATE_LIMITED) and the offending text, and
/// the socket stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Frames per second refilled into the bucket.
    pub per_second: u32,
    /// The bucket's size: how many frames may arrive at once.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 50,
            burst: 100,
        }
    }
}

/// Where PEM data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemSource {
    /// A file to read at bind time.
    Path(PathBuf),
    /// PEM text already in memory.
    Bytes(Vec<u8>),
}

impl PemSource {
    pub(crate) fn load(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Self::Path(p) => std::fs::read(p).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read {}: {e}", p.display()))
            }),
            Self::Bytes(b) => Ok(b.clone()),
        }
    }
}

/// A certificate chain and private key for `wss://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, leaf first, in PEM.
    pub cert_chain: PemSource,
    /// The private key (PKCS#8, PKCS#1 or SEC1) in PEM.
    pub private_key: PemSource,
}

impl TlsConfig {
    /// TLS from two PEM files.
    pub fn from_pem_files(cert_chain: impl Into<PathBuf>, private_key: impl Into<PathBuf>) -> Self {
        Self {
            cert_chain: PemSource::Path(cert_chain.into()),
            private_key: PemSource::Path(private_key.into()),
        }
    }

    /// TLS from PEM text in memory.
    pub fn from_pem(cert_chain: impl Into<Vec<u8>>, private_key: impl Into<Vec<u8>>) -> Self {
        Self {
            cert_chain: PemSource::Bytes(cert_chain.into()),
            private_key: PemSource::Bytes(private_key.into()),
        }
    }
}

/// Everything the server can be told. Every timing is here so tests can scale it down.
///
/// ```
/// use std::time::Duration;
/// use bevy_im::server::ServerConfig;
/// let mut config = ServerConfig::default();
/// config.listen = "127.0.0.1:0".parse().unwrap();
/// config.read_timeout = Duration::from_millis(300);
/// assert_eq!(config.path, "/websocket");
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The TCP address to listen on (default 127.0.0.1:3000; port 0 picks one).
    pub listen: SocketAddr,
    /// The only request path that gets a WebSocket upgrade (default `/websocket`,
    /// matched exactly, query string included).
    pub path: String,
    /// Which numbering the server writes ACKs and kickouts in (DESIGN.md §4).
    pub dialect: Dialect,
    /// A socket that sends no text frame for this long is closed (default 11 s, the
    /// 5 s sense mode). WebSocket pings do not count.
    pub read_timeout: Duration,
    /// The TLS and HTTP upgrade must finish within this (default 10 s).
    pub handshake_timeout: Duration,
    /// The largest inbound text frame; larger ones close the socket with 1009
    /// (default 65536).
    pub max_frame_bytes: usize,
    /// Server-to-client QoS timings.
    pub s2c_qos: S2cQosConfig,
    /// How long a client-to-server QoS fingerprint is remembered (default 10 min).
    pub c2s_dedup_window: Duration,
    /// The most (user, fingerprint) pairs the C2S dedup remembers; past it the oldest
    /// are forgotten first.
    pub c2s_dedup_max_entries: usize,
    /// The per-connection inbound rate limit; `None` turns it off.
    pub rate_limit: Option<RateLimit>,
    /// A token bucket per logged-in user on data frames and room requests, shared by
    /// all of the user's sockets (default 50 per second, bursts of 100); over it, the
    /// frame gets an error frame with 429, as for the per-connection limit.
    pub user_rate_limit: Option<RateLimit>,
    /// Open connections beyond this are refused before the upgrade (default 10000).
    pub max_connections: usize,
    /// Unacknowledged server-to-client QoS frames one user may have (default 1000).
    /// A push beyond it fails; a forwarded message beyond it takes the offline path.
    pub max_pending_s2c_per_user: usize,
    /// Frames queued for one socket by other sessions before more are refused
    /// (default 1024): a receiver that does not read cannot grow the server's memory.
    pub max_outbound_queue: usize,
    /// After the server sends a close frame it waits this long for the client's
    /// close frame before dropping TCP (default 1 s).
    pub close_linger: Duration,
    /// Graceful shutdown gives sessions this long to close before they are aborted
    /// (default 5 s).
    pub shutdown_timeout: Duration,
    /// Serve `wss://` with this certificate; `None` serves plain `ws://`.
    pub tls: Option<TlsConfig>,
    /// Serve Prometheus text metrics over HTTP at `GET /metrics` on this address.
    pub metrics_addr: Option<SocketAddr>,
    /// Rooms: the member cap, the grace period of a dropped member, history on join.
    pub rooms: RoomsConfig,
    /// Where room history, direct history, offline messages and private rooms are kept
    /// (default in memory; the `im-server` binary's default is the file
    /// `im-server.db` in the working directory).
    pub store: StorePath,
    /// How much the store keeps.
    pub store_limits: StoreConfig,
    /// Whether relayed direct messages are kept in each pair's history (default on;
    /// off saves a store write per direct message).
    pub direct_history: bool,
    /// When a QoS direct message to an online user is acknowledged to its sender:
    /// `false` (upstream's rule, the default) as soon as it is handed to the
    /// receiver's link; `true` only once the receiver's client acknowledges it, so
    /// that an ACK the sender gets always means "received", even across a crash of
    /// the server. Messages stored for later are ACKed once committed either way.
    pub ack_on_receipt: bool,
    /// At most this many connections may be in their TLS and WebSocket handshake at
    /// once (default 512); more wait for a slot, in order, within their handshake
    /// timeout, and are refused with a 503 when it passes first. A login storm is
    /// served rather than refused, and a flood of slow handshakes (slowloris) holds
    /// a slot no longer than the handshake timeout.
    pub max_handshakes: usize,
    /// The listen backlog: connections the kernel completes and holds until the
    /// server accepts them (default 4096; Linux caps it at `net.core.somaxconn`,
    /// 4096 by default). A full backlog drops new SYNs, and a client waits for
    /// their retransmit (1 s, then 3 s), so a login storm needs a deep one.
    pub listen_backlog: u32,
    /// A socket must log in within this of its upgrade, or it is closed with 1008
    /// (policy violation, reason "login timeout"): a socket that never logs in (even
    /// one sending echo frames) holds nothing for long (default 10 s).
    pub login_timeout: Duration,
    /// Whether the social extension is served (`docs/PROTOCOL-EXTENSIONS.md`:
    /// rooms, presence, history, offline messages, block lists; default on). Off, the
    /// server speaks upstream's protocol only, byte for byte: no `ext` in the login
    /// reply, room requests ignored as unknown types, nothing stored.
    pub extensions: bool,
    /// Runs this server as one node of several sharing users over NATS (feature
    /// `cluster`; see `bevy_im::server::cluster`). `None` (the default): a single
    /// node, exactly as without the feature.
    pub cluster: Option<ClusterConfig>,
}

/// One node's place among several (feature `cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The NATS server, such as `nats://127.0.0.1:4222`; it must run JetStream
    /// (`nats-server -js`).
    pub url: String,
    /// This node's name, unique among the nodes: `[A-Za-z0-9_-]`, 1 to 64 bytes.
    pub node_id: String,
    /// How long a node that stops renewing its lease still counts as alive (default
    /// 6 s): its users' presence is ignored, and messages to them are kept as
    /// offline, at most this long after the node dies.
    pub lease: Duration,
    /// How long a node waits for another to accept a forwarded message (default
    /// 2 s); without an answer the sender gets no ACK and sends again.
    pub request_timeout: Duration,
}

impl ClusterConfig {
    /// A node named `node_id` on the NATS server at `url`, with the default lease
    /// and request timeout.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            node_id: node_id.into(),
            lease: Duration::from_secs(6),
            request_timeout: Duration::from_secs(2),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            path: "/websocket".to_owned(),
            dialect: Dialect::Seed,
            read_timeout: SenseMode::Mode5s.server_read_timeout(),
            handshake_timeout: Duration::from_secs(10),
            max_frame_bytes: MAX_FRAME_BYTES,
            s2c_qos: S2cQosConfig::default(),
            c2s_dedup_window: Duration::from_secs(600),
            c2s_dedup_max_entries: 200_000,
            rate_limit: Some(RateLimit::default()),
            user_rate_limit: Some(RateLimit::default()),
            max_connections: 10_000,
            max_pending_s2c_per_user: 1000,
            max_outbound_queue: 1024,
            close_linger: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(5),
            tls: None,
            metrics_addr: None,
            rooms: RoomsConfig::default(),
            store: StorePath::Memory,
            store_limits: StoreConfig::default(),
            direct_history: true,
            ack_on_receipt: false,
            login_timeout: Duration::from_secs(10),
            max_handshakes: 512,
            listen_backlog: 4096,
            extensions: true,
            cluster: None,
        }
    }
}

impl ServerConfig {
    /// Sets the read timeout from a sense mode (the one its clients use).
    pub fn with_sense_mode(mut self, mode: SenseMode) -> Self {
        self.read_timeout = mode.server_read_timeout();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_modes_give_upstreams_read_timeouts() {
        let table = [
            ("3s", 7),
            ("5s", 11),
            ("10s", 15),
            ("15s", 20),
            ("30s", 35),
            ("60s", 65),
            ("120s", 125),
        ];
        for (name, secs) in table {
            let mode: SenseMode = name.parse().unwrap();
            assert_eq!(
                mode.server_read_timeout(),
                Duration::from_secs(secs),
                "{name}"
            );
        }
        assert!("4s".parse::<SenseMode>().is_err());
        assert_eq!(
            ServerConfig::default().read_timeout,
            Duration::from_secs(11)
        );
    }
}
