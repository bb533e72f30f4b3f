//! A relay in the protocol alone (spec §2.4), on a virtual clock: an upstream
//! carousel, a relay (a receiver whose stored packets feed a carousel of its
//! own, `holding_nothing_yet`), and a receiver behind it. The relay's carousel
//! reads only the sealed bytes the relay received, so a packet it sent before
//! holding it would fail at the receiver. Cut-through is measured against the
//! same relay started only once it holds everything (store and forward).

mod lan;

use loopcast_proto::sender::{Carousel, PayloadSource, RepairConfig, Transmit};
use loopcast_proto::wire::{self, SessionKeys};
use loopcast_proto::{FileReceiver, MasterKey, NakMode, Outcome};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const UPSTREAM: u32 = 1;
const RELAY: u32 = 2;
const ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
/// 100 Mbit/s of 1500-byte datagrams: one packet each 120 µs, both links.
const STEP: Duration = Duration::from_micros(120);

/// Body bytes a carousel reads.
struct Body(Vec<u8>);

impl PayloadSource for Body {
    fn read_payload(&mut self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.copy_from_slice(&self.0[at as usize..at as usize + buf.len()]);
        Ok(())
    }
}

/// What one run saw: when the relay and the receiver held everything (in
/// steps), the receiver's forged-DATA count, and the step of its first NAK.
struct Run {
    relay_done: Option<u32>,
    receiver_done: Option<u32>,
    receiver_unauthenticated: u64,
    first_receiver_nak: Option<u32>,
    relay_lacked_at_that_nak: u32,
}

/// Runs upstream → relay → receiver, losing `loss` of the datagrams on the
/// relay's link to the receiver; the relay's carousel starts at once
/// (cut-through) or once it holds everything (store and forward).
fn run(cut_through: bool, loss: f64) -> Run {
    let key = MasterKey::from_bytes([5; 32]);
    let payload = wire::cell_size_for_packet(wire::DEFAULT_PACKET_SIZE);
    let (m, manifest_bytes, sealed) =
        loopcast_proto::sim::random_archive(&key, 2 << 20, 1 << 16, payload, 4);
    let file_key = key.file_key(m.archive_id);
    let t0 = Instant::now();
    let config = RepairConfig {
        rate_bps: 100_000_000,
        ..RepairConfig::default()
    };
    let carousel = |session: u32| {
        let keys = SessionKeys::new(&file_key, session);
        Carousel::new(keys, session, &m, &manifest_bytes, t0, config)
    };
    let mut upstream = carousel(UPSTREAM);
    let mut relay_out = carousel(RELAY).holding_nothing_yet();
    let mut relay_in =
        FileReceiver::new(key.clone(), UPSTREAM, m.archive_id, 1, NakMode::Immediate);
    let mut receiver = FileReceiver::new(key, RELAY, m.archive_id, 2, NakMode::Immediate);
    let (mut source, mut kept) = (Body(sealed), Body(vec![0; m.body_len as usize]));
    let mut rng = SmallRng::seed_from_u64(9);
    let mut buf = vec![0u8; upstream.max_datagram_len()];
    let mut run = Run {
        relay_done: None,
        receiver_done: None,
        receiver_unauthenticated: 0,
        first_receiver_nak: None,
        relay_lacked_at_that_nak: 0,
    };
    for step in 0..200_000u32 {
        let now = t0 + STEP * step;
        // Upstream to the relay: it keeps the sealed bytes of what it stores.
        let t = upstream.poll_transmit(now, &mut buf, &mut source).unwrap();
        let mut datagram = buf[..t.len()].to_vec();
        let as_sent = datagram.clone();
        if let Outcome::Store {
            packet_index,
            body_offset,
            payload,
        } = relay_in.handle_datagram(now, &mut datagram)
        {
            let (at, len) = (body_offset as usize, payload.len());
            let from = as_sent.len() - len;
            kept.0[at..at + len].copy_from_slice(&as_sent[from..]);
            if cut_through {
                relay_out.hold(packet_index..packet_index + 1);
            }
        }
        relay_in.handle_timeout(now);
        while let Some(nak) = relay_in.poll_transmit() {
            upstream.handle_datagram(now, ADDR, &nak);
        }
        if relay_in.received().is_complete() && run.relay_done.is_none() {
            run.relay_done = Some(step);
            relay_out.hold(0..m.packet_count());
        }
        // The relay to the receiver.
        let t = relay_out.poll_transmit(now, &mut buf, &mut kept).unwrap();
        if t != Transmit::Idle && !rng.random_bool(loss) {
            let mut datagram = buf[..t.len()].to_vec();
            receiver.handle_datagram(now, &mut datagram);
        }
        receiver.handle_timeout(now);
        while let Some(nak) = receiver.poll_transmit() {
            if run.first_receiver_nak.is_none() {
                run.first_receiver_nak = Some(step);
                run.relay_lacked_at_that_nak = relay_out.lacking();
            }
            relay_out.handle_datagram(now, ADDR, &nak);
        }
        if receiver.received().is_complete() {
            run.receiver_done = Some(step);
            break;
        }
    }
    run.receiver_unauthenticated = receiver.stats().unauthenticated;
    run
}

#[test]
fn behind_a_cut_through_relay_a_receiver_finishes_with_the_relay_not_a_loop_later() {
    let through = run(true, 0.0);
    let stored = run(false, 0.0);
    let (relay, done) = (through.relay_done.unwrap(), through.receiver_done.unwrap());
    let (relay_sf, done_sf) = (stored.relay_done.unwrap(), stored.receiver_done.unwrap());
    // A loop is ~1,470 packets (2 MiB in 1,424-byte cells): one step each.
    println!(
        "cut-through: relay {relay}, receiver {done} steps; store and forward: relay {relay_sf}, receiver {done_sf}"
    );
    assert!(
        done <= relay + 100,
        "{done} steps against the relay's {relay}"
    );
    assert!(
        done_sf >= relay_sf + 1000,
        "store and forward: {done_sf} against {relay_sf}"
    );
    // The relay never sent a packet it did not hold (zeros would fail their tags).
    assert_eq!(through.receiver_unauthenticated, 0);
}

#[test]
fn a_lossy_receiver_behind_a_relay_asks_for_nothing_until_the_relay_holds_all() {
    let r = run(true, 0.05);
    let relay = r.relay_done.unwrap();
    assert!(r.receiver_done.is_some(), "the receiver never finished");
    let nak = r
        .first_receiver_nak
        .expect("5% loss needs repair or another loop");
    assert_eq!(
        r.relay_lacked_at_that_nak, 0,
        "a NAK at step {nak}, the relay done at {relay}"
    );
    assert_eq!(r.receiver_unauthenticated, 0);
}

/// The file a relay's endpoint on the virtual LAN serves (`FileSpec::relayed`),
/// in place of the LAN's ordinary server.
fn relay_on(lan: &mut lan::Lan) {
    use loopcast_proto::server::{Endpoint, FileSpec};
    let f = &lan.files[0];
    let spec = FileSpec {
        relayed: true,
        manifest: f.manifest.clone(),
        manifest_bytes: f.manifest_bytes.clone(),
        file_key: lan::site_key().file_key(f.manifest.archive_id),
        channels: vec![lan::server_channel(0, 0)],
    };
    let admission = loopcast_proto::CookieJar::new([5; 32], lan.now);
    let config = lan::server_config(0xa11ce);
    lan.servers[0].endpoint = Endpoint::new(config, vec![spec], admission, lan.now).unwrap();
}

#[test]
fn a_receiver_behind_a_relay_holding_half_takes_the_other_half_as_the_relay_sends_it() {
    // The relay holds the second half first and loops it; the receiver takes it
    // and then holds everything the loop passes; the first half then comes at
    // once (fresh), and the receiver, still on the channel, takes it as sent.
    let mut lan = lan::Lan::new(lan::one_file(8_000_000), |_| {});
    relay_on(&mut lan);
    let node = lan.add_node(|_| {}, true);
    let (m, name) = (
        lan.files[0].manifest.clone(),
        lan.files[0].manifest.name.clone(),
    );
    let half = m.packet_count() as u64 / 2 * m.payload_size as u64;
    let now = lan.now;
    lan.server().hold(now, m.archive_id, half..m.body_len);
    lan.run(Duration::from_millis(1500));
    assert_eq!(lan.held(node), m.packet_count() - m.packet_count() / 2);
    let now = lan.now;
    lan.server().hold(now, m.archive_id, 0..half);
    assert!(lan.run_until(Duration::from_secs(10), |l| l.delivered(node, &name)));
    let took = lan.now - now;
    let r = &lan.nodes[node].session.receptions()[0];
    println!(
        "delivered {took:?} after the relay held all; {} positions passed away",
        r.receiver().passed_away()
    );
    // It stayed: nothing passed while away, and half the file at 40 Mbit/s
    // (0.8 s) came as the relay sent it.
    assert_eq!(r.receiver().passed_away(), 0);
    assert!(took < Duration::from_millis(1200), "{took:?}");
    assert!(lan.body_matches(node, 0));
}
