//! Unit tests of sealing and opening frames.

use super::*;
use crate::keys::MasterKey;
use proptest::prelude::*;

fn place(index: u32) -> FramePlace {
    FramePlace {
        archive_id: 11,
        index,
        count: 4,
        frame_size: 1 << 16,
    }
}

#[test]
fn compressible_frames_shrink_and_random_ones_stay_raw() {
    let fk = MasterKey::from_bytes([5; 32]).file_key(11);
    let zeros = vec![0u8; 1 << 16];
    let sealed = seal_frame(&fk, &place(0), &zeros, 3, [1; 16]);
    assert!(sealed.len() < 1000);
    assert_eq!(open_frame(&fk, &place(0), &sealed).unwrap(), zeros);
    let noise: Vec<u8> = (0..1u32 << 16)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let sealed = seal_frame(&fk, &place(1), &noise, 3, [2; 16]);
    assert!(sealed.len() <= noise.len() + FRAME_OVERHEAD);
    assert_eq!(open_frame(&fk, &place(1), &sealed).unwrap(), noise);
}

#[test]
fn opening_in_place_decrypts_raw_frames_where_they_lie_and_decompresses_into_scratch() {
    let fk = MasterKey::from_bytes([5; 32]).file_key(11);
    let mut noise = vec![0u8; 1 << 16];
    blake3::Hasher::new().finalize_xof().fill(&mut noise);
    let mut sealed = seal_frame(&fk, &place(1), &noise, 3, [2; 16]);
    let mut scratch = vec![0u8; 1 << 16];
    let plain = open_frame_in_place(&fk, &place(1), &mut sealed, &mut scratch, Check::Tag).unwrap();
    assert_eq!(plain, &noise[..]);
    // Raw: the plaintext is the sealed buffer, right after the header.
    assert_eq!(plain.as_ptr(), sealed[FRAME_HEADER_LEN..].as_ptr());
    let text = b"loopcast ".repeat(5000);
    let mut sealed = seal_frame(&fk, &place(2), &text, 3, [3; 16]);
    let plain = open_frame_in_place(&fk, &place(2), &mut sealed, &mut scratch, Check::Tag).unwrap();
    assert_eq!(plain, &text[..]);
    assert_eq!(plain.as_ptr(), scratch.as_ptr());
    // Too small a scratch for the frame: refused, no panic.
    let mut sealed = seal_frame(&fk, &place(2), &text, 3, [3; 16]);
    let mut small = vec![0u8; 100];
    assert_eq!(
        open_frame_in_place(&fk, &place(2), &mut sealed, &mut small, Check::Tag),
        Err(FrameError::Invalid)
    );
}

#[test]
fn opening_checked_by_packets_decrypts_as_gcm_does_and_still_checks_the_header() {
    let fk = MasterKey::from_bytes([5; 32]).file_key(11);
    let mut noise = vec![0u8; (1 << 16) - 7];
    blake3::Hasher::new().finalize_xof().fill(&mut noise);
    let text = b"loopcast ".repeat(5000);
    let mut scratch = vec![0u8; 1 << 16];
    for (index, plain) in [(1, &noise[..]), (2, &text[..])] {
        let sealed = seal_frame(&fk, &place(index), plain, 3, [index as u8; 16]);
        let open = |sealed: &[u8], place: FramePlace, check, scratch: &mut [u8]| {
            let mut copy = sealed.to_vec();
            open_frame_in_place(&fk, &place, &mut copy, scratch, check).map(|p| p.to_vec())
        };
        assert_eq!(
            open(&sealed, place(index), Check::Packets, &mut scratch).unwrap(),
            plain
        );
        // The tag is what it leaves out: a flipped tag bit fails only with Check::Tag.
        let mut bad_tag = sealed.clone();
        *bad_tag.last_mut().unwrap() ^= 1;
        assert_eq!(
            open(&bad_tag, place(index), Check::Tag, &mut scratch),
            Err(FrameError::BadTag)
        );
        assert_eq!(
            open(&bad_tag, place(index), Check::Packets, &mut scratch).unwrap(),
            plain
        );
        // The header is still checked against the frame's place.
        assert_eq!(
            open(&sealed, place(index + 1), Check::Packets, &mut scratch),
            Err(FrameError::Invalid)
        );
    }
}

#[test]
fn frames_cannot_move_or_be_opened_with_another_key() {
    let fk = MasterKey::from_bytes([5; 32]).file_key(11);
    let sealed = seal_frame(&fk, &place(2), b"hello frame", 3, [3; 16]);
    assert_eq!(
        open_frame(&fk, &place(3), &sealed),
        Err(FrameError::Invalid)
    );
    assert_eq!(
        open_frame(
            &fk,
            &FramePlace {
                archive_id: 12,
                ..place(2)
            },
            &sealed
        ),
        Err(FrameError::Invalid)
    );
    let other = MasterKey::from_bytes([6; 32]).file_key(11);
    assert_eq!(
        open_frame(&other, &place(2), &sealed),
        Err(FrameError::BadTag)
    );
    // A header rewritten to claim another index fails the tag, not just the check.
    let mut moved = sealed.clone();
    moved[15] = 3;
    assert_eq!(open_frame(&fk, &place(3), &moved), Err(FrameError::BadTag));
}

proptest! {
    #[test]
    fn every_flipped_bit_is_detected(data in proptest::collection::vec(0u8..4, 0..3000), bit in any::<usize>()) {
        let fk = MasterKey::from_bytes([5; 32]).file_key(11);
        let mut sealed = seal_frame(&fk, &place(1), &data, 1, [4; 16]);
        let bit = bit % (sealed.len() * 8);
        sealed[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(open_frame(&fk, &place(1), &sealed).is_err());
    }

    #[test]
    fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let fk = MasterKey::from_bytes([5; 32]).file_key(11);
        let _ = open_frame(&fk, &place(0), &bytes);
    }

    #[test]
    fn table_round_trips(lens in proptest::collection::vec(FRAME_OVERHEAD as u32..100_000, 1..50)) {
        let table = encode_table(&lens);
        let body_len = table.len() as u64 + lens.iter().map(|&l| l as u64).sum::<u64>();
        let ranges = decode_table(&table, lens.len() as u32, body_len).unwrap();
        prop_assert_eq!(ranges.len(), lens.len());
        prop_assert_eq!(ranges.last().unwrap().end, body_len);
        prop_assert!(decode_table(&table, lens.len() as u32, body_len + 1).is_err());
    }

    #[test]
    fn random_tables_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), count in any::<u32>(), body in any::<u64>()) {
        let _ = decode_table(&bytes, count, body);
        let _ = decode_archive_header(&bytes);
    }
}
