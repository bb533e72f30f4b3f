//! Forged and replayed packets against both endpoints on the virtual LAN (spec §8,
//! T6, T8, T9, T10, T11, T13, T28). Each attack runs twice: by a stranger, whose
//! packets must do nothing, and by a key holder, whose same packets do harm. The
//! second run shows each test can fail: what stops the stranger is the key.

mod lan;

use lan::*;
use loopcast_proto::cell::CellKey;
use loopcast_proto::client::Origin as ClientOrigin;
use loopcast_proto::server::{Origin as ServerOrigin, ServerEvent, UNICAST_CLIENT_TIMEOUT};
use loopcast_proto::wire::{self, DataHeader, Packet, SessionKeys};
use loopcast_proto::{AdaptMode, MasterKey};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The session id of the Lan's server.
const SESSION: u32 = 0xa11ce;
const STRANGER: [u8; 32] = [0x66; 32];

/// Packet keys of file 0 in the Lan's session under `key`.
fn keys(lan: &Lan, key: &MasterKey) -> SessionKeys {
    let archive = lan.files[0].manifest.archive_id;
    SessionKeys::new(&key.file_key(archive), SESSION)
}

/// `payload` (whole cells' data, room for each tag) sealed under `key` as the
/// cells of packet `index` of `m`: a key holder's forgery, or a stranger's.
fn sealed_as(key: &MasterKey, m: &loopcast_proto::Manifest, index: u32, payload: &[u8]) -> Vec<u8> {
    let mut cells = payload.to_vec();
    let first = index as u64 * m.cells_per_packet();
    CellKey::new(&key.file_key(m.archive_id)).seal_cells(
        m.archive_id,
        first,
        &mut cells,
        m.cell_size,
    );
    cells
}

/// What forged DATA did: (delivered intact, datagrams stored that were not
/// the archive's, datagrams the receiver dropped as forged, forged datagrams sent).
fn forged_data(key: &MasterKey) -> (bool, bool, u64, u64) {
    let mut lan = Lan::new(one_file(1_000_000), |_| {});
    let node = lan.add_node(|_| {}, true);
    let m = lan.files[0].manifest.clone();
    let payload = vec![0x5a; m.payload_size as usize];
    let channel = ClientOrigin::Channel {
        reception: 0,
        channel: 0,
    };
    // 40 Mbit/s is about 3,500 packets/s: one forgery every 2 ms is about 14%.
    let (mut sent, mut index, start) = (0u64, 0u32, lan.now);
    let delivered = loop {
        if lan.run_until(Duration::from_millis(2), |l| l.delivered(node, &m.name)) {
            break true;
        }
        if lan.now - start > Duration::from_secs(5) {
            break false;
        }
        index = (index + 7919) % (m.packet_count() - 1);
        let header = DataHeader {
            archive_id: m.archive_id,
            packet_index: index,
            packet_count: m.packet_count(),
            flags: 0,
        };
        let forged = wire::encode_data(SESSION, &header, &sealed_as(key, &m, index, &payload));
        lan.node_datagram(node, channel, &forged);
        sent += 1;
    };
    let forged = (lan.nodes[node].session.receptions().iter())
        .map(|r| r.receiver().stats().unauthenticated)
        .sum();
    // What the node stored is the archive's, cell for cell, or not.
    let stored_forgery = !lan.body_matches(node, 0);
    (delivered && !stored_forgery, stored_forgery, forged, sent)
}

#[test]
fn forged_data_is_dropped_before_it_is_stored() {
    // T6: without the key, 14% forged DATA (cells sealed under another key)
    // fails the cells' tags: nothing of it is stored.
    let (intact, stored, forged, sent) = forged_data(&MasterKey::from_bytes(STRANGER));
    println!("stranger: {sent} forged DATA, {forged} dropped as forged, stored: {stored}");
    assert!(intact && !stored);
    assert!(forged >= sent / 2, "{forged} of {sent} dropped as forged");
    // With the key, the same cells open and are stored (only the content
    // digest, over the whole file, would tell).
    let (intact, stored, forged, _) = forged_data(&site_key());
    println!("key holder: stored: {stored}, {forged} dropped");
    assert!(!intact && stored && forged == 0, "{stored}, {forged}");
}

/// Runs a manifest of file 0 re-signed for payloads of two cells, in a MANIFEST
/// datagram of the Lan's session tagged with `key`, into a receiver before the
/// real manifest arrives; returns whether the file was delivered within 3 s.
fn replayed_layout(key: &MasterKey) -> bool {
    let mut lan = Lan::new(one_file(300_000), |_| {});
    let node = lan.add_node(|_| {}, true);
    let joined = |lan: &Lan| !lan.nodes[node].joined.is_empty();
    assert!(lan.run_until(Duration::from_secs(1), joined));
    let mut other = lan.files[0].manifest.clone();
    other.payload_size = 2 * other.cell_size;
    let file_key = site_key().file_key(other.archive_id);
    let datagram = wire::encode_manifest(&keys(&lan, key).mac, SESSION, &other.encode(&file_key));
    let channel = ClientOrigin::Channel {
        reception: 0,
        channel: 0,
    };
    lan.node_datagram(node, channel, &datagram);
    let name = lan.files[0].manifest.name.clone();
    lan.run_until(Duration::from_secs(3), |l| l.delivered(node, &name))
}

#[test]
fn a_manifest_of_another_layout_is_bound_to_its_own_session() {
    // T8: a genuine manifest (another server's, other packet size) put under this
    // server's session: its packet tag is the other session's, so it is dropped.
    assert!(replayed_layout(&MasterKey::from_bytes(STRANGER)));
    // Tagged for this session (only this server could), it would take the layout.
    assert!(!replayed_layout(&site_key()));
}

/// Forged REPORTs of 100 new receivers every 50 ms, all losing everything, under
/// `key`, against `--adapt min`: returns (lowest rate set, receivers known).
fn forged_reports(key: &MasterKey) -> (u64, usize) {
    let mut lan = Lan::new(one_file(3_000_000), |c| {
        c.adapt = Some((AdaptMode::Min, 1_000_000, 40_000_000));
    });
    lan.add_node(|_| {}, true);
    let m = lan.files[0].manifest.clone();
    let keys = keys(&lan, key);
    let mut id = 1u32;
    for _ in 0..60 {
        lan.run(Duration::from_millis(50));
        let echo = lan.last_status_time; // sniffed on the channel
        for _ in 0..100 {
            id += 1;
            let report = wire::Report {
                archive_id: m.archive_id,
                receiver_id: id,
                channel: 0,
                held: 0,
                packet_count: m.packet_count(),
                arrived: 1,
                lost: 1000,
                interval_ms: 50,
                kernel_drops: 0,
                echo_time_us: echo,
            };
            let from = SocketAddr::new(Ipv4Addr::new(10, 0, 9, (id % 250) as u8).into(), 4000);
            let datagram = wire::encode_report(&keys.mac, SESSION, &report);
            let now = lan.now;
            lan.server()
                .handle_datagram(now, ServerOrigin::Unicast(from), &datagram);
        }
    }
    let lowest = (lan.server_events.iter())
        .filter_map(|e| match e {
            ServerEvent::RateChanged { rate_bps, .. } => Some(*rate_bps),
            _ => None,
        })
        .min()
        .unwrap_or(channel_of(0).rate_bps);
    (lowest, lan.server().receivers().len())
}

#[test]
fn forged_reports_neither_slow_a_channel_nor_fill_the_receiver_table() {
    // T9, T10: 6,000 forged receivers in 3 s. Only the honest one is known.
    let (lowest, known) = forged_reports(&MasterKey::from_bytes(STRANGER));
    println!("stranger: lowest rate {lowest}, {known} receivers known");
    assert!(lowest >= 20_000_000, "slowed to {lowest}");
    assert!(known <= 1, "{known} receivers known");
    // With the key (and a sniffed echo) the same reports slow it and fill the table.
    let (lowest, known) = forged_reports(&site_key());
    println!("key holder: lowest rate {lowest}, {known} receivers known");
    assert!(lowest < 10_000_000, "only slowed to {lowest}");
    assert!(known > 1000, "{known} receivers known");
}

#[test]
fn replayed_reports_keep_a_vanished_unicast_client_for_seconds_only() {
    // T11: a unicast client vanishes; a sniffer replays its last REPORT from its
    // address every 200 ms. The stream ends once the echoed STATUS is 2.5 s old
    // and the client time-out has passed.
    let mut lan = Lan::new(one_file(3_000_000), |c| c.unicast_max_rate = 4_000_000);
    let node = lan.add_node(|c| c.server = Some(SERVER), false);
    // It asks for the stream after the sync time-out (3 s), then reports.
    lan.run(Duration::from_secs(6));
    assert_eq!(lan.server().unicast_clients(), 1);
    let (origin, report) = (lan.to_server.iter().rev())
        .find(|(_, d)| matches!(wire::decode(d).map(|d| d.packet), Ok(Packet::Report(_))))
        .cloned()
        .expect("the client reported");
    lan.nodes[node].gone = true;
    let gone_at = lan.now;
    let mut replays = 0;
    while lan.server().unicast_clients() > 0 && lan.now - gone_at < Duration::from_secs(30) {
        lan.servers[0]
            .endpoint
            .handle_datagram(lan.now, origin, &report);
        replays += 1;
        lan.run(Duration::from_millis(200));
    }
    let kept = lan.now - gone_at;
    println!("stream kept {kept:?} after the client vanished, by {replays} replays");
    assert_eq!(
        lan.server().unicast_clients(),
        0,
        "still streaming after {kept:?}"
    );
    let bound = UNICAST_CLIENT_TIMEOUT + Duration::from_millis(2500 + 500);
    assert!(kept <= bound, "kept {kept:?} by {replays} replays");
    assert!(lan.server().stats().stale_reports > 0);
}

/// Third-party NAKs for the whole file at 20/s under `key` while a receiver joins
/// mid-stream: returns (NAKs the receiver heard, NAKs the server took).
fn third_party_naks(key: &MasterKey) -> (u64, u64) {
    let mut lan = Lan::new(one_file(2_000_000), |_| {});
    lan.run(Duration::from_millis(150));
    let node = lan.add_node(|_| {}, true);
    let m = lan.files[0].manifest.clone();
    let keys = keys(&lan, key);
    let count = m.packet_count();
    let nak = wire::encode_nak(
        &keys.mac,
        SESSION,
        &wire::Nak {
            archive_id: m.archive_id,
            receiver_id: 0xbad,
            echo_time_us: 0,
            hold_us: 0,
            ranges: (0..count)
                .step_by(60_000)
                .map(|first| (first, (count - first).min(60_000) as u16))
                .collect(),
            blocks: Vec::new(),
        },
    );
    let control = ClientOrigin::Control {
        reception: 0,
        channel: 0,
    };
    for _ in 0..40 {
        lan.run(Duration::from_millis(50));
        if !lan.nodes[node].session.receptions().is_empty() {
            lan.node_datagram(node, control, &nak);
        }
        let origin = ServerOrigin::Control {
            file: 0,
            channel: 0,
            from: SocketAddr::new(Ipv4Addr::new(10, 0, 9, 9).into(), 4000),
        };
        lan.servers[0]
            .endpoint
            .handle_datagram(lan.now, origin, &nak);
    }
    let heard = (lan.nodes[node].session.receptions().iter())
        .map(|r| r.receiver().stats().naks_heard)
        .sum();
    let taken = lan.server().channel(0, 0).unwrap().0.stats().naks;
    (heard, taken)
}

#[test]
fn third_party_naks_are_neither_heard_nor_repaired() {
    // T3, T13: without the key, a receiver hears none and the server takes none of
    // the 40 forged NAKs (it takes the honest receiver's own).
    let (heard, taken) = third_party_naks(&MasterKey::from_bytes(STRANGER));
    println!("stranger: {heard} NAKs heard, {taken} taken");
    assert_eq!(heard, 0);
    assert!(taken < 40, "{taken} NAKs taken");
    let (heard, taken) = third_party_naks(&site_key());
    println!("key holder: {heard} NAKs heard, {taken} taken");
    assert!(heard > 0 && taken >= 40, "heard {heard}, taken {taken}");
}

/// A genuine DATA packet from early in the loop, replayed to a receiver that holds
/// 0..45% of the file with the loop at 45% (T28): returns (it left its channel
/// at once, it had gaps to NAK at once, delivered).
fn replayed_early_packet(key: &MasterKey) -> (bool, bool, bool) {
    // 16 MB at 40 Mbit/s: a loop is about 3.3 s.
    let mut lan = Lan::new(one_file(16_000_000), |_| {});
    let node = lan.add_node(|_| {}, true);
    lan.run(Duration::from_millis(1500));
    let m = lan.files[0].manifest.clone();
    let payload_size = m.payload_size as usize;
    let header = DataHeader {
        archive_id: m.archive_id,
        packet_index: 1,
        packet_count: m.packet_count(),
        flags: 0,
    };
    // The genuine cells of packet 1, as opened, sealed again under `key`.
    let mut payload = lan.files[0].body[payload_size..2 * payload_size].to_vec();
    let site = CellKey::new(&site_key().file_key(m.archive_id));
    assert!(site.open_cells(
        m.archive_id,
        m.cells_per_packet(),
        &mut payload,
        m.cell_size
    ));
    let datagram = wire::encode_data(SESSION, &header, &sealed_as(key, &m, 1, &payload));
    let origin = ClientOrigin::Channel {
        reception: 0,
        channel: 0,
    };
    // Straight to the session: nothing else happens in between.
    lan.node_datagram(node, origin, &datagram);
    let r = &lan.nodes[node].session.receptions()[0];
    let (left, gaps) = (r.away(), r.receiver().awaiting_repair());
    let name = m.name.clone();
    let delivered = lan.run_until(Duration::from_secs(10), |l| l.delivered(node, &name));
    (left, gaps, delivered && lan.body_matches(node, 0))
}

#[test]
fn a_replayed_early_packet_does_not_take_a_receiver_away_over_packets_it_lacks() {
    // A stranger's packet does not verify: nothing moves.
    let stranger = replayed_early_packet(&MasterKey::from_bytes(STRANGER));
    assert_eq!(stranger, (false, false, true));
    // A genuine packet replayed (made here with the key) is out of the channel's
    // pace (the loop cannot have gone round 55% in no time, T35): it moves no
    // loop position, so it neither takes the receiver away nor makes false gaps.
    let replayed = replayed_early_packet(&site_key());
    assert_eq!(replayed, (false, false, true));
}
