//! Sealed cells (format v4, spec §3.4; being built: nothing packs or sends
//! them yet). At pack time a frame's stored bytes are cut into cells of one
//! packet's payload, each sealed with AES-256-GCM under its archive's cell
//! key. The nonce is (frame index, cell index), unique within the archive
//! whose key it is; the associated data binds the archive id, the frame index,
//! the cell index and the frame's cell count, so a cell cannot move within its
//! frame, to another frame or archive, and a frame cannot lose its last cells
//! unnoticed. A cell is opened in place in one pass, with `ring` (the fastest
//! here: docs/performance.md).

use crate::keys::FileKey;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroize;

/// Bytes a sealed cell carries after its sealed bytes.
pub const TAG_LEN: usize = 16;
/// Bytes of a cell's associated data.
const AAD_LEN: usize = 20;

/// Where a cell belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellPlace {
    /// The archive's id.
    pub archive_id: u64,
    /// The frame's index in the archive.
    pub frame: u32,
    /// The cell's index in its frame.
    pub cell: u32,
    /// How many cells the frame has.
    pub cells: u32,
}

impl CellPlace {
    fn nonce(&self) -> Nonce {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.frame.to_be_bytes());
        n[4..8].copy_from_slice(&self.cell.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    fn aad(&self) -> Aad<[u8; AAD_LEN]> {
        let mut a = [0u8; AAD_LEN];
        a[..8].copy_from_slice(&self.archive_id.to_be_bytes());
        a[8..12].copy_from_slice(&self.frame.to_be_bytes());
        a[12..16].copy_from_slice(&self.cell.to_be_bytes());
        a[16..].copy_from_slice(&self.cells.to_be_bytes());
        Aad::from(a)
    }
}

/// The key that seals and opens one archive's cells.
pub struct CellKey(LessSafeKey);

impl CellKey {
    /// The cell key of the archive whose file key is `file_key`.
    pub fn new(file_key: &FileKey) -> Self {
        let mut bytes = file_key.cell_key();
        let key = UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte AES-256 key");
        bytes.zeroize();
        Self(LessSafeKey::new(key))
    }

    /// Seals `bytes` in place as the cell at `place`; returns its tag, which
    /// follows the sealed bytes in the archive and in packets.
    pub fn seal(&self, place: &CellPlace, bytes: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = (self.0)
            .seal_in_place_separate_tag(place.nonce(), place.aad(), bytes)
            .expect("a cell is far below AES-GCM's message limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Opens `cell` (sealed bytes, then the tag) in place: its bytes, or None
    /// if it is not the cell at `place` of this archive, whole and unchanged.
    pub fn open<'a>(&self, place: &CellPlace, cell: &'a mut [u8]) -> Option<&'a mut [u8]> {
        if cell.len() < TAG_LEN {
            return None;
        }
        (self.0)
            .open_in_place(place.nonce(), place.aad(), cell)
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MasterKey;

    fn key(archive_id: u64) -> CellKey {
        CellKey::new(&MasterKey::from_bytes([9; 32]).file_key(archive_id))
    }

    const HERE: CellPlace = CellPlace {
        archive_id: 5,
        frame: 3,
        cell: 7,
        cells: 12,
    };

    /// `plain` sealed at `place` under archive 5's key, tag appended.
    fn sealed(plain: &[u8], place: &CellPlace) -> Vec<u8> {
        let mut cell = plain.to_vec();
        let tag = key(5).seal(place, &mut cell);
        cell.extend_from_slice(&tag);
        cell
    }

    #[test]
    fn a_cell_opens_in_place_to_what_was_sealed_at_every_size() {
        for len in [0, 1, 1408, 8908] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut cell = sealed(&plain, &HERE);
            assert_eq!(cell.len(), len + TAG_LEN);
            if len > 0 {
                assert_ne!(
                    &cell[..len],
                    &plain[..],
                    "sealed bytes are not the plain ones"
                );
            }
            assert_eq!(
                key(5).open(&HERE, &mut cell).map(|b| b.to_vec()),
                Some(plain)
            );
        }
    }

    #[test]
    fn a_cell_moved_swapped_truncated_altered_or_of_another_archive_is_refused() {
        let plain = vec![1u8; 1408];
        let cell = sealed(&plain, &HERE);
        let elsewhere = [
            CellPlace { cell: 8, ..HERE },
            CellPlace { frame: 4, ..HERE },
            CellPlace { cells: 11, ..HERE },
            CellPlace {
                archive_id: 6,
                ..HERE
            },
        ];
        for place in elsewhere {
            assert!(
                key(5).open(&place, &mut cell.clone()).is_none(),
                "{place:?}"
            );
        }
        // Another archive's key, at the same place.
        assert!(key(6).open(&HERE, &mut cell.clone()).is_none());
        // Truncated (the frame's last byte, or its tag), or one bit changed.
        assert!(key(5).open(&HERE, &mut cell[1..].to_vec()).is_none());
        assert!(
            key(5)
                .open(&HERE, &mut cell[..cell.len() - 1].to_vec())
                .is_none()
        );
        for at in [0, 700, cell.len() - 1] {
            let mut changed = cell.clone();
            changed[at] ^= 1;
            assert!(key(5).open(&HERE, &mut changed).is_none(), "bit at {at}");
        }
        assert!(key(5).open(&HERE, &mut cell.clone()).is_some());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_open_to_none_without_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
            frame in proptest::prelude::any::<u32>(),
        ) {
            let mut bytes = bytes;
            let place = CellPlace { frame, ..HERE };
            proptest::prop_assert!(key(5).open(&place, &mut bytes).is_none());
        }
    }
}
