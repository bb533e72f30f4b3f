//! Carousel repair tests.

use super::*;
use crate::wire::{Nak, Packet};

struct Zeros;

impl PayloadSource for Zeros {
    fn read_payload(&mut self, _: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
}

fn carousel(now: Instant) -> Carousel {
    let key = crate::MasterKey::from_bytes([1; 32]);
    let mut packer = crate::archive::Packer::new(&key, 5, 0, 1 << 20, 1).unwrap();
    packer.seal_next(&[], [0; 16]).unwrap();
    let meta = crate::archive::FileMeta {
        name: "x".into(),
        mode: 0,
        mtime_secs: 0,
        mtime_nanos: 0,
    };
    let (_, mut manifest, _) = packer.finish(meta, 1440).unwrap();
    manifest.body_len = 1440 * 1000; // a 1000-packet body of zeros is enough here
    let bytes = manifest.encode(&key.file_key(5));
    Carousel::new(
        9,
        &manifest,
        &bytes,
        now,
        RepairConfig {
            rate_bps: 100_000_000,
            share: 0.25,
            ..RepairConfig::default()
        },
    )
}

fn nak(session: u32, archive_id: u64, ranges: Vec<(u32, u16)>) -> Vec<u8> {
    wire::encode_nak(
        session,
        &Nak {
            archive_id,
            receiver_id: 1,
            echo_time_us: 0,
            hold_us: 0,
            ranges,
        },
    )
}

#[test]
fn bad_naks_are_counted_and_dropped() {
    let now = Instant::now();
    let mut c = carousel(now);
    c.handle_datagram(now, b"garbage");
    c.handle_datagram(now, &nak(8, 5, vec![(600, 1)])); // other session
    c.handle_datagram(now, &nak(9, 6, vec![(600, 1)])); // other archive
    c.handle_datagram(now, &nak(9, 5, vec![(999, 2)])); // beyond the file
    assert_eq!(c.stats().naks_dropped, 4);
    assert_eq!(c.pending_repairs(), 0);
    c.handle_datagram(now, &nak(9, 5, vec![(600, 3)]));
    c.handle_datagram(now, &nak(9, 5, vec![(600, 3)])); // already queued: costs nothing
    assert_eq!((c.stats().naks, c.pending_repairs()), (2, 3));
}

#[test]
fn repairs_are_flagged_capped_and_left_to_the_loop_when_it_comes_first() {
    let now = Instant::now();
    let mut c = carousel(now);
    let mut buf = vec![0u8; c.max_datagram_len()];
    // Packets 1..4 come round in the loop at once: not worth a repair. 900 is far.
    c.handle_datagram(now, &nak(9, 5, vec![(1, 3), (900, 1)]));
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
