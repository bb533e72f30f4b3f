//! What servers send the directory group and the link: listings (ANNOUNCE),
//! cookies, and the directors' answers, which decide what the session follows.

use super::{ClientEvent, Listing, MAX_REFUSED_NAMES, ReceptionId, Session};
use crate::manifest::check_name;
use crate::wire::{self, Packet};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

impl Session {
    /// Answers to the link: cookies and listings from servers, and what directors say.
    pub(super) fn handle_link(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if self.directed.is_director(from) {
            return self.take_from_director(now, bytes);
        }
        if !self.directory_key.verifies(bytes) {
            self.unauthenticated += 1;
            return;
        }
        if let Ok(wire::Datagram {
            packet: Packet::Cookie(cookie),
            ..
        }) = wire::decode(bytes)
        {
            // Ask again at once, validated this time.
            self.cookies.insert(from, cookie);
            if let Some((server, at)) = self.listing_request.as_mut()
                && *server == from
            {
                *at = now;
            }
            self.directed.cookie_from(from, now);
            for r in &mut self.receptions {
                if r.server == Some(from) && r.next_start_request.is_some() {
                    r.next_start_request = Some(now);
                }
            }
            return;
        }
        self.take_listing(now, bytes, from.ip(), Some(from));
    }

    /// A COOKIE on a reception's stream socket: repeat the stream request with it.
    pub(super) fn stream_cookie(&mut self, now: Instant, reception: ReceptionId, bytes: &[u8]) {
        if !self.directory_key.verifies(bytes) {
            self.unauthenticated += 1;
            return;
        }
        let Ok(wire::Datagram {
            packet: Packet::Cookie(cookie),
            ..
        }) = wire::decode(bytes)
        else {
            return;
        };
        let Some(r) = self.receptions.get_mut(reception) else {
            return;
        };
        if let Some(s) = r.stream.as_mut() {
            s.cookie = cookie;
            s.next_request = now;
        }
        self.run_stream_request(now, reception);
    }

    /// Takes an ANNOUNCE heard from `source` by multicast, or by unicast from
    /// `unicast_from` (a server asked with `--server`), and follows the wanted files.
    pub(super) fn take_listing(
        &mut self,
        now: Instant,
        bytes: &[u8],
        source: IpAddr,
        unicast_from: Option<SocketAddr>,
    ) {
        let Ok(datagram) = wire::decode(bytes) else {
            return;
        };
        let Packet::Announce(announce) = datagram.packet else {
            return;
        };
        // Only the holder of the site key lists files (T1, T7, T16).
        if !self.directory_key.verifies(bytes) {
            self.unauthenticated += 1;
            let wanted = announce.entries.iter().find(|e| self.wanted(&e.name));
            if let Some(entry) = wanted
                && announce.key_fingerprint != self.config.key.fingerprint()
                && self.foreign_listing.is_none()
            {
                let name = entry.name.clone();
                self.foreign_listing = Some((now, name, announce.key_fingerprint));
            }
            return;
        }
        self.foreign_listing = None;
        if self.directed.active() && unicast_from.is_none() {
            return; // the directors say which server to take (§9.2)
        }
        let session = datagram.session_id;
        // An entry whose name is not one safe path component is skipped and counted,
        // never fatal: anyone on the segment can send an ANNOUNCE (threat T1).
        let mut entries = announce.entries;
        entries.retain(|entry| match check_name(&entry.name) {
            Ok(()) => true,
            Err(why) => {
                self.refused_entries += 1;
                if self.refused_names.len() < MAX_REFUSED_NAMES
                    && self.refused_names.insert(entry.name.clone())
                {
                    self.events.push_back(ClientEvent::EntryRefused {
                        session,
                        name: entry.name.clone(),
                        why,
                    });
                }
                false
            }
        });
        let server = unicast_from.unwrap_or(SocketAddr::new(source, announce.unicast_port));
        self.servers.insert(session, server);
        self.listing_request = None; // a listing was heard: no need to ask for one
        let listing = self.listings.entry(session).or_insert_with(|| Listing {
            parts: announce.parts,
            heard: HashSet::new(),
            names: HashSet::new(),
            last_heard: now,
        });
        listing.heard.insert(announce.part);
        listing.last_heard = now;
        self.first_listing.get_or_insert(now);
        listing.names.extend(entries.iter().map(|e| e.name.clone()));
        // A listing asked of a server a director named: try its multicast first.
        let by_unicast = unicast_from.is_some() && !self.directed.active();
        for entry in entries {
            if self.wanted(&entry.name) {
                self.follow(now, session, entry, by_unicast);
            }
        }
    }

    pub(super) fn wanted(&self, name: &str) -> bool {
        self.config.names.is_empty() || self.config.names.iter().any(|n| n == name)
    }
}
