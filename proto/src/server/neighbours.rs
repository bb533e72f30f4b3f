//! Other servers on the directory group (spec §7.8): a server that finds, within
//! `HEAR_EVERY_SERVER` of its start, another server's listing using one of its
//! channel addresses moves its channels to numbers no server heard uses.

use super::{Endpoint, ServerEvent};
use crate::sender::HEAR_EVERY_SERVER;
use crate::server::Admission;
use crate::wire::{self, Packet};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Instant;

/// Most other servers remembered (listings of further ones are not kept).
pub const MAX_NEIGHBOURS: usize = 256;
/// Highest channel number a server moves to.
pub const MAX_CHANNEL_NUMBER: u32 = 4096;

/// What the endpoint heard of other servers on its directory group.
pub(super) struct Neighbours {
    /// Per session heard in this server's first `HEAR_EVERY_SERVER`: the channel
    /// addresses it lists.
    heard: HashMap<u32, HashSet<SocketAddr>>,
    /// True once this server asked to move (it moves at most once).
    moved: bool,
    rng: SmallRng,
}

impl Neighbours {
    /// Nothing heard yet; `seed` drives the choice of new numbers.
    pub(super) fn new(seed: u64) -> Self {
        Self {
            heard: HashMap::new(),
            moved: false,
            rng: SmallRng::seed_from_u64(seed),
        }
    }
}

impl<A: Admission> Endpoint<A> {
    /// A datagram heard on the directory group: another server's listing.
    pub(super) fn heard_on_directory(&mut self, now: Instant, bytes: &[u8]) {
        // Only a server new on the group moves, and only once: past that, what
        // others list changes nothing.
        if self.neighbours.moved || now >= self.started + HEAR_EVERY_SERVER {
            return;
        }
        let Ok(wire::Datagram {
            session_id,
            packet: Packet::Announce(announce),
        }) = wire::decode(bytes)
        else {
            return;
        };
        // Our own listing, or one a stranger forged (it must not move us).
        if session_id == self.config.session_id || !self.config.directory_key.verifies(bytes) {
            return;
        }
        let n = &mut self.neighbours;
        if !n.heard.contains_key(&session_id) && n.heard.len() >= MAX_NEIGHBOURS {
            return;
        }
        let groups = n.heard.entry(session_id).or_default();
        groups.extend(
            announce
                .entries
                .iter()
                .flat_map(|e| e.channels.iter().map(|c| c.group)),
        );
        let ours: Vec<SocketAddr> = (self.files.iter())
            .flat_map(|f| f.channels.iter().map(|c| c.stream.to))
            .collect();
        if !ours.iter().any(|g| groups.contains(g)) {
            return;
        }
        let directory = self.config.directory;
        let used: HashSet<u32> = (n.heard.values())
            .flatten()
            .filter_map(|g| channel_number(directory, *g))
            .collect();
        let need = ours.len().max(1) as u32;
        let free: Vec<u32> = (1..MAX_CHANNEL_NUMBER / need)
            .map(|k| k * need + 1)
            .filter(|first| (*first..first + need).all(|c| !used.contains(&c)))
            .collect();
        if free.is_empty() {
            return;
        }
        n.moved = true;
        let first_channel = free[n.rng.random_range(0..free.len())];
        self.events.push_back(ServerEvent::ChannelsTaken {
            by_session: session_id,
            first_channel,
        });
    }
}

/// The number of channel `group` on `directory` (group + n, port + n), if it is one.
pub fn channel_number(directory: SocketAddr, group: SocketAddr) -> Option<u32> {
    let n = crate::codec::ip_distance(directory.ip(), group.ip())?;
    let port = directory.port().checked_add(u16::try_from(n).ok()?)?;
    (n > 0 && group.port() == port).then_some(n)
}
