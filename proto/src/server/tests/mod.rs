//! The server endpoint on a virtual clock: datagrams in, transmits and events out.

use super::*;
use crate::MasterKey;
use crate::sender::HEAR_EVERY_SERVER;
use crate::sim::Bodies;
use crate::wire::{Datagram, Packet, Report, Request};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::net::Ipv4Addr;

const SESSION: u32 = 0x5e55;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(10, 0, 0, 2).into(), port)
}

/// A server of one 200 kB file on one 80 Mbit/s channel, at virtual time `t`.
struct Harness {
    server: Endpoint,
    bodies: Bodies,
    buf: Vec<u8>,
    t: Instant,
    name: String,
}

/// The site key of these tests.
fn site_key() -> MasterKey {
    MasterKey::from_bytes([2; 32])
}

/// The key of `archive_id`'s control packets in session `session`.
fn session_mac(archive_id: u64, session: u32) -> wire::MacKey {
    site_key().file_key(archive_id).session_mac_key(session)
}

fn harness(configure: impl FnOnce(&mut ServerConfig)) -> Harness {
    harness_of(configure, false)
}

/// `harness`, its file relayed (`FileSpec::relayed`) or not.
fn harness_of(configure: impl FnOnce(&mut ServerConfig), relayed: bool) -> Harness {
    let key = site_key();
    let mut rng = SmallRng::seed_from_u64(3);
    let mut original = vec![0u8; 200_000];
    rand::Rng::fill_bytes(&mut rng, &mut original);
    let (manifest, manifest_bytes, body) =
        crate::sim::pack(&key, &original, 1 << 16, 1440, &mut rng);
    let mut config = ServerConfig {
        session_id: SESSION,
        directory_key: key.directory_mac_key(),
        key_fingerprint: key.fingerprint(),
        directory: "239.1.1.1:7000".parse().unwrap(),
        unicast_port: 7000,
        max_datagram: 1472,
        repair_share: 0.25,
        fec_overhead: 0.0,
        grtt_floor: crate::sender::DEFAULT_GRTT_FLOOR,
        group_size: 1,
        adapt: None,
        unicast_max_rate: 100_000_000,
        unicast_max_clients: 2,
        on_demand: false,
        idle: Duration::from_secs(3),
        batch: BatchLimits {
            bytes: 65_000,
            datagrams: 44,
        },
        directors: None,
    };
    configure(&mut config);
    let name = manifest.name.clone();
    let spec = FileSpec {
        relayed,
        file_key: key.file_key(manifest.archive_id),
        manifest,
        manifest_bytes,
        channels: vec![ChannelSpec {
            group: "239.1.1.2:7001".parse().unwrap(),
            control_port: 17001,
            rate_bps: 80_000_000,
        }],
    };
    let t = Instant::now();
    let server = Endpoint::new(config, vec![spec], CookieJar::new([9; 32], t), t).unwrap();
    Harness {
        buf: vec![0; server.buffer_len()],
        server,
        bodies: Bodies(vec![body]),
        t,
        name,
    }
}

/// What the server sent in one step: (socket, destination, datagrams).
type Sent = Vec<(Socket, SocketAddr, Vec<Vec<u8>>)>;

impl Harness {
    /// Moves the clock by `dt`, runs timers and collects every transmit due.
    fn step(&mut self, dt: Duration) -> Sent {
        self.t += dt;
        self.server.handle_timeout(self.t);
        let mut sent = Vec::new();
        while let Some(t) = self
            .server
            .poll_transmit(self.t, &mut self.buf, &mut self.bodies)
            .unwrap()
        {
            let datagrams = self.buf[..t.len]
                .chunks(t.segment)
                .map(<[u8]>::to_vec)
                .collect();
            sent.push((t.socket, t.to, datagrams));
        }
        sent
    }

    /// Runs 200 ms and returns the server time of a STATUS the channel sent, for
    /// reports to echo.
    fn status_echo(&mut self) -> u64 {
        (self.run(Duration::from_millis(200)).into_iter())
            .flat_map(|(_, _, datagrams)| datagrams)
            .find_map(|d| match wire::decode(&d).map(|d| d.packet) {
                Ok(Packet::Status(s)) => Some(s.server_time_us),
                _ => None,
            })
            .expect("a STATUS")
    }

    /// Runs for `total`, waking at each `poll_timeout` as a driver does; returns
    /// everything sent.
    fn run(&mut self, total: Duration) -> Sent {
        let end = self.t + total;
        let mut sent = Vec::new();
        while self.t < end {
            let next = self.server.poll_timeout().clamp(self.t, end);
            sent.extend(self.step(next - self.t));
        }
        sent
    }

    fn request(&mut self, from: SocketAddr, flags: u8, cookie: [u8; wire::COOKIE_LEN]) -> usize {
        let request = Request {
            receiver_id: 1,
            flags,
            max_rate_bps: 0,
            cookie,
            name: self.name.clone(),
        };
        let bytes = wire::encode_request(&site_key().directory_mac_key(), 0, &request);
        self.server
            .handle_datagram(self.t, Origin::Unicast(from), &bytes);
        bytes.len()
    }

    fn events(&mut self) -> Vec<ServerEvent> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }
}

fn kinds(sent: &Sent, to: SocketAddr) -> Vec<u8> {
    sent.iter()
        .filter(|(_, dest, _)| *dest == to)
        .flat_map(|(_, _, ds)| ds.iter().map(|d| d[3]))
        .collect()
}

fn cookie_in(sent: &Sent, to: SocketAddr) -> [u8; wire::COOKIE_LEN] {
    sent.iter()
        .filter(|(_, dest, _)| *dest == to)
        .flat_map(|(_, _, ds)| ds)
        .find_map(|d| match wire::decode(d) {
            Ok(Datagram {
                packet: Packet::Cookie(c),
                ..
            }) => Some(c),
            _ => None,
        })
        .expect("a COOKIE")
}

const DATA: u8 = wire::PacketType::Data as u8;
const COOKIE: u8 = wire::PacketType::Cookie as u8;
const ANNOUNCE: u8 = wire::PacketType::Announce as u8;

#[test]
fn a_request_gets_a_cookie_first_and_a_stream_only_when_it_echoes_it() {
    let mut h = harness(|_| {});
    let client = addr(5000);
    let request_len = h.request(client, wire::REQUEST_UNICAST, [0; wire::COOKIE_LEN]);
    let sent = h.step(Duration::ZERO);
    assert_eq!(kinds(&sent, client), vec![COOKIE]);
    let cookie_len = sent.iter().find(|s| s.1 == client).unwrap().2[0].len();
    assert!(cookie_len <= request_len, "{cookie_len} > {request_len}");
    // A forged cookie (or one for another address) gets a cookie again, no stream.
    let real = cookie_in(&sent, client);
    h.request(client, wire::REQUEST_UNICAST, [7; wire::COOKIE_LEN]);
    h.request(addr(5001), wire::REQUEST_UNICAST, real);
    let sent = h.run(Duration::from_millis(20));
    assert_eq!(kinds(&sent, client), vec![COOKIE]);
    assert_eq!(kinds(&sent, addr(5001)), vec![COOKIE]);
    assert_eq!(
        (h.server.unicast_clients(), h.server.stats().unvalidated),
        (0, 3)
    );
    // The echoed cookie: the listing, then a stream that starts with the manifest.
    h.request(client, wire::REQUEST_UNICAST, real);
    let sent = h.run(Duration::from_millis(20));
    let got = kinds(&sent, client);
    assert_eq!(got[0], ANNOUNCE);
    assert_eq!(got[1], wire::PacketType::Manifest as u8);
    assert!(got.iter().filter(|&&k| k == DATA).count() > 10, "{got:?}");
    assert!(
        sent.iter()
            .filter(|s| s.1 == client)
            .all(|s| s.0 == Socket::Unicast),
        "a stream goes out of the unicast socket"
    );
    assert_eq!(
        h.events(),
        vec![ServerEvent::StreamStarted {
            file: 0,
            to: client
        }]
    );
}

#[test]
fn a_tiny_request_gets_no_cookie_bigger_than_itself() {
    let mut h = harness(|_| {});
    // A REQUEST is at least 50 bytes and a COOKIE 36: never more than was sent.
    let len = h.request(addr(5000), 0, [0; wire::COOKIE_LEN]);
    let sent = h.step(Duration::ZERO);
    let answered: usize = sent
        .iter()
        .filter(|s| s.1 == addr(5000))
        .flat_map(|s| &s.2)
        .map(Vec::len)
        .sum();
    assert!(len >= 50 && answered <= len, "{answered} for {len}");
}

#[test]
fn on_demand_channels_start_on_request_and_stop_when_idle() {
    let mut h = harness(|c| c.on_demand = true);
    let group = "239.1.1.2:7001".parse().unwrap();
    let quiet = h.run(Duration::from_millis(500));
    assert!(kinds(&quiet, group).is_empty(), "an idle channel is silent");
    assert!(kinds(&quiet, h.server.config.directory).contains(&ANNOUNCE));
    let client = addr(5000);
    h.request(client, wire::REQUEST_START, [0; wire::COOKIE_LEN]);
    let cookie = cookie_in(&h.step(Duration::ZERO), client);
    h.request(client, wire::REQUEST_START, cookie);
    let running = h.run(Duration::from_millis(100));
    assert!(
        kinds(&running, group)
            .iter()
            .filter(|&&k| k == DATA)
            .count()
            > 100
    );
    assert!(h.server.is_active(0));
    assert_eq!(
        h.events(),
        vec![ServerEvent::ChannelsStarted {
            file: 0,
            by: client
        }]
    );
    // No request or report for `idle` (3 s): the channel stops and is silent again.
    h.run(Duration::from_millis(3000));
    assert!(!h.server.is_active(0));
    assert_eq!(h.events(), vec![ServerEvent::ChannelsStopped { file: 0 }]);
    assert!(kinds(&h.run(Duration::from_millis(200)), group).is_empty());
}

#[test]
fn done_ends_a_stream_once_and_a_silent_client_is_dropped() {
    let mut h = harness(|_| {});
    let host = |n| SocketAddr::new(Ipv4Addr::new(10, 0, 0, n).into(), 5000);
    let (a, b, c) = (host(2), host(3), host(4));
    for client in [a, b, c] {
        h.request(client, wire::REQUEST_UNICAST, [0; wire::COOKIE_LEN]);
        let cookie = cookie_in(&h.step(Duration::ZERO), client);
        h.request(client, wire::REQUEST_UNICAST, cookie);
    }
    // At most 2 clients: the third is refused.
    assert_eq!(h.server.unicast_clients(), 2);
    let events = h.events();
    assert!(
        events.contains(&ServerEvent::StreamRefused {
            file: 0,
            to: c,
            clients: 2
        }),
        "{events:?}"
    );
    let archive_id = h.server.manifest(0).archive_id;
    let done = wire::encode_done(
        &session_mac(archive_id, SESSION),
        SESSION,
        &wire::Done {
            archive_id,
            receiver_id: 4,
            elapsed_ms: 1500,
        },
    );
    h.server.handle_datagram(h.t, Origin::Unicast(a), &done);
    h.server.handle_datagram(h.t, Origin::Unicast(a), &done);
    let events = h.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, ServerEvent::ReceiverDone { .. }))
            .count(),
        1,
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        ServerEvent::StreamEnded {
            why: StreamEnd::Done,
            ..
        }
    )));
    assert_eq!(h.server.unicast_clients(), 1);
    // b says nothing for 5 s: dropped, and nothing more goes to it.
    h.run(UNICAST_CLIENT_TIMEOUT + HOUSEKEEPING * 2);
    assert_eq!(h.server.unicast_clients(), 0);
    assert!(h.events().iter().any(|e| matches!(
        e,
        ServerEvent::StreamEnded {
            why: StreamEnd::Silent,
            ..
        }
    )));
    assert!(kinds(&h.run(Duration::from_millis(50)), b).is_empty());
}

#[test]
fn reports_make_receivers_known_and_moves_are_told() {
    let mut h = harness(|_| {});
    // Reports echo the server time of a STATUS the channel sent.
    let echo = h.status_echo();
    let archive_id = h.server.manifest(0).archive_id;
    let report = |channel| {
        wire::encode_report(
            &session_mac(archive_id, SESSION),
            SESSION,
            &Report {
                archive_id,
                receiver_id: 77,
                channel,
                held: 5,
                packet_count: 150,
                echo_time_us: echo,
                ..Report::default()
            },
        )
    };
    let from = addr(6000);
    h.server
        .handle_datagram(h.t, Origin::Unicast(from), &report(0));
    h.server
        .handle_datagram(h.t, Origin::Unicast(from), &report(0));
    h.server
        .handle_datagram(h.t, Origin::Unicast(from), &report(wire::UNICAST_CHANNEL));
    // Another session's report, and junk, are dropped.
    let foreign = wire::encode_report(
        &session_mac(archive_id, SESSION + 1),
        SESSION + 1,
        &Report {
            archive_id,
            ..Report::default()
        },
    );
    h.server
        .handle_datagram(h.t, Origin::Unicast(from), &foreign);
    h.server
        .handle_datagram(h.t, Origin::Unicast(from), b"junk");
    // A report echoing no STATUS sent lately (stale, or replayed) is ignored.
    let stale = wire::encode_report(
        &session_mac(archive_id, SESSION),
        SESSION,
        &Report {
            archive_id,
            receiver_id: 78,
            echo_time_us: 12345,
            ..Report::default()
        },
    );
    h.server.handle_datagram(h.t, Origin::Unicast(from), &stale);
    let events: Vec<_> = h
        .events()
        .into_iter()
        .filter(|e| !matches!(e, ServerEvent::ReceiverProgress { .. }))
        .collect();
    assert_eq!(
        events,
        vec![
            ServerEvent::ReceiverJoined {
                file: 0,
                receiver: 77,
                addr: from,
                channel: 0
            },
            ServerEvent::ReceiverMoved {
                file: 0,
                receiver: 77,
                channel: wire::UNICAST_CHANNEL
            },
        ]
    );
    assert_eq!(h.server.receivers().len(), 1);
    // Junk does not decode; the other session's report does not verify.
    assert_eq!(h.server.stats().dropped, 1);
    assert_eq!(h.server.stats().unauthenticated, 1);
    assert_eq!(h.server.stats().stale_reports, 1);
}

#[test]
fn a_channel_holds_its_rate_in_gso_sized_batches() {
    let mut h = harness(|_| {});
    let group: SocketAddr = "239.1.1.2:7001".parse().unwrap();
    let sent = h.run(Duration::from_millis(1000));
    let bytes: usize = sent
        .iter()
        .filter(|s| s.1 == group)
        .flat_map(|s| &s.2)
        .map(Vec::len)
        .sum();
    let rate = bytes as f64 * 8.0;
    assert!((rate - 80e6).abs() / 80e6 < 0.02, "{rate} bit/s");
    for (_, to, datagrams) in sent.iter().filter(|s| s.1 == group) {
        let (last, rest) = datagrams.split_last().unwrap();
        assert!(rest.iter().all(|d| d.len() == rest[0].len()), "{to}");
        assert!(rest.first().is_none_or(|d| last.len() <= d.len()));
    }
}

#[test]
fn one_host_cannot_take_every_unicast_place() {
    // T12: with 8 places, one address may hold 2, whatever ports it asks from.
    let mut h = harness(|c| c.unicast_max_clients = 8);
    for port in 5000..5006 {
        let client = addr(port);
        h.request(client, wire::REQUEST_UNICAST, [0; wire::COOKIE_LEN]);
        let cookie = cookie_in(&h.step(Duration::ZERO), client);
        h.request(client, wire::REQUEST_UNICAST, cookie);
    }
    assert_eq!(h.server.unicast_clients(), 2);
    let refused = h
        .events()
        .iter()
        .filter(|e| matches!(e, ServerEvent::StreamRefused { .. }))
        .count();
    assert_eq!(refused, 4);
    // Another host still gets a place.
    let other = SocketAddr::new(Ipv4Addr::new(10, 0, 0, 9).into(), 5000);
    h.request(other, wire::REQUEST_UNICAST, [0; wire::COOKIE_LEN]);
    let cookie = cookie_in(&h.step(Duration::ZERO), other);
    h.request(other, wire::REQUEST_UNICAST, cookie);
    assert_eq!(h.server.unicast_clients(), 3);
}

/// Other servers and directors: heartbeats, moving off taken channels.
mod relay;
mod site;
