//! The social extension's client state (`docs/PROTOCOL-EXTENSIONS.md`): the rooms the
//! client is in with their members and presence, the last message id seen in each,
//! and the room requests waiting for a reply.
//!
//! Plain data, changed only by [`ClientCore`](super::ClientCore): the game reads it
//! through [`ClientCore::rooms`](super::ClientCore::rooms) (`ImClient::rooms` in Bevy)
//! and hears every change as a message.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::protocol::{HistoryMessage, Member, RoomRequest};

/// How many message ids of each room are remembered to drop duplicates (a live copy
/// and a history copy of one message). Past it the smallest are forgotten first.
pub const SEEN_MIDS_PER_ROOM: usize = 1024;

/// One room the client is in: its members with their presence, and the last
/// message id seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomState {
    /// Whether the server confirmed the membership (a room with only a join in
    /// flight is tracked, to de-duplicate what arrives before the reply, but not
    /// shown).
    joined: bool,
    /// Member → online.
    members: BTreeMap<String, bool>,
    /// The largest message id received from the room (live copies and the history
    /// of a join); what an automatic re-join asks to continue `after`.
    last_mid: Option<i64>,
    /// Ids seen (received, or of the client's own messages the server ACKed).
    seen: BTreeSet<i64>,
}

impl RoomState {
    /// The members and whether each is online, by user id.
    pub fn members(&self) -> impl Iterator<Item = (&str, bool)> {
        self.members.iter().map(|(u, o)| (u.as_str(), *o))
    }

    /// The members as the protocol lists them, by user id.
    pub fn member_list(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(user, online)| Member {
                user: user.clone(),
                online: *online,
            })
            .collect()
    }

    /// Whether `user` is a member, and online: `None` when not a member.
    pub fn online(&self, user: &str) -> Option<bool> {
        self.members.get(user).copied()
    }

    /// Whether `user` is a member (online or offline within the grace period).
    pub fn is_member(&self, user: &str) -> bool {
        self.members.contains_key(user)
    }

    /// How many members the room has.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// How many members are online.
    pub fn online_count(&self) -> usize {
        self.members.values().filter(|o| **o).count()
    }

    /// The largest message id received from the room; an automatic re-join after a
    /// re-login asks for the messages after it.
    pub fn last_mid(&self) -> Option<i64> {
        self.last_mid
    }

    /// Whether message `mid` was seen (received, or one of the client's own
    /// messages the server ACKed with this id).
    pub fn has_seen(&self, mid: i64) -> bool {
        self.seen.contains(&mid)
    }

    /// Records `mid` as seen; true when it is new (deliver it), false for a
    /// duplicate. `received`: it came from the room (a copy or history), so it moves
    /// `last_mid`; the id of the client's own message only de-duplicates.
    pub(crate) fn saw(&mut self, mid: i64, received: bool) -> bool {
        if received {
            self.last_mid = Some(self.last_mid.map_or(mid, |last| last.max(mid)));
        }
        if !self.seen.insert(mid) {
            return false;
        }
        while self.seen.len() > SEEN_MIDS_PER_ROOM {
            self.seen.pop_first();
        }
        true
    }

    /// Keeps the messages not seen yet, recording them.
    pub(crate) fn fresh(&mut self, messages: Vec<HistoryMessage>) -> Vec<HistoryMessage> {
        messages
            .into_iter()
            .filter(|m| self.saw(m.mid, true))
            .collect()
    }

    pub(crate) fn set_members(&mut self, members: &[Member]) {
        self.members = members.iter().map(|m| (m.user.clone(), m.online)).collect();
    }

    /// Sets `user`'s presence; returns the previous one (`None`: was not a member).
    pub(crate) fn set_member(&mut self, user: &str, online: bool) -> Option<bool> {
        self.members.insert(user.to_owned(), online)
    }

    pub(crate) fn remove_member(&mut self, user: &str) -> bool {
        self.members.remove(user).is_some()
    }
}

/// The rooms the client is in (confirmed by the server), by name.
///
/// While the client is not logged in (a re-login under way, say) this is the last
/// known state: the client re-joins these rooms once logged in again and catches up
/// on what it missed. It is emptied when the session ends (logout, release, kickout,
/// a login as another user).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rooms {
    /// Joined rooms, and rooms with a join in flight (`joined: false`).
    rooms: BTreeMap<String, RoomState>,
}

impl Rooms {
    /// The room `name` (without `#`), when the client is in it.
    pub fn get(&self, name: &str) -> Option<&RoomState> {
        self.rooms.get(name).filter(|r| r.joined)
    }

    /// Whether the client is in room `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every room the client is in, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RoomState)> {
        self.rooms
            .iter()
            .filter(|(_, r)| r.joined)
            .map(|(n, r)| (n.as_str(), r))
    }

    /// The names of the rooms the client is in, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(n, _)| n)
    }

    /// How many rooms the client is in.
    pub fn len(&self) -> usize {
        self.rooms.values().filter(|r| r.joined).count()
    }

    /// Whether the client is in no room.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The room, when joined.
    pub(crate) fn joined_mut(&mut self, name: &str) -> Option<&mut RoomState> {
        self.rooms.get_mut(name).filter(|r| r.joined)
    }

    /// The room, joined or with a join in flight.
    pub(crate) fn tracked_mut(&mut self, name: &str) -> Option<&mut RoomState> {
        self.rooms.get_mut(name)
    }

    /// Starts tracking `name` for a join in flight (kept as it is when known).
    pub(crate) fn track(&mut self, name: &str) -> &mut RoomState {
        self.rooms.entry(name.to_owned()).or_default()
    }

    /// Marks `name` joined; returns whether it was joined already (a re-join).
    pub(crate) fn mark_joined(&mut self, name: &str) -> (&mut RoomState, bool) {
        let room = self.track(name);
        let rejoin = std::mem::replace(&mut room.joined, true);
        (room, rejoin)
    }

    /// Stops tracking `name`; returns whether it was joined.
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        self.rooms.remove(name).is_some_and(|r| r.joined)
    }

    /// Forgets everything; returns the names of the rooms that were joined.
    pub(crate) fn clear(&mut self) -> Vec<String> {
        let joined = self.names().map(str::to_owned).collect();
        self.rooms.clear();
        joined
    }
}

/// A room request waiting for its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingRequest {
    /// The request (for a join, `after` is filled in each time it is written).
    pub request: RoomRequest,
    /// When it fails unanswered.
    pub deadline: Duration,
}

/// Room requests waiting for their replies, by request id.
#[derive(Debug, Default)]
pub(crate) struct RoomRequests {
    last_req: u64,
    pending: BTreeMap<u64, PendingRequest>,
}

impl RoomRequests {
    /// The next request id: 1, 2, 3, ... over the client's life.
    pub fn next_id(&mut self) -> u64 {
        self.last_req += 1;
        self.last_req
    }

    pub fn insert(&mut self, request: RoomRequest, deadline: Duration) {
        self.pending
            .insert(request.req, PendingRequest { request, deadline });
    }

    pub fn take(&mut self, req: u64) -> Option<PendingRequest> {
        self.pending.remove(&req)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn next_deadline(&self) -> Option<Duration> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Removes and returns the requests due at `now`, oldest first.
    pub fn expire(&mut self, now: Duration) -> Vec<PendingRequest> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(req, _)| *req)
            .collect();
        due.iter()
            .filter_map(|req| self.pending.remove(req))
            .collect()
    }

    /// Removes and returns every request, oldest first.
    pub fn drain(&mut self) -> Vec<PendingRequest> {
        std::mem::take(&mut self.pending).into_values().collect()
    }

    /// Every request, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &RoomRequest> {
        self.pending.values().map(|p| &p.request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(mid: i64) -> HistoryMessage {
        HistoryMessage {
            mid,
            ts: 1000 + mid,
            from: "bob".into(),
            to: "#lobby".into(),
            content: format!("m{mid}"),
            typeu: 0,
            fp: None,
        }
    }

    #[test]
    fn a_mid_is_delivered_once_and_own_ids_do_not_move_last_mid() {
        let mut r = RoomState::default();
        assert!(r.saw(5, true));
        assert!(!r.saw(5, true));
        assert!(r.saw(9, false), "own message");
        assert_eq!(r.last_mid(), Some(5));
        let kept = r.fresh(vec![msg(5), msg(6), msg(9), msg(10)]);
        assert_eq!(
            kept.iter().map(|m| m.mid).collect::<Vec<_>>(),
            [6, 10],
            "5 and 9 were seen"
        );
        assert_eq!(r.last_mid(), Some(10));
    }

    #[test]
    fn the_seen_set_is_bounded() {
        let mut r = RoomState::default();
        for mid in 0..(SEEN_MIDS_PER_ROOM as i64 + 10) {
            r.saw(mid, true);
        }
        assert_eq!(r.seen.len(), SEEN_MIDS_PER_ROOM);
        assert!(!r.has_seen(9) && r.has_seen(10));
    }

    #[test]
    fn only_joined_rooms_are_shown() {
        let mut rooms = Rooms::default();
        rooms.track("lobby");
        assert!(rooms.is_empty() && !rooms.contains("lobby"));
        let (_, rejoin) = rooms.mark_joined("lobby");
        assert!(!rejoin);
        assert!(rooms.mark_joined("lobby").1);
        rooms.track("team");
        assert_eq!(rooms.names().collect::<Vec<_>>(), ["lobby"]);
        assert!(!rooms.remove("team"), "a join in flight was not joined");
        assert_eq!(rooms.clear(), ["lobby"]);
    }

    #[test]
    fn requests_expire_oldest_first() {
        let mut t = RoomRequests::default();
        for at in [3, 1, 2] {
            let req = t.next_id();
            t.insert(
                RoomRequest::new(req, crate::protocol::RoomOp::Rooms),
                Duration::from_secs(at),
            );
        }
        assert_eq!(t.next_deadline(), Some(Duration::from_secs(1)));
        let due = t.expire(Duration::from_secs(2));
        assert_eq!(
            due.iter().map(|p| p.request.req).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(t.len(), 1);
    }
}
