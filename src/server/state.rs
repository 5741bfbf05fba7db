//! What every session shares: who is online, the sockets, pending server-to-client
//! QoS frames with their deadlines, and the client-to-server dedup window.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::config::ServerConfig;
use super::hooks::ServerHooks;
use super::metrics::{Metrics, MetricsSnapshot, RejectReason};
use super::rooms::{Notice, Rooms};
use super::store::StoreHandle;
use crate::client::{DedupConfig, QosReceiveFilter};
use crate::protocol::{Frame, KickoutCode, ServerKind};

/// Resolves once the server is shutting down (at once if it already is).
pub(crate) async fn until_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Identifies one accepted socket for the life of the server.
pub(crate) type SessionId = u64;

/// A frame ready for one socket, with its meaning for the metrics.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub text: String,
    pub kind: ServerKind,
}

/// What other parts of the server ask a session task to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Write a frame.
    Send(Outgoing),
    /// Write a kickout with this code and reason, then close.
    Kick {
        code: KickoutCode,
        reason: Option<String>,
    },
}

/// One open socket as the rest of the server sees it.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    pub tx: mpsc::UnboundedSender<Command>,
    /// Frames queued by others and not yet written: bounded by `max_outbound_queue`.
    pub queued: Arc<AtomicUsize>,
    pub user: Option<String>,
}

/// The session a user's messages are routed to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registered {
    pub session: SessionId,
    pub first_login_time: i64,
}

#[derive(Debug)]
struct Pending {
    frame: Frame,
    text: String,
    resends: u32,
    seq: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Deadline {
    at: Instant,
    seq: u64,
    user: String,
    key: PendingKey,
}

/// A pending server-to-client frame is known by its sender and fingerprint: two
/// senders that pick the same fingerprint never displace each other's frames.
type PendingKey = (String, String);

/// The client-to-server dedup window, keyed by user and fingerprint: the client's
/// [`QosReceiveFilter`] (deadline queue, bounded size) on the server's clock.
#[derive(Debug)]
pub(crate) struct Dedup {
    epoch: Instant,
    filter: QosReceiveFilter,
}

impl Dedup {
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Self {
            epoch: Instant::now(),
            filter: QosReceiveFilter::new(DedupConfig {
                window,
                max_entries,
            }),
        }
    }

    /// Records `(user, fp)` at `now`; true when it was already there (a duplicate).
    pub fn seen(&mut self, user: &str, fp: &str, now: Instant) -> bool {
        // The length prefix keeps the keys of different users apart.
        let key = format!("{}:{user}{fp}", user.len());
        !self
            .filter
            .accept(&key, now.saturating_duration_since(self.epoch))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.filter.len()
    }
}

/// The ACKs of recently stored messages (room and offline), by sender and
/// fingerprint: a resend whose ACK was lost is answered with the same ACK (the same
/// `mid`) instead of being stored twice. Bounded: the oldest are forgotten first.
#[derive(Debug, Default)]
pub(crate) struct RecentAcks {
    acks: HashMap<(String, String), Frame>,
    order: std::collections::VecDeque<(String, String)>,
}

impl RecentAcks {
    /// How many ACKs are remembered.
    const CAPACITY: usize = 20_000;

    pub fn get(&self, user: &str, fp: &str) -> Option<&Frame> {
        self.acks.get(&(user.to_owned(), fp.to_owned()))
    }

    pub fn insert(&mut self, user: &str, fp: &str, ack: Frame) {
        let key = (user.to_owned(), fp.to_owned());
        if self.acks.insert(key.clone(), ack).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.acks.remove(&old);
            }
        }
    }
}

/// A login or logout hook call, queued under the state lock in the order the state
/// changed, and run in that order outside it ([`Shared::run_hooks`]).
#[derive(Debug)]
pub(crate) enum HookCall {
    Login(String, i64),
    Logout(String, super::hooks::LogoutReason),
}

/// The state behind the lock.
#[derive(Debug)]
pub(crate) struct State {
    pub sessions: HashMap<SessionId, SessionEntry>,
    pub online: HashMap<String, Registered>,
    pending: HashMap<String, HashMap<PendingKey, Pending>>,
    deadlines: BinaryHeap<Reverse<Deadline>>,
    next_seq: u64,
    pub dedup: Dedup,
    /// Rooms, memberships and presence.
    pub rooms: Rooms,
    /// For each user, the users whose direct messages they refuse.
    pub blocks: HashMap<String, HashSet<String>>,
    /// The per-user rate limit's buckets, while the user is online.
    pub user_buckets: HashMap<String, super::session::TokenBucket>,
    /// ACKs of stored messages, for resends.
    pub recent_acks: RecentAcks,
    /// Login and logout hook calls not yet run.
    pub hook_queue: std::collections::VecDeque<HookCall>,
}

/// Why a frame could not be handed to a user's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliverError {
    NotOnline,
    Refused(RejectReason),
}

/// Everything a server's tasks share.
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub hooks: Box<dyn ServerHooks>,
    pub metrics: Metrics,
    state: Mutex<State>,
    pub qos_wake: Notify,
    pub shutdown: watch::Sender<bool>,
    pub stopped: watch::Sender<bool>,
    pub local_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// Set once `serve` has started, so a shutdown knows whether to wait for it.
    pub serving: AtomicBool,
    /// Held by the one thread running queued hook calls.
    hooks_running: Mutex<()>,
    next_session: AtomicU64,
    /// History, offline boxes and private rooms.
    pub store: StoreHandle,
    /// The zero of the rooms' clock.
    started: Instant,
}

impl Shared {
    pub fn new(
        config: ServerConfig,
        hooks: Box<dyn ServerHooks>,
        local_addr: SocketAddr,
        metrics_addr: Option<SocketAddr>,
        store: StoreHandle,
    ) -> Self {
        let dedup = Dedup::new(config.c2s_dedup_window, config.c2s_dedup_max_entries);
        let rooms = Rooms::new(config.rooms);
        Self {
            store,
            started: Instant::now(),
            config,
            hooks,
            metrics: Metrics::default(),
            state: Mutex::new(State {
                sessions: HashMap::new(),
                online: HashMap::new(),
                pending: HashMap::new(),
                deadlines: BinaryHeap::new(),
                next_seq: 0,
                dedup,
                rooms,
                blocks: HashMap::new(),
                user_buckets: HashMap::new(),
                recent_acks: RecentAcks::default(),
                hook_queue: std::collections::VecDeque::new(),
            }),
            qos_wake: Notify::new(),
            shutdown: watch::Sender::new(false),
            stopped: watch::Sender::new(false),
            local_addr,
            metrics_addr,
            serving: AtomicBool::new(false),
            hooks_running: Mutex::new(()),
            next_session: AtomicU64::new(1),
        }
    }

    /// The state, never poisoned: no code panics while holding it.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the queued login and logout hook calls in the order they were queued,
    /// outside the state lock (hooks may call the server's handle). One thread runs
    /// them at a time; a thread that finds another running leaves its calls to it, so
    /// every `on_login` reaches the host before the `on_logout` that ends it.
    pub fn run_hooks(&self) {
        loop {
            let running = match self.hooks_running.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            loop {
                // Not `while let`: the state lock must be released before the hook runs.
                let next = self.lock().hook_queue.pop_front();
                let Some(call) = next else { break };
                // A panicking hook must not stop the hooks of everyone else.
                let run = std::panic::AssertUnwindSafe(|| match &call {
                    HookCall::Login(user, t) => self.hooks.on_login(user, *t),
                    HookCall::Logout(user, reason) => self.hooks.on_logout(user, *reason),
                });
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(?call, "a login or logout hook panicked");
                }
            }
            drop(running);
            // A call queued while the lock above was being released runs now.
            if self.lock().hook_queue.is_empty() {
                return;
            }
        }
    }

    /// Time since the server started: the rooms' clock.
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Sends every room event to its member (no QoS: members re-read the list on
    /// re-join). A member whose socket cannot take it misses it.
    pub fn notify(&self, state: &mut State, notices: Vec<Notice>) {
        for notice in notices {
            let frame = Frame::room_reply(&notice.to, &notice.reply);
            let text = frame.to_json();
            if let Err(DeliverError::Refused(r)) =
                self.deliver(state, &notice.to, &frame, text, None)
            {
                self.metrics.reject(r);
            }
        }
    }

    pub fn next_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let online = self.lock().online.len();
        self.metrics.snapshot(online)
    }

    /// Queues a frame for another session's socket, within its outbound bound.
    pub fn send_to_session(
        &self,
        state: &State,
        session: SessionId,
        out: Outgoing,
    ) -> Result<(), DeliverError> {
        let entry = state
            .sessions
            .get(&session)
            .ok_or(DeliverError::NotOnline)?;
        if entry.queued.load(Ordering::Relaxed) >= self.config.max_outbound_queue {
            return Err(DeliverError::Refused(RejectReason::OutboundQueueFull));
        }
        entry.queued.fetch_add(1, Ordering::Relaxed);
        entry.tx.send(Command::Send(out)).map_err(|_| {
            entry.queued.fetch_sub(1, Ordering::Relaxed);
            DeliverError::NotOnline
        })
    }

    /// The one way a frame reaches a user's socket: relays, pushes, room fan-out,
    /// room events and offline delivery all come here. Looks the user up, checks the
    /// receiver's bounds, queues the frame (on `own.1` when the user is routed to the
    /// calling session `own.0`, so it keeps its place before that session's replies)
    /// and, for a QoS frame, starts its S2C QoS clock.
    pub fn deliver(
        &self,
        state: &mut State,
        to: &str,
        frame: &Frame,
        text: String,
        own: Option<(SessionId, &mut Vec<Outgoing>)>,
    ) -> Result<(), DeliverError> {
        let session = state
            .online
            .get(to)
            .map(|r| r.session)
            .ok_or(DeliverError::NotOnline)?;
        let qos = frame.qos && frame.fp.is_some();
        if qos && !self.pending_has_room(state, to) {
            return Err(DeliverError::Refused(RejectReason::PendingS2cFull));
        }
        let kind = frame.server_kind(self.config.dialect);
        let out = Outgoing {
            text: text.clone(),
            kind,
        };
        match own {
            Some((me, queue)) if me == session => queue.push(out),
            _ => self.send_to_session(state, session, out)?,
        }
        if qos {
            self.add_pending(state, to, frame.clone(), text);
        }
        Ok(())
    }

    /// Whether `user` can take one more pending QoS frame.
    pub fn pending_has_room(&self, state: &State, user: &str) -> bool {
        state.pending.get(user).map_or(0, HashMap::len) < self.config.max_pending_s2c_per_user
    }

    /// Starts the QoS clock of a frame just handed to `user`'s socket.
    pub fn add_pending(&self, state: &mut State, user: &str, frame: Frame, text: String) {
        let Some(fp) = frame.fp.clone() else {
            return;
        };
        let key: PendingKey = (frame.from_id().to_owned(), fp);
        let qos = &self.config.s2c_qos;
        let first = if qos.max_resends > 0 {
            qos.resend_after
        } else {
            qos.lost_after
        };
        state.next_seq += 1;
        let seq = state.next_seq;
        state.deadlines.push(Reverse(Deadline {
            at: Instant::now() + first,
            seq,
            user: user.to_owned(),
            key: key.clone(),
        }));
        state.pending.entry(user.to_owned()).or_default().insert(
            key,
            Pending {
                frame,
                text,
                resends: 0,
                seq,
            },
        );
        self.qos_wake.notify_one();
    }

    /// Stops the QoS clock of `fp` from `sender` to `user`: the client acknowledged
    /// it (its ACK's `to` is the frame's sender). An ACK without a `to` (`sender`
    /// empty) acknowledges the one pending frame with that fingerprint, when there is
    /// exactly one. Returns the frame when it was pending.
    pub fn ack_pending(
        &self,
        state: &mut State,
        user: &str,
        sender: &str,
        fp: &str,
    ) -> Option<Frame> {
        let map = state.pending.get_mut(user)?;
        let key = if sender.is_empty() {
            let mut matching = map.keys().filter(|(_, f)| f == fp);
            match (matching.next(), matching.next()) {
                (Some(k), None) => k.clone(),
                _ => return None,
            }
        } else {
            (sender.to_owned(), fp.to_owned())
        };
        let removed = map.remove(&key).map(|p| p.frame);
        if map.is_empty() {
            state.pending.remove(user);
        }
        removed
    }

    /// Resends what is due and gives up what has run out of resends. Returns the lost
    /// frames (for the hook, called without the lock) and the next deadline.
    pub fn run_qos_deadlines(&self, now: Instant) -> (Vec<(String, Frame)>, Option<Instant>) {
        let qos = self.config.s2c_qos;
        let mut lost = Vec::new();
        let mut state = self.lock();
        while let Some(Reverse(d)) = state.deadlines.peek() {
            if d.at > now {
                break;
            }
            let Some(Reverse(d)) = state.deadlines.pop() else {
                break;
            };
            let Some((resends, text)) = state
                .pending
                .get(&d.user)
                .and_then(|m| m.get(&d.key))
                .filter(|p| p.seq == d.seq)
                .map(|p| (p.resends, p.text.clone()))
            else {
                continue;
            };
            if resends < qos.max_resends {
                let target = state.online.get(&d.user).map(|r| r.session);
                if let Some(session) = target {
                    let out = Outgoing {
                        text,
                        kind: ServerKind::Data,
                    };
                    // A failed resend still counts, as upstream's does.
                    let _ = self.send_to_session(&state, session, out);
                }
                Metrics::inc(&self.metrics.qos_resends);
                let next = if resends + 1 < qos.max_resends {
                    qos.resend_after
                } else {
                    qos.lost_after
                };
                if let Some(p) = state
                    .pending
                    .get_mut(&d.user)
                    .and_then(|m| m.get_mut(&d.key))
                {
                    p.resends += 1;
                }
                state.deadlines.push(Reverse(Deadline {
                    at: now + next,
                    ..d
                }));
            } else if let Some(map) = state.pending.get_mut(&d.user) {
                if let Some(p) = map.remove(&d.key) {
                    lost.push((d.user.clone(), p.frame));
                    Metrics::inc(&self.metrics.qos_lost);
                }
                if map.is_empty() {
                    state.pending.remove(&d.user);
                }
            }
        }
        let next = state.deadlines.peek().map(|Reverse(d)| d.at);
        (lost, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_remembers_for_the_window_and_refreshes() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(10), 1000);
        assert!(!d.seen("alice", "fp", t0));
        assert!(
            d.seen("alice", "fp", t0 + Duration::from_secs(5)),
            "within the window"
        );
        // Refreshed at 5 s, so still known at 14 s.
        assert!(d.seen("alice", "fp", t0 + Duration::from_secs(14)));
        assert!(
            !d.seen("alice", "fp", t0 + Duration::from_secs(25)),
            "expired"
        );
        assert!(!d.seen("bob", "fp", t0 + Duration::from_secs(25)));
        assert_eq!(d.len(), 2);
        assert!(!d.seen("carol", "x", t0 + Duration::from_secs(60)));
        assert_eq!(d.len(), 1, "expired keys are dropped, not kept forever");
    }

    #[test]
    fn dedup_is_bounded_under_a_flood_of_fingerprints() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(600), 100);
        for i in 0..10_000 {
            assert!(!d.seen("mallory", &i.to_string(), t0));
        }
        assert_eq!(d.len(), 100);
        assert!(!d.seen("a:b", "c", t0));
        assert!(
            !d.seen("a", "b:c", t0),
            "keys of different users never collide"
        );
    }
}
