//! A scripted driver of the server's sessions, for the fuzz target
//! `fuzz/fuzz_targets/server_session.rs` (cargo feature `fuzzing`; not a stable API).
//!
//! [`Driver`] holds what the socket tasks of a running server would: the shared state
//! (with an in-memory store), and for each fake socket its `Session`, its queue of
//! frames handed to it by others, and the cleanup that runs when it ends. It does what
//! a socket task does with them, without a socket: a text frame in, the replies out;
//! a close after a `Step::Close` or a kickout; the timers on tokio's paused clock.
//! Everything runs on one current-thread runtime, so a run is deterministic (but for
//! the wall-clock `firstLoginTime` and message timestamps).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Runtime;

use tokio::time::Instant;

use super::ServerConfig;
use super::hooks::{LogoutReason, Moderation, ServerHooks};
use super::serve::settle_lost;
use super::session::{Session, SessionCleanup, Step};
use super::state::{Command, MailRx, Shared};
use super::store::{StoreHandle, StorePath};
use crate::protocol::{Frame, KickoutCode};

/// The hooks a [`Driver`]'s server runs with: deterministic, and each decision
/// reachable from a frame.
///
/// - a login whose token is `"refuse"` is refused with code 5;
/// - content `"refuse"` is refused by moderation (403), `"rewrite"` is rewritten to a
///   longer text, `"host"` is stored by the host when its receiver is offline;
/// - only users whose id starts with `a` may join a private room.
#[derive(Debug, Default)]
pub struct FuzzHooks;

impl ServerHooks for FuzzHooks {
    fn verify_login(&self, _user: &str, token: &str, _: Option<&str>, _: Option<&str>) -> i32 {
        if token == "refuse" { 5 } else { 0 }
    }

    fn on_offline_message(&self, frame: &Frame) -> bool {
        frame.content() == "host"
    }

    fn moderate(&self, _from: &str, _to: &str, content: &str) -> Moderation {
        match content {
            "refuse" => Moderation::Refuse,
            "rewrite" => Moderation::Rewrite("rewritten by the host ".repeat(8)),
            _ => Moderation::Pass,
        }
    }

    fn may_join(&self, user: &str, _room: &str) -> bool {
        user.starts_with('a')
    }
}

/// What a socket task would have written, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// The frames' texts: the session's own replies first, then what others queued
    /// for the socket.
    pub frames: Vec<String>,
    /// How many of `frames` came from the socket's queue.
    pub from_queue: usize,
    /// The queue's counter (bounded by `max_outbound_queue`) before they were taken.
    pub counter: usize,
    /// A kickout was asked for (its code); the socket writes it last, then closes.
    pub kicked: Option<i32>,
    /// The socket closed: it takes nothing more.
    pub closed: bool,
}

/// One fake socket: what its task holds.
struct Sock {
    session: Session,
    rx: MailRx,
    queued: Arc<AtomicUsize>,
    cleanup: SessionCleanup,
}

impl Sock {
    /// Takes everything queued for the socket into `written`, as its task writes it
    /// (a kickout closes it: what is still queued goes first).
    fn drain(&mut self, written: &mut Written) {
        written.counter = self.queued.load(Ordering::Relaxed);
        while let Some(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Send(out) => {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    written.frames.push(out.text);
                    written.from_queue += 1;
                }
                Command::Kick { code, .. } => {
                    written.kicked.get_or_insert(code.code());
                }
            }
        }
    }
}

/// The server's sessions without sockets, on tokio's paused clock. See the module
/// docs.
pub struct Driver {
    rt: Runtime,
    shared: Arc<Shared>,
    /// Every socket opened, by index; `None` once closed.
    socks: Vec<Option<Sock>>,
}

impl Driver {
    /// A server with `config` (its store is always in memory) and [`FuzzHooks`].
    ///
    /// # Panics
    /// When the runtime or the in-memory store cannot be made.
    pub fn new(mut config: ServerConfig) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime");
        config.store = StorePath::Memory;
        let shared = {
            // The shared state reads the paused clock.
            let _in = rt.enter();
            let store = StoreHandle::open(&StorePath::Memory, config.store_limits.clone())
                .expect("an in-memory store");
            let addr = ([127, 0, 0, 1], 0).into();
            Arc::new(Shared::new(config, Box::new(FuzzHooks), addr, None, store))
        };
        Self {
            rt,
            shared,
            socks: Vec::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// How many sockets were opened (closed ones included).
    pub fn sockets(&self) -> usize {
        self.socks.len()
    }

    /// Whether socket `sock` is open.
    pub fn is_open(&self, sock: usize) -> bool {
        self.socks.get(sock).is_some_and(Option::is_some)
    }

    /// Accepts a socket, as the server does after the upgrade; returns its index.
    pub fn open(&mut self) -> usize {
        let _in = self.rt.enter();
        let shared = &self.shared;
        let (id, rx, queued) = shared.open_session();
        self.socks.push(Some(Sock {
            session: Session::new(id, shared.clone(), Instant::now()),
            rx,
            queued,
            cleanup: SessionCleanup::new(shared.clone(), id),
        }));
        self.socks.len() - 1
    }

    /// A text frame arrives on `sock`: handled as its read loop does (the store's
    /// work included). Returns the replies it writes, and when the frame closes the
    /// socket, what was still queued for it; `None` for a closed socket.
    pub fn feed(&mut self, sock: usize, text: &str) -> Option<Written> {
        let Self { rt, socks, .. } = self;
        let s = socks.get_mut(sock)?.as_mut()?;
        let step = rt.block_on(async {
            let step = s.session.handle_text(text, Instant::now());
            s.session.run_jobs().await;
            step
        });
        let mut written = Written {
            frames: s.session.out.drain(..).map(|o| o.text).collect(),
            ..Written::default()
        };
        if let Step::Close { end, .. } = step {
            s.drain(&mut written);
            self.end(sock, end);
            written.closed = true;
        }
        Some(written)
    }

    /// The socket's task takes what others queued for it (a kickout among them
    /// closes it); `None` for a closed socket. Not reading leaves it queued, as for
    /// a client that stops reading.
    pub fn read(&mut self, sock: usize) -> Option<Written> {
        let s = self.socks.get_mut(sock)?.as_mut()?;
        let mut written = Written::default();
        s.drain(&mut written);
        if let Some(code) = written.kicked {
            self.end(sock, LogoutReason::Kicked(KickoutCode::from_code(code)));
            written.closed = true;
        }
        Some(written)
    }

    /// The queue counter of an open socket: frames queued for it and not yet read.
    pub fn queued(&self, sock: usize) -> Option<usize> {
        let s = self.socks.get(sock)?.as_ref()?;
        Some(s.queued.load(Ordering::Relaxed))
    }

    /// The link of `sock` is gone (`end` says how: closed, timed out, ...); what was
    /// queued for it is dropped.
    pub fn close(&mut self, sock: usize, end: LogoutReason) {
        self.end(sock, end);
    }

    fn end(&mut self, sock: usize, end: LogoutReason) {
        let _in = self.rt.enter();
        if let Some(mut s) = self.socks.get_mut(sock).and_then(Option::take) {
            s.cleanup.end = end;
            // The cleanup runs as the socket's task ends.
            drop(s);
        }
    }

    /// Moves the paused clock on by `by`, then runs every timer due, as the server's
    /// QoS loop does: resends, losses (settled into the offline box or reported),
    /// the rooms' grace periods.
    pub fn advance(&mut self, by: Duration) {
        let shared = self.shared.clone();
        self.rt.block_on(async move {
            tokio::time::advance(by).await;
            let (lost, _) = shared.run_timers(Instant::now());
            for (user, frame) in lost {
                settle_lost(shared.clone(), user, frame).await;
            }
        });
    }

    /// Waits until the store has run everything queued so far.
    pub fn flush_store(&mut self) {
        let done = self.shared.store.flush();
        let _ = self.rt.block_on(done);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The cleanups read the paused clock.
        let _in = self.rt.enter();
        self.socks.clear();
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("sockets", &self.socks.len())
            .finish_non_exhaustive()
    }
}
