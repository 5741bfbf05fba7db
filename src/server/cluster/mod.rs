//! Several `im-server` nodes as one server, over NATS with JetStream (feature
//! `cluster`, `ServerConfig::cluster`, `im-server --cluster URL --node-id N`).
//!
//! Each node keeps its own sockets and sessions, and runs the server-to-client QoS
//! of the users logged in on it. NATS carries what crosses nodes:
//!
//! | what | in NATS | rule |
//! |---|---|---|
//! | where each user is online | key-value bucket `im_presence`: user → `{"node","t"}` | a login claims its user's key by compare-and-set; every node watches the bucket |
//! | which nodes are alive | key-value bucket `im_nodes`, max age = the lease: node → start time | each node rewrites its key every third of the lease, and deletes it on shutdown |
//! | a message for a user on another node | request to `im.node.<id>.deliver`, answered `ok`, `receipt`, `acked`, `offline` or `busy` | the sender's ACK waits for `ok` or `acked`; after `receipt`, for the receiver's ACK, which comes back the same way |
//! | a kickout across nodes | `im.node.<id>.kick` with the user and the kicked session's `firstLoginTime` | |
//! | room messages, member events, messages stored in a box | `im.room`, published by the node of the sender or of the member | every other node hands it to its own members of the room, or to the box's user if online there |
//! | a room's members on the other nodes | `im.room.members`, asked by the node answering a join or a members request | every live node answers with its own members |
//! | rooms hosts created (private or not, member cap) | key-value bucket `im_rooms`: room → settings | written by the node whose `ServerHandle::create_room` was called; every node reads it at start and watches it |
//!
//! What holds across nodes:
//! - **Direct messages keep their QoS end to end.** The sender's ACK means the
//!   receiving node accepted the message and runs its server-to-client QoS. With
//!   `ack_on_receipt` on the receiving node, it means what it means on one node:
//!   the receiver's client ACKed the message; that node answers `receipt`, and the
//!   receiver's ACK crosses back to the sender's node, so a receiving node killed
//!   with messages not yet ACKed loses none that its senders saw ACKed (they resend,
//!   and the receiver, logged in elsewhere, gets them). Without an answer in
//!   `request_timeout` (the node died, NATS is down) the sender gets no ACK and
//!   resends, or reports the message lost: it is never ACKed and dropped.
//! - **One session per user**: a login on node B of a user online on node A follows
//!   the single node's `firstLoginTime` rule (a fresh or newer login wins and the
//!   other is kicked; an older one is kicked itself). A node that was cut off from
//!   NATS when a newer login won elsewhere kicks its older session once it is back:
//!   every node watches the presence bucket.
//! - **A dead node lets go within one lease**: its users' presence is ignored from
//!   then on (messages to them take the offline path), and a user logs in anywhere
//!   at once anyway (a fresh login wins). A node that was only cut off from NATS
//!   that long keeps its sockets; back on NATS, it reads the offline boxes for what
//!   was stored meanwhile and hands it to its users still online, once each.
//! - **A graceful shutdown** deletes the node's lease first, so every other node stops
//!   routing to it at once, then closes each socket with 1001 (going away), and the
//!   clients log in again, through the load balancer, on another node.
//!
//! - **Rooms span nodes**: a room message reaches the room's members on every node
//!   once (each node hands it to its own members), and so do the events of members
//!   joining, leaving, going online or offline.
//!
//! - **History and offline boxes are shared**: room history, direct history and each
//!   user's offline box live in JetStream streams every node reads (`log`), so a
//!   message stored through one node is delivered at a login on any node, and
//!   message ids agree everywhere.
//!
//! - **Member lists span nodes**: a join's or a members request's list is gathered
//!   from every live node (each answers within a fraction of a second, or is left
//!   out).
//!
//! - **Rooms a host creates are everyone's**: a private room created through one
//!   node's `ServerHandle::create_room` is private on every node (each asks its own
//!   `may_join` hook), with the same member cap (each node counts its own members
//!   against it). A private room's members are kept
//!   by the node they joined through: one restarted gets its members back, and a
//!   member who comes back through another node joins again (the hook is asked).

mod log;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub(crate) use log::SharedLog;

use super::config::ClusterConfig;
use super::metrics::Metrics;
use super::state::{Command, DeliverError, Shared};
use super::store::StoreConfig;
use crate::protocol::{Frame, KickoutCode, Member, RoomReply};

/// How long a node waits for the others' member lists.
const MEMBERS_WAIT: Duration = Duration::from_millis(300);

const PRESENCE_BUCKET: &str = "im_presence";
const ROOMS_BUCKET: &str = "im_rooms";
const NODES_BUCKET: &str = "im_nodes";

/// Why the cluster could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The node id is empty, too long, or has a character other than
    /// `[A-Za-z0-9_-]`.
    #[error("invalid node id {0:?}: 1 to 64 of [A-Za-z0-9_-]")]
    NodeId(String),
    /// NATS refused or failed a call (connect, key-value, request).
    #[error("NATS: {0}")]
    Nats(String),
    /// Another node did not answer within the request timeout.
    #[error("node {0} did not answer within {1:?}")]
    TimedOut(String, Duration),
    /// A value in a bucket, or an answer, is not what a node writes.
    #[error("unexpected data from the cluster: {0}")]
    Corrupt(String),
}

pub(crate) fn nats(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(e.to_string())
}

/// Where a user is online: the node and the session's `firstLoginTime`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Presence {
    node: String,
    t: i64,
}

/// A kickout for another node's session of `user`, the one with `firstLoginTime` `t`.
#[derive(Serialize, Deserialize, Debug)]
struct Kick {
    user: String,
    t: i64,
}

/// Room traffic for the other nodes' members.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RoomCast {
    /// A room message, as fanned out on its sender's node (`frame`: the frame's JSON).
    Message {
        origin: String,
        room: String,
        sender: String,
        frame: String,
    },
    /// An event about a member (joined, left, presence).
    Event {
        origin: String,
        room: String,
        event: RoomReply,
    },
    /// A message just stored in `user`'s offline box (`frame`: as the box delivers
    /// it): the node the user turns out to be online on hands it over at once.
    Stored {
        origin: String,
        user: String,
        frame: String,
    },
}

/// The header naming the node a forwarded message comes from.
const ORIGIN_HEADER: &str = "Im-Origin";

/// The node each message with a receipt due came from, by sender and fingerprint:
/// the newest [`Origins::CAPACITY`], each taken out when its receipt goes.
#[derive(Default)]
struct Origins {
    nodes: HashMap<(String, String), String>,
    order: std::collections::VecDeque<(String, String)>,
}

impl Origins {
    const CAPACITY: usize = 20_000;

    fn insert(&mut self, key: (String, String), node: String) {
        if self.nodes.insert(key.clone(), node).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.nodes.remove(&old);
            }
        }
    }

    fn take(&mut self, key: &(String, String)) -> Option<String> {
        // Its slot in `order` goes when it comes to the front.
        self.nodes.remove(key)
    }
}

/// The NATS connection went down, or came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    Down,
}

/// A catch-up that cannot read the offline boxes retries with back-off (0.25 s,
/// doubled) until its wait would reach this.
const CATCH_UP_GIVE_UP: Duration = Duration::from_secs(16);

/// How often a watch that ended (NATS went away) is started again.
const WATCH_RETRY: Duration = Duration::from_millis(500);

/// A room a host created, as every node keeps it (`im_rooms`: the room's name in hex
/// → this, as JSON).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoomSettings {
    /// Only users the `may_join` hook allows get in.
    pub private: bool,
    /// The member cap, when not the configured one.
    #[serde(default)]
    pub cap: Option<usize>,
}

/// A question to every node: its members of `room`.
#[derive(Serialize, Deserialize, Debug)]
struct MembersQuery {
    origin: String,
    room: String,
}

/// What another node answered to a forwarded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarded {
    /// Handed to the receiver's socket, with its server-to-client QoS running there:
    /// the sender's ACK is due now.
    Accepted,
    /// Handed over as with `Accepted`, on a node with `ack_on_receipt`: the
    /// receiver's own ACK comes back to the sender's node later, as a frame.
    Receipt,
    /// A resend of a message the receiver ACKed already: the sender's ACK is due
    /// now, and nothing was handed over again.
    Acked,
    /// The receiver is not online there (any more).
    Offline,
    /// The receiver's queue or pending table is full there.
    Busy,
}

/// How a login's claim on its user ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The user is routed here now (another node's session, if any, was kicked).
    Won,
    /// A newer session of the user is online on another node: this one is kicked.
    Lost,
}

/// Counters of one node's traffic with the others, for the metrics endpoint.
#[derive(Debug, Default)]
pub(crate) struct ClusterStats {
    /// Messages sent to another node, and how many got no answer.
    pub forwarded: AtomicU64,
    pub forward_failures: AtomicU64,
    /// The forwards' round trips, summed, in microseconds.
    pub forward_rtt_us: AtomicU64,
    /// Messages other nodes handed to this one.
    pub received: AtomicU64,
    /// Kickouts sent to other nodes, and received from them.
    pub kicks_sent: AtomicU64,
    pub kicks_received: AtomicU64,
    /// Room messages and events published for the other nodes, and received from them.
    pub room_casts_sent: AtomicU64,
    pub room_casts_received: AtomicU64,
}

/// This node's link to the others.
pub(crate) struct Cluster {
    client: async_nats::Client,
    config: ClusterConfig,
    presence: kv::Store,
    nodes: kv::Store,
    /// Rooms hosts created, on any node.
    rooms: kv::Store,
    /// Users online on other nodes, as the presence bucket's watch last said, with
    /// the revision that said it: the watch may deliver an entry again after a
    /// reconnect, and an older revision never overrides a newer one. `None`: not
    /// online elsewhere.
    remote: Mutex<HashMap<String, (Option<Presence>, u64)>>,
    /// For messages handed over here with a receipt due: the node each came from,
    /// by sender and fingerprint, so the receipt finds its way back even before
    /// the presence watch says where the sender is.
    receipt_origins: Mutex<Origins>,
    /// Nodes whose lease is live (this one included).
    live: Mutex<HashSet<String>>,
    /// Room traffic waiting for `run` to publish it, in the order it happened here.
    casts: tokio::sync::mpsc::UnboundedSender<RoomCast>,
    casts_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<RoomCast>>>,
    /// The NATS connection going down and coming back, for `run`, each with when it
    /// happened (Unix ms): `run` may be busy for a while, waiting on NATS.
    events_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(Link, i64)>>>,
    /// Room and direct history and offline boxes, shared by every node.
    pub log: Arc<SharedLog>,
    pub stats: ClusterStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Opens a key-value bucket, creating it when missing. async-nats 0.50's own
/// `create_key_value` first asks for account details in a shape nats-server 2.9 does
/// not send, so the bucket's stream is created here as it would create it.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let created = js
        .create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: 1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            duplicate_window: if max_age.is_zero() {
                Duration::from_secs(120)
            } else {
                max_age.min(Duration::from_secs(120))
            },
            ..Default::default()
        })
        .await;
    if let Err(e) = created {
        // Another node may have created it meanwhile; opening it tells.
        tracing::debug!(bucket = name, "bucket not created here: {e}");
    }
    js.get_key_value(name).await.map_err(nats)
}

impl Cluster {
    /// Connects to NATS, opens (or creates) the buckets and the streams (`limits`:
    /// the caps of room history and offline boxes) and takes this node's lease.
    pub(crate) async fn connect(
        config: ClusterConfig,
        limits: StoreConfig,
    ) -> Result<Cluster, ClusterError> {
        if !valid_node_id(&config.node_id) {
            return Err(ClusterError::NodeId(config.node_id));
        }
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("im-server {}", config.node_id))
            // A link gone silent is noticed within about a lease (two pings unanswered).
            .ping_interval((config.lease / 3).max(Duration::from_secs(1)))
            .event_callback(move |event| {
                let link = match event {
                    async_nats::Event::Connected => Some(Link::Up),
                    async_nats::Event::Disconnected => Some(Link::Down),
                    _ => None,
                };
                if let Some(link) = link {
                    let _ = events.send((link, super::session::now_ms()));
                }
                std::future::ready(())
            })
            .connect(config.url.as_str())
            .await
            .map_err(nats)?;
        let js = jetstream::new(client.clone());
        let presence = bucket(&js, PRESENCE_BUCKET, Duration::ZERO).await?;
        let nodes = bucket(&js, NODES_BUCKET, config.lease).await?;
        let rooms = bucket(&js, ROOMS_BUCKET, Duration::ZERO).await?;
        let log = Arc::new(SharedLog::open(js, limits).await?);
        let (casts, casts_rx) = tokio::sync::mpsc::unbounded_channel();
        let cluster = Cluster {
            client,
            presence,
            nodes,
            rooms,
            remote: Mutex::new(HashMap::new()),
            receipt_origins: Mutex::new(Origins::default()),
            live: Mutex::new(HashSet::new()),
            casts,
            casts_rx: Mutex::new(Some(casts_rx)),
            events_rx: Mutex::new(Some(events_rx)),
            log,
            stats: ClusterStats::default(),
            config,
        };
        cluster.renew_lease().await?;
        Ok(cluster)
    }

    /// This node's id.
    pub(crate) fn node_id(&self) -> &str {
        &self.config.node_id
    }

    fn subject(node: &str, what: &str) -> String {
        format!("im.node.{node}.{what}")
    }

    /// Rewrites this node's lease and reads which nodes are alive.
    async fn renew_lease(&self) -> Result<(), ClusterError> {
        let since = super::session::now_ms().to_string();
        self.nodes
            .put(self.node_id(), since.into())
            .await
            .map_err(nats)?;
        let mut keys = self.nodes.keys().await.map_err(nats)?;
        let mut live = HashSet::new();
        while let Some(key) = keys.next().await {
            live.insert(key.map_err(nats)?);
        }
        *lock(&self.live) = live;
        Ok(())
    }

    /// The counters, for the metrics endpoint.
    pub(crate) fn snapshot(&self) -> super::ClusterSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        super::ClusterSnapshot {
            node: self.node_id().to_owned(),
            forwarded: load(&s.forwarded),
            forward_failures: load(&s.forward_failures),
            forward_rtt_us: load(&s.forward_rtt_us),
            received: load(&s.received),
            kicks_sent: load(&s.kicks_sent),
            kicks_received: load(&s.kicks_received),
            room_casts_sent: load(&s.room_casts_sent),
            room_casts_received: load(&s.room_casts_received),
        }
    }

    /// A room message fanned out here, for the room's members on the other nodes.
    pub(crate) fn cast_message(&self, room: &str, sender: &str, frame: &Frame) {
        let _ = self.casts.send(RoomCast::Message {
            origin: self.node_id().to_owned(),
            room: room.to_owned(),
            sender: sender.to_owned(),
            frame: frame.to_json(),
        });
    }

    /// A message stored in `user`'s offline box through this node, for the node the
    /// user may be online on after all (a login racing the store, or a node this one
    /// took for dead).
    pub(crate) fn cast_stored(&self, user: &str, frame: &Frame) {
        let _ = self.casts.send(RoomCast::Stored {
            origin: self.node_id().to_owned(),
            user: user.to_owned(),
            frame: frame.to_json(),
        });
    }

    /// Member events of this node's rooms, for the rooms' members on the other nodes.
    pub(crate) fn cast_events(&self, events: Vec<RoomReply>) {
        for event in events {
            let Some(room) = event.room.clone() else {
                continue;
            };
            let _ = self.casts.send(RoomCast::Event {
                origin: self.node_id().to_owned(),
                room,
                event,
            });
        }
    }

    /// The members of `room` on the other live nodes, as each answers within
    /// [`MEMBERS_WAIT`] (a node that does not is left out).
    pub(crate) async fn remote_members(&self, room: &str) -> Vec<Member> {
        let others = lock(&self.live).len().saturating_sub(1);
        if others == 0 {
            return Vec::new();
        }
        let Ok(query) = serde_json::to_vec(&MembersQuery {
            origin: self.node_id().to_owned(),
            room: room.to_owned(),
        }) else {
            return Vec::new();
        };
        let inbox = self.client.new_inbox();
        let Ok(mut answers) = self.client.subscribe(inbox.clone()).await else {
            return Vec::new();
        };
        if self
            .client
            .publish_with_reply("im.room.members", inbox, query.into())
            .await
            .is_err()
        {
            return Vec::new();
        }
        let mut members = Vec::new();
        let gather = async {
            for _ in 0..others {
                let Some(answer) = answers.next().await else {
                    break;
                };
                if let Ok(list) = serde_json::from_slice::<Vec<Member>>(&answer.payload) {
                    members.extend(list);
                }
            }
        };
        let _ = tokio::time::timeout(MEMBERS_WAIT, gather).await;
        members
    }

    /// `local` and the other nodes' members of `room` in one list, in name order; a
    /// member listed twice (back on another node within the grace period) counts as
    /// online if either says so.
    pub(crate) async fn all_members(&self, room: &str, local: Vec<Member>) -> Vec<Member> {
        let mut all: std::collections::BTreeMap<String, bool> =
            local.into_iter().map(|m| (m.user, m.online)).collect();
        for m in self.remote_members(room).await {
            *all.entry(m.user).or_default() |= m.online;
        }
        all.into_iter()
            .map(|(user, online)| Member { user, online })
            .collect()
    }

    /// The node a user is online on, when it is another live node.
    pub(crate) fn route(&self, user: &str) -> Option<String> {
        let node = lock(&self.remote).get(user)?.0.as_ref()?.node.clone();
        lock(&self.live).contains(&node).then_some(node)
    }

    /// Hands a frame (`text`, as encoded for the receiver) to `node` for its user.
    pub(crate) async fn forward(
        &self,
        node: &str,
        text: String,
    ) -> Result<Forwarded, ClusterError> {
        let started = Instant::now();
        let limit = self.config.request_timeout;
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ORIGIN_HEADER, self.node_id());
        let request =
            self.client
                .request_with_headers(Self::subject(node, "deliver"), headers, text.into());
        let answer = match tokio::time::timeout(limit, request).await {
            Ok(Ok(message)) => message,
            Ok(Err(e)) => {
                self.stats.forward_failures.fetch_add(1, Ordering::Relaxed);
                return Err(nats(e));
            }
            Err(_) => {
                self.stats.forward_failures.fetch_add(1, Ordering::Relaxed);
                return Err(ClusterError::TimedOut(node.to_owned(), limit));
            }
        };
        let rtt = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.forward_rtt_us.fetch_add(rtt, Ordering::Relaxed);
        match &answer.payload[..] {
            b"ok" => Ok(Forwarded::Accepted),
            b"receipt" => Ok(Forwarded::Receipt),
            b"acked" => Ok(Forwarded::Acked),
            b"offline" => Ok(Forwarded::Offline),
            b"busy" => Ok(Forwarded::Busy),
            other => Err(ClusterError::Corrupt(format!(
                "node {node} answered {:?}",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    /// Shares a room a host created (or changed) here with every node.
    pub(crate) async fn share_room(
        &self,
        room: &str,
        settings: RoomSettings,
    ) -> Result<(), ClusterError> {
        let json =
            serde_json::to_vec(&settings).map_err(|e| ClusterError::Corrupt(e.to_string()))?;
        self.rooms
            .put(log::hex(room), json.into())
            .await
            .map_err(nats)?;
        Ok(())
    }

    /// Every room hosts created on any node, for a node that starts.
    pub(crate) async fn shared_rooms(&self) -> Result<Vec<(String, RoomSettings)>, ClusterError> {
        let mut keys = self.rooms.keys().await.map_err(nats)?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(nats)?);
        }
        let mut rooms = Vec::new();
        for key in names {
            let value = self.rooms.get(&key).await.map_err(nats)?;
            if let (Some(room), Some(settings)) = (
                log::unhex(&key),
                value.and_then(|v| serde_json::from_slice::<RoomSettings>(&v).ok()),
            ) {
                rooms.push((room, settings));
            }
        }
        Ok(rooms)
    }

    /// A room created or changed on some node, as the rooms bucket's watch said: set
    /// here, and in this node's store, which keeps the members of private rooms.
    fn room_seen(shared: &Arc<Shared>, entry: kv::Entry) {
        if entry.operation != kv::Operation::Put {
            return;
        }
        let (Some(room), Ok(settings)) = (
            log::unhex(&entry.key),
            serde_json::from_slice::<RoomSettings>(&entry.value),
        ) else {
            return;
        };
        shared
            .lock()
            .rooms
            .create(&room, settings.private, settings.cap);
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = shared.store.set_private(&room, settings.private).await {
                shared
                    .metrics
                    .reject(super::metrics::RejectReason::StoreFailed);
                tracing::warn!(%room, "cluster: a shared room not stored here: {e}");
            }
        });
    }

    /// Where the receipt for `sender`'s message `fp` goes: the node the sender is
    /// online on, or else the node the message came from.
    pub(crate) fn receipt_node(&self, sender: &str, fp: &str) -> Option<String> {
        let origin = lock(&self.receipt_origins).take(&(sender.to_owned(), fp.to_owned()));
        self.route(sender).or(origin)
    }

    /// Sends a receiver's ACK (`text`, encoded) to the sender's `node`, in the
    /// background. If it does not get there (the node died, NATS is away), the
    /// sender resends, and the resend is answered `acked` here.
    pub(crate) fn pass_receipt(self: &Arc<Self>, node: String, text: String) {
        let cluster = self.clone();
        tokio::spawn(async move {
            if let Err(e) = cluster.forward(&node, text).await {
                tracing::debug!(%node, "cluster: a receipt did not get through: {e}");
            }
        });
    }

    /// Claims `user` for this node's session with `firstLoginTime` `t` (`fresh`: the
    /// client sent none), by the single node's rule against a session on another
    /// node; kicks that session when this one wins.
    pub(crate) async fn claim(
        &self,
        user: &str,
        t: i64,
        fresh: bool,
    ) -> Result<Claim, ClusterError> {
        let mine = serde_json::to_vec(&Presence {
            node: self.node_id().to_owned(),
            t,
        })
        .map_err(|e| ClusterError::Corrupt(e.to_string()))?;
        // Compare-and-set: a claim that lost a race reads the winner and decides again.
        for _ in 0..8 {
            let entry = self.presence.entry(user).await.map_err(nats)?;
            let Some(entry) = entry else {
                match self.presence.create(user, mine.clone().into()).await {
                    Ok(_) => return Ok(Claim::Won),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(nats(e)),
                }
            };
            let held = match entry.operation {
                kv::Operation::Put => Some(
                    serde_json::from_slice::<Presence>(&entry.value)
                        .map_err(|e| ClusterError::Corrupt(format!("presence of {user}: {e}")))?,
                ),
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            if let Some(old) = &held
                && old.node != self.node_id()
                && lock(&self.live).contains(&old.node)
            {
                if !fresh && t < old.t {
                    return Ok(Claim::Lost);
                }
                if fresh || t > old.t {
                    self.kick(&old.node, user, old.t).await?;
                }
                // Equal times: routing moves here, the other socket stays open.
            }
            match self
                .presence
                .update(user, mine.clone().into(), entry.revision)
                .await
            {
                Ok(_) => return Ok(Claim::Won),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(nats(e)),
            }
        }
        Err(ClusterError::Nats(format!(
            "the presence of {user} kept changing"
        )))
    }

    async fn kick(&self, node: &str, user: &str, t: i64) -> Result<(), ClusterError> {
        let kick = serde_json::to_vec(&Kick {
            user: user.to_owned(),
            t,
        })
        .map_err(|e| ClusterError::Corrupt(e.to_string()))?;
        self.stats.kicks_sent.fetch_add(1, Ordering::Relaxed);
        self.client
            .publish(Self::subject(node, "kick"), kick.into())
            .await
            .map_err(nats)
    }

    /// Lets go of `user` when this node's session with `firstLoginTime` `t` still
    /// holds it.
    pub(crate) async fn release(&self, user: &str, t: i64) -> Result<(), ClusterError> {
        let Some(entry) = self.presence.entry(user).await.map_err(nats)? else {
            return Ok(());
        };
        let ours = entry.operation == kv::Operation::Put
            && serde_json::from_slice::<Presence>(&entry.value)
                .is_ok_and(|p| p.node == self.node_id() && p.t == t);
        if ours {
            // A claim from another node since then wins: the revision no longer matches.
            let _ = self
                .presence
                .delete_expect_revision(user, Some(entry.revision))
                .await;
        }
        Ok(())
    }

    /// Serves the other nodes until the server shuts down: their forwarded messages
    /// and kickouts, the presence watch, and this node's lease. On shutdown the lease
    /// goes first, so every node stops routing here at once.
    pub(crate) async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        let mut shutdown = shared.shutdown.subscribe();
        let subscriptions = async {
            let deliver = self
                .client
                .subscribe(Self::subject(self.node_id(), "deliver"))
                .await?;
            let kick = self
                .client
                .subscribe(Self::subject(self.node_id(), "kick"))
                .await?;
            let rooms = self.client.subscribe("im.room").await?;
            let members = self.client.subscribe("im.room.members").await?;
            Ok::<_, async_nats::SubscribeError>((deliver, kick, rooms, members))
        };
        let (Some(mut casts), Some(mut events)) =
            (lock(&self.casts_rx).take(), lock(&self.events_rx).take())
        else {
            return;
        };
        // Since when this node may have missed NATS traffic, while its link is down
        // (Unix ms): its last lease renewal before the link went.
        let mut away_since: Option<i64> = None;
        let mut last_renewed = super::session::now_ms();
        let (mut deliver, mut kick, mut rooms, mut members) = match subscriptions.await {
            Ok(subs) => subs,
            Err(e) => {
                tracing::error!("cluster: cannot subscribe, this node takes no traffic: {e}");
                return;
            }
        };
        // A round trip on the same connection: NATS has taken the subscriptions when
        // it answers (a flush only writes them).
        match self.renew_lease().await {
            Ok(()) => last_renewed = super::session::now_ms(),
            Err(e) => tracing::warn!("cluster: lease not renewed: {e}"),
        }
        // Every user online elsewhere now, then every change; the same for the rooms
        // hosts create (those before came at bind).
        let mut watch = self.presence.watch_with_history(">").await.ok();
        let mut room_watch = self.rooms.watch_with_history(">").await.ok();
        let mut lease = tokio::time::interval(self.config.lease / 3);
        lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(WATCH_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Every wait on NATS below is bounded, so the link's events and the lease
        // are never held up for long.
        let limit = self.config.request_timeout;
        loop {
            tokio::select! {
                biased;
                _ = super::state::until_shutdown(&mut shutdown) => break,
                Some((link, at)) = events.recv() => match link {
                    Link::Down => {
                        tracing::warn!("cluster: the link to NATS is down");
                        away_since.get_or_insert(last_renewed.min(at));
                    }
                    Link::Up => {
                        if let Some(since) = away_since.take() {
                            tokio::spawn(self.clone().catch_up(shared.clone(), since));
                        }
                    }
                },
                _ = lease.tick() => {
                    match tokio::time::timeout(limit, self.renew_lease()).await {
                        Ok(Ok(())) => last_renewed = super::session::now_ms(),
                        Ok(Err(e)) => tracing::warn!("cluster: lease not renewed: {e}"),
                        Err(_) => tracing::warn!("cluster: lease not renewed in {limit:?}"),
                    }
                }
                Some(message) = deliver.next() => {
                    let origin = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(ORIGIN_HEADER))
                        .map(|v| v.as_str().to_owned());
                    let answer = self.accept(&shared, &message.payload, origin);
                    if let Some(reply) = message.reply {
                        let _ = self.client.publish(reply, answer.into()).await;
                    }
                }
                Some(message) = kick.next() => self.kicked(&shared, &message.payload),
                Some(message) = rooms.next() => self.room_cast(&shared, &message.payload),
                Some(message) = members.next() => {
                    if let (Some(list), Some(reply)) =
                        (self.members_of(&shared, &message.payload), message.reply)
                    {
                        let _ = self.client.publish(reply, list.into()).await;
                    }
                }
                Some(cast) = casts.recv() => {
                    if let Ok(json) = serde_json::to_vec(&cast) {
                        self.stats.room_casts_sent.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = self.client.publish("im.room", json.into()).await {
                            tracing::warn!("cluster: room traffic not published: {e}");
                        }
                    }
                }
                Some(entry) = next_entry(&mut watch, PRESENCE_BUCKET) => {
                    self.seen(&shared, entry);
                }
                Some(entry) = next_entry(&mut room_watch, ROOMS_BUCKET) => {
                    Self::room_seen(&shared, entry);
                }
                _ = retry.tick(), if watch.is_none() || room_watch.is_none() => {
                    // A watch ended (NATS went away): started again, with the history,
                    // so nothing that changed meanwhile is missed.
                    if watch.is_none() {
                        let started = self.presence.watch_with_history(">");
                        watch = tokio::time::timeout(limit, started).await.ok().and_then(Result::ok);
                    }
                    if room_watch.is_none() {
                        let started = self.rooms.watch_with_history(">");
                        room_watch = tokio::time::timeout(limit, started).await.ok().and_then(Result::ok);
                    }
                }
            }
        }
        if let Err(e) = self.nodes.delete(self.node_id()).await {
            tracing::warn!("cluster: lease not given back (it expires by itself): {e}");
        }
        let _ = self.client.flush().await;
    }

    /// Back on NATS after being away since `since` (Unix ms): another node may have
    /// taken this one for dead meanwhile (its lease lapsed) and stored messages for
    /// users online here in their boxes, announcing them while this node could not
    /// hear. Hands each such message to its user, once (as a login would).
    async fn catch_up(self: Arc<Self>, shared: Arc<Shared>, since: i64) {
        // A round trip first: NATS has taken the subscriptions again when it answers,
        // so what is stored after the read below is announced to this node.
        if let Err(e) = self.renew_lease().await {
            tracing::warn!("cluster: lease not renewed: {e}");
        }
        // Clocks of nodes and NATS differ a little: a lease of margin.
        let margin = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX);
        let now = super::session::now_ms();
        // JetStream may answer 503 for a moment after NATS itself restarted.
        let mut wait = Duration::from_millis(250);
        let stored = loop {
            match self
                .log
                .boxes_since(since.saturating_sub(margin), now)
                .await
            {
                Ok(stored) => break stored,
                Err(e) if wait < CATCH_UP_GIVE_UP => {
                    tracing::debug!("cluster: offline boxes not read yet, again in {wait:?}: {e}");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => {
                    shared
                        .metrics
                        .reject(super::metrics::RejectReason::StoreFailed);
                    tracing::error!(
                        "cluster: offline boxes not read after NATS came back (what was \
                         stored for users here meanwhile waits for their next login): {e}"
                    );
                    return;
                }
            }
        };
        let mut handed = 0usize;
        let mut state = shared.lock();
        for m in stored {
            let user = m.to.clone();
            if !state.online.contains_key(&user)
                || !state
                    .box_sent
                    .entry(user.clone())
                    .or_default()
                    .insert(m.mid)
            {
                continue;
            }
            let frame = super::session::offline_frame(&user, m);
            let text = frame.to_json();
            match shared.deliver(&mut state, &user, &frame, text, None) {
                Ok(()) => handed += 1,
                // Left in the box for the next login.
                Err(DeliverError::Refused(r)) => shared.metrics.reject(r),
                Err(DeliverError::NotOnline) => {}
            }
        }
        drop(state);
        tracing::info!(
            away_ms = now.saturating_sub(since),
            handed,
            "cluster: back on NATS; stored messages for users here handed over"
        );
    }

    /// Another node's message for a user here.
    fn accept(&self, shared: &Shared, payload: &[u8], origin: Option<String>) -> &'static str {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let Some((frame, text)) = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| Some((Frame::decode(text).ok()?, text)))
        else {
            return "bad";
        };
        let Some(to) = frame.to.clone() else {
            return "bad";
        };
        // With ACK on receipt here, the sender's ACK is its receiver's, sent back
        // when it comes (`Shared::receipt`); a resend after that is answered at once.
        let receipt = shared.config.ack_on_receipt
            && frame.qos
            && frame.from_id() != crate::protocol::SERVER_ID
            && !to.starts_with(crate::protocol::ROOM_PREFIX);
        let mut state = shared.lock();
        if receipt
            && let Some(fp) = frame.fp.as_deref()
            && state.recent_acks.get(frame.from_id(), fp).is_some()
        {
            Metrics::inc(&shared.metrics.c2s_duplicates);
            return "acked";
        }
        match shared.deliver(&mut state, &to, &frame, text.to_owned(), None) {
            Ok(()) if receipt => {
                if let (Some(origin), Some(fp)) = (origin, frame.fp.clone()) {
                    let key = (frame.from_id().to_owned(), fp);
                    lock(&self.receipt_origins).insert(key, origin);
                }
                "receipt"
            }
            Ok(()) => "ok",
            Err(DeliverError::NotOnline) => "offline",
            Err(DeliverError::Refused(reason)) => {
                shared.metrics.reject(reason);
                "busy"
            }
        }
    }

    /// Another node's login won over a session here.
    fn kicked(&self, shared: &Shared, payload: &[u8]) {
        let Ok(kick) = serde_json::from_slice::<Kick>(payload) else {
            return;
        };
        self.stats.kicks_received.fetch_add(1, Ordering::Relaxed);
        let state = shared.lock();
        let Some(registered) = state.online.get(&kick.user) else {
            return;
        };
        if registered.first_login_time != kick.t {
            return;
        }
        if let Some(entry) = state.sessions.get(&registered.session) {
            let _ = entry.tx.send(Command::Kick {
                code: KickoutCode::DuplicateLogin,
                reason: None,
            });
        }
    }

    /// A newer login of `user` (`firstLoginTime` `t`) holds it on another node: a
    /// session here that is older is kicked, as on one node. The kick the other
    /// node sent covers this unless this node was away from NATS when it was sent.
    fn superseded(&self, shared: &Shared, user: &str, t: i64) {
        let state = shared.lock();
        let Some(registered) = state.online.get(user) else {
            return;
        };
        if registered.first_login_time >= t {
            return;
        }
        if let Some(entry) = state.sessions.get(&registered.session) {
            let _ = entry.tx.send(Command::Kick {
                code: KickoutCode::DuplicateLogin,
                reason: None,
            });
        }
    }

    /// Another node's question: this node's members of a room, as JSON (an empty list
    /// when none), or `None` for this node's own question.
    fn members_of(&self, shared: &Shared, payload: &[u8]) -> Option<Vec<u8>> {
        let query = serde_json::from_slice::<MembersQuery>(payload).ok()?;
        if query.origin == self.node_id() {
            return None;
        }
        let members = shared.lock().rooms.members(&query.room).unwrap_or_default();
        serde_json::to_vec(&members).ok()
    }

    /// Another node's room traffic: handed to this node's members of the room.
    fn room_cast(&self, shared: &Shared, payload: &[u8]) {
        let Ok(cast) = serde_json::from_slice::<RoomCast>(payload) else {
            return;
        };
        match cast {
            RoomCast::Message { origin, .. }
            | RoomCast::Event { origin, .. }
            | RoomCast::Stored { origin, .. }
                if origin == self.node_id() => {}
            RoomCast::Stored { user, frame, .. } => {
                self.stats
                    .room_casts_received
                    .fetch_add(1, Ordering::Relaxed);
                let Ok(decoded) = Frame::decode(&frame) else {
                    return;
                };
                let mut state = shared.lock();
                // Handed over from the box already (by a login that read it).
                let mid = decoded.mid.unwrap_or_default();
                if !state.online.contains_key(&user)
                    || !state.box_sent.entry(user.clone()).or_default().insert(mid)
                {
                    return;
                }
                if let Err(DeliverError::Refused(r)) =
                    shared.deliver(&mut state, &user, &decoded, frame, None)
                {
                    // Left in the box for the next login.
                    shared.metrics.reject(r);
                }
            }
            RoomCast::Message {
                room,
                sender,
                frame,
                ..
            } => {
                self.stats
                    .room_casts_received
                    .fetch_add(1, Ordering::Relaxed);
                if let Ok(frame) = Frame::decode(&frame) {
                    super::session::fan_out(shared, &room, &sender, &frame);
                }
            }
            RoomCast::Event { room, event, .. } => {
                self.stats
                    .room_casts_received
                    .fetch_add(1, Ordering::Relaxed);
                let about = event.user.clone().unwrap_or_default();
                let mut state = shared.lock();
                for member in state.rooms.recipients(&room, &about) {
                    let frame = Frame::room_reply(&member, &event);
                    let text = frame.to_json();
                    if let Err(DeliverError::Refused(r)) =
                        shared.deliver(&mut state, &member, &frame, text, None)
                    {
                        shared.metrics.reject(r);
                    }
                }
            }
        }
    }

    /// A change in the presence bucket.
    fn seen(&self, shared: &Shared, entry: kv::Entry) {
        let presence = match entry.operation {
            kv::Operation::Put => serde_json::from_slice::<Presence>(&entry.value).ok(),
            kv::Operation::Delete | kv::Operation::Purge => None,
        }
        .filter(|p| p.node != self.node_id());
        if let Some(p) = &presence {
            self.superseded(shared, &entry.key, p.t);
        }
        let mut remote = lock(&self.remote);
        match remote.get_mut(&entry.key) {
            Some((_, seen)) if *seen > entry.revision => {}
            Some(known) => *known = (presence, entry.revision),
            None if presence.is_some() => {
                remote.insert(entry.key, (presence, entry.revision));
            }
            None => {}
        }
    }
}

/// The watch's next entry; `None` when it ended (it is dropped then, for `run` to
/// start again). Never ready while there is no watch.
async fn next_entry(watch: &mut Option<kv::Watch>, bucket: &str) -> Option<kv::Entry> {
    let Some(w) = watch else {
        return std::future::pending().await;
    };
    match w.next().await {
        Some(Ok(entry)) => Some(entry),
        Some(Err(e)) => {
            tracing::warn!(bucket, "cluster: watch: {e}");
            *watch = None;
            None
        }
        None => {
            *watch = None;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_node_id;

    #[test]
    fn node_ids_are_subject_tokens() {
        for good in ["a", "node-1", "eu_west_2", &"x".repeat(64)] {
            assert!(valid_node_id(good), "{good}");
        }
        for bad in ["", "a.b", "a b", "*", ">", "ü", &"x".repeat(65)] {
            assert!(!valid_node_id(bad), "{bad}");
        }
    }
}
