//! Receiver side: the state machine that takes one file's channel datagrams in and
//! says which payload goes where. The driver does the writing.

use crate::cell::CellKey;
use crate::keys::{FINGERPRINT_LEN, MasterKey};
use crate::manifest::Manifest;
use crate::rate::{ReportTimer, report_interval};
use crate::received::ReceivedMap;
use crate::sender::{DEFAULT_GRTT_FLOOR, MAX_GRTT};
use crate::wire::{self, DecodeError, MacKey, Packet, Report, Status};

mod data;
mod nak;
mod parity;
mod tracks;

use nak::NakTimer;
pub use nak::{
    BACKOFF_FACTOR, DEFAULT_GROUP_SIZE, DEFAULT_GRTT, HOLDOFF_GRTTS, NakMode, random_backoff,
};
use parity::ParityState;
pub use parity::{MAX_PARITY_BYTES, Rebuild, RepairKind};
use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};
use std::ops::Range;
use std::time::{Duration, Instant};
use tracks::LoopTrack;
pub use tracks::{MAX_TRACKS, ResumePoint, SavedTrack};

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
    /// Datagrams of this session whose tag did not verify (forged or corrupt).
    pub unauthenticated: u64,
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
    /// PARITY shards taken (held for a rebuild).
    pub parity: u64,
    /// PARITY shards not needed: the block was complete, the shard held already,
    /// or this receiver repairs by copies.
    pub parity_unused: u64,
    /// PARITY shards dropped because `MAX_PARITY_BYTES` were held.
    pub parity_dropped: u64,
    /// Packets rebuilt from parity.
    pub rebuilt: u64,
    /// Loop positions this receiver's REPORTs said were lost, in all.
    pub reported_lost: u64,
    /// STATUS packets no newer than the last taken (replays), ignored.
    pub stale_status: u64,
    /// Loop packets whose position the channel could not have reached by now
    /// (replays of an earlier pass): stored if new, but the loop track stays.
    pub out_of_pace: u64,
}

impl ReceiverStats {
    /// Counts a datagram that failed to decode.
    fn count_decode_error(&mut self, e: DecodeError) {
        match e {
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
            + self.unauthenticated
            + self.not_ours
            + self.malformed
            + self.bad_manifest
    }
}

/// Receives one archive from its channels.
pub struct FileReceiver {
    master: MasterKey,
    session_id: u32,
    /// Tags of this archive's control packets in this session.
    mac: MacKey,
    /// Opens the sealed cells its DATA carries (spec §3.4).
    cells: CellKey,
    /// When a DATA packet whose cells opened last came (new or held already).
    data_heard: Option<Instant>,
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
    /// Packets other receivers NAKed in this holdoff window and the one before:
    /// each stays asked one to two holdoffs, however long others keep NAKing.
    asked: ReceivedMap,
    /// Of `asked`, those NAKed in this window.
    asked_in_window: ReceivedMap,
    /// When this window ends.
    asked_until: Option<Instant>,
    /// Last STATUS and when it arrived.
    status: Option<(Status, Instant)>,
    /// Each track's channel rate as listed, bits/s (0: not told).
    track_rates: [u64; MAX_TRACKS],
    outgoing: Option<Vec<u8>>,
    /// Copies or parity (§6.5).
    repair_kind: RepairKind,
    parity: ParityState,
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
            mac: master.file_key(archive_id).session_mac_key(session_id),
            cells: CellKey::new(&master.file_key(archive_id)),
            data_heard: None,
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
            asked_in_window: ReceivedMap::new(0),
            asked_until: None,
            status: None,
            track_rates: [0; MAX_TRACKS],
            outgoing: None,
            repair_kind: RepairKind::Copies,
            parity: ParityState::default(),
        }
    }

    /// Takes one datagram from the file's (only) channel: track 0.
    pub fn handle_datagram<'a>(&mut self, now: Instant, bytes: &'a mut [u8]) -> Outcome<'a> {
        self.handle_datagram_on(now, 0, bytes)
    }

    /// Takes one datagram that came on the channel the driver numbers `track`
    /// (below `MAX_TRACKS`); each channel's loop position is followed on its own.
    /// A DATA datagram's cells are opened in place (`bytes` is changed): the
    /// payload of `Outcome::Store` is the opened cells.
    pub fn handle_datagram_on<'a>(
        &mut self,
        now: Instant,
        track: usize,
        bytes: &'a mut [u8],
    ) -> Outcome<'a> {
        if bytes.get(3) == Some(&(wire::PacketType::Data as u8)) {
            return self.take_data(now, track.min(MAX_TRACKS - 1), bytes);
        }
        let bytes: &'a [u8] = bytes;
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
        // Nothing is acted on before its tag verifies (spec §2.10). PARITY has
        // none: a shard is only held, and what it rebuilds is checked by its
        // cells' tags; it tells nothing of the session being alive.
        let verified = match &datagram.packet {
            Packet::Parity(header, shard) => return self.handle_parity(*header, shard),
            Packet::Manifest(_) | Packet::Status(_) | Packet::Nak(_) => self.mac.verifies(bytes),
            _ => return Outcome::Nothing,
        };
        if !verified {
            if let Packet::Manifest(body) = datagram.packet {
                return self.unverified_manifest(body);
            }
            self.stats.unauthenticated += 1;
            return Outcome::Nothing;
        }
        self.last_heard = Some(now);
        if self.report_timer.is_none() {
            self.report_timer = Some(ReportTimer::new(now, self.rng.random::<f64>()));
        }
        match datagram.packet {
            Packet::Manifest(body) => self.handle_manifest(body),
            Packet::Status(mut status) if status.archive_id == self.archive_id => {
                // Only a STATUS newer than the last taken counts: a replayed one
                // would have this receiver echo a stale time, which the server
                // would take as a fresh round trip (T35).
                if self
                    .status
                    .is_some_and(|(s, _)| status.server_time_us <= s.server_time_us)
                {
                    self.stats.stale_status += 1;
                    return Outcome::Nothing;
                }
                // A GRTT out of the server's own bounds would make NAK back-offs
                // vanish (a storm) or stall repair (T5): clamped even when genuine.
                let (floor, max) = (DEFAULT_GRTT_FLOOR, MAX_GRTT);
                status.grtt_us =
                    (status.grtt_us as u128).clamp(floor.as_micros(), max.as_micros()) as u32;
                status.group_size = status.group_size.max(1);
                let lacked = self.server_lacks();
                self.status = Some((status, now));
                // A relay that now holds its whole loop: the gaps it passed are
                // asked for from now on.
                if lacked
                    && !self.server_lacks()
                    && self.timer == NakTimer::Idle
                    && !self.missing_passed(None, 1).is_empty()
                {
                    self.start_backoff(now);
                }
                Outcome::Nothing
            }
            Packet::Nak(nak) if nak.archive_id == self.archive_id => {
                self.hear_nak(now, &nak);
                Outcome::Nothing
            }
            _ => Outcome::Nothing,
        }
    }

    /// Takes the manifest of its archive as verified already (by a reception of the
    /// same archive under another session), so DATA is taken from the first packet.
    /// False (and nothing changes) for another archive's manifest or when it has one.
    pub fn accept_manifest(&mut self, m: Manifest) -> bool {
        if self.manifest.is_some() || m.archive_id != self.archive_id {
            return false;
        }
        self.received = ReceivedMap::new(m.packet_count());
        self.manifest = Some(m);
        true
    }

    fn handle_manifest<'a>(&mut self, body: &[u8]) -> Outcome<'a> {
        if self.manifest.is_some() {
            return Outcome::Nothing;
        }
        match Manifest::decode(body, &self.master) {
            Ok(m) if m.archive_id == self.archive_id => {
                self.accept_manifest(m);
                Outcome::ManifestAccepted
            }
            Ok(_) => {
                self.stats.other_archive += 1;
                Outcome::Nothing
            }
            Err(_) => {
                self.stats.bad_manifest += 1;
                Outcome::Nothing
            }
        }
    }

    /// A MANIFEST whose packet tag failed: a forgery, or an archive sealed with
    /// another master key. Only the latter is told (as a possible wrong key, which
    /// the session reports only if no manifest of ours verifies for a while).
    fn unverified_manifest<'a>(&mut self, body: &[u8]) -> Outcome<'a> {
        match Manifest::decode_unverified(body) {
            Ok(m)
                if self.manifest.is_none()
                    && m.archive_id == self.archive_id
                    && m.key_fingerprint != self.master.fingerprint() =>
            {
                Outcome::WrongKey {
                    theirs: m.key_fingerprint,
                }
            }
            _ => {
                self.stats.unauthenticated += 1;
                Outcome::Nothing
            }
        }
    }

    /// The packets carrying the frame table: gaps from the join on, wherever the loop
    /// is, because no frame can be verified before the table is.
    fn table_packets(&self) -> Range<u32> {
        self.manifest.as_ref().map_or(0..0, |m| m.table_packets())
    }

    /// Whether some packet of the frame table is not held.
    fn table_missing(&self) -> bool {
        !(self.received)
            .missing_runs(self.table_packets(), 1)
            .is_empty()
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
                m.payload_size as usize + wire::DATA_HEADER_LEN
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
            echo_time_us: self.status.map_or(0, |(s, _)| s.server_time_us),
        };
        self.stats.reported_lost += report.lost as u64;
        Some(wire::encode_report(&self.mac, self.session_id, &report))
    }

    /// A DONE datagram saying this receiver delivered the file `elapsed` after joining.
    pub fn done_datagram(&self, elapsed: Duration) -> Vec<u8> {
        wire::encode_done(
            &self.mac,
            self.session_id,
            &wire::Done {
                archive_id: self.archive_id,
                receiver_id: self.receiver_id,
                elapsed_ms: elapsed.as_millis().min(u32::MAX as u128) as u32,
            },
        )
    }

    /// The random id this receiver puts in its NAKs, reports and DONE.
    pub fn receiver_id(&self) -> u32 {
        self.receiver_id
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

    /// True while gaps the loop has passed wait for a NAK or its repairs.
    pub fn awaiting_repair(&self) -> bool {
        self.timer != NakTimer::Idle
    }

    /// The channel's rate as the latest STATUS said it.
    pub fn status_rate(&self) -> Option<u64> {
        self.status.map(|(s, _)| s.rate_bps)
    }

    /// Track `track`'s channel loops at `rate_bps` (as its listing says).
    pub fn set_track_rate(&mut self, track: usize, rate_bps: u64) {
        if let Some(rate) = self.track_rates.get_mut(track) {
            *rate = rate_bps;
        }
    }

    /// DATA packets a second on track `track`: the faster of its listed rate and
    /// the latest STATUS's (None before either, or before the manifest).
    pub(super) fn packets_per_second(&self, track: usize) -> Option<f64> {
        let listed = self.track_rates.get(track).copied().unwrap_or(0);
        let rate = self.status_rate().unwrap_or(0).max(listed);
        if rate == 0 {
            return None;
        }
        let m = self.manifest.as_ref()?;
        let datagram = m.payload_size as usize + wire::DATA_HEADER_LEN;
        Some(rate as f64 / 8.0 / datagram as f64)
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
mod tests;
