//! NAK timers of the receiver (spec §6.2): back-off, suppression by others' NAKs,
//! holdoff, and what a NAK asks for.

use super::{FileReceiver, RepairKind};
use crate::received::ReceivedMap;
use crate::wire::{self, Nak};
use rand::RngExt;
use std::ops::Range;
use std::time::{Duration, Instant};

/// K: the NAK back-off window is K·GRTT (NORM's default backoff factor).
pub const BACKOFF_FACTOR: f64 = 4.0;
/// The NAK data timer (holdoff) lasts this many GRTTs: the back-off window plus a
/// round trip and a margin for the server's repair queue.
pub const HOLDOFF_GRTTS: f64 = BACKOFF_FACTOR + 2.0;
/// GRTT assumed until the first STATUS arrives.
pub const DEFAULT_GRTT: Duration = Duration::from_millis(10);
/// Group size assumed until the first STATUS arrives.
pub const DEFAULT_GROUP_SIZE: u32 = 100;

/// How a receiver asks for repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NakMode {
    /// Multicast NAKs with suppression timers (the default).
    Suppressed,
    /// NAK at once, no back-off: for a receiver that has no multicast peers (unicast),
    /// or to measure what suppression saves.
    Immediate,
    /// Never NAK: a plain carousel receiver (for comparisons).
    Off,
}

/// The NAK timers of one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NakTimer {
    /// Nothing missing that the loop has passed, or nothing to do about it.
    Idle,
    /// Timer A: waiting a random back-off before sending a NAK.
    Backoff(Instant),
    /// The NAK data timer: a NAK (ours or another's) went out, waiting for repairs.
    Holdoff(Instant),
}

/// What a NAK would ask for: packet ranges or block requests.
pub(super) struct NakRequest {
    ranges: Vec<(u32, u16)>,
    blocks: Vec<(u32, u16)>,
}

impl NakRequest {
    fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.blocks.is_empty()
    }
}

/// Draws a NAK back-off from the truncated exponential distribution of RFC 5401:
/// density grows towards `max`, so few receivers pick early times; λ = ln(group) + 1.
pub fn random_backoff(max: Duration, group_size: u32, uniform: f64) -> Duration {
    let lambda = (group_size.max(1) as f64).ln() + 1.0;
    let x = max.as_secs_f64() / lambda * (1.0 + uniform * (lambda.exp() - 1.0)).ln();
    Duration::from_secs_f64(x.clamp(0.0, max.as_secs_f64()))
}

impl FileReceiver {
    pub(super) fn grtt(&self) -> Duration {
        self.status.map_or(DEFAULT_GRTT, |(s, _)| {
            Duration::from_micros(s.grtt_us as u64)
        })
    }

    pub(super) fn holdoff(&self) -> Duration {
        self.grtt().mul_f64(HOLDOFF_GRTTS)
    }

    /// Whether the server's latest STATUS says it lacks packets of its loop (a
    /// relay still receiving, spec §2.4): what the loop passes is not lost, so
    /// nothing is asked for until it holds them all.
    pub fn server_lacks(&self) -> bool {
        self.status.is_some_and(|(s, _)| s.lacking > 0)
    }

    pub(super) fn start_backoff(&mut self, now: Instant) {
        if self.server_lacks() {
            self.timer = NakTimer::Idle;
            return;
        }
        let wait = match self.mode {
            NakMode::Off => return,
            NakMode::Immediate => Duration::ZERO,
            NakMode::Suppressed => {
                let group = self
                    .status
                    .map_or(DEFAULT_GROUP_SIZE, |(s, _)| s.group_size);
                random_backoff(
                    self.grtt().mul_f64(BACKOFF_FACTOR),
                    group,
                    self.rng.random::<f64>(),
                )
            }
        };
        self.timer = NakTimer::Backoff(now + wait);
    }

    pub(super) fn hear_nak(&mut self, now: Instant, nak: &Nak) {
        if nak.receiver_id == self.receiver_id || self.manifest.is_none() {
            return;
        }
        self.stats.naks_heard += 1;
        if self.mode != NakMode::Suppressed {
            return; // without suppression, others' NAKs change nothing
        }
        self.expire_asked(now);
        let until = now + self.holdoff();
        self.asked_until.get_or_insert(until);
        for &(first, count) in &nak.ranges {
            let range = first..first.saturating_add(count as u32);
            self.asked.insert_range(range.clone());
            self.asked_in_window.insert_range(range);
        }
        self.hear_block_requests(now, &nak.blocks);
        // Timer A is cancelled once others have asked for everything we miss.
        if matches!(self.timer, NakTimer::Backoff(_)) && self.nak_request(now).is_empty() {
            self.stats.naks_suppressed += 1;
            self.timer = NakTimer::Holdoff(until);
        }
    }

    /// Ends the window of others' NAKs once a holdoff has passed: what was asked
    /// in it stays asked for one more window, what was asked before lapses. (A
    /// single window stretched by every NAK heard never ended while others kept
    /// NAKing, and a receiver whose repair was lost stayed silent.)
    pub(super) fn expire_asked(&mut self, now: Instant) {
        if self.asked.len() != self.received.len() {
            // First use after the manifest.
            self.asked = ReceivedMap::new(self.received.len());
            self.asked_in_window = ReceivedMap::new(self.received.len());
            self.asked_until = None;
            return;
        }
        let Some(until) = self.asked_until.filter(|&t| now >= t) else {
            return;
        };
        let holdoff = self.holdoff();
        std::mem::swap(&mut self.asked, &mut self.asked_in_window);
        self.asked_in_window.clear();
        if now >= until + holdoff {
            self.asked.clear(); // the window before has lapsed too
            self.asked_until = None;
        } else {
            self.asked_until = Some(until + holdoff);
        }
    }

    /// Missing packets the loop has passed since this receiver joined, and missing
    /// packets of the frame table, leaving out those in `except`. Other packets from
    /// before the join are not gaps: the loop brings them in turn.
    pub(super) fn missing_passed(
        &self,
        except: Option<&ReceivedMap>,
        max: usize,
    ) -> Vec<Range<u32>> {
        self.missing_in(&self.gap_ranges(), except, max)
    }

    /// Runs of packets missing in `gaps` and not in `except`, at most `max`.
    fn missing_in(
        &self,
        gaps: &[Range<u32>],
        except: Option<&ReceivedMap>,
        max: usize,
    ) -> Vec<Range<u32>> {
        let mut runs = Vec::new();
        for range in gaps {
            if runs.len() < max {
                let left = max - runs.len();
                (runs).extend(
                    self.received
                        .missing_runs_except(range.clone(), except, left),
                );
            }
        }
        runs
    }

    /// Where gaps may be: the frame table's packets and what any channel's loop
    /// has passed since it joined, merged, in order. Empty before any join.
    fn gap_ranges(&self) -> Vec<Range<u32>> {
        let count = self.received.len();
        let mut passed: Vec<Range<u32>> = self
            .tracks
            .iter()
            .flatten()
            .flat_map(|t| t.passed(count))
            .filter(|r| r.start < r.end)
            .collect();
        if passed.is_empty() {
            return Vec::new();
        }
        passed.push(self.table_packets());
        passed.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u32>> = Vec::with_capacity(passed.len());
        for r in passed.into_iter().filter(|r| r.start < r.end) {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }

    /// What our NAK would ask for now: passed gaps not already asked for by
    /// others, as ranges (copies) or block requests (parity).
    pub(super) fn nak_request(&mut self, now: Instant) -> NakRequest {
        self.expire_asked(now);
        if self.kind_unknown() {
            // Before the first STATUS tells an `Auto` receiver which kind to
            // ask, only the frame table goes: it is asked as copies whatever
            // the kind, and nothing can be placed before it (§6.5).
            let table = self.table_packets();
            let gaps: Vec<Range<u32>> = (self.gap_ranges().into_iter())
                .filter(|g| g.start < table.end)
                .map(|g| g.start..g.end.min(table.end))
                .collect();
            return NakRequest {
                ranges: self.nak_ranges(&gaps, wire::MAX_NAK_RANGES),
                blocks: Vec::new(),
            };
        }
        match self.repair_now() {
            RepairKind::Copies => NakRequest {
                ranges: self.nak_ranges(&self.gap_ranges(), wire::MAX_NAK_RANGES),
                blocks: Vec::new(),
            },
            RepairKind::Parity | RepairKind::Auto => {
                // The frame table's packets are asked as copies: nothing can be
                // placed before the table, so they must not wait for a block.
                let table = self.table_packets().end;
                let (mut by_copies, mut rest) = (Vec::new(), Vec::new());
                for gap in self.gap_ranges() {
                    if gap.start < table {
                        by_copies.push(gap.start..gap.end.min(table));
                    }
                    if gap.end > table {
                        rest.push(gap.start.max(table)..gap.end);
                    }
                }
                let blocks = self.block_requests(now, &rest);
                by_copies.extend(self.in_copies_blocks(&rest));
                let left = wire::MAX_NAK_RANGES - blocks.len();
                NakRequest {
                    ranges: self.nak_ranges(&by_copies, left),
                    blocks,
                }
            }
        }
    }

    /// Runs of packets missing in `gaps` and not asked for by others, at most `max`.
    fn nak_ranges(&self, gaps: &[Range<u32>], max: usize) -> Vec<(u32, u16)> {
        let mut out = Vec::new();
        for run in self.missing_in(gaps, Some(&self.asked), max) {
            let mut start = run.start;
            while start < run.end && out.len() < max {
                let len = (run.end - start).min(u16::MAX as u32);
                out.push((start, len as u16));
                start += len;
            }
        }
        out
    }

    /// Changes how this receiver NAKs (a receiver moving to a unicast stream has no
    /// peers to suppress for).
    pub fn set_nak_mode(&mut self, mode: NakMode) {
        self.mode = mode;
        if mode == NakMode::Off {
            self.timer = NakTimer::Idle;
        }
    }

    /// Runs the NAK timers: an expired back-off sends a NAK (unless others asked for
    /// everything); an expired holdoff with packets still missing starts a new back-off.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.timer {
            NakTimer::Backoff(at) if now >= at => {
                if self.holds_nak_for_status(now) {
                    self.timer = NakTimer::Holdoff(now + self.holdoff());
                    return;
                }
                let NakRequest { ranges, blocks } = self.nak_request(now);
                if ranges.is_empty() && blocks.is_empty() {
                    let waiting = !self.missing_passed(None, 1).is_empty();
                    self.stats.naks_suppressed += waiting as u64;
                    self.timer = if waiting {
                        NakTimer::Holdoff(now + self.holdoff())
                    } else {
                        NakTimer::Idle
                    };
                    return;
                }
                let (echo_time_us, hold_us) = self.status.map_or((0, 0), |(s, at)| {
                    let hold = now.saturating_duration_since(at).as_micros();
                    (s.server_time_us, hold.min(u32::MAX as u128) as u32)
                });
                let nak = Nak {
                    archive_id: self.archive_id,
                    receiver_id: self.receiver_id,
                    echo_time_us,
                    hold_us,
                    ranges,
                    blocks,
                };

                self.outgoing = Some(wire::encode_nak(&self.mac, self.session_id, &nak));
                self.stats.naks_sent += 1;
                self.timer = NakTimer::Holdoff(now + self.holdoff());
            }
            NakTimer::Holdoff(at) if now >= at => {
                if self.missing_passed(None, 1).is_empty() {
                    self.timer = NakTimer::Idle;
                } else {
                    self.start_backoff(now);
                }
            }
            _ => {}
        }
    }

    /// The NAK datagram to send, if one is due; it goes to the file's control port.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outgoing.take()
    }
}
