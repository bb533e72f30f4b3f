//! The director on a virtual clock: registration, liveness, replays, forgeries,
//! ranking and spreading a burst of look-ups.

use super::*;
use crate::MasterKey;
use crate::wire::{Announce, ChannelInfo, Direction, LOOKUP_PADDING, RedirectReason};
use std::net::Ipv4Addr;

mod amplification;
mod pinning;
mod replays;
mod servers;

fn key() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

struct Site {
    director: Director,
    start: Instant,
    /// The nonce of the next look-up (each question its own, as receivers do).
    nonce: u64,
    /// The last cookie the director gave each server address (T44).
    cookies: HashMap<SocketAddr, [u8; wire::COOKIE_LEN]>,
}

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(10, 0, 0, last).into(), port)
}

fn heartbeat(sequence: u64, clients: u16, max_clients: u16) -> Heartbeat {
    Heartbeat {
        sequence,
        started_ms: 1_000,
        unicast_port: 7700,
        listing_parts: 1,
        capacity_bps: 0,
        sending_bps: 0,
        unicast_clients: clients,
        unicast_max_clients: max_clients,
        receivers: 0,
        cpu_permille: 0,
        cookie: [0; wire::COOKIE_LEN],
        subnets: Vec::new(),
    }
}

fn entry(name: &str, archive_id: u64) -> AnnounceEntry {
    AnnounceEntry {
        archive_id,
        original_size: 10,
        body_len: 100,
        content_digest: [7; 32],
        flags: 0,
        name: name.into(),
        channels: vec![ChannelInfo {
            group: SocketAddr::new(Ipv4Addr::new(239, 1, 1, 1).into(), 7701),
            control_port: 17701,
            rate_bps: 1_000_000,
        }],
    }
}

impl Site {
    fn new() -> Self {
        let start = Instant::now();
        let k = key();
        Self {
            director: Director::new(k.director_mac_key(), k.directory_mac_key(), start),
            start,
            nonce: 42,
            cookies: HashMap::new(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// A server's heartbeat: with its cookie, or, if the director did not
    /// know it, again with the one the HEARD gave (as a server does).
    fn heartbeat_proven(&mut self, ms: u64, from: SocketAddr, session: u32, h: &Heartbeat) {
        let unproven = self.director.stats().unproven;
        self.heartbeat_with_cookie(self.at(ms), from, session, h);
        if self.director.stats().unproven > unproven {
            self.heartbeat_with_cookie(self.at(ms), from, session, h);
        }
    }

    /// Sends `h` from `from` with the last cookie the director gave that
    /// address, and keeps the one its HEARD gives.
    fn heartbeat_with_cookie(
        &mut self,
        now: Instant,
        from: SocketAddr,
        session: u32,
        h: &Heartbeat,
    ) {
        let mut h = h.clone();
        h.cookie = self.cookies.get(&from).copied().unwrap_or_default();
        let bytes = wire::encode_heartbeat(&key().director_mac_key(), session, &h);
        self.director.handle_datagram(now, from, &bytes);
        // A fresh heartbeat is answered with HEARD, shorter than it.
        while let Some((to, heard)) = self.director.poll_transmit() {
            assert_eq!(to, from);
            assert!(heard.len() < bytes.len());
            let Packet::Heard(heard) = wire::decode(&heard).unwrap().packet else {
                panic!("not a HEARD");
            };
            assert_eq!(heard.echo, h.sequence);
            self.cookies.insert(from, heard.cookie);
        }
    }

    /// A server's heartbeat and listing, as `serve --director` sends them.
    fn beat(
        &mut self,
        ms: u64,
        from: SocketAddr,
        session: u32,
        h: Heartbeat,
        files: &[(&str, u64)],
    ) {
        let now = self.at(ms);
        let k = key();
        self.heartbeat_proven(ms, from, session, &h);
        let announce = Announce {
            part: 0,
            parts: 1,
            unicast_port: 7700,
            key_fingerprint: k.fingerprint(),
            entries: files.iter().map(|(n, a)| entry(n, *a)).collect(),
        };
        let listing = wire::encode_announce(&k.directory_mac_key(), session, &announce);
        self.director.handle_datagram(now, from, &listing);
    }

    fn lookup(&mut self, ms: u64, from: SocketAddr, name: &str) -> Directions {
        let nonce = self.nonce;
        self.nonce += 1;
        let question = wire::encode_lookup(
            &key().director_mac_key(),
            &Lookup {
                archive_id: 0,
                receiver_id: 1,
                nonce,
                name: name.into(),
            },
        );
        self.director.handle_datagram(self.at(ms), from, &question);
        let (to, answer) = self.director.poll_transmit().expect("an answer");
        assert_eq!(to, from);
        assert!(answer.len() <= question.len());
        assert!(key().director_mac_key().verifies(&answer));
        match wire::decode(&answer).unwrap().packet {
            Packet::Directions(d) => {
                assert_eq!(d.nonce, nonce);
                d
            }
            other => panic!("not directions: {other:?}"),
        }
    }
}

fn servers(d: &Directions) -> Vec<SocketAddr> {
    d.servers.iter().map(|s| s.server).collect()
}

#[test]
fn a_server_heard_is_named_until_it_misses_three_heartbeats() {
    let mut site = Site::new();
    let a = addr(1, 7700);
    assert_eq!(site.lookup(0, addr(9, 5000), "f").found, Found::NotYetKnown);
    for s in 0..=3 {
        site.beat(s * 1000, a, 11, heartbeat(s * 1000 + 1, 0, 4), &[("f", 5)]);
    }
    let d = site.lookup(3500, addr(9, 5000), "f");
    assert_eq!(
        (d.found, d.archive_id, servers(&d)),
        (Found::Carried, 5, vec![a])
    );
    assert_eq!(
        site.lookup(3500, addr(9, 5000), "g").found,
        Found::NotCarried
    );
    assert_eq!(site.director.poll_timeout(), Some(site.at(6000)));
    site.director.handle_timeout(site.at(5999));
    assert_eq!(site.director.servers().count(), 1);
    site.director.handle_timeout(site.at(6000));
    assert_eq!(site.director.servers().count(), 0);
    assert_eq!(
        site.lookup(6000, addr(9, 5000), "f").found,
        Found::NotCarried
    );
    let events: Vec<_> = std::iter::from_fn(|| site.director.poll_event())
        .filter(|e| !matches!(e, DirectorEvent::Answered { .. }))
        .collect();
    assert_eq!(
        events,
        vec![
            DirectorEvent::ServerUp {
                session_id: 11,
                address: a
            },
            DirectorEvent::ServerDown {
                session_id: 11,
                address: a
            },
        ]
    );
}

#[test]
fn replayed_and_forged_heartbeats_keep_no_server_alive() {
    let mut site = Site::new();
    let a = addr(1, 7700);
    let h = heartbeat(500, 0, 4);
    site.beat(0, a, 11, h.clone(), &[("f", 5)]);
    // The same heartbeat again (a stranger replaying what it heard) is stale.
    let bytes = wire::encode_heartbeat(&key().director_mac_key(), 11, &h);
    for ms in [1000, 2000, 2900] {
        site.director
            .handle_datagram(site.at(ms), addr(66, 7700), &bytes);
    }
    assert_eq!(site.director.stats().stale, 3);
    assert_eq!(site.director.servers().next().unwrap().address, a);
    // A heartbeat under another key registers nothing.
    let stranger = MasterKey::from_bytes([8; 32]);
    let forged = wire::encode_heartbeat(&stranger.director_mac_key(), 12, &heartbeat(1, 0, 4));
    site.director
        .handle_datagram(site.at(2950), addr(66, 7700), &forged);
    assert_eq!(site.director.stats().unauthenticated, 1);
    site.director.handle_timeout(site.at(3000));
    assert_eq!(site.director.servers().count(), 0);
}

#[test]
fn a_restarted_server_replaces_its_old_session() {
    let mut site = Site::new();
    let a = addr(1, 7700);
    site.beat(0, a, 11, heartbeat(1, 0, 4), &[("f", 5)]);
    let restarted = Heartbeat {
        started_ms: 2_000,
        ..heartbeat(1, 0, 4)
    };
    site.beat(500, a, 12, restarted, &[("f", 6)]);
    let d = site.lookup(2500, addr(9, 5000), "f");
    assert_eq!((d.archive_id, d.servers[0].session_id), (6, 12));
    assert_eq!(site.director.servers().count(), 1);
}

#[test]
fn the_least_loaded_server_comes_first_and_versions_are_never_mixed() {
    let mut site = Site::new();
    let (a, b, c) = (addr(1, 7700), addr(2, 7700), addr(3, 7700));
    site.beat(0, a, 11, heartbeat(1, 3, 4), &[("f", 5)]);
    site.beat(0, b, 12, heartbeat(1, 1, 4), &[("f", 5)]);
    site.beat(0, c, 13, heartbeat(1, 2, 4), &[("f", 7)]);
    let d = site.lookup(
        2000,
        SocketAddr::new(Ipv4Addr::new(192, 168, 0, 9).into(), 1),
        "f",
    );
    assert_eq!((d.archive_id, servers(&d)), (5, vec![b, a]));
    assert_eq!(
        d.servers[0],
        Direction {
            server: b,
            session_id: 12,
            load_permille: 250
        }
    );
    // In the receiver's own /24 a busier server wins (the bonus is a quarter).
    let near = SocketAddr::new(Ipv4Addr::new(192, 168, 0, 4).into(), 7700);
    site.beat(2000, near, 14, heartbeat(1, 3, 8), &[("f", 5)]);
    let d = site.lookup(
        2000,
        SocketAddr::new(Ipv4Addr::new(192, 168, 0, 9).into(), 1),
        "f",
    );
    assert_eq!(servers(&d), vec![near, b, a]);
    let d = site.lookup(2000, addr(9, 5000), "f");
    assert_eq!(servers(&d)[0], b);
}

#[test]
fn a_burst_of_lookups_is_spread_over_two_servers_at_capacity_three() {
    let mut site = Site::new();
    let (a, b) = (addr(1, 7700), addr(2, 7700));
    site.beat(0, a, 11, heartbeat(1, 0, 3), &[("f", 5)]);
    site.beat(0, b, 12, heartbeat(1, 0, 3), &[("f", 5)]);
    let primaries: Vec<SocketAddr> = (0..6)
        .map(|i| site.lookup(2000 + i, addr(50 + i as u8, 5000), "f").servers[0].server)
        .collect();
    assert_eq!(primaries.iter().filter(|p| **p == a).count(), 3);
    assert_eq!(primaries.iter().filter(|p| **p == b).count(), 3);
}

#[test]
fn a_lookup_without_its_padding_or_under_another_key_gets_no_answer() {
    let mut site = Site::new();
    site.beat(0, addr(1, 7700), 11, heartbeat(1, 0, 4), &[("f", 5)]);
    let lookup = Lookup {
        archive_id: 0,
        receiver_id: 1,
        nonce: 1,
        name: "f".into(),
    };
    let mut short = wire::encode_lookup(&key().director_mac_key(), &lookup);
    short.truncate(short.len() - 16 - LOOKUP_PADDING);
    key().director_mac_key().seal(&mut short);
    site.director
        .handle_datagram(site.at(2000), addr(9, 1), &short);
    let stranger = MasterKey::from_bytes([8; 32]);
    let forged = wire::encode_lookup(&stranger.director_mac_key(), &lookup);
    site.director
        .handle_datagram(site.at(2000), addr(9, 1), &forged);
    assert!(site.director.poll_transmit().is_none());
    assert_eq!(site.director.stats().unauthenticated, 1);
    assert_eq!(site.director.stats().ignored, 1);
}

#[test]
fn a_fresh_heartbeat_is_heard_a_replay_is_not_and_strangers_are_told_once_in_ten_seconds() {
    let mut site = Site::new();
    let k = key();
    let server = addr(1, 1);
    let mut h = heartbeat(5, 0, 16);
    // Unknown: answered with a cookie for its address, and no record (T44).
    let bytes = wire::encode_heartbeat(&k.director_mac_key(), 7, &h);
    site.director.handle_datagram(site.at(0), server, &bytes);
    let (to, heard) = site.director.poll_transmit().expect("HEARD");
    assert_eq!(to, server);
    assert!(k.director_mac_key().verifies(&heard));
    let d = wire::decode(&heard).unwrap();
    let Packet::Heard(heard) = d.packet else {
        panic!("not a HEARD")
    };
    assert_eq!((d.session_id, heard.echo), (7, h.sequence));
    assert_eq!(site.director.servers().count(), 0);
    assert_eq!(site.director.stats().unproven, 1);
    // With it: taken, and heard again.
    h.cookie = heard.cookie;
    let bytes = wire::encode_heartbeat(&k.director_mac_key(), 7, &h);
    site.director.handle_datagram(site.at(10), server, &bytes);
    assert!(site.director.poll_transmit().is_some());
    assert_eq!(site.director.servers().count(), 1);
    site.director.handle_datagram(site.at(500), server, &bytes);
    assert!(
        site.director.poll_transmit().is_none(),
        "a replay is not answered"
    );
    // Another key's heartbeats: counted each, told once per 10 s, never answered.
    let stranger = MasterKey::from_bytes([8; 32]);
    let forged = wire::encode_heartbeat(&stranger.director_mac_key(), 9, &heartbeat(6, 0, 16));
    for ms in [600, 700, 800] {
        site.director
            .handle_datagram(site.at(ms), addr(2, 2), &forged);
    }
    assert!(site.director.poll_transmit().is_none());
    assert_eq!(site.director.stats().unauthenticated, 3);
    let told: Vec<_> = std::iter::from_fn(|| site.director.poll_event())
        .filter(|e| matches!(e, DirectorEvent::Unauthenticated(_)))
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
}

proptest::proptest! {
    #[test]
    fn any_datagrams_never_panic_and_no_answer_outgrows_its_question(
        inputs in proptest::collection::vec(
            (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0u8..4, proptest::prelude::any::<u32>()),
            1..60,
        )
    ) {
        let mut site = Site::new();
        let k = key();
        for (i, (bytes, kind, n)) in inputs.into_iter().enumerate() {
            // Raw bytes, or a key holder's heartbeat, lookup or listing with random fields.
            let datagram = match kind {
                0 => bytes,
                1 => wire::encode_heartbeat(&k.director_mac_key(), n % 7, &heartbeat(n as u64 % 5, n as u16, 3)),
                2 => wire::encode_lookup(&k.director_mac_key(), &Lookup {
                    archive_id: 0,
                    receiver_id: n,
                    nonce: n as u64,
                    name: String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).chars().take(40).collect(),
                }),
                _ => {
                    let mut d = wire::encode_announce(&k.directory_mac_key(), n % 7, &Announce {
                        part: 0, parts: 1, unicast_port: 1, key_fingerprint: k.fingerprint(),
                        entries: vec![entry("f", n as u64)],
                    });
                    if let Some(b) = bytes.first() { let at = *b as usize % d.len(); d[at] ^= 1; }
                    d
                }
            };
            let from = addr((n % 5) as u8, 7700);
            let len = datagram.len();
            site.director.handle_datagram(site.at(i as u64 * 300), from, &datagram);
            // Answers go to the asker, no longer than the question; REDIRECTs go
            // to receivers remembered, at most one per answer.
            while let Some((to, answer)) = site.director.poll_transmit() {
                if answer.get(3) != Some(&(wire::PacketType::Redirect as u8)) {
                    proptest::prop_assert_eq!(to, from);
                    proptest::prop_assert!(answer.len() <= len);
                }
            }
            let stats = site.director.stats();
            proptest::prop_assert!(stats.redirects <= stats.answered);
            proptest::prop_assert!(site.director.servers().count() <= MAX_SERVERS);
        }
    }
}

#[test]
fn lookups_are_remembered_per_receiver_and_file_for_ten_minutes() {
    let mut site = Site::new();
    let a = addr(1, 7700);
    site.beat(0, a, 11, heartbeat(1, 0, 4), &[("f", 5)]);
    site.lookup(2000, addr(9, 5000), "f");
    site.lookup(2100, addr(9, 5000), "f");
    site.lookup(2200, addr(9, 5000), "g");
    let mut seen: Vec<_> = site
        .director
        .receivers()
        .map(|r| (r.name.clone(), r.primary))
        .collect();
    seen.sort();
    assert_eq!(seen, vec![("f".into(), Some(a)), ("g".into(), None)]);
    site.director
        .handle_timeout(site.at(2100) + RECEIVER_MEMORY - Duration::from_millis(1));
    assert_eq!(site.director.receivers().count(), 2);
    // Pruned once a second: gone within a second of their ten minutes.
    let later = site.at(2200) + RECEIVER_MEMORY + HEARTBEAT_INTERVAL;
    site.director.handle_timeout(later);
    assert_eq!(site.director.receivers().count(), 0);
}

#[test]
fn throughput_to_the_receivers_subnet_and_cpu_weigh_in_the_ranking() {
    let mut site = Site::new();
    let (a, b) = (addr(1, 7700), addr(2, 7700));
    let far = SocketAddr::new(Ipv4Addr::new(192, 168, 7, 9).into(), 5000);
    let with = |sequence: u64, kbps: u32, cpu: u16| {
        let mut h = heartbeat(sequence, 1, 4);
        h.cpu_permille = cpu;
        h.subnets = vec![wire::SubnetThroughput {
            subnet: wire::Subnet::V4([192, 168, 7]),
            receivers: 3,
            goodput_kbps: kbps,
        }];
        h
    };
    // Equal load: the one whose receivers in 192.168.7/24 get more comes first.
    site.beat(0, a, 11, with(1, 20_000, 0), &[("f", 5)]);
    site.beat(0, b, 12, with(1, 80_000, 0), &[("f", 5)]);
    assert_eq!(servers(&site.lookup(2000, far, "f")), vec![b, a]);
    // Elsewhere the history says nothing: the lower session id wins the tie.
    site.beat(1000, a, 11, with(2, 20_000, 0), &[("f", 5)]);
    site.beat(1000, b, 12, with(2, 80_000, 0), &[("f", 5)]);
    assert_eq!(servers(&site.lookup(2000, addr(9, 1), "f"))[0], a);
    // A server using most of a core is busier than its streams say.
    site.beat(2000, b, 12, with(3, 80_000, 900), &[("f", 5)]);
    site.beat(2000, a, 11, with(3, 20_000, 0), &[("f", 5)]);
    assert_eq!(servers(&site.lookup(2100, far, "f")), vec![a, b]);
}

/// The REDIRECTs the director sends at `ms`: (receiver, reason, nonce, servers).
fn redirects(site: &mut Site, ms: u64) -> Vec<(SocketAddr, RedirectReason, u64, Vec<SocketAddr>)> {
    site.director.handle_timeout(site.at(ms));
    std::iter::from_fn(|| site.director.poll_transmit())
        .map(|(to, bytes)| {
            assert!(key().director_mac_key().verifies(&bytes));
            match wire::decode(&bytes).unwrap().packet {
                Packet::Redirect(r) => (to, r.reason, r.directions.nonce, servers(&r.directions)),
                other => panic!("not a redirect: {other:?}"),
            }
        })
        .collect()
}

#[test]
fn receivers_of_a_server_gone_are_moved_to_the_alternate_once() {
    let mut site = Site::new();
    let (a, b) = (addr(1, 7700), addr(2, 7700));
    let (r1, r2) = (addr(50, 5000), addr(51, 5000));
    site.beat(0, a, 11, heartbeat(1, 0, 4), &[("f", 5)]);
    site.beat(500, b, 12, heartbeat(1, 2, 4), &[("f", 5)]);
    site.beat(1500, b, 12, heartbeat(2, 2, 4), &[("f", 5)]);
    assert_eq!(servers(&site.lookup(2000, r1, "f"))[0], a);
    assert_eq!(servers(&site.lookup(2000, r2, "f"))[0], a);
    site.beat(2500, b, 12, heartbeat(3, 2, 4), &[("f", 5)]);
    assert_eq!(redirects(&mut site, 2900), vec![]);
    // a last heartbeat at 0: down at 3000; both of its receivers go to b.
    let moved = redirects(&mut site, 3000);
    assert_eq!(
        moved,
        vec![
            (r1, RedirectReason::ServerDown, 42, vec![b]),
            (r2, RedirectReason::ServerDown, 43, vec![b])
        ]
    );
    assert_eq!(
        redirects(&mut site, 4000),
        vec![],
        "each moved once per look-up"
    );
    assert_eq!(site.director.stats().redirects, 2);
}

#[test]
fn an_overloaded_servers_excess_receivers_and_poorly_served_ones_are_moved() {
    let mut site = Site::new();
    let (a, b) = (addr(1, 7700), addr(2, 7700));
    let near = |last: u8| SocketAddr::new(Ipv4Addr::new(192, 168, 7, last).into(), 5000);
    site.beat(0, a, 11, heartbeat(1, 0, 4), &[("f", 5)]);
    site.beat(0, b, 12, heartbeat(1, 8, 9), &[("f", 5)]);
    // Three receivers sent to a (the least loaded) ...
    for i in 0..3 {
        assert_eq!(servers(&site.lookup(100, near(i), "f"))[0], a);
    }
    // ... which then has 5 streams of 4: one is moved to b.
    site.beat(1000, a, 11, heartbeat(2, 5, 4), &[("f", 5)]);
    site.beat(1000, b, 12, heartbeat(2, 8, 9), &[("f", 5)]);
    // (The director looks once a second.)
    let moved = redirects(&mut site, 2000);
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(
        (moved[0].1, moved[0].3.clone()),
        (RedirectReason::Overloaded, vec![b])
    );
    // a recovers, but b's receivers in 192.168.7/24 now get 3x what a's do there.
    let with = |sequence: u64, clients: u16, max: u16, kbps: u32| {
        let mut h = heartbeat(sequence, clients, max);
        h.subnets = vec![wire::SubnetThroughput {
            subnet: wire::Subnet::V4([192, 168, 7]),
            receivers: 2,
            goodput_kbps: kbps,
        }];
        h
    };
    site.beat(2500, a, 11, with(3, 2, 4, 10_000), &[("f", 5)]);
    site.beat(2500, b, 12, with(3, 8, 9, 30_000), &[("f", 5)]);
    let moved = redirects(&mut site, 3000);
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert!(
        moved
            .iter()
            .all(|m| m.1 == RedirectReason::Throughput && m.3 == vec![b])
    );
    // Twice as much is the threshold: at 1.5x nobody moves.
    let mut site = Site::new();
    site.beat(0, a, 11, with(1, 0, 4, 20_000), &[("f", 5)]);
    site.beat(0, b, 12, with(1, 0, 4, 30_000), &[("f", 5)]);
    let far = SocketAddr::new(Ipv4Addr::new(10, 9, 9, 9).into(), 5000);
    site.lookup(2000, far, "f");
    site.lookup(2000, near(1), "f");
    assert_eq!(redirects(&mut site, 3000).len(), 0);
}

#[test]
fn over_ipv6_a_server_in_the_receivers_slash_64_and_its_history_there_rank_first() {
    let mut site = Site::new();
    let v6 = |s: &str| s.parse::<SocketAddr>().unwrap();
    let (a, b) = (v6("[fd77::1]:7700"), v6("[fd78::1]:7700"));
    // Equal load, nothing heard of throughput: the server in the receiver's /64 first.
    site.beat(0, a, 11, heartbeat(1, 1, 4), &[("f", 5)]);
    site.beat(0, b, 12, heartbeat(1, 1, 4), &[("f", 5)]);
    assert_eq!(
        servers(&site.lookup(100, v6("[fd78::9]:5000"), "f")),
        vec![b, a]
    );
    assert_eq!(
        servers(&site.lookup(200, v6("[fd77::9]:5000"), "f")),
        vec![a, b]
    );
    // A receiver in a third /64 is sent where its neighbours fare best.
    let mut with = heartbeat(2, 1, 4);
    with.subnets = vec![wire::SubnetThroughput {
        subnet: wire::subnet_of(v6("[fd79::5]:1").ip()),
        receivers: 3,
        goodput_kbps: 80_000,
    }];
    site.beat(1000, b, 12, with, &[("f", 5)]);
    site.beat(1000, a, 11, heartbeat(2, 1, 4), &[("f", 5)]);
    assert_eq!(
        servers(&site.lookup(1100, v6("[fd79::9]:5000"), "f")),
        vec![b, a]
    );
}
