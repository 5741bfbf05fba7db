//! A TCP proxy on 127.0.0.1 that injects link faults between clients and a server:
//! it stalls every link (nothing moves, sockets stay open), cuts them all (sockets
//! dropped without a close frame), refuses links for a while, or delays every chunk
//! it forwards.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    cut: watch::Sender<u64>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Default)]
struct Faults {
    stalled: AtomicBool,
    /// New links are closed at once.
    refusing: AtomicBool,
    /// The most each chunk is held before it is written, in microseconds (0: none).
    max_delay_us: AtomicU64,
    /// Where every pump draws its delays from (an LCG step per chunk).
    seed: AtomicU64,
}

impl Faults {
    fn delay(&self) -> Option<Duration> {
        let max = self.max_delay_us.load(Ordering::Relaxed);
        if max == 0 {
            return None;
        }
        let x = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        Some(Duration::from_micros((x >> 33) % (max + 1)))
    }
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to
    /// `upstream` (connected anew for each client connection, so a server restarted
    /// on the same address is reached again).
    pub fn start(upstream: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let (cut, cut_rx) = watch::channel(0u64);
        let f = faults.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if f.refusing.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, f.clone(), cut_rx.clone()));
                tokio::spawn(pump(sr, cw, f.clone(), cut_rx.clone()));
            }
        });
        Self {
            addr,
            faults,
            cut,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/websocket", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every open link and closes new ones at once (`true`), or lets them
    /// through again (`false`): the upstream is unreachable meanwhile.
    pub fn refuse(&self, on: bool) {
        self.faults.refusing.store(on, Ordering::SeqCst);
        if on {
            self.cut_all();
        }
    }

    /// Stops (or lets go) every byte in both directions; sockets stay open.
    pub fn stall(&self, on: bool) {
        self.faults.stalled.store(on, Ordering::SeqCst);
    }

    /// Holds every chunk up to `max` before writing it (zero: no delay).
    pub fn delay(&self, max: Duration) {
        let us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        self.faults.max_delay_us.store(us, Ordering::SeqCst);
    }

    /// Drops every open link without a close frame.
    pub fn cut_all(&self) {
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
    faults: Arc<Faults>,
    mut cut: watch::Receiver<u64>,
) {
    cut.mark_unchanged();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if faults.stalled.load(Ordering::SeqCst) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(2)) => continue,
                _ = cut.changed() => return,
            }
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut.changed() => return,
        };
        if let Some(d) = faults.delay() {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = cut.changed() => return,
            }
        }
        // A stall that began while this chunk was read holds it too.
        while faults.stalled.load(Ordering::SeqCst) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                _ = cut.changed() => return,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
