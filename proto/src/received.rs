//! Which packets of an archive a receiver holds: a bitset with a running count.

use std::ops::Range;

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
        if len % 64 != 0 {
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
        fn random_bytes_never_panic(len in 0u32..5000, bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Some(m) = ReceivedMap::from_bytes(len, &bytes) {
                prop_assert!(m.count() <= len);
            }
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
