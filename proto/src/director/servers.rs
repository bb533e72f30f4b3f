//! Servers' heartbeats and listings (spec §9.1): sessions recorded from a
//! proven address, replaced only by a later start, and remembered when gone
//! (tombstones) so that their replays list nothing (T21, T44).

use super::{
    Director, DirectorEvent, MAX_LISTING_PARTS, MAX_SERVERS, MAX_SERVERS_PER_SOURCE, ServerRecord,
};
use crate::wire::{self, Announce, Heartbeat};
use std::net::SocketAddr;
use std::time::Instant;

/// The listing parts of `h` a director keeps.
fn kept_parts(h: &Heartbeat) -> usize {
    (h.listing_parts as usize).min(MAX_LISTING_PARTS)
}

impl Director {
    /// Takes a verified heartbeat; true when it was fresh (and is answered).
    pub(super) fn heartbeat(
        &mut self,
        now: Instant,
        from: SocketAddr,
        session_id: u32,
        h: Heartbeat,
    ) -> bool {
        if let Some(s) = self.servers.get_mut(&session_id) {
            if h.sequence <= s.load.sequence {
                self.stats.stale += 1;
                return false;
            }
            if s.load.listing_parts != h.listing_parts {
                s.parts = vec![None; kept_parts(&h)];
            }
            s.address = from;
            s.load = h;
            s.last_heard = now;
            s.directed = 0;
            return true;
        }
        // A session gone: only a heartbeat beyond its last counts (the server
        // came back), never its replays.
        if let Some(&(last, _)) = self.tombstones.get(&session_id)
            && h.sequence <= last
        {
            self.stats.stale += 1;
            return false;
        }
        // A new session from the address of a known one that started later:
        // that server restarted. One that started earlier is a replay.
        let at_address: Vec<(u32, u64)> = (self.servers.values())
            .filter(|s| s.address == from)
            .map(|s| (s.session_id, s.load.started_ms))
            .collect();
        if at_address
            .iter()
            .any(|&(_, started)| started >= h.started_ms)
        {
            self.stats.stale += 1;
            return false;
        }
        // A record only for an address proven by our cookie (T44): a spoofed
        // source makes none, and evicts nothing. Answered, to get the cookie.
        if !self.cookies.check(now, from, &h.cookie) {
            self.stats.unproven += 1;
            return true;
        }
        let subnet = wire::subnet_of(from.ip());
        let from_subnet = (self.servers.values())
            .filter(|s| s.address != from && wire::subnet_of(s.address.ip()) == subnet)
            .count();
        if self.servers.len() >= MAX_SERVERS || from_subnet >= MAX_SERVERS_PER_SOURCE {
            self.stats.over_capacity += 1;
            return false;
        }
        for (old, _) in at_address {
            self.remove(now, old);
        }
        self.tombstones.remove(&session_id);
        let parts = vec![None; kept_parts(&h)];
        self.servers.insert(
            session_id,
            ServerRecord {
                session_id,
                address: from,
                load: h,
                last_heard: now,
                directed: 0,
                parts,
            },
        );
        self.events.push_back(DirectorEvent::ServerUp {
            session_id,
            address: from,
        });
        true
    }

    /// Forgets a session, keeping its last sequence as a tombstone.
    pub(super) fn remove(&mut self, now: Instant, session_id: u32) {
        if let Some(s) = self.servers.remove(&session_id) {
            self.tombstones.put(now, session_id, s.load.sequence);
            self.events.push_back(DirectorEvent::ServerDown {
                session_id,
                address: s.address,
            });
        }
    }

    /// Takes a verified ANNOUNCE part of a server's listing. It counts only
    /// for a session a heartbeat made live, from its address: a replayed one
    /// cannot bring a dead server back.
    pub(super) fn listing_part(&mut self, from: SocketAddr, session_id: u32, a: Announce) {
        let Some(s) = self.servers.get_mut(&session_id) else {
            return;
        };
        let part = a.part as usize;
        if s.address != from || a.parts != s.load.listing_parts || part >= s.parts.len() {
            return;
        }
        s.parts[part] = Some(a.entries);
    }
}
