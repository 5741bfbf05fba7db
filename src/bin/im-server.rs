//! `im-server`: the reference MobileIMSDK-over-WebSocket server.
//!
//! ```text
//! im-server --listen 0.0.0.0:3000 --dialect mobileimsdk-v6 --sense-mode 5s \
//!           --metrics 127.0.0.1:9100 --log-level info
//! ```
//! Ctrl-C or SIGTERM shuts it down gracefully. Several nodes share their users over
//! NATS (feature `cluster`):
//!
//! ```text
//! nats-server -js -a 127.0.0.1 -p 4222 -sd /tmp/nats &
//! im-server --listen 127.0.0.1:3001 --cluster nats://127.0.0.1:4222 --node-id a &
//! im-server --listen 127.0.0.1:3002 --cluster nats://127.0.0.1:4222 --node-id b &
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bevy_im::client::SenseMode;
use bevy_im::protocol::Dialect;
use bevy_im::server::{
    AcceptAll, ClusterConfig, RateLimit, Server, ServerConfig, StorePath, TlsConfig,
};
use clap::Parser;

/// The reference MobileIMSDK server over WebSocket (path `/websocket`).
#[derive(Debug, Parser)]
#[command(name = "im-server", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Wire dialect: `seed` (ACK 54, kickout 55) or `mobileimsdk-v6` (ACK 4, kickout 54).
    #[arg(long, default_value = "seed")]
    dialect: Dialect,
    /// Sense mode clients use; sets the read timeout (5s → 11 s).
    #[arg(long, default_value = "5s")]
    sense_mode: SenseMode,
    /// PEM certificate chain; with --tls-key serves wss://.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Maximum open connections.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// The listen backlog: connections the kernel holds until they are accepted
    /// (Linux caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 4096)]
    listen_backlog: u32,
    /// Keep no history of direct messages (one store write less per message).
    #[arg(long)]
    no_direct_history: bool,
    /// Acknowledge a direct message to its sender only once the receiver's client
    /// acknowledged it (instead of when it is handed to the receiver's link).
    #[arg(long)]
    ack_on_receipt: bool,
    /// Inbound frames per second per connection; 0 turns the limit off.
    #[arg(long, default_value_t = 50)]
    rate_limit: u32,
    /// Frames a connection may send at once before the rate limit applies.
    #[arg(long, default_value_t = 100)]
    rate_burst: u32,
    /// Data frames and room requests per second per user, across all of the user's
    /// sockets (0 turns the per-user limit off); bursts of twice that.
    #[arg(long, default_value_t = 50)]
    user_rate_limit: u32,
    /// Maximum unacknowledged server-to-client QoS frames per user.
    #[arg(long, default_value_t = 1000)]
    max_pending_s2c: usize,
    /// Serve Prometheus metrics at GET /metrics on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Log filter, such as `info` or `bevy_im=debug`.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Where room history, direct history, offline messages and private rooms are
    /// kept: a SQLite file (created when missing), or `memory` for nothing that
    /// survives a restart.
    #[arg(long, default_value = "im-server.db")]
    store: StorePath,
    /// Run as one node of several sharing users over this NATS server (with
    /// JetStream), such as nats://127.0.0.1:4222; needs the `cluster` feature.
    #[arg(long, requires = "node_id")]
    cluster: Option<String>,
    /// This node's name among the cluster's: 1 to 64 of [A-Za-z0-9_-].
    #[arg(long, requires = "cluster")]
    node_id: Option<String>,
    /// Seconds after which a node that stopped renewing its lease counts as dead.
    #[arg(long, default_value_t = 6.0, requires = "cluster")]
    cluster_lease: f64,
}

impl Args {
    fn config(&self) -> ServerConfig {
        let mut config = ServerConfig::default().with_sense_mode(self.sense_mode);
        config.listen = self.listen;
        config.dialect = self.dialect;
        config.max_connections = self.max_connections;
        config.listen_backlog = self.listen_backlog;
        config.ack_on_receipt = self.ack_on_receipt;
        config.direct_history = !self.no_direct_history;
        config.rate_limit = (self.rate_limit > 0).then_some(RateLimit {
            per_second: self.rate_limit,
            burst: self.rate_burst.max(1),
        });
        config.user_rate_limit = (self.user_rate_limit > 0).then_some(RateLimit {
            per_second: self.user_rate_limit,
            burst: self.user_rate_limit.saturating_mul(2).max(1),
        });
        config.max_pending_s2c_per_user = self.max_pending_s2c;
        config.metrics_addr = self.metrics;
        config.store = self.store.clone();
        if let (Some(url), Some(node)) = (&self.cluster, &self.node_id) {
            let mut cluster = ClusterConfig::new(url, node);
            cluster.lease = std::time::Duration::from_secs_f64(self.cluster_lease.max(0.3));
            config.cluster = Some(cluster);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(TlsConfig::from_pem_files(cert, key));
        }
        config
    }
}

/// Resolves on Ctrl-C, or on SIGTERM where there is one (service managers send it).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("im-server: bad --log-level `{}`: {e}", args.log_level);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("im-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::bind(args.config(), AcceptAll).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("im-server: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let handle = server.handle();
        tracing::info!(url = %handle.url(), dialect = %args.dialect, "listening");
        tracing::info!(store = %args.store, "rooms, history and offline messages kept in this store");
        if let Some(addr) = server.metrics_addr() {
            tracing::info!("metrics at http://{addr}/metrics");
        }
        let serving = tokio::spawn(server.serve());
        stop_signal().await;
        tracing::info!("shutting down");
        handle.shutdown().await;
        let _ = serving.await;
        ExitCode::SUCCESS
    })
}
