//! Token-bucket pacer: holds a channel to its rate with bursts of a few milliseconds.

use std::time::{Duration, Instant};

/// Longest burst the pacer lets out at once, as time at the channel rate.
pub const BURST: Duration = Duration::from_millis(3);

/// A token bucket in bytes, refilled at the channel rate, capped at one burst.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// A pacer for `rate_bps` bits/s whose bursts hold at least two `datagram_len` datagrams.
    pub fn new(rate_bps: u64, datagram_len: usize, now: Instant) -> Self {
        let bytes_per_sec = rate_bps as f64 / 8.0;
        let capacity = (bytes_per_sec * BURST.as_secs_f64()).max(2.0 * datagram_len as f64);
        Self {
            bytes_per_sec,
            capacity,
            tokens: 0.0,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.bytes_per_sec).min(self.capacity);
        self.last = now;
    }

    /// Takes `len` bytes of tokens if the bucket holds them; returns whether it did.
    pub fn try_send(&mut self, now: Instant, len: usize) -> bool {
        self.refill(now);
        if self.tokens < len as f64 {
            return false;
        }
        self.tokens -= len as f64;
        true
    }

    /// When the bucket will hold `len` bytes of tokens again.
    pub fn ready_at(&self, len: usize) -> Instant {
        let missing = (len as f64 - self.tokens).max(0.0);
        // Round up, so that at the returned instant the tokens really are there.
        let nanos = (missing / self.bytes_per_sec * 1e9).ceil() as u64;
        self.last + Duration::from_nanos(nanos)
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
