//! Reliability gaps of the reference server, closed: a socket that never logs in,
//! fingerprints shared by two senders, and the order of the login and logout hooks
//! under racing logins. Real sockets on 127.0.0.1, bounded waits.
#![cfg(all(feature = "server", not(target_arch = "wasm32")))]

use std::time::Duration;

use crate::support::{Client, Event, Recorder, WAIT, config, logged_in, start};
use bevy_im::protocol::{Dialect, Frame};
use bevy_im::server::{AcceptAll, PushError, RejectReason, S2cQosConfig, ServerConfig};

fn v6() -> ServerConfig {
    config(Dialect::MobileImSdkV6)
}

/// The wiring over a socket, waiting on events; the exact deadline is checked on a
/// paused clock in `src/server/session/tests.rs` (`a_socket_that_never_logs_in_...`).
#[tokio::test]
async fn a_socket_that_never_logs_in_is_closed_at_the_login_deadline() {
    let login_timeout = Duration::from_millis(300);
    let mut c = v6();
    c.login_timeout = login_timeout;
    let server = start(c, AcceptAll).await;
    // Alice connects first, so her login deadline passes no later than the idle
    // socket's; she logs in in time.
    let mut alice = Client::connect(&server.url()).await;
    alice.login("alice").await;
    // Taken before the connect: the server's deadline runs from a later instant.
    let started = tokio::time::Instant::now();
    let mut idle = Client::connect(&server.url()).await;
    // Echo frames reset the read timeout, but not the login deadline.
    let closed = loop {
        idle.send(&Frame::echo("nobody", "ping")).await;
        match idle.next_event_within(Duration::from_millis(100)).await {
            Some(Event::Close(code, reason)) => break (code, reason),
            Some(Event::Text(_)) | None => {}
            Some(Event::Ended) => panic!("ended without a close frame"),
        }
        assert!(started.elapsed() < WAIT, "closed in time");
    };
    assert_eq!(closed, (1008, "login timeout".to_owned()));
    assert!(started.elapsed() >= login_timeout, "not early");
    assert_eq!(server.metrics().rejected(RejectReason::LoginTimeout), 1);
    // A socket that logged in in time is still served past its deadline.
    alice.barrier().await;
    assert!(server.is_online("alice"));
    server.shutdown().await;
    assert_eq!(
        server.metrics().rejected(RejectReason::LoginTimeout),
        1,
        "the idle socket only"
    );
}

#[tokio::test]
async fn two_senders_with_the_same_fingerprint_keep_their_own_pending_frames() {
    // The exact resend times are checked on a paused clock in
    // `src/server/session/tests.rs` (`two_senders_with_one_fingerprint_...`); this is
    // the wiring, waiting on events only. The resend is long against a loopback ACK.
    let mut c = v6();
    c.s2c_qos = S2cQosConfig {
        resend_after: Duration::from_secs(1),
        max_resends: 1,
        lost_after: Duration::from_secs(1),
    };
    // Bob's two pending frames fill his table: pushes show what is still pending.
    c.max_pending_s2c_per_user = 2;
    let hooks = Recorder::new();
    let server = start(c, hooks.clone()).await;
    let url = server.url();
    let mut alice = logged_in(&url, "alice").await;
    let mut eve = logged_in(&url, "eve").await;
    let mut bob = logged_in(&url, "bob").await;
    let fp = "same-fingerprint".to_owned();
    eve.send(&Frame::data(
        "eve",
        "bob",
        "from eve",
        true,
        Some(fp.clone()),
        0,
    ))
    .await;
    let from_eve = bob.recv().await;
    alice
        .send(&Frame::data(
            "alice",
            "bob",
            "from alice",
            true,
            Some(fp.clone()),
            0,
        ))
        .await;
    let from_alice = bob.recv().await;
    assert_eq!((from_eve.from_id(), from_alice.from_id()), ("eve", "alice"));
    // Bob ACKs alice's copy only: eve's is still pending and comes again.
    bob.send(&Frame::ack_of(&from_alice).unwrap()).await;
    let again = bob.recv().await;
    assert_eq!((again.from_id(), again.content()), ("eve", "from eve"));
    bob.send(&Frame::ack_of(&again).unwrap()).await;
    // Both ACKs handled, and nothing else was written to bob meanwhile.
    bob.barrier().await;
    // Nothing of bob's is pending now: two QoS pushes fit, a third does not.
    for _ in 0..2 {
        assert!(server.push("bob", "probe", true, 0).is_ok());
    }
    assert_eq!(
        server.push("bob", "probe", true, 0),
        Err(PushError::TooManyPending)
    );
    let _ = (&mut alice, &mut eve);
    server.shutdown().await;
    assert!(hooks.lost.lock().unwrap().is_empty(), "nothing lost");
    assert_eq!(server.metrics().qos_resends, 1, "eve's copy, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_login_hook_precedes_its_logout_hook_under_racing_logins() {
    // The first login's hook is held open while a second login of the same user kicks
    // it: the kick's logout must still reach the host after that login.
    let (open_gate, gate) = std::sync::mpsc::channel();
    let hooks = std::sync::Arc::new(Recorder {
        login_gate: std::sync::Mutex::new(Some(gate)),
        ..Recorder::default()
    });
    let server = start(v6(), hooks.clone()).await;
    let url = server.url();
    let mut first = Client::connect(&url).await;
    first.send(&crate::support::login("alice", 0)).await;
    crate::support::eventually("the first login's hook to start", || {
        hooks.login_gate.lock().unwrap().is_none()
    })
    .await;
    let mut second = Client::connect(&url).await;
    second.login("alice").await;
    open_gate.send(()).unwrap();
    crate::support::eventually("three hook calls", || hooks.events().len() >= 3).await;
    let calls: Vec<String> = hooks
        .events()
        .into_iter()
        .filter(|e| !e.starts_with("verify"))
        .collect();
    assert_eq!(
        calls,
        [
            "login alice",
            "logout alice Kicked(DuplicateLogin)",
            "login alice"
        ]
    );
    drop((first, second));
    server.shutdown().await;
}

#[tokio::test]
async fn slow_handshakes_are_bounded_others_wait_their_turn_and_logged_in_users_keep_being_served()
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let handshake_timeout = Duration::from_millis(800);
    let mut c = v6();
    c.max_handshakes = 2;
    c.handshake_timeout = handshake_timeout;
    let server = start(c, AcceptAll).await;
    let url = server.url();
    let addr = server.local_addr();
    let mut alice = logged_in(&url, "alice").await;
    // Two slowloris connections: an upgrade request, one byte at a time.
    let slow_since = tokio::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"G").await.unwrap();
        slow.push(tcp);
    }
    crate::support::eventually("both slow connections accepted", || {
        server.metrics().connections_open == 3
    })
    .await;
    // A third handshake waits for a slot: its complete upgrade request is not
    // answered while both slots are held.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    third.write_all(request.as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    // The slow ones hold their slots until at least `slow_since` plus the handshake
    // timeout, so no answer may come before then. The deadline wins a tie, so a slow
    // machine can only make this check weaker, never fail it.
    tokio::select! {
        biased;
        _ = tokio::time::sleep_until(slow_since + handshake_timeout) => {}
        r = third.read(&mut answer) => panic!("answered while both slots were held: {r:?}"),
    }
    // Alice, logged in, is served throughout.
    alice.send(&Frame::echo("alice", "still here")).await;
    assert_eq!(alice.recv().await.content(), "still here");
    // The slow ones are cut at the handshake timeout; the third gets a slot then and
    // is upgraded, and new users get in again.
    for tcp in &mut slow {
        let _ = tcp.write_all(b"E").await;
        let mut rest = Vec::new();
        let r = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "closed by the server within the timeout");
    }
    assert_eq!(server.metrics().rejected(RejectReason::HandshakeTimeout), 2);
    tokio::time::timeout(WAIT, third.read_exact(&mut answer))
        .await
        .expect("the waiting handshake is answered")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 101", "upgraded once a slot was free");
    assert_eq!(server.metrics().rejected(RejectReason::HandshakeLimit), 0);
    let mut bob = logged_in(&url, "bob").await;
    bob.send(&Frame::echo("bob", "in")).await;
    assert_eq!(bob.recv().await.content(), "in");
    server.shutdown().await;
}
