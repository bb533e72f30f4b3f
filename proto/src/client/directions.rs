//! Receiving with directors (`recv --director`, spec §9.2): look each wanted file
//! up, ask the best server named for its listing, and when the server followed
//! goes silent move to the next one named, keeping every stored packet (the
//! servers carry the same archive).

use super::{
    ClientError, ClientEvent, Fallback, Phase, REQUEST_RETRY, SESSION_SILENCE, Session, Transmit,
    Via,
};
use crate::wire::{self, Direction, Directions, Found, MacKey, Packet, Redirect};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Instant;

/// The look-up of one wanted file and the servers it named.
struct Ask {
    nonce: u64,
    /// Which director the next LOOKUP goes to (round robin on time-out).
    next_director: usize,
    /// When to send the next LOOKUP (None: answered, nothing to ask).
    next_lookup: Option<Instant>,
    /// The servers named, best first, less those given up.
    servers: Vec<Direction>,
    /// The server whose listing is asked for, since when, and when again.
    asking: Option<(SocketAddr, Instant, Instant)>,
    /// Servers that went silent while followed or asked.
    given_up: HashSet<SocketAddr>,
    /// When a server was last given up: the next is given up no sooner than
    /// `SESSION_SILENCE` later, so that a server named again at once (the
    /// only one there is) is not left again in a tight loop of look-ups.
    lost_at: Option<Instant>,
    /// The nonce of the last answer taken: a director's REDIRECT must echo it,
    /// and is taken once.
    answered: Option<u64>,
    /// A director moved this file to this server: its listing switches the
    /// reception even though the server followed still speaks.
    moving_to: Option<SocketAddr>,
    /// A director answered a look-up of this file (any answer).
    heard_back: bool,
}

/// Every look-up of a receiver that was given directors.
pub(super) struct Directed {
    key: MacKey,
    directors: Vec<SocketAddr>,
    asks: HashMap<String, Ask>,
}

impl Directed {
    /// Look-ups of `names` from `directors`, the first due at `now`.
    pub(super) fn new(
        key: MacKey,
        directors: Vec<SocketAddr>,
        names: &[String],
        now: Instant,
        rng: &mut impl Rng,
    ) -> Self {
        let asks = if directors.is_empty() {
            HashMap::new()
        } else {
            (names.iter())
                .map(|name| {
                    let ask = Ask {
                        nonce: rng.next_u64(),
                        next_director: 0,
                        next_lookup: Some(now),
                        servers: Vec::new(),
                        asking: None,
                        given_up: HashSet::new(),
                        lost_at: None,
                        answered: None,
                        moving_to: None,
                        heard_back: false,
                    };
                    (name.clone(), ask)
                })
                .collect()
        };
        Self {
            key,
            directors,
            asks,
        }
    }

    /// True when files are found through directors, not the directory group.
    pub(super) fn active(&self) -> bool {
        !self.directors.is_empty()
    }

    /// True when `from` is a director.
    pub(super) fn is_director(&self, from: SocketAddr) -> bool {
        self.directors.contains(&from)
    }

    /// A COOKIE came from `server`: ask for its listing again at once, validated.
    pub(super) fn cookie_from(&mut self, server: SocketAddr, now: Instant) {
        for ask in self.asks.values_mut() {
            if let Some((asked, since, _)) = ask.asking
                && asked == server
            {
                ask.asking = Some((asked, since, now));
            }
        }
    }

    /// True when a director moved `name` to `server` and the move is not done yet.
    pub(super) fn moving_to(&self, name: &str, server: Option<SocketAddr>) -> bool {
        server.is_some() && self.asks.get(name).is_some_and(|a| a.moving_to == server)
    }

    /// True when `server` went silent while it served `name`, and another is asked.
    pub(super) fn gave_up(&self, name: &str, server: SocketAddr) -> bool {
        self.asks
            .get(name)
            .is_some_and(|a| a.given_up.contains(&server))
    }

    /// The server asked for `name`'s listing, if one is.
    pub(super) fn asking(&self, name: &str) -> Option<SocketAddr> {
        self.asks.get(name).and_then(|a| a.asking.map(|(s, ..)| s))
    }

    /// True when a director answered a look-up of `name`.
    pub(super) fn answered(&self, name: &str) -> bool {
        self.asks.get(name).is_some_and(|a| a.heard_back)
    }

    /// The directors asked.
    pub(super) fn directors(&self) -> &[SocketAddr] {
        &self.directors
    }

    /// The earliest look-up or listing request due.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        (self.asks.values())
            .flat_map(|a| [a.next_lookup, a.asking.map(|(_, _, next)| next)])
            .flatten()
            .min()
    }
}

impl Session {
    /// A datagram from a director to the link: DIRECTIONS or REDIRECT, under the
    /// director key.
    pub(super) fn take_from_director(&mut self, now: Instant, bytes: &[u8]) {
        if !self.directed.key.verifies(bytes) {
            self.unauthenticated += 1;
            return;
        }
        match wire::decode(bytes).map(|d| d.packet) {
            Ok(Packet::Directions(d)) => self.take_directions(now, d),
            Ok(Packet::Redirect(r)) => self.take_redirect(now, r),
            _ => {}
        }
    }

    /// A director's answer: taken if it answers the question outstanding.
    fn take_directions(&mut self, now: Instant, d: Directions) {
        let Some(ask) = self.directed.asks.get_mut(&d.name) else {
            return;
        };
        if ask.nonce != d.nonce || ask.next_lookup.is_none() {
            return; // not the question outstanding (a replay, or answered already)
        }
        ask.heard_back = true;
        match d.found {
            Found::NotYetKnown => ask.next_lookup = Some(now + REQUEST_RETRY),
            Found::NotCarried => {
                ask.next_lookup = None;
                self.events
                    .push_back(ClientEvent::Failed(ClientError::NotCarried {
                        name: d.name,
                    }));
            }
            Found::Carried => {
                ask.next_lookup = None;
                ask.answered = Some(d.nonce);
                ask.nonce = self.rng.next_u64();
                self.take_servers(now, d.name, d.servers);
            }
        }
    }

    /// A director's move: taken once, if it echoes the nonce of the last answer
    /// taken for the file; the file moves to the first server named.
    fn take_redirect(&mut self, now: Instant, r: Redirect) {
        let d = r.directions;
        let Some(ask) = self.directed.asks.get_mut(&d.name) else {
            return;
        };
        if ask.answered != Some(d.nonce) {
            return; // a replay, or not to us
        }
        ask.answered = None;
        let name = d.name.clone();
        self.take_servers(now, d.name, d.servers);
        let ask = self.directed.asks.get_mut(&name).expect("found above");
        ask.moving_to = ask.servers.first().map(|s| s.server);
        self.events.push_back(ClientEvent::Redirected {
            name,
            reason: r.reason,
            to: ask.moving_to,
        });
    }

    /// Takes `servers` (best first) for file `name`, less those given up, and
    /// asks the first for its listing.
    fn take_servers(&mut self, now: Instant, name: String, servers: Vec<Direction>) {
        let Some(ask) = self.directed.asks.get_mut(&name) else {
            return;
        };
        let mut kept = servers.clone();
        kept.retain(|s| !ask.given_up.contains(&s.server));
        if kept.is_empty() {
            // Every server named went silent before: they may be back.
            ask.given_up.clear();
            kept = servers;
        }
        ask.servers = kept;
        let Some(first) = ask.servers.first().map(|s| s.server) else {
            return;
        };
        if ask.asking.is_none_or(|(s, ..)| s != first) {
            ask.asking = Some((first, now, now));
        }
        self.events.push_back(ClientEvent::Directed {
            name,
            servers: ask.servers.iter().map(|s| s.server).collect(),
        });
    }

    /// Runs the look-ups' timers: LOOKUPs due, listing requests due, and the
    /// move to the next server when the one followed or asked went silent.
    pub(super) fn directed_timers(&mut self, now: Instant) {
        let names: Vec<String> = self.directed.asks.keys().cloned().collect();
        for name in names {
            let reception = (self.receptions.iter())
                .position(|r| r.entry.name == name && r.phase == Phase::Receiving);
            let following = reception.map(|id| {
                let r = &self.receptions[id];
                (
                    self.servers.get(&r.fsm.session_id()).copied(),
                    r.silent(now),
                )
            });
            // A server followed whose session was never heard on multicast, and
            // which is not streaming to us yet: it answered our listing request by
            // unicast, so it is alive and multicast does not reach us (§9.2).
            let unreached = reception.filter(|&id| {
                let r = &self.receptions[id];
                r.fsm.last_heard().is_none() && r.stream.is_none() && r.server.is_some()
            });
            let done = (self.receptions.iter())
                .any(|r| r.entry.name == name && r.phase != Phase::Receiving);
            if let (Some(id), Some((Some(_), true))) = (unreached, following) {
                self.fall_back(now, id, Fallback::NoMulticast);
                continue;
            }
            let ask = self.directed.asks.get_mut(&name).expect("listed above");
            if done {
                ask.asking = None;
                ask.next_lookup = None;
                continue;
            }
            let mut lost = None;
            match following {
                // Moved by a director, and now following the new server: ask
                // again, so that the director has a nonce to move it by later.
                Some((Some(server), false)) if ask.moving_to == Some(server) => {
                    ask.moving_to = None;
                    ask.asking = None;
                    ask.next_lookup = Some(now);
                }
                // Moving: keep asking the new server until its listing switches us.
                Some((Some(_), false)) if ask.moving_to.is_some() => {
                    if let Some((asked, since, _)) = ask.asking
                        && now >= since + SESSION_SILENCE
                    {
                        lost = Some(asked);
                        ask.moving_to = None;
                    }
                }
                // Following a live server: nothing to ask for.
                Some((Some(_), false)) => ask.asking = None,
                Some((Some(server), true))
                    if !ask.given_up.contains(&server)
                        && ask.lost_at.is_none_or(|at| now >= at + SESSION_SILENCE) =>
                {
                    lost = Some(server);
                }
                // The server asked has not listed the file in time.
                _ => {
                    if let Some((asked, since, _)) = ask.asking
                        && now >= since + SESSION_SILENCE
                    {
                        lost = Some(asked);
                    }
                }
            }
            if let Some(server) = lost {
                ask.lost_at = Some(now);
                ask.given_up.insert(server);
                ask.servers.retain(|s| s.server != server);
                ask.asking = ask.servers.first().map(|s| (s.server, now, now));
                // Ask again too: the director may know better by now.
                ask.next_lookup = Some(now);
                self.events.push_back(ClientEvent::ServerLost {
                    name: name.clone(),
                    server,
                    next: ask.asking.map(|(s, ..)| s),
                });
            }
            // (Asks exist only when directors were given.)
            if let Some(at) = ask.next_lookup
                && now >= at
            {
                let to = self.directed.directors[ask.next_director % self.directed.directors.len()];
                ask.next_director += 1;
                ask.next_lookup = Some(now + REQUEST_RETRY);
                let lookup = wire::Lookup {
                    receiver_id: self.link_id,
                    nonce: ask.nonce,
                    name: name.clone(),
                    archive_id: self.config.pinned.get(&name).copied().unwrap_or(0),
                };
                let datagram = wire::encode_lookup(&self.directed.key, &lookup);
                self.out.transmit(Transmit {
                    via: Via::Link,
                    to,
                    datagram,
                });
            }
            let ask = self.directed.asks.get_mut(&name).expect("listed above");
            if let Some((server, since, next)) = ask.asking
                && now >= next
            {
                ask.asking = Some((server, since, now + REQUEST_RETRY));
                self.link_request(server, 0, String::new());
            }
        }
    }
}
