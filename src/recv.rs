//! `loopcast recv` and `loopcast ls`: listen on the directory group, join each wanted
//! file's channel (or several, or fall back to a unicast stream), store packets at
//! their offsets, verify and deliver, and tell the server how it goes.

use crate::datapath::BatchReceiver;
use crate::error::{Context, Error, Result};
use crate::events::Events;
use crate::net;
use crate::progress::{FileProgress, Progress};
use crate::signals::StopSignals;
use crate::storage::{self, FrameReport, FrameWorker, PARTIAL_DIR, PartialFile, UnpackFailure};
use crate::units::{format_bytes, format_rate};
use loopcast_proto::archive::Unpacker;
use loopcast_proto::keys::hex;
use loopcast_proto::rate::SELECT_SAMPLE;
use loopcast_proto::wire::{self, AnnounceEntry, COOKIE_LEN, Packet};
use loopcast_proto::{ChannelSelector, FileReceiver, FrameTracker, MasterKey, NakMode, Outcome};
use mio::{Interest, Token, Waker};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// What `recv` was asked to do.
pub struct RecvConfig {
    /// Master key.
    pub key: MasterKey,
    /// Local address to join groups on (unspecified: the kernel's choice).
    pub interface: Ipv4Addr,
    /// Directory group.
    pub group: SocketAddrV4,
    /// Where finished files go.
    pub out_dir: PathBuf,
    /// Files to receive; empty means every file on air.
    pub names: Vec<String>,
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// Testing aid: drop this share (0 to 1) of incoming DATA packets at random.
    pub debug_drop: f64,
    /// Read UDP GRO bundles where the kernel offers them (`--no-gro` clears it).
    pub gro: bool,
    /// Fastest channel to take, bits/s (None: the fastest on offer).
    pub max_rate: Option<u64>,
    /// Join every channel within `max_rate` at once.
    pub aggregate: bool,
    /// Ask for a unicast stream after this long without data.
    pub sync_timeout: Duration,
    /// The server's unicast address, for when no multicast is heard at all.
    pub server: Option<SocketAddrV4>,
    /// Skip multicast entirely: unicast from `server`.
    pub unicast_only: bool,
    /// Print events as JSON lines on stdout.
    pub json: bool,
}

const DIRECTORY: Token = Token(0);
const WAKER: Token = Token(1);
/// The socket for requests and reports to servers.
const LINK: Token = Token(2);
const FIRST_RECEPTION: usize = 3;
/// Tokens per reception: data and control socket per channel, then the unicast socket.
const TOKENS_PER_RECEPTION: usize = 2 * wire::MAX_CHANNELS + 1;
/// The receiver's loop track of a unicast stream (multicast channels use their index).
const UNICAST_TRACK: usize = wire::MAX_CHANNELS;
/// How often received maps are made durable.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// How often plain progress lines are logged when no bar is drawn.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// A session silent this long may be replaced by another serving the same file.
const SESSION_SILENCE: Duration = Duration::from_secs(3);
/// How long to wait for an answer before repeating a request.
const REQUEST_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Receiving,
    Verifying,
    Done,
}

/// Where a reception's datagrams come from: token offsets within a reception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Data socket of the joined channel in this slot.
    Channel(usize),
    /// Control socket (NAKs) of the joined channel in this slot.
    Control(usize),
    /// The unicast stream's socket.
    Unicast,
}

impl Source {
    fn offset(self) -> usize {
        match self {
            Source::Channel(slot) => 2 * slot,
            Source::Control(slot) => 2 * slot + 1,
            Source::Unicast => 2 * wire::MAX_CHANNELS,
        }
    }

    fn from_offset(offset: usize) -> Source {
        match offset {
            o if o == 2 * wire::MAX_CHANNELS => Source::Unicast,
            o if o % 2 == 0 => Source::Channel(o / 2),
            o => Source::Control(o / 2),
        }
    }
}

/// A multicast channel a reception has joined.
struct Joined {
    /// The channel's index in the file's ANNOUNCE entry.
    index: usize,
    socket: mio::net::UdpSocket,
    /// The channel's control port, where this and other receivers' NAKs go.
    control: mio::net::UdpSocket,
}

/// A unicast stream's socket and the state of its request.
struct UnicastPeer {
    socket: mio::net::UdpSocket,
    server: SocketAddrV4,
    cookie: [u8; COOKIE_LEN],
    next_request: Instant,
}

impl UnicastPeer {
    fn open(interface: Ipv4Addr, server: SocketAddrV4, buffer: usize) -> Result<Self> {
        Ok(Self {
            socket: mio::net::UdpSocket::from_std(net::unicast_socket(interface, 0, buffer)?),
            server,
            cookie: [0; COOKIE_LEN],
            next_request: Instant::now(),
        })
    }

    /// Sends a request (with the cookie once we have one) and sets when to repeat it.
    fn request(&mut self, now: Instant, receiver_id: u32, flags: u8, max_rate: u64, name: &str) {
        let request = wire::Request {
            receiver_id,
            flags,
            max_rate_bps: max_rate,
            cookie: self.cookie,
            name: name.to_string(),
        };
        self.send(&wire::encode_request(0, &request));
        self.next_request = now + REQUEST_RETRY;
    }

    /// Sends one datagram to the server; a lost one is repeated by its timer.
    fn send(&self, datagram: &[u8]) {
        if let Err(e) = self.socket.send_to(datagram, self.server.into()) {
            log::debug!("datagram to {} not sent: {e}", self.server);
        }
    }
}

/// One file being received.
struct Reception {
    entry: AnnounceEntry,
    /// The server's unicast address, when known (ANNOUNCE's source, else `--server`).
    server: Option<SocketAddrV4>,
    /// Multicast channels joined (one, or several with `--aggregate`).
    joined: Vec<Joined>,
    selector: ChannelSelector,
    next_sample: Instant,
    /// The unicast stream, once this file fell back to one.
    unicast: Option<UnicastPeer>,
    /// When DATA last arrived (or the reception started): the sync time-out.
    last_data: Instant,
    /// On-demand file: when to ask again for its channels to start.
    next_start_request: Option<Instant>,
    /// DATA packets thrown away by `--debug-drop`.
    debug_dropped: u64,
    fsm: FileReceiver,
    partial: Option<PartialFile>,
    /// Frame tracking and unpacking, from when the frame table has arrived and verified.
    frames: Option<Frames>,
    state: State,
    dirty: bool,
    started: Instant,
    resumed: u32,
    progress: FileProgress,
}

impl Reception {
    /// What to call the channel this reception reports on (announce index or unicast).
    fn report_channel(&self) -> u8 {
        match (&self.unicast, self.joined.first()) {
            (None, Some(j)) => j.index as u8,
            _ => wire::UNICAST_CHANNEL,
        }
    }

    /// Datagrams the kernel dropped on this reception's sockets (buffer full).
    fn kernel_drops(&self, batch: &BatchReceiver) -> u32 {
        self.joined
            .iter()
            .map(|j| batch.kernel_drops(&j.socket))
            .chain(self.unicast.iter().map(|u| batch.kernel_drops(&u.socket)))
            .sum()
    }

    fn describe_channels(&self) -> String {
        if let Some(u) = &self.unicast {
            return format!("unicast from {}", u.server);
        }
        self.joined
            .iter()
            .map(|j| {
                let c = &self.entry.channels[j.index];
                format!("{} ({})", c.group, format_rate(c.rate_bps as f64))
            })
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// Which frames of a file are whole, and the worker that unpacks them off the loop.
struct Frames {
    tracker: FrameTracker,
    worker: FrameWorker,
}

/// A frame worker's report: reception index, archive id, report.
type VerifyResult = (usize, u64, FrameReport);

/// One server's file list as heard so far.
struct Listing {
    parts: u8,
    heard: HashSet<u8>,
    names: HashSet<String>,
}

struct Receiver {
    config: RecvConfig,
    work_dir: PathBuf,
    signals: StopSignals,
    directory: Option<mio::net::UdpSocket>,
    /// Requests for listings and channel starts, reports and DONE of multicast receptions.
    link: mio::net::UdpSocket,
    /// Cookies servers gave the link.
    cookies: HashMap<SocketAddrV4, [u8; COOKIE_LEN]>,
    /// With `--server`: where and when to ask for the listing, until one is heard.
    listing_request: Option<(SocketAddrV4, Instant)>,
    waker: Arc<Waker>,
    verified_tx: mpsc::Sender<VerifyResult>,
    verified_rx: mpsc::Receiver<VerifyResult>,
    receptions: Vec<Reception>,
    /// Per server session: its file list as heard so far.
    listings: HashMap<u32, Listing>,
    /// Per server session: its unicast address.
    servers: HashMap<u32, SocketAddrV4>,
    progress: Progress,
    persister: storage::Persister,
    nak_socket: std::net::UdpSocket,
    rng: SmallRng,
    /// Random id for the link's requests.
    link_id: u32,
    buf: Vec<u8>,
    /// Batched reads of the data channels.
    batch: BatchReceiver,
    /// Frames completed by the datagrams being handled (scratch).
    completed: Vec<u32>,
    events: Events,
    started: Instant,
}

/// Runs the receiver until every wanted file is delivered, the time-out, an error or a signal.
pub fn recv(config: RecvConfig) -> Result<()> {
    if config.unicast_only && config.server.is_none() {
        return Err(Error::new("--unicast needs --server HOST[:PORT]"));
    }
    let work_dir = config.out_dir.join(PARTIAL_DIR);
    std::fs::create_dir_all(&work_dir).context(|| {
        format!(
            "cannot create output directory {}",
            config.out_dir.display()
        )
    })?;
    probe_writable(&config.out_dir)?;
    probe_writable(&work_dir)?;
    let signals = StopSignals::new()?;
    let registry = signals.poll.registry();
    let directory = if config.unicast_only {
        None
    } else {
        let mut directory = mio::net::UdpSocket::from_std(net::multicast_receiver(
            config.group,
            config.interface,
            1 << 20,
        )?);
        registry
            .register(&mut directory, DIRECTORY, Interest::READABLE)
            .context(|| "cannot register socket".into())?;
        Some(directory)
    };
    let mut link =
        mio::net::UdpSocket::from_std(net::unicast_socket(config.interface, 0, 1 << 20)?);
    registry
        .register(&mut link, LINK, Interest::READABLE)
        .context(|| "cannot register socket".into())?;
    // With multicast, ask the server for its listing only if the directory stays silent.
    let listing_request = config.server.map(|server| {
        let wait = if config.unicast_only {
            Duration::ZERO
        } else {
            config.sync_timeout
        };
        (server, Instant::now() + wait)
    });
    let waker = Arc::new(
        Waker::new(signals.poll.registry(), WAKER).context(|| "cannot create waker".into())?,
    );
    let (verified_tx, verified_rx) = mpsc::channel();
    let receiver_interface = config.interface;
    let mut rng = SmallRng::seed_from_u64(rand::random());
    let mut receiver = Receiver {
        events: Events::new(config.json),
        config,
        work_dir,
        signals,
        directory,
        link,
        cookies: HashMap::new(),
        listing_request,
        waker,
        verified_tx,
        verified_rx,
        receptions: Vec::new(),
        listings: HashMap::new(),
        servers: HashMap::new(),
        progress: Progress::new(),
        persister: storage::Persister::new()?,
        nak_socket: net::multicast_sender(receiver_interface, net::DEFAULT_TTL, 1 << 20)?,
        link_id: rng.random(),
        rng,
        buf: vec![0u8; 65536],
        batch: BatchReceiver::new(),
        completed: Vec::new(),
        started: Instant::now(),
    };
    let result = receiver.run();
    if let Err(e) = &result {
        receiver.save_progress();
        receiver
            .events
            .emit("error", json!({"error": e.to_string()}));
    }
    result
}

fn probe_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".loopcast-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").context(|| format!("cannot write to {}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

impl Receiver {
    fn run(&mut self) -> Result<()> {
        let started = self.started;
        let deadline = self.config.timeout.map(|t| started + t);
        let mut next_persist = started + PERSIST_INTERVAL;
        let mut next_progress = started + PROGRESS_INTERVAL;
        let wanted = if self.config.names.is_empty() {
            "files".to_string()
        } else {
            self.config.names.join(", ")
        };
        match (self.config.server, self.config.unicast_only) {
            (Some(server), true) => log::info!("asking {server} for {wanted} by unicast"),
            _ => log::info!("waiting for {wanted} on {}", self.config.group),
        }
        loop {
            if self.all_done() {
                self.finish_log(started);
                return Ok(());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::timeout(format!(
                    "timed out after {} s: {}",
                    self.config.timeout.unwrap_or_default().as_secs(),
                    self.describe_missing()
                )));
            }
            let wake = [deadline, Some(now + PERSIST_INTERVAL), self.next_timer()];
            let wait = wake
                .into_iter()
                .flatten()
                .min()
                .expect("persist interval")
                .saturating_duration_since(now);
            if self.signals.wait(Some(wait))? {
                return Err(Error::new(format!(
                    "interrupted; progress saved, run again to resume: {}",
                    self.describe_missing()
                )));
            }
            let tokens: Vec<Token> = self.signals.events.iter().map(|e| e.token()).collect();
            for token in tokens {
                match token {
                    DIRECTORY => self.drain_directory()?,
                    LINK => self.drain_link()?,
                    WAKER => {}
                    Token(t)
                        if t >= FIRST_RECEPTION
                            && (t - FIRST_RECEPTION) / TOKENS_PER_RECEPTION
                                < self.receptions.len() =>
                    {
                        let index = (t - FIRST_RECEPTION) / TOKENS_PER_RECEPTION;
                        let source =
                            Source::from_offset((t - FIRST_RECEPTION) % TOKENS_PER_RECEPTION);
                        match source {
                            Source::Control(slot) => self.drain_control(index, slot)?,
                            data => self.drain_data(index, data)?,
                        }
                    }
                    _ => {}
                }
            }
            while let Ok((index, archive_id, report)) = self.verified_rx.try_recv() {
                // Reports of a reception since replaced are stale.
                if self.receptions[index].entry.archive_id == archive_id {
                    self.frame_report(index, report)?;
                }
            }
            self.run_timers()?;
            let now = Instant::now();
            if let Some(e) = self.persister.take_error() {
                return Err(e);
            }
            if now >= next_persist {
                self.persist_all()?;
                next_persist = now + PERSIST_INTERVAL;
            }
            if now >= next_progress {
                self.log_progress();
                next_progress = now + PROGRESS_INTERVAL;
            }
        }
    }

    fn wanted(&self, name: &str) -> bool {
        self.config.names.is_empty() || self.config.names.iter().any(|n| n == name)
    }

    /// True when every wanted file is delivered (for "all files": once a whole listing was heard).
    fn all_done(&self) -> bool {
        let done: HashSet<&str> = self
            .receptions
            .iter()
            .filter(|r| r.state == State::Done)
            .map(|r| r.entry.name.as_str())
            .collect();
        if !self.config.names.is_empty() {
            return self.config.names.iter().all(|n| done.contains(n.as_str()));
        }
        self.listings.values().any(|l| {
            l.heard.len() == l.parts as usize && l.names.iter().all(|n| done.contains(n.as_str()))
        })
    }

    fn drain_directory(&mut self) -> Result<()> {
        loop {
            let Some(directory) = &self.directory else {
                return Ok(());
            };
            let Some((n, from)) = net::recv_from_nonblocking(directory, &mut self.buf)
                .context(|| format!("cannot receive on {}", self.config.group))?
            else {
                return Ok(());
            };
            let bytes = self.buf[..n].to_vec();
            self.take_listing(&bytes, *from.ip(), None)?;
        }
    }

    /// Answers from servers to the link: cookies and listings.
    fn drain_link(&mut self) -> Result<()> {
        while let Some((n, from)) = net::recv_from_nonblocking(&self.link, &mut self.buf)
            .context(|| "cannot receive from servers".into())?
        {
            let bytes = self.buf[..n].to_vec();
            match wire::decode(&bytes) {
                Ok(wire::Datagram {
                    packet: Packet::Cookie(cookie),
                    ..
                }) => {
                    // Ask again at once, validated this time.
                    self.cookies.insert(from, cookie);
                    let now = Instant::now();
                    if let Some((server, at)) = self.listing_request.as_mut()
                        && *server == from
                    {
                        *at = now;
                    }
                    for r in &mut self.receptions {
                        if r.server == Some(from) && r.next_start_request.is_some() {
                            r.next_start_request = Some(now);
                        }
                    }
                }
                Ok(_) => self.take_listing(&bytes, *from.ip(), Some(from))?,
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Sends a request from the link to `server`, with its cookie once we have one.
    fn link_request(&self, server: SocketAddrV4, flags: u8, name: &str) {
        let request = wire::Request {
            receiver_id: self.link_id,
            flags,
            max_rate_bps: self.config.max_rate.unwrap_or(0),
            cookie: self
                .cookies
                .get(&server)
                .copied()
                .unwrap_or([0; COOKIE_LEN]),
            name: name.to_string(),
        };
        self.link_send(&wire::encode_request(0, &request), server);
    }

    /// Sends a datagram from the link; a lost one is repeated by its timer or not needed.
    fn link_send(&self, datagram: &[u8], to: SocketAddrV4) {
        if let Err(e) = self.link.send_to(datagram, to.into()) {
            log::debug!("datagram to {to} not sent: {e}");
        }
    }

    /// Takes an ANNOUNCE heard from `source` by multicast, or by unicast from
    /// `unicast_from` (a server asked with `--server`), and follows the wanted files it lists.
    fn take_listing(
        &mut self,
        bytes: &[u8],
        source: Ipv4Addr,
        unicast_from: Option<SocketAddrV4>,
    ) -> Result<()> {
        let Ok(datagram) = wire::decode(bytes) else {
            return Ok(());
        };
        let Packet::Announce(announce) = datagram.packet else {
            return Ok(());
        };
        let session = datagram.session_id;
        for entry in &announce.entries {
            loopcast_proto::manifest::check_name(&entry.name).map_err(|why| {
                Error::new(format!(
                    "server {session:08x} offers a file named {:?} ({why}); refusing it",
                    entry.name
                ))
            })?;
        }
        let server = unicast_from.unwrap_or(SocketAddrV4::new(source, announce.unicast_port));
        self.servers.insert(session, server);
        self.listing_request = None; // a listing was heard: no need to ask for one
        let listing = self.listings.entry(session).or_insert_with(|| Listing {
            parts: announce.parts,
            heard: HashSet::new(),
            names: HashSet::new(),
        });
        listing.heard.insert(announce.part);
        listing
            .names
            .extend(announce.entries.iter().map(|e| e.name.clone()));
        for entry in announce.entries {
            if self.wanted(&entry.name) {
                self.follow(session, entry, unicast_from.is_some())?;
            }
        }
        Ok(())
    }

    /// Starts receiving `entry`, or restarts it if the server now offers another archive
    /// under that name, or took over from a silent session. A file listed by unicast
    /// (no multicast heard at all) is streamed by unicast at once.
    fn follow(&mut self, session: u32, entry: AnnounceEntry, by_unicast: bool) -> Result<()> {
        let now = Instant::now();
        let existing = self
            .receptions
            .iter()
            .position(|r| r.entry.name == entry.name);
        if let Some(i) = existing {
            let r = &mut self.receptions[i];
            let changed = r.entry.archive_id != entry.archive_id;
            let silent = r.fsm.session_id() != session
                && r.fsm.last_heard().unwrap_or(r.started) + SESSION_SILENCE < now;
            if r.state != State::Receiving || !(changed || silent) {
                if r.fsm.session_id() == session {
                    r.entry.flags = entry.flags; // on-demand channels started or stopped
                }
                return Ok(());
            }
            log::info!(
                "{}: server {session:08x} now serves archive {:016x}; switching to it",
                entry.name,
                entry.archive_id
            );
            self.persist(i)?;
        }
        let index = existing.unwrap_or(self.receptions.len());
        let selector = ChannelSelector::new(
            &entry
                .channels
                .iter()
                .map(|c| c.rate_bps)
                .collect::<Vec<_>>(),
            self.config.max_rate,
        );
        let reception = Reception {
            fsm: FileReceiver::new(
                self.config.key.clone(),
                session,
                entry.archive_id,
                rand::random(),
                NakMode::Suppressed,
            ),
            progress: self.progress.add(&entry.name, 0),
            server: self.servers.get(&session).copied().or(self.config.server),
            joined: Vec::new(),
            selector,
            next_sample: now + SELECT_SAMPLE,
            unicast: None,
            last_data: now,
            next_start_request: None,
            entry,
            debug_dropped: 0,
            partial: None,
            frames: None,
            state: State::Receiving,
            dirty: false,
            started: now,
            resumed: 0,
        };
        match existing {
            Some(i) => {
                let mut old = std::mem::replace(&mut self.receptions[i], reception);
                self.close_sources(&mut old);
            }
            None => self.receptions.push(reception),
        }
        let r = &self.receptions[index];
        self.events.emit(
            "join",
            json!({"file": r.entry.name, "size": r.entry.original_size,
                   "server": r.server.map(|s| s.to_string())}),
        );
        if by_unicast || self.config.unicast_only {
            return self.fall_back(index, "no multicast heard");
        }
        let channels = if self.config.aggregate {
            r.selector.allowed().to_vec()
        } else {
            vec![r.selector.channel()]
        };
        for channel in channels {
            self.join_channel(index, channel)?;
        }
        let r = &mut self.receptions[index];
        if r.entry.idle() {
            r.next_start_request = Some(now);
        }
        log::info!(
            "{}: joining {} ({}{})",
            r.entry.name,
            r.describe_channels(),
            format_bytes(r.entry.original_size),
            if r.entry.idle() {
                ", on demand: asking the server to start it"
            } else {
                ""
            }
        );
        Ok(())
    }

    fn token(index: usize, source: Source) -> Token {
        Token(FIRST_RECEPTION + index * TOKENS_PER_RECEPTION + source.offset())
    }

    /// Joins channel `channel` (announce index) of reception `index` in a free slot.
    fn join_channel(&mut self, index: usize, channel: usize) -> Result<()> {
        let r = &mut self.receptions[index];
        let info = r.entry.channels[channel];
        let mut socket = mio::net::UdpSocket::from_std(net::multicast_receiver(
            info.group,
            self.config.interface,
            net::buffer_size_for_rate(info.rate_bps),
        )?);
        let mut control = mio::net::UdpSocket::from_std(net::multicast_receiver(
            info.control(),
            self.config.interface,
            1 << 20,
        )?);
        BatchReceiver::setup(&socket, self.config.gro);
        let slot = (0..wire::MAX_CHANNELS)
            .find(|s| r.joined.len() <= *s)
            .expect("at most MAX_CHANNELS channels");
        let registry = self.signals.poll.registry();
        for (socket, source) in [
            (&mut socket, Source::Channel(slot)),
            (&mut control, Source::Control(slot)),
        ] {
            registry
                .register(socket, Self::token(index, source), Interest::READABLE)
                .context(|| "cannot register socket".into())?;
        }
        r.joined.push(Joined {
            index: channel,
            socket,
            control,
        });
        Ok(())
    }

    /// Leaves the multicast channels `joined`.
    fn leave(&mut self, joined: Vec<Joined>) {
        let registry = self.signals.poll.registry();
        for mut j in joined {
            let _ = registry.deregister(&mut j.socket);
            let _ = registry.deregister(&mut j.control);
            self.batch.forget(&j.socket);
        }
    }

    /// Leaves every multicast channel and the unicast stream of `r`.
    fn close_sources(&mut self, r: &mut Reception) {
        self.leave(std::mem::take(&mut r.joined));
        if let Some(mut u) = r.unicast.take() {
            let _ = self.signals.poll.registry().deregister(&mut u.socket);
            self.batch.forget(&u.socket);
        }
    }

    /// Moves reception `index` from its channel to channel `to` (a step down or up).
    fn switch_channel(&mut self, index: usize, to: usize) -> Result<()> {
        let joined = std::mem::take(&mut self.receptions[index].joined);
        let from = joined.first().map(|j| j.index);
        self.leave(joined);
        self.join_channel(index, to)?;
        let r = &self.receptions[index];
        let down =
            from.is_some_and(|f| r.entry.channels[f].rate_bps > r.entry.channels[to].rate_bps);
        log::info!(
            "{}: {} to {} ({})",
            r.entry.name,
            if down {
                "sustained loss, stepping down"
            } else {
                "clean for a while, stepping up"
            },
            r.entry.channels[to].group,
            format_rate(r.entry.channels[to].rate_bps as f64)
        );
        self.events.emit(
            "channel_change",
            json!({"file": r.entry.name, "from_rate_bps": from.map(|f| r.entry.channels[f].rate_bps),
                   "to_rate_bps": r.entry.channels[to].rate_bps,
                   "channel": r.entry.channels[to].group.to_string(),
                   "reason": if down { "loss" } else { "clean" }}),
        );
        Ok(())
    }

    /// Leaves multicast for reception `index` and asks its server for a unicast stream.
    fn fall_back(&mut self, index: usize, why: &str) -> Result<()> {
        let Some(server) = self.receptions[index].server else {
            return Ok(()); // no server known: keep listening
        };
        let joined = std::mem::take(&mut self.receptions[index].joined);
        self.leave(joined);
        let registry = self.signals.poll.registry();
        let rate = self.config.max_rate.unwrap_or(0);
        let mut peer = UnicastPeer::open(
            self.config.interface,
            server,
            net::buffer_size_for_rate(rate.max(1_000_000_000)),
        )?;
        BatchReceiver::setup(&peer.socket, self.config.gro);
        registry
            .register(
                &mut peer.socket,
                Self::token(index, Source::Unicast),
                Interest::READABLE,
            )
            .context(|| "cannot register socket".into())?;
        let r = &mut self.receptions[index];
        let receiver_id = r.fsm.receiver_id();
        peer.request(
            Instant::now(),
            receiver_id,
            wire::REQUEST_UNICAST,
            rate,
            &r.entry.name,
        );
        r.unicast = Some(peer);
        r.server = Some(server);
        r.last_data = Instant::now();
        r.fsm.set_nak_mode(NakMode::Immediate);
        log::info!(
            "{}: {why}; asking {server} for a unicast stream",
            r.entry.name
        );
        self.events.emit(
            "fallback",
            json!({"file": r.entry.name, "server": server.to_string(), "reason": why}),
        );
        Ok(())
    }

    /// Takes every datagram waiting on a data source (a channel or the unicast stream)
    /// of reception `index`, storing new payloads of each batch with one write.
    fn drain_data(&mut self, index: usize, source: Source) -> Result<()> {
        let now = Instant::now();
        loop {
            let r = &mut self.receptions[index];
            let (socket, track) = match source {
                Source::Channel(slot) => match r.joined.get(slot) {
                    Some(j) => (&j.socket, j.index),
                    None => return Ok(()), // left since the event
                },
                Source::Unicast => match &r.unicast {
                    Some(u) => (&u.socket, UNICAST_TRACK),
                    None => return Ok(()),
                },
                Source::Control(_) => unreachable!("control sockets carry NAKs"),
            };
            let taken = self
                .batch
                .recv(socket)
                .context(|| format!("cannot receive data for {}", r.entry.name))?;
            if taken == 0 {
                break;
            }
            if r.state != State::Receiving {
                continue; // drain and drop while verifying or done
            }
            // New payloads of this batch, written in one go from the receive buffers.
            let mut stores: Vec<(u64, &[u8])> = Vec::new();
            for datagram in self.batch.datagrams() {
                let kind = datagram.get(3).copied();
                if kind == Some(wire::PacketType::Cookie as u8) {
                    if let (
                        Some(u),
                        Ok(wire::Datagram {
                            packet: Packet::Cookie(cookie),
                            ..
                        }),
                    ) = (r.unicast.as_mut(), wire::decode(datagram))
                    {
                        u.cookie = cookie;
                        let id = r.fsm.receiver_id();
                        let rate = self.config.max_rate.unwrap_or(0);
                        u.request(now, id, wire::REQUEST_UNICAST, rate, &r.entry.name);
                    }
                    continue;
                }
                let is_data = kind == Some(wire::PacketType::Data as u8);
                if self.config.debug_drop > 0.0
                    && is_data
                    && self.rng.random_bool(self.config.debug_drop)
                {
                    r.debug_dropped += 1;
                    continue;
                }
                match r.fsm.handle_datagram_on(now, track, datagram) {
                    Outcome::Store {
                        body_offset,
                        payload,
                        packet_index,
                    } => {
                        stores.push((body_offset, payload));
                        r.dirty = true;
                        if let Some(frames) = r.frames.as_mut() {
                            frames
                                .tracker
                                .packet_arrived(packet_index, &mut self.completed);
                        }
                    }
                    Outcome::ManifestAccepted => Self::open_storage(r, &self.work_dir)?,
                    Outcome::WrongKey { theirs } => {
                        return Err(Error::new(format!(
                            "wrong key: {} was sealed with a key of fingerprint {}, ours is {}",
                            r.entry.name,
                            hex(&theirs),
                            hex(&self.config.key.fingerprint())
                        )));
                    }
                    Outcome::Nothing => {}
                }
                if is_data {
                    r.last_data = now;
                    r.next_start_request = None; // the channels are running
                }
            }
            if !stores.is_empty() {
                r.partial
                    .as_ref()
                    .expect("storage opens when the manifest is accepted")
                    .write_payloads(&stores)?;
            }
        }
        self.after_datagrams(index)
    }

    /// After a batch of datagrams: hands completed frames to the worker, starts the
    /// worker once the frame table is whole, and notes when every packet is held.
    fn after_datagrams(&mut self, index: usize) -> Result<()> {
        let r = &mut self.receptions[index];
        r.progress.set(r.fsm.received().count() as u64);
        if r.state != State::Receiving || r.partial.is_none() {
            return Ok(());
        }
        match &r.frames {
            // Payloads are already written (per batch): the worker reads them back.
            Some(frames) => self
                .completed
                .drain(..)
                .for_each(|f| frames.worker.submit(f)),
            None => self.start_frames(index)?,
        }
        let r = &mut self.receptions[index];
        if r.fsm.is_complete() {
            r.state = State::Verifying;
            log::info!(
                "{}: all {} packets held after {:.2} s ({:.2} loops), finishing the last frames",
                r.entry.name,
                r.fsm.received().len(),
                r.started.elapsed().as_secs_f64(),
                r.fsm.loops_waited()
            );
            self.persist(index)?;
        }
        Ok(())
    }

    /// Once the frame table's packets are held: checks the table, starts the frame
    /// worker and gives it every frame already whole (all of them on a resume).
    fn start_frames(&mut self, index: usize) -> Result<()> {
        let r = &mut self.receptions[index];
        let manifest = r.fsm.manifest().expect("storage implies manifest").clone();
        if !r.fsm.received().contains_range(manifest.table_packets()) {
            return Ok(());
        }
        let body = r.partial.as_ref().expect("storage is open").body()?;
        let mut table = vec![0u8; manifest.table_len() as usize];
        body.read_exact_at(&mut table, 0)
            .context(|| format!("{}: cannot read the frame table", manifest.name))?;
        let unpacker = match Unpacker::new(&self.config.key, &manifest, &table) {
            Ok(u) if !u.frame_ranges().is_empty() => u,
            _ => {
                log::warn!(
                    "{}: frame table failed its digest; receiving it again",
                    manifest.name
                );
                r.fsm.mark_missing(Instant::now(), 0..manifest.table_len());
                r.dirty = true;
                return Ok(());
            }
        };
        let tracker = FrameTracker::new(
            unpacker.frame_ranges().to_vec(),
            manifest.payload_size as u32,
            r.fsm.received(),
        );
        let (tx, waker, archive_id) = (
            self.verified_tx.clone(),
            Arc::clone(&self.waker),
            manifest.archive_id,
        );
        let worker = FrameWorker::start(
            body,
            unpacker,
            manifest,
            &self.work_dir,
            &self.config.out_dir,
            move |report| {
                let _ = tx.send((index, archive_id, report));
                let _ = waker.wake();
            },
        )?;
        tracker.complete_frames().for_each(|f| worker.submit(f));
        r.frames = Some(Frames { tracker, worker });
        Ok(())
    }

    /// Takes NAKs from a channel's control port (other receivers', and our own echoed back).
    fn drain_control(&mut self, index: usize, slot: usize) -> Result<()> {
        let now = Instant::now();
        let r = &mut self.receptions[index];
        let Some(j) = r.joined.get(slot) else {
            return Ok(());
        };
        while let Some(n) = net::recv_nonblocking(&j.control, &mut self.buf)
            .context(|| format!("cannot receive NAKs for {}", r.entry.name))?
        {
            if r.state == State::Receiving {
                r.fsm.handle_datagram_on(now, j.index, &self.buf[..n]);
            }
        }
        Ok(())
    }

    /// The earliest thing any timer waits for: NAK and report timers, channel
    /// samples, sync time-outs, requests to repeat.
    fn next_timer(&self) -> Option<Instant> {
        let listing = self.listing_request.map(|(_, at)| at);
        let receptions = self
            .receptions
            .iter()
            .filter(|r| r.state == State::Receiving)
            .flat_map(|r| {
                let multicast = r.unicast.is_none();
                [
                    r.fsm.poll_timeout(),
                    (multicast && !self.config.aggregate).then_some(r.next_sample),
                    (multicast && r.server.is_some())
                        .then(|| r.last_data + self.config.sync_timeout),
                    r.unicast
                        .as_ref()
                        .map(|u| u.next_request.max(r.last_data + REQUEST_RETRY)),
                    r.next_start_request,
                ]
            })
            .flatten();
        receptions.chain(listing).min()
    }

    /// Runs every timer that is due: NAKs, reports, channel choice, fallback to
    /// unicast, repeated requests.
    fn run_timers(&mut self) -> Result<()> {
        let now = Instant::now();
        if let Some((server, at)) = self.listing_request
            && now >= at
        {
            self.link_request(server, 0, "");
            self.listing_request = Some((server, now + REQUEST_RETRY));
        }
        for i in 0..self.receptions.len() {
            if self.receptions[i].state != State::Receiving {
                continue;
            }
            self.run_reception_timers(i, now);
            let r = &mut self.receptions[i];
            if r.unicast.is_none()
                && now >= r.last_data + self.config.sync_timeout
                && r.server.is_some()
            {
                let why = format!(
                    "no data for {:.1} s on multicast",
                    self.config.sync_timeout.as_secs_f64()
                );
                self.fall_back(i, &why)?;
                continue;
            }
            if r.unicast.is_none() && !self.config.aggregate && now >= r.next_sample {
                r.next_sample = now + SELECT_SAMPLE;
                let current = r.joined.first().map(|j| j.index);
                if let Some(current) = current {
                    let (advanced, arrived) = r.fsm.track_counters(current);
                    if let Some(to) = r.selector.sample(advanced, arrived) {
                        self.switch_channel(i, to)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// NAKs, reports and repeated requests of reception `i`.
    fn run_reception_timers(&mut self, i: usize, now: Instant) {
        let r = &mut self.receptions[i];
        if r.fsm.poll_timeout().is_some_and(|at| at <= now) {
            r.fsm.handle_timeout(now);
        }
        let drops = r.kernel_drops(&self.batch);
        let channel = r.report_channel();
        let report = r.fsm.poll_report(now, channel, drops);
        let mut naks = Vec::new();
        while let Some(nak) = r.fsm.poll_transmit() {
            naks.push(nak);
        }
        if let Some(u) = r.unicast.as_mut() {
            // The stream's NAKs and reports go to the server from the stream's socket,
            // which is how the server knows the client is still there.
            naks.iter().chain(report.iter()).for_each(|d| u.send(d));
            if now >= u.next_request && now >= r.last_data + REQUEST_RETRY {
                let id = r.fsm.receiver_id();
                let rate = self.config.max_rate.unwrap_or(0);
                u.request(now, id, wire::REQUEST_UNICAST, rate, &r.entry.name);
            }
            return;
        }
        if let Some(j) = r.joined.first() {
            let to = r.entry.channels[j.index].control();
            for nak in &naks {
                if let Err(e) = self.nak_socket.send_to(nak, to) {
                    // A lost NAK is repaired by the next timer round, like one lost in the network.
                    log::debug!("{}: NAK to {to} not sent: {e}", r.entry.name);
                }
            }
        }
        let server = r.server;
        let start_due = r.next_start_request.is_some_and(|at| now >= at);
        // Cloned only when a request goes out: this runs on every wake-up.
        let start = start_due.then(|| r.entry.name.clone());
        if start_due {
            r.next_start_request = Some(now + REQUEST_RETRY);
        }
        if let Some(server) = server {
            if let Some(report) = report {
                self.link_send(&report, server);
            }
            if let Some(name) = start {
                self.link_request(server, wire::REQUEST_START, &name);
            }
        }
    }

    fn open_storage(r: &mut Reception, work_dir: &Path) -> Result<()> {
        let manifest = r.fsm.manifest().expect("accepted").clone();
        if manifest.name != r.entry.name {
            return Err(Error::new(format!(
                "server announced {:?} but its manifest names {:?}; refusing",
                r.entry.name, manifest.name
            )));
        }
        let (partial, resumed) = PartialFile::open(work_dir, &manifest)?;
        if let Some((map, point)) = resumed {
            let held = map.count();
            r.fsm.restore(map);
            let behind = point.is_some_and(|p| r.fsm.restore_tracks(&p));
            r.resumed = held;
            log::info!(
                "{}: resuming, {} of {} packets already stored{}",
                manifest.name,
                held,
                manifest.packet_count(),
                if behind {
                    "; repairing what the loop passed meanwhile"
                } else {
                    ""
                }
            );
        }
        r.progress.set_total(manifest.packet_count() as u64);
        r.progress.set(r.fsm.received().count() as u64);
        r.partial = Some(partial);
        Ok(())
    }

    fn frame_report(&mut self, index: usize, report: FrameReport) -> Result<()> {
        let r = &mut self.receptions[index];
        let manifest = r.fsm.manifest().expect("frames imply manifest").clone();
        match report {
            FrameReport::Delivered(path) => {
                r.state = State::Done;
                r.frames = None;
                if let Some(p) = r.partial.take() {
                    p.remove(&self.persister);
                }
                let elapsed = r.started.elapsed();
                let secs = elapsed.as_secs_f64();
                let s = r.fsm.stats();
                let drops = r.kernel_drops(&self.batch);
                log::info!(
                    "{}: complete and verified in {:.2} s ({} at {}) over {}; {} packets stored, {} resumed, {} duplicates, {} dropped, {} debug-dropped, {} dropped by the kernel (socket buffer full); repair: {} repairs received, {} NAKs sent, {} heard, {} suppressed -> {}",
                    manifest.name,
                    secs,
                    format_bytes(manifest.original_size),
                    format_rate(manifest.original_size as f64 * 8.0 / secs.max(1e-9)),
                    r.describe_channels(),
                    s.stored,
                    r.resumed,
                    s.duplicates,
                    s.dropped(),
                    r.debug_dropped,
                    drops,
                    s.repairs,
                    s.naks_sent,
                    s.naks_heard,
                    s.naks_suppressed,
                    path.display()
                );
                r.progress.finish(format!("{} done", manifest.name));
                self.events.emit(
                    "done",
                    json!({"file": manifest.name, "path": path.display().to_string(),
                           "seconds": secs, "bytes": manifest.original_size,
                           "via": r.describe_channels()}),
                );
                // Tell the server; twice, as one datagram may be lost and nothing repeats it.
                let done = r.fsm.done_datagram(elapsed);
                let server = r.server;
                r.progress.set(r.fsm.received().count() as u64);
                match (&r.unicast, server) {
                    (Some(u), _) => (0..2).for_each(|_| u.send(&done)),
                    (None, Some(server)) => (0..2).for_each(|_| self.link_send(&done, server)),
                    (None, None) => {}
                }
                // Nothing more to take from the channels or the stream.
                let joined = std::mem::take(&mut self.receptions[index].joined);
                self.leave(joined);
                if let Some(mut u) = self.receptions[index].unicast.take() {
                    let _ = self.signals.poll.registry().deregister(&mut u.socket);
                }
                Ok(())
            }
            FrameReport::Bad(frame, range) => {
                let packets = r.fsm.mark_missing(Instant::now(), range);
                if let Some(frames) = r.frames.as_mut() {
                    frames.tracker.recount(frame, r.fsm.received());
                }
                log::warn!(
                    "{}: frame {frame} is damaged; {packets} packets to receive again",
                    manifest.name
                );
                r.state = State::Receiving;
                r.dirty = true;
                Ok(())
            }
            FrameReport::Failed(UnpackFailure::Digest) => Err(Error::new(format!(
                "{}: every frame verified but the file does not match its manifest digest; the server's archive is inconsistent",
                manifest.name
            ))),
            FrameReport::Failed(UnpackFailure::Io(e)) => {
                Err(Error::new(format!("{}: {e}", manifest.name)))
            }
            FrameReport::Failed(other) => Err(Error::new(format!(
                "{}: cannot unpack: {other:?}",
                manifest.name
            ))),
        }
    }

    /// Hands a snapshot of the received map to the
    /// persister, which syncs the data and then saves the map off this thread.
    fn persist(&mut self, index: usize) -> Result<()> {
        let r = &mut self.receptions[index];
        if let (true, Some(p)) = (r.dirty, r.partial.as_mut()) {
            let submitted = p
                .persist_in_background(r.fsm.received(), &r.fsm.resume_point(), &self.persister)
                .map_err(|e| Error::new(format!("{}: {e}", r.entry.name)))?;
            r.dirty = !submitted;
        }
        Ok(())
    }

    fn persist_all(&mut self) -> Result<()> {
        (0..self.receptions.len()).try_for_each(|i| self.persist(i))
    }

    /// Saves every file's progress synchronously on the way out (best effort).
    fn save_progress(&mut self) {
        self.persister.wait_idle();
        for r in &mut self.receptions {
            if let (true, Some(p)) = (r.dirty, r.partial.as_mut())
                && let Err(e) = p.persist_now(r.fsm.received(), &r.fsm.resume_point())
            {
                log::warn!("{}: {e}", r.entry.name);
            }
        }
    }

    fn log_progress(&self) {
        for r in self
            .receptions
            .iter()
            .filter(|r| r.state == State::Receiving)
        {
            let held = r.fsm.received().count();
            if let Some(m) = r.fsm.manifest() {
                self.events.emit(
                    "progress",
                    json!({"file": r.entry.name, "held": held, "packets": m.packet_count(),
                           "via": r.describe_channels()}),
                );
            }
            if self.progress.is_drawing() {
                continue;
            }
            match r.fsm.manifest() {
                Some(m) => log::info!(
                    "{}: {:.1}% ({} of {} packets) over {}",
                    r.entry.name,
                    100.0 * held as f64 / m.packet_count().max(1) as f64,
                    held,
                    m.packet_count(),
                    r.describe_channels()
                ),
                None => log::info!(
                    "{}: waiting for its manifest on {}",
                    r.entry.name,
                    r.describe_channels()
                ),
            }
        }
    }

    fn describe_missing(&self) -> String {
        let mut parts: BTreeMap<String, String> = BTreeMap::new();
        for r in &self.receptions {
            let status = match (r.state, r.fsm.manifest()) {
                (State::Done, _) => continue,
                (State::Verifying, _) => "verifying".to_string(),
                (_, Some(m)) => format!(
                    "{} of {} packets",
                    r.fsm.received().count(),
                    m.packet_count()
                ),
                (_, None) => format!("nothing heard on {}", r.describe_channels()),
            };
            parts.insert(r.entry.name.clone(), status);
        }
        for name in &self.config.names {
            parts
                .entry(name.clone())
                .or_insert_with(|| "not on air".to_string());
        }
        if parts.is_empty() {
            return match (self.config.server, self.config.unicast_only) {
                (Some(server), true) => format!("no answer from {server}"),
                (Some(server), false) => {
                    format!(
                        "no server heard on {} and no answer from {server}",
                        self.config.group
                    )
                }
                (None, _) => format!("no server heard on {}", self.config.group),
            };
        }
        parts
            .into_iter()
            .map(|(n, s)| format!("{n}: {s}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn finish_log(&self, started: Instant) {
        log::info!(
            "all {} file(s) received in {:.2} s",
            self.receptions
                .iter()
                .filter(|r| r.state == State::Done)
                .count(),
            started.elapsed().as_secs_f64()
        );
    }
}

/// Listens on the directory group for up to `timeout` and returns what is on air,
/// as (session id, entry), stopping early once a whole listing was heard.
pub fn list_on_air(
    interface: Ipv4Addr,
    group: SocketAddrV4,
    timeout: Duration,
) -> Result<Vec<(u32, AnnounceEntry)>> {
    let socket = net::multicast_receiver(group, interface, 1 << 20)?;
    let mut socket = mio::net::UdpSocket::from_std(socket);
    let mut signals = StopSignals::new()?;
    signals
        .poll
        .registry()
        .register(&mut socket, DIRECTORY, Interest::READABLE)
        .context(|| "cannot register socket".into())?;
    let deadline = Instant::now() + timeout;
    let mut parts: HashMap<u32, (u8, HashSet<u8>)> = HashMap::new();
    let mut found: BTreeMap<(u32, String), AnnounceEntry> = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        if signals.wait(Some(deadline.saturating_duration_since(Instant::now())))? {
            return Err(Error::new("interrupted"));
        }
        while let Some(n) = net::recv_nonblocking(&socket, &mut buf)
            .context(|| format!("cannot receive on {group}"))?
        {
            let Ok(d) = wire::decode(&buf[..n]) else {
                continue;
            };
            if let Packet::Announce(a) = d.packet {
                parts
                    .entry(d.session_id)
                    .or_insert_with(|| (a.parts, HashSet::new()))
                    .1
                    .insert(a.part);
                for e in a.entries {
                    found.insert((d.session_id, e.name.clone()), e);
                }
            }
        }
        if !parts.is_empty() && parts.values().all(|(n, heard)| heard.len() == *n as usize) {
            break;
        }
    }
    Ok(found
        .into_iter()
        .map(|((session, _), e)| (session, e))
        .collect())
}
