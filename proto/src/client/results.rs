//! The receiver session's answers from storage: the manifest's storage opened,
//! the frame table checked, frames failed, the file delivered.

use super::{
    ClientError, ClientEvent, Command, FrameRanges, Phase, Reception, ReceptionId, Resumed,
    Session, Transmit, Via,
};
use crate::FrameTracker;
use std::ops::Range;
use std::time::Instant;

impl Session {
    /// The driver opened storage for reception `id` and found `resumed` there.
    pub fn storage_opened(&mut self, id: ReceptionId, resumed: Resumed) {
        let Some(r) = self.receptions.get_mut(id) else {
            return;
        };
        r.storage_open = true;
        if let Some((map, point)) = resumed
            && r.fsm.restore(map)
        {
            let behind = point.is_some_and(|p| r.fsm.restore_tracks(&p));
            r.resumed = r.fsm.received().count();
            self.events.push_back(ClientEvent::Resumed {
                reception: id,
                held: r.resumed,
                behind,
            });
        }
        self.took_packets(id);
    }

    /// The driver checked reception `id`'s frame table (archive `archive_id`):
    /// the frames' body ranges, or None when the table failed its digest.
    pub fn table_checked(
        &mut self,
        now: Instant,
        id: ReceptionId,
        archive_id: u64,
        frames: Option<FrameRanges>,
    ) {
        let Some(r) = self.live(id, archive_id) else {
            return;
        };
        r.checking_table = false;
        let Some(m) = r.fsm.manifest() else { return };
        match frames.filter(|f| !f.is_empty()) {
            Some(ranges) => {
                let tracker = FrameTracker::new(ranges, m.payload_size as u32, r.fsm.received());
                let whole: Vec<u32> = tracker.complete_frames().collect();
                r.frames = Some(tracker);
                if !whole.is_empty() {
                    self.out.command(Command::Unpack {
                        reception: id,
                        frames: whole,
                    });
                }
            }
            None => {
                let table = m.table_len();
                r.fsm.mark_missing(now, 0..table);
                r.phase = Phase::Receiving;
                self.events
                    .push_back(ClientEvent::TableDamaged { reception: id });
            }
        }
    }

    /// Frame `frame` (body bytes `range`) of reception `id` failed: its packets
    /// are fetched again.
    pub fn frame_failed(
        &mut self,
        now: Instant,
        id: ReceptionId,
        archive_id: u64,
        frame: u32,
        range: Range<u64>,
    ) {
        if let Some(packets) = self.refetch(now, id, archive_id, range) {
            self.events.push_back(ClientEvent::FrameDamaged {
                reception: id,
                frame,
                packets,
            });
        }
    }

    /// The driver could not rebuild a block of reception `id` (`Command::Rebuild`):
    /// the packets `missing` it was to restore are fetched again; as copies if
    /// `by_copies` (it no longer holds some of the block's stored packets as they
    /// came, so no parity can rebuild it).
    pub fn rebuild_failed(
        &mut self,
        now: Instant,
        id: ReceptionId,
        archive_id: u64,
        missing: &[u32],
        by_copies: bool,
    ) {
        let Some(r) = self.live(id, archive_id) else {
            return;
        };
        r.fsm.rebuild_failed(now, missing, by_copies);
        if let (Some(frames), Some(first), Some(last)) = (
            r.frames.as_mut(),
            missing.iter().min(),
            missing.iter().max(),
        ) {
            frames.recount_packets(*first..*last + 1, r.fsm.received());
        }
        r.phase = Phase::Receiving;
    }

    /// The driver let body bytes `range` of reception `id` go before their frame
    /// was whole (or before the frame table was known), for want of room in
    /// memory and under the partial file's cap (spec §5): their packets are
    /// fetched again, as after damage but without a warning.
    pub fn storage_dropped(
        &mut self,
        now: Instant,
        id: ReceptionId,
        archive_id: u64,
        range: Range<u64>,
    ) {
        self.refetch(now, id, archive_id, range);
    }

    /// Marks the packets of body bytes `range` missing again; how many were held.
    /// Every frame those packets carry bytes of is recounted: a packet at a
    /// frame's edge is its neighbour's too, which must not stay counted whole.
    fn refetch(
        &mut self,
        now: Instant,
        id: ReceptionId,
        archive_id: u64,
        range: Range<u64>,
    ) -> Option<u32> {
        let r = self.live(id, archive_id)?;
        let payload_size = r.fsm.manifest().map_or(1, |m| m.payload_size as u32);
        let covering = crate::received::packets_covering(range.clone(), payload_size);
        let packets = r.fsm.mark_missing(now, range);
        if let Some(frames) = r.frames.as_mut() {
            frames.recount_packets(covering, r.fsm.received());
        }
        r.phase = Phase::Receiving;
        Some(packets)
    }

    /// Every frame of reception `id` verified, but the whole failed its digest.
    pub fn digest_failed(&mut self, id: ReceptionId, archive_id: u64) {
        if let Some(r) = self.live(id, archive_id) {
            let name = r.entry.name.clone();
            self.events
                .push_back(ClientEvent::Failed(ClientError::Inconsistent { name }));
        }
    }

    /// The driver cannot store reception `id` (no room for it): the file is
    /// given up and its channels or stream left; the others go on, and the
    /// session counts it as finished.
    pub fn storage_refused(&mut self, id: ReceptionId) {
        let Some(r) = self.receptions.get_mut(id) else {
            return;
        };
        if r.phase == Phase::Done {
            return;
        }
        r.phase = Phase::Skipped;
        r.frames = None;
        self.leave_sources(id);
    }

    /// Leaves reception `id`'s channels and closes its stream; they stay named
    /// (for the last report).
    fn leave_sources(&mut self, id: ReceptionId) {
        let r = &self.receptions[id];
        for &channel in &r.joined {
            self.out.command(Command::Leave {
                reception: id,
                channel,
            });
        }
        if r.stream.is_some() {
            self.out.command(Command::CloseStream { reception: id });
        }
    }

    /// Reception `id`'s file is delivered: tell the server (twice, as one datagram
    /// may be lost and nothing repeats it) and leave its channels or stream.
    pub fn delivered(&mut self, now: Instant, id: ReceptionId, archive_id: u64) {
        let Some(r) = self.live(id, archive_id) else {
            return;
        };
        r.phase = Phase::Done;
        r.frames = None;
        let done = r
            .fsm
            .done_datagram(now.saturating_duration_since(r.started));
        let to = match (&r.stream, r.server) {
            (Some(s), _) => Some((Via::Stream(id), s.server)),
            (None, Some(server)) => Some((Via::Link, server)),
            (None, None) => None,
        };
        if let Some((via, to)) = to {
            for _ in 0..2 {
                self.out.transmit(Transmit {
                    via,
                    to,
                    datagram: done.clone(),
                });
            }
        }
        self.leave_sources(id);
        self.events
            .push_back(ClientEvent::Delivered { reception: id });
    }

    /// Reception `id` if it still receives archive `archive_id` (results of a
    /// replaced archive are stale).
    pub(super) fn live(&mut self, id: ReceptionId, archive_id: u64) -> Option<&mut Reception> {
        self.receptions.get_mut(id).filter(|r| {
            r.entry.archive_id == archive_id && !matches!(r.phase, Phase::Done | Phase::Skipped)
        })
    }
}
