//! An in-process transport for tests: the client side is a [`Transport`], the other
//! side a [`MemoryPeer`] that a test drives as the server, with faults on demand.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{LinkId, Transport, TransportConfig, TransportError, TransportEvent};

#[derive(Debug, Default)]
struct Shared {
    /// Events waiting for the client's `poll`.
    to_client: VecDeque<TransportEvent>,
    /// Frames the client sent on the open link, waiting for the peer.
    to_peer: VecDeque<String>,
    /// Every URL the client connected to, with its link.
    connects: Vec<(LinkId, String)>,
    /// The link the client most recently connected, and whether it is open.
    link: Option<LinkId>,
    open: bool,
    refuse: bool,
    hold_connects: bool,
    stalled: bool,
    held_in: VecDeque<String>,
    held_out: VecDeque<String>,
    corrupt_next: bool,
    closes: usize,
}

/// The client half of an in-memory link. Create it with [`MemoryTransport::pair`].
#[derive(Debug)]
pub struct MemoryTransport {
    shared: Arc<Mutex<Shared>>,
    config: TransportConfig,
}

/// The server half of an in-memory link, driven by a test.
///
/// Cheap to clone; clones drive the same link.
#[derive(Debug, Clone)]
pub struct MemoryPeer {
    shared: Arc<Mutex<Shared>>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A test that panicked while holding the lock leaves plain data behind; keep going.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryTransport {
    /// A connected pair with the default configuration.
    pub fn pair() -> (Self, MemoryPeer) {
        Self::pair_with(TransportConfig::default())
    }

    /// A connected pair; `config.max_frame_bytes` is enforced on both directions.
    pub fn pair_with(config: TransportConfig) -> (Self, MemoryPeer) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        (
            Self {
                shared: shared.clone(),
                config,
            },
            MemoryPeer { shared },
        )
    }
}

impl Transport for MemoryTransport {
    fn connect(&mut self, link: LinkId, url: &str) {
        let mut s = lock(&self.shared);
        s.connects.push((link, url.to_owned()));
        if let Some(old) = s.link {
            s.to_client.push_back(TransportEvent::Closed {
                link: old,
                code: None,
                reason: "replaced by a new link".into(),
            });
        }
        s.link = Some(link);
        s.open = false;
        s.to_peer.clear();
        s.held_in.clear();
        s.held_out.clear();
        if s.refuse {
            s.to_client.push_back(TransportEvent::Error {
                link,
                error: TransportError::Refused("memory peer refuses connections".into()),
            });
            s.to_client.push_back(TransportEvent::Closed {
                link,
                code: None,
                reason: "connection refused".into(),
            });
            s.link = None;
        } else if !s.hold_connects {
            s.open = true;
            s.to_client.push_back(TransportEvent::Opened { link });
        }
    }

    fn send(&mut self, link: LinkId, text: String) -> Result<(), TransportError> {
        let mut s = lock(&self.shared);
        if s.link != Some(link) || !s.open {
            return Err(TransportError::NotOpen);
        }
        if text.len() > self.config.max_frame_bytes {
            return Err(TransportError::FrameTooLarge {
                len: text.len(),
                limit: self.config.max_frame_bytes,
            });
        }
        if s.stalled {
            s.held_out.push_back(text);
        } else {
            s.to_peer.push_back(text);
        }
        Ok(())
    }

    fn close(&mut self, link: LinkId) {
        let mut s = lock(&self.shared);
        if s.link == Some(link) {
            // A link still waiting for `accept` is closed as well: it never opens.
            s.link = None;
            s.open = false;
            s.closes += 1;
            s.to_client.push_back(TransportEvent::Closed {
                link,
                code: Some(1000),
                reason: "closed by client".into(),
            });
        }
    }

    fn poll(&mut self) -> Option<TransportEvent> {
        lock(&self.shared).to_client.pop_front()
    }
}

impl MemoryPeer {
    /// Takes every frame the client has sent since the last call.
    pub fn take_sent(&self) -> Vec<String> {
        lock(&self.shared).to_peer.drain(..).collect()
    }

    /// Sends a text frame to the client on the open link. Returns false, and
    /// delivers nothing, when no link is open.
    pub fn push_text(&self, text: impl Into<String>) -> bool {
        let mut s = lock(&self.shared);
        let Some(link) = s.link.filter(|_| s.open) else {
            return false;
        };
        let mut text = text.into();
        if std::mem::take(&mut s.corrupt_next) {
            text.truncate(text.len() / 2);
            text.push_str("\u{fffd}garbage");
        }
        if s.stalled {
            s.held_in.push_back(text);
        } else {
            s.to_client.push_back(TransportEvent::Text { link, text });
        }
        true
    }

    /// Accepts a connect that [`hold_connects`](Self::hold_connects) kept waiting.
    pub fn accept(&self) -> bool {
        let mut s = lock(&self.shared);
        match s.link {
            Some(link) if !s.open => {
                s.open = true;
                s.to_client.push_back(TransportEvent::Opened { link });
                true
            }
            _ => false,
        }
    }

    /// Closes the link from the server side with a close frame.
    pub fn close(&self, code: u16, reason: &str) {
        let mut s = lock(&self.shared);
        if let Some(link) = s.link.filter(|_| s.open) {
            s.open = false;
            s.link = None;
            s.to_client.push_back(TransportEvent::Closed {
                link,
                code: Some(code),
                reason: reason.into(),
            });
        }
    }

    /// Fault: the link dies without a close frame.
    pub fn drop_link(&self) {
        let mut s = lock(&self.shared);
        if let Some(link) = s.link.filter(|_| s.open) {
            s.open = false;
            s.link = None;
            s.to_client.push_back(TransportEvent::Error {
                link,
                error: TransportError::Protocol("connection reset".into()),
            });
            s.to_client.push_back(TransportEvent::Closed {
                link,
                code: None,
                reason: "connection reset".into(),
            });
        }
    }

    /// Fault: while stalled nothing moves in either direction (the link stays open);
    /// when the stall ends, what was held moves on in order.
    pub fn stall(&self, stalled: bool) {
        let mut s = lock(&self.shared);
        s.stalled = stalled;
        if !stalled {
            let out: Vec<_> = s.held_out.drain(..).collect();
            s.to_peer.extend(out);
            if let Some(link) = s.link.filter(|_| s.open) {
                let held: Vec<_> = s.held_in.drain(..).collect();
                s.to_client.extend(
                    held.into_iter()
                        .map(|text| TransportEvent::Text { link, text }),
                );
            }
        }
    }

    /// Fault: the next frame pushed to the client arrives mangled.
    pub fn corrupt_next(&self) {
        lock(&self.shared).corrupt_next = true;
    }

    /// Fault: connects fail with [`TransportError::Refused`] while set.
    pub fn refuse_connects(&self, refuse: bool) {
        lock(&self.shared).refuse = refuse;
    }

    /// While set, connects wait for [`accept`](Self::accept) instead of opening at once.
    pub fn hold_connects(&self, hold: bool) {
        lock(&self.shared).hold_connects = hold;
    }

    /// Every connect the client made, oldest first.
    pub fn connects(&self) -> Vec<(LinkId, String)> {
        lock(&self.shared).connects.clone()
    }

    /// Whether a link is open now.
    pub fn is_open(&self) -> bool {
        lock(&self.shared).open
    }

    /// How many times the client closed a link.
    pub fn client_closes(&self) -> usize {
        lock(&self.shared).closes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(t: &mut MemoryTransport) -> Vec<TransportEvent> {
        std::iter::from_fn(|| t.poll()).collect()
    }

    #[test]
    fn frames_move_both_ways_in_order() {
        let (mut t, peer) = MemoryTransport::pair();
        t.connect(LinkId(1), "mem://");
        assert_eq!(drain(&mut t), [TransportEvent::Opened { link: LinkId(1) }]);
        for i in 0..3 {
            t.send(LinkId(1), format!("c{i}")).unwrap();
            assert!(peer.push_text(format!("s{i}")));
        }
        assert_eq!(peer.take_sent(), ["c0", "c1", "c2"]);
        let texts: Vec<_> = drain(&mut t)
            .into_iter()
            .map(|e| match e {
                TransportEvent::Text { text, .. } => text,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(texts, ["s0", "s1", "s2"]);
    }

    #[test]
    fn a_stale_link_cannot_send() {
        let (mut t, _peer) = MemoryTransport::pair();
        t.connect(LinkId(1), "mem://");
        t.connect(LinkId(2), "mem://");
        assert_eq!(t.send(LinkId(1), "x".into()), Err(TransportError::NotOpen));
        assert!(t.send(LinkId(2), "x".into()).is_ok());
    }

    #[test]
    fn oversize_frames_are_refused_before_writing() {
        let (mut t, peer) = MemoryTransport::pair_with(TransportConfig {
            max_frame_bytes: 4,
            ..Default::default()
        });
        t.connect(LinkId(1), "mem://");
        assert_eq!(
            t.send(LinkId(1), "12345".into()),
            Err(TransportError::FrameTooLarge { len: 5, limit: 4 })
        );
        assert!(peer.take_sent().is_empty());
    }

    #[test]
    fn a_stall_holds_frames_until_it_ends() {
        let (mut t, peer) = MemoryTransport::pair();
        t.connect(LinkId(1), "mem://");
        drain(&mut t);
        peer.stall(true);
        t.send(LinkId(1), "out".into()).unwrap();
        peer.push_text("in");
        assert!(peer.take_sent().is_empty());
        assert!(drain(&mut t).is_empty());
        peer.stall(false);
        assert_eq!(peer.take_sent(), ["out"]);
        assert_eq!(drain(&mut t).len(), 1);
    }

    #[test]
    fn a_held_link_closed_by_the_client_never_opens() {
        let (mut t, peer) = MemoryTransport::pair();
        peer.hold_connects(true);
        t.connect(LinkId(1), "mem://");
        t.close(LinkId(1));
        assert!(!peer.accept());
        assert_eq!(
            drain(&mut t),
            [TransportEvent::Closed {
                link: LinkId(1),
                code: Some(1000),
                reason: "closed by client".into()
            }]
        );
        t.connect(LinkId(2), "mem://");
        t.connect(LinkId(3), "mem://");
        assert!(peer.accept());
        let ev = drain(&mut t);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(matches!(
            ev[0],
            TransportEvent::Closed {
                link: LinkId(2),
                ..
            }
        ));
        assert_eq!(ev[1], TransportEvent::Opened { link: LinkId(3) });
    }

    #[test]
    fn drop_and_refuse_are_reported() {
        let (mut t, peer) = MemoryTransport::pair();
        t.connect(LinkId(1), "mem://");
        peer.drop_link();
        let ev = drain(&mut t);
        assert!(matches!(
            ev.last(),
            Some(TransportEvent::Closed { code: None, .. })
        ));
        peer.refuse_connects(true);
        t.connect(LinkId(2), "mem://");
        let ev = drain(&mut t);
        assert!(matches!(
            ev[0],
            TransportEvent::Error {
                error: TransportError::Refused(_),
                ..
            }
        ));
    }
}
