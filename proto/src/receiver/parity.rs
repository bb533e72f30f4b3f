//! Parity repair at the receiver (spec §6.5): parity shards held per block until
//! the block can be rebuilt, the block requests of its NAKs, and others' requests
//! that suppress them.

use super::{FileReceiver, Outcome};
use crate::fec::Blocks;
use crate::wire::{self, ParityHeader};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Most bytes of parity shards one reception holds while their blocks wait for
/// more; past it a new shard is dropped (and asked for again).
pub const MAX_PARITY_BYTES: usize = 16 << 20;

/// The most receivers (the server's count in STATUS) for which `RepairKind::Auto`
/// asks for copies. With few receivers the union of their losses is small, so
/// copies cost the channel little more than parity, and they cost the receiver
/// no rebuild (a 1024-packet block takes 1-2 ms to decode however little it
/// lacks); with more, each parity packet repairs a different loss at each.
pub const AUTO_COPIES_UP_TO: u32 = 4;

/// Longest a `RepairKind::Auto` receiver holds its first NAK for a STATUS to
/// tell it the group (one comes every 100 ms); past it, it asks for copies.
pub const AUTO_STATUS_WAIT: Duration = Duration::from_millis(500);

/// How a receiver asks for what the loop passed and it lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RepairKind {
    /// Ask for the missing packets themselves (NAK ranges).
    #[default]
    Copies,
    /// Ask each block for as many parity packets as it lacks (NAK block requests);
    /// the driver rebuilds blocks from them (`poll_rebuild`).
    Parity,
    /// Ask for parity once the last STATUS counts more than `AUTO_COPIES_UP_TO`
    /// receivers or parity has come, for copies otherwise. Before any STATUS the
    /// NAK waits for one (`AUTO_STATUS_WAIT`): parity asked then would be on the
    /// channel for all, and move a small group to parity for good; copies asked
    /// then by a large group would be the union of all their losses. Parity that
    /// comes (`serve --fec-overhead`, or asked by others) is taken, and from then
    /// on parity is asked: it is on the channel anyway.
    Auto,
}

/// A block the driver is to rebuild: every packet of it not listed in `missing`
/// is stored already; `parity` holds enough shards for the rest
/// (`fec::Blocks::rebuild`). The receiver counts `missing` as held from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    /// The block.
    pub block: u32,
    /// Its packets that are not stored, in order.
    pub missing: Vec<u32>,
    /// Parity shards of the block: (parity index, shard).
    pub parity: Vec<(u16, Vec<u8>)>,
}

/// Parity state of one reception.
#[derive(Debug, Default)]
pub(super) struct ParityState {
    /// Per block waiting for more: the parity shards held.
    held: BTreeMap<u32, Vec<(u16, Vec<u8>)>>,
    bytes: usize,
    /// Others' block requests heard: per block, the largest count heard and
    /// until when it holds (one holdoff after the NAK that asked it).
    asked: BTreeMap<u32, (u16, Instant)>,
    rebuilds: VecDeque<Rebuild>,
    /// Blocks the driver could not rebuild because it no longer holds some of
    /// their stored packets as they came: their gaps are asked for as copies.
    by_copies: BTreeSet<u32>,
    /// A PARITY packet of this archive has come (`RepairKind::Auto` then asks
    /// for parity).
    seen: bool,
    /// How an `Auto` receiver with no STATUS yet holds its NAKs.
    status_wait: StatusWait,
}

/// An `Auto` receiver's wait for its first STATUS before it NAKs.
#[derive(Debug, Default, Clone, Copy)]
enum StatusWait {
    /// No NAK has fallen due yet.
    #[default]
    NotStarted,
    /// NAKs wait until then.
    Until(Instant),
    /// The wait passed with no STATUS: copies are asked.
    Over,
}

impl ParityState {
    fn held_in(&self, block: u32) -> usize {
        self.held.get(&block).map_or(0, Vec::len)
    }

    fn drop_block(&mut self, block: u32) -> Option<Vec<(u16, Vec<u8>)>> {
        let shards = self.held.remove(&block)?;
        self.bytes -= shards.iter().map(|(_, s)| s.len()).sum::<usize>();
        Some(shards)
    }
}

impl FileReceiver {
    /// This receiver, asking for repairs as `kind` says (see `RepairKind`).
    pub fn with_repair_kind(mut self, kind: RepairKind) -> Self {
        self.repair_kind = kind;
        self
    }

    /// How this receiver asks for repairs now: `Copies` or `Parity` (`Auto`
    /// resolved by the group the last STATUS counts and the parity seen).
    pub(super) fn repair_now(&self) -> RepairKind {
        match (self.repair_kind, self.status) {
            (RepairKind::Auto, _) if self.parity.seen => RepairKind::Parity,
            (RepairKind::Auto, Some((status, _))) if status.group_size > AUTO_COPIES_UP_TO => {
                RepairKind::Parity
            }
            (RepairKind::Auto, _) => RepairKind::Copies,
            (kind, _) => kind,
        }
    }

    /// True for an `Auto` receiver that knows neither the group nor of parity,
    /// and still waits for the first STATUS to tell it which kind to ask.
    pub(super) fn kind_unknown(&self) -> bool {
        self.repair_kind == RepairKind::Auto
            && self.status.is_none()
            && !self.parity.seen
            && !matches!(self.parity.status_wait, StatusWait::Over)
    }

    /// True while a NAK falling due now is to wait for the first STATUS
    /// (`AUTO_STATUS_WAIT` from the first NAK that fell due). A NAK for a frame
    /// table with gaps never waits: the table is asked as copies at once.
    pub(super) fn holds_nak_for_status(&mut self, now: Instant) -> bool {
        if !self.kind_unknown() || self.table_missing() {
            return false;
        }
        let until = match self.parity.status_wait {
            StatusWait::Until(until) => until,
            _ => now + AUTO_STATUS_WAIT,
        };
        let holds = now < until;
        self.parity.status_wait = match holds {
            true => StatusWait::Until(until),
            false => StatusWait::Over,
        };
        holds
    }

    /// True when this receiver may be told to rebuild blocks from parity: it asks
    /// for parity, parity has come, or it does not know yet which it will ask.
    /// Only then need the driver keep the bytes of frames it unpacks for blocks
    /// not yet whole (a rebuild with those bytes gone is repaired by copies
    /// instead).
    pub fn may_rebuild(&self) -> bool {
        self.parity.seen || matches!(self.repair_now(), RepairKind::Parity) || self.kind_unknown()
    }

    /// The next block the driver must rebuild, once its DATA payloads are written.
    pub fn poll_rebuild(&mut self) -> Option<Rebuild> {
        self.parity.rebuilds.pop_front()
    }

    /// A rebuild failed: the packets it was to restore are missing again, and
    /// asked for again; as copies if `by_copies` (the driver no longer holds
    /// some of the block's stored packets, so parity cannot rebuild it).
    pub fn rebuild_failed(&mut self, now: Instant, missing: &[u32], by_copies: bool) {
        let Some(blocks) = self.blocks() else { return };
        let p = blocks.payload_size() as u64;
        if by_copies {
            self.parity
                .by_copies
                .extend(missing.iter().map(|&k| blocks.of(k)));
        }
        for &k in missing {
            self.mark_missing(now, k as u64 * p..k as u64 * p + 1);
        }
    }

    pub(super) fn blocks(&self) -> Option<Blocks> {
        self.manifest.as_ref().map(Blocks::of_manifest)
    }

    pub(super) fn handle_parity<'a>(&mut self, header: ParityHeader, shard: &[u8]) -> Outcome<'a> {
        if header.archive_id != self.archive_id {
            self.stats.other_archive += 1;
            return Outcome::Nothing;
        }
        let Some(blocks) = self.blocks() else {
            self.stats.before_manifest += 1;
            return Outcome::Nothing;
        };
        let packets = blocks.packets(header.block);
        if header.packet_count != self.received.len()
            || shard.len() != blocks.shard_len()
            || header.parity_index >= blocks.source_count(header.block)
        {
            self.stats.malformed += 1;
            return Outcome::Nothing;
        }
        self.parity.seen = true;
        let held = self.received.count_in(packets.clone()) as usize;
        let shards = self.parity.held.get(&header.block);
        if self.repair_kind == RepairKind::Copies
            || held == packets.len()
            || self.parity.by_copies.contains(&header.block)
            || shards.is_some_and(|s| s.iter().any(|(j, _)| *j == header.parity_index))
        {
            self.stats.parity_unused += 1;
            return Outcome::Nothing;
        }
        if self.parity.bytes + shard.len() > MAX_PARITY_BYTES {
            self.stats.parity_dropped += 1;
            return Outcome::Nothing;
        }
        self.stats.parity += 1;
        self.parity.bytes += shard.len();
        (self.parity.held.entry(header.block).or_default())
            .push((header.parity_index, shard.to_vec()));
        self.try_rebuild(header.block);
        Outcome::Nothing
    }

    /// After packet `index` was stored: its block may now be rebuilt, or, complete,
    /// needs its parity no more.
    pub(super) fn block_gained(&mut self, index: u32) {
        if self.parity.held.is_empty() && self.parity.by_copies.is_empty() {
            return;
        }
        if let Some(blocks) = self.blocks() {
            self.try_rebuild(blocks.of(index));
        }
    }

    /// Rebuilds `block` (hands it to the driver) once its packets held and parity
    /// shards are as many as its packets.
    fn try_rebuild(&mut self, block: u32) {
        let Some(blocks) = self.blocks() else { return };
        let packets = blocks.packets(block);
        let held = self.received.count_in(packets.clone()) as usize;
        if held == packets.len() {
            self.parity.drop_block(block);
            self.parity.by_copies.remove(&block);
            return;
        }
        if self.parity.by_copies.contains(&block)
            || held + self.parity.held_in(block) < packets.len()
        {
            return;
        }
        let parity = self.parity.drop_block(block).unwrap_or_default();
        let missing: Vec<u32> = (self.received.missing_runs(packets.clone(), usize::MAX))
            .into_iter()
            .flatten()
            .collect();
        for &k in &missing {
            self.received.insert(k);
        }
        self.stats.rebuilt += missing.len() as u64;
        if self.received.is_complete() {
            self.timer = super::NakTimer::Idle;
        }
        self.parity.rebuilds.push_back(Rebuild {
            block,
            missing,
            parity,
        });
    }

    /// Notes another receiver's block requests (suppression, §6.5): each holds
    /// for one holdoff.
    pub(super) fn hear_block_requests(&mut self, now: Instant, requests: &[(u32, u16)]) {
        let until = now + self.holdoff();
        self.parity.asked.retain(|_, (_, at)| *at > now);
        for &(block, count) in requests {
            let asked = self.parity.asked.entry(block).or_insert((0, until));
            if asked.1 <= now || count >= asked.0 {
                *asked = (count, until);
            }
        }
    }

    /// The gap ranges `gaps` within blocks to be repaired by copies.
    pub(super) fn in_copies_blocks(&self, gaps: &[Range<u32>]) -> Vec<Range<u32>> {
        let Some(blocks) = self.blocks() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &block in &self.parity.by_copies {
            let packets = blocks.packets(block);
            for gap in gaps {
                let part = gap.start.max(packets.start)..gap.end.min(packets.end);
                if part.start < part.end {
                    out.push(part);
                }
            }
        }
        out
    }

    /// What a parity NAK would ask for now: per block the loop has passed with
    /// packets missing, how many parity packets it still lacks, unless another
    /// receiver asked for at least as many.
    pub(super) fn block_requests(&self, now: Instant, passed: &[Range<u32>]) -> Vec<(u32, u16)> {
        let Some(blocks) = self.blocks() else {
            return Vec::new();
        };
        // Missing packets passed, per block (blocks come in order: ranges are sorted).
        let mut lacking: Vec<(u32, u32)> = Vec::new();
        for range in passed {
            let mut block = blocks.of(range.start);
            loop {
                let packets = blocks.packets(block);
                if packets.start >= range.end || packets.is_empty() {
                    break;
                }
                let part = range.start.max(packets.start)..range.end.min(packets.end);
                let missing = part.len() as u32 - self.received.count_in(part);
                match lacking.last_mut() {
                    Some((b, m)) if *b == block => *m += missing,
                    _ if missing > 0 => lacking.push((block, missing)),
                    _ => {}
                }
                block += 1;
            }
        }
        lacking
            .into_iter()
            .filter(|(block, _)| !self.parity.by_copies.contains(block))
            .filter_map(|(block, missing)| {
                let need = missing.saturating_sub(self.parity.held_in(block) as u32);
                let asked = match self.parity.asked.get(&block) {
                    Some(&(count, until)) if until > now => count as u32,
                    _ => 0,
                };
                (need > asked).then_some((block, need.min(u16::MAX as u32) as u16))
            })
            .take(wire::MAX_NAK_RANGES)
            .collect()
    }
}

impl FileReceiver {
    /// Rebuilds `rebuild`'s missing packets from the block's other packets as
    /// stored (`present`: opened cells, which are sealed again here, in place,
    /// since parity is over the bytes that were sent) and its parity shards.
    /// Returns the rebuilt packets with their cells opened, ready to store as
    /// arrivals; `FecError::WrongShard` if any of them fails its cells' tags.
    pub fn rebuild_block(
        &self,
        rebuild: &Rebuild,
        present: &mut [(u32, &mut [u8])],
    ) -> Result<Vec<(u32, Vec<u8>)>, crate::fec::FecError> {
        let blocks = self.blocks().ok_or(crate::fec::FecError::BadShards)?;
        for (k, bytes) in present.iter_mut() {
            self.seal_again(*k, bytes);
        }
        let present: Vec<(u32, &[u8])> = present.iter().map(|(k, b)| (*k, &**b)).collect();
        let parity: Vec<(u16, &[u8])> = (rebuild.parity.iter())
            .map(|(j, shard)| (*j, shard.as_slice()))
            .collect();
        let mut rebuilt = blocks.rebuild(rebuild.block, &present, &parity)?;
        for (k, bytes) in rebuilt.iter_mut() {
            if !self.open_rebuilt(*k, bytes) {
                return Err(crate::fec::FecError::WrongShard);
            }
        }
        Ok(rebuilt)
    }

    /// Rebuilds `rebuild`'s packets in `body`, a whole archive body held in
    /// memory (opened cells) whose other packets of the block are in place
    /// (simulators and tests). The block's present packets are left sealed.
    pub fn rebuild_in_body(
        &self,
        body: &mut [u8],
        rebuild: &Rebuild,
    ) -> Result<(), crate::fec::FecError> {
        let blocks = self.blocks().ok_or(crate::fec::FecError::BadShards)?;
        let p = blocks.payload_size() as usize;
        if body.len() as u64 != self.manifest().map_or(0, |m| m.body_len) {
            return Err(crate::fec::FecError::BadShards);
        }
        let packets = blocks.packets(rebuild.block);
        let len: usize = packets.clone().map(|k| blocks.payload_len(k)).sum();
        let block = &mut body[packets.start as usize * p..][..len];
        let mut present: Vec<(u32, &mut [u8])> = Vec::new();
        let mut rest = block;
        for k in packets.clone() {
            let (here, after) = rest.split_at_mut(blocks.payload_len(k));
            rest = after;
            if !rebuild.missing.contains(&k) {
                present.push((k, here));
            }
        }
        let rebuilt = self.rebuild_block(rebuild, &mut present);
        // The present packets go back to their opened state.
        for (k, bytes) in present.iter_mut() {
            self.open_rebuilt(*k, bytes);
        }
        for (k, bytes) in rebuilt? {
            body[k as usize * p..][..bytes.len()].copy_from_slice(&bytes);
        }
        Ok(())
    }
}
