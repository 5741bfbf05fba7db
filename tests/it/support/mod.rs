//! What several test modules share: a test client for the reference server, built
//! from tokio-tungstenite directly (not from the plugin), recording hooks, and in
//! submodules a fault-injecting proxy and a `nats-server` for the cluster tests.
#![allow(dead_code)]

#[cfg(feature = "cluster")]
pub mod nats;
pub mod proxy;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bevy_im::protocol::{Dialect, Frame, LoginInfo, LoginResponse, decode_body};
use bevy_im::server::{LogoutReason, Server, ServerConfig, ServerHandle, ServerHooks};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(3);

/// A config for tests: an ephemeral port, the given dialect, a read timeout long
/// enough not to interfere (tests of the timeout scale it down further).
pub fn config(dialect: Dialect) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        dialect,
        read_timeout: Duration::from_secs(5),
        close_linger: Duration::from_millis(300),
        shutdown_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    }
}

/// Binds and serves in the current runtime.
pub async fn start(config: ServerConfig, hooks: impl ServerHooks) -> ServerHandle {
    let server = Server::bind(config, hooks).await.expect("bind");
    let handle = server.handle();
    tokio::spawn(server.serve());
    handle
}

/// What the client saw next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A text frame.
    Text(String),
    /// A close frame with its code and reason.
    Close(u16, String),
    /// The stream ended without a close frame.
    Ended,
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Client { ws }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send(&mut self, frame: &Frame) {
        self.send_text(&frame.to_json()).await;
    }

    /// The next event, skipping pings and pongs; panics if nothing comes in `WAIT`.
    pub async fn next_event(&mut self) -> Event {
        self.next_event_within(WAIT)
            .await
            .expect("an event in time")
    }

    pub async fn next_event_within(&mut self, limit: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match msg {
                Some(Ok(Message::Text(t))) => Event::Text(t.as_str().to_owned()),
                Some(Ok(Message::Close(Some(f)))) => {
                    Event::Close(u16::from(f.code), f.reason.as_str().to_owned())
                }
                Some(Ok(Message::Close(None))) => Event::Close(1005, String::new()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => panic!("the server sent a binary frame"),
                None | Some(Err(_)) => Event::Ended,
            });
        }
    }

    pub async fn recv_text(&mut self) -> String {
        match self.next_event().await {
            Event::Text(t) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    pub async fn recv(&mut self) -> Frame {
        let text = self.recv_text().await;
        Frame::decode(&text).expect("server frames decode")
    }

    /// Asserts nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(e) = self.next_event_within(quiet).await {
            panic!("expected silence, got {e:?}");
        }
    }

    /// Sends an echo and expects its answer as the next frame. A session writes what
    /// was queued for its socket before it reads on, so this proves that nothing
    /// else was queued for this socket before the server read the echo: an event to
    /// wait on, where a silence would be a sleep.
    pub async fn barrier(&mut self) {
        let tag = "barrier";
        self.send(&Frame::echo("barrier", tag)).await;
        let next = self.recv().await;
        assert_eq!(
            (next.ty, next.content()),
            (53, tag),
            "only the echo's answer: {next:?}"
        );
    }

    /// Expects the server's close frame, and then the end of the stream.
    pub async fn expect_close(&mut self) -> (u16, String) {
        match self.next_event().await {
            Event::Close(code, reason) => {
                let end = self.next_event_within(WAIT).await;
                assert!(
                    matches!(end, Some(Event::Ended) | None),
                    "after close: {end:?}"
                );
                (code, reason)
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Logs in with `first_login_time` and returns the login reply.
    pub async fn login_at(&mut self, user: &str, first_login_time: i64) -> Frame {
        self.send(&login(user, first_login_time)).await;
        let reply = self.recv().await;
        assert_eq!(reply.ty, 50, "login reply: {reply:?}");
        reply
    }

    /// A fresh login that must succeed; returns the assigned firstLoginTime.
    pub async fn login(&mut self, user: &str) -> i64 {
        let reply = self.login_at(user, 0).await;
        let body: LoginResponse = decode_body(reply.data_content.as_deref()).unwrap();
        assert_eq!(body.code, 0);
        assert_eq!(reply.to.as_deref(), Some(user));
        body.first_login_time
    }

    /// Sends a client close and waits for the server's answer.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = self.next_event_within(WAIT).await;
    }
}

/// Connects and logs in.
pub async fn logged_in(url: &str, user: &str) -> Client {
    let mut c = Client::connect(url).await;
    c.login(user).await;
    c
}

pub fn login(user: &str, first_login_time: i64) -> Frame {
    Frame::login(&LoginInfo {
        login_user_id: user.to_owned(),
        login_token: "token".to_owned(),
        extra: None,
        first_login_time,
        app: None,
    })
}

/// Writes raw bytes on a fresh TCP connection and returns what came back before the
/// server closed or `limit` passed, and whether the server closed.
pub async fn raw_exchange(
    addr: std::net::SocketAddr,
    request: &str,
    limit: Duration,
) -> (String, bool) {
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Hooks that record what happened, with a switchable offline store and login check.
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<String>>,
    pub c2s: Mutex<Vec<Frame>>,
    pub offline: Mutex<Vec<Frame>>,
    pub lost: Mutex<Vec<(String, Frame)>>,
    /// What `on_offline_message` answers.
    pub store_offline: bool,
    /// A user `verify_login` refuses with 1025.
    pub refuse: Option<String>,
    /// When set, the first `on_login` waits (at most 5 s) until a value arrives here
    /// before it records: a test holds a login hook open while another login races.
    /// Only on a multi-thread runtime.
    pub login_gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    fn log(&self, e: String) {
        self.events.lock().unwrap().push(e);
    }
}

impl ServerHooks for Recorder {
    fn verify_login(&self, user: &str, token: &str, extra: Option<&str>, app: Option<&str>) -> i32 {
        self.log(format!("verify {user} {token} {extra:?} {app:?}"));
        if self.refuse.as_deref() == Some(user) {
            1025
        } else {
            0
        }
    }

    fn on_login(&self, user: &str, _first_login_time: i64) {
        let gate = self.login_gate.lock().unwrap().take();
        if let Some(gate) = gate {
            // Hooks run on the server's runtime: hand the worker's other tasks on
            // while this one waits (needs a multi-thread runtime).
            tokio::task::block_in_place(|| {
                let _ = gate.recv_timeout(Duration::from_secs(5));
            });
        }
        self.log(format!("login {user}"));
    }

    fn on_logout(&self, user: &str, reason: LogoutReason) {
        self.log(format!("logout {user} {reason:?}"));
    }

    fn on_c2s_message(&self, frame: &Frame) {
        self.c2s.lock().unwrap().push(frame.clone());
    }

    fn on_offline_message(&self, frame: &Frame) -> bool {
        self.offline.lock().unwrap().push(frame.clone());
        self.store_offline
    }

    fn on_s2c_lost(&self, user: &str, frame: &Frame) {
        self.lost
            .lock()
            .unwrap()
            .push((user.to_owned(), frame.clone()));
    }
}

/// Waits until `cond` holds, polling every 10 ms, or panics after `WAIT`.
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(what, WAIT, cond).await;
}

/// Waits until `cond` holds, polling every 10 ms, or panics after `limit`.
pub async fn eventually_within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
