//! A receiver on a relay's channel (spec §2.4): what the loop passes while the
//! relay's STATUS says it lacks packets is not asked for (the relay loops what
//! it holds as it gets it); once a STATUS says it holds them all, the gaps are.

use super::*;

/// NAKs the receiver sends while its timers run from `from` for 200 ms.
fn naks_within(r: &mut FileReceiver, from: Instant) -> Vec<Nak> {
    let mut naks = Vec::new();
    for ms in 0..200 {
        r.handle_timeout(from + Duration::from_millis(ms));
        while let Some(bytes) = r.poll_transmit() {
            naks.push(nak_of(&bytes));
        }
    }
    naks
}

/// A receiver (NAKing at once) with the manifest and a STATUS at time 1 saying
/// the relay lacks half its packets: (receiver, manifest, now).
fn behind_a_relay_lacking_half() -> (FileReceiver, Manifest, Instant) {
    let (key, m, manifest_bytes) = random_archive();
    let t0 = Instant::now();
    let mut r = FileReceiver::new(key, 7, m.archive_id, 1, NakMode::Immediate);
    let manifest = wire::encode_manifest(&keys(&m).mac, 7, &manifest_bytes);
    r.handle_datagram(t0, &mut manifest.to_vec());
    let half = m.packet_count() / 2;
    r.handle_datagram(t0, &mut status_of(&m, 1, 1_000_000, half));
    (r, m, t0)
}

#[test]
fn gaps_passed_while_the_relay_lacks_packets_are_asked_for_once_it_holds_them_all() {
    let (mut r, m, t0) = behind_a_relay_lacking_half();
    let count = m.packet_count();
    // The relay holds every other packet and goes round them twice.
    for _ in 0..2 {
        for k in (0..count).step_by(2) {
            r.handle_datagram(t0, &mut zero_data(&m, k));
        }
    }
    assert_eq!(r.received().count(), count.div_ceil(2));
    assert!(
        naks_within(&mut r, t0).is_empty(),
        "asked while the relay lacks them"
    );
    // Its STATUS now says it holds them all: the odd packets are asked for.
    let t1 = t0 + Duration::from_secs(1);
    r.handle_datagram(t1, &mut status_of(&m, 2, 1_000_000, 0));
    let naks = naks_within(&mut r, t1);
    let asked: u32 = (naks.iter().flat_map(|n| &n.ranges))
        .map(|&(_, c)| c as u32)
        .sum();
    assert!(
        asked >= count / 2,
        "asked for {asked} of {} missing",
        count / 2
    );
}

#[test]
fn a_relays_old_status_replayed_once_it_holds_all_silences_no_nak() {
    // T46: the relay's STATUS of when it lacked packets, replayed after one
    // saying it holds them all, is stale: counted, and the NAKs go on.
    let (mut r, m, t0) = behind_a_relay_lacking_half();
    let count = m.packet_count();
    let mut lacking = status_of(&m, 1, 1_000_000, count / 2);
    for k in (0..count).step_by(2) {
        r.handle_datagram(t0, &mut zero_data(&m, k));
    }
    r.handle_datagram(t0, &mut status_of(&m, 2, 1_000_000, 0));
    r.handle_datagram(t0, &mut lacking);
    assert_eq!(r.stats().stale_status, 1, "the replay arrived");
    assert!(
        !naks_within(&mut r, t0).is_empty(),
        "a replayed STATUS silenced the NAKs"
    );
}
