//! Following a file's listing: a new reception, or a switch of a reception to
//! another archive or server session. A switch waits until the new archive's
//! manifest, under the new session, verifies, so that a forged ANNOUNCE cannot
//! move a reception off its archive (threat T7); a session silent for
//! `SESSION_SILENCE` is left at once.

use super::reception::{Pending, selector_for};
use super::{
    ClientEvent, Command, Fallback, MAX_ACTIVE_RECEPTIONS, Phase, Reception, ReceptionId, Session,
};
use crate::FileReceiver;
use crate::manifest::Manifest;
use crate::rate::SELECT_SAMPLE;
use crate::wire::{self, AnnounceEntry, Packet};
use rand::Rng;
use std::time::Instant;

impl Session {
    /// Starts receiving `entry`, or starts it over if the server now offers another
    /// archive under that name or took over from a silent session. A file listed by
    /// unicast (no multicast heard at all) is streamed by unicast at once.
    pub(super) fn follow(
        &mut self,
        now: Instant,
        session: u32,
        entry: AnnounceEntry,
        by_unicast: bool,
    ) {
        // A file pinned to one archive: another archive of its name is not it.
        if self
            .config
            .pinned
            .get(&entry.name)
            .is_some_and(|&pinned| pinned != entry.archive_id)
        {
            self.other_archives += 1;
            return;
        }
        let existing = self
            .receptions
            .iter()
            .position(|r| r.entry.name == entry.name);
        if let Some(i) = existing {
            let r = &mut self.receptions[i];
            let changed = r.entry.archive_id != entry.archive_id;
            let other = r.fsm.session_id() != session;
            let silent = other && r.silent(now);
            // A new session from the very address of the one followed: that server
            // restarted (two cannot hold one port), so its old session is gone.
            let restarted = other
                && self.servers.contains_key(&r.fsm.session_id())
                && self.servers.get(&r.fsm.session_id()) == self.servers.get(&session);
            // A director moved this file to the server of this session.
            let silent = silent
                || (other
                    && self
                        .directed
                        .moving_to(&entry.name, self.servers.get(&session).copied()));
            if r.phase != Phase::Receiving || !(changed || silent || restarted) {
                if r.fsm.session_id() == session {
                    r.entry.flags = entry.flags; // on-demand channels started or stopped
                }
                return;
            }
            if !silent {
                // The followed session still speaks: switch only once the new
                // archive's manifest, under the new session, verifies (T7).
                r.pending = Some(Pending {
                    session,
                    entry,
                    by_unicast,
                });
                return;
            }
            self.close_reception(i);
        }
        let carried = existing.and_then(|i| self.carried_manifest(i, entry.archive_id));
        let receiving = self
            .receptions
            .iter()
            .filter(|r| r.phase == Phase::Receiving)
            .count();
        if existing.is_none() && receiving >= MAX_ACTIVE_RECEPTIONS {
            // Taken up when one finishes: the listing comes round every 500 ms (T16).
            return;
        }
        self.start_reception(now, existing, session, entry, by_unicast, carried);
    }

    /// A MANIFEST came on reception `id`'s channel while a switch waits: if it is
    /// the awaited archive's, under the awaited session, and verifies with our key
    /// (its packet tag binds it to that session, T8),
    /// the switch happens now. Returns whether the datagram was taken.
    pub(super) fn take_pending(&mut self, now: Instant, id: ReceptionId, bytes: &[u8]) -> bool {
        let r = &self.receptions[id];
        let Some(pending) = &r.pending else {
            return false;
        };
        let Ok(wire::Datagram {
            session_id,
            packet: Packet::Manifest(body),
        }) = wire::decode(bytes)
        else {
            return false;
        };
        let packet_key =
            (self.config.key.file_key(pending.entry.archive_id)).session_mac_key(pending.session);
        let verified = session_id == pending.session
            && packet_key.verifies(bytes)
            && Manifest::decode(body, &self.config.key)
                .is_ok_and(|m| m.archive_id == pending.entry.archive_id);
        if !verified {
            return false;
        }
        let pending = self.receptions[id].pending.take().expect("checked above");
        let carried = self.carried_manifest(id, pending.entry.archive_id);
        self.close_reception(id);
        self.start_reception(
            now,
            Some(id),
            pending.session,
            pending.entry,
            pending.by_unicast,
            carried,
        );
        true
    }

    /// Reception `id`'s manifest, if it is of archive `archive_id`: a switch to
    /// another session of the same archive takes it along, so the new session's
    /// DATA is taken from its first packet rather than after its next MANIFEST.
    fn carried_manifest(&self, id: ReceptionId, archive_id: u64) -> Option<Manifest> {
        let m = self.receptions[id].fsm.manifest()?;
        (m.archive_id == archive_id).then(|| m.clone())
    }

    /// Leaves reception `id`'s sources and saves and closes its storage.
    fn close_reception(&mut self, id: ReceptionId) {
        self.close_sources(id);
        let r = &self.receptions[id];
        if r.storage_open {
            self.out.command(Command::CloseStorage {
                reception: id,
                map: r.fsm.received().clone(),
                resume: r.fsm.resume_point(),
            });
        }
    }

    /// Makes a reception for `entry` of `session` (in place of `existing`, whose
    /// sources and storage are closed already, with its manifest `carried` when the
    /// archive is the same) and joins its channels or stream.
    fn start_reception(
        &mut self,
        now: Instant,
        existing: Option<ReceptionId>,
        session: u32,
        entry: AnnounceEntry,
        by_unicast: bool,
        carried: Option<Manifest>,
    ) {
        let id = existing.unwrap_or(self.receptions.len());
        let dropped = match (existing, &carried) {
            (Some(i), None) => self.receptions[i].fsm.received().count(),
            _ => 0,
        };
        let reception = Reception {
            fsm: FileReceiver::new(
                self.config.key.clone(),
                session,
                entry.archive_id,
                self.rng.next_u64(),
                self.config.nak_mode,
            )
            .with_repair_kind(self.config.repair),
            server: self.servers.get(&session).copied().or(self.config.server),
            joined: Vec::new(),
            selector: selector_for(&entry, self.config.max_rate),
            next_sample: now + SELECT_SAMPLE,
            stream: None,
            last_data: now,
            next_start_request: None,
            entry,
            frames: None,
            checking_table: false,
            storage_open: false,
            wrong_key: None,
            pending: None,
            phase: Phase::Receiving,
            started: now,
            resumed: 0,
            kernel_drops: 0,
            away_until: None,
            listening_from: now,
            pace: None,
            next_skip_check: now,
        };
        match existing {
            Some(i) => self.receptions[i] = reception,
            None => self.receptions.push(reception),
        }
        self.events.push_back(ClientEvent::Following {
            reception: id,
            switched: existing.is_some(),
            dropped,
        });
        if let Some(m) = carried
            && self.receptions[id].fsm.accept_manifest(m)
        {
            self.manifest_accepted(id);
        }
        if by_unicast || self.config.unicast_only {
            self.fall_back(now, id, Fallback::NoMulticast);
            return;
        }
        let r = &self.receptions[id];
        let channels = if self.config.aggregate {
            r.selector.allowed().to_vec()
        } else {
            vec![r.selector.channel()]
        };
        for channel in channels {
            self.join(id, channel);
        }
        let r = &mut self.receptions[id];
        if r.entry.idle() {
            r.next_start_request = Some(now);
        }
    }
}
