#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod plugin;
pub mod protocol;
#[cfg(all(feature = "server", not(target_arch = "wasm32")))]
pub mod server;
pub mod transport;

/// The names a game needs, in one import.
pub mod prelude {
    pub use crate::client::{LoginRequest, Outgoing, ReloginPolicy, SenseMode, SessionState};
    pub use crate::plugin::conditions::*;
    pub use crate::plugin::{
        BadFrame, DataReceived, ImClient, ImClientPlugin, ImConfig, ImInbox, ImSystems,
        KeepaliveReply, Kicked, LinkClosed, LinkError, LoggedOut, LoginFailed, LoginSucceeded,
        MessageDelivered, MessagesLost, ReloginStarted, SendResult, SendThrottled, ServerError,
    };
    pub use crate::protocol::{Dialect, KickoutCode, ResultCode};
}
