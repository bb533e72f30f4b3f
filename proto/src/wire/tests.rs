//! Round trips of every packet type, random bytes into the decoder, and the tags.

use super::*;

fn mac() -> MacKey {
    MacKey::from_bytes([4; 32])
}

use proptest::prelude::*;
use std::net::{IpAddr, SocketAddr};

fn channel_strategy() -> impl Strategy<Value = ChannelInfo> {
    (any::<IpAddr>(), any::<u16>(), any::<u16>(), any::<u64>()).prop_map(
        |(ip, port, control_port, rate_bps)| ChannelInfo {
            group: SocketAddr::new(ip, port),
            control_port,
            rate_bps,
        },
    )
}

fn entry_strategy() -> impl Strategy<Value = AnnounceEntry> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<[u8; 32]>(),
        any::<u8>(),
        "[a-zA-Z0-9._ -]{0,60}",
        proptest::collection::vec(channel_strategy(), 1..=MAX_CHANNELS),
    )
        .prop_map(|(a, o, b, digest, flags, name, channels)| AnnounceEntry {
            archive_id: a,
            original_size: o,
            body_len: b,
            content_digest: digest,
            flags,
            name,
            channels,
        })
}

proptest! {
    #[test]
    fn data_round_trips(session in any::<u32>(), id in any::<u64>(), count in 1u32.., idx in any::<u32>(),
                        flags in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 1..1500)) {
        let header = DataHeader { archive_id: id, packet_index: idx % count, packet_count: count, flags };
        let bytes = encode_data(session, &header, &payload);
        let d = decode(&bytes).unwrap();
        prop_assert_eq!(d.session_id, session);
        prop_assert_eq!(d.packet, Packet::Data(header, &payload[..]));
    }

    #[test]
    fn parity_round_trips(session in any::<u32>(), id in any::<u64>(), count in 1u32.., block in any::<u32>(),
                          index in any::<u16>(), shard in proptest::collection::vec(any::<u8>(), 1..1500)) {
        let block = block % count.div_ceil(crate::fec::BLOCK_PACKETS);
        let header = ParityHeader { archive_id: id, block, packet_count: count, parity_index: index };
        let bytes = encode_parity(session, &header, &shard);
        prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Parity(header, &shard[..]));
    }

    #[test]
    fn manifest_packet_round_trips(session in any::<u32>(), body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let bytes = encode_manifest(&mac(), session, &body);
        let d = decode(&bytes).unwrap();
        prop_assert_eq!(d.packet, Packet::Manifest(&body[..]));
    }

    #[test]
    fn announce_round_trips(session in any::<u32>(), parts in 1u8.., part in any::<u8>(), unicast_port in any::<u16>(),
                            key_fingerprint in any::<[u8; 16]>(), entries in proptest::collection::vec(entry_strategy(), 0..5)) {
        let a = Announce { part: part % parts, parts, unicast_port, key_fingerprint, entries };
        let bytes = encode_announce(&mac(), session, &a);
        prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Announce(a));
    }

    #[test]
    fn status_round_trips(session in any::<u32>(), a in any::<u64>(), t in any::<u64>(), g in any::<u32>(), n in any::<u32>(), rate in any::<u64>(), lacking in any::<u32>()) {
        let st = Status { archive_id: a, server_time_us: t, grtt_us: g, group_size: n, rate_bps: rate, lacking };
        let bytes = encode_status(&mac(), session, &st);
        prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Status(st));
    }

    #[test]
    fn nak_round_trips(session in any::<u32>(), a in any::<u64>(), id in any::<u32>(), echo in any::<u64>(), hold in any::<u32>(),
                       mut ranges in proptest::collection::vec((0u32..u32::MAX / 2, 1u16..), 1..MAX_NAK_RANGES), split in any::<prop::sample::Index>()) {
        // Some pairs are packet ranges, the rest block requests.
        let blocks = ranges.split_off(split.index(ranges.len() + 1));
        let nak = Nak { archive_id: a, receiver_id: id, echo_time_us: echo, hold_us: hold, ranges, blocks };
        let bytes = encode_nak(&mac(), session, &nak);
        prop_assert!(bytes.len() <= DEFAULT_PACKET_SIZE - IP_UDP_OVERHEAD);
        prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Nak(nak));
    }

    #[test]
    fn report_and_done_round_trip(session in any::<u32>(), a in any::<u64>(), id in any::<u32>(), channel in any::<u8>(),
                                  counts in any::<[u32; 6]>(), echo in any::<u64>()) {
        let report = Report { archive_id: a, receiver_id: id, channel, held: counts[0], packet_count: counts[1],
                              arrived: counts[2], lost: counts[3], interval_ms: counts[4], kernel_drops: counts[5],
                              echo_time_us: echo };
        let bytes = encode_report(&mac(), session, &report);
        prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Report(report));
        let done = Done { archive_id: a, receiver_id: id, elapsed_ms: counts[0] };
        let bytes = encode_done(&mac(), session, &done);
        prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Done(done));
    }

    #[test]
    fn requests_round_trip_and_a_cookie_answer_is_never_longer(session in any::<u32>(), id in any::<u32>(), flags in any::<u8>(),
                                  rate in any::<u64>(), cookie in any::<[u8; COOKIE_LEN]>(), name in "[a-z.]{0,40}") {
        let request = Request { receiver_id: id, flags, max_rate_bps: rate, cookie, name };
        let bytes = encode_request(&mac(), session, &request);
        let answer = encode_cookie(&mac(), session, &cookie);
        prop_assert!(answer.len() <= bytes.len());
        prop_assert_eq!(decode(&answer).unwrap().packet, Packet::Cookie(cookie));
        prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Request(request));
    }

    #[test]
    fn heartbeats_round_trip(session in any::<u32>(), sequence in any::<u64>(), port in any::<u16>(), parts in 1u8..,
                             capacity in any::<u64>(), sending in any::<u64>(), clients in any::<u16>(),
                             max_clients in any::<u16>(), receivers in any::<u32>(), cpu in any::<u16>(),
                             subnets in proptest::collection::vec((any::<IpAddr>(), any::<u8>(), any::<u32>()), 0..=MAX_SUBNETS)) {
        let subnets = subnets.into_iter().map(|(ip, receivers, goodput_kbps)| SubnetThroughput { subnet: subnet_of(ip), receivers, goodput_kbps }).collect();
        let h = Heartbeat { sequence, started_ms: sequence.rotate_left(7), unicast_port: port, listing_parts: parts, capacity_bps: capacity,
                            sending_bps: sending, unicast_clients: clients, unicast_max_clients: max_clients, receivers,
                            cpu_permille: cpu, cookie: [sequence as u8; COOKIE_LEN], subnets };
        let bytes = encode_heartbeat(&mac(), session, &h);
        let d = decode(&bytes).unwrap();
        prop_assert_eq!(d.session_id, session);
        prop_assert_eq!(d.packet, Packet::Heartbeat(h.clone()));
    }

    #[test]
    fn lookups_round_trip_and_no_answer_is_longer(id in any::<u32>(), nonce in any::<u64>(), name in "[a-z.]{0,255}",
                                                  archive_id in any::<u64>(),
                                                  servers in proptest::collection::vec((any::<IpAddr>(), any::<u16>(), any::<u32>(), any::<u16>()), 0..=MAX_DIRECTIONS)) {
        let lookup = Lookup { receiver_id: id, nonce, name: name.clone(), archive_id: nonce.rotate_left(9) };
        let question = encode_lookup(&mac(), &lookup);
        prop_assert_eq!(decode(&question).unwrap().packet, Packet::Lookup(lookup));
        let found = if servers.is_empty() { Found::NotCarried } else { Found::Carried };
        let servers = servers.into_iter().map(|(ip, port, session_id, load_permille)| Direction {
            server: SocketAddr::new(ip, port), session_id, load_permille }).collect();
        let d = Directions { nonce, found, name, archive_id, servers };
        let answer = encode_directions(&mac(), &d);
        prop_assert!(answer.len() <= question.len());
        prop_assert_eq!(decode(&answer).unwrap().packet, Packet::Directions(d.clone()));
        if d.found == Found::Carried {
            let r = Redirect { reason: RedirectReason::Throughput, directions: d };
            let bytes = encode_redirect(&mac(), &r);
            prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Redirect(r));
        }
    }

    #[test]
    fn registers_and_assigns_round_trip(instance in any::<u32>(), sequence in any::<u64>(), free in any::<u64>(),
                                        node in "[a-zA-Z0-9._-]{1,64}",
                                        jobs in proptest::collection::vec((any::<u64>(), 0u8..3, 0u16..=1000, 0u8..4, "[ -~é]{0,80}"), 0..=MAX_JOB_REPORTS),
                                        job_id in any::<u64>(), remaining in any::<u32>(), rate in any::<u64>(),
                                        files in proptest::collection::vec("[a-z.]{1,255}", 1..=MAX_JOB_FILES)) {
        let state = |s| [AgentJobState::Receiving, AgentJobState::Done, AgentJobState::Failed][s as usize];
        let failure = |f| [JobFailure::None, JobFailure::Retrying, JobFailure::HookFailed, JobFailure::NoRoom][f as usize];
        let jobs = jobs.into_iter().map(|(job_id, s, permille, f, detail)| JobReport { job_id, state: state(s), permille, failure: failure(f), detail: job_detail(&detail) }).collect();
        let r = Register { sequence, started_ms: free.rotate_left(3), cookie: [instance as u8; COOKIE_LEN], free_bytes: free, node, jobs };
        let bytes = encode_register(&mac(), instance, &r);
        let d = decode(&bytes).unwrap();
        prop_assert_eq!(d.session_id, instance);
        prop_assert_eq!(d.packet, Packet::Register(r));
        let archives = (0..files.len() as u64).map(|i| job_id.wrapping_add(i)).collect();
        let a = Assign { echo: sequence, job_id, action: AssignAction::Fetch, remaining_ms: remaining, max_rate_bps: rate, files, archives };
        let bytes = encode_assign(&mac(), instance, &a);
        let d = decode(&bytes).unwrap();
        prop_assert_eq!(d.session_id, instance);
        prop_assert_eq!(d.packet, Packet::Assign(a));
        let cancel = Assign { echo: sequence, job_id, action: AssignAction::Cancel, remaining_ms: 0, max_rate_bps: 0, files: Vec::new(), archives: Vec::new() };
        let bytes = encode_assign(&mac(), instance, &cancel);
        prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Assign(cancel));
        let heard = Heard { echo: sequence, cookie: [free as u8; COOKIE_LEN] };
        let bytes = encode_heard(&mac(), instance, &heard);
        let d = decode(&bytes).unwrap();
        prop_assert_eq!((d.session_id, d.packet), (instance, Packet::Heard(heard)));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn random_bodies_never_panic(kind in 0u8..19, body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut bytes = vec![b'L', b'C', VERSION, kind, 0, 0, 0, 1];
        bytes.extend_from_slice(&body);
        let _ = decode(&bytes);
        let _ = mac().verifies(&bytes);
    }

    #[test]
    fn any_flipped_bit_fails_the_control_tag(n in any::<u32>(), bit in any::<usize>()) {
        let done = Done { archive_id: 1, receiver_id: n, elapsed_ms: 3 };
        let mut bytes = encode_done(&mac(), 1, &done);
        prop_assert!(mac().verifies(&bytes));
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(!mac().verifies(&bytes));
    }
}

#[test]
fn control_tags_need_the_right_key_and_data_has_none() {
    // DATA and PARITY end with their payload: their cells carry the tags.
    let header = DataHeader {
        archive_id: 1,
        packet_index: 4,
        packet_count: 9,
        flags: 0,
    };
    let data = encode_data(5, &header, b"abc");
    assert_eq!(data.len(), DATA_HEADER_LEN + 3);
    assert_eq!(
        decode(&data).unwrap().packet,
        Packet::Data(header, &b"abc"[..])
    );
    let status = encode_status(
        &mac(),
        5,
        &Status {
            archive_id: 1,
            server_time_us: 2,
            grtt_us: 3,
            group_size: 4,
            rate_bps: 5,
            lacking: 0,
        },
    );
    assert!(mac().verifies(&status));
    assert!(!MacKey::from_bytes([7; 32]).verifies(&status));
    assert!(!mac().verifies(&status[..TAG_LEN - 1]));
}

#[test]
fn rejects_each_kind_of_bad_datagram() {
    let header = DataHeader {
        archive_id: 1,
        packet_index: 0,
        packet_count: 1,
        flags: 0,
    };
    let good = encode_data(5, &header, b"abc");
    assert_eq!(decode(&good[..5]), Err(DecodeError::Truncated));
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert_eq!(decode(&bad_magic), Err(DecodeError::BadMagic));
    let reseal = |v: Vec<u8>| v; // DATA has no tag to make again
    let mut bad_version = good.clone();
    bad_version[2] = VERSION - 1;
    assert_eq!(decode(&reseal(bad_version)), Err(DecodeError::BadVersion));
    let mut bad_type = good.clone();
    bad_type[3] = 77;
    assert_eq!(decode(&reseal(bad_type)), Err(DecodeError::UnknownType));
    let out_of_range = DataHeader {
        packet_index: 3,
        packet_count: 3,
        ..header
    };
    assert_eq!(
        decode(&encode_data(5, &out_of_range, b"x")),
        Err(DecodeError::Invalid)
    );
    let parity_beyond = ParityHeader {
        archive_id: 1,
        block: 1,
        packet_count: crate::fec::BLOCK_PACKETS,
        parity_index: 0,
    };
    assert_eq!(
        decode(&encode_parity(5, &parity_beyond, b"x")),
        Err(DecodeError::Invalid)
    );
    let empty_nak = Nak {
        archive_id: 1,
        receiver_id: 2,
        echo_time_us: 0,
        hold_us: 0,
        ranges: Vec::new(),
        blocks: Vec::new(),
    };
    assert_eq!(
        decode(&encode_nak(&mac(), 5, &empty_nak)),
        Err(DecodeError::Invalid)
    );
}

#[test]
fn default_cells_are_1424_bytes_and_fit_one_packet_of_either_family() {
    let v4: SocketAddr = "239.1.2.3:7000".parse().unwrap();
    let v6: SocketAddr = "[ff15::1]:7000".parse().unwrap();
    assert_eq!(cell_size_for_packet(DEFAULT_PACKET_SIZE), 1424);
    assert_eq!(cell_size_for_packet(MAX_PACKET_SIZE), 8924);
    for (to, most) in [(v4, 1444), (v6, 1424)] {
        let overhead = ip_udp_overhead(to);
        assert_eq!(payload_size_for_packet(DEFAULT_PACKET_SIZE, overhead), most);
        assert_eq!(cells_per_packet(DEFAULT_PACKET_SIZE, overhead, 1424), 1);
        // Jumbo packets carry six standard cells, or one jumbo cell.
        assert_eq!(cells_per_packet(MAX_PACKET_SIZE, overhead, 1424), 6);
        assert_eq!(cells_per_packet(MAX_PACKET_SIZE, overhead, 8924), 1);
        assert_eq!(cells_per_packet(DEFAULT_PACKET_SIZE, overhead, 8924), 0);
    }
    assert_eq!(
        payload_size_for_packet(DEFAULT_PACKET_SIZE, ip_udp_overhead(v6)),
        1424
    );
}

#[test]
fn subnets_are_an_ipv4_slash_24_or_an_ipv6_slash_64() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(subnet_of(ip("10.1.2.3")), subnet_of(ip("10.1.2.200")));
    assert_ne!(subnet_of(ip("10.1.2.3")), subnet_of(ip("10.1.3.3")));
    assert_eq!(
        subnet_of(ip("fd00:1:2:3::5")),
        subnet_of(ip("fd00:1:2:3:ffff::9"))
    );
    assert_ne!(
        subnet_of(ip("fd00:1:2:3::5")),
        subnet_of(ip("fd00:1:2:4::5"))
    );
    assert_eq!(subnet_of(ip("::ffff:10.1.2.3")), subnet_of(ip("10.1.2.9")));
    assert_eq!(subnet_of(ip("10.0.9.7")).to_string(), "10.0.9.0/24");
    assert_eq!(
        subnet_of(ip("fd77:1:2:3:4::9")).to_string(),
        "fd77:1:2:3::/64"
    );
}

#[test]
fn node_names_are_short_plain_words() {
    assert!(valid_node_name("node-1.rack_2"));
    assert!(valid_node_name(&"n".repeat(MAX_NODE_NAME)));
    assert!(!valid_node_name(""));
    assert!(!valid_node_name(&"n".repeat(MAX_NODE_NAME + 1)));
    assert!(!valid_node_name("a b"));
    assert!(!valid_node_name("a/b"));
    assert!(!valid_node_name("ünï"));
}

#[test]
fn a_fetch_without_files_or_a_cancel_with_files_is_invalid() {
    let empty = Assign {
        archives: Vec::new(),
        echo: 3,
        job_id: 1,
        action: AssignAction::Fetch,
        remaining_ms: 5,
        max_rate_bps: 0,
        files: Vec::new(),
    };
    assert_eq!(
        decode(&encode_assign(&mac(), 1, &empty)),
        Err(DecodeError::Invalid)
    );
    let cancel = Assign {
        action: AssignAction::Cancel,
        files: vec!["x".into()],
        archives: vec![0],
        ..empty
    };
    assert_eq!(
        decode(&encode_assign(&mac(), 1, &cancel)),
        Err(DecodeError::Invalid)
    );
}
