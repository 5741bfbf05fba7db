//! What every session shares: who is online, the sockets, pending server-to-client
//! QoS frames with their deadlines, and the client-to-server dedup window.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::config::ServerConfig;
use super::hooks::ServerHooks;
use super::metrics::{Metrics, MetricsSnapshot, RejectReason};
use super::rooms::{Notice, Rooms};
use super::store::StoreHandle;
use crate::client::{DedupConfig, QosReceiveFilter, QosSendConfig, QosSendTable};
use crate::protocol::{Frame, KickoutCode, RoomOp, RoomReply, ServerKind};

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

/// A session's inbox of [`Command`]s: unbounded (the bound is the session's
/// `queued` count), and empty of any allocation until something is queued, so an
/// idle connection pays a few bytes for it, not a channel block.
pub(crate) fn mailbox() -> (MailTx, MailRx) {
    let shared = Arc::new(Mailbox {
        inner: Mutex::new(MailboxInner::default()),
        notify: Notify::new(),
    });
    (MailTx(shared.clone()), MailRx(shared))
}

#[derive(Debug)]
struct Mailbox {
    inner: Mutex<MailboxInner>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct MailboxInner {
    queue: std::collections::VecDeque<Command>,
    /// The sender is gone: once the queue is empty, `recv` ends.
    closed: bool,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, MailboxInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side of a [`mailbox`]; dropping it ends the receiver's `recv`.
#[derive(Debug)]
pub(crate) struct MailTx(Arc<Mailbox>);

impl MailTx {
    /// Queues `command`; gives it back when the receiver is gone.
    pub fn send(&self, command: Command) -> Result<(), Command> {
        if Arc::strong_count(&self.0) < 2 {
            return Err(command);
        }
        self.0.lock().queue.push_back(command);
        self.0.notify.notify_one();
        Ok(())
    }
}

impl Drop for MailTx {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.notify.notify_one();
    }
}

/// The receiving side of a [`mailbox`].
#[derive(Debug)]
pub(crate) struct MailRx(Arc<Mailbox>);

impl MailRx {
    /// The next command, if one is queued.
    pub fn try_recv(&mut self) -> Option<Command> {
        let mut inner = self.0.lock();
        let next = inner.queue.pop_front();
        // A burst's room is handed back once it has been written.
        if inner.queue.is_empty() && inner.queue.capacity() > 64 {
            inner.queue = std::collections::VecDeque::new();
        }
        next
    }

    /// The next command if it is a frame to write (a kickout stays queued).
    pub fn try_recv_frame(&mut self) -> Option<Outgoing> {
        if !matches!(self.0.lock().queue.front(), Some(Command::Send(_))) {
            return None;
        }
        match self.try_recv() {
            Some(Command::Send(out)) => Some(out),
            // Only this receiver takes from the queue: the front is still the frame.
            _ => None,
        }
    }

    /// The next command; `None` once the sender is gone and nothing is left.
    /// Cancel safe: a command is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<Command> {
        let mailbox = self.0.clone();
        loop {
            let notified = mailbox.notify.notified();
            if let Some(next) = self.try_recv() {
                return Some(next);
            }
            if mailbox.lock().closed {
                return None;
            }
            notified.await;
        }
    }
}

/// One open socket as the rest of the server sees it.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    pub tx: MailTx,
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

/// A pending server-to-client frame is known by its sender and fingerprint: two
/// senders that pick the same fingerprint never displace each other's frames.
type PendingKey = (String, String);

/// One receiver's unacknowledged server-to-client frames: the client's
/// [`QosSendTable`], keyed by sender and fingerprint, on the server's clock
/// ([`Shared::uptime`]), so both ends follow one resend rule.
#[derive(Debug)]
struct Receiver {
    table: QosSendTable<PendingKey>,
    /// The wake-up in [`State::wakeups`] that is live for this receiver.
    wake: Duration,
}

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
    /// Pending server-to-client QoS frames by receiver; a receiver with none has no
    /// entry.
    pending: HashMap<String, Receiver>,
    /// When each receiver's table is next due, earliest first; an entry is live only
    /// while it matches the receiver's `wake`.
    wakeups: BinaryHeap<Reverse<(Duration, String)>>,
    pub dedup: Dedup,
    /// Rooms, memberships and presence.
    pub rooms: Rooms,
    /// For each user, the users whose direct messages they refuse.
    pub blocks: HashMap<String, HashSet<String>>,
    /// For each user, the rooms whose live copies could not be handed to them (their
    /// queue was full): told with a `missed` event once they read again.
    pub behind: HashMap<String, HashSet<String>>,
    /// The per-user rate limit's buckets, while the user is online.
    pub user_buckets: HashMap<String, super::session::TokenBucket>,
    /// ACKs of stored messages, for resends.
    pub recent_acks: RecentAcks,
    /// Login and logout hook calls not yet run.
    pub hook_queue: std::collections::VecDeque<HookCall>,
    /// For each user online here, the offline-box messages handed to their socket
    /// since they logged in: a box read at login and a cluster's notice of a stored
    /// message hand each over once.
    #[cfg(feature = "cluster")]
    pub box_sent: HashMap<String, HashSet<i64>>,
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
    /// The link to the other nodes, when this is one of several.
    #[cfg(feature = "cluster")]
    pub cluster: std::sync::OnceLock<Arc<super::cluster::Cluster>>,
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
        #[allow(unused_mut)]
        let mut rooms = Rooms::new(config.rooms);
        #[cfg(feature = "cluster")]
        if config.cluster.is_some() {
            rooms.keep_events();
        }
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
                wakeups: BinaryHeap::new(),
                dedup,
                rooms,
                blocks: HashMap::new(),
                behind: HashMap::new(),
                user_buckets: HashMap::new(),
                recent_acks: RecentAcks::default(),
                hook_queue: std::collections::VecDeque::new(),
                #[cfg(feature = "cluster")]
                box_sent: HashMap::new(),
            }),
            qos_wake: Notify::new(),
            shutdown: watch::Sender::new(false),
            stopped: watch::Sender::new(false),
            local_addr,
            metrics_addr,
            serving: AtomicBool::new(false),
            hooks_running: Mutex::new(()),
            next_session: AtomicU64::new(1),
            #[cfg(feature = "cluster")]
            cluster: std::sync::OnceLock::new(),
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
        #[cfg(feature = "cluster")]
        if let Some(cluster) = self.cluster.get() {
            cluster.cast_events(state.rooms.take_events());
        }
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

    /// Registers a new socket: its id, the inbox others queue its frames in, and the
    /// count of those frames (bounded by `max_outbound_queue`).
    pub fn open_session(&self) -> (SessionId, MailRx, Arc<AtomicUsize>) {
        let id = self.next_session_id();
        let (tx, rx) = mailbox();
        let queued = Arc::new(AtomicUsize::new(0));
        let entry = SessionEntry {
            tx,
            queued: queued.clone(),
            user: None,
        };
        self.lock().sessions.insert(id, entry);
        (id, rx, queued)
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let online = self.lock().online.len();
        #[allow(unused_mut)]
        let mut snapshot = self.metrics.snapshot(online);
        #[cfg(feature = "cluster")]
        if let Some(cluster) = self.cluster.get() {
            snapshot.cluster = Some(cluster.snapshot());
        }
        snapshot
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
        let out = Outgoing { text, kind };
        match own {
            Some((me, queue)) if me == session => queue.push(out),
            _ => self.send_to_session(state, session, out)?,
        }
        if qos {
            self.add_pending(state, to, frame.clone());
        }
        Ok(())
    }

    /// Whether `user` can take one more pending QoS frame.
    pub fn pending_has_room(&self, state: &State, user: &str) -> bool {
        state.pending.get(user).map_or(0, |r| r.table.len()) < self.config.max_pending_s2c_per_user
    }

    /// Starts the QoS clock of a frame just handed to `user`'s socket.
    pub fn add_pending(&self, state: &mut State, user: &str, frame: Frame) {
        let Some(fp) = frame.fp.clone() else {
            return;
        };
        let now = self.uptime(Instant::now());
        let key: PendingKey = (frame.from_id().to_owned(), fp);
        let s2c = self.config.s2c_qos;
        let receiver = state
            .pending
            .entry(user.to_owned())
            .or_insert_with(|| Receiver {
                table: QosSendTable::new(QosSendConfig {
                    resend_after: s2c.resend_after,
                    max_resends: s2c.max_resends,
                    lost_after: s2c.lost_after,
                    ..QosSendConfig::default()
                }),
                wake: Duration::MAX,
            });
        receiver.table.insert(key, frame, true, now);
        if let Some(next) = receiver.table.next_deadline()
            && next < receiver.wake
        {
            receiver.wake = next;
            state.wakeups.push(Reverse((next, user.to_owned())));
            self.qos_wake.notify_one();
        }
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
        let receiver = state.pending.get_mut(user)?;
        let key = if sender.is_empty() {
            let mut matching = receiver.table.keys().filter(|(_, f)| f == fp);
            match (matching.next(), matching.next()) {
                (Some(k), None) => k.clone(),
                _ => return None,
            }
        } else {
            (sender.to_owned(), fp.to_owned())
        };
        let removed = receiver.table.remove(&key);
        if receiver.table.is_empty() {
            state.pending.remove(user);
        }
        if removed.is_some() {
            self.tell_missed(state, user);
        }
        removed
    }

    /// `user` acknowledged a direct message relayed live (ACK on receipt): the
    /// sender gets its ACK now, on whichever socket it is routed to, and a resend
    /// that crossed it is answered with the same ACK.
    pub fn receipt(&self, user: &str, frame: &Frame) {
        let sender = frame.from_id();
        let (Some(fp), false) = (frame.fp.as_deref(), sender == crate::protocol::SERVER_ID) else {
            return;
        };
        if frame.to_id().starts_with(crate::protocol::ROOM_PREFIX) {
            return;
        }
        let ack = Frame::server_ack(self.config.dialect, user, sender, fp);
        let text = ack.to_json();
        let mut state = self.lock();
        state.recent_acks.insert(sender, fp, ack.clone());
        // A sender that is away resends after its re-login and gets the ACK then.
        match self.deliver(&mut state, sender, &ack, text, None) {
            Ok(()) => {}
            Err(DeliverError::Refused(r)) => self.metrics.reject(r),
            Err(DeliverError::NotOnline) => {
                // Online on another node: the ACK goes back there.
                #[cfg(feature = "cluster")]
                if let Some(cluster) = self.cluster.get()
                    && let Some(node) = cluster.receipt_node(sender, fp)
                {
                    cluster.pass_receipt(node, ack.to_json());
                }
            }
        }
    }

    /// Notes that a live copy of a message of `room` could not be handed to `user`.
    pub fn missed(&self, state: &mut State, user: &str, room: &str) {
        let rooms = state.behind.entry(user.to_owned()).or_default();
        if rooms.insert(room.to_owned()) {
            Metrics::inc(&self.metrics.room_gaps);
        }
    }

    /// Tells `user` which rooms it missed live copies of (`missed` events), as far
    /// as its queue takes them now; the rest wait for its next ACK.
    fn tell_missed(&self, state: &mut State, user: &str) {
        let Some(mut rooms) = state.behind.remove(user) else {
            return;
        };
        let Some(session) = state.online.get(user).map(|r| r.session) else {
            return;
        };
        rooms.retain(|room| {
            let event = RoomReply::event(RoomOp::Missed, room, user, None);
            let out = Outgoing {
                text: Frame::room_reply(user, &event).to_json(),
                kind: ServerKind::Room,
            };
            self.send_to_session(state, session, out).is_err()
        });
        if !rooms.is_empty() {
            state.behind.insert(user.to_owned(), rooms);
        }
    }

    /// Writes again, after a login, the frames still pending for `user` whose resend
    /// came due while they were offline, or that were written only on the lost link
    /// ([`QosSendTable::login_flush`]): queued on `out`, before anything else.
    pub fn login_flush(&self, state: &mut State, user: &str, out: &mut Vec<Outgoing>) {
        let Some(receiver) = state.pending.get_mut(user) else {
            return;
        };
        // What came from the offline box is sent from there again after the login
        // (room copies carry an id too, and stay).
        receiver.table.retain(|_, frame| {
            frame.mid.is_none() || frame.to_id().starts_with(crate::protocol::ROOM_PREFIX)
        });
        let (frames, resends) = receiver.table.login_flush(self.uptime(Instant::now()));
        if let Some(next) = receiver.table.next_deadline()
            && next < receiver.wake
        {
            receiver.wake = next;
            state.wakeups.push(Reverse((next, user.to_owned())));
            self.qos_wake.notify_one();
        }
        self.metrics
            .qos_resends
            .fetch_add(resends, Ordering::Relaxed);
        out.extend(frames.into_iter().map(|frame| Outgoing {
            text: frame.to_json(),
            kind: frame.server_kind(self.config.dialect),
        }));
    }

    /// Runs every timer due at `now`: server-to-client QoS (see
    /// [`run_qos_deadlines`](Self::run_qos_deadlines)) and the rooms' grace periods.
    /// Returns the lost frames and when to call again.
    pub fn run_timers(&self, now: Instant) -> (Vec<(String, Frame)>, Option<Instant>) {
        let (lost, next) = self.run_qos_deadlines(now);
        let rooms_next = {
            let mut state = self.lock();
            let at = self.uptime(now);
            let notices = state.rooms.tick(at);
            self.notify(&mut state, notices);
            state.rooms.next_deadline().map(|d| self.started + d)
        };
        let next = match (next, rooms_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (lost, next)
    }

    /// Resends what is due and gives up what has run out of resends. A resend due
    /// while the receiver is offline is owed, written by [`login_flush`](Self::login_flush)
    /// if they come back in time. Returns the lost frames (for the offline box or the
    /// hook, handled without the lock) and the next deadline.
    pub fn run_qos_deadlines(&self, now: Instant) -> (Vec<(String, Frame)>, Option<Instant>) {
        let at = self.uptime(now);
        let mut lost = Vec::new();
        let mut state = self.lock();
        while let Some(Reverse((due, _))) = state.wakeups.peek() {
            if *due > at {
                break;
            }
            let Some(Reverse((due, user))) = state.wakeups.pop() else {
                break;
            };
            let session = state.online.get(&user).map(|r| r.session);
            let Some(receiver) = state.pending.get_mut(&user).filter(|r| r.wake == due) else {
                continue;
            };
            let tick = receiver.table.tick(at, session.is_some());
            match receiver.table.next_deadline() {
                Some(next) if !receiver.table.is_empty() => {
                    receiver.wake = next;
                    state.wakeups.push(Reverse((next, user.clone())));
                }
                _ => {
                    state.pending.remove(&user);
                }
            }
            for frame in tick.resend {
                Metrics::inc(&self.metrics.qos_resends);
                if let Some(session) = session {
                    let out = Outgoing {
                        text: frame.to_json(),
                        kind: frame.server_kind(self.config.dialect),
                    };
                    // A failed resend still counts, as upstream's does.
                    let _ = self.send_to_session(&state, session, out);
                }
            }
            for frame in tick.lost {
                Metrics::inc(&self.metrics.qos_lost);
                lost.push((user.clone(), frame));
            }
        }
        let next = state
            .wakeups
            .peek()
            .map(|Reverse((d, _))| self.started + *d);
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
