//! The QoS send table (the seed's `QoS4SendDaemon`): every QoS frame sent waits here
//! under its fingerprint until the server ACKs it, is resent on its own deadline, and
//! is reported lost when its resends run out.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
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
}

impl Default for QosSendConfig {
    /// Resend 3 s after each send, at most 2 resends, lost 3 s after the last.
    fn default() -> Self {
        Self {
            resend_after: Duration::from_secs(3),
            max_resends: 2,
            lost_after: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone)]
struct Pending {
    frame: Frame,
    resends: u32,
    deadline: Duration,
}

/// What a tick of the table decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QosTick {
    /// Frames to write again, unchanged (same fingerprint).
    pub resend: Vec<Frame>,
    /// Frames whose resends ran out; the game decides whether to retry them.
    pub lost: Vec<Frame>,
}

/// Pending QoS frames keyed by fingerprint, with a deadline queue so that a tick costs
/// O(expired · log n), not O(pending).
#[derive(Debug, Default, bevy::prelude::Resource)]
pub struct QosSendTable {
    config: QosSendConfig,
    pending: HashMap<String, Pending>,
    /// Deadlines, earliest first. An entry is live only while it matches the pending
    /// entry's current deadline; ACKed or rescheduled entries are skipped when popped.
    queue: BinaryHeap<Reverse<(Duration, String)>>,
}

impl QosSendTable {
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

    /// Tracks a QoS frame that was just written. Frames without a fingerprint are
    /// ignored (they cannot be ACKed). A frame already pending under the same
    /// fingerprint is replaced, keeping one entry per fingerprint.
    pub fn track(&mut self, frame: Frame, now: Duration) {
        let Some(fp) = frame.fp.clone() else { return };
        let deadline = now + self.config.resend_after;
        self.queue.push(Reverse((deadline, fp.clone())));
        self.pending.insert(
            fp,
            Pending {
                frame,
                resends: 0,
                deadline,
            },
        );
    }

    /// An ACK for `fp`: returns true if it was pending (delivered now), false for a
    /// late, duplicate or unknown ACK.
    pub fn ack(&mut self, fp: &str) -> bool {
        let known = self.pending.remove(fp).is_some();
        self.compact();
        known
    }

    /// Resends and losses due at `now`.
    pub fn tick(&mut self, now: Duration) -> QosTick {
        let mut out = QosTick::default();
        while let Some(Reverse((deadline, _))) = self.queue.peek() {
            if *deadline > now {
                break;
            }
            let Some(Reverse((deadline, fp))) = self.queue.pop() else {
                break;
            };
            let Some(entry) = self.pending.get_mut(&fp) else {
                continue;
            };
            if entry.deadline != deadline {
                continue;
            }
            if entry.resends < self.config.max_resends {
                entry.resends += 1;
                entry.deadline = now
                    + if entry.resends == self.config.max_resends {
                        self.config.lost_after
                    } else {
                        self.config.resend_after
                    };
                out.resend.push(entry.frame.clone());
                self.queue.push(Reverse((entry.deadline, fp)));
            } else if let Some(entry) = self.pending.remove(&fp) {
                out.lost.push(entry.frame);
            }
        }
        out
    }

    /// Every pending frame, to write again at once after a re-login. Their deadlines
    /// stay as they were, so a message is reported lost on time however often the
    /// link comes back.
    pub fn pending_frames(&self) -> Vec<Frame> {
        self.pending.values().map(|p| p.frame.clone()).collect()
    }

    /// Removes and returns every pending frame (for a loss report on kickout).
    pub fn drain(&mut self) -> Vec<Frame> {
        self.queue.clear();
        self.pending.drain().map(|(_, p)| p.frame).collect()
    }

    /// Forgets everything without reporting (logout and release).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.queue.clear();
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
    pub fn contains(&self, fp: &str) -> bool {
        self.pending.contains_key(fp)
    }

    /// Drops dead queue entries once they outnumber the live ones two to one, so
    /// that ACKed frames cannot make the queue grow without bound (amortised O(1)).
    fn compact(&mut self) {
        if self.queue.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.queue
                .retain(|Reverse((d, fp))| pending.get(fp).is_some_and(|p| p.deadline == *d));
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
        t.track(frame("a"), s(10.0));
        assert_eq!(t.tick(s(12.999)), QosTick::default());
        assert_eq!(fps(&t.tick(s(13.0)).resend), ["a"]);
        assert_eq!(t.tick(s(15.999)), QosTick::default());
        assert_eq!(fps(&t.tick(s(16.0)).resend), ["a"]);
        assert_eq!(t.tick(s(18.999)), QosTick::default());
        let last = t.tick(s(19.0));
        assert!(last.resend.is_empty());
        assert_eq!(fps(&last.lost), ["a"]);
        assert!(t.is_empty());
    }

    #[test]
    fn an_ack_between_resends_stops_everything_and_counts_once() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        t.track(frame("a"), s(0.0));
        assert_eq!(t.tick(s(3.0)).resend.len(), 1);
        assert!(t.ack("a"));
        assert!(!t.ack("a"), "a duplicate ACK is not a second delivery");
        assert_eq!(t.tick(s(100.0)), QosTick::default());
    }

    #[test]
    fn unknown_acks_are_ignored() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        t.track(frame("a"), s(0.0));
        assert!(!t.ack("zzz"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn frames_expire_in_deadline_order_with_their_own_clocks() {
        let mut t = QosSendTable::new(QosSendConfig {
            resend_after: s(1.0),
            max_resends: 0,
            lost_after: s(1.0),
        });
        t.track(frame("late"), s(0.5));
        t.track(frame("early"), s(0.0));
        assert_eq!(fps(&t.tick(s(1.0)).lost), ["early"]);
        assert_eq!(fps(&t.tick(s(1.5)).lost), ["late"]);
    }

    #[test]
    fn rewriting_pending_frames_keeps_their_deadlines() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        t.track(frame("a"), s(0.0));
        t.tick(s(3.0));
        assert_eq!(fps(&t.pending_frames()), ["a"]);
        assert_eq!(fps(&t.tick(s(6.0)).resend), ["a"]);
        assert_eq!(fps(&t.tick(s(9.0)).lost), ["a"]);
    }

    #[test]
    fn clear_forgets_without_reporting() {
        let mut t = QosSendTable::new(QosSendConfig::default());
        t.track(frame("a"), s(0.0));
        t.clear();
        assert_eq!(t.tick(s(60.0)), QosTick::default());
    }
}
