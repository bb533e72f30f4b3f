//! Unit tests of channel choice, reports, adaptation and unicast rates.

use super::*;
use crate::wire::Report;
use std::time::{Duration, Instant};

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
fn an_average_is_not_steered_by_a_few_extreme_reports() {
    let now = Instant::now();
    let memory = Duration::from_secs(30);
    let mut avg = RateController::new(AdaptMode::Avg, 1_000_000, 1_000_000_000, 50_000_000);
    // Ten receivers losing half at 50M (20 Mbit/s got through each, 1000-byte
    // datagrams), and one claiming a million times what the channel sent.
    for id in 0..10 {
        avg.handle_report(now, &report(id, 2500, 2500), 1000);
    }
    avg.handle_report(now, &report(99, 4_000_000_000, 0), 1000);
    let mut t = now;
    for _ in 0..40 {
        t += ADAPT_STEP;
        avg.poll(t, memory);
    }
    assert!((avg.rate() as f64 - 20e6).abs() < 0.5e6, "{}", avg.rate());
    // Without the trim and the cap the liar alone would have lifted it far above.
}

#[test]
fn an_adaptive_channel_keeps_at_most_its_bound_of_receivers() {
    let now = Instant::now();
    let mut min = RateController::new(AdaptMode::Min, 1_000_000, 100_000_000, 50_000_000);
    for id in 0..ADAPT_MAX_RECEIVERS as u32 {
        min.handle_report(now, &report(id, 6250, 0), 1000);
    }
    // One more, losing everything, is not counted while the table is full.
    min.handle_report(now, &report(u32::MAX, 1, 100_000), 1000);
    let first = min.poll(now, Duration::from_secs(30)).unwrap();
    assert!(first > 50_000_000, "{first}");
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

#[test]
fn membership_is_bounded() {
    // T9: a million forged ids cannot grow it (nor the group-size estimate) without end.
    let now = Instant::now();
    let mut m = Membership::default();
    for id in 0..10_000 {
        m.heard(id, now);
    }
    assert_eq!(m.len() as usize, MAX_MEMBERS);
    m.heard(3, now + Duration::from_secs(1)); // a known one is still refreshed
    assert_eq!(
        m.prune(now + Duration::from_millis(1500), Duration::from_secs(1)),
        1
    );
}
