//! An adaptive channel's rate, from its receivers' reports (spec §7.3).

use crate::wire::Report;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Whose reports set an adaptive channel's rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptMode {
    /// The slowest receiver's.
    Min,
    /// The average of the receivers', leaving out the highest and lowest tenth.
    Avg,
}

/// How often an adaptive channel moves its rate.
pub const ADAPT_STEP: Duration = Duration::from_millis(500);
/// Share of the way to the target rate taken per step (smooth changes).
pub const ADAPT_GAIN: f64 = 0.3;
/// Loss a receiver may report and still be taken as keeping up.
pub const ADAPT_LOSS_TOLERATED: f64 = 0.02;
/// A receiver keeping up is credited with this much more than the current rate, so
/// the rate probes upward.
pub const ADAPT_PROBE: f64 = 1.25;
/// Share of the receivers left out at each end of the average (`AdaptMode::Avg`),
/// so that a few extreme reports do not steer it.
pub const ADAPT_TRIM: f64 = 0.1;
/// Most receivers one adaptive channel keeps reports of; new ones beyond are not
/// counted until older ones are forgotten.
pub const ADAPT_MAX_RECEIVERS: usize = crate::rate::MAX_MEMBERS;

/// The rate of one adaptive channel, set from its receivers' reports.
#[derive(Debug, Clone)]
pub struct RateController {
    mode: AdaptMode,
    min_bps: f64,
    max_bps: f64,
    rate: f64,
    /// Per receiver: what its reports told.
    receivers: HashMap<u32, ReceiverRate>,
    next_step: Option<Instant>,
}

/// What an adaptive channel learned of one receiver.
#[derive(Debug, Clone, Copy)]
struct ReceiverRate {
    /// When it last reported.
    at: Instant,
    /// The rate it can take, bits/s.
    capacity: f64,
    /// Loss it shows whatever the rate (e.g. a radio link): not a sign of overload.
    base_loss: f64,
    /// (rate, goodput) when its loss first went above what it may lose.
    lossy_since: Option<(f64, f64)>,
}

impl RateController {
    /// A controller starting at `start_bps`, kept within [`min_bps`, `max_bps`].
    pub fn new(mode: AdaptMode, min_bps: u64, max_bps: u64, start_bps: u64) -> Self {
        let (min_bps, max_bps) = (min_bps.max(1) as f64, max_bps.max(min_bps) as f64);
        Self {
            mode,
            min_bps,
            max_bps,
            rate: (start_bps as f64).clamp(min_bps, max_bps),
            receivers: HashMap::new(),
            next_step: None,
        }
    }

    /// The current rate, bits/s.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Takes a receiver's report: a receiver that lost more than it may (beyond the
    /// loss it shows at any rate) is credited with what got through; one that kept
    /// up, with more than the current rate.
    pub fn handle_report(&mut self, now: Instant, report: &Report, datagram_len: usize) {
        let sent = report.arrived as u64 + report.lost as u64;
        if report.interval_ms == 0 || sent == 0 {
            return;
        }
        let loss = report.lost as f64 / sent as f64;
        let rate = self.rate;
        // No receiver gets more than the channel sent: a larger claim is capped.
        let goodput = (report.arrived as f64 * datagram_len as f64 * 8.0
            / (report.interval_ms as f64 / 1000.0))
            .min(rate);
        if self.receivers.len() >= ADAPT_MAX_RECEIVERS
            && !self.receivers.contains_key(&report.receiver_id)
        {
            return;
        }
        let r = self
            .receivers
            .entry(report.receiver_id)
            .or_insert(ReceiverRate {
                at: now,
                capacity: rate,
                base_loss: 0.0,
                lossy_since: None,
            });
        r.at = now;
        r.capacity = if loss <= r.base_loss + ADAPT_LOSS_TOLERATED {
            r.lossy_since = None;
            r.base_loss = r.base_loss.min(loss);
            goodput.max(rate) * ADAPT_PROBE
        } else {
            match r.lossy_since {
                // Overload: slowing down leaves what gets through about the same. Here
                // it fell with the rate instead, so the loss does not come from the
                // rate: learn it as this receiver's own and stop slowing down for it.
                Some((since_rate, since_goodput))
                    if rate <= 0.8 * since_rate
                        && goodput < since_goodput * (1.0 + rate / since_rate) / 2.0 =>
                {
                    r.base_loss = loss;
                    r.lossy_since = None;
                    rate * ADAPT_PROBE
                }
                Some(_) => goodput,
                None => {
                    r.lossy_since = Some((rate, goodput));
                    goodput
                }
            }
        };
    }

    /// Moves the rate a step towards the target when a step is due; returns the new
    /// rate when it changed by more than 1%. Reports older than `memory` are dropped.
    pub fn poll(&mut self, now: Instant, memory: Duration) -> Option<u64> {
        if self.next_step.is_some_and(|at| now < at) {
            return None;
        }
        self.next_step = Some(now + ADAPT_STEP);
        self.receivers
            .retain(|_, r| now.saturating_duration_since(r.at) < memory);
        let capacities = self.receivers.values().map(|r| r.capacity);
        let target = match self.mode {
            AdaptMode::Min => capacities.fold(f64::INFINITY, f64::min),
            AdaptMode::Avg => {
                let mut sorted: Vec<f64> = capacities.collect();
                sorted.sort_by(f64::total_cmp);
                let cut = (sorted.len() as f64 * ADAPT_TRIM) as usize;
                let kept = &sorted[cut..sorted.len() - cut];
                if kept.is_empty() {
                    f64::INFINITY
                } else {
                    kept.iter().sum::<f64>() / kept.len() as f64
                }
            }
        };
        if !target.is_finite() {
            return None; // no receiver reported: hold the rate
        }
        let old = self.rate;
        self.rate = (old + ADAPT_GAIN * (target - old)).clamp(self.min_bps, self.max_bps);
        ((self.rate - old).abs() > 0.01 * old).then(|| self.rate())
    }
}
