//! The simulated LAN's event loop: the server endpoint and the receiver sessions
//! exchange datagrams through seeded links on a virtual clock.

use super::queue::Queue;
use super::{Bodies, SimConfig, SimReport, pack};
use crate::client::{ClientConfig, ClientEvent, Command, Origin as ClientOrigin, Session, Via};
use crate::server::{
    BatchLimits, ChannelSpec, Endpoint, FileSpec, Origin as ServerOrigin, ServerConfig, ServerEvent,
};
use crate::wire::{self, ChannelInfo};
use crate::{CookieJar, MasterKey};
use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

const SESSION: u32 = 0x5eed;
const DIRECTORY: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    Ipv4Addr::new(239, 255, 0, 1),
    7000,
));
/// Payload size of the simulated archives: one cell, as `pack` cuts them for a
/// 1500-byte IP packet.
const SIM_PAYLOAD: u16 = wire::cell_size_for_packet(wire::DEFAULT_PACKET_SIZE);

/// What happens at a time on the simulated LAN.
pub(super) enum Event {
    /// The server's timers or pacer are due (stale unless it is the one scheduled).
    ServerWake,
    /// A datagram reaches the server.
    ToServer(ServerOrigin, Rc<Vec<u8>>),
    /// A datagram reaches receiver `.0` from `.1`.
    ToNode(usize, ClientOrigin, Rc<Vec<u8>>),
    /// Receiver `.0`'s timers are due (stale unless it is the one scheduled).
    NodeTimer(usize),
    /// Receiver `.0` starts listening.
    Join(usize),
}

/// One simulated receiver.
struct Node {
    session: Option<Session>,
    addr: SocketAddr,
    join: Duration,
    body: Vec<u8>,
    last_arrival: Duration,
    timer: Option<Duration>,
    done: Option<Duration>,
    /// Channels joined, by index, with where they are.
    joined: HashMap<usize, ChannelInfo>,
    changes: Vec<(Duration, usize)>,
    capacity: Option<u64>,
    schedule: Vec<(Duration, f64)>,
}

impl Node {
    /// Chance that a datagram on this receiver's link is lost at `now` beyond the
    /// configured random loss: its schedule's, and what exceeds its capacity.
    fn extra_loss(&self, now: Duration, joined_rate: u64) -> f64 {
        let scheduled = self
            .schedule
            .iter()
            .take_while(|(from, _)| *from <= now)
            .last()
            .map_or(0.0, |&(_, p)| p);
        let over = self.capacity.map_or(0.0, |cap| {
            1.0 - (cap as f64 / joined_rate.max(1) as f64).min(1.0)
        });
        1.0 - (1.0 - scheduled) * (1.0 - over)
    }
}

/// The whole LAN during a run.
struct Lan<'c> {
    config: &'c SimConfig,
    /// The site key receivers are given when they join.
    key: MasterKey,
    rng: SmallRng,
    origin: Instant,
    now: Duration,
    queue: Queue<Event>,
    server: Endpoint,
    server_wake: Option<Duration>,
    bodies: Bodies,
    /// The body as receivers store it (cells opened), when they store bodies.
    opened: Vec<u8>,
    channels: Vec<ChannelSpec>,
    nodes: Vec<Node>,
    /// The server's latest ANNOUNCE: a receiver that starts listening hears it at once.
    announce: Option<Rc<Vec<u8>>>,
    buf: Vec<u8>,
    remaining: usize,
    naks_sent: u64,
    reports_sent: u64,
    lost_data: u64,
    cap_exceeded: bool,
    rate_changes: Vec<(Duration, u64)>,
}

/// Runs one simulation to completion (or the time limit) and reports what happened.
pub fn run(config: &SimConfig) -> SimReport {
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let key = MasterKey::from_bytes([7; 32]);
    let (manifest, manifest_bytes, body) = if config.sham_body {
        // Cells of zeros, sealed: receivers open them as any (a body with no
        // frames to unpack).
        let (mut manifest, _, _) = pack(&key, &[], 1 << 20, SIM_PAYLOAD, &mut rng);
        manifest.body_len = (config.file_size.max(64) as u64).next_multiple_of(SIM_PAYLOAD as u64);
        let file_key = key.file_key(manifest.archive_id);
        let mut body = vec![0; manifest.body_len as usize];
        crate::cell::CellKey::new(&file_key).seal_cells(
            manifest.archive_id,
            0,
            &mut body,
            SIM_PAYLOAD,
        );
        (manifest.clone(), manifest.encode(&file_key), body)
    } else {
        let mut original = vec![0u8; config.file_size];
        rng.fill_bytes(&mut original);
        pack(&key, &original, 1 << 20, SIM_PAYLOAD, &mut rng)
    };
    let opened = match config.store_bodies {
        true => super::opened_body(&key, &manifest, &body),
        false => Vec::new(),
    };
    let origin = Instant::now();
    let channels: Vec<ChannelSpec> = std::iter::once(config.rate_bps)
        .chain(config.more_rates.iter().copied())
        .enumerate()
        .map(|(j, rate_bps)| ChannelSpec {
            group: SocketAddr::new(
                Ipv4Addr::new(239, 255, 0, 2 + j as u8).into(),
                7001 + j as u16,
            ),
            control_port: 17001 + j as u16,
            rate_bps,
        })
        .collect();
    let server_config = ServerConfig {
        session_id: SESSION,
        directory_key: key.directory_mac_key(),
        key_fingerprint: key.fingerprint(),
        directory: DIRECTORY,
        unicast_port: 7000,
        max_datagram: 1472,
        repair_share: config.repair_share,
        fec_overhead: config.fec_overhead,
        grtt_floor: config.grtt_floor,
        group_size: config.receivers as u32,
        adapt: config.adapt,
        unicast_max_rate: 100_000_000,
        unicast_max_clients: 16,
        on_demand: false,
        idle: Duration::from_secs(10),
        batch: BatchLimits {
            bytes: 65_507,
            datagrams: 64,
        },
        directors: None,
    };
    let spec = FileSpec {
        relayed: false,
        manifest: manifest.clone(),
        manifest_bytes,
        file_key: key.file_key(manifest.archive_id),
        channels: channels.clone(),
    };
    let server = Endpoint::new(
        server_config,
        vec![spec],
        CookieJar::new([3; 32], origin),
        origin,
    )
    .expect("one small file fits a listing");
    let nodes = (0..config.receivers)
        .map(|i| Node {
            session: None,
            addr: SocketAddr::new(
                Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1).into(),
                9000,
            ),
            join: config.join_at.get(i).copied().unwrap_or_default(),
            body: if config.store_bodies {
                vec![0; manifest.body_len as usize]
            } else {
                Vec::new()
            },
            last_arrival: Duration::ZERO,
            timer: None,
            done: None,
            joined: HashMap::new(),
            changes: Vec::new(),
            capacity: config.capacity_bps.get(i).copied(),
            schedule: config.loss_schedule.get(i).cloned().unwrap_or_default(),
        })
        .collect::<Vec<_>>();
    let mut lan = Lan {
        buf: vec![0; server.buffer_len()],
        rate_changes: vec![(Duration::ZERO, config.rate_bps)],
        remaining: nodes.len(),
        key,
        config,
        rng,
        origin,
        now: Duration::ZERO,
        queue: Queue::default(),
        server,
        server_wake: None,
        opened,
        bodies: Bodies(vec![body]),
        channels,
        nodes,
        announce: None,
        naks_sent: 0,
        reports_sent: 0,
        lost_data: 0,
        cap_exceeded: false,
    };
    lan.schedule_server(Duration::ZERO);
    for i in 0..lan.nodes.len() {
        let at = lan.nodes[i].join;
        lan.queue.push(at, Event::Join(i));
    }
    lan.run();
    lan.report(manifest.body_len)
}

impl Lan<'_> {
    fn instant(&self) -> Instant {
        self.origin + self.now
    }

    fn link_delay(&mut self) -> Duration {
        self.config.delay + self.config.jitter.mul_f64(self.rng.random::<f64>())
    }

    fn schedule_server(&mut self, at: Duration) {
        let at = at.max(self.now);
        if self.server_wake.is_none_or(|w| at < w || w < self.now) {
            self.server_wake = Some(at);
            self.queue.push(at, Event::ServerWake);
        }
    }

    fn run(&mut self) {
        while let Some((now, event)) = self.queue.pop() {
            if self.remaining == 0 || now > self.config.time_limit {
                break;
            }
            self.now = now;
            match event {
                Event::ServerWake => {
                    if self.server_wake != Some(now) {
                        continue; // superseded
                    }
                    self.server_wake = None;
                    self.server_turn();
                }
                Event::ToServer(origin, datagram) => {
                    let at = self.instant();
                    self.server.handle_datagram(at, origin, &datagram);
                    self.server_turn();
                }
                Event::ToNode(i, origin, datagram) => self.node_datagram(i, origin, &datagram),
                Event::NodeTimer(i) => {
                    if self.nodes[i].timer != Some(now) || self.nodes[i].done.is_some() {
                        continue; // superseded
                    }
                    self.nodes[i].timer = None;
                    let at = self.instant();
                    if let Some(s) = self.nodes[i].session.as_mut() {
                        s.handle_timeout(at);
                    }
                    self.node_outputs(i);
                }
                Event::Join(i) => self.join(i),
            }
        }
    }

    /// A receiver starts listening: it has its session hear the server's latest
    /// listing at once, as one already listening on the directory would have.
    fn join(&mut self, i: usize) {
        let config = ClientConfig {
            key: self.key.clone(),
            names: Vec::new(),
            pinned: Default::default(),
            max_rate: self.config.max_rate,
            aggregate: self.config.aggregate,
            // The simulated LAN has multicast everywhere: no unicast fallback.
            sync_timeout: Duration::from_secs(3600),
            server: None,
            unicast_only: false,
            nak_mode: self.config.nak_mode,
            directors: Vec::new(),
            stay_joined: false,
            repair: self.config.repair,
        };
        let seed = self.config.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.nodes[i].session = Some(Session::new(config, self.instant(), seed));
        if let Some(announce) = self.announce.clone() {
            let origin = ClientOrigin::Directory {
                source: Ipv4Addr::new(10, 0, 0, 1).into(),
            };
            self.node_datagram(i, origin, &announce);
        }
    }

    /// Runs the server's timers and sends everything it has to send now.
    fn server_turn(&mut self) {
        let at = self.instant();
        self.server.handle_timeout(at);
        while let Some(t) = self
            .server
            .poll_transmit(at, &mut self.buf, &mut self.bodies)
            .expect("in-memory archive")
        {
            let datagrams: Vec<Rc<Vec<u8>>> = self.buf[..t.len]
                .chunks(t.segment)
                .map(|d| Rc::new(d.to_vec()))
                .collect();
            for d in datagrams {
                self.deliver_from_server(t.to, d);
            }
        }
        while let Some(e) = self.server.poll_event() {
            if let ServerEvent::RateChanged {
                channel: 0,
                rate_bps,
                ..
            } = e
            {
                self.rate_changes.push((self.now, rate_bps));
            }
        }
        let share = self.config.repair_share.clamp(0.0, 0.9);
        let credit_per_loop = share / (1.0 - share);
        for j in 0..self.channels.len() {
            if let Some((c, _)) = self.server.channel(0, j) {
                let s = c.stats();
                self.cap_exceeded |=
                    s.repair_packets as f64 > credit_per_loop * s.loop_packets as f64 + 64.0 + 1.0;
            }
        }
        let next = self
            .server
            .poll_timeout()
            .saturating_duration_since(self.origin);
        self.schedule_server(next);
    }

    /// Delivers a server datagram: a channel's to the receivers on it, over their links.
    fn deliver_from_server(&mut self, to: SocketAddr, datagram: Rc<Vec<u8>>) {
        if to == DIRECTORY {
            self.announce = Some(datagram);
            return;
        }
        let Some(channel) = self.channels.iter().position(|c| c.group == to) else {
            return; // unicast answers: no receiver here asks for any
        };
        let is_data =
            [wire::PacketType::Data as u8, wire::PacketType::Parity as u8].contains(&datagram[3]);
        let shared_lost = self.rng.random_bool(self.config.shared_loss);
        // The channels' current rates matter only to links with a capacity.
        let rates: Vec<u64> = if self.config.capacity_bps.is_empty() {
            Vec::new()
        } else {
            (0..self.channels.len())
                .map(|j| self.server.channel(0, j).map_or(0, |(c, _)| c.rate()))
                .collect()
        };
        let mut lost_by_someone = false;
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            if node.done.is_some() || !node.joined.contains_key(&channel) {
                continue;
            }
            let joined_rate = match node.capacity {
                Some(_) => node.joined.keys().map(|&c| rates[c]).sum(),
                None => 0,
            };
            let extra = node.extra_loss(self.now, joined_rate);
            if shared_lost
                || self.rng.random_bool(self.config.independent_loss)
                || (extra > 0.0 && self.rng.random_bool(extra))
            {
                lost_by_someone = true;
                continue;
            }
            let origin = ClientOrigin::Channel {
                reception: 0,
                channel,
            };
            self.send_to_node(i, origin, Rc::clone(&datagram));
        }
        self.lost_data += (is_data && lost_by_someone) as u64;
    }

    /// Queues `datagram` for receiver `i`, after its link's delay, never overtaking.
    fn send_to_node(&mut self, i: usize, origin: ClientOrigin, datagram: Rc<Vec<u8>>) {
        let at = (self.now + self.link_delay()).max(self.nodes[i].last_arrival);
        self.nodes[i].last_arrival = at;
        self.queue.push(at, Event::ToNode(i, origin, datagram));
    }

    fn node_datagram(&mut self, i: usize, origin: ClientOrigin, datagram: &[u8]) {
        let at = self.instant();
        let node = &mut self.nodes[i];
        if node.done.is_some() {
            return;
        }
        let Some(session) = node.session.as_mut() else {
            return;
        };
        // The receiver opens DATA's cells in place: in its own copy here.
        let mut datagram = datagram.to_vec();
        if let Some(store) = session.handle_datagram(at, origin, &mut datagram)
            && !node.body.is_empty()
        {
            let start = store.body_offset as usize;
            node.body[start..start + store.payload.len()].copy_from_slice(store.payload);
        }
        self.node_outputs(i);
    }

    /// Carries out a receiver's commands, sends its datagrams, reads its events, and
    /// keeps one timer event queued at its deadline.
    fn node_outputs(&mut self, i: usize) {
        loop {
            let Some(session) = self.nodes[i].session.as_mut() else {
                return;
            };
            if let Some(command) = session.poll_command() {
                match command {
                    Command::Join { channel, info, .. } => {
                        self.nodes[i].joined.insert(channel, info);
                    }
                    Command::Leave { channel, .. } => {
                        self.nodes[i].joined.remove(&channel);
                    }
                    Command::OpenStorage { reception, .. } => {
                        session.storage_opened(reception, None);
                    }
                    Command::Rebuild { reception, rebuild } => {
                        let node = &mut self.nodes[i];
                        let session = node.session.as_mut().expect("a node with a command");
                        let receiver = session.reception(reception).map(|r| r.receiver());
                        if !node.body.is_empty()
                            && receiver.is_none_or(|r| {
                                r.rebuild_in_body(&mut node.body, &rebuild).is_err()
                            })
                        {
                            let archive =
                                session.reception(reception).map(|r| r.entry().archive_id);
                            let at = self.origin + self.now;
                            session.rebuild_failed(
                                at,
                                reception,
                                archive.unwrap_or(0),
                                &rebuild.missing,
                                false,
                            );
                        }
                    }
                    // Completion here is holding every packet: frames are not unpacked
                    // (a sham body has none), so the table is never checked.
                    Command::CheckTable { .. }
                    | Command::Unpack { .. }
                    | Command::CloseStorage { .. }
                    | Command::OpenStream { .. }
                    | Command::CloseStream { .. } => {}
                }
                continue;
            }
            let Some(t) = session.poll_transmit() else {
                break;
            };
            let datagram = Rc::new(t.datagram);
            match t.via {
                Via::Multicast => self.nak(i, t.to, datagram),
                Via::Link => {
                    self.reports_sent +=
                        (datagram.get(3) == Some(&(wire::PacketType::Report as u8))) as u64;
                    let at = self.now + self.link_delay();
                    let origin = ServerOrigin::Unicast(self.nodes[i].addr);
                    self.queue.push(at, Event::ToServer(origin, datagram));
                }
                Via::Stream(_) => {}
            }
        }
        let Some(session) = self.nodes[i].session.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        while let Some(e) = session.poll_event() {
            events.push(e);
        }
        let deadline = session.poll_timeout();
        for e in events {
            match e {
                ClientEvent::AllHeld { .. } if self.nodes[i].done.is_none() => {
                    self.nodes[i].done = Some(self.now.saturating_sub(self.nodes[i].join));
                    self.remaining -= 1;
                }
                ClientEvent::ChannelChanged { to, .. } => {
                    self.nodes[i].changes.push((self.now, to));
                }
                _ => {}
            }
        }
        if self.nodes[i].done.is_some() {
            return;
        }
        if let Some(at) = deadline {
            let at = at.saturating_duration_since(self.origin).max(self.now);
            if self.nodes[i].timer != Some(at) {
                self.nodes[i].timer = Some(at);
                self.queue.push(at, Event::NodeTimer(i));
            }
        }
    }

    /// A NAK to a channel's control port: to the server, and to every other
    /// receiver on that channel (which is what lets them suppress their own).
    fn nak(&mut self, from: usize, to: SocketAddr, datagram: Rc<Vec<u8>>) {
        self.naks_sent += 1;
        let Some(channel) = self
            .channels
            .iter()
            .position(|c| SocketAddr::new(c.group.ip(), c.control_port) == to)
        else {
            return;
        };
        if !self.rng.random_bool(self.config.independent_loss) {
            let at = self.now + self.link_delay();
            let origin = ServerOrigin::Control {
                file: 0,
                channel,
                from: self.nodes[from].addr,
            };
            self.queue
                .push(at, Event::ToServer(origin, Rc::clone(&datagram)));
        }
        for j in 0..self.nodes.len() {
            let other = &self.nodes[j];
            if j == from
                || other.done.is_some()
                || other.session.is_none()
                || !other.joined.contains_key(&channel)
                || self.rng.random_bool(self.config.independent_loss)
            {
                continue;
            }
            let origin = ClientOrigin::Control {
                reception: 0,
                channel,
            };
            self.send_to_node(j, origin, Rc::clone(&datagram));
        }
    }

    fn report(self, body_len: u64) -> SimReport {
        let (loop_packets, repair_packets, parity_packets) = (0..self.channels.len())
            .filter_map(|j| self.server.channel(0, j))
            .fold((0, 0, 0), |(l, r, p), (c, _)| {
                let s = c.stats();
                (
                    l + s.loop_packets,
                    r + s.repair_packets,
                    p + s.parity_packets,
                )
            });
        SimReport {
            ideal: Duration::from_secs_f64(body_len as f64 * 8.0 / self.config.rate_bps as f64),
            completion: self.nodes.iter().map(|n| n.done).collect(),
            naks_sent: self.naks_sent,
            reports_sent: self.reports_sent,
            lost_data: self.lost_data,
            loop_packets,
            repair_packets,
            parity_packets,
            repair_cap_exceeded: self.cap_exceeded,
            bodies_identical: self.config.store_bodies.then(|| {
                self.nodes
                    .iter()
                    .filter(|n| n.done.is_some())
                    .all(|n| n.body == self.opened)
            }),
            channel_changes: self.nodes.into_iter().map(|n| n.changes).collect(),
            rate_changes: self.rate_changes,
        }
    }
}
