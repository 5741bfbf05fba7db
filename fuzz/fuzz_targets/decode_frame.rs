//! Decodes arbitrary text as a frame; whatever decodes must survive encode and decode
//! unchanged. The same text, and any decoded frame's `dataContent`, go through every
//! control body's decoder under the same rule.

#![no_main]

use std::fmt::Debug;

use bevy_im::protocol::{
    Body, EncodeError, ErrorResponse, Frame, KeepAlive, KickoutInfo, LoginInfo, LoginResponse,
    MAX_FRAME_BYTES, decode_body, encode_body,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = Frame::decode(text) {
        let encoded = frame.to_json();
        let again = Frame::decode(&encoded).expect("a re-encoded frame decodes");
        assert_eq!(again, frame);
        assert_eq!(again.to_json(), encoded);
        match frame.encode() {
            Ok(checked) => assert_eq!(checked, encoded),
            Err(EncodeError::TooLarge { len, limit }) => {
                assert_eq!((len, limit), (encoded.len(), MAX_FRAME_BYTES));
                assert!(len > MAX_FRAME_BYTES);
            }
        }
        bodies(frame.data_content.as_deref());
    }
    bodies(Some(text));
});

fn bodies(content: Option<&str>) {
    body::<LoginInfo>(content);
    body::<LoginResponse>(content);
    body::<ErrorResponse>(content);
    body::<KickoutInfo>(content);
    body::<KeepAlive>(content);
}

fn body<B: Body + PartialEq + Debug>(content: Option<&str>) {
    if let Ok(decoded) = decode_body::<B>(content) {
        let encoded = encode_body(&decoded);
        let again = decode_body::<B>(Some(&encoded)).expect("a re-encoded body decodes");
        assert_eq!(again, decoded);
        assert_eq!(encode_body(&again), encoded);
    }
}
