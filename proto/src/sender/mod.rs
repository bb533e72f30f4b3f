//! Server side: the carousel that loops one archive on its channel, and the announcer.

use crate::rate::{Membership, membership_memory};
use crate::wire::{self, DataHeader};

mod announcer;
mod coverage;
mod naks;
mod packet_set;
mod parity;

pub use announcer::Announcer;
use coverage::Coverage;
use packet_set::PacketSet;
use parity::ParityQueue;
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Longest time between two MANIFEST packets on a channel.
pub const MANIFEST_INTERVAL: Duration = Duration::from_millis(500);
/// Most DATA packets between two MANIFEST packets, so fast channels repeat it sooner.
pub const MANIFEST_EVERY_PACKETS: u32 = 256;
/// Time between two rounds of ANNOUNCE packets on the directory group.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(500);
/// Listening this long on a directory group hears every server there announce at
/// least once (an announce interval and a half, for a late one).
pub const HEAR_EVERY_SERVER: Duration =
    Duration::from_millis(ANNOUNCE_INTERVAL.as_millis() as u64 * 3 / 2);

/// Where the carousel reads archive body bytes from (the driver does the I/O).
pub trait PayloadSource {
    /// Fills `buf` with body bytes starting at `body_offset`.
    fn read_payload(&mut self, body_offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// What `Carousel::poll_transmit` put in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// A MANIFEST datagram of this many bytes.
    Manifest(usize),
    /// A STATUS datagram of this many bytes.
    Status(usize),
    /// PARITY packet `index` of block `block`, a datagram of `len` bytes.
    Parity {
        /// Block.
        block: u32,
        /// Parity index within the block.
        index: u16,
        /// Datagram length.
        len: usize,
    },
    /// DATA packet `index` sent as a repair, a datagram of `len` bytes.
    Repair {
        /// Packet index.
        index: u32,
        /// Datagram length.
        len: usize,
    },
    /// DATA packet `index`, a datagram of `len` bytes.
    Data {
        /// Packet index.
        index: u32,
        /// Datagram length.
        len: usize,
    },
    /// Nothing: a relay's carousel holding no packet yet (`hold`) has only its
    /// MANIFEST and STATUS to send, when they are due.
    Idle,
}

impl Transmit {
    /// Length of the datagram written.
    pub fn len(&self) -> usize {
        match *self {
            Transmit::Manifest(len)
            | Transmit::Status(len)
            | Transmit::Data { len, .. }
            | Transmit::Parity { len, .. }
            | Transmit::Repair { len, .. } => len,
            Transmit::Idle => 0,
        }
    }

    /// True for no datagram (`Idle`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a carousel repairs.
#[derive(Debug, Clone, Copy)]
pub struct RepairConfig {
    /// Channel rate in bits/s (to tell when a packet's natural turn beats its repair).
    pub rate_bps: u64,
    /// Largest share of the channel's packets that may be repairs (0 turns repair off).
    pub share: f64,
    /// Lowest GRTT advertised: keeps back-off windows above timer and scheduling jitter.
    pub grtt_floor: Duration,
    /// Group size advertised until more distinct receivers have NAKed.
    pub group_size: u32,
    /// Parity packets sent on the loop after each block, as a share of its
    /// packets (`serve --fec-overhead`; 0: only on request).
    pub fec_overhead: f64,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            rate_bps: 100_000_000,
            share: DEFAULT_REPAIR_SHARE,
            grtt_floor: DEFAULT_GRTT_FLOOR,
            group_size: 1,
            fec_overhead: 0.0,
        }
    }
}

/// Default largest share of a channel's packets spent on repairs.
pub const DEFAULT_REPAIR_SHARE: f64 = 0.25;
/// Default lowest GRTT advertised.
pub const DEFAULT_GRTT_FLOOR: Duration = Duration::from_millis(5);
/// Highest GRTT advertised.
pub const MAX_GRTT: Duration = Duration::from_secs(2);
/// Time between two STATUS packets on a channel.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(100);
/// STATUS times remembered for echo checks: 2.5 s of them, a bit more than `MAX_GRTT`.
const STATUS_TIMES_KEPT: usize = 25;
/// (receiver, echo) pairs remembered so that each gives one GRTT sample at most.
const SAMPLES_KEPT: usize = 256;
/// Most NAK source addresses a carousel keeps a repair budget for.
pub const MAX_NAK_SOURCES: usize = 1024;
/// A source that NAKed within this long shares the repair budget.
pub const NAK_SOURCE_ACTIVE: Duration = Duration::from_secs(2);
/// Seconds of its part of the repair share a source may save up (a burst of loss).
const SOURCE_BURST_SECS: f64 = 4.0;
/// Fewest repairs a source may always queue at once (a frame table, a burst).
const MIN_SOURCE_BURST: f64 = 256.0;
/// Repairs that may be saved up while none are wanted (a short burst).
const MAX_REPAIR_CREDIT: f64 = 64.0;

/// What a carousel sends next.
#[derive(Debug, Clone, Copy)]
enum Next {
    Manifest,
    Status,
    Repair(u32),
    Parity(u32),
    Proactive(u32),
    /// A packet newly held by a relay's carousel, sent at once (cut-through).
    Fresh(u32),
    Data(u32),
    Idle,
}

/// Counters of a carousel, for logs, tests and benchmarks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CarouselStats {
    /// DATA packets sent in loop order.
    pub loop_packets: u64,
    /// DATA and PARITY packets sent as repairs.
    pub repair_packets: u64,
    /// Of `repair_packets`, PARITY packets.
    pub parity_packets: u64,
    /// PARITY packets sent on the loop (`fec_overhead`), not as repairs.
    pub proactive_packets: u64,
    /// NAKed packets not repaired because their natural turn came first.
    pub repairs_skipped: u64,
    /// NAK packets accepted.
    pub naks: u64,
    /// NAK packets dropped: malformed, foreign session or archive, or ranges beyond the file.
    pub naks_dropped: u64,
    /// DATA packets a relay's carousel sent as soon as it held them.
    pub fresh_packets: u64,
    /// Packets NAKed that a relay's carousel did not hold yet (left to its loop).
    pub not_held: u64,
}

/// Loops one archive body on a channel, interleaving its manifest and STATUS, and
/// repairs what receivers NAK.
pub struct Carousel {
    session_id: u32,
    keys: wire::SessionKeys,
    archive_id: u64,
    manifest_datagram: Vec<u8>,
    body_len: u64,
    payload_size: usize,
    packet_count: u32,
    next_index: u32,
    next_manifest_at: Option<Instant>,
    next_status_at: Option<Instant>,
    data_since_manifest: u32,
    loops: u64,
    epoch: Instant,
    config: RepairConfig,
    grtt: Duration,
    pending: PacketSet,
    parity: ParityQueue,
    /// The block just looped and how many of its parity packets still go out
    /// on the loop (`fec_overhead`).
    proactive: Option<(u32, u16)>,
    credit: f64,
    /// Receivers heard lately (NAKs, reports): the group size estimate.
    members: Membership,
    /// What `next_len` found would go next, and when it looked.
    peeked: Option<(Instant, Next)>,
    /// Server times of the STATUS packets sent lately: the only echoes accepted.
    sent_status_times: std::collections::VecDeque<u64>,
    /// (receiver, echo) pairs that gave a GRTT sample lately: a replayed NAK gives none.
    sampled: std::collections::VecDeque<(u32, u64)>,
    /// Per source address: repairs it may still queue, and when that was worked out.
    sources: std::collections::HashMap<IpAddr, (f64, Instant)>,
    /// A relay's carousel still receiving its archive: what it holds (None: all).
    coverage: Option<Coverage>,
    stats: CarouselStats,
}

impl Carousel {
    /// A carousel for the archive described by `manifest`, whose encoded form is
    /// `manifest_bytes`, tagging its datagrams with `keys`; `now` starts its clock.
    pub fn new(
        keys: wire::SessionKeys,
        session_id: u32,
        manifest: &crate::Manifest,
        manifest_bytes: &[u8],
        now: Instant,
        config: RepairConfig,
    ) -> Self {
        Self {
            session_id,
            archive_id: manifest.archive_id,
            manifest_datagram: wire::encode_manifest(&keys.mac, session_id, manifest_bytes),
            keys,
            body_len: manifest.body_len,
            payload_size: manifest.payload_size as usize,
            packet_count: manifest.packet_count(),
            next_index: 0,
            next_manifest_at: None,
            next_status_at: None,
            data_since_manifest: 0,
            loops: 0,
            epoch: now,
            grtt: config.grtt_floor,
            config,
            pending: PacketSet::new(manifest.packet_count()),
            parity: ParityQueue::new(crate::fec::Blocks::of_manifest(manifest)),
            proactive: None,
            credit: 0.0,
            members: Membership::default(),
            peeked: None,
            sent_status_times: std::collections::VecDeque::with_capacity(STATUS_TIMES_KEPT),
            sampled: std::collections::VecDeque::with_capacity(SAMPLES_KEPT),
            sources: std::collections::HashMap::new(),
            coverage: None,
            stats: CarouselStats::default(),
        }
    }

    /// A relay's carousel (cut-through, spec §2.4): it holds no packet yet and
    /// sends only those `hold` names, each at once and then in its loop.
    pub fn holding_nothing_yet(mut self) -> Self {
        self.coverage = Some(Coverage::new(self.packet_count));
        self
    }

    /// Packets `range` are held now (a relay's archive, as it arrives).
    pub fn hold(&mut self, range: std::ops::Range<u32>) {
        if let Some(c) = self.coverage.as_mut() {
            self.peeked = None;
            c.hold(range);
        }
    }

    /// When its next MANIFEST or STATUS is due (what an idle relay's carousel,
    /// holding nothing to send, waits for).
    pub fn next_control_at(&self) -> Instant {
        match (self.next_manifest_at, self.next_status_at) {
            (Some(m), Some(s)) => m.min(s),
            _ => self.epoch,
        }
    }

    /// Packets of the loop not held yet (0 for an archive on disk).
    pub fn lacking(&self) -> u32 {
        self.coverage.as_ref().map_or(0, Coverage::lacking)
    }

    /// The loop's next packet: the one at the loop position, or for a relay's
    /// carousel the next it holds (Idle: none yet).
    fn loop_next(&self) -> Next {
        match &self.coverage {
            None => Next::Data(self.next_index),
            Some(c) => c.next_held(self.next_index).map_or(Next::Idle, Next::Data),
        }
    }

    /// Starts the loop at packet `index` instead of 0, so that channels of one file
    /// are out of phase and a receiver on two of them gets mostly new packets.
    pub fn with_phase(mut self, index: u32) -> Self {
        self.next_index = index % self.packet_count.max(1);
        self
    }

    /// The channel rate, bits/s.
    pub fn rate(&self) -> u64 {
        self.config.rate_bps
    }

    /// Changes the channel rate (advertised in STATUS, used for repair decisions).
    pub fn set_rate(&mut self, rate_bps: u64) {
        self.config.rate_bps = rate_bps.max(1);
    }

    /// Notes that receiver `id` was heard (a NAK or a report): it counts in the group size.
    pub fn note_receiver(&mut self, now: Instant, id: u32) {
        self.members.heard(id, now);
    }

    /// Largest datagram this carousel writes; buffers passed in must be at least this long.
    pub fn max_datagram_len(&self) -> usize {
        (wire::DATA_HEADER_LEN + self.payload_size)
            .max(self.parity.datagram_len())
            .max(self.manifest_datagram.len())
    }

    /// Number of completed loops over the archive.
    pub fn loops(&self) -> u64 {
        self.loops
    }

    /// Packets in one loop.
    pub fn packet_count(&self) -> u32 {
        self.packet_count
    }

    /// The GRTT this carousel advertises.
    pub fn grtt(&self) -> Duration {
        self.grtt
    }

    /// Counters.
    pub fn stats(&self) -> &CarouselStats {
        &self.stats
    }

    /// Packets waiting to be repaired (copies and parity).
    pub fn pending_repairs(&self) -> u32 {
        self.pending.count + self.parity.len()
    }

    fn micros_since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// The group size estimate: the configured one, or the receivers heard lately.
    pub fn group_size(&self) -> u32 {
        self.config.group_size.max(self.members.len()).max(1)
    }

    /// Takes a datagram from the control port: NAKs are queued for repair; anything
    /// malformed, foreign, unauthenticated or absurd is dropped and counted. Returns
    /// how many packets the NAK newly asked for (queued or left to the loop), a loss
    /// signal.
    pub fn handle_datagram(&mut self, now: Instant, from: IpAddr, bytes: &[u8]) -> u32 {
        match wire::decode(bytes) {
            Ok(wire::Datagram {
                session_id,
                packet: wire::Packet::Nak(nak),
            }) if session_id == self.session_id && self.verifies(bytes) => {
                self.handle_nak(now, from, &nak)
            }
            _ => {
                self.stats.naks_dropped += 1;
                0
            }
        }
    }

    /// True when `time` is the server time of a STATUS this carousel sent in the
    /// last 2.5 s (an echo worth believing).
    pub fn sent_status_lately(&self, time: u64) -> bool {
        time != 0 && self.sent_status_times.contains(&time)
    }

    /// True when `datagram` (not DATA) carries this session's tag for this archive.
    pub fn verifies(&self, datagram: &[u8]) -> bool {
        self.keys.mac.verifies(datagram)
    }

    /// What `poll_transmit` sends next at `now`, without sending it.
    fn next(&self, now: Instant) -> Next {
        if self.next_manifest_at.is_none_or(|at| now >= at)
            || self.data_since_manifest >= MANIFEST_EVERY_PACKETS
        {
            return Next::Manifest;
        }
        if self.next_status_at.is_none_or(|at| now >= at) {
            return Next::Status;
        }
        if let Some((block, _)) = self.proactive {
            return Next::Proactive(block);
        }
        if let Some(k) = self.coverage.as_ref().and_then(Coverage::next_fresh) {
            return Next::Fresh(k);
        }
        if self.credit < 1.0 {
            return self.loop_next();
        }
        // Copies and parity: the one whose loop turn is furthest away goes first.
        let n = self.packet_count.max(1) as u64;
        let ahead = |k: u32| (k as u64 + n - self.next_index as u64) % n;
        let copy = self.pending.furthest_before(self.next_index);
        let parity = self.parity.furthest_before(self.next_index);
        match (copy, parity) {
            (Some(k), Some(b)) if ahead(self.parity.blocks().packets(b).start) > ahead(k) => {
                Next::Parity(b)
            }
            (Some(k), _) => Next::Repair(k),
            (None, Some(b)) => Next::Parity(b),
            (None, None) => self.loop_next(),
        }
    }

    /// Length of the datagram `poll_transmit` would write at `now`: a batch of
    /// equal-sized datagrams (UDP GSO) must know before it takes one more.
    pub fn next_len(&mut self, now: Instant) -> usize {
        let next = self.next(now);
        // Kept for the `poll_transmit` that follows at the same instant: one search
        // of the repair set per datagram, not two.
        self.peeked = Some((now, next));
        match next {
            Next::Manifest => self.manifest_datagram.len(),
            Next::Status => wire::STATUS_DATAGRAM_LEN,
            Next::Repair(index) | Next::Data(index) | Next::Fresh(index) => {
                wire::DATA_HEADER_LEN + self.payload_len(index)
            }
            Next::Parity(_) | Next::Proactive(_) => self.parity.datagram_len(),
            Next::Idle => 0,
        }
    }

    /// Writes the next datagram into `buf`: the manifest when due (500 ms or 256 DATA
    /// packets after the last), a STATUS when due (100 ms), a repair when one is pending
    /// and the repair share allows, else the next DATA packet of the loop. The carousel
    /// never runs dry; the caller's pacer decides when to call.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        source: &mut impl PayloadSource,
    ) -> io::Result<Transmit> {
        let next = match self.peeked.take() {
            Some((at, next)) if at == now => next,
            _ => self.next(now),
        };
        match next {
            Next::Manifest => {
                self.next_manifest_at = Some(now + MANIFEST_INTERVAL);
                self.data_since_manifest = 0;
                let len = self.manifest_datagram.len();
                buf[..len].copy_from_slice(&self.manifest_datagram);
                Ok(Transmit::Manifest(len))
            }
            Next::Status => {
                self.next_status_at = Some(now + STATUS_INTERVAL);
                let memory = membership_memory(
                    self.group_size(),
                    self.config.rate_bps,
                    self.max_datagram_len(),
                );
                self.members.prune(now, memory);
                let server_time_us = self.micros_since_epoch(now).max(1);
                if self.sent_status_times.len() == STATUS_TIMES_KEPT {
                    self.sent_status_times.pop_front();
                }
                self.sent_status_times.push_back(server_time_us);
                let status = wire::Status {
                    archive_id: self.archive_id,
                    server_time_us,
                    grtt_us: self.grtt.as_micros() as u32,
                    group_size: self.group_size(),
                    rate_bps: self.config.rate_bps,
                    lacking: self.lacking(),
                };
                let datagram = wire::encode_status(&self.keys.mac, self.session_id, &status);
                buf[..datagram.len()].copy_from_slice(&datagram);
                Ok(Transmit::Status(datagram.len()))
            }
            Next::Repair(index) => {
                self.pending.remove(index);
                self.credit -= 1.0;
                self.stats.repair_packets += 1;
                let len = self.write_data(index, wire::FLAG_REPAIR, buf, source)?;
                Ok(Transmit::Repair { index, len })
            }
            Next::Parity(block) | Next::Proactive(block) => {
                if let Next::Parity(_) = next {
                    self.credit -= 1.0;
                    self.stats.repair_packets += 1;
                    self.stats.parity_packets += 1;
                } else {
                    self.proactive = match self.proactive {
                        Some((b, left)) if left > 1 => Some((b, left - 1)),
                        _ => None,
                    };
                    self.stats.proactive_packets += 1;
                }
                let header = (self.archive_id, self.session_id);
                let (index, len) = (self.parity).write_next(block, header, buf, source)?;
                Ok(Transmit::Parity { block, index, len })
            }
            Next::Fresh(index) => {
                let c = self.coverage.as_mut().expect("fresh packets are a relay's");
                c.sent_fresh();
                if c.is_done() {
                    self.coverage = None;
                }
                self.stats.fresh_packets += 1;
                self.data_since_manifest += 1;
                let len = self.write_data(index, 0, buf, source)?;
                Ok(Transmit::Data { index, len })
            }
            Next::Idle => Ok(Transmit::Idle),
            Next::Data(index) => {
                self.pending.remove(index);
                if index < self.next_index {
                    // A relay's carousel went round past packets it lacks.
                    self.loops += 1;
                }
                let blocks = *self.parity.blocks();
                let block = blocks.of(index);
                let extra = (blocks.source_count(block) as f64 * self.config.fec_overhead).ceil();
                let whole = self
                    .coverage
                    .as_ref()
                    .is_none_or(|c| c.holds_all(blocks.packets(block)));
                if extra >= 1.0 && whole && index + 1 == blocks.packets(block).end {
                    self.proactive =
                        Some((block, extra.min(blocks.source_count(block) as f64) as u16));
                }
                if index % crate::fec::BLOCK_PACKETS == 0 {
                    self.parity.loop_reaches(self.parity.blocks().of(index));
                }
                let len = self.write_data(index, 0, buf, source)?;
                self.stats.loop_packets += 1;
                let share = self.config.share.clamp(0.0, 0.9);
                self.credit = (self.credit + share / (1.0 - share)).min(MAX_REPAIR_CREDIT);
                self.next_index = index + 1;
                self.data_since_manifest += 1;
                if self.next_index == self.packet_count {
                    self.next_index = 0;
                    self.loops += 1;
                }
                Ok(Transmit::Data { index, len })
            }
        }
    }

    /// Payload bytes of packet `index`.
    fn payload_len(&self, index: u32) -> usize {
        let offset = index as u64 * self.payload_size as u64;
        (self.body_len - offset).min(self.payload_size as u64) as usize
    }

    fn write_data(
        &self,
        index: u32,
        flags: u16,
        buf: &mut [u8],
        source: &mut impl PayloadSource,
    ) -> io::Result<usize> {
        let offset = index as u64 * self.payload_size as u64;
        let payload_len = self.payload_len(index);
        let header = DataHeader {
            archive_id: self.archive_id,
            packet_index: index,
            packet_count: self.packet_count,
            flags,
        };
        wire::write_data_header(buf, self.session_id, &header);
        // The payload is sealed cells, sent as the archive holds them: no
        // cryptography here (spec §2.1).
        let end = wire::DATA_HEADER_LEN + payload_len;
        source.read_payload(offset, &mut buf[wire::DATA_HEADER_LEN..end])?;
        Ok(end)
    }
}

#[cfg(test)]
mod tests;
