//! The `ImClient` system parameter: the seed's `ClientCoreSDK` calls.

use bevy::ecs::system::SystemParam;
use bevy::prelude::Res;
use bevy::time::{Real, Time};

use super::{ImConfig, ImLink, Parts};
use crate::client::{LoginRequest, Outgoing, SessionState};
use crate::protocol::ResultCode;
use crate::transport::LinkId;

/// Logs in, sends, logs out and reads the client's state, from any system.
///
/// Local failures return the seed's code at once and write nothing; the outcome of
/// everything that reaches the server arrives later as a message
/// ([`LoginSucceeded`](super::LoginSucceeded), [`SendResult`](super::SendResult),
/// [`MessageDelivered`](super::MessageDelivered), ...).
///
/// ```no_run
/// use bevy::prelude::*;
/// use bevy_im::prelude::*;
///
/// // Answers every chat line with "gg".
/// fn reply(mut im: ImClient, mut received: MessageReader<DataReceived>) {
///     for msg in received.read() {
///         match im.send(Outgoing::new(msg.from.clone(), "gg")) {
///             Ok(fp) => info!("sent {fp:?}"),
///             Err(code) => warn!("not sent: {code}"),
///         }
///     }
/// }
/// ```
#[derive(SystemParam)]
pub struct ImClient<'w> {
    config: Res<'w, ImConfig>,
    time: Res<'w, Time<Real>>,
    link: Res<'w, ImLink>,
    parts: Parts<'w>,
}

impl ImClient<'_> {
    /// Connects and logs in. The outcome arrives as `LoginSucceeded` or
    /// `LoginFailed`. Fails at once with 205 when no URL is configured, or 4 for an
    /// empty user id.
    pub fn login(&mut self, request: LoginRequest) -> Result<(), ResultCode> {
        if self.config.url.is_empty() {
            return Err(ResultCode::ToServerNetInfoNotSetup);
        }
        let now = self.time.elapsed();
        self.parts.core().login(request, now)
    }

    /// Logs out (the logout frame goes out only when logged in) and releases the
    /// session: `MessagesLost` reports the messages still waiting for an ACK, then
    /// `LoggedOut` the same code.
    pub fn logout(&mut self) -> ResultCode {
        self.parts.core().logout()
    }

    /// Sends a message. Returns its fingerprint at once (`None` for a message with
    /// neither QoS nor a caller fingerprint); `SendResult` reports the write, and
    /// `MessageDelivered` or `MessagesLost` the QoS outcome. Fails at once with 1
    /// before login, 203 after release, 4 for an empty receiver or a message over
    /// the frame limit.
    pub fn send(&mut self, message: Outgoing) -> Result<Option<String>, ResultCode> {
        let now = self.time.elapsed();
        self.parts.core().send(message, now)
    }

    /// Stops everything and forgets the session. Messages still waiting for an ACK
    /// are reported in `MessagesLost`.
    pub fn release(&mut self) {
        self.parts.core().release();
    }

    /// Whether the session is logged in.
    pub fn is_logged_in(&self) -> bool {
        self.parts.session.is_logged_in()
    }

    /// Where the session stands.
    pub fn state(&self) -> SessionState {
        self.parts.session.state()
    }

    /// The user id of the current (or last) login.
    pub fn user_id(&self) -> Option<&str> {
        self.parts.session.user_id()
    }

    /// The current link, if one is open or opening.
    pub fn link(&self) -> Option<LinkId> {
        self.link.current()
    }

    /// How many QoS messages wait for an ACK.
    pub fn pending_count(&self) -> usize {
        self.parts.qos_send.len()
    }

    /// The latest keepalive round-trip time.
    pub fn rtt(&self) -> Option<std::time::Duration> {
        self.parts.keepalive.rtt()
    }
}
