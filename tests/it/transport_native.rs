//! The native transport against real sockets: a small tokio-tungstenite server started
//! inside each test on 127.0.0.1 (ephemeral port). Every wait is a poll loop with a
//! deadline.
#![cfg(not(target_arch = "wasm32"))]

use std::io::{Read, Write};
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy_im::transport::{
    LinkId, NativeTransport, Transport, TransportConfig, TransportError, TransportEvent,
};
use crossbeam_channel::{Receiver, Sender};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// The longest any single condition in these tests may take on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(5);

/// What the test server saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A handshake, with whether the client asked for a subprotocol or an extension.
    Handshake {
        subprotocol: bool,
        extensions: bool,
    },
    Text(String),
    Close(Option<u16>),
}

struct Server {
    port: u16,
    seen: Receiver<Seen>,
    // Dropped last: stops the server's tasks and closes its sockets.
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/websocket", self.port)
    }

    /// The next thing the server saw, within [`WAIT`].
    fn next_seen(&self) -> Seen {
        self.seen
            .recv_timeout(WAIT)
            .expect("the server saw nothing in time")
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("test runtime")
}

/// An echo server with a few commands: `close CODE REASON`, `binary N`, `big N` (a text
/// frame of N bytes), `burst N` (N numbered frames), `drop` (hang up without a close
/// frame), `badutf8` (a text frame whose payload is not UTF-8), `fragments`
/// ([`FRAGMENTED`] one byte per fragment, with a ping between two fragments);
/// anything else is echoed as `echo:`.
fn start_server(tls: Option<Arc<rustls::ServerConfig>>) -> Server {
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let (tx, rx) = crossbeam_channel::unbounded();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(config) => {
                        if let Ok(stream) =
                            tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                        {
                            serve(stream, tx).await;
                        }
                    }
                    None => serve(tcp, tx).await,
                }
            });
        }
    });
    Server {
        port,
        seen: rx,
        _rt: rt,
    }
}

/// The text the `fragments` command sends, split into one-byte fragments: several of
/// its characters are cut in the middle.
const FRAGMENTED: &str = "héllo wörld ✓";

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, seen: Sender<Seen>) {
    let headers = seen.clone();
    // The callback's type is tungstenite's; its error type is not ours to shrink.
    #[expect(clippy::result_large_err)]
    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let _ = headers.send(Seen::Handshake {
            subprotocol: req.headers().contains_key("sec-websocket-protocol"),
            extensions: req.headers().contains_key("sec-websocket-extensions"),
        });
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        let text = match msg {
            Message::Text(t) => t.as_str().to_owned(),
            Message::Close(frame) => {
                let _ = seen.send(Seen::Close(frame.map(|f| u16::from(f.code))));
                continue;
            }
            _ => continue,
        };
        let _ = seen.send(Seen::Text(text.clone()));
        let arg = |prefix: &str| {
            text.strip_prefix(prefix)
                .and_then(|n| n.parse::<usize>().ok())
        };
        if text == "drop" {
            // Hang up without a close frame.
            return;
        }
        let sent = if let Some(rest) = text.strip_prefix("close ") {
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            let code: u16 = code.parse().unwrap_or(1000);
            ws.send(Message::Close(Some(CloseFrame {
                code: code.into(),
                reason: reason.into(),
            })))
            .await
        } else if text == "badutf8" {
            // 0xC3 starts a two-byte sequence; 0x28 cannot continue it.
            let frame = Frame::message(vec![0xC3u8, 0x28], OpCode::Data(Data::Text), true);
            ws.send(Message::Frame(frame)).await
        } else if text == "fragments" {
            let bytes = FRAGMENTED.as_bytes();
            let mut r = Ok(());
            for (i, byte) in bytes.iter().enumerate() {
                let opcode = if i == 0 { Data::Text } else { Data::Continue };
                let last = i + 1 == bytes.len();
                let frame = Frame::message(vec![*byte], OpCode::Data(opcode), last);
                r = ws.feed(Message::Frame(frame)).await;
                if r.is_ok() && i == 2 {
                    // Control frames may come between the fragments of a message.
                    r = ws.feed(Message::Ping(b"mid".to_vec().into())).await;
                }
                if r.is_err() {
                    break;
                }
            }
            match r {
                Ok(()) => ws.flush().await,
                e => e,
            }
        } else if let Some(n) = arg("binary ") {
            ws.send(Message::binary(vec![7u8; n])).await
        } else if let Some(n) = arg("big ") {
            ws.send(Message::text("x".repeat(n))).await
        } else if let Some(n) = arg("burst ") {
            let mut r = Ok(());
            for i in 0..n {
                r = ws.feed(Message::text(format!("s{i}"))).await;
                if r.is_err() {
                    break;
                }
            }
            match r {
                Ok(()) => ws.flush().await,
                e => e,
            }
        } else {
            ws.send(Message::text(format!("echo:{text}"))).await
        };
        if sent.is_err() {
            break;
        }
    }
}

/// Polls until an event arrives, within [`WAIT`].
fn next_event(t: &mut NativeTransport) -> TransportEvent {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(event) = t.poll() {
            return event;
        }
        assert!(Instant::now() < deadline, "no transport event in {WAIT:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls until `cond` holds, within `within`, failing the test otherwise.
fn poll_until(t: &mut NativeTransport, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in {within:?}");
        assert_eq!(t.poll(), None, "unexpected event while waiting");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn open(t: &mut NativeTransport, link: LinkId, url: &str) {
    t.connect(link, url);
    assert_eq!(next_event(t), TransportEvent::Opened { link });
}

fn text(t: &mut NativeTransport, link: LinkId) -> String {
    match next_event(t) {
        TransportEvent::Text { link: l, text } if l == link => text,
        other => panic!("expected a text frame on {link}, got {other:?}"),
    }
}

/// The error and the `Closed` that follows it.
fn failure(t: &mut NativeTransport, link: LinkId) -> (TransportError, TransportEvent) {
    let error = match next_event(t) {
        TransportEvent::Error { link: l, error } if l == link => error,
        other => panic!("expected an error on {link}, got {other:?}"),
    };
    let closed = next_event(t);
    assert!(
        matches!(closed, TransportEvent::Closed { link: l, .. } if l == link),
        "expected Closed on {link}, got {closed:?}"
    );
    (error, closed)
}

fn thread_exists(name: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
    })
}

#[test]
fn opens_without_subprotocol_or_compression_and_echoes_in_order() {
    let server = start_server(None);
    let mut t = NativeTransport::default();
    let link = LinkId(1);
    open(&mut t, link, &server.url());
    assert_eq!(
        server.next_seen(),
        Seen::Handshake {
            subprotocol: false,
            extensions: false
        }
    );

    const N: usize = 1000;
    for i in 0..N {
        t.send(link, format!("m{i}")).expect("send on an open link");
    }
    for i in 0..N {
        assert_eq!(text(&mut t, link), format!("echo:m{i}"));
    }
    for i in 0..N {
        assert_eq!(server.next_seen(), Seen::Text(format!("m{i}")));
    }

    t.send(link, format!("burst {N}")).expect("send");
    for i in 0..N {
        assert_eq!(text(&mut t, link), format!("s{i}"));
    }
    assert_eq!(t.poll(), None);
}

#[test]
fn server_close_reports_code_and_reason() {
    let server = start_server(None);
    let mut t = NativeTransport::default();
    let link = LinkId(3);
    open(&mut t, link, &server.url());
    t.send(link, "close 4000 bye now".into()).expect("send");
    assert_eq!(
        next_event(&mut t),
        TransportEvent::Closed {
            link,
            code: Some(4000),
            reason: "bye now".into()
        }
    );
    assert_eq!(t.send(link, "late".into()), Err(TransportError::NotOpen));
    // The server saw the command, then the client's echo of its close frame.
    assert!(matches!(server.next_seen(), Seen::Handshake { .. }));
    assert_eq!(server.next_seen(), Seen::Text("close 4000 bye now".into()));
    assert_eq!(server.next_seen(), Seen::Close(Some(4000)));
}

#[test]
fn a_hang_up_without_close_frame_is_a_protocol_error() {
    let server = start_server(None);
    let mut t = NativeTransport::default();
    let link = LinkId(6);
    open(&mut t, link, &server.url());
    t.send(link, "drop".into()).expect("send");
    let (error, closed) = failure(&mut t, link);
    assert!(matches!(error, TransportError::Protocol(_)), "{error:?}");
    assert!(
        matches!(closed, TransportEvent::Closed { code: None, .. }),
        "{closed:?}"
    );
    assert_eq!(t.send(link, "late".into()), Err(TransportError::NotOpen));
}

#[test]
fn client_close_completes_the_handshake_and_stops_the_thread() {
    let server = start_server(None);
    let mut t = NativeTransport::default();
    let link = LinkId(4);
    open(&mut t, link, &server.url());
    let watch = t.io_thread().expect("connect starts the I/O thread");
    t.close(link);
    assert_eq!(
        t.send(link, "after close".into()),
        Err(TransportError::NotOpen)
    );
    match next_event(&mut t) {
        TransportEvent::Closed {
            link: l,
            code: Some(1000),
            ..
        } if l == link => {}
        other => panic!("expected Closed with the echoed 1000, got {other:?}"),
    }
    assert!(matches!(server.next_seen(), Seen::Handshake { .. }));
    assert_eq!(server.next_seen(), Seen::Close(Some(1000)));
    // With no link left, the thread stops by itself.
    let started = Instant::now();
    poll_until(&mut t, Duration::from_secs(2), || watch.is_finished());
    assert!(started.elapsed() < Duration::from_secs(2));
    poll_until(&mut t, Duration::from_secs(1), || {
        !thread_exists(watch.name())
    });
    assert_eq!(t.poll(), None);
    assert_eq!(t.io_threads(), 0, "the ended thread was joined");
    // A later connect starts a fresh thread and works.
    open(&mut t, LinkId(5), &server.url());
    t.send(LinkId(5), "again".into()).expect("send");
    assert_eq!(text(&mut t, LinkId(5)), "echo:again");
}

#[test]
fn a_new_link_closes_the_old_one_and_never_borrows_its_id() {
    let server = start_server(None);
    let mut t = NativeTransport::default();
    let (old, new) = (LinkId(10), LinkId(11));
    open(&mut t, old, &server.url());
    t.send(old, "from old".into()).expect("send");
    assert_eq!(text(&mut t, old), "echo:from old");

    t.connect(new, &server.url());
    assert_eq!(t.send(old, "stale".into()), Err(TransportError::NotOpen));
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(next_event(&mut t));
    }
    assert!(
        got.iter().any(|e| matches!(
            e,
            TransportEvent::Closed { link, reason, .. } if *link == old && reason == "replaced by a new link"
        )),
        "{got:?}"
    );
    assert!(
        got.contains(&TransportEvent::Opened { link: new }),
        "{got:?}"
    );
    t.send(new, "from new".into()).expect("send");
    assert_eq!(text(&mut t, new), "echo:from new");
    assert_eq!(t.poll(), None, "nothing more, and nothing for the old link");
}

#[test]
fn a_refused_port_is_refused() {
    let port = {
        let l = StdListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut t = NativeTransport::default();
    t.connect(LinkId(20), &format!("ws://127.0.0.1:{port}/websocket"));
    let (error, _) = failure(&mut t, LinkId(20));
    assert!(matches!(error, TransportError::Refused(_)), "{error:?}");
}

#[test]
fn a_silent_server_times_out() {
    // Accepts the TCP connection and never answers the WebSocket handshake.
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (held_tx, held_rx) = crossbeam_channel::unbounded();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = held_tx.send(());
            // Keep the socket open, unanswered, until the runtime goes.
            tokio::spawn(async move {
                let _tcp = tcp;
                std::future::pending::<()>().await;
            });
        }
    });
    let timeout = Duration::from_millis(300);
    let mut t = NativeTransport::new(TransportConfig {
        connect_timeout: timeout,
        ..Default::default()
    });
    let started = Instant::now();
    t.connect(LinkId(21), &format!("ws://127.0.0.1:{port}/websocket"));
    let (error, _) = failure(&mut t, LinkId(21));
    let took = started.elapsed();
    assert_eq!(error, TransportError::TimedOut(timeout));
    assert!(took >= timeout, "timed out early: {took:?}");
    assert!(
        took < timeout + Duration::from_secs(2),
        "timed out late: {took:?}"
    );
    held_rx
        .recv_timeout(WAIT)
        .expect("the server accepted the connection");
}

#[test]
fn a_rejected_handshake_reports_the_http_status() {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let server = std::thread::spawn(move || {
        let deadline = Instant::now() + WAIT;
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(WAIT))?;
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        Ok(())
    });
    let mut t = NativeTransport::default();
    t.connect(LinkId(22), &format!("ws://127.0.0.1:{port}/wrong"));
    let (error, _) = failure(&mut t, LinkId(22));
    match error {
        TransportError::HandshakeRejected(why) => assert!(why.contains("404"), "{why}"),
        other => panic!("expected HandshakeRejected, got {other:?}"),
    }
    server
        .join()
        .expect("server thread")
        .expect("server answered");
}

#[test]
fn invalid_urls_are_typed() {
    let mut t = NativeTransport::default();
    for (i, url) in ["http://127.0.0.1/", "not a url", "ws://"]
        .iter()
        .enumerate()
    {
        let link = LinkId(30 + i as u64);
        t.connect(link, url);
        let (error, _) = failure(&mut t, link);
        assert!(
            matches!(error, TransportError::InvalidUrl(_)),
            "{url}: {error:?}"
        );
    }
}

#[test]
fn a_binary_frame_is_an_error_and_closes_the_link() {
    let server = start_server(None);
    let mut t = NativeTransport::default();
    let link = LinkId(40);
    open(&mut t, link, &server.url());
    t.send(link, "binary 10".into()).expect("send");
    let (error, closed) = failure(&mut t, link);
    assert_eq!(error, TransportError::BinaryFrame(10));
    assert!(
        matches!(
            closed,
            TransportEvent::Closed {
                code: Some(1003),
                ..
            }
        ),
        "{closed:?}"
    );
    assert!(matches!(server.next_seen(), Seen::Handshake { .. }));
    assert_eq!(server.next_seen(), Seen::Text("binary 10".into()));
    assert_eq!(server.next_seen(), Seen::Close(Some(1003)));
}

#[test]
fn the_frame_limit_holds_both_ways() {
    let server = start_server(None);
    let limit = 1024;
    let mut t = NativeTransport::new(TransportConfig {
        max_frame_bytes: limit,
        ..Default::default()
    });
    let link = LinkId(50);
    open(&mut t, link, &server.url());
    // Send side: refused here, nothing written.
    assert_eq!(
        t.send(link, "y".repeat(limit + 1)),
        Err(TransportError::FrameTooLarge {
            len: limit + 1,
            limit
        })
    );
    // Receive side: exactly the limit passes, one byte more does not.
    t.send(link, format!("big {limit}")).expect("send");
    assert_eq!(text(&mut t, link).len(), limit);
    t.send(link, format!("big {}", limit + 1)).expect("send");
    let (error, _) = failure(&mut t, link);
    assert_eq!(
        error,
        TransportError::FrameTooLarge {
            len: limit + 1,
            limit
        }
    );
    assert!(matches!(server.next_seen(), Seen::Handshake { .. }));
    assert_eq!(server.next_seen(), Seen::Text(format!("big {limit}")));
    assert_eq!(server.next_seen(), Seen::Text(format!("big {}", limit + 1)));
    assert_eq!(server.next_seen(), Seen::Close(Some(1009)));
}

fn tls_server() -> (Server, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("self-signed certificate");
    let der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone().into()], key)
        .expect("server certificate");
    (start_server(Some(Arc::new(config))), der)
}

#[test]
fn wss_echo_with_a_self_signed_certificate() {
    let (server, der) = tls_server();
    let mut t = NativeTransport::new(TransportConfig {
        extra_roots_der: vec![der],
        ..Default::default()
    });
    let link = LinkId(60);
    let url = format!("wss://localhost:{}/websocket", server.port);
    open(&mut t, link, &url);
    for i in 0..100 {
        t.send(link, format!("tls{i}")).expect("send");
    }
    for i in 0..100 {
        assert_eq!(text(&mut t, link), format!("echo:tls{i}"));
    }
    t.close(link);
    assert!(matches!(
        next_event(&mut t),
        TransportEvent::Closed {
            code: Some(1000),
            ..
        }
    ));
}

#[test]
fn wss_without_trusting_the_certificate_is_a_tls_error() {
    let (server, _der) = tls_server();
    let mut t = NativeTransport::default();
    let link = LinkId(61);
    t.connect(link, &format!("wss://localhost:{}/websocket", server.port));
    let (error, _) = failure(&mut t, link);
    assert!(matches!(error, TransportError::Tls(_)), "{error:?}");
}

#[test]
fn drop_stops_the_io_thread_within_a_bound() {
    let server = start_server(None);
    let mut t = NativeTransport::default();
    open(&mut t, LinkId(70), &server.url());
    let watch = t.io_thread().expect("connect starts the I/O thread");
    assert!(thread_exists(watch.name()), "{} is running", watch.name());
    let started = Instant::now();
    drop(t);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "drop took {took:?}");
    assert!(watch.is_finished());
    assert!(
        !thread_exists(watch.name()),
        "{} outlived the drop",
        watch.name()
    );
    // The link was closed with a close frame, not just cut.
    assert!(matches!(server.next_seen(), Seen::Handshake { .. }));
    assert_eq!(server.next_seen(), Seen::Close(Some(1001)));
}

#[test]
fn drop_while_connecting_does_not_wait_for_the_connect() {
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _tcp = tcp;
                std::future::pending::<()>().await;
            });
        }
    });
    let mut t = NativeTransport::new(TransportConfig {
        connect_timeout: Duration::from_secs(30),
        ..Default::default()
    });
    t.connect(LinkId(80), &format!("ws://127.0.0.1:{port}/websocket"));
    let watch = t.io_thread().expect("connect starts the I/O thread");
    let started = Instant::now();
    drop(t);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(watch.is_finished());
}

#[test]
fn close_ends_a_link_whose_peer_stopped_reading() {
    // A server that completes the handshake and then never reads again: the client's
    // writes fill the socket buffers and block.
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    rt.spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                held.push(ws);
            }
        }
    });
    let mut t = NativeTransport::default();
    let link = LinkId(1);
    open(&mut t, link, &format!("ws://127.0.0.1:{port}/websocket"));
    let chunk = "x".repeat(60_000);
    // 30 MB: far more than loopback socket buffers hold.
    for _ in 0..500 {
        if t.send(link, chunk.clone()).is_err() {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    t.close(link);
    let closed = next_event(&mut t);
    assert!(
        matches!(closed, TransportEvent::Closed { link: l, .. } if l == link),
        "{closed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_text_frame_that_is_not_utf8_is_a_protocol_error_and_closes_with_1007() {
    let server = start_server(None);
    let mut t = NativeTransport::default();
    let link = LinkId(90);
    open(&mut t, link, &server.url());
    t.send(link, "badutf8".into()).expect("send");
    let (error, closed) = failure(&mut t, link);
    match &error {
        TransportError::Protocol(why) => assert!(why.contains("UTF-8"), "{why}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(
        matches!(closed, TransportEvent::Closed { code: None, .. }),
        "{closed:?}"
    );
    assert_eq!(t.send(link, "late".into()), Err(TransportError::NotOpen));
    assert_eq!(t.poll(), None, "no text came out of the bad frame");
    // The server is told why: 1007, invalid frame payload data.
    assert!(matches!(server.next_seen(), Seen::Handshake { .. }));
    assert_eq!(server.next_seen(), Seen::Text("badutf8".into()));
    assert_eq!(server.next_seen(), Seen::Close(Some(1007)));
}

#[test]
fn a_fragmented_message_arrives_as_one_whole_text() {
    let server = start_server(None);
    let mut t = NativeTransport::default();
    let link = LinkId(91);
    open(&mut t, link, &server.url());
    t.send(link, "fragments".into()).expect("send");
    assert_eq!(text(&mut t, link), FRAGMENTED);
    // Nothing else came of the fragments (no partial text, no error), and the link
    // still works.
    t.send(link, "after".into()).expect("send");
    assert_eq!(text(&mut t, link), "echo:after");
    assert_eq!(t.poll(), None);
}
