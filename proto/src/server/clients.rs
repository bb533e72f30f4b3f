//! Unicast clients of the server endpoint: starting, rate shares, ending.

use super::{Admission, Endpoint, ServerEvent, Stream, StreamEnd, UNICAST_MIN_RATE};
use crate::rate::UnicastRate;
use crate::sender::{Carousel, RepairConfig};
use std::net::SocketAddr;
use std::time::Instant;

/// Lowest repair share of a unicast stream (its client has nobody to share repairs with).
const UNICAST_MIN_REPAIR_SHARE: f64 = 0.1;

/// A receiver served by unicast.
pub(super) struct UnicastClient {
    pub(super) file: usize,
    pub(super) stream: Stream,
    pub(super) rate: UnicastRate,
    /// The rate the client asked not to exceed (0: none).
    pub(super) wanted_max: u64,
    pub(super) last_heard: Instant,
    pub(super) started: Instant,
}

impl<A: Admission> Endpoint<A> {
    pub(super) fn client_at(&mut self, addr: SocketAddr) -> Option<&mut UnicastClient> {
        let slot = *self.client_slots.get(&addr)?;
        self.clients.get_mut(slot)?.as_mut()
    }

    pub(super) fn start_client(&mut self, now: Instant, f: usize, from: SocketAddr, max_rate: u64) {
        if let Some(client) = self.client_at(from) {
            client.last_heard = now; // a repeated request: keep streaming
            return;
        }
        // One host may hold at most a quarter of the places (at least one), so that
        // requests from many ports of one address cannot take them all (T12).
        let per_host = (self.config.unicast_max_clients / 4).max(1);
        let from_host = self
            .client_slots
            .keys()
            .filter(|a| a.ip() == from.ip())
            .count();
        if self.client_slots.len() >= self.config.unicast_max_clients || from_host >= per_host {
            self.events.push_back(ServerEvent::StreamRefused {
                file: f,
                to: from,
                clients: self.client_slots.len(),
            });
            return;
        }
        let file = &self.files[f];
        let rate = UnicastRate::new(now, self.config.unicast_max_rate, UNICAST_MIN_RATE);
        let repair = RepairConfig {
            rate_bps: rate.rate(),
            share: self.config.repair_share.max(UNICAST_MIN_REPAIR_SHARE),
            ..RepairConfig::default()
        };
        let mut carousel = Carousel::new(
            file.keys.clone(),
            self.config.session_id,
            &file.manifest,
            &file.manifest_bytes,
            now,
            repair,
        );
        if let Some(relayed) = &file.relayed {
            // A relay's file still arriving: the stream starts with what it holds.
            carousel = carousel.holding_nothing_yet();
            relayed
                .held_packets()
                .into_iter()
                .for_each(|run| carousel.hold(run));
        }
        let stream = Stream::new(carousel, from, now, self.config.batch);
        let slot = match self.clients.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.clients.push(None);
                self.clients.len() - 1
            }
        };
        self.clients[slot] = Some(UnicastClient {
            file: f,
            stream,
            rate,
            wanted_max: max_rate,
            last_heard: now,
            started: now,
        });
        self.client_slots.insert(from, slot);
        self.share_unicast_rate(now);
        self.events
            .push_back(ServerEvent::StreamStarted { file: f, to: from });
        let id = self.client_timer(slot);
        self.timers.schedule(id, now);
    }

    /// Splits `unicast_max_rate` evenly among the clients, each also within what it asked.
    pub(super) fn share_unicast_rate(&mut self, now: Instant) {
        let n = self.client_slots.len().max(1) as u64;
        let share = self.config.unicast_max_rate / n;
        for c in self.clients.iter_mut().flatten() {
            let cap = match c.wanted_max {
                0 => share,
                wanted => share.min(wanted),
            };
            c.rate.set_cap(cap);
            c.stream.set_rate(c.rate.rate(), now, self.config.batch);
        }
    }

    pub(super) fn drop_client(&mut self, slot: usize, now: Instant, why: StreamEnd) {
        if let Some(c) = self.clients[slot].take() {
            self.client_slots.remove(&c.stream.to);
            self.events.push_back(ServerEvent::StreamEnded {
                file: c.file,
                to: c.stream.to,
                after: now.saturating_duration_since(c.started),
                why,
            });
            self.share_unicast_rate(now);
        }
    }
}
