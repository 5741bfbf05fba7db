//! Between frames: the clients' protocol runs without waiting for the game's next frame.
//!
//! A browser stops `requestAnimationFrame` in a hidden tab (where a windowed Bevy game
//! ticks), and throttles `setTimeout` (where `MinimalPlugins`' runner ticks) to one
//! wake-up a second, then one a minute. A client ticked only by frames then sends no
//! keepalive and ACKs nothing, and the server drops the player within seconds. So on
//! wasm the plugin *parks* every client's [`ClientCore`] and transport in a [`Keeper`]
//! at the end of each frame (the `ImPark` schedule, after `Last`) and takes them back
//! before the next one starts (`ImUnpark`, before `First`). While parked, they are
//! driven by:
//! - every socket event: the keeper feeds it to its core at once, so an ACK answers a
//!   message, and a keepalive's round trip is measured, when the frame arrives;
//! - a Web Worker's timer (hidden pages do not throttle workers' timers), set to the
//!   cores' next deadline ([`ClientCore::poll_timeout`]), at most a second away:
//!   keepalives, QoS resends and losses, re-login attempts, connect timeouts.
//!
//! What the cores report while parked waits in them, and reaches the game as messages
//! in its next frame. A game has nothing to do for any of this.
//!
//! Parking swaps the components with placeholders kept from the previous frame, so it
//! allocates nothing after the first frame, and it bypasses change detection: a parked
//! frame is not a change.

use std::time::Duration;

use bevy::prelude::*;

use super::{ImTransport, ImUrl};
use crate::client::{ClientConfig, ClientCore};
use crate::transport::{LinkId, Transport, TransportError, TransportEvent};

/// The longest the keeper sleeps with clients parked, so a transport's own deadlines
/// (a connect timeout) are checked at least this often.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(1);

/// One parked client.
struct Slot {
    entity: Entity,
    core: ClientCore,
    transport: Box<dyn Transport>,
    url: String,
}

/// The clients while no frame runs, and the placeholders that stand in for them in
/// the world meanwhile.
#[derive(Default)]
pub(crate) struct Keeper {
    parked: Vec<Slot>,
    spare_cores: Vec<ClientCore>,
}

/// What stands in the world for a parked transport. Nothing runs between frames, so
/// nothing calls it; if something did, it sees a closed link.
struct Away;

impl Transport for Away {
    fn connect(&mut self, _link: LinkId, _url: &str) {}
    fn send(&mut self, _link: LinkId, _text: String) -> Result<(), TransportError> {
        Err(TransportError::NotOpen)
    }
    fn close(&mut self, _link: LinkId) {}
    fn poll(&mut self) -> Option<TransportEvent> {
        None
    }
}

type Parts<'w> = (
    Entity,
    &'w mut ClientCore,
    &'w mut ImTransport,
    &'w mut ImUrl,
);

impl Keeper {
    /// Whether clients are parked here now.
    pub(crate) fn is_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Takes every client's core, transport and URL out of `world`, leaving
    /// placeholders.
    pub(crate) fn park(&mut self, world: &mut World) {
        let mut clients = world.query::<Parts>();
        for (entity, mut core, mut transport, mut url) in clients.iter_mut(world) {
            let spare = self
                .spare_cores
                .pop()
                .unwrap_or_else(|| ClientCore::new(ClientConfig::default()));
            self.parked.push(Slot {
                entity,
                core: std::mem::replace(core.bypass_change_detection(), spare),
                transport: std::mem::replace(
                    &mut transport.bypass_change_detection().0,
                    Box::new(Away),
                ),
                url: std::mem::take(&mut url.bypass_change_detection().0),
            });
        }
    }

    /// Puts every parked client back into `world`. A client whose entity was
    /// despawned meanwhile (nothing between frames can) is dropped, closing its link.
    pub(crate) fn unpark(&mut self, world: &mut World) {
        let mut clients = world.query::<Parts>();
        for slot in self.parked.drain(..) {
            let Ok((_, mut core, mut transport, mut url)) = clients.get_mut(world, slot.entity)
            else {
                continue;
            };
            let spare = std::mem::replace(core.bypass_change_detection(), slot.core);
            self.spare_cores.push(spare);
            transport.bypass_change_detection().0 = slot.transport;
            url.bypass_change_detection().0 = slot.url;
        }
    }

    /// Runs the parked clients at `now` (on the clock of `Time<Real>::elapsed`): feeds
    /// their transports' events to their cores, runs the cores' timers, and hands what
    /// the cores queued to the transports. Returns how long it may sleep before the
    /// next call: until the earliest deadline, at most [`MAX_SLEEP`].
    pub(crate) fn drive(&mut self, now: Duration) -> Duration {
        let mut sleep = MAX_SLEEP;
        for slot in &mut self.parked {
            let Slot {
                core,
                transport,
                url,
                ..
            } = slot;
            // A flush can queue events at once (a connect to a bad URL fails on the
            // spot); a few rounds take those in too.
            for _ in 0..3 {
                let mut fed = false;
                while let Some(event) = transport.poll() {
                    core.on_transport_event(event, now);
                    fed = true;
                }
                core.tick(now);
                core.flush_into(transport.as_mut(), url);
                if !fed {
                    break;
                }
            }
            if let Some(due) = core.poll_timeout() {
                sleep = sleep.min(due.saturating_sub(now));
            }
        }
        sleep
    }
}

#[cfg(target_arch = "wasm32")]
pub(crate) use web::{park, unpark};

/// The browser's side: the keeper in a thread-local, woken by socket events and a
/// worker's timer.
#[cfg(target_arch = "wasm32")]
mod web {
    use std::cell::RefCell;
    use std::time::Duration;

    use bevy::platform::time::Instant;
    use bevy::prelude::*;
    use bevy::time::Real;
    use wasm_bindgen::JsCast;
    use wasm_bindgen::prelude::Closure;

    use super::Keeper;

    /// The worker: waits the delay the page posts (in ms, replacing any earlier one),
    /// then posts back.
    const WORKER_JS: &str = "let t; onmessage = (e) => { clearTimeout(t); \
                             t = setTimeout(() => postMessage(0), e.data); };";

    /// The clock of `Time<Real>::elapsed`, read between frames: the elapsed time at the
    /// last update, and the instant of that update.
    #[derive(Clone, Copy)]
    struct Clock {
        elapsed: Duration,
        at: Instant,
    }

    impl Clock {
        fn now(self) -> Duration {
            self.elapsed + self.at.elapsed()
        }
    }

    struct State {
        keeper: Keeper,
        clock: Option<Clock>,
        timer: Option<Timer>,
        /// When the armed timer fires, on the clock; `None` once it fired.
        armed: Option<Duration>,
    }

    /// The timer: a dedicated worker, or the page's own (throttled when hidden) if the
    /// page may not start workers from a blob (a strict Content-Security-Policy).
    enum Timer {
        Worker {
            worker: web_sys::Worker,
            _on_message: Closure<dyn FnMut(web_sys::MessageEvent)>,
        },
        Page {
            window: web_sys::Window,
            callback: Closure<dyn FnMut()>,
            handle: Option<i32>,
        },
    }

    thread_local! {
        static STATE: RefCell<State> = RefCell::new(State {
            keeper: Keeper::default(),
            clock: None,
            timer: None,
            armed: None,
        });
    }

    /// `ImUnpark`: the clients back into the world for the frame.
    pub(crate) fn unpark(world: &mut World) {
        STATE.with_borrow_mut(|state| state.keeper.unpark(world));
    }

    /// `ImPark`: the clients out of the world until the next frame, and the timer set.
    pub(crate) fn park(world: &mut World) {
        let time = world.resource::<Time<Real>>();
        let clock = time.last_update().map(|at| Clock {
            elapsed: time.elapsed(),
            at,
        });
        let armed = STATE.with_borrow_mut(|state| {
            state.clock = clock;
            state.keeper.park(world);
            if state.timer.is_none() {
                state.timer = Timer::start();
                crate::transport::set_socket_event_hook(wake);
            }
            let now = clock?.now();
            let sleep = state.keeper.drive(now);
            state.arm(now + sleep, now);
            Some(())
        });
        if armed.is_none() {
            debug!("bevy_im: no clock yet; the clients wait for the next frame");
        }
    }

    /// A socket event: runs the parked clients.
    fn wake() {
        run_parked(false);
    }

    /// The timer fired: runs the parked clients, and the timer is free to set again.
    fn on_timer() {
        run_parked(true);
    }

    /// Runs the parked clients, if they are parked (a frame is not running; as
    /// JavaScript runs one task at a time, one never is when this is called).
    fn run_parked(timer_fired: bool) {
        let _ = STATE.try_with(|cell| {
            let Ok(mut state) = cell.try_borrow_mut() else {
                return;
            };
            if timer_fired {
                state.armed = None;
            }
            let Some(clock) = state.clock else {
                return;
            };
            if !state.keeper.is_parked() {
                return;
            }
            let now = clock.now();
            let sleep = state.keeper.drive(now);
            state.arm(now + sleep, now);
        });
    }

    impl State {
        /// Sets the timer for `due`, unless it is already set for that time or earlier.
        fn arm(&mut self, due: Duration, now: Duration) {
            if self.armed.is_some_and(|armed| armed <= due && armed > now) {
                return;
            }
            let Some(timer) = &mut self.timer else {
                return;
            };
            timer.set(due.saturating_sub(now));
            self.armed = Some(due);
        }
    }

    impl Timer {
        fn start() -> Option<Timer> {
            match Self::worker() {
                Ok(timer) => Some(timer),
                Err(e) => {
                    warn!(
                        "bevy_im: no worker timer ({e:?}); a hidden tab's clients tick only \
                         as often as the browser lets the page's timers run"
                    );
                    let window = web_sys::window()?;
                    let callback = Closure::<dyn FnMut()>::new(on_timer);
                    Some(Timer::Page {
                        window,
                        callback,
                        handle: None,
                    })
                }
            }
        }

        fn worker() -> Result<Timer, wasm_bindgen::JsValue> {
            let parts = js_sys::Array::of1(&WORKER_JS.into());
            let options = web_sys::BlobPropertyBag::new();
            options.set_type("text/javascript");
            let blob = web_sys::Blob::new_with_str_sequence_and_options(&parts, &options)?;
            let url = web_sys::Url::create_object_url_with_blob(&blob)?;
            let worker = web_sys::Worker::new(&url);
            web_sys::Url::revoke_object_url(&url)?;
            let worker = worker?;
            let on_message =
                Closure::<dyn FnMut(web_sys::MessageEvent)>::new(|_: web_sys::MessageEvent| {
                    on_timer()
                });
            worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            Ok(Timer::Worker {
                worker,
                _on_message: on_message,
            })
        }

        fn set(&mut self, delay: Duration) {
            // Rounded up: a timer that fires early finds nothing due, and would
            // have to be set again for the remainder.
            let ms = delay.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            match self {
                Timer::Worker { worker, .. } => {
                    if let Err(e) = worker.post_message(&ms.into()) {
                        warn!("bevy_im: the timer worker refused a message: {e:?}");
                    }
                }
                Timer::Page {
                    window,
                    callback,
                    handle,
                } => {
                    if let Some(h) = handle.take() {
                        window.clear_timeout_with_handle(h);
                    }
                    *handle = window
                        .set_timeout_with_callback_and_timeout_and_arguments_0(
                            callback.as_ref().unchecked_ref(),
                            ms,
                        )
                        .ok();
                }
            }
        }
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use std::time::Duration;

    use super::{Keeper, MAX_SLEEP};
    use crate::client::{DataReceived, Outgoing};
    use crate::plugin::{ImClient, ImConfig};
    use crate::protocol::{Frame, wire};
    use crate::testing::ImTestApp;

    /// Ten minutes with no frame: the parked client keeps its session (a keepalive on
    /// every deadline) and ACKs each message when it arrives; the next frame hands the
    /// messages to the game and the game can send.
    #[test]
    fn parked_clients_keep_their_session_without_frames() {
        let mut t = ImTestApp::memory(ImConfig::new("ws://server/websocket"));
        t.login("alice");
        let mut keeper = Keeper::default();
        keeper.park(t.app.world_mut());
        assert!(keeper.is_parked());
        assert!(
            !t.core().is_logged_in(),
            "a placeholder stands in the world"
        );

        let start = t.now();
        let mut now = start;
        let (mut keepalives, mut acks, mut pushed) = (0, Vec::new(), Vec::new());
        while now < start + Duration::from_secs(600) {
            let sleep = keeper.drive(now);
            assert!(sleep <= MAX_SLEEP);
            for frame in t.wire() {
                match frame.ty {
                    wire::KEEP_ALIVE => {
                        keepalives += 1;
                        t.push(Frame::keepalive_response("alice"));
                    }
                    wire::RECEIVED => acks.push(frame.content().to_owned()),
                    other => panic!("unexpected frame type {other}"),
                }
            }
            if now >= start + Duration::from_secs(30) * pushed.len() as u32 {
                let frame =
                    Frame::data("bob", "alice", format!("m{}", pushed.len()), true, None, 0);
                pushed.push(frame.fp.clone().unwrap());
                t.push(frame);
                // Taken in and ACKed by the very next drive, at the same time.
                keeper.drive(now);
                continue;
            }
            now += sleep.max(Duration::from_millis(1));
        }
        // The default sense mode: a keepalive every 5 s.
        assert!(
            (115..=121).contains(&keepalives),
            "keepalives: {keepalives}"
        );
        assert_eq!(acks, pushed);

        keeper.unpark(t.app.world_mut());
        assert!(!keeper.is_parked());
        assert!(t.core().is_logged_in());
        t.advance(now - t.now());
        let received: Vec<String> = t
            .heard::<DataReceived>()
            .into_iter()
            .map(|d| d.fp.unwrap_or_default())
            .collect();
        assert_eq!(received, pushed);
        let sent = t.run(|mut im: ImClient| im.send(Outgoing::new("bob", "back")));
        assert!(sent.is_ok(), "{sent:?}");
    }
}
