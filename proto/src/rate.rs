//! Rates: which channel a receiver takes (step down / step up), when receivers
//! report, how a server channel adapts its rate to reports, and how a unicast
//! stream adapts to NAKs. All time is passed in; `PROTOCOL.md` §7 is the spec.

use crate::wire::Report;
use std::collections::HashMap;
use std::time::{Duration, Instant};

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

/// Which receivers a server has heard lately, to estimate the group size.
#[derive(Debug, Default, Clone)]
pub struct Membership {
    heard: HashMap<u32, Instant>,
}

impl Membership {
    /// Notes that receiver `id` was heard at `now`.
    pub fn heard(&mut self, id: u32, now: Instant) {
        self.heard.insert(id, now);
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

/// Whose reports set an adaptive channel's rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptMode {
    /// The slowest receiver's.
    Min,
    /// The average of the receivers'.
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
        let goodput = report.arrived as f64 * datagram_len as f64 * 8.0
            / (report.interval_ms as f64 / 1000.0);
        let rate = self.rate;
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
                let n = self.receivers.len();
                if n == 0 {
                    f64::INFINITY
                } else {
                    capacities.sum::<f64>() / n as f64
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_the_fastest_channel_within_the_cap() {
        let rates = [20_000_000, 500_000_000, 100_000_000];
        assert_eq!(ChannelSelector::new(&rates, None).channel(), 1);
        assert_eq!(ChannelSelector::new(&rates, Some(150_000_000)).channel(), 2);
        assert_eq!(ChannelSelector::new(&rates, Some(1_000)).channel(), 0);
        assert_eq!(
            ChannelSelector::new(&rates, Some(150_000_000)).allowed(),
            &[0, 2]
        );
    }

    /// Feeds `n` samples of 1000 loop packets with `loss`; returns the moves made.
    fn feed(s: &mut ChannelSelector, totals: &mut (u64, u64), n: u32, loss: f64) -> Vec<usize> {
        let mut moves = Vec::new();
        for _ in 0..n {
            totals.0 += 1000;
            totals.1 += (1000.0 * (1.0 - loss)) as u64;
            if let Some(c) = s.sample(totals.0, totals.1) {
                moves.push(c);
                *totals = (0, 0); // a new channel's counters
                s.sample(0, 0);
            }
        }
        moves
    }

    #[test]
    fn steps_down_after_sustained_loss_and_up_after_a_clean_period_with_hysteresis() {
        let mut s = ChannelSelector::new(&[20, 100, 500], None);
        let mut t = (0, 0);
        s.sample(0, 0);
        assert_eq!(feed(&mut s, &mut t, 2, 0.10), vec![]); // not yet sustained
        assert_eq!(feed(&mut s, &mut t, 1, 0.10), vec![1]);
        assert_eq!(feed(&mut s, &mut t, 3, 0.10), vec![0]);
        assert_eq!(feed(&mut s, &mut t, 5, 0.10), vec![]); // nowhere slower to go
        assert_eq!(feed(&mut s, &mut t, 9, 0.0), vec![]);
        assert_eq!(feed(&mut s, &mut t, 1, 0.0), vec![1]); // 10 clean samples
        // Loss right after the step up: back down, and the next step up waits twice as long.
        assert_eq!(feed(&mut s, &mut t, 3, 0.2), vec![0]);
        assert_eq!(s.step_up_after(), 20);
        assert_eq!(feed(&mut s, &mut t, 19, 0.0), vec![]);
        assert_eq!(feed(&mut s, &mut t, 1, 0.0), vec![1]);
        // Moderate loss (between the thresholds) neither steps down nor counts as clean.
        assert_eq!(feed(&mut s, &mut t, 30, 0.03), vec![]);
    }

    #[test]
    fn report_intervals_grow_with_the_group_and_reconsider() {
        let small = report_interval(1, 100_000_000, 1472);
        assert_eq!(small, MIN_REPORT_INTERVAL);
        let big = report_interval(1000, 100_000_000, 1472);
        // 1000 receivers at 0.5% of ~8500 packets/s: about 23.5 s each.
        assert!((23.0..24.0).contains(&big.as_secs_f64()), "{big:?}");
        let start = Instant::now();
        let mut t = ReportTimer::new(start, 0.5); // due at 1.0 × interval
        assert!(!t.fire(start + Duration::from_millis(900), small, 0.0));
        // The group grew before the timer fired: the report moves back.
        assert!(!t.fire(start + Duration::from_secs(2), big, 0.0));
        assert!(t.fire(start + big, big, 0.0));
    }

    fn report(id: u32, arrived: u32, lost: u32) -> Report {
        Report {
            receiver_id: id,
            arrived,
            lost,
            interval_ms: 1000,
            ..Report::default()
        }
    }

    #[test]
    fn adaptive_rate_moves_smoothly_towards_the_slowest_or_the_average() {
        let now = Instant::now();
        let memory = Duration::from_secs(30);
        // 1000-byte datagrams: 1000 arrived per second is 8 Mbit/s.
        let mut min = RateController::new(AdaptMode::Min, 1_000_000, 100_000_000, 50_000_000);
        let mut avg = RateController::new(AdaptMode::Avg, 1_000_000, 100_000_000, 50_000_000);
        for c in [&mut min, &mut avg] {
            c.handle_report(now, &report(1, 1000, 500), 1000); // lossy: 8 Mbit/s got through
            c.handle_report(now, &report(2, 4000, 1000), 1000); // lossy: 32 Mbit/s
        }
        let first = min.poll(now, memory).unwrap();
        assert_eq!(first, 50_000_000 - (0.3 * 42_000_000.0) as u64);
        assert_eq!(min.poll(now, memory), None, "one step per ADAPT_STEP");
        let mut t = now;
        for _ in 0..40 {
            t += ADAPT_STEP;
            min.poll(t, Duration::from_secs(3600));
            avg.poll(t, Duration::from_secs(3600));
        }
        assert!((min.rate() as f64 - 8e6).abs() < 0.1e6, "{}", min.rate());
        assert!((avg.rate() as f64 - 20e6).abs() < 0.1e6, "{}", avg.rate());
        // Reports expire: with none left the rate holds.
        assert_eq!(min.poll(t + memory * 200, memory), None);
    }

    #[test]
    fn loss_that_does_not_fall_with_the_rate_is_not_taken_for_overload() {
        // A receiver that loses 30% at any rate (a bad radio link), 1000-byte datagrams.
        let mut c = RateController::new(AdaptMode::Min, 1_000_000, 100_000_000, 100_000_000);
        let mut t = Instant::now();
        let mut lowest = c.rate();
        for _ in 0..60 {
            let packets_per_sec = c.rate() as f64 / 8000.0;
            let arrived = (0.7 * packets_per_sec) as u32;
            let lost = (0.3 * packets_per_sec) as u32;
            c.handle_report(t, &report(1, arrived, lost), 1000);
            t += ADAPT_STEP;
            c.poll(t, Duration::from_secs(30));
            lowest = lowest.min(c.rate());
        }
        // It slows down until slowing down is seen not to help, then returns to the top.
        assert!(lowest >= 50_000_000, "fell to {lowest}");
        assert_eq!(c.rate(), 100_000_000);
    }

    #[test]
    fn unicast_rate_climbs_when_clean_and_backs_off_on_loss() {
        let now = Instant::now();
        let mut r = UnicastRate::new(now, 160_000_000, 1_000_000);
        assert_eq!(r.rate(), 40_000_000);
        r.count(1000, 0);
        assert_eq!(r.poll(now + UNICAST_STEP), Some(50_000_000));
        r.count(1000, 50);
        assert_eq!(r.poll(now + UNICAST_STEP * 2), Some(35_000_000));
        assert_eq!(r.poll(now + UNICAST_STEP * 3), None, "nothing sent");
        r.set_cap(20_000_000);
        assert_eq!(r.rate(), 20_000_000);
    }
}
