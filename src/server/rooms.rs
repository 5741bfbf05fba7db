//! Rooms and presence as plain state: who is in which room, who of them is online,
//! and when a member whose link dropped is removed. No I/O and no clock: every call
//! takes `now` (time since the server started) and returns the events to send, so
//! tests drive it with scripted times.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use crate::protocol::{Member, RoomInfo, RoomOp, RoomReply, room_code};

/// The rooms' settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomsConfig {
    /// The most members a room takes; a join past it is refused with 409. Rooms the
    /// host creates may set their own.
    pub member_cap: usize,
    /// How long a member whose link dropped stays a member (shown offline) before it
    /// is removed, unless it logs in again.
    pub grace: Duration,
    /// How many recent messages a joiner receives.
    pub history_on_join: usize,
}

impl Default for RoomsConfig {
    /// 256 members, a 60 s grace period, the 20 most recent messages on join.
    fn default() -> Self {
        Self {
            member_cap: 256,
            grace: Duration::from_secs(60),
            history_on_join: 20,
        }
    }
}

/// A room event for one receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notice {
    /// The user it goes to.
    pub to: String,
    /// The event.
    pub reply: RoomReply,
}

#[derive(Debug, Default)]
struct Room {
    /// Members and whether each is online, in name order.
    members: BTreeMap<String, bool>,
    private: bool,
    cap: Option<usize>,
    /// Created by the host: kept when empty.
    pinned: bool,
}

/// Every room and membership.
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    config: RoomsConfig,
    rooms: HashMap<String, Room>,
    by_user: HashMap<String, HashSet<String>>,
    /// Users whose link dropped, with the time they are removed (grace deadline).
    offline_until: HashMap<String, Duration>,
    deadlines: BinaryHeap<Reverse<(Duration, String)>>,
    /// Every member event, when they are kept for other nodes (a cluster's).
    events: Option<Vec<RoomReply>>,
}

impl Rooms {
    pub fn new(config: RoomsConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Creates (or updates) a room the host owns: kept when empty, `private` rooms
    /// ask the hook who may join.
    pub fn create(&mut self, room: &str, private: bool, cap: Option<usize>) {
        let r = self.rooms.entry(room.to_owned()).or_default();
        r.private = private;
        r.cap = cap;
        r.pinned = true;
    }

    /// Puts `user` back into `room` at start (a private room's member from the
    /// store), offline until it logs in; nobody is told.
    pub fn restore_member(&mut self, room: &str, user: &str) {
        let r = self.rooms.entry(room.to_owned()).or_default();
        r.members.insert(user.to_owned(), false);
        self.by_user
            .entry(user.to_owned())
            .or_default()
            .insert(room.to_owned());
    }

    /// Whether `room` exists and is private.
    pub fn is_private(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| r.private)
    }

    /// Keeps every member event from now on, for [`take_events`](Self::take_events).
    #[cfg(feature = "cluster")]
    pub fn keep_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// The member events since the last call (none unless kept).
    #[cfg(feature = "cluster")]
    pub fn take_events(&mut self) -> Vec<RoomReply> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// `user` joins `room` (created on first join). Joining a room one is in already
    /// answers with the members and tells nobody. `allowed` is asked for private rooms.
    ///
    /// Returns the members and the `joined` events for the others, or a code: 403 (a
    /// private room refused), 409 (full).
    pub fn join(
        &mut self,
        user: &str,
        room: &str,
        allowed: impl FnOnce() -> bool,
    ) -> Result<(Vec<Member>, Vec<Notice>), i32> {
        let default_cap = self.config.member_cap;
        let r = self.rooms.entry(room.to_owned()).or_default();
        if r.members.contains_key(user) {
            r.members.insert(user.to_owned(), true);
            return Ok((members_of(r), Vec::new()));
        }
        if r.private && !allowed() {
            self.drop_if_empty(room);
            return Err(room_code::FORBIDDEN);
        }
        if r.members.len() >= r.cap.unwrap_or(default_cap) {
            return Err(room_code::FULL);
        }
        r.members.insert(user.to_owned(), true);
        let event = record(&mut self.events, RoomOp::Joined, room, user, None);
        let notices = notices(r, user, event);
        let members = members_of(r);
        self.by_user
            .entry(user.to_owned())
            .or_default()
            .insert(room.to_owned());
        Ok((members, notices))
    }

    /// `user` leaves `room`. Returns the `left` events, or 404 when `user` is not in it.
    pub fn leave(&mut self, user: &str, room: &str) -> Result<Vec<Notice>, i32> {
        let Some(r) = self.rooms.get_mut(room) else {
            return Err(room_code::NOT_FOUND);
        };
        if r.members.remove(user).is_none() {
            return Err(room_code::NOT_FOUND);
        }
        let event = record(&mut self.events, RoomOp::Left, room, user, None);
        let notices = notices(r, user, event);
        if let Some(rooms) = self.by_user.get_mut(user) {
            rooms.remove(room);
            if rooms.is_empty() {
                self.by_user.remove(user);
            }
        }
        self.drop_if_empty(room);
        Ok(notices)
    }

    fn drop_if_empty(&mut self, room: &str) {
        if self
            .rooms
            .get(room)
            .is_some_and(|r| r.members.is_empty() && !r.pinned)
        {
            self.rooms.remove(room);
        }
    }

    /// The members of `room` and their presence; `None` when there is no such room.
    pub fn members(&self, room: &str) -> Option<Vec<Member>> {
        self.rooms.get(room).map(members_of)
    }

    /// Whether `user` is a member of `room`.
    pub fn is_member(&self, room: &str, user: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.members.contains_key(user))
    }

    /// The online members of `room` other than `except`: who a room message goes to.
    pub fn recipients(&self, room: &str, except: &str) -> Vec<String> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.members
                .iter()
                .filter(|(u, online)| **online && u.as_str() != except)
                .map(|(u, _)| u.clone())
                .collect()
        })
    }

    /// The public rooms, by name.
    pub fn list(&self) -> Vec<RoomInfo> {
        let mut list: Vec<RoomInfo> = self
            .rooms
            .iter()
            .filter(|(_, r)| !r.private)
            .map(|(name, r)| RoomInfo {
                room: name.clone(),
                members: r.members.len(),
            })
            .collect();
        list.sort_by(|a, b| a.room.cmp(&b.room));
        list
    }

    /// Every room with its members (for the host).
    pub fn snapshot(&self) -> Vec<(String, Vec<Member>)> {
        let mut all: Vec<_> = self
            .rooms
            .iter()
            .map(|(name, r)| (name.clone(), members_of(r)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The rooms `user` is in.
    pub fn rooms_of(&self, user: &str) -> Vec<String> {
        let mut rooms: Vec<String> = self
            .by_user
            .get(user)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        rooms.sort();
        rooms
    }

    /// `user`'s link dropped: shown offline in every room, removed at `now + grace`
    /// unless it comes back.
    pub fn went_offline(&mut self, user: &str, now: Duration) -> Vec<Notice> {
        let mut out = Vec::new();
        for room in self.rooms_of(user) {
            if let Some(r) = self.rooms.get_mut(&room)
                && let Some(online) = r.members.get_mut(user)
                && *online
            {
                *online = false;
                let event = record(&mut self.events, RoomOp::Presence, &room, user, Some(false));
                out.extend(notices(r, user, event));
            }
        }
        if self.by_user.contains_key(user) {
            let until = now + self.config.grace;
            self.offline_until.insert(user.to_owned(), until);
            self.deadlines.push(Reverse((until, user.to_owned())));
        }
        out
    }

    /// `user` logged in again: online in every room it is still in.
    pub fn came_online(&mut self, user: &str) -> Vec<Notice> {
        self.offline_until.remove(user);
        let mut out = Vec::new();
        for room in self.rooms_of(user) {
            if let Some(r) = self.rooms.get_mut(&room)
                && let Some(online) = r.members.get_mut(user)
                && !*online
            {
                *online = true;
                let event = record(&mut self.events, RoomOp::Presence, &room, user, Some(true));
                out.extend(notices(r, user, event));
            }
        }
        out
    }

    /// `user` logged out: it leaves every public room; in private rooms (whose
    /// members are stored) it stays a member, shown offline.
    pub fn logged_out(&mut self, user: &str) -> Vec<Notice> {
        self.offline_until.remove(user);
        let mut out = Vec::new();
        for room in self.rooms_of(user) {
            if self.is_private(&room) {
                continue;
            }
            out.extend(self.leave(user, &room).unwrap_or_default());
        }
        out
    }

    /// Removes the members whose grace period ended by `now`.
    pub fn tick(&mut self, now: Duration) -> Vec<Notice> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, user))) = self.deadlines.pop() else {
                break;
            };
            if self.offline_until.get(&user) == Some(&at) {
                out.extend(self.logged_out(&user));
            }
        }
        out
    }

    /// When [`tick`](Self::tick) next has something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }
}

fn members_of(r: &Room) -> Vec<Member> {
    r.members
        .iter()
        .map(|(user, online)| Member {
            user: user.clone(),
            online: *online,
        })
        .collect()
}

/// A member event, kept in `log` when events are kept.
fn record(
    log: &mut Option<Vec<RoomReply>>,
    op: RoomOp,
    room: &str,
    user: &str,
    online: Option<bool>,
) -> RoomReply {
    let event = RoomReply::event(op, room, user, online);
    if let Some(log) = log {
        log.push(event.clone());
    }
    event
}

/// `event` for every online member of `r` but `about`.
fn notices(r: &Room, about: &str, event: RoomReply) -> Vec<Notice> {
    r.members
        .iter()
        .filter(|(u, online)| **online && u.as_str() != about)
        .map(|(u, _)| Notice {
            to: u.clone(),
            reply: event.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn to(notices: &[Notice]) -> Vec<(&str, RoomOp, &str)> {
        notices
            .iter()
            .map(|n| {
                (
                    n.to.as_str(),
                    n.reply.op,
                    n.reply.user.as_deref().unwrap_or(""),
                )
            })
            .collect()
    }

    #[test]
    fn a_room_is_made_on_first_join_and_members_hear_of_joins_and_leaves() {
        let mut r = Rooms::new(RoomsConfig::default());
        let (members, notices) = r.join("alice", "lobby", || true).unwrap();
        assert_eq!(members.len(), 1);
        assert!(notices.is_empty());
        let (members, notices) = r.join("bob", "lobby", || true).unwrap();
        assert_eq!(
            members.iter().map(|m| m.user.as_str()).collect::<Vec<_>>(),
            ["alice", "bob"]
        );
        assert_eq!(to(&notices), [("alice", RoomOp::Joined, "bob")]);
        // Joining again tells nobody.
        assert!(r.join("bob", "lobby", || true).unwrap().1.is_empty());
        assert_eq!(r.recipients("lobby", "alice"), ["bob"]);
        assert_eq!(
            to(&r.leave("alice", "lobby").unwrap()),
            [("bob", RoomOp::Left, "alice")]
        );
        assert_eq!(r.leave("alice", "lobby"), Err(room_code::NOT_FOUND));
        r.leave("bob", "lobby").unwrap();
        assert!(r.members("lobby").is_none(), "an empty room is gone");
        assert_eq!(r.leave("bob", "nowhere"), Err(room_code::NOT_FOUND));
    }

    #[test]
    fn the_member_cap_and_private_rooms_refuse_with_codes() {
        let mut r = Rooms::new(RoomsConfig {
            member_cap: 2,
            ..RoomsConfig::default()
        });
        r.join("a", "x", || true).unwrap();
        r.join("b", "x", || true).unwrap();
        assert_eq!(r.join("c", "x", || true), Err(room_code::FULL));
        r.create("vip", true, Some(10));
        assert_eq!(r.join("c", "vip", || false), Err(room_code::FORBIDDEN));
        assert!(r.join("c", "vip", || true).is_ok());
        assert!(
            r.list().iter().all(|i| i.room != "vip"),
            "private rooms are not listed"
        );
        r.leave("c", "vip").unwrap();
        assert!(
            r.members("vip").is_some(),
            "the host's room stays when empty"
        );
    }

    #[test]
    fn a_dropped_link_shows_offline_then_is_removed_after_the_grace_period() {
        let mut r = Rooms::new(RoomsConfig::default());
        r.join("alice", "lobby", || true).unwrap();
        r.join("bob", "lobby", || true).unwrap();
        let n = r.went_offline("bob", s(10));
        assert_eq!(to(&n), [("alice", RoomOp::Presence, "bob")]);
        assert_eq!(n[0].reply.online, Some(false));
        assert_eq!(r.recipients("lobby", "alice"), Vec::<String>::new());
        assert_eq!(r.next_deadline(), Some(s(70)));
        assert!(r.tick(s(69)).is_empty());
        assert_eq!(to(&r.tick(s(70))), [("alice", RoomOp::Left, "bob")]);
        assert!(!r.is_member("lobby", "bob"));
    }

    #[test]
    fn coming_back_within_the_grace_period_keeps_every_membership() {
        let mut r = Rooms::new(RoomsConfig::default());
        for room in ["a", "b"] {
            r.join("alice", room, || true).unwrap();
            r.join("bob", room, || true).unwrap();
        }
        r.went_offline("bob", s(0));
        let n = r.came_online("bob");
        assert_eq!(n.len(), 2);
        assert!(
            n.iter()
                .all(|n| n.reply.online == Some(true) && n.to == "alice")
        );
        assert!(
            r.tick(s(600)).is_empty(),
            "the old deadline no longer counts"
        );
        assert_eq!(r.rooms_of("bob"), ["a", "b"]);
        // A logout leaves everything.
        assert_eq!(r.logged_out("bob").len(), 2);
        assert!(r.rooms_of("bob").is_empty());
    }
}
