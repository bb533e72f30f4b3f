//! The receiver driver carrying out its session's outputs: commands (sockets,
//! storage, frame workers), datagrams to send, events to render.

use super::{Io, Joined, Local, Source, render, token};
use crate::datapath::BatchReceiver;
use crate::error::{Context, Error, Result};
use crate::net;
use crate::storage::{FrameWorker, OutputDir, PartialFile, Rebuilt, RelayNews};
use loopcast_proto::Manifest;
use loopcast_proto::archive::{Cells, Unpacker};
use loopcast_proto::client::{
    ClientError, ClientEvent, Command, Rebuild, ReceptionId, Session, Transmit, Via,
};
use loopcast_proto::fec::FecError;
use mio::Interest;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

impl Io {
    /// Carries out the session's commands and sends its datagrams, in order, then
    /// renders its events; a failure event ends the run. `batch` is None in the
    /// middle of a receive batch (it is borrowed): a socket left then keeps its
    /// kernel-drop counter in the batch reader, which a later socket with the same
    /// descriptor would inherit in its reports.
    pub(super) fn outputs(
        &mut self,
        session: &mut Session,
        mut batch: Option<&mut BatchReceiver>,
    ) -> Result<()> {
        loop {
            if let Some(command) = session.poll_command() {
                self.carry_out(session, batch.as_deref_mut(), command)?;
            } else if let Some(t) = session.poll_transmit() {
                self.send(&t);
            } else {
                break;
            }
        }
        self.events(session)
    }

    pub(super) fn events(&mut self, session: &mut Session) -> Result<()> {
        while let Some(event) = session.poll_event() {
            if let ClientEvent::Failed(e) = &event {
                let code = match e {
                    ClientError::NotCarried { .. } => crate::error::EXIT_NOT_CARRIED,
                    _ => crate::error::EXIT_FAILURE,
                };
                return Err(Error::with_code(render::failure(e, &self.config.key), code));
            }
            let local = match &event {
                ClientEvent::Following { reception, .. }
                | ClientEvent::Resumed { reception, .. }
                | ClientEvent::AllHeld { reception }
                | ClientEvent::Delivered { reception }
                | ClientEvent::FrameDamaged { reception, .. } => self.locals.get(*reception),
                _ => None,
            };
            self.render.client_event(session, local, &event);
            if let ClientEvent::AllHeld { reception } = event
                && let Some(local) = self.locals.get_mut(reception)
            {
                local.dirty = true;
            }
        }
        Ok(())
    }

    /// Stores `stores` (body offset, payload) for reception `id` (in memory or its
    /// partial file) and empties it; frames let go for want of room are given
    /// back to the session, whose packets then come again.
    pub(super) fn write(
        &mut self,
        session: &mut Session,
        id: ReceptionId,
        stores: &mut Vec<(u64, &[u8])>,
    ) -> Result<()> {
        if stores.is_empty() {
            return Ok(());
        }
        if let Some(local) = self.locals.get_mut(id)
            && let Some(partial) = &mut local.partial
        {
            partial.write_payloads(stores)?;
            local.dirty = true;
            let let_go = partial.take_let_go();
            if !let_go.is_empty() {
                local.let_go += let_go.len() as u64;
                let now = Instant::now();
                let archive_id = session.reception(id).map_or(0, |r| r.entry().archive_id);
                for range in let_go {
                    session.storage_dropped(now, id, archive_id, range);
                }
            }
        }
        stores.clear();
        Ok(())
    }

    /// Writes payloads of reception `id` as they came (sealed) to its kept
    /// archive, tells a relay's server in this process, and empties `sealed`.
    pub(super) fn keep(&mut self, id: ReceptionId, sealed: &mut Vec<(u64, &[u8])>) -> Result<()> {
        if let Some(partial) = self.locals.get(id).and_then(|l| l.partial.as_ref())
            && partial.keeps()
            && !sealed.is_empty()
        {
            partial.keep(sealed)?;
            if let Some(news) = &self.config.relay_news {
                let ranges = sealed.iter().map(|(at, b)| *at..at + b.len() as u64);
                let _ = news.send(RelayNews::Held {
                    archive_id: partial.archive_id(),
                    ranges: ranges.collect(),
                });
            }
        }
        sealed.clear();
        Ok(())
    }

    /// Rebuilds a block of reception `id` from parity and stores the packets
    /// rebuilt. A block some of whose stored packets are no longer held as they
    /// came (their frame is unpacked) is given back to the session to be repaired
    /// by copies; one whose shards do not decode, to be asked for again.
    fn rebuild(&mut self, session: &mut Session, id: ReceptionId, rebuild: &Rebuild) -> Result<()> {
        let archive_id = session.reception(id).map_or(0, |r| r.entry().archive_id);
        let receiver = session.reception(id).map(|r| r.receiver());
        let rebuilt = match (
            self.locals.get(id).and_then(|l| l.partial.as_ref()),
            receiver,
        ) {
            (Some(partial), Some(receiver)) => partial.rebuild(receiver, rebuild)?,
            // No storage (closed meanwhile): nothing holds the block.
            _ => Rebuilt::Unavailable,
        };
        if let Rebuilt::Packets(_) = rebuilt
            && let Some(partial) = self.locals.get_mut(id).and_then(|l| l.partial.as_mut())
        {
            partial.rebuilt(rebuild.block);
        }
        let (again, by_copies) = match rebuilt {
            Rebuilt::Packets(packets) => {
                let p = session.reception(id).and_then(|r| r.receiver().manifest());
                let p = p.map_or(0, |m| m.payload_size as u64);
                let keeps = self.locals.get(id).and_then(|l| l.partial.as_ref());
                if let Some(r) = session
                    .reception(id)
                    .filter(|_| keeps.is_some_and(PartialFile::keeps))
                {
                    // Sealed again, they are the bytes the lost packets carried.
                    let sealed: Vec<(u64, Vec<u8>)> = (packets.iter())
                        .map(|(k, b)| {
                            let mut copy = b.clone();
                            r.receiver().seal_again(*k, &mut copy);
                            (*k as u64 * p, copy)
                        })
                        .collect();
                    let mut sealed = sealed.iter().map(|(at, b)| (*at, b.as_slice())).collect();
                    self.keep(id, &mut sealed)?;
                }
                let mut stores: Vec<(u64, &[u8])> = packets
                    .iter()
                    .map(|(k, b)| (*k as u64 * p, b.as_slice()))
                    .collect();
                return self.write(session, id, &mut stores);
            }
            Rebuilt::Unavailable => {
                self.local(session, id).rebuilds_by_copies += 1;
                (&rebuild.missing, true)
            }
            Rebuilt::Failed(e) => {
                log::warn!(
                    "block {} of {archive_id:016x} did not rebuild: {e}",
                    rebuild.block
                );
                // A shard that was not genuine (PARITY has no tag): the block
                // is repaired by copies, which prove themselves (T32).
                let wrong = e == FecError::WrongShard;
                self.local(session, id).wrong_shards += wrong as u64;
                (&rebuild.missing, wrong)
            }
        };
        session.rebuild_failed(Instant::now(), id, archive_id, again, by_copies);
        Ok(())
    }

    /// Sends one datagram; a lost one is repeated by the session's timers.
    pub(super) fn send(&self, t: &Transmit) {
        let to = self.config.interface.scoped(t.to);
        let result = match t.via {
            Via::Link => self.link.send_to(&t.datagram, to),
            Via::Multicast => self.nak_socket.send_to(&t.datagram, to),
            Via::Stream(id) => match self.locals.get(id).and_then(|l| l.stream.as_ref()) {
                Some(s) => s.send_to(&t.datagram, to),
                None => return,
            },
        };
        if let Err(e) = result {
            log::debug!("datagram to {} not sent: {e}", t.to);
        }
    }

    /// Where delivered files go, and whether they may replace existing ones.
    fn output(&self) -> OutputDir {
        OutputDir {
            path: self.config.out_dir.clone(),
            replace: !self.config.no_clobber,
        }
    }

    pub(super) fn local(&mut self, session: &Session, id: ReceptionId) -> &mut Local {
        while self.locals.len() <= id {
            let name = session
                .reception(self.locals.len())
                .map_or(String::new(), |r| r.entry().name.clone());
            self.locals.push(Local {
                joined: HashMap::new(),
                stream: None,
                partial: None,
                worker: None,
                dirty: false,
                progress: self.progress.add(&name),
                debug_dropped: 0,
                rebuilds_by_copies: 0,
                wrong_shards: 0,
                let_go: 0,
                worker_seen: Instant::now(),
                delivered: None,
                kept: None,
            });
        }
        &mut self.locals[id]
    }

    pub(super) fn carry_out(
        &mut self,
        session: &mut Session,
        batch: Option<&mut BatchReceiver>,
        command: Command,
    ) -> Result<()> {
        let interface = self.config.interface;
        let gro = self.config.gro;
        match command {
            Command::Join {
                reception,
                channel,
                info,
            } => {
                let mut data = mio::net::UdpSocket::from_std(net::multicast_receiver(
                    info.group,
                    interface,
                    net::receive_buffer_for_rate(info.rate_bps),
                )?);
                let mut control = mio::net::UdpSocket::from_std(net::multicast_receiver(
                    info.control(),
                    interface,
                    1 << 20,
                )?);
                BatchReceiver::setup(&data, gro);
                let registry = self.signals.poll.registry();
                registry
                    .register(
                        &mut data,
                        token(reception, Source::Channel(channel)),
                        Interest::READABLE,
                    )
                    .context(|| "cannot register socket".into())?;
                registry
                    .register(
                        &mut control,
                        token(reception, Source::Control(channel)),
                        Interest::READABLE,
                    )
                    .context(|| "cannot register socket".into())?;
                self.local(session, reception)
                    .joined
                    .insert(channel, Joined { data, control });
            }
            Command::Leave { reception, channel } => {
                if let Some(mut j) = self.local(session, reception).joined.remove(&channel) {
                    let registry = self.signals.poll.registry();
                    let _ = registry.deregister(&mut j.data);
                    let _ = registry.deregister(&mut j.control);
                    if let Some(batch) = batch {
                        batch.forget(&j.data);
                    }
                }
            }
            Command::OpenStream { reception, server } => {
                let rate = self.config.max_rate.unwrap_or(0);
                let mut socket = mio::net::UdpSocket::from_std(net::unicast_socket(
                    interface.local(server, 0)?,
                    net::receive_buffer_for_rate(rate.max(1_000_000_000)),
                )?);
                BatchReceiver::setup(&socket, gro);
                self.signals
                    .poll
                    .registry()
                    .register(
                        &mut socket,
                        token(reception, Source::Stream),
                        Interest::READABLE,
                    )
                    .context(|| "cannot register socket".into())?;
                log::debug!("stream socket for {server} open");
                self.local(session, reception).stream = Some(socket);
            }
            Command::CloseStream { reception } => {
                if let Some(mut s) = self.local(session, reception).stream.take() {
                    let _ = self.signals.poll.registry().deregister(&mut s);
                    if let Some(batch) = batch {
                        batch.forget(&s);
                    }
                }
            }
            Command::OpenStorage {
                reception,
                manifest,
            } => {
                self.output().check_free(&manifest.name)?;
                let keep = (self.config.keep_archive.as_deref()).map(|d| (d, &self.config.key));
                let (partial, resumed) = match PartialFile::open(&self.work_dir, &manifest, keep) {
                    Err(e) if e.code == crate::error::EXIT_NO_ROOM => {
                        // The others may fit: this one is given up, and told at the end.
                        log::warn!("{e}; receiving the other files");
                        self.no_room.push(e.message);
                        session.storage_refused(reception);
                        return Ok(());
                    }
                    other => other?,
                };
                if let (Some(news), Some(path)) = (&self.config.relay_news, partial.kept_path()) {
                    // A relay's server serves the kept archive as it arrives,
                    // from what a resumed run kept on.
                    let archive_id = manifest.archive_id;
                    let _ = news.send(RelayNews::Opened {
                        archive_id,
                        name: manifest.name.clone(),
                        path: path.to_path_buf(),
                    });
                    if let Some((map, _)) = &resumed {
                        let p = manifest.payload_size as u64;
                        let held = map.held_runs(0..map.len(), usize::MAX).into_iter();
                        let ranges = held
                            .map(|r| r.start as u64 * p..(r.end as u64 * p).min(manifest.body_len))
                            .collect();
                        let _ = news.send(RelayNews::Held { archive_id, ranges });
                    }
                }
                let local = self.local(session, reception);
                local
                    .progress
                    .set_total(manifest.packet_count() as u64, manifest.original_size);
                local.partial = Some(partial);
                local.worker = None;
                session.storage_opened(reception, resumed);
            }
            Command::CloseStorage {
                reception,
                map,
                resume,
            } => {
                let local = self.local(session, reception);
                local.worker = None;
                if let Some(mut partial) = local.partial.take() {
                    partial.flush_memory()?;
                    partial.persist_when_idle(&map, &resume)?;
                }
                local.dirty = false;
            }
            Command::CheckTable { reception } => {
                let now = Instant::now();
                let Some(manifest) = session
                    .reception(reception)
                    .and_then(|r| r.receiver().manifest())
                    .cloned()
                else {
                    return Ok(());
                };
                let ranges = self.start_worker(session, reception, &manifest)?;
                let held = session
                    .reception(reception)
                    .map(|r| r.receiver().received().count());
                log::debug!(
                    "{}: frame table {} with {} packets held",
                    manifest.name,
                    if ranges.is_some() {
                        "checked"
                    } else {
                        "failed"
                    },
                    held.unwrap_or(0)
                );
                session.table_checked(now, reception, manifest.archive_id, ranges);
            }
            Command::Rebuild { reception, rebuild } => {
                self.rebuild(session, reception, &rebuild)?;
            }
            Command::Unpack { reception, frames } => {
                let Some(receiver) = session.reception(reception).map(|r| r.receiver()) else {
                    return Ok(());
                };
                let (received, may_rebuild) = (receiver.received(), receiver.may_rebuild());
                let local = self.local(session, reception);
                if let (Some(worker), Some(partial)) = (&local.worker, &mut local.partial) {
                    for frame in frames {
                        if let Some(source) = partial.take_frame(frame, received, may_rebuild) {
                            worker.submit(frame, source);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads and checks the frame table of reception `id` and starts its frame
    /// worker; returns the frames' body ranges, or None if the table is damaged.
    pub(super) fn start_worker(
        &mut self,
        session: &Session,
        id: ReceptionId,
        manifest: &Manifest,
    ) -> Result<Option<loopcast_proto::client::FrameRanges>> {
        let out = self.output();
        let Some(partial) = self.locals.get_mut(id).and_then(|l| l.partial.as_mut()) else {
            return Ok(None);
        };
        let body = partial.body()?;
        let mut table = vec![0u8; manifest.table_len() as usize];
        body.read_exact_at(&mut table, 0)
            .context(|| format!("{}: cannot read the frame table", manifest.name))?;
        // The table's cells were opened as they came.
        let Ok(unpacker) = Unpacker::new(&self.config.key, manifest, &mut table, Cells::Opened)
        else {
            return Ok(None);
        };
        let ranges = unpacker.frame_ranges().to_vec();
        if let Some(r) = session.reception(id) {
            partial.set_frames(ranges.clone(), r.receiver().received())?;
        }
        let (tx, waker, archive_id) = (
            self.reports_tx.clone(),
            Arc::clone(&self.waker),
            manifest.archive_id,
        );
        let worker = FrameWorker::start(
            body,
            partial.output()?,
            partial.done_at_open().to_vec(),
            unpacker,
            manifest.clone(),
            &out,
            self.config.debug_frame_delay,
            move |report| {
                let _ = tx.send((id, archive_id, report));
                let _ = waker.wake();
            },
        )?;
        self.locals[id].worker = Some(worker);
        Ok(Some(ranges))
    }
}
