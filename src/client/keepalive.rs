//! Keepalive (the seed's `KeepAliveDaemon`): while logged in, a type 1 frame every
//! interval; the link is dead when nothing has been heard for the timeout.

use std::time::Duration;

/// The sense modes of upstream: a keepalive interval and a dead-link timeout that
/// match a server's read timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SenseMode {
    /// 3 s keepalive, 5 s timeout (server read timeout 7 s).
    Mode3s,
    /// 5 s keepalive, 8 s timeout (server read timeout 11 s). The default.
    #[default]
    Mode5s,
    /// 10 s keepalive, 15 s timeout (server read timeout 15 s).
    Mode10s,
    /// 15 s keepalive, 20 s timeout (server read timeout 20 s); upstream's default.
    Mode15s,
    /// 30 s keepalive, 35 s timeout.
    Mode30s,
    /// 60 s keepalive, 65 s timeout.
    Mode60s,
    /// 120 s keepalive, 125 s timeout.
    Mode120s,
    /// Any other pair.
    Custom {
        /// Time between keepalives.
        interval: Duration,
        /// Silence after which the link is dead.
        timeout: Duration,
    },
}

impl SenseMode {
    /// (keepalive interval, client dead-link timeout, server read timeout).
    pub fn timings(self) -> (Duration, Duration, Duration) {
        let ms = Duration::from_millis;
        match self {
            Self::Mode3s => (ms(3000), ms(5000), ms(7000)),
            Self::Mode5s => (ms(5000), ms(8000), ms(11000)),
            Self::Mode10s => (ms(10000), ms(15000), ms(15000)),
            Self::Mode15s => (ms(15000), ms(20000), ms(20000)),
            Self::Mode30s => (ms(30000), ms(35000), ms(35000)),
            Self::Mode60s => (ms(60000), ms(65000), ms(65000)),
            Self::Mode120s => (ms(120000), ms(125000), ms(125000)),
            Self::Custom { interval, timeout } => (interval, timeout, timeout + interval / 2),
        }
    }

    /// Time between keepalives.
    pub fn interval(self) -> Duration {
        self.timings().0
    }

    /// Silence after which the client declares the link dead.
    pub fn timeout(self) -> Duration {
        self.timings().1
    }

    /// The read timeout a server in this mode applies.
    pub fn server_read_timeout(self) -> Duration {
        self.timings().2
    }
}

impl std::str::FromStr for SenseMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "3s" => Self::Mode3s,
            "5s" => Self::Mode5s,
            "10s" => Self::Mode10s,
            "15s" => Self::Mode15s,
            "30s" => Self::Mode30s,
            "60s" => Self::Mode60s,
            "120s" => Self::Mode120s,
            other => {
                return Err(format!(
                    "unknown sense mode `{other}`: expected 3s, 5s, 10s, 15s, 30s, 60s or 120s"
                ));
            }
        })
    }
}

/// What a keepalive tick decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveTick {
    /// Nothing to do.
    Idle,
    /// Send a keepalive now.
    Send,
    /// Nothing heard for the timeout: the link is dead.
    Dead,
}

/// The keepalive clock of one logged-in link.
#[derive(Debug, Default)]
pub struct Keepalive {
    mode: SenseMode,
    running: bool,
    next_send: Duration,
    /// When the dead-link clock last restarted (the first keepalive, then each reply).
    last_heard: Option<Duration>,
    /// When the keepalive awaiting its reply went out, for the round-trip time.
    in_flight: Option<Duration>,
    rtt: Option<Duration>,
}

impl Keepalive {
    /// A stopped keepalive in `mode`.
    pub fn new(mode: SenseMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }

    /// The sense mode in force.
    pub fn mode(&self) -> SenseMode {
        self.mode
    }

    /// Starts after a login success: the first keepalive goes out one interval later.
    pub fn start(&mut self, now: Duration) {
        self.running = true;
        self.next_send = now + self.mode.interval();
        self.last_heard = None;
        self.in_flight = None;
    }

    /// Stops (link lost, logout, kickout).
    pub fn stop(&mut self) {
        self.running = false;
        self.last_heard = None;
        self.in_flight = None;
    }

    /// Whether keepalives are being sent.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// A keepalive reply (type 51) arrived: restart the dead-link clock. Returns the
    /// round-trip time of the keepalive it answers, if one was in flight.
    pub fn on_reply(&mut self, now: Duration) -> Option<Duration> {
        if !self.running {
            return None;
        }
        self.last_heard = Some(now);
        let rtt = self.in_flight.take().map(|sent| now.saturating_sub(sent));
        if rtt.is_some() {
            self.rtt = rtt;
        }
        rtt
    }

    /// The latest measured round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// When [`tick`](Self::tick) next has something to do, while running.
    pub fn next_deadline(&self) -> Option<Duration> {
        if !self.running {
            return None;
        }
        let dead = self.last_heard.map(|heard| heard + self.mode.timeout());
        Some(dead.map_or(self.next_send, |d| d.min(self.next_send)))
    }

    /// Decides what is due at `now`. After `Dead` the keepalive is stopped.
    pub fn tick(&mut self, now: Duration) -> KeepaliveTick {
        if !self.running {
            return KeepaliveTick::Idle;
        }
        if let Some(heard) = self.last_heard
            && now.saturating_sub(heard) >= self.mode.timeout()
        {
            self.stop();
            return KeepaliveTick::Dead;
        }
        if now >= self.next_send {
            self.next_send = now + self.mode.interval();
            self.last_heard.get_or_insert(now);
            self.in_flight.get_or_insert(now);
            return KeepaliveTick::Send;
        }
        KeepaliveTick::Idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn sends_every_interval_and_dies_after_the_timeout_without_replies() {
        let mut k = Keepalive::new(SenseMode::Mode5s);
        k.start(s(0));
        assert_eq!(k.tick(s(4)), KeepaliveTick::Idle);
        assert_eq!(k.tick(s(5)), KeepaliveTick::Send);
        assert_eq!(k.tick(s(10)), KeepaliveTick::Send);
        assert_eq!(k.tick(s(12)), KeepaliveTick::Idle);
        assert_eq!(
            k.tick(s(13)),
            KeepaliveTick::Dead,
            "8 s after the first keepalive"
        );
        assert!(!k.is_running());
        assert_eq!(k.tick(s(14)), KeepaliveTick::Idle);
    }

    #[test]
    fn a_reply_resets_the_dead_link_clock_and_measures_rtt() {
        let mut k = Keepalive::new(SenseMode::Mode5s);
        k.start(s(0));
        assert_eq!(k.tick(s(5)), KeepaliveTick::Send);
        assert_eq!(
            k.on_reply(Duration::from_millis(5040)),
            Some(Duration::from_millis(40))
        );
        assert_eq!(k.tick(s(10)), KeepaliveTick::Send);
        assert_eq!(
            k.tick(s(13)),
            KeepaliveTick::Idle,
            "clock restarted at 5.04 s"
        );
        assert_eq!(k.tick(Duration::from_millis(13040)), KeepaliveTick::Dead);
    }

    #[test]
    fn sense_modes_match_upstream() {
        assert_eq!(SenseMode::Mode5s.interval(), s(5));
        assert_eq!(SenseMode::Mode5s.timeout(), s(8));
        assert_eq!(SenseMode::Mode5s.server_read_timeout(), s(11));
        assert_eq!(SenseMode::Mode15s.timeout(), s(20));
        assert_eq!("120s".parse::<SenseMode>(), Ok(SenseMode::Mode120s));
        assert!("7s".parse::<SenseMode>().is_err());
    }
}
