//! The `ImClient` and `ImClients` system parameters: the seed's `ClientCoreSDK` calls.

use std::time::Duration;

use bevy::ecs::system::SystemParam;
use bevy::prelude::{Entity, Mut, Query, Res, With};
use bevy::time::{Real, Time};
use serde::Serialize;

use super::{ImInbox, ImPrimaryClient, ImUrl};
use crate::client::{
    ClientCore, ImConnection, LoginError, LoginRequest, Outgoing, ReloginStop, RoomError, Rooms,
    SendError, TypedMessage,
};
use crate::protocol::ResultCode;
use crate::transport::LinkId;

/// One client, borrowed for calls: what [`ImClient`] and [`ImClients`] hand out.
///
/// Local failures return a typed error at once (the seed's code is `.code()` on it)
/// and write nothing; the outcome of everything that reaches the server arrives later
/// as a message ([`LoginSucceeded`](super::LoginSucceeded),
/// [`SendResult`](super::SendResult), [`MessageDelivered`](super::MessageDelivered),
/// ...).
pub struct ImClientMut<'a> {
    core: Mut<'a, ClientCore>,
    url: &'a ImUrl,
    inbox: Mut<'a, ImInbox>,
    now: Duration,
}

impl ImClientMut<'_> {
    /// The client's entity.
    pub fn entity(&self) -> Entity {
        self.core.entity()
    }

    /// Connects and logs in. The outcome arrives as `LoginSucceeded` or
    /// `LoginFailed`.
    ///
    /// # Errors
    /// [`LoginError::NoServerUrl`] when no URL is configured, [`LoginError::EmptyUserId`],
    /// [`LoginError::TooLarge`].
    pub fn login(&mut self, request: LoginRequest) -> Result<(), LoginError> {
        if self.url.0.is_empty() {
            return Err(LoginError::NoServerUrl);
        }
        self.core.login(request, self.now)
    }

    /// Logs out (the logout frame goes out only when logged in) and releases the
    /// session: `MessagesLost` reports the messages still waiting for an ACK, then
    /// `LoggedOut` the returned code (0 sent, 1 not logged in).
    pub fn logout(&mut self) -> ResultCode {
        self.core.logout(self.now)
    }

    /// Sends a message. Returns its fingerprint at once (`None` for a message with
    /// neither QoS nor a caller fingerprint); `SendResult` reports the write, and
    /// `MessageDelivered` or `MessagesLost` the QoS outcome. During a re-login a QoS
    /// message waits and is written once logged in again.
    ///
    /// # Errors
    /// [`SendError`]: not logged in, released, queue full, empty receiver, too large.
    pub fn send(&mut self, message: Outgoing) -> Result<Option<String>, SendError> {
        self.core.send(message, self.now)
    }

    /// Sends `payload` as JSON with QoS and `typeu` 0 (see [`send`](Self::send)).
    ///
    /// # Errors
    /// [`SendError::Serialize`] when `payload` does not serialise, or what `send` returns.
    pub fn send_json<T: Serialize>(
        &mut self,
        to: impl Into<String>,
        payload: &T,
    ) -> Result<Option<String>, SendError> {
        let content =
            serde_json::to_string(payload).map_err(|e| SendError::Serialize(e.to_string()))?;
        self.send(Outgoing::new(to, content))
    }

    /// Sends a [`TypedMessage`]: its JSON with QoS and its own `typeu`, so the
    /// receiver can route by type ([`DataReceived::parse`](super::DataReceived::parse)).
    ///
    /// # Errors
    /// As [`send_json`](Self::send_json).
    pub fn send_typed<T: TypedMessage>(
        &mut self,
        to: impl Into<String>,
        payload: &T,
    ) -> Result<Option<String>, SendError> {
        let content =
            serde_json::to_string(payload).map_err(|e| SendError::Serialize(e.to_string()))?;
        self.send(Outgoing::new(to, content).typeu(T::TYPEU))
    }

    /// Sends `content` to room `room` (its name, without `#`) with QoS: every other
    /// member gets it. As [`send`](Self::send) of [`Outgoing::to_room`], which also
    /// takes the QoS, fingerprint and `typeu` options; `MessageDelivered` carries the
    /// message's id in the room.
    ///
    /// # Errors
    /// As [`send`](Self::send); [`SendError::Room`] for a bad room name or a server
    /// that does not serve rooms.
    pub fn send_to_room(
        &mut self,
        room: &str,
        content: impl Into<String>,
    ) -> Result<Option<String>, SendError> {
        self.send(Outgoing::to_room(room, content))
    }

    /// Sends `payload` as JSON to room `room` with QoS and `typeu` 0.
    ///
    /// # Errors
    /// As [`send_json`](Self::send_json) and [`send_to_room`](Self::send_to_room).
    pub fn send_to_room_json<T: Serialize>(
        &mut self,
        room: &str,
        payload: &T,
    ) -> Result<Option<String>, SendError> {
        let content =
            serde_json::to_string(payload).map_err(|e| SendError::Serialize(e.to_string()))?;
        self.send(Outgoing::to_room(room, content))
    }

    /// Sends a [`TypedMessage`] to room `room`: its JSON with QoS and its `typeu`.
    ///
    /// # Errors
    /// As [`send_to_room_json`](Self::send_to_room_json).
    pub fn send_to_room_typed<T: TypedMessage>(
        &mut self,
        room: &str,
        payload: &T,
    ) -> Result<Option<String>, SendError> {
        let content =
            serde_json::to_string(payload).map_err(|e| SendError::Serialize(e.to_string()))?;
        self.send(Outgoing::to_room(room, content).typeu(T::TYPEU))
    }

    /// Joins room `room` (created on first join). Returns the request id at once;
    /// `RoomJoined` brings the members and recent history, or `RoomRequestFailed`
    /// says why not. During a re-login the request waits for it.
    ///
    /// # Errors
    /// At once, nothing written: [`RoomError::BadName`], [`RoomError::NotLoggedIn`],
    /// [`RoomError::NotSupported`] (the server did not announce `rooms`),
    /// [`RoomError::TooManyPending`].
    pub fn join_room(&mut self, room: &str) -> Result<u64, RoomError> {
        self.core.join_room(room, self.now)
    }

    /// Leaves room `room`: `RoomLeft` once the server agreed.
    ///
    /// # Errors
    /// As [`join_room`](Self::join_room).
    pub fn leave_room(&mut self, room: &str) -> Result<u64, RoomError> {
        self.core.leave_room(room, self.now)
    }

    /// Asks for the members of `room`: `RoomMembers`.
    ///
    /// # Errors
    /// As [`join_room`](Self::join_room).
    pub fn room_members(&mut self, room: &str) -> Result<u64, RoomError> {
        self.core.room_members(room, self.now)
    }

    /// Asks for a page of `room`'s history (at most `limit`, 1 to 100, messages with
    /// ids below `before`; the newest when `None`): `RoomHistory`.
    ///
    /// # Errors
    /// As [`join_room`](Self::join_room), [`RoomError::BadLimit`], and
    /// [`RoomError::NotSupported`] for `history`.
    pub fn room_history(
        &mut self,
        room: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<u64, RoomError> {
        self.core.room_history(room, before, limit, self.now)
    }

    /// Asks for a page of the direct messages with `peer`: `RoomHistory` with `peer`.
    ///
    /// # Errors
    /// [`RoomError::BadUser`], [`RoomError::BadLimit`], [`RoomError::NotLoggedIn`],
    /// [`RoomError::NotSupported`] (`history`), [`RoomError::TooManyPending`].
    pub fn direct_history(
        &mut self,
        peer: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<u64, RoomError> {
        self.core.direct_history(peer, before, limit, self.now)
    }

    /// Asks for the public rooms: `RoomList`.
    ///
    /// # Errors
    /// [`RoomError::NotLoggedIn`], [`RoomError::NotSupported`],
    /// [`RoomError::TooManyPending`].
    pub fn list_rooms(&mut self) -> Result<u64, RoomError> {
        self.core.list_rooms(self.now)
    }

    /// Blocks direct messages from `user`: `BlockUpdated`.
    ///
    /// # Errors
    /// [`RoomError::BadUser`], [`RoomError::NotLoggedIn`],
    /// [`RoomError::NotSupported`] (`block`), [`RoomError::TooManyPending`].
    pub fn block(&mut self, user: &str) -> Result<u64, RoomError> {
        self.core.block(user, self.now)
    }

    /// Unblocks `user`: `BlockUpdated`.
    ///
    /// # Errors
    /// As [`block`](Self::block).
    pub fn unblock(&mut self, user: &str) -> Result<u64, RoomError> {
        self.core.unblock(user, self.now)
    }

    /// Stops everything and forgets the session. Messages still waiting for an ACK
    /// are reported in `MessagesLost`, room requests in `RoomRequestFailed`, and
    /// every room is left (`RoomLeft`).
    pub fn release(&mut self) {
        self.core.release(self.now);
    }

    /// Replaces the login token for the next (re-)login attempt. After re-login
    /// stopped because the server refused the old token
    /// ([`ReloginStop::Refused`]), it starts again at once.
    pub fn set_token(&mut self, token: impl Into<String>) {
        self.core.set_token(token, self.now);
    }

    /// Whether the session is logged in.
    pub fn is_logged_in(&self) -> bool {
        self.core.is_logged_in()
    }

    /// Where the connection stands.
    pub fn state(&self) -> ImConnection {
        self.core.state()
    }

    /// Why automatic re-login stopped, while offline because of it.
    pub fn relogin_stopped(&self) -> Option<ReloginStop> {
        self.core.relogin_stopped()
    }

    /// The user id of the current (or last) login.
    pub fn user_id(&self) -> Option<&str> {
        self.core.user_id()
    }

    /// The current link, if one is open or opening.
    pub fn link(&self) -> Option<LinkId> {
        self.core.link()
    }

    /// How many QoS messages wait for an ACK (including those queued for a re-login).
    pub fn pending_count(&self) -> usize {
        self.core.pending_count()
    }

    /// The latest keepalive round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.core.rtt()
    }

    /// The rooms the client is in, with members and presence.
    pub fn rooms(&self) -> &Rooms {
        self.core.rooms()
    }

    /// What the server serves beyond upstream's protocol (`ext` names).
    pub fn server_extensions(&self) -> &[String] {
        self.core.server_extensions()
    }

    /// Whether the server serves `ext` (a [`protocol::ext`](crate::protocol::ext) name).
    pub fn supports(&self, ext: &str) -> bool {
        self.core.supports(ext)
    }

    /// The client core, read only.
    pub fn core(&self) -> &ClientCore {
        &self.core
    }

    /// Received data kept until drained, oldest first.
    pub fn inbox(&mut self) -> &mut ImInbox {
        &mut self.inbox
    }
}

type ClientData = (
    &'static mut ClientCore,
    &'static ImUrl,
    &'static mut ImInbox,
);

/// The primary client, from any system: log in, send, log out, read its state.
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
///             Err(e) => warn!("not sent: {e} (code {})", e.code()),
///         }
///     }
/// }
/// ```
///
/// # Panics
/// When the primary client entity was despawned (the plugin spawns it and never
/// removes it).
#[derive(SystemParam)]
pub struct ImClient<'w, 's> {
    time: Res<'w, Time<Real>>,
    clients: Query<'w, 's, ClientData, With<ImPrimaryClient>>,
}

impl ImClient<'_, '_> {
    /// The primary client, borrowed for calls.
    pub fn get(&mut self) -> ImClientMut<'_> {
        let now = self.time.elapsed();
        let (core, url, inbox) = self
            .clients
            .single_mut()
            .expect("the primary bevy_im client entity exists");
        ImClientMut {
            core,
            url,
            inbox,
            now,
        }
    }

    fn read(&self) -> &ClientCore {
        self.clients
            .single()
            .expect("the primary bevy_im client entity exists")
            .0
    }

    /// See [`ImClientMut::login`].
    ///
    /// # Errors
    /// As [`ImClientMut::login`].
    pub fn login(&mut self, request: LoginRequest) -> Result<(), LoginError> {
        self.get().login(request)
    }

    /// See [`ImClientMut::logout`].
    pub fn logout(&mut self) -> ResultCode {
        self.get().logout()
    }

    /// See [`ImClientMut::send`].
    ///
    /// # Errors
    /// As [`ImClientMut::send`].
    pub fn send(&mut self, message: Outgoing) -> Result<Option<String>, SendError> {
        self.get().send(message)
    }

    /// See [`ImClientMut::send_json`].
    ///
    /// # Errors
    /// As [`ImClientMut::send_json`].
    pub fn send_json<T: Serialize>(
        &mut self,
        to: impl Into<String>,
        payload: &T,
    ) -> Result<Option<String>, SendError> {
        self.get().send_json(to, payload)
    }

    /// See [`ImClientMut::send_typed`].
    ///
    /// # Errors
    /// As [`ImClientMut::send_typed`].
    pub fn send_typed<T: TypedMessage>(
        &mut self,
        to: impl Into<String>,
        payload: &T,
    ) -> Result<Option<String>, SendError> {
        self.get().send_typed(to, payload)
    }

    /// See [`ImClientMut::send_to_room`].
    ///
    /// # Errors
    /// As [`ImClientMut::send_to_room`].
    pub fn send_to_room(
        &mut self,
        room: &str,
        content: impl Into<String>,
    ) -> Result<Option<String>, SendError> {
        self.get().send_to_room(room, content)
    }

    /// See [`ImClientMut::send_to_room_json`].
    ///
    /// # Errors
    /// As [`ImClientMut::send_to_room_json`].
    pub fn send_to_room_json<T: Serialize>(
        &mut self,
        room: &str,
        payload: &T,
    ) -> Result<Option<String>, SendError> {
        self.get().send_to_room_json(room, payload)
    }

    /// See [`ImClientMut::send_to_room_typed`].
    ///
    /// # Errors
    /// As [`ImClientMut::send_to_room_typed`].
    pub fn send_to_room_typed<T: TypedMessage>(
        &mut self,
        room: &str,
        payload: &T,
    ) -> Result<Option<String>, SendError> {
        self.get().send_to_room_typed(room, payload)
    }

    /// See [`ImClientMut::join_room`].
    ///
    /// # Errors
    /// As [`ImClientMut::join_room`].
    pub fn join_room(&mut self, room: &str) -> Result<u64, RoomError> {
        self.get().join_room(room)
    }

    /// See [`ImClientMut::leave_room`].
    ///
    /// # Errors
    /// As [`ImClientMut::leave_room`].
    pub fn leave_room(&mut self, room: &str) -> Result<u64, RoomError> {
        self.get().leave_room(room)
    }

    /// See [`ImClientMut::room_members`].
    ///
    /// # Errors
    /// As [`ImClientMut::room_members`].
    pub fn room_members(&mut self, room: &str) -> Result<u64, RoomError> {
        self.get().room_members(room)
    }

    /// See [`ImClientMut::room_history`].
    ///
    /// # Errors
    /// As [`ImClientMut::room_history`].
    pub fn room_history(
        &mut self,
        room: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<u64, RoomError> {
        self.get().room_history(room, before, limit)
    }

    /// See [`ImClientMut::direct_history`].
    ///
    /// # Errors
    /// As [`ImClientMut::direct_history`].
    pub fn direct_history(
        &mut self,
        peer: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<u64, RoomError> {
        self.get().direct_history(peer, before, limit)
    }

    /// See [`ImClientMut::list_rooms`].
    ///
    /// # Errors
    /// As [`ImClientMut::list_rooms`].
    pub fn list_rooms(&mut self) -> Result<u64, RoomError> {
        self.get().list_rooms()
    }

    /// See [`ImClientMut::block`].
    ///
    /// # Errors
    /// As [`ImClientMut::block`].
    pub fn block(&mut self, user: &str) -> Result<u64, RoomError> {
        self.get().block(user)
    }

    /// See [`ImClientMut::unblock`].
    ///
    /// # Errors
    /// As [`ImClientMut::unblock`].
    pub fn unblock(&mut self, user: &str) -> Result<u64, RoomError> {
        self.get().unblock(user)
    }

    /// See [`ImClientMut::release`].
    pub fn release(&mut self) {
        self.get().release();
    }

    /// See [`ImClientMut::set_token`].
    pub fn set_token(&mut self, token: impl Into<String>) {
        self.get().set_token(token);
    }

    /// Whether the session is logged in.
    pub fn is_logged_in(&self) -> bool {
        self.read().is_logged_in()
    }

    /// Where the connection stands.
    pub fn state(&self) -> ImConnection {
        self.read().state()
    }

    /// The user id of the current (or last) login.
    pub fn user_id(&self) -> Option<&str> {
        self.read().user_id()
    }

    /// The current link, if one is open or opening.
    pub fn link(&self) -> Option<LinkId> {
        self.read().link()
    }

    /// How many QoS messages wait for an ACK (including those queued for a re-login).
    pub fn pending_count(&self) -> usize {
        self.read().pending_count()
    }

    /// The latest keepalive round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.read().rtt()
    }

    /// The rooms the client is in, with members and presence.
    pub fn rooms(&self) -> &Rooms {
        self.read().rooms()
    }

    /// What the server serves beyond upstream's protocol (`ext` names).
    pub fn server_extensions(&self) -> &[String] {
        self.read().server_extensions()
    }

    /// Whether the server serves `ext` (a [`protocol::ext`](crate::protocol::ext) name).
    pub fn supports(&self, ext: &str) -> bool {
        self.read().supports(ext)
    }

    /// The client core, read only.
    pub fn core(&self) -> &ClientCore {
        self.read()
    }
}

/// Every client entity, for apps with several (bots, load tools, split-screen).
#[derive(SystemParam)]
pub struct ImClients<'w, 's> {
    time: Res<'w, Time<Real>>,
    clients: Query<'w, 's, ClientData>,
}

impl ImClients<'_, '_> {
    /// The client `entity`, borrowed for calls; `None` when it is not a client.
    pub fn get_mut(&mut self, entity: Entity) -> Option<ImClientMut<'_>> {
        let now = self.time.elapsed();
        let (core, url, inbox) = self.clients.get_mut(entity).ok()?;
        Some(ImClientMut {
            core,
            url,
            inbox,
            now,
        })
    }

    /// The client `entity`'s core, read only.
    pub fn get(&self, entity: Entity) -> Option<&ClientCore> {
        self.clients.get(entity).ok().map(|(core, ..)| core)
    }

    /// Every client's core, read only.
    pub fn iter(&self) -> impl Iterator<Item = &ClientCore> {
        self.clients.iter().map(|(core, ..)| core)
    }
}
