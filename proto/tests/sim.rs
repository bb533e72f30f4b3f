//! Deterministic simulation: one carousel, several receivers joining at different
//! times over lossy links, a virtual clock and a seeded RNG.

use loopcast_proto::archive::Unpacker;
use loopcast_proto::sim::pack;
use loopcast_proto::wire::SessionKeys;
use loopcast_proto::{
    Carousel, FileReceiver, MasterKey, NakMode, Outcome, PayloadSource, RepairConfig, Transmit,
    wire,
};

/// These tests exercise the plain carousel: no NAKs, no repairs.
const NO_REPAIR: RepairConfig = RepairConfig {
    rate_bps: 100_000_000,
    share: 0.0,
    grtt_floor: Duration::from_millis(5),
    group_size: 1,
    fec_overhead: 0.0,
};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use std::io;
use std::time::{Duration, Instant};

struct Body(Vec<u8>);

impl PayloadSource for Body {
    fn read_payload(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = offset as usize;
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }
}

fn unpack(key: &MasterKey, m: &loopcast_proto::Manifest, body: &[u8]) -> Vec<u8> {
    let mut u = Unpacker::new(key, m, &body[..m.table_len() as usize]).unwrap();
    let mut out = Vec::new();
    for (i, r) in u.frame_ranges().to_vec().into_iter().enumerate() {
        out.extend(
            u.open(i as u32, &body[r.start as usize..r.end as usize])
                .unwrap(),
        );
    }
    u.finish().unwrap();
    out
}

struct SimReceiver {
    fsm: FileReceiver,
    body: Vec<u8>,
    join_after: u64,
    loss: f64,
    done_at: Option<u64>,
}

#[test]
fn receivers_joining_mid_stream_over_lossy_links_all_complete() {
    let mut rng = StdRng::seed_from_u64(7);
    let key = MasterKey::from_bytes([9; 32]);
    let mut original = vec![0u8; 4_000_000];
    rng.fill_bytes(&mut original[..2_000_000]); // half random, half compressible
    let (manifest, manifest_bytes, body) = pack(&key, &original, 256 * 1024, 1440, &mut rng);
    let packets = manifest.packet_count() as u64;
    let mut carousel = Carousel::new(
        SessionKeys::new(
            &key.file_key(manifest.archive_id),
            77,
            manifest.payload_size,
        ),
        77,
        &manifest,
        &manifest_bytes,
        Instant::now(),
        NO_REPAIR,
    );
    let mut source = Body(body);
    let mut receivers: Vec<SimReceiver> = [
        (0, 0.0),
        (0, 0.05),
        (packets / 3, 0.1),
        (packets * 3 / 2, 0.2),
    ]
    .into_iter()
    .map(|(join_after, loss)| SimReceiver {
        fsm: FileReceiver::new(key.clone(), 77, manifest.archive_id, 1, NakMode::Off),
        body: vec![0; manifest.body_len as usize],
        join_after,
        loss,
        done_at: None,
    })
    .collect();
    let start = Instant::now();
    let mut buf = vec![0u8; carousel.max_datagram_len()];
    let limit = packets * 20;
    for sent in 0..limit {
        let now = start + Duration::from_millis(sent); // 1 packet per ms: a manifest every 500 packets
        let t = carousel.poll_transmit(now, &mut buf, &mut source).unwrap();
        let datagram = &buf[..t.len()];
        for r in receivers
            .iter_mut()
            .filter(|r| sent >= r.join_after && r.done_at.is_none())
        {
            if rng.random_bool(r.loss) {
                continue;
            }
            match r.fsm.handle_datagram(now, datagram) {
                Outcome::Store {
                    body_offset,
                    payload,
                    ..
                } => r.body[body_offset as usize..body_offset as usize + payload.len()]
                    .copy_from_slice(payload),
                Outcome::WrongKey { .. } => panic!("wrong key"),
                Outcome::ManifestAccepted | Outcome::Nothing => {}
            }
            if r.fsm.is_complete() {
                r.done_at = Some(sent - r.join_after);
            }
        }
        if receivers.iter().all(|r| r.done_at.is_some()) {
            break;
        }
    }
    for (i, r) in receivers.iter().enumerate() {
        let took = r.done_at.unwrap_or_else(|| {
            panic!(
                "receiver {i} did not complete: {:?} {}/{}",
                r.fsm.stats(),
                r.fsm.received().count(),
                packets
            )
        });
        assert_eq!(unpack(&key, &manifest, &r.body), original, "receiver {i}");
        // A joiner first waits up to 500 packets for a manifest. Without repair, the last
        // of N packets lost with probability p comes after about ln(N)/ln(1/p) extra
        // loops; allow ln(10·N) for the tail.
        let loops = took as f64 / packets as f64;
        let manifest_wait = 520.0 / packets as f64;
        let tail = if r.loss == 0.0 {
            0.0
        } else {
            (10.0 * packets as f64).ln() / (1.0 / r.loss).ln()
        };
        let bound = 1.0 + manifest_wait + tail;
        assert!(
            loops <= bound,
            "receiver {i} needed {loops:.2} loops, bound {bound:.2}"
        );
    }
    // A lossless receiver from the start needs one loop plus the interleaved MANIFEST
    // (every 256 packets) and STATUS (every 100 ms = 100 sends here): under 2.5%.
    assert!(receivers[0].done_at.unwrap() <= packets + packets / 40);
}

#[test]
fn wrong_key_receiver_is_told_and_stores_nothing() {
    let mut rng = StdRng::seed_from_u64(1);
    let key = MasterKey::from_bytes([9; 32]);
    let (manifest, manifest_bytes, body) = pack(&key, b"hello world", 1024, 1440, &mut rng);
    let mut carousel = Carousel::new(
        SessionKeys::new(&key.file_key(manifest.archive_id), 1, manifest.payload_size),
        1,
        &manifest,
        &manifest_bytes,
        Instant::now(),
        NO_REPAIR,
    );
    let mut source = Body(body);
    let mut r = FileReceiver::new(
        MasterKey::from_bytes([8; 32]),
        1,
        manifest.archive_id,
        1,
        NakMode::Off,
    );
    let mut buf = vec![0u8; carousel.max_datagram_len()];
    let now = Instant::now();
    let mut wrong_key = false;
    for _ in 0..10 {
        let t = carousel.poll_transmit(now, &mut buf, &mut source).unwrap();
        match r.handle_datagram(now, &buf[..t.len()]) {
            Outcome::WrongKey { theirs } => wrong_key = theirs == key.fingerprint(),
            Outcome::Store { .. } => panic!("stored data under the wrong key"),
            _ => {}
        }
    }
    assert!(wrong_key);
    assert_eq!(r.stats().stored, 0);
}

#[test]
fn a_payload_corrupted_by_a_key_holder_fails_its_frame_and_is_received_again() {
    let mut rng = StdRng::seed_from_u64(11);
    let key = MasterKey::from_bytes([9; 32]);
    let mut original = vec![0u8; 1_000_000];
    rng.fill_bytes(&mut original);
    let (manifest, manifest_bytes, body) = pack(&key, &original, 64 * 1024, 1440, &mut rng);
    let packets = manifest.packet_count() as u64;
    let mut carousel = Carousel::new(
        SessionKeys::new(&key.file_key(manifest.archive_id), 3, manifest.payload_size),
        3,
        &manifest,
        &manifest_bytes,
        Instant::now(),
        NO_REPAIR,
    );
    let mut source = Body(body);
    let mut fsm = FileReceiver::new(key.clone(), 3, manifest.archive_id, 1, NakMode::Off);
    let mut stored = vec![0u8; manifest.body_len as usize];
    let mut buf = vec![0u8; carousel.max_datagram_len()];
    let corrupt_index = packets as u32 / 2;
    let (mut corrupted, mut repairs) = (false, 0);
    let start = Instant::now();
    for sent in 0..packets * 4 {
        let now = start + Duration::from_micros(sent);
        let t = carousel.poll_transmit(now, &mut buf, &mut source).unwrap();
        let len = t.len();
        if t == (Transmit::Data {
            index: corrupt_index,
            len,
        }) && !corrupted
        {
            // A key holder damages the payload and tags it anew: only the frame's
            // GCM tag can tell.
            buf[wire::DATA_HEADER_LEN + 100] ^= 0x40;
            let data_mac = key
                .file_key(manifest.archive_id)
                .data_mac(3, manifest.payload_size);
            data_mac.seal_in_place(&mut buf, len - wire::TRAILER_LEN);
            corrupted = true;
        }
        if let Outcome::Store {
            body_offset,
            payload,
            ..
        } = fsm.handle_datagram(now, &buf[..len])
        {
            stored[body_offset as usize..body_offset as usize + payload.len()]
                .copy_from_slice(payload);
        }
        if !fsm.is_complete() {
            continue;
        }
        let mut u =
            Unpacker::new(&key, &manifest, &stored[..manifest.table_len() as usize]).unwrap();
        let mut out = Vec::new();
        let mut failed = Vec::new();
        for (i, r) in u.frame_ranges().to_vec().into_iter().enumerate() {
            match u.open(i as u32, &stored[r.start as usize..r.end as usize]) {
                Ok(plain) => out.extend(plain),
                Err(_) => failed.push(r),
            }
        }
        if failed.is_empty() {
            u.finish().unwrap();
            assert_eq!(out, original);
            assert_eq!(repairs, 1, "the damaged frame was not caught");
            assert!(
                sent < packets * 2 + packets / 10,
                "took {sent} sends for {packets} packets"
            );
            return;
        }
        assert_eq!(failed.len(), 1, "only the damaged frame fails");
        let missing: u32 = failed.into_iter().map(|r| fsm.mark_missing(now, r)).sum();
        assert!(
            (1..=64 * 1024 / 1440 + 2).contains(&missing),
            "{missing} packets marked missing"
        );
        repairs += 1;
    }
    panic!("never completed");
}
