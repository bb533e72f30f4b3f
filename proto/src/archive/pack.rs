//! Packing: frames compressed apart (on any thread), then sealed into their
//! cells in order, and the table and manifest made at the end.

use super::{
    ContentDigest, FileMeta, FramePart, MAX_FRAME_SIZE, PackError, TableEntry, compress_frame,
    encode_table, frame_count, seal_cells, table_cells,
};
use crate::cell::CellKey;
use crate::keys::FileKey;

/// Seals an archive frame by frame as the original's bytes are pushed in, then
/// produces the frame table's cells and the manifest. The caller lays them out on
/// disk as header, manifest, table, frames. Frames are compressed apart (on any
/// thread, `FrameCompressor`) and sealed here, in order: a cell's index in the
/// body depends on the stored lengths of the frames before it.
pub struct Packer {
    file_key: FileKey,
    cell_key: CellKey,
    fingerprint: [u8; crate::keys::FINGERPRINT_LEN],
    archive_id: u64,
    count: u32,
    frame_size: u32,
    cell_size: u16,
    /// Frames taken (`take_next`).
    taken: u32,
    original_size: u64,
    level: i32,
    digest: ContentDigest,
    entries: Vec<TableEntry>,
    /// Body index of the next frame's first cell.
    next_cell: u64,
}

impl Packer {
    /// Starts packing a file of `original_size` bytes as archive `archive_id`, in
    /// cells of `cell_size` bytes.
    pub fn new(
        master: &crate::MasterKey,
        archive_id: u64,
        original_size: u64,
        frame_size: u32,
        level: i32,
        cell_size: u16,
    ) -> Result<Self, PackError> {
        if frame_size == 0 || frame_size > MAX_FRAME_SIZE {
            return Err(PackError::BadFrameSize);
        }
        if cell_size < crate::cell::MIN_CELL_SIZE || !cell_size.is_multiple_of(2) {
            return Err(PackError::BadCellSize);
        }
        let count = u32::try_from(frame_count(original_size, frame_size))
            .map_err(|_| PackError::BadFrameSize)?;
        let file_key = master.file_key(archive_id);
        Ok(Self {
            cell_key: CellKey::new(&file_key),
            file_key,
            fingerprint: master.fingerprint(),
            archive_id,
            count,
            frame_size,
            cell_size,
            taken: 0,
            original_size,
            level,
            digest: ContentDigest::new(count, frame_size),
            entries: Vec::with_capacity(count as usize),
            next_cell: table_cells(count, cell_size),
        })
    }

    /// Number of frames the archive will have.
    pub fn frame_count(&self) -> u32 {
        self.count
    }

    /// Bytes of the table's cells at the start of the body.
    pub fn table_region_len(&self) -> u64 {
        table_cells(self.count, self.cell_size) * self.cell_size as u64
    }

    /// Bytes of original data the next frame must hold.
    pub fn next_frame_len(&self) -> usize {
        let start = self.taken as u64 * self.frame_size as u64;
        self.original_size
            .saturating_sub(start)
            .min(self.frame_size as u64) as usize
    }

    /// Compresses and seals the next frame on this thread; `plain` must be
    /// exactly `next_frame_len()` bytes.
    pub fn seal_next(&mut self, plain: &[u8]) -> Result<Vec<u8>, PackError> {
        let compressor = self.take_next(plain)?;
        let stored = compressor.compress(plain);
        Ok(self.seal_stored(&stored, compressor.digest_part(plain)))
    }

    /// Takes the next frame's original bytes (exactly `next_frame_len()`; into the
    /// digest here if frames are hashed in order) and returns what compresses
    /// it, which may run on another thread; what it stores, with the frame's
    /// share of the digest (`FrameCompressor::digest_part`), must then come back
    /// through `seal_stored`, in order.
    pub fn take_next(&mut self, plain: &[u8]) -> Result<FrameCompressor, PackError> {
        if self.taken >= self.count {
            return Err(PackError::FrameCount);
        }
        if plain.len() != self.next_frame_len() {
            return Err(PackError::SizeMismatch);
        }
        if !ContentDigest::hashes_apart(self.frame_size) {
            self.digest.add(self.taken, plain);
        }
        let compressor = FrameCompressor {
            index: self.taken,
            count: self.count,
            frame_size: self.frame_size,
            level: self.level,
        };
        self.taken += 1;
        Ok(compressor)
    }

    /// Seals the next frame's stored bytes (frames in order) into its cells,
    /// records it in the table, and takes its share of the digest, if frames
    /// are hashed apart. Returns the cells, to follow the previous frame's.
    pub fn seal_stored(&mut self, stored: &StoredFrame, part: Option<FramePart>) -> Vec<u8> {
        let index = self.entries.len() as u32;
        if let Some(part) = part {
            self.digest.add_part(index, part);
        }
        let cells = seal_cells(
            &self.cell_key,
            self.archive_id,
            self.next_cell,
            &stored.bytes,
            self.cell_size,
        );
        self.next_cell += (cells.len() / self.cell_size as usize) as u64;
        self.entries.push(TableEntry {
            stored_len: stored.bytes.len() as u32,
            compressed: stored.compressed,
        });
        cells
    }

    /// Finishes the archive: returns the frame table's sealed cells, the
    /// manifest (its payload size `payload_size`), and the manifest's encoded bytes.
    pub fn finish(
        self,
        meta: FileMeta,
        payload_size: u16,
    ) -> Result<(Vec<u8>, crate::Manifest, Vec<u8>), PackError> {
        if self.taken != self.count || self.entries.len() != self.count as usize {
            return Err(PackError::FrameCount);
        }
        crate::manifest::check_name(&meta.name)
            .map_err(|why| PackError::BadName(why.to_string()))?;
        let table = encode_table(&self.entries);
        let table_cells = seal_cells(&self.cell_key, self.archive_id, 0, &table, self.cell_size);
        let manifest = crate::Manifest {
            archive_id: self.archive_id,
            key_fingerprint: self.fingerprint,
            original_size: self.original_size,
            mode: meta.mode,
            mtime_secs: meta.mtime_secs,
            mtime_nanos: meta.mtime_nanos,
            frame_size: self.frame_size,
            frame_count: self.count,
            body_len: self.next_cell * self.cell_size as u64,
            payload_size,
            cell_size: self.cell_size,
            content_digest: *self
                .digest
                .finalize()
                .ok_or(PackError::FrameCount)?
                .as_bytes(),
            table_digest: *blake3::hash(&table).as_bytes(),
            name: meta.name,
        };
        let bytes = manifest.encode(&self.file_key);
        Ok((table_cells, manifest, bytes))
    }
}

/// One frame's stored bytes, compressed or raw.
#[derive(Debug)]
pub struct StoredFrame {
    /// The frame's index.
    pub index: u32,
    /// What its cells store.
    pub bytes: Vec<u8>,
    /// Whether `bytes` is zstd-compressed.
    pub compressed: bool,
}

/// Compresses one frame (the costly part of packing), apart from the `Packer`,
/// so frames can be compressed on several threads.
pub struct FrameCompressor {
    index: u32,
    count: u32,
    frame_size: u32,
    level: i32,
}

impl FrameCompressor {
    /// The stored form of `plain` (the bytes given to `take_next`).
    pub fn compress(&self, plain: &[u8]) -> StoredFrame {
        let (bytes, compressed) = compress_frame(plain, self.level);
        StoredFrame {
            index: self.index,
            bytes,
            compressed,
        }
    }

    /// The frame's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The frame's share of the content digest (None when frames are hashed in
    /// order, by `take_next`): computed here, on the compressing thread.
    pub fn digest_part(&self, plain: &[u8]) -> Option<FramePart> {
        ContentDigest::part(self.frame_size, self.count, self.index, plain)
    }
}
