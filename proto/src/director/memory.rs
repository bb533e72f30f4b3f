//! What a director remembers to refuse replays (T21, T36): the last sequence
//! of server sessions gone (tombstones), and the look-ups it answered lately.
//! Both tables are bounded and forget in the order they learned.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a dead session's last sequence is kept: its heartbeats replayed
/// within this list nothing (after a director restart, T21 stays open).
pub const TOMBSTONE_MEMORY: Duration = Duration::from_secs(3600);
/// Most tombstones kept (the oldest go first).
pub const MAX_TOMBSTONES: usize = 4096;
/// A look-up repeated sooner than this (same source, same nonce) is a replay
/// and gets no answer; later it is a retry (the answer may have been lost),
/// answered again but counted nowhere. Its nonce from another source is a
/// replay at any time within `LOOKUP_MEMORY`.
pub const LOOKUP_REPEAT: Duration = Duration::from_millis(500);
/// How long a look-up's nonce (and the source it came from) is remembered.
pub const LOOKUP_MEMORY: Duration = Duration::from_secs(60);
/// Most look-ups remembered (the oldest go first).
pub const MAX_LOOKUPS: usize = 8192;

/// A bounded map that forgets its oldest entries first, and those older than
/// its memory.
pub(super) struct Recent<K, V> {
    entries: HashMap<K, (V, Instant)>,
    order: VecDeque<(K, Instant)>,
    memory: Duration,
    most: usize,
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
    pub(super) fn new(memory: Duration, most: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            memory,
            most,
        }
    }

    /// The value of `key` and when it was put, if remembered.
    pub(super) fn get(&self, key: &K) -> Option<&(V, Instant)> {
        self.entries.get(key)
    }

    /// Remembers `value` for `key` from `now`, forgetting what is too old or too many.
    pub(super) fn put(&mut self, now: Instant, key: K, value: V) {
        self.entries.insert(key.clone(), (value, now));
        self.order.push_back((key, now));
        while let Some((oldest, at)) = self.order.front().cloned() {
            let expired = now.saturating_duration_since(at) >= self.memory;
            if !expired && self.order.len() <= self.most {
                break;
            }
            self.order.pop_front();
            // Only the entry put at that time: a later put of the key stays.
            if self.entries.get(&oldest).is_some_and(|(_, put)| *put == at) {
                self.entries.remove(&oldest);
            }
        }
    }

    /// Forgets `key`.
    pub(super) fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Entries remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Dead sessions' last heartbeat sequences, by session id.
pub(super) type Tombstones = Recent<u32, u64>;
/// Look-ups answered lately: the source of each nonce.
pub(super) type RecentLookups = Recent<u64, SocketAddr>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_forgets_the_oldest_and_the_expired_and_stays_bounded() {
        let t0 = Instant::now();
        let mut t: Recent<u32, u32> = Recent::new(Duration::from_secs(10), 3);
        for k in 0..5 {
            t.put(t0, k, k * 10);
        }
        assert_eq!(t.len(), 3);
        assert!(t.get(&0).is_none() && t.get(&4).is_some());
        t.put(t0 + Duration::from_secs(5), 2, 99);
        t.put(t0 + Duration::from_secs(11), 7, 70);
        // 2 was put again at 5 s: only it and 7 are young enough.
        assert_eq!(t.get(&2).map(|(v, _)| *v), Some(99));
        assert!(t.get(&3).is_none() && t.get(&4).is_none());
        for k in 100..100_000 {
            t.put(t0 + Duration::from_secs(11), k, 0);
        }
        assert!(t.len() <= 3 && t.order.len() <= 4);
    }
}
