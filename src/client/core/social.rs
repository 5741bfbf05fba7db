//! The social extension (`docs/PROTOCOL-EXTENSIONS.md`): negotiation, room and
//! social requests with their replies and timeouts, room events, and the
//! de-duplication of room messages by id.
//!
//! # The rules
//!
//! - **Negotiated.** A request is made only when the server listed its extension in
//!   the login reply; otherwise the call returns [`RoomError::NotSupported`] and
//!   writes nothing.
//! - **One outcome per request.** A request the call made ends in exactly one
//!   success message ([`RoomJoined`], [`RoomLeft`], [`RoomMembers`],
//!   [`RoomHistory`], [`RoomList`], [`BlockUpdated`]) or one [`RoomRequestFailed`]:
//!   refused by the server, no reply within
//!   [`ClientConfig::room_request_timeout`](crate::client::ClientConfig) of the call,
//!   or the session ended first. A late reply is ignored.
//! - **Re-login.** Requests follow QoS messages: made during a re-login they wait
//!   for it, and those in flight when the link dropped are written again once logged
//!   in (their deadline stays the call's). Then every room the client is in is
//!   re-joined with `after` = the last message id received, so the reply carries
//!   only what was missed; a re-join that fails removes the room
//!   ([`RoomLeftReason::RejoinFailed`]). When the session ends (logout, release,
//!   kickout, a login as another user) every request fails with
//!   [`RoomError::SessionEnded`] and every room is left
//!   ([`RoomLeftReason::SessionEnded`]).
//! - **No gap.** When the server could not hand the client live copies of a room's
//!   messages (its queue was full) it sends a `missed` event; the client re-joins the
//!   room with `after`, as after a re-login, and the reply brings what was missed
//!   ([`RoomJoined`] with `rejoin`).
//! - **No duplicates.** Room messages are delivered once per id and room: a live
//!   copy, the catch-up of a re-join, and the client's own messages (their ids come
//!   in the server's ACK; one whose ACK is still outstanding is known by its
//!   fingerprint) are checked against the ids seen.

use std::time::Duration;

use crate::client::messages::*;
use crate::client::{Outgoing, RoomError, Rooms, SendError};
use crate::protocol::{
    Frame, RoomOp, RoomReply, RoomRequest, SERVER_ID, decode_body, encode_body, ext,
    room_of_address, validate_room_name, wire,
};

use super::ClientCore;

/// The extensions a request needs the server to serve.
fn needs(request: &RoomRequest) -> &'static [&'static str] {
    match request.op {
        RoomOp::History if request.peer.is_some() => &[ext::HISTORY],
        RoomOp::History => &[ext::ROOMS, ext::HISTORY],
        RoomOp::Block | RoomOp::Unblock => &[ext::BLOCK],
        _ => &[ext::ROOMS],
    }
}

/// A user id a request may name: not empty, not a room address.
fn check_user(user: &str) -> Result<(), RoomError> {
    if user.is_empty() || room_of_address(user).is_some() {
        return Err(RoomError::BadUser(user.to_owned()));
    }
    Ok(())
}

fn check_limit(limit: u32) -> Result<(), RoomError> {
    if !(1..=100).contains(&limit) {
        return Err(RoomError::BadLimit(limit));
    }
    Ok(())
}

impl ClientCore {
    /// What the server serves beyond upstream's protocol, as its last login reply
    /// listed it ([`ext`](crate::protocol::ext) names); empty before a login, against
    /// an upstream server, and after the session ended. Kept across re-logins until
    /// the next login reply.
    pub fn server_extensions(&self) -> &[String] {
        &self.server_ext
    }

    /// Whether the server listed `ext` (an [`ext`](crate::protocol::ext) name).
    pub fn supports(&self, ext: &str) -> bool {
        self.server_ext.iter().any(|e| e == ext)
    }

    /// The rooms the client is in, their members and presence (read only).
    pub fn rooms(&self) -> &Rooms {
        &self.rooms
    }

    /// How many room and social requests wait for their replies.
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// Joins room `room` (its name, without `#`; created on first join). Returns the
    /// request id; [`RoomJoined`] brings the members and the recent history, or
    /// [`RoomRequestFailed`] why not (409 full, 403 private, ...). Joining a room the
    /// client is in already refreshes it ([`RoomJoined::rejoin`]).
    ///
    /// # Errors
    /// At once, with nothing written: [`RoomError::BadName`],
    /// [`RoomError::NotLoggedIn`], [`RoomError::NotSupported`] (`rooms`),
    /// [`RoomError::TooManyPending`].
    pub fn join_room(&mut self, room: &str, now: Duration) -> Result<u64, RoomError> {
        validate_room_name(room)?;
        self.request(RoomRequest::new(0, RoomOp::Join).room(room), now)
    }

    /// Leaves room `room`. [`RoomLeft`] ([`RoomLeftReason::Requested`]) once the
    /// server agreed.
    ///
    /// # Errors
    /// As [`join_room`](Self::join_room).
    pub fn leave_room(&mut self, room: &str, now: Duration) -> Result<u64, RoomError> {
        validate_room_name(room)?;
        self.request(RoomRequest::new(0, RoomOp::Leave).room(room), now)
    }

    /// Asks for the members of `room` and their presence: [`RoomMembers`].
    ///
    /// # Errors
    /// As [`join_room`](Self::join_room).
    pub fn room_members(&mut self, room: &str, now: Duration) -> Result<u64, RoomError> {
        validate_room_name(room)?;
        self.request(RoomRequest::new(0, RoomOp::Members).room(room), now)
    }

    /// Asks for a page of `room`'s history: at most `limit` (1 to 100) messages with
    /// ids below `before` (the newest page when `None`), as [`RoomHistory`].
    ///
    /// # Errors
    /// As [`join_room`](Self::join_room), [`RoomError::BadLimit`], and
    /// [`RoomError::NotSupported`] for `rooms` or `history`.
    pub fn room_history(
        &mut self,
        room: &str,
        before: Option<i64>,
        limit: u32,
        now: Duration,
    ) -> Result<u64, RoomError> {
        validate_room_name(room)?;
        check_limit(limit)?;
        let mut request = RoomRequest::new(0, RoomOp::History).room(room);
        request.before = before;
        request.limit = Some(limit);
        self.request(request, now)
    }

    /// Asks for a page of the direct messages between this user and `peer`, as
    /// [`RoomHistory`] with `peer` set.
    ///
    /// # Errors
    /// [`RoomError::BadUser`], [`RoomError::BadLimit`], [`RoomError::NotLoggedIn`],
    /// [`RoomError::NotSupported`] (`history`), [`RoomError::TooManyPending`].
    pub fn direct_history(
        &mut self,
        peer: &str,
        before: Option<i64>,
        limit: u32,
        now: Duration,
    ) -> Result<u64, RoomError> {
        check_user(peer)?;
        check_limit(limit)?;
        let mut request = RoomRequest::new(0, RoomOp::History);
        request.peer = Some(peer.to_owned());
        request.before = before;
        request.limit = Some(limit);
        self.request(request, now)
    }

    /// Asks for the public rooms: [`RoomList`].
    ///
    /// # Errors
    /// [`RoomError::NotLoggedIn`], [`RoomError::NotSupported`] (`rooms`),
    /// [`RoomError::TooManyPending`].
    pub fn list_rooms(&mut self, now: Duration) -> Result<u64, RoomError> {
        self.request(RoomRequest::new(0, RoomOp::Rooms), now)
    }

    /// Blocks direct messages from `user` (the server refuses them with 403):
    /// [`BlockUpdated`].
    ///
    /// # Errors
    /// [`RoomError::BadUser`], [`RoomError::NotLoggedIn`],
    /// [`RoomError::NotSupported`] (`block`), [`RoomError::TooManyPending`].
    pub fn block(&mut self, user: &str, now: Duration) -> Result<u64, RoomError> {
        check_user(user)?;
        let mut request = RoomRequest::new(0, RoomOp::Block);
        request.user = Some(user.to_owned());
        self.request(request, now)
    }

    /// Unblocks `user`: [`BlockUpdated`].
    ///
    /// # Errors
    /// As [`block`](Self::block).
    pub fn unblock(&mut self, user: &str, now: Duration) -> Result<u64, RoomError> {
        check_user(user)?;
        let mut request = RoomRequest::new(0, RoomOp::Unblock);
        request.user = Some(user.to_owned());
        self.request(request, now)
    }

    /// Sends `content` to room `room` with QoS: [`send`](Self::send) of
    /// [`Outgoing::to_room`]. Every other member gets it; the ACK
    /// ([`MessageDelivered`]) carries its id.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn send_to_room(
        &mut self,
        room: &str,
        content: impl Into<String>,
        now: Duration,
    ) -> Result<Option<String>, SendError> {
        self.send(Outgoing::to_room(room, content), now)
    }

    /// Whether a message may go to `room`.
    pub(super) fn check_room(&self, room: &str) -> Result<(), RoomError> {
        validate_room_name(room)?;
        if !self.supports(ext::ROOMS) {
            return Err(RoomError::NotSupported { ext: ext::ROOMS });
        }
        Ok(())
    }

    /// Makes a request: written now when logged in, or when the re-login under way
    /// succeeds.
    fn request(&mut self, mut request: RoomRequest, now: Duration) -> Result<u64, RoomError> {
        if !(self.is_logged_in() || self.is_relogging()) {
            return Err(RoomError::NotLoggedIn);
        }
        if let Some(ext) = needs(&request).iter().find(|e| !self.supports(e)) {
            return Err(RoomError::NotSupported { ext });
        }
        let pending = self.requests.len();
        if pending >= self.config.max_queued {
            return Err(RoomError::TooManyPending(pending));
        }
        request.req = self.requests.next_id();
        Ok(self.enqueue(request, now))
    }

    fn enqueue(&mut self, request: RoomRequest, now: Duration) -> u64 {
        let req = request.req;
        if request.op == RoomOp::Join
            && let Some(room) = &request.room
        {
            self.rooms.track(room);
        }
        if self.is_logged_in() {
            self.write_request(&request);
        }
        let deadline = now + self.config.room_request_timeout;
        self.requests.insert(request, deadline);
        req
    }

    /// Writes a request; a join of a room the client is in asks for what came after
    /// the last message it received.
    fn write_request(&mut self, request: &RoomRequest) {
        let mut request = request.clone();
        if request.op == RoomOp::Join {
            request.after = request
                .room
                .as_deref()
                .and_then(|room| self.rooms.get(room))
                .and_then(|room| room.last_mid());
        }
        let mut frame = Frame::new(wire::ROOM_REQUEST, self.user(), SERVER_ID);
        frame.data_content = Some(encode_body(&request));
        self.write(&frame);
    }

    fn fail(&mut self, request: RoomRequest, error: RoomError) {
        self.emit(RoomRequestFailed {
            client: self.entity,
            req: request.req,
            op: request.op,
            room: request.room,
            user: request.peer.or(request.user),
            error,
        });
    }

    /// A join failed: a room it would have re-joined is left.
    fn join_failed(&mut self, room: Option<&str>) {
        let Some(room) = room else { return };
        if self.rooms.remove(room) {
            self.emit(RoomLeft {
                client: self.entity,
                room: room.to_owned(),
                reason: RoomLeftReason::RejoinFailed,
            });
        }
    }

    /// Logged in (again): writes the requests that wait, fails those the server no
    /// longer serves, and re-joins every room the client is in that no join or
    /// leave is in flight for.
    pub(super) fn resume_social_session(&mut self, now: Duration) {
        let waiting: Vec<RoomRequest> = self.requests.iter().cloned().collect();
        let mut busy = Vec::new();
        for request in waiting {
            if let Some(ext) = needs(&request).iter().find(|e| !self.supports(e)) {
                if let Some(p) = self.requests.take(request.req) {
                    let room = p.request.room.clone();
                    self.fail(p.request, RoomError::NotSupported { ext });
                    if request.op == RoomOp::Join {
                        self.join_failed(room.as_deref());
                    }
                }
                continue;
            }
            if matches!(request.op, RoomOp::Join | RoomOp::Leave) {
                busy.extend(request.room.clone());
            }
            self.write_request(&request);
        }
        let rooms: Vec<String> = self.rooms.names().map(str::to_owned).collect();
        for room in rooms {
            if busy.contains(&room) {
                continue;
            }
            if self.supports(ext::ROOMS) {
                let req = self.requests.next_id();
                self.enqueue(RoomRequest::new(req, RoomOp::Join).room(room), now);
            } else {
                self.join_failed(Some(&room));
            }
        }
    }

    /// The session ended: every request fails, every room is left, and what the
    /// server served is forgotten.
    pub(super) fn end_social_session(&mut self) {
        for pending in self.requests.drain() {
            self.fail(pending.request, RoomError::SessionEnded);
        }
        for room in self.rooms.clear() {
            self.emit(RoomLeft {
                client: self.entity,
                room,
                reason: RoomLeftReason::SessionEnded,
            });
        }
        self.server_ext.clear();
    }

    /// Requests whose time is up fail.
    pub(super) fn tick_requests(&mut self, now: Duration) {
        if self.requests.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        let timeout = self.config.room_request_timeout;
        for pending in self.requests.expire(now) {
            let (op, room) = (pending.request.op, pending.request.room.clone());
            self.fail(pending.request, RoomError::TimedOut(timeout));
            if op == RoomOp::Join {
                self.join_failed(room.as_deref());
            }
        }
    }

    /// Whether a message `mid` of `room` is new (and records it); true for a room
    /// the client does not track.
    pub(super) fn saw_room_message(&mut self, room: &str, mid: i64) -> bool {
        self.rooms
            .tracked_mut(room)
            .is_none_or(|state| state.saw(mid, true))
    }

    /// The server ACKed the client's own message `sent` with id `mid`: a copy of it
    /// in a room's history is not delivered back.
    pub(super) fn saw_own_room_message(&mut self, sent: &Frame, mid: i64) {
        if let Some(room) = room_of_address(sent.to_id())
            && let Some(state) = self.rooms.tracked_mut(room)
        {
            state.saw(mid, false);
        }
    }

    /// A frame of type 150: a reply (with `req`) or an event.
    pub(super) fn on_room_frame(&mut self, frame: &Frame, now: Duration) {
        let reply: RoomReply = match decode_body(frame.data_content.as_deref()) {
            Ok(r) => r,
            Err(e) => return self.bad_frame(e.into()),
        };
        match reply.req {
            Some(req) => self.on_room_reply(req, reply),
            None => self.on_room_event(reply, now),
        }
    }

    fn on_room_reply(&mut self, req: u64, reply: RoomReply) {
        // A late reply (the request timed out) or one for another session.
        let Some(pending) = self.requests.take(req) else {
            return;
        };
        let request = pending.request;
        let client = self.entity;
        if reply.code != 0 {
            let (op, room) = (request.op, request.room.clone());
            self.fail(
                request,
                RoomError::Refused {
                    code: reply.code,
                    msg: reply.msg.unwrap_or_default(),
                },
            );
            if op == RoomOp::Join {
                self.join_failed(room.as_deref());
            }
            return;
        }
        let room = request.room.clone().unwrap_or_default();
        match request.op {
            RoomOp::Join => {
                let me = self.user();
                let (state, rejoin) = self.rooms.mark_joined(&room);
                state.set_members(&reply.members);
                // The client's own message whose ACK the lost link took: it is still
                // pending (its resend will settle it), not news for the game.
                let (own, others): (Vec<_>, Vec<_>) = reply.messages.into_iter().partition(|m| {
                    m.from == me && m.fp.as_deref().is_some_and(|fp| self.qos_send.contains(fp))
                });
                for m in own {
                    state.saw(m.mid, false);
                }
                let messages = state.fresh(others);
                self.emit(RoomJoined {
                    client,
                    room,
                    members: reply.members,
                    messages,
                    more: reply.more,
                    rejoin,
                });
            }
            RoomOp::Leave => {
                self.rooms.remove(&room);
                self.emit(RoomLeft {
                    client,
                    room,
                    reason: RoomLeftReason::Requested,
                });
            }
            RoomOp::Members => {
                if let Some(state) = self.rooms.joined_mut(&room) {
                    state.set_members(&reply.members);
                }
                self.emit(RoomMembers {
                    client,
                    req,
                    room,
                    members: reply.members,
                });
            }
            RoomOp::History => self.emit(RoomHistory {
                client,
                req,
                room: request.room,
                peer: request.peer,
                messages: reply.messages,
                more: reply.more,
            }),
            RoomOp::Rooms => self.emit(RoomList {
                client,
                req,
                rooms: reply.rooms,
            }),
            RoomOp::Block | RoomOp::Unblock => self.emit(BlockUpdated {
                client,
                req,
                user: request.user.unwrap_or_default(),
                blocked: request.op == RoomOp::Block,
            }),
            // Not requests this client makes.
            _ => {}
        }
    }

    /// The server could not hand this client live copies of messages of `room` (its
    /// queue was full): re-joined with `after`, as after a re-login, so the reply
    /// brings what was missed. Nothing is asked while a join or leave of the room
    /// is in flight (a join brings the same), or for a room the client is not in.
    fn catch_up(&mut self, room: String, now: Duration) {
        let busy = self.requests.iter().any(|r| {
            matches!(r.op, RoomOp::Join | RoomOp::Leave) && r.room.as_deref() == Some(&room)
        });
        if busy || self.rooms.joined_mut(&room).is_none() {
            return;
        }
        let req = self.requests.next_id();
        self.enqueue(RoomRequest::new(req, RoomOp::Join).room(room), now);
    }

    /// An event about a member of a room the client is in; events about other rooms
    /// (a join still in flight, a room just left) are ignored.
    fn on_room_event(&mut self, event: RoomReply, now: Duration) {
        let (Some(room), Some(user)) = (event.room, event.user) else {
            return;
        };
        if event.op == RoomOp::Missed {
            return self.catch_up(room, now);
        }
        let client = self.entity;
        let me = self.user_id() == Some(user.as_str());
        let Some(state) = self.rooms.joined_mut(&room) else {
            return;
        };
        match event.op {
            RoomOp::Joined => match state.set_member(&user, true) {
                None => self.emit(MemberJoined { client, room, user }),
                Some(false) => self.emit(PresenceChanged {
                    client,
                    room,
                    user,
                    online: true,
                }),
                Some(true) => {}
            },
            RoomOp::Left if me => {
                self.rooms.remove(&room);
                self.emit(RoomLeft {
                    client,
                    room,
                    reason: RoomLeftReason::Removed,
                });
            }
            RoomOp::Left if state.remove_member(&user) => {
                self.emit(MemberLeft { client, room, user });
            }
            RoomOp::Presence => {
                let Some(online) = event.online else { return };
                if state.set_member(&user, online) != Some(online) {
                    self.emit(PresenceChanged {
                        client,
                        room,
                        user,
                        online,
                    });
                }
            }
            _ => {}
        }
    }
}
