//! The receiver session's timers: listing requests, NAKs, reports, start and
//! stream requests, fallback to unicast, channel choice.

use super::{
    ClientError, ClientEvent, Command, Fallback, Phase, REQUEST_RETRY, ReceptionId, Session,
    Transmit, Via, WRONG_KEY_GRACE,
};
use crate::rate::SELECT_SAMPLE;
use crate::sender::HEAR_EVERY_SERVER;
use crate::wire::{self, COOKIE_LEN};
use std::net::SocketAddr;
use std::time::Instant;

impl Session {
    /// Runs every timer that is due: listing requests, NAKs, reports, on-demand
    /// start requests, stream requests, fallback to unicast, channel choice.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if let Some((server, at)) = self.listing_request
            && now >= at
        {
            self.link_request(server, 0, String::new());
            self.listing_request = Some((server, now + REQUEST_RETRY));
        }
        if let Some((since, name, theirs)) = self.foreign_listing.take() {
            if now >= since + WRONG_KEY_GRACE {
                self.events
                    .push_back(ClientEvent::Failed(ClientError::WrongKey { name, theirs }));
            } else {
                self.foreign_listing = Some((since, name, theirs));
            }
        }
        self.directed_timers(now);
        for id in 0..self.receptions.len() {
            if self.receptions[id].phase != Phase::Receiving {
                continue;
            }
            self.reception_timers(now, id);
        }
    }

    pub(super) fn reception_timers(&mut self, now: Instant, id: ReceptionId) {
        let r = &mut self.receptions[id];
        if let Some((since, theirs)) = r.wrong_key
            && r.fsm.manifest().is_none()
            && now >= since + WRONG_KEY_GRACE
        {
            r.wrong_key = None;
            let name = r.entry.name.clone();
            self.events
                .push_back(ClientEvent::Failed(ClientError::WrongKey { name, theirs }));
            return;
        }
        if r.fsm.poll_timeout().is_some_and(|at| at <= now) {
            r.fsm.handle_timeout(now);
        }
        let report = r.fsm.poll_report(now, r.report_channel(), r.kernel_drops);
        let nak = r.fsm.poll_transmit();
        if let Some(s) = &r.stream {
            // The stream's NAKs and reports go to the server from the stream's socket,
            // which is how the server knows the client is still there.
            let to = s.server;
            for datagram in nak.into_iter().chain(report) {
                self.out.transmit(Transmit {
                    via: Via::Stream(id),
                    to,
                    datagram,
                });
            }
            if now >= r.last_data + REQUEST_RETRY {
                self.run_stream_request(now, id);
            }
            return;
        }
        if let (Some(nak), Some(&j)) = (nak, r.joined.first()) {
            self.out.transmit(Transmit {
                via: Via::Multicast,
                to: r.entry.channels[j].control(),
                datagram: nak,
            });
        }
        if let Some(server) = r.server {
            if let Some(datagram) = report {
                self.out.transmit(Transmit {
                    via: Via::Link,
                    to: server,
                    datagram,
                });
            }
            if r.next_start_request.is_some_and(|at| now >= at) {
                r.next_start_request = Some(now + REQUEST_RETRY);
                let name = r.entry.name.clone();
                self.link_request(server, wire::REQUEST_START, name);
            }
        }
        let r = &mut self.receptions[id];
        // A server a director named that went silent is left, not asked for a stream.
        let lost = r
            .server
            .is_some_and(|s| self.directed.gave_up(&r.entry.name, s));
        if self.away_timer(now, id) {
            return; // nothing is heard, or sampled, while away
        }
        let r = &mut self.receptions[id];
        if r.server.is_some() && !lost && now >= r.data_missed_since() + self.config.sync_timeout {
            let wait = self.config.sync_timeout;
            self.fall_back(now, id, Fallback::SyncTimeout(wait));
            return;
        }
        if !self.config.aggregate && now >= r.next_sample {
            r.next_sample = now + SELECT_SAMPLE;
            if let Some(&current) = r.joined.first() {
                let (advanced, arrived) = r.fsm.track_counters(current);
                if let Some(to) = r.selector.sample(advanced, arrived) {
                    self.switch_channel(id, current, to);
                }
            }
        }
    }

    /// Moves reception `id` from channel `from` to `to` (a step down or up).
    pub(super) fn switch_channel(&mut self, id: ReceptionId, from: usize, to: usize) {
        for channel in std::mem::take(&mut self.receptions[id].joined) {
            self.out.command(Command::Leave {
                reception: id,
                channel,
            });
        }
        self.join(id, to);
        self.events.push_back(ClientEvent::ChannelChanged {
            reception: id,
            from: Some(from),
            to,
        });
    }

    /// Sends a request from the link to `server`, with its cookie once we have one.
    pub(super) fn link_request(&mut self, server: SocketAddr, flags: u8, name: String) {
        let request = wire::Request {
            receiver_id: self.link_id,
            flags,
            max_rate_bps: self.config.max_rate.unwrap_or(0),
            cookie: self
                .cookies
                .get(&server)
                .copied()
                .unwrap_or([0; COOKIE_LEN]),
            name,
        };
        self.out.transmit(Transmit {
            via: Via::Link,
            to: server,
            datagram: wire::encode_request(&self.directory_key, 0, &request),
        });
    }

    /// The earliest thing any timer waits for.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let listing = self.listing_request.map(|(_, at)| at);
        let foreign = (self.foreign_listing.as_ref()).map(|(since, ..)| *since + WRONG_KEY_GRACE);
        let receptions = self
            .receptions
            .iter()
            .filter(|r| r.phase == Phase::Receiving)
            .flat_map(|r| {
                let multicast = r.stream.is_none();
                [
                    r.fsm.poll_timeout(),
                    (multicast && !self.config.aggregate && r.away_until.is_none())
                        .then_some(r.next_sample),
                    (multicast && r.server.is_some())
                        .then(|| r.data_missed_since() + self.config.sync_timeout),
                    r.away_until,
                    r.stream
                        .as_ref()
                        .map(|s| s.next_request.max(r.last_data + REQUEST_RETRY)),
                    r.next_start_request,
                    r.wrong_key
                        .filter(|_| r.fsm.manifest().is_none())
                        .map(|(since, _)| since + WRONG_KEY_GRACE),
                ]
            })
            .flatten();
        // An all-files receiver looks again once every server has had its turn.
        let every_server = (self.config.names.is_empty())
            .then(|| self.first_listing.map(|f| f + HEAR_EVERY_SERVER))
            .flatten()
            .filter(|at| *at > self.now);
        // With directors, a followed server's silence moves the file to the next one.
        let silence = (self.receptions.iter())
            .filter(|r| r.phase == Phase::Receiving && self.directed.active())
            .map(|r| r.silent_after())
            .filter(|at| *at > self.now)
            // `silent` holds only strictly after: wake just after.
            .map(|at| at + std::time::Duration::from_millis(1));
        receptions
            .chain(listing)
            .chain(foreign)
            .chain(every_server)
            .chain(self.directed.poll_timeout())
            .chain(silence)
            .min()
    }
}
