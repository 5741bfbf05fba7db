//! The reference server on odd input from real sockets (issue 16): values of the
//! wrong JSON type are coerced as upstream coerces them, lone UTF-16 surrogate escapes
//! are read as U+FFFD, and what cannot be read is answered before the close.
#![cfg(feature = "server")]

use std::time::Duration;

use crate::support::{Client, Recorder, config, eventually, logged_in, start};
use bevy_im::protocol::{Dialect, ErrorResponse, Frame, LoginResponse, decode_body};
use bevy_im::server::{ERROR_INVALID_FRAME, LogoutReason, RejectReason, ServerConfig};

const BOUND: Duration = Duration::from_secs(20);

async fn bounded(f: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("the test finished in time");
}

fn v6() -> ServerConfig {
    config(Dialect::MobileImSdkV6)
}

/// A login frame (type 0) carrying `body` as its `dataContent`, the frame's own
/// numbers given as strings too.
fn login_text(body: &str) -> String {
    serde_json::json!({
        "bridge": false, "type": "0", "dataContent": body,
        "from": "web", "to": "0", "QoS": "false", "typeu": "-1", "sm": "-1",
    })
    .to_string()
}

/// The failed login reply the server gives a login it cannot read.
const LOGIN_REFUSED_4: &str = r#"{"bridge":false,"type":50,"dataContent":"{\"code\":4,\"firstLoginTime\":-1}","from":"0","to":"-1","QoS":false,"typeu":-1,"sm":-1}"#;

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(d.as_millis()).unwrap()
}

#[tokio::test]
async fn logins_with_numbers_for_strings_and_strings_for_numbers_log_in() {
    bounded(async {
        let hooks = Recorder::new();
        let h = start(v6(), hooks.clone()).await;
        let before = now_ms();
        let cases = [
            (
                r#"{"loginUserId":12345,"loginToken":"t","firstLoginTime":0}"#,
                "12345",
                None,
            ),
            (
                r#"{"loginUserId":"u3","loginToken":"t","firstLoginTime":"0"}"#,
                "u3",
                None,
            ),
            (
                r#"{"loginUserId":"u4","loginToken":"t","firstLoginTime":"1700000000000"}"#,
                "u4",
                Some(1_700_000_000_000),
            ),
            (
                r#"{"loginUserId":"u5","loginToken":777,"extra":1.5,"app":true,"firstLoginTime":null}"#,
                "u5",
                None,
            ),
        ];
        let mut clients = Vec::new();
        for (body, user, time) in cases {
            let mut c = Client::connect(&h.url()).await;
            c.send_text(&login_text(body)).await;
            let reply = c.recv().await;
            assert_eq!((reply.ty, reply.from_id(), reply.to_id()), (50, "0", user));
            let r: LoginResponse = decode_body(reply.data_content.as_deref()).unwrap();
            assert_eq!(r.code, 0, "{body}");
            match time {
                // A re-login's time is given back.
                Some(t) => assert_eq!(r.first_login_time, t),
                // A first login gets the server's clock.
                None => assert!(
                    (before..=now_ms()).contains(&r.first_login_time),
                    "{body}: {}",
                    r.first_login_time
                ),
            }
            clients.push(c);
        }
        let mut online = h.online_users();
        online.sort();
        assert_eq!(online, ["12345", "u3", "u4", "u5"]);
        let events = hooks.events();
        assert!(events.contains(&"verify 12345 t None None".to_owned()));
        assert!(events.contains(&r#"verify u5 777 Some("1.5") Some("true")"#.to_owned()));
        assert_eq!(h.metrics().logins_ok, 4);
        assert_eq!(h.metrics().rejected(RejectReason::BadLogin), 0);

        // The logins work: a message between two of them, ids as numbers.
        let (first, rest) = clients.split_at_mut(1);
        first[0]
            .send_text(r#"{"type":2,"dataContent":"hi","from":12345,"to":"u3","QoS":false,"typeu":1,"sm":-1}"#)
            .await;
        let got = rest[0].recv().await;
        assert_eq!((got.from_id(), got.content()), ("12345", "hi"));
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_login_that_cannot_be_read_gets_code_4_then_a_close() {
    bounded(async {
        let hooks = Recorder::new();
        let h = start(v6(), hooks.clone()).await;
        let bad = [
            login_text(r#"{"loginUserId":"u6","loginToken":"t","firstLoginTime":"soon"}"#),
            login_text(r#"{"loginUserId":[1],"loginToken":"t","firstLoginTime":0}"#),
            login_text(r#"{"loginUserId":"u7","loginToken":{},"firstLoginTime":0}"#),
            login_text(r#"{"loginUserId":"u8","firstLoginTime":1.5}"#),
            login_text(r#"{"loginToken":"t","firstLoginTime":0}"#),
            login_text(r#"{"loginUserId":null,"loginToken":"t"}"#),
            login_text(r#"{"loginUserId":"","loginToken":"t"}"#),
            login_text(r#"{"loginUserId":0,"loginToken":"t"}"#),
            login_text("not json"),
            r#"{"type":0,"from":"nobody"}"#.to_owned(),
        ];
        for text in &bad {
            let mut c = Client::connect(&h.url()).await;
            c.send_text(text).await;
            assert_eq!(c.recv_text().await, LOGIN_REFUSED_4, "{text}");
            assert_eq!(c.expect_close().await, (1000, "Bye".into()), "{text}");
        }
        assert_eq!(
            h.metrics().rejected(RejectReason::BadLogin),
            bad.len() as u64
        );
        assert!(h.online_users().is_empty());
        assert_eq!(hooks.events(), Vec::<String>::new(), "no hook was asked");

        // A logged-in user who sends an unreadable login is answered the same way.
        let mut u = logged_in(&h.url(), "u9").await;
        u.send_text(&bad[0]).await;
        assert_eq!(u.recv_text().await, LOGIN_REFUSED_4);
        assert_eq!(u.expect_close().await, (1000, "Bye".into()));
        eventually("u9 offline", || !h.is_online("u9")).await;
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_text_that_is_not_a_frame_gets_an_error_frame_then_a_close() {
    bounded(async {
        let hooks = Recorder::new();
        let h = start(v6(), hooks.clone()).await;
        let cases = [
            ("garbage{", "bad frame: not JSON: "),
            ("null", "bad frame: expected a JSON object, found null"),
            (
                "[1,2,3]",
                "bad frame: expected a JSON object, found an array",
            ),
            (
                r#"{"type":"five"}"#,
                r#"bad frame: field `type`: expected an integer, found "five""#,
            ),
            (
                r#"{"type":2,"to":"u2","from":[1]}"#,
                "bad frame: field `from`: expected a string, found [1]",
            ),
            (
                r#"{"type":2,"to":"u2","QoS":"yes"}"#,
                r#"bad frame: field `QoS`: expected a boolean, found "yes""#,
            ),
        ];
        for logged in [false, true] {
            for (text, says) in cases {
                let mut c = if logged {
                    logged_in(&h.url(), "u1").await
                } else {
                    Client::connect(&h.url()).await
                };
                c.send_text(text).await;
                let e = c.recv().await;
                assert_eq!((e.ty, e.from_id(), e.to_id()), (52, "0", "-1"), "{text}");
                let body: ErrorResponse = decode_body(e.data_content.as_deref()).unwrap();
                assert_eq!(body.error_code, ERROR_INVALID_FRAME, "{text}");
                if says.ends_with(": ") {
                    // The parser's own words follow.
                    assert!(
                        body.error_msg.starts_with(says) && body.error_msg.len() > says.len(),
                        "{text}: {:?}",
                        body.error_msg
                    );
                } else {
                    assert_eq!(body.error_msg, says, "{text}");
                }
                assert_eq!(c.expect_close().await, (1000, "Bye".into()), "{text}");
                if logged {
                    eventually("u1 offline", || !h.is_online("u1")).await;
                }
            }
        }
        assert_eq!(
            h.metrics().rejected(RejectReason::BadFrame),
            2 * cases.len() as u64
        );
        let logouts = hooks
            .events()
            .iter()
            .filter(|e| **e == format!("logout u1 {:?}", LogoutReason::Closed))
            .count();
        assert_eq!(logouts, cases.len());
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_message_with_lone_surrogates_is_relayed_with_replacements_and_acked() {
    bounded(async {
        let hooks = Recorder::new();
        let h = start(v6(), hooks.clone()).await;
        let mut u1 = logged_in(&h.url(), "u1").await;
        let mut u2 = logged_in(&h.url(), "u2").await;
        let cases = [
            (r"half \ud83d here", "half \u{FFFD} here"),
            (r"low \udc00 alone", "low \u{FFFD} alone"),
            (r"\ud83d\u0041 then A", "\u{FFFD}A then A"),
            (r"\ud83d\ud83d\ude00 one pair", "\u{FFFD}😀 one pair"),
            (r"\\ud83d is text", r"\ud83d is text"),
        ];
        for (i, (wire, content)) in cases.into_iter().enumerate() {
            let fp = format!("00000000-0000-4000-8000-00000000000{i}");
            u1.send_text(&format!(
                r#"{{"bridge":false,"type":2,"dataContent":"{wire}","from":"u1","to":"u2","fp":"{fp}","QoS":true,"typeu":0,"sm":-1}}"#
            ))
            .await;
            // Relayed as valid Unicode, the replacement character written as itself.
            let expected = Frame::data("u1", "u2", content, true, Some(fp.clone()), 0);
            assert_eq!(u2.recv_text().await, expected.to_json(), "{wire}");
            // Relay ACK to the sender.
            let ack = u1.recv().await;
            assert_eq!(
                (ack.ty, ack.from_id(), ack.to_id(), ack.content()),
                (4, "u2", "u1", fp.as_str()),
                "{wire}"
            );
            u2.send(&Frame::ack_of(&expected).unwrap()).await;
        }

        // To the server too, and in the login body inside a frame's string.
        u1.send_text(r#"{"type":2,"dataContent":"to \udfff server","from":"u1","to":"0","fp":"fp-c2s","QoS":true}"#)
            .await;
        let ack = u1.recv().await;
        assert_eq!((ack.ty, ack.content()), (4, "fp-c2s"));
        eventually("the C2S hook", || hooks.c2s.lock().unwrap().len() == 1).await;
        assert_eq!(hooks.c2s.lock().unwrap()[0].content(), "to \u{FFFD} server");

        let mut odd = Client::connect(&h.url()).await;
        odd.send_text(r#"{"type":0,"dataContent":"{\"loginUserId\":\"w\\ud83d\",\"loginToken\":\"t\"}"}"#)
            .await;
        let reply = odd.recv().await;
        let r: LoginResponse = decode_body(reply.data_content.as_deref()).unwrap();
        assert_eq!((r.code, reply.to_id()), (0, "w\u{FFFD}"));
        assert!(h.is_online("w\u{FFFD}"));

        u1.expect_silence(Duration::from_millis(100)).await;
        u2.expect_silence(Duration::from_millis(10)).await;
        let m = h.metrics();
        assert_eq!(m.rejected(RejectReason::BadFrame), 0);
        assert_eq!(m.qos_resends, 0);
        h.shutdown().await;
    })
    .await;
}
