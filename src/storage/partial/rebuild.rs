//! Rebuilding a block from parity (spec §6.5): the block's stored packets are
//! read back from where they are held (frames in memory, the partial file, the
//! memory for payloads before the frame table), and the missing ones rebuilt.

use super::PartialFile;
use crate::error::{Context, Result};
use crate::storage::frames::FrameSource;
use loopcast_proto::FileReceiver;
use loopcast_proto::ReceivedMap;
use loopcast_proto::client::Rebuild;
use loopcast_proto::fec::{Blocks, FecError};
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// What a rebuild came to.
pub enum Rebuilt {
    /// The missing packets, rebuilt: (packet, payload), to be stored as arrivals.
    Packets(Vec<(u32, Vec<u8>)>),
    /// Some stored packets of the block are no longer held as they came (their
    /// frame is in the output or with the frame worker): parity cannot rebuild it.
    Unavailable,
    /// The shards did not decode.
    Failed(FecError),
}

impl PartialFile {
    /// Rebuilds `rebuild`'s missing packets from the block's stored packets and
    /// its parity, their cells opened by `receiver` (which seals the stored
    /// ones again first: parity is over the bytes sent); stores nothing (the
    /// caller stores the packets rebuilt).
    pub fn rebuild(&self, receiver: &FileReceiver, rebuild: &Rebuild) -> Result<Rebuilt> {
        let blocks = Blocks::of_manifest(&self.manifest);
        let p = blocks.payload_size() as usize;
        let packets = blocks.packets(rebuild.block);
        let mut bytes = vec![0u8; packets.len() * p];
        let slot = |k: u32| {
            let at = (k - packets.start) as usize * p;
            at..at + blocks.payload_len(k)
        };
        let mut from_disk = Vec::new();
        let present: Vec<u32> = packets
            .clone()
            .filter(|k| !rebuild.missing.contains(k))
            .collect();
        for &k in &present {
            let s = slot(k);
            let mut parts = Vec::new();
            if !self.read_held(k as u64 * p as u64, &mut bytes[s.clone()], &mut parts) {
                return Ok(Rebuilt::Unavailable);
            }
            from_disk.extend(
                parts
                    .into_iter()
                    .map(|(o, r)| (o, r.start + s.start..r.end + s.start)),
            );
        }
        for (offset, range) in from_disk {
            self.file
                .read_exact_at(&mut bytes[range], offset)
                .context(|| format!("cannot read {}", self.body_path.display()))?;
        }
        let mut held: Vec<(u32, &mut [u8])> = (packets.clone().zip(bytes.chunks_mut(p)))
            .filter(|(k, _)| !rebuild.missing.contains(k))
            .map(|(k, slot)| (k, &mut slot[..blocks.payload_len(k)]))
            .collect();
        Ok(match receiver.rebuild_block(rebuild, &mut held) {
            Ok(packets) => Rebuilt::Packets(packets),
            Err(e) => Rebuilt::Failed(e),
        })
    }

    /// Hands `frame` to the frame worker (None: it has it, or it is done),
    /// keeping what parity blocks not whole in `received` need of it when the
    /// receiver `may_rebuild` from parity.
    pub fn take_frame(
        &mut self,
        frame: u32,
        received: &ReceivedMap,
        may_rebuild: bool,
    ) -> Option<FrameSource> {
        let assembly = self.assembly.as_mut()?;
        if may_rebuild {
            assembly.retain_for_rebuild(frame, received);
        }
        assembly.take(frame)
    }

    /// `block` was rebuilt: the bytes kept for it are needed no more.
    pub fn rebuilt(&mut self, block: u32) {
        let blocks = Blocks::of_manifest(&self.manifest);
        let (packets, p) = (blocks.packets(block), blocks.payload_size() as u64);
        if let Some(assembly) = self.assembly.as_mut() {
            assembly.forget_retained(packets.start as u64 * p..packets.end as u64 * p);
        }
    }

    /// Reads back the stored payload at body `offset` into `buf` (see
    /// `FrameAssembly::read`); parts in the partial file go to `from_disk`.
    fn read_held(
        &self,
        offset: u64,
        buf: &mut [u8],
        from_disk: &mut Vec<(u64, Range<usize>)>,
    ) -> bool {
        if let Some(assembly) = &self.assembly {
            return assembly.read(offset, buf, from_disk);
        }
        // Before the frame table: in the memory for early payloads, else on disk.
        let mut at = 0;
        for &(start, len) in &self.early_payloads {
            if start == offset && len == buf.len() {
                buf.copy_from_slice(&self.early[at..at + len]);
                return true;
            }
            at += len;
        }
        from_disk.push((offset, 0..buf.len()));
        true
    }
}
