//! The QoS receive filter (the seed's `QoS4ReciveDaemon`): every inbound QoS frame is
//! ACKed, and a fingerprint seen within the window is not delivered twice.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// How long fingerprints are remembered, and how many at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    /// How long a fingerprint suppresses duplicates after it was last seen.
    pub window: Duration,
    /// The most fingerprints remembered; past it the oldest is forgotten first.
    pub max_entries: usize,
}

impl Default for DedupConfig {
    /// A 10 minute window, at most 100,000 fingerprints (about 10 MB at worst).
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            max_entries: 100_000,
        }
    }
}

/// Fingerprints of frames already delivered, with their expiry deadlines.
///
/// Memory is bounded by `max_entries` fingerprints plus a queue of at most twice
/// that many deadlines: under a flood of unique fingerprints the oldest are forgotten
/// first, so a duplicate can only get through once it is older than the newest
/// `max_entries` fingerprints.
#[derive(Debug, Default)]
pub struct QosReceiveFilter {
    config: DedupConfig,
    seen: HashMap<String, Duration>,
    /// Expiry deadlines in the order they were set (non-decreasing, as `now` is).
    /// An entry whose deadline no longer matches `seen` is stale and skipped.
    queue: VecDeque<(Duration, String)>,
}

impl QosReceiveFilter {
    /// An empty filter.
    pub fn new(config: DedupConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Records `fp` as seen at `now`. Returns true when it is new and must be
    /// delivered, false for a duplicate (whose window is refreshed, as upstream does).
    pub fn accept(&mut self, fp: &str, now: Duration) -> bool {
        self.expire(now);
        let deadline = now + self.config.window;
        let fresh = match self.seen.get_mut(fp) {
            Some(d) => {
                *d = deadline;
                false
            }
            None => {
                self.seen.insert(fp.to_owned(), deadline);
                true
            }
        };
        self.queue.push_back((deadline, fp.to_owned()));
        while self.seen.len() > self.config.max_entries {
            self.evict_oldest();
        }
        if self.queue.len() > 2 * self.seen.len() + 64 {
            let seen = &self.seen;
            self.queue.retain(|(d, fp)| seen.get(fp) == Some(d));
        }
        fresh
    }

    /// The earliest expiry in the queue (possibly of a refreshed entry: early, never
    /// late).
    pub fn next_deadline(&self) -> Option<Duration> {
        self.queue.front().map(|(d, _)| *d)
    }

    /// Forgets fingerprints whose window has passed.
    pub fn expire(&mut self, now: Duration) {
        while let Some((deadline, _)) = self.queue.front() {
            if *deadline > now {
                break;
            }
            if let Some((deadline, fp)) = self.queue.pop_front()
                && self.seen.get(&fp) == Some(&deadline)
            {
                self.seen.remove(&fp);
            }
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((deadline, fp)) = self.queue.pop_front() {
            if self.seen.get(&fp) == Some(&deadline) {
                self.seen.remove(&fp);
                return;
            }
        }
    }

    /// How many fingerprints are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no fingerprint is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.seen.clear();
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_duplicate_within_the_window_is_not_delivered_again() {
        let mut f = QosReceiveFilter::new(DedupConfig::default());
        assert!(f.accept("a", s(0)));
        assert!(!f.accept("a", s(1)));
        assert!(!f.accept("a", s(599)));
    }

    #[test]
    fn the_window_expires_and_a_duplicate_refreshes_it() {
        let mut f = QosReceiveFilter::new(DedupConfig::default());
        assert!(f.accept("a", s(0)));
        assert!(!f.accept("a", s(300)), "refreshes to 900 s");
        f.expire(s(600));
        assert_eq!(f.len(), 1);
        f.expire(s(900));
        assert!(f.is_empty());
        assert!(f.accept("a", s(900)));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_unique_fingerprints() {
        let mut f = QosReceiveFilter::new(DedupConfig {
            window: s(600),
            max_entries: 1000,
        });
        for i in 0..50_000 {
            assert!(f.accept(&format!("fp-{i}"), s(1)));
            assert!(f.len() <= 1000);
            assert!(f.queue.len() <= 2 * 1000 + 64);
        }
        assert!(
            !f.accept("fp-49999", s(1)),
            "the newest are still remembered"
        );
        assert!(f.accept("fp-0", s(1)), "the oldest were forgotten first");
    }

    #[test]
    fn a_flood_of_duplicates_does_not_grow_the_queue() {
        let mut f = QosReceiveFilter::new(DedupConfig::default());
        f.accept("a", s(0));
        for i in 0..10_000 {
            f.accept("a", Duration::from_millis(i));
        }
        assert!(f.queue.len() <= 2 + 64);
    }
}
