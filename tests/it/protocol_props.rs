//! Property tests for the protocol layer: the frame codec round-trips, decoding never
//! panics and fails only with an error that names what was wrong, bodies round-trip,
//! the number tables turn every wire number into a meaning and back, lone surrogate
//! escapes decode lossily in every string field, and body fields are coerced by the
//! frame's rules.

use bevy_im::protocol::{
    ClientKind, DecodeError, Dialect, EncodeError, ErrorResponse, Frame, KeepAlive, KickoutCode,
    KickoutInfo, LoginInfo, LoginResponse, MAX_FRAME_BYTES, ResultCode, ServerKind, decode_body,
    encode_body, replace_lone_surrogates,
};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value};

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

/// The keys `Frame::decode` reads: upstream's and the extension's.
const WIRE_KEYS: [&str; 11] = [
    "bridge",
    "type",
    "dataContent",
    "from",
    "to",
    "fp",
    "QoS",
    "typeu",
    "sm",
    "mid",
    "stored",
];

/// The name `DecodeError::NotAnObject` gives a JSON value's kind.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `Frame::decode(text)` either succeeds on a JSON object or fails with the error
/// that names what was wrong, checked against serde_json's own reading of `text`
/// (after the same lone-surrogate repair): `NotJson` for what is not JSON,
/// `NotAnObject` naming the kind found, or `BadField` naming a frame key the object
/// holds a non-null value for.
fn decode_outcome_is_explained(text: &str) -> Result<(), TestCaseError> {
    let parsed = serde_json::from_str::<Value>(&replace_lone_surrogates(text));
    match (Frame::decode(text), parsed) {
        (Ok(_), Ok(Value::Object(_))) => {}
        (Err(DecodeError::NotJson { reason }), Err(_)) => prop_assert!(!reason.is_empty()),
        (Err(DecodeError::NotAnObject { found }), Ok(v)) if !v.is_object() => {
            prop_assert_eq!(found, json_kind(&v));
        }
        (
            Err(DecodeError::BadField {
                field,
                expected,
                found,
            }),
            Ok(Value::Object(map)),
        ) => {
            prop_assert!(WIRE_KEYS.contains(&field), "{}", field);
            prop_assert!(
                map.get(field).is_some_and(|v| !v.is_null()),
                "{} is not in {}",
                field,
                text
            );
            prop_assert!(!expected.is_empty() && !found.is_empty());
        }
        (got, parsed) => prop_assert!(false, "{:?} for {:?} (serde_json: {:?})", got, text, parsed),
    }
    Ok(())
}

/// Strings that stress JSON escaping: quotes, backslashes, control characters,
/// surrogate-pair characters, and anything else Unicode has.
fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\"\\\\/\u{0}-\u{1f}\u{7f}\u{2028}\u{2029}a-z0-9 {}:,é中😀]{0,40}",
        Just(String::new()),
        "-?[0-9]{1,20}",
        Just(r#"{"bridge":false,"type":1}"#.to_owned()),
    ]
}

prop_compose! {
    fn arb_frame()(
        bridge in any::<bool>(),
        ty in any::<i32>(),
        data_content in proptest::option::of(arb_text()),
        from in proptest::option::of(arb_text()),
        to in proptest::option::of(arb_text()),
        fp in proptest::option::of(arb_text()),
        qos in any::<bool>(),
        typeu in any::<i32>(),
        sm in any::<i64>(),
    ) -> Frame {
        Frame { bridge, ty, data_content, from, to, fp, qos, typeu, sm, mid: None, stored: false }
    }
}

/// Any JSON value, a few levels deep.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        arb_text().prop_map(Value::String),
        select(
            &[
                "true",
                "FALSE",
                " 7 ",
                "1e3",
                "2147483648",
                "-9223372036854775808"
            ][..]
        )
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// Mostly the frame's own keys, sometimes anything (including `qos` and `Type`).
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(FRAME_KEYS.to_vec()).prop_map(str::to_owned),
        1 => select(&["qos", "Type", "retryCount", ""][..]).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// A JSON object with any mix of frame keys and other keys, holding any values.
fn arb_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((arb_key(), arb_json()), 0..12)
        .prop_map(|pairs| pairs.into_iter().collect())
}

/// Whether `v` is the value's own JSON type for `key`, which must always decode.
fn is_canonical(key: &str, v: &Value) -> bool {
    match key {
        "bridge" | "QoS" => v.is_boolean(),
        "type" | "typeu" => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        "sm" => v.is_i64(),
        _ => v.is_string(),
    }
}

/// One piece of a JSON string literal: a UTF-16 code unit written as a `\uXXXX`
/// escape (any case, surrogates included), or a character as serde_json writes it.
#[derive(Debug, Clone)]
enum Piece {
    Escape(u16, bool),
    Char(char),
}

fn arb_piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        3 => (0xD800u16..=0xDFFF, any::<bool>()).prop_map(|(u, upper)| Piece::Escape(u, upper)),
        1 => (select(&[0xD83Du16, 0xDBFF, 0xD800][..]), any::<bool>())
            .prop_map(|(u, upper)| Piece::Escape(u, upper)),
        1 => (any::<u16>(), any::<bool>()).prop_map(|(u, upper)| Piece::Escape(u, upper)),
        3 => any::<char>().prop_map(Piece::Char),
        1 => select(&['\\', '"', 'u', 'd', '\n', '😀'][..]).prop_map(Piece::Char),
    ]
}

/// The JSON string literal of `pieces` (without quotes), the text it stands for with
/// every lone surrogate replaced, and how many lone surrogates it holds.
fn literal(pieces: &[Piece]) -> (String, String, usize) {
    let mut json = String::new();
    let mut units = Vec::new();
    for p in pieces {
        match p {
            Piece::Escape(u, true) => json.push_str(&format!("\\u{u:04X}")),
            Piece::Escape(u, false) => json.push_str(&format!("\\u{u:04x}")),
            Piece::Char(c) => {
                let quoted = serde_json::to_string(&c.to_string()).unwrap();
                json.push_str(&quoted[1..quoted.len() - 1]);
            }
        }
        match p {
            Piece::Escape(u, _) => units.push(*u),
            Piece::Char(c) => units.extend(c.encode_utf16(&mut [0; 2]).iter()),
        }
    }
    let mut lone = 0;
    let text = char::decode_utf16(units)
        .map(|r| {
            r.unwrap_or_else(|_| {
                lone += 1;
                char::REPLACEMENT_CHARACTER
            })
        })
        .collect();
    (json, text, lone)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn lone_surrogates_decode_lossily_everywhere(
        pieces in prop::collection::vec(arb_piece(), 0..24),
        other in prop::collection::vec(arb_piece(), 0..8),
    ) {
        let (json, text, lone) = literal(&pieces);
        let (other_json, other_text, _) = literal(&other);
        // Each lone surrogate is one U+FFFD; pairs are one character; nothing else changes.
        let fixed = replace_lone_surrogates(&json);
        prop_assert_eq!(matches!(fixed, std::borrow::Cow::Borrowed(_)), lone == 0);
        let parsed: String = serde_json::from_str(&format!("\"{fixed}\"")).unwrap();
        prop_assert_eq!(&parsed, &text);

        // In a frame: every string field.
        let frame = format!(
            r#"{{"type":2,"dataContent":"{json}","from":"{other_json}","to":"{json}","fp":"{other_json}","QoS":true}}"#
        );
        let f = Frame::decode(&frame).unwrap();
        prop_assert_eq!(f.content(), text.as_str());
        prop_assert_eq!(f.to_id(), text.as_str());
        prop_assert_eq!(f.from_id(), other_text.as_str());
        prop_assert_eq!(f.fp.as_deref(), Some(other_text.as_str()));
        prop_assert_eq!(Frame::decode(&f.to_json()), Ok(f));

        // In a body: every string field.
        let body = format!(
            r#"{{"loginUserId":"{json}","loginToken":"{other_json}","extra":"{json}","app":"{other_json}"}}"#
        );
        let info: LoginInfo = decode_body(Some(&body)).unwrap();
        prop_assert_eq!(&info.login_user_id, &text);
        prop_assert_eq!(&info.login_token, &other_text);
        prop_assert_eq!(info.extra.as_deref(), Some(text.as_str()));
        prop_assert_eq!(info.app.as_deref(), Some(other_text.as_str()));
        let e: ErrorResponse =
            decode_body(Some(&format!(r#"{{"errorCode":1,"errorMsg":"{json}"}}"#))).unwrap();
        prop_assert_eq!(&e.error_msg, &text);
        let k: KickoutInfo =
            decode_body(Some(&format!(r#"{{"code":1,"reason":"{json}"}}"#))).unwrap();
        prop_assert_eq!(k.reason.as_deref(), Some(text.as_str()));

        // A body inside a frame: the frame's string carries the body's escapes.
        let login = serde_json::json!({ "type": 0, "dataContent": body }).to_string();
        let f = Frame::decode(&login).unwrap();
        let info: LoginInfo = decode_body(f.data_content.as_deref()).unwrap();
        prop_assert_eq!(&info.login_user_id, &text);
    }

    #[test]
    fn body_fields_follow_the_frame_fields_coercion(value in arb_json()) {
        // A string, a 64-bit and a 32-bit field of the frame and of a body, given the
        // same value: both refuse it, or both coerce it to the same thing. Only null
        // differs, for a required body field.
        // (Both from text: serde_json's float parsing does not always round-trip.)
        let frame = |key: &str| Frame::decode(&serde_json::json!({ key: value.clone() }).to_string());
        let text = |body: Value| body.to_string();

        let f = frame("from");
        let b = decode_body::<LoginInfo>(Some(&text(serde_json::json!({ "loginUserId": value.clone() }))));
        match (&f, &b) {
            (Ok(f), Ok(b)) => prop_assert_eq!(f.from.as_deref(), Some(b.login_user_id.as_str())),
            (Ok(f), Err(_)) => prop_assert!(value.is_null() && f.from.is_none()),
            (Err(_), Err(_)) => {}
            (Err(e), Ok(b)) => prop_assert!(false, "frame: {}, body: {:?}", e, b),
        }
        let e = decode_body::<ErrorResponse>(Some(&text(serde_json::json!({ "errorCode": 1, "errorMsg": value.clone() }))));
        prop_assert_eq!(
            f.as_ref().ok().map(|f| f.from.clone().unwrap_or_default()),
            e.ok().map(|e| e.error_msg)
        );

        let f = frame("sm");
        let b = decode_body::<LoginInfo>(Some(&text(serde_json::json!({ "loginUserId": "u", "firstLoginTime": value.clone() }))));
        prop_assert_eq!(f.map(|f| f.sm).ok(), b.map(|b| b.first_login_time).ok());

        let f = frame("type");
        for b in [
            decode_body::<LoginResponse>(Some(&text(serde_json::json!({ "code": value.clone() })))).map(|b| b.code),
            decode_body::<KickoutInfo>(Some(&text(serde_json::json!({ "code": value.clone() })))).map(|b| b.code),
            decode_body::<ErrorResponse>(Some(&text(serde_json::json!({ "errorCode": value.clone() })))).map(|b| b.error_code),
        ] {
            match (&f, &b) {
                (Ok(f), Ok(b)) => prop_assert_eq!(f.ty, *b),
                (Ok(f), Err(_)) => prop_assert!(value.is_null() && f.ty == 0),
                (Err(_), Err(_)) => {}
                (Err(e), Ok(b)) => prop_assert!(false, "frame: {}, body: {}", e, b),
            }
        }
    }

    #[test]
    fn body_numbers_may_arrive_as_strings_and_ids_as_numbers(
        user in any::<i64>(),
        time in any::<i64>(),
        code in any::<i32>(),
        float in any::<bool>(),
        token in any::<u32>(),
    ) {
        // What a web client holding everything as whatever its last parse gave sends.
        let t = if float && time.unsigned_abs() < (1 << 53) {
            serde_json::json!(format!("{time}.0"))
        } else {
            serde_json::json!(format!(" {time} "))
        };
        let info: LoginInfo = decode_body(Some(
            &serde_json::json!({ "loginUserId": user, "loginToken": token, "firstLoginTime": t }).to_string(),
        )).unwrap();
        prop_assert_eq!(
            (info.login_user_id, info.login_token, info.first_login_time),
            (user.to_string(), token.to_string(), time)
        );
        let r: LoginResponse = decode_body(Some(
            &serde_json::json!({ "code": code.to_string(), "firstLoginTime": time.to_string() }).to_string(),
        )).unwrap();
        prop_assert_eq!(r, LoginResponse { code, first_login_time: time, ext: Vec::new() });
        let k: KickoutInfo = decode_body(Some(
            &serde_json::json!({ "code": code.to_string(), "reason": code }).to_string(),
        )).unwrap();
        prop_assert_eq!(k, KickoutInfo { code, reason: Some(code.to_string()) });
        let e: ErrorResponse = decode_body(Some(
            &serde_json::json!({ "errorCode": format!("{code}"), "errorMsg": false }).to_string(),
        )).unwrap();
        prop_assert_eq!(e, ErrorResponse { error_code: code, error_msg: "false".into() });
        // An integral float is an integer; anything else is refused with a reason.
        if code.unsigned_abs() < (1 << 24) {
            let r: LoginResponse = decode_body(Some(&format!(r#"{{"code":{code}.0}}"#))).unwrap();
            prop_assert_eq!(r.code, code);
        }
        let bad = decode_body::<LoginResponse>(Some(&format!(r#"{{"code":"{code}x"}}"#)));
        prop_assert!(
            matches!(&bad, Err(DecodeError::BadBody { body: "PLoginInfoResponse", reason }) if reason.contains("expected a 32-bit integer") || reason.contains("expected an integer")),
            "{:?}", bad
        );
    }

    #[test]
    fn any_frame_round_trips(frame in arb_frame()) {
        let text = frame.to_json();
        prop_assert_eq!(Frame::decode(&text), Ok(frame.clone()));
        match frame.encode() {
            Ok(encoded) => {
                prop_assert!(encoded.len() <= MAX_FRAME_BYTES);
                prop_assert_eq!(encoded, text);
            }
            Err(EncodeError::TooLarge { len, limit }) => {
                prop_assert_eq!(limit, MAX_FRAME_BYTES);
                prop_assert_eq!(len, text.len());
                prop_assert!(len > MAX_FRAME_BYTES);
            }
        }
        let value = serde_json::to_value(&frame).unwrap();
        prop_assert_eq!(Frame::from_value(value), Ok(frame));
    }

    #[test]
    fn the_size_limit_is_exact(frame in arb_frame(), slack in 0usize..3) {
        let len = frame.to_json().len();
        prop_assert!(frame.encode_with_limit(len + slack).is_ok());
        if len > 0 {
            prop_assert_eq!(
                frame.encode_with_limit(len - 1),
                Err(EncodeError::TooLarge { len, limit: len - 1 })
            );
        }
    }

    #[test]
    fn frames_keep_none_fields_out_of_the_json(frame in arb_frame()) {
        let value = serde_json::to_value(&frame).unwrap();
        let map = value.as_object().unwrap();
        prop_assert_eq!(map.contains_key("dataContent"), frame.data_content.is_some());
        prop_assert_eq!(map.contains_key("from"), frame.from.is_some());
        prop_assert_eq!(map.contains_key("to"), frame.to.is_some());
        prop_assert_eq!(map.contains_key("fp"), frame.fp.is_some());
        prop_assert!(map.values().all(|v| !v.is_null()));
        prop_assert!(map.keys().all(|k| FRAME_KEYS.contains(&k.as_str())));
    }

    #[test]
    fn decoding_arbitrary_text_never_panics(text in any::<String>()) {
        decode_outcome_is_explained(&text)?;
    }

    #[test]
    fn decoding_json_like_text_never_panics(text in r#"[{}\[\]":, 0-9a-zA-Z.eE+\-\\]{0,64}"#) {
        decode_outcome_is_explained(&text)?;
        if let Err(e) = decode_body::<LoginInfo>(Some(&text)) {
            prop_assert!(
                matches!(&e, DecodeError::BadBody { body: "PLoginInfo", reason } if !reason.is_empty()),
                "{:?}", e
            );
        }
    }

    #[test]
    fn decoding_objects_with_wire_keys_names_what_was_wrong(
        map in proptest::collection::btree_map(select(WIRE_KEYS.to_vec()), arb_json(), 0..5),
    ) {
        let text = Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()).to_string();
        decode_outcome_is_explained(&text)?;
    }

    #[test]
    fn non_objects_are_not_frames(value in arb_json().prop_filter("not an object", |v| !v.is_object())) {
        let expected = Err(DecodeError::NotAnObject { found: match &value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => unreachable!(),
        }});
        prop_assert_eq!(Frame::decode(&value.to_string()), expected.clone());
        prop_assert_eq!(Frame::from_value(value), expected);
    }

    #[test]
    fn any_object_decodes_or_names_a_bad_field(map in arb_object()) {
        let text = Value::Object(map.clone()).to_string();
        match Frame::decode(&text) {
            Ok(frame) => {
                // Canonical values come through as they are; absent or null keys take
                // upstream's zero values.
                let field = |k: &str| map.get(k).filter(|v| !v.is_null());
                let expect_bool = |k, got: bool| match field(k) {
                    None => !got,
                    Some(v) if is_canonical(k, v) => v.as_bool() == Some(got),
                    Some(_) => true,
                };
                prop_assert!(expect_bool("bridge", frame.bridge));
                prop_assert!(expect_bool("QoS", frame.qos));
                for (k, got) in [("type", frame.ty as i64), ("typeu", frame.typeu as i64), ("sm", frame.sm)] {
                    match field(k) {
                        None => prop_assert_eq!(got, 0),
                        Some(v) if is_canonical(k, v) => prop_assert_eq!(v.as_i64(), Some(got)),
                        Some(_) => {}
                    }
                }
                for (k, got) in [
                    ("dataContent", &frame.data_content),
                    ("from", &frame.from),
                    ("to", &frame.to),
                    ("fp", &frame.fp),
                ] {
                    match field(k) {
                        None => prop_assert_eq!(got, &None),
                        Some(Value::String(s)) => prop_assert_eq!(got.as_deref(), Some(s.as_str())),
                        Some(_) => prop_assert!(got.is_some()),
                    }
                }
                // Whatever was accepted re-encodes to a frame that decodes to itself.
                prop_assert_eq!(Frame::decode(&frame.to_json()), Ok(frame));
            }
            Err(DecodeError::BadField { field, .. }) => {
                let v = map.get(field);
                prop_assert!(v.is_some(), "{} is not in the object", field);
                let v = v.unwrap();
                prop_assert!(!v.is_null() && !is_canonical(field, v), "{} = {} was refused", field, v);
            }
            Err(e) => prop_assert!(false, "an object gave {:?}", e),
        }
    }

    #[test]
    fn one_bad_field_is_named(frame in arb_frame(), key in select(FRAME_KEYS.to_vec()), value in arb_json()) {
        let mut map = match serde_json::to_value(&frame).unwrap() {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        map.insert(key.to_owned(), value);
        if let Err(e) = Frame::from_value(Value::Object(map)) {
            prop_assert!(
                matches!(e, DecodeError::BadField { field, .. } if field == key),
                "{:?} for {}", e, key
            );
        }
    }

    #[test]
    fn numbers_and_booleans_may_arrive_as_strings(
        ty in any::<i32>(),
        typeu in any::<i32>(),
        sm in any::<i64>(),
        qos in any::<bool>(),
        upper in any::<bool>(),
    ) {
        let b = if upper { qos.to_string().to_uppercase() } else { qos.to_string() };
        let text = serde_json::json!({
            "type": ty.to_string(),
            "typeu": format!(" {typeu} "),
            "sm": sm.to_string(),
            "QoS": b,
            "bridge": "false",
        })
        .to_string();
        let f = Frame::decode(&text).unwrap();
        prop_assert_eq!((f.ty, f.typeu, f.sm, f.qos, f.bridge), (ty, typeu, sm, qos, false));
    }

    #[test]
    fn integers_out_of_range_are_refused(n in prop_oneof![
        (i32::MAX as i64 + 1)..=i64::MAX,
        i64::MIN..(i32::MIN as i64),
    ]) {
        for field in ["type", "typeu"] {
            let text = serde_json::json!({ field: n }).to_string();
            let refused = matches!(
                Frame::decode(&text),
                Err(DecodeError::BadField { field: f, .. }) if f == field
            );
            prop_assert!(refused, "{} = {} was accepted", field, n);
        }
        let text = serde_json::json!({ "sm": n }).to_string();
        prop_assert_eq!(Frame::decode(&text).unwrap().sm, n);
    }

    #[test]
    fn login_bodies_round_trip(
        login_user_id in arb_text(),
        login_token in arb_text(),
        extra in proptest::option::of(arb_text()),
        first_login_time in any::<i64>(),
        app in proptest::option::of(arb_text()),
    ) {
        let info = LoginInfo { login_user_id, login_token, extra, first_login_time, app };
        let text = encode_body(&info);
        prop_assert_eq!(decode_body::<LoginInfo>(Some(&text)), Ok(info.clone()));
        // Double-encoded inside a frame, the body survives the frame's codec too.
        let frame = Frame::decode(&Frame::login(&info).to_json()).unwrap();
        prop_assert_eq!(frame.from.as_deref(), Some(info.login_user_id.as_str()));
        prop_assert_eq!(decode_body::<LoginInfo>(frame.data_content.as_deref()), Ok(info));
    }

    #[test]
    fn server_bodies_round_trip(
        code in any::<i32>(),
        first_login_time in any::<i64>(),
        error_msg in arb_text(),
        reason in proptest::option::of(arb_text()),
    ) {
        let response = LoginResponse { code, first_login_time, ext: Vec::new() };
        prop_assert_eq!(decode_body(Some(&encode_body(&response))), Ok(response));
        let error = ErrorResponse { error_code: code, error_msg };
        prop_assert_eq!(decode_body(Some(&encode_body(&error))), Ok(error.clone()));
        let frame = Frame::decode(&Frame::error_response(&error).to_json()).unwrap();
        prop_assert_eq!(decode_body(frame.data_content.as_deref()), Ok(error));
        let kickout = KickoutInfo { code, reason };
        prop_assert_eq!(decode_body(Some(&encode_body(&kickout))), Ok(kickout.clone()));
        prop_assert_eq!(decode_body::<KeepAlive>(Some(&encode_body(&KeepAlive {}))), Ok(KeepAlive {}));
    }

    #[test]
    fn decoding_arbitrary_bodies_never_panics(text in any::<String>()) {
        for result in [
            decode_body::<LoginInfo>(Some(&text)).err(),
            decode_body::<LoginResponse>(Some(&text)).err(),
            decode_body::<ErrorResponse>(Some(&text)).err(),
            decode_body::<KickoutInfo>(Some(&text)).err(),
            decode_body::<KeepAlive>(Some(&text)).err(),
        ].into_iter().flatten() {
            prop_assert!(matches!(result, DecodeError::BadBody { .. }), "{:?}", result);
        }
    }

    #[test]
    fn every_server_number_has_a_meaning_that_maps_back(
        ty in prop_oneof![any::<i32>(), -2i32..=60],
        dialect in select(&[Dialect::Seed, Dialect::MobileImSdkV6][..]),
    ) {
        let kind = dialect.server_kind(ty);
        let back = dialect.server_type(kind);
        if dialect == Dialect::Seed && ty == 4 {
            // The seed dialect accepts a type-4 ACK but writes its own, 54.
            prop_assert_eq!(kind, ServerKind::Ack);
            prop_assert_eq!(back, 54);
        } else {
            prop_assert_eq!(back, ty);
        }
        prop_assert_eq!(dialect.server_kind(back), kind);
        if let ServerKind::Other(n) = kind {
            prop_assert_eq!(n, ty);
        }
    }

    #[test]
    fn client_numbers_and_codes_survive(n in any::<i32>()) {
        prop_assert_eq!(ClientKind::from_type(n).to_type(), n);
        prop_assert_eq!(ResultCode::from_code(n).code(), n);
        prop_assert_eq!(KickoutCode::from_code(n).code(), n);
        prop_assert!(ResultCode::from_code(n).to_string().starts_with(&n.to_string()));
    }
}

#[test]
fn every_server_meaning_has_a_number_in_both_dialects() {
    let kinds = [
        ServerKind::LoginResponse,
        ServerKind::KeepAliveResponse,
        ServerKind::Error,
        ServerKind::EchoResponse,
        ServerKind::Kickout,
        ServerKind::Data,
        ServerKind::Ack,
    ];
    for dialect in [Dialect::Seed, Dialect::MobileImSdkV6] {
        let numbers: std::collections::BTreeSet<i32> =
            kinds.iter().map(|&k| dialect.server_type(k)).collect();
        assert_eq!(
            numbers.len(),
            kinds.len(),
            "{dialect}: two meanings share a number"
        );
        for k in kinds {
            assert_eq!(dialect.server_kind(dialect.server_type(k)), k, "{dialect}");
        }
        assert_eq!(dialect.to_string().parse::<Dialect>(), Ok(dialect));
    }
}
