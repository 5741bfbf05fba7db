//! The `im-server` binary: it starts from its command line, serves, exposes metrics,
//! and shuts down cleanly on SIGTERM.
#![cfg(all(unix, feature = "server"))]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{logged_in, raw_exchange};
use bevy_im::protocol::Frame;

#[test]
fn im_server_serves_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--dialect",
            "mobileimsdk-v6",
            "--sense-mode",
            "3s",
            "--log-level",
            "info",
            "--store",
            "memory",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start im-server");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut url = None;
    let mut metrics = None;
    while url.is_none() || metrics.is_none() {
        let line = lines.next().expect("a log line").unwrap();
        if let Some(i) = line.find("ws://") {
            url = Some(line[i..].split_whitespace().next().unwrap().to_owned());
        }
        if let Some(i) = line.find("http://") {
            let addr = line[i + 7..].trim_end_matches("/metrics").to_owned();
            metrics = Some(addr.parse::<std::net::SocketAddr>().unwrap());
        }
    }
    let url = url.unwrap();
    assert!(url.ends_with("/websocket"), "{url}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut alice = logged_in(&url, "alice").await;
            let mut bob = logged_in(&url, "bob").await;
            let m = Frame::data("alice", "bob", "hi", true, None, 0);
            alice.send(&m).await;
            assert_eq!(bob.recv().await.content(), "hi");
            let ack = alice.recv().await;
            assert_eq!(ack.ty, 4, "the v6 dialect was chosen on the command line");
            let (text, _) = raw_exchange(
                metrics.unwrap(),
                "GET /metrics HTTP/1.1\r\n\r\n",
                Duration::from_secs(2),
            )
            .await;
            assert!(text.contains("\nim_users_online 2\n"), "{text}");
        })
        .await
        .expect("in time");
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("im-server did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
}

#[test]
fn im_server_rejects_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .args(["--sense-mode", "4s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown sense mode"));
    let out = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .args(["--dialect", "v7"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dialect"));
}

/// Starts `im-server` on `store` and returns the child and its WebSocket URL.
fn start_on_store(store: &std::path::Path) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .args(["--listen", "127.0.0.1:0", "--dialect", "mobileimsdk-v6"])
        .arg("--store")
        .arg(store)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start im-server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Read the log on a thread, so a server that never logs its URL fails in time.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("ws://") {
                let _ = tx.send(line[i..].split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("im-server logs its URL");
    (child, url)
}

#[test]
fn what_was_acked_as_stored_survives_kill_9_of_the_binary() {
    use bevy_im::protocol::{RoomOp, RoomReply, RoomRequest, decode_body};
    let dir = tempfile::Builder::new()
        .prefix("bevy_im-kill9-")
        .tempdir()
        .expect("a temporary folder");
    let store = dir.path().join("im.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let (mut child, url) = start_on_store(&store);
    let (offline_fps, room_text) = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut alice = logged_in(&url, "alice").await;
            let mut fps = Vec::new();
            for i in 0..20 {
                let m = Frame::data("alice", "bob", format!("offline {i}"), true, None, 0);
                alice.send(&m).await;
                let ack = alice.recv().await;
                assert!(ack.stored, "ACKed as stored: {ack:?}");
                fps.push(m.fp.unwrap());
            }
            let join = RoomRequest::new(1, RoomOp::Join).room("lobby");
            alice.send(&Frame::room_request("alice", &join)).await;
            assert_eq!(alice.recv().await.ty, 150);
            alice
                .send(&Frame::data(
                    "alice",
                    "#lobby",
                    "in the room",
                    true,
                    None,
                    0,
                ))
                .await;
            assert_eq!(alice.recv().await.mid, Some(1));
            (fps, "in the room")
        })
        .await
        .expect("in time")
    });
    // No shutdown: the process is killed outright.
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let (mut child, url) = start_on_store(&store);
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut bob = logged_in(&url, "bob").await;
            let mut got = Vec::new();
            for _ in 0..offline_fps.len() {
                let m = bob.recv().await;
                bob.send(&Frame::ack_of(&m).unwrap()).await;
                got.push(m.fp.unwrap());
            }
            assert_eq!(got, offline_fps, "every stored message, in order");
            let join = RoomRequest::new(1, RoomOp::Join).room("lobby");
            bob.send(&Frame::room_request("bob", &join)).await;
            let reply: RoomReply = decode_body(bob.recv().await.data_content.as_deref()).unwrap();
            assert_eq!(reply.messages.len(), 1);
            assert_eq!(reply.messages[0].content, room_text);
        })
        .await
        .expect("in time")
    });
    child.kill().unwrap();
    child.wait().unwrap();
}
