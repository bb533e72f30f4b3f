//! A carousel taking NAKs (spec §6.3, §6.5): GRTT samples from their echoes,
//! and the copies and parity they ask for, within each source's repair budget.

use super::{
    Carousel, MAX_GRTT, MAX_NAK_SOURCES, MIN_SOURCE_BURST, NAK_SOURCE_ACTIVE, SAMPLES_KEPT,
    SOURCE_BURST_SECS,
};
use crate::wire;
use std::net::IpAddr;

/// Most runs of held packets a relay's carousel queues per NAK range (work per
/// NAK stays bounded, T3).
const MAX_HELD_RUNS: usize = 64;
use std::time::{Duration, Instant};

impl Carousel {
    /// Takes a decoded and verified NAK of this session from address `from` (see
    /// `handle_datagram`).
    pub fn handle_nak(&mut self, now: Instant, from: IpAddr, nak: &wire::Nak) -> u32 {
        self.peeked = None; // the repair set may change
        let in_range = (nak.ranges.iter())
            .all(|&(first, count)| first as u64 + count as u64 <= self.packet_count as u64)
            && (nak.blocks.iter()).all(|&(block, _)| block < self.parity.blocks().count());
        if nak.archive_id != self.archive_id || !in_range {
            self.stats.naks_dropped += 1;
            return 0;
        }
        self.stats.naks += 1;
        self.members.heard(nak.receiver_id, now);
        // Only an echo of a STATUS this carousel sent lately gives a sample, and
        // only once per receiver: a replayed NAK would add its delay (T4).
        let sample = (nak.receiver_id, nak.echo_time_us);
        if self.sent_status_lately(nak.echo_time_us) && !self.sampled.contains(&sample) {
            if self.sampled.len() == SAMPLES_KEPT {
                self.sampled.pop_front();
            }
            self.sampled.push_back(sample);
            let rtt_us = self
                .micros_since_epoch(now)
                .saturating_sub(nak.echo_time_us)
                .saturating_sub(nak.hold_us as u64);
            self.update_grtt(Duration::from_micros(rtt_us));
        }
        if self.config.share <= 0.0 {
            return 0;
        }
        // A packet whose natural turn comes before its repair would is left to the loop.
        let packet_time = self.max_datagram_len() as f64 * 8.0 / self.config.rate_bps as f64;
        let repair_wait = (self.pending_repairs() as f64 + 1.0) / self.config.share * packet_time;
        let soon = ((repair_wait + self.grtt.as_secs_f64()) / packet_time) as u64;
        // Packets whose turn is within `soon`: the cyclic run from the loop position.
        let n = self.packet_count as u64;
        let (p, end) = (self.next_index as u64, self.next_index as u64 + soon + 1);
        let loop_first: [std::ops::Range<u64>; 2] = if soon + 1 >= n {
            [0..n, 0..0]
        } else if end <= n {
            [p..end, 0..0]
        } else {
            [p..n, 0..end - n]
        };
        // Range by range, a word at a time: a NAK costs O(its ranges and words), not
        // O(the packets it names) (threat T3). Each source queues within its share.
        let Some(mut budget) = self.source_budget(now, from, packet_time) else {
            return 0;
        };
        let mut new = 0;
        for &(first, count) in &nak.ranges {
            let asked = first..first.saturating_add(count as u32);
            // A relay's carousel repairs what it holds; the rest comes in its
            // loop once it holds it.
            let held = match &self.coverage {
                None => vec![asked.clone()],
                Some(c) => c.held_runs(asked.clone(), MAX_HELD_RUNS),
            };
            let held_len: u32 = held.iter().map(|h| h.len() as u32).sum();
            self.stats.not_held += (asked.len() as u32 - held_len) as u64;
            for asked in held {
                let asked = asked.start as u64..asked.end as u64;
                let mut rest = vec![asked.clone()];
                for skip in &loop_first {
                    let overlap = asked.start.max(skip.start)..asked.end.min(skip.end);
                    if overlap.start >= overlap.end {
                        continue;
                    }
                    let skipped = overlap.end - overlap.start;
                    self.stats.repairs_skipped += skipped;
                    new += skipped as u32;
                    rest = rest
                        .into_iter()
                        .flat_map(|r| {
                            [
                                r.start..r.end.min(overlap.start),
                                r.start.max(overlap.end)..r.end,
                            ]
                        })
                        .filter(|r| r.start < r.end)
                        .collect();
                }
                for r in rest {
                    let queued =
                        (self.pending).insert_range_up_to(r.start as u32..r.end as u32, budget);
                    budget -= queued;
                    new += queued;
                }
            }
        }
        // A block whose every packet's turn comes first is left to the loop.
        for &(block, count) in &nak.blocks {
            let packets = self.parity.blocks().packets(block);
            if !self
                .coverage
                .as_ref()
                .is_none_or(|c| c.holds_all(packets.clone()))
            {
                self.stats.not_held += count as u64;
                continue;
            }
            let ahead = (packets.start as u64 + n - p) % n;
            if ahead + packets.len() as u64 <= soon + 1 {
                self.stats.repairs_skipped += count as u64;
                new += count as u32;
                continue;
            }
            let rise = self.parity.ask(block, count, budget);
            budget -= rise;
            new += rise;
        }
        if let Some((tokens, _)) = self.sources.get_mut(&from) {
            *tokens = budget as f64 + tokens.fract();
        }
        new
    }

    /// The repairs source `from` may queue now. The repair share is split evenly
    /// among the sources that NAKed in the last `NAK_SOURCE_ACTIVE`, each holding
    /// at most `SOURCE_BURST_SECS` of its part (or `MIN_SOURCE_BURST`), so one host cannot take
    /// the share from the others (T3, T13). None when the table of sources is full.
    fn source_budget(&mut self, now: Instant, from: IpAddr, packet_time: f64) -> Option<u32> {
        let active = |at: Instant| now.saturating_duration_since(at) < NAK_SOURCE_ACTIVE;
        if !self.sources.contains_key(&from) && self.sources.len() >= MAX_NAK_SOURCES {
            self.sources.retain(|_, (_, at)| active(*at));
            if self.sources.len() >= MAX_NAK_SOURCES {
                return None;
            }
        }
        let others = (self.sources.iter())
            .filter(|(ip, (_, at))| **ip != from && active(*at))
            .count();
        let per_second = self.config.share / packet_time / (others + 1) as f64;
        let cap = (per_second * SOURCE_BURST_SECS).max(MIN_SOURCE_BURST);
        let (tokens, at) = self.sources.entry(from).or_insert((cap, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + per_second * elapsed).min(cap);
        *at = now;
        Some(*tokens as u32)
    }

    /// GRTT follows a larger sample at once and a smaller one slowly, within bounds.
    fn update_grtt(&mut self, sample: Duration) {
        let sample = sample.clamp(self.config.grtt_floor, MAX_GRTT);
        self.grtt = if sample > self.grtt {
            sample
        } else {
            self.grtt.mul_f64(0.9) + sample.mul_f64(0.1)
        };
    }
}
