//! When receivers report (spec §7.2).

use std::time::{Duration, Instant};

/// Reports take at most this share of a channel's packet rate, all receivers together.
pub const REPORT_SHARE: f64 = 0.005;
/// Shortest mean interval between one receiver's reports.
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Mean interval between one receiver's reports in a group of `group_size` on a
/// channel of `rate_bps` with datagrams of `datagram_len` bytes: the whole group's
/// reports stay within `REPORT_SHARE` of the channel's packets.
pub fn report_interval(group_size: u32, rate_bps: u64, datagram_len: usize) -> Duration {
    let packets_per_sec = rate_bps.max(1) as f64 / 8.0 / datagram_len.max(1) as f64;
    let secs = group_size.max(1) as f64 / (REPORT_SHARE * packets_per_sec);
    Duration::from_secs_f64(secs.min(3600.0)).max(MIN_REPORT_INTERVAL)
}

/// When a receiver reports: at a random point in [0.5, 1.5] of the mean interval after
/// its last report, the interval taken afresh whenever asked, so that a group-size
/// estimate that grows pushes pending reports back (RTCP's timer reconsideration).
#[derive(Debug, Clone, Copy)]
pub struct ReportTimer {
    last: Instant,
    factor: f64,
}

impl ReportTimer {
    /// A timer started at `now`; `uniform` in [0, 1) draws the first report's place.
    pub fn new(now: Instant, uniform: f64) -> Self {
        Self {
            last: now,
            factor: 0.5 + uniform,
        }
    }

    /// When the next report is due with mean interval `interval`.
    pub fn due(&self, interval: Duration) -> Instant {
        self.last + interval.mul_f64(self.factor)
    }

    /// True, and restarts the timer with `uniform` for the next draw, when a report is due.
    pub fn fire(&mut self, now: Instant, interval: Duration, uniform: f64) -> bool {
        if now < self.due(interval) {
            return false;
        }
        self.last = now;
        self.factor = 0.5 + uniform;
        true
    }

    /// When the last report went out (or the timer started).
    pub fn last(&self) -> Instant {
        self.last
    }
}
