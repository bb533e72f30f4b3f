//! Where each channel's loop is, as a receiver sees it (spec §6.1): gaps the loop
//! has passed, the counters channel choice and reports use, and the resume point
//! saved with the received map.

use super::{FileReceiver, NakTimer};
use std::ops::Range;
use std::time::Instant;

/// Where one channel's loop is, as seen by a receiver on it.
#[derive(Debug, Clone, Copy)]
pub(super) struct LoopTrack {
    /// First loop packet seen on the channel.
    join: u32,
    /// Latest loop packet seen.
    position: u32,
    /// Loop positions passed since the join.
    advanced: u64,
    /// Loop packets that arrived (new or not).
    arrived: u64,
    /// Of `advanced`, positions restored from disk or passed while the receiver was
    /// not running: passed, but neither losses nor waited for by this run.
    uncounted: u64,
    /// Of `advanced`, positions passed while the receiver was away from the channel
    /// (§6.4): waited for, but not losses to report or to choose a channel by.
    away: u64,
    /// Why the track has not been listened to since its latest packet, if so.
    unheard: Option<Unheard>,
    /// When its latest loop packet came (None: restored from disk).
    last_at: Option<Instant>,
}

/// Why a track was not listened to for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unheard {
    /// Restored from disk: the receiver was not running.
    Down,
    /// The receiver left the channel while the loop passed packets it held.
    Away,
}

impl LoopTrack {
    /// Positions passed that are not losses: restored, or passed while away.
    fn unheard_positions(&self) -> u64 {
        self.uncounted + self.away
    }
}

impl LoopTrack {
    /// The packets this track's loop has passed since its join, as 1 or 2 ranges.
    pub(super) fn passed(&self, count: u32) -> [Range<u32>; 2] {
        if self.advanced + 1 >= count as u64 {
            [0..count, 0..0]
        } else if self.join <= self.position {
            [self.join..self.position + 1, 0..0]
        } else {
            [self.join..count, 0..self.position + 1]
        }
    }
}

/// Loop positions a channel may pass beyond what twice its rate explains
/// before a step is out of pace (bursts, the rate changing under `--adapt`).
const PACE_SLACK: u64 = 256;

/// Most loop tracks (channels) one receiver follows for a file.
pub const MAX_TRACKS: usize = 16;

/// One loop track as saved beside the received map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedTrack {
    /// The driver's track number (channel index, or the unicast track).
    pub track: u8,
    /// First loop packet seen on the channel.
    pub join: u32,
    /// Latest loop packet seen when the map was saved.
    pub position: u32,
    /// Loop positions passed since the join.
    pub advanced: u64,
}

/// Where a receiver's loops stood when its received map was saved: lets a restarted
/// receiver tell the packets the loop passed while it was down (repaired at once)
/// from those still ahead of the loop (spec §6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The server session whose loops these are.
    pub session_id: u32,
    /// One entry per track followed.
    pub tracks: Vec<SavedTrack>,
}

/// Bytes of one saved track: track (1), join (4), position (4), advanced (8).
const SAVED_TRACK_LEN: usize = 17;

impl ResumePoint {
    /// Encodes as session id (4), track count (1), then each track, big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + SAVED_TRACK_LEN * self.tracks.len());
        out.extend_from_slice(&self.session_id.to_be_bytes());
        out.push(self.tracks.len().min(MAX_TRACKS) as u8);
        for t in self.tracks.iter().take(MAX_TRACKS) {
            out.push(t.track);
            out.extend_from_slice(&t.join.to_be_bytes());
            out.extend_from_slice(&t.position.to_be_bytes());
            out.extend_from_slice(&t.advanced.to_be_bytes());
        }
        out
    }

    /// Decodes `encode`'s output; None unless the length matches the track count exactly.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (head, rest) = bytes.split_at_checked(5)?;
        let count = head[4] as usize;
        if count > MAX_TRACKS || rest.len() != count * SAVED_TRACK_LEN {
            return None;
        }
        let tracks = rest
            .chunks_exact(SAVED_TRACK_LEN)
            .map(|c| SavedTrack {
                track: c[0],
                join: u32::from_be_bytes(c[1..5].try_into().expect("4 bytes")),
                position: u32::from_be_bytes(c[5..9].try_into().expect("4 bytes")),
                advanced: u64::from_be_bytes(c[9..17].try_into().expect("8 bytes")),
            })
            .collect();
        Some(Self {
            session_id: u32::from_be_bytes(head[..4].try_into().expect("4 bytes")),
            tracks,
        })
    }
}

impl FileReceiver {
    /// Moves track `track`'s loop position to `index`; missing packets passed over are gaps.
    pub(super) fn advance(&mut self, now: Instant, track: usize, index: u32) {
        let count = self.received.len();
        if self.tracks.len() <= track {
            self.tracks.resize(track + 1, None);
        }
        let Some(t) = self.tracks[track].as_mut() else {
            self.tracks[track] = Some(LoopTrack {
                join: index,
                position: index,
                advanced: 0,
                arrived: 1,
                uncounted: 0,
                away: 0,
                unheard: None,
                last_at: Some(now),
            });
            if self.table_missing() && self.timer == NakTimer::Idle {
                self.start_backoff(now);
            }
            return;
        };
        let step = (index as u64 + count as u64 - t.position as u64) % count as u64;
        // A step the channel's rate cannot explain since the track's latest
        // packet (twice the rate, and a slack) is a packet of another pass,
        // sent again (T35): it moves neither the position nor the counts.
        if let (None, Some(last_at)) = (t.unheard, t.last_at)
            && step > PACE_SLACK
        {
            let elapsed = now.saturating_duration_since(last_at);
            let reachable = (self.packets_per_second(track))
                .map(|pps| 2.0 * pps * elapsed.as_secs_f64() + PACE_SLACK as f64);
            if reachable.is_some_and(|r| (step as f64) > r) {
                self.stats.out_of_pace += 1;
                return;
            }
        }
        let t = self.tracks[track].as_mut().expect("found above");
        t.arrived += 1;
        t.last_at = Some(now);
        let unheard = t.unheard.take();
        // The loop went on while this receiver was down or away: what it passed
        // in the meantime is behind the loop now, and repair brings it sooner.
        match unheard {
            Some(Unheard::Down) => t.uncounted += step,
            Some(Unheard::Away) => t.away += step,
            None => {}
        }
        let from = t.position;
        t.position = index;
        t.advanced += step;
        // Packets strictly between the old and new position were lost on the way; an
        // unheard track's holes from before are gaps too.
        let gap = if unheard.is_some() {
            !self.missing_passed(None, 1).is_empty()
        } else {
            step > 1
                && if from < index {
                    !self.received.missing_runs(from + 1..index, 1).is_empty()
                } else {
                    !self.received.missing_runs(from + 1..count, 1).is_empty()
                        || !self.received.missing_runs(0..index, 1).is_empty()
                }
        };
        if gap && self.timer == NakTimer::Idle {
            self.start_backoff(now);
        }
    }

    /// Loop positions passed and loop packets arrived, summed over every track.
    pub(super) fn track_totals(&self) -> (u64, u64) {
        self.tracks.iter().flatten().fold((0, 0), |(a, b), t| {
            (a + t.advanced - t.unheard_positions(), b + t.arrived)
        })
    }

    /// Loops this run has waited through: loop positions passed since the join on
    /// the track that passed the most (away from the channel too), over the packet
    /// count (0 before any).
    pub fn loops_waited(&self) -> f64 {
        let most = self
            .tracks
            .iter()
            .flatten()
            .map(|t| t.advanced - t.uncounted)
            .max()
            .unwrap_or(0);
        most as f64 / self.received.len().max(1) as f64
    }

    /// Track `track`'s loop positions passed and loop packets arrived (0, 0 before
    /// its first packet), for choosing a channel.
    pub fn track_counters(&self, track: usize) -> (u64, u64) {
        self.tracks
            .get(track)
            .copied()
            .flatten()
            .map_or((0, 0), |t| (t.advanced - t.unheard_positions(), t.arrived))
    }

    /// Loop positions passed while the receiver was away from its channels.
    pub fn passed_away(&self) -> u64 {
        self.tracks.iter().flatten().map(|t| t.away).sum()
    }

    /// Track `track`'s latest loop position and the positions passed since its join.
    pub fn loop_position(&self, track: usize) -> Option<(u32, u64)> {
        let t = self.tracks.get(track).copied().flatten()?;
        Some((t.position, t.advanced))
    }

    /// The receiver stops listening to track `track` until its next packet there (it
    /// leaves the channel while the loop passes packets it holds): the positions
    /// passed meanwhile are not losses, and missing packets among them are gaps.
    pub fn stop_listening(&mut self, track: usize) {
        if let Some(Some(t)) = self.tracks.get_mut(track) {
            t.unheard = Some(Unheard::Away);
        }
    }

    /// How many packets after `index`, going round the loop, are held in a row.
    pub fn held_after(&self, index: u32) -> u32 {
        let count = self.received.len();
        if index >= count {
            return 0;
        }
        let first_missing = |range: Range<u32>| {
            self.received
                .missing_runs(range, 1)
                .first()
                .map(|r| r.start)
        };
        match first_missing(index + 1..count) {
            Some(m) => m - index - 1,
            None => match first_missing(0..index + 1) {
                Some(m) => count - index - 1 + m,
                None => count - 1,
            },
        }
    }

    /// Where this receiver's loop tracks stand, to save beside its received map.
    pub fn resume_point(&self) -> ResumePoint {
        ResumePoint {
            session_id: self.session_id,
            tracks: self
                .tracks
                .iter()
                .enumerate()
                .filter_map(|(i, t)| {
                    t.map(|t| SavedTrack {
                        track: i as u8,
                        join: t.join,
                        position: t.position,
                        advanced: t.advanced,
                    })
                })
                .collect(),
        }
    }

    /// Takes up the loop tracks saved by an earlier run on the same archive (after
    /// `restore`), so that what the loop passed while this receiver was down counts
    /// as gaps behind the loop and is NAKed (spec §6.1). Ignored (false) when the
    /// server session changed, since a new server's loop starts elsewhere, or when
    /// the tracks do not fit the archive.
    pub fn restore_tracks(&mut self, point: &ResumePoint) -> bool {
        let count = self.received.len();
        let fits = |t: &SavedTrack| {
            (t.track as usize) < MAX_TRACKS && t.join < count && t.position < count
        };
        if point.session_id != self.session_id
            || self.manifest.is_none()
            || !point.tracks.iter().all(fits)
        {
            return false;
        }
        for t in &point.tracks {
            let track = t.track as usize;
            if self.tracks.len() <= track {
                self.tracks.resize(track + 1, None);
            }
            self.tracks[track] = Some(LoopTrack {
                join: t.join,
                position: t.position,
                advanced: t.advanced,
                arrived: 0,
                uncounted: t.advanced,
                away: 0,
                unheard: Some(Unheard::Down),
                last_at: None,
            });
        }
        true
    }
}
