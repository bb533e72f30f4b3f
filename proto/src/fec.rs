//! Parity repair (spec §6.5): an archive's packets in blocks of `BLOCK_PACKETS`,
//! and Reed-Solomon parity over each block, so that any K of a block's K source
//! packets and its parity packets rebuild it. The code is reed-solomon-simd's
//! (GF(2¹⁶), Leopard construction); this module only lays out blocks and shards.

use crate::manifest::Manifest;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use std::ops::Range;

/// Source packets in a block (the last block of an archive may have fewer).
pub const BLOCK_PACKETS: u32 = 1024;

/// Why parity could not be made or used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FecError {
    /// Fewer than K distinct packets of the block, a packet of another block or
    /// of the wrong length, or a parity index out of range.
    BadShards,
    /// The erasure code refused its input.
    Codec(String),
    /// A rebuilt packet's cells did not open: some shard was not genuine
    /// (PARITY carries no tag of its own, spec §2.11).
    WrongShard,
}

impl std::fmt::Display for FecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FecError::BadShards => f.write_str("not the shards of one block"),
            FecError::Codec(e) => write!(f, "erasure code: {e}"),
            FecError::WrongShard => f.write_str("a rebuilt packet failed its cells' tags"),
        }
    }
}

impl std::error::Error for FecError {}

/// The blocks of one archive's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    body_len: u64,
    payload_size: u32,
    packet_count: u32,
}

impl Blocks {
    /// The blocks of the archive `m` describes.
    pub fn of_manifest(m: &Manifest) -> Self {
        Self::new(m.body_len, m.payload_size.into())
    }

    /// The blocks of a body of `body_len` bytes in packets of `payload_size` bytes.
    pub fn new(body_len: u64, payload_size: u32) -> Self {
        let p = payload_size.max(1) as u64;
        Self {
            body_len,
            payload_size: payload_size.max(1),
            packet_count: body_len.div_ceil(p).max(1) as u32,
        }
    }

    /// Packets in one loop of the archive.
    pub fn packet_count(&self) -> u32 {
        self.packet_count
    }

    /// Payload bytes of a full packet.
    pub fn payload_size(&self) -> u32 {
        self.payload_size
    }

    /// Number of blocks.
    pub fn count(&self) -> u32 {
        self.packet_count.div_ceil(BLOCK_PACKETS)
    }

    /// The block holding packet `packet`.
    pub fn of(&self, packet: u32) -> u32 {
        packet / BLOCK_PACKETS
    }

    /// The packets of block `block`.
    pub fn packets(&self, block: u32) -> Range<u32> {
        let start = block.saturating_mul(BLOCK_PACKETS).min(self.packet_count);
        start..start.saturating_add(BLOCK_PACKETS).min(self.packet_count)
    }

    /// K: source packets in block `block`; also the number of its parity packets.
    pub fn source_count(&self, block: u32) -> u16 {
        let r = self.packets(block);
        (r.end - r.start) as u16
    }

    /// Bytes of a shard (and of a PARITY payload): the payload size, rounded up
    /// to even (the code works on 16-bit symbols).
    pub fn shard_len(&self) -> usize {
        (self.payload_size as usize + 1) & !1
    }

    /// Payload bytes of packet `packet`.
    pub fn payload_len(&self, packet: u32) -> usize {
        let offset = packet as u64 * self.payload_size as u64;
        self.body_len
            .saturating_sub(offset)
            .min(self.payload_size as u64) as usize
    }

    /// Every parity shard of block `block` (there are as many as source packets),
    /// from its source payloads in order.
    pub fn encode(&self, block: u32, sources: &[&[u8]]) -> Result<Vec<Vec<u8>>, FecError> {
        let packets = self.packets(block);
        let k = packets.len();
        if k == 0 || sources.len() != k {
            return Err(FecError::BadShards);
        }
        let shard = self.shard_len();
        let mut encoder = ReedSolomonEncoder::new(k, k, shard).map_err(codec)?;
        let mut padded = vec![0u8; shard];
        for (packet, source) in packets.zip(sources) {
            if source.len() != self.payload_len(packet) {
                return Err(FecError::BadShards);
            }
            encoder
                .add_original_shard(pad(source, &mut padded))
                .map_err(codec)?;
        }
        let result = encoder.encode().map_err(codec)?;
        Ok(result.recovery_iter().map(<[u8]>::to_vec).collect())
    }

    /// Rebuilds block `block`'s packets that are not in `present` (packet index,
    /// payload) from `parity` (parity index, shard). Returns each rebuilt packet
    /// with its payload cut to its length. Needs at least K shards in all.
    pub fn rebuild(
        &self,
        block: u32,
        present: &[(u32, &[u8])],
        parity: &[(u16, &[u8])],
    ) -> Result<Vec<(u32, Vec<u8>)>, FecError> {
        let packets = self.packets(block);
        let k = packets.len();
        let shard = self.shard_len();
        if k == 0 {
            return Err(FecError::BadShards);
        }
        let mut decoder = ReedSolomonDecoder::new(k, k, shard).map_err(codec)?;
        let mut padded = vec![0u8; shard];
        let mut held = vec![false; k];
        for &(packet, payload) in present {
            let at = packet.wrapping_sub(packets.start) as usize;
            if !packets.contains(&packet) || payload.len() != self.payload_len(packet) || held[at] {
                return Err(FecError::BadShards);
            }
            held[at] = true;
            decoder
                .add_original_shard(at, pad(payload, &mut padded))
                .map_err(codec)?;
        }
        if held.iter().all(|&h| h) {
            return Ok(Vec::new());
        }
        for &(index, shard_bytes) in parity {
            if index as usize >= k || shard_bytes.len() != shard {
                return Err(FecError::BadShards);
            }
            decoder
                .add_recovery_shard(index as usize, shard_bytes)
                .map_err(codec)?;
        }
        let result = decoder.decode().map_err(codec)?;
        let mut rebuilt = Vec::with_capacity(k - present.len());
        for (at, bytes) in result.restored_original_iter() {
            let packet = packets.start + at as u32;
            rebuilt.push((packet, bytes[..self.payload_len(packet)].to_vec()));
        }
        rebuilt.sort_unstable_by_key(|&(packet, _)| packet);
        Ok(rebuilt)
    }
}

/// `source`, or a copy of it padded with zeros to the shard length.
fn pad<'a>(source: &'a [u8], padded: &'a mut [u8]) -> &'a [u8] {
    if source.len() == padded.len() {
        return source;
    }
    padded[..source.len()].copy_from_slice(source);
    padded[source.len()..].fill(0);
    padded
}

fn codec(e: reed_solomon_simd::Error) -> FecError {
    FecError::Codec(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn body(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut b = vec![0u8; len];
        rng.fill_bytes(&mut b);
        b
    }

    fn payloads(blocks: &Blocks, body: &[u8], block: u32) -> Vec<Vec<u8>> {
        let p = blocks.payload_size as usize;
        blocks
            .packets(block)
            .map(|k| body[k as usize * p..k as usize * p + blocks.payload_len(k)].to_vec())
            .collect()
    }

    #[test]
    fn every_block_size_up_to_a_whole_block_is_supported_by_the_code() {
        for k in 1..=BLOCK_PACKETS as usize {
            assert!(ReedSolomonEncoder::supports(k, k), "K = {k}");
        }
    }

    #[test]
    fn blocks_cover_the_packets_once_and_the_last_one_is_short() {
        let b = BLOCK_PACKETS;
        let packets = 3 * b + 234; // the last one 7 bytes long
        let blocks = Blocks::new((packets as u64 - 1) * 1428 + 7, 1428);
        assert_eq!(blocks.packet_count(), packets);
        assert_eq!(blocks.count(), 4);
        assert_eq!(blocks.packets(3), 3 * b..packets);
        assert_eq!(blocks.source_count(3), 234);
        assert_eq!(blocks.of(packets - 1), 3);
        assert_eq!(blocks.payload_len(packets - 1), 7);
        assert_eq!(blocks.packets(9), packets..packets);
        assert_eq!(Blocks::new(0, 1428).count(), 1);
        assert_eq!(Blocks::new(10, 1427).shard_len(), 1428);
    }

    #[test]
    fn any_k_shards_rebuild_the_missing_packets_exactly() {
        // Odd payload size and a short last packet: both padded.
        let blocks = Blocks::new(300 * 501 + 33, 501);
        let data = body(300 * 501 + 33, 3);
        let last = blocks.count() - 1;
        for block in [0, last] {
            let sources = payloads(&blocks, &data, block);
            let refs: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
            let parity = blocks.encode(block, &refs).unwrap();
            let k = sources.len();
            assert_eq!(parity.len(), k);
            // Lose every third packet, and the last; use parity from index 5 on.
            let first = blocks.packets(block).start;
            let lost: Vec<usize> = (0..k).filter(|i| i % 3 == 0 || *i == k - 1).collect();
            let present: Vec<(u32, &[u8])> = (0..k)
                .filter(|i| !lost.contains(i))
                .map(|i| (first + i as u32, refs[i]))
                .collect();
            let given: Vec<(u16, &[u8])> = (5..5 + lost.len())
                .map(|j| ((j % k) as u16, parity[j % k].as_slice()))
                .collect();
            let rebuilt = blocks.rebuild(block, &present, &given).unwrap();
            assert_eq!(rebuilt.len(), lost.len());
            for (packet, bytes) in rebuilt {
                assert_eq!(bytes, sources[(packet - first) as usize]);
            }
        }
    }

    #[test]
    fn too_few_shards_or_foreign_ones_are_refused() {
        let blocks = Blocks::new(20 * 100, 100);
        let data = body(2000, 4);
        let sources = payloads(&blocks, &data, 0);
        let refs: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
        let parity = blocks.encode(0, &refs).unwrap();
        let present: Vec<(u32, &[u8])> = (2..20).map(|i| (i as u32, refs[i])).collect();
        let one = [(0u16, parity[0].as_slice())];
        assert!(blocks.rebuild(0, &present, &one).is_err());
        let bad_index = [(0u16, parity[0].as_slice()), (20, parity[1].as_slice())];
        assert_eq!(
            blocks.rebuild(0, &present, &bad_index),
            Err(FecError::BadShards)
        );
        let short = [(0u16, &parity[0][..10]), (1, parity[1].as_slice())];
        assert_eq!(
            blocks.rebuild(0, &present, &short),
            Err(FecError::BadShards)
        );
        let foreign: Vec<(u32, &[u8])> = vec![(25, refs[0])];
        assert_eq!(blocks.rebuild(0, &foreign, &[]), Err(FecError::BadShards));
        assert_eq!(blocks.encode(0, &refs[1..]), Err(FecError::BadShards));
    }

    proptest! {
        #[test]
        fn rebuild_never_panics(
            packets in prop::collection::vec((0u32..40, prop::collection::vec(any::<u8>(), 0..12)), 0..40),
            parity in prop::collection::vec((0u16..40, prop::collection::vec(any::<u8>(), 0..12)), 0..40),
        ) {
            let blocks = Blocks::new(30 * 10, 10);
            let present: Vec<(u32, &[u8])> = packets.iter().map(|(k, b)| (*k, b.as_slice())).collect();
            let given: Vec<(u16, &[u8])> = parity.iter().map(|(j, b)| (*j, b.as_slice())).collect();
            let _ = blocks.rebuild(0, &present, &given);
        }
    }
}
