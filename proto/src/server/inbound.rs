//! What the server endpoint does with each datagram: NAKs to their carousel,
//! requests through admission, reports and DONE into the receiver table, each
//! only once its tag verifies (spec §2.10, §7.4, §7.5).

use super::{Endpoint, Noted, Origin, ServerEvent, Socket, StreamEnd};
use crate::server::admission::Admission;
use crate::wire::{self, Packet, Report};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

impl<A: Admission> Endpoint<A> {
    /// Takes a datagram that came in from `origin`.
    pub fn handle_datagram(&mut self, now: Instant, origin: Origin, bytes: &[u8]) {
        match origin {
            Origin::Control {
                file,
                channel,
                from,
            } => {
                if let Some(c) = self
                    .files
                    .get_mut(file)
                    .and_then(|f| f.channels.get_mut(channel))
                {
                    c.stream.carousel.handle_datagram(now, from.ip(), bytes);
                }
            }
            Origin::Unicast(from) => self.handle_unicast(now, from, bytes),
            Origin::Directory(_) => self.heard_on_directory(now, bytes),
        }
    }

    fn handle_unicast(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let Ok(datagram) = wire::decode(bytes) else {
            self.stats.dropped += 1;
            return;
        };
        // A unicast socket on the group's port, joined to it, hears other servers.
        if let Packet::Announce(_) = datagram.packet {
            return self.heard_on_directory(now, bytes);
        }
        if let Packet::Heard(heard) = datagram.packet {
            if datagram.session_id != self.config.session_id {
                self.stats.dropped += 1;
                return;
            }
            return self.heard_from_director(now, from, &heard, bytes);
        }
        let ours = datagram.session_id == self.config.session_id;
        // Nothing is acted on before its tag verifies: a request under the
        // directory key, the rest under the session key of the file it names.
        let key = match &datagram.packet {
            Packet::Request(_) => Some(&self.config.directory_key),
            Packet::Nak(wire::Nak { archive_id, .. })
            | Packet::Report(Report { archive_id, .. })
            | Packet::Done(wire::Done { archive_id, .. }) => {
                self.file_of(*archive_id).map(|f| &self.files[f].keys.mac)
            }
            _ => None,
        };
        if !key.is_some_and(|key| key.verifies(bytes)) {
            self.stats.unauthenticated += 1;
            return;
        }
        match datagram.packet {
            Packet::Request(request) => self.handle_request(now, from, bytes.len(), &request),
            Packet::Nak(nak) if ours => match self.client_at(from) {
                Some(client) => {
                    client.last_heard = now;
                    let lost = client.stream.carousel.handle_nak(now, from.ip(), &nak);
                    client.rate.count(0, lost as u64);
                }
                None => self.stats.dropped += 1,
            },
            Packet::Report(report) if ours => self.handle_report(now, from, &report),
            Packet::Done(done) if ours => self.handle_done(now, from, &done),
            _ => self.stats.dropped += 1,
        }
    }

    /// A request without a valid proof gets a challenge (never more bytes than it
    /// sent); an admitted one gets the listing and, as asked, a unicast stream or
    /// the file's channels started.
    fn handle_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request_len: usize,
        request: &wire::Request,
    ) {
        if !self.admission.admits(now, from, &request.cookie) {
            self.stats.unvalidated += 1;
            let cookie = self.admission.challenge(now, from);
            let answer =
                wire::encode_cookie(&self.config.directory_key, self.config.session_id, &cookie);
            if answer.len() <= request_len {
                self.control.push_back((Socket::Unicast, from, answer));
            }
            return;
        }
        for d in self.announcer.datagrams() {
            self.control.push_back((Socket::Unicast, from, d.clone()));
        }
        let Some(f) = self
            .files
            .iter()
            .position(|f| f.manifest.name == request.name)
        else {
            return; // the listing tells the receiver what there is
        };
        self.files[f].last_interest = now;
        if request.flags & wire::REQUEST_START != 0 && !self.files[f].active {
            self.files[f].active = true;
            self.events
                .push_back(ServerEvent::ChannelsStarted { file: f, by: from });
            self.schedule_file(f, now);
            self.relist();
        }
        if request.flags & wire::REQUEST_UNICAST != 0 {
            self.start_client(now, f, from, request.max_rate_bps);
        }
    }

    fn handle_report(&mut self, now: Instant, from: SocketAddr, report: &Report) {
        let Some(f) = self.file_of(report.archive_id) else {
            self.stats.dropped += 1;
            return;
        };
        // A report must echo a STATUS sent in the last 2.5 s on one of the file's
        // channels or the sender's stream: a replayed one neither keeps a stream
        // alive nor moves a rate for longer than that (T10, T11).
        let echo = report.echo_time_us;
        let on_channel =
            (self.files[f].channels.iter()).any(|c| c.stream.carousel.sent_status_lately(echo));
        let on_stream = (self.client_slots.get(&from))
            .and_then(|&slot| self.clients[slot].as_ref())
            .is_some_and(|c| c.stream.carousel.sent_status_lately(echo));
        if !on_channel && !on_stream {
            self.stats.stale_reports += 1;
            return;
        }
        let file = &mut self.files[f];
        file.last_interest = now;
        if let Some(channel) = file.channels.get_mut(report.channel as usize) {
            channel
                .stream
                .carousel
                .note_receiver(now, report.receiver_id);
            let len = channel.stream.carousel.max_datagram_len();
            if let Some(c) = channel.controller.as_mut() {
                c.handle_report(now, report, len);
            }
        }
        if let Some(client) = self.client_at(from) {
            client.last_heard = now;
        }
        let (receiver, channel) = (report.receiver_id, report.channel);
        match self.receivers.report(now, f, from, report) {
            Noted::New => self.events.push_back(ServerEvent::ReceiverJoined {
                file: f,
                receiver,
                addr: from,
                channel,
            }),
            Noted::Moved => self.events.push_back(ServerEvent::ReceiverMoved {
                file: f,
                receiver,
                channel,
            }),
            Noted::Same | Noted::Full => {}
        }
        self.events.push_back(ServerEvent::ReceiverProgress {
            file: f,
            report: *report,
        });
    }

    fn handle_done(&mut self, now: Instant, from: SocketAddr, done: &wire::Done) {
        let Some(f) = self.file_of(done.archive_id) else {
            self.stats.dropped += 1;
            return;
        };
        let channel = if self.client_slots.contains_key(&from) {
            wire::UNICAST_CHANNEL
        } else {
            0
        };
        if self.receivers.done(now, f, done.receiver_id, from, channel) {
            self.events.push_back(ServerEvent::ReceiverDone {
                file: f,
                receiver: done.receiver_id,
                addr: from,
                elapsed: Duration::from_millis(done.elapsed_ms as u64),
            });
        }
        if let Some(&slot) = self.client_slots.get(&from) {
            self.drop_client(slot, now, StreamEnd::Done);
        }
    }
}
