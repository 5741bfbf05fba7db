//! The wasm32 transport: the browser's WebSocket through ewebsock.
//!
//! ewebsock's `WsSender` holds an `Rc` of the JS socket and is not `Send`, so the senders
//! live in a thread-local table keyed by transport instance and link; [`WebTransport`]
//! itself holds only channels and plain data, and is `Send + Sync` like every
//! [`Transport`]. ewebsock calls back from the browser's event loop into a closure that
//! only forwards what happened into a crossbeam channel; [`Transport::poll`] turns that
//! into [`TransportEvent`]s.
//!
//! A hidden tab gets no frames (`requestAnimationFrame` stops) or few (timers run once
//! a second, then once a minute), so the plugin does not wait for frames to use this
//! transport: between frames it keeps the client's core and this transport parked, and
//! runs them on every socket event (the callback calls the hook the plugin installs
//! after queueing the event) and on a Web Worker's timer, which hidden pages do not
//! throttle. Keepalives and ACKs go on, and round trips are timed on arrival. The
//! README's Web section has the measurements.
//!
//! What the browser does not tell: the close code and reason of a server's close frame,
//! and why a connect failed (refused, TLS, rejected handshake all look the same). So on
//! wasm `Closed::code` is always `None`, and a connect that fails before opening is
//! reported as [`TransportError::Refused`] with the browser's message.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};

use bevy::platform::time::Instant;
use crossbeam_channel::{Receiver, Sender};
use ewebsock::{WsEvent, WsMessage, WsSender};

use super::{LinkId, Transport, TransportConfig, TransportError, TransportEvent};

/// Numbers the transports of the page, to key the socket table.
static INSTANCE_SEQ: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The open sockets of every [`WebTransport`] on this thread.
    static SOCKETS: RefCell<HashMap<(u64, LinkId), WsSender>> = RefCell::new(HashMap::new());
    /// Called after every socket event is queued (the plugin's between-frames driver).
    static SOCKET_EVENT_HOOK: std::cell::Cell<Option<fn()>> = const { std::cell::Cell::new(None) };
}

/// Has `hook` called from the browser's event loop after each socket event of every
/// [`WebTransport`] on this thread is queued for [`poll`](Transport::poll): the plugin
/// uses it to take frames in as they arrive, between frames.
pub(crate) fn set_socket_event_hook(hook: fn()) {
    SOCKET_EVENT_HOOK.set(Some(hook));
}

/// Runs `f` on the socket table; `None` if the table is unavailable (being torn down, or
/// already borrowed by a caller further up).
fn with_sockets<R>(f: impl FnOnce(&mut HashMap<(u64, LinkId), WsSender>) -> R) -> Option<R> {
    SOCKETS
        .try_with(|table| table.try_borrow_mut().ok().map(|mut t| f(&mut t)))
        .ok()
        .flatten()
}

/// What ewebsock's callback saw, forwarded as is.
#[derive(Debug)]
enum Raw {
    Opened,
    Text(String),
    /// A binary frame of this many bytes; the callback asked ewebsock to close.
    Binary(usize),
    /// A text frame of this many bytes, over the limit; the callback asked to close.
    TooLarge(usize),
    Error(String),
    Closed,
}

#[derive(Debug)]
struct LinkState {
    started: Instant,
    opened: bool,
}

/// A WebSocket client transport for wasm32 in the browser, over ewebsock.
///
/// The connect timeout is checked in [`poll`](Transport::poll), so it fires on the first
/// poll after it expires. The frame limit is enforced on receive (the frame is reported
/// as [`TransportError::FrameTooLarge`] and the link closed) and on send.
#[derive(Debug)]
pub struct WebTransport {
    instance: u64,
    config: TransportConfig,
    raw_tx: Sender<(LinkId, Raw)>,
    raw_rx: Receiver<(LinkId, Raw)>,
    out: VecDeque<TransportEvent>,
    /// Links whose `Closed` has not been queued yet.
    links: HashMap<LinkId, LinkState>,
    /// The link most recently connected, unless it was closed since.
    current: Option<LinkId>,
    /// The link that may send: `current`, once its `Opened` was polled.
    open: Option<LinkId>,
}

impl Default for WebTransport {
    fn default() -> Self {
        Self::new(TransportConfig::default())
    }
}

impl WebTransport {
    /// A transport with `config`. `extra_roots_der` is ignored: the browser decides
    /// which certificates it trusts.
    pub fn new(config: TransportConfig) -> Self {
        let (raw_tx, raw_rx) = crossbeam_channel::unbounded();
        Self {
            instance: INSTANCE_SEQ.fetch_add(1, Ordering::Relaxed),
            config,
            raw_tx,
            raw_rx,
            out: VecDeque::new(),
            links: HashMap::new(),
            current: None,
            open: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// Closes the socket of `link` now and queues its `Closed`.
    fn finish(&mut self, link: LinkId, reason: String) {
        if self.links.remove(&link).is_none() {
            return;
        }
        let key = (self.instance, link);
        // Dropped outside the table borrow; dropping a sender closes its socket.
        let sender = with_sockets(|t| t.remove(&key)).flatten();
        if let Some(mut sender) = sender {
            sender.close();
        }
        self.out.push_back(TransportEvent::Closed {
            link,
            code: None,
            reason,
        });
    }

    fn fail(&mut self, link: LinkId, error: TransportError) {
        let reason = error.to_string();
        self.out.push_back(TransportEvent::Error { link, error });
        self.finish(link, reason);
    }

    /// Turns what the callbacks forwarded into events, and fires connect timeouts.
    fn pump(&mut self) {
        while let Ok((link, raw)) = self.raw_rx.try_recv() {
            let Some(state) = self.links.get_mut(&link) else {
                // A link already finished: whatever its socket still says is stale.
                continue;
            };
            match raw {
                Raw::Opened => {
                    state.opened = true;
                    self.out.push_back(TransportEvent::Opened { link });
                }
                Raw::Text(text) => self.out.push_back(TransportEvent::Text { link, text }),
                Raw::Binary(len) => self.fail(link, TransportError::BinaryFrame(len)),
                Raw::TooLarge(len) => {
                    let limit = self.config.max_frame_bytes;
                    self.fail(link, TransportError::FrameTooLarge { len, limit });
                }
                Raw::Error(message) => {
                    let error = if state.opened {
                        TransportError::Protocol(format!("WebSocket error: {message}"))
                    } else {
                        TransportError::Refused(format!(
                            "the browser could not open the WebSocket ({message})"
                        ))
                    };
                    self.fail(link, error);
                }
                Raw::Closed => {
                    if state.opened {
                        self.finish(link, "closed by the server".into());
                    } else {
                        let why = "the connection closed before opening".to_owned();
                        self.fail(link, TransportError::Refused(why));
                    }
                }
            }
        }
        let limit = self.config.connect_timeout;
        let late: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, s)| !s.opened && s.started.elapsed() >= limit)
            .map(|(link, _)| *link)
            .collect();
        for link in late {
            self.fail(link, TransportError::TimedOut(limit));
        }
    }

    fn observe(&mut self, event: &TransportEvent) {
        match event {
            TransportEvent::Opened { link } => {
                if self.current == Some(*link) {
                    self.open = Some(*link);
                }
            }
            TransportEvent::Closed { link, .. } => {
                if self.open == Some(*link) {
                    self.open = None;
                }
                if self.current == Some(*link) {
                    self.current = None;
                }
            }
            TransportEvent::Text { .. } | TransportEvent::Error { .. } => {}
        }
    }
}

impl Transport for WebTransport {
    fn connect(&mut self, link: LinkId, url: &str) {
        let old: Vec<LinkId> = self.links.keys().copied().collect();
        for l in old {
            self.finish(l, "replaced by a new link".into());
        }
        self.current = Some(link);
        self.open = None;
        self.links.insert(
            link,
            LinkState {
                started: Instant::now(),
                opened: false,
            },
        );
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("ws://") || lower.starts_with("wss://")) {
            let why = format!("{url}: the scheme must be ws or wss");
            return self.fail(link, TransportError::InvalidUrl(why));
        }
        let tx = self.raw_tx.clone();
        let limit = self.config.max_frame_bytes;
        let on_event = move |event: WsEvent| {
            let (raw, flow) = match event {
                WsEvent::Opened => (Raw::Opened, ControlFlow::Continue(())),
                WsEvent::Message(WsMessage::Text(text)) if text.len() > limit => {
                    (Raw::TooLarge(text.len()), ControlFlow::Break(()))
                }
                WsEvent::Message(WsMessage::Text(text)) => {
                    (Raw::Text(text), ControlFlow::Continue(()))
                }
                WsEvent::Message(WsMessage::Binary(data)) => {
                    (Raw::Binary(data.len()), ControlFlow::Break(()))
                }
                WsEvent::Message(
                    WsMessage::Unknown(_) | WsMessage::Ping(_) | WsMessage::Pong(_),
                ) => return ControlFlow::Continue(()),
                WsEvent::Error(message) => (Raw::Error(message), ControlFlow::Continue(())),
                WsEvent::Closed => (Raw::Closed, ControlFlow::Continue(())),
            };
            // The receiver goes with the transport; then nobody is listening.
            let _ = tx.send((link, raw));
            if let Some(hook) = SOCKET_EVENT_HOOK.get() {
                hook();
            }
            flow
        };
        let options = ewebsock::Options {
            max_incoming_frame_size: limit,
            ..Default::default()
        };
        match ewebsock::ws_connect(url.to_owned(), options, Box::new(on_event)) {
            Ok(sender) => {
                let key = (self.instance, link);
                let stored = with_sockets(|t| t.insert(key, sender).is_none());
                if stored.is_none() {
                    let why = "the socket table is unavailable".to_owned();
                    self.fail(link, TransportError::Protocol(why));
                }
            }
            Err(e) => self.fail(link, TransportError::InvalidUrl(format!("{url}: {e}"))),
        }
    }

    fn send(&mut self, link: LinkId, text: String) -> Result<(), TransportError> {
        if self.open != Some(link) || !self.links.contains_key(&link) {
            return Err(TransportError::NotOpen);
        }
        let limit = self.config.max_frame_bytes;
        if text.len() > limit {
            return Err(TransportError::FrameTooLarge {
                len: text.len(),
                limit,
            });
        }
        let key = (self.instance, link);
        let sent = with_sockets(|t| match t.get_mut(&key) {
            Some(sender) => {
                sender.send(WsMessage::Text(text));
                true
            }
            None => false,
        });
        match sent {
            Some(true) => Ok(()),
            Some(false) => Err(TransportError::NotOpen),
            None => Err(TransportError::Protocol(
                "the socket table is unavailable".into(),
            )),
        }
    }

    fn close(&mut self, link: LinkId) {
        if self.current == Some(link) {
            self.current = None;
            self.open = None;
        }
        self.finish(link, "closed by client".into());
    }

    fn poll(&mut self) -> Option<TransportEvent> {
        if self.out.is_empty() {
            self.pump();
        }
        let event = self.out.pop_front()?;
        self.observe(&event);
        Some(event)
    }
}

impl Drop for WebTransport {
    fn drop(&mut self) {
        let instance = self.instance;
        let senders = with_sockets(|t| {
            let keys: Vec<_> = t.keys().filter(|(i, _)| *i == instance).copied().collect();
            keys.into_iter()
                .filter_map(|k| t.remove(&k))
                .collect::<Vec<_>>()
        });
        for mut sender in senders.into_iter().flatten() {
            sender.close();
        }
    }
}
