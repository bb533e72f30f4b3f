//! `loopcast recv`, the driver: sockets, the mio loop, storage and the frame
//! workers around the protocol's receiver session (`loopcast_proto::client`). It
//! forwards datagrams to the session, carries out its commands (join, leave, open
//! storage, unpack), sends its datagrams and renders its events; every protocol
//! decision is the session's.

mod drain;
mod io;
mod ls;
mod persist;
mod render;
mod waits;

pub use ls::list_on_air;

use crate::datapath::BatchReceiver;
use crate::error::{Context, Error, Result};
use crate::events::Events;
use crate::net;
use crate::progress::{FileProgress, Progress};
use crate::signals::StopSignals;
use crate::storage::{self, FrameReport, FrameWorker, PartialFile};
use loopcast_proto::MasterKey;
use loopcast_proto::client::{ClientConfig, ReceptionId, RepairKind, Session};
use loopcast_proto::wire;
use mio::{Interest, Token, Waker};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// What `recv` was asked to do.
pub struct RecvConfig {
    /// Master key.
    pub key: MasterKey,
    /// The interface to join groups on (any: the kernel's choice).
    pub interface: net::Interface,
    /// Directory group.
    pub group: SocketAddr,
    /// Where finished files go.
    pub out_dir: PathBuf,
    /// Refuse to replace a file already in `out_dir` (`--no-clobber`).
    pub no_clobber: bool,
    /// Files to receive; empty means every file on air.
    pub names: Vec<String>,
    /// Wanted files pinned to one archive (`NAME@ARCHIVE`).
    pub pinned: std::collections::BTreeMap<String, u64>,
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// Testing aid: drop this share (0 to 1) of incoming DATA packets at random.
    pub debug_drop: f64,
    /// Seed of `debug_drop`'s random choices (None: a random one, logged).
    pub debug_seed: Option<u64>,
    /// Testing aid: how long the frame worker waits before opening each frame.
    pub debug_frame_delay: Duration,
    /// Read UDP GRO bundles where the kernel offers them (`--no-gro` clears it).
    pub gro: bool,
    /// Ask for parity or copies (`--repair`).
    pub repair: RepairKind,
    /// Fastest channel to take, bits/s (None: the fastest on offer).
    pub max_rate: Option<u64>,
    /// Join every channel within `max_rate` at once.
    pub aggregate: bool,
    /// Ask for a unicast stream after this long without data.
    pub sync_timeout: Duration,
    /// The server's unicast address, for when no multicast is heard at all.
    pub server: Option<SocketAddr>,
    /// Skip multicast entirely: unicast from `server`.
    pub unicast_only: bool,
    /// Directors to look the wanted files up with (empty: the directory group).
    pub directors: Vec<SocketAddr>,
    /// Print events as JSON lines on stdout.
    pub json: bool,
    /// Also keep each archive as it came, in this directory (`--keep-archive`).
    pub keep_archive: Option<PathBuf>,
    /// A relay's server in this process, told where each kept archive is and
    /// what of it is written (`loopcast relay`).
    pub relay_news: Option<std::sync::mpsc::Sender<crate::storage::RelayNews>>,
}

impl RecvConfig {
    /// An address of the family every socket of this run takes (the
    /// arguments are checked to be of one family).
    fn family(&self) -> SocketAddr {
        (self.server)
            .or(self.directors.first().copied())
            .unwrap_or(self.group)
    }
}

const DIRECTORY: Token = Token(0);
const WAKER: Token = Token(1);
/// Longest a data socket is left alone for a frame worker that is behind before
/// the receive loop looks again (its reports wake the loop sooner).
const BACKLOG_RECHECK: Duration = Duration::from_millis(5);
/// A frame worker behind that has opened nothing for this long is stalled (a
/// hung disk): its data sockets are read again, so that the channel does not
/// look silent to the session (`--sync-timeout`, failover).
const WORKER_STALL: Duration = Duration::from_millis(500);
/// The socket for requests and reports to servers.
const LINK: Token = Token(2);
const FIRST_RECEPTION: usize = 3;
/// Tokens per reception: data and control socket per channel, then the stream socket.
const TOKENS_PER_RECEPTION: usize = 2 * wire::MAX_CHANNELS + 1;
/// How often received maps are made durable (the saved map trails the data by at
/// most this plus one save: spec §5).
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// How often progress lines are logged (JSON progress comes every `PERSIST_INTERVAL`).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How often a receiver that has taken no packet says what it waits for.
const WAITING_INTERVAL: Duration = Duration::from_secs(10);

/// Where a reception's datagrams come from, by token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Data socket of channel (announce index) `c`.
    Channel(usize),
    /// Control socket (NAKs) of channel `c`.
    Control(usize),
    /// The unicast stream's socket.
    Stream,
}

impl Source {
    fn offset(self) -> usize {
        match self {
            Source::Channel(c) => 2 * c,
            Source::Control(c) => 2 * c + 1,
            Source::Stream => 2 * wire::MAX_CHANNELS,
        }
    }

    fn from_offset(offset: usize) -> Source {
        match offset {
            o if o == 2 * wire::MAX_CHANNELS => Source::Stream,
            o if o % 2 == 0 => Source::Channel(o / 2),
            o => Source::Control(o / 2),
        }
    }
}

fn token(reception: ReceptionId, source: Source) -> Token {
    Token(FIRST_RECEPTION + reception * TOKENS_PER_RECEPTION + source.offset())
}

/// A joined channel's sockets.
struct Joined {
    data: mio::net::UdpSocket,
    control: mio::net::UdpSocket,
}

/// What the driver holds for one reception: sockets, storage, the frame worker.
struct Local {
    joined: HashMap<usize, Joined>,
    stream: Option<mio::net::UdpSocket>,
    partial: Option<PartialFile>,
    worker: Option<FrameWorker>,
    /// Payloads written since the map was last saved.
    dirty: bool,
    progress: FileProgress,
    /// DATA packets thrown away by `--debug-drop`.
    debug_dropped: u64,
    /// Blocks that could not be rebuilt because some of their stored packets were
    /// no longer held as they came (their frame unpacked): repaired by copies.
    rebuilds_by_copies: u64,
    /// Blocks whose rebuild failed its cells' tags (a shard not genuine: PARITY
    /// has no tag of its own), repaired by copies since.
    wrong_shards: u64,
    /// Payloads let go for want of room in memory and the partial file (each
    /// one makes its frame fetched again).
    let_go: u64,
    /// When its frame worker last reported, or was last not behind.
    worker_seen: Instant,
    /// Where the file was delivered.
    delivered: Option<PathBuf>,
    /// Where its archive was kept (`--keep-archive`).
    kept: Option<PathBuf>,
}

/// A frame worker's report: reception, archive id, report.
type WorkerReport = (ReceptionId, u64, FrameReport);

/// Everything the driver owns but the session and the receive batch.
struct Io {
    config: RecvConfig,
    work_dir: PathBuf,
    signals: StopSignals,
    directory: Option<mio::net::UdpSocket>,
    link: mio::net::UdpSocket,
    nak_socket: std::net::UdpSocket,
    waker: Arc<Waker>,
    reports_tx: mpsc::Sender<WorkerReport>,
    locals: Vec<Local>,
    progress: Progress,
    persister: storage::Persister,
    /// `--debug-drop`'s random choices.
    drop_rng: SmallRng,
    render: render::Render,
    buf: Vec<u8>,
    /// Why files were given up for want of room (exit 6 at the end).
    no_room: Vec<String>,
}

struct Receiver {
    session: Session,
    batch: BatchReceiver,
    /// The last batch's bytes as they came (`--keep-archive`: the session opens
    /// DATA's cells where they lie in `batch`).
    as_received: Vec<u8>,
    io: Io,
    reports_rx: mpsc::Receiver<WorkerReport>,
}

/// Runs the receiver until every wanted file is delivered, the time-out, an error or a signal.
pub fn recv(config: RecvConfig) -> Result<()> {
    if config.unicast_only && config.server.is_none() {
        return Err(Error::new("--unicast needs --server HOST[:PORT]"));
    }
    let work_dir = storage::partial_dir(&config.out_dir)?;
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
    let mut link = mio::net::UdpSocket::from_std(net::unicast_socket(
        config.interface.local(config.family(), 0)?,
        1 << 20,
    )?);
    registry
        .register(&mut link, LINK, Interest::READABLE)
        .context(|| "cannot register socket".into())?;
    let waker = Arc::new(
        Waker::new(signals.poll.registry(), WAKER).context(|| "cannot create waker".into())?,
    );
    let (reports_tx, reports_rx) = mpsc::channel();
    let now = Instant::now();
    let session = Session::new(
        ClientConfig {
            key: config.key.clone(),
            names: config.names.clone(),
            pinned: config.pinned.clone(),
            max_rate: config.max_rate,
            aggregate: config.aggregate,
            sync_timeout: config.sync_timeout,
            server: config.server,
            unicast_only: config.unicast_only,
            nak_mode: loopcast_proto::NakMode::Suppressed,
            directors: config.directors.clone(),
            stay_joined: false,
            repair: config.repair,
        },
        now,
        rand::random(),
    );
    let debug_seed = config.debug_seed.unwrap_or_else(rand::random);
    if config.debug_drop > 0.0 {
        log::info!(
            "--debug-drop {}%: dropping DATA at random, --debug-seed {debug_seed}",
            config.debug_drop * 100.0
        );
    }
    let mut receiver = Receiver {
        session,
        batch: BatchReceiver::new(),
        as_received: Vec::new(),
        reports_rx,
        io: Io {
            nak_socket: net::multicast_sender(
                config.group,
                config.interface,
                net::DEFAULT_TTL,
                1 << 20,
            )?,
            render: render::Render::new(Events::new(config.json)),
            config,
            work_dir,
            signals,
            directory,
            link,
            waker,
            reports_tx,
            locals: Vec::new(),
            progress: Progress::new(),
            persister: storage::Persister::new()?,
            drop_rng: SmallRng::seed_from_u64(debug_seed),
            buf: vec![0u8; 65536],
            no_room: Vec::new(),
        },
    };
    let result = receiver.run();
    if let Err(e) = &result {
        receiver.save_progress();
        receiver.io.render.error(e);
    }
    // Stops the frame workers. What they unpacked stays (0600, in our 0700
    // partial directory) for a resume, and is claimed in the saved map.
    receiver.io.locals.clear();
    result
}

fn probe_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".loopcast-probe-{}", std::process::id()));
    // Created exclusively and never through a link: the name is predictable.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe)
        .context(|| format!("cannot write to {}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

impl Receiver {
    fn run(&mut self) -> Result<()> {
        let started = Instant::now();
        let deadline = self.io.config.timeout.map(|t| started + t);
        let mut next_persist = started + PERSIST_INTERVAL;
        let mut next_progress = started + PROGRESS_INTERVAL;
        let mut next_waiting = started + WAITING_INTERVAL;
        let mut held_at_last_look = 0;
        self.io.render.waiting(&self.io.config);
        // Sockets a bounded drain left with datagrams: looked at again at once.
        let mut unfinished: Vec<Token> = Vec::new();
        // Data sockets left alone while their frame worker catches up: looked at
        // again when it reports, or after `BACKLOG_RECHECK`.
        let mut held_back: Vec<Token> = Vec::new();
        loop {
            self.settle()?;
            if self.session.is_finished() {
                self.io.render.finished(&self.session);
                if !self.io.no_room.is_empty() {
                    return Err(Error::with_code(
                        self.io.no_room.join("; "),
                        crate::error::EXIT_NO_ROOM,
                    ));
                }
                return Ok(());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::timeout(format!(
                    "timed out after {} s: {}",
                    self.io.config.timeout.unwrap_or_default().as_secs(),
                    waits::missing(&self.session, &self.io.config)
                )));
            }
            if now >= next_persist {
                self.persist_all()?;
                next_persist = now + PERSIST_INTERVAL;
                // JSON progress with every save (agents follow it); log lines less often.
                let log_too = now >= next_progress;
                if log_too {
                    next_progress = now + PROGRESS_INTERVAL;
                }
                self.io.render.progress(&self.session, log_too);
            }
            if now >= next_waiting {
                next_waiting = now + WAITING_INTERVAL;
                let held = waits::packets_held(&self.session);
                if held == held_at_last_look {
                    let why = self.session.waiting(now);
                    self.io
                        .render
                        .still_waiting(&why, &self.io.config, now - started);
                }
                held_at_last_look = held;
            }
            let wake = [
                deadline,
                Some(next_persist),
                Some(next_waiting),
                self.session.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_persist);
            let mut wait = match unfinished.is_empty() {
                true => wake.saturating_duration_since(Instant::now()),
                false => Duration::ZERO,
            };
            if !held_back.is_empty() {
                wait = wait.min(BACKLOG_RECHECK);
            }
            if self.io.signals.wait(Some(wait))? {
                let message = waits::interrupted(&self.session, &self.io.config);
                return Err(self.io.signals.interrupted(message));
            }
            // Buffers the frame workers give back count before any socket is drained.
            while let Ok((id, archive_id, report)) = self.reports_rx.try_recv() {
                self.worker_report(id, archive_id, report)?;
            }
            let mut tokens: Vec<Token> = self.io.signals.events.iter().map(|e| e.token()).collect();
            tokens.append(&mut unfinished);
            tokens.append(&mut held_back);
            tokens.sort_unstable_by_key(|t| t.0);
            tokens.dedup();
            for t in tokens {
                if self.hold_back_socket(t) {
                    held_back.push(t);
                } else if !self.drain(t)? {
                    match self.hold_back_socket(t) {
                        true => held_back.push(t),
                        false => unfinished.push(t),
                    }
                }
            }
            if let Some(e) = self.io.persister.take_error() {
                return Err(e);
            }
        }
    }

    /// Runs the session's timers, then carries out what it asks and renders what it says.
    fn settle(&mut self) -> Result<()> {
        let now = Instant::now();
        for (id, local) in self.io.locals.iter().enumerate() {
            let drops = local
                .joined
                .values()
                .map(|j| self.batch.kernel_drops(&j.data))
                .chain(local.stream.iter().map(|s| self.batch.kernel_drops(s)))
                .sum();
            self.session.set_kernel_drops(id, drops);
        }
        self.session.handle_timeout(now);
        self.io.outputs(&mut self.session, Some(&mut self.batch))
    }
}
