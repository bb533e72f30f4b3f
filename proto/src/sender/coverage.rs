//! What a relay's carousel holds of its archive while it is still receiving it
//! (spec §2.4, cut-through): it loops only the packets held, sends each newly
//! held one at once (fresh), repairs only what it holds, and says in STATUS how
//! many it lacks.

use crate::received::ReceivedMap;
use std::collections::VecDeque;
use std::ops::Range;

/// Most newly held packets waiting to be sent at once; past it the oldest are
/// left to the loop, which brings them anyway.
pub const MAX_FRESH: usize = 8192;

/// The packets a carousel may send.
#[derive(Debug, Clone)]
pub(super) struct Coverage {
    held: ReceivedMap,
    fresh: VecDeque<u32>,
}

impl Coverage {
    /// Nothing held yet of `packet_count` packets.
    pub(super) fn new(packet_count: u32) -> Self {
        Self {
            held: ReceivedMap::new(packet_count),
            fresh: VecDeque::new(),
        }
    }

    /// Marks `range` held; those newly held are queued to be sent at once.
    pub(super) fn hold(&mut self, range: Range<u32>) {
        for k in range.start..range.end.min(self.held.len()) {
            if self.held.insert(k) {
                if self.fresh.len() == MAX_FRESH {
                    self.fresh.pop_front();
                }
                self.fresh.push_back(k);
            }
        }
    }

    /// Packets not held yet.
    pub(super) fn lacking(&self) -> u32 {
        self.held.len() - self.held.count()
    }

    /// Whether every packet is held and every fresh one sent: the carousel is an
    /// ordinary one from then on.
    pub(super) fn is_done(&self) -> bool {
        self.held.is_complete() && self.fresh.is_empty()
    }

    /// The oldest newly held packet not yet sent.
    pub(super) fn next_fresh(&self) -> Option<u32> {
        self.fresh.front().copied()
    }

    /// Forgets the oldest fresh packet (it was sent).
    pub(super) fn sent_fresh(&mut self) {
        self.fresh.pop_front();
    }

    /// Whether every packet of `range` is held (a block parity can be made of).
    pub(super) fn holds_all(&self, range: Range<u32>) -> bool {
        self.held.count_in(range.clone()) == range.len() as u32
    }

    /// The first held packet at or after `from`, going round past the end.
    pub(super) fn next_held(&self, from: u32) -> Option<u32> {
        let n = self.held.len();
        (self.held.first_held_in(from.min(n)..n))
            .or_else(|| self.held.first_held_in(0..from.min(n)))
    }

    /// The held runs within `range`, at most `max` of them (work bounded per NAK, T3).
    pub(super) fn held_runs(&self, range: Range<u32>, max: usize) -> Vec<Range<u32>> {
        self.held.held_runs(range, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_packets_are_found_going_round_and_in_runs() {
        let mut c = Coverage::new(300);
        assert_eq!(c.next_held(0), None);
        assert_eq!(c.lacking(), 300);
        c.hold(10..20);
        c.hold(200..201);
        assert_eq!(c.next_held(0), Some(10));
        assert_eq!(c.next_held(15), Some(15));
        assert_eq!(c.next_held(20), Some(200));
        assert_eq!(c.next_held(201), Some(10), "round past the end");
        assert_eq!(c.held_runs(0..300, 8), vec![10..20, 200..201]);
        assert_eq!(c.held_runs(15..250, 1), vec![15..20]);
        assert!(c.holds_all(10..20) && !c.holds_all(9..20));
        // Fresh in the order held, each once.
        c.hold(10..21);
        let fresh: Vec<u32> = std::iter::from_fn(|| {
            let k = c.next_fresh();
            c.sent_fresh();
            k
        })
        .collect();
        assert_eq!(fresh, (10..20).chain([200, 20]).collect::<Vec<_>>());
        c.hold(0..300);
        assert_eq!(c.lacking(), 0);
        assert!(!c.is_done(), "fresh packets still to send");
    }
}
