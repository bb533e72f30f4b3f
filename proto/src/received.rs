//! Which packets of an archive a receiver holds: a bitset with a running count.

use std::ops::Range;

/// Indices of the packets of `payload_size` bytes that carry any of body bytes `bytes`.
pub fn packets_covering(bytes: Range<u64>, payload_size: u32) -> Range<u32> {
    let p = payload_size.max(1) as u64;
    (bytes.start / p) as u32..bytes.end.div_ceil(p) as u32
}

/// Bitset over packet indices with O(1) count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMap {
    words: Vec<u64>,
    len: u32,
    count: u32,
}

impl ReceivedMap {
    /// An empty map for `len` packets.
    pub fn new(len: u32) -> Self {
        Self {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            count: 0,
        }
    }

    /// Number of packets the map covers.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the map covers no packets.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of packets held.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True when every packet is held.
    pub fn is_complete(&self) -> bool {
        self.count == self.len
    }

    /// Whether packet `i` is held (false for out-of-range indices).
    pub fn contains(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Marks packet `i` held; returns true if it was missing. Out-of-range indices are ignored.
    pub fn insert(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let word = &mut self.words[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        self.count += 1;
        true
    }

    /// Marks the packets in `range` missing again; returns how many were held.
    pub fn remove_range(&mut self, range: Range<u32>) -> u32 {
        let mut removed = 0;
        for i in range.start..range.end.min(self.len) {
            let word = &mut self.words[(i / 64) as usize];
            let bit = 1u64 << (i % 64);
            if *word & bit != 0 {
                *word &= !bit;
                removed += 1;
            }
        }
        self.count -= removed;
        removed
    }

    /// Whether every packet in `range` is held.
    pub fn contains_range(&self, range: Range<u32>) -> bool {
        range.into_iter().all(|i| self.contains(i))
    }

    /// Runs of missing packets within `range`, in order, at most `max` of them.
    pub fn missing_runs(&self, range: Range<u32>, max: usize) -> Vec<Range<u32>> {
        self.missing_runs_except(range, None, max)
    }

    /// Runs of packets within `range` missing here and not in `except`, at most `max`;
    /// scans a 64-packet word per step.
    pub fn missing_runs_except(
        &self,
        range: Range<u32>,
        except: Option<&ReceivedMap>,
        max: usize,
    ) -> Vec<Range<u32>> {
        let mut runs: Vec<Range<u32>> = Vec::new();
        let end = range.end.min(self.len);
        let mut i = range.start;
        while i < end && runs.len() < max {
            let w = (i / 64) as usize;
            let mut wanted =
                !self.words[w] & !except.map_or(0, |e| e.words.get(w).copied().unwrap_or(0));
            wanted &= u64::MAX << (i % 64);
            let word_end = (w as u32 + 1) * 64;
            if word_end > end {
                wanted &= (1u64 << (end % 64)) - 1;
            }
            if wanted == 0 {
                i = word_end;
                continue;
            }
            let start = w as u32 * 64 + wanted.trailing_zeros();
            let run_end = (start + (wanted >> (start % 64)).trailing_ones()).min(end);
            match runs.last_mut() {
                Some(last) if last.end == start => last.end = run_end,
                _ => {
                    if runs.len() == max {
                        break;
                    }
                    runs.push(start..run_end)
                }
            }
            i = run_end;
        }
        runs
    }

    /// The held bits of the word holding packet `i`, from `i` on and below
    /// `end` (bit k = packet 64·word + k), and where the next word starts.
    fn held_bits(&self, i: u32, end: u32) -> (u64, u32) {
        let w = (i / 64) as usize;
        let word_end = (w as u32 + 1) * 64;
        let mut bits = self.words[w] & (u64::MAX << (i % 64));
        if word_end > end {
            bits &= (1u64 << (end % 64)) - 1;
        }
        (bits, word_end)
    }

    /// Number of packets held within `range`; counts a 64-packet word per step.
    pub fn count_in(&self, range: Range<u32>) -> u32 {
        let end = range.end.min(self.len);
        let (mut i, mut held) = (range.start, 0);
        while i < end {
            let (bits, next) = self.held_bits(i, end);
            held += bits.count_ones();
            i = next;
        }
        held
    }

    /// The first packet held within `range`; scans a 64-packet word per step.
    pub fn first_held_in(&self, range: Range<u32>) -> Option<u32> {
        let end = range.end.min(self.len);
        let mut i = range.start;
        while i < end {
            let (bits, next) = self.held_bits(i, end);
            if bits != 0 {
                return Some(next - 64 + bits.trailing_zeros());
            }
            i = next;
        }
        None
    }

    /// Runs of held packets within `range`, in order, at most `max` of them;
    /// scans a 64-packet word per step.
    pub fn held_runs(&self, range: Range<u32>, max: usize) -> Vec<Range<u32>> {
        let end = range.end.min(self.len);
        let (mut runs, mut at) = (Vec::new(), range.start);
        while runs.len() < max {
            let Some(start) = self.first_held_in(at..end) else {
                break;
            };
            // The first missing run's start is exact (its end may not be).
            let stop = (self.missing_runs(start..end, 1).first()).map_or(end, |r| r.start);
            runs.push(start..stop);
            at = stop;
        }
        runs
    }

    /// Marks every packet in `range` held.
    pub fn insert_range(&mut self, range: Range<u32>) {
        for i in range.start..range.end.min(self.len) {
            self.insert(i);
        }
    }

    /// Forgets every packet.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.count = 0;
    }

    /// The map as little-endian bytes, bit i = packet i (for persisting).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate((self.len as usize).div_ceil(8));
        out
    }

    /// Rebuilds a map of `len` packets from `to_bytes` output; None if the size is wrong
    /// or bits beyond `len` are set.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != (len as usize).div_ceil(8) {
            return None;
        }
        let mut map = Self::new(len);
        for (w, chunk) in map.words.iter_mut().zip(bytes.chunks(8)) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_le_bytes(buf);
        }
        if !len.is_multiple_of(64) {
            let last = map.words.last().copied().unwrap_or(0);
            if last >> (len % 64) != 0 {
                return None;
            }
        }
        map.count = map.words.iter().map(|w| w.count_ones()).sum();
        Some(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bytes_round_trip(len in 0u32..5000, picks in proptest::collection::vec(any::<u32>(), 0..300)) {
            let mut m = ReceivedMap::new(len);
            for p in picks { if len > 0 { m.insert(p % len); } }
            let back = ReceivedMap::from_bytes(len, &m.to_bytes()).unwrap();
            prop_assert_eq!(back, m);
        }

        #[test]
        fn count_in_matches_a_count_of_each_packet(len in 0u32..700, picks in proptest::collection::vec(any::<u32>(), 0..300), a in 0u32..800, b in 0u32..800) {
            let mut m = ReceivedMap::new(len);
            for p in picks { if len > 0 { m.insert(p % len); } }
            let range = a.min(b)..a.max(b);
            let slow = range.clone().filter(|&i| m.contains(i)).count() as u32;
            prop_assert_eq!(m.count_in(range), slow);
        }

        #[test]
        fn random_bytes_never_panic(len in 0u32..5000, bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Some(m) = ReceivedMap::from_bytes(len, &bytes) {
                prop_assert!(m.count() <= len);
            }
        }
    }

    #[test]
    fn missing_runs_are_found_in_order_and_capped() {
        let mut m = ReceivedMap::new(300);
        for i in (0..300).filter(|i| !(10..13).contains(i) && *i != 100 && !(250..300).contains(i))
        {
            m.insert(i);
        }
        assert_eq!(m.missing_runs(0..300, 10), vec![10..13, 100..101, 250..300]);
        assert_eq!(m.missing_runs(11..260, 2), vec![11..13, 100..101]);
        assert_eq!(m.missing_runs(0..10, 5), vec![]);
        let mut asked = ReceivedMap::new(300);
        asked.insert_range(11..12);
        asked.insert_range(260..290);
        assert_eq!(
            m.missing_runs_except(0..300, Some(&asked), 10),
            vec![10..11, 12..13, 100..101, 250..260, 290..300]
        );
    }

    proptest! {
        #[test]
        fn word_scan_matches_a_plain_scan(len in 1u32..700, held in proptest::collection::vec(any::<u32>(), 0..700),
                                          asked in proptest::collection::vec(any::<u32>(), 0..100), a in any::<u32>(), b in any::<u32>()) {
            let mut m = ReceivedMap::new(len);
            held.iter().for_each(|&i| { m.insert(i % len); });
            let mut e = ReceivedMap::new(len);
            asked.iter().for_each(|&i| { e.insert(i % len); });
            let (lo, hi) = ((a % (len + 1)).min(b % (len + 1)), (a % (len + 1)).max(b % (len + 1)));
            let plain: Vec<u32> = (lo..hi).filter(|&i| !m.contains(i) && !e.contains(i)).collect();
            let scanned: Vec<u32> = m.missing_runs_except(lo..hi, Some(&e), usize::MAX).into_iter().flatten().collect();
            prop_assert_eq!(scanned, plain);
        }

        #[test]
        fn held_runs_and_first_held_match_a_plain_scan(len in 1u32..700, held in proptest::collection::vec(any::<u32>(), 0..700),
                                                       a in any::<u32>(), b in any::<u32>()) {
            let mut m = ReceivedMap::new(len);
            held.iter().for_each(|&i| { m.insert(i % len); });
            let (lo, hi) = ((a % (len + 1)).min(b % (len + 1)), (a % (len + 1)).max(b % (len + 1)));
            let plain: Vec<u32> = (lo..hi).filter(|&i| m.contains(i)).collect();
            let runs = m.held_runs(lo..hi, usize::MAX);
            prop_assert!(runs.windows(2).all(|w| w[0].end < w[1].start), "runs apart: {:?}", runs);
            prop_assert_eq!(runs.into_iter().flatten().collect::<Vec<u32>>(), plain.clone());
            prop_assert_eq!(m.first_held_in(lo..hi), plain.first().copied());
        }
    }

    #[test]
    fn insert_remove_and_count() {
        let mut m = ReceivedMap::new(100);
        assert!(m.insert(5));
        assert!(!m.insert(5));
        assert!(!m.insert(100));
        for i in 0..100 {
            m.insert(i);
        }
        assert!(m.is_complete());
        assert_eq!(m.remove_range(10..20), 10);
        assert_eq!(m.count(), 90);
        assert!(!m.contains_range(5..15));
        assert!(m.contains_range(20..100));
    }
}
