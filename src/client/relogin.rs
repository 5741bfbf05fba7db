//! Auto re-login (the seed's `AutoReLoginDaemon`): after a lost link, the first
//! attempt within a short random spread (at once with none), then backoff with
//! jitter; never after a kickout, logout or release.

use std::time::Duration;

/// How long to wait between re-login attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloginPolicy {
    /// Exponential backoff with jitter: attempt n waits `base · 2^(n-2)` capped at
    /// `cap`, of which a random half is jitter. The first attempt comes within
    /// [`ClientConfig::relogin_spread`](super::ClientConfig) of the loss.
    Backoff {
        /// The delay before the second attempt (before jitter).
        base: Duration,
        /// The largest delay.
        cap: Duration,
    },
    /// A fixed delay between attempts, as upstream (3 s).
    Fixed(Duration),
}

impl Default for ReloginPolicy {
    /// Backoff from 3 s, capped at 30 s.
    fn default() -> Self {
        Self::Backoff {
            base: Duration::from_secs(3),
            cap: Duration::from_secs(30),
        }
    }
}

impl ReloginPolicy {
    /// Upstream's schedule: every 3 s, forever.
    pub const UPSTREAM: Self = Self::Fixed(Duration::from_secs(3));

    /// The delay before the first retry (used after a 301 error).
    pub fn base(self) -> Duration {
        match self {
            Self::Backoff { base, .. } => base,
            Self::Fixed(d) => d,
        }
    }
}

/// The re-login schedule.
#[derive(Debug)]
pub struct Relogin {
    policy: ReloginPolicy,
    rng: fastrand::Rng,
    /// When the next attempt is due, while re-login is active.
    due: Option<Duration>,
    attempts: u32,
}

impl Relogin {
    /// An idle schedule; `seed` makes the jitter reproducible.
    pub fn new(policy: ReloginPolicy, seed: u64) -> Self {
        Self {
            policy,
            rng: fastrand::Rng::with_seed(seed),
            due: None,
            attempts: 0,
        }
    }

    /// Starts re-login afresh with the first attempt at `first`.
    pub fn start(&mut self, first: Duration) {
        self.due = Some(first);
        self.attempts = 0;
    }

    /// Starts re-login after a lost link: the first attempt at a random point within
    /// `spread` of `now`.
    pub fn start_after_loss(&mut self, now: Duration, spread: Duration) {
        let first = if spread.is_zero() {
            now
        } else {
            now + spread.mul_f64(self.rng.f64())
        };
        self.start(first);
    }

    /// Starts re-login again after a session that did not last: the backoff goes on
    /// from where the last attempts left it, so a link that keeps dropping right
    /// after login is not hammered.
    pub fn resume(&mut self, now: Duration, spread: Duration) {
        if self.attempts == 0 {
            self.start_after_loss(now, spread);
        } else {
            self.failed(now);
        }
    }

    /// A re-login succeeded: no attempt is due, but the count is kept for
    /// [`resume`](Self::resume).
    pub fn succeeded(&mut self) {
        self.due = None;
    }

    /// Stops re-login for good (kickout, logout, release).
    pub fn stop(&mut self) {
        self.due = None;
        self.attempts = 0;
    }

    /// Whether re-login is active.
    pub fn is_active(&self) -> bool {
        self.due.is_some()
    }

    /// How many attempts have been started since re-login began.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the next attempt is due.
    pub fn due(&self) -> Option<Duration> {
        self.due
    }

    /// Returns the attempt number when an attempt is due at `now`. The next attempt
    /// is not scheduled until [`failed`](Self::failed) reports this one's failure.
    pub fn tick(&mut self, now: Duration) -> Option<u32> {
        match self.due {
            Some(due) if now >= due => {
                self.due = None;
                self.attempts += 1;
                Some(self.attempts)
            }
            _ => None,
        }
    }

    /// The attempt in progress failed: schedules the next one.
    pub fn failed(&mut self, now: Duration) {
        let delay = self.delay(self.attempts.max(1));
        self.due = Some(now + delay);
    }

    /// The delay after attempt `n` failed.
    fn delay(&mut self, n: u32) -> Duration {
        match self.policy {
            ReloginPolicy::Fixed(d) => d,
            ReloginPolicy::Backoff { base, cap } => {
                let exp = base.saturating_mul(1u32 << (n - 1).min(16)).min(cap);
                let half = exp / 2;
                half + half.mul_f64(self.rng.f64())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn first_attempt_at_once_then_growing_jittered_delays_up_to_the_cap() {
        let mut r = Relogin::new(ReloginPolicy::default(), 7);
        r.start(s(10.0));
        assert_eq!(r.tick(s(10.0)), Some(1));
        assert_eq!(r.tick(s(10.0)), None, "one attempt at a time");
        let mut now = s(10.0);
        let mut delays = Vec::new();
        for n in 2..=8 {
            r.failed(now);
            let due = r.due().unwrap();
            delays.push(due - now);
            assert_eq!(r.tick(due - s(0.001)), None);
            assert_eq!(r.tick(due), Some(n));
            now = due;
        }
        let bounds = [
            (1.5, 3.0),
            (3.0, 6.0),
            (6.0, 12.0),
            (12.0, 24.0),
            (15.0, 30.0),
            (15.0, 30.0),
            (15.0, 30.0),
        ];
        for (d, (lo, hi)) in delays.iter().zip(bounds) {
            assert!(*d >= s(lo) && *d <= s(hi), "{d:?} not in {lo}..={hi}");
        }
    }

    #[test]
    fn first_attempts_after_a_loss_spread_evenly_over_the_spread() {
        let firsts: Vec<Duration> = (0..1000)
            .map(|seed| {
                let mut r = Relogin::new(ReloginPolicy::default(), seed);
                r.start_after_loss(s(10.0), s(0.5));
                r.due().unwrap() - s(10.0)
            })
            .collect();
        assert!(firsts.iter().all(|d| *d < s(0.5)));
        // Spread evenly: each tenth of the 0.5 s gets about a hundred.
        for tenth in 0..10 {
            let lo = s(0.05 * f64::from(tenth));
            let n = firsts
                .iter()
                .filter(|d| **d >= lo && **d < lo + s(0.05))
                .count();
            assert!(
                (60..=140).contains(&n),
                "{n} first attempts in tenth {tenth}"
            );
        }
        let mut upstream = Relogin::new(ReloginPolicy::UPSTREAM, 3);
        upstream.start_after_loss(s(10.0), Duration::ZERO);
        assert_eq!(upstream.due(), Some(s(10.0)), "no spread: at once");
    }

    #[test]
    fn the_jitter_spreads_clients_apart() {
        let delays: Vec<_> = (0..10)
            .map(|seed| {
                let mut r = Relogin::new(ReloginPolicy::default(), seed);
                r.start(s(0.0));
                r.tick(s(0.0));
                r.failed(s(0.0));
                r.due().unwrap()
            })
            .collect();
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 5);
    }

    #[test]
    fn resume_continues_the_backoff_of_a_session_that_did_not_last() {
        let mut r = Relogin::new(ReloginPolicy::UPSTREAM, 1);
        r.resume(s(0.0), Duration::ZERO);
        assert_eq!(r.tick(s(0.0)), Some(1), "nothing to continue: at once");
        r.succeeded();
        r.resume(s(1.0), Duration::ZERO);
        assert_eq!(r.tick(s(3.999)), None);
        assert_eq!(r.tick(s(4.0)), Some(2));
        r.stop();
        r.resume(s(10.0), Duration::ZERO);
        assert_eq!(r.tick(s(10.0)), Some(1));
    }

    #[test]
    fn fixed_policy_waits_the_same_every_time() {
        let mut r = Relogin::new(ReloginPolicy::UPSTREAM, 1);
        r.start(s(0.0));
        for n in 1..5 {
            let now = r.due().unwrap();
            assert_eq!(r.tick(now), Some(n));
            r.failed(now);
            assert_eq!(r.due(), Some(now + s(3.0)));
        }
        r.stop();
        assert!(!r.is_active());
        assert_eq!(r.tick(s(1000.0)), None);
    }
}
