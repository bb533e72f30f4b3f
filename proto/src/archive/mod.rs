//! Archive format: file header, manifest, frame table and independently sealed frames.
//!
//! Each frame is the zstd-compressed (or raw, when that does not shrink it) slice
//! of the original, sealed with AES-256-GCM under a key derived from the file key
//! and a random per-frame salt. The frame header is the AAD, so a frame cannot be
//! moved to another index, archive or length without failing its tag.

use crate::codec::Reader;
use crate::keys::FileKey;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use std::ops::Range;

mod digest;
mod open;
pub use digest::{ContentDigest, FramePart};
pub use open::{Check, open_frame, open_frame_in_place};

/// First bytes of an archive file on disk.
pub const ARCHIVE_MAGIC: [u8; 8] = *b"LCARCH01";
/// Bytes before the manifest in an archive file: magic and manifest length.
pub const ARCHIVE_HEADER_LEN: usize = 12;
/// Default bytes of original data per frame.
pub const DEFAULT_FRAME_SIZE: u32 = 1 << 20;
/// Largest frame size accepted (bounds the memory a receiver spends on one frame).
pub const MAX_FRAME_SIZE: u32 = 64 << 20;
/// Frame format version.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of the random salt in each frame header.
pub const SALT_LEN: usize = 16;
/// Bytes of a frame header (the AAD).
pub const FRAME_HEADER_LEN: usize = 1 + 1 + 2 + 8 + 4 + 4 + 4 + 4 + SALT_LEN;
/// Bytes of the GCM tag after each frame's ciphertext.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed frame has beyond its stored data.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + TAG_LEN;
/// Bytes of one frame table entry (a frame's sealed length).
pub const TABLE_ENTRY_LEN: usize = 4;
const FLAG_COMPRESSED: u8 = 1;

/// Number of frames for a file of `size` bytes (an empty file still has one, empty, frame).
pub fn frame_count(size: u64, frame_size: u32) -> u64 {
    size.div_ceil(frame_size as u64).max(1)
}

/// Bytes of the frame table for `frame_count` frames.
pub fn table_len(frame_count: u32) -> u64 {
    frame_count as u64 * TABLE_ENTRY_LEN as u64
}

/// Smallest possible body: the table plus empty frames.
pub fn min_body_len(frame_count: u32) -> u64 {
    table_len(frame_count) + frame_count as u64 * FRAME_OVERHEAD as u64
}

/// Why a frame or frame table was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Header fields do not match where the frame was found, or lengths are impossible.
    Invalid,
    /// The GCM tag does not verify (corrupt, wrong key, or moved frame).
    BadTag,
    /// zstd failed or produced a different length than recorded.
    Decompress,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameError::Invalid => "frame header does not match its place",
            FrameError::BadTag => "frame failed authentication",
            FrameError::Decompress => "frame failed to decompress",
        })
    }
}

/// Where a frame belongs; checked against the authenticated header when opening it.
#[derive(Debug, Clone, Copy)]
pub struct FramePlace {
    /// Archive the frame belongs to.
    pub archive_id: u64,
    /// Index of the frame.
    pub index: u32,
    /// Frames in the archive.
    pub count: u32,
    /// Largest original length a frame may have.
    pub frame_size: u32,
}

fn frame_header(
    place: &FramePlace,
    flags: u8,
    plain_len: u32,
    stored_len: u32,
    salt: &[u8; SALT_LEN],
) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0] = FRAME_VERSION;
    h[1] = flags;
    h[4..12].copy_from_slice(&place.archive_id.to_be_bytes());
    h[12..16].copy_from_slice(&place.index.to_be_bytes());
    h[16..20].copy_from_slice(&place.count.to_be_bytes());
    h[20..24].copy_from_slice(&plain_len.to_be_bytes());
    h[24..28].copy_from_slice(&stored_len.to_be_bytes());
    h[28..].copy_from_slice(salt);
    h
}

fn cipher(file_key: &FileKey, salt: &[u8]) -> (Aes256Gcm, Nonce<aes_gcm::aead::consts::U12>) {
    let fk = file_key.frame_key(salt);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(fk.key));
    (cipher, Nonce::from(fk.nonce))
}

/// Compresses (when that helps) and seals one frame of original data.
/// `salt` must be fresh random bytes for every frame.
pub fn seal_frame(
    file_key: &FileKey,
    place: &FramePlace,
    plain: &[u8],
    level: i32,
    salt: [u8; SALT_LEN],
) -> Vec<u8> {
    assert!(
        plain.len() <= place.frame_size as usize,
        "frame larger than frame size"
    );
    let compressed = zstd::bulk::compress(plain, level)
        .ok()
        .filter(|c| c.len() < plain.len());
    let (flags, stored) = match &compressed {
        Some(c) => (FLAG_COMPRESSED, c.as_slice()),
        None => (0, plain),
    };
    let header = frame_header(place, flags, plain.len() as u32, stored.len() as u32, &salt);
    let mut out = Vec::with_capacity(FRAME_OVERHEAD + stored.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(stored);
    let (cipher, nonce) = cipher(file_key, &salt);
    let tag = cipher
        .encrypt_inout_detached(&nonce, &header, (&mut out[FRAME_HEADER_LEN..]).into())
        .expect("frame is far below the GCM length limit");
    out.extend_from_slice(&tag);
    out
}

/// Encodes the frame table: the sealed length of every frame, in order.
pub fn encode_table(sealed_lens: &[u32]) -> Vec<u8> {
    sealed_lens.iter().flat_map(|l| l.to_be_bytes()).collect()
}

/// Decodes the frame table and returns each frame's byte range within the body.
/// Fails unless the frames exactly fill the body after the table.
pub fn decode_table(
    table: &[u8],
    frame_count: u32,
    body_len: u64,
) -> Result<Vec<Range<u64>>, FrameError> {
    if table.len() as u64 != table_len(frame_count) {
        return Err(FrameError::Invalid);
    }
    let mut ranges = Vec::with_capacity(frame_count as usize);
    let mut offset = table.len() as u64;
    for entry in table.chunks_exact(TABLE_ENTRY_LEN) {
        let len = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]) as u64;
        if len < FRAME_OVERHEAD as u64 || offset + len > body_len {
            return Err(FrameError::Invalid);
        }
        ranges.push(offset..offset + len);
        offset += len;
    }
    if offset != body_len {
        return Err(FrameError::Invalid);
    }
    Ok(ranges)
}

/// Encodes the fixed header of an archive file for a manifest of `manifest_len` bytes.
pub fn encode_archive_header(manifest_len: usize) -> [u8; ARCHIVE_HEADER_LEN] {
    let mut h = [0u8; ARCHIVE_HEADER_LEN];
    h[..8].copy_from_slice(&ARCHIVE_MAGIC);
    h[8..].copy_from_slice(&(manifest_len as u32).to_be_bytes());
    h
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
        }
    }
}

/// Seals an archive frame by frame as the original's bytes are pushed in, then
/// produces the frame table and the manifest. The caller lays them out on disk as
/// header, manifest, table, frames.
pub struct Packer {
    file_key: FileKey,
    fingerprint: [u8; crate::keys::FINGERPRINT_LEN],
    place: FramePlace,
    original_size: u64,
    level: i32,
    digest: ContentDigest,
    sealed_lens: Vec<u32>,
}

impl Packer {
    /// Starts packing a file of `original_size` bytes as archive `archive_id`.
    pub fn new(
        master: &crate::MasterKey,
        archive_id: u64,
        original_size: u64,
        frame_size: u32,
        level: i32,
    ) -> Result<Self, PackError> {
        if frame_size == 0 || frame_size > MAX_FRAME_SIZE {
            return Err(PackError::BadFrameSize);
        }
        let count = u32::try_from(frame_count(original_size, frame_size))
            .map_err(|_| PackError::BadFrameSize)?;
        Ok(Self {
            file_key: master.file_key(archive_id),
            fingerprint: master.fingerprint(),
            place: FramePlace {
                archive_id,
                index: 0,
                count,
                frame_size,
            },
            original_size,
            level,
            digest: ContentDigest::new(count, frame_size),
            sealed_lens: Vec::with_capacity(count as usize),
        })
    }

    /// Number of frames the archive will have.
    pub fn frame_count(&self) -> u32 {
        self.place.count
    }

    /// Bytes of original data the next frame must hold.
    pub fn next_frame_len(&self) -> usize {
        let start = self.place.index as u64 * self.place.frame_size as u64;
        self.original_size
            .saturating_sub(start)
            .min(self.place.frame_size as u64) as usize
    }

    /// Seals the next frame; `plain` must be exactly `next_frame_len()` bytes.
    pub fn seal_next(&mut self, plain: &[u8], salt: [u8; SALT_LEN]) -> Result<Vec<u8>, PackError> {
        let sealer = self.take_next(plain)?;
        let sealed = sealer.seal(plain, salt);
        self.record_sealed(sealed.len(), sealer.digest_part(plain));
        Ok(sealed)
    }

    /// Takes the next frame's original bytes (exactly `next_frame_len()`; into the
    /// digest here if frames are hashed in order) and returns what seals it, which
    /// may run on another thread; each sealed length, with the frame's share of
    /// the digest (`FrameSealer::digest_part`), must then come back through
    /// `record_sealed`, in order.
    pub fn take_next(&mut self, plain: &[u8]) -> Result<FrameSealer, PackError> {
        if self.place.index >= self.place.count {
            return Err(PackError::FrameCount);
        }
        if plain.len() != self.next_frame_len() {
            return Err(PackError::SizeMismatch);
        }
        if !ContentDigest::hashes_apart(self.place.frame_size) {
            self.digest.add(self.place.index, plain);
        }
        let sealer = FrameSealer {
            file_key: self.file_key.clone(),
            place: self.place,
            level: self.level,
        };
        self.place.index += 1;
        Ok(sealer)
    }

    /// Records the sealed length of the next frame in the table (frames in order)
    /// and its share of the digest, if frames are hashed apart.
    pub fn record_sealed(&mut self, sealed_len: usize, part: Option<FramePart>) {
        if let Some(part) = part {
            self.digest.add_part(self.sealed_lens.len() as u32, part);
        }
        self.sealed_lens.push(sealed_len as u32);
    }

    /// Finishes the archive: returns the frame table, the manifest, and the manifest's encoded bytes.
    pub fn finish(
        self,
        meta: FileMeta,
        payload_size: u16,
    ) -> Result<(Vec<u8>, crate::Manifest, Vec<u8>), PackError> {
        if self.place.index != self.place.count
            || self.sealed_lens.len() != self.place.count as usize
        {
            return Err(PackError::FrameCount);
        }
        crate::manifest::check_name(&meta.name)
            .map_err(|why| PackError::BadName(why.to_string()))?;
        let table = encode_table(&self.sealed_lens);
        let body_len = table.len() as u64 + self.sealed_lens.iter().map(|&l| l as u64).sum::<u64>();
        let manifest = crate::Manifest {
            archive_id: self.place.archive_id,
            key_fingerprint: self.fingerprint,
            original_size: self.original_size,
            mode: meta.mode,
            mtime_secs: meta.mtime_secs,
            mtime_nanos: meta.mtime_nanos,
            frame_size: self.place.frame_size,
            frame_count: self.place.count,
            body_len,
            payload_size,
            content_digest: *self
                .digest
                .finalize()
                .ok_or(PackError::FrameCount)?
                .as_bytes(),
            table_digest: *blake3::hash(&table).as_bytes(),
            name: meta.name,
        };
        let bytes = manifest.encode(&self.file_key);
        Ok((table, manifest, bytes))
    }
}

/// Seals one frame (compression and encryption, the costly part of packing), apart
/// from the `Packer`, so frames can be sealed on several threads.
pub struct FrameSealer {
    file_key: FileKey,
    place: FramePlace,
    level: i32,
}

impl FrameSealer {
    /// The sealed frame of `plain` (the bytes given to `take_next`) under `salt`.
    pub fn seal(&self, plain: &[u8], salt: [u8; SALT_LEN]) -> Vec<u8> {
        seal_frame(&self.file_key, &self.place, plain, self.level, salt)
    }

    /// The frame's index.
    pub fn index(&self) -> u32 {
        self.place.index
    }

    /// The frame's share of the content digest (None when frames are hashed in
    /// order, by `take_next`): computed here, on the sealing thread.
    pub fn digest_part(&self, plain: &[u8]) -> Option<FramePart> {
        ContentDigest::part(
            self.place.frame_size,
            self.place.count,
            self.place.index,
            plain,
        )
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

/// Opens an archive's frames in order and checks the whole against the manifest.
pub struct Unpacker {
    file_key: FileKey,
    manifest: crate::Manifest,
    ranges: Vec<Range<u64>>,
    digest: ContentDigest,
}

impl Unpacker {
    /// Checks the frame table (the first `manifest.table_len()` body bytes) and prepares to open frames.
    pub fn new(
        master: &crate::MasterKey,
        manifest: &crate::Manifest,
        table: &[u8],
    ) -> Result<Self, UnpackError> {
        if blake3::hash(table).as_bytes() != &manifest.table_digest {
            return Err(UnpackError::Table);
        }
        let ranges = decode_table(table, manifest.frame_count, manifest.body_len)
            .map_err(|_| UnpackError::Table)?;
        Ok(Self {
            file_key: master.file_key(manifest.archive_id),
            manifest: manifest.clone(),
            ranges,
            digest: ContentDigest::new(manifest.frame_count, manifest.frame_size),
        })
    }

    /// Body byte range of every frame, in order.
    pub fn frame_ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Opens frame `index` (frames must be opened in order, each once it has verified).
    pub fn open(&mut self, index: u32, sealed: &[u8]) -> Result<Vec<u8>, FrameError> {
        let plain = open_frame(&self.file_key, &self.place(index), sealed)?;
        if plain.len() as u64 != self.expected_len(index) {
            return Err(FrameError::Invalid);
        }
        self.digest.add(index, &plain);
        Ok(plain)
    }

    /// Opens frame `index` where it lies (see `open_frame_in_place`), feeding the
    /// digest when it is the next in order, as `open` does.
    pub fn open_in_place<'a>(
        &mut self,
        index: u32,
        sealed: &'a mut [u8],
        scratch: &'a mut [u8],
        check: Check,
    ) -> Result<&'a [u8], FrameError> {
        let place = self.place(index);
        let plain = open_frame_in_place(&self.file_key, &place, sealed, scratch, check)?;
        if plain.len() as u64 != self.expected_len(index) {
            return Err(FrameError::Invalid);
        }
        self.digest.add(index, plain);
        Ok(plain)
    }

    /// Where frame `index` sits in this archive.
    fn place(&self, index: u32) -> FramePlace {
        FramePlace {
            archive_id: self.manifest.archive_id,
            index,
            count: self.manifest.frame_count,
            frame_size: self.manifest.frame_size,
        }
    }

    /// Plaintext length of frame `index`.
    fn expected_len(&self, index: u32) -> u64 {
        self.manifest
            .original_size
            .saturating_sub(index as u64 * self.manifest.frame_size as u64)
            .min(self.manifest.frame_size as u64)
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
