//! Parity repair at the server (spec §6.5): per block, the parity packets asked
//! for (the largest count any receiver asked), which parity index comes next,
//! and the shards of the last blocks encoded.

use super::PayloadSource;
use crate::fec::Blocks;
use crate::wire::{self, ParityHeader};
use std::collections::{BTreeMap, VecDeque};
use std::io;

/// Bytes of parity shards kept once encoded, in whole blocks and at least one
/// (a repair round sends several packets of one block, rounds of several blocks
/// overlap).
const CACHE_BYTES: usize = 16 << 20;

/// The parity a carousel owes its receivers.
pub(super) struct ParityQueue {
    blocks: Blocks,
    /// Per block asked for: parity packets still to send.
    wanted: BTreeMap<u32, u16>,
    /// Per block: the next parity index to send (each goes out once before any
    /// repeats, so a repair round brings every receiver shards it lacks).
    next_index: Vec<u16>,
    /// The last blocks encoded: (block, its parity shards).
    cache: VecDeque<(u32, Vec<Vec<u8>>)>,
}

impl ParityQueue {
    pub(super) fn new(blocks: Blocks) -> Self {
        Self {
            blocks,
            wanted: BTreeMap::new(),
            next_index: vec![0; blocks.count() as usize],
            cache: VecDeque::new(),
        }
    }

    pub(super) fn blocks(&self) -> &Blocks {
        &self.blocks
    }

    /// Parity packets waiting to be sent.
    pub(super) fn len(&self) -> u32 {
        self.wanted.values().map(|&n| n as u32).sum()
    }

    /// Raises block `block`'s parity owed to `count` (capped at its packets), at
    /// most by `budget`; returns by how much it rose. Parity already sent does not
    /// count: a receiver's count is what it lacks beyond the parity it holds.
    pub(super) fn ask(&mut self, block: u32, count: u16, budget: u32) -> u32 {
        let count = count.min(self.blocks.source_count(block));
        let owed = self.wanted.entry(block).or_default();
        let rise = (count.saturating_sub(*owed) as u32).min(budget);
        *owed += rise as u16;
        if *owed == 0 {
            self.wanted.remove(&block);
        }
        rise
    }

    /// The loop starts block `block` again: every receiver will have its packets
    /// in turn, so the parity owed is dropped.
    pub(super) fn loop_reaches(&mut self, block: u32) {
        self.wanted.remove(&block);
    }

    /// The block owed parity whose loop turn is furthest from `position`.
    pub(super) fn furthest_before(&self, position: u32) -> Option<u32> {
        let here = self.blocks.of(position);
        (self.wanted.range(..=here).next_back())
            .or_else(|| self.wanted.iter().next_back())
            .map(|(&block, _)| block)
    }

    /// Bytes of a PARITY datagram.
    pub(super) fn datagram_len(&self) -> usize {
        wire::DATA_HEADER_LEN + self.blocks.shard_len()
    }

    /// Writes the next parity packet of `block` into `buf`; returns its parity
    /// index and the datagram length.
    pub(super) fn write_next(
        &mut self,
        block: u32,
        header: (u64, u32),
        buf: &mut [u8],
        source: &mut impl PayloadSource,
    ) -> io::Result<(u16, usize)> {
        let k = self.blocks.source_count(block);
        let index = self.next_index[block as usize];
        self.next_index[block as usize] = (index + 1) % k.max(1);
        match self.wanted.get_mut(&block) {
            Some(1) | None => {
                self.wanted.remove(&block);
            }
            Some(n) => *n -= 1,
        }
        let packet_count = self.blocks.packet_count();
        let shards = self.shards(block, source)?;
        let shard = &shards[index as usize];
        let (archive_id, session_id) = header;
        let parity = ParityHeader {
            archive_id,
            block,
            packet_count,
            parity_index: index,
        };
        wire::write_parity_header(buf, session_id, &parity);
        let end = wire::DATA_HEADER_LEN + shard.len();
        buf[wire::DATA_HEADER_LEN..end].copy_from_slice(shard);
        Ok((index, end))
    }

    /// The parity shards of `block`, encoded from its source payloads when not cached.
    fn shards(&mut self, block: u32, source: &mut impl PayloadSource) -> io::Result<&Vec<Vec<u8>>> {
        if let Some(at) = self.cache.iter().position(|(b, _)| *b == block) {
            return Ok(&self.cache[at].1);
        }
        let packets = self.blocks.packets(block);
        let p = self.blocks.shard_len();
        let mut payloads = vec![0u8; packets.len() * p];
        let mut sources = Vec::with_capacity(packets.len());
        for (k, slot) in packets.clone().zip(payloads.chunks_mut(p)) {
            let len = self.blocks.payload_len(k);
            let offset = k as u64 * self.blocks.payload_size() as u64;
            source.read_payload(offset, &mut slot[..len])?;
            sources.push(len);
        }
        let refs: Vec<&[u8]> = (payloads.chunks(p).zip(&sources))
            .map(|(slot, &len)| &slot[..len])
            .collect();
        let shards = (self.blocks.encode(block, &refs))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let block_bytes = shards.len() * p;
        while !self.cache.is_empty() && (self.cache.len() + 1) * block_bytes > CACHE_BYTES {
            self.cache.pop_front();
        }
        self.cache.push_back((block, shards));
        Ok(&self.cache.back().expect("just pushed").1)
    }
}
