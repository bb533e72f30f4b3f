//! The receiver driver's input side: the datagrams waiting on a socket go to the
//! session, a bounded number per turn so that a flood on one socket (a forged
//! listing storm on the directory group, say) cannot starve the others; a data
//! batch's new payloads are written with one vectored write.

use super::{DIRECTORY, LINK, WORKER_STALL};
use super::{FIRST_RECEPTION, Receiver, Source, TOKENS_PER_RECEPTION};
use crate::error::{Context, Result};
use crate::net;
use loopcast_proto::client::{Origin, ReceptionId, Store};
use loopcast_proto::wire;
use mio::Token;
use rand::RngExt;
use std::time::Instant;

/// Most datagrams (or receive batches, on a data socket) taken from one socket per
/// turn of the loop; a socket left non-empty is polled again at once.
const MAX_DRAIN: usize = 256;

impl Receiver {
    /// Hands the datagrams waiting on the socket of `token` to the session, at most
    /// `MAX_DRAIN` of them (batches on a data socket). Returns true when the socket
    /// is empty; false when datagrams may wait (the drain's bound, or a frame
    /// worker behind: `hold_back`).
    pub(super) fn drain(&mut self, token: Token) -> Result<bool> {
        match token {
            DIRECTORY | LINK => {
                for _ in 0..MAX_DRAIN {
                    if !self.take_one(token)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Token(t) if t >= FIRST_RECEPTION => {
                let id = (t - FIRST_RECEPTION) / TOKENS_PER_RECEPTION;
                match Source::from_offset((t - FIRST_RECEPTION) % TOKENS_PER_RECEPTION) {
                    Source::Control(channel) => self.drain_control(id, channel),
                    source => self.drain_data(id, source),
                }
            }
            _ => Ok(true),
        }
    }

    /// Whether `token` is a data socket to leave alone now (`hold_back`).
    pub(super) fn hold_back_socket(&mut self, token: Token) -> bool {
        let Some(t) = token.0.checked_sub(FIRST_RECEPTION) else {
            return false;
        };
        let is_data = !matches!(
            Source::from_offset(t % TOKENS_PER_RECEPTION),
            Source::Control(_)
        );
        is_data && self.hold_back(t / TOKENS_PER_RECEPTION)
    }

    /// Whether reception `id`'s frame worker is behind and not stalled
    /// (`WORKER_STALL`): its DATA then waits in the socket buffer (and past it is
    /// dropped by the kernel, at no cost here) rather than being spilled to the
    /// partial file, which would give the worker more to do.
    fn hold_back(&mut self, id: ReceptionId) -> bool {
        let now = Instant::now();
        let Some(local) = self.io.locals.get_mut(id) else {
            return false;
        };
        if !local
            .partial
            .as_ref()
            .is_some_and(|p| p.worker_backlogged())
        {
            local.worker_seen = now;
            return false;
        }
        now.duration_since(local.worker_seen) < WORKER_STALL
    }

    /// Hands one datagram from the directory socket or the link to the session;
    /// false when there was none.
    fn take_one(&mut self, token: Token) -> Result<bool> {
        let socket = match token {
            DIRECTORY => self.io.directory.as_ref(),
            _ => Some(&self.io.link),
        };
        let Some(socket) = socket else {
            return Ok(false);
        };
        let Some((n, from)) = net::recv_from_nonblocking(socket, &mut self.io.buf)
            .context(|| "cannot receive".into())?
        else {
            return Ok(false);
        };
        let from = self.io.config.interface.unscoped(from);
        let origin = match token {
            DIRECTORY => Origin::Directory { source: from.ip() },
            _ => Origin::Link { from },
        };
        self.session
            .handle_datagram(Instant::now(), origin, &mut self.io.buf[..n]);
        self.io.outputs(&mut self.session, Some(&mut self.batch))?;
        Ok(true)
    }

    /// NAKs heard on a channel's control port (other receivers', and our own).
    pub(super) fn drain_control(&mut self, id: ReceptionId, channel: usize) -> Result<bool> {
        for _ in 0..MAX_DRAIN {
            let Some(j) = self.io.locals.get(id).and_then(|l| l.joined.get(&channel)) else {
                return Ok(true);
            };
            let Some(n) = net::recv_nonblocking(&j.control, &mut self.io.buf)
                .context(|| "cannot receive NAKs".into())?
            else {
                return Ok(true);
            };
            let origin = Origin::Control {
                reception: id,
                channel,
            };
            self.session
                .handle_datagram(Instant::now(), origin, &mut self.io.buf[..n]);
            self.io.outputs(&mut self.session, Some(&mut self.batch))?;
        }
        Ok(false)
    }

    /// Takes the datagrams waiting on a data source (a channel or the stream) of
    /// reception `id`, writing each batch's new payloads with one vectored write.
    pub(super) fn drain_data(&mut self, id: ReceptionId, source: Source) -> Result<bool> {
        let now = Instant::now();
        for _ in 0..MAX_DRAIN {
            if self.hold_back(id) {
                return Ok(false);
            }
            let Some(local) = self.io.locals.get(id) else {
                return Ok(true);
            };
            let (socket, origin) = match source {
                Source::Channel(channel) => match local.joined.get(&channel) {
                    Some(j) => (
                        &j.data,
                        Origin::Channel {
                            reception: id,
                            channel,
                        },
                    ),
                    None => return Ok(true), // left since the event
                },
                Source::Stream => match &local.stream {
                    Some(s) => (s, Origin::Stream { reception: id }),
                    None => return Ok(true),
                },
                Source::Control(_) => return Ok(true),
            };
            if self
                .batch
                .recv(socket)
                .context(|| "cannot receive data".into())?
                == 0
            {
                return Ok(true);
            }
            // Copied before any cell is opened in place: the storage that keeps
            // them may open in the middle of this batch (a MANIFEST in it).
            let keeps = self.io.config.keep_archive.is_some();
            if keeps {
                self.batch.copy_received(&mut self.as_received);
            }
            let address = self.batch.address();
            // Payloads to store (opened) and to keep (as they came), by body offset.
            let mut stores: Vec<(u64, &[u8])> = Vec::new();
            let mut kept: Vec<(u64, &[u8])> = Vec::new();
            for datagram in self.batch.datagrams_mut() {
                let is_data = [wire::PacketType::Data as u8, wire::PacketType::Parity as u8]
                    .contains(&datagram.get(3).copied().unwrap_or(0));
                let drop = self.io.config.debug_drop;
                if drop > 0.0 && is_data && self.io.drop_rng.random_bool(drop) {
                    self.io.locals[id].debug_dropped += 1;
                    continue;
                }
                if let Some(Store {
                    body_offset,
                    payload,
                    ..
                }) = self.session.handle_datagram(now, origin, datagram)
                {
                    if keeps {
                        let at = payload.as_ptr() as usize - address;
                        kept.push((body_offset, &self.as_received[at..at + payload.len()]));
                    }
                    stores.push((body_offset, payload));
                }
                if self.session.has_output() {
                    // What the session asks next may read these payloads back (the
                    // frame table, whole frames), save the map, or open the
                    // storage they go to.
                    self.io.keep(id, &mut kept)?;
                    self.io.write(&mut self.session, id, &mut stores)?;
                    self.io.outputs(&mut self.session, None)?;
                }
            }
            self.io.keep(id, &mut kept)?;
            self.io.write(&mut self.session, id, &mut stores)?;
            let local = &mut self.io.locals[id];
            if let Some(r) = self.session.reception(id) {
                local.progress.set(r.receiver().received().count() as u64);
            }
            drop((stores, kept));
            self.io.outputs(&mut self.session, Some(&mut self.batch))?;
        }
        Ok(false)
    }
}
