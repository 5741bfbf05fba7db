//! The social extension's side of a session (`docs/PROTOCOL-EXTENSIONS.md`): room
//! requests, room messages, offline messages, moderation and block lists, and the
//! work that waits for the store.

use super::*;
use crate::protocol::{
    HistoryMessage, Member, ROOM_PREFIX, RoomOp, RoomReply, RoomRequest, ext, room_address,
    room_code, validate_room_name,
};
use crate::server::ServerConfig;
use crate::server::hooks::Moderation;
use crate::server::store::{StoreError, StoredMessage};

/// Work of a frame that waits for the store (`Session::run_jobs`).
pub(super) enum Job {
    /// Store a room message, then fan it out and ACK it.
    RoomMessage { room: String, frame: Frame },
    /// Store a QoS message for a user who is not online, then ACK it as stored.
    Offline { to: String, frame: Frame },
    /// Send what waited in the user's offline box.
    DeliverOffline,
    /// Answer a join with the history it brings (and store a private membership).
    JoinReply {
        request: RoomRequest,
        members: Vec<Member>,
        private: bool,
    },
    /// Answer a history request.
    History(RoomRequest),
    /// Forget a private room's member.
    LeavePrivate(String),
    /// Answer a members request with every node's members.
    #[cfg(feature = "cluster")]
    Members {
        request: RoomRequest,
        members: Option<Vec<Member>>,
    },
    /// Claim the user for this node among the cluster's (after a login here).
    #[cfg(feature = "cluster")]
    Claim { t: i64, fresh: bool },
    /// Hand a message to the node its receiver is online on.
    #[cfg(feature = "cluster")]
    Forward {
        node: String,
        to: String,
        frame: Frame,
    },
}

impl Session {
    /// Asks the moderation hook about a message; false when it was refused (the
    /// sender has its error frame).
    pub(super) fn moderate(&mut self, user: &str, to: &str, frame: &mut Frame) -> bool {
        match self.shared.hooks.moderate(user, to, frame.content()) {
            Moderation::Pass => true,
            Moderation::Rewrite(text) => {
                frame.data_content = Some(text);
                true
            }
            Moderation::Refuse => {
                self.shared.metrics.reject(RejectReason::Refused);
                self.push_error(room_code::FORBIDDEN, &frame.to_json());
                false
            }
        }
    }

    /// Keeps a relayed direct message in the pair's history, without holding the
    /// relay up: history is a record, the message itself is already on its way.
    pub(super) fn keep_pair_history(&self, user: &str, to: &str, frame: &Frame) {
        let shared = self.shared.clone();
        if !shared.config.direct_history || !shared.config.extensions {
            return;
        }
        let on_error = {
            let shared = shared.clone();
            move |e: StoreError| {
                shared.metrics.reject(RejectReason::StoreFailed);
                tracing::warn!("direct history not stored: {e}");
            }
        };
        shared.log().append_pair_detached(
            user,
            to,
            user,
            frame.content(),
            frame.typeu,
            frame.fp.as_deref(),
            now_ms(),
            on_error,
        );
    }

    /// A data frame to a room: members only; stored, then fanned out and ACKed.
    pub(super) fn room_message(&mut self, user: &str, room: String, mut frame: Frame) {
        let shared = self.shared.clone();
        let member =
            validate_room_name(&room).is_ok() && shared.lock().rooms.is_member(&room, user);
        if !member {
            shared.metrics.reject(RejectReason::NotMember);
            self.push_error(room_code::NOT_FOUND, &frame.to_json());
            return;
        }
        let to = frame.to_id().to_owned();
        if !self.moderate(user, &to, &mut frame) {
            return;
        }
        // The copies carry `sm` and `mid`: make sure they still fit the frame limit.
        let mut copy = frame.clone();
        copy.sm = i64::MAX;
        copy.mid = Some(i64::MAX);
        if copy
            .encode_with_limit(shared.config.max_frame_bytes)
            .is_err()
        {
            shared.metrics.reject(RejectReason::FrameTooLarge);
            self.push_error(
                ERROR_INVALID_FRAME,
                "the room's copy would exceed the frame limit",
            );
            return;
        }
        if !frame.qos {
            // Without QoS a room message is ephemeral (positions, typing): fanned out
            // at once, never stored, no id.
            return fan_out(&shared, &room, user, &frame);
        }
        self.jobs.push(Job::RoomMessage { room, frame });
    }

    pub(super) fn reply(&mut self, user: &str, reply: &RoomReply) {
        if reply.code != room_code::OK {
            self.shared.metrics.reject(RejectReason::BadRoomRequest);
        }
        let frame = fit_reply(user, reply, self.shared.config.max_frame_bytes);
        self.push(&frame, ServerKind::Room);
    }

    /// A room request (type 100): answered here, or by a job once the store answered.
    pub(super) fn room_request(&mut self, user: &str, frame: &Frame) {
        let shared = self.shared.clone();
        let request: RoomRequest = match decode_body(frame.data_content.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                let mut reply = RoomReply::to(&RoomRequest::new(0, RoomOp::Unknown), 400);
                reply.req = None;
                return self.reply(user, &reply.msg(e.to_string()));
            }
        };
        let fail = |code: i32, msg: &str| RoomReply::to(&request, code).msg(msg);
        let room = match request.op {
            RoomOp::Join | RoomOp::Leave | RoomOp::Members => match request.room.as_deref() {
                Some(r) if validate_room_name(r).is_ok() => Some(r.to_owned()),
                Some(r) => {
                    let why = validate_room_name(r).err().map(|e| e.to_string());
                    return self.reply(user, &fail(400, &why.unwrap_or_default()));
                }
                None => return self.reply(user, &fail(400, "a room is required")),
            },
            _ => None,
        };
        match request.op {
            RoomOp::Join => {
                let room = room.unwrap_or_default();
                let hooks = &shared.hooks;
                let mut state = shared.lock();
                let private = state.rooms.is_private(&room);
                match state
                    .rooms
                    .join(user, &room, || hooks.may_join(user, &room))
                {
                    Ok((members, notices)) => {
                        shared.notify(&mut state, notices);
                        drop(state);
                        self.jobs.push(Job::JoinReply {
                            request,
                            members,
                            private,
                        });
                    }
                    Err(code) => {
                        drop(state);
                        let msg = match code {
                            room_code::FULL => "the room is full",
                            _ => "the room is private",
                        };
                        self.reply(user, &fail(code, msg));
                    }
                }
            }
            RoomOp::Leave => {
                let room = room.unwrap_or_default();
                let mut state = shared.lock();
                let private = state.rooms.is_private(&room);
                match state.rooms.leave(user, &room) {
                    Ok(notices) => {
                        if let Some(rooms) = state.behind.get_mut(user) {
                            rooms.remove(&room);
                        }
                        shared.notify(&mut state, notices);
                        drop(state);
                        if private {
                            self.jobs.push(Job::LeavePrivate(room));
                        }
                        self.reply(user, &RoomReply::to(&request, 0));
                    }
                    Err(code) => {
                        drop(state);
                        self.reply(user, &fail(code, "not a member of the room"));
                    }
                }
            }
            RoomOp::Members => {
                let members = shared.lock().rooms.members(&room.unwrap_or_default());
                #[cfg(feature = "cluster")]
                if shared.cluster.get().is_some() {
                    return self.jobs.push(Job::Members { request, members });
                }
                match members {
                    Some(members) => {
                        let mut reply = RoomReply::to(&request, 0);
                        reply.members = members;
                        self.reply(user, &reply);
                    }
                    None => self.reply(user, &fail(404, "no such room")),
                }
            }
            RoomOp::Rooms => {
                let mut reply = RoomReply::to(&request, 0);
                reply.rooms = shared.lock().rooms.list();
                self.reply(user, &reply);
            }
            RoomOp::History => {
                if request
                    .limit
                    .is_some_and(|l| l == 0 || l > MAX_HISTORY_PAGE)
                {
                    let msg = format!("limit must be 1 to {MAX_HISTORY_PAGE}");
                    return self.reply(user, &fail(400, &msg));
                }
                if request.before.is_some_and(|b| b <= 0) {
                    return self.reply(user, &fail(400, "before must be a message id"));
                }
                match (&request.room, &request.peer) {
                    (Some(room), None) => {
                        if validate_room_name(room).is_err() {
                            return self.reply(user, &fail(400, "bad room name"));
                        }
                        if !shared.lock().rooms.is_member(room, user) {
                            return self.reply(user, &fail(404, "not a member of the room"));
                        }
                    }
                    (None, Some(peer)) if !peer.is_empty() && !peer.starts_with(ROOM_PREFIX) => {}
                    _ => return self.reply(user, &fail(400, "a room or a peer is required")),
                }
                self.jobs.push(Job::History(request));
            }
            RoomOp::Block | RoomOp::Unblock => {
                let Some(other) = request.user.clone().filter(|u| !u.is_empty()) else {
                    return self.reply(user, &fail(400, "a user is required"));
                };
                {
                    let mut state = shared.lock();
                    let blocks = state.blocks.entry(user.to_owned()).or_default();
                    if request.op == RoomOp::Block {
                        blocks.insert(other);
                    } else {
                        blocks.remove(&other);
                    }
                }
                self.reply(user, &RoomReply::to(&request, 0));
            }
            _ => self.reply(user, &fail(400, "unknown op")),
        }
    }

    /// Runs the frame's store work in order, queueing the replies it brings.
    pub(crate) async fn run_jobs(&mut self) {
        let Some(user) = self.user.clone() else {
            self.jobs.clear();
            return;
        };
        for job in std::mem::take(&mut self.jobs) {
            match job {
                Job::RoomMessage { room, frame } => {
                    self.store_room_message(&user, room, frame).await
                }
                Job::Offline { to, frame } => self.store_offline(&user, &to, frame).await,
                Job::DeliverOffline => self.deliver_offline(&user).await,
                Job::JoinReply {
                    request,
                    members,
                    private,
                } => self.join_reply(&user, request, members, private).await,
                Job::History(request) => self.history_reply(&user, request).await,
                Job::LeavePrivate(room) => {
                    if let Err(e) = self.shared.store.remove_member(&room, &user).await {
                        self.shared.metrics.reject(RejectReason::StoreFailed);
                        tracing::warn!("private membership not removed: {e}");
                    }
                }
                #[cfg(feature = "cluster")]
                Job::Claim { t, fresh } => self.claim(&user, t, fresh).await,
                #[cfg(feature = "cluster")]
                Job::Members { request, members } => {
                    self.members_reply(&user, request, members).await
                }
                #[cfg(feature = "cluster")]
                Job::Forward { node, to, frame } => self.forward(&user, &node, to, frame).await,
            }
        }
    }

    async fn store_room_message(&mut self, user: &str, room: String, mut frame: Frame) {
        let shared = self.shared.clone();
        let stored = shared
            .log()
            .append_room(
                &room,
                user,
                frame.content(),
                frame.typeu,
                frame.fp.as_deref(),
                now_ms(),
            )
            .await;
        let stored = match stored {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%room, "room message not stored: {e}");
                shared.metrics.reject(RejectReason::StoreFailed);
                return self.push_error(room_code::STORE_FAILED, &frame.to_json());
            }
        };
        frame.sm = stored.ts_ms;
        frame.mid = Some(stored.mid);
        // A member whose socket cannot take it now finds it in the history.
        fan_out(&shared, &room, user, &frame);
        #[cfg(feature = "cluster")]
        if let Some(cluster) = shared.cluster.get() {
            cluster.cast_message(&room, user, &frame);
        }
        if let Some(fp) = frame.fp.as_deref().filter(|_| frame.qos) {
            let mut ack = Frame::server_ack(self.dialect(), &room_address(&room), user, fp);
            ack.mid = Some(stored.mid);
            shared.lock().recent_acks.insert(user, fp, ack.clone());
            self.push(&ack, ServerKind::Ack);
        }
    }

    async fn store_offline(&mut self, user: &str, to: &str, frame: Frame) {
        let shared = self.shared.clone();
        let stored = shared
            .log()
            .offline_push(
                to,
                user,
                frame.content(),
                frame.typeu,
                frame.fp.as_deref(),
                now_ms(),
            )
            .await;
        match stored {
            Ok(m) => {
                let fp = frame.fp.as_deref().unwrap_or_default();
                let mut ack = Frame::server_ack(self.dialect(), to, user, fp);
                ack.mid = Some(m.mid);
                ack.stored = true;
                shared.lock().recent_acks.insert(user, fp, ack.clone());
                self.push(&ack, ServerKind::Ack);
                // The receiver may be online on another node after all.
                #[cfg(feature = "cluster")]
                if let Some(cluster) = shared.cluster.get() {
                    cluster.cast_stored(to, &offline_frame(to, m));
                }
            }
            Err(StoreError::BoxFull { .. }) => {
                shared.metrics.reject(RejectReason::OfflineBoxFull);
                self.push_error(room_code::BOX_FULL, &frame.to_json());
            }
            Err(e) => {
                tracing::warn!(%to, "offline message not stored: {e}");
                shared.metrics.reject(RejectReason::StoreFailed);
                self.push_error(room_code::STORE_FAILED, &frame.to_json());
            }
        }
    }

    /// What waited in `user`'s offline box, oldest first, with QoS; each leaves the
    /// box when the user ACKs it (it stays for the next login otherwise).
    async fn deliver_offline(&mut self, user: &str) {
        let shared = self.shared.clone();
        let waiting = match shared.log().offline_for(user, now_ms()).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(%user, "offline box not read: {e}");
                shared.metrics.reject(RejectReason::StoreFailed);
                return;
            }
        };
        let mut state = shared.lock();
        for m in waiting {
            #[cfg(feature = "cluster")]
            if shared.cluster.get().is_some()
                && !state
                    .box_sent
                    .entry(user.to_owned())
                    .or_default()
                    .insert(m.mid)
            {
                continue;
            }
            let frame = offline_frame(user, m);
            let text = frame.to_json();
            if let Err(DeliverError::Refused(r)) = shared.deliver(
                &mut state,
                user,
                &frame,
                text,
                Some((self.id, &mut self.out)),
            ) {
                // Left in the box for the next login.
                shared.metrics.reject(r);
                break;
            }
        }
    }

    async fn join_reply(
        &mut self,
        user: &str,
        request: RoomRequest,
        members: Vec<Member>,
        private: bool,
    ) {
        let shared = self.shared.clone();
        let room = request.room.clone().unwrap_or_default();
        #[cfg(feature = "cluster")]
        let members = match shared.cluster.get() {
            Some(cluster) => cluster.all_members(&room, members).await,
            None => members,
        };
        if private && let Err(e) = shared.store.add_member(&room, user).await {
            tracing::warn!(%room, "private membership not stored: {e}");
            shared.metrics.reject(RejectReason::StoreFailed);
        }
        let limit = shared.config.rooms.history_on_join;
        let mut reply = RoomReply::to(&request, 0);
        reply.members = members;
        match shared
            .log()
            .room_history(&room, None, request.after, limit)
            .await
        {
            Ok((messages, more)) => {
                reply.messages = messages.into_iter().map(history_message).collect();
                reply.more = more;
            }
            Err(e) => {
                // Joined all the same; the history is what could not be read.
                tracing::warn!(%room, "history not read: {e}");
                shared.metrics.reject(RejectReason::StoreFailed);
                reply.code = room_code::STORE_FAILED;
                reply.msg = Some(format!("joined, but the history could not be read: {e}"));
            }
        }
        self.reply(user, &reply);
    }

    async fn history_reply(&mut self, user: &str, request: RoomRequest) {
        let shared = self.shared.clone();
        let limit = request.limit.unwrap_or(DEFAULT_HISTORY_PAGE) as usize;
        let page = match (&request.room, &request.peer) {
            (Some(room), _) => {
                shared
                    .log()
                    .room_history(room, request.before, None, limit)
                    .await
            }
            (None, Some(peer)) => {
                shared
                    .log()
                    .pair_history(user, peer, request.before, limit)
                    .await
            }
            (None, None) => Ok((Vec::new(), false)),
        };
        let reply = match page {
            Ok((messages, more)) => {
                let mut reply = RoomReply::to(&request, 0);
                reply.messages = messages.into_iter().map(history_message).collect();
                reply.more = more;
                reply
            }
            Err(e) => {
                shared.metrics.reject(RejectReason::StoreFailed);
                RoomReply::to(&request, room_code::STORE_FAILED).msg(e.to_string())
            }
        };
        self.reply(user, &reply);
    }
}

/// Hands a room message to every online member of `room` but its sender. A member
/// whose queue is full misses the live copy of a stored message and is sent a
/// `missed` event at its next ACK; a message without QoS is not stored, and is
/// simply not delivered to such a member.
pub(crate) fn fan_out(shared: &Shared, room: &str, sender: &str, frame: &Frame) {
    let text = frame.to_json();
    let mut state = shared.lock();
    for member in state.rooms.recipients(room, sender) {
        if let Err(DeliverError::Refused(r)) =
            shared.deliver(&mut state, &member, frame, text.clone(), None)
        {
            shared.metrics.reject(r);
            // A stored message: the member fetches it from the history once told.
            if frame.mid.is_some() {
                shared.missed(&mut state, &member, room);
            }
        }
    }
}

/// A message from `user`'s offline box as it is delivered: QoS, with its `mid` (its
/// ACK takes it out of the box) and the time it was stored.
pub(crate) fn offline_frame(user: &str, m: StoredMessage) -> Frame {
    let mut frame = Frame::data(&m.from, user, m.content, true, m.fp, m.typeu);
    frame.sm = m.ts_ms;
    frame.mid = Some(m.mid);
    frame
}

/// The reply as a frame within `limit` bytes: a page of long messages loses its
/// oldest ones (the client pages back for them with `before`), then a member or room
/// list its last entries, and `more` says that something was left out. A reply that
/// fits is untouched.
fn fit_reply(user: &str, reply: &RoomReply, limit: usize) -> Frame {
    let fits = |f: &Frame| f.encode_with_limit(limit).is_ok();
    let frame = Frame::room_reply(user, reply);
    if fits(&frame) {
        return frame;
    }
    let mut cut = reply.clone();
    cut.more = true;
    loop {
        if !cut.messages.is_empty() {
            cut.messages.remove(0);
        } else if cut.members.pop().is_none() && cut.rooms.pop().is_none() {
            // Nothing left to leave out: the bare reply is small.
            return Frame::room_reply(user, &cut);
        }
        let frame = Frame::room_reply(user, &cut);
        if fits(&frame) {
            return frame;
        }
    }
}

/// The largest history page a client may ask for.
const MAX_HISTORY_PAGE: u32 = 100;

/// The history page size when the client names none.
const DEFAULT_HISTORY_PAGE: u32 = 50;

/// The extensions this server serves (its login reply's `ext`).
pub(super) fn served_extensions(config: &ServerConfig) -> Vec<String> {
    if !config.extensions {
        return Vec::new();
    }
    [
        ext::ROOMS,
        ext::PRESENCE,
        ext::HISTORY,
        ext::OFFLINE,
        ext::BLOCK,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn history_message(m: StoredMessage) -> HistoryMessage {
    HistoryMessage {
        mid: m.mid,
        ts: m.ts_ms,
        from: m.from,
        to: m.to,
        content: m.content,
        typeu: m.typeu,
        fp: m.fp,
    }
}
