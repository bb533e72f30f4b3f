//! Pacer: holds a channel to its rate over time with bursts of about a millisecond.
//!
//! Two token buckets, as in a policer with a peak rate: the average bucket fills at the
//! channel rate and holds `CATCH_UP` worth, so time lost when the sender was not
//! scheduled is made up; the peak bucket fills at twice the rate and holds `BURST`
//! worth, so making up happens in bursts of at most a millisecond at up to twice the rate.

use std::time::{Duration, Instant};

/// Longest burst the pacer lets out at once, as time at the channel rate.
pub const BURST: Duration = Duration::from_millis(1);
/// How far behind the sender may fall (e.g. not scheduled) and still make it up.
pub const CATCH_UP: Duration = Duration::from_millis(20);
/// How much faster than the channel rate a burst may catch up.
const PEAK_FACTOR: f64 = 2.0;

/// A token bucket in bytes.
#[derive(Debug)]
struct Bucket {
    bytes_per_sec: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.bytes_per_sec).min(self.capacity);
        self.last = now;
    }

    fn ready_at(&self, len: usize) -> Instant {
        let missing = (len as f64 - self.tokens).max(0.0);
        // Round up, so that at the returned instant the tokens really are there.
        let nanos = (missing / self.bytes_per_sec * 1e9).ceil() as u64;
        self.last + Duration::from_nanos(nanos)
    }
}

/// The pacer of one channel.
#[derive(Debug)]
pub struct Pacer {
    average: Bucket,
    peak: Bucket,
}

impl Pacer {
    /// A pacer for `rate_bps` bits/s whose bursts hold at least two `datagram_len` datagrams.
    pub fn new(rate_bps: u64, datagram_len: usize, now: Instant) -> Self {
        let bytes_per_sec = rate_bps as f64 / 8.0;
        let burst = (bytes_per_sec * BURST.as_secs_f64()).max(2.0 * datagram_len as f64);
        let bucket = |bytes_per_sec: f64, capacity: f64| Bucket {
            bytes_per_sec,
            capacity,
            tokens: 0.0,
            last: now,
        };
        Self {
            average: bucket(
                bytes_per_sec,
                (bytes_per_sec * CATCH_UP.as_secs_f64()).max(burst),
            ),
            peak: bucket(bytes_per_sec * PEAK_FACTOR, burst),
        }
    }

    /// Datagrams of `datagram_len` bytes in one full burst: the batch size that keeps
    /// bursts within `BURST`.
    pub fn burst_datagrams(&self, datagram_len: usize) -> usize {
        ((self.peak.capacity / datagram_len.max(1) as f64) as usize).max(1)
    }

    /// Takes `len` bytes of tokens if both buckets hold them; returns whether it did.
    pub fn try_send(&mut self, now: Instant, len: usize) -> bool {
        self.average.refill(now);
        self.peak.refill(now);
        let len = len as f64;
        if self.average.tokens < len || self.peak.tokens < len {
            return false;
        }
        self.average.tokens -= len;
        self.peak.tokens -= len;
        true
    }

    /// When both buckets will hold `len` bytes of tokens again.
    pub fn ready_at(&self, len: usize) -> Instant {
        self.average.ready_at(len).max(self.peak.ready_at(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_rate_over_a_second_with_bounded_bursts() {
        let start = Instant::now();
        let mut pacer = Pacer::new(80_000_000, 1500, start); // 10 MB/s
        let mut sent = 0usize;
        let mut max_burst = 0usize;
        let mut now = start;
        while now < start + Duration::from_secs(1) {
            let mut burst = 0;
            while pacer.try_send(now, 1500) {
                burst += 1500;
            }
            sent += burst;
            max_burst = max_burst.max(burst);
            now = pacer.ready_at(1500).max(now + Duration::from_micros(700));
        }
        let rate = sent as f64;
        assert!(
            (rate - 10e6).abs() / 10e6 < 0.01,
            "sent {rate} bytes in 1 s"
        );
        assert!(
            max_burst as f64 <= 10e6 * BURST.as_secs_f64() + 1500.0,
            "burst {max_burst}"
        );
    }

    #[test]
    fn a_sender_woken_late_still_holds_the_rate_in_short_bursts() {
        let start = Instant::now();
        let mut pacer = Pacer::new(1_000_000_000, 1472, start); // 125 MB/s
        let burst_limit = 125e6 * BURST.as_secs_f64();
        let (mut sent, mut max_burst, mut now) = (0usize, 0usize, start);
        let mut late = 0u32;
        while now < start + Duration::from_secs(1) {
            let mut burst = 0;
            while pacer.try_send(now, 1472) {
                burst += 1472;
            }
            sent += burst;
            max_burst = max_burst.max(burst);
            // Like `serve`: wake when a GSO batch of 44 is due; every tenth wake-up
            // comes 3 ms late, as when other work holds the CPU.
            late += 1;
            let delay = if late.is_multiple_of(10) { 3000 } else { 0 };
            now = pacer.ready_at(44 * 1472).max(now) + Duration::from_micros(delay);
        }
        let rate = sent as f64;
        assert!(
            (rate - 125e6).abs() / 125e6 < 0.05,
            "sent {rate} bytes in 1 s"
        );
        assert!(
            max_burst as f64 <= burst_limit + 1472.0,
            "burst {max_burst}"
        );
    }

    #[test]
    fn tokens_are_there_at_ready_at_for_awkward_rates() {
        let start = Instant::now();
        for rate in [1_000_000_007u64, 999_999_937, 3_333_333_333, 80_000_001] {
            let mut pacer = Pacer::new(rate, 1472, start);
            let mut now = start;
            for _ in 0..10_000 {
                while pacer.try_send(now, 1472) {}
                now = pacer.ready_at(1472);
                assert!(
                    pacer.try_send(now, 1472),
                    "rate {rate}: no tokens at ready_at"
                );
            }
        }
    }
}
