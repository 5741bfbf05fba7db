//! Faults between client and server: a proxy on 127.0.0.1 cuts and stalls the links
//! while two apps chat through the reference server. Whatever happens, every QoS
//! message the sender sent ends in exactly one outcome (delivered or lost), and the
//! receiver never gets a message twice.
#![cfg(all(feature = "server", feature = "testing", not(target_arch = "wasm32")))]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bevy::ecs::system::RunSystemOnce;
use bevy::prelude::*;
use bevy_im::prelude::*;
use bevy_im::server::{AcceptAll, ServerConfig, spawn_background};
use bevy_im::testing::ImTestApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy that can stall every link (nothing moves, sockets stay open) or cut
/// them all (sockets dropped without a close frame).
struct Proxy {
    addr: SocketAddr,
    stalled: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let (cut, cut_rx) = watch::channel(0u64);
        let st = stalled.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, st.clone(), cut_rx.clone()));
                tokio::spawn(pump(sr, cw, st.clone(), cut_rx.clone()));
            }
        });
        Self {
            addr,
            stalled,
            cut,
            runtime: Some(runtime),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/websocket", self.addr)
    }

    fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }

    fn cut_all(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
    mut cut: watch::Receiver<u64>,
) {
    cut.mark_unchanged();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if stalled.load(Ordering::SeqCst) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(2)) => continue,
                _ = cut.changed() => return,
            }
        }
        tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
            },
            _ = cut.changed() => return,
        }
    }
}

#[derive(Resource, Default, Debug)]
struct Heard {
    logins: usize,
    received: Vec<String>,
    delivered: Vec<String>,
    lost: Vec<String>,
}

fn listen(
    mut heard: ResMut<Heard>,
    mut ok: MessageReader<LoginSucceeded>,
    mut data: MessageReader<DataReceived>,
    mut delivered: MessageReader<MessageDelivered>,
    mut lost: MessageReader<MessagesLost>,
) {
    heard.logins += ok.read().count();
    heard
        .received
        .extend(data.read().filter_map(|d| d.fp.clone()));
    heard
        .delivered
        .extend(delivered.read().map(|d| d.fp.clone()));
    for m in lost.read() {
        heard
            .lost
            .extend(m.frames.iter().filter_map(|f| f.fp.clone()));
    }
}

fn client(url: &str, user: &str) -> App {
    let mut config = ImConfig::new(url).dialect(Dialect::MobileImSdkV6);
    config.client.jitter_seed = Some(user.len() as u64);
    let mut t = ImTestApp::connected(config);
    t.set_step(Duration::from_millis(50));
    t.app.init_resource::<Heard>().add_systems(Update, listen);
    t.start_login(user, "token");
    t.app
}

fn heard(app: &App) -> &Heard {
    app.world().resource::<Heard>()
}

#[test]
fn every_qos_message_is_delivered_or_lost_exactly_once_through_cuts_and_stalls() {
    let server = spawn_background(
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            dialect: Dialect::MobileImSdkV6,
            rate_limit: None,
            user_rate_limit: None,
            shutdown_timeout: Duration::from_secs(2),
            ..ServerConfig::default()
        },
        AcceptAll,
    )
    .unwrap();
    let proxy = Proxy::start(server.local_addr());
    let mut alice = client(&proxy.url(), "alice");
    let mut bob = client(&proxy.url(), "bob");

    let mut sent: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // 900 frames of 50 ms: 45 s of protocol time with a fault every few seconds.
    for frame in 0..900u32 {
        assert!(Instant::now() < deadline, "timed out");
        match frame {
            100 | 400 | 700 => proxy.cut_all(),
            200 => proxy.stall(true),
            // 12 s of silence: both clients declare the link dead and re-login.
            440 => proxy.stall(false),
            _ => {}
        }
        if frame % 7 == 0 && frame < 800 {
            let fp = alice
                .world_mut()
                .run_system_once(|mut im: ImClient| {
                    im.send(Outgoing::new("bob", "through the storm"))
                        .ok()
                        .flatten()
                })
                .unwrap();
            sent.extend(fp);
        }
        alice.update();
        bob.update();
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let every pending message reach its outcome (at most 9 s of protocol time).
    for _ in 0..400 {
        let h = heard(&alice);
        if sent
            .iter()
            .all(|fp| h.delivered.contains(fp) || h.lost.contains(fp))
        {
            break;
        }
        alice.update();
        bob.update();
        std::thread::sleep(Duration::from_millis(1));
    }

    let a = heard(&alice);
    let b = heard(&bob);
    assert!(sent.len() > 50, "sent {} while logged in", sent.len());
    assert!(
        a.logins >= 3,
        "alice re-logged in after the faults: {}",
        a.logins
    );
    for fp in &sent {
        let outcomes = a.delivered.iter().filter(|d| *d == fp).count()
            + a.lost.iter().filter(|l| *l == fp).count();
        assert_eq!(
            outcomes,
            1,
            "{fp}: delivered {:?} lost {:?}",
            a.delivered.contains(fp),
            a.lost.contains(fp)
        );
    }
    let unique: HashSet<_> = b.received.iter().collect();
    assert_eq!(unique.len(), b.received.len(), "bob got a message twice");
    assert!(
        b.received.iter().all(|fp| sent.contains(fp)),
        "bob got only what alice sent"
    );
    println!(
        "sent={} delivered={} lost={} received={} logins alice={} bob={}",
        sent.len(),
        a.delivered.len(),
        a.lost.len(),
        b.received.len(),
        a.logins,
        b.logins
    );
    drop(proxy);
    server.shutdown();
}
