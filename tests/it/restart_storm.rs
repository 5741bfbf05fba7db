//! A restart storm: a thousand clients logged in to one server, the server shut down
//! and started again on the same address. Every client logs in again within 30 s,
//! the new server refuses no connection for lack of room, and the connect rate stays
//! within what the re-login schedule promises: the first attempts spread over half a
//! second (`ReloginPolicy::Backoff`: `base / 6`), the retries of those that found no
//! server over the 1.5–3 s that follow.
//!
//! Each client is a `ClientCore` driven directly over tokio-tungstenite, one task
//! each, on the real clock (client and server share it; nothing sleeps for a timer).
#![cfg(all(unix, feature = "server"))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bevy_im::client::{Action, ClientConfig, ClientCore, LoginRequest};
use bevy_im::protocol::Dialect;
use bevy_im::server::{AcceptAll, RejectReason, ServerConfig, spawn_background};
use bevy_im::transport::LinkId;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

const CLIENTS: usize = 1000;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the clients share with the test.
#[derive(Default)]
struct Log {
    /// When each connect was attempted, since the epoch.
    connects: Mutex<Vec<Duration>>,
    online: AtomicUsize,
}

/// Raises the soft open-file limit: a thousand clients and their server sockets
/// live in this one process.
fn raise_file_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn next_frame(ws: &mut Option<(LinkId, Ws)>) -> Option<Result<Message, String>> {
    match ws {
        Some((_, s)) => s.next().await.map(|r| r.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

/// One client: logs in as `u{i}` and stays, re-logging in by itself, until `stop`.
async fn client(
    i: usize,
    url: String,
    epoch: Instant,
    log: Arc<Log>,
    mut stop: watch::Receiver<bool>,
) {
    let now = || epoch.elapsed();
    let mut core = ClientCore::new(ClientConfig {
        dialect: Dialect::MobileImSdkV6,
        jitter_seed: Some(i as u64 + 1),
        ..ClientConfig::default()
    });
    core.login(LoginRequest::new(format!("u{i}"), "t"), now())
        .expect("a valid login");
    let mut ws: Option<(LinkId, Ws)> = None;
    let mut online = false;
    loop {
        loop {
            let actions = core.take_actions();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                match action {
                    Action::Connect { link } => {
                        log.connects.lock().unwrap().push(now());
                        match connect_async(url.as_str()).await {
                            Ok((s, _)) => {
                                ws = Some((link, s));
                                core.on_link_opened(link, now());
                            }
                            Err(e) => core.on_link_closed(link, None, &e.to_string(), now()),
                        }
                    }
                    Action::Send { link, text, .. } => {
                        if let Some((l, s)) = &mut ws
                            && *l == link
                            && s.send(Message::text(text)).await.is_err()
                        {
                            ws = None;
                            core.on_link_closed(link, None, "write failed", now());
                        }
                    }
                    Action::Close { link } => {
                        if ws.as_ref().is_some_and(|(l, _)| *l == link)
                            && let Some((_, mut s)) = ws.take()
                        {
                            let _ = s.close(None).await;
                        }
                    }
                }
            }
        }
        if core.is_logged_in() != online {
            online = !online;
            if online {
                log.online.fetch_add(1, Ordering::SeqCst);
            } else {
                log.online.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let due = core
            .poll_timeout()
            .map_or(epoch + Duration::from_secs(3600), |d| epoch + d);
        tokio::select! {
            frame = next_frame(&mut ws) => {
                let link = ws.as_ref().map(|(l, _)| *l).unwrap_or_default();
                match frame {
                    Some(Ok(Message::Text(text))) => core.on_text(link, text.as_str(), now()),
                    Some(Ok(Message::Close(c))) => {
                        let code = c.as_ref().map(|c| u16::from(c.code));
                        ws = None;
                        core.on_link_closed(link, code, "closed", now());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        ws = None;
                        core.on_link_closed(link, None, &e, now());
                    }
                    None => {
                        ws = None;
                        core.on_link_closed(link, None, "ended", now());
                    }
                }
            }
            _ = tokio::time::sleep_until(due.into()) => core.tick(now()),
            _ = stop.changed() => return,
        }
    }
}

fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn config(listen: &str) -> ServerConfig {
    ServerConfig {
        listen: listen.parse().unwrap(),
        dialect: Dialect::MobileImSdkV6,
        rate_limit: None,
        user_rate_limit: None,
        shutdown_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    }
}

#[test]
fn a_thousand_clients_come_back_after_a_restart_within_the_promised_rate() {
    raise_file_limit(8192);
    let server = spawn_background(config("127.0.0.1:0"), AcceptAll).unwrap();
    let addr = server.local_addr();
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let epoch = Instant::now();
    let log = Arc::new(Log::default());
    let (stop, stop_rx) = watch::channel(false);
    // The first logins, spread over two seconds: the storm is the restart's.
    runtime.block_on(async {
        for i in 0..CLIENTS {
            tokio::spawn(client(i, url.clone(), epoch, log.clone(), stop_rx.clone()));
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let took = wait_until("every client logged in", Duration::from_secs(30), || {
        log.online.load(Ordering::SeqCst) == CLIENTS
    });
    println!("{CLIENTS} logged in after {:.1} s", took.as_secs_f64());

    let restart = epoch.elapsed();
    server.shutdown();
    let server = spawn_background(config(&addr.to_string()), AcceptAll).unwrap();
    let back = wait_until(
        "every client logged in again",
        Duration::from_secs(30),
        || log.online.load(Ordering::SeqCst) == CLIENTS,
    );
    let connects: Vec<Duration> = log
        .connects
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t >= restart)
        .map(|t| *t - restart)
        .collect();
    // Connects per 100 ms since the restart began.
    let buckets = connects
        .iter()
        .map(|t| t.as_millis() / 100)
        .max()
        .unwrap_or(0) as usize
        + 1;
    let mut per_100ms = vec![0usize; buckets];
    for t in &connects {
        per_100ms[(t.as_millis() / 100) as usize] += 1;
    }
    let per_second: Vec<usize> = per_100ms.chunks(10).map(|c| c.iter().sum()).collect();
    let m = server.handle().metrics();
    println!(
        "restart: all {CLIENTS} back after {:.2} s; {} connects; per second {per_second:?}; \
         peak {} per 100 ms; the new server took {} connections and refused {}",
        back.as_secs_f64(),
        connects.len(),
        per_100ms.iter().max().unwrap(),
        m.connections_total,
        m.rejected(RejectReason::ConnectionLimit) + m.rejected(RejectReason::HandshakeLimit),
    );
    // The promise: the first attempts spread over 0.5 s (200 per 100 ms on average),
    // the retries over 1.5 s (67 per 100 ms); half as much again for the luck of the
    // draw.
    let peak = *per_100ms.iter().max().unwrap();
    assert!(peak <= 300, "{peak} connects in 100 ms: {per_100ms:?}");
    assert!(
        connects.len() <= 2 * CLIENTS + CLIENTS / 10,
        "at most two attempts per client, give or take: {}",
        connects.len()
    );
    assert_eq!(m.rejected(RejectReason::ConnectionLimit), 0);
    assert_eq!(m.rejected(RejectReason::HandshakeLimit), 0);

    stop.send_replace(true);
    runtime.shutdown_timeout(Duration::from_secs(5));
    server.shutdown();
}
