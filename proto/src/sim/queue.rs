//! The simulated LAN's event queue.

use super::lan::Event;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// The event queue: time, then insertion order, so equal times stay deterministic.
#[derive(Default)]
pub(super) struct Queue {
    heap: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: Vec<Option<Event>>,
    free: Vec<usize>,
    seq: u64,
}

impl Queue {
    pub(super) fn push(&mut self, at: Duration, event: Event) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.events[slot] = Some(event);
                slot
            }
            None => {
                self.events.push(Some(event));
                self.events.len() - 1
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, slot)));
    }

    pub(super) fn pop(&mut self) -> Option<(Duration, Event)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        self.free.push(slot);
        Some((at, self.events[slot].take().expect("queued event")))
    }
}
