//! Which receivers a server has heard lately: the group size estimate.

use super::report_interval;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most receivers one channel's membership counts (the group-size estimate's ceiling).
pub const MAX_MEMBERS: usize = 4096;

/// Which receivers a server has heard lately, to estimate the group size.
#[derive(Debug, Default, Clone)]
pub struct Membership {
    heard: HashMap<u32, Instant>,
}

impl Membership {
    /// Notes that receiver `id` was heard at `now`.
    pub fn heard(&mut self, id: u32, now: Instant) {
        // Bounded: past `MAX_MEMBERS`, only receivers already known are refreshed.
        if self.heard.len() < MAX_MEMBERS || self.heard.contains_key(&id) {
            self.heard.insert(id, now);
        }
    }

    /// Forgets receivers not heard for `memory`; returns how many remain.
    pub fn prune(&mut self, now: Instant, memory: Duration) -> u32 {
        self.heard
            .retain(|_, at| now.saturating_duration_since(*at) < memory);
        self.heard.len() as u32
    }

    /// Receivers remembered.
    pub fn len(&self) -> u32 {
        self.heard.len() as u32
    }

    /// True when no receiver is remembered.
    pub fn is_empty(&self) -> bool {
        self.heard.is_empty()
    }
}

/// How long a server remembers a receiver: long enough for several of its reports.
pub fn membership_memory(group_size: u32, rate_bps: u64, datagram_len: usize) -> Duration {
    (report_interval(group_size, rate_bps, datagram_len) * 3).max(Duration::from_secs(30))
}
