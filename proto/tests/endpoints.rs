//! The two endpoints talking on the virtual LAN of `lan/`: each test reads as a
//! script of a conversation, in the manner of quinn-proto's `Pair`.

mod lan;

use lan::*;
use loopcast_proto::MasterKey;
use loopcast_proto::client::{ClientEvent, Origin as ClientOrigin, RepairKind};
use loopcast_proto::sender::HEAR_EVERY_SERVER;
use loopcast_proto::server::ServerEvent;
use loopcast_proto::wire::ChannelInfo;
use std::time::Duration;

#[test]
fn a_receiver_from_the_start_and_one_joining_mid_stream_both_deliver_every_file() {
    let mut lan = Lan::new(two_files(), |_| {});
    let first = lan.add_node(|_| {}, true);
    lan.run(Duration::from_millis(60));
    let late = lan.add_node(|_| {}, true);
    let names: Vec<String> = lan.files.iter().map(|f| f.manifest.name.clone()).collect();
    // One loop of the larger file at 40 Mbit/s is about 0.12 s.
    let all = |lan: &Lan| {
        [first, late]
            .iter()
            .all(|&n| names.iter().all(|name| lan.delivered(n, name)))
    };
    assert!(lan.run_until(Duration::from_secs(5), all));
    for node in [first, late] {
        for file in 0..2 {
            assert!(lan.body_matches(node, file), "node {node} file {file}");
        }
    }
    // Finished once every server on the group has had time to announce
    // (750 ms after the first listing heard), not before.
    let finished = |lan: &Lan| {
        [first, late]
            .iter()
            .all(|&n| lan.nodes[n].session.is_finished())
    };
    assert!(!finished(&lan));
    assert!(lan.run_until(HEAR_EVERY_SERVER, finished));
    // DONE reached the server from both, for both files.
    lan.run(Duration::from_millis(10));
    assert_eq!(lan.server_done(), 4);
    let late_join = lan.nodes[late]
        .session
        .receptions()
        .iter()
        .map(|r| r.receiver().stats().stored)
        .sum::<u64>();
    assert!(late_join > 0);
}

#[test]
fn a_restarted_server_is_followed_at_once_and_stored_packets_are_kept() {
    // 2 MB at 40 Mbit/s: a loop is about 0.4 s.
    let mut lan = Lan::new(one_file(2_000_000), |_| {});
    let node = lan.add_node(|_| {}, true);
    lan.run(Duration::from_millis(200));
    let before = lan.held(node);
    let total = lan.files[0].manifest.packet_count();
    assert!(before > total / 5 && before < total, "{before} of {total}");
    lan.restart_server(0xb0b);
    let name = lan.files[0].manifest.name.clone();
    assert!(lan.run_until(Duration::from_secs(3), |l| l.delivered(node, &name)));
    assert!(lan.body_matches(node, 0));
    let events = &lan.nodes[node].events;
    assert!(
        events.contains(&ClientEvent::Following {
            reception: 0,
            switched: true,
            dropped: 0,
        }),
        "{events:?}"
    );
    let resumed = events.iter().find_map(|e| match e {
        ClientEvent::Resumed { held, behind, .. } => Some((*held, *behind)),
        _ => None,
    });
    // Everything held before the restart was kept; the old session's loop
    // positions say nothing of the new one's.
    let (held, behind) = resumed.expect("a Resumed event");
    assert!(held >= before, "{held} < {before}");
    assert!(!behind);
    // It followed the new session at its first ANNOUNCE, not after the 3 s silence,
    // and never fell back to unicast.
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ClientEvent::FellBack { .. }))
    );
}

/// A receiver holding about 45% of a file switches to a new session whose loop
/// starts at packet 0: how many packets it takes twice from the new loop (held
/// already, or come before it could check them), of the file's packets.
fn share_taken_twice_after_a_switch(stay_joined: bool) -> f64 {
    // 16 MB at 40 Mbit/s: a loop is about 3.3 s.
    let mut lan = Lan::new(one_file(16_000_000), |_| {});
    let node = lan.add_node(|c| c.stay_joined = stay_joined, true);
    lan.run(Duration::from_millis(1500));
    let total = lan.files[0].manifest.packet_count();
    let before = lan.held(node);
    assert!(
        before > total / 3 && before < total / 2,
        "{before} of {total}"
    );
    lan.restart_server(0xb0b);
    let name = lan.files[0].manifest.name.clone();
    assert!(lan.run_until(Duration::from_secs(8), |l| l.delivered(node, &name)));
    assert!(lan.body_matches(node, 0));
    let r = &lan.nodes[node].session.receptions()[0];
    assert_eq!(r.receiver().stats().repairs, 0, "nothing was lost");
    let s = r.receiver().stats();
    (s.duplicates + s.before_manifest) as f64 / total as f64
}

#[test]
fn a_receiver_that_switched_servers_leaves_the_channel_while_the_loop_passes_what_it_holds() {
    let leaving = share_taken_twice_after_a_switch(false);
    let staying = share_taken_twice_after_a_switch(true);
    println!("packets taken twice: {leaving:.4} leaving, {staying:.4} staying joined");
    assert!(leaving < 0.01, "{leaving}");
    // Staying joined, the new loop brings again everything held (its first 45%).
    assert!(staying > 0.3, "{staying}");
}

#[test]
fn with_multicast_silent_a_receiver_given_the_server_completes_by_unicast() {
    let mut lan = Lan::new(one_file(500_000), |_| {});
    let node = lan.add_node(|c| c.server = Some(SERVER), false);
    let name = lan.files[0].manifest.name.clone();
    assert!(lan.run_until(Duration::from_secs(10), |l| l.delivered(node, &name)));
    assert!(lan.body_matches(node, 0));
    // It waited out the sync time-out, asked for the listing (cookie first), then
    // for a stream (cookie first again, from the stream's own socket).
    let unvalidated = lan.server().stats().unvalidated;
    assert!(unvalidated >= 2, "{unvalidated}");
    assert!(lan.server().stats().unicast_bytes > 500_000);
    let events = &lan.nodes[node].events;
    assert!(events.iter().any(|e| matches!(
        e,
        ClientEvent::FellBack {
            why: loopcast_proto::client::Fallback::NoMulticast,
            ..
        }
    )));
    lan.run(Duration::from_millis(10));
    assert_eq!(lan.server_done(), 1);
    assert!(lan.server_events.iter().any(|e| matches!(
        e,
        ServerEvent::StreamEnded {
            why: loopcast_proto::server::StreamEnd::Done,
            ..
        }
    )));
    assert_eq!(lan.server().unicast_clients(), 0);
}

#[test]
fn a_unicast_stream_losing_packets_is_repaired_by_parity_or_by_copies() {
    // No multicast: the receiver takes a stream, and loses every 25th DATA or
    // PARITY datagram of it. A stream has one receiver: auto asks for copies.
    for repair in [RepairKind::Parity, RepairKind::Copies, RepairKind::Auto] {
        let mut lan = Lan::new(one_file(1_000_000), |_| {});
        let node = lan.add_node(
            |c| {
                c.server = Some(SERVER);
                c.repair = repair;
            },
            false,
        );
        lan.nodes[node].lose_every = 25;
        let name = lan.files[0].manifest.name.clone();
        assert!(
            lan.run_until(Duration::from_secs(20), |l| l.delivered(node, &name)),
            "{repair:?}"
        );
        assert!(lan.body_matches(node, 0), "{repair:?}");
        let r = &lan.nodes[node].session.receptions()[0];
        let s = r.receiver().stats();
        assert!(r.stream_server().is_some(), "{repair:?}");
        match repair {
            RepairKind::Parity => assert!(s.rebuilt > 10 && s.repairs < s.rebuilt, "{s:?}"),
            RepairKind::Copies | RepairKind::Auto => {
                assert!(s.repairs > 10 && s.rebuilt == 0, "{s:?}")
            }
        }
    }
}

#[test]
fn a_receiver_whose_multicast_stops_mid_transfer_falls_back_to_unicast() {
    let mut lan = Lan::new(one_file(2_000_000), |_| {});
    let node = lan.add_node(|_| {}, true);
    lan.run(Duration::from_millis(150));
    assert!(lan.held(node) > 0);
    lan.nodes[node].multicast = false;
    let name = lan.files[0].manifest.name.clone();
    assert!(lan.run_until(Duration::from_secs(10), |l| l.delivered(node, &name)));
    assert!(lan.body_matches(node, 0));
    let fell_back = lan.nodes[node].events.iter().any(|e| {
        matches!(
            e,
            ClientEvent::FellBack {
                why: loopcast_proto::client::Fallback::SyncTimeout(_),
                server: SERVER,
                ..
            }
        )
    });
    assert!(fell_back, "{:?}", lan.nodes[node].events);
}

#[test]
fn an_on_demand_file_starts_when_asked_and_stops_when_nobody_reports() {
    let mut lan = Lan::new(one_file(300_000), |c| c.on_demand = true);
    lan.run(Duration::from_millis(700));
    assert!(!lan.server().is_active(0), "nobody asked yet");
    let node = lan.add_node(|_| {}, true);
    let name = lan.files[0].manifest.name.clone();
    assert!(lan.run_until(Duration::from_secs(5), |l| l.delivered(node, &name)));
    assert!(lan.body_matches(node, 0));
    assert!(
        lan.server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::ChannelsStarted { .. }))
    );
    // Delivered: no more reports; after --idle (3 s) the channels stop.
    assert!(lan.server().is_active(0));
    lan.run(Duration::from_millis(3200));
    assert!(!lan.server().is_active(0));
    assert!(
        lan.server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::ChannelsStopped { file: 0 }))
    );
}

#[test]
fn a_wrong_key_ends_the_session_after_its_grace_and_stores_nothing() {
    let mut lan = Lan::new(one_file(100_000), |_| {});
    let node = lan.add_node(|c| c.key = MasterKey::from_bytes([9; 32]), true);
    let failed = |lan: &Lan| {
        lan.nodes[node].events.iter().any(|e| {
            matches!(
                e,
                ClientEvent::Failed(loopcast_proto::client::ClientError::WrongKey { .. })
            )
        })
    };
    let start = lan.now;
    assert!(lan.run_until(Duration::from_secs(6), failed));
    let took = lan.now - start;
    assert!(
        took >= loopcast_proto::client::WRONG_KEY_GRACE && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(lan.nodes[node].disk.is_empty(), "nothing stored");
}

#[test]
fn listings_without_the_key_are_dropped_before_anything_is_followed() {
    // T1, T16 without the key: not one reception, not one refused name.
    let mut lan = Lan::new(one_file(300_000), |_| {});
    let node = lan.add_node(|_| {}, true);
    let stranger = MasterKey::from_bytes([99; 32]);
    lan.node_datagram(
        node,
        ROGUE,
        &rogue_listing(&stranger, vec![rogue_entry("../evil", 1)]),
    );
    let entries = (0..12)
        .map(|i| rogue_entry(&format!("f{i}"), 1000 + i))
        .collect();
    lan.node_datagram(node, ROGUE, &rogue_listing(&stranger, entries));
    assert_eq!(lan.nodes[node].session.receptions().len(), 0);
    assert_eq!(lan.nodes[node].session.refused_entries(), 0);
    assert_eq!(lan.nodes[node].session.unauthenticated(), 2);
    let name = lan.files[0].manifest.name.clone();
    assert!(lan.run_until(Duration::from_secs(3), |l| l.delivered(node, &name)));
}

#[test]
fn hostile_listings_of_a_key_holder_are_skipped_bounded_and_never_fatal() {
    let mut lan = Lan::new(one_file(300_000), |_| {});
    let node = lan.add_node(|_| {}, true);
    let key = lan.key.clone();
    // T1: an unsafe name is skipped and told once, however often it comes.
    for _ in 0..3 {
        lan.node_datagram(
            node,
            ROGUE,
            &rogue_listing(&key, vec![rogue_entry("../evil", 1)]),
        );
    }
    // An empty listing completes nothing.
    lan.node_datagram(node, ROGUE, &rogue_listing(&key, Vec::new()));
    assert!(!lan.nodes[node].session.is_finished());
    // T16: hundreds of entries make at most MAX_ACTIVE_RECEPTIONS receptions.
    for part in 0..8u64 {
        let entries = (0..100)
            .map(|i| rogue_entry(&format!("f{part}-{i}"), 1000 + part * 100 + i))
            .take(12)
            .collect();
        lan.node_datagram(node, ROGUE, &rogue_listing(&key, entries));
    }
    let receptions = lan.nodes[node].session.receptions().len();
    assert_eq!(receptions, loopcast_proto::client::MAX_ACTIVE_RECEPTIONS);
    let events = &lan.nodes[node].events;
    let refused = events
        .iter()
        .filter(|e| matches!(e, ClientEvent::EntryRefused { .. }))
        .count();
    assert_eq!(refused, 1, "{events:?}");
    assert_eq!(lan.nodes[node].session.refused_entries(), 3);
    assert!(!events.iter().any(|e| matches!(e, ClientEvent::Failed(_))));
}

#[test]
fn a_forged_manifest_of_another_key_does_not_end_a_reception() {
    let mut lan = Lan::new(one_file(300_000), |_| {});
    let node = lan.add_node(|_| {}, true);
    // Wait for the listing, then feed the channel a manifest of the real archive id
    // sealed with another key, before the real one comes.
    let joined = |lan: &Lan| !lan.nodes[node].joined.is_empty();
    assert!(lan.run_until(Duration::from_secs(1), joined));
    let other = MasterKey::from_bytes([66; 32]);
    let mut forged = lan.files[0].manifest.clone();
    forged.key_fingerprint = other.fingerprint();
    let forged = loopcast_proto::wire::encode_manifest(
        &other.file_key(forged.archive_id).session_mac_key(0xa11ce),
        0xa11ce,
        &forged.encode(&other.file_key(forged.archive_id)),
    );
    let origin = ClientOrigin::Channel {
        reception: 0,
        channel: 0,
    };
    for _ in 0..20 {
        lan.node_datagram(node, origin, &forged);
    }
    let name = lan.files[0].manifest.name.clone();
    assert!(lan.run_until(Duration::from_secs(5), |l| l.delivered(node, &name)));
    assert!(lan.body_matches(node, 0));
    assert!(
        !lan.nodes[node]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Failed(_)))
    );
}

#[test]
fn a_forged_announce_flapping_the_archive_or_session_does_not_move_a_reception() {
    // T7: ANNOUNCEs from the server's own address, naming the file with other
    // archive ids under its real session and under a made-up one, 20 times a second.
    let mut lan = Lan::new(one_file(1_000_000), |_| {});
    let node = lan.add_node(|_| {}, true);
    let name = lan.files[0].manifest.name.clone();
    let server = ClientOrigin::Directory {
        source: SERVER.ip(),
    };
    let mut flap = 0u64;
    let done = loop {
        if lan.run_until(Duration::from_millis(50), |l| l.delivered(node, &name)) {
            break true;
        }
        if flap > 200 {
            break false;
        }
        flap += 1;
        let mut entry = rogue_entry(&name, 0xf1a9 + flap);
        entry.channels = vec![ChannelInfo {
            group: channel_of(0).group,
            control_port: channel_of(0).control_port,
            rate_bps: channel_of(0).rate_bps,
        }];
        let session = if flap.is_multiple_of(2) {
            0xa11ce
        } else {
            0xf0e
        };
        // Tagged with the site key: the switch rule holds even against a key holder.
        let forged = loopcast_proto::wire::encode_announce(
            &lan.key.directory_mac_key(),
            session,
            &loopcast_proto::wire::Announce {
                part: 0,
                parts: 1,
                unicast_port: SERVER.port(),
                key_fingerprint: lan.key.fingerprint(),
                entries: vec![entry],
            },
        );
        lan.node_datagram(node, server, &forged);
    };
    assert!(done, "never completed under {flap} forged listings");
    assert!(lan.body_matches(node, 0));
    let switched = lan.nodes[node]
        .events
        .iter()
        .any(|e| matches!(e, ClientEvent::Following { switched: true, .. }));
    assert!(!switched, "{:?}", lan.nodes[node].events);
    assert!(flap >= 2, "the forgeries went out during the transfer");
}
