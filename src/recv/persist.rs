//! The receiver driver's storage chores: frame workers' reports, saving received
//! maps in the background, and saving everything on the way out.

use super::Receiver;
use crate::error::{Error, Result};
use crate::storage::{FrameReport, UnpackFailure};
use loopcast_proto::client::ReceptionId;
use std::time::Instant;

impl Receiver {
    pub(super) fn worker_report(
        &mut self,
        id: ReceptionId,
        archive_id: u64,
        report: FrameReport,
    ) -> Result<()> {
        let now = Instant::now();
        match report {
            FrameReport::Delivered(path) => {
                let local = &mut self.io.locals[id];
                local.worker = None;
                if let Some(mut p) = local.partial.take() {
                    local.kept = p.finish_kept()?;
                    p.remove(&self.io.persister);
                }
                local.delivered = Some(path);
                self.session.delivered(now, id, archive_id);
            }
            FrameReport::Opened(frame, buffer) => {
                self.io.locals[id].worker_seen = now;
                if let Some(p) = self.io.locals[id].partial.as_mut()
                    && p.archive_id() == archive_id
                {
                    p.frame_opened(frame, true, buffer);
                }
                return Ok(()); // nothing for the session: it counted the packets
            }
            FrameReport::Bad(frame, range, buffer) => {
                self.io.locals[id].worker_seen = now;
                if let Some(p) = self.io.locals[id].partial.as_mut()
                    && p.archive_id() == archive_id
                {
                    p.frame_opened(frame, false, buffer);
                }
                self.session.frame_failed(now, id, archive_id, frame, range);
                self.io.locals[id].dirty = true;
            }
            FrameReport::Failed(UnpackFailure::Digest) => {
                self.session.digest_failed(id, archive_id)
            }
            FrameReport::Failed(UnpackFailure::Io(e)) => {
                let name = self.session.reception(id).map(|r| r.entry().name.clone());
                return Err(Error::new(format!("{}: {e}", name.unwrap_or_default())));
            }
            FrameReport::Failed(other) => {
                return Err(Error::new(format!("cannot unpack: {other}")));
            }
        }
        self.io.outputs(&mut self.session, Some(&mut self.batch))
    }

    /// Hands a snapshot of each changed received map to the persister, which syncs
    /// the data and then saves the map off this thread.
    pub(super) fn persist_all(&mut self) -> Result<()> {
        for (id, local) in self.io.locals.iter_mut().enumerate() {
            let (Some(partial), Some(r)) = (local.partial.as_mut(), self.session.reception(id))
            else {
                continue;
            };
            if local.dirty {
                let fsm = r.receiver();
                let submitted = partial
                    .persist_in_background(fsm.received(), &fsm.resume_point(), &self.io.persister)
                    .map_err(|e| Error::new(format!("{}: {e}", r.entry().name)))?;
                local.dirty = !submitted;
            }
        }
        Ok(())
    }

    /// Saves every file's progress synchronously on the way out (best effort).
    pub(super) fn save_progress(&mut self) {
        self.io.persister.wait_idle();
        for (id, local) in self.io.locals.iter_mut().enumerate() {
            let (Some(p), Some(r)) = (local.partial.as_mut(), self.session.reception(id)) else {
                continue;
            };
            let saved = p.flush_memory().and_then(|flushed| {
                if local.dirty || flushed {
                    p.persist_now(r.receiver().received(), &r.receiver().resume_point())?;
                }
                Ok(())
            });
            if let Err(e) = saved {
                log::warn!("{}: {e}", r.entry().name);
            }
        }
    }
}
