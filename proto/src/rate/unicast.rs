//! A unicast stream's rate: AIMD on its receiver's NAKs (spec §7.4).

use std::time::{Duration, Instant};

/// How often a unicast stream's rate is adjusted.
pub const UNICAST_STEP: Duration = Duration::from_millis(100);
/// Loss over a step above which a unicast stream slows down.
pub const UNICAST_LOSS_TOLERATED: f64 = 0.01;
/// Factor a unicast stream's rate is multiplied by after a lossy step.
pub const UNICAST_DECREASE: f64 = 0.7;
/// Steps a unicast stream takes to climb from nothing to its cap when clean.
pub const UNICAST_CLIMB_STEPS: f64 = 16.0;

/// The rate of one unicast stream: additive increase while the receiver's NAKs ask
/// for little, multiplicative decrease when they ask for more than 1% of what was sent.
#[derive(Debug, Clone)]
pub struct UnicastRate {
    rate: f64,
    cap: f64,
    floor: f64,
    sent: u64,
    lost: u64,
    next_step: Instant,
}

impl UnicastRate {
    /// A stream capped at `cap_bps` that starts at a quarter of it.
    pub fn new(now: Instant, cap_bps: u64, floor_bps: u64) -> Self {
        let cap = cap_bps.max(floor_bps).max(1) as f64;
        Self {
            rate: (cap / 4.0).max(floor_bps as f64),
            cap,
            floor: floor_bps as f64,
            sent: 0,
            lost: 0,
            next_step: now + UNICAST_STEP,
        }
    }

    /// The current rate, bits/s.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Lowers or raises the cap (e.g. when the number of clients changes).
    pub fn set_cap(&mut self, cap_bps: u64) {
        self.cap = (cap_bps as f64).max(self.floor).max(1.0);
        self.rate = self.rate.min(self.cap);
    }

    /// Counts packets sent and packets newly NAKed.
    pub fn count(&mut self, sent: u64, lost: u64) {
        self.sent += sent;
        self.lost += lost;
    }

    /// Adjusts the rate when a step is due; returns the new rate when it changed.
    pub fn poll(&mut self, now: Instant) -> Option<u64> {
        if now < self.next_step {
            return None;
        }
        self.next_step = now + UNICAST_STEP;
        let (sent, lost) = (
            std::mem::take(&mut self.sent),
            std::mem::take(&mut self.lost),
        );
        if sent == 0 {
            return None;
        }
        let old = self.rate;
        self.rate = if lost as f64 > UNICAST_LOSS_TOLERATED * sent as f64 {
            old * UNICAST_DECREASE
        } else {
            old + self.cap / UNICAST_CLIMB_STEPS
        }
        .clamp(self.floor, self.cap);
        (self.rate != old).then(|| self.rate())
    }
}
