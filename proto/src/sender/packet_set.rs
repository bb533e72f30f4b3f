//! The carousel's repair queue as a bit set.

/// A set of packet indices with O(1) insert and remove and a word-wise search for the
/// member whose natural loop turn is furthest away.
pub(super) struct PacketSet {
    words: Vec<u64>,
    len: u32,
    pub(super) count: u32,
}

impl PacketSet {
    pub(super) fn new(len: u32) -> Self {
        Self {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            count: 0,
        }
    }

    /// Adds every index in `range` (clipped to the set), a word at a time; returns
    /// how many were new. Work is one step per 64 indices, whatever is set.
    #[cfg(test)]
    pub(super) fn insert_range(&mut self, range: std::ops::Range<u32>) -> u32 {
        self.insert_range_up_to(range, u32::MAX)
    }

    /// Adds the indices of `range` (clipped to the set) from its start, a word at
    /// a time, until `limit` new ones were added; returns how many were new.
    pub(super) fn insert_range_up_to(&mut self, range: std::ops::Range<u32>, limit: u32) -> u32 {
        let (start, end) = (range.start.min(self.len), range.end.min(self.len));
        let mut added = 0;
        let mut i = start;
        while i < end && added < limit {
            let w = (i / 64) as usize;
            let lo = i % 64;
            let hi = (end - w as u32 * 64).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            let mut new = mask & !self.words[w];
            // Over the limit: keep the lowest new indices only.
            while new.count_ones() > limit - added {
                new &= !(1u64 << (63 - new.leading_zeros()));
            }
            added += new.count_ones();
            self.words[w] |= new;
            i = w as u32 * 64 + hi;
        }
        self.count += added;
        added
    }

    pub(super) fn remove(&mut self, i: u32) {
        let (w, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        if i < self.len && self.words[w] & bit != 0 {
            self.words[w] &= !bit;
            self.count -= 1;
        }
    }

    /// The member just before `position` going backwards (cyclically): the one the
    /// loop reaches last.
    pub(super) fn furthest_before(&self, position: u32) -> Option<u32> {
        if self.count == 0 {
            return None;
        }
        self.last_below(position)
            .or_else(|| self.last_below(self.len))
    }

    /// Highest member < `end`.
    pub(super) fn last_below(&self, end: u32) -> Option<u32> {
        let mut w = end as usize / 64;
        let mut mask = if end.is_multiple_of(64) {
            0
        } else {
            (1u64 << (end % 64)) - 1
        };
        loop {
            let bits = self.words.get(w).copied().unwrap_or(0) & mask;
            if bits != 0 {
                return Some(w as u32 * 64 + 63 - bits.leading_zeros());
            }
            if w == 0 {
                return None;
            }
            w -= 1;
            mask = u64::MAX;
        }
    }
}

#[cfg(test)]
mod packet_set_tests {
    use super::PacketSet;

    #[test]
    pub(super) fn furthest_turn_first_and_wraps() {
        let mut s = PacketSet::new(200);
        for i in [3, 64, 65, 130, 199] {
            s.insert_range(i..i + 1);
        }
        s.insert_range(64..65);
        assert_eq!(s.count, 5);
        let mut take = |position| {
            let found = s.furthest_before(position);
            found.inspect(|&i| s.remove(i))
        };
        assert_eq!(take(100), Some(65));
        assert_eq!(take(100), Some(64));
        assert_eq!(take(100), Some(3));
        assert_eq!(take(100), Some(199));
        assert_eq!(take(0), Some(130));
        assert_eq!(take(0), None);
    }

    #[test]
    fn ranges_are_inserted_a_word_at_a_time_and_counted_once() {
        let mut s = PacketSet::new(300);
        assert_eq!(s.insert_range(10..20), 10);
        assert_eq!(s.insert_range(15..140), 120);
        assert_eq!(s.insert_range(0..300), 300 - 130);
        assert_eq!(s.insert_range(250..1000), 0, "clipped to the set");
        assert_eq!(s.count, 300);
        let mut t = PacketSet::new(128);
        assert_eq!(t.insert_range(64..128), 64);
        assert_eq!(t.insert_range(0..64), 64);
        assert_eq!(t.count, 128);
        // Up to a limit: the lowest new indices first, old ones not counted.
        let mut u = PacketSet::new(300);
        u.insert_range(12..14);
        assert_eq!(u.insert_range_up_to(10..200, 5), 5);
        assert_eq!(
            (0..300)
                .filter(|&i| u.words[i / 64] >> (i % 64) & 1 == 1)
                .collect::<Vec<_>>(),
            vec![10, 11, 12, 13, 14, 15, 16]
        );
        assert_eq!(u.insert_range_up_to(60..200, 100), 100);
        assert_eq!(u.count, 107);
    }
}
