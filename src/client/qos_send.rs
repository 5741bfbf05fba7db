//! The QoS send table (the seed's `QoS4SendDaemon`): every QoS frame sent waits here
//! under its fingerprint until the server ACKs it (or refuses it with an error frame
//! naming it), is resent on its own deadline, and is reported lost when its resends
//! run out.
//!
//! # How often a message is written
//!
//! A message is written at most `1 + max_resends` times: once when sent, then once
//! per resend. Every resend, timed or at a re-login, restarts the wait
//! (`resend_after`, or `lost_after` after the last one), so a message is reported lost
//! at most `max_resends × resend_after + lost_after` after it was sent (9 s by
//! default), however often the link drops and returns.
//!
//! - A resend that comes due while the link is down is *owed*: it counts, and it is
//!   written when the session logs in again.
//! - A re-login writes every pending message in the order it was sent: owed writes
//!   as they are, and a message written only on the lost link as one more resend,
//!   while it has one left. A message whose resends are used up is not written again;
//!   it waits for its loss deadline.
//! - A write the server refused for its rate limit (error 429) is not counted: the
//!   message is written again after a back-off (`throttle_backoff`, doubling up to
//!   `resend_after`), at most `max_throttled` times; after that the normal schedule
//!   goes on. Throttling can so delay a loss by at most the sum of those back-offs.

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Duration;

use crate::protocol::Frame;

/// When a QoS frame is resent and when it is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QosSendConfig {
    /// Time from a send (or resend) to the next resend.
    pub resend_after: Duration,
    /// How many resends before the frame is declared lost.
    pub max_resends: u32,
    /// Time from the last resend to the loss.
    pub lost_after: Duration,
    /// The first back-off after a write the server refused for its rate limit;
    /// doubled for each refusal of the same message, up to `resend_after`.
    pub throttle_backoff: Duration,
    /// How many refused writes of one message are retried without counting as a
    /// resend.
    pub max_throttled: u32,
}

impl Default for QosSendConfig {
    /// Resend 3 s after each send, at most 2 resends, lost 3 s after the last; a
    /// throttled write is retried after 0.5 s, 1 s, 2 s, then 3 s, at most 8 times.
    fn default() -> Self {
        Self {
            resend_after: Duration::from_secs(3),
            max_resends: 2,
            lost_after: Duration::from_secs(3),
            throttle_backoff: Duration::from_millis(500),
            max_throttled: 8,
        }
    }
}

impl QosSendConfig {
    /// The wait after the `resends`-th resend (0: after the first send).
    fn wait_after(&self, resends: u32) -> Duration {
        if resends >= self.max_resends {
            self.lost_after
        } else {
            self.resend_after
        }
    }
}

#[derive(Debug, Clone)]
struct Pending {
    frame: Frame,
    /// Order of sending, for writing pending messages again in order.
    seq: u64,
    resends: u32,
    deadline: Duration,
    /// A write is due but was not made: the message was queued while no session was
    /// logged in, or a resend came due while the link was down.
    owed: bool,
    /// The deadline is a retry after a throttled write, which does not count.
    throttled_retry: bool,
    /// Writes refused for the server's rate limit so far.
    throttled: u32,
}

/// What a tick of the table decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QosTick {
    /// Frames to write again, unchanged (same fingerprint): resends.
    pub resend: Vec<Frame>,
    /// Frames to write again after the server refused them for its rate limit; not
    /// resends.
    pub retry: Vec<Frame>,
    /// Frames whose resends ran out; the game decides whether to retry them.
    pub lost: Vec<Frame>,
}

/// Pending QoS frames keyed by fingerprint, with a deadline queue so that a tick costs
/// O(expired · log n), not O(pending).
///
/// The key is the fingerprint on a client. The server keeps one table per receiver,
/// keyed by sender and fingerprint (`K = (String, String)`), so both sides follow
/// the same resend rule.
#[derive(Debug)]
pub struct QosSendTable<K = String> {
    config: QosSendConfig,
    pending: HashMap<K, Pending>,
    next_seq: u64,
    /// Deadlines, earliest first, then in sending order. An entry is live only while
    /// it matches the pending entry's current deadline.
    queue: BinaryHeap<Reverse<(Duration, u64, K)>>,
}

impl<K> Default for QosSendTable<K> {
    fn default() -> Self {
        Self {
            config: QosSendConfig::default(),
            pending: HashMap::new(),
            next_seq: 0,
            queue: BinaryHeap::new(),
        }
    }
}

impl QosSendTable {
    /// Tracks a QoS frame that was just written (`written`), or that waits for the
    /// next login to be written (`!written`), under its fingerprint. Frames without a
    /// fingerprint are ignored (they cannot be ACKed). A frame already pending under
    /// the same fingerprint is replaced, keeping one entry per fingerprint.
    pub fn track(&mut self, frame: Frame, written: bool, now: Duration) {
        let Some(fp) = frame.fp.clone() else { return };
        self.insert(fp, frame, written, now);
    }
}

impl<K: Hash + Eq + Ord + Clone> QosSendTable<K> {
    /// An empty table.
    pub fn new(config: QosSendConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The settings in force.
    pub fn config(&self) -> QosSendConfig {
        self.config
    }

    /// Tracks `frame` under `key`, as [`track`](QosSendTable::track) does under the
    /// frame's fingerprint.
    pub fn insert(&mut self, fp: K, frame: Frame, written: bool, now: Duration) {
        let deadline = now + self.config.wait_after(0);
        self.next_seq += 1;
        self.queue
            .push(Reverse((deadline, self.next_seq, fp.clone())));
        self.pending.insert(
            fp,
            Pending {
                frame,
                seq: self.next_seq,
                resends: 0,
                deadline,
                owed: !written,
                throttled_retry: false,
                throttled: 0,
            },
        );
    }

    /// The earliest deadline in the queue: may be one that was cancelled since (an
    /// ACKed frame), never later than the next real one.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.queue.peek().map(|Reverse((d, ..))| *d)
    }

    /// How many frames wait to be written at the next login.
    pub fn owed(&self) -> usize {
        self.pending.values().filter(|p| p.owed).count()
    }

    /// An ACK for `fp`: returns true if it was pending (delivered now), false for a
    /// late, duplicate or unknown ACK.
    pub fn ack<Q>(&mut self, fp: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.remove(fp).is_some()
    }

    /// Takes `fp` out of the table, settled (an ACK, or the server's refusal);
    /// returns its frame, `None` when it was not pending.
    pub fn remove<Q>(&mut self, fp: &Q) -> Option<Frame>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = self.pending.remove(fp);
        self.compact();
        entry.map(|p| p.frame)
    }

    /// Resends and losses due at `now`. With the link down (`!link_up`) a due resend
    /// is owed instead of returned: it counts, and [`login_flush`](Self::login_flush)
    /// writes it.
    pub fn tick(&mut self, now: Duration, link_up: bool) -> QosTick {
        let mut out = QosTick::default();
        while let Some(Reverse((deadline, ..))) = self.queue.peek() {
            if *deadline > now {
                break;
            }
            let Some(Reverse((deadline, seq, fp))) = self.queue.pop() else {
                break;
            };
            let Some(entry) = self.pending.get_mut(&fp) else {
                continue;
            };
            if entry.deadline != deadline {
                continue;
            }
            let retry = std::mem::take(&mut entry.throttled_retry);
            if retry || entry.resends < self.config.max_resends {
                if !retry {
                    entry.resends += 1;
                }
                let wait = self.config.wait_after(entry.resends);
                if link_up && !entry.owed {
                    entry.deadline = now + wait;
                    if retry {
                        out.retry.push(entry.frame.clone());
                    } else {
                        out.resend.push(entry.frame.clone());
                    }
                } else {
                    // Nothing is written: the schedule runs on from when it was due.
                    entry.deadline = deadline + wait;
                    entry.owed = true;
                }
                self.queue.push(Reverse((entry.deadline, seq, fp)));
            } else if let Some(entry) = self.pending.remove(&fp) {
                out.lost.push(entry.frame);
            }
        }
        out
    }

    /// What to write once a session is logged in, in the order the messages were
    /// sent: every owed write, and as one more resend each message that was written
    /// only on an earlier link and has a resend left (see the module docs). Returns
    /// the frames and how many of them count as resends.
    pub fn login_flush(&mut self, now: Duration) -> (Vec<Frame>, u64) {
        let mut due: Vec<(u64, &K)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.owed || p.resends < self.config.max_resends)
            .map(|(fp, p)| (p.seq, fp))
            .collect();
        due.sort_unstable_by_key(|(seq, _)| *seq);
        let due: Vec<K> = due.into_iter().map(|(_, fp)| fp.clone()).collect();
        let mut frames = Vec::with_capacity(due.len());
        let mut resends = 0;
        for fp in due {
            let Some(entry) = self.pending.get_mut(&fp) else {
                continue;
            };
            if entry.owed {
                entry.owed = false;
                if entry.resends > 0 {
                    resends += 1;
                }
            } else {
                entry.resends += 1;
                entry.throttled_retry = false;
                entry.deadline = now + self.config.wait_after(entry.resends);
                self.queue.push(Reverse((entry.deadline, entry.seq, fp)));
                resends += 1;
            }
            frames.push(entry.frame.clone());
        }
        self.compact();
        (frames, resends)
    }

    /// The server refused a write of `fp` for its rate limit. Unless the message was
    /// refused `max_throttled` times already, the refused write does not count: the
    /// message is written again after the returned back-off, and its schedule goes on
    /// from that write. `None` when `fp` is not pending, waits for a login, or has no
    /// retries left (its normal schedule goes on).
    pub fn throttled<Q>(&mut self, fp: &Q, now: Duration) -> Option<Duration>
    where
        K: Borrow<Q> + for<'a> From<&'a Q>,
        Q: Hash + Eq + ?Sized,
    {
        let config = self.config;
        let entry = self.pending.get_mut(fp)?;
        if entry.owed || entry.throttled >= config.max_throttled {
            return None;
        }
        let backoff = config
            .throttle_backoff
            .saturating_mul(1 << entry.throttled.min(16))
            .min(config.resend_after.max(config.throttle_backoff));
        entry.throttled += 1;
        entry.throttled_retry = true;
        entry.deadline = now + backoff;
        self.queue
            .push(Reverse((entry.deadline, entry.seq, K::from(fp))));
        Some(backoff)
    }

    /// Removes and returns every pending frame, in the order they were sent (for a
    /// loss report when a session ends).
    pub fn drain(&mut self) -> Vec<Frame> {
        self.queue.clear();
        let mut all: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        all.sort_unstable_by_key(|p| p.seq);
        all.into_iter().map(|p| p.frame).collect()
    }

    /// How many frames wait for an ACK.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits for an ACK.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether `fp` waits for an ACK.
    pub fn contains<Q>(&self, fp: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.pending.contains_key(fp)
    }

    /// Keeps only the pending frames `keep` says yes to; the others leave without an
    /// outcome.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &Frame) -> bool) {
        self.pending.retain(|k, p| keep(k, &p.frame));
        self.compact();
    }

    /// The keys of the pending frames, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.pending.keys()
    }

    /// Drops dead queue entries once they outnumber the live ones two to one, so
    /// that ACKed frames cannot make the queue grow without bound (amortised O(1)).
    fn compact(&mut self) {
        if self.queue.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.queue
                .retain(|Reverse((d, _, fp))| pending.get(fp).is_some_and(|p| p.deadline == *d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    fn frame(fp: &str) -> Frame {
        Frame::data("alice", "bob", "hi", true, Some(fp.into()), 0)
    }

    fn fps(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.fp.as_deref().unwrap()).collect()
    }

    #[test]
    fn resends_at_3_and_6_seconds_then_lost_at_9() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        t.track(frame("a"), true, s(10.0));
        assert_eq!(t.tick(s(12.999), true), QosTick::default());
        assert_eq!(fps(&t.tick(s(13.0), true).resend), ["a"]);
        assert_eq!(t.tick(s(15.999), true), QosTick::default());
        assert_eq!(fps(&t.tick(s(16.0), true).resend), ["a"]);
        assert_eq!(t.tick(s(18.999), true), QosTick::default());
        let last = t.tick(s(19.0), true);
        assert!(last.resend.is_empty());
        assert_eq!(fps(&last.lost), ["a"]);
        assert!(t.is_empty());
    }

    #[test]
    fn an_ack_between_resends_stops_everything_and_counts_once() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        t.track(frame("a"), true, s(0.0));
        assert_eq!(t.tick(s(3.0), true).resend.len(), 1);
        assert!(t.ack("a"));
        assert!(!t.ack("a"), "a duplicate ACK is not a second delivery");
        assert_eq!(t.tick(s(100.0), true), QosTick::default());
    }

    #[test]
    fn unknown_acks_are_ignored() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        t.track(frame("a"), true, s(0.0));
        assert!(!t.ack("zzz"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn frames_expire_in_deadline_order_with_their_own_clocks() {
        let mut t = QosSendTable::new(QosSendConfig {
            max_resends: 0,
            lost_after: s(1.0),
            ..QosSendConfig::default()
        });
        t.track(frame("late"), true, s(0.5));
        t.track(frame("early"), true, s(0.0));
        assert_eq!(fps(&t.tick(s(1.0), true).lost), ["early"]);
        assert_eq!(fps(&t.tick(s(1.5), true).lost), ["late"]);
    }

    fn fp_of(frames: &[Frame]) -> Vec<&str> {
        fps(frames)
    }

    #[test]
    fn a_resend_due_while_the_link_is_down_is_owed_and_written_once_at_login() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        t.track(frame("a"), true, s(0.0));
        // Down at 3 s and 6 s: both resends come due and count, nothing is written.
        assert_eq!(t.tick(s(3.0), false), QosTick::default());
        assert_eq!(t.tick(s(6.0), false), QosTick::default());
        assert_eq!(t.owed(), 1);
        // Back at 7 s: the owed write goes out once, already counted.
        let (frames, resends) = t.login_flush(s(7.0));
        assert_eq!((fp_of(&frames), resends), (vec!["a"], 1));
        assert_eq!(t.owed(), 0);
        // The loss stays where the last resend put it: 6 s + 3 s.
        assert_eq!(t.tick(s(8.999), true), QosTick::default());
        assert_eq!(fps(&t.tick(s(9.0), true).lost), ["a"]);
    }

    #[test]
    fn a_login_flush_is_a_resend_and_restarts_the_wait() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        t.track(frame("a"), true, s(0.0));
        // The link died and came back at 1 s: the flush is resend 1, next at 4 s.
        let (frames, resends) = t.login_flush(s(1.0));
        assert_eq!((fp_of(&frames), resends), (vec!["a"], 1));
        assert_eq!(t.tick(s(3.999), true), QosTick::default());
        assert_eq!(fps(&t.tick(s(4.0), true).resend), ["a"]);
        // Both resends used: a further re-login writes nothing more.
        let (frames, _) = t.login_flush(s(5.0));
        assert!(frames.is_empty());
        assert_eq!(t.tick(s(6.999), true), QosTick::default());
        assert_eq!(fps(&t.tick(s(7.0), true).lost), ["a"]);
    }

    #[test]
    fn messages_queued_before_login_are_written_in_order_as_originals() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        for (i, fp) in ["c", "a", "b"].iter().enumerate() {
            t.track(frame(fp), false, s(i as f64 * 0.1));
        }
        assert_eq!(t.owed(), 3);
        let (frames, resends) = t.login_flush(s(1.0));
        assert_eq!((fp_of(&frames), resends), (vec!["c", "a", "b"], 0));
        // Their deadlines run from when they were sent: resend at 3 s.
        assert_eq!(fps(&t.tick(s(3.0), true).resend), ["c"]);
    }

    #[test]
    fn no_message_is_written_more_than_one_plus_max_resends_times() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        t.track(frame("a"), true, s(0.0));
        let mut writes = 1;
        let mut now = 0.0;
        let mut lost = false;
        while !lost && now < 60.0 {
            now += 0.5;
            // A re-login every 1.5 s, link up in between.
            if ((now * 2.0) as u32).is_multiple_of(3) {
                writes += t.login_flush(s(now)).0.len();
            }
            let tick = t.tick(s(now), true);
            writes += tick.resend.len();
            lost = !tick.lost.is_empty();
        }
        assert!(lost);
        assert_eq!(writes, 3);
        assert!(now <= 9.0, "lost at {now} s, later than 2 x 3 s + 3 s");
    }

    #[test]
    fn a_throttled_write_is_retried_after_a_backoff_without_counting() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        t.track(frame("a"), true, s(0.0));
        assert_eq!(t.throttled("a", s(0.1)), Some(s(0.5)));
        assert_eq!(t.tick(s(0.599), true), QosTick::default());
        assert_eq!(fps(&t.tick(s(0.6), true).retry), ["a"]);
        // The retry took the refused original's place: two resends are still left.
        assert_eq!(t.throttled("a", s(0.7)), Some(s(1.0)));
        assert_eq!(fps(&t.tick(s(1.7), true).retry), ["a"]);
        assert_eq!(fps(&t.tick(s(4.7), true).resend), ["a"]);
        assert_eq!(fps(&t.tick(s(7.7), true).resend), ["a"]);
        assert_eq!(fps(&t.tick(s(10.7), true).lost), ["a"]);
        assert_eq!(t.throttled("a", s(11.0)), None, "no longer pending");
    }

    #[test]
    fn throttling_is_retried_a_bounded_number_of_times() {
        let config = QosSendConfig::default();
        let mut t = QosSendTable::new(config);
        t.track(frame("a"), true, s(0.0));
        let mut now = s(0.0);
        for _ in 0..config.max_throttled {
            let backoff = t.throttled("a", now).unwrap();
            assert!(backoff <= config.resend_after);
            now += backoff;
            assert_eq!(fps(&t.tick(now, true).retry), ["a"]);
        }
        assert_eq!(t.throttled("a", now), None);
    }

    #[test]
    fn drain_returns_everything_in_sending_order() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        for fp in ["z", "y", "x"] {
            t.track(frame(fp), true, s(0.0));
        }
        assert_eq!(fps(&t.drain()), ["z", "y", "x"]);
        assert_eq!(t.tick(s(60.0), true), QosTick::default());
    }
}
