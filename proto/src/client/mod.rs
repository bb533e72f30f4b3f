//! The receiver session: everything `recv` decides, as one machine without I/O.
//! It follows the wanted files from the listings it hears, joins and leaves
//! channels, steps between rates, falls back to a unicast stream, asks idle
//! on-demand files to start, NAKs, reports, tracks frames and says DONE.
//!
//! Contract (after quinn-proto's): after any input (`handle_datagram`,
//! `handle_timeout`, or a storage result), call `poll_command` and `poll_transmit`
//! until both return `None`, carrying each out as it comes; then `poll_event` until `None`; then sleep until `poll_timeout`.
//! Commands and transmits come out in the order the session made them, because
//! commands open and close the sockets that transmits go out of: each poll returns
//! `None` while the other queue holds something older. A datagram's new
//! payload comes back from `handle_datagram` itself, borrowed, so the driver can
//! write a whole batch at once; but it must write the payloads it holds before it
//! carries out the commands that follow them (`CheckTable` and `Unpack` read them
//! back; `has_output` tells when there are some). Where servers come from (ANNOUNCE, the
//! configured `--server`) is an input, so a director's alternates can plug in.

mod directions;
mod driver_io;
mod listings;
mod reception;
mod results;
mod skip;
mod switch;
mod timers;
mod waiting;

pub use driver_io::{
    ClientConfig, ClientError, ClientEvent, Command, Fallback, FrameRanges, Origin, ReceptionId,
    Resumed, Store, Transmit, Via,
};
pub use reception::{Phase, Reception};
pub use waiting::Waiting;

use crate::receiver::{NakMode, Outcome};
pub use crate::receiver::{Rebuild, RepairKind};
use crate::sender::HEAR_EVERY_SERVER;
use crate::wire::{self, COOKIE_LEN, MacKey};
use directions::Directed;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reception::Stream;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most files received at once; further wanted files wait for a free place.
pub const MAX_ACTIVE_RECEPTIONS: usize = 32;
/// How long manifests sealed with another key may come before that is an error,
/// unless one sealed with ours arrives (a manifest goes out every 500 ms).
pub const WRONG_KEY_GRACE: Duration = Duration::from_secs(3);
/// Refused names remembered (each is told once).
const MAX_REFUSED_NAMES: usize = 64;
/// A session silent this long may be replaced by another serving the same file.
pub const SESSION_SILENCE: Duration = Duration::from_secs(3);
/// How long to wait for an answer before repeating a request.
pub const REQUEST_RETRY: Duration = Duration::from_secs(1);
/// The receiver's loop track of a unicast stream (multicast channels use their index).
const STREAM_TRACK: usize = wire::MAX_CHANNELS;

/// One server's file list as heard so far.
struct Listing {
    parts: u8,
    heard: HashSet<u8>,
    names: HashSet<String>,
    /// When a part of it was last heard (a server silent for `SESSION_SILENCE`
    /// no longer holds back an all-files receiver).
    last_heard: Instant,
}

/// Commands and transmits in order of making: (sequence, item).
#[derive(Default)]
struct Outputs {
    transmits: VecDeque<(u64, Transmit)>,
    commands: VecDeque<(u64, Command)>,
    made: u64,
}

impl Outputs {
    fn transmit(&mut self, transmit: Transmit) {
        self.made += 1;
        self.transmits.push_back((self.made, transmit));
    }

    fn command(&mut self, command: Command) {
        self.made += 1;
        self.commands.push_back((self.made, command));
    }
}

/// The receiver session (see the module documentation for its contract).
pub struct Session {
    config: ClientConfig,
    receptions: Vec<Reception>,
    /// Per server session: its file list as heard so far.
    listings: HashMap<u32, Listing>,
    /// Per server session: its unicast address.
    servers: HashMap<u32, SocketAddr>,
    /// Cookies servers gave the link.
    cookies: HashMap<SocketAddr, [u8; COOKIE_LEN]>,
    /// With `--server`: where and when to ask for the listing, until one is heard.
    listing_request: Option<(SocketAddr, Instant)>,
    /// Random id of the link's requests.
    link_id: u32,
    rng: SmallRng,
    out: Outputs,
    events: VecDeque<ClientEvent>,
    /// Frames completed by the datagrams being handled (scratch).
    completed: Vec<u32>,
    /// ANNOUNCE entries skipped for an unsafe name.
    refused_entries: u64,
    /// Listings of another archive than the one a wanted file is pinned to.
    other_archives: u64,
    /// Names refused so far (bounded), so that each is told once.
    refused_names: HashSet<String>,
    /// Key of ANNOUNCE, REQUEST and COOKIE tags.
    directory_key: MacKey,
    /// Listings and cookies whose tag did not verify.
    unauthenticated: u64,
    /// Since when listings of a wanted file come only under another key: (first
    /// heard, the file, their key's fingerprint). Reported after `WRONG_KEY_GRACE`
    /// unless a listing of ours verifies meanwhile.
    foreign_listing: Option<(Instant, String, [u8; crate::keys::FINGERPRINT_LEN])>,
    /// When the first listing was heard: an all-files receiver waits
    /// `HEAR_EVERY_SERVER` from then, so that every server on the group is heard.
    first_listing: Option<Instant>,
    /// The latest time given to the session.
    now: Instant,
    /// With directors: each wanted file's look-up and the servers it named.
    directed: Directed,
}

impl Session {
    /// A session started at `now`; `seed` drives every random choice (ids, back-offs).
    pub fn new(config: ClientConfig, now: Instant, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        // With multicast, ask the server for its listing only if the directory stays silent.
        let listing_request = config.server.map(|server| {
            let wait = if config.unicast_only {
                Duration::ZERO
            } else {
                config.sync_timeout
            };
            (server, now + wait)
        });
        let directed = Directed::new(
            config.key.director_mac_key(),
            config.directors.clone(),
            &config.names,
            now,
            &mut rng,
        );
        Self {
            directed,
            directory_key: config.key.directory_mac_key(),
            link_id: rng.next_u32(),
            rng,
            config,
            receptions: Vec::new(),
            listings: HashMap::new(),
            servers: HashMap::new(),
            cookies: HashMap::new(),
            listing_request,
            out: Outputs::default(),
            events: VecDeque::new(),
            completed: Vec::new(),
            refused_entries: 0,
            other_archives: 0,
            unauthenticated: 0,
            foreign_listing: None,
            refused_names: HashSet::new(),
            first_listing: None,
            now,
        }
    }

    /// Takes one datagram. New payload comes back to be written at its offset:
    /// DATA's cells opened in place in `bytes` (spec §3.4).
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        origin: Origin,
        bytes: &'a mut [u8],
    ) -> Option<Store<'a>> {
        self.now = self.now.max(now);
        match origin {
            Origin::Directory { source } => {
                self.take_listing(now, &*bytes, source, None);
                None
            }
            Origin::Link { from } => {
                self.handle_link(now, from, &*bytes);
                None
            }
            Origin::Control { reception, channel } => {
                let r = self.receptions.get_mut(reception)?;
                if r.phase == Phase::Receiving {
                    r.fsm.handle_datagram_on(now, channel, bytes);
                }
                None
            }
            Origin::Channel { reception, channel } => {
                self.handle_data(now, reception, channel, bytes)
            }
            Origin::Stream { reception } => {
                if bytes.get(3) == Some(&(wire::PacketType::Cookie as u8)) {
                    self.stream_cookie(now, reception, &*bytes);
                    return None;
                }
                self.handle_data(now, reception, STREAM_TRACK, bytes)
            }
        }
    }

    /// After reception `id` took packets (or resumed them): once the frame table
    /// is whole, the driver checks it; once every packet is held, it is verifying.
    fn took_packets(&mut self, id: ReceptionId) {
        let r = &mut self.receptions[id];
        let table = r.fsm.manifest().map(|m| m.table_packets());
        if r.frames.is_none()
            && !r.checking_table
            && r.storage_open
            && table.is_some_and(|t| r.fsm.received().contains_range(t))
        {
            r.checking_table = true;
            self.out.command(Command::CheckTable { reception: id });
        }
        if r.phase == Phase::Receiving && r.fsm.is_complete() {
            r.phase = Phase::Verifying;
            self.events
                .push_back(ClientEvent::AllHeld { reception: id });
        }
    }

    fn join(&mut self, id: ReceptionId, channel: usize) {
        let r = &mut self.receptions[id];
        r.joined.push(channel);
        r.fsm
            .set_track_rate(channel, r.entry.channels[channel].rate_bps);
        self.out.command(Command::Join {
            reception: id,
            channel,
            info: r.entry.channels[channel],
        });
    }

    /// Leaves every multicast channel and the unicast stream of reception `id`.
    fn close_sources(&mut self, id: ReceptionId) {
        let r = &mut self.receptions[id];
        r.away_until = None;
        for channel in std::mem::take(&mut r.joined) {
            self.out.command(Command::Leave {
                reception: id,
                channel,
            });
        }
        if r.stream.take().is_some() {
            self.out.command(Command::CloseStream { reception: id });
        }
    }

    /// Leaves multicast for reception `id` and asks its server for a unicast stream.
    fn fall_back(&mut self, now: Instant, id: ReceptionId, why: Fallback) {
        let Some(server) = self.receptions[id].server else {
            return; // no server known: keep listening
        };
        self.close_sources(id);
        self.out.command(Command::OpenStream {
            reception: id,
            server,
        });
        let r = &mut self.receptions[id];
        r.stream = Some(Stream {
            server,
            cookie: [0; COOKIE_LEN],
            next_request: now,
        });
        r.last_data = now;
        // The stream has its own time to speak before its server counts as silent.
        r.listening_from = r.listening_from.max(now);
        r.fsm.set_nak_mode(NakMode::Immediate);
        self.events.push_back(ClientEvent::FellBack {
            reception: id,
            server,
            why,
        });
        self.run_stream_request(now, id);
    }

    /// Sends the stream request of reception `id` when due.
    fn run_stream_request(&mut self, now: Instant, id: ReceptionId) {
        let max_rate = self.config.max_rate.unwrap_or(0);
        let r = &mut self.receptions[id];
        let Some(s) = r.stream.as_mut() else { return };
        if now < s.next_request {
            return;
        }
        s.next_request = now + REQUEST_RETRY;
        let request = wire::Request {
            receiver_id: r.fsm.receiver_id(),
            flags: wire::REQUEST_UNICAST,
            max_rate_bps: max_rate,
            cookie: s.cookie,
            name: r.entry.name.clone(),
        };
        self.out.transmit(Transmit {
            via: Via::Stream(id),
            to: s.server,
            datagram: wire::encode_request(&self.directory_key, 0, &request),
        });
    }

    /// A data-carrying datagram (channel or stream) of reception `id`, on `track`.
    fn handle_data<'a>(
        &mut self,
        now: Instant,
        id: ReceptionId,
        track: usize,
        bytes: &'a mut [u8],
    ) -> Option<Store<'a>> {
        let r = self.receptions.get_mut(id)?;
        if r.phase != Phase::Receiving {
            return None; // drained and dropped while verifying or done
        }
        if r.pending.is_some()
            && bytes.get(3) == Some(&(wire::PacketType::Manifest as u8))
            && self.take_pending(now, id, &*bytes)
        {
            return None;
        }
        let r = &mut self.receptions[id];
        let is_data = bytes.get(3) == Some(&(wire::PacketType::Data as u8));
        let outcome = r.fsm.handle_datagram_on(now, track, bytes);
        // Only DATA whose cells opened shows the channel is running: forged
        // DATA must not hold off a fall-back.
        if is_data && r.fsm.data_heard() == Some(now) {
            r.last_data = now;
            r.next_start_request = None; // the channels are running
            let new = matches!(outcome, Outcome::Store { .. });
            self.maybe_leave(now, id, track, new);
        }
        let r = &mut self.receptions[id];
        match outcome {
            Outcome::Store {
                packet_index,
                body_offset,
                payload,
            } => {
                if let Some(frames) = r.frames.as_mut() {
                    frames.packet_arrived(packet_index, &mut self.completed);
                    if !self.completed.is_empty() {
                        self.out.command(Command::Unpack {
                            reception: id,
                            frames: std::mem::take(&mut self.completed),
                        });
                    }
                }
                self.take_rebuilds(id);
                self.took_packets(id);
                Some(Store {
                    reception: id,
                    body_offset,
                    payload,
                })
            }
            Outcome::ManifestAccepted => {
                self.manifest_accepted(id);
                None
            }
            Outcome::WrongKey { theirs } => {
                // Said only if no manifest verifies for a while: a forged one must
                // not end the reception (T2). See `reception_timers`.
                r.wrong_key.get_or_insert((now, theirs));
                None
            }
            Outcome::Nothing => {
                if self.take_rebuilds(id) {
                    self.took_packets(id);
                }
                None
            }
        }
    }

    /// Hands the driver the blocks reception `id` can rebuild from parity; the
    /// frames they complete are unpacked after. True if there were some.
    fn take_rebuilds(&mut self, id: ReceptionId) -> bool {
        let mut any = false;
        while let Some(rebuild) = self.receptions[id].fsm.poll_rebuild() {
            any = true;
            if let Some(frames) = self.receptions[id].frames.as_mut() {
                for &packet in &rebuild.missing {
                    frames.packet_arrived(packet, &mut self.completed);
                }
            }
            self.out.command(Command::Rebuild {
                reception: id,
                rebuild,
            });
            if !self.completed.is_empty() {
                self.out.command(Command::Unpack {
                    reception: id,
                    frames: std::mem::take(&mut self.completed),
                });
            }
        }
        any
    }

    /// Reception `id` has its manifest: the driver opens (or resumes) its storage,
    /// unless the manifest names another file than the listing did.
    fn manifest_accepted(&mut self, id: ReceptionId) {
        let r = &self.receptions[id];
        let Some(manifest) = r.fsm.manifest().cloned() else {
            return;
        };
        if manifest.name != r.entry.name {
            self.events
                .push_back(ClientEvent::Failed(ClientError::NameMismatch {
                    announced: r.entry.name.clone(),
                    manifest: manifest.name,
                }));
            return;
        }
        self.out.command(Command::OpenStorage {
            reception: id,
            manifest: Box::new(manifest),
        });
    }

    /// Notes how many datagrams the kernel dropped on reception `id`'s sockets, for its reports.
    pub fn set_kernel_drops(&mut self, id: ReceptionId, drops: u32) {
        if let Some(r) = self.receptions.get_mut(id) {
            r.kernel_drops = drops;
        }
    }

    /// True when a command or datagram waits to be polled.
    pub fn has_output(&self) -> bool {
        !self.out.commands.is_empty() || !self.out.transmits.is_empty()
    }

    /// The next datagram to send, unless an older command must be carried out first.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let out = &mut self.out;
        let (seq, _) = out.transmits.front()?;
        if out.commands.front().is_some_and(|(c, _)| c < seq) {
            return None;
        }
        out.transmits.pop_front().map(|(_, t)| t)
    }

    /// The next thing the driver must do, unless an older transmit must go first.
    pub fn poll_command(&mut self) -> Option<Command> {
        loop {
            let out = &mut self.out;
            let (seq, _) = out.commands.front()?;
            if out.transmits.front().is_some_and(|(t, _)| t < seq) {
                return None;
            }
            let (_, mut command) = out.commands.pop_front()?;
            // A frame queued whole may have lost packets since (a rebuild that
            // failed, a neighbour let go): it is unpacked when it is whole again.
            if let Command::Unpack { reception, frames } = &mut command
                && let Some(tracker) = self
                    .receptions
                    .get(*reception)
                    .and_then(|r| r.frames.as_ref())
            {
                frames.retain(|&f| tracker.is_complete(f));
                if frames.is_empty() {
                    continue;
                }
            }
            return Some(command);
        }
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// True when every wanted file is delivered or given up (`storage_refused`).
    /// For "all files": once every
    /// server on the group has had time to announce (`HEAR_EVERY_SERVER` after the
    /// first listing), at least one whole listing (not empty) is delivered, and so
    /// is every other one heard within `SESSION_SILENCE`.
    pub fn is_finished(&self) -> bool {
        // A file given up (no room) is as finished as one delivered.
        let done: HashSet<&str> = self
            .receptions
            .iter()
            .filter(|r| matches!(r.phase, Phase::Done | Phase::Skipped))
            .map(|r| r.entry.name.as_str())
            .collect();
        if !self.config.names.is_empty() {
            return self.config.names.iter().all(|n| done.contains(n.as_str()));
        }
        let Some(first) = self.first_listing else {
            return false;
        };
        if self.now < first + HEAR_EVERY_SERVER {
            return false;
        }
        // A listing with no (acceptable) name finishes nothing: an empty ANNOUNCE
        // must not end an all-files receiver. A server silent for
        // `SESSION_SILENCE` whose files are not all here holds nothing back.
        let mut any = false;
        for l in self.listings.values().filter(|l| !l.names.is_empty()) {
            let delivered = l.heard.len() == l.parts as usize
                && l.names.iter().all(|n| done.contains(n.as_str()));
            if delivered {
                any = true;
            } else if l.last_heard + SESSION_SILENCE >= self.now {
                return false;
            }
        }
        any
    }

    /// Every reception so far.
    pub fn receptions(&self) -> &[Reception] {
        &self.receptions
    }

    /// Reception `id`.
    pub fn reception(&self, id: ReceptionId) -> Option<&Reception> {
        self.receptions.get(id)
    }

    /// ANNOUNCE entries skipped for an unsafe name.
    pub fn refused_entries(&self) -> u64 {
        self.refused_entries
    }

    /// Listing entries of another archive than the one their name is pinned to.
    pub fn other_archives(&self) -> u64 {
        self.other_archives
    }

    /// Listings and cookies dropped because their tag did not verify.
    pub fn unauthenticated(&self) -> u64 {
        self.unauthenticated
    }

    /// What the session was asked to do.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }
}
