//! The host program's say in what the server does: login checks, messages to the
//! server, offline storage, lost pushes, presence.

use std::sync::Arc;

use crate::protocol::{Frame, KickoutCode};

/// Why a user's online session ended (the argument of [`ServerHooks::on_logout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogoutReason {
    /// The client sent a logout (type 3).
    Logout,
    /// The socket closed: the client closed it, the network failed, or it sent
    /// something the server closes on (garbage, binary, oversize).
    Closed,
    /// No text frame arrived within the read timeout.
    TimedOut,
    /// The server kicked the session: `DuplicateLogin` when a newer login of the same
    /// user took over, `Admin` for [`ServerHandle::kick`](super::ServerHandle::kick).
    Kicked(KickoutCode),
    /// A login of the same user with the same `firstLoginTime` took the routing over;
    /// the old socket stays open but no longer receives messages (PROTOCOL.md §8.2).
    Replaced,
    /// The server is shutting down.
    Shutdown,
}

/// What the moderation hook decides about a message ([`ServerHooks::moderate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moderation {
    /// Deliver it as it is.
    Pass,
    /// Deliver this text instead.
    Rewrite(String),
    /// Deliver nothing; the sender gets an error frame with 403 and no ACK.
    Refuse,
}

/// The host program's hooks. Every method has a default, so an empty `impl` gives
/// upstream's demo: everyone may log in, nothing is stored offline.
///
/// Hooks run on the server's runtime while a frame is being handled: keep them short
/// and never block. They may call [`ServerHandle`](super::ServerHandle) methods.
///
/// ```
/// use bevy_im::server::ServerHooks;
/// struct OnlyAlice;
/// impl ServerHooks for OnlyAlice {
///     fn verify_login(&self, user: &str, token: &str, _: Option<&str>, _: Option<&str>) -> i32 {
///         if user == "alice" && token == "secret" { 0 } else { 1025 }
///     }
/// }
/// assert_eq!(OnlyAlice.verify_login("bob", "secret", None, None), 1025);
/// ```
pub trait ServerHooks: Send + Sync + 'static {
    /// Checks a login (`onUserLoginVerify`): 0 lets the user in; any other code is
    /// sent back in the failed login reply and the socket is closed. Upstream suggests
    /// codes above 1024. `app` is the seed's application name, when the client sent one.
    fn verify_login(
        &self,
        user_id: &str,
        token: &str,
        extra: Option<&str>,
        app: Option<&str>,
    ) -> i32 {
        let _ = (user_id, token, extra, app);
        0
    }

    /// A session of `user_id` became the one messages are routed to, with the
    /// `firstLoginTime` it was given. Every call is later matched by one
    /// [`on_logout`](Self::on_logout).
    fn on_login(&self, user_id: &str, first_login_time: i64) {
        let _ = (user_id, first_login_time);
    }

    /// The session `user_id` was routed to ended or was replaced.
    fn on_logout(&self, user_id: &str, reason: LogoutReason) {
        let _ = (user_id, reason);
    }

    /// Data a logged-in client sent to the server (`to` = `"0"`). `from` is already the
    /// sender's logged-in id. A QoS copy the server has seen within the dedup window
    /// is ACKed again but not passed here twice.
    fn on_c2s_message(&self, frame: &Frame) {
        let _ = frame;
    }

    /// A message for a user who is not online, or whose socket cannot take more
    /// (`onTransferMessage_RealTimeSendFaild`). Return true when it was stored for
    /// later delivery: a QoS sender then gets the relay ACK. The default stores nothing
    /// and returns false, so the sender gets no ACK.
    fn on_offline_message(&self, frame: &Frame) -> bool {
        let _ = frame;
        false
    }

    /// A server-to-client QoS frame to `user_id` was never acknowledged, after every
    /// resend (a resend due while the user was offline is written at their login,
    /// if they come back in time). With the social extension a direct message from
    /// another user is kept in the user's offline box instead, and this is called
    /// only when the box refuses it; room messages stay in the room's history.
    fn on_s2c_lost(&self, user_id: &str, frame: &Frame) {
        let _ = (user_id, frame);
    }

    /// Sees every user-to-user and room message before it is delivered or stored
    /// (`to` is a user id or a room address such as `#lobby`), and may pass, rewrite
    /// or refuse it. The default passes everything.
    fn moderate(&self, from: &str, to: &str, content: &str) -> Moderation {
        let _ = (from, to, content);
        Moderation::Pass
    }

    /// Whether `user_id` may join the private room `room` (rooms the host created with
    /// [`ServerHandle::create_room`](super::ServerHandle::create_room) as private).
    /// The default lets nobody in.
    fn may_join(&self, user_id: &str, room: &str) -> bool {
        let _ = (user_id, room);
        false
    }
}

/// Upstream's demo behaviour: every login is accepted and nothing is stored offline.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

impl ServerHooks for AcceptAll {}

impl<T: ServerHooks + ?Sized> ServerHooks for Arc<T> {
    fn verify_login(
        &self,
        user_id: &str,
        token: &str,
        extra: Option<&str>,
        app: Option<&str>,
    ) -> i32 {
        (**self).verify_login(user_id, token, extra, app)
    }

    fn on_login(&self, user_id: &str, first_login_time: i64) {
        (**self).on_login(user_id, first_login_time)
    }

    fn on_logout(&self, user_id: &str, reason: LogoutReason) {
        (**self).on_logout(user_id, reason)
    }

    fn on_c2s_message(&self, frame: &Frame) {
        (**self).on_c2s_message(frame)
    }

    fn on_offline_message(&self, frame: &Frame) -> bool {
        (**self).on_offline_message(frame)
    }

    fn on_s2c_lost(&self, user_id: &str, frame: &Frame) {
        (**self).on_s2c_lost(user_id, frame)
    }

    fn moderate(&self, from: &str, to: &str, content: &str) -> Moderation {
        (**self).moderate(from, to, content)
    }

    fn may_join(&self, user_id: &str, room: &str) -> bool {
        (**self).may_join(user_id, room)
    }
}
