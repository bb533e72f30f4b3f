//! The director acting on its own (spec §9.5): it moves a receiver to other
//! servers when its server stops heartbeating, when its server has more unicast
//! streams than it takes, or when receivers near it get at least twice as much
//! from another server. Each move is a REDIRECT echoing the nonce of the
//! receiver's last look-up, so a receiver is moved at most once per look-up.

use super::rank::throughput_to;
use super::{Candidate, Director, DirectorEvent, rank};
use crate::wire::{self, Directions, Found, Redirect, RedirectReason};
use std::collections::HashMap;
use std::net::SocketAddr;

/// An alternate must offer receivers near the asker this many times the
/// goodput of their server before the director moves them for it.
pub const THROUGHPUT_FACTOR: u32 = 2;

impl Director {
    /// Looks at every receiver remembered and moves those whose server is gone,
    /// overloaded, or much slower for their subnet than an alternate.
    pub(super) fn rebalance(&mut self) {
        // Unicast streams each live server has beyond its most (receivers sent
        // to it since its heartbeat counted, as in `carrying`).
        let mut excess: HashMap<SocketAddr, i64> = (self.servers.values())
            .map(|s| {
                let streams = s.load.unicast_clients as i64 + s.directed as i64;
                (s.address, streams - s.load.unicast_max_clients as i64)
            })
            .collect();
        let mut keys: Vec<_> = (self.receivers.iter())
            .filter(|(_, r)| r.nonce.is_some() && r.primary.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        // The servers carrying each name, found once per pass.
        let mut carrying: HashMap<String, Vec<Candidate>> = HashMap::new();
        for key in keys {
            let r = &self.receivers[&key];
            let primary = r.primary.expect("filtered above");
            let candidates = carrying
                .entry(r.name.clone())
                .or_insert_with(|| self.carrying(&r.name));
            let current = candidates.iter().find(|c| c.address == primary);
            let alternates: Vec<Candidate> = (candidates.iter())
                .filter(|c| {
                    c.address != primary && c.load.unicast_clients < c.load.unicast_max_clients
                })
                .cloned()
                .collect();
            let reason = match current {
                None => Some(RedirectReason::ServerDown),
                Some(c) if excess.get(&c.address).is_some_and(|e| *e > 0) => {
                    Some(RedirectReason::Overloaded)
                }
                Some(c) => {
                    let now_gets = throughput_to(&c.load, r.address.ip());
                    let best = (alternates.iter())
                        .map(|a| throughput_to(&a.load, r.address.ip()))
                        .max()
                        .unwrap_or(0);
                    (now_gets > 0 && best >= now_gets.saturating_mul(THROUGHPUT_FACTOR))
                        .then_some(RedirectReason::Throughput)
                }
            };
            let Some(reason) = reason else { continue };
            let ranked = rank(&alternates, r.address.ip());
            let Some((archive_id, first)) = ranked.first().copied() else {
                continue;
            };
            if reason == RedirectReason::Overloaded {
                *excess.entry(primary).or_default() -= 1;
            }
            let redirect = Redirect {
                reason,
                directions: Directions {
                    nonce: r.nonce.expect("filtered above"),
                    found: Found::Carried,
                    name: r.name.clone(),
                    archive_id,
                    servers: ranked.into_iter().map(|(_, d)| d).collect(),
                },
            };
            let (to, name) = (r.address, r.name.clone());
            self.out
                .push_back((to, wire::encode_redirect(&self.director_key, &redirect)));
            let r = self.receivers.get_mut(&key).expect("listed above");
            r.nonce = None;
            r.primary = Some(first.server);
            self.stats.redirects += 1;
            self.events.push_back(DirectorEvent::Redirected {
                to,
                name,
                reason,
                primary: first.server,
            });
        }
    }
}
