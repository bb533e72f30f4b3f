//! `loopcast recv` and `loopcast ls`: listen on the directory group, join each wanted
//! file's channel, store packets at their offsets, verify and deliver.

use crate::datapath::BatchReceiver;
use crate::error::{Context, Error, Result};
use crate::net;
use crate::progress::{FileProgress, Progress};
use crate::signals::StopSignals;
use crate::storage::{self, FrameReport, FrameWorker, PARTIAL_DIR, PartialFile, UnpackFailure};
use crate::units::{format_bytes, format_rate};
use loopcast_proto::archive::Unpacker;
use loopcast_proto::keys::hex;
use loopcast_proto::wire::{self, AnnounceEntry, Packet};
use loopcast_proto::{FileReceiver, FrameTracker, MasterKey, NakMode, Outcome};
use mio::{Interest, Token, Waker};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
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
}

const DIRECTORY: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CHANNEL: usize = 2;
/// How often received maps are made durable.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// How often plain progress lines are logged when no bar is drawn.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// A session silent this long may be replaced by another serving the same file.
const SESSION_SILENCE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Receiving,
    Verifying,
    Done,
}

/// One file being received.
struct Reception {
    entry: AnnounceEntry,
    socket: mio::net::UdpSocket,
    /// The file's control port, where this and other receivers' NAKs go.
    control: mio::net::UdpSocket,
    /// DATA packets thrown away by `--debug-drop`.
    debug_dropped: u64,
    fsm: FileReceiver,
    partial: Option<PartialFile>,
    /// Frame tracking and unpacking, from when the frame table has arrived and verified.
    frames: Option<Frames>,
    state: State,
    dirty: bool,
    joined: Instant,
    resumed: u32,
    progress: FileProgress,
}

/// Which frames of a file are whole, and the worker that unpacks them off the loop.
struct Frames {
    tracker: FrameTracker,
    worker: FrameWorker,
}

/// A frame worker's report: reception index, archive id, report.
type VerifyResult = (usize, u64, FrameReport);

struct Receiver {
    config: RecvConfig,
    work_dir: PathBuf,
    signals: StopSignals,
    directory: mio::net::UdpSocket,
    waker: Arc<Waker>,
    verified_tx: mpsc::Sender<VerifyResult>,
    verified_rx: mpsc::Receiver<VerifyResult>,
    receptions: Vec<Reception>,
    /// Per server session: parts of its file list heard so far, and the names listed.
    listings: HashMap<u32, (u8, HashSet<u8>, HashSet<String>)>,
    progress: Progress,
    persister: storage::Persister,
    nak_socket: std::net::UdpSocket,
    rng: SmallRng,
    buf: Vec<u8>,
    /// Batched reads of the data channels.
    batch: BatchReceiver,
    /// Frames completed by the datagrams being handled (scratch).
    completed: Vec<u32>,
}

/// Runs the receiver until every wanted file is delivered, the time-out, an error or a signal.
pub fn recv(config: RecvConfig) -> Result<()> {
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
    let mut directory = mio::net::UdpSocket::from_std(net::multicast_receiver(
        config.group,
        config.interface,
        1 << 20,
    )?);
    signals
        .poll
        .registry()
        .register(&mut directory, DIRECTORY, Interest::READABLE)
        .context(|| "cannot register socket".into())?;
    let waker = Arc::new(
        Waker::new(signals.poll.registry(), WAKER).context(|| "cannot create waker".into())?,
    );
    let (verified_tx, verified_rx) = mpsc::channel();
    let receiver_interface = config.interface;
    let mut receiver = Receiver {
        config,
        work_dir,
        signals,
        directory,
        waker,
        verified_tx,
        verified_rx,
        receptions: Vec::new(),
        listings: HashMap::new(),
        progress: Progress::new(),
        persister: storage::Persister::new()?,
        nak_socket: net::multicast_sender(receiver_interface, net::DEFAULT_TTL, 1 << 20)?,
        rng: SmallRng::seed_from_u64(rand::random()),
        buf: vec![0u8; 65536],
        batch: BatchReceiver::new(),
        completed: Vec::new(),
    };
    let result = receiver.run();
    if result.is_err() {
        receiver.save_progress();
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
        let started = Instant::now();
        let deadline = self.config.timeout.map(|t| started + t);
        let mut next_persist = started + PERSIST_INTERVAL;
        let mut next_progress = started + PROGRESS_INTERVAL;
        if self.config.names.is_empty() {
            log::info!("waiting for files on {}", self.config.group);
        } else {
            log::info!(
                "waiting for {} on {}",
                self.config.names.join(", "),
                self.config.group
            );
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
            let wake = [
                deadline,
                Some(now + PERSIST_INTERVAL),
                self.next_nak_timer(),
            ];
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
                    WAKER => {}
                    Token(t)
                        if t >= FIRST_CHANNEL
                            && (t - FIRST_CHANNEL) / 2 < self.receptions.len() =>
                    {
                        let index = (t - FIRST_CHANNEL) / 2;
                        if (t - FIRST_CHANNEL) % 2 == 0 {
                            self.drain_channel(index)?
                        } else {
                            self.drain_control(index)?
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
            self.run_nak_timers();
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
        self.listings.values().any(|(parts, heard, names)| {
            heard.len() == *parts as usize && names.iter().all(|n| done.contains(n.as_str()))
        })
    }

    fn drain_directory(&mut self) -> Result<()> {
        while let Some(n) = net::recv_nonblocking(&self.directory, &mut self.buf)
            .context(|| format!("cannot receive on {}", self.config.group))?
        {
            let Ok(datagram) = wire::decode(&self.buf[..n]) else {
                continue;
            };
            let Packet::Announce(announce) = datagram.packet else {
                continue;
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
            let listing = self
                .listings
                .entry(session)
                .or_insert_with(|| (announce.parts, HashSet::new(), HashSet::new()));
            listing.1.insert(announce.part);
            listing
                .2
                .extend(announce.entries.iter().map(|e| e.name.clone()));
            for entry in announce.entries {
                if self.wanted(&entry.name) {
                    self.follow(session, entry)?;
                }
            }
        }
        Ok(())
    }

    /// Starts receiving `entry`, or restarts it if the server now offers another archive
    /// under that name, or took over from a silent session.
    fn follow(&mut self, session: u32, entry: AnnounceEntry) -> Result<()> {
        let now = Instant::now();
        let existing = self
            .receptions
            .iter()
            .position(|r| r.entry.name == entry.name);
        if let Some(i) = existing {
            let r = &self.receptions[i];
            let changed = r.entry.archive_id != entry.archive_id;
            let silent = r.fsm.session_id() != session
                && r.fsm.last_heard().unwrap_or(r.joined) + SESSION_SILENCE < now;
            if r.state != State::Receiving || !(changed || silent) {
                return Ok(());
            }
            log::info!(
                "{}: server {session:08x} now serves archive {:016x}; switching to it",
                entry.name,
                entry.archive_id
            );
            self.persist(i)?;
        }
        let mut socket = mio::net::UdpSocket::from_std(net::multicast_receiver(
            entry.channel,
            self.config.interface,
            net::buffer_size_for_rate(entry.rate_bps),
        )?);
        let mut control = mio::net::UdpSocket::from_std(net::multicast_receiver(
            SocketAddrV4::new(*entry.channel.ip(), entry.control_port),
            self.config.interface,
            1 << 20,
        )?);
        BatchReceiver::setup(&socket, self.config.gro);
        let index = existing.unwrap_or(self.receptions.len());
        let registry = self.signals.poll.registry();
        for (socket, token) in [
            (&mut socket, FIRST_CHANNEL + 2 * index),
            (&mut control, FIRST_CHANNEL + 2 * index + 1),
        ] {
            registry
                .register(socket, Token(token), Interest::READABLE)
                .context(|| "cannot register socket".into())?;
        }
        log::info!(
            "{}: joining {} ({}, {})",
            entry.name,
            entry.channel,
            format_bytes(entry.original_size),
            format_rate(entry.rate_bps as f64)
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
            entry,
            socket,
            control,
            debug_dropped: 0,
            partial: None,
            frames: None,
            state: State::Receiving,
            dirty: false,
            joined: now,
            resumed: 0,
        };
        match existing {
            Some(i) => {
                let mut old = std::mem::replace(&mut self.receptions[i], reception);
                let _ = registry.deregister(&mut old.socket);
                self.batch.forget(&old.socket);
                let _ = registry.deregister(&mut old.control);
            }
            None => self.receptions.push(reception),
        }
        Ok(())
    }

    fn drain_channel(&mut self, index: usize) -> Result<()> {
        let now = Instant::now();
        loop {
            let r = &mut self.receptions[index];
            let taken = self
                .batch
                .recv(&r.socket)
                .context(|| format!("cannot receive on {}", r.entry.channel))?;
            if taken == 0 {
                break;
            }
            if r.state != State::Receiving {
                continue; // drain and drop while verifying or done
            }
            // New payloads of this batch, written in one go from the receive buffers.
            let mut stores: Vec<(u64, &[u8])> = Vec::new();
            for datagram in self.batch.datagrams() {
                let is_data = datagram.get(3) == Some(&(wire::PacketType::Data as u8));
                if self.config.debug_drop > 0.0
                    && is_data
                    && self.rng.random_bool(self.config.debug_drop)
                {
                    r.debug_dropped += 1;
                    continue;
                }
                match r.fsm.handle_datagram(now, datagram) {
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
                "{}: all {} packets held after {:.2} s, finishing the last frames",
                r.entry.name,
                r.fsm.received().len(),
                r.joined.elapsed().as_secs_f64()
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

    /// Takes NAKs from the file's control port (other receivers', and our own echoed back).
    fn drain_control(&mut self, index: usize) -> Result<()> {
        let now = Instant::now();
        let r = &mut self.receptions[index];
        while let Some(n) = net::recv_nonblocking(&r.control, &mut self.buf)
            .context(|| format!("cannot receive NAKs for {}", r.entry.name))?
        {
            if r.state == State::Receiving {
                r.fsm.handle_datagram(now, &self.buf[..n]);
            }
        }
        Ok(())
    }

    /// The earliest NAK timer of any file being received.
    fn next_nak_timer(&self) -> Option<Instant> {
        self.receptions
            .iter()
            .filter(|r| r.state == State::Receiving)
            .filter_map(|r| r.fsm.poll_timeout())
            .min()
    }

    /// Fires due NAK timers and sends the NAKs they produce to each file's control port.
    fn run_nak_timers(&mut self) {
        let now = Instant::now();
        for r in self
            .receptions
            .iter_mut()
            .filter(|r| r.state == State::Receiving)
        {
            if r.fsm.poll_timeout().is_some_and(|at| at <= now) {
                r.fsm.handle_timeout(now);
            }
            while let Some(nak) = r.fsm.poll_transmit() {
                let to = SocketAddrV4::new(*r.entry.channel.ip(), r.entry.control_port);
                match self.nak_socket.send_to(&nak, to) {
                    Ok(_) => {}
                    // A lost NAK is repaired by the next timer round, like one lost in the network.
                    Err(e) => log::debug!("{}: NAK to {to} not sent: {e}", r.entry.name),
                }
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
        if let Some(map) = resumed {
            let held = map.count();
            r.fsm.restore(map);
            r.resumed = held;
            log::info!(
                "{}: resuming, {} of {} packets already stored",
                manifest.name,
                held,
                manifest.packet_count()
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
                let secs = r.joined.elapsed().as_secs_f64();
                let s = r.fsm.stats();
                log::info!(
                    "{}: complete and verified in {:.2} s ({} at {}); {} packets stored, {} resumed, {} duplicates, {} dropped, {} debug-dropped, {} dropped by the kernel (socket buffer full); repair: {} repairs received, {} NAKs sent, {} heard, {} suppressed -> {}",
                    manifest.name,
                    secs,
                    format_bytes(manifest.original_size),
                    format_rate(manifest.original_size as f64 * 8.0 / secs.max(1e-9)),
                    s.stored,
                    r.resumed,
                    s.duplicates,
                    s.dropped(),
                    r.debug_dropped,
                    self.batch.kernel_drops(&r.socket),
                    s.repairs,
                    s.naks_sent,
                    s.naks_heard,
                    s.naks_suppressed,
                    path.display()
                );
                r.progress.finish(format!("{} done", manifest.name));
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
                .persist_in_background(r.fsm.received(), &self.persister)
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
                && let Err(e) = p.persist_now(r.fsm.received())
            {
                log::warn!("{}: {e}", r.entry.name);
            }
        }
    }

    fn log_progress(&self) {
        if self.progress.is_drawing() {
            return;
        }
        for r in self
            .receptions
            .iter()
            .filter(|r| r.state == State::Receiving)
        {
            let held = r.fsm.received().count();
            match r.fsm.manifest() {
                Some(m) => log::info!(
                    "{}: {:.1}% ({} of {} packets)",
                    r.entry.name,
                    100.0 * held as f64 / m.packet_count().max(1) as f64,
                    held,
                    m.packet_count()
                ),
                None => log::info!(
                    "{}: waiting for its manifest on {}",
                    r.entry.name,
                    r.entry.channel
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
                (_, None) => "no manifest heard".to_string(),
            };
            parts.insert(r.entry.name.clone(), status);
        }
        for name in &self.config.names {
            parts
                .entry(name.clone())
                .or_insert_with(|| "not on air".to_string());
        }
        if parts.is_empty() {
            return format!("no server heard on {}", self.config.group);
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
