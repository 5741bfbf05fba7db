//! The client core: the login session, the QoS send table, the QoS receive filter,
//! keepalive, re-login, and the social extension's rooms and requests, as plain
//! deterministic state machines.
//!
//! Nothing here touches a socket, a thread or a clock. Every call takes `now` (time
//! since an arbitrary start) and records what to do: link [`Action`]s for the
//! transport and [`ClientEvent`]s for the game. [`ClientCore`] owns the parts; in
//! Bevy it is a component of the client entity.
//!
//! ```
//! use std::time::Duration;
//! use bevy_im::client::{Action, ClientConfig, ClientCore, LoginRequest};
//!
//! let mut client = ClientCore::new(ClientConfig::default());
//! let t0 = Duration::ZERO;
//! client.login(LoginRequest::new("alice", "token"), t0).unwrap();
//! let [Action::Connect { link }] = client.take_actions()[..] else { panic!() };
//! client.on_link_opened(link, t0);
//! // The login frame is now the only thing queued for the wire.
//! assert!(matches!(&client.take_actions()[..], [Action::Send { .. }]));
//! // Nothing is due until the login timeout, 10 s later.
//! assert_eq!(client.poll_timeout(), Some(Duration::from_secs(10)));
//! ```

mod core;
mod error;
mod events;
mod keepalive;
mod messages;
mod qos_recv;
mod qos_send;
mod relogin;
mod rooms;
mod session;

pub use self::core::{ClientCore, RATE_LIMITED, RECEIVER_BUSY};
pub use error::{LoginError, RoomError, SendError};
pub use events::{Action, CoreOutput, CoreStats, FrameProblem};
pub use keepalive::{Keepalive, KeepaliveTick, SenseMode};
pub use messages::*;
pub use qos_recv::{DedupConfig, QosReceiveFilter};
pub use qos_send::{QosSendConfig, QosSendTable, QosTick};
pub use relogin::{Relogin, ReloginPolicy};
pub use rooms::{RoomState, Rooms, SEEN_MIDS_PER_ROOM};
pub use session::{ClientConfig, ImConnection, LoginRequest, Outgoing, ReloginLimits};
