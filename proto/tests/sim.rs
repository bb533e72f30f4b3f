//! Deterministic simulation: one carousel, several receivers joining at different
//! times over lossy links, a virtual clock and a seeded RNG.

use loopcast_proto::archive::{Cells, Unpacker};
use loopcast_proto::cell::CellKey;
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

/// The original from a body as receivers store it (cells opened as they came),
/// or why not.
fn unpack(key: &MasterKey, m: &loopcast_proto::Manifest, body: &[u8]) -> Result<Vec<u8>, String> {
    let mut table = body[..m.table_len() as usize].to_vec();
    let mut u = Unpacker::new(key, m, &mut table, Cells::Opened).map_err(|e| format!("{e:?}"))?;
    let mut out = Vec::new();
    let mut scratch = vec![0u8; m.frame_size as usize];
    for (i, r) in u.frame_ranges().to_vec().into_iter().enumerate() {
        let mut cells = body[r.start as usize..r.end as usize].to_vec();
        let plain = (u.open_in_place(i as u32, &mut cells, &mut scratch, Cells::Opened))
            .map_err(|e| format!("frame {i}: {e}"))?;
        out.extend_from_slice(plain);
    }
    u.finish().map_err(|e| format!("{e:?}"))?;
    Ok(out)
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
        SessionKeys::new(&key.file_key(manifest.archive_id), 77),
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
            match r.fsm.handle_datagram(now, &mut datagram.to_vec()) {
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
        assert_eq!(
            unpack(&key, &manifest, &r.body).as_ref(),
            Ok(&original),
            "receiver {i}"
        );
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
        SessionKeys::new(&key.file_key(manifest.archive_id), 1),
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
        match r.handle_datagram(now, &mut buf[..t.len()]) {
            Outcome::WrongKey { theirs } => wrong_key = theirs == key.fingerprint(),
            Outcome::Store { .. } => panic!("stored data under the wrong key"),
            _ => {}
        }
    }
    assert!(wrong_key);
    assert_eq!(r.stats().stored, 0);
}

/// Runs one lossless receiver through a loop in which packet N/2 has one byte
/// changed, its cells sealed again under `reseal` (a key holder's forgery) or
/// not (a stranger's): returns (forged packets dropped, what unpacking gave).
fn corrupted_payload(reseal: Option<&MasterKey>) -> (u64, Result<Vec<u8>, String>, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(11);
    let key = MasterKey::from_bytes([9; 32]);
    let mut original = vec![0u8; 1_000_000];
    rng.fill_bytes(&mut original);
    let (manifest, manifest_bytes, body) = pack(&key, &original, 64 * 1024, 1424, &mut rng);
    let packets = manifest.packet_count() as u64;
    let mut carousel = Carousel::new(
        SessionKeys::new(&key.file_key(manifest.archive_id), 3),
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
    let start = Instant::now();
    for sent in 0..packets * 3 {
        let now = start + Duration::from_micros(sent);
        let t = carousel.poll_transmit(now, &mut buf, &mut source).unwrap();
        let len = t.len();
        if t == (Transmit::Data {
            index: corrupt_index,
            len,
        }) && sent < packets
        {
            let payload = &mut buf[wire::DATA_HEADER_LEN..len];
            payload[100] ^= 0x40;
            if let Some(holder) = reseal {
                let cells = CellKey::new(&holder.file_key(manifest.archive_id));
                let first = corrupt_index as u64 * manifest.cells_per_packet();
                cells.seal_cells(manifest.archive_id, first, payload, manifest.cell_size);
            }
        }
        if let Outcome::Store {
            body_offset,
            payload,
            ..
        } = fsm.handle_datagram(now, &mut buf[..len])
        {
            stored[body_offset as usize..body_offset as usize + payload.len()]
                .copy_from_slice(payload);
        }
        if fsm.is_complete() {
            break;
        }
    }
    assert!(fsm.is_complete(), "never completed");
    let dropped = fsm.stats().unauthenticated;
    (dropped, unpack(&key, &manifest, &stored), original)
}

#[test]
fn a_corrupted_cell_is_dropped_unless_sealed_again_by_a_key_holder_then_the_digest_refuses_it() {
    // A stranger's change fails the cell's tag: dropped, the next loop brings it.
    let (dropped, result, original) = corrupted_payload(None);
    assert_eq!(dropped, 1);
    assert_eq!(result.unwrap(), original);
    // A key holder can seal any cell (spec §8: insiders): it is stored, and
    // only the content digest over the whole file tells; nothing is delivered.
    let (dropped, result, _) = corrupted_payload(Some(&MasterKey::from_bytes([9; 32])));
    assert_eq!(dropped, 0);
    assert_eq!(result, Err("Digest".to_string()));
}
