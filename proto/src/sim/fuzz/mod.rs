//! Both endpoints driven by arbitrary datagram sequences, for the proptest in
//! `tests/random_interaction.rs` and the coverage-guided targets under `fuzz/`
//! (after quinn-proto's `random_interaction`). A step is a valid datagram of one
//! type, mutated, or raw bytes; either may be tagged anew with the right key, as a
//! key holder could, so that inputs reach the code behind the tag checks. Each
//! drive checks the endpoints' bounds after every step and says which one broke.

use super::{Bodies, pack};
use crate::ReceivedMap;
use crate::archive::{
    BodyShape, Cells, FrameLayout, TableEntry, decode_table, open_frame_in_place,
};
use crate::cell::CellKey;
use crate::client::{self, ClientConfig, Command, Session};
use crate::receiver::ResumePoint;
use crate::server::{
    BatchLimits, ChannelSpec, Endpoint, FileSpec, MAX_RECEIVERS, Origin, ServerConfig,
};
use crate::wire::MacKey;
use crate::wire::{
    self, Announce, AnnounceEntry, ChannelInfo, DataHeader, PacketType, SessionKeys,
};
use crate::{AdaptMode, CookieJar, Manifest, MasterKey, NakMode};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The server session of the world.
pub const SESSION: u32 = 0x5e55;
/// Unicast streams the world's server allows.
const MAX_CLIENTS: usize = 4;
/// The node and job of the REGISTER and ASSIGN seeds.
const FUZZ_NODE: &str = "node-1";
const FUZZ_JOB: u64 = 77;

mod director;
mod seeds;

/// One small file, its keys and its channel.
pub struct World {
    key: MasterKey,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    body: Vec<u8>,
    channel: ChannelSpec,
    seeds: Vec<Vec<u8>>,
}

/// One step of a drive: a datagram, where it comes from, and the time that passes.
#[derive(Debug, Clone)]
pub struct Step {
    /// The datagram: a seed of `World` mutated, or raw bytes.
    pub input: Input,
    /// Tag it anew with the key its type calls for.
    pub retag: bool,
    /// Picks the origin (socket, and for receivers the reception and channel).
    pub origin: u8,
    /// Picks the source address.
    pub source: u8,
    /// Milliseconds that pass before it arrives.
    pub dt_ms: u16,
}

/// What a step's datagram is made from.
#[derive(Debug, Clone)]
pub enum Input {
    /// Seed `seed` (modulo the number of seeds) with bytes set at offsets, then cut.
    Seed {
        /// Which seed.
        seed: usize,
        /// (offset, byte) replacements; offsets past the end are ignored.
        mutations: Vec<(usize, u8)>,
        /// Length to cut to.
        truncate: Option<usize>,
    },
    /// These bytes as they are.
    Raw(Vec<u8>),
}

impl Step {
    /// Reads steps from fuzzer bytes: per step a 5-byte header (kind, origin,
    /// source, time, length) and `length` bytes. Kind bit 0: raw bytes (else a
    /// seed: first byte which, then (offset, byte) pairs); bit 1: tag anew.
    pub fn parse_all(mut bytes: &[u8]) -> Vec<Step> {
        let mut steps = Vec::new();
        while let [kind, origin, source, dt, len, rest @ ..] = bytes {
            let len = (*len as usize).min(rest.len());
            let (body, tail) = rest.split_at(len);
            bytes = tail;
            let input = if kind & 1 == 1 {
                Input::Raw(body.to_vec())
            } else {
                let (seed, pairs) = body.split_first().map_or((0, &[][..]), |(s, p)| (*s, p));
                Input::Seed {
                    seed: seed as usize,
                    mutations: pairs
                        .chunks_exact(2)
                        .map(|p| (p[0] as usize * 8, p[1]))
                        .collect(),
                    truncate: (kind & 4 != 0).then_some(len * 8),
                }
            };
            steps.push(Step {
                input,
                retag: kind & 2 != 0,
                origin: *origin,
                source: *source,
                dt_ms: *dt as u16 * 4,
            });
        }
        steps
    }
}

impl World {
    /// The world: a 50 kB file packed in 16 kB frames, on one 50 Mbit/s channel.
    pub fn new() -> Self {
        let key = MasterKey::from_bytes([8; 32]);
        let mut rng = SmallRng::seed_from_u64(11);
        let mut original = vec![0u8; 50_000];
        rand::Rng::fill_bytes(&mut rng, &mut original);
        let (manifest, manifest_bytes, body) = pack(&key, &original, 1 << 14, 1424, &mut rng);
        let mut world = World {
            key,
            manifest,
            manifest_bytes,
            body,
            channel: ChannelSpec {
                group: SocketAddr::new(Ipv4Addr::new(239, 1, 2, 3).into(), 7001),
                control_port: 17001,
                rate_bps: 50_000_000,
            },
            seeds: Vec::new(),
        };
        world.seeds = world.make_seeds();
        world
    }

    fn session_keys(&self) -> SessionKeys {
        let file_key = self.key.file_key(self.manifest.archive_id);
        SessionKeys::new(&file_key, SESSION)
    }

    /// The datagram of `step`.
    pub fn datagram(&self, step: &Step) -> Vec<u8> {
        let mut d = match &step.input {
            Input::Raw(bytes) => bytes.clone(),
            Input::Seed {
                seed,
                mutations,
                truncate,
            } => {
                let mut d = self.seeds[seed % self.seeds.len()].clone();
                for &(at, value) in mutations {
                    if let Some(b) = d.get_mut(at) {
                        *b = value;
                    }
                }
                if let Some(len) = truncate {
                    d.truncate(*len);
                }
                d
            }
        };
        if step.retag {
            self.retag(&mut d);
        }
        d
    }

    /// Replaces the tag of `d` with the one its type calls for (a key holder's
    /// forgery): DATA's cells sealed again at the place its header names.
    fn retag(&self, d: &mut Vec<u8>) {
        if d.len() < wire::DATA_HEADER_LEN + wire::TRAILER_LEN {
            return;
        }
        if d[3] == PacketType::Parity as u8 {
            return; // no tag: what it rebuilds is checked by its cells
        }
        if d[3] == PacketType::Data as u8 {
            let m = &self.manifest;
            let index = u32::from_be_bytes([d[16], d[17], d[18], d[19]]);
            let first = index as u64 * m.cells_per_packet();
            let cells = CellKey::new(&self.key.file_key(m.archive_id));
            let payload = &mut d[wire::DATA_HEADER_LEN..];
            let whole = payload.len() - payload.len() % m.cell_size as usize;
            cells.seal_cells(m.archive_id, first, &mut payload[..whole], m.cell_size);
            return;
        }
        let content = d.len() - wire::TRAILER_LEN;
        d.truncate(content);
        let keys = self.session_keys();
        match d[3] {
            t if t == PacketType::Announce as u8
                || t == PacketType::Request as u8
                || t == PacketType::Cookie as u8 =>
            {
                self.key.directory_mac_key().seal(d)
            }
            t if t == PacketType::Heartbeat as u8
                || t == PacketType::Lookup as u8
                || t == PacketType::Directions as u8
                || t == PacketType::Redirect as u8
                || t == PacketType::Register as u8
                || t == PacketType::Assign as u8 =>
            {
                self.key.director_mac_key().seal(d)
            }
            _ => keys.mac.seal(d),
        }
    }

    /// A server of the world's file, on demand or looping from the start.
    pub fn server(&self, on_demand: bool, now: Instant) -> Endpoint {
        let config = ServerConfig {
            session_id: SESSION,
            directory_key: self.key.directory_mac_key(),
            key_fingerprint: self.key.fingerprint(),
            directory: SocketAddr::new(Ipv4Addr::new(239, 1, 2, 1).into(), 7000),
            unicast_port: 7000,
            max_datagram: 1472,
            repair_share: 0.25,
            fec_overhead: 0.05,
            grtt_floor: crate::sender::DEFAULT_GRTT_FLOOR,
            group_size: 1,
            adapt: Some((AdaptMode::Min, 1_000_000, 100_000_000)),
            unicast_max_rate: 10_000_000,
            unicast_max_clients: MAX_CLIENTS,
            on_demand,
            idle: Duration::from_secs(1),
            batch: BatchLimits {
                bytes: 65_000,
                datagrams: 44,
            },
            directors: None,
        };
        let spec = FileSpec {
            relayed: false,
            manifest: self.manifest.clone(),
            manifest_bytes: self.manifest_bytes.clone(),
            file_key: self.key.file_key(self.manifest.archive_id),
            channels: vec![self.channel],
        };
        Endpoint::new(config, vec![spec], CookieJar::new([1; 32], now), now)
            .expect("one small file fits a listing")
    }

    /// Runs `steps` into a server; Err names the bound that broke.
    pub fn drive_server(&self, steps: &[Step], on_demand: bool) -> Result<(), String> {
        let mut now = Instant::now();
        let mut server = self.server(on_demand, now);
        let mut bodies = Bodies(vec![self.body.clone()]);
        let mut buf = vec![0u8; server.buffer_len()];
        for s in steps {
            now += Duration::from_millis(s.dt_ms as u64);
            let from = SocketAddr::new(
                Ipv4Addr::new(10, 0, 0, s.source).into(),
                5000 + s.source as u16,
            );
            let origin = match s.origin % 3 {
                0 => Origin::Control {
                    file: (s.origin / 3 % 2) as usize,
                    channel: 0,
                    from,
                },
                _ => Origin::Unicast(from),
            };
            server.handle_datagram(now, origin, &self.datagram(s));
            server.handle_timeout(now);
            let mut sent = 0;
            while server
                .poll_transmit(now, &mut buf, &mut bodies)
                .map_err(|e| e.to_string())?
                .is_some()
            {
                sent += 1;
                if sent >= 100_000 {
                    return Err("poll_transmit never ends".into());
                }
            }
            while server.poll_event().is_some() {}
            if server.receivers().len() > MAX_RECEIVERS {
                return Err(format!("{} receivers", server.receivers().len()));
            }
            if server.unicast_clients() > MAX_CLIENTS {
                return Err(format!("{} unicast clients", server.unicast_clients()));
            }
        }
        Ok(())
    }

    /// Runs `steps` into a receiver session; Err names the bound that broke.
    pub fn drive_session(&self, steps: &[Step]) -> Result<(), String> {
        let mut now = Instant::now();
        // One run in two looks the file up with a director (10.0.0.9:7790).
        let director = SocketAddr::new(Ipv4Addr::new(10, 0, 0, 9).into(), 7790);
        let directed = steps.first().is_some_and(|s| s.origin & 0x80 != 0);
        let config = ClientConfig {
            key: self.key.clone(),
            names: if directed {
                vec![self.manifest.name.clone()]
            } else {
                Vec::new()
            },
            pinned: Default::default(),
            max_rate: None,
            aggregate: false,
            sync_timeout: Duration::from_secs(1),
            server: (!directed).then(|| SocketAddr::new(Ipv4Addr::new(10, 0, 0, 1).into(), 7000)),
            unicast_only: false,
            nak_mode: NakMode::Suppressed,
            directors: if directed { vec![director] } else { Vec::new() },
            stay_joined: false,
            // One run in two asks for parity.
            repair: match steps.first().is_some_and(|s| s.origin & 0x40 != 0) {
                true => crate::receiver::RepairKind::Parity,
                false => crate::receiver::RepairKind::Copies,
            },
        };
        let mut session = Session::new(config, now, 3);
        for s in steps {
            now += Duration::from_millis(s.dt_ms as u64);
            let reception = (s.source % 3) as usize;
            let origin = match s.origin % 5 {
                0 => client::Origin::Directory {
                    source: Ipv4Addr::new(10, 0, 0, s.source).into(),
                },
                1 => client::Origin::Link {
                    from: match s.source % 2 {
                        1 if directed => director,
                        _ => SocketAddr::new(Ipv4Addr::new(10, 0, 0, 1).into(), 7000),
                    },
                },
                2 => client::Origin::Channel {
                    reception,
                    channel: (s.origin / 5 % 9) as usize,
                },
                3 => client::Origin::Control {
                    reception,
                    channel: 0,
                },
                _ => client::Origin::Stream { reception },
            };
            let _ = session.handle_datagram(now, origin, &mut self.datagram(s));
            session.handle_timeout(now);
            let mut outputs = 0;
            loop {
                outputs += 1;
                if outputs >= 100_000 {
                    return Err("outputs never end".into());
                }
                if let Some(command) = session.poll_command() {
                    match command {
                        Command::OpenStorage { reception, .. } => {
                            session.storage_opened(reception, None)
                        }
                        Command::CheckTable { reception } => {
                            let archive =
                                session.reception(reception).map(|r| r.entry().archive_id);
                            if let Some(archive) = archive {
                                session.table_checked(now, reception, archive, None);
                            }
                        }
                        // Half the rebuilds fail: their packets are asked for again.
                        Command::Rebuild { reception, rebuild } if s.dt_ms % 2 == 1 => {
                            let archive =
                                session.reception(reception).map(|r| r.entry().archive_id);
                            if let Some(archive) = archive {
                                session.rebuild_failed(
                                    now,
                                    reception,
                                    archive,
                                    &rebuild.missing,
                                    false,
                                );
                            }
                        }
                        _ => {}
                    }
                } else if session.poll_transmit().is_none() {
                    break;
                }
            }
            while session.poll_event().is_some() {}
            if session.receptions().len() > client::MAX_ACTIVE_RECEPTIONS {
                return Err(format!("{} receptions", session.receptions().len()));
            }
        }
        Ok(())
    }
}

/// Every decoder of bytes from the network or the disk, on `data`: the datagram
/// decoder and both tag checks, the manifest, the resume point, the received map,
/// the frame table and a sealed frame's checks. Must not panic.
pub fn decode_everything(data: &[u8]) {
    let key = MasterKey::from_bytes([8; 32]);
    let _ = wire::decode(data);
    let _ = MacKey::from_bytes([1; 32]).verifies(data);
    let cells = CellKey::new(&key.file_key(1));
    let _ = cells.open_cells(1, data.len() as u64, &mut data.to_vec(), 484);
    let _ = Manifest::decode(data, &key);
    let _ = Manifest::decode_unverified(data);
    let _ = ResumePoint::decode(data);
    if let Some((&n, rest)) = data.split_first() {
        let _ = ReceivedMap::from_bytes(n as u32 * 8, rest);
        let shape = BodyShape {
            frame_count: n as u32,
            frame_size: 1 << 16,
            original_size: n as u64 * 40_000,
            cell_size: 484,
            body_len: rest.len() as u64 * 3,
        };
        let _ = decode_table(rest, &shape);
        // A frame's cells, sealed or as opened on arrival: zstd then sees
        // whatever the bytes are.
        let frame = FrameLayout {
            range: 484..484 + (rest.len() / 484 * 484) as u64,
            entry: TableEntry {
                stored_len: (n as u32) << 8,
                compressed: n % 2 == 0,
            },
            plain_len: 1 << 16,
        };
        let mut scratch = vec![0u8; 1 << 16];
        for state in [Cells::Sealed, Cells::Opened, Cells::Joined] {
            let mut bytes = rest[..rest.len() / 484 * 484].to_vec();
            let _ = open_frame_in_place(&cells, 1, 484, &frame, &mut bytes, &mut scratch, state);
        }
    }
    // A parity rebuild from shards of any length, index and count (§6.5).
    if let [size, first, present, step, rest @ ..] = data {
        let blocks = crate::fec::Blocks::new(*size as u64 * 7 + 1, 8);
        let shards: Vec<&[u8]> = rest.chunks(8).collect();
        let parity: Vec<(u16, &[u8])> = (shards.iter().enumerate())
            .map(|(i, s)| (((*first as usize + i) % 40) as u16, *s))
            .collect();
        let stored: Vec<(u32, &[u8])> = (shards.iter().enumerate())
            .take(*present as usize % 16)
            .map(|(i, s)| (i as u32 * (*step as u32 % 3), *s))
            .collect();
        let _ = blocks.rebuild(0, &stored, &parity);
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}
