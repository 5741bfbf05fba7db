#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod plugin;
pub mod protocol;
#[cfg(all(feature = "server", not(target_arch = "wasm32")))]
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
#[cfg(feature = "ui")]
pub mod ui;

/// The names a game needs, in one import.
pub mod prelude {
    pub use crate::client::{
        ImConnection, LoginError, LoginRequest, Outgoing, ReloginLimits, ReloginPolicy, RoomError,
        SendError, SenseMode, TypedMessage,
    };
    pub use crate::plugin::conditions::*;
    pub use crate::plugin::{
        BadFrame, BlockUpdated, CloseReason, DataReceived, ImClient, ImClientBundle, ImClientMut,
        ImClientPlugin, ImClients, ImConfig, ImInbox, ImPrimaryClient, ImSystems, ImUrl,
        KeepaliveReply, Kicked, LinkClosed, LinkError, LoggedOut, LoginFailed, LoginSucceeded,
        MemberJoined, MemberLeft, MessageDelivered, MessageRefused, MessagesLost, PresenceChanged,
        ReloginStarted, ReloginStop, ReloginStopped, RoomHistory, RoomJoined, RoomLeft,
        RoomLeftReason, RoomList, RoomMembers, RoomRequestFailed, RoomState, Rooms, SendResult,
        SendThrottled, ServerError,
    };
    pub use crate::protocol::{Dialect, HistoryMessage, KickoutCode, Member, ResultCode, ext};
}
