//! The server among other servers and directors: heartbeats to directors, and
//! moving off channel addresses another server on the group uses.

use super::*;

#[test]
fn a_server_heartbeats_each_second_to_every_director_which_then_names_it() {
    let directors: Vec<SocketAddr> = vec![addr(7790), addr(7791)];
    let mut h = harness(|c| {
        c.directors = Some(DirectorLink {
            started_ms: 1_000,
            addresses: directors.clone(),
            key: site_key().director_mac_key(),
            capacity_bps: 160_000_000,
        })
    });
    let start = h.t;
    let mut director = crate::director::Director::new(
        site_key().director_mac_key(),
        site_key().directory_mac_key(),
        start,
    );
    // The driver's unicast socket is the server's address as the director sees it.
    let server = SocketAddr::new(Ipv4Addr::new(10, 0, 0, 1).into(), 7000);
    let mut beats = 0;
    for _ in 0..35 {
        for (socket, to, datagrams) in h.run(Duration::from_millis(100)) {
            if !directors.contains(&to) {
                continue;
            }
            assert_eq!(socket, Socket::Unicast);
            for d in &datagrams {
                if let Ok(Datagram {
                    packet: Packet::Heartbeat(beat),
                    ..
                }) = wire::decode(d)
                {
                    beats += 1;
                    assert_eq!(
                        (beat.capacity_bps, beat.sending_bps),
                        (160_000_000, 80_000_000)
                    );
                    assert_eq!(beat.unicast_max_clients, 2);
                }
                if to == directors[0] {
                    director.handle_datagram(h.t, server, d);
                }
            }
        }
        // Its HEARDs (with the cookie that proves the server's address) back.
        while let Some((to, heard)) = director.poll_transmit() {
            assert_eq!(to, server);
            h.server
                .handle_datagram(h.t, Origin::Unicast(directors[0]), &heard);
        }
    }
    // At 0, 1, 2 and 3 s to each, and once more at once when the first
    // director's first cookie came.
    assert_eq!(beats, 2 * 5);
    let record = director.servers().next().expect("registered");
    assert_eq!(record.session_id, SESSION);
    assert_eq!(
        record.files().map(|e| e.name.clone()).collect::<Vec<_>>(),
        vec![h.name.clone()]
    );
    assert_eq!(crate::director::load_fraction(&record.load), 0.5);
}

/// Another server's listing (session `session`) with one file on `group`.
fn listing_of(signer: &MasterKey, session: u32, group: &str) -> Vec<u8> {
    let announce = wire::Announce {
        part: 0,
        parts: 1,
        unicast_port: 7009,
        key_fingerprint: signer.fingerprint(),
        entries: vec![wire::AnnounceEntry {
            archive_id: 77,
            original_size: 1,
            body_len: 100,
            content_digest: [7; 32],
            flags: 0,
            name: "other.bin".into(),
            channels: vec![ChannelInfo {
                group: group.parse().unwrap(),
                control_port: 17001,
                rate_bps: 1_000_000,
            }],
        }],
    };
    wire::encode_announce(&signer.directory_mac_key(), session, &announce)
}

fn taken(h: &mut Harness) -> Vec<(u32, u32)> {
    std::iter::from_fn(|| h.server.poll_event())
        .filter_map(|e| match e {
            ServerEvent::ChannelsTaken {
                by_session,
                first_channel,
            } => Some((by_session, first_channel)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_server_new_on_the_group_moves_off_channels_another_server_uses() {
    let other = addr(7009);
    // Our one channel is number 1 (239.1.1.2:7001 on 239.1.1.1:7000).
    let mut h = harness(|_| {});
    let t = h.t + Duration::from_millis(300);
    // A stranger's listing, our own, and another server's on other channels move nothing.
    let stranger = MasterKey::from_bytes([3; 32]);
    h.server.handle_datagram(
        t,
        Origin::Directory(other),
        &listing_of(&stranger, 9, "239.1.1.2:7001"),
    );
    h.server.handle_datagram(
        t,
        Origin::Directory(other),
        &listing_of(&site_key(), SESSION, "239.1.1.2:7001"),
    );
    h.server.handle_datagram(
        t,
        Origin::Directory(other),
        &listing_of(&site_key(), 9, "239.1.1.5:7004"),
    );
    assert_eq!(taken(&mut h), vec![]);
    // Another server's listing using our channel, heard in our first 750 ms: move
    // to a number neither uses.
    h.server.handle_datagram(
        t,
        Origin::Directory(other),
        &listing_of(&site_key(), 8, "239.1.1.2:7001"),
    );
    let moved = taken(&mut h);
    assert_eq!(moved.len(), 1, "{moved:?}");
    let (by, first) = moved[0];
    assert_eq!(by, 8);
    assert!(
        ![1, 4].contains(&first) && first < MAX_CHANNEL_NUMBER,
        "{first}"
    );
    // It asks once.
    h.server.handle_datagram(
        t,
        Origin::Directory(other),
        &listing_of(&site_key(), 8, "239.1.1.2:7001"),
    );
    assert_eq!(taken(&mut h), vec![]);

    // An established server (past 750 ms) stays, even when heard by its unicast
    // port (joined to the group when it shares the group's port).
    let mut h = harness(|_| {});
    let late = h.t + HEAR_EVERY_SERVER;
    h.server.handle_datagram(
        late,
        Origin::Unicast(other),
        &listing_of(&site_key(), 8, "239.1.1.2:7001"),
    );
    assert_eq!(taken(&mut h), vec![]);
    let mut h = harness(|_| {});
    let early = h.t + Duration::from_millis(10);
    h.server.handle_datagram(
        early,
        Origin::Unicast(other),
        &listing_of(&site_key(), 8, "239.1.1.2:7001"),
    );
    assert_eq!(taken(&mut h).len(), 1);
}

#[test]
fn channel_numbers_are_read_back_from_group_and_port() {
    let dir: SocketAddr = "239.1.1.1:7000".parse().unwrap();
    assert_eq!(
        channel_number(dir, "239.1.1.2:7001".parse().unwrap()),
        Some(1)
    );
    assert_eq!(
        channel_number(dir, "239.1.2.1:7256".parse().unwrap()),
        Some(256)
    );
    assert_eq!(channel_number(dir, "239.1.1.2:7002".parse().unwrap()), None);
    assert_eq!(channel_number(dir, "239.1.1.1:7000".parse().unwrap()), None);
    assert_eq!(channel_number(dir, "239.1.1.0:6999".parse().unwrap()), None);
    let dir6: SocketAddr = "[ff15::77]:7700".parse().unwrap();
    let channel = |s: &str| channel_number(dir6, s.parse().unwrap());
    assert_eq!(channel("[ff15::78]:7701"), Some(1));
    assert_eq!(channel("[ff15::177]:7956"), Some(256));
    assert_eq!(channel("[ff15::78]:7702"), None);
    assert_eq!(channel("239.1.1.2:7701"), None);
    assert_eq!(
        channel_number(dir, "[ff15::78]:7001".parse().unwrap()),
        None
    );
}

#[test]
fn heartbeats_tell_the_receivers_goodput_per_subnet_and_the_cpu_used() {
    let director = addr(7790);
    let mut h = harness(|c| {
        c.directors = Some(DirectorLink {
            started_ms: 1_000,
            addresses: vec![director],
            key: site_key().director_mac_key(),
            capacity_bps: 0,
        })
    });
    h.server.set_cpu_load(420);
    let echo = h.status_echo();
    let archive_id = h.server.manifest(0).archive_id;
    let payload = h.server.manifest(0).payload_size as u64;
    // Two receivers in 10.0.0/24 getting 1000 and 3000 packets a second, one in 10.0.9/24.
    for (last, id, arrived) in [(5, 1, 1000), (6, 2, 3000), (0, 3, 500)] {
        let ip = if last == 0 {
            Ipv4Addr::new(10, 0, 9, 1)
        } else {
            Ipv4Addr::new(10, 0, 0, last)
        };
        let report = Report {
            archive_id,
            receiver_id: id,
            arrived,
            interval_ms: 1000,
            packet_count: 150,
            echo_time_us: echo,
            ..Report::default()
        };
        let bytes = wire::encode_report(&session_mac(archive_id, SESSION), SESSION, &report);
        h.server.handle_datagram(
            h.t,
            Origin::Unicast(SocketAddr::new(ip.into(), 6000)),
            &bytes,
        );
    }
    let beat = (h.run(Duration::from_millis(1100)).into_iter())
        .filter(|(_, to, _)| *to == director)
        .flat_map(|(_, _, datagrams)| datagrams)
        .filter_map(|d| match wire::decode(&d).map(|d| d.packet) {
            Ok(Packet::Heartbeat(beat)) => Some(beat),
            _ => None,
        })
        .next_back()
        .expect("a heartbeat");
    assert_eq!(beat.cpu_permille, 420);
    let kbps = |packets: u64| (packets * payload * 8 / 1000) as u32;
    assert_eq!(
        beat.subnets,
        vec![
            wire::SubnetThroughput {
                subnet: wire::Subnet::V4([10, 0, 0]),
                receivers: 2,
                goodput_kbps: kbps(2000)
            },
            wire::SubnetThroughput {
                subnet: wire::Subnet::V4([10, 0, 9]),
                receivers: 1,
                goodput_kbps: kbps(500)
            },
        ]
    );
}
