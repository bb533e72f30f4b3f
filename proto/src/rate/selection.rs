//! Which channel a receiver takes: step down on loss, up when clean (spec §7.1).

use std::time::Duration;

/// How often a receiver measures its channel's loss to choose a channel.
pub const SELECT_SAMPLE: Duration = Duration::from_secs(1);
/// Loss above this in a sample counts towards stepping down.
pub const STEP_DOWN_LOSS: f64 = 0.05;
/// Lossy samples in a row that make a receiver step down.
pub const STEP_DOWN_AFTER: u32 = 3;
/// Loss below this in a sample counts as clean.
pub const STEP_UP_LOSS: f64 = 0.01;
/// Clean samples in a row before the first step up.
pub const STEP_UP_AFTER: u32 = 10;
/// Most clean samples ever required before a step up (the wait doubles after a failed one).
pub const MAX_STEP_UP_AFTER: u32 = 80;
/// A sample with fewer loop packets than this says nothing about loss.
pub const MIN_SAMPLE_PACKETS: u64 = 50;

/// A receiver's choice among a file's channels: the fastest not above its cap to
/// start, one slower after sustained loss, one faster after a clean period that
/// doubles each time a step up had to be undone (hysteresis).
#[derive(Debug, Clone)]
pub struct ChannelSelector {
    /// Channel indices allowed, slowest first.
    allowed: Vec<usize>,
    /// Position in `allowed` of the current channel.
    position: usize,
    lossy: u32,
    clean: u32,
    up_after: u32,
    /// Samples since the last step up (None: no step up yet, or one that held).
    since_step_up: Option<u32>,
    base: Option<(u64, u64)>,
}

impl ChannelSelector {
    /// A selector over channels of `rates` (bits/s, in announce order) for a receiver
    /// that takes at most `max_rate` (None: no cap). With every channel above the cap,
    /// the slowest is allowed alone.
    pub fn new(rates: &[u64], max_rate: Option<u64>) -> Self {
        let mut allowed: Vec<usize> = (0..rates.len())
            .filter(|&i| max_rate.is_none_or(|cap| rates[i] <= cap))
            .collect();
        if allowed.is_empty() {
            allowed = (0..rates.len())
                .min_by_key(|&i| rates[i])
                .into_iter()
                .collect();
        }
        allowed.sort_by_key(|&i| (rates[i], i));
        Self {
            position: allowed.len().saturating_sub(1),
            allowed,
            lossy: 0,
            clean: 0,
            up_after: STEP_UP_AFTER,
            since_step_up: None,
            base: None,
        }
    }

    /// Index (in announce order) of the channel to be on.
    pub fn channel(&self) -> usize {
        self.allowed[self.position]
    }

    /// Channel indices a receiver may use, slowest first (for `--aggregate`).
    pub fn allowed(&self) -> &[usize] {
        &self.allowed
    }

    /// Clean samples now required before a step up.
    pub fn step_up_after(&self) -> u32 {
        self.up_after
    }

    /// Takes one sample of the current channel's cumulative counters (loop positions
    /// advanced, loop packets arrived), about every `SELECT_SAMPLE`. Returns the new
    /// channel index when the receiver should move.
    pub fn sample(&mut self, advanced: u64, arrived: u64) -> Option<usize> {
        let (base_advanced, base_arrived) = self.base.replace((advanced, arrived))?;
        let sent = advanced.saturating_sub(base_advanced);
        if sent < MIN_SAMPLE_PACKETS {
            return None;
        }
        let got = arrived.saturating_sub(base_arrived).min(sent);
        let loss = 1.0 - got as f64 / sent as f64;
        if let Some(n) = self.since_step_up.as_mut() {
            *n += 1;
        }
        if loss > STEP_DOWN_LOSS {
            self.lossy += 1;
            self.clean = 0;
        } else if loss < STEP_UP_LOSS {
            self.clean += 1;
            self.lossy = 0;
        } else {
            self.lossy = 0;
            self.clean = 0;
        }
        if self.lossy >= STEP_DOWN_AFTER && self.position > 0 {
            // Loss soon after a step up: the faster channel was too fast; wait longer next time.
            if self.since_step_up.is_some_and(|n| n <= self.up_after) {
                self.up_after = (self.up_after * 2).min(MAX_STEP_UP_AFTER);
            }
            self.since_step_up = None;
            return Some(self.move_to(self.position - 1));
        }
        if self.clean >= self.up_after && self.position + 1 < self.allowed.len() {
            self.since_step_up = Some(0);
            return Some(self.move_to(self.position + 1));
        }
        None
    }

    fn move_to(&mut self, position: usize) -> usize {
        self.position = position;
        self.lossy = 0;
        self.clean = 0;
        self.base = None; // the new channel's counters start afresh
        self.channel()
    }
}
