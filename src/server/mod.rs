//! `loopcast serve`, the driver: opens the archives and sockets, and runs the
//! protocol's server endpoint (`loopcast_proto::server`) on a mio loop. It forwards
//! datagrams to the endpoint, sends what the endpoint transmits and renders its
//! events; every protocol decision is the endpoint's.

mod feed;
mod render;

use feed::Feed;

use crate::archive_file::{ArchiveFile, PackOptions, archive_for};
use crate::datapath::{BatchSender, MAX_GSO_SEGMENTS, MAX_SEND_BYTES};
use crate::error::{Context, Error, Result};
use crate::events::Events;
use crate::net;
use crate::signals::StopSignals;
use crate::units::{format_bytes, format_rate};
use loopcast_proto::server::{
    Archives, BatchLimits, ChannelSpec, DirectorLink, Endpoint, FileSpec, Origin, ServerConfig,
    ServerEvent, Socket, Transmit,
};
use loopcast_proto::wire;
use loopcast_proto::{AdaptMode, CookieJar, MasterKey, PayloadSource};
use std::collections::HashSet;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `serve` was asked to do.
pub struct ServeConfig {
    /// Plain files or ready archives.
    pub paths: Vec<PathBuf>,
    /// Master key.
    pub key: MasterKey,
    /// Local address to send from (unspecified: the kernel's choice).
    pub interface: net::Interface,
    /// Directory group.
    pub group: SocketAddr,
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
    /// Parity on each loop after every block, as a share of it (`--fec-overhead`).
    pub fec_overhead: f64,
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
    /// Directors to heartbeat to (empty: none).
    pub directors: Vec<SocketAddr>,
    /// The most this server means to send, bits/s, told to directors (0: not said).
    pub capacity: u64,
    /// Start a file's channels only when a receiver asks, stop them when idle.
    pub on_demand: bool,
    /// How long an on-demand file's channels run with no receiver reporting.
    pub idle: Duration,
    /// Print events as JSON lines on stdout.
    pub json: bool,
}

/// Most datagrams taken from one socket per turn of the loop.
const MAX_DRAIN: usize = 256;
/// How long to wait before sending again when the device queue was full.
const SEND_RETRY: Duration = Duration::from_micros(200);
/// Token of the unicast socket (channel control sockets use their channel's number).
const UNICAST: mio::Token = mio::Token(usize::MAX - 16);
/// Token of the directory group socket (other servers' listings).
const DIRECTORY: mio::Token = mio::Token(usize::MAX - 17);

/// The archives being served, read by the endpoint's carousels.
struct ArchiveSet(Vec<ArchiveFile>);

impl Archives for ArchiveSet {
    fn read_payload(&mut self, file: usize, body_offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0[file].read_payload(body_offset, buf)
    }
}

struct Server {
    endpoint: Endpoint,
    archives: ArchiveSet,
    /// Multicast sender (channels and directory).
    socket: UdpSocket,
    sender: BatchSender,
    unicast: mio::net::UdpSocket,
    unicast_sender: BatchSender,
    /// The directory group, where other servers' listings are heard (None: the
    /// unicast socket hears them, or nothing does).
    directory: Option<mio::net::UdpSocket>,
    /// Control sockets, one per channel, in the endpoint's (file, channel) order.
    controls: Vec<mio::net::UdpSocket>,
    /// Scopes link-local addresses going out and unscopes them coming in.
    interface: net::Interface,
    /// Datagrams the kernel could not take yet (ENOBUFS), and when to try again.
    blocked: Option<(Transmit, Vec<u8>, Instant)>,
    render: render::Render,
    buf: Vec<u8>,
    /// This site's key fingerprint, hex (for messages).
    fingerprint: String,
}

/// Runs the server until SIGINT or SIGTERM. A server new on its directory group
/// that finds its channel addresses in use starts again on free ones (spec §7.8).
pub fn serve(config: ServeConfig) -> Result<()> {
    serve_with(config, None)
}

/// Serves a relay's kept archives as they arrive (`relay`): `early`, then
/// `news`, say what of them is written (spec §2.4).
pub fn serve_relayed(
    config: ServeConfig,
    early: Vec<crate::storage::RelayNews>,
    news: std::sync::mpsc::Receiver<crate::storage::RelayNews>,
) -> Result<()> {
    serve_with(config, Some(Feed::new(early, news)))
}

fn serve_with(config: ServeConfig, mut feed: Option<Feed>) -> Result<()> {
    let mut signals = StopSignals::new()?;
    let mut first_channel = 1;
    loop {
        let relayed = feed.is_some();
        let mut server = start(&config, first_channel, &mut signals, relayed)?;
        if let Some(feed) = &feed {
            feed.replay(Instant::now(), &mut server.endpoint);
        }
        match server.run(&mut signals, feed.as_mut())? {
            Some(next) => first_channel = next,
            None => return Ok(()),
        }
    }
}

/// Opens the archives and sockets and makes the endpoint, with a new session id
/// and channels numbered from `first_channel`.
fn start(
    config: &ServeConfig,
    first_channel: u32,
    signals: &mut StopSignals,
    relayed: bool,
) -> Result<Server> {
    let session_id: u32 = rand::random();
    let ip_udp_overhead = wire::ip_udp_overhead(config.group);
    let now = Instant::now();
    let total_rate: u64 = config.rates.iter().sum();
    let socket = net::multicast_sender(
        config.group,
        config.interface,
        config.ttl,
        net::buffer_size_for_rate(total_rate * config.paths.len() as u64),
    )?;
    let sender = BatchSender::new(&socket, config.gso);
    let mut archives = Vec::new();
    let mut specs = Vec::new();
    let mut controls = Vec::new();
    let mut names = HashSet::new();
    for (i, path) in config.paths.iter().enumerate() {
        let archive_path = archive_for(path, &config.key, &config.cache_dir, config.pack)?;
        let mut archive = ArchiveFile::open(&archive_path, &config.key)?;
        if !names.insert(archive.manifest.name.clone()) {
            return Err(Error::new(format!(
                "two files are named {:?}; names must be unique on one server",
                archive.manifest.name
            )));
        }
        // Re-sign with this server's payload size (as many whole cells as its
        // packets carry); the body and archive id are unchanged.
        let cell_size = archive.manifest.cell_size;
        let cells = wire::cells_per_packet(config.packet_size, ip_udp_overhead, cell_size);
        if cells == 0 {
            return Err(Error::new(format!(
                "{}: its cells are {cell_size} bytes, and packets of {} bytes carry at most {}; \
                 serve it with a larger --packet-size or pack it again with `pack --packet-size {}`",
                archive_path.display(),
                config.packet_size,
                wire::payload_size_for_packet(config.packet_size, ip_udp_overhead),
                config.packet_size
            )));
        }
        archive.manifest.payload_size = cells * cell_size;
        let manifest_bytes = archive
            .manifest
            .encode(&config.key.file_key(archive.manifest.archive_id));
        warn_long_loop(&archive.manifest, &config.rates);
        let mut channels = Vec::new();
        for (j, &rate_bps) in config.rates.iter().enumerate() {
            let number = i * config.rates.len() + j;
            let group = net::channel_for(config.group, number as u32 + first_channel)?;
            let control_port = net::control_port_for(group)?;
            let mut control = mio::net::UdpSocket::from_std(net::multicast_receiver(
                SocketAddr::new(group.ip(), control_port),
                config.interface,
                1 << 20,
            )?);
            signals
                .poll
                .registry()
                .register(&mut control, mio::Token(number), mio::Interest::READABLE)
                .context(|| "cannot register socket".into())?;
            controls.push(control);
            log::info!(
                "serving {} ({}, archive {} in {} packets) on {} at {}",
                archive.manifest.name,
                format_bytes(archive.manifest.original_size),
                format_bytes(archive.manifest.body_len),
                archive.manifest.packet_count(),
                group,
                format_rate(rate_bps as f64)
            );
            channels.push(ChannelSpec {
                group,
                control_port,
                rate_bps,
            });
        }
        specs.push(FileSpec {
            relayed,
            file_key: config.key.file_key(archive.manifest.archive_id),
            manifest: archive.manifest.clone(),
            manifest_bytes,
            channels,
        });
        archives.push(archive);
    }
    let mut unicast = mio::net::UdpSocket::from_std(net::unicast_socket(
        config.interface.local(config.group, config.unicast_port)?,
        net::buffer_size_for_rate(config.unicast_max_rate),
    )?);
    signals
        .poll
        .registry()
        .register(&mut unicast, UNICAST, mio::Interest::READABLE)
        .context(|| "cannot register socket".into())?;
    let unicast_sender = BatchSender::new(&unicast, config.gso);
    // `--unicast-port 0`: the port the kernel chose.
    let unicast_port = (unicast.local_addr())
        .context(|| "cannot read the unicast socket's address".into())?
        .port();
    let directory = hear_other_servers(config, unicast_port, &mut unicast, signals);
    let mut cookie_key = [0u8; 32];
    rand::fill(&mut cookie_key);
    let endpoint = Endpoint::new(
        ServerConfig {
            session_id,
            directory_key: config.key.directory_mac_key(),
            key_fingerprint: config.key.fingerprint(),
            directory: config.group,
            unicast_port,
            max_datagram: config.packet_size - ip_udp_overhead,
            repair_share: config.repair_share,
            fec_overhead: config.fec_overhead,
            grtt_floor: loopcast_proto::sender::DEFAULT_GRTT_FLOOR,
            group_size: 1,
            adapt: config.adapt,
            unicast_max_rate: config.unicast_max_rate,
            unicast_max_clients: config.unicast_max_clients,
            on_demand: config.on_demand,
            idle: config.idle,
            batch: BatchLimits {
                bytes: MAX_SEND_BYTES,
                datagrams: MAX_GSO_SEGMENTS,
            },
            directors: (!config.directors.is_empty()).then(|| DirectorLink {
                started_ms: crate::director::unix_ms(),
                addresses: config.directors.clone(),
                key: config.key.director_mac_key(),
                capacity_bps: config.capacity,
            }),
        },
        specs,
        CookieJar::new(cookie_key, now),
        now,
    )
    .map_err(Error::new)?;
    log::info!(
        "session {session_id:08x}: announcing {} file(s) on {}, {} channel(s) each; unicast on port {}; {}",
        endpoint.file_count(),
        config.group,
        config.rates.len(),
        unicast_port,
        if sender.gso() {
            "sending with UDP GSO"
        } else {
            "sending without GSO (sendmmsg)"
        }
    );
    Ok(Server {
        buf: vec![0u8; endpoint.buffer_len().max(65536)],
        endpoint,
        archives: ArchiveSet(archives),
        socket,
        sender,
        unicast,
        unicast_sender,
        directory,
        controls,
        interface: config.interface,
        blocked: None,
        render: render::Render::new(Events::new(config.json), config.idle),
        fingerprint: loopcast_proto::keys::hex(&config.key.fingerprint()),
    })
}

/// A loop longer than this is told: receivers wait a loop for what they miss.
const LONG_LOOP: Duration = Duration::from_secs(3600);

/// Warns when one loop of `manifest` takes over `LONG_LOOP` at the fastest of `rates`.
fn warn_long_loop(manifest: &loopcast_proto::Manifest, rates: &[u64]) {
    let fastest = rates.iter().copied().max().unwrap_or(1).max(1);
    let secs = manifest.body_len as f64 * 8.0 / fastest as f64;
    if secs > LONG_LOOP.as_secs_f64() {
        log::warn!(
            "{}: one loop of {} takes {} at {}: a receiver waits that long for what it misses (rates are bits/s: 100M, 1G)",
            manifest.name,
            format_bytes(manifest.body_len),
            crate::units::format_duration(Duration::from_secs_f64(secs)),
            format_rate(fastest as f64)
        );
    }
}

/// CPU time this process has used (user and system).
fn cpu_time() -> Duration {
    // SAFETY: rusage is plain old data that getrusage fills for this process.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage owned by this frame.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// Thousandths of a core this process used between two samples of (wall, CPU) time.
fn cpu_permille(before: (Instant, Duration), after: (Instant, Duration)) -> u16 {
    let wall = after.0.saturating_duration_since(before.0).as_secs_f64();
    let cpu = after.1.saturating_sub(before.1).as_secs_f64();
    if wall <= 0.0 {
        return 0;
    }
    (cpu / wall * 1000.0).round().clamp(0.0, u16::MAX as f64) as u16
}

/// A socket on the directory group, so that the endpoint hears other servers'
/// listings (spec §7.8). A unicast socket bound to every address on the group's
/// port is joined to the group instead (no other socket may share its port); a
/// server that can do neither says so and serves without moving off taken channels.
fn hear_other_servers(
    config: &ServeConfig,
    unicast_port: u16,
    unicast: &mut mio::net::UdpSocket,
    signals: &StopSignals,
) -> Option<mio::net::UdpSocket> {
    let cannot = |e: &dyn std::fmt::Display| {
        log::warn!(
            "cannot hear other servers on {} ({e}): channel addresses another server uses are not avoided",
            config.group
        )
    };
    if config.interface.binds_every_address(config.group) && unicast_port == config.group.port() {
        let joined = net::join(
            &socket2::SockRef::from(&*unicast),
            config.group.ip(),
            config.interface,
        );
        if let Err(e) = joined {
            cannot(&e);
        }
        return None;
    }
    let socket = match net::multicast_receiver(config.group, config.interface, 1 << 20) {
        Ok(socket) => socket,
        Err(e) => {
            cannot(&e);
            return None;
        }
    };
    let mut socket = mio::net::UdpSocket::from_std(socket);
    if let Err(e) =
        signals
            .poll
            .registry()
            .register(&mut socket, DIRECTORY, mio::Interest::READABLE)
    {
        cannot(&e);
        return None;
    }
    Some(socket)
}

impl Server {
    /// Serves until a stop signal (None), or until the endpoint finds its channels
    /// taken (Some: the first channel number to start again from).
    fn run(
        &mut self,
        signals: &mut StopSignals,
        mut feed: Option<&mut Feed>,
    ) -> Result<Option<u32>> {
        let started = Instant::now();
        let mut unfinished: Vec<mio::Token> = Vec::new();
        let mut cpu_sample = (started, cpu_time());
        let mut silent =
            crate::waiting::SilentDirectors::new("heartbeats", self.fingerprint.clone(), started);
        loop {
            let now = Instant::now();
            // The CPU this server uses, per core, told to directors (spec §9.1);
            // the status line and the debug pulse, once a second too.
            if now >= cpu_sample.0 + Duration::from_secs(1) {
                let sample = (now, cpu_time());
                self.endpoint.set_cpu_load(cpu_permille(cpu_sample, sample));
                cpu_sample = sample;
                self.render.pulse(&self.endpoint, now - started);
                silent.look(now, &self.endpoint.silent_directors(now));
            }
            if let Some(feed) = feed.as_deref_mut() {
                feed.take(now, &mut self.endpoint);
            }
            self.endpoint.handle_timeout(now);
            self.transmit(now)?;
            while let Some(event) = self.endpoint.poll_event() {
                self.render.server_event(&self.endpoint, &event);
                if let ServerEvent::ChannelsTaken { first_channel, .. } = event {
                    return Ok(Some(first_channel));
                }
            }
            let wake = match &self.blocked {
                Some((.., retry)) => *retry,
                None => self.endpoint.poll_timeout(),
            };
            // Sockets left with datagrams by a bounded drain: look again at once.
            let mut wait = match unfinished.is_empty() {
                true => wake.saturating_duration_since(Instant::now()),
                false => Duration::ZERO,
            };
            if feed.as_ref().is_some_and(|f| f.open) {
                wait = wait.min(feed::FEED_INTERVAL);
            }
            if signals.wait(Some(wait))? {
                break;
            }
            let mut readable: Vec<mio::Token> = signals.events.iter().map(|e| e.token()).collect();
            readable.append(&mut unfinished);
            readable.sort_unstable_by_key(|t| t.0);
            readable.dedup();
            for token in readable {
                if !self.drain(token)? {
                    unfinished.push(token);
                }
            }
        }
        self.render.clear_status();
        self.render.final_log(&self.endpoint, started);
        Ok(None)
    }

    /// Hands the datagrams waiting on the socket of `token` to the endpoint, at
    /// most `MAX_DRAIN` of them, so that a flood on one socket cannot hold the loop
    /// (the pacer, the other sockets). Returns true when the socket is empty.
    fn drain(&mut self, token: mio::Token) -> Result<bool> {
        let per_file = self.endpoint.channels_per_file().max(1);
        for _ in 0..MAX_DRAIN {
            let (n, origin) = if token == UNICAST {
                match net::recv_from_nonblocking(&self.unicast, &mut self.buf)
                    .context(|| "cannot receive on the unicast port".into())?
                {
                    Some((n, from)) => (n, Origin::Unicast(self.interface.unscoped(from))),
                    None => return Ok(true),
                }
            } else if token == DIRECTORY {
                let Some(directory) = &self.directory else {
                    return Ok(true);
                };
                match net::recv_from_nonblocking(directory, &mut self.buf)
                    .context(|| "cannot receive on the directory group".into())?
                {
                    Some((n, from)) => (n, Origin::Directory(self.interface.unscoped(from))),
                    None => return Ok(true),
                }
            } else {
                let Some(control) = self.controls.get(token.0) else {
                    return Ok(true);
                };
                match net::recv_from_nonblocking(control, &mut self.buf)
                    .context(|| "cannot receive NAKs".into())?
                {
                    Some((n, from)) => (
                        n,
                        Origin::Control {
                            file: token.0 / per_file,
                            channel: token.0 % per_file,
                            from: self.interface.unscoped(from),
                        },
                    ),
                    None => return Ok(true),
                }
            };
            self.endpoint
                .handle_datagram(Instant::now(), origin, &self.buf[..n]);
        }
        Ok(false)
    }

    /// Sends what the endpoint has to send now, after anything the kernel refused
    /// before; a full device queue stops it until `SEND_RETRY` has passed.
    fn transmit(&mut self, now: Instant) -> Result<()> {
        if let Some((t, bytes, retry)) = self.blocked.take()
            && (now < retry || !self.send(&t, &bytes)?)
        {
            self.blocked = Some((t, bytes, retry.max(now + SEND_RETRY)));
            return Ok(());
        }
        while let Some(t) = self
            .endpoint
            .poll_transmit(now, &mut self.buf, &mut self.archives)
            .context(|| "cannot read an archive".into())?
        {
            let bytes = std::mem::take(&mut self.buf);
            let sent = self.send(&t, &bytes[..t.len])?;
            self.buf = bytes;
            if !sent {
                self.blocked = Some((t, self.buf[..t.len].to_vec(), now + SEND_RETRY));
                return Ok(());
            }
        }
        Ok(())
    }

    /// Sends one transmit; false when the kernel's queue is full (try again later).
    fn send(&mut self, t: &Transmit, bytes: &[u8]) -> Result<bool> {
        let to = self.interface.scoped(t.to);
        let result = match t.socket {
            Socket::Multicast => self.sender.send(&self.socket, bytes, t.segment, to),
            Socket::Unicast => self
                .unicast_sender
                .send(&self.unicast, bytes, t.segment, to),
        };
        match result {
            Ok(()) => Ok(true),
            Err(e)
                if e.raw_os_error() == Some(libc::ENOBUFS)
                    || e.kind() == io::ErrorKind::WouldBlock =>
            {
                Ok(false)
            }
            // A unicast client that went away: its time-out will drop it.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(true),
            Err(e) => Err(Error::new(format!("cannot send to {}: {e}", t.to))),
        }
    }
}
