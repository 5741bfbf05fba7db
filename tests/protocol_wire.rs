//! The captured MobileIMSDK v6.5 traffic (`tests/data/wire/*.jsonl`) as test vectors
//! for the frame codec and the control bodies.
//!
//! The vectors are read from `tests/data/wire/`, a copy of the project's capture in
//! `../shared/wire/mobileimsdk-v6.5/`; `BEVY_IM_WIRE_DIR` points the tests at another
//! copy of the same capture. `the_vendored_copy_matches_the_capture` keeps the two in step.
//!
//! Every test counts what it checked and asserts the exact count, so a missing or
//! renamed file fails loudly instead of passing on nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bevy_im::protocol::{
    ClientKind, DecodeError, Dialect, EncodeError, ErrorResponse, Frame, KeepAlive, KickoutCode,
    KickoutInfo, LoginInfo, LoginResponse, MAX_FRAME_BYTES, ServerKind, decode_body, encode_body,
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

#[test]
fn the_vendored_copy_matches_the_capture() {
    let Some(capture) = capture_dir() else {
        eprintln!(
            "../shared/wire/mobileimsdk-v6.5 is not beside this checkout; nothing to compare"
        );
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
