//! Both endpoints under random datagram sequences (after quinn-proto's
//! `random_interaction`): valid datagrams of every type, mutated at random (tagged
//! anew half the time, as a key holder could, so that mutations reach the code
//! behind the tag check), from random origins, with time moving on. Nothing may
//! panic, and state stays within its bounds. The fuzz targets under `fuzz/` do the
//! same under coverage guidance.

use loopcast_proto::client::{self, ClientConfig, Command, Session};
use loopcast_proto::server::{
    BatchLimits, ChannelSpec, Endpoint, FileSpec, MAX_RECEIVERS, Origin, ServerConfig,
};
use loopcast_proto::sim::Bodies;
use loopcast_proto::wire::{self, Announce, AnnounceEntry, ChannelInfo, DataHeader, SessionKeys};
use loopcast_proto::{CookieJar, MasterKey, NakMode};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

const SESSION: u32 = 0x5e55;

struct World {
    key: MasterKey,
    manifest: loopcast_proto::Manifest,
    manifest_bytes: Vec<u8>,
    body: Vec<u8>,
    channel: ChannelSpec,
}

impl World {
    fn session_keys(&self) -> SessionKeys {
        SessionKeys::new(
            &self.key.file_key(self.manifest.archive_id),
            SESSION,
            self.manifest.payload_size,
        )
    }
}

fn world() -> World {
    let key = MasterKey::from_bytes([8; 32]);
    let mut rng = SmallRng::seed_from_u64(11);
    let mut original = vec![0u8; 50_000];
    rand::Rng::fill_bytes(&mut rng, &mut original);
    let (manifest, manifest_bytes, body) =
        loopcast_proto::sim::pack(&key, &original, 1 << 14, 1440, &mut rng);
    World {
        key,
        manifest,
        manifest_bytes,
        body,
        channel: ChannelSpec {
            group: "239.1.2.3:7001".parse().unwrap(),
            control_port: 17001,
            rate_bps: 50_000_000,
        },
    }
}

/// One valid datagram of each type, for mutation.
fn seeds(w: &World) -> Vec<Vec<u8>> {
    let id = w.manifest.archive_id;
    let count = w.manifest.packet_count();
    let entry = AnnounceEntry {
        archive_id: id,
        original_size: w.manifest.original_size,
        body_len: w.manifest.body_len,
        flags: 0,
        name: w.manifest.name.clone(),
        channels: vec![ChannelInfo {
            group: w.channel.group,
            control_port: w.channel.control_port,
            rate_bps: w.channel.rate_bps,
        }],
    };
    let keys = w.session_keys();
    let directory = w.key.directory_mac_key();
    vec![
        wire::encode_announce(
            &directory,
            SESSION,
            &Announce {
                part: 0,
                parts: 1,
                unicast_port: 7000,
                key_fingerprint: w.key.fingerprint(),
                entries: vec![entry],
            },
        ),
        wire::encode_manifest(&keys.mac, SESSION, &w.manifest_bytes),
        wire::encode_data(
            &keys.data,
            SESSION,
            &DataHeader {
                archive_id: id,
                packet_index: 0,
                packet_count: count,
                flags: 0,
            },
            &w.body[..w.manifest.payload_size as usize],
        ),
        wire::encode_status(
            &keys.mac,
            SESSION,
            &wire::Status {
                archive_id: id,
                server_time_us: 1,
                grtt_us: 5000,
                group_size: 3,
                rate_bps: 50_000_000,
            },
        ),
        wire::encode_nak(
            &keys.mac,
            SESSION,
            &wire::Nak {
                archive_id: id,
                receiver_id: 9,
                echo_time_us: 1,
                hold_us: 0,
                ranges: vec![(1, 3), (10, 60000)],
            },
        ),
        wire::encode_report(
            &keys.mac,
            SESSION,
            &wire::Report {
                archive_id: id,
                receiver_id: 9,
                channel: 0,
                held: 3,
                packet_count: count,
                arrived: 100,
                lost: 5,
                interval_ms: 1000,
                kernel_drops: 0,
                // The first STATUS a carousel sends carries time 1.
                echo_time_us: 1,
            },
        ),
        wire::encode_done(
            &keys.mac,
            SESSION,
            &wire::Done {
                archive_id: id,
                receiver_id: 9,
                elapsed_ms: 10,
            },
        ),
        wire::encode_request(
            &directory,
            0,
            &wire::Request {
                receiver_id: 9,
                flags: wire::REQUEST_UNICAST | wire::REQUEST_START,
                max_rate_bps: 0,
                cookie: [0; wire::COOKIE_LEN],
                name: w.manifest.name.clone(),
            },
        ),
        wire::encode_cookie(&directory, SESSION, &[3; wire::COOKIE_LEN]),
    ]
}

/// A step: which seed, how to mutate it, where it comes from, how much time passes.
#[derive(Debug, Clone)]
struct Step {
    seed: usize,
    mutations: Vec<(usize, u8)>,
    truncate: Option<usize>,
    retag: bool,
    origin: u8,
    source: u8,
    dt_ms: u16,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0usize..9,
        proptest::collection::vec((0usize..1600, any::<u8>()), 0..4),
        proptest::option::of(0usize..1600),
        any::<bool>(),
        any::<u8>(),
        0u8..6,
        0u16..300,
    )
        .prop_map(
            |(seed, mutations, truncate, retag, origin, source, dt_ms)| Step {
                seed,
                mutations,
                truncate,
                retag,
                origin,
                source,
                dt_ms,
            },
        )
}

fn datagram(w: &World, seeds: &[Vec<u8>], s: &Step) -> Vec<u8> {
    let mut d = seeds[s.seed].clone();
    for &(at, value) in &s.mutations {
        if let Some(b) = d.get_mut(at) {
            *b = value;
        }
    }
    if let Some(len) = s.truncate {
        d.truncate(len);
    }
    if s.retag && d.len() >= wire::DATA_HEADER_LEN + wire::TRAILER_LEN {
        let content = d.len() - wire::TRAILER_LEN;
        d.truncate(content);
        let keys = w.session_keys();
        match d[3] {
            t if t == wire::PacketType::Data as u8 => {
                d.resize(content + wire::TRAILER_LEN, 0);
                keys.data.seal_in_place(&mut d, content);
            }
            t if t == wire::PacketType::Announce as u8
                || t == wire::PacketType::Request as u8
                || t == wire::PacketType::Cookie as u8 =>
            {
                w.key.directory_mac_key().seal(&mut d)
            }
            _ => keys.mac.seal(&mut d),
        }
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_server_endpoint_takes_any_datagrams(steps in proptest::collection::vec(step(), 1..120)) {
        let w = world();
        let seeds = seeds(&w);
        let mut now = Instant::now();
        let config = ServerConfig {
            session_id: SESSION,
            directory_key: w.key.directory_mac_key(),
            key_fingerprint: w.key.fingerprint(),
            directory: "239.1.2.1:7000".parse().unwrap(),
            unicast_port: 7000,
            max_datagram: 1472,
            repair_share: 0.25,
            grtt_floor: loopcast_proto::sender::DEFAULT_GRTT_FLOOR,
            group_size: 1,
            adapt: Some((loopcast_proto::AdaptMode::Min, 1_000_000, 100_000_000)),
            unicast_max_rate: 10_000_000,
            unicast_max_clients: 4,
            // On demand or looping from the start, one run in two.
            on_demand: steps.len() % 2 == 0,
            idle: Duration::from_secs(1),
            batch: BatchLimits { bytes: 65_000, datagrams: 44 },
        };
        let spec = FileSpec {
            manifest: w.manifest.clone(),
            manifest_bytes: w.manifest_bytes.clone(),
            file_key: w.key.file_key(w.manifest.archive_id),
            channels: vec![w.channel],
        };
        let mut server = Endpoint::new(config, vec![spec], CookieJar::new([1; 32], now), now).unwrap();
        let mut bodies = Bodies(vec![w.body.clone()]);
        let mut buf = vec![0u8; server.buffer_len()];
        for s in &steps {
            now += Duration::from_millis(s.dt_ms as u64);
            let from = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, s.source), 5000 + s.source as u16);
            let origin = match s.origin % 3 {
                0 => Origin::Control { file: (s.origin / 3 % 2) as usize, channel: 0 },
                _ => Origin::Unicast(from),
            };
            server.handle_datagram(now, origin, &datagram(&w, &seeds, s));
            server.handle_timeout(now);
            let mut sent = 0;
            while server.poll_transmit(now, &mut buf, &mut bodies).unwrap().is_some() {
                sent += 1;
                prop_assert!(sent < 100_000, "poll_transmit never ends");
            }
            while server.poll_event().is_some() {}
            prop_assert!(server.receivers().len() <= MAX_RECEIVERS);
            prop_assert!(server.unicast_clients() <= 4);
        }

    }

    #[test]
    fn the_receiver_session_takes_any_datagrams(steps in proptest::collection::vec(step(), 1..120)) {
        let w = world();
        let seeds = seeds(&w);
        let mut now = Instant::now();
        let config = ClientConfig {
            key: w.key.clone(),
            names: Vec::new(),
            max_rate: None,
            aggregate: false,
            sync_timeout: Duration::from_secs(1),
            server: Some("10.0.0.1:7000".parse().unwrap()),
            unicast_only: false,
            nak_mode: NakMode::Suppressed,
        };
        let mut session = Session::new(config, now, 3);
        for s in &steps {
            now += Duration::from_millis(s.dt_ms as u64);
            let reception = (s.source % 3) as usize;
            let origin = match s.origin % 5 {
                0 => client::Origin::Directory { source: Ipv4Addr::new(10, 0, 0, s.source) },
                1 => client::Origin::Link { from: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7000) },
                2 => client::Origin::Channel { reception, channel: (s.origin / 5 % 9) as usize },
                3 => client::Origin::Control { reception, channel: 0 },
                _ => client::Origin::Stream { reception },
            };
            let d = datagram(&w, &seeds, s);
            let _ = session.handle_datagram(now, origin, &d);
            session.handle_timeout(now);
            loop {
                if let Some(command) = session.poll_command() {
                    match command {
                        Command::OpenStorage { reception, .. } => session.storage_opened(reception, None),
                        Command::CheckTable { reception } => {
                            let archive = session.reception(reception).map(|r| r.entry().archive_id);
                            if let Some(archive) = archive {
                                session.table_checked(now, reception, archive, None);
                            }
                        }
                        _ => {}
                    }
                } else if session.poll_transmit().is_none() {
                    break;
                }
            }
            while session.poll_event().is_some() {}
            prop_assert!(session.receptions().len() <= client::MAX_ACTIVE_RECEPTIONS);
        }

    }
}
