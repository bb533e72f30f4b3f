//! The two endpoints talking on a virtual LAN, with no sockets: a server
//! (`server::Endpoint`) and receiver sessions (`client::Session`), a virtual clock,
//! a one-way latency, and per receiver an in-memory disk. Each test reads as a
//! script of a conversation, in the manner of quinn-proto's `Pair`.
//!
//! Over 600 lines on purpose: the harness (the in-memory driver of both sides)
//! is half of it, and the tests read it in place.

use loopcast_proto::archive::Unpacker;
use loopcast_proto::client::{
    ClientConfig, ClientEvent, Command, Origin as ClientOrigin, ReceptionId, Session, Via,
};
use loopcast_proto::server::{
    BatchLimits, ChannelSpec, Endpoint, FileSpec, Origin as ServerOrigin, ServerConfig,
    ServerEvent, Socket,
};
use loopcast_proto::sim::Bodies;
use loopcast_proto::wire::ChannelInfo;
use loopcast_proto::{CookieJar, Manifest, MasterKey, ReceivedMap, ResumePoint};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

const LATENCY: Duration = Duration::from_micros(300);
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7000);
const DIRECTORY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 9, 0, 1), 7000);

/// One file: manifest, its encoded form, the body (what the server loops).
#[derive(Clone)]
struct Packed {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    body: Vec<u8>,
}

fn packed(key: &MasterKey, size: usize, seed: u64) -> Packed {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut original = vec![0u8; size];
    rng.fill_bytes(&mut original);
    let (mut manifest, _, body) =
        loopcast_proto::sim::pack(key, &original, 1 << 16, 1440, &mut rng);
    manifest.name = format!("file-{seed}.bin");
    let manifest_bytes = manifest.encode(&key.file_key(manifest.archive_id));
    Packed {
        manifest,
        manifest_bytes,
        body,
    }
}

fn channel_of(file: usize) -> ChannelSpec {
    ChannelSpec {
        group: SocketAddrV4::new(Ipv4Addr::new(239, 9, 0, 2 + file as u8), 7001 + file as u16),
        control_port: 17001 + file as u16,
        rate_bps: 40_000_000,
    }
}

fn server_config(session_id: u32) -> ServerConfig {
    ServerConfig {
        session_id,
        directory: DIRECTORY,
        unicast_port: SERVER.port(),
        max_datagram: 1472,
        repair_share: 0.25,
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
    }
}

fn new_server(config: ServerConfig, files: &[Packed], now: Instant) -> Endpoint {
    let specs = files
        .iter()
        .enumerate()
        .map(|(i, f)| FileSpec {
            manifest: f.manifest.clone(),
            manifest_bytes: f.manifest_bytes.clone(),
            channels: vec![channel_of(i)],
        })
        .collect();
    Endpoint::new(config, specs, CookieJar::new([5; 32], now), now).unwrap()
}

/// A receiver's storage of one file: the body being written and its map, kept
/// across receptions (the disk of a real receiver).
#[derive(Default, Clone)]
struct Disk {
    body: Vec<u8>,
    map: Option<(ReceivedMap, ResumePoint)>,
}

/// One receiver: its session, sockets as sets of addresses, and disk.
struct Node {
    session: Session,
    link: SocketAddrV4,
    /// Multicast channels joined: (reception, channel) -> channel.
    joined: HashMap<(ReceptionId, usize), ChannelInfo>,
    /// Unicast stream sockets: reception -> local address.
    streams: HashMap<ReceptionId, SocketAddrV4>,
    /// Open storage: reception -> (file name, manifest, unpacker once the table verified).
    storage: HashMap<ReceptionId, (Manifest, Option<Unpacker>, HashSet<u32>)>,
    disk: HashMap<String, Disk>,
    /// False when no multicast reaches this receiver.
    multicast: bool,
    events: Vec<ClientEvent>,
    delivered: Vec<String>,
}

enum Delivery {
    ToServer(ServerOrigin, Vec<u8>),
    ToNode(usize, ClientOrigin, Vec<u8>),
}

/// The virtual LAN.
struct Lan {
    key: MasterKey,
    now: Instant,
    server: Endpoint,
    bodies: Bodies,
    files: Vec<Packed>,
    nodes: Vec<Node>,
    queue: BTreeMap<(Instant, u64), Delivery>,
    seq: u64,
    buf: Vec<u8>,
    server_events: Vec<ServerEvent>,
}

impl Lan {
    fn new(files: Vec<Packed>, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let key = MasterKey::from_bytes([1; 32]);
        let now = Instant::now();
        let mut config = server_config(0xa11ce);
        configure(&mut config);
        let server = new_server(config, &files, now);
        Self {
            key,
            now,
            buf: vec![0; server.buffer_len()],
            bodies: Bodies(files.iter().map(|f| f.body.clone()).collect()),
            server,
            files,
            nodes: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            server_events: Vec::new(),
        }
    }

    fn add_node(&mut self, configure: impl FnOnce(&mut ClientConfig), multicast: bool) -> usize {
        let mut config = ClientConfig {
            key: self.key.clone(),
            names: Vec::new(),
            max_rate: None,
            aggregate: false,
            sync_timeout: Duration::from_secs(3),
            server: None,
            unicast_only: false,
            nak_mode: loopcast_proto::NakMode::Suppressed,
        };
        configure(&mut config);
        let i = self.nodes.len();
        self.nodes.push(Node {
            session: Session::new(config, self.now, 100 + i as u64),
            link: SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 1 + i as u8), 40000),
            joined: HashMap::new(),
            streams: HashMap::new(),
            storage: HashMap::new(),
            disk: HashMap::new(),
            multicast,
            events: Vec::new(),
            delivered: Vec::new(),
        });
        i
    }

    fn send(&mut self, delivery: Delivery) {
        self.seq += 1;
        self.queue.insert((self.now + LATENCY, self.seq), delivery);
    }

    /// Runs until `done` or `limit` of virtual time; returns whether `done` held.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Lan) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.pump();
            let next = [
                Some(self.server.poll_timeout()),
                self.queue.keys().next().map(|k| k.0),
            ]
            .into_iter()
            .flatten()
            .chain(self.nodes.iter().filter_map(|n| n.session.poll_timeout()))
            .min()
            .unwrap_or(end);
            self.now = next.clamp(self.now, end);
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                match entry.remove() {
                    Delivery::ToServer(origin, bytes) => {
                        self.server.handle_datagram(self.now, origin, &bytes)
                    }
                    Delivery::ToNode(i, origin, bytes) => self.node_datagram(i, origin, &bytes),
                }
            }
        }
        done(self)
    }

    fn run(&mut self, duration: Duration) {
        self.run_until(duration, |_| false);
    }

    /// Lets every machine act on its timers and sends what it says.
    fn pump(&mut self) {
        self.server.handle_timeout(self.now);
        while let Some(t) = self
            .server
            .poll_transmit(self.now, &mut self.buf, &mut self.bodies)
            .unwrap()
        {
            let datagrams: Vec<Vec<u8>> = self.buf[..t.len]
                .chunks(t.segment)
                .map(<[u8]>::to_vec)
                .collect();
            for d in datagrams {
                self.route_from_server(t.socket, t.to, d);
            }
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
        for i in 0..self.nodes.len() {
            self.nodes[i].session.handle_timeout(self.now);
            self.node_outputs(i);
        }
    }

    fn route_from_server(&mut self, socket: Socket, to: SocketAddrV4, datagram: Vec<u8>) {
        if socket == Socket::Unicast || !to.ip().is_multicast() {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.link == to {
                    let origin = ClientOrigin::Link { from: SERVER };
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
                let origin = ClientOrigin::Directory {
                    source: *SERVER.ip(),
                };
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

    fn node_datagram(&mut self, i: usize, origin: ClientOrigin, bytes: &[u8]) {
        let node = &mut self.nodes[i];
        if let Some(store) = node.session.handle_datagram(self.now, origin, bytes) {
            let (manifest, ..) = &node.storage[&store.reception];
            let disk = node.disk.get_mut(&manifest.name).expect("storage open");
            let at = store.body_offset as usize;
            disk.body[at..at + store.payload.len()].copy_from_slice(store.payload);
        }
        self.node_outputs(i);
    }

    /// Carries out a node's commands, sends its transmits, keeps its events.
    fn node_outputs(&mut self, i: usize) {
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
            match t.via {
                Via::Link => {
                    let origin = ServerOrigin::Unicast(n.link);
                    self.send(Delivery::ToServer(origin, t.datagram));
                }
                Via::Stream(r) => {
                    let origin = ServerOrigin::Unicast(n.streams[&r]);
                    self.send(Delivery::ToServer(origin, t.datagram));
                }
                Via::Multicast => {
                    let multicast = n.multicast;
                    let file = (0..self.files.len())
                        .find(|&f| {
                            let c = channel_of(f);
                            SocketAddrV4::new(*c.group.ip(), c.control_port) == t.to
                        })
                        .expect("a control port");
                    if multicast {
                        let origin = ServerOrigin::Control { file, channel: 0 };
                        self.send(Delivery::ToServer(origin, t.datagram.clone()));
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

    /// The in-memory driver: what `recv` does with sockets and files.
    fn carry_out(&mut self, i: usize, command: Command) {
        let now = self.now;
        let key = self.key.clone();
        let node = &mut self.nodes[i];
        match command {
            Command::Join {
                reception,
                channel,
                info,
            } => {
                node.joined.insert((reception, channel), info);
            }
            Command::Leave { reception, channel } => {
                node.joined.remove(&(reception, channel));
            }
            Command::OpenStream { reception, server } => {
                assert_eq!(server, SERVER);
                let local = SocketAddrV4::new(*node.link.ip(), 41000 + reception as u16);
                node.streams.insert(reception, local);
            }
            Command::CloseStream { reception } => {
                node.streams.remove(&reception);
            }
            Command::OpenStorage {
                reception,
                manifest,
            } => {
                let disk = node.disk.entry(manifest.name.clone()).or_default();
                let resumed = match &disk.map {
                    Some((map, point)) if map.len() == manifest.packet_count() => {
                        Some((map.clone(), Some(point.clone())))
                    }
                    _ => {
                        disk.body = vec![0; manifest.body_len as usize];
                        None
                    }
                };
                node.storage
                    .insert(reception, (*manifest, None, HashSet::new()));
                node.session.storage_opened(reception, resumed);
            }
            Command::CloseStorage {
                reception,
                map,
                resume,
            } => {
                if let Some((manifest, ..)) = node.storage.remove(&reception) {
                    node.disk.get_mut(&manifest.name).unwrap().map = Some((map, resume));
                }
            }
            Command::CheckTable { reception } => {
                let (manifest, unpacker, _) = node.storage.get_mut(&reception).unwrap();
                let body = &node.disk[&manifest.name].body;
                let table = &body[..manifest.table_len() as usize];
                let checked = Unpacker::new(&key, manifest, table).ok();
                let ranges = checked.as_ref().map(|u| u.frame_ranges().to_vec());
                *unpacker = checked;
                let archive_id = manifest.archive_id;
                node.session
                    .table_checked(now, reception, archive_id, ranges);
            }
            Command::Unpack { reception, frames } => {
                let (manifest, unpacker, verified) = node.storage.get_mut(&reception).unwrap();
                let unpacker = unpacker.as_mut().expect("table checked first");
                let body = &node.disk[&manifest.name].body;
                let archive_id = manifest.archive_id;
                let mut failed = Vec::new();
                for f in frames {
                    let range = unpacker.frame_ranges()[f as usize].clone();
                    match unpacker.open(f, &body[range.start as usize..range.end as usize]) {
                        Ok(_) => {
                            verified.insert(f);
                        }
                        Err(_) => failed.push((f, range)),
                    }
                }
                let whole = verified.len() == unpacker.frame_ranges().len();
                for (f, range) in failed {
                    node.session
                        .frame_failed(now, reception, archive_id, f, range);
                }
                if whole {
                    node.session.delivered(now, reception, archive_id);
                }
            }
        }
    }

    fn delivered(&self, node: usize, name: &str) -> bool {
        self.nodes[node].delivered.iter().any(|n| n == name)
    }

    fn body_matches(&self, node: usize, file: usize) -> bool {
        let f = &self.files[file];
        self.nodes[node].disk[&f.manifest.name].body == f.body
    }

    fn server_done(&self) -> usize {
        self.server_events
            .iter()
            .filter(|e| matches!(e, ServerEvent::ReceiverDone { .. }))
            .count()
    }
}

fn two_files() -> Vec<Packed> {
    let key = MasterKey::from_bytes([1; 32]);
    vec![packed(&key, 600_000, 1), packed(&key, 300_000, 2)]
}

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
        assert!(lan.nodes[node].session.is_finished());
    }
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

impl Lan {
    /// Stops the server and starts a new instance (new session) on the same files.
    fn restart_server(&mut self, session_id: u32) {
        self.server = new_server(server_config(session_id), &self.files, self.now);
    }

    fn held(&self, node: usize) -> u32 {
        self.nodes[node]
            .session
            .receptions()
            .iter()
            .map(|r| r.receiver().received().count())
            .sum()
    }
}

fn one_file(size: usize) -> Vec<Packed> {
    vec![packed(&MasterKey::from_bytes([1; 32]), size, 3)]
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
            switched: true
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

#[test]
fn with_multicast_silent_a_receiver_given_the_server_completes_by_unicast() {
    let mut lan = Lan::new(one_file(500_000), |_| {});
    let node = lan.add_node(|c| c.server = Some(SERVER), false);
    let name = lan.files[0].manifest.name.clone();
    assert!(lan.run_until(Duration::from_secs(10), |l| l.delivered(node, &name)));
    assert!(lan.body_matches(node, 0));
    // It waited out the sync time-out, asked for the listing (cookie first), then
    // for a stream (cookie first again, from the stream's own socket).
    let unvalidated = lan.server.stats().unvalidated;
    assert!(unvalidated >= 2, "{unvalidated}");
    assert!(lan.server.stats().unicast_bytes > 500_000);
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
    assert_eq!(lan.server.unicast_clients(), 0);
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
    assert!(!lan.server.is_active(0), "nobody asked yet");
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
    assert!(lan.server.is_active(0));
    lan.run(Duration::from_millis(3200));
    assert!(!lan.server.is_active(0));
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

/// One rogue ANNOUNCE datagram of session 0xbad listing `entries`.
fn rogue_listing(entries: Vec<loopcast_proto::wire::AnnounceEntry>) -> Vec<u8> {
    loopcast_proto::wire::encode_announce(
        0xbad,
        &loopcast_proto::wire::Announce {
            part: 0,
            parts: 1,
            unicast_port: 7000,
            entries,
        },
    )
}

fn rogue_entry(name: &str, archive_id: u64) -> loopcast_proto::wire::AnnounceEntry {
    loopcast_proto::wire::AnnounceEntry {
        archive_id,
        original_size: 1,
        body_len: 100,
        flags: 0,
        name: name.into(),
        channels: vec![ChannelInfo {
            group: SocketAddrV4::new(Ipv4Addr::new(239, 9, 9, 9), 9999),
            control_port: 19999,
            rate_bps: 1_000_000,
        }],
    }
}

const ROGUE: ClientOrigin = ClientOrigin::Directory {
    source: Ipv4Addr::new(10, 0, 0, 66),
};

#[test]
fn hostile_listings_are_skipped_bounded_and_never_fatal() {
    let mut lan = Lan::new(one_file(300_000), |_| {});
    let node = lan.add_node(|_| {}, true);
    // T1: an unsafe name is skipped and told once, however often it comes.
    for _ in 0..3 {
        lan.node_datagram(node, ROGUE, &rogue_listing(vec![rogue_entry("../evil", 1)]));
    }
    // An empty listing completes nothing.
    lan.node_datagram(node, ROGUE, &rogue_listing(Vec::new()));
    assert!(!lan.nodes[node].session.is_finished());
    // T16: hundreds of entries make at most MAX_ACTIVE_RECEPTIONS receptions.
    for part in 0..8u64 {
        let entries = (0..100)
            .map(|i| rogue_entry(&format!("f{part}-{i}"), 1000 + part * 100 + i))
            .take(12)
            .collect();
        lan.node_datagram(node, ROGUE, &rogue_listing(entries));
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
        source: *SERVER.ip(),
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
        let session = if flap % 2 == 0 { 0xa11ce } else { 0xf0e };
        let forged = loopcast_proto::wire::encode_announce(
            session,
            &loopcast_proto::wire::Announce {
                part: 0,
                parts: 1,
                unicast_port: SERVER.port(),
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
