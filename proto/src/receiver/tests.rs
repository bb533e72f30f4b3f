//! Unit tests of the receiver machine.

use super::*;
use crate::archive::{FileMeta, Packer};
use crate::wire::DataHeader;
use crate::wire::Nak;
use proptest::prelude::*;

mod parity;
mod relay;
mod replays;

/// The packet keys of `m`'s archive in session `session` (every test here uses key [4; 32]).
fn keys_of(m: &Manifest, session: u32) -> wire::SessionKeys {
    let file_key = MasterKey::from_bytes([4; 32]).file_key(m.archive_id);
    wire::SessionKeys::new(&file_key, session)
}

/// The packet keys of `m`'s archive in session 7.
fn keys(m: &Manifest) -> wire::SessionKeys {
    keys_of(m, 7)
}

fn setup() -> (MasterKey, Manifest, Vec<u8>) {
    let key = MasterKey::from_bytes([4; 32]);
    let mut packer = Packer::new(&key, 99, 5000, 4096, 3, 1000).unwrap();
    let mut body = Vec::new();
    for i in 0..2u8 {
        // Incompressible content, so the body spans several 1000-byte packets.
        let plain: Vec<u8> = (0..packer.next_frame_len() as u32)
            .map(|j| (j.wrapping_mul(2654435761) >> (13 + i)) as u8)
            .collect();
        body.extend(packer.seal_next(&plain).unwrap());
    }
    let meta = FileMeta {
        name: "r.bin".into(),
        mode: 0o600,
        mtime_secs: 0,
        mtime_nanos: 0,
    };
    let (table, manifest, bytes) = packer.finish(meta, 1000).unwrap();
    let mut full = table;
    full.extend(body);
    assert_eq!(full.len() as u64, manifest.body_len);
    (key, manifest, bytes)
}

/// A DATA datagram of session `session`: `payload` sealed as the cells of the
/// packet `header` names under key [4; 32] (genuine cells, of any content).
fn data_of(m: &Manifest, session: u32, header: &DataHeader, payload: &[u8]) -> Vec<u8> {
    let mut cells = payload.to_vec();
    let whole = cells.len() - cells.len() % m.cell_size as usize;
    let file_key = MasterKey::from_bytes([4; 32]).file_key(header.archive_id);
    let first = header.packet_index as u64 * m.cells_per_packet();
    crate::cell::CellKey::new(&file_key).seal_cells(
        header.archive_id,
        first,
        &mut cells[..whole],
        m.cell_size,
    );
    wire::encode_data(session, header, &cells)
}

/// DATA packet `index` of `m`'s archive with zero payload, sent by session 7.
fn zero_data(m: &Manifest, index: u32) -> Vec<u8> {
    let header = DataHeader {
        archive_id: m.archive_id,
        packet_index: index,
        packet_count: m.packet_count(),
        flags: 0,
    };
    data_of(m, 7, &header, &vec![0u8; payload_len(m, index) as usize])
}

/// A STATUS of `m`'s archive from session 7 (GRTT 5 ms, one receiver).
fn status_of(m: &Manifest, time_us: u64, rate_bps: u64, lacking: u32) -> Vec<u8> {
    let status = Status {
        archive_id: m.archive_id,
        server_time_us: time_us,
        grtt_us: 5000,
        group_size: 1,
        rate_bps,
        lacking,
    };
    wire::encode_status(&keys(m).mac, 7, &status)
}

fn nak_of(datagram: &[u8]) -> Nak {
    match wire::decode(datagram).unwrap().packet {
        Packet::Nak(nak) => nak,
        other => panic!("not a NAK: {other:?}"),
    }
}

/// A 20 kB random file packed in 4 kB frames and 1000-byte packets: (key,
/// manifest, encoded manifest), about 21 packets.
fn random_archive() -> (MasterKey, Manifest, Vec<u8>) {
    let key = MasterKey::from_bytes([4; 32]);
    let (m, manifest_bytes, _) = crate::sim::random_archive(&key, 20_000, 4096, 1000, 5);
    (key, m, manifest_bytes)
}

#[test]
fn a_resumed_receiver_naks_what_the_loop_passed_while_it_was_down() {
    let (key, m, manifest_bytes) = random_archive();
    let count = m.packet_count();
    assert!(count >= 5, "{count} packets");
    let now = Instant::now();
    let manifest = wire::encode_manifest(&keys(&m).mac, 7, &manifest_bytes);
    // First run: joins at 0, holds 0 and 1, is killed.
    let mut first = FileReceiver::new(key.clone(), 7, m.archive_id, 1, NakMode::Immediate);
    first.handle_datagram(now, &mut manifest.to_vec());
    for i in 0..2 {
        first.handle_datagram(now, &mut zero_data(&m, i).to_vec());
    }
    let (map, point) = (first.received().clone(), first.resume_point());
    assert_eq!(ResumePoint::decode(&point.encode()), Some(point.clone()));
    let restart = |point: Option<&ResumePoint>| {
        let mut r = FileReceiver::new(key.clone(), 7, m.archive_id, 2, NakMode::Immediate);
        r.handle_datagram(now, &mut manifest.to_vec());
        assert!(r.restore(map.clone()));
        if let Some(p) = point {
            assert!(r.restore_tracks(p));
        }
        // The loop went on to 4 while it was down.
        r.handle_datagram(now, &mut zero_data(&m, 4).to_vec());
        r.handle_timeout(now);
        r.poll_transmit()
    };
    let nak = nak_of(&restart(Some(&point)).expect("a NAK for what the loop passed"));
    assert_eq!(nak.ranges, vec![(2, 2)]);
    // Without the saved tracks, 2..4 look like packets from before the join.
    assert_eq!(restart(None), None);
    // Another server session's loop tells nothing of this one's.
    let mut other = point.clone();
    other.session_id = 8;
    let mut r = FileReceiver::new(key.clone(), 7, m.archive_id, 3, NakMode::Immediate);
    r.handle_datagram(now, &mut manifest.to_vec());
    r.restore(map.clone());
    assert!(!r.restore_tracks(&other));
    // The jump over the time it was down is not reported as loss.
    let mut r = FileReceiver::new(key, 7, m.archive_id, 4, NakMode::Immediate);
    r.handle_datagram(now, &mut manifest.to_vec());
    r.restore(map);
    r.restore_tracks(&point);
    r.handle_datagram(now, &mut zero_data(&m, 3).to_vec());
    r.handle_datagram(now, &mut zero_data(&m, 4).to_vec());
    assert_eq!(r.track_counters(0), (1, 2));
}

proptest! {
    #[test]
    fn resume_points_decode_what_they_encode_and_never_panic(
        session in any::<u32>(),
        tracks in proptest::collection::vec((0u8..16, any::<u32>(), any::<u32>(), any::<u64>()), 0..16),
        junk in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let point = ResumePoint {
            session_id: session,
            tracks: tracks.into_iter().map(|(track, join, position, advanced)| SavedTrack { track, join, position, advanced }).collect(),
        };
        prop_assert_eq!(ResumePoint::decode(&point.encode()), Some(point));
        let _ = ResumePoint::decode(&junk);
    }
}

#[test]
fn a_mid_stream_joiner_naks_the_frame_table_at_once() {
    a_mid_stream_joiner_naks_the_frame_table_at_once_as(RepairKind::Copies);
}

#[test]
fn a_mid_stream_joiner_repairing_by_parity_still_naks_the_frame_table_as_copies() {
    // Its block would come whole only with the next loop: nothing can be placed
    // before the table, so it is not left to wait for parity.
    a_mid_stream_joiner_naks_the_frame_table_at_once_as(RepairKind::Parity);
}

#[test]
fn an_auto_joiner_with_no_status_yet_naks_the_frame_table_at_once_and_nothing_else() {
    // Before a STATUS says the group, `auto` does not know which kind to ask
    // and holds its NAKs; the table is asked as copies whatever the kind, so it
    // goes at once (waiting let a fast channel fill the memory for payloads
    // held before the table, and drop the rest: a second loop).
    let (key, m, manifest_bytes) = random_archive();
    let now = Instant::now();
    let mut r = FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Immediate)
        .with_repair_kind(RepairKind::Auto);
    let mac = keys(&m).mac;
    r.handle_datagram(now, &mut wire::encode_manifest(&mac, 7, &manifest_bytes));
    let count = m.packet_count();
    assert!(count >= 5, "{count} packets");
    assert_eq!(m.table_packets(), 0..1);
    // Joins at packet 2, then packet 4: packet 3 is a gap the loop passed.
    for k in [2, 4] {
        r.handle_datagram(now, &mut zero_data(&m, k));
    }
    r.handle_timeout(now);
    let nak = nak_of(&r.poll_transmit().expect("a NAK for the table"));
    assert_eq!((nak.ranges, nak.blocks), (vec![(0, 1)], vec![]));
    // With the table held, the gap waits for the STATUS (or AUTO_STATUS_WAIT).
    r.handle_datagram(now, &mut zero_data(&m, 0));
    r.handle_timeout(now + Duration::from_millis(100));
    assert_eq!(r.poll_transmit(), None);
}

fn a_mid_stream_joiner_naks_the_frame_table_at_once_as(kind: RepairKind) {
    let (key, m, manifest_bytes) = setup();
    let now = Instant::now();
    let mut r =
        FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Immediate).with_repair_kind(kind);
    r.handle_datagram(
        now,
        &mut wire::encode_manifest(&keys(&m).mac, 7, &manifest_bytes).to_vec(),
    );
    let count = m.packet_count();
    assert!(count >= 2 && m.table_len() <= 1000, "{count} packets");
    let data = |index: u32| {
        let len = if index + 1 == count {
            (m.body_len - index as u64 * 1000) as usize
        } else {
            1000
        };
        let header = DataHeader {
            archive_id: m.archive_id,
            packet_index: index,
            packet_count: count,
            flags: 0,
        };
        data_of(&m, 7, &header, &vec![0u8; len])
    };
    // Joins at the last packet: nothing the loop passed is missing, but the table
    // (packet 0, before the join) is.
    r.handle_datagram(now, &mut data(count - 1).to_vec());
    r.handle_timeout(now);
    let nak = r.poll_transmit().expect("a NAK for the table");
    let Packet::Nak(nak) = wire::decode(&nak).unwrap().packet else {
        panic!("not a NAK");
    };
    assert_eq!((nak.ranges, nak.blocks), (vec![(0, 1)], vec![]));
}

#[test]
fn every_kind_of_bad_datagram_is_counted_not_stored() {
    let (key, m, manifest_bytes) = setup();
    let now = Instant::now();
    let mut r = FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Suppressed);
    let data = |session, archive_id, index, count, len| {
        data_of(
            &m,
            session,
            &DataHeader {
                archive_id,
                packet_index: index,
                packet_count: count,
                flags: 0,
            },
            &vec![1u8; len],
        )
    };
    let count = m.packet_count();
    assert_eq!(
        r.handle_datagram(now, &mut data(7, 99, 0, count, 1000).to_vec()),
        Outcome::Nothing
    );
    assert_eq!(r.stats().before_manifest, 1);
    assert_eq!(
        r.handle_datagram(
            now,
            &mut wire::encode_manifest(&keys(&m).mac, 7, &manifest_bytes).to_vec()
        ),
        Outcome::ManifestAccepted
    );
    let mut forged = data(7, 99, 0, count, 1000);
    forged[40] ^= 1;
    let mut not_ours = data(7, 99, 0, count, 1000);
    not_ours[0] = b'X';
    for (datagram, what) in [
        (forged, "forged"),
        (not_ours, "magic"),
        (vec![1, 2, 3], "truncated"),
        (data(8, 99, 0, count, 1000), "other session"),
        (data(7, 98, 0, count, 1000), "other archive"),
        (data(7, 99, 0, count + 1, 1000), "wrong count"),
        (data(7, 99, 0, count, 999), "short payload"),
        (data(7, 99, count - 1, count, 2000), "long last payload"),
    ] {
        assert_eq!(
            r.handle_datagram(now, &mut datagram.to_vec()),
            Outcome::Nothing,
            "{what}"
        );
    }
    let s = r.stats().clone();
    assert_eq!(
        (
            s.unauthenticated,
            s.not_ours,
            s.foreign_session,
            s.other_archive,
            s.malformed
        ),
        (1, 1, 1, 1, 4)
    );
    assert_eq!(s.stored, 0);
    let mut first = data(7, 99, 0, count, 1000);
    let outcome = r.handle_datagram(now, &mut first);
    assert!(
        matches!(
            outcome,
            Outcome::Store {
                packet_index: 0,
                body_offset: 0,
                ..
            }
        ),
        "{outcome:?} {:?}",
        r.stats()
    );
    assert_eq!(
        r.handle_datagram(now, &mut data(7, 99, 0, count, 1000).to_vec()),
        Outcome::Nothing
    );
    assert_eq!(r.stats().duplicates, 1);
    // A frame that failed verification makes its packets missing again.
    assert_eq!(r.mark_missing(now, 0..10), 1);
    assert!(!r.received().contains(0));
}

proptest! {
    #[test]
    fn random_datagrams_never_panic(datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1200), 1..20)) {
        let (key, m, manifest_bytes) = setup();
        let now = Instant::now();
        let mut r = FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Suppressed);
        r.handle_datagram(now, &mut wire::encode_manifest(&keys(&m).mac, 7, &manifest_bytes).to_vec());
        for mut d in datagrams {
            let _ = r.handle_datagram(now, &mut d);
        }
        prop_assert_eq!(r.stats().stored, 0);
    }
}

#[test]
fn a_status_advertising_grtt_0_cannot_shrink_the_nak_timers() {
    // T5: GRTT 0 would make back-off and holdoff 0, a NAK storm; it is clamped to
    // the server's floor.
    let (key, m, manifest_bytes) = random_archive();
    let now = Instant::now();
    let mut r = FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Suppressed);
    r.handle_datagram(
        now,
        &mut wire::encode_manifest(&keys(&m).mac, 7, &manifest_bytes).to_vec(),
    );
    let status = Status {
        archive_id: m.archive_id,
        server_time_us: 1,
        grtt_us: 0,
        group_size: 0,
        rate_bps: 1_000_000,
        lacking: 0,
    };
    r.handle_datagram(
        now,
        &mut wire::encode_status(&keys(&m).mac, 7, &status).to_vec(),
    );
    // Packets 0, 1 and 4: 2 and 3 are a gap.
    for i in [0, 1, 4] {
        r.handle_datagram(now, &mut zero_data(&m, i).to_vec());
    }
    let backoff = r.poll_timeout().expect("a back-off");
    r.handle_timeout(backoff);
    assert!(r.poll_transmit().is_some(), "a NAK");
    let holdoff = r.poll_timeout().expect("a holdoff") - backoff;
    let floor = crate::sender::DEFAULT_GRTT_FLOOR.mul_f64(HOLDOFF_GRTTS);
    assert!(holdoff >= floor, "{holdoff:?} < {floor:?}");
}

#[test]
fn the_run_held_after_a_position_goes_round_the_loop() {
    let (key, m, _) = random_archive();
    let mut r = FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Suppressed);
    assert!(r.accept_manifest(m.clone()));
    let count = m.packet_count();
    assert!(count > 12);
    for i in (0..4).chain(8..count) {
        r.received.insert(i);
    }
    // After 9 the rest is held, then 0..4 round the loop: 4 is the first missing.
    assert_eq!(r.held_after(9), count - 10 + 4);
    assert_eq!(r.held_after(4), 0);
    assert_eq!(r.held_after(6), 0);
    assert_eq!(r.held_after(7), count - 8 + 4);
    assert_eq!(r.held_after(count), 0, "out of range");
    for i in 4..8 {
        r.received.insert(i);
    }
    assert_eq!(r.held_after(3), count - 1, "everything held");
}

#[test]
fn a_track_left_over_held_packets_counts_no_loss_when_the_receiver_is_back() {
    let (key, m, _) = random_archive();
    let t0 = Instant::now();
    let mut r = FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Suppressed);
    assert!(r.accept_manifest(m.clone()));
    let count = m.packet_count();
    r.handle_datagram(t0, &mut zero_data(&m, 0).to_vec());
    r.handle_datagram(t0, &mut zero_data(&m, 1).to_vec());
    r.stop_listening(0);
    // Back at 10: positions 2..10 passed unheard, and they are gaps to NAK.
    r.handle_datagram(t0, &mut zero_data(&m, 10).to_vec());
    assert_eq!(r.track_counters(0), (1, 3));
    assert!(r.awaiting_repair());
    assert!(count > 10);
}

#[test]
fn a_gap_others_asked_for_once_is_asked_again_while_others_keep_naking_other_packets() {
    let (key, m, manifest_bytes) = random_archive();
    let (count, mac) = (m.packet_count(), keys(&m).mac);
    let t0 = Instant::now();
    let mut r = FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Suppressed);
    r.handle_datagram(
        t0,
        &mut wire::encode_manifest(&mac, 7, &manifest_bytes).to_vec(),
    );
    let status = Status {
        archive_id: m.archive_id,
        server_time_us: 1,
        grtt_us: 10_000, // holdoff 60 ms
        group_size: 2,
        rate_bps: 1_000_000,
        lacking: 0,
    };
    r.handle_datagram(t0, &mut wire::encode_status(&mac, 7, &status).to_vec());
    let gap = count - 2;
    let theirs = |first: u32| Nak {
        archive_id: m.archive_id,
        receiver_id: 99,
        echo_time_us: 0,
        hold_us: 0,
        ranges: vec![(first, 1)],
        blocks: Vec::new(),
    };
    // Another receiver asks for our gap before we do; its repair never reaches us.
    r.handle_datagram(t0, &mut wire::encode_nak(&mac, 7, &theirs(gap)).to_vec());
    for k in (0..count).filter(|&k| k != gap) {
        r.handle_datagram(t0, &mut zero_data(&m, k).to_vec());
    }
    // Then others NAK another packet every 30 ms, for a second.
    let mut asked_for_gap = None;
    for i in 0..34u32 {
        let t = t0 + Duration::from_millis(30 * i as u64);
        r.handle_datagram(t, &mut wire::encode_nak(&mac, 7, &theirs(1)).to_vec());
        r.handle_timeout(t);
        while let Some(bytes) = r.poll_transmit() {
            if let Ok(wire::Datagram {
                packet: Packet::Nak(nak),
                ..
            }) = wire::decode(&bytes)
                && nak.ranges.contains(&(gap, 1))
            {
                asked_for_gap.get_or_insert(t - t0);
            }
        }
    }
    let after = asked_for_gap.expect("the gap was never asked for again");
    // Asked for by others at 0, it stays asked one to two holdoffs (60-120 ms).
    assert!(after <= Duration::from_millis(300), "{after:?}");
}
