//! Sealed cells (format v4, spec §3.4): the unit an archive body is made of and
//! a DATA packet carries. At pack time the frame table and each frame's stored
//! bytes are cut into cells of one size (the archive's `cell_size`, which fits a
//! packet), each sealed with AES-256-GCM under the archive's cell key. A cell's
//! nonce and associated data are its index in the body and the archive id, so a
//! cell cannot move, be swapped between archives, or be truncated; which frame
//! (and which cell of it) an index is follows from the frame table, itself
//! sealed in the body's first cells. The receiver opens a cell in place in one
//! fused pass as it arrives, knowing only the manifest, with `ring` (the fastest
//! here: docs/performance.md).

use crate::keys::FileKey;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroize;

/// Bytes a sealed cell carries after its sealed bytes.
pub const TAG_LEN: usize = 16;
/// Bytes of a cell's associated data: archive id, cell index.
const AAD_LEN: usize = 16;
/// Smallest cell size an archive may have (a 576-byte IPv6 packet's payload).
pub const MIN_CELL_SIZE: u16 = 484;

/// Where a cell belongs: its archive and its index in the archive's body
/// (body offset = index × cell size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellPlace {
    /// The archive's id.
    pub archive_id: u64,
    /// The cell's index in the body.
    pub index: u64,
}

impl CellPlace {
    fn nonce(&self) -> Nonce {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&self.index.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    fn aad(&self) -> Aad<[u8; AAD_LEN]> {
        let mut a = [0u8; AAD_LEN];
        a[..8].copy_from_slice(&self.archive_id.to_be_bytes());
        a[8..].copy_from_slice(&self.index.to_be_bytes());
        Aad::from(a)
    }
}

/// Bytes of stored data one cell of `cell_size` bytes carries.
pub fn cell_data_len(cell_size: u16) -> usize {
    (cell_size as usize).saturating_sub(TAG_LEN)
}

/// Cells that carry `stored_len` bytes (at least one: an empty frame has one
/// cell of padding).
pub fn cells_for(stored_len: u64, cell_size: u16) -> u64 {
    stored_len
        .div_ceil(cell_data_len(cell_size).max(1) as u64)
        .max(1)
}

/// Moves the data of opened cells (`bytes`, whole cells of `cell_size` each, their
/// tags still in place) together at the start of `bytes`, and returns the first
/// `stored_len` bytes of it. None if the cells cannot hold `stored_len` bytes.
pub fn join_cells(bytes: &mut [u8], cell_size: u16, stored_len: usize) -> Option<&mut [u8]> {
    let (size, data) = (cell_size as usize, cell_data_len(cell_size));
    if size <= TAG_LEN
        || !bytes.len().is_multiple_of(size)
        || stored_len > bytes.len() / size * data
    {
        return None;
    }
    for cell in 1..stored_len.div_ceil(data) {
        let from = cell * size;
        bytes.copy_within(from..from + data, cell * data);
    }
    Some(&mut bytes[..stored_len])
}

/// Copies the data of whole opened cells (`cells`, of `cell_size` each, tags in
/// place) to `joined`, where cell `k`'s data goes at `k × cell_data_len`: one
/// pass where `join_cells` after a copy would be two. `joined` must be at least
/// as long as the cells' data.
pub fn copy_joined(cells: &[u8], cell_size: u16, joined: &mut [u8]) {
    let data = cell_data_len(cell_size);
    for (cell, out) in cells
        .chunks_exact(cell_size as usize)
        .zip(joined.chunks_mut(data))
    {
        out.copy_from_slice(&cell[..data]);
    }
}

/// The inverse of `copy_joined`: copies cell data held together in `joined` to
/// the places of whole cells of `cell_size` in `cells` (the first cell's data
/// from `joined`'s start); the tags' bytes in `cells` are left as they were.
pub fn copy_spread(joined: &[u8], cell_size: u16, cells: &mut [u8]) {
    let data = cell_data_len(cell_size);
    for (cell, from) in cells
        .chunks_mut(cell_size as usize)
        .zip(joined.chunks(data))
    {
        let n = from.len().min(cell.len()).min(data);
        cell[..n].copy_from_slice(&from[..n]);
    }
}

/// The inverse of `join_cells`, in place: moves the data of the first `cells`
/// cells, held together at the start of `bytes`, back to their places as whole
/// cells of `cell_size` (the tags' bytes are then left as they were: a sealed
/// layout of opened cells, as a partial file holds them).
pub fn spread_cells(bytes: &mut [u8], cell_size: u16, cells: usize) {
    let (size, data) = (cell_size as usize, cell_data_len(cell_size));
    let cells = cells.min(bytes.len() / size.max(1));
    // The last first: each cell moves up, over nothing not yet moved.
    for cell in (1..cells).rev() {
        bytes.copy_within(cell * data..cell * data + data, cell * size);
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
    /// The tag's bytes stay where they were.
    pub fn open<'a>(&self, place: &CellPlace, cell: &'a mut [u8]) -> Option<&'a mut [u8]> {
        if cell.len() < TAG_LEN {
            return None;
        }
        (self.0)
            .open_in_place(place.nonce(), place.aad(), cell)
            .ok()
    }

    /// Seals whole cells of `cell_size` in place, the first at `first`: each
    /// cell's data, then room for its tag, which is written there.
    pub fn seal_cells(&self, archive_id: u64, first: u64, bytes: &mut [u8], cell_size: u16) {
        let data = cell_data_len(cell_size);
        for (i, cell) in bytes.chunks_exact_mut(cell_size as usize).enumerate() {
            let place = CellPlace {
                archive_id,
                index: first + i as u64,
            };
            let (body, tag) = cell.split_at_mut(data);
            tag.copy_from_slice(&self.seal(&place, body));
        }
    }

    /// Opens whole cells of `cell_size` in place, the first at `first`; false (some
    /// opened, the rest not) unless `bytes` is whole cells that all open.
    pub fn open_cells(
        &self,
        archive_id: u64,
        first: u64,
        bytes: &mut [u8],
        cell_size: u16,
    ) -> bool {
        let size = cell_size as usize;
        if size <= TAG_LEN || !bytes.len().is_multiple_of(size) {
            return false;
        }
        bytes.chunks_exact_mut(size).enumerate().all(|(i, cell)| {
            let place = CellPlace {
                archive_id,
                index: first + i as u64,
            };
            self.open(&place, cell).is_some()
        })
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
        index: 7,
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
            CellPlace { index: 8, ..HERE },
            CellPlace { index: 6, ..HERE },
            CellPlace {
                index: 7 + (1 << 32),
                ..HERE
            },
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
        // Truncated (its first or last byte), or one bit changed.
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

    #[test]
    fn cells_sealed_together_open_and_join_to_their_data_and_seal_again_to_the_same_bytes() {
        let size = 100u16;
        let data: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let cells = cells_for(data.len() as u64, size) as usize;
        assert_eq!(cells, 3); // 84 data bytes per cell
        let mut bytes = vec![0u8; cells * size as usize];
        for (i, chunk) in data.chunks(cell_data_len(size)).enumerate() {
            bytes[i * size as usize..][..chunk.len()].copy_from_slice(chunk);
        }
        key(5).seal_cells(5, 40, &mut bytes, size);
        let sealed = bytes.clone();
        // At another first index, one cell swapped, or not whole cells: refused.
        assert!(!key(5).open_cells(5, 41, &mut sealed.clone(), size));
        let mut swapped = sealed.clone();
        swapped[..100].copy_from_slice(&sealed[100..200]);
        swapped[100..200].copy_from_slice(&sealed[..100]);
        assert!(!key(5).open_cells(5, 40, &mut swapped, size));
        assert!(!key(5).open_cells(5, 40, &mut sealed[..299].to_vec(), size));
        assert!(key(5).open_cells(5, 40, &mut bytes, size));
        let opened_cells = bytes.clone();
        let mut opened = bytes.clone();
        // Opened cells sealed again are the bytes that came (parity rebuilds need them).
        key(5).seal_cells(5, 40, &mut opened, size);
        assert_eq!(opened, sealed);
        assert_eq!(join_cells(&mut bytes, size, 250).unwrap(), &data[..]);
        assert!(join_cells(&mut bytes, size, 253).is_none());
        // Spread back, the data is at the cells' places again, and copying the
        // opened cells joined gives what joining them in place gives.
        let mut spread = bytes.clone();
        spread_cells(&mut spread, size, 3);
        for k in 0..3 {
            let (at, d) = (k * size as usize, cell_data_len(size));
            assert_eq!(spread[at..at + d], opened_cells[at..at + d], "cell {k}");
        }
        let mut joined = vec![0u8; 3 * cell_data_len(size)];
        copy_joined(&opened_cells, size, &mut joined);
        assert_eq!(&joined[..250], &data[..]);
        let mut out = vec![0u8; 2 * size as usize];
        copy_spread(&joined[cell_data_len(size)..], size, &mut out);
        assert_eq!(out[..84], opened_cells[100..184]);
        assert_eq!(out[100..184], opened_cells[200..284]);
        assert_eq!(cells_for(0, size), 1);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_open_to_none_without_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
            index in proptest::prelude::any::<u64>(),
            cell_size in proptest::prelude::any::<u16>(),
        ) {
            let mut bytes = bytes;
            let place = CellPlace { index, ..HERE };
            proptest::prop_assert!(key(5).open(&place, &mut bytes.clone()).is_none());
            proptest::prop_assert!(bytes.is_empty() || !key(5).open_cells(5, index, &mut bytes.clone(), cell_size));
            let len = bytes.len() / 2;
            let _ = join_cells(&mut bytes, cell_size, len);
        }
    }
}
