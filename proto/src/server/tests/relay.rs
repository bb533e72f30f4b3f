//! A relay's endpoint (spec §2.4): its file's carousels send nothing of the
//! body until `hold` names it, then only whole packets held; an idle channel
//! waits for its next MANIFEST or STATUS, never spins; a unicast stream that
//! starts later begins with what is held.

use super::*;

/// Packet indices of the DATA in `sent`.
fn data_indices(sent: &Sent) -> Vec<u32> {
    (sent.iter().flat_map(|(_, _, ds)| ds))
        .filter_map(|d| match wire::decode(d).map(|d| d.packet) {
            Ok(Packet::Data(h, _)) => Some(h.packet_index),
            _ => None,
        })
        .collect()
}

#[test]
fn a_relayed_file_sends_only_what_is_held_and_an_idle_channel_waits() {
    let mut h = harness_of(|_| {}, true);
    let m = h.server.manifest(0).clone();
    let sent = h.run(Duration::from_millis(300));
    assert!(data_indices(&sent).is_empty());
    assert_eq!(h.server.lacking(0), m.packet_count());
    // Idle, it asks to be woken for its next STATUS, not at once.
    let wake = h.server.poll_timeout();
    assert!(wake > h.t, "an idle relay channel would spin");
    assert!(wake <= h.t + Duration::from_millis(110));
    // Bytes of packets 3 and 4, and half of 5: 3 and 4 go out.
    let p = m.payload_size as u64;
    h.server.hold(h.t, m.archive_id, 3 * p..5 * p + p / 2);
    let sent = h.run(Duration::from_millis(50));
    let mut got = data_indices(&sent);
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, vec![3, 4]);
    // A unicast stream starting now begins with what is held.
    let client = addr(40_000);
    h.request(client, wire::REQUEST_UNICAST, [0; wire::COOKIE_LEN]);
    let cookie = cookie_in(&h.step(Duration::ZERO), client);
    h.request(client, wire::REQUEST_UNICAST, cookie);
    let to_client: Sent = (h.run(Duration::from_millis(50)).into_iter())
        .filter(|(_, to, _)| *to == client)
        .collect();
    let mut got = data_indices(&to_client);
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, vec![3, 4]);
    // Everything held: an ordinary server.
    h.server.hold(h.t, m.archive_id, 0..m.body_len);
    assert_eq!(h.server.lacking(0), 0);
    let got = data_indices(&h.run(Duration::from_millis(200)));
    assert!(
        got.len() as u32 >= m.packet_count(),
        "{} packets",
        got.len()
    );
}
