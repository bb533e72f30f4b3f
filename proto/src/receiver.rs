//! Receiver side: the state machine that takes one file's channel datagrams in and
//! says which payload goes where. The driver does the writing.

use crate::keys::{FINGERPRINT_LEN, MasterKey};
use crate::manifest::{Manifest, ManifestError};
use crate::rate::{ReportTimer, report_interval};
use crate::received::ReceivedMap;
use crate::wire::{self, DecodeError, Nak, Packet, Report, Status};
use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};
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
enum NakTimer {
    /// Nothing missing that the loop has passed, or nothing to do about it.
    Idle,
    /// Timer A: waiting a random back-off before sending a NAK.
    Backoff(Instant),
    /// The NAK data timer: a NAK (ours or another's) went out, waiting for repairs.
    Holdoff(Instant),
}

/// Draws a NAK back-off from the truncated exponential distribution of RFC 5401:
/// density grows towards `max`, so few receivers pick early times; λ = ln(group) + 1.
pub fn random_backoff(max: Duration, group_size: u32, uniform: f64) -> Duration {
    let lambda = (group_size.max(1) as f64).ln() + 1.0;
    let x = max.as_secs_f64() / lambda * (1.0 + uniform * (lambda.exp() - 1.0)).ln();
    Duration::from_secs_f64(x.clamp(0.0, max.as_secs_f64()))
}

/// What a datagram did to the receiver.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// New payload: the driver writes `payload` at `body_offset` of the partial file.
    Store {
        /// Packet index.
        packet_index: u32,
        /// Where the payload goes in the archive body.
        body_offset: u64,
        /// The payload bytes (borrowed from the datagram).
        payload: &'a [u8],
    },
    /// The first valid manifest arrived; the driver prepares storage (and may `restore`).
    ManifestAccepted,
    /// The manifest was signed with another master key.
    WrongKey {
        /// Fingerprint of the key the archive was sealed with.
        theirs: [u8; FINGERPRINT_LEN],
    },
    /// Nothing to do (duplicate, repeated manifest, other session or archive, or rejected).
    Nothing,
}

/// Counters of everything a receiver dropped or took, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReceiverStats {
    /// DATA packets stored.
    pub stored: u64,
    /// DATA packets already held.
    pub duplicates: u64,
    /// DATA packets that arrived before any manifest.
    pub before_manifest: u64,
    /// Datagrams from another server session.
    pub foreign_session: u64,
    /// DATA or MANIFEST packets of another archive.
    pub other_archive: u64,
    /// Datagrams with a bad CRC.
    pub bad_crc: u64,
    /// Datagrams that were not loopcast's (bad magic) or of an unknown version or type.
    pub not_ours: u64,
    /// Truncated datagrams or impossible field values.
    pub malformed: u64,
    /// Manifests that failed their MAC or layout checks.
    pub bad_manifest: u64,
    /// Of `stored`, packets that arrived as repairs.
    pub repairs: u64,
    /// NAK packets this receiver sent.
    pub naks_sent: u64,
    /// NAK packets heard from other receivers.
    pub naks_heard: u64,
    /// Back-offs that ended without a NAK because others had asked for everything.
    pub naks_suppressed: u64,
}

impl ReceiverStats {
    /// Counts a datagram that failed to decode.
    fn count_decode_error(&mut self, e: DecodeError) {
        match e {
            DecodeError::BadCrc => self.bad_crc += 1,
            DecodeError::BadMagic | DecodeError::BadVersion | DecodeError::UnknownType => {
                self.not_ours += 1
            }
            DecodeError::Truncated | DecodeError::Invalid => self.malformed += 1,
        }
    }

    /// Datagrams dropped for any reason other than being duplicates.
    pub fn dropped(&self) -> u64 {
        self.before_manifest
            + self.foreign_session
            + self.other_archive
            + self.bad_crc
            + self.not_ours
            + self.malformed
            + self.bad_manifest
    }
}

/// Where one channel's loop is, as seen by a receiver on it.
#[derive(Debug, Clone, Copy)]
struct LoopTrack {
    /// First loop packet seen on the channel.
    join: u32,
    /// Latest loop packet seen.
    position: u32,
    /// Loop positions passed since the join.
    advanced: u64,
    /// Loop packets that arrived (new or not).
    arrived: u64,
    /// Of `advanced`, positions restored from disk or passed while the receiver was
    /// not running: passed, but not losses to report or to choose a channel by.
    uncounted: u64,
    /// Restored from disk and not yet moved by a packet of this run.
    resumed: bool,
}

impl LoopTrack {
    /// The packets this track's loop has passed since its join, as 1 or 2 ranges.
    fn passed(&self, count: u32) -> [Range<u32>; 2] {
        if self.advanced + 1 >= count as u64 {
            [0..count, 0..0]
        } else if self.join <= self.position {
            [self.join..self.position + 1, 0..0]
        } else {
            [self.join..count, 0..self.position + 1]
        }
    }
}

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

/// Receives one archive from its channels.
pub struct FileReceiver {
    master: MasterKey,
    session_id: u32,
    archive_id: u64,
    manifest: Option<Manifest>,
    received: ReceivedMap,
    stats: ReceiverStats,
    last_heard: Option<Instant>,
    receiver_id: u32,
    rng: SmallRng,
    mode: NakMode,
    timer: NakTimer,
    /// Per channel followed (by the driver's track number): where its loop is.
    tracks: Vec<Option<LoopTrack>>,
    /// When the next REPORT is due; started by the first datagram of the session.
    report_timer: Option<ReportTimer>,
    /// Track counters summed at the last report: (advanced, arrived).
    reported: (u64, u64),
    /// Packets other receivers NAKed, forgotten when `asked_until` passes.
    asked: ReceivedMap,
    asked_until: Option<Instant>,
    /// Last STATUS and when it arrived.
    status: Option<(Status, Instant)>,
    outgoing: Option<Vec<u8>>,
}

impl FileReceiver {
    /// A receiver for archive `archive_id` sent by server session `session_id`.
    /// `seed` drives its receiver id and NAK back-offs.
    pub fn new(
        master: MasterKey,
        session_id: u32,
        archive_id: u64,
        seed: u64,
        mode: NakMode,
    ) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        Self {
            master,
            session_id,
            archive_id,
            manifest: None,
            received: ReceivedMap::new(0),
            stats: ReceiverStats::default(),
            last_heard: None,
            receiver_id: rng.next_u32(),
            rng,
            mode,
            timer: NakTimer::Idle,
            tracks: Vec::new(),
            report_timer: None,
            reported: (0, 0),
            asked: ReceivedMap::new(0),
            asked_until: None,
            status: None,
            outgoing: None,
        }
    }

    /// Takes one datagram from the file's (only) channel: track 0.
    pub fn handle_datagram<'a>(&mut self, now: Instant, bytes: &'a [u8]) -> Outcome<'a> {
        self.handle_datagram_on(now, 0, bytes)
    }

    /// Takes one datagram that came on the channel the driver numbers `track`
    /// (below `MAX_TRACKS`); each channel's loop position is followed on its own.
    pub fn handle_datagram_on<'a>(
        &mut self,
        now: Instant,
        track: usize,
        bytes: &'a [u8],
    ) -> Outcome<'a> {
        let datagram = match wire::decode(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.stats.count_decode_error(e);
                return Outcome::Nothing;
            }
        };
        if datagram.session_id != self.session_id {
            self.stats.foreign_session += 1;
            return Outcome::Nothing;
        }
        self.last_heard = Some(now);
        if self.report_timer.is_none() {
            self.report_timer = Some(ReportTimer::new(now, self.rng.random::<f64>()));
        }
        match datagram.packet {
            Packet::Data(header, payload) => {
                self.handle_data(now, track.min(MAX_TRACKS - 1), header, payload)
            }
            Packet::Manifest(body) => self.handle_manifest(body),
            Packet::Status(status) if status.archive_id == self.archive_id => {
                self.status = Some((status, now));
                Outcome::Nothing
            }
            Packet::Nak(nak) if nak.archive_id == self.archive_id => {
                self.hear_nak(now, &nak);
                Outcome::Nothing
            }
            // Announces belong on the directory group, the others go to the server;
            // one here is harmless.
            Packet::Announce(_)
            | Packet::Status(_)
            | Packet::Nak(_)
            | Packet::Report(_)
            | Packet::Done(_)
            | Packet::Request(_)
            | Packet::Cookie(_) => Outcome::Nothing,
        }
    }

    fn handle_manifest<'a>(&mut self, body: &[u8]) -> Outcome<'a> {
        if self.manifest.is_some() {
            return Outcome::Nothing;
        }
        match Manifest::decode(body, &self.master) {
            Ok(m) if m.archive_id == self.archive_id => {
                self.received = ReceivedMap::new(m.packet_count());
                self.manifest = Some(m);
                Outcome::ManifestAccepted
            }
            Ok(_) => {
                self.stats.other_archive += 1;
                Outcome::Nothing
            }
            Err(ManifestError::WrongKey) => match Manifest::decode_unverified(body) {
                Ok(m) if m.archive_id == self.archive_id => Outcome::WrongKey {
                    theirs: m.key_fingerprint,
                },
                _ => {
                    self.stats.bad_manifest += 1;
                    Outcome::Nothing
                }
            },
            Err(_) => {
                self.stats.bad_manifest += 1;
                Outcome::Nothing
            }
        }
    }

    fn handle_data<'a>(
        &mut self,
        now: Instant,
        track: usize,
        header: wire::DataHeader,
        payload: &'a [u8],
    ) -> Outcome<'a> {
        if header.archive_id != self.archive_id {
            self.stats.other_archive += 1;
            return Outcome::Nothing;
        }
        let Some(m) = &self.manifest else {
            self.stats.before_manifest += 1;
            return Outcome::Nothing;
        };
        let index = header.packet_index;
        if header.packet_count != self.received.len()
            || payload.len() as u64 != payload_len(m, index)
        {
            self.stats.malformed += 1;
            return Outcome::Nothing;
        }
        let body_offset = index as u64 * m.payload_size as u64;
        let repair = header.flags & wire::FLAG_REPAIR != 0;
        if !repair {
            self.advance(now, track, index);
        }
        if !self.received.insert(index) {
            self.stats.duplicates += 1;
            return Outcome::Nothing;
        }
        self.stats.stored += 1;
        self.stats.repairs += repair as u64;
        if self.received.is_complete() {
            self.timer = NakTimer::Idle;
        }
        Outcome::Store {
            packet_index: index,
            body_offset,
            payload,
        }
    }

    /// Moves track `track`'s loop position to `index`; missing packets passed over are gaps.
    fn advance(&mut self, now: Instant, track: usize, index: u32) {
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
                resumed: false,
            });
            let table_missing = !self
                .received
                .missing_runs(self.table_packets(), 1)
                .is_empty();
            if table_missing && self.timer == NakTimer::Idle {
                self.start_backoff(now);
            }
            return;
        };
        t.arrived += 1;
        let step = (index as u64 + count as u64 - t.position as u64) % count as u64;
        let resumed = std::mem::take(&mut t.resumed);
        if resumed {
            // The loop went on while this receiver was down: what it passed in the
            // meantime is behind the loop now, and repair brings it sooner.
            t.uncounted += step;
        }
        let from = t.position;
        t.position = index;
        t.advanced += step;
        // Packets strictly between the old and new position were lost on the way; a
        // resumed track's holes from its earlier run are gaps too.
        let gap = if resumed {
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

    fn grtt(&self) -> Duration {
        self.status.map_or(DEFAULT_GRTT, |(s, _)| {
            Duration::from_micros(s.grtt_us as u64)
        })
    }

    fn holdoff(&self) -> Duration {
        self.grtt().mul_f64(HOLDOFF_GRTTS)
    }

    fn start_backoff(&mut self, now: Instant) {
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

    fn hear_nak(&mut self, now: Instant, nak: &Nak) {
        if nak.receiver_id == self.receiver_id || self.manifest.is_none() {
            return;
        }
        self.stats.naks_heard += 1;
        if self.mode != NakMode::Suppressed {
            return; // without suppression, others' NAKs change nothing
        }
        self.expire_asked(now);
        let until = now + self.holdoff();
        self.asked_until = Some(until);
        for &(first, count) in &nak.ranges {
            self.asked
                .insert_range(first..first.saturating_add(count as u32));
        }
        // Timer A is cancelled once others have asked for everything we miss.
        if matches!(self.timer, NakTimer::Backoff(_)) && self.nak_ranges(now).is_empty() {
            self.stats.naks_suppressed += 1;
            self.timer = NakTimer::Holdoff(until);
        }
    }

    fn expire_asked(&mut self, now: Instant) {
        if self.asked.len() != self.received.len() {
            self.asked = ReceivedMap::new(self.received.len()); // first use after the manifest
        } else if self.asked_until.is_some_and(|t| now >= t) {
            self.asked.clear();
            self.asked_until = None;
        }
    }

    /// The packets carrying the frame table: gaps from the join on, wherever the loop
    /// is, because no frame can be verified before the table is.
    fn table_packets(&self) -> Range<u32> {
        self.manifest.as_ref().map_or(0..0, |m| m.table_packets())
    }

    /// Missing packets the loop has passed since this receiver joined, and missing
    /// packets of the frame table, leaving out those in `except`. Other packets from
    /// before the join are not gaps: the loop brings them in turn.
    fn missing_passed(&self, except: Option<&ReceivedMap>, max: usize) -> Vec<Range<u32>> {
        let count = self.received.len();
        // What any channel's loop has passed since it joined, merged.
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
        passed.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u32>> = Vec::with_capacity(passed.len());
        for r in passed {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        let scan =
            |range: Range<u32>, max: usize| self.received.missing_runs_except(range, except, max);
        let table = self.table_packets().end;
        let mut runs = scan(0..table, max);
        // The rest, from the table's end on (the table is already in `runs`).
        for range in merged {
            let range = range.start.max(table)..range.end;
            if range.start < range.end && runs.len() < max {
                let left = max - runs.len();
                runs.extend(scan(range, left));
            }
        }
        runs
    }

    /// What our NAK would ask for now: passed gaps not already asked for by others.
    fn nak_ranges(&mut self, now: Instant) -> Vec<(u32, u16)> {
        self.expire_asked(now);
        let mut out = Vec::new();
        for run in self.missing_passed(Some(&self.asked), wire::MAX_NAK_RANGES) {
            let mut start = run.start;
            while start < run.end && out.len() < wire::MAX_NAK_RANGES {
                let len = (run.end - start).min(u16::MAX as u32);
                out.push((start, len as u16));
                start += len;
            }
        }
        out
    }

    /// When `handle_timeout` next needs to run (NAK timers), or a report is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let nak = match self.timer {
            NakTimer::Idle => None,
            NakTimer::Backoff(at) | NakTimer::Holdoff(at) => Some(at),
        };
        let report = self.report_timer.map(|t| t.due(self.report_interval()));
        nak.into_iter().chain(report).min()
    }

    /// Mean interval between this receiver's reports, from the last STATUS heard.
    fn report_interval(&self) -> Duration {
        let (group, rate) = self
            .status
            .map_or((DEFAULT_GROUP_SIZE, 0), |(s, _)| (s.group_size, s.rate_bps));
        let datagram = self
            .manifest
            .as_ref()
            .map_or(wire::DEFAULT_PACKET_SIZE, |m| {
                m.payload_size as usize + wire::DATA_HEADER_LEN + wire::TRAILER_LEN
            });
        // Until a STATUS says the rate, assume a slow channel: fewer reports, not more.
        report_interval(group, rate.max(1_000_000), datagram)
    }

    /// The REPORT to send now, if one is due: `channel` is what the driver calls the
    /// channel it is on (the file's announce index, or `wire::UNICAST_CHANNEL`), and
    /// `kernel_drops` what its socket lost. It goes to the server's unicast port.
    pub fn poll_report(&mut self, now: Instant, channel: u8, kernel_drops: u32) -> Option<Vec<u8>> {
        let interval = self.report_interval();
        let uniform = self.rng.random::<f64>();
        let timer = self.report_timer.as_mut()?;
        let since = now.saturating_duration_since(timer.last());
        if !timer.fire(now, interval, uniform) {
            return None;
        }
        let (advanced, arrived) = self.track_totals();
        let (was_advanced, was_arrived) =
            std::mem::replace(&mut self.reported, (advanced, arrived));
        let arrived = arrived - was_arrived;
        let sent = (advanced - was_advanced).max(arrived);
        let report = Report {
            archive_id: self.archive_id,
            receiver_id: self.receiver_id,
            channel,
            held: self.received.count(),
            packet_count: self.received.len(),
            arrived: arrived.min(u32::MAX as u64) as u32,
            lost: (sent - arrived).min(u32::MAX as u64) as u32,
            interval_ms: since.as_millis().min(u32::MAX as u128) as u32,
            kernel_drops,
        };
        Some(wire::encode_report(self.session_id, &report))
    }

    /// Loop positions passed and loop packets arrived, summed over every track.
    fn track_totals(&self) -> (u64, u64) {
        self.tracks.iter().flatten().fold((0, 0), |(a, b), t| {
            (a + t.advanced - t.uncounted, b + t.arrived)
        })
    }

    /// Loops this run has waited through: loop positions passed since the join on
    /// the track that passed the most, over the packet count (0 before any).
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
            .map_or((0, 0), |t| (t.advanced - t.uncounted, t.arrived))
    }

    /// A DONE datagram saying this receiver delivered the file `elapsed` after joining.
    pub fn done_datagram(&self, elapsed: Duration) -> Vec<u8> {
        wire::encode_done(
            self.session_id,
            &wire::Done {
                archive_id: self.archive_id,
                receiver_id: self.receiver_id,
                elapsed_ms: elapsed.as_millis().min(u32::MAX as u128) as u32,
            },
        )
    }

    /// Changes how this receiver NAKs (a receiver moving to a unicast stream has no
    /// peers to suppress for).
    pub fn set_nak_mode(&mut self, mode: NakMode) {
        self.mode = mode;
        if mode == NakMode::Off {
            self.timer = NakTimer::Idle;
        }
    }

    /// The random id this receiver puts in its NAKs, reports and DONE.
    pub fn receiver_id(&self) -> u32 {
        self.receiver_id
    }

    /// Runs the NAK timers: an expired back-off sends a NAK (unless others asked for
    /// everything); an expired holdoff with packets still missing starts a new back-off.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.timer {
            NakTimer::Backoff(at) if now >= at => {
                let ranges = self.nak_ranges(now);
                if ranges.is_empty() {
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
                };
                self.outgoing = Some(wire::encode_nak(self.session_id, &nak));
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

    /// Replaces the received map with one restored from disk (same archive and layout).
    /// Returns false, and changes nothing, if the map does not fit this archive.
    pub fn restore(&mut self, map: ReceivedMap) -> bool {
        if self.manifest.is_none() || map.len() != self.received.len() {
            return false;
        }
        self.received = map;
        true
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
                resumed: true,
            });
        }
        true
    }

    /// Marks the packets holding body bytes `range` missing again (after a frame failed).
    /// They are gaps the loop has passed, so a NAK for them starts at once.
    pub fn mark_missing(&mut self, now: Instant, range: Range<u64>) -> u32 {
        let Some(m) = &self.manifest else { return 0 };
        let packets = crate::received::packets_covering(range, m.payload_size as u32);
        let removed = self.received.remove_range(packets);
        let joined = self.tracks.iter().any(Option::is_some);
        if removed > 0 && self.timer == NakTimer::Idle && joined {
            self.start_backoff(now);
        }
        removed
    }

    /// The manifest, once one has been accepted.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// Which packets are held.
    pub fn received(&self) -> &ReceivedMap {
        &self.received
    }

    /// True once the manifest is known and every packet is held.
    pub fn is_complete(&self) -> bool {
        self.manifest.is_some() && self.received.is_complete()
    }

    /// Counters of what was taken and dropped.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// When a datagram of this session was last heard.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// The server session this receiver follows.
    pub fn session_id(&self) -> u32 {
        self.session_id
    }
}

/// Payload bytes of packet `index` of the archive described by `m`.
pub fn payload_len(m: &Manifest, index: u32) -> u64 {
    let offset = index as u64 * m.payload_size as u64;
    m.body_len.saturating_sub(offset).min(m.payload_size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{FileMeta, Packer};
    use crate::wire::DataHeader;
    use proptest::prelude::*;

    fn setup() -> (MasterKey, Manifest, Vec<u8>) {
        let key = MasterKey::from_bytes([4; 32]);
        let mut packer = Packer::new(&key, 99, 5000, 4096, 3).unwrap();
        let mut body = Vec::new();
        for i in 0..2u8 {
            // Incompressible content, so the body spans several 1000-byte packets.
            let plain: Vec<u8> = (0..packer.next_frame_len() as u32)
                .map(|j| (j.wrapping_mul(2654435761) >> (13 + i)) as u8)
                .collect();
            body.extend(packer.seal_next(&plain, [i; 16]).unwrap());
        }
        let meta = FileMeta {
            name: "r.bin".into(),
            mode: 0o600,
            mtime_secs: 0,
            mtime_nanos: 0,
        };
        let (table, manifest, bytes) = packer.finish(meta, 1000).unwrap();
        let mut full = table;
        full.extend(body);
        assert_eq!(full.len() as u64, manifest.body_len);
        (key, manifest, bytes)
    }

    /// DATA packet `index` of `m`'s archive with zero payload, sent by session 7.
    fn zero_data(m: &Manifest, index: u32) -> Vec<u8> {
        let header = DataHeader {
            archive_id: m.archive_id,
            packet_index: index,
            packet_count: m.packet_count(),
            flags: 0,
        };
        wire::encode_data(7, &header, &vec![0u8; payload_len(m, index) as usize])
    }

    fn nak_of(datagram: &[u8]) -> Nak {
        match wire::decode(datagram).unwrap().packet {
            Packet::Nak(nak) => nak,
            other => panic!("not a NAK: {other:?}"),
        }
    }

    #[test]
    fn a_resumed_receiver_naks_what_the_loop_passed_while_it_was_down() {
        let key = MasterKey::from_bytes([4; 32]);
        let mut rng = SmallRng::seed_from_u64(5);
        let mut original = vec![0u8; 20_000];
        rand::Rng::fill_bytes(&mut rng, &mut original);
        let (m, manifest_bytes, _) = crate::sim::pack(&key, &original, 4096, 1000, &mut rng);
        let count = m.packet_count();
        assert!(count >= 5, "{count} packets");
        let now = Instant::now();
        let manifest = wire::encode_manifest(7, &manifest_bytes);
        // First run: joins at 0, holds 0 and 1, is killed.
        let mut first = FileReceiver::new(key.clone(), 7, m.archive_id, 1, NakMode::Immediate);
        first.handle_datagram(now, &manifest);
        for i in 0..2 {
            first.handle_datagram(now, &zero_data(&m, i));
        }
        let (map, point) = (first.received().clone(), first.resume_point());
        assert_eq!(ResumePoint::decode(&point.encode()), Some(point.clone()));
        let restart = |point: Option<&ResumePoint>| {
            let mut r = FileReceiver::new(key.clone(), 7, m.archive_id, 2, NakMode::Immediate);
            r.handle_datagram(now, &manifest);
            assert!(r.restore(map.clone()));
            if let Some(p) = point {
                assert!(r.restore_tracks(p));
            }
            // The loop went on to 4 while it was down.
            r.handle_datagram(now, &zero_data(&m, 4));
            r.handle_timeout(now);
            r.poll_transmit()
        };
        let nak = nak_of(&restart(Some(&point)).expect("a NAK for what the loop passed"));
        assert_eq!(nak.ranges, vec![(2, 2)]);
        // Without the saved tracks, 2..4 look like packets from before the join.
        assert_eq!(restart(None), None);
        // Another server session's loop tells nothing of this one's.
        let mut other = point.clone();
        other.session_id = 8;
        let mut r = FileReceiver::new(key.clone(), 7, m.archive_id, 3, NakMode::Immediate);
        r.handle_datagram(now, &manifest);
        r.restore(map.clone());
        assert!(!r.restore_tracks(&other));
        // The jump over the time it was down is not reported as loss.
        let mut r = FileReceiver::new(key, 7, m.archive_id, 4, NakMode::Immediate);
        r.handle_datagram(now, &manifest);
        r.restore(map);
        r.restore_tracks(&point);
        r.handle_datagram(now, &zero_data(&m, 3));
        r.handle_datagram(now, &zero_data(&m, 4));
        assert_eq!(r.track_counters(0), (1, 2));
    }

    proptest! {
        #[test]
        fn resume_points_decode_what_they_encode_and_never_panic(
            session in any::<u32>(),
            tracks in proptest::collection::vec((0u8..16, any::<u32>(), any::<u32>(), any::<u64>()), 0..16),
            junk in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let point = ResumePoint {
                session_id: session,
                tracks: tracks.into_iter().map(|(track, join, position, advanced)| SavedTrack { track, join, position, advanced }).collect(),
            };
            prop_assert_eq!(ResumePoint::decode(&point.encode()), Some(point));
            let _ = ResumePoint::decode(&junk);
        }
    }

    #[test]
    fn a_mid_stream_joiner_naks_the_frame_table_at_once() {
        let (key, m, manifest_bytes) = setup();
        let now = Instant::now();
        let mut r = FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Immediate);
        r.handle_datagram(now, &wire::encode_manifest(7, &manifest_bytes));
        let count = m.packet_count();
        assert!(count >= 2 && m.table_len() <= 1000, "{count} packets");
        let data = |index: u32| {
            let len = if index + 1 == count {
                (m.body_len - index as u64 * 1000) as usize
            } else {
                1000
            };
            let header = DataHeader {
                archive_id: m.archive_id,
                packet_index: index,
                packet_count: count,
                flags: 0,
            };
            wire::encode_data(7, &header, &vec![0u8; len])
        };
        // Joins at the last packet: nothing the loop passed is missing, but the table
        // (packet 0, before the join) is.
        r.handle_datagram(now, &data(count - 1));
        r.handle_timeout(now);
        let nak = r.poll_transmit().expect("a NAK for the table");
        let Packet::Nak(nak) = wire::decode(&nak).unwrap().packet else {
            panic!("not a NAK");
        };
        assert_eq!(nak.ranges, vec![(0, 1)]);
    }

    #[test]
    fn every_kind_of_bad_datagram_is_counted_not_stored() {
        let (key, m, manifest_bytes) = setup();
        let now = Instant::now();
        let mut r = FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Suppressed);
        let data = |session, archive_id, index, count, len| {
            wire::encode_data(
                session,
                &DataHeader {
                    archive_id,
                    packet_index: index,
                    packet_count: count,
                    flags: 0,
                },
                &vec![1u8; len],
            )
        };
        let count = m.packet_count();
        assert_eq!(
            r.handle_datagram(now, &data(7, 99, 0, count, 1000)),
            Outcome::Nothing
        );
        assert_eq!(r.stats().before_manifest, 1);
        assert_eq!(
            r.handle_datagram(now, &wire::encode_manifest(7, &manifest_bytes)),
            Outcome::ManifestAccepted
        );
        let mut bad_crc = data(7, 99, 0, count, 1000);
        bad_crc[40] ^= 1;
        let mut not_ours = data(7, 99, 0, count, 1000);
        not_ours[0] = b'X';
        for (datagram, what) in [
            (bad_crc, "bad crc"),
            (not_ours, "magic"),
            (vec![1, 2, 3], "truncated"),
            (data(8, 99, 0, count, 1000), "other session"),
            (data(7, 98, 0, count, 1000), "other archive"),
            (data(7, 99, 0, count + 1, 1000), "wrong count"),
            (data(7, 99, 0, count, 999), "short payload"),
            (data(7, 99, count - 1, count, 1000), "long last payload"),
        ] {
            assert_eq!(
                r.handle_datagram(now, &datagram),
                Outcome::Nothing,
                "{what}"
            );
        }
        let s = r.stats().clone();
        assert_eq!(
            (
                s.bad_crc,
                s.not_ours,
                s.foreign_session,
                s.other_archive,
                s.malformed
            ),
            (1, 1, 1, 1, 4)
        );
        assert_eq!(s.stored, 0);
        let first = data(7, 99, 0, count, 1000);
        let outcome = r.handle_datagram(now, &first);
        assert!(
            matches!(
                outcome,
                Outcome::Store {
                    packet_index: 0,
                    body_offset: 0,
                    ..
                }
            ),
            "{outcome:?} {:?}",
            r.stats()
        );
        assert_eq!(
            r.handle_datagram(now, &data(7, 99, 0, count, 1000)),
            Outcome::Nothing
        );
        assert_eq!(r.stats().duplicates, 1);
        // A frame that failed verification makes its packets missing again.
        assert_eq!(r.mark_missing(now, 0..10), 1);
        assert!(!r.received().contains(0));
    }

    proptest! {
        #[test]
        fn random_datagrams_never_panic(datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1200), 1..20)) {
            let (key, m, manifest_bytes) = setup();
            let now = Instant::now();
            let mut r = FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Suppressed);
            r.handle_datagram(now, &wire::encode_manifest(7, &manifest_bytes));
            for d in &datagrams {
                let _ = r.handle_datagram(now, d);
            }
            prop_assert_eq!(r.stats().stored, 0);
        }
    }
}
