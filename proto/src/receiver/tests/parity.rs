//! Parity repair at the receiver: block requests, suppression, rebuilds
//! checked by the cells' tags (a wrong shard costs a rebuild), and `auto`.

use super::*;

#[test]
fn a_parity_receiver_asks_each_block_for_what_it_lacks_and_rebuilds_it() {
    let key = MasterKey::from_bytes([4; 32]);
    let (m, manifest_bytes, body) = crate::sim::random_archive(&key, 20_000, 4096, 1000, 6);
    let blocks = crate::fec::Blocks::of_manifest(&m);
    let (count, keys) = (m.packet_count(), keys(&m));
    assert_eq!(blocks.count(), 1, "{count} packets, one block");
    let payload = |k: u32| &body[k as usize * 1000..k as usize * 1000 + blocks.payload_len(k)];
    let now = Instant::now();
    let lost = [3, 7, 12];
    // A parity receiver that has every packet but `lost`.
    let receiver = || {
        let mut r = FileReceiver::new(key.clone(), 7, m.archive_id, 1, NakMode::Suppressed)
            .with_repair_kind(RepairKind::Parity);
        r.handle_datagram(
            now,
            &mut wire::encode_manifest(&keys.mac, 7, &manifest_bytes).to_vec(),
        );
        for k in (0..count).filter(|k| !lost.contains(k)) {
            let header = DataHeader {
                archive_id: m.archive_id,
                packet_index: k,
                packet_count: count,
                flags: 0,
            };
            r.handle_datagram(now, &mut wire::encode_data(7, &header, payload(k)));
        }
        r
    };
    let mut r = receiver();
    // Another receiver asked for 2 parity packets: not enough, so ours goes out.
    let theirs = Nak {
        archive_id: m.archive_id,
        receiver_id: 99,
        echo_time_us: 0,
        hold_us: 0,
        ranges: Vec::new(),
        blocks: vec![(0, 2)],
    };
    r.handle_datagram(now, &mut wire::encode_nak(&keys.mac, 7, &theirs).to_vec());
    r.handle_timeout(now + Duration::from_secs(1));
    let nak = nak_of(&r.poll_transmit().expect("a NAK"));
    assert_eq!((nak.ranges, nak.blocks), (vec![], vec![(0, 3)]));
    // Had another asked for 3 or more, ours would have been held.
    let mut held_back = receiver();
    let enough = Nak {
        blocks: vec![(0, 3)],
        ..theirs
    };
    held_back.handle_datagram(now, &mut wire::encode_nak(&keys.mac, 7, &enough).to_vec());
    held_back.handle_timeout(now + Duration::from_millis(20));
    assert_eq!(held_back.poll_transmit(), None);
    assert_eq!(held_back.stats().naks_suppressed, 1);

    // Parity carries no tag (spec §2.11): any shard is held, and what it
    // rebuilds is checked by the cells' tags.
    let sources: Vec<&[u8]> = (0..count).map(payload).collect();
    let shards = blocks.encode(0, &sources).unwrap();
    let parity = |j: u16, shard: &[u8]| {
        let header = wire::ParityHeader {
            archive_id: m.archive_id,
            block: 0,
            packet_count: count,
            parity_index: j,
        };
        wire::encode_parity(7, &header, shard)
    };
    // The body as a receiver stores it: every cell opened.
    let mut opened = body.clone();
    for k in 0..count {
        let at = k as usize * 1000..k as usize * 1000 + blocks.payload_len(k);
        assert!(r.open_rebuilt(k, &mut opened[at]));
    }
    let lose = |mut body: Vec<u8>| {
        for &k in &lost {
            body[k as usize * 1000..k as usize * 1000 + 1000].fill(0);
        }
        body
    };
    let mut forged = r_with_shards(
        &receiver,
        &parity,
        &[(0, vec![7u8; shards[0].len()])],
        &shards,
    );
    for j in [5, 9] {
        r.handle_datagram(now, &mut parity(j, &shards[j as usize]));
    }
    r.handle_datagram(now, &mut parity(5, &shards[5]));
    assert_eq!((r.stats().parity, r.stats().parity_unused), (2, 1));
    assert_eq!(r.poll_rebuild(), None);
    // The holdoff ends, a new back-off starts, then the NAK goes.
    r.handle_timeout(now + Duration::from_secs(2));
    r.handle_timeout(now + Duration::from_secs(3));
    let again = nak_of(&r.poll_transmit().expect("a NAK for the last one"));
    assert_eq!(again.blocks, vec![(0, 1)]);
    r.handle_datagram(now, &mut parity(2, &shards[2]));
    let rebuild = r.poll_rebuild().expect("the block rebuilds");
    assert_eq!((rebuild.block, rebuild.missing.clone()), (0, lost.to_vec()));
    assert!(r.is_complete());
    assert_eq!(r.stats().rebuilt, 3);
    let mut mine = lose(opened.clone());
    r.rebuild_in_body(&mut mine, &rebuild).unwrap();
    assert_eq!(mine, opened);
    // One forged shard among the three: the rebuild fails the cells' tags and
    // changes nothing stored; the block is then repaired by copies.
    let rebuild = forged.poll_rebuild().expect("the block rebuilds");
    let mut mine = lose(opened.clone());
    let result = forged.rebuild_in_body(&mut mine, &rebuild);
    assert_eq!(result, Err(crate::fec::FecError::WrongShard));
    assert_eq!(mine, lose(opened.clone()));
    forged.rebuild_failed(now, &rebuild.missing, true);
    forged.handle_timeout(now + Duration::from_secs(5));
    forged.handle_timeout(now + Duration::from_secs(6));
    let copies = nak_of(&forged.poll_transmit().expect("a NAK for copies"));
    assert_eq!((copies.ranges.len(), copies.blocks), (3, vec![]));
}

/// A receiver from `receiver` given the parity shards `first` (index, bytes)
/// then genuine ones from `shards` until the block rebuilds.
fn r_with_shards(
    receiver: &dyn Fn() -> FileReceiver,
    parity: &dyn Fn(u16, &[u8]) -> Vec<u8>,
    first: &[(u16, Vec<u8>)],
    shards: &[Vec<u8>],
) -> FileReceiver {
    let mut r = receiver();
    let now = Instant::now();
    for (j, shard) in first {
        r.handle_datagram(now, &mut parity(*j, shard));
    }
    for j in [5u16, 9] {
        r.handle_datagram(now, &mut parity(j, &shards[j as usize]));
    }
    r
}

#[test]
fn auto_asks_copies_while_the_server_counts_few_receivers_and_parity_for_more() {
    let (key, m, manifest_bytes) = random_archive();
    let count = m.packet_count();
    let now = Instant::now();
    // (receivers the STATUS counts, a parity packet came, what the NAK asks).
    let copies = (vec![(count - 3, 2)], vec![]);
    for (group, parity_came, asked) in [
        // Before any STATUS the group is unknown: the NAK waits for one, and
        // asks copies once it has waited `AUTO_STATUS_WAIT` in vain.
        (None, false, copies.clone()),
        (None, true, (vec![], vec![(0, 1)])),
        (Some(1), false, copies.clone()),
        (Some(4), false, copies.clone()),
        (Some(5), false, (vec![], vec![(0, 2)])),
        // Parity is on the channel (a loop's --fec-overhead): asked for, less
        // the one held.
        (Some(1), true, (vec![], vec![(0, 1)])),
    ] {
        let mut r = FileReceiver::new(key.clone(), 7, m.archive_id, 1, NakMode::Immediate)
            .with_repair_kind(RepairKind::Auto);
        let mac = keys(&m).mac;
        r.handle_datagram(
            now,
            &mut wire::encode_manifest(&mac, 7, &manifest_bytes).to_vec(),
        );
        if let Some(group_size) = group {
            let status = Status {
                archive_id: m.archive_id,
                server_time_us: 1,
                grtt_us: 5000,
                group_size,
                rate_bps: 1_000_000,
                lacking: 0,
            };
            r.handle_datagram(now, &mut wire::encode_status(&mac, 7, &status).to_vec());
        }
        if parity_came {
            let header = wire::ParityHeader {
                archive_id: m.archive_id,
                block: 0,
                packet_count: count,
                parity_index: 0,
            };
            let shard = vec![0u8; crate::fec::Blocks::of_manifest(&m).shard_len()];
            r.handle_datagram(now, &mut wire::encode_parity(7, &header, &shard));
            assert_eq!(r.stats().parity, 1);
        }
        // Every packet but two before the last: past the frame table, a gap.
        for k in (0..count).filter(|&k| k + 3 != count && k + 2 != count) {
            r.handle_datagram(now, &mut zero_data(&m, k).to_vec());
        }
        r.handle_timeout(now);
        let mut sent = r.poll_transmit();
        // With no STATUS yet the NAK waits, and meanwhile frames' bytes are
        // kept: the kind to be asked is not known.
        let waits = group.is_none() && !parity_came;
        assert_eq!(sent.is_none(), waits, "group {group:?}");
        assert!(!waits || r.may_rebuild());
        let wait_ends = now + crate::receiver::parity::AUTO_STATUS_WAIT;
        while sent.is_none() {
            let at = r.poll_timeout().expect("a NAK timer");
            assert!(at < wait_ends + Duration::from_secs(1), "no NAK by {at:?}");
            r.handle_timeout(at);
            sent = r.poll_transmit();
            assert!(sent.is_none() || at >= wait_ends, "a NAK at {at:?}");
        }
        let nak = nak_of(&sent.unwrap());
        // Frames' bytes are kept for rebuilds only where a rebuild may come.
        assert_eq!(r.may_rebuild(), !nak.blocks.is_empty(), "group {group:?}");
        assert_eq!((nak.ranges, nak.blocks), asked, "group {group:?}");
    }
}
