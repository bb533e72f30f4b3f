//! A key holder filling the server table (T44): heartbeats from spoofed
//! sources make no server, one subnet makes at most its share, and a server's
//! listing is kept to `MAX_LISTING_PARTS` parts.

use super::*;

#[test]
fn spoofed_heartbeats_make_no_server_and_one_subnet_makes_at_most_its_share() {
    let mut site = Site::new();
    let k = key();
    // 1000 sessions from 1000 spoofed sources, no cookie: no server, and each
    // answered with less than it sent.
    for n in 0..1000u32 {
        let from = SocketAddr::new(Ipv4Addr::from(0x0a63_0000 + n).into(), 7700);
        let bytes = wire::encode_heartbeat(&k.director_mac_key(), n, &heartbeat(1, 0, 16));
        site.director.handle_datagram(site.at(10), from, &bytes);
        while let Some((_, heard)) = site.director.poll_transmit() {
            assert!(heard.len() < bytes.len());
        }
    }
    assert_eq!(site.director.servers().count(), 0);
    assert_eq!(site.director.stats().unproven, 1000);
    // One subnet, proving each of its addresses: at most its share.
    for n in 0..MAX_SERVERS_PER_SOURCE as u16 + 10 {
        let from = addr(60, 8000 + n);
        site.beat(
            20,
            from,
            5000 + u32::from(n),
            heartbeat(1, 0, 16),
            &[("f", 5)],
        );
    }
    assert_eq!(site.director.servers().count(), MAX_SERVERS_PER_SOURCE);
    assert_eq!(site.director.stats().over_capacity, 10);
}

#[test]
fn a_listing_of_255_parts_is_kept_to_its_first_parts() {
    let mut site = Site::new();
    let from = addr(1, 7700);
    let h = Heartbeat {
        listing_parts: 255,
        ..heartbeat(1, 0, 16)
    };
    site.heartbeat_proven(0, from, 1, &h);
    for part in 0..255u8 {
        let announce = Announce {
            part,
            parts: 255,
            unicast_port: 7700,
            key_fingerprint: key().fingerprint(),
            entries: vec![entry(&format!("f{part}"), u64::from(part) + 1)],
        };
        let bytes = wire::encode_announce(&key().directory_mac_key(), 1, &announce);
        site.director.handle_datagram(site.at(1), from, &bytes);
    }
    let server = site.director.servers().next().unwrap();
    assert_eq!(
        server.files().count(),
        64,
        "MAX_LISTING_PARTS of one entry each"
    );
}
