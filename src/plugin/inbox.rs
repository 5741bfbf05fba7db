//! A bounded inbox that keeps received data until the game drains it.

use std::collections::VecDeque;

use bevy::prelude::Component;

use crate::client::DataReceived;

/// Every [`DataReceived`] is also kept here, so a game that does not read messages
/// every frame (a menu, a loading screen) loses nothing. Bounded: past `capacity`
/// the oldest entry is dropped and counted in [`overflowed`](Self::overflowed).
#[derive(Component, Debug)]
pub struct ImInbox {
    items: VecDeque<DataReceived>,
    capacity: usize,
    overflowed: u64,
}

impl ImInbox {
    /// An empty inbox holding at most `capacity` messages.
    pub fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity,
            overflowed: 0,
        }
    }

    pub(crate) fn push(&mut self, item: DataReceived) {
        if self.capacity == 0 {
            self.overflowed += 1;
            return;
        }
        if self.items.len() == self.capacity {
            self.items.pop_front();
            self.overflowed += 1;
        }
        self.items.push_back(item);
    }

    /// Takes every message, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = DataReceived> + '_ {
        self.items.drain(..)
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many messages were dropped because the inbox was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> DataReceived {
        DataReceived {
            client: bevy::prelude::Entity::PLACEHOLDER,
            fp: None,
            from: "bob".into(),
            content: n.to_string(),
            typeu: 0,
            room: None,
            mid: None,
            sent_at_ms: None,
        }
    }

    #[test]
    fn keeps_the_newest_and_counts_what_it_dropped() {
        let mut inbox = ImInbox::new(3);
        for n in 0..5 {
            inbox.push(msg(n));
        }
        assert_eq!(inbox.overflowed(), 2);
        let kept: Vec<_> = inbox.drain().map(|m| m.content).collect();
        assert_eq!(kept, ["2", "3", "4"]);
        assert!(inbox.is_empty());
    }
}
