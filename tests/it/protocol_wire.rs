//! The captured MobileIMSDK v6.5 traffic (`tests/data/wire/*.jsonl`) as test vectors
//! for the frame codec, the control bodies, the frame builders and the client core
//! (what it writes, byte for byte, and what it makes of captured server lines).
//!
//! The vectors are read from `tests/data/wire/`, a copy of the project's capture in
//! `../shared/wire/mobileimsdk-v6.5/`; `BEVY_IM_WIRE_DIR` points the tests at another
//! copy of the same capture. `the_vendored_copy_matches_the_capture` checks the copy
//! against the digests in `tests/data/wire-digest.txt` on every run, and against the
//! capture itself where it is present.
//!
//! Every test counts what it checked and asserts the exact count, so a missing or
//! renamed file fails loudly instead of passing on nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bevy::prelude::Entity;
use bevy_im::client::{
    Action, ClientConfig, ClientCore, ClientEvent, CloseReason, DataReceived, KeepaliveReply,
    Kicked, LinkClosed, LoggedOut, LoginRequest, LoginSucceeded, MessageDelivered, Outgoing,
    ReloginPolicy, ReloginStarted, ServerError,
};

use bevy_im::protocol::{
    ClientKind, DecodeError, Dialect, EncodeError, ErrorResponse, Frame, KeepAlive, KickoutCode,
    KickoutInfo, LoginInfo, LoginResponse, MAX_FRAME_BYTES, ResultCode, ServerKind, decode_body,
    encode_body,
};
use serde_json::Value;

/// The capture files, all of which must be present.
const FILES: [&str; 7] = [
    "01_basic_flow.jsonl",
    "02_s2c_qos_retransmit.jsonl",
    "03_offline_target.jsonl",
    "04_keepalive_timeout.jsonl",
    "05_duplicate_login.jsonl",
    "06_errors_and_garbage.jsonl",
    "07_gateway_http.jsonl",
];

/// The keys a frame has on the wire, in upstream order.
const FRAME_KEYS: [&str; 9] = [
    "bridge",
    "type",
    "dataContent",
    "from",
    "to",
    "fp",
    "QoS",
    "typeu",
    "sm",
];

/// The keys upstream writes on every frame (the others are left out when null).
const ALWAYS_WRITTEN: [&str; 7] = ["bridge", "type", "from", "to", "QoS", "typeu", "sm"];

/// One line of a capture file.
#[derive(Debug, Clone)]
struct Record {
    file: String,
    line: usize,
    conn: String,
    dir: String,
    frame: String,
    payload: String,
    fragments: Vec<String>,
}

impl Record {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    fn is_text(&self) -> bool {
        self.frame == "text"
    }

    fn is_c2s(&self) -> bool {
        self.dir == "c2s"
    }

    fn is_s2c(&self) -> bool {
        self.dir == "s2c"
    }

    /// The payload parsed, when it is a JSON object.
    fn object(&self) -> Option<Value> {
        serde_json::from_str::<Value>(&self.payload)
            .ok()
            .filter(Value::is_object)
    }
}

fn vendored_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wire")
}

/// Where the vectors are read from: `BEVY_IM_WIRE_DIR` when set, else the copy in the repo.
fn vectors_dir() -> PathBuf {
    match std::env::var_os("BEVY_IM_WIRE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => vendored_dir(),
    }
}

/// The original capture, when this checkout has it beside it.
fn capture_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("BEVY_IM_WIRE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/wire/mobileimsdk-v6.5");
    dir.is_dir().then_some(dir)
}

fn load_file(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let field = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{file}:{}: not a JSON record: {e}", i + 1));
            assert!(
                v["payload"].is_string(),
                "{file}:{}: payload is not a string",
                i + 1
            );
            Record {
                file: file.clone(),
                line: i + 1,
                conn: field(&v, "conn"),
                dir: field(&v, "dir"),
                frame: field(&v, "frame"),
                payload: field(&v, "payload"),
                fragments: v["fragments"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|f| f.as_str().unwrap_or_default().to_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// Every record of every capture file, in file order.
fn records() -> Vec<Record> {
    let dir = vectors_dir();
    let mut all = Vec::new();
    for name in FILES {
        let records = load_file(&dir.join(name));
        assert!(!records.is_empty(), "{name} is empty");
        all.extend(records);
    }
    all
}

/// The text frames whose payload is a JSON object.
fn object_frames() -> Vec<(Record, Value)> {
    records()
        .into_iter()
        .filter(Record::is_text)
        .filter_map(|r| r.object().map(|v| (r, v)))
        .collect()
}

fn decode(r: &Record) -> Frame {
    Frame::decode(&r.payload).unwrap_or_else(|e| panic!("{}: {e}\n{}", r.at(), r.payload))
}

fn as_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// The keys of a JSON object text in the order they are written.
fn key_order(text: &str) -> Vec<String> {
    // serde_json's Map sorts its keys, so walk the object by hand: top-level keys are
    // the strings that directly follow `{` or `,` at depth 1.
    let mut keys = Vec::new();
    let bytes = text.as_bytes();
    let (mut depth, mut i, mut expect_key) = (0usize, 0usize, false);
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1 && bytes[i] == b'{';
            }
            b'}' | b']' => depth -= 1,
            b',' if depth == 1 => expect_key = true,
            b'"' => {
                let start = i + 1;
                i += 1;
                while bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if expect_key {
                    let raw = &text[start - 1..=i];
                    keys.push(serde_json::from_str::<String>(raw).unwrap());
                    expect_key = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    keys
}

#[test]
fn the_vectors_cover_every_capture_file() {
    let all = records();
    let files: BTreeSet<&str> = all.iter().map(|r| r.file.as_str()).collect();
    assert_eq!(files, FILES.into_iter().collect());
    assert_eq!(all.len(), 452, "records in the capture");
    assert_eq!(all.iter().filter(|r| r.is_text()).count(), 252);
}

#[test]
fn every_json_object_frame_decodes() {
    let frames = object_frames();
    let mut checked = 0;
    for (r, value) in &frames {
        let f = decode(r);
        assert_eq!(
            Frame::from_value(value.clone()).as_ref(),
            Ok(&f),
            "{}",
            r.at()
        );
        // A captured frame is never a sentinel of an unknown meaning, except the
        // unknown and misdirected types 06 sends on purpose.
        if r.is_s2c() {
            let kind = f.server_kind(Dialect::MobileImSdkV6);
            assert!(
                !matches!(kind, ServerKind::Other(_)),
                "{}: {kind:?}",
                r.at()
            );
        } else if let ClientKind::Other(n) = f.client_kind() {
            assert!(n == 99 || n == 50, "{}: unexpected client type {n}", r.at());
            assert!(r.file.starts_with("06_"), "{}", r.at());
        }
        checked += 1;
    }
    assert_eq!(checked, 248, "JSON object text frames");
    assert_eq!(frames.iter().filter(|(r, _)| r.is_c2s()).count(), 128);
    assert_eq!(frames.iter().filter(|(r, _)| r.is_s2c()).count(), 120);
}

#[test]
fn server_frames_re_encode_byte_for_byte() {
    let mut checked = 0;
    for (r, _) in object_frames().iter().filter(|(r, _)| r.is_s2c()) {
        let f = decode(r);
        assert_eq!(f.encode().as_deref(), Ok(r.payload.as_str()), "{}", r.at());
        checked += 1;
    }
    assert_eq!(checked, 120, "server frames");
}

#[test]
fn encoded_keys_follow_upstream_order_and_omit_nulls() {
    let mut checked = 0;
    for (r, _) in object_frames() {
        let f = decode(&r);
        let keys = key_order(&f.to_json());
        let expected: Vec<&str> = FRAME_KEYS
            .into_iter()
            .filter(|k| match *k {
                "dataContent" => f.data_content.is_some(),
                "from" => f.from.is_some(),
                "to" => f.to.is_some(),
                "fp" => f.fp.is_some(),
                _ => true,
            })
            .collect();
        assert_eq!(keys, expected, "{}", r.at());
        if r.is_s2c() {
            assert_eq!(key_order(&r.payload), expected, "{}", r.at());
        }
        checked += 1;
    }
    assert_eq!(checked, 248);
}

/// A client frame that has every key upstream writes, no others, and a numeric type.
fn is_complete(value: &Value) -> bool {
    let map = value.as_object().unwrap();
    ALWAYS_WRITTEN.iter().all(|k| map.contains_key(*k))
        && map.keys().all(|k| FRAME_KEYS.contains(&k.as_str()))
        && map["type"].is_i64()
}

#[test]
fn complete_client_frames_re_encode_to_the_same_value() {
    let (mut checked, mut same_bytes) = (0, 0);
    let mut spaced = Vec::new();
    for (r, value) in object_frames()
        .iter()
        .filter(|(r, v)| r.is_c2s() && is_complete(v))
    {
        let text = decode(r).to_json();
        assert_eq!(as_value(&text), *value, "{}", r.at());
        if text == r.payload {
            same_bytes += 1;
        } else {
            spaced.push(r.at());
        }
        checked += 1;
    }
    assert_eq!(checked, 123, "complete client frames");
    assert_eq!(same_bytes, 121);
    // Only the two large frames, written with `", "` separators by the capture script,
    // differ in bytes; their values are equal.
    assert_eq!(
        spaced,
        [
            "06_errors_and_garbage.jsonl:105",
            "06_errors_and_garbage.jsonl:111"
        ]
    );
}

fn odd_client_frames() -> Vec<(Record, Frame)> {
    object_frames()
        .into_iter()
        .filter(|(r, v)| r.is_c2s() && !is_complete(v))
        .map(|(r, _)| {
            let f = decode(&r);
            (r, f)
        })
        .collect()
}

/// The server frame that follows `r` on the same connection.
fn reply_to(r: &Record) -> Record {
    records()
        .into_iter()
        .filter(|x| x.file == r.file && x.line > r.line && x.conn == r.conn)
        .find(|x| x.is_s2c() && x.is_text())
        .unwrap_or_else(|| panic!("{}: no reply", r.at()))
}

/// The frame `to` user received whose content is `content`.
fn delivered(content: &str, to: &str) -> Record {
    let matches: Vec<Record> = object_frames()
        .into_iter()
        .filter(|(r, v)| r.is_s2c() && v["dataContent"] == content && v["to"] == to)
        .map(|(r, _)| r)
        .collect();
    assert_eq!(matches.len(), 1, "deliveries of {content:?} to {to}");
    matches.into_iter().next().unwrap()
}

#[test]
fn odd_client_frames_decode_to_upstreams_zero_values() {
    let odd = odd_client_frames();
    let mut seen = BTreeSet::new();
    for (r, f) in &odd {
        let name = match r.payload.as_str() {
            p if p.contains(r#""dataContent":"minimal""#) => {
                // No bridge, typeu or sm: Java's zero values, exactly as the server
                // forwarded the frame to bob.
                assert_eq!(
                    (f.bridge, f.ty, f.qos, f.typeu, f.sm),
                    (false, 2, true, 0, 0)
                );
                assert_eq!(
                    f.fp.as_deref(),
                    Some("5015ae61-67a4-463e-8170-19381b599069")
                );
                let forwarded = delivered("minimal", "bob");
                assert_eq!(f.encode().unwrap(), forwarded.payload, "{}", r.at());
                "minimal"
            }
            p if p.contains(r#""qos":true"#) => {
                // Lowercase `qos` is an unknown key: the frame is not QoS.
                assert!(!f.qos, "{}", r.at());
                assert_eq!((f.ty, f.typeu, f.sm), (2, -1, -1));
                assert_eq!(f.content(), "lowercase qos");
                assert!(!key_order(&f.to_json()).contains(&"qos".to_owned()));
                assert!(f.to_json().contains(r#""QoS":false"#));
                "lowercase qos"
            }
            p if p.contains("no to field") => {
                assert_eq!(f.to, None);
                assert_eq!(f.to_id(), "");
                assert_eq!(
                    (f.bridge, f.ty, f.qos, f.typeu, f.sm),
                    (false, 2, true, 0, 0)
                );
                assert!(!key_order(&f.to_json()).contains(&"to".to_owned()));
                "no to"
            }
            "{}" => {
                // An empty object reads as a login with no body, which upstream drops.
                assert_eq!(f.client_kind(), ClientKind::Login);
                assert_eq!(
                    (f.bridge, f.ty, f.qos, f.typeu, f.sm),
                    (false, 0, false, 0, 0)
                );
                assert_eq!(
                    (&f.from, &f.to, &f.fp, &f.data_content),
                    (&None, &None, &None, &None)
                );
                assert!(matches!(
                    decode_body::<LoginInfo>(f.data_content.as_deref()),
                    Err(DecodeError::BadBody {
                        body: "PLoginInfo",
                        ..
                    })
                ));
                assert_eq!(
                    f.to_json(),
                    r#"{"bridge":false,"type":0,"QoS":false,"typeu":0,"sm":0}"#
                );
                "empty object"
            }
            p if p.contains(r#""type": "5""#) => {
                // `"type":"5"` is an echo; the server's reply is the frame with type 53,
                // and the missing typeu and sm read as 0.
                assert_eq!(f.client_kind(), ClientKind::Echo);
                assert_eq!(
                    (f.bridge, f.ty, f.qos, f.typeu, f.sm),
                    (false, 5, false, 0, 0)
                );
                assert_eq!((f.from_id(), f.to_id()), ("x", "0"));
                let reply = reply_to(r);
                let mut echoed = f.clone();
                echoed.ty = 53;
                assert_eq!(echoed.encode().unwrap(), reply.payload, "{}", r.at());
                "string type"
            }
            other => panic!("{}: unexpected odd client frame {other}", r.at()),
        };
        assert!(seen.insert(name), "{}: {name} seen twice", r.at());
    }
    assert_eq!(odd.len(), 5, "odd client frames");
    assert_eq!(seen.len(), 5);
}

#[test]
fn garbage_payloads_are_rejected_with_typed_errors() {
    let garbage: Vec<Record> = records()
        .into_iter()
        .filter(|r| r.is_text() && r.object().is_none())
        .collect();
    let mut checked = 0;
    for r in &garbage {
        assert!(r.file.starts_with("06_"), "{}", r.at());
        let e = Frame::decode(&r.payload).unwrap_err();
        match r.payload.as_str() {
            "null" => assert_eq!(e, DecodeError::NotAnObject { found: "null" }),
            "[1,2,3]" => assert_eq!(e, DecodeError::NotAnObject { found: "an array" }),
            "this is not json" | "garbage{" => {
                assert!(
                    matches!(e, DecodeError::NotJson { .. }),
                    "{}: {e:?}",
                    r.at()
                )
            }
            other => panic!("{}: unexpected garbage {other:?}", r.at()),
        }
        checked += 1;
    }
    assert_eq!(checked, 4, "garbage payloads");
}

#[test]
fn a_fragmented_message_decodes_whole_and_its_first_fragment_is_truncated() {
    let fragmented: Vec<Record> = records()
        .into_iter()
        .filter(|r| r.frame == "text-fragmented")
        .collect();
    assert_eq!(fragmented.len(), 1);
    let r = &fragmented[0];
    assert_eq!(r.fragments.len(), 2);
    assert_eq!(r.fragments.concat(), r.payload);
    let f = decode(r);
    assert_eq!((f.ty, f.content()), (5, "fragmented"));
    assert!(matches!(
        Frame::decode(&r.fragments[0]),
        Err(DecodeError::NotJson { .. })
    ));
    assert!(matches!(
        Frame::decode(&r.fragments[1]),
        Err(DecodeError::NotJson { .. })
    ));
}

#[test]
fn every_truncation_of_a_captured_frame_is_not_json() {
    let mut checked = 0;
    for (r, _) in object_frames()
        .iter()
        .filter(|(r, _)| r.payload.len() <= 1024)
    {
        for cut in (0..r.payload.len()).filter(|&c| r.payload.is_char_boundary(c)) {
            let e = Frame::decode(&r.payload[..cut]).unwrap_err();
            assert!(
                matches!(e, DecodeError::NotJson { .. }),
                "{} cut at {cut}: {e:?}",
                r.at()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 30_073, "truncations");
}

#[test]
fn the_oversize_frame_decodes_but_does_not_encode() {
    let big: Vec<(Record, Value)> = object_frames()
        .into_iter()
        .filter(|(r, _)| r.payload.len() > MAX_FRAME_BYTES)
        .collect();
    assert_eq!(big.len(), 1, "frames over the limit");
    let (r, value) = &big[0];
    assert_eq!(r.payload.len(), 70_111);
    let f = decode(r);
    assert_eq!(f.content().len(), 70_000);
    assert!(f.content().bytes().all(|b| b == b'x'));
    match f.encode() {
        Err(EncodeError::TooLarge { len, limit }) => {
            assert_eq!(limit, MAX_FRAME_BYTES);
            assert_eq!(len, f.to_json().len());
            assert!(len > MAX_FRAME_BYTES);
        }
        other => panic!("{}: expected TooLarge, got {other:?}", r.at()),
    }
    assert_eq!(as_value(&f.to_json()), *value);

    // The 60,000-byte frame the server accepted is under the limit once compact.
    let large: Vec<(Record, Value)> = object_frames()
        .into_iter()
        .filter(|(r, _)| (50_000..=MAX_FRAME_BYTES).contains(&r.payload.len()))
        .collect();
    assert_eq!(large.len(), 1);
    let f = decode(&large[0].0);
    assert_eq!(f.content().len(), 60_000);
    let text = f.encode().unwrap();
    assert_eq!(as_value(&text), large[0].1);
}

#[test]
fn control_bodies_inside_data_content_decode() {
    let (mut logins, mut bad_logins, mut responses, mut errors, mut kickouts, mut keepalives) =
        (0, 0, 0, 0, 0, 0);
    let all = records();
    for (r, _) in object_frames() {
        let f = decode(&r);
        let content = f.data_content.as_deref();
        if r.is_c2s() {
            match f.client_kind() {
                ClientKind::Login => match decode_body::<LoginInfo>(content) {
                    Ok(info) => {
                        assert_eq!(Some(info.login_user_id.as_str()), f.from.as_deref());
                        assert_eq!(info.login_token, "token");
                        assert!(info.first_login_time >= 0);
                        assert_eq!(encode_body(&info), f.content(), "{}", r.at());
                        logins += 1;
                    }
                    Err(e) => {
                        assert!(
                            matches!(
                                e,
                                DecodeError::BadBody {
                                    body: "PLoginInfo",
                                    ..
                                }
                            ),
                            "{}: {e:?}",
                            r.at()
                        );
                        bad_logins += 1;
                    }
                },
                ClientKind::KeepAlive => {
                    assert_eq!(decode_body::<KeepAlive>(content), Ok(KeepAlive {}));
                    assert_eq!(encode_body(&KeepAlive {}), f.content());
                    keepalives += 1;
                }
                _ => {}
            }
            continue;
        }
        match f.server_kind(Dialect::MobileImSdkV6) {
            ServerKind::LoginResponse => {
                let body: LoginResponse = decode_body(content).unwrap();
                assert_eq!(body.code, 0, "{}", r.at());
                assert!(body.first_login_time > 0);
                assert_eq!(encode_body(&body), f.content());
                responses += 1;
            }
            ServerKind::KeepAliveResponse => {
                assert_eq!(decode_body::<KeepAlive>(content), Ok(KeepAlive {}));
                keepalives += 1;
            }
            ServerKind::Error => {
                let body: ErrorResponse = decode_body(content).unwrap();
                assert_eq!(body.error_code, 301);
                assert_eq!(encode_body(&body), f.content());
                // errorMsg is the whole offending frame, byte for byte.
                let offending = all
                    .iter()
                    .rev()
                    .filter(|x| x.file == r.file && x.line < r.line && x.conn == r.conn)
                    .find(|x| x.is_c2s() && x.is_text())
                    .unwrap();
                assert_eq!(body.error_msg, offending.payload, "{}", r.at());
                let inner = Frame::decode(&body.error_msg).unwrap();
                assert_eq!(inner, decode(offending));
                assert_eq!(inner.encode().unwrap(), body.error_msg);
                errors += 1;
            }
            ServerKind::Kickout => {
                let body: KickoutInfo = decode_body(content).unwrap();
                assert_eq!(
                    body,
                    KickoutInfo {
                        code: 1,
                        reason: None
                    }
                );
                assert_eq!(
                    KickoutCode::from_code(body.code),
                    KickoutCode::DuplicateLogin
                );
                assert_eq!(encode_body(&body), f.content());
                // The seed dialect reads the same number as its ACK.
                assert_eq!(f.server_kind(Dialect::Seed), ServerKind::Ack);
                kickouts += 1;
            }
            _ => {}
        }
    }
    assert_eq!(logins, 23, "login bodies");
    assert_eq!(bad_logins, 3, "logins without a usable body");
    assert_eq!(responses, 23, "login responses");
    assert_eq!(errors, 3, "error responses");
    assert_eq!(kickouts, 3, "kickouts");
    assert_eq!(keepalives, 49 + 48, "keepalives and their replies");
}

/// `v` with every number in its top-level object written as a string.
fn numbers_as_strings(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(map) = &mut v {
        for x in map.values_mut() {
            if let Value::Number(n) = x {
                *x = Value::String(n.to_string());
            }
        }
    }
    v
}

#[test]
fn bodies_with_numbers_as_strings_decode_as_the_captured_ones() {
    // Every captured control frame, with the numbers of its frame and of its body
    // written as strings, as a web client that keeps everything as strings sends
    // them: the client (server frames) and the server (logins) read the same values.
    let (mut logins, mut responses, mut errors, mut kickouts) = (0, 0, 0, 0);
    for (r, value) in object_frames() {
        let f = decode(&r);
        let Ok(body) = serde_json::from_str::<Value>(f.content()) else {
            continue;
        };
        if !body.is_object() || body.as_object().unwrap().is_empty() {
            continue;
        }
        let mut odd = numbers_as_strings(&value);
        odd["dataContent"] = Value::String(numbers_as_strings(&body).to_string());
        let odd_text = odd.to_string();
        assert!(odd_text.contains(r#""type":""#), "{}", r.at());
        let g = Frame::decode(&odd_text).unwrap();
        assert_eq!((g.ty, g.typeu, g.sm), (f.ty, f.typeu, f.sm), "{}", r.at());
        let (was, now) = (f.data_content.as_deref(), g.data_content.as_deref());
        if r.is_c2s() {
            if f.client_kind() == ClientKind::Login {
                let b = decode_body::<LoginInfo>(now);
                match decode_body::<LoginInfo>(was) {
                    Ok(info) => {
                        assert_eq!(b, Ok(info), "{}", r.at());
                        assert!(now.unwrap().contains(r#""firstLoginTime":""#));
                        logins += 1;
                    }
                    // The login without a user id stays refused.
                    Err(_) => assert!(b.is_err(), "{}", r.at()),
                }
            }
            continue;
        }
        match f.server_kind(Dialect::MobileImSdkV6) {
            ServerKind::LoginResponse => {
                let b: LoginResponse = decode_body(now).unwrap();
                assert_eq!(Ok(b), decode_body::<LoginResponse>(was), "{}", r.at());
                responses += 1;
            }
            ServerKind::Error => {
                let b: ErrorResponse = decode_body(now).unwrap();
                assert_eq!(Ok(b), decode_body::<ErrorResponse>(was), "{}", r.at());
                errors += 1;
            }
            ServerKind::Kickout => {
                let b: KickoutInfo = decode_body(now).unwrap();
                assert_eq!(Ok(b), decode_body::<KickoutInfo>(was), "{}", r.at());
                kickouts += 1;
            }
            _ => {}
        }
    }
    assert_eq!(logins, 23, "login bodies");
    assert_eq!(responses, 23, "login responses");
    assert_eq!(errors, 3, "error responses");
    assert_eq!(kickouts, 3, "kickouts");
}

#[test]
fn the_three_field_report_logins_decode() {
    // Issue 16: logins from web clients that hold ids and times as whatever their
    // last parse produced.
    for (body, user, time) in [
        (
            r#"{"loginUserId":12345,"loginToken":"t","firstLoginTime":0}"#,
            "12345",
            0,
        ),
        (
            r#"{"loginUserId":"u3","loginToken":"t","firstLoginTime":"0"}"#,
            "u3",
            0,
        ),
        (
            r#"{"loginUserId":"u4","loginToken":"t","firstLoginTime":"1700000000000"}"#,
            "u4",
            1_700_000_000_000,
        ),
    ] {
        let frame = serde_json::json!({"type": 0, "dataContent": body, "to": "0"}).to_string();
        let f = Frame::decode(&frame).unwrap();
        let info: LoginInfo = decode_body(f.data_content.as_deref()).unwrap();
        assert_eq!(
            (
                info.login_user_id.as_str(),
                info.login_token.as_str(),
                info.first_login_time
            ),
            (user, "t", time)
        );
    }
}

#[test]
fn data_with_a_lone_surrogate_decodes_with_a_replacement_character() {
    // Every captured data frame with a lone high surrogate escape put in front of its
    // content, and a lone low one behind it.
    let mut checked = 0;
    for (r, _) in object_frames() {
        let f = decode(&r);
        if f.ty != 2 || f.data_content.is_none() || r.payload.len() > 1000 {
            continue;
        }
        let marked = r
            .payload
            .replacen(r#""dataContent":""#, r#""dataContent":"\ud83d"#, 1)
            .replacen(r#"","from""#, r#"\udc00","from""#, 1);
        assert_ne!(marked, r.payload, "{}", r.at());
        let g = Frame::decode(&marked).unwrap();
        assert_eq!(
            g.content(),
            format!("\u{FFFD}{}\u{FFFD}", f.content()),
            "{}",
            r.at()
        );
        assert_eq!((g.from, g.to, g.fp, g.qos), (f.from, f.to, f.fp, f.qos));
        checked += 1;
    }
    assert_eq!(checked, 34, "data frames");
}

#[test]
fn a_relogin_with_a_first_login_time_gets_it_back() {
    // The login response echoes a positive firstLoginTime (PROTOCOL.md §4).
    let all = records();
    let mut checked = 0;
    for r in all.iter().filter(|r| r.is_c2s() && r.is_text()) {
        let Ok(f) = Frame::decode(&r.payload) else {
            continue;
        };
        if f.client_kind() != ClientKind::Login {
            continue;
        }
        let Ok(info) = decode_body::<LoginInfo>(f.data_content.as_deref()) else {
            continue;
        };
        if info.first_login_time <= 0 {
            continue;
        }
        let reply = decode(&reply_to(r));
        assert_eq!(reply.ty, 50, "{}", r.at());
        let body: LoginResponse = decode_body(reply.data_content.as_deref()).unwrap();
        assert_eq!(body.first_login_time, info.first_login_time, "{}", r.at());
        checked += 1;
    }
    assert_eq!(checked, 4, "re-logins with a firstLoginTime");
}

/// The digests of the vendored capture files, checked in beside them.
fn digest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wire-digest.txt")
}

/// FNV-1a, 64 bits: enough to notice a vendored file that changed by accident.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn the_vendored_copy_matches_the_capture() {
    // The digest itself, against the published FNV-1a 64 test vectors.
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);

    // Always: every vendored file has the checked-in length and digest, so a clean
    // clone without ../shared (CI) still notices a vendored file that drifted.
    let listed = std::fs::read_to_string(digest_path()).unwrap();
    let mut names = Vec::new();
    for line in listed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let [digest, len, name] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            panic!("bad digest line {line:?}");
        };
        let copy = std::fs::read(vendored_dir().join(name)).unwrap();
        assert_eq!(
            (format!("{:016x}", fnv1a64(&copy)), copy.len().to_string()),
            (digest.to_owned(), len.to_owned()),
            "tests/data/wire/{name} is not the capture that tests/data/wire-digest.txt names"
        );
        names.push(name.to_owned());
    }
    assert_eq!(names, FILES, "every capture file has a digest, in order");

    // Beside the original capture (or with BEVY_IM_WIRE_DIR): the bytes themselves.
    let Some(capture) = capture_dir() else {
        return;
    };
    for name in FILES {
        let original = std::fs::read(capture.join(name))
            .unwrap_or_else(|e| panic!("{}: {e}", capture.join(name).display()));
        let copy = std::fs::read(vendored_dir().join(name)).unwrap();
        assert!(
            original == copy,
            "tests/data/wire/{name} differs from {}; copy it again",
            capture.display()
        );
    }
}

/// Every record, read once for the tests that look lines up by number.
fn all_records() -> &'static [Record] {
    static ALL: OnceLock<Vec<Record>> = OnceLock::new();
    ALL.get_or_init(records)
}

/// The payload of line `line` of the capture file whose name starts with `file`.
fn cap(file: &str, line: usize) -> &'static str {
    let r = all_records()
        .iter()
        .find(|r| r.file.starts_with(file) && r.line == line)
        .unwrap_or_else(|| panic!("no line {file}:{line}"));
    assert!(r.is_text(), "{} is not a text frame", r.at());
    &r.payload
}

/// The frame the client ACKs: the last server frame on the ACK's connection before
/// it that carries the acked fingerprint.
fn acked_frame(ack: &Record) -> Option<Frame> {
    let fp = decode(ack).data_content?;
    all_records()
        .iter()
        .filter(|x| x.file == ack.file && x.line < ack.line && x.conn == ack.conn)
        .filter(|x| x.is_s2c() && x.is_text())
        .filter_map(|x| Frame::decode(&x.payload).ok())
        .rfind(|f| f.fp.as_deref() == Some(fp.as_str()))
}

#[test]
fn the_builders_write_the_captured_client_frames_byte_for_byte() {
    // Every complete client frame of the capture, rebuilt with the crate's builders
    // from its ids, content, fingerprint and typeu only: the builders' defaults
    // (bridge, QoS, typeu and sm of control frames, left-out keys, key order, the
    // ACK's direction) must give upstream's bytes.
    let mut same = BTreeMap::<&str, usize>::new();
    let mut other = Vec::new();
    for (r, _) in object_frames()
        .iter()
        .filter(|(r, v)| r.is_c2s() && is_complete(v))
    {
        let f = decode(r);
        let (kind, built) = match f.client_kind() {
            ClientKind::Login => (
                "login",
                decode_body::<LoginInfo>(f.data_content.as_deref())
                    .ok()
                    .map(|info| Frame::login(&info)),
            ),
            ClientKind::KeepAlive => ("keepalive", Some(Frame::keepalive(f.from_id()))),
            ClientKind::Logout => ("logout", Some(Frame::logout(f.from_id()))),
            ClientKind::Data => (
                "data",
                Some(Frame::data(
                    f.from_id(),
                    f.to_id(),
                    f.content(),
                    f.qos,
                    f.fp.clone(),
                    f.typeu,
                )),
            ),
            ClientKind::Ack => ("ack", acked_frame(r).and_then(|got| Frame::ack_of(&got))),
            ClientKind::Echo => ("echo", Some(Frame::echo(f.from_id(), f.content()))),
            _ => ("other", None),
        };
        match built.map(|b| b.to_json()) {
            Some(text) if text == r.payload => *same.entry(kind).or_default() += 1,
            Some(text) => other.push((r.at(), kind, as_value(&text) == as_value(&r.payload))),
            None => other.push((r.at(), kind, false)),
        }
    }
    assert_eq!(
        same,
        BTreeMap::from([
            ("ack", 7),
            ("data", 17),
            ("echo", 14),
            ("keepalive", 49),
            ("login", 23),
            ("logout", 3),
        ]),
        "client frames the builders write byte for byte"
    );
    let other: Vec<_> = other
        .iter()
        .map(|(at, k, v)| (at.as_str(), *k, *v))
        .collect();
    assert_eq!(
        other,
        [
            // The capture script's own echo with a fingerprint, QoS and typeu 3.
            ("01_basic_flow.jsonl:48", "echo", false),
            // Its ACK of that echo's reply, from alice to herself.
            ("01_basic_flow.jsonl:50", "ack", false),
            // Frames sent before any login, so nothing was received to ACK...
            ("06_errors_and_garbage.jsonl:12", "ack", false),
            // ... and types a client never sends.
            ("06_errors_and_garbage.jsonl:30", "other", false),
            // Logins without a usable body.
            ("06_errors_and_garbage.jsonl:38", "login", false),
            ("06_errors_and_garbage.jsonl:42", "login", false),
            ("06_errors_and_garbage.jsonl:73", "other", false),
            ("06_errors_and_garbage.jsonl:83", "other", false),
            // Written with `", "` separators by the capture script: the same value.
            ("06_errors_and_garbage.jsonl:105", "data", true),
            ("06_errors_and_garbage.jsonl:111", "data", true),
        ]
    );
}

/// The entity named in every event of a core driven outside Bevy.
const ME: Entity = Entity::PLACEHOLDER;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A client core driven by captured server lines; what it writes is compared with the
/// captured client lines.
struct Core {
    c: ClientCore,
}

impl Core {
    fn new(dialect: Dialect) -> Self {
        Self {
            c: ClientCore::new(ClientConfig {
                dialect,
                // Upstream's schedule: the first re-login attempt at once.
                relogin: ReloginPolicy::UPSTREAM,
                relogin_spread: Duration::ZERO,
                jitter_seed: Some(1),
                ..ClientConfig::default()
            }),
        }
    }

    /// Logs in with `request`: the link opens at once and the login is written.
    fn login(&mut self, request: LoginRequest, now: Duration) -> Vec<String> {
        self.c.login(request, now).unwrap();
        let link = self.c.link().unwrap();
        assert_eq!(self.c.take_actions(), [Action::Connect { link }]);
        self.c.on_link_opened(link, now);
        self.written()
    }

    /// The server's line `file:line` arrives.
    fn feed(&mut self, file: &str, line: usize, now: Duration) {
        let link = self.c.link().expect("a link");
        self.c.on_text(link, cap(file, line), now);
    }

    /// The texts written since the last call; any other action fails the test.
    fn written(&mut self) -> Vec<String> {
        self.c
            .take_actions()
            .into_iter()
            .map(|a| match a {
                Action::Send { text, .. } => text,
                other => panic!("expected only writes, got {other:?}"),
            })
            .collect()
    }

    fn events(&mut self) -> Vec<ClientEvent> {
        self.c.take_events()
    }
}

fn login_succeeded(user: &str, relogin: bool, first_login_time: i64) -> ClientEvent {
    ClientEvent::LoginSucceeded(LoginSucceeded {
        client: ME,
        user_id: user.into(),
        relogin,
        first_login_time,
    })
}

fn delivery_of(fp: &str) -> ClientEvent {
    ClientEvent::MessageDelivered(MessageDelivered {
        client: ME,
        fp: fp.into(),
        stored: false,
        mid: None,
    })
}

fn received(fp: Option<&str>, from: &str, content: &str, typeu: i32) -> ClientEvent {
    ClientEvent::DataReceived(DataReceived {
        client: ME,
        fp: fp.map(str::to_owned),
        from: from.into(),
        content: content.into(),
        typeu,
        room: None,
        mid: None,
        sent_at_ms: None,
    })
}

#[test]
fn the_client_core_writes_what_alice_wrote_in_the_basic_flow() {
    // alice in 01_basic_flow: the captured ids, token, fingerprints and typeu are the
    // input; every line the core writes is the captured line, byte for byte.
    let mut a = Core::new(Dialect::MobileImSdkV6);
    let login = LoginRequest::new("alice", "token")
        .with_extra("hello-extra")
        .with_app("test");
    assert_eq!(a.login(login, ms(0)), [cap("01", 2)]);
    a.feed("01", 3, ms(100));
    assert_eq!(
        a.events(),
        [login_succeeded("alice", false, 1_795_643_442_840)]
    );
    assert!(a.written().is_empty());

    a.c.tick(ms(5_099));
    assert!(a.written().is_empty());
    a.c.tick(ms(5_100));
    assert_eq!(a.written(), [cap("01", 9)], "the keepalive");
    a.feed("01", 10, ms(5_130));
    assert_eq!(
        a.events(),
        [ClientEvent::KeepaliveReply(KeepaliveReply {
            client: ME,
            rtt: Some(ms(30))
        })]
    );

    let fp1 = "98a4e2bf-a4a8-4ed5-aadf-bf4c34825e41";
    let sent = a.c.send(
        Outgoing::new("bob", "hi bob (QoS)")
            .typeu(7)
            .fingerprint(fp1),
        ms(6_000),
    );
    assert_eq!(sent, Ok(Some(fp1.to_owned())));
    assert_eq!(a.written(), [cap("01", 12)]);
    a.feed("01", 15, ms(6_050));
    assert_eq!(a.events(), [delivery_of(fp1)]);
    assert_eq!(a.c.pending_count(), 0);

    let sent = a.c.send(
        Outgoing::new("bob", "hi bob (no QoS)").qos(false).typeu(-1),
        ms(6_100),
    );
    assert_eq!(sent, Ok(None));
    assert_eq!(a.written(), [cap("01", 20)]);

    // bob's QoS message: delivered, and ACKed with alice's captured ACK.
    a.feed("01", 29, ms(6_200));
    assert_eq!(a.written(), [cap("01", 30)]);
    assert_eq!(
        a.events(),
        [received(
            Some("44a3f5d1-1763-427c-87a3-7c4b3af6a9b1"),
            "bob",
            "hi alice",
            -1
        )]
    );

    // To the server itself, with and without QoS; the server ACKs from "0".
    let fp = "3069a213-f3c0-4d0b-9043-0c4d416e209a";
    a.c.send(
        Outgoing::new("0", "to server (QoS)")
            .typeu(1)
            .fingerprint(fp),
        ms(6_300),
    )
    .unwrap();
    assert_eq!(a.written(), [cap("01", 39)]);
    a.feed("01", 40, ms(6_350));
    assert_eq!(a.events(), [delivery_of(fp)]);
    a.c.send(
        Outgoing::new("0", "to server (no QoS)")
            .qos(false)
            .typeu(-1),
        ms(6_400),
    )
    .unwrap();
    assert_eq!(a.written(), [cap("01", 45)]);

    assert_eq!(a.c.logout(ms(7_000)), ResultCode::Ok);
    let actions = a.c.take_actions();
    match &actions[..] {
        [Action::Send { text, .. }, Action::Close { .. }] => assert_eq!(text, cap("01", 63)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        a.events(),
        [ClientEvent::LoggedOut(LoggedOut {
            client: ME,
            code: ResultCode::Ok
        })]
    );
}

#[test]
fn the_client_core_writes_what_bob_wrote_in_the_basic_flow() {
    let mut b = Core::new(Dialect::MobileImSdkV6);
    assert_eq!(
        b.login(LoginRequest::new("bob", "token"), ms(0)),
        [cap("01", 6)]
    );
    b.feed("01", 7, ms(50));
    assert_eq!(
        b.events(),
        [login_succeeded("bob", false, 1_795_643_442_931)]
    );

    // alice's QoS message with typeu 7: delivered and ACKed as bob ACKed it; the
    // server relays an ACK unchanged, so alice read the same bytes.
    let fp1 = "98a4e2bf-a4a8-4ed5-aadf-bf4c34825e41";
    b.feed("01", 13, ms(100));
    assert_eq!(b.written(), [cap("01", 14)]);
    assert_eq!(cap("01", 14), cap("01", 15));
    assert_eq!(
        b.events(),
        [received(Some(fp1), "alice", "hi bob (QoS)", 7)]
    );

    // Without QoS: delivered, no fingerprint, no ACK.
    b.feed("01", 21, ms(200));
    assert!(b.written().is_empty());
    assert_eq!(b.events(), [received(None, "alice", "hi bob (no QoS)", -1)]);

    // The minimal frame as the server forwarded it (typeu and sm of 0): no sent time.
    b.feed("01", 24, ms(300));
    assert_eq!(b.written(), [cap("01", 25)]);
    assert_eq!(
        b.events(),
        [received(
            Some("5015ae61-67a4-463e-8170-19381b599069"),
            "alice",
            "minimal",
            0
        )]
    );

    let fp = "44a3f5d1-1763-427c-87a3-7c4b3af6a9b1";
    b.c.send(
        Outgoing::new("alice", "hi alice").typeu(-1).fingerprint(fp),
        ms(400),
    )
    .unwrap();
    assert_eq!(b.written(), [cap("01", 28)]);
    b.feed("01", 31, ms(450));
    assert_eq!(b.events(), [delivery_of(fp)]);

    // alice sent fp1 again: ACKed again, not delivered twice.
    b.feed("01", 34, ms(500));
    assert_eq!(b.written(), [cap("01", 35)]);
    assert!(b.events().is_empty());

    // A spoofed sender is whom the ACK goes to.
    b.feed("01", 53, ms(600));
    assert_eq!(b.written(), [cap("01", 54)]);
    assert_eq!(
        b.events(),
        [received(
            Some("73b97fe8-6a50-438d-8ecf-1d3fcd77f913"),
            "mallory",
            "spoofed from",
            -1
        )]
    );

    assert_eq!(b.c.logout(ms(700)), ResultCode::Ok);
    let texts: Vec<String> =
        b.c.take_actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Send { text, .. } => Some(text),
                _ => None,
            })
            .collect();
    assert_eq!(texts, [cap("01", 68)]);
}

#[test]
fn a_relogin_presents_the_captured_first_login_time_and_the_kickout_ends_it() {
    // alice in 05_duplicate_login: the first login, then the re-login that presents
    // the server's firstLoginTime (alice#5), then the kickout of an older socket.
    let mut a = Core::new(Dialect::MobileImSdkV6);
    assert_eq!(
        a.login(LoginRequest::new("alice", "token"), ms(0)),
        [cap("05", 2)]
    );
    a.feed("05", 29, ms(10));
    assert_eq!(
        a.events(),
        [login_succeeded("alice", false, 1_795_643_546_796)]
    );

    // Two unanswered keepalives; the link is dead 8 s after the first.
    a.c.tick(ms(5_010));
    assert_eq!(a.written(), [cap("05", 40)]);
    a.c.tick(ms(10_010));
    assert_eq!(a.written(), [cap("05", 40)]);
    let old = a.c.link().unwrap();
    a.c.tick(ms(13_010));
    let new = a.c.link().unwrap();
    assert_eq!(
        a.c.take_actions(),
        [Action::Close { link: old }, Action::Connect { link: new }]
    );
    assert_eq!(
        a.events(),
        [
            ClientEvent::LinkClosed(LinkClosed {
                client: ME,
                reason: CloseReason::KeepaliveTimeout
            }),
            ClientEvent::ReloginStarted(ReloginStarted {
                client: ME,
                attempt: 1
            }),
        ]
    );
    a.c.on_link_opened(new, ms(13_020));
    assert_eq!(a.written(), [cap("05", 28)]);
    assert_eq!(cap("05", 28), cap("05", 22));
    a.feed("05", 29, ms(13_030));
    assert_eq!(
        a.events(),
        [login_succeeded("alice", true, 1_795_643_546_796)]
    );

    // bob's message reaches this socket; the ACK is what the server relayed to bob.
    a.feed("05", 36, ms(13_100));
    assert_eq!(a.written(), [cap("05", 37)]);
    assert_eq!(
        a.events(),
        [received(
            Some("9d968da0-1429-41df-bc0c-711ffaa1e14f"),
            "bob",
            "who gets this?",
            -1
        )]
    );

    // The v6 kickout (type 54, code 1).
    a.feed("05", 24, ms(13_200));
    assert_eq!(
        a.events(),
        [
            ClientEvent::Kicked(Kicked {
                client: ME,
                code: KickoutCode::DuplicateLogin,
                reason: None
            }),
            ClientEvent::LinkClosed(LinkClosed {
                client: ME,
                reason: CloseReason::Kicked
            }),
        ]
    );
    assert_eq!(a.c.take_actions(), [Action::Close { link: new }]);

    // The seed dialect reads the same line as an ACK of an unknown fingerprint.
    let mut s = Core::new(Dialect::Seed);
    s.login(LoginRequest::new("alice", "token"), ms(0));
    s.feed("05", 3, ms(10));
    s.events();
    s.feed("05", 24, ms(20));
    assert!(s.events().is_empty());
    assert!(s.c.take_actions().is_empty());
    assert!(s.c.is_logged_in());
}

#[test]
fn captured_error_and_ack_lines_reach_the_client_core() {
    // ghost in 06: the data frame the core writes is the captured one, and the
    // server's 301 naming it (the server had forgotten the session) drops the link
    // for a re-login; the message stays pending to be written again.
    let mut g = Core::new(Dialect::MobileImSdkV6);
    g.login(LoginRequest::new("ghost", "token"), ms(0));
    let reply = Frame::login_response(
        "ghost",
        &LoginResponse {
            code: 0,
            first_login_time: 1,
            ext: Vec::new(),
        },
    );
    let link = g.c.link().unwrap();
    g.c.on_text(link, &reply.to_json(), ms(10));
    g.events();
    let fp = "aa674abd-94f9-4428-97b1-9e669432c67f";
    g.c.send(Outgoing::new("bob", "hi").typeu(-1).fingerprint(fp), ms(20))
        .unwrap();
    assert_eq!(g.written(), [cap("06", 7)]);
    g.feed("06", 8, ms(30));
    assert_eq!(
        g.events(),
        [
            ClientEvent::ServerError(ServerError {
                client: ME,
                code: ResultCode::ResponseForUnlogin,
                msg: cap("06", 7).to_owned(),
            }),
            ClientEvent::LinkClosed(LinkClosed {
                client: ME,
                reason: CloseReason::NotLoggedIn
            }),
        ]
    );
    assert_eq!(g.c.take_actions(), [Action::Close { link }]);
    assert!(g.c.is_relogging());
    assert_eq!(g.c.pending_count(), 1);

    // ubig2 in 06: a 60,000-byte message under the limit, and the server's ACK.
    let mut u = Core::new(Dialect::MobileImSdkV6);
    assert_eq!(
        u.login(LoginRequest::new("ubig2", "token"), ms(0)),
        [cap("06", 109)]
    );
    u.feed("06", 110, ms(10));
    assert_eq!(
        u.events(),
        [login_succeeded("ubig2", false, 1_795_643_560_861)]
    );
    let fp = "341968e7-74e6-41de-a29a-7c8b63a1ea5e";
    u.c.send(
        Outgoing::new("0", "y".repeat(60_000))
            .typeu(-1)
            .fingerprint(fp),
        ms(20),
    )
    .unwrap();
    let written = u.written();
    assert_eq!(written.len(), 1);
    // The capture script spaced this one; the value is the same.
    assert_eq!(as_value(&written[0]), as_value(cap("06", 111)));
    u.feed("06", 112, ms(30));
    assert_eq!(u.events(), [delivery_of(fp)]);
    assert_eq!(u.c.pending_count(), 0);
}
