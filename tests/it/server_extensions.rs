//! Where the reference server differs from upstream on purpose (DESIGN.md §5–§6),
//! and the host program's API: each difference, hooks, push and kick, limits,
//! shutdown, metrics, TLS and the background runner.
#![cfg(feature = "server")]

use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    Client, Event, Recorder, config, eventually, eventually_within, logged_in, raw_exchange, start,
};
use bevy_im::protocol::{
    Dialect, ErrorResponse, Frame, KickoutInfo, LoginInfo, LoginResponse, decode_body,
};
use bevy_im::server::{
    AcceptAll, ERROR_INVALID_FRAME, ERROR_RATE_LIMITED, MAX_FINGERPRINT_BYTES, PushError,
    RateLimit, RejectReason, ServerConfig, TlsConfig, spawn_background,
};
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame as WsFrame, FrameHeader};

const BOUND: Duration = Duration::from_secs(20);

async fn bounded(f: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("the test finished in time");
}

fn v6() -> ServerConfig {
    config(Dialect::MobileImSdkV6)
}

#[tokio::test]
async fn from_is_overwritten_with_the_logged_in_user() {
    bounded(async {
        let hooks = Recorder::new();
        let h = start(v6(), hooks.clone()).await;
        let mut alice = logged_in(&h.url(), "alice").await;
        let mut bob = logged_in(&h.url(), "bob").await;

        let spoofed = Frame::data("mallory", "bob", "spoofed from", true, None, -1);
        alice.send(&spoofed).await;
        let got = bob.recv().await;
        assert_eq!(got.from_id(), "alice");
        assert_eq!((got.content(), &got.fp), ("spoofed from", &spoofed.fp));
        let ack = alice.recv().await;
        assert_eq!((ack.ty, ack.from_id(), ack.to_id()), (4, "bob", "alice"));

        let c2s = Frame::data("mallory", "0", "to server", false, None, 5);
        alice.send(&c2s).await;
        eventually("the C2S hook", || hooks.c2s.lock().unwrap().len() == 1).await;
        let seen = hooks.c2s.lock().unwrap()[0].clone();
        assert_eq!(
            (seen.from_id(), seen.content(), seen.typeu),
            ("alice", "to server", 5)
        );
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn c2s_dedup_is_per_user_and_every_copy_is_acked() {
    bounded(async {
        let hooks = Recorder::new();
        let h = start(v6(), hooks.clone()).await;
        let mut alice = logged_in(&h.url(), "alice").await;
        let mut bob = logged_in(&h.url(), "bob").await;
        let msg = Frame::data("alice", "0", "once", true, Some("same-fp".into()), 1);
        for _ in 0..3 {
            alice.send(&msg).await;
            let ack = alice.recv().await;
            assert_eq!((ack.ty, ack.content(), ack.from_id()), (4, "same-fp", "0"));
        }
        // Another user's frame with the same fingerprint is not a duplicate.
        bob.send(&Frame::data(
            "bob",
            "0",
            "mine",
            true,
            Some("same-fp".into()),
            1,
        ))
        .await;
        assert_eq!(bob.recv().await.content(), "same-fp");
        // Every copy was ACKed, and the hook runs before the ACK is written: what it
        // heard is final once the server has stopped.
        h.shutdown().await;
        let heard: Vec<(String, String)> = hooks
            .c2s
            .lock()
            .unwrap()
            .iter()
            .map(|f| (f.from_id().to_owned(), f.content().to_owned()))
            .collect();
        assert_eq!(
            heard,
            [("alice", "once"), ("bob", "mine")].map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert_eq!(h.metrics().c2s_duplicates, 2);
    })
    .await;
}

/// The wiring of `c2s_dedup_window` (the default is ten minutes). The window's exact
/// bounds, and its refresh by each copy, are checked on a paused clock in
/// `src/server/session/tests.rs` (`the_c2s_dedup_window_...`).
#[tokio::test]
async fn c2s_dedup_forgets_after_its_window() {
    bounded(async {
        let window = Duration::from_secs(1);
        let mut c = v6();
        c.c2s_dedup_window = window;
        let hooks = Recorder::new();
        let h = start(c, hooks.clone()).await;
        let mut alice = logged_in(&h.url(), "alice").await;
        let msg = Frame::data("alice", "0", "again", true, Some("fp-1".into()), 1);
        alice.send(&msg).await;
        assert_eq!(alice.recv().await.content(), "fp-1");
        // A copy at once (well within the window): a duplicate, ACKed again. This
        // copy refreshes the window.
        alice.send(&msg).await;
        assert_eq!(alice.recv().await.content(), "fp-1");
        let refreshed = Instant::now();
        assert_eq!(h.metrics().c2s_duplicates, 1);
        // A copy after the window (the sleep only lower-bounds the gap; a slow
        // machine makes it longer, which changes nothing): delivered again.
        tokio::time::sleep_until(refreshed + window + Duration::from_millis(200)).await;
        alice.send(&msg).await;
        assert_eq!(alice.recv().await.content(), "fp-1");
        h.shutdown().await;
        assert_eq!(hooks.c2s.lock().unwrap().len(), 2, "the first and the last");
        assert_eq!(h.metrics().c2s_duplicates, 1);
    })
    .await;
}

/// The wiring of `rate_limit` over a socket: refused frames come back in error
/// frames and the socket stays usable. The refill's timing is checked on a paused
/// clock in `src/server/session/tests.rs` (`the_rate_limit_...`).
#[tokio::test]
async fn rate_limit_answers_with_an_error_frame_and_keeps_the_socket() {
    bounded(async {
        let mut c = v6();
        // One token a second: the burst is read and refused long before a refill.
        c.rate_limit = Some(RateLimit {
            per_second: 1,
            burst: 5,
        });
        let h = start(c, AcceptAll).await;
        let mut client = Client::connect(&h.url()).await;
        let texts: Vec<String> = (0..10)
            .map(|i| Frame::echo("x", format!("echo {i}")).to_json())
            .collect();
        // All ten in one write.
        for t in &texts {
            client.ws.feed(Message::text(t.as_str())).await.unwrap();
        }
        client.ws.flush().await.unwrap();
        let mut echoes = 0;
        let mut limited = Vec::new();
        for _ in 0..10 {
            let f = client.recv().await;
            match f.ty {
                53 => echoes += 1,
                52 => {
                    let e: ErrorResponse = decode_body(f.data_content.as_deref()).unwrap();
                    assert_eq!(e.error_code, ERROR_RATE_LIMITED);
                    limited.push(e.error_msg);
                }
                other => panic!("unexpected type {other}"),
            }
        }
        assert_eq!(echoes, 5, "the burst passes");
        assert_eq!(
            limited,
            texts[5..].to_vec(),
            "each refused frame comes back"
        );
        assert_eq!(h.metrics().rejected(RejectReason::RateLimited), 5);
        // The bucket refills and the socket is still usable: ask until an echo comes
        // back (a refusal in between is answered too), within the test's bound.
        loop {
            client.send(&Frame::echo("x", "later")).await;
            let f = client.recv().await;
            if f.ty == 53 {
                assert_eq!(f.content(), "later");
                break;
            }
            assert_eq!(f.ty, 52, "a refusal or the echo: {f:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn connection_cap_refuses_before_the_upgrade() {
    bounded(async {
        let mut c = v6();
        c.max_connections = 2;
        let h = start(c, AcceptAll).await;
        let a = Client::connect(&h.url()).await;
        let _b = Client::connect(&h.url()).await;
        let refused = tokio_tungstenite::connect_async(h.url()).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
            other => panic!("expected 503, got {:?}", other.map(|_| ())),
        }
        assert_eq!(h.metrics().rejected(RejectReason::ConnectionLimit), 1);
        assert_eq!(h.metrics().connections_open, 2);
        a.close().await;
        eventually("a slot frees", || h.metrics().connections_open == 1).await;
        let _c = Client::connect(&h.url()).await;
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn pending_s2c_cap_sends_the_overflow_to_the_offline_hook() {
    bounded(async {
        let mut c = v6();
        c.max_pending_s2c_per_user = 2;
        let hooks = Recorder::new();
        let h = start(c, hooks.clone()).await;
        let mut alice = logged_in(&h.url(), "alice").await;
        let mut bob = logged_in(&h.url(), "bob").await;
        for i in 0..2 {
            let m = Frame::data("alice", "bob", format!("m{i}"), true, None, 0);
            alice.send(&m).await;
            assert_eq!(bob.recv().await.fp, m.fp);
            assert_eq!(alice.recv().await.content(), m.fp.as_deref().unwrap());
        }
        // Bob has ACKed nothing: the third is not forwarded. The offline hook hears
        // of it; it stores nothing, so the sender is told "receiver busy" (503) with
        // the frame, and no ACK: never silence.
        let third = Frame::data("alice", "bob", "m2", true, None, 0);
        alice.send(&third).await;
        eventually("the offline hook", || {
            hooks.offline.lock().unwrap().len() == 1
        })
        .await;
        assert_eq!(hooks.offline.lock().unwrap()[0].fp, third.fp);
        bob.expect_silence(Duration::from_millis(100)).await;
        let busy = alice.recv().await;
        assert_eq!(busy.ty, 52);
        let body: bevy_im::protocol::ErrorResponse =
            bevy_im::protocol::decode_body(busy.data_content.as_deref()).unwrap();
        assert_eq!(body.error_code, bevy_im::protocol::room_code::RECEIVER_BUSY);
        assert_eq!(Frame::decode(&body.error_msg).unwrap().fp, third.fp);
        alice.expect_silence(Duration::from_millis(10)).await;
        assert_eq!(
            h.handle_push_qos("bob"),
            Err(PushError::TooManyPending),
            "pushes hit the same cap"
        );
        // Non-QoS data is not capped.
        alice
            .send(&Frame::data("alice", "bob", "plain", false, None, 0))
            .await;
        assert_eq!(bob.recv().await.content(), "plain");
        assert_eq!(h.metrics().rejected(RejectReason::PendingS2cFull), 2);
        h.shutdown().await;
    })
    .await;
}

trait PushQos {
    fn handle_push_qos(&self, user: &str) -> Result<Option<String>, PushError>;
}

impl PushQos for bevy_im::server::ServerHandle {
    fn handle_push_qos(&self, user: &str) -> Result<Option<String>, PushError> {
        self.push(user, "from the server", true, 9)
    }
}

#[tokio::test]
async fn offline_hook_that_stores_gives_the_relay_ack() {
    bounded(async {
        let hooks = Arc::new(Recorder {
            store_offline: true,
            ..Recorder::default()
        });
        let h = start(config(Dialect::Seed), hooks.clone()).await;
        let mut alice = logged_in(&h.url(), "alice").await;
        let m = Frame::data("alice", "nobody", "later", true, None, 0);
        alice.send(&m).await;
        let ack = alice.recv().await;
        assert_eq!(
            (ack.ty, ack.from_id(), ack.to_id()),
            (54, "nobody", "alice")
        );
        assert_eq!(ack.content(), m.fp.as_deref().unwrap());
        // Without QoS there is nothing to ACK.
        alice
            .send(&Frame::data("alice", "nobody", "plain", false, None, 0))
            .await;
        alice.expect_silence(Duration::from_millis(100)).await;
        assert_eq!(hooks.offline.lock().unwrap().len(), 2);
        h.shutdown().await;
    })
    .await;
}

/// The wiring of `ServerHandle::push` over a socket, waiting on events only. The
/// exact resend and loss times, and that the loss is reported once, are checked on a
/// paused clock in `src/server/session/tests.rs` (`a_qos_push_is_resent_at_5_s_...`).
#[tokio::test]
async fn push_with_qos_is_resent_until_acked_and_reported_lost() {
    bounded(async {
        let mut c = v6();
        // Short enough to wait for; long against a loopback ACK.
        c.s2c_qos.resend_after = Duration::from_millis(400);
        c.s2c_qos.lost_after = Duration::from_millis(400);
        let hooks = Recorder::new();
        let h = start(c, hooks.clone()).await;
        let mut bob = logged_in(&h.url(), "bob").await;

        let fp = h.push("bob", "hello bob", true, 7).unwrap().unwrap();
        let got = bob.recv().await;
        assert_eq!(
            got.to_json(),
            format!(
                r#"{{"bridge":false,"type":2,"dataContent":"hello bob","from":"0","to":"bob","fp":"{fp}","QoS":true,"typeu":7,"sm":-1}}"#
            )
        );
        bob.send(&Frame::ack_of(&got).unwrap()).await;

        // The second push falls due after the first: had the ACK not cleared the
        // first, its resend would come before the second's, and its loss would be
        // the first reported.
        let lost_fp = h.push("bob", "never acked", true, 0).unwrap().unwrap();
        assert_eq!(bob.recv().await.fp.as_deref(), Some(lost_fp.as_str()));
        assert_eq!(bob.recv().await.fp.as_deref(), Some(lost_fp.as_str()), "resent");
        eventually("the loss", || !hooks.lost.lock().unwrap().is_empty()).await;
        {
            let lost = hooks.lost.lock().unwrap();
            assert_eq!(lost.len(), 1);
            assert_eq!(lost[0].0, "bob");
            assert_eq!(lost[0].1.fp.as_deref(), Some(lost_fp.as_str()));
        }
        // Given up: nothing more was written for either.
        bob.barrier().await;

        assert_eq!(h.push("bob", "plain", false, 0), Ok(None));
        assert_eq!(bob.recv().await.content(), "plain");
        assert_eq!(h.push("nobody", "x", true, 0), Err(PushError::NotOnline));
        let huge = "x".repeat(70_000);
        assert_eq!(h.push("bob", huge, false, 0), Err(PushError::TooLarge));
        h.shutdown().await;
        let m = h.metrics();
        assert_eq!((m.qos_resends, m.qos_lost), (1, 1));
        assert_eq!(hooks.lost.lock().unwrap().len(), 1, "reported once");
    })
    .await;
}

#[tokio::test]
async fn a_clients_ack_clears_only_its_own_pending_frames() {
    bounded(async {
        // The wiring over sockets; the same on a paused clock, with the resend's exact
        // time, is `src/server/session/tests.rs` (`another_users_ack_...`).
        let mut c = v6();
        c.s2c_qos.resend_after = Duration::from_secs(1);
        let h = start(c, AcceptAll).await;
        let mut bob = logged_in(&h.url(), "bob").await;
        let mut eve = logged_in(&h.url(), "eve").await;
        let fp = h.push("bob", "for bob", true, 0).unwrap().unwrap();
        assert_eq!(bob.recv().await.fp.as_deref(), Some(fp.as_str()));
        let mut forged = Frame::new(4, "eve", "0");
        forged.data_content = Some(fp.clone());
        eve.send(&forged).await;
        // The echo is answered after the forged ACK was handled.
        eve.send(&Frame::echo("eve", "after the ack")).await;
        assert_eq!(eve.recv().await.content(), "after the ack");
        // Eve's ACK does not stop bob's resend; bob's own ACK does.
        let resent = bob.recv().await;
        assert_eq!(resent.fp.as_deref(), Some(fp.as_str()));
        bob.send(&Frame::ack_of(&resent).unwrap()).await;
        bob.send(&Frame::echo("bob", "acked")).await;
        assert_eq!(bob.recv().await.content(), "acked");
        h.shutdown().await;
        let m = h.metrics();
        assert_eq!((m.qos_resends, m.qos_lost), (1, 0));
    })
    .await;
}

#[tokio::test]
async fn admin_kick_sends_code_2_then_closes() {
    bounded(async {
        let hooks = Recorder::new();
        let h = start(v6(), hooks.clone()).await;
        let mut bob = logged_in(&h.url(), "bob").await;
        assert_eq!(h.online_users(), vec!["bob".to_owned()]);
        assert_eq!(h.kick("bob", Some("cheating")), 1);
        let kick = bob.recv().await;
        assert_eq!((kick.ty, kick.to_id()), (54, "bob"));
        let info: KickoutInfo = decode_body(kick.data_content.as_deref()).unwrap();
        assert_eq!(info.code, 2);
        assert_eq!(info.reason.as_deref(), Some("cheating"));
        assert_eq!(bob.expect_close().await, (1000, "Bye".into()));
        eventually("bob offline", || h.online_users().is_empty()).await;
        assert!(
            hooks
                .events()
                .contains(&"logout bob Kicked(Admin)".to_owned())
        );
        assert_eq!(h.kick("bob", None), 0);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn login_hook_sees_token_extra_and_app_and_can_refuse() {
    bounded(async {
        let hooks = Arc::new(Recorder {
            refuse: Some("mallory".into()),
            ..Recorder::default()
        });
        let h = start(config(Dialect::Seed), hooks.clone()).await;
        let mut alice = Client::connect(&h.url()).await;
        alice
            .send(&Frame::login(&LoginInfo {
                login_user_id: "alice".into(),
                login_token: "secret".into(),
                extra: Some("hello-extra".into()),
                first_login_time: 0,
                app: Some("test".into()),
            }))
            .await;
        assert_eq!(alice.recv().await.ty, 50);
        let mut mallory = Client::connect(&h.url()).await;
        mallory.send(&crate::support::login("mallory", 0)).await;
        let reply = mallory.recv().await;
        assert_eq!(reply.to_id(), "-1");
        let body: LoginResponse = decode_body(reply.data_content.as_deref()).unwrap();
        assert_eq!((body.code, body.first_login_time), (1025, -1));
        assert_eq!(mallory.expect_close().await, (1000, "Bye".into()));
        let events = hooks.events();
        assert_eq!(
            events[..3],
            [
                r#"verify alice secret Some("hello-extra") Some("test")"#.to_owned(),
                "login alice".to_owned(),
                "verify mallory token None None".to_owned(),
            ]
        );
        assert_eq!(events.len(), 3, "a refused login is no login: {events:?}");
        assert_eq!(h.metrics().rejected(RejectReason::LoginRefused), 1);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn presence_hooks_pair_every_login_with_one_logout() {
    bounded(async {
        let hooks = Recorder::new();
        let mut c = v6();
        // Carol's silence ends in a read timeout; long enough that nobody else's
        // pauses on a slow machine do.
        c.read_timeout = Duration::from_secs(2);
        let h = start(c, hooks.clone()).await;
        let mut a1 = logged_in(&h.url(), "alice").await;
        let mut a2 = Client::connect(&h.url()).await;
        a2.login("alice").await;
        assert_eq!(a1.recv().await.ty, 54, "the older socket is kicked");
        a1.expect_close().await;
        a2.send(&Frame::logout("alice")).await;
        assert_eq!(a2.expect_close().await, (1000, "Bye".into()));
        let _silent = logged_in(&h.url(), "carol").await;
        let presence = || -> Vec<String> {
            hooks
                .events()
                .into_iter()
                .filter(|e| !e.starts_with("verify"))
                .collect()
        };
        eventually_within("carol's logout", Duration::from_secs(10), || {
            presence().len() >= 6
        })
        .await;
        // After the shutdown nothing more can be reported: the list is final.
        h.shutdown().await;
        assert_eq!(
            presence(),
            [
                "login alice",
                "logout alice Kicked(DuplicateLogin)",
                "login alice",
                "logout alice Logout",
                "login carol",
                "logout carol TimedOut",
            ]
            .map(str::to_owned)
        );
    })
    .await;
}

#[tokio::test]
async fn a_fragmented_message_is_reassembled() {
    bounded(async {
        let h = start(v6(), AcceptAll).await;
        let mut c = logged_in(&h.url(), "ufrag").await;
        let text = Frame::echo("ufrag", "fragmented").to_json();
        let (a, b) = text.split_at(text.len() / 2);
        let first = FrameHeader {
            is_final: false,
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        let second = FrameHeader {
            opcode: OpCode::Data(Data::Continue),
            ..FrameHeader::default()
        };
        c.ws.send(Message::Frame(WsFrame::from_payload(
            first,
            a.as_bytes().to_vec().into(),
        )))
        .await
        .unwrap();
        c.ws.send(Message::Frame(WsFrame::from_payload(
            second,
            b.as_bytes().to_vec().into(),
        )))
        .await
        .unwrap();
        let echo = c.recv().await;
        assert_eq!((echo.ty, echo.content()), (53, "fragmented"));
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn oversize_frames_close_with_1009_even_beyond_the_read_buffer() {
    bounded(async {
        let mut c = v6();
        c.max_frame_bytes = 1000;
        let h = start(c, AcceptAll).await;
        let mut just = Client::connect(&h.url()).await;
        just.send(&Frame::echo("x", "y".repeat(900))).await;
        assert_eq!(just.recv().await.ty, 53);
        let mut over = Client::connect(&h.url()).await;
        over.send_text(&"z".repeat(1001)).await;
        assert_eq!(
            over.expect_close().await,
            (1009, "Max frame length of 1000 has been exceeded.".into())
        );
        let mut way_over = Client::connect(&h.url()).await;
        let _ = way_over.ws.send(Message::text("z".repeat(50_000))).await;
        match way_over.next_event().await {
            Event::Close(code, _) => assert_eq!(code, 1009),
            Event::Ended => {}
            other => panic!("expected a close, got {other:?}"),
        }
        assert_eq!(h.metrics().rejected(RejectReason::FrameTooLarge), 2);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn handshake_timeout_drops_a_silent_tcp_connection() {
    bounded(async {
        let mut c = v6();
        c.handshake_timeout = Duration::from_millis(200);
        let h = start(c, AcceptAll).await;
        let t = Instant::now();
        let (got, closed) = raw_exchange(
            h.local_addr(),
            "GET /websocket HTTP/1.1\r\n",
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(got, "");
        assert!(closed);
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(h.metrics().rejected(RejectReason::HandshakeTimeout), 1);
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_closes_every_session_and_stops_accepting() {
    bounded(async {
        let hooks = Recorder::new();
        let h = start(v6(), hooks.clone()).await;
        let mut alice = logged_in(&h.url(), "alice").await;
        let mut anon = Client::connect(&h.url()).await;
        let t = Instant::now();
        let (closes, ()) = tokio::join!(
            async { (alice.expect_close().await, anon.expect_close().await) },
            h.shutdown()
        );
        assert_eq!(closes.0.0, 1001);
        assert_eq!(closes.1.0, 1001);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(
            tokio::net::TcpStream::connect(h.local_addr())
                .await
                .is_err()
        );
        assert!(hooks.events().contains(&"logout alice Shutdown".to_owned()));
        assert_eq!(h.push("alice", "x", false, 0), Err(PushError::ShuttingDown));
        assert_eq!(h.metrics().connections_open, 0);
    })
    .await;
}

#[tokio::test]
async fn shutdown_is_bounded_when_clients_do_not_answer_the_close() {
    bounded(async {
        let mut c = v6();
        c.close_linger = Duration::from_millis(200);
        c.shutdown_timeout = Duration::from_millis(300);
        let h = start(c, AcceptAll).await;
        // A raw socket that upgrades and then never reads or answers.
        let mut tcp = tokio::net::TcpStream::connect(h.local_addr()).await.unwrap();
        tcp.write_all(
            b"GET /websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 256];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
        let t = Instant::now();
        h.shutdown().await;
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    })
    .await;
}

#[tokio::test]
async fn metrics_count_frames_and_serve_prometheus_text() {
    bounded(async {
        let mut c = v6();
        c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        let h = start(c, AcceptAll).await;
        let mut alice = logged_in(&h.url(), "alice").await;
        let mut bob = logged_in(&h.url(), "bob").await;
        alice.send(&Frame::keepalive("alice")).await;
        assert_eq!(alice.recv().await.ty, 51);
        alice
            .send(&Frame::data("alice", "bob", "hi", true, None, 0))
            .await;
        bob.recv().await;
        alice.recv().await;
        alice.send_text(r#"{"type":99}"#).await;
        alice.send(&Frame::echo("alice", "e")).await;
        alice.recv().await;
        let m = h.metrics();
        assert_eq!(m.connections_open, 2);
        assert_eq!(m.users_online, 2);
        assert_eq!(m.frames_in("login"), 2);
        assert_eq!(m.frames_in("keepalive"), 1);
        assert_eq!(m.frames_in("data"), 1);
        assert_eq!(m.frames_in("other"), 1);
        assert_eq!(m.frames_out("login_response"), 2);
        assert_eq!(m.frames_out("keepalive_response"), 1);
        assert_eq!(m.frames_out("data"), 1);
        assert_eq!(m.frames_out("ack"), 1);
        assert_eq!(m.frames_out("echo_response"), 1);
        assert_eq!(m.rejected(RejectReason::UnknownType), 1);

        let addr = h.metrics_addr().unwrap();
        let (text, _) = raw_exchange(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(text.contains("\nim_users_online 2\n"), "{text}");
        assert!(
            text.contains("\nim_frames_in_total{kind=\"login\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("\nim_rejected_total{reason=\"unknown_type\"} 1\n"),
            "{text}"
        );
        let (text, _) = raw_exchange(addr, "GET / HTTP/1.1\r\n\r\n", Duration::from_secs(2)).await;
        assert!(text.starts_with("HTTP/1.1 404"), "{text}");
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn wss_with_a_self_signed_certificate() {
    bounded(async {
        let cert = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .unwrap();
        let mut c = v6();
        c.tls = Some(TlsConfig::from_pem(
            cert.cert.pem(),
            cert.signing_key.serialize_pem(),
        ));
        let h = start(c, AcceptAll).await;
        assert!(h.url().starts_with("wss://127.0.0.1:"), "{}", h.url());

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            h.url(),
            None,
            false,
            Some(tokio_tungstenite::Connector::Rustls(Arc::new(
                client_config,
            ))),
        )
        .await
        .expect("wss connect");
        let mut client = Client { ws };
        client.login("alice").await;
        client.send(&Frame::echo("alice", "over tls")).await;
        assert_eq!(client.recv().await.content(), "over tls");

        // A plain client cannot talk to it.
        assert!(
            tokio_tungstenite::connect_async(h.url().replace("wss://", "ws://"))
                .await
                .is_err()
        );
        h.shutdown().await;
    })
    .await;
}

#[test]
fn bad_tls_material_fails_at_bind() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = v6();
    c.tls = Some(TlsConfig::from_pem("not a cert", "not a key"));
    let err = rt
        .block_on(bevy_im::server::Server::bind(c, AcceptAll))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let mut c = v6();
    c.tls = Some(TlsConfig::from_pem_files(
        "/nonexistent/cert.pem",
        "/nonexistent/key.pem",
    ));
    assert!(
        rt.block_on(bevy_im::server::Server::bind(c, AcceptAll))
            .is_err()
    );
}

#[test]
fn background_server_serves_and_stops_on_drop() {
    let server = spawn_background(v6(), AcceptAll).unwrap();
    let url = server.url();
    assert_eq!(url, format!("ws://{}/websocket", server.local_addr()));
    let handle = server.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(BOUND, async {
            let mut c = logged_in(&url, "bot").await;
            assert_eq!(handle.online_users(), vec!["bot".to_owned()]);
            assert!(handle.push("bot", "hi", false, 0).is_ok());
            assert_eq!(c.recv().await.content(), "hi");
        })
        .await
    })
    .unwrap();
    let addr = server.local_addr();
    let t = std::time::Instant::now();
    drop(server);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener is gone"
    );
    // A port in use is an error, not a panic or a hang.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = v6();
    c.listen = taken.local_addr().unwrap();
    assert!(spawn_background(c, AcceptAll).is_err());
}

#[tokio::test]
async fn nobody_logs_in_as_the_server() {
    bounded(async {
        let h = start(v6(), AcceptAll).await;
        let mut c = Client::connect(&h.url()).await;
        c.send(&crate::support::login("0", 0)).await;
        // A failed login reply (code 4, to "-1"), then the close.
        assert_eq!(
            c.recv_text().await,
            r#"{"bridge":false,"type":50,"dataContent":"{\"code\":4,\"firstLoginTime\":-1}","from":"0","to":"-1","QoS":false,"typeu":-1,"sm":-1}"#
        );
        assert_eq!(c.expect_close().await, (1000, "Bye".into()));
        assert_eq!(h.metrics().rejected(RejectReason::BadLogin), 1);
        assert!(h.online_users().is_empty());
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped() {
    bounded(async {
        let mut c = v6();
        c.read_timeout = Duration::from_millis(500);
        let hooks = Recorder::new();
        let h = start(c, hooks.clone()).await;
        // Logged in, then never polled again: nothing it is sent gets read.
        let _stalled = logged_in(&h.url(), "slow").await;
        let chunk = "s".repeat(60_000);
        for _ in 0..400 {
            if h.push("slow", chunk.clone(), false, 0).is_err() {
                break;
            }
        }
        eventually("the write timeout", || {
            h.metrics().rejected(RejectReason::WriteTimeout) == 1
        })
        .await;
        eventually("slow offline", || !h.is_online("slow")).await;
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn frames_the_server_will_not_pass_on_get_an_error_frame() {
    bounded(async {
        let h = start(v6(), AcceptAll).await;
        let mut alice = logged_in(&h.url(), "alice").await;
        let mut bob = logged_in(&h.url(), "bob").await;

        // A fingerprint far longer than a UUID would bloat the dedup window and the
        // pending table: refused, nothing forwarded, no ACK.
        let long_fp = "f".repeat(MAX_FINGERPRINT_BYTES + 1);
        alice
            .send(&Frame::data("alice", "bob", "x", true, Some(long_fp), 0))
            .await;
        let e = alice.recv().await;
        assert_eq!(e.ty, 52);
        let body: ErrorResponse = decode_body(e.data_content.as_deref()).unwrap();
        assert_eq!(body.error_code, ERROR_INVALID_FRAME);

        // A frame that fits only because it left out `from` and the other fields
        // would exceed the limit once the server writes them: refused, not forwarded.
        let bare = r#"{"type":2,"to":"bob","dataContent":""}"#;
        let room = 65_536 - bare.len();
        let big = format!(
            r#"{{"type":2,"to":"bob","dataContent":"{}"}}"#,
            "y".repeat(room)
        );
        assert_eq!(big.len(), 65_536);
        alice.send_text(&big).await;
        let e = alice.recv().await;
        let body: ErrorResponse = decode_body(e.data_content.as_deref()).unwrap();
        assert_eq!(body.error_code, ERROR_INVALID_FRAME);
        bob.expect_silence(Duration::from_millis(200)).await;
        assert_eq!(h.metrics().rejected(RejectReason::FrameTooLarge), 1);

        // Both sockets still work.
        alice
            .send(&Frame::data("alice", "bob", "fine", false, None, 0))
            .await;
        assert_eq!(bob.recv().await.content(), "fine");
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn websocket_protocol_violations_are_counted_and_close_the_socket() {
    bounded(async {
        let hooks = Recorder::new();
        let h = start(v6(), hooks.clone()).await;

        // A text frame whose payload is not UTF-8 (tungstenite masks it as a client).
        let mut bad_text = logged_in(&h.url(), "ubadtext").await;
        let frame = WsFrame::message(vec![b'{', 0xC3, 0x28], OpCode::Data(Data::Text), true);
        bad_text.ws.send(Message::Frame(frame)).await.unwrap();
        assert_eq!(
            bad_text.expect_close().await,
            (1007, "text is not UTF-8".into())
        );
        assert_eq!(h.metrics().rejected(RejectReason::ProtocolViolation), 1);

        // Bad UTF-8 split across fragments: the first is fine, the second breaks it.
        let mut bad_frag = logged_in(&h.url(), "ubadfrag").await;
        let first = WsFrame::message(b"{\"ty".to_vec(), OpCode::Data(Data::Text), false);
        let second = WsFrame::message(vec![0xE2, 0x28, b'}'], OpCode::Data(Data::Continue), true);
        bad_frag.ws.send(Message::Frame(first)).await.unwrap();
        bad_frag.ws.send(Message::Frame(second)).await.unwrap();
        assert_eq!(
            bad_frag.expect_close().await,
            (1007, "text is not UTF-8".into())
        );
        assert_eq!(h.metrics().rejected(RejectReason::ProtocolViolation), 2);

        // An unmasked frame from a client, written by hand under the WebSocket layer.
        let mut unmasked = logged_in(&h.url(), "uunmasked").await;
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = unmasked.ws.get_mut() else {
            panic!("a plain ws:// socket");
        };
        let echo = Frame::echo("uunmasked", "e").to_json();
        let mut raw = vec![0x81, u8::try_from(echo.len()).unwrap()];
        raw.extend_from_slice(echo.as_bytes());
        tcp.write_all(&raw).await.unwrap();
        assert_eq!(
            unmasked.expect_close().await,
            (1002, "protocol error".into())
        );
        assert_eq!(h.metrics().rejected(RejectReason::ProtocolViolation), 3);

        // Each of them is logged out; the server goes on serving.
        for user in ["ubadtext", "ubadfrag", "uunmasked"] {
            eventually(user, || !h.is_online(user)).await;
        }
        let logouts = hooks
            .events()
            .iter()
            .filter(|e| e.starts_with("logout "))
            .count();
        assert_eq!(logouts, 3, "{:?}", hooks.events());
        let mut fine = logged_in(&h.url(), "ufine").await;
        fine.send(&Frame::echo("ufine", "still here")).await;
        assert_eq!(fine.recv().await.content(), "still here");
        h.shutdown().await;
    })
    .await;
}

/// A frame handed to a session that is about to close is still written, before the
/// kickout and the close (`flush_queued` after `unroute`): its sender holds an OK for
/// it. The kick and the push are made in one go on this single-threaded runtime, so
/// bob's task finds them queued in this order: the kick, then the frame routed to
/// him while he was still online.
#[tokio::test]
async fn a_frame_queued_behind_a_kick_is_written_before_the_kickout() {
    bounded(async {
        let hooks = Recorder::new();
        let h = start(v6(), hooks.clone()).await;
        let mut bob = logged_in(&h.url(), "bob").await;
        assert_eq!(h.kick("bob", Some("moved")), 1);
        let fp = h
            .push("bob", "queued behind the kick", true, 0)
            .expect("bob is still routed to")
            .expect("a QoS push has a fingerprint");
        let got = bob.recv().await;
        assert_eq!(
            (got.ty, got.content(), got.fp.as_deref()),
            (2, "queued behind the kick", Some(fp.as_str())),
            "the queued frame comes first"
        );
        let kick = bob.recv().await;
        assert_eq!((kick.ty, kick.to_id()), (54, "bob"));
        let info: KickoutInfo = decode_body(kick.data_content.as_deref()).unwrap();
        assert_eq!((info.code, info.reason.as_deref()), (2, Some("moved")));
        assert_eq!(bob.expect_close().await, (1000, "Bye".into()));
        h.shutdown().await;
        assert_eq!(
            hooks.events().last().map(String::as_str),
            Some("logout bob Kicked(Admin)")
        );
    })
    .await;
}

/// Upstream holds a socket that upgraded on a wrong path for as long as bytes keep
/// trickling in; ours gives up after four read timeouts (`hold_silently`).
#[tokio::test]
async fn a_wrong_path_socket_that_keeps_trickling_is_dropped_after_four_read_timeouts() {
    bounded(async {
        let read_timeout = Duration::from_millis(400);
        let mut c = v6();
        c.read_timeout = read_timeout;
        let h = start(c, AcceptAll).await;
        let mut tcp = tokio::net::TcpStream::connect(h.local_addr()).await.unwrap();
        let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
        let request = format!("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}\r\n");
        let started = Instant::now();
        tcp.write_all(request.as_bytes()).await.unwrap();
        // A byte every 50 ms, an eighth of the read timeout, until the server closes;
        // without the cap it would never, and the test gives up after 5 s.
        let give_up = started + Duration::from_secs(5);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut buf = [0u8; 64];
        let mut trickled = 0;
        let closed_at = loop {
            tokio::select! {
                r = tcp.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break Instant::now(),
                    Ok(n) => panic!("a wrong path gets no answer: {:?}", &buf[..n]),
                },
                _ = tick.tick() => {
                    if tcp.write_all(b"x").await.is_err() {
                        break Instant::now();
                    }
                    trickled += 1;
                }
                _ = tokio::time::sleep_until(give_up) => {
                    panic!("still open after {trickled} bytes");
                }
            }
        };
        let held = closed_at - started;
        // The hold starts after the request was written, so four read timeouts is a
        // strict lower bound; the upper one is a liveness bound.
        assert!(
            held >= read_timeout * 4,
            "dropped after {held:?}: the trickle did not keep it"
        );
        assert!(
            held <= read_timeout * 4 + Duration::from_secs(1),
            "held for {held:?}"
        );
        assert!(trickled >= 20, "{trickled} bytes");
        assert_eq!(h.metrics().rejected(RejectReason::WrongPath), 1);
        h.shutdown().await;
    })
    .await;
}
