//! The virtual LAN the endpoint tests run on: a server (`server::Endpoint`) and
//! receiver sessions (`client::Session`), a virtual clock, a one-way latency, and
//! per receiver an in-memory disk, in the manner of quinn-proto's `Pair`. Shared
//! by `endpoints.rs`, `forgery.rs` and `site.rs`, each of which uses part of it.
//! A site adds more servers (each on channels of its own) and a director.
#![allow(dead_code)]

use loopcast_proto::archive::Unpacker;
use loopcast_proto::client::{
    ClientConfig, ClientEvent, Origin as ClientOrigin, ReceptionId, Session, Via,
};
use loopcast_proto::director::Director;
use loopcast_proto::server::{
    BatchLimits, ChannelSpec, Endpoint, FileSpec, Origin as ServerOrigin, ServerConfig,
    ServerEvent, Socket,
};
use loopcast_proto::sim::Bodies;
use loopcast_proto::wire::{self, ChannelInfo};
use loopcast_proto::{CookieJar, Manifest, MasterKey, ReceivedMap, ResumePoint};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

mod driver;
mod site;

pub const LATENCY: Duration = Duration::from_micros(300);
pub const SERVER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7000));
pub const DIRECTORY: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(239, 9, 0, 1), 7000));
pub const DIRECTOR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 99), 7790));

/// Where server `k` of a site listens (server 0 at `SERVER`).
pub fn server_addr(k: usize) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(10, 0, 0, 1 + k as u8).into(), SERVER.port())
}

/// One file: manifest, its encoded form, the body (what the server loops).
#[derive(Clone)]
pub struct Packed {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub body: Vec<u8>,
    /// The body as a receiver stores it: its cells opened.
    pub opened: Vec<u8>,
}

pub fn packed(key: &MasterKey, size: usize, seed: u64) -> Packed {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut original = vec![0u8; size];
    rng.fill_bytes(&mut original);
    let (mut manifest, _, body) =
        loopcast_proto::sim::pack(key, &original, 1 << 16, 1424, &mut rng);
    manifest.name = format!("file-{seed}.bin");
    let manifest_bytes = manifest.encode(&key.file_key(manifest.archive_id));
    Packed {
        opened: loopcast_proto::sim::opened_body(key, &manifest, &body),
        manifest,
        manifest_bytes,
        body,
    }
}

pub fn channel_of(file: usize) -> ChannelSpec {
    server_channel(0, file)
}

/// The channel of file `file` on server `k` (servers on one LAN take distinct ones).
pub fn server_channel(k: usize, file: usize) -> ChannelSpec {
    let (k8, f) = (k as u8, file as u16);
    ChannelSpec {
        group: SocketAddr::new(Ipv4Addr::new(239, 9, k8, 2 + file as u8).into(), 7001 + f),
        control_port: 17001 + f,
        rate_bps: 40_000_000,
    }
}

/// The site key every honest node of these tests holds.
pub fn site_key() -> MasterKey {
    MasterKey::from_bytes([1; 32])
}

/// A receiver of every file on air, by multicast, with the defaults of `recv`.
pub fn client_config(key: MasterKey) -> ClientConfig {
    ClientConfig {
        key,
        names: Vec::new(),
        pinned: Default::default(),
        max_rate: None,
        aggregate: false,
        sync_timeout: Duration::from_secs(3),
        server: None,
        unicast_only: false,
        nak_mode: loopcast_proto::NakMode::Suppressed,
        directors: Vec::new(),
        stay_joined: false,
        repair: loopcast_proto::client::RepairKind::Copies,
    }
}

pub fn server_config(session_id: u32) -> ServerConfig {
    ServerConfig {
        session_id,
        directory_key: site_key().directory_mac_key(),
        key_fingerprint: site_key().fingerprint(),
        directory: DIRECTORY,
        unicast_port: SERVER.port(),
        max_datagram: 1472,
        repair_share: 0.25,
        fec_overhead: 0.0,
        grtt_floor: loopcast_proto::sender::DEFAULT_GRTT_FLOOR,
        group_size: 1,
        adapt: None,
        unicast_max_rate: 40_000_000,
        unicast_max_clients: 4,
        on_demand: false,
        idle: Duration::from_secs(3),
        batch: BatchLimits {
            bytes: 65_000,
            datagrams: 44,
        },
        directors: None,
    }
}

pub fn new_server(config: ServerConfig, files: &[Packed], now: Instant) -> Endpoint {
    site_server(0, config, files, now)
}

/// Server `k` of a site, carrying `files` on its own channels.
pub fn site_server(k: usize, config: ServerConfig, files: &[Packed], now: Instant) -> Endpoint {
    let specs = files
        .iter()
        .enumerate()
        .map(|(i, f)| FileSpec {
            relayed: false,
            manifest: f.manifest.clone(),
            manifest_bytes: f.manifest_bytes.clone(),
            file_key: site_key().file_key(f.manifest.archive_id),
            channels: vec![server_channel(k, i)],
        })
        .collect();
    Endpoint::new(config, specs, CookieJar::new([5; 32], now), now).unwrap()
}

/// A receiver's storage of one file: the body being written and its map, kept
/// across receptions (the disk of a real receiver).
#[derive(Default, Clone)]
pub struct Disk {
    pub body: Vec<u8>,
    pub map: Option<(ReceivedMap, ResumePoint)>,
}

/// One receiver: its session, sockets as sets of addresses, and disk.
pub struct Node {
    pub session: Session,
    pub link: SocketAddr,
    /// Multicast channels joined: (reception, channel) -> channel.
    pub joined: HashMap<(ReceptionId, usize), ChannelInfo>,
    /// Unicast stream sockets: reception -> local address.
    pub streams: HashMap<ReceptionId, SocketAddr>,
    /// Open storage: reception -> (file name, manifest, unpacker once the table verified).
    pub storage: HashMap<ReceptionId, (Manifest, Option<Unpacker>, HashSet<u32>)>,
    pub disk: HashMap<String, Disk>,
    /// False when no multicast reaches this receiver.
    pub multicast: bool,
    pub events: Vec<ClientEvent>,
    pub delivered: Vec<String>,
    /// True once the receiver is gone (killed): it neither hears nor says anything.
    pub gone: bool,
    /// Loses every n-th DATA or PARITY datagram that reaches it (0: none).
    pub lose_every: u32,
    /// DATA and PARITY datagrams that reached it.
    pub data_seen: u32,
}

impl Node {
    /// Whether `datagram` is lost on its way here (`lose_every`).
    fn loses(&mut self, datagram: &[u8]) -> bool {
        let data = [wire::PacketType::Data as u8, wire::PacketType::Parity as u8];
        if self.lose_every == 0 || !data.contains(&datagram.get(3).copied().unwrap_or(0)) {
            return false;
        }
        self.data_seen += 1;
        self.data_seen.is_multiple_of(self.lose_every)
    }
}

/// A datagram on its way: to whom it goes is what the variants say.
#[allow(clippy::enum_variant_names)]
pub enum Delivery {
    ToServer(usize, ServerOrigin, Vec<u8>),
    ToNode(usize, ClientOrigin, Vec<u8>),
    ToDirector(SocketAddr, Vec<u8>),
}

/// One server of the LAN.
pub struct SimServer {
    pub endpoint: Endpoint,
    pub addr: SocketAddr,
    /// Killed: it neither hears nor sends anything.
    pub down: bool,
}

/// The virtual LAN.
pub struct Lan {
    pub key: MasterKey,
    pub now: Instant,
    /// The servers: the first at `SERVER`, more with `add_server`.
    pub servers: Vec<SimServer>,
    pub director: Option<Director>,
    pub bodies: Bodies,
    pub files: Vec<Packed>,
    pub nodes: Vec<Node>,
    pub queue: BTreeMap<(Instant, u64), Delivery>,
    pub seq: u64,
    pub buf: Vec<u8>,
    /// Every server's events.
    pub server_events: Vec<ServerEvent>,
    /// Every datagram sent to a server, as a sniffer on the segment saw it.
    pub to_server: Vec<(ServerOrigin, Vec<u8>)>,
    /// Server time of the newest STATUS the server sent, as a sniffer saw it.
    pub last_status_time: u64,
}

impl Lan {
    pub fn new(files: Vec<Packed>, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let key = site_key();
        let now = Instant::now();
        let mut config = server_config(0xa11ce);
        configure(&mut config);
        let server = new_server(config, &files, now);
        Self {
            key,
            now,
            buf: vec![0; server.buffer_len()],
            bodies: Bodies(files.iter().map(|f| f.body.clone()).collect()),
            servers: vec![SimServer {
                endpoint: server,
                addr: SERVER,
                down: false,
            }],
            director: None,
            files,
            nodes: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            server_events: Vec::new(),
            to_server: Vec::new(),
            last_status_time: 0,
        }
    }

    pub fn add_node(
        &mut self,
        configure: impl FnOnce(&mut ClientConfig),
        multicast: bool,
    ) -> usize {
        let mut config = client_config(self.key.clone());
        configure(&mut config);
        let i = self.nodes.len();
        self.nodes.push(Node {
            session: Session::new(config, self.now, 100 + i as u64),
            link: SocketAddr::new(Ipv4Addr::new(10, 0, 1, 1 + i as u8).into(), 40000),
            joined: HashMap::new(),
            streams: HashMap::new(),
            storage: HashMap::new(),
            disk: HashMap::new(),
            multicast,
            events: Vec::new(),
            delivered: Vec::new(),
            gone: false,
            lose_every: 0,
            data_seen: 0,
        });
        i
    }

    /// The first server.
    pub fn server(&mut self) -> &mut Endpoint {
        &mut self.servers[0].endpoint
    }

    pub fn send(&mut self, delivery: Delivery) {
        if let Delivery::ToServer(_, origin, bytes) = &delivery {
            self.to_server.push((*origin, bytes.clone()));
        }
        self.seq += 1;
        self.queue.insert((self.now + LATENCY, self.seq), delivery);
    }

    /// Runs until `done` or `limit` of virtual time; returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, done: impl Fn(&Lan) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.pump();
            let next = (self.servers.iter_mut())
                .filter(|s| !s.down)
                .map(|s| s.endpoint.poll_timeout())
                .chain(self.queue.keys().next().map(|k| k.0))
                .chain(self.director.as_ref().and_then(Director::poll_timeout))
                .chain(
                    (self.nodes.iter())
                        .filter(|n| !n.gone)
                        .filter_map(|n| n.session.poll_timeout()),
                )
                .min()
                .unwrap_or(end);
            self.now = next.clamp(self.now, end);
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                match entry.remove() {
                    Delivery::ToServer(k, _, _) if self.servers[k].down => {}
                    Delivery::ToServer(k, origin, bytes) => self.servers[k]
                        .endpoint
                        .handle_datagram(self.now, origin, &bytes),
                    Delivery::ToDirector(from, bytes) => {
                        if let Some(d) = self.director.as_mut() {
                            d.handle_datagram(self.now, from, &bytes);
                        }
                    }
                    Delivery::ToNode(i, _, _) if self.nodes[i].gone => {}
                    Delivery::ToNode(i, _, bytes) if self.nodes[i].loses(&bytes) => {}
                    Delivery::ToNode(i, origin, bytes) => self.node_datagram(i, origin, &bytes),
                }
            }
        }
        done(self)
    }

    pub fn run(&mut self, duration: Duration) {
        self.run_until(duration, |_| false);
    }

    /// Lets every machine act on its timers and sends what it says.
    pub fn pump(&mut self) {
        for k in 0..self.servers.len() {
            if self.servers[k].down {
                continue;
            }
            self.servers[k].endpoint.handle_timeout(self.now);
            while let Some(t) = self.servers[k]
                .endpoint
                .poll_transmit(self.now, &mut self.buf, &mut self.bodies)
                .unwrap()
            {
                let datagrams: Vec<Vec<u8>> = self.buf[..t.len]
                    .chunks(t.segment)
                    .map(<[u8]>::to_vec)
                    .collect();
                for d in datagrams {
                    self.route_from(k, t.socket, t.to, d);
                }
            }
            while let Some(e) = self.servers[k].endpoint.poll_event() {
                self.server_events.push(e);
            }
        }
        if let Some(d) = self.director.as_mut() {
            d.handle_timeout(self.now);
            let mut sent = Vec::new();
            while let Some(t) = d.poll_transmit() {
                sent.push(t);
            }
            for (to, datagram) in sent {
                if let Some(i) = self.nodes.iter().position(|n| n.link == to) {
                    let origin = ClientOrigin::Link { from: DIRECTOR };
                    self.send(Delivery::ToNode(i, origin, datagram));
                } else if let Some(k) = self.servers.iter().position(|s| s.addr == to) {
                    // HEARD, with the cookie that proves the server's address.
                    self.send(Delivery::ToServer(
                        k,
                        ServerOrigin::Unicast(DIRECTOR),
                        datagram,
                    ));
                }
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].gone {
                continue;
            }
            self.nodes[i].session.handle_timeout(self.now);
            self.node_outputs(i);
        }
    }

    /// Delivers what server `k` sent: to a director, a receiver's link or stream,
    /// or everyone listening on a group.
    pub fn route_from(&mut self, k: usize, socket: Socket, to: SocketAddr, datagram: Vec<u8>) {
        let from = self.servers[k].addr;
        if to == DIRECTOR {
            self.send(Delivery::ToDirector(from, datagram));
            return;
        }
        if datagram.get(3) == Some(&(loopcast_proto::wire::PacketType::Status as u8))
            && let Ok(loopcast_proto::wire::Datagram {
                packet: loopcast_proto::wire::Packet::Status(status),
                ..
            }) = loopcast_proto::wire::decode(&datagram)
        {
            self.last_status_time = status.server_time_us;
        }
        if socket == Socket::Unicast || !to.ip().is_multicast() {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.link == to {
                    let origin = ClientOrigin::Link { from };
                    self.send(Delivery::ToNode(i, origin, datagram));
                    return;
                }
                if let Some((&reception, _)) = n.streams.iter().find(|(_, a)| **a == to) {
                    let origin = ClientOrigin::Stream { reception };
                    self.send(Delivery::ToNode(i, origin, datagram));
                    return;
                }
            }
            return;
        }
        let mut deliveries = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.multicast {
                continue;
            }
            if to == DIRECTORY && !n.session.config().unicast_only {
                let origin = ClientOrigin::Directory { source: from.ip() };
                deliveries.push(Delivery::ToNode(i, origin, datagram.clone()));
            }
            for (&(reception, channel), info) in &n.joined {
                if info.group == to {
                    let origin = ClientOrigin::Channel { reception, channel };
                    deliveries.push(Delivery::ToNode(i, origin, datagram.clone()));
                }
            }
        }
        deliveries.into_iter().for_each(|d| self.send(d));
    }

    pub fn node_datagram(&mut self, i: usize, origin: ClientOrigin, bytes: &[u8]) {
        let node = &mut self.nodes[i];
        // The receiver opens DATA's cells in place: in its own copy.
        let mut bytes = bytes.to_vec();
        if let Some(store) = node.session.handle_datagram(self.now, origin, &mut bytes) {
            let (manifest, ..) = &node.storage[&store.reception];
            let disk = node.disk.get_mut(&manifest.name).expect("storage open");
            let at = store.body_offset as usize;
            disk.body[at..at + store.payload.len()].copy_from_slice(store.payload);
        }
        self.node_outputs(i);
    }

    /// Carries out a node's commands, sends its transmits, keeps its events.
    pub fn node_outputs(&mut self, i: usize) {
        // In the order the session made them: commands open and close the sockets
        // that transmits go out of.
        loop {
            if let Some(command) = self.nodes[i].session.poll_command() {
                self.carry_out(i, command);
                continue;
            }
            let Some(t) = self.nodes[i].session.poll_transmit() else {
                break;
            };
            let n = &self.nodes[i];
            let server = self.servers.iter().position(|s| s.addr == t.to);
            match t.via {
                Via::Link if t.to == DIRECTOR => {
                    self.send(Delivery::ToDirector(n.link, t.datagram));
                }
                Via::Link => {
                    let origin = ServerOrigin::Unicast(n.link);
                    if let Some(k) = server {
                        self.send(Delivery::ToServer(k, origin, t.datagram));
                    }
                }
                Via::Stream(r) => {
                    let origin = ServerOrigin::Unicast(n.streams[&r]);
                    if let Some(k) = server {
                        self.send(Delivery::ToServer(k, origin, t.datagram));
                    }
                }
                Via::Multicast => {
                    let multicast = n.multicast;
                    let (k, file) = (0..self.servers.len())
                        .flat_map(|k| (0..self.files.len()).map(move |f| (k, f)))
                        .find(|&(k, f)| {
                            let c = server_channel(k, f);
                            SocketAddr::new(c.group.ip(), c.control_port) == t.to
                        })
                        .expect("a control port");
                    if multicast {
                        let origin = ServerOrigin::Control {
                            file,
                            channel: 0,
                            from: n.link,
                        };
                        self.send(Delivery::ToServer(k, origin, t.datagram.clone()));
                    }
                    let others: Vec<(usize, ReceptionId)> = self
                        .nodes
                        .iter()
                        .enumerate()
                        .filter(|(j, o)| *j != i && o.multicast)
                        .flat_map(|(j, o)| {
                            o.joined
                                .iter()
                                .filter(|(_, info)| info.control() == t.to)
                                .map(move |(&(r, _), _)| (j, r))
                        })
                        .collect();
                    for (j, reception) in others {
                        let origin = ClientOrigin::Control {
                            reception,
                            channel: 0,
                        };
                        self.send(Delivery::ToNode(j, origin, t.datagram.clone()));
                    }
                }
            }
        }
        while let Some(e) = self.nodes[i].session.poll_event() {
            if let ClientEvent::Delivered { reception } = e {
                let name = self.nodes[i]
                    .session
                    .reception(reception)
                    .unwrap()
                    .entry()
                    .name
                    .clone();
                self.nodes[i].delivered.push(name);
            }
            self.nodes[i].events.push(e);
        }
    }

    pub fn delivered(&self, node: usize, name: &str) -> bool {
        self.nodes[node].delivered.iter().any(|n| n == name)
    }

    pub fn body_matches(&self, node: usize, file: usize) -> bool {
        let f = &self.files[file];
        self.nodes[node].disk[&f.manifest.name].body == f.opened
    }

    pub fn server_done(&self) -> usize {
        self.server_events
            .iter()
            .filter(|e| matches!(e, ServerEvent::ReceiverDone { .. }))
            .count()
    }
}

pub fn two_files() -> Vec<Packed> {
    let key = MasterKey::from_bytes([1; 32]);
    vec![packed(&key, 600_000, 1), packed(&key, 300_000, 2)]
}

impl Lan {
    /// Stops the server and starts a new instance (new session) on the same files.
    pub fn restart_server(&mut self, session_id: u32) {
        self.servers[0].endpoint = new_server(server_config(session_id), &self.files, self.now);
    }

    pub fn held(&self, node: usize) -> u32 {
        self.nodes[node]
            .session
            .receptions()
            .iter()
            .map(|r| r.receiver().received().count())
            .sum()
    }
}

pub fn one_file(size: usize) -> Vec<Packed> {
    vec![packed(&site_key(), size, 3)]
}

/// One rogue ANNOUNCE datagram of session 0xbad listing `entries`, tagged with
/// the directory key of `key` (the site's: a key holder gone rogue).
pub fn rogue_listing(
    key: &MasterKey,
    entries: Vec<loopcast_proto::wire::AnnounceEntry>,
) -> Vec<u8> {
    loopcast_proto::wire::encode_announce(
        &key.directory_mac_key(),
        0xbad,
        &loopcast_proto::wire::Announce {
            part: 0,
            parts: 1,
            unicast_port: 7000,
            key_fingerprint: key.fingerprint(),
            entries,
        },
    )
}

pub fn rogue_entry(name: &str, archive_id: u64) -> loopcast_proto::wire::AnnounceEntry {
    loopcast_proto::wire::AnnounceEntry {
        archive_id,
        original_size: 1,
        body_len: 100,
        content_digest: [7; 32],
        flags: 0,
        name: name.into(),
        channels: vec![ChannelInfo {
            group: SocketAddr::new(Ipv4Addr::new(239, 9, 9, 9).into(), 9999),
            control_port: 19999,
            rate_bps: 1_000_000,
        }],
    }
}

pub const ROGUE: ClientOrigin = ClientOrigin::Directory {
    source: std::net::IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66)),
};
