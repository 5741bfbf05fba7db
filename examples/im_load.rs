//! A load generator for the reference server: pairs of raw WebSocket clients log in,
//! one of each pair sends QoS messages to the other, and the tool reports throughput,
//! relay-ACK latency and memory.
//!
//! ```text
//! cargo run --release --example im_load -- --pairs 200 --messages 200
//! cargo run --release --example im_load -- --url ws://127.0.0.1:3000/websocket --dialect seed
//! ```
//!
//! Without `--url` the server runs in this process on 127.0.0.1 (rate limit off).
//! Every run is bounded by `--timeout`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bevy_im::protocol::{Dialect, Frame, LoginInfo, ServerKind};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for the bevy_im reference server")]
struct Args {
    /// Server URL; without it a server is started in this process.
    #[arg(long)]
    url: Option<String>,
    /// Wire dialect of the server.
    #[arg(long, default_value = "seed")]
    dialect: Dialect,
    /// Sender/receiver pairs (two connections each).
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// QoS messages each sender sends.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Messages a sender may have waiting for their ACK.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Process id of a server started separately, to report its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Resident memory of this process, or of `pid`, in KiB (Linux only).
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or("/proc/self/status".to_owned(), |p| {
        format!("/proc/{p}/status")
    });
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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
            let fp = frame.fp.clone().unwrap_or_default();
            in_flight.insert(fp, Instant::now());
            ws.send(Message::text(frame.to_json()))
                .await
                .map_err(|e| e.to_string())?;
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
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(latencies)
}

/// Receives `n` distinct messages, ACKing each copy; returns how many arrived.
async fn receiver(mut ws: Ws, n: usize) -> Result<usize, String> {
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n {
        let Some(msg) = ws.next().await else {
            return Err("receiver closed".into());
        };
        if let Message::Text(t) = msg.map_err(|e| e.to_string())? {
            let frame = Frame::decode(t.as_str()).map_err(|e| e.to_string())?;
            if frame.ty == 2 {
                if let Some(ack) = Frame::ack_of(&frame) {
                    ws.send(Message::text(ack.to_json()))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                if let Some(fp) = frame.fp {
                    seen.insert(fp);
                }
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(seen.len())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

async fn run(args: Args) -> Result<(), String> {
    let rss_before = rss_kib(args.server_pid);
    let (url, server) = match &args.url {
        Some(url) => (url.clone(), None),
        None => {
            let config = bevy_im::server::ServerConfig {
                listen: ([127, 0, 0, 1], 0).into(),
                dialect: args.dialect,
                rate_limit: None,
                ..Default::default()
            };
            let s = bevy_im::server::Server::bind(config, bevy_im::server::AcceptAll)
                .await
                .map_err(|e| e.to_string())?;
            let handle = s.handle();
            tokio::spawn(s.serve());
            (handle.url(), Some(handle))
        }
    };
    println!(
        "url={url} pairs={} messages={} window={} size={}",
        args.pairs, args.messages, args.window, args.size
    );
    let started = Instant::now();
    let mut links = Vec::with_capacity(args.pairs);
    for i in 0..args.pairs {
        let (a, b) = (format!("load-a-{i}"), format!("load-b-{i}"));
        let rx = login(&url, &b).await?;
        let tx = login(&url, &a).await?;
        links.push((a, b, tx, rx));
    }
    let logged_in = started.elapsed();
    let rss_connected = rss_kib(args.server_pid);
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
    for (send, recv) in tasks {
        latencies.extend(send.await.map_err(|e| e.to_string())??);
        received += recv.await.map_err(|e| e.to_string())??;
    }
    let sending = sending_started.elapsed();
    latencies.sort();
    let count = latencies.len();
    println!(
        "connections={} logins_took={:.2}s",
        args.pairs * 2,
        logged_in.as_secs_f64()
    );
    println!(
        "messages={count} received={received} took={:.2}s rate={:.0} msg/s",
        sending.as_secs_f64(),
        count as f64 / sending.as_secs_f64()
    );
    println!(
        "relay_ack_latency p50={:?} p90={:?} p99={:?} max={:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    if let (Some(before), Some(connected)) = (rss_before, rss_connected) {
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
    if let Some(h) = server {
        let m = h.metrics();
        println!("server {m:?}");
        h.shutdown().await;
    }
    if received != args.pairs * args.messages || count != received {
        return Err(format!(
            "expected {} messages, {count} acknowledged and {received} received",
            args.pairs * args.messages
        ));
    }
    Ok(())
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
