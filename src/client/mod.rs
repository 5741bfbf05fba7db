//! The client core: the login session, the QoS send table, the QoS receive filter,
//! keepalive and re-login, as plain deterministic state machines.
//!
//! Nothing here touches a socket, a thread or a clock. Every call takes `now` (time
//! since an arbitrary start) and records what to do in a [`CoreOutput`]: link
//! [`Action`]s for the transport and [`ClientEvent`]s for the game. Each part is an
//! ECS resource of its own; [`Core`] borrows them together so that one call can move
//! all of them, and [`ClientCore`] owns them for use outside Bevy and in tests.
//!
//! ```
//! use std::time::Duration;
//! use bevy_im::client::{Action, ClientConfig, ClientCore, LoginRequest};
//!
//! let mut client = ClientCore::new(ClientConfig::default());
//! let t0 = Duration::ZERO;
//! client.core().login(LoginRequest::new("alice", "token"), t0).unwrap();
//! assert_eq!(client.take_actions(), [Action::Connect]);
//! client.core().on_link_opened(t0);
//! // The login frame is now the only thing queued for the wire.
//! assert!(matches!(&client.take_actions()[..], [Action::Send { .. }]));
//! ```

mod core;
mod events;
mod keepalive;
mod qos_recv;
mod qos_send;
mod relogin;
mod session;

pub use self::core::{ClientCore, Core};
pub use events::{Action, ClientEvent, CoreOutput, CoreStats, FrameProblem};
pub use keepalive::{Keepalive, KeepaliveTick, SenseMode};
pub use qos_recv::{DedupConfig, QosReceiveFilter};
pub use qos_send::{QosSendConfig, QosSendTable, QosTick};
pub use relogin::{Relogin, ReloginPolicy};
pub use session::{ClientConfig, LoginRequest, Outgoing, Session, SessionState};
