//! A relay's carousel (cut-through, spec §2.4): it loops only what it holds,
//! sends each newly held packet at once, repairs only what it holds, and says
//! in STATUS how many it lacks.

use super::*;

/// DATA and STATUS a carousel sends in `n` calls: (packet index, repair flag)
/// of each DATA, and the `lacking` of the last STATUS.
fn sent(c: &mut Carousel, now: Instant, n: usize) -> (Vec<(u32, bool)>, Option<u32>) {
    let mut buf = vec![0u8; c.max_datagram_len()];
    let (mut data, mut lacking) = (Vec::new(), None);
    for _ in 0..n {
        let t = c.poll_transmit(now, &mut buf, &mut Zeros).unwrap();
        match wire::decode(&buf[..t.len()]).map(|d| d.packet) {
            Ok(Packet::Data(h, _)) => data.push((h.packet_index, h.flags & wire::FLAG_REPAIR != 0)),
            Ok(Packet::Status(s)) => lacking = Some(s.lacking),
            _ => {}
        }
    }
    (data, lacking)
}

#[test]
fn a_relay_holding_nothing_sends_only_its_manifest_and_status_and_says_it_lacks_all() {
    let now = Instant::now();
    let mut c = carousel(now).holding_nothing_yet();
    let (data, lacking) = sent(&mut c, now, 10);
    assert!(data.is_empty());
    assert_eq!(lacking, Some(1000));
    assert_eq!(c.next_len(now), 0);
    let mut buf = vec![0u8; c.max_datagram_len()];
    assert_eq!(
        c.poll_transmit(now, &mut buf, &mut Zeros).unwrap(),
        Transmit::Idle
    );
}

#[test]
fn packets_newly_held_go_out_at_once_then_the_loop_goes_round_what_is_held() {
    let now = Instant::now();
    let mut c = carousel(now).holding_nothing_yet();
    sent(&mut c, now, 2); // MANIFEST and STATUS
    c.hold(500..503);
    c.hold(10..12);
    let (data, _) = sent(&mut c, now, 12);
    let indices: Vec<u32> = data.iter().map(|&(k, _)| k).collect();
    // Fresh in the order held, then the loop from its position (0): 10, 11,
    // 500..503, and round again.
    assert_eq!(
        indices,
        vec![500, 501, 502, 10, 11, 10, 11, 500, 501, 502, 10, 11]
    );
    assert_eq!(c.stats().fresh_packets, 5);
    assert!(c.loops() >= 1, "going round past what it lacks is a loop");
    assert_eq!(c.lacking(), 995);
}

#[test]
fn a_relay_repairs_only_what_it_holds_and_once_whole_is_an_ordinary_carousel() {
    let now = Instant::now();
    let mut c = carousel(now).holding_nothing_yet();
    c.hold(600..610);
    sent(&mut c, now, 20);
    // 600..610 held, 610..620 not: only the first are queued (or left to the
    // loop, whose turn comes first for some).
    c.handle_datagram(now, RECEIVER, &nak(9, 5, vec![(600, 20)]));
    let queued = c.pending_repairs();
    assert_eq!(queued as u64 + c.stats().repairs_skipped, 10);
    assert!(queued > 0);
    assert_eq!(c.stats().not_held, 10);
    // A block's parity only when the relay holds the whole block.
    c.handle_datagram(now, RECEIVER, &parity_nak(1, vec![(0, 4)]));
    assert_eq!(c.pending_repairs(), queued);
    assert_eq!(c.stats().not_held, 14);
    c.hold(0..1000);
    assert_eq!(c.lacking(), 0);
    let later = now + Duration::from_secs(1); // a STATUS is due again
    let (data, lacking) = sent(&mut c, later, 3000);
    assert_eq!(lacking, Some(0));
    assert!(
        data.iter().any(|&(_, repair)| repair),
        "the held packets NAKed are repaired"
    );
    // Once whole and its fresh packets sent: the loop in order, as any carousel.
    let tail: Vec<u32> = data[data.len() - 100..]
        .iter()
        .filter(|(_, repair)| !repair)
        .map(|&(k, _)| k)
        .collect();
    assert!(
        tail.windows(2).all(|w| w[1] == (w[0] + 1) % 1000),
        "{tail:?}"
    );
    c.handle_datagram(later, RECEIVER, &nak(9, 5, vec![(700, 5)]));
    assert_eq!(c.stats().not_held, 14);
}
