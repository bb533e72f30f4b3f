//! The server endpoint: every file's channels (carousels and their pacers), the
//! announcer, admission of requests, unicast clients and their rate shares, the
//! receiver table and the channels' lifecycle, as one machine without I/O.
//!
//! Contract (as quinn-proto's): after any input (`handle_datagram`,
//! `handle_timeout`), call `poll_transmit` until it returns `None`, then
//! `poll_event` until `None`, then sleep until `poll_timeout`. Time is passed in;
//! the endpoint reads no clock, opens no socket and draws no randomness.

mod admission;
mod clients;
mod directors;
mod driver_io;
mod events;
mod inbound;
mod neighbours;
mod receivers;
mod relayed;
mod stream;

pub use admission::Admission;
use clients::UnicastClient;
pub use driver_io::{
    Archives, BatchLimits, ChannelSpec, DirectorLink, FileSpec, Origin, ServerConfig, Socket,
    Transmit,
};
pub use events::{ServerEvent, ServerStats, StreamEnd};
use neighbours::Neighbours;
pub use neighbours::{MAX_CHANNEL_NUMBER, MAX_NEIGHBOURS, channel_number};
pub use receivers::{MAX_RECEIVERS, Noted, RECEIVER_MEMORY, ReceiverEntry, ReceiverTable};
use relayed::RelayedFile;
use stream::Stream;

use crate::Manifest;
use crate::cookie::CookieJar;
use crate::rate::{RateController, membership_memory};
use crate::sender::{Announcer, Carousel, PayloadSource, RepairConfig};
use crate::timers::TimerHeap;
use crate::wire::{self, AnnounceEntry, ChannelInfo, SessionKeys};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A unicast client that sends nothing for this long is dropped.
pub const UNICAST_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Lowest rate a unicast stream slows down to.
pub const UNICAST_MIN_RATE: u64 = 1_000_000;
/// Most batches one stream sends before the others get a turn.
const MAX_BATCHES_PER_TURN: u32 = 16;
/// How often lifecycle, time-outs and rates are looked at.
pub const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// Reports older than this do not count towards the throughput heartbeats tell.
pub const THROUGHPUT_MEMORY: Duration = Duration::from_secs(60);

/// One multicast channel of a file.
struct Channel {
    stream: Stream,
    control_port: u16,
    /// With `--adapt`: sets the rate from reports.
    controller: Option<RateController>,
}

/// One file and its channels.
struct FileOnAir {
    manifest: Manifest,
    /// This session's packet keys for the file.
    keys: SessionKeys,
    manifest_bytes: Vec<u8>,
    channels: Vec<Channel>,
    /// False while an on-demand file waits for a request.
    active: bool,
    /// Last request or report for this file (on demand: idle time-out).
    last_interest: Instant,
    /// A relay's file still arriving: what it holds (None: all of it).
    relayed: Option<RelayedFile>,
}

/// Reads one file's body for a carousel.
struct FileSource<'a, A: Archives> {
    archives: &'a mut A,
    file: usize,
}

impl<A: Archives> PayloadSource for FileSource<'_, A> {
    fn read_payload(&mut self, body_offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.archives.read_payload(self.file, body_offset, buf)
    }
}

/// The server endpoint (see the module documentation for its contract).
pub struct Endpoint<A: Admission = CookieJar> {
    config: ServerConfig,
    files: Vec<FileOnAir>,
    /// Channels per file (the same for every file).
    per_file: usize,
    announcer: Announcer,
    clients: Vec<Option<UnicastClient>>,
    /// Unicast clients by address: their slot in `clients`.
    client_slots: HashMap<SocketAddr, usize>,
    receivers: ReceiverTable,
    admission: A,
    /// Each stream's next send: channel streams first, then client slots.
    timers: TimerHeap,
    /// The stream being served and the batches left in its turn.
    serving: Option<(usize, u32)>,
    control: VecDeque<(Socket, SocketAddr, Vec<u8>)>,
    events: VecDeque<ServerEvent>,
    next_housekeeping: Instant,
    /// When the endpoint started (heartbeat sequence numbers count from it).
    started: Instant,
    /// When the next heartbeat goes to the directors (with `ServerConfig::directors`).
    next_heartbeat: Instant,
    /// When each director last said HEARD to a recent heartbeat.
    directors_heard: HashMap<SocketAddr, Instant>,
    /// The last cookie each director gave us (T44).
    director_cookies: HashMap<SocketAddr, [u8; wire::COOKIE_LEN]>,
    /// Other servers heard on the directory group.
    neighbours: Neighbours,
    /// Thousandths of a core the server process uses, as the driver last said.
    cpu_permille: u16,
    stats: ServerStats,
}

impl<A: Admission> Endpoint<A> {
    /// An endpoint serving `files` from `now` on, admitting requests with `admission`.
    /// Fails if the files have different channel counts or a listing entry does not
    /// fit a datagram.
    pub fn new(
        config: ServerConfig,
        files: Vec<FileSpec>,
        admission: A,
        now: Instant,
    ) -> Result<Self, String> {
        let per_file = files.first().map_or(0, |f| f.channels.len());
        if files.iter().any(|f| f.channels.len() != per_file) {
            return Err("every file needs the same number of channels".into());
        }
        let files: Vec<FileOnAir> = files
            .into_iter()
            .map(|spec| FileOnAir::new(&config, spec, now))
            .collect();
        let announcer = Announcer::new(
            &config.directory_key,
            config.key_fingerprint,
            config.session_id,
            &listing(&files),
            config.unicast_port,
            config.max_datagram,
        )?;
        let mut endpoint = Self {
            per_file,
            announcer,
            clients: Vec::new(),
            client_slots: HashMap::new(),
            receivers: ReceiverTable::default(),
            admission,
            timers: TimerHeap::default(),
            serving: None,
            control: VecDeque::new(),
            events: VecDeque::new(),
            next_housekeeping: now + HOUSEKEEPING,
            started: now,
            next_heartbeat: now,
            directors_heard: HashMap::new(),
            director_cookies: HashMap::new(),
            neighbours: Neighbours::new(config.session_id as u64),
            cpu_permille: 0,
            stats: ServerStats::default(),
            files,
            config,
        };
        for f in 0..endpoint.files.len() {
            if endpoint.files[f].active {
                endpoint.schedule_file(f, now);
            }
        }
        Ok(endpoint)
    }

    /// Bytes the buffer passed to `poll_transmit` must hold.
    pub fn buffer_len(&self) -> usize {
        self.config.batch.bytes.max(self.config.max_datagram) + wire::MAX_PACKET_SIZE
    }

    fn file_of(&self, archive_id: u64) -> Option<usize> {
        self.files
            .iter()
            .position(|f| f.manifest.archive_id == archive_id)
    }

    fn client_timer(&self, slot: usize) -> usize {
        self.files.len() * self.per_file + slot
    }

    fn schedule_file(&mut self, f: usize, at: Instant) {
        for j in 0..self.per_file {
            self.timers.schedule(f * self.per_file + j, at);
        }
    }

    /// Rebuilds the ANNOUNCE listing (an on-demand file started or stopped). The
    /// entries keep their sizes, so the listing still fits as it did at start.
    fn relist(&mut self) {
        if let Ok(newer) = Announcer::new(
            &self.config.directory_key,
            self.config.key_fingerprint,
            self.config.session_id,
            &listing(&self.files),
            self.config.unicast_port,
            self.config.max_datagram,
        ) {
            self.announcer.replace(newer);
        }
    }

    /// Runs what is due: adaptive rates, unicast rates and time-outs, on-demand
    /// idling, forgetting silent receivers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + HOUSEKEEPING;
        let mut relist = false;
        for (f, file) in self.files.iter_mut().enumerate() {
            for (j, channel) in file.channels.iter_mut().enumerate() {
                let Some(controller) = channel.controller.as_mut() else {
                    continue;
                };
                let memory = membership_memory(
                    channel.stream.carousel.group_size(),
                    controller.rate(),
                    channel.stream.carousel.max_datagram_len(),
                );
                if let Some(rate) = controller.poll(now, memory) {
                    channel.stream.set_rate(rate, now, self.config.batch);
                    self.events.push_back(ServerEvent::RateChanged {
                        file: f,
                        channel: j,
                        rate_bps: rate,
                    });
                }
            }
            if self.config.on_demand
                && file.active
                && now.saturating_duration_since(file.last_interest) >= self.config.idle
            {
                file.active = false;
                relist = true;
                self.events
                    .push_back(ServerEvent::ChannelsStopped { file: f });
            }
        }
        if relist {
            self.relist();
        }
        for slot in 0..self.clients.len() {
            let Some(c) = self.clients[slot].as_mut() else {
                continue;
            };
            if now.saturating_duration_since(c.last_heard) >= UNICAST_CLIENT_TIMEOUT {
                self.drop_client(slot, now, StreamEnd::Silent);
                continue;
            }
            if let Some(rate) = c.rate.poll(now) {
                c.stream.set_rate(rate, now, self.config.batch);
            }
        }
        self.receivers.prune(now);
    }

    /// Writes the next datagrams to send into `buf` (at least `buffer_len` bytes):
    /// answers first, then ANNOUNCE when due, then a batch of whichever stream's
    /// pacer allows one. None when nothing is due before `poll_timeout`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        archives: &mut impl Archives,
    ) -> io::Result<Option<Transmit>> {
        if self.control.is_empty() {
            self.heartbeat(now);
        }
        if self.control.is_empty()
            && let Some(datagrams) = self.announcer.poll_transmit(now)
        {
            let to = self.config.directory;
            self.control
                .extend(datagrams.iter().map(|d| (Socket::Multicast, to, d.clone())));
        }
        if let Some((socket, to, datagram)) = self.control.pop_front() {
            buf[..datagram.len()].copy_from_slice(&datagram);
            return Ok(Some(Transmit {
                socket,
                to,
                len: datagram.len(),
                segment: datagram.len(),
            }));
        }
        loop {
            let (id, left) = match self.serving {
                Some(turn) => turn,
                None => match self.timers.pop_due(now) {
                    Some(id) => (id, MAX_BATCHES_PER_TURN),
                    None => return Ok(None),
                },
            };
            let per_file = self.per_file;
            let channels = self.files.len() * per_file;
            let (stream, file, socket) = if id < channels {
                let file = &mut self.files[id / per_file];
                if !file.active {
                    self.serving = None;
                    continue; // stopped: scheduled again when it starts
                }
                (
                    &mut file.channels[id % per_file].stream,
                    id / per_file,
                    Socket::Multicast,
                )
            } else {
                match self.clients.get_mut(id - channels).and_then(Option::as_mut) {
                    Some(c) => (&mut c.stream, c.file, Socket::Unicast),
                    None => {
                        self.serving = None;
                        continue; // a dropped client
                    }
                }
            };
            let mut source = FileSource { archives, file };
            let (len, segment, count) = stream.write_batch(now, buf, &mut source)?;
            let to = stream.to;
            if count == 0 || left <= 1 {
                let next = match count == 0 && stream.carousel.next_len(now) == 0 {
                    // A relay's carousel with nothing held to send: its next
                    // MANIFEST or STATUS, or sooner when `hold` gives it packets.
                    true => stream.carousel.next_control_at(),
                    false => {
                        (stream.pacer).ready_at(stream.carousel.max_datagram_len() * stream.batch)
                    }
                };
                self.timers.schedule(id, next);
                self.serving = None;
            } else {
                self.serving = Some((id, left - 1));
            }
            if count == 0 {
                continue;
            }
            self.stats.sent_bytes += len as u64;
            if socket == Socket::Unicast {
                self.stats.unicast_bytes += len as u64;
                if let Some(Some(c)) = self.clients.get_mut(id - channels) {
                    c.rate.count(count as u64, 0);
                }
            }
            return Ok(Some(Transmit {
                socket,
                to,
                len,
                segment,
            }));
        }
    }

    /// Tells the endpoint how much of a core its process uses, in thousandths (heartbeats carry it).
    pub fn set_cpu_load(&mut self, permille: u16) {
        self.cpu_permille = permille;
    }

    /// When the endpoint next needs `handle_timeout` or `poll_transmit`.
    pub fn poll_timeout(&mut self) -> Instant {
        let heartbeat = self.config.directors.as_ref().map(|_| self.next_heartbeat);
        [
            self.timers.next_deadline(),
            self.announcer.poll_timeout(),
            heartbeat,
        ]
        .into_iter()
        .flatten()
        .fold(self.next_housekeeping, Instant::min)
    }

    /// The next thing that happened, for logs and `--json`.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Receivers remembered (from reports and DONE).
    pub fn receivers(&self) -> &ReceiverTable {
        &self.receivers
    }

    /// Files served.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// File `file`'s manifest.
    pub fn manifest(&self, file: usize) -> &Manifest {
        &self.files[file].manifest
    }

    /// Channel `channel` of file `file`: its carousel and group, if it exists.
    pub fn channel(&self, file: usize, channel: usize) -> Option<(&Carousel, SocketAddr)> {
        let c = self.files.get(file)?.channels.get(channel)?;
        Some((&c.stream.carousel, c.stream.to))
    }

    /// Channels per file.
    pub fn channels_per_file(&self) -> usize {
        self.per_file
    }

    /// Unicast streams running.
    pub fn unicast_clients(&self) -> usize {
        self.client_slots.len()
    }

    /// True while file `file`'s channels run (always, unless on demand).
    pub fn is_active(&self, file: usize) -> bool {
        self.files.get(file).is_some_and(|f| f.active)
    }
}

impl FileOnAir {
    fn new(config: &ServerConfig, spec: FileSpec, now: Instant) -> Self {
        let packets = spec.manifest.packet_count();
        let keys = SessionKeys::new(&spec.file_key, config.session_id);
        let count = spec.channels.len().max(1) as u64;
        let channels = spec
            .channels
            .iter()
            .enumerate()
            .map(|(j, c)| {
                let repair = RepairConfig {
                    rate_bps: c.rate_bps,
                    share: config.repair_share,
                    grtt_floor: config.grtt_floor,
                    group_size: config.group_size,
                    fec_overhead: config.fec_overhead,
                };
                // Loops of one file's channels start evenly spread over the file.
                let phase = (packets as u64 * j as u64 / count) as u32;
                let mut carousel = Carousel::new(
                    keys.clone(),
                    config.session_id,
                    &spec.manifest,
                    &spec.manifest_bytes,
                    now,
                    repair,
                )
                .with_phase(phase);
                if spec.relayed {
                    carousel = carousel.holding_nothing_yet();
                }
                Channel {
                    stream: Stream::new(carousel, c.group, now, config.batch),
                    control_port: c.control_port,
                    controller: config
                        .adapt
                        .map(|(mode, min, max)| RateController::new(mode, min, max, c.rate_bps)),
                }
            })
            .collect();
        Self {
            keys,
            relayed: spec.relayed.then(|| RelayedFile::new(&spec.manifest)),
            manifest: spec.manifest,
            manifest_bytes: spec.manifest_bytes,
            channels,
            active: !config.on_demand,
            last_interest: now,
        }
    }
}

/// The ANNOUNCE entries of `files` as they stand.
fn listing(files: &[FileOnAir]) -> Vec<AnnounceEntry> {
    files
        .iter()
        .map(|f| AnnounceEntry {
            archive_id: f.manifest.archive_id,
            original_size: f.manifest.original_size,
            body_len: f.manifest.body_len,
            content_digest: f.manifest.content_digest,
            flags: if f.active { 0 } else { wire::ENTRY_IDLE },
            name: f.manifest.name.clone(),
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
        .collect()
}

#[cfg(test)]
mod tests;
