//! A min-heap of deadlines keyed by small integer ids: the driver's timer table.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Deadlines by id; rescheduling an id replaces its earlier deadline.
#[derive(Debug, Default)]
pub struct TimerHeap {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    generation: Vec<u64>,
}

impl TimerHeap {
    /// Sets timer `id` to fire at `at`, replacing any earlier setting.
    pub fn schedule(&mut self, id: usize, at: Instant) {
        if self.generation.len() <= id {
            self.generation.resize(id + 1, 0);
        }
        self.generation[id] += 1;
        self.heap.push(Reverse((at, id, self.generation[id])));
    }

    /// Pops one timer whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        while let Some(&Reverse((at, id, generation))) = self.heap.peek() {
            if self.generation[id] != generation {
                self.heap.pop(); // superseded by a later schedule
                continue;
            }
            if at > now {
                return None;
            }
            self.heap.pop();
            return Some(id);
        }
        None
    }

    /// The earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, id, generation))) = self.heap.peek() {
            if self.generation[id] == generation {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_order_and_reschedule_replaces() {
        let t = Instant::now();
        let mut h = TimerHeap::default();
        h.schedule(0, t + Duration::from_millis(5));
        h.schedule(1, t + Duration::from_millis(1));
        h.schedule(0, t + Duration::from_millis(2));
        assert_eq!(h.next_deadline(), Some(t + Duration::from_millis(1)));
        assert_eq!(h.pop_due(t), None);
        let later = t + Duration::from_millis(10);
        assert_eq!(h.pop_due(later), Some(1));
        assert_eq!(h.pop_due(later), Some(0));
        assert_eq!(h.pop_due(later), None);
        assert_eq!(h.next_deadline(), None);
    }
}
