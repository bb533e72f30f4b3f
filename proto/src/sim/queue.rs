//! The simulated LAN's event queue.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// The event queue: time, then insertion order, so equal times stay deterministic.
pub(super) struct Queue<E> {
    heap: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: Vec<Option<E>>,
    free: Vec<usize>,
    seq: u64,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            events: Vec::new(),
            free: Vec::new(),
            seq: 0,
        }
    }
}

impl<E> Queue<E> {
    pub(super) fn push(&mut self, at: Duration, event: E) {
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

    pub(super) fn pop(&mut self) -> Option<(Duration, E)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        self.free.push(slot);
        Some((at, self.events[slot].take().expect("queued event")))
    }
}
