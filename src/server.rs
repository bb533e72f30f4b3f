//! `loopcast serve`: loops each file on one multicast channel per rate, announces them
//! all, answers receivers on its unicast port (requests, reports, DONE) and streams to
//! receivers that cannot get multicast.

use crate::archive_file::{ArchiveFile, PackOptions, archive_for};
use crate::datapath::BatchSender;
use crate::error::{Context, Error, Result};
use crate::events::Events;
use crate::net;
use crate::pacer::Pacer;
use crate::signals::StopSignals;
use crate::timers::TimerHeap;
use crate::units::{format_bytes, format_rate};
use loopcast_proto::rate::membership_memory;
use loopcast_proto::wire::{self, AnnounceEntry, ChannelInfo, Packet};
use loopcast_proto::{
    AdaptMode, Announcer, Carousel, CookieJar, MasterKey, RateController, RepairConfig, UnicastRate,
};
use serde_json::json;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `serve` was asked to do.
pub struct ServeConfig {
    /// Plain files or ready archives.
    pub paths: Vec<PathBuf>,
    /// Master key.
    pub key: MasterKey,
    /// Local address to send from (unspecified: the kernel's choice).
    pub interface: Ipv4Addr,
    /// Directory group.
    pub group: SocketAddrV4,
    /// One channel per rate for every file, bits/s.
    pub rates: Vec<u64>,
    /// Adapt each channel's rate to its receivers' reports, within (min, max).
    pub adapt: Option<(AdaptMode, u64, u64)>,
    /// IP packet size.
    pub packet_size: usize,
    /// Multicast TTL.
    pub ttl: u32,
    /// Largest share of each channel's packets spent on repairs (0 turns repair off).
    pub repair_share: f64,
    /// Where packed archives of plain files are kept.
    pub cache_dir: PathBuf,
    /// How plain files are packed.
    pub pack: PackOptions,
    /// Send with UDP GSO when the kernel allows (`--no-gso` clears it).
    pub gso: bool,
    /// UDP port for requests, reports and unicast streams.
    pub unicast_port: u16,
    /// Total rate of all unicast streams, bits/s.
    pub unicast_max_rate: u64,
    /// Most unicast streams at once.
    pub unicast_max_clients: usize,
    /// Start a file's channels only when a receiver asks, stop them when idle.
    pub on_demand: bool,
    /// How long an on-demand file's channels run with no receiver reporting.
    pub idle: Duration,
    /// Print events as JSON lines on stdout.
    pub json: bool,
}

/// A unicast client that sends nothing for this long is dropped.
pub const UNICAST_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Lowest rate a unicast stream slows down to.
const UNICAST_MIN_RATE: u64 = 1_000_000;
/// Most sends one stream makes per wake-up before yielding to the others.
const MAX_SENDS_PER_WAKE: usize = 16;
/// How often lifecycle, time-outs and rates are looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// Token of the unicast socket (channel control sockets use their channel's index).
const UNICAST: mio::Token = mio::Token(usize::MAX - 16);

/// A carousel, its pacer and where its datagrams go: a channel's group or one client.
struct Stream {
    carousel: Carousel,
    pacer: Pacer,
    /// Datagrams per send: about a millisecond of data at the stream's rate.
    batch: usize,
    to: SocketAddrV4,
}

impl Stream {
    fn new(carousel: Carousel, to: SocketAddrV4, now: Instant, sender: &BatchSender) -> Self {
        let len = carousel.max_datagram_len();
        let pacer = Pacer::new(carousel.rate(), len, now);
        let batch = pacer.burst_datagrams(len).min(sender.max_batch(len));
        Self {
            carousel,
            pacer,
            batch,
            to,
        }
    }

    fn set_rate(&mut self, rate_bps: u64, now: Instant, sender: &BatchSender) {
        let len = self.carousel.max_datagram_len();
        self.carousel.set_rate(rate_bps);
        self.pacer = Pacer::new(rate_bps, len, now);
        self.batch = self.pacer.burst_datagrams(len).min(sender.max_batch(len));
    }
}

/// One multicast channel of a file.
struct Channel {
    stream: Stream,
    /// Where receivers send NAKs for this channel.
    control: mio::net::UdpSocket,
    control_port: u16,
    /// With `--adapt`: sets the rate from reports.
    controller: Option<RateController>,
}

/// One file and its channels.
struct FileOnAir {
    archive: ArchiveFile,
    manifest_bytes: Vec<u8>,
    channels: Vec<Channel>,
    /// False while an on-demand file waits for a request.
    active: bool,
    /// Last request or report for this file (on demand: idle time-out).
    last_interest: Instant,
}

/// A receiver served by unicast.
struct UnicastClient {
    file: usize,
    stream: Stream,
    rate: UnicastRate,
    /// The rate the client asked not to exceed (0: none).
    wanted_max: u64,
    last_heard: Instant,
    started: Instant,
}

/// What the server knows of one receiver of one file, from its reports.
struct ReceiverState {
    addr: SocketAddrV4,
    name: String,
    channel: u8,
    held: u32,
    packet_count: u32,
    last_report: Instant,
    done: bool,
}

struct Server {
    config: ServeConfig,
    session_id: u32,
    files: Vec<FileOnAir>,
    announcer: Announcer,
    socket: UdpSocket,
    sender: BatchSender,
    unicast: mio::net::UdpSocket,
    unicast_sender: BatchSender,
    clients: Vec<Option<UnicastClient>>,
    receivers: HashMap<(u64, u32), ReceiverState>,
    jar: CookieJar,
    timers: TimerHeap,
    events: Events,
    buf: Vec<u8>,
    sent_bytes: u64,
    unicast_bytes: u64,
    /// Requests answered with a cookie only (no valid cookie in them).
    unvalidated: u64,
}

/// Runs the server until SIGINT or SIGTERM.
pub fn serve(config: ServeConfig) -> Result<()> {
    let session_id: u32 = rand::random();
    let payload_size = wire::payload_size_for_packet(config.packet_size) as u16;
    let now = Instant::now();
    let total_rate: u64 = config.rates.iter().sum();
    let socket = net::multicast_sender(
        config.interface,
        config.ttl,
        net::buffer_size_for_rate(total_rate * config.paths.len() as u64),
    )?;
    let sender = BatchSender::new(&socket, config.gso);
    let mut signals = StopSignals::new()?;
    let mut files: Vec<FileOnAir> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, path) in config.paths.iter().enumerate() {
        let archive_path = archive_for(path, &config.key, &config.cache_dir, config.pack)?;
        let mut archive = ArchiveFile::open(&archive_path, &config.key)?;
        if !names.insert(archive.manifest.name.clone()) {
            return Err(Error::new(format!(
                "two files are named {:?}; names must be unique on one server",
                archive.manifest.name
            )));
        }
        // Re-sign with this server's payload size; the body and archive id are unchanged.
        archive.manifest.payload_size = payload_size;
        let manifest_bytes = archive
            .manifest
            .encode(&config.key.file_key(archive.manifest.archive_id));
        let packets = archive.manifest.packet_count();
        let mut channels = Vec::new();
        for (j, &rate_bps) in config.rates.iter().enumerate() {
            let repair = RepairConfig {
                rate_bps,
                share: config.repair_share,
                ..RepairConfig::default()
            };
            // Loops of one file's channels start evenly spread over the file.
            let phase = (packets as u64 * j as u64 / config.rates.len() as u64) as u32;
            let carousel =
                Carousel::new(session_id, &archive.manifest, &manifest_bytes, now, repair)
                    .with_phase(phase);
            let n = (i * config.rates.len() + j) as u32 + 1;
            let address = net::channel_for(config.group, n)?;
            let control_port = net::control_port_for(address)?;
            let mut control = mio::net::UdpSocket::from_std(net::multicast_receiver(
                SocketAddrV4::new(*address.ip(), control_port),
                config.interface,
                1 << 20,
            )?);
            signals
                .poll
                .registry()
                .register(
                    &mut control,
                    mio::Token(i * config.rates.len() + j),
                    mio::Interest::READABLE,
                )
                .context(|| "cannot register socket".into())?;
            log::info!(
                "serving {} ({}, archive {} in {} packets) on {} at {}",
                archive.manifest.name,
                format_bytes(archive.manifest.original_size),
                format_bytes(archive.manifest.body_len),
                packets,
                address,
                format_rate(rate_bps as f64)
            );
            channels.push(Channel {
                stream: Stream::new(carousel, address, now, &sender),
                control,
                control_port,
                controller: config
                    .adapt
                    .map(|(mode, min, max)| RateController::new(mode, min, max, rate_bps)),
            });
        }
        files.push(FileOnAir {
            archive,
            manifest_bytes,
            channels,
            active: !config.on_demand,
            last_interest: now,
        });
    }
    let mut unicast = mio::net::UdpSocket::from_std(net::unicast_socket(
        config.interface,
        config.unicast_port,
        net::buffer_size_for_rate(config.unicast_max_rate),
    )?);
    signals
        .poll
        .registry()
        .register(&mut unicast, UNICAST, mio::Interest::READABLE)
        .context(|| "cannot register socket".into())?;
    let unicast_sender = BatchSender::new(&unicast, config.gso);
    let max_datagram = config.packet_size - wire::IP_UDP_OVERHEAD;
    let announcer =
        Announcer::new(session_id, &[], config.unicast_port, max_datagram).map_err(Error::new)?;
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    log::info!(
        "session {session_id:08x}: announcing {} file(s) on {}, {} channel(s) each; unicast on port {}; {}",
        files.len(),
        config.group,
        config.rates.len(),
        config.unicast_port,
        if sender.gso() {
            "sending with UDP GSO"
        } else {
            "sending without GSO (sendmmsg)"
        }
    );
    let mut server = Server {
        events: Events::new(config.json),
        config,
        session_id,
        files,
        announcer,
        socket,
        sender,
        unicast,
        unicast_sender,
        clients: Vec::new(),
        receivers: HashMap::new(),
        jar: CookieJar::new(key, now),
        timers: TimerHeap::default(),
        buf: Vec::new(),
        sent_bytes: 0,
        unicast_bytes: 0,
        unvalidated: 0,
    };
    server.relist()?;
    let largest = server
        .streams()
        .map(|s| s.carousel.max_datagram_len() * (s.batch + 1))
        .max()
        .unwrap_or(0);
    server.buf = vec![0u8; largest.max(max_datagram).max(65536)];
    for f in 0..server.files.len() {
        if server.files[f].active {
            server.schedule_file(f, now);
        }
    }
    server.run(&mut signals)
}

impl Server {
    fn streams(&self) -> impl Iterator<Item = &Stream> {
        self.files
            .iter()
            .flat_map(|f| f.channels.iter().map(|c| &c.stream))
    }

    /// Timer id of channel `j` of file `f`; unicast clients come after all channels.
    fn channel_timer(&self, f: usize, j: usize) -> usize {
        f * self.config.rates.len() + j
    }

    fn client_timer(&self, slot: usize) -> usize {
        self.files.len() * self.config.rates.len() + slot
    }

    fn schedule_file(&mut self, f: usize, at: Instant) {
        for j in 0..self.files[f].channels.len() {
            let id = self.channel_timer(f, j);
            self.timers.schedule(id, at);
        }
    }

    /// Rebuilds the ANNOUNCE listing (on-demand files change state).
    fn relist(&mut self) -> Result<()> {
        let entries: Vec<AnnounceEntry> = self
            .files
            .iter()
            .map(|f| AnnounceEntry {
                archive_id: f.archive.manifest.archive_id,
                original_size: f.archive.manifest.original_size,
                body_len: f.archive.manifest.body_len,
                flags: if f.active { 0 } else { wire::ENTRY_IDLE },
                name: f.archive.manifest.name.clone(),
                channels: f
                    .channels
                    .iter()
                    .map(|c| ChannelInfo {
                        group: c.stream.to,
                        control_port: c.control_port,
                        rate_bps: c.stream.carousel.rate(),
                    })
                    .collect(),
            })
            .collect();
        let max_datagram = self.config.packet_size - wire::IP_UDP_OVERHEAD;
        let newer = Announcer::new(
            self.session_id,
            &entries,
            self.config.unicast_port,
            max_datagram,
        )
        .map_err(Error::new)?;
        self.announcer.replace(newer);
        Ok(())
    }

    fn run(&mut self, signals: &mut StopSignals) -> Result<()> {
        let started = Instant::now();
        let mut next_housekeeping = started;
        loop {
            let now = Instant::now();
            if let Some(datagrams) = self.announcer.poll_transmit(now) {
                for d in datagrams {
                    send(
                        &mut self.sender,
                        self.socket.as_fd(),
                        d,
                        d.len(),
                        self.config.group,
                    )?;
                }
            }
            // Serve each due stream once per pass: a stream whose tokens are not yet
            // back must wait for the next pass, never spin within this one.
            let due: Vec<usize> = std::iter::from_fn(|| self.timers.pop_due(now)).collect();
            for id in due {
                self.serve_stream(id, now)?;
            }
            if now >= next_housekeeping {
                self.housekeeping(now)?;
                next_housekeeping = now + HOUSEKEEPING;
            }
            let deadline = [
                self.timers.next_deadline(),
                self.announcer.poll_timeout(),
                Some(next_housekeeping),
            ]
            .into_iter()
            .flatten()
            .min();
            let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if signals.wait(wait)? {
                break;
            }
            let readable: Vec<mio::Token> = signals.events.iter().map(|e| e.token()).collect();
            for token in readable {
                if token == UNICAST {
                    self.drain_unicast()?;
                } else if let Some((f, j)) = self.channel_of_token(token.0) {
                    self.drain_control(f, j)?;
                }
            }
        }
        self.final_log(started);
        Ok(())
    }

    fn channel_of_token(&self, token: usize) -> Option<(usize, usize)> {
        let per = self.config.rates.len();
        (token < self.files.len() * per).then(|| (token / per, token % per))
    }

    /// Sends what stream `id`'s pacer allows now and sets its next wake-up.
    fn serve_stream(&mut self, id: usize, now: Instant) -> Result<()> {
        let per = self.config.rates.len();
        let (stream, archive, socket, sender) = if id < self.files.len() * per {
            let file = &mut self.files[id / per];
            if !file.active {
                return Ok(()); // stopped: no further wake-ups until it starts again
            }
            (
                &mut file.channels[id % per].stream,
                &mut file.archive,
                self.socket.as_fd(),
                &mut self.sender,
            )
        } else {
            let slot = id - self.files.len() * per;
            let Some(client) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                return Ok(()); // dropped client
            };
            (
                &mut client.stream,
                &mut self.files[client.file].archive,
                self.unicast.as_fd(),
                &mut self.unicast_sender,
            )
        };
        let mut sent = 0u64;
        for _ in 0..MAX_SENDS_PER_WAKE {
            match send_batch(stream, archive, now, &mut self.buf, sender, socket)? {
                0 => break,
                bytes => sent += bytes as u64,
            }
        }
        let next = stream
            .pacer
            .ready_at(stream.carousel.max_datagram_len() * stream.batch);
        self.timers.schedule(id, next);
        if id >= self.files.len() * per {
            self.unicast_bytes += sent;
            if let Some(Some(c)) = self.clients.get_mut(id - self.files.len() * per) {
                c.rate
                    .count(sent / c.stream.carousel.max_datagram_len().max(1) as u64, 0);
            }
        }
        self.sent_bytes += sent;
        Ok(())
    }

    /// NAKs from a channel's control port.
    fn drain_control(&mut self, f: usize, j: usize) -> Result<()> {
        loop {
            let channel = &mut self.files[f].channels[j];
            let Some(n) = net::recv_nonblocking(&channel.control, &mut self.buf)
                .context(|| format!("cannot receive NAKs on port {}", channel.control_port))?
            else {
                return Ok(());
            };
            channel
                .stream
                .carousel
                .handle_datagram(Instant::now(), &self.buf[..n]);
        }
    }

    /// Requests, reports, DONE and unicast clients' NAKs on the unicast port.
    fn drain_unicast(&mut self) -> Result<()> {
        while let Some((n, from)) = net::recv_from_nonblocking(&self.unicast, &mut self.buf)
            .context(|| format!("cannot receive on port {}", self.config.unicast_port))?
        {
            let datagram = self.buf[..n].to_vec();
            self.handle_unicast(Instant::now(), from, &datagram)?;
        }
        Ok(())
    }

    fn handle_unicast(&mut self, now: Instant, from: SocketAddrV4, bytes: &[u8]) -> Result<()> {
        let Ok(datagram) = wire::decode(bytes) else {
            return Ok(());
        };
        let ours = datagram.session_id == self.session_id;
        match datagram.packet {
            Packet::Request(request) => self.handle_request(now, from, bytes.len(), request),
            Packet::Nak(_) if ours => {
                if let Some(client) = self.client_at(from) {
                    client.last_heard = now;
                    let lost = client.stream.carousel.handle_datagram(now, bytes);
                    client.rate.count(0, lost as u64);
                }
                Ok(())
            }
            Packet::Report(report) if ours => {
                self.handle_report(now, from, report);
                Ok(())
            }
            Packet::Done(done) if ours => {
                self.handle_done(now, from, done);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn client_at(&mut self, addr: SocketAddrV4) -> Option<&mut UnicastClient> {
        self.clients
            .iter_mut()
            .flatten()
            .find(|c| c.stream.to == addr)
    }

    fn file_named(&self, name: &str) -> Option<usize> {
        self.files
            .iter()
            .position(|f| f.archive.manifest.name == name)
    }

    fn file_of(&self, archive_id: u64) -> Option<usize> {
        self.files
            .iter()
            .position(|f| f.archive.manifest.archive_id == archive_id)
    }

    /// A request without a valid cookie gets a cookie back (never more bytes than it
    /// sent); a validated one gets the listing and, as asked, a unicast stream or the
    /// file's channels started.
    fn handle_request(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        request_len: usize,
        request: wire::Request,
    ) -> Result<()> {
        if !self.jar.check(now, from, &request.cookie) {
            self.unvalidated += 1;
            let answer = wire::encode_cookie(self.session_id, &self.jar.issue(now, from));
            if answer.len() <= request_len {
                send_quietly(&self.unicast, &answer, from);
            }
            return Ok(());
        }
        for d in self.announcer.datagrams().to_vec() {
            send_quietly(&self.unicast, &d, from);
        }
        let Some(f) = self.file_named(&request.name) else {
            return Ok(()); // the listing tells the receiver what there is
        };
        self.files[f].last_interest = now;
        if request.flags & wire::REQUEST_START != 0 && !self.files[f].active {
            self.files[f].active = true;
            let name = self.files[f].archive.manifest.name.clone();
            log::info!("{name}: starting its channels on request from {from}");
            self.events.emit(
                "channel_start",
                json!({"file": name, "from": from.to_string()}),
            );
            self.schedule_file(f, now);
            self.relist()?;
        }
        if request.flags & wire::REQUEST_UNICAST != 0 {
            self.start_client(now, f, from, request.max_rate_bps);
        }
        Ok(())
    }

    fn start_client(&mut self, now: Instant, f: usize, from: SocketAddrV4, max_rate: u64) {
        if let Some(client) = self.client_at(from) {
            client.last_heard = now; // a repeated request: keep streaming
            return;
        }
        let name = self.files[f].archive.manifest.name.clone();
        let active = self.clients.iter().flatten().count();
        if active >= self.config.unicast_max_clients {
            log::warn!(
                "{name}: refusing a unicast stream to {from}: {active} clients already (--unicast-max-clients)"
            );
            self.events.emit(
                "error",
                json!({"file": name, "from": from.to_string(), "error": "too many unicast clients"}),
            );
            return;
        }
        let file = &self.files[f];
        let rate = UnicastRate::new(now, self.config.unicast_max_rate, UNICAST_MIN_RATE);
        let repair = RepairConfig {
            rate_bps: rate.rate(),
            share: self.config.repair_share.max(0.1),
            ..RepairConfig::default()
        };
        let carousel = Carousel::new(
            self.session_id,
            &file.archive.manifest,
            &file.manifest_bytes,
            now,
            repair,
        );
        let stream = Stream::new(carousel, from, now, &self.unicast_sender);
        let slot = match self.clients.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.clients.push(None);
                self.clients.len() - 1
            }
        };
        self.clients[slot] = Some(UnicastClient {
            file: f,
            stream,
            rate,
            wanted_max: max_rate,
            last_heard: now,
            started: now,
        });
        self.share_unicast_rate(now);
        log::info!("{name}: streaming by unicast to {from}");
        self.events.emit(
            "fallback",
            json!({"file": name, "receiver_addr": from.to_string()}),
        );
        let id = self.client_timer(slot);
        self.timers.schedule(id, now);
    }

    /// Splits `--unicast-max-rate` evenly among the clients, each also within what it asked.
    fn share_unicast_rate(&mut self, now: Instant) {
        let n = self.clients.iter().flatten().count().max(1) as u64;
        let share = self.config.unicast_max_rate / n;
        for c in self.clients.iter_mut().flatten() {
            let cap = match c.wanted_max {
                0 => share,
                wanted => share.min(wanted),
            };
            c.rate.set_cap(cap);
            c.stream.set_rate(c.rate.rate(), now, &self.unicast_sender);
        }
    }

    fn handle_report(&mut self, now: Instant, from: SocketAddrV4, report: wire::Report) {
        let Some(f) = self.file_of(report.archive_id) else {
            return;
        };
        let file = &mut self.files[f];
        file.last_interest = now;
        let name = file.archive.manifest.name.clone();
        if let Some(channel) = file.channels.get_mut(report.channel as usize) {
            channel
                .stream
                .carousel
                .note_receiver(now, report.receiver_id);
            let len = channel.stream.carousel.max_datagram_len();
            if let Some(c) = channel.controller.as_mut() {
                c.handle_report(now, &report, len);
            }
        }
        if let Some(client) = self.client_at(from) {
            client.last_heard = now;
        }
        let key = (report.archive_id, report.receiver_id);
        let channel_name = self.channel_name(f, report.channel);
        let state = self.receivers.entry(key).or_insert_with(|| {
            log::info!(
                "{name}: receiver {:08x} at {from} joined ({channel_name})",
                report.receiver_id
            );
            self.events.emit(
                "join",
                json!({"file": name, "receiver": format!("{:08x}", report.receiver_id),
                       "addr": from.to_string(), "channel": channel_name}),
            );
            ReceiverState {
                addr: from,
                name: name.clone(),
                channel: report.channel,
                held: 0,
                packet_count: report.packet_count,
                last_report: now,
                done: false,
            }
        });
        if state.channel != report.channel {
            log::info!(
                "{name}: receiver {:08x} moved to {channel_name}",
                report.receiver_id
            );
            self.events.emit(
                "channel_change",
                json!({"file": name, "receiver": format!("{:08x}", report.receiver_id), "channel": channel_name}),
            );
        }
        state.addr = from;
        state.channel = report.channel;
        state.held = report.held;
        state.packet_count = report.packet_count;
        state.last_report = now;
        self.events.emit(
            "progress",
            json!({"file": name, "receiver": format!("{:08x}", report.receiver_id),
                   "held": report.held, "packets": report.packet_count,
                   "arrived": report.arrived, "lost": report.lost,
                   "kernel_drops": report.kernel_drops}),
        );
    }

    fn channel_name(&self, f: usize, channel: u8) -> String {
        match self.files[f].channels.get(channel as usize) {
            Some(c) => format!(
                "channel {} at {}",
                c.stream.to,
                format_rate(c.stream.carousel.rate() as f64)
            ),
            None => "unicast".to_string(),
        }
    }

    fn handle_done(&mut self, now: Instant, from: SocketAddrV4, done: wire::Done) {
        let Some(f) = self.file_of(done.archive_id) else {
            return;
        };
        let name = self.files[f].archive.manifest.name.clone();
        let state = self
            .receivers
            .entry((done.archive_id, done.receiver_id))
            .or_insert_with(|| ReceiverState {
                addr: from,
                name: name.clone(),
                channel: wire::UNICAST_CHANNEL,
                held: 0,
                packet_count: 0,
                last_report: now,
                done: false,
            });
        if !state.done {
            state.done = true;
            state.held = state.packet_count;
            log::info!(
                "{name}: receiver {:08x} at {from} completed in {:.2} s",
                done.receiver_id,
                done.elapsed_ms as f64 / 1000.0
            );
            self.events.emit(
                "done",
                json!({"file": name, "receiver": format!("{:08x}", done.receiver_id),
                       "addr": from.to_string(), "seconds": done.elapsed_ms as f64 / 1000.0}),
            );
        }
        if let Some(slot) = self
            .clients
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.stream.to == from))
        {
            self.drop_client(slot, now, "done");
        }
    }

    fn drop_client(&mut self, slot: usize, now: Instant, why: &str) {
        if let Some(c) = self.clients[slot].take() {
            let name = &self.files[c.file].archive.manifest.name;
            log::info!(
                "{name}: unicast stream to {} ended ({why}) after {:.1} s",
                c.stream.to,
                now.saturating_duration_since(c.started).as_secs_f64()
            );
            self.share_unicast_rate(now);
        }
    }

    /// Adaptive rates, unicast rates and time-outs, on-demand idling.
    fn housekeeping(&mut self, now: Instant) -> Result<()> {
        let mut relist = false;
        for f in 0..self.files.len() {
            let file = &mut self.files[f];
            for channel in &mut file.channels {
                let Some(controller) = channel.controller.as_mut() else {
                    continue;
                };
                let memory = membership_memory(
                    channel.stream.carousel.group_size(),
                    controller.rate(),
                    channel.stream.carousel.max_datagram_len(),
                );
                if let Some(rate) = controller.poll(now, memory) {
                    log::info!(
                        "{}: {} now at {}",
                        file.archive.manifest.name,
                        channel.stream.to,
                        format_rate(rate as f64)
                    );
                    self.events.emit(
                        "rate_change",
                        json!({"file": file.archive.manifest.name, "channel": channel.stream.to.to_string(), "rate_bps": rate}),
                    );
                    channel.stream.set_rate(rate, now, &self.sender);
                }
            }
            if self.config.on_demand
                && file.active
                && now.saturating_duration_since(file.last_interest) >= self.config.idle
            {
                file.active = false;
                relist = true;
                log::info!(
                    "{}: no receiver for {} s; stopping its channels",
                    file.archive.manifest.name,
                    self.config.idle.as_secs()
                );
                self.events
                    .emit("channel_stop", json!({"file": file.archive.manifest.name}));
            }
        }
        if relist {
            self.relist()?;
        }
        for slot in 0..self.clients.len() {
            let Some(c) = self.clients[slot].as_mut() else {
                continue;
            };
            if now.saturating_duration_since(c.last_heard) >= UNICAST_CLIENT_TIMEOUT {
                self.drop_client(slot, now, "silent");
                continue;
            }
            if let Some(rate) = c.rate.poll(now) {
                c.stream.set_rate(rate, now, &self.unicast_sender);
            }
        }
        Ok(())
    }

    fn final_log(&self, started: Instant) {
        let elapsed = started.elapsed().as_secs_f64();
        let loops: Vec<String> = self
            .files
            .iter()
            .flat_map(|f| {
                f.channels.iter().map(|c| {
                    let s = c.stream.carousel.stats();
                    format!(
                        "{} on {}: {} loops, {} repairs for {} NAKs ({} dropped), {} left to the loop, GRTT {:.1} ms",
                        f.archive.manifest.name,
                        c.stream.to,
                        c.stream.carousel.loops(),
                        s.repair_packets,
                        s.naks,
                        s.naks_dropped,
                        s.repairs_skipped,
                        c.stream.carousel.grtt().as_secs_f64() * 1e3
                    )
                })
            })
            .collect();
        let done = self.receivers.values().filter(|r| r.done).count();
        let pending: Vec<String> = self
            .receivers
            .values()
            .filter(|r| !r.done)
            .map(|r| {
                format!(
                    "{} at {} ({}/{} packets)",
                    r.name, r.addr, r.held, r.packet_count
                )
            })
            .collect();
        log::info!(
            "stopped after {elapsed:.1} s, {} sent ({}), {} of it by unicast; {} unvalidated requests answered with a cookie; {} receiver(s) done{}; {}",
            format_bytes(self.sent_bytes),
            format_rate(self.sent_bytes as f64 * 8.0 / elapsed.max(1e-9)),
            format_bytes(self.unicast_bytes),
            self.unvalidated,
            done,
            if pending.is_empty() {
                String::new()
            } else {
                format!(", unfinished: {}", pending.join(", "))
            },
            loops.join(", ")
        );
    }
}

/// Sends one small control datagram; a failure only costs the peer a retry.
fn send_quietly(socket: &mio::net::UdpSocket, datagram: &[u8], to: SocketAddrV4) {
    if let Err(e) = socket.send_to(datagram, to.into()) {
        log::debug!("answer to {to} not sent: {e}");
    }
}

/// Sends up to `stream.batch` datagrams that the pacer allows as one batch; a longer
/// datagram after shorter ones (GSO needs equal sizes, the last may be shorter)
/// goes in a batch of its own. Returns the bytes sent, 0 when the pacer allowed none.
fn send_batch(
    stream: &mut Stream,
    archive: &mut ArchiveFile,
    now: Instant,
    buf: &mut [u8],
    sender: &mut BatchSender,
    socket: BorrowedFd<'_>,
) -> Result<usize> {
    let len = stream.carousel.max_datagram_len();
    let (mut used, mut count, mut segment, mut total) = (0, 0, 0, 0);
    while count < stream.batch && stream.pacer.try_send(now, len) {
        let n = stream
            .carousel
            .poll_transmit(now, &mut buf[used..used + len], archive)
            .context(|| format!("cannot read archive of {}", archive.manifest.name))?
            .len();
        if count > 0 && n > segment {
            send(sender, socket, &buf[..used], segment, stream.to)?;
            total += used;
            buf.copy_within(used..used + n, 0);
            (used, count) = (0, 0);
        }
        if count == 0 {
            segment = n;
        }
        used += n;
        count += 1;
        if n < segment {
            break;
        }
    }
    if count > 0 {
        send(sender, socket, &buf[..used], segment, stream.to)?;
        total += used;
    }
    Ok(total)
}

/// Sends `batch` as datagrams of `segment` bytes, waiting out a full kernel queue.
fn send(
    sender: &mut BatchSender,
    socket: BorrowedFd<'_>,
    batch: &[u8],
    segment: usize,
    to: SocketAddrV4,
) -> Result<()> {
    loop {
        match sender.send(&socket, batch, segment, to) {
            Ok(()) => return Ok(()),
            // The device queue is momentarily full: back off briefly instead of failing.
            Err(e)
                if e.raw_os_error() == Some(libc::ENOBUFS)
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                std::thread::sleep(Duration::from_micros(200))
            }
            // A unicast client that went away: its time-out will drop it.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
            Err(e) => return Err(Error::new(format!("cannot send to {to}: {e}"))),
        }
    }
}
