//! The manifest: what an archive holds and how it is laid out, authenticated with the file key.

use crate::codec::{Reader, Truncated};
use crate::keys::{FINGERPRINT_LEN, FileKey, MasterKey};
use std::ops::Range;

/// Manifest format version this code writes and reads (2: format v4, cells;
/// 1 was format v3).
pub const MANIFEST_VERSION: u8 = 2;
/// Longest file name a manifest may carry, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Bytes of the blake3 MAC at the end of an encoded manifest.
pub const MAC_LEN: usize = 32;
/// Bytes of an encoded manifest besides its name.
pub const FIXED_LEN: usize =
    1 + 8 + FINGERPRINT_LEN + 8 + 4 + 8 + 4 + 4 + 4 + 8 + 2 + 2 + 32 + 32 + 2 + MAC_LEN;

/// Everything a receiver needs to know about an archive before its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Random id that changes whenever the archive bytes change; also derives the file key.
    pub archive_id: u64,
    /// Fingerprint of the master key the archive was sealed with.
    pub key_fingerprint: [u8; FINGERPRINT_LEN],
    /// Size of the original file in bytes.
    pub original_size: u64,
    /// Unix permission bits of the original file.
    pub mode: u32,
    /// Modification time of the original file, seconds since the epoch.
    pub mtime_secs: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nanos: u32,
    /// Bytes of original data per frame (the last frame may hold fewer).
    pub frame_size: u32,
    /// Number of frames.
    pub frame_count: u32,
    /// Bytes of the archive body (frame table and sealed frames) carried in DATA packets.
    pub body_len: u64,
    /// Body bytes per DATA packet: whole cells, as many as the server's packets
    /// carry (the server signs the manifest again with its own).
    pub payload_size: u16,
    /// Bytes of each sealed cell of the body (spec §3.4), tag included.
    pub cell_size: u16,
    /// blake3 digest of the original file.
    pub content_digest: [u8; 32],
    /// blake3 digest of the frame table at the start of the body.
    pub table_digest: [u8; 32],
    /// File name, a single path component.
    pub name: String,
}

/// Why a manifest was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestError {
    /// Too short or a field runs past the end.
    Truncated,
    /// A field holds an impossible value.
    Invalid,
    /// Sealed with another master key (fingerprints differ).
    WrongKey,
    /// The MAC does not verify: corrupt or forged.
    BadMac,
}

impl From<Truncated> for ManifestError {
    fn from(_: Truncated) -> Self {
        ManifestError::Truncated
    }
}

impl Manifest {
    /// Number of DATA packets in one loop of the archive.
    pub fn packet_count(&self) -> u32 {
        self.body_len.div_ceil(self.payload_size as u64) as u32
    }

    /// Body bytes of the frame table's cells at the start of the body.
    pub fn table_len(&self) -> u64 {
        crate::archive::layout::table_cells(self.frame_count, self.cell_size)
            * self.cell_size as u64
    }

    /// Cells of the body.
    pub fn cell_count(&self) -> u64 {
        self.body_len / self.cell_size.max(1) as u64
    }

    /// Cells each DATA packet carries (the last packet may carry fewer).
    pub fn cells_per_packet(&self) -> u64 {
        (self.payload_size / self.cell_size.max(1)) as u64
    }

    /// The packets that carry the frame table (no frame can be opened without them).
    pub fn table_packets(&self) -> Range<u32> {
        let packets =
            crate::received::packets_covering(0..self.table_len(), self.payload_size as u32);
        packets.start..packets.end.min(self.packet_count())
    }

    /// Encodes the manifest and appends its MAC computed with `file_key`.
    pub fn encode(&self, file_key: &FileKey) -> Vec<u8> {
        let mut b = Vec::with_capacity(FIXED_LEN + self.name.len());
        b.push(MANIFEST_VERSION);
        b.extend_from_slice(&self.archive_id.to_be_bytes());
        b.extend_from_slice(&self.key_fingerprint);
        b.extend_from_slice(&self.original_size.to_be_bytes());
        b.extend_from_slice(&self.mode.to_be_bytes());
        b.extend_from_slice(&self.mtime_secs.to_be_bytes());
        b.extend_from_slice(&self.mtime_nanos.to_be_bytes());
        b.extend_from_slice(&self.frame_size.to_be_bytes());
        b.extend_from_slice(&self.frame_count.to_be_bytes());
        b.extend_from_slice(&self.body_len.to_be_bytes());
        b.extend_from_slice(&self.payload_size.to_be_bytes());
        b.extend_from_slice(&self.cell_size.to_be_bytes());
        b.extend_from_slice(&self.content_digest);
        b.extend_from_slice(&self.table_digest);
        b.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        b.extend_from_slice(self.name.as_bytes());
        let mac = blake3::keyed_hash(&file_key.manifest_mac_key(), &b);
        b.extend_from_slice(mac.as_bytes());
        b
    }

    /// Decodes a manifest and checks fingerprint and MAC against `master`.
    pub fn decode(bytes: &[u8], master: &MasterKey) -> Result<Manifest, ManifestError> {
        let manifest = Self::decode_unverified(bytes)?;
        if manifest.key_fingerprint != master.fingerprint() {
            return Err(ManifestError::WrongKey);
        }
        let (signed, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        let file_key = master.file_key(manifest.archive_id);
        let expected = blake3::keyed_hash(&file_key.manifest_mac_key(), signed);
        // blake3::Hash equality is constant-time.
        if expected != blake3::Hash::from_bytes(mac.try_into().map_err(|_| ManifestError::Invalid)?)
        {
            return Err(ManifestError::BadMac);
        }
        Ok(manifest)
    }

    /// Decodes the fields without checking the MAC (for diagnostics and `decode`).
    pub fn decode_unverified(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let mut r = Reader::new(bytes);
        if r.u8()? != MANIFEST_VERSION {
            return Err(ManifestError::Invalid);
        }
        let m = Manifest {
            archive_id: r.u64()?,
            key_fingerprint: r.array()?,
            original_size: r.u64()?,
            mode: r.u32()?,
            mtime_secs: r.i64()?,
            mtime_nanos: r.u32()?,
            frame_size: r.u32()?,
            frame_count: r.u32()?,
            body_len: r.u64()?,
            payload_size: r.u16()?,
            cell_size: r.u16()?,
            content_digest: r.array()?,
            table_digest: r.array()?,
            name: {
                let len = r.u16()? as usize;
                if len > MAX_NAME_LEN {
                    return Err(ManifestError::Invalid);
                }
                std::str::from_utf8(r.take(len)?)
                    .map_err(|_| ManifestError::Invalid)?
                    .to_owned()
            },
        };
        r.take(MAC_LEN)?;
        if !r.rest().is_empty() {
            return Err(ManifestError::Invalid);
        }
        m.validate()?;
        Ok(m)
    }

    /// Checks that the layout fields are consistent with each other.
    fn validate(&self) -> Result<(), ManifestError> {
        let ok = self.frame_size > 0
            && self.cell_size >= crate::cell::MIN_CELL_SIZE
            && self.cell_size.is_multiple_of(2)
            && self.payload_size >= self.cell_size
            && self.payload_size.is_multiple_of(self.cell_size)
            && self.body_len.is_multiple_of(self.cell_size as u64)
            && self.frame_count > 0
            && self.mtime_nanos < 1_000_000_000
            && self.frame_count as u64
                == crate::archive::layout::frame_count(self.original_size, self.frame_size)
            && self.body_len
                >= crate::archive::layout::min_body_len(self.frame_count, self.cell_size)
            && self.body_len.div_ceil(self.payload_size as u64) <= u32::MAX as u64;
        if ok {
            Ok(())
        } else {
            Err(ManifestError::Invalid)
        }
    }
}

/// Checks that `name` is usable as a file name on the receiver: one non-empty path
/// component, no separator, no NUL, not "." or "..", at most 255 bytes.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty name")
    } else if name.len() > MAX_NAME_LEN {
        Err("name longer than 255 bytes")
    } else if name == "." || name == ".." {
        Err("name is a relative directory reference")
    } else if name.contains('/') || name.contains('\\') {
        Err("name contains a path separator")
    } else if name.contains('\0') {
        Err("name contains a NUL byte")
    } else if name.chars().any(char::is_control) {
        Err("name contains a control character")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(name: &str, fingerprint: [u8; 16]) -> Manifest {
        Manifest {
            archive_id: 42,
            key_fingerprint: fingerprint,
            original_size: 3_000_000,
            mode: 0o644,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 5,
            frame_size: 1 << 20,
            frame_count: 3,
            body_len: 3_100_000 / 1424 * 1424,
            payload_size: 1424,
            cell_size: 1424,
            content_digest: [7; 32],
            table_digest: [8; 32],
            name: name.into(),
        }
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "/etc/passwd",
            "../x",
            "a/b",
            "a\\b",
            "a\0b",
            "a\nb",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
        for good in ["a.bin", "..hidden", "data 2024.tar.zst", "naïve"] {
            assert!(check_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn wrong_key_and_tampering_are_told_apart() {
        let k1 = MasterKey::from_bytes([1; 32]);
        let k2 = MasterKey::from_bytes([2; 32]);
        let m = sample("a.bin", k1.fingerprint());
        let bytes = m.encode(&k1.file_key(m.archive_id));
        assert_eq!(Manifest::decode(&bytes, &k1), Ok(m.clone()));
        assert_eq!(Manifest::decode(&bytes, &k2), Err(ManifestError::WrongKey));
        let mut tampered = bytes.clone();
        tampered[40] ^= 1;
        assert!(Manifest::decode(&tampered, &k1).is_err());
        // A manifest whose fingerprint claims k2 but is signed with k1's file key.
        let forged = sample("a.bin", k2.fingerprint()).encode(&k1.file_key(42));
        assert_eq!(Manifest::decode(&forged, &k2), Err(ManifestError::BadMac));
    }

    proptest! {
        #[test]
        fn round_trips(name in "[^/]{0,80}", size in 0u64..1<<40, frame_shift in 10u32..26, extra in 0u64..100_000,
                       cell in 242u16..4500, cells in 1u16..6, mode in any::<u32>(), secs in any::<i64>(), nanos in 0u32..1_000_000_000) {
            let key = MasterKey::from_bytes([3; 32]);
            let frame_size = 1u32 << frame_shift;
            let frame_count = crate::archive::layout::frame_count(size, frame_size) as u32;
            let cell_size = cell * 2;
            let body = crate::archive::layout::min_body_len(frame_count, cell_size) + size + extra;
            let m = Manifest { name, original_size: size, frame_size, frame_count, mode, mtime_secs: secs, mtime_nanos: nanos,
                body_len: body.next_multiple_of(cell_size as u64), payload_size: cell_size * cells.min(9000 / cell_size), cell_size,
                ..sample("", key.fingerprint()) };
            let bytes = m.encode(&key.file_key(m.archive_id));
            prop_assert_eq!(Manifest::decode(&bytes, &key), Ok(m));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let key = MasterKey::from_bytes([3; 32]);
            let _ = Manifest::decode(&bytes, &key);
        }
    }
}
