//! Carousel repair tests (a relay's carousel: `tests/relay.rs`).

use super::*;
use crate::wire::{Nak, Packet};

/// The address the test NAKs come from.
const RECEIVER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

struct Zeros;

impl PayloadSource for Zeros {
    fn read_payload(&mut self, _: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
}

fn carousel(now: Instant) -> Carousel {
    carousel_at(now, 100_000_000, 1000)
}

/// A carousel of a `packets`-packet archive at `rate_bps`, repair share 25%.
fn carousel_at(now: Instant, rate_bps: u64, packets: u64) -> Carousel {
    let key = crate::MasterKey::from_bytes([1; 32]);
    let mut packer = crate::archive::Packer::new(&key, 5, 0, 1 << 20, 1, 1440).unwrap();
    packer.seal_next(&[]).unwrap();
    let meta = crate::archive::FileMeta {
        name: "x".into(),
        mode: 0,
        mtime_secs: 0,
        mtime_nanos: 0,
    };
    let (_, mut manifest, _) = packer.finish(meta, 1440).unwrap();
    manifest.body_len = 1440 * packets; // a body of zeros is enough here
    let bytes = manifest.encode(&key.file_key(5));
    Carousel::new(
        wire::SessionKeys::new(&key.file_key(5), 9),
        9,
        &manifest,
        &bytes,
        now,
        RepairConfig {
            rate_bps,
            share: 0.25,
            ..RepairConfig::default()
        },
    )
}

/// A NAK of `archive_id` in `session`, tagged with that archive's session key.
fn nak(session: u32, archive_id: u64, ranges: Vec<(u32, u16)>) -> Vec<u8> {
    let key = crate::MasterKey::from_bytes([1; 32]);
    wire::encode_nak(
        &key.file_key(archive_id).session_mac_key(session),
        session,
        &Nak {
            archive_id,
            receiver_id: 1,
            echo_time_us: 0,
            hold_us: 0,
            ranges,
            blocks: Vec::new(),
        },
    )
}

#[test]
fn bad_naks_are_counted_and_dropped() {
    let now = Instant::now();
    let mut c = carousel(now);
    c.handle_datagram(now, RECEIVER, b"garbage");
    c.handle_datagram(now, RECEIVER, &nak(8, 5, vec![(600, 1)])); // other session
    c.handle_datagram(now, RECEIVER, &nak(9, 6, vec![(600, 1)])); // other archive
    c.handle_datagram(now, RECEIVER, &nak(9, 5, vec![(999, 2)])); // beyond the file
    let mut forged = nak(9, 5, vec![(600, 1)]);
    forged[20] ^= 1;
    c.handle_datagram(now, RECEIVER, &forged); // tag fails
    assert_eq!(c.stats().naks_dropped, 5);
    assert_eq!(c.pending_repairs(), 0);
    c.handle_datagram(now, RECEIVER, &nak(9, 5, vec![(600, 3)]));
    c.handle_datagram(now, RECEIVER, &nak(9, 5, vec![(600, 3)])); // already queued: costs nothing
    assert_eq!((c.stats().naks, c.pending_repairs()), (2, 3));
}

#[test]
fn repairs_are_flagged_capped_and_left_to_the_loop_when_it_comes_first() {
    let now = Instant::now();
    let mut c = carousel(now);
    let mut buf = vec![0u8; c.max_datagram_len()];
    // Packets 1..4 come round in the loop at once: not worth a repair. 900 is far.
    c.handle_datagram(now, RECEIVER, &nak(9, 5, vec![(1, 3), (900, 1)]));
    assert_eq!((c.pending_repairs(), c.stats().repairs_skipped), (1, 3));
    let mut sent = Vec::new();
    for _ in 0..20 {
        let t = c.poll_transmit(now, &mut buf, &mut Zeros).unwrap();
        if let Ok(wire::Datagram {
            packet: Packet::Data(h, _),
            ..
        }) = wire::decode(&buf[..t.len()])
        {
            sent.push((h.packet_index, h.flags & wire::FLAG_REPAIR != 0));
        }
    }
    // The repair waits for credit (3 loop packets at a 25% share), then goes out flagged.
    assert_eq!(
        &sent[..4],
        &[(0, false), (1, false), (2, false), (900, true)]
    );
    assert_eq!(c.stats().repair_packets, 1);
}

/// Sends datagrams until a STATUS went out; returns its server time.
fn next_status_time(c: &mut Carousel, now: Instant, buf: &mut [u8]) -> u64 {
    loop {
        let t = c.poll_transmit(now, buf, &mut Zeros).unwrap();
        if let Transmit::Status(len) = t
            && let Ok(wire::Datagram {
                packet: Packet::Status(s),
                ..
            }) = wire::decode(&buf[..len])
        {
            return s.server_time_us;
        }
    }
}

fn echo_nak(echo_time_us: u64, hold_us: u32) -> Nak {
    Nak {
        archive_id: 5,
        receiver_id: 1,
        echo_time_us,
        hold_us,
        ranges: vec![(500, 1)],
        blocks: Vec::new(),
    }
}

#[test]
fn one_source_cannot_take_the_repair_share_from_the_others() {
    // T3, T13 from a key holder: at 10 Mbit/s a 25% share is about 213 repairs a
    // second. One host NAKing the whole 100,000-packet archive queues four seconds
    // of it (852), not the archive, and then nothing more until its part refills.
    let now = Instant::now();
    let mut c = carousel_at(now, 10_000_000, 100_000);
    let flooder = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 66));
    let whole = nak(9, 5, vec![(0, 60_000), (60_000, 40_000)]);
    c.handle_datagram(now, flooder, &whole);
    let first = c.pending_repairs();
    assert!((840..=855).contains(&first), "{first} queued");
    c.handle_datagram(now, flooder, &whole);
    assert_eq!(c.pending_repairs(), first);
    // An honest receiver elsewhere has its NAK taken (its packets come soonest by
    // the loop now, so they are left to it) and becomes a second active source.
    let asked = c.handle_datagram(now, RECEIVER, &nak(9, 5, vec![(900, 10)]));
    assert_eq!(asked, 10);
    // A second on, with two sources active, the flooder gets half the share.
    let before = c.pending_repairs();
    c.handle_datagram(now + Duration::from_secs(1), flooder, &whole);
    let more = c.pending_repairs() - before;
    assert!((95..=110).contains(&more), "{more} more queued");
}

#[test]
fn only_echoes_of_status_times_sent_move_the_grtt() {
    let start = Instant::now();
    let mut c = carousel(start);
    let mut buf = vec![0u8; c.max_datagram_len()];
    let at = start + Duration::from_millis(200);
    let sent = next_status_time(&mut c, at, &mut buf);
    let later = at + Duration::from_millis(900);
    // T4: an echo of a time never sent would give a 900 ms sample: ignored.
    c.handle_nak(later, RECEIVER, &echo_nak(12_345, 0));
    assert_eq!(c.grtt(), DEFAULT_GRTT_FLOOR);
    c.handle_nak(later, RECEIVER, &echo_nak(sent + 7, 0));
    assert_eq!(c.grtt(), DEFAULT_GRTT_FLOOR);
    // The echo of a STATUS sent, held 880 ms: a 20 ms round trip.
    c.handle_nak(later, RECEIVER, &echo_nak(sent, 880_000));
    let grtt = c.grtt().as_secs_f64() * 1e3;
    assert!((grtt - 20.0).abs() < 1.0, "{grtt} ms");
    // The same NAK replayed 1.5 s later (still within the echo window) would give a
    // 1.5 s sample: each receiver's echo counts once.
    let replayed = later + Duration::from_millis(1500);
    c.handle_nak(replayed, RECEIVER, &echo_nak(sent, 880_000));
    assert_eq!(c.grtt().as_secs_f64() * 1e3, grtt);
}

proptest::proptest! {
    #[test]
    fn range_wise_nak_handling_matches_packet_by_packet(
        position in 0u32..1000,
        ranges in proptest::collection::vec((0u32..1000, 1u16..400), 1..20),
    ) {
        let now = Instant::now();
        let mut c = carousel(now).with_phase(position);
        let ranges: Vec<(u32, u16)> = ranges
            .into_iter()
            .map(|(first, count)| (first, count.min((1000 - first) as u16).max(1)))
            .filter(|&(first, count)| first + count as u32 <= 1000)
            .collect();
        proptest::prop_assume!(!ranges.is_empty());
        // The model: the rule of §6.3, one packet at a time.
        let packet_time = c.max_datagram_len() as f64 * 8.0 / 100e6;
        let soon = ((1.0 / 0.25 * packet_time + c.grtt().as_secs_f64()) / packet_time) as u64;
        let mut queued = std::collections::BTreeSet::new();
        let mut skipped = 0u64;
        for &(first, count) in &ranges {
            for i in first..first + count as u32 {
                if (i as u64 + 1000 - position as u64) % 1000 <= soon {
                    skipped += 1;
                } else {
                    queued.insert(i);
                }
            }
        }
        let nak = Nak { archive_id: 5, receiver_id: 1, echo_time_us: 0, hold_us: 0, ranges, blocks: Vec::new() };
        c.handle_nak(now, RECEIVER, &nak);
        proptest::prop_assert_eq!(c.pending_repairs() as usize, queued.len());
        proptest::prop_assert_eq!(c.stats().repairs_skipped, skipped);
    }
}

/// A NAK asking parity: `blocks` as (block, count).
fn parity_nak(receiver_id: u32, blocks: Vec<(u32, u16)>) -> Vec<u8> {
    let key = crate::MasterKey::from_bytes([1; 32]);
    wire::encode_nak(
        &key.file_key(5).session_mac_key(9),
        9,
        &Nak {
            archive_id: 5,
            receiver_id,
            echo_time_us: 0,
            hold_us: 0,
            ranges: Vec::new(),
            blocks,
        },
    )
}

#[test]
fn parity_goes_out_as_the_largest_count_asked_with_fresh_indices_each_time() {
    let now = Instant::now();
    // Three blocks, the loop in block 2: blocks 0 and 1 come round late.
    let b = crate::fec::BLOCK_PACKETS;
    let mut c = carousel_at(now, 100_000_000, 3 * b as u64).with_phase(2 * b + 100);
    let mut buf = vec![0u8; c.max_datagram_len()];
    c.handle_datagram(now, RECEIVER, &parity_nak(1, vec![(0, 3)]));
    c.handle_datagram(now, RECEIVER, &parity_nak(2, vec![(0, 5), (1, 1)]));
    c.handle_datagram(now, RECEIVER, &parity_nak(3, vec![(0, 2)])); // fewer: nothing more
    assert_eq!(c.pending_repairs(), 6);
    // A short last block that the loop is about to send whole is left to it.
    let mut short = carousel_at(now, 100_000_000, 2 * b as u64 + 10).with_phase(2 * b);
    short.handle_datagram(now, RECEIVER, &parity_nak(4, vec![(2, 9)]));
    assert_eq!(
        (short.pending_repairs(), short.stats().repairs_skipped),
        (0, 9)
    );
    let mut parity = Vec::new();
    for _ in 0..60 {
        if let Transmit::Parity { block, index, len } =
            c.poll_transmit(now, &mut buf, &mut Zeros).unwrap()
        {
            assert_eq!(len, c.max_datagram_len());
            let Ok(wire::Datagram {
                packet: Packet::Parity(h, shard),
                ..
            }) = wire::decode(&buf[..len])
            else {
                panic!("not a PARITY datagram");
            };
            assert_eq!((h.block, h.parity_index, shard.len()), (block, index, 1440));
            parity.push((block, index));
        }
    }
    // The block whose turn is furthest first; each index once.
    assert_eq!(parity, [(1, 0), (0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]);
    assert_eq!(c.stats().parity_packets, 6);
    // A later round of block 0 gets indices not sent before.
    c.handle_datagram(now, RECEIVER, &parity_nak(1, vec![(0, 2)]));
    let mut next = Vec::new();
    while next.len() < 2 {
        if let Transmit::Parity { block, index, .. } =
            c.poll_transmit(now, &mut buf, &mut Zeros).unwrap()
        {
            next.push((block, index));
        }
    }
    assert_eq!(next, [(0, 5), (0, 6)]);
}

mod relay;
