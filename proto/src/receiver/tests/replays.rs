//! Genuine packets sent again (T35): a replayed STATUS is not echoed, and a
//! replayed DATA packet of an earlier pass moves no loop track, counts no loss.

use super::*;

/// A 1 MB random archive in 1000-byte packets (about 1000 packets), a receiver
/// that took its manifest and a STATUS of time 5000 at `rate_bps`, and the
/// archive's manifest.
fn receiver_at(rate_bps: u64, now: Instant) -> (FileReceiver, Manifest) {
    let key = MasterKey::from_bytes([4; 32]);
    let (m, manifest_bytes, _) = crate::sim::random_archive(&key, 1_000_000, 65536, 1000, 35);
    let mut r = FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Suppressed);
    r.handle_datagram(
        now,
        &mut wire::encode_manifest(&keys(&m).mac, 7, &manifest_bytes).to_vec(),
    );
    r.handle_datagram(now, &mut status(&m, 5000, rate_bps).to_vec());
    (r, m)
}

fn status(m: &Manifest, time_us: u64, rate_bps: u64) -> Vec<u8> {
    status_of(m, time_us, rate_bps, 0)
}

fn report_of(datagram: &[u8]) -> Report {
    match wire::decode(datagram).unwrap().packet {
        Packet::Report(r) => r,
        other => panic!("not a REPORT: {other:?}"),
    }
}

#[test]
fn a_replayed_status_is_not_taken_so_its_stale_time_is_never_echoed() {
    let now = Instant::now();
    let (mut r, m) = receiver_at(8_000_000, now);
    r.handle_datagram(now, &mut status(&m, 9000, 8_000_000).to_vec());
    // The STATUS of time 5000, replayed, and 9000 again: neither is taken.
    r.handle_datagram(now, &mut status(&m, 5000, 8_000_000).to_vec());
    r.handle_datagram(now, &mut status(&m, 9000, 8_000_000).to_vec());
    assert_eq!(r.stats().stale_status, 2);
    r.handle_datagram(now, &mut zero_data_of(&m, 0).to_vec());
    let later = now + Duration::from_secs(30);
    let report = r.poll_report(later, 0, 0).expect("a report is due");
    assert_eq!(report_of(&report).echo_time_us, 9000);
}

/// DATA packet `index` of `m` (session 7), zero payload.
fn zero_data_of(m: &Manifest, index: u32) -> Vec<u8> {
    zero_data(m, index)
}

#[test]
fn a_replayed_data_packet_of_an_earlier_pass_moves_no_loop_track_and_counts_no_loss() {
    // 8 Mbit/s of 1000-byte packets: one packet a millisecond.
    let t0 = Instant::now();
    let (mut r, m) = receiver_at(8_000_000, t0);
    let count = m.packet_count();
    assert!(count > 900, "{count}");
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    for i in 0..600 {
        r.handle_datagram(at(i as u64), &mut zero_data_of(&m, i).to_vec());
    }
    // Packet 10 again, 1 ms after 599: it is count - 589 steps ahead of the
    // loop's position, which no channel passes in a millisecond.
    r.handle_datagram(at(600), &mut zero_data_of(&m, 10).to_vec());
    assert_eq!(r.stats().out_of_pace, 1);
    assert_eq!(r.loop_position(0), Some((599, 599)));
    r.handle_datagram(at(601), &mut zero_data_of(&m, 600).to_vec());
    assert_eq!(r.loop_position(0), Some((600, 600)));
    let report = report_of(&r.poll_report(at(60_000), 0, 0).expect("a report is due"));
    assert_eq!(report.lost, 0, "{report:?}");
}

#[test]
fn a_long_outage_the_rate_explains_still_moves_the_track_and_makes_gaps() {
    // The same step after 700 ms of silence: the loop did pass that far.
    let t0 = Instant::now();
    let (mut r, m) = receiver_at(8_000_000, t0);
    let count = m.packet_count();
    r.handle_datagram(t0, &mut zero_data_of(&m, 0).to_vec());
    let far = count - 50;
    r.handle_datagram(
        t0 + Duration::from_millis(700),
        &mut zero_data_of(&m, far).to_vec(),
    );
    assert_eq!(r.stats().out_of_pace, 0);
    assert_eq!(r.loop_position(0), Some((far, far as u64)));
    assert!(r.awaiting_repair());
}
