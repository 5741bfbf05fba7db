//! The MobileIMSDK wire protocol: frames, type numbers, dialects, result codes,
//! payload bodies and fingerprints.
//!
//! Pure data and a JSON codec: no Bevy, no I/O, no clock. Both the client and the
//! reference server build on it.

mod body;
mod code;
mod error;
mod fingerprint;
mod frame;
mod kind;
mod lenient;
mod room;

pub use body::{
    Body, ErrorResponse, KeepAlive, KickoutInfo, LoginInfo, LoginResponse, decode_body, encode_body,
};
pub use code::ResultCode;
pub use error::{DecodeError, EncodeError};
pub use fingerprint::new_fingerprint;
pub use frame::{Frame, MAX_FRAME_BYTES, SERVER_ID, UNSET_ID};
pub use kind::{ClientKind, Dialect, KickoutCode, ServerKind, wire};
pub use lenient::replace_lone_surrogates;
pub use room::{
    HistoryMessage, MAX_ROOM_NAME, Member, ROOM_PREFIX, RoomInfo, RoomNameError, RoomOp, RoomReply,
    RoomRequest, ext, room_address, room_code, room_of_address, validate_room_name,
};
