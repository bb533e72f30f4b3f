//! The director: a live registry of servers and the files they carry, built
//! from their heartbeats, which answers receivers' look-ups with the servers
//! carrying a file, best first (spec §9).
//!
//! Contract (as the other endpoints'): after any input (`handle_datagram`,
//! `handle_timeout`), call `poll_transmit` until `None`, then `poll_event`
//! until `None`, then sleep until `poll_timeout`. The director's state is soft:
//! a restarted director knows every server again within `KNOWS_ALL_AFTER`.

mod memory;
mod moves;
mod nodes;
mod rank;
mod servers;
pub mod strangers;

pub use nodes::{ANSWER_EVERY, FORGET_NODE_AFTER, MAX_NODES, MAX_NODES_PER_SOURCE, NodeRecord};

pub use memory::{LOOKUP_MEMORY, LOOKUP_REPEAT, MAX_LOOKUPS, MAX_TOMBSTONES, TOMBSTONE_MEMORY};
use memory::{RecentLookups, Tombstones};
pub use rank::{Candidate, SAME_SUBNET_BONUS, THROUGHPUT_BONUS, load_fraction, rank};
use strangers::{Stranger, Strangers};

use crate::cookie::CookieJar;
use crate::jobs::{ApiAuth, JobChange, JobTable};
use crate::wire::{
    self, AnnounceEntry, Directions, Found, Heartbeat, Lookup, MacKey, Packet, RedirectReason,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often a server heartbeats to each director.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A server unheard for this many heartbeat intervals is down.
pub const DOWN_AFTER_HEARTBEATS: u32 = 3;
/// Most servers a director keeps (heartbeats of further ones are counted, not kept).
pub const MAX_SERVERS: usize = 1024;
/// Most servers whose heartbeats come from one /24 (or /64): one host cannot
/// fill the table for everyone (T44).
pub const MAX_SERVERS_PER_SOURCE: usize = 64;
/// Most parts of a server's listing a director keeps (about 4000 files): a
/// key holder's heartbeats cannot make it hold 255 parts of 9000 bytes each (T44).
pub const MAX_LISTING_PARTS: usize = 64;
/// A director started this long ago knows every live server: a heartbeat,
/// the HEARD that gives the server a cookie, and the next heartbeat, which
/// proves the server's address with it (T44).
pub const KNOWS_ALL_AFTER: Duration = Duration::from_secs(3);
/// Most (receiver, file) look-ups a director remembers, for its status.
pub const MAX_RECEIVERS: usize = 4096;
/// How long a director remembers a receiver's look-up.
pub const RECEIVER_MEMORY: Duration = Duration::from_secs(600);

/// A receiver's latest look-up of one file, as the director answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverSeen {
    /// The receiver's link address.
    pub address: SocketAddr,
    /// The file it asked for.
    pub name: String,
    /// The server named first (None: not carried, or not yet known).
    pub primary: Option<SocketAddr>,
    /// When it asked.
    pub at: Instant,
    /// The nonce of its look-up, which a REDIRECT echoes; None once used.
    pub nonce: Option<u64>,
}

/// When a server unheard since `last` is down.
pub fn down_at(last: Instant) -> Instant {
    last + HEARTBEAT_INTERVAL * DOWN_AFTER_HEARTBEATS
}

/// What a director knows of one server.
#[derive(Debug, Clone)]
pub struct ServerRecord {
    /// The server's session id.
    pub session_id: u32,
    /// Its unicast address: the heartbeat's source (sent from its unicast port).
    pub address: SocketAddr,
    /// Its last heartbeat.
    pub load: Heartbeat,
    /// When that heartbeat came.
    pub last_heard: Instant,
    /// Receivers sent to it as primary since that heartbeat: counted as unicast
    /// streams until its next heartbeat tells, so that a burst of look-ups is
    /// spread rather than all sent to whichever server was least loaded.
    pub directed: u16,
    /// Its listing, part by part as the ANNOUNCE parts after its heartbeats come.
    parts: Vec<Option<Vec<AnnounceEntry>>>,
}

impl ServerRecord {
    /// The files it carries, as far as its listing has come.
    pub fn files(&self) -> impl Iterator<Item = &AnnounceEntry> {
        self.parts.iter().flatten().flatten()
    }
}

/// Something the director did, for logs and `--json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectorEvent {
    /// A server heartbeat for the first time (or after it was down).
    ServerUp {
        /// Its session id.
        session_id: u32,
        /// Its unicast address.
        address: SocketAddr,
    },
    /// A server missed `DOWN_AFTER_HEARTBEATS` heartbeats, or restarted under a new session.
    ServerDown {
        /// Its session id.
        session_id: u32,
        /// Its unicast address.
        address: SocketAddr,
    },
    /// A receiver was moved to other servers.
    Redirected {
        /// The receiver.
        to: SocketAddr,
        /// The file.
        name: String,
        /// Why.
        reason: RedirectReason,
        /// The server it moves to.
        primary: SocketAddr,
    },
    /// An agent registered for the first time, after silence, or restarted.
    NodeUp {
        /// Its node name.
        node: String,
        /// Where it registers from.
        address: SocketAddr,
    },
    /// An agent went unheard for `jobs::UNREACHABLE_AFTER_MS`.
    NodeDown {
        /// Its node name.
        node: String,
    },
    /// A job or one of its targets changed state.
    Job(JobChange),
    /// Datagrams from an address did not verify (told at most every
    /// `strangers::TELL_EVERY` per address).
    Unauthenticated(Stranger),
    /// A look-up was answered.
    Answered {
        /// Who asked.
        from: SocketAddr,
        /// The name.
        name: String,
        /// What was found.
        found: Found,
        /// The first server named.
        primary: Option<SocketAddr>,
    },
}

/// Per name, per archive id: the archive's listing entry (as the first server
/// listing it gives it) and the servers carrying it.
pub type Versions<'a> =
    BTreeMap<&'a str, BTreeMap<u64, (&'a AnnounceEntry, Vec<&'a ServerRecord>)>>;

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectorStats {
    /// Datagrams whose tag did not verify under the director or directory key.
    pub unauthenticated: u64,
    /// Heartbeats no newer than the last heard of their session or tombstone,
    /// or of a session older than the one at their address (replays).
    pub stale: u64,
    /// REGISTERs no newer than their node's: of its instance, or of an
    /// earlier run of its agent (replays, T29).
    pub stale_registers: u64,
    /// Heartbeats of new servers dropped because `MAX_SERVERS` are known, or
    /// `MAX_SERVERS_PER_SOURCE` from their subnet; REGISTERs of new nodes likewise.
    pub over_capacity: u64,
    /// Heartbeats of new sessions whose cookie did not prove their address:
    /// answered with one, no record made (T44).
    pub unproven: u64,
    /// Look-ups answered.
    pub answered: u64,
    /// Receivers moved by REDIRECT.
    pub redirects: u64,
    /// Of those, answered "not carried".
    pub not_carried: u64,
    /// Datagrams that were not for a director, or malformed.
    pub ignored: u64,
    /// Look-ups repeated within `LOOKUP_REPEAT` of their answer, or heard
    /// from another source than the first (replays): not answered.
    pub replayed: u64,
}

/// The director (see the module documentation for its contract).
pub struct Director {
    director_key: MacKey,
    directory_key: MacKey,
    started: Instant,
    servers: HashMap<u32, ServerRecord>,
    nodes: HashMap<String, NodeRecord>,
    jobs: JobTable,
    /// Checks job requests (None: every one is refused).
    api: Option<ApiAuth>,
    /// Whether this director schedules jobs (one of several on a shared store
    /// does; the others follow the store, §10.5).
    scheduling: bool,
    /// The API address of the director that schedules, when another does.
    leader: Option<String>,
    /// A moment and the wall-clock time then (ms since the Unix epoch).
    wall: (Instant, u64),
    /// Recent look-ups by (receiver, file), at most `MAX_RECEIVERS`.
    receivers: HashMap<(SocketAddr, String), ReceiverSeen>,
    /// When receivers were last pruned.
    pruned: Instant,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<DirectorEvent>,
    stats: DirectorStats,
    /// Addresses whose datagrams did not verify, told lately.
    strangers: Strangers,
    /// Dead sessions' last sequences: their replayed heartbeats list nothing.
    tombstones: Tombstones,
    /// Look-ups answered lately: a replay gets no answer and counts nothing.
    lookups: RecentLookups,
    /// Cookies that prove an agent's address (§10.3): no answer larger than
    /// its REGISTER goes to an address not proven.
    cookies: CookieJar,
}

impl Director {
    /// A director started at `now`, checking heartbeats and look-ups with
    /// `director_key` and listings with `directory_key`.
    /// (Its cookie secret is fixed: for tests and simulations. A director on
    /// a network is made by `with_jobs_key` with a random one.)
    pub fn new(director_key: MacKey, directory_key: MacKey, now: Instant) -> Self {
        Self::with_jobs_key(director_key, directory_key, None, [0x5a; 32], now)
    }

    /// A director that also takes job requests tagged under `jobs_api_key`
    /// (`MasterKey::jobs_api_mac_key`; None: a key nobody holds), and proves
    /// agents' addresses with cookies under `cookie_secret` (random per start).
    pub fn with_jobs_key(
        director_key: MacKey,
        directory_key: MacKey,
        jobs_api_key: Option<MacKey>,
        cookie_secret: [u8; 32],
        now: Instant,
    ) -> Self {
        Self {
            nodes: HashMap::new(),
            jobs: JobTable::default(),
            api: jobs_api_key.map(ApiAuth::new),
            scheduling: true,
            leader: None,
            wall: (now, 0),
            director_key,
            directory_key,
            started: now,
            servers: HashMap::new(),
            receivers: HashMap::new(),
            pruned: now,
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: DirectorStats::default(),
            strangers: Strangers::default(),
            tombstones: Tombstones::new(TOMBSTONE_MEMORY, MAX_TOMBSTONES),
            lookups: RecentLookups::new(LOOKUP_MEMORY, MAX_LOOKUPS),
            cookies: CookieJar::new(cookie_secret, now),
        }
    }

    /// Takes one datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.handle_timeout(now);
        let Ok(datagram) = wire::decode(bytes) else {
            self.stats.ignored += 1;
            return;
        };
        let key = match datagram.packet {
            Packet::Announce(_) => &self.directory_key,
            Packet::Heartbeat(_) | Packet::Lookup(_) | Packet::Register(_) => &self.director_key,
            _ => {
                self.stats.ignored += 1;
                return;
            }
        };
        if !key.verifies(bytes) {
            self.stats.unauthenticated += 1;
            if let Some(stranger) = self.strangers.note(now, from, &datagram.packet) {
                self.events
                    .push_back(DirectorEvent::Unauthenticated(stranger));
            }
            return;
        }
        match datagram.packet {
            Packet::Heartbeat(h) => {
                let sequence = h.sequence;
                // Fresh (taken, or unproven: HEARD gives it the cookie to
                // prove its address with), answered by a HEARD no larger.
                if self.heartbeat(now, from, datagram.session_id, h) {
                    let heard = wire::Heard {
                        echo: sequence,
                        cookie: self.cookies.issue(now, from),
                    };
                    let heard = wire::encode_heard(&self.director_key, datagram.session_id, &heard);
                    self.out.push_back((from, heard));
                }
            }
            Packet::Announce(a) => self.listing_part(from, datagram.session_id, a),
            Packet::Lookup(l) => self.answer(now, from, bytes.len(), l),
            Packet::Register(r) => {
                self.register(now, from, datagram.session_id, bytes.len(), r);
                self.drain_job_changes();
            }
            _ => {}
        }
    }

    /// Tells the director the wall-clock time at `now` (ms since the Unix
    /// epoch): job creation times and deadlines are wall-clock, so that they
    /// survive a restart.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall = (now, unix_ms);
    }

    /// The wall-clock time at `now`, ms.
    pub fn wall_ms(&self, now: Instant) -> u64 {
        let (at, ms) = self.wall;
        ms + now.saturating_duration_since(at).as_millis() as u64
    }

    /// The live servers carrying `name`, with the receivers sent to each since
    /// its last heartbeat counted as unicast streams (a burst of look-ups is
    /// spread, not all sent to the server that was least loaded).
    fn carrying(&self, name: &str) -> Vec<Candidate> {
        self.carrying_archive(name, 0)
    }

    /// `carrying`, only servers carrying archive `archive_id` of it (0: any).
    fn carrying_archive(&self, name: &str, archive_id: u64) -> Vec<Candidate> {
        (self.servers.values())
            .filter_map(|s| {
                let entry = s
                    .files()
                    .find(|e| e.name == name && (archive_id == 0 || e.archive_id == archive_id))?;
                let mut load = s.load.clone();
                load.unicast_clients = load.unicast_clients.saturating_add(s.directed);
                Some(Candidate {
                    session_id: s.session_id,
                    address: s.address,
                    archive_id: entry.archive_id,
                    load,
                })
            })
            .collect()
    }

    fn answer(&mut self, now: Instant, from: SocketAddr, asked_len: usize, lookup: Lookup) {
        // The same question from the same source: a replay within
        // `LOOKUP_REPEAT`, a retry after; neither counts load or a receiver.
        // The same nonce from another source is a replay too: a receiver's
        // retry comes from where it asked first.
        let repeated = match self.lookups.get(&lookup.nonce) {
            Some(&(first, at)) if first != from || now < at + LOOKUP_REPEAT => {
                self.stats.replayed += 1;
                return;
            }
            Some(_) => true,
            None => false,
        };
        let candidates = self.carrying_archive(&lookup.name, lookup.archive_id);
        let servers = rank(&candidates, from.ip());
        let knows_all = now >= self.started + KNOWS_ALL_AFTER;
        let found = match (servers.is_empty(), knows_all) {
            (false, _) => Found::Carried,
            (true, true) => Found::NotCarried,
            (true, false) => Found::NotYetKnown,
        };
        let archive_id = servers.first().map_or(0, |(archive_id, _)| *archive_id);
        let primary = servers.first().map(|(_, d)| d.server);
        if let Some((_, d)) = servers.first().filter(|_| !repeated)
            && let Some(s) = self.servers.get_mut(&d.session_id)
        {
            s.directed = s.directed.saturating_add(1);
        }
        let directions = Directions {
            nonce: lookup.nonce,
            found,
            name: lookup.name.clone(),
            archive_id,
            servers: servers.into_iter().map(|(_, d)| d).collect(),
        };
        let datagram = wire::encode_directions(&self.director_key, &directions);
        // Never more bytes to an unvalidated address than it sent (LOOKUP is padded).
        if datagram.len() > asked_len {
            return;
        }
        self.stats.answered += 1;
        self.stats.not_carried += u64::from(found == Found::NotCarried);
        self.out.push_back((from, datagram));
        self.lookups.put(now, lookup.nonce, from);
        if repeated {
            return;
        }
        let nonce = (found == Found::Carried).then_some(lookup.nonce);
        self.remember(now, from, &lookup.name, primary, nonce);
        self.events.push_back(DirectorEvent::Answered {
            from,
            name: lookup.name,
            found,
            primary,
        });
    }

    fn remember(
        &mut self,
        now: Instant,
        from: SocketAddr,
        name: &str,
        primary: Option<SocketAddr>,
        nonce: Option<u64>,
    ) {
        let key = (from, name.to_owned());
        if !self.receivers.contains_key(&key) && self.receivers.len() >= MAX_RECEIVERS {
            // Full: the oldest look-up makes room.
            let oldest = (self.receivers.iter())
                .min_by_key(|(_, r)| r.at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.receivers.remove(&oldest);
            }
        }
        let seen = ReceiverSeen {
            address: from,
            name: key.1.clone(),
            primary,
            at: now,
            nonce,
        };
        self.receivers.insert(key, seen);
    }

    /// Forgets servers unheard for `DOWN_AFTER_HEARTBEATS` intervals, and (once a
    /// second) look-ups older than `RECEIVER_MEMORY`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let turn = now >= self.pruned + HEARTBEAT_INTERVAL;
        if turn {
            self.pruned = now;
            self.receivers
                .retain(|_, r| now.saturating_duration_since(r.at) < RECEIVER_MEMORY);
        }
        let down: Vec<u32> = (self.servers.values())
            .filter(|s| now >= down_at(s.last_heard))
            .map(|s| s.session_id)
            .collect();
        let any_down = !down.is_empty();
        for session_id in down {
            self.remove(now, session_id);
        }
        // Receivers of a server gone are moved at once; load and throughput once a second.
        if turn || any_down {
            self.rebalance();
        }
        if turn {
            self.check_nodes(now);
            if self.scheduling {
                let wall = self.wall_ms(now);
                self.jobs.expire(wall);
                self.drain_job_changes();
            }
        }
    }

    /// The next datagram to send and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// When the next server goes down unless it heartbeats, or the next
    /// once-a-second turn (nodes, deadlines) is due while jobs or nodes are held.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let turn = (!self.nodes.is_empty() || self.jobs.active().next().is_some())
            .then_some(self.pruned + HEARTBEAT_INTERVAL);
        (self.servers.values().map(|s| down_at(s.last_heard)))
            .chain(turn)
            .min()
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<DirectorEvent> {
        self.events.pop_front()
    }

    /// The live servers.
    pub fn servers(&self) -> impl Iterator<Item = &ServerRecord> {
        self.servers.values()
    }

    /// Every name carried, and per name each archive (by id) with the live
    /// servers carrying it: one file packed twice, or two files of one name,
    /// show as two archives.
    pub fn versions(&self) -> Versions<'_> {
        let mut by_name: Versions<'_> = BTreeMap::new();
        for s in self.servers.values() {
            for e in s.files() {
                (by_name.entry(&e.name).or_default().entry(e.archive_id))
                    .or_insert_with(|| (e, Vec::new()))
                    .1
                    .push(s);
            }
        }
        by_name
    }

    /// Receivers' recent look-ups.
    pub fn receivers(&self) -> impl Iterator<Item = &ReceiverSeen> {
        self.receivers.values()
    }

    /// Counters.
    pub fn stats(&self) -> &DirectorStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests;
