//! Unit tests of packing frames into cells and opening them.

use super::*;
use crate::keys::MasterKey;
use proptest::prelude::*;

const CELL: u16 = 1424;

fn key() -> MasterKey {
    MasterKey::from_bytes([5; 32])
}

/// `original` packed in frames of `frame_size`, its archive id drawn from
/// `seed`: (manifest, body).
fn packed(original: &[u8], frame_size: u32, seed: u64) -> (crate::Manifest, Vec<u8>) {
    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let (manifest, _, body) = crate::sim::pack(&key(), original, frame_size, CELL, &mut rng);
    assert_eq!(body.len() as u64, manifest.body_len);
    (manifest, body)
}

fn noise(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    blake3::Hasher::new().finalize_xof().fill(&mut bytes);
    bytes
}

/// Half noise (stored raw), half text (compressed), in four 64 KiB frames.
fn mixed() -> Vec<u8> {
    let mut original = noise(2 << 16);
    original.extend(b"loopcast ".repeat((2 << 16) / 9 + 1));
    original.truncate(4 << 16);
    original
}

/// Every frame of `body` opened from its sealed cells; then the digest checked.
fn unpack(m: &crate::Manifest, body: &[u8]) -> Result<Vec<u8>, String> {
    let mut table = body[..m.table_len() as usize].to_vec();
    let mut u =
        Unpacker::new(&key(), m, &mut table, Cells::Sealed).map_err(|e| format!("{e:?}"))?;
    let mut out = Vec::new();
    for (i, r) in u.frame_ranges().to_vec().iter().enumerate() {
        let plain = u.open(i as u32, &body[r.start as usize..r.end as usize]);
        out.extend(plain.map_err(|e| format!("frame {i}: {e}"))?);
    }
    u.finish().map_err(|e| format!("{e:?}"))?;
    Ok(out)
}

#[test]
fn frames_pack_into_whole_cells_and_unpack_to_the_original() {
    let original = mixed();
    let (m, body) = packed(&original, 1 << 16, 11);
    assert_eq!(m.cell_size, CELL);
    assert_eq!(m.body_len % CELL as u64, 0);
    // The noise is stored raw (a few cells' padding more), the text shrinks.
    assert!(m.body_len < original.len() as u64 * 3 / 5, "{}", m.body_len);
    assert_eq!(unpack(&m, &body).unwrap(), original);
    // An empty file: one empty frame of one cell.
    let (m, body) = packed(b"", 1 << 16, 12);
    assert_eq!(m.body_len, 2 * CELL as u64);
    assert_eq!(unpack(&m, &body).unwrap(), b"");
}

#[test]
fn opening_in_place_leaves_raw_frames_where_they_lie_and_decompresses_into_scratch() {
    let original = mixed();
    let (m, body) = packed(&original, 1 << 16, 11);
    let mut table = body[..m.table_len() as usize].to_vec();
    let mut u = Unpacker::new(&key(), &m, &mut table, Cells::Sealed).unwrap();
    let ranges = u.frame_ranges().to_vec();
    let mut scratch = vec![0u8; 1 << 16];
    // Raw: the plaintext is the first bytes of the frame's cells.
    let mut cells = body[ranges[0].start as usize..ranges[0].end as usize].to_vec();
    let plain = u
        .open_in_place(0, &mut cells, &mut scratch, Cells::Sealed)
        .unwrap();
    assert_eq!(plain, &original[..1 << 16]);
    assert_eq!(plain.as_ptr(), cells.as_ptr());
    // Compressed: into the scratch; cells opened as they came (the receiver's way).
    let mut cells = body[ranges[3].start as usize..ranges[3].end as usize].to_vec();
    let cell_key = CellKey::new(&key().file_key(m.archive_id));
    let first = ranges[3].start / CELL as u64;
    assert!(cell_key.open_cells(m.archive_id, first, &mut cells, CELL));
    let plain = u
        .open_in_place(3, &mut cells, &mut scratch, Cells::Opened)
        .unwrap();
    assert_eq!(plain, &original[3 << 16..]);
    assert_eq!(plain.as_ptr(), scratch.as_ptr());
    // Opened and joined as they came (a receiver's frame in memory).
    let sealed = &body[ranges[3].start as usize..ranges[3].end as usize];
    let mut opened = sealed.to_vec();
    assert!(cell_key.open_cells(m.archive_id, first, &mut opened, CELL));
    let mut joined = vec![0u8; opened.len()];
    crate::cell::copy_joined(&opened, CELL, &mut joined);
    let plain = u
        .open_in_place(3, &mut joined, &mut scratch, Cells::Joined)
        .unwrap();
    assert_eq!(plain, &original[3 << 16..]);
    // Too small a scratch, or the cells of another frame: refused, no panic.
    let mut cells = body[ranges[3].start as usize..ranges[3].end as usize].to_vec();
    let mut small = vec![0u8; 100];
    let opened = u.open_in_place(3, &mut cells, &mut small, Cells::Sealed);
    assert_eq!(opened, Err(FrameError::Invalid));
    let mut cells = body[ranges[2].start as usize..ranges[2].end as usize].to_vec();
    let opened = u.open_in_place(3, &mut cells, &mut scratch, Cells::Sealed);
    assert!(opened.is_err());
}

#[test]
fn cells_cannot_move_between_frames_or_archives_and_another_key_opens_nothing() {
    let original = mixed();
    let (m, body) = packed(&original, 1 << 16, 11);
    let c = CELL as usize;
    // The first cell of frame 1 swapped with the first of frame 0.
    let mut table = body[..m.table_len() as usize].to_vec();
    let ranges = Unpacker::new(&key(), &m, &mut table, Cells::Sealed)
        .unwrap()
        .frame_ranges()
        .to_vec();
    let (a, b) = (ranges[0].start as usize, ranges[1].start as usize);
    let mut swapped = body.clone();
    swapped[a..a + c].copy_from_slice(&body[b..b + c]);
    swapped[b..b + c].copy_from_slice(&body[a..a + c]);
    assert_eq!(
        unpack(&m, &swapped),
        Err("frame 0: frame failed authentication".into())
    );
    // A cell of another archive of the same file, at the same place.
    let (_, other) = packed(&original, 1 << 16, 12);
    let mut foreign = body.clone();
    foreign[b..b + c].copy_from_slice(&other[b..b + c]);
    assert_eq!(
        unpack(&m, &foreign),
        Err("frame 1: frame failed authentication".into())
    );
    // Another key: not even the table opens.
    let mut table = body[..m.table_len() as usize].to_vec();
    let other_key = MasterKey::from_bytes([6; 32]);
    let opened = Unpacker::new(&other_key, &m, &mut table, Cells::Sealed);
    assert_eq!(opened.err(), Some(UnpackError::Table));
    assert!(is_v3_archive(b"LCARCH01\0\0\0\x40"));
    assert!(!is_v3_archive(&ARCHIVE_MAGIC));
}

proptest! {
    #[test]
    fn every_flipped_bit_is_detected(data in proptest::collection::vec(0u8..4, 0..6000), bit in any::<usize>()) {
        let (m, mut body) = packed(&data, 4096, 11);
        let bit = bit % (body.len() * 8);
        body[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(unpack(&m, &body).is_err());
    }

    #[test]
    fn table_round_trips(stored in proptest::collection::vec((0u32..67_000, any::<bool>()), 1..50)) {
        let frame_size = 1u32 << 16;
        let entries: Vec<TableEntry> = stored.iter().map(|&(len, compressed)| TableEntry {
            stored_len: if compressed { len } else { frame_size },
            compressed,
        }).collect();
        let count = entries.len() as u32;
        let table = encode_table(&entries);
        let cells: u64 = table_cells(count, CELL)
            + entries.iter().map(|e| crate::cell::cells_for(e.stored_len as u64, CELL)).sum::<u64>();
        let shape = BodyShape {
            frame_count: count,
            frame_size,
            original_size: count as u64 * frame_size as u64,
            cell_size: CELL,
            body_len: cells * CELL as u64,
        };
        let frames = decode_table(&table, &shape).unwrap();
        prop_assert_eq!(frames.iter().map(|f| f.entry).collect::<Vec<_>>(), entries);
        prop_assert_eq!(frames.last().unwrap().range.end, shape.body_len);
        let longer = BodyShape { body_len: shape.body_len + CELL as u64, ..shape };
        prop_assert!(decode_table(&table, &longer).is_err());
    }

    #[test]
    fn random_tables_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), count in any::<u32>(), body in any::<u64>(), cell in any::<u16>()) {
        let shape = BodyShape { frame_count: count, frame_size: 1 << 20, original_size: body, cell_size: cell, body_len: body };
        let _ = decode_table(&bytes, &shape);
        let _ = decode_archive_header(&bytes);
    }
}
