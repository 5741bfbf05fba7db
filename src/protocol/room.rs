//! The social extension (`docs/PROTOCOL-EXTENSIONS.md`): room addresses, the names
//! of negotiated extensions, the bodies of room requests (type 100) and replies or
//! events (type 150), and their codes.

use serde::{Deserialize, Serialize};

use super::body::Body;

/// What a room address starts with; user ids that start with it are refused at
/// login, so a room can never be mistaken for a user.
pub const ROOM_PREFIX: char = '#';

/// The longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 64;

/// The names a server lists in its login reply's `ext` for what it serves.
pub mod ext {
    /// Rooms: join, leave, members, list, room messages.
    pub const ROOMS: &str = "rooms";
    /// Presence events in rooms.
    pub const PRESENCE: &str = "presence";
    /// History of rooms and of pairs of users.
    pub const HISTORY: &str = "history";
    /// Offline messages: a QoS message to a user who is not online is stored.
    pub const OFFLINE: &str = "offline";
    /// Per-user block lists.
    pub const BLOCK: &str = "block";
}

/// The codes of room replies and of the extension's error frames (type 52). 0 is
/// success; the others follow HTTP's numbers, as `429` (rate limited) already does.
pub mod room_code {
    /// Done.
    pub const OK: i32 = 0;
    /// The request is malformed: unknown op, bad room name, bad cursor or limit.
    pub const BAD_REQUEST: i32 = 400;
    /// Refused by the server's hook (a private room), or the receiver blocked the
    /// sender, or the moderation hook refused the message.
    pub const FORBIDDEN: i32 = 403;
    /// No such room (or the user is not a member of it, for a room message).
    pub const NOT_FOUND: i32 = 404;
    /// The room is at its member cap.
    pub const FULL: i32 = 409;
    /// Too many requests or messages from this user: resend later.
    pub const RATE_LIMITED: i32 = 429;
    /// The store could not be written (disk full, read-only file): nothing was
    /// stored or delivered.
    pub const STORE_FAILED: i32 = 500;
    /// The receiver is online but cannot take the message now (its outbound queue or
    /// its pending QoS table is full): nothing was delivered; resend later.
    pub const RECEIVER_BUSY: i32 = 503;
    /// The receiver's offline box is full.
    pub const BOX_FULL: i32 = 507;
}

/// Why a room name is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomNameError {
    /// The name is empty.
    #[error("the room name is empty")]
    Empty,
    /// The name is longer than [`MAX_ROOM_NAME`] bytes.
    #[error("the room name is longer than {MAX_ROOM_NAME} bytes")]
    TooLong,
    /// The name holds something other than ASCII letters, digits, `-`, `_` and `.`.
    #[error("the room name may hold only ASCII letters, digits, '-', '_' and '.'")]
    BadCharacter,
}

/// Checks a room name (without the `#`): 1 to 64 ASCII letters, digits, `-`, `_`, `.`.
///
/// # Errors
/// [`RoomNameError`] saying what is wrong.
pub fn validate_room_name(name: &str) -> Result<(), RoomNameError> {
    if name.is_empty() {
        return Err(RoomNameError::Empty);
    }
    if name.len() > MAX_ROOM_NAME {
        return Err(RoomNameError::TooLong);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(RoomNameError::BadCharacter);
    }
    Ok(())
}

/// The address of room `name`, as it goes in a data frame's `to`: `"#name"`.
pub fn room_address(name: &str) -> String {
    format!("{ROOM_PREFIX}{name}")
}

/// The room name in an address, when it is a room address.
pub fn room_of_address(address: &str) -> Option<&str> {
    address.strip_prefix(ROOM_PREFIX)
}

/// What a room request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bevy::prelude::Reflect)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RoomOp {
    /// Join `room` (created on first join); `after`: the last message id the client
    /// saw, to catch up after a re-login instead of getting the recent history.
    Join,
    /// Leave `room`.
    Leave,
    /// The members of `room` and their presence.
    Members,
    /// A page of history: of `room`, or of the pair with `peer`; messages with ids
    /// below `before` (newest page when absent), at most `limit`.
    History,
    /// The public rooms.
    Rooms,
    /// Block direct messages from `user`.
    Block,
    /// Unblock `user`.
    Unblock,
    /// Reply only: a member joined `room` (`user`).
    Joined,
    /// Reply only: a member left `room` (`user`), or was removed after the grace period.
    Left,
    /// Reply only: a member of `room` (`user`) went online or offline (`online`).
    Presence,
    /// Event only: live copies of messages of `room` could not be handed to this
    /// member (`user`: the member itself), whose queue was full; they are in the
    /// room's history, and a re-join with `after` fetches them.
    Missed,
    /// An op this side does not know (a newer peer); answered with 400.
    #[serde(other)]
    Unknown,
}

/// A room request (type 100): `{"req":7,"op":"join","room":"lobby"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRequest {
    /// The client's request id, echoed in the reply.
    #[serde(default)]
    pub req: u64,
    /// What is asked.
    pub op: RoomOp,
    /// The room name (without `#`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The other user of a direct-history request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The user to block or unblock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// History: only messages with smaller ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    /// Join: only messages with larger ids (catching up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// History: at most this many messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl RoomRequest {
    /// A request of `op` with id `req` and nothing else set.
    pub fn new(req: u64, op: RoomOp) -> Self {
        Self {
            req,
            op,
            room: None,
            peer: None,
            user: None,
            before: None,
            after: None,
            limit: None,
        }
    }

    /// Sets the room.
    pub fn room(mut self, room: impl Into<String>) -> Self {
        self.room = Some(room.into());
        self
    }
}

impl Body for RoomRequest {
    const NAME: &'static str = "RoomRequest";
}

/// A member of a room and whether their link is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bevy::prelude::Reflect)]
pub struct Member {
    /// The user id.
    pub user: String,
    /// Whether the user's link is up (false while it is down, within the grace
    /// period).
    pub online: bool,
}

/// A stored message, as history carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bevy::prelude::Reflect)]
pub struct HistoryMessage {
    /// The server's id: increasing per room (or per pair).
    pub mid: i64,
    /// When the server accepted it, in ms since the Unix epoch.
    pub ts: i64,
    /// The sender.
    pub from: String,
    /// The receiver: a user id or a room address.
    pub to: String,
    /// The message.
    pub content: String,
    /// The app-defined sub-type.
    #[serde(default)]
    pub typeu: i32,
    /// The sender's fingerprint, for de-duplication against live copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp: Option<String>,
}

/// A public room in a room list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bevy::prelude::Reflect)]
pub struct RoomInfo {
    /// The room name.
    pub room: String,
    /// How many members it has.
    pub members: usize,
}

/// A room reply or event (type 150). Replies carry the request's `req` and a `code`;
/// events (`joined`, `left`, `presence`) carry no `req`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomReply {
    /// What this answers or reports.
    pub op: RoomOp,
    /// The request id this answers; absent on events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<u64>,
    /// 0, or one of [`room_code`].
    #[serde(default)]
    pub code: i32,
    /// Why it failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    /// The room it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The peer of a direct-history reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The member an event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A presence event's new state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// The members (join, members).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    /// Messages, oldest first (join: recent or missed ones; history: one page).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<HistoryMessage>,
    /// Whether older messages exist than the oldest returned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// The public rooms (rooms).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<RoomInfo>,
}

impl RoomReply {
    /// A reply of `op` with nothing else set.
    fn bare(op: RoomOp) -> Self {
        Self {
            op,
            req: None,
            code: 0,
            msg: None,
            room: None,
            peer: None,
            user: None,
            online: None,
            members: Vec::new(),
            messages: Vec::new(),
            more: false,
            rooms: Vec::new(),
        }
    }

    /// A reply to `request` with `code` and nothing else set.
    pub fn to(request: &RoomRequest, code: i32) -> Self {
        Self {
            req: Some(request.req),
            code,
            room: request.room.clone(),
            peer: request.peer.clone(),
            user: request.user.clone(),
            ..Self::bare(request.op)
        }
    }

    /// An event about `user` in `room`.
    pub fn event(op: RoomOp, room: &str, user: &str, online: Option<bool>) -> Self {
        Self {
            room: Some(room.to_owned()),
            user: Some(user.to_owned()),
            online,
            ..Self::bare(op)
        }
    }

    /// Sets the failure message.
    pub fn msg(mut self, msg: impl Into<String>) -> Self {
        self.msg = Some(msg.into());
        self
    }
}

impl Body for RoomReply {
    const NAME: &'static str = "RoomReply";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_body, encode_body};

    #[test]
    fn room_names_are_checked() {
        assert_eq!(validate_room_name("lobby-1.eu_west"), Ok(()));
        assert_eq!(validate_room_name(""), Err(RoomNameError::Empty));
        assert_eq!(
            validate_room_name(&"x".repeat(65)),
            Err(RoomNameError::TooLong)
        );
        assert_eq!(validate_room_name(&"x".repeat(64)), Ok(()));
        assert_eq!(validate_room_name("a b"), Err(RoomNameError::BadCharacter));
        assert_eq!(
            validate_room_name("#lobby"),
            Err(RoomNameError::BadCharacter)
        );
        assert_eq!(room_address("lobby"), "#lobby");
        assert_eq!(room_of_address("#lobby"), Some("lobby"));
        assert_eq!(room_of_address("alice"), None);
    }

    #[test]
    fn requests_and_replies_have_the_documented_bytes() {
        let join = RoomRequest::new(7, RoomOp::Join).room("lobby");
        assert_eq!(
            encode_body(&join),
            r#"{"req":7,"op":"join","room":"lobby"}"#
        );
        let event = RoomReply::event(RoomOp::Presence, "lobby", "bob", Some(false));
        assert_eq!(
            encode_body(&event),
            r#"{"op":"presence","code":0,"room":"lobby","user":"bob","online":false}"#
        );
        let back: RoomReply = decode_body(Some(&encode_body(&event))).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn an_unknown_op_decodes_as_unknown() {
        let r: RoomRequest = decode_body(Some(r#"{"req":1,"op":"dance"}"#)).unwrap();
        assert_eq!(r.op, RoomOp::Unknown);
    }
}
