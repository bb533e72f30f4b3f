//! The server endpoint and its directors (spec §9.1): a HEARTBEAT and the
//! listing every second to each, and their HEARD answers, which tell the
//! driver when a director falls silent.

use super::{Admission, Endpoint, Socket, THROUGHPUT_MEMORY};
use crate::wire;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

impl<A: Admission> Endpoint<A> {
    /// When due, queues a HEARTBEAT and the listing for every director (spec §9.1).
    pub(super) fn heartbeat(&mut self, now: Instant) {
        let Some(link) = &self.config.directors else {
            return;
        };
        if now < self.next_heartbeat {
            return;
        }
        self.next_heartbeat = now + crate::director::HEARTBEAT_INTERVAL;
        let channels = self
            .files
            .iter()
            .filter(|f| f.active)
            .flat_map(|f| &f.channels);
        let clients = self.clients.iter().flatten();
        let sending_bps = channels.map(|c| c.stream.carousel.rate()).sum::<u64>()
            + clients.map(|c| c.stream.carousel.rate()).sum::<u64>();
        let listing = self.announcer.datagrams();
        let mut heartbeat = wire::Heartbeat {
            // Never 0, and growing: a replayed heartbeat is older than the last heard.
            sequence: now.duration_since(self.started).as_millis() as u64 + 1,
            started_ms: link.started_ms,
            unicast_port: self.config.unicast_port,
            listing_parts: listing.len() as u8,
            capacity_bps: link.capacity_bps,
            sending_bps,
            unicast_clients: self.client_slots.len().min(u16::MAX as usize) as u16,
            unicast_max_clients: self.config.unicast_max_clients.min(u16::MAX as usize) as u16,
            receivers: self.receivers.len() as u32,
            cpu_permille: self.cpu_permille,
            cookie: [0; wire::COOKIE_LEN],
            subnets: self.throughput_by_subnet(now),
        };
        for &to in &link.addresses {
            // Each director's own cookie proves our address to it (T44).
            heartbeat.cookie = (self.director_cookies.get(&to).copied()).unwrap_or_default();
            let beat = wire::encode_heartbeat(&link.key, self.config.session_id, &heartbeat);
            self.control.push_back((Socket::Unicast, to, beat));
            for part in listing {
                self.control.push_back((Socket::Unicast, to, part.clone()));
            }
        }
    }

    /// Its receivers' mean goodput per /24, from their last reports within
    /// `THROUGHPUT_MEMORY`: the subnets with the most receivers, at most `MAX_SUBNETS`.
    fn throughput_by_subnet(&self, now: Instant) -> Vec<wire::SubnetThroughput> {
        let mut by_subnet: HashMap<wire::Subnet, (u32, u64)> = HashMap::new();
        for e in self.receivers.iter() {
            let (arrived, ms) = e.arrived;
            if e.done || ms == 0 || now.saturating_duration_since(e.last_heard) > THROUGHPUT_MEMORY
            {
                continue;
            }
            let payload = self
                .files
                .get(e.file)
                .map_or(0, |f| f.manifest.payload_size) as u64;
            let subnet = wire::subnet_of(e.addr.ip());
            let (count, bps) = by_subnet.entry(subnet).or_default();
            *count += 1;
            *bps += arrived as u64 * payload * 8 * 1000 / ms as u64;
        }
        let mut subnets: Vec<wire::SubnetThroughput> = by_subnet
            .into_iter()
            .map(|(subnet, (count, bps))| wire::SubnetThroughput {
                subnet,
                receivers: count.min(255) as u8,
                goodput_kbps: (bps / count as u64 / 1000).min(u32::MAX as u64) as u32,
            })
            .collect();
        subnets.sort_by(|a, b| b.receivers.cmp(&a.receivers).then(a.subnet.cmp(&b.subnet)));
        subnets.truncate(wire::MAX_SUBNETS);
        subnets
    }

    /// A director's HEARD: taken when it verifies under the director key, comes
    /// from a director of ours, and echoes a heartbeat of the last
    /// `jobs::agent::ANSWER_WINDOW` (a replayed one is stale). Its cookie goes
    /// in our next heartbeats to it; the first one a director gives is used at
    /// once, so that a new director knows us within a heartbeat.
    pub(super) fn heard_from_director(
        &mut self,
        now: Instant,
        from: SocketAddr,
        heard: &wire::Heard,
        bytes: &[u8],
    ) {
        let echo = heard.echo;
        let Some(link) = &self.config.directors else {
            return;
        };
        if !link.addresses.contains(&from) || !link.key.verifies(bytes) {
            self.stats.unauthenticated += 1;
            return;
        }
        let since_start = now.saturating_duration_since(self.started);
        let oldest = since_start.saturating_sub(crate::jobs::agent::ANSWER_WINDOW);
        if echo <= oldest.as_millis() as u64 || echo > since_start.as_millis() as u64 + 1 {
            self.stats.dropped += 1;
            return;
        }
        self.directors_heard.insert(from, now);
        if self.director_cookies.insert(from, heard.cookie).is_none() {
            self.next_heartbeat = now;
        }
    }

    /// The directors that have not answered a heartbeat within
    /// `jobs::agent::DIRECTOR_SILENT`, with when each last did (None: never).
    pub fn silent_directors(&self, now: Instant) -> Vec<(SocketAddr, Option<Instant>)> {
        let silent = crate::jobs::agent::DIRECTOR_SILENT;
        let Some(link) = &self.config.directors else {
            return Vec::new();
        };
        (link.addresses.iter())
            .map(|&d| (d, self.directors_heard.get(&d).copied()))
            .filter(|(_, at)| at.is_none_or(|at| now >= at + silent))
            .collect()
    }
}
