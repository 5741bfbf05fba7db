//! What the client tells the game: one type per event, defined once. Each is a Bevy
//! message (read with `MessageReader<T>`) and an observer event (`On<T>`), and each
//! names the client entity it came from, so several clients can share one `App`.
//!
//! Outside Bevy ([`ClientCore`](super::ClientCore) driven by hand) `client` is the
//! entity the core was given, [`Entity::PLACEHOLDER`] by default.

use std::time::Duration;

use bevy::prelude::{Entity, Event, Message, Reflect};

use super::{FrameProblem, RoomError};
use crate::protocol::{Frame, HistoryMessage, KickoutCode, Member, ResultCode, RoomInfo, RoomOp};
use crate::transport::TransportError;

/// A login or re-login succeeded (the seed's `onLoginOrReloginSuccessCB`).
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct LoginSucceeded {
    /// The client entity.
    pub client: Entity,
    /// The user now logged in.
    pub user_id: String,
    /// True for an automatic re-login, false for a login the game asked for.
    pub relogin: bool,
    /// The server's time of the first login (ms since the epoch), presented on every
    /// re-login.
    pub first_login_time: i64,
}

/// A login or re-login failed (the seed's `onLoginOrReloginFailCB`).
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct LoginFailed {
    /// The client entity.
    pub client: Entity,
    /// The server's code (the login hook's), or 202 when the link could not be made
    /// or the login timed out.
    pub code: ResultCode,
    /// True for an automatic re-login attempt.
    pub relogin: bool,
}

/// Why a link closed.
#[derive(Reflect, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The server closed the link with a WebSocket close frame (code and reason as
    /// sent), or without one (`None`).
    ByServer {
        /// The close code (1000 normal, 1001 going away, 1009 too big, ...).
        code: Option<u16>,
        /// The close reason, possibly empty.
        reason: String,
    },
    /// No keepalive reply within the sense mode's timeout.
    KeepaliveTimeout,
    /// The server answered 301: it no longer knows this session.
    NotLoggedIn,
    /// The server kicked this session out ([`Kicked`] says why).
    Kicked,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ByServer {
                code: Some(code),
                reason,
            } if !reason.is_empty() => {
                write!(f, "closed by the server ({code}: {reason})")
            }
            Self::ByServer {
                code: Some(code), ..
            } => write!(f, "closed by the server ({code})"),
            Self::ByServer { code: None, .. } => write!(f, "lost (no close frame)"),
            Self::KeepaliveTimeout => write!(f, "keepalive timeout"),
            Self::NotLoggedIn => write!(f, "the server says not logged in"),
            Self::Kicked => write!(f, "kicked out"),
        }
    }
}

impl CloseReason {
    /// The seed's `onLinkCloseMessageCB` code: -1 for a lost link, 301, or the
    /// server's close code.
    pub fn seed_code(&self) -> i32 {
        match self {
            Self::ByServer { code: Some(c), .. } => i32::from(*c),
            Self::NotLoggedIn => 301,
            _ => -1,
        }
    }
}

/// The link to the server closed while logged in (the seed's `onLinkCloseMessageCB`).
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct LinkClosed {
    /// The client entity.
    pub client: Entity,
    /// Why.
    pub reason: CloseReason,
}

/// Data from another user or the server (the seed's `onTransBufferCB`): a direct
/// message, a message to a room the client is in (`room` is set), or a message
/// stored while the client was offline (`mid` and `sent_at_ms` set, `room` not).
///
/// A room message is delivered once per `mid`: a live copy and a history copy (the
/// catch-up of a re-join) of the same message reach the game once.
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct DataReceived {
    /// The client entity.
    pub client: Entity,
    /// The sender's fingerprint, for QoS messages.
    pub fp: Option<String>,
    /// The sender's user id (`"0"` for the server).
    pub from: String,
    /// The message.
    pub content: String,
    /// The app-defined sub-type.
    pub typeu: i32,
    /// The room (its name, without `#`) for a room message; `None` for a message to
    /// this user.
    pub room: Option<String>,
    /// The server's id of a stored message (room messages, offline messages):
    /// increasing per room, for ordering and de-duplication.
    pub mid: Option<i64>,
    /// When the server accepted the message, in ms since the Unix epoch, when it
    /// says (room and offline messages).
    pub sent_at_ms: Option<i64>,
}

impl DataReceived {
    /// Parses the content as JSON into `T`.
    ///
    /// # Errors
    /// [`PayloadError::Json`] when the content is not JSON of `T`'s shape.
    pub fn parse_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, PayloadError> {
        serde_json::from_str(&self.content).map_err(|e| PayloadError::Json(e.to_string()))
    }

    /// Parses a [`TypedMessage`]: `None` when `typeu` is another type's (so a game
    /// can try each type it knows without string matching), otherwise the JSON.
    ///
    /// ```
    /// use bevy_im::client::{DataReceived, TypedMessage};
    /// # use bevy::prelude::Entity;
    /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// struct Move { x: f32, y: f32 }
    /// impl TypedMessage for Move { const TYPEU: i32 = 10; }
    ///
    /// let msg = DataReceived {
    ///     client: Entity::PLACEHOLDER, fp: None, from: "bob".into(),
    ///     content: r#"{"x":1.0,"y":2.0}"#.into(), typeu: 10,
    ///     room: None, mid: None, sent_at_ms: None,
    /// };
    /// assert_eq!(msg.parse::<Move>(), Some(Ok(Move { x: 1.0, y: 2.0 })));
    /// ```
    pub fn parse<T: TypedMessage>(&self) -> Option<Result<T, PayloadError>> {
        (self.typeu == T::TYPEU).then(|| self.parse_json())
    }
}

/// A payload type tied to a `typeu`, sent with `send_typed` and read with
/// [`DataReceived::parse`]. Pick numbers that do not collide; upstream reserves
/// none, and plain strings keep `typeu` 0.
pub trait TypedMessage: serde::Serialize + serde::de::DeserializeOwned {
    /// The `typeu` this type travels with.
    const TYPEU: i32;
}

/// Why a received payload could not be read as the asked type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The content is not JSON of the type's shape.
    #[error("payload is not the expected JSON: {0}")]
    Json(String),
}

/// An error frame from the server (the seed's `onTransErrorCB`). Rate-limit refusals
/// (429) are [`SendThrottled`] instead, and refusals of the client's own messages
/// [`MessageRefused`].
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The client entity.
    pub client: Entity,
    /// The error code (301: not logged in).
    pub code: ResultCode,
    /// The server's message; upstream puts the rejected frame here.
    pub msg: String,
}

/// QoS messages the server never ACKed nor refused (the seed's `handleMessageLost`), or that were
/// still waiting when the session ended (logout, release, kickout, another user's
/// login). The frames are complete, so the game can send their content again.
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct MessagesLost {
    /// The client entity.
    pub client: Entity,
    /// The lost frames, in the order they were sent.
    pub frames: Vec<Frame>,
}

/// The server ACKed a QoS message (the seed's `messagesBeReceivedCB`): relayed to an
/// online receiver, accepted for a room, or stored for a receiver who is offline
/// (`stored`), to be delivered at their next login.
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct MessageDelivered {
    /// The client entity.
    pub client: Entity,
    /// The message's fingerprint, as returned by `send`.
    pub fp: String,
    /// The receiver was offline: the server stored the message for later (extension
    /// `offline`). False for every upstream ACK: relayed to the receiver.
    pub stored: bool,
    /// The server's id of the stored message (room messages, stored messages).
    pub mid: Option<i64>,
}

/// The server refused one of the client's messages with an error frame naming it
/// (403 refused or blocked, 404 not a member of the room, 500 store failed, 507 the
/// receiver's offline box is full: `room_code`). Nothing was delivered. For a QoS
/// message this is its one outcome: it leaves the pending table and is neither
/// delivered nor lost later.
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct MessageRefused {
    /// The client entity.
    pub client: Entity,
    /// The message's fingerprint (`None` for a message sent without one).
    pub fp: Option<String>,
    /// The server's code.
    pub code: i32,
    /// The refused frame, as the server sent it back, so the game can show or send
    /// its content again.
    pub frame: Frame,
}

/// The server refused a frame for its rate limit (error 429). Not a failure: a QoS
/// message stays pending, is written again after `retry_in`, and still ends in
/// [`MessageDelivered`] or [`MessagesLost`].
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct SendThrottled {
    /// The client entity.
    pub client: Entity,
    /// The refused message's fingerprint, when the refused frame was data and named one.
    pub fp: Option<String>,
    /// When it is written again; `None` when it is not (not a pending QoS message, or
    /// its throttled retries are used up and its normal resends go on).
    pub retry_in: Option<Duration>,
}

/// The server ended the session (kickout); no re-login follows.
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct Kicked {
    /// The client entity.
    pub client: Entity,
    /// Why.
    pub code: KickoutCode,
    /// The server's reason, if given.
    pub reason: Option<String>,
}

/// An automatic re-login attempt started.
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct ReloginStarted {
    /// The client entity.
    pub client: Entity,
    /// 1 for the first attempt after the link was lost.
    pub attempt: u32,
}

/// Why automatic re-login stopped before a session was back.
#[derive(Reflect, Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReloginStop {
    /// The server refused the login with this code: the same token would be refused
    /// again. Give a fresh one with `set_token` to go on.
    Refused(ResultCode),
    /// [`ReloginLimits::max_attempts`](super::ReloginLimits) attempts failed.
    AttemptsExhausted,
    /// [`ReloginLimits::max_duration`](super::ReloginLimits) passed since the link was
    /// lost.
    TimeExhausted,
}

/// Automatic re-login gave up; the client is offline. Messages still pending end
/// lost at their deadlines; a new `login` or `set_token` starts again.
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct ReloginStopped {
    /// The client entity.
    pub client: Entity,
    /// Why.
    pub reason: ReloginStop,
}

/// A logout finished (the seed's `logout(callBack)`).
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct LoggedOut {
    /// The client entity.
    pub client: Entity,
    /// 0 when the logout frame was sent, 1 when not logged in (nothing sent).
    pub code: ResultCode,
}

/// The outcome of writing a message the game sent (the seed's `send(callBack)`).
/// QoS messages queued during a re-login get none: their outcome is
/// [`MessageDelivered`] or [`MessagesLost`].
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// The client entity.
    pub client: Entity,
    /// The message's fingerprint (`None` for a message without QoS or fingerprint).
    pub fp: Option<String>,
    /// 0 when written, 3 when the link could not take it.
    pub code: ResultCode,
}

/// A keepalive reply arrived.
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct KeepaliveReply {
    /// The client entity.
    pub client: Entity,
    /// The round-trip time of the keepalive it answered, taken when the reply was
    /// handed to the client.
    pub rtt: Option<Duration>,
}

/// The link reported an error (a [`LinkClosed`] or [`LoginFailed`] follows if it
/// ended the session).
#[derive(Message, Event, Debug, Clone, PartialEq, Eq)]
pub struct LinkError {
    /// The client entity.
    pub client: Entity,
    /// What went wrong.
    pub error: TransportError,
}

/// A frame from the server could not be used.
#[derive(Message, Event, Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    /// The client entity.
    pub client: Entity,
    /// Why.
    pub problem: FrameProblem,
}

/// The client is in `room`: the server accepted a join, the game's or the automatic
/// re-join after a re-login. [`Rooms`](super::Rooms) holds the same members.
///
/// `messages` are the room's messages this client has not seen, oldest first: on a
/// first join the recent history (at most 20), on a re-join (`rejoin`) only those
/// it missed (and not seen live meanwhile). `more`: older messages exist than the
/// oldest given (page back with `room_history`).
#[derive(Message, Event, Debug, Clone, PartialEq, Eq)]
pub struct RoomJoined {
    /// The client entity.
    pub client: Entity,
    /// The room's name (without `#`).
    pub room: String,
    /// Every member, this user included, with presence.
    pub members: Vec<Member>,
    /// Messages not seen yet, oldest first.
    pub messages: Vec<HistoryMessage>,
    /// Older messages exist than the oldest in `messages`.
    pub more: bool,
    /// The client was in the room already (a re-join after a re-login): the member
    /// list replaces the one it had, and `messages` are those it missed.
    pub rejoin: bool,
}

/// Why the client is no longer in a room.
#[derive(Reflect, Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomLeftReason {
    /// The game's `leave_room` succeeded.
    Requested,
    /// The server removed this user from the room (a `left` event naming it: the
    /// grace period after a lost link passed, or the host removed it).
    Removed,
    /// The session ended: logout, release, kickout, or a login as another user.
    SessionEnded,
    /// After a re-login the automatic re-join failed
    /// ([`RoomRequestFailed`] says why), or the server no longer serves rooms.
    RejoinFailed,
}

/// The client is no longer in `room`: it left [`Rooms`](super::Rooms).
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct RoomLeft {
    /// The client entity.
    pub client: Entity,
    /// The room's name.
    pub room: String,
    /// Why.
    pub reason: RoomLeftReason,
}

/// `user` joined `room` (online).
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct MemberJoined {
    /// The client entity.
    pub client: Entity,
    /// The room's name.
    pub room: String,
    /// The new member.
    pub user: String,
}

/// `user` left `room`: left, logged out, or stayed offline past the grace period.
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct MemberLeft {
    /// The client entity.
    pub client: Entity,
    /// The room's name.
    pub room: String,
    /// The member who left.
    pub user: String,
}

/// A member of `room` went offline (their link dropped; they stay a member for the
/// grace period) or came back online.
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct PresenceChanged {
    /// The client entity.
    pub client: Entity,
    /// The room's name.
    pub room: String,
    /// The member.
    pub user: String,
    /// Whether their link is up now.
    pub online: bool,
}

/// The answer to `room_members`: the members of `room` with presence (for a room the
/// client is in, [`Rooms`](super::Rooms) now holds the same).
#[derive(Message, Event, Debug, Clone, PartialEq, Eq)]
pub struct RoomMembers {
    /// The client entity.
    pub client: Entity,
    /// The request id the call returned.
    pub req: u64,
    /// The room's name.
    pub room: String,
    /// The members.
    pub members: Vec<Member>,
}

/// A page of history: the answer to `room_history` (`room` set) or `direct_history`
/// (`peer` set). Messages are oldest first; `more`: older ones exist (ask again
/// with `before` = the first message's `mid`).
#[derive(Message, Event, Debug, Clone, PartialEq, Eq)]
pub struct RoomHistory {
    /// The client entity.
    pub client: Entity,
    /// The request id the call returned.
    pub req: u64,
    /// The room, for a room's history.
    pub room: Option<String>,
    /// The other user, for the history of direct messages with them.
    pub peer: Option<String>,
    /// The page, oldest first.
    pub messages: Vec<HistoryMessage>,
    /// Older messages exist.
    pub more: bool,
}

/// The answer to `list_rooms`: the public rooms and their member counts.
#[derive(Message, Event, Debug, Clone, PartialEq, Eq)]
pub struct RoomList {
    /// The client entity.
    pub client: Entity,
    /// The request id the call returned.
    pub req: u64,
    /// The public rooms.
    pub rooms: Vec<RoomInfo>,
}

/// The answer to `block` or `unblock`: direct messages from `user` are now refused
/// (`blocked`) or accepted again.
#[derive(Message, Event, Reflect, Debug, Clone, PartialEq, Eq)]
pub struct BlockUpdated {
    /// The client entity.
    pub client: Entity,
    /// The request id the call returned.
    pub req: u64,
    /// The user.
    pub user: String,
    /// Whether they are blocked now.
    pub blocked: bool,
}

/// A room or social request failed after it was made: the server refused it
/// ([`RoomError::Refused`] with its code), no reply came in time
/// ([`RoomError::TimedOut`]), the session ended first ([`RoomError::SessionEnded`]),
/// or a re-login found the server no longer serving the extension. Every request a
/// call made ends in exactly one success message or this. (A call refused at once
/// returns its error and makes no request.)
#[derive(Message, Event, Debug, Clone, PartialEq, Eq)]
pub struct RoomRequestFailed {
    /// The client entity.
    pub client: Entity,
    /// The request id (the call's, or an automatic re-join's).
    pub req: u64,
    /// What was asked.
    pub op: RoomOp,
    /// The room it concerned, if any.
    pub room: Option<String>,
    /// The user it concerned (`direct_history`'s peer, `block`'s user), if any.
    pub user: Option<String>,
    /// Why.
    pub error: RoomError,
}

macro_rules! client_events {
    ($($name:ident),* $(,)?) => {
        /// Something the game should hear about: one variant per message type.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum ClientEvent {
            $(
                #[doc = concat!("See [`", stringify!($name), "`].")]
                $name($name),
            )*
        }

        $(
            impl From<$name> for ClientEvent {
                fn from(event: $name) -> Self {
                    Self::$name(event)
                }
            }
        )*

        impl ClientEvent {
            /// Writes the event as a Bevy message and triggers it for observers.
            pub(crate) fn deliver(self, world: &mut bevy::prelude::World) {
                match self {
                    $(
                        Self::$name(event) => {
                            world.write_message(event.clone());
                            world.trigger(event);
                        }
                    )*
                }
            }

            /// Registers every message type.
            pub(crate) fn add_messages(app: &mut bevy::prelude::App) {
                $( app.add_message::<$name>(); )*
            }

            /// Collects every message type for the test kit.
            #[cfg(feature = "testing")]
            pub(crate) fn collect_all(app: &mut bevy::prelude::App) {
                $( crate::testing::collect_messages::<$name>(app); )*
            }
        }
    };
}

client_events!(
    LoginSucceeded,
    LoginFailed,
    LinkClosed,
    DataReceived,
    ServerError,
    MessagesLost,
    MessageDelivered,
    SendThrottled,
    Kicked,
    ReloginStarted,
    ReloginStopped,
    LoggedOut,
    SendResult,
    KeepaliveReply,
    LinkError,
    BadFrame,
    MessageRefused,
    RoomJoined,
    RoomLeft,
    MemberJoined,
    MemberLeft,
    PresenceChanged,
    RoomMembers,
    RoomHistory,
    RoomList,
    BlockUpdated,
    RoomRequestFailed,
);
