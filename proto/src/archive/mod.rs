//! Archive format v4 (spec §3): file header, manifest, then the body: the frame
//! table and the frames, all cut into sealed cells (`crate::cell`).
//!
//! Each frame is the zstd-compressed (or raw, when that does not shrink it) slice
//! of the original, padded to whole cells and sealed cell by cell under the
//! archive's cell key, each cell bound to its index in the body. The table
//! (each frame's stored length and whether it is compressed) fills the body's
//! first cells, so every byte of the body is in a cell that proves itself.

use crate::cell::{CellKey, cell_data_len, cells_for, join_cells};
use crate::codec::Reader;
use std::ops::Range;

mod digest;
pub mod layout;
mod open;
mod pack;
pub use digest::{ContentDigest, FramePart};
pub use layout::{TABLE_ENTRY_LEN, frame_count, min_body_len, table_cells, table_len};
pub use open::{Cells, open_frame, open_frame_in_place};
pub use pack::{FrameCompressor, Packer, StoredFrame};

/// First bytes of an archive file on disk (format v4).
pub const ARCHIVE_MAGIC: [u8; 8] = *b"LCARCH04";
/// First bytes of a format v3 archive, refused with a word to pack it again.
pub const V3_ARCHIVE_MAGIC: [u8; 8] = *b"LCARCH01";
/// Bytes before the manifest in an archive file: magic and manifest length.
pub const ARCHIVE_HEADER_LEN: usize = 12;
/// Default bytes of original data per frame.
pub const DEFAULT_FRAME_SIZE: u32 = 1 << 20;
/// Largest frame size accepted (bounds the memory a receiver spends on one frame).
pub const MAX_FRAME_SIZE: u32 = 64 << 20;
/// Table entry bit: the frame is zstd-compressed.
const COMPRESSED_BIT: u32 = 1 << 31;

/// Most bytes a frame of up to `frame_size` original bytes may store (zstd's
/// worst case is below this; a raw frame stores exactly its original bytes).
fn max_stored_len(frame_size: u32) -> u64 {
    frame_size as u64 + frame_size as u64 / 128 + 1024
}

/// Why a frame or frame table was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Lengths do not match the frame's place, or are impossible.
    Invalid,
    /// A cell's tag does not verify (corrupt, wrong key, or moved cell).
    BadTag,
    /// zstd failed or produced a different length than recorded.
    Decompress,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameError::Invalid => "frame does not match its place",
            FrameError::BadTag => "frame failed authentication",
            FrameError::Decompress => "frame failed to decompress",
        })
    }
}

/// One frame as the table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableEntry {
    /// Bytes stored (compressed, or raw) before padding to whole cells.
    pub stored_len: u32,
    /// Whether the stored bytes are zstd-compressed.
    pub compressed: bool,
}

impl TableEntry {
    fn encode(&self) -> [u8; TABLE_ENTRY_LEN] {
        (self.stored_len | if self.compressed { COMPRESSED_BIT } else { 0 }).to_be_bytes()
    }

    fn decode(bytes: [u8; TABLE_ENTRY_LEN]) -> Self {
        let v = u32::from_be_bytes(bytes);
        Self {
            stored_len: v & !COMPRESSED_BIT,
            compressed: v & COMPRESSED_BIT != 0,
        }
    }
}

/// Where a frame lies in the body, and what its cells store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameLayout {
    /// Body bytes of the frame's cells.
    pub range: Range<u64>,
    /// Its table entry.
    pub entry: TableEntry,
    /// Bytes of original data it holds.
    pub plain_len: u32,
}

/// The stored form of one frame: zstd-compressed when that makes it shorter.
pub fn compress_frame(plain: &[u8], level: i32) -> (Vec<u8>, bool) {
    match zstd::bulk::compress(plain, level) {
        Ok(c) if c.len() < plain.len() => (c, true),
        _ => (plain.to_vec(), false),
    }
}

/// `stored` cut into whole cells of `cell_size` (zero padding in the last) and
/// sealed, the first at body cell `first_cell` of archive `archive_id`.
pub fn seal_cells(
    key: &CellKey,
    archive_id: u64,
    first_cell: u64,
    stored: &[u8],
    cell_size: u16,
) -> Vec<u8> {
    let cells = cells_for(stored.len() as u64, cell_size) as usize;
    let (size, data) = (cell_size as usize, cell_data_len(cell_size));
    let mut out = vec![0u8; cells * size];
    for (chunk, cell) in stored.chunks(data).zip(out.chunks_exact_mut(size)) {
        cell[..chunk.len()].copy_from_slice(chunk);
    }
    key.seal_cells(archive_id, first_cell, &mut out, cell_size);
    out
}

/// Encodes the frame table's data.
pub fn encode_table(entries: &[TableEntry]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.encode()).collect()
}

/// What the table of an archive must agree with: its manifest's fields.
#[derive(Debug, Clone, Copy)]
pub struct BodyShape {
    /// Frames.
    pub frame_count: u32,
    /// Original bytes per frame.
    pub frame_size: u32,
    /// Bytes of the original file.
    pub original_size: u64,
    /// Bytes per cell.
    pub cell_size: u16,
    /// Bytes of the body.
    pub body_len: u64,
}

impl BodyShape {
    /// The shape a manifest gives.
    pub fn of(m: &crate::Manifest) -> Self {
        Self {
            frame_count: m.frame_count,
            frame_size: m.frame_size,
            original_size: m.original_size,
            cell_size: m.cell_size,
            body_len: m.body_len,
        }
    }

    /// Original bytes of frame `index`.
    pub fn plain_len(&self, index: u32) -> u32 {
        self.original_size
            .saturating_sub(index as u64 * self.frame_size as u64)
            .min(self.frame_size as u64) as u32
    }
}

/// Decodes the frame table's data and returns where each frame lies. Fails
/// unless every entry fits its frame and the frames' cells exactly fill the
/// body after the table's.
pub fn decode_table(table: &[u8], shape: &BodyShape) -> Result<Vec<FrameLayout>, FrameError> {
    let size = shape.cell_size as u64;
    if table.len() as u64 != table_len(shape.frame_count) || size <= crate::cell::TAG_LEN as u64 {
        return Err(FrameError::Invalid);
    }
    let mut frames = Vec::with_capacity(shape.frame_count as usize);
    let mut offset = table_cells(shape.frame_count, shape.cell_size) * size;
    for (index, bytes) in table.chunks_exact(TABLE_ENTRY_LEN).enumerate() {
        let entry = TableEntry::decode([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let plain_len = shape.plain_len(index as u32);
        let fits = match entry.compressed {
            true => (entry.stored_len as u64) <= max_stored_len(shape.frame_size),
            false => entry.stored_len == plain_len,
        };
        let len = cells_for(entry.stored_len as u64, shape.cell_size) * size;
        if !fits || offset + len > shape.body_len {
            return Err(FrameError::Invalid);
        }
        frames.push(FrameLayout {
            range: offset..offset + len,
            entry,
            plain_len,
        });
        offset += len;
    }
    if offset != shape.body_len {
        return Err(FrameError::Invalid);
    }
    Ok(frames)
}

/// Encodes the fixed header of an archive file for a manifest of `manifest_len` bytes.
pub fn encode_archive_header(manifest_len: usize) -> [u8; ARCHIVE_HEADER_LEN] {
    let mut h = [0u8; ARCHIVE_HEADER_LEN];
    h[..8].copy_from_slice(&ARCHIVE_MAGIC);
    h[8..].copy_from_slice(&(manifest_len as u32).to_be_bytes());
    h
}

/// True if `bytes` starts like a format v3 archive (`V3_ARCHIVE_MAGIC`): to be packed again.
pub fn is_v3_archive(bytes: &[u8]) -> bool {
    bytes.starts_with(&V3_ARCHIVE_MAGIC)
}

/// Parses an archive file header; returns the manifest length, or None if this is not an archive.
pub fn decode_archive_header(bytes: &[u8]) -> Option<usize> {
    let mut r = Reader::new(bytes);
    if r.array::<8>().ok()? != ARCHIVE_MAGIC {
        return None;
    }
    let len = r.u32().ok()? as usize;
    (len <= crate::manifest::FIXED_LEN + crate::manifest::MAX_NAME_LEN).then_some(len)
}

/// Metadata of the original file recorded in the manifest.
#[derive(Debug, Clone)]
pub struct FileMeta {
    /// File name (one path component).
    pub name: String,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_secs: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nanos: u32,
}

/// Why packing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackError {
    /// A frame had another length than the declared file size implies (the source changed).
    SizeMismatch,
    /// More or fewer frames were sealed than the file size implies.
    FrameCount,
    /// The name is empty, too long or not a single path component.
    BadName(String),
    /// The frame size is zero or above the maximum.
    BadFrameSize,
    /// The cell size is odd or below `cell::MIN_CELL_SIZE`.
    BadCellSize,
}

impl std::fmt::Display for PackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PackError::SizeMismatch | PackError::FrameCount => {
                f.write_str("the source changed while it was being packed")
            }
            PackError::BadName(why) => write!(f, "unusable file name: {why}"),
            PackError::BadFrameSize => {
                write!(f, "frame size must be between 1 and {MAX_FRAME_SIZE} bytes")
            }
            PackError::BadCellSize => write!(
                f,
                "cell size must be even and at least {} bytes",
                crate::cell::MIN_CELL_SIZE
            ),
        }
    }
}

/// Why an archive could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnpackError {
    /// The frame table does not match the manifest's digest or layout: its packets must be received again.
    Table,
    /// Every frame opened but the result does not match the manifest's blake3 digest.
    Digest,
}

/// Opens an archive's frames and checks the whole against the manifest.
pub struct Unpacker {
    cell_key: CellKey,
    manifest: crate::Manifest,
    frames: Vec<FrameLayout>,
    ranges: Vec<Range<u64>>,
    digest: ContentDigest,
}

impl Unpacker {
    /// Checks the frame table (the body's first `manifest.table_len()` bytes,
    /// its cells `cells`: still sealed, or opened as they came) and prepares to
    /// open frames. `table` is changed: opened, its data moved together.
    pub fn new(
        master: &crate::MasterKey,
        manifest: &crate::Manifest,
        table: &mut [u8],
        cells: Cells,
    ) -> Result<Self, UnpackError> {
        let cell_key = CellKey::new(&master.file_key(manifest.archive_id));
        if cells == Cells::Sealed
            && !cell_key.open_cells(manifest.archive_id, 0, table, manifest.cell_size)
        {
            return Err(UnpackError::Table);
        }
        let data = join_cells(
            table,
            manifest.cell_size,
            table_len(manifest.frame_count) as usize,
        )
        .ok_or(UnpackError::Table)?;
        if blake3::hash(data).as_bytes() != &manifest.table_digest {
            return Err(UnpackError::Table);
        }
        let frames =
            decode_table(data, &BodyShape::of(manifest)).map_err(|_| UnpackError::Table)?;
        Ok(Self {
            cell_key,
            manifest: manifest.clone(),
            ranges: frames.iter().map(|f| f.range.clone()).collect(),
            frames,
            digest: ContentDigest::new(manifest.frame_count, manifest.frame_size),
        })
    }

    /// Body byte range of every frame, in order.
    pub fn frame_ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Opens frame `index` from its sealed cells, as an archive file holds them.
    pub fn open(&mut self, index: u32, sealed: &[u8]) -> Result<Vec<u8>, FrameError> {
        let frame = self.frames.get(index as usize).ok_or(FrameError::Invalid)?;
        let plain = open_frame(
            &self.cell_key,
            self.manifest.archive_id,
            self.manifest.cell_size,
            frame,
            sealed,
        )?;
        self.digest.add(index, &plain);
        Ok(plain)
    }

    /// Opens frame `index` where it lies (see `open_frame_in_place`), feeding the
    /// digest when it is the next in order, as `open` does.
    pub fn open_in_place<'a>(
        &mut self,
        index: u32,
        bytes: &'a mut [u8],
        scratch: &'a mut [u8],
        cells: Cells,
    ) -> Result<&'a [u8], FrameError> {
        let frame = self.frames.get(index as usize).ok_or(FrameError::Invalid)?;
        let (archive_id, cell_size) = (self.manifest.archive_id, self.manifest.cell_size);
        let plain = open_frame_in_place(
            &self.cell_key,
            archive_id,
            cell_size,
            frame,
            bytes,
            scratch,
            cells,
        )?;
        self.digest.add(index, plain);
        Ok(plain)
    }

    /// A frame in `done` (opened earlier, its plaintext in the output) whose
    /// plaintext the digest still needs and can take now; feed it with `hash_frame`.
    pub fn wanted(&mut self, done: &[bool]) -> Option<u32> {
        self.digest.wanted(done)
    }

    /// Feeds the digest frame `index`'s plaintext, opened earlier (`wanted`).
    pub fn hash_frame(&mut self, index: u32, plain: &[u8]) {
        self.digest.add(index, plain);
    }

    /// Checks that every frame was opened and the whole matches the manifest digest.
    pub fn finish(self) -> Result<(), UnpackError> {
        if self
            .digest
            .finalize()
            .is_some_and(|d| d.as_bytes() == &self.manifest.content_digest)
        {
            Ok(())
        } else {
            Err(UnpackError::Digest)
        }
    }
}

#[cfg(test)]
mod tests;
