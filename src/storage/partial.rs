//! The storage of one reception: frames assembled in memory, the partial file
//! (sparse: the frame table, bytes that came before it, frames spilled while
//! waiting for repair), the output being unpacked, and the received map saved
//! beside them (synced data first, then the map, renamed into place). Spec §5.

use super::frames::{FrameAssembly, FrameBuffer};
use super::kept::KeptArchive;
use super::map::{SavedMap, decode_state, encode_map, save};
use super::output::PlainOutput;
use super::persister::{Job, Persister};
use super::private::{open_private, read_private};
use super::vectored::write_runs;
use crate::error::{Context, Error, Result};
use loopcast_proto::{Manifest, MasterKey, ReceivedMap, ResumePoint};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod rebuild;
pub use rebuild::Rebuilt;

/// Most payload bytes held in memory before the frame table is known (the
/// table's packets are NAKed at once, so this is a short while).
const EARLY_BUDGET: usize = 16 << 20;

/// One file being received: its frames in memory, its partial file, its output
/// and its persisted received map.
pub struct PartialFile {
    file: File,
    /// Set while a background save of this file is queued or running.
    saving: Arc<AtomicBool>,
    /// Where the body is written.
    pub body_path: PathBuf,
    map_path: PathBuf,
    manifest: Manifest,
    /// The plaintext being unpacked.
    output: PlainOutput,
    /// Frames in the output when the storage was opened (from the saved map).
    done_at_open: Vec<bool>,
    /// From when the frame table is known.
    assembly: Option<FrameAssembly>,
    /// Payloads (but their frame-table part) that came before the frame table,
    /// held in memory until it is known: their bytes one after another (one
    /// allocation, at most `EARLY_BUDGET`), and each one's body offset and length.
    early: Vec<u8>,
    early_payloads: Vec<(u64, usize)>,
    /// Bytes that came before the frame table written to the partial file once
    /// the memory for them was full (they count against its cap).
    early_on_disk: u64,
    /// Body ranges that came before the frame table with no room left for them.
    early_dropped: Vec<std::ops::Range<u64>>,
    /// The archive kept as it came (`--keep-archive`).
    kept: Option<KeptArchive>,
}

impl PartialFile {
    /// Opens the storage for `manifest` in `work_dir`; resumes the stored map (and
    /// the output's frames) if it belongs to the same archive and layout, else
    /// starts over, after checking that the disk has room for the output and the
    /// partial file's cap. With `keep` (a directory and the key), the archive is
    /// also kept as it comes there, and a resume needs the kept archive too.
    pub fn open(
        work_dir: &Path,
        manifest: &Manifest,
        keep: Option<(&Path, &MasterKey)>,
    ) -> Result<(Self, Option<SavedMap>)> {
        let body_path = work_dir.join(format!("{}.part", manifest.name));
        let map_path = work_dir.join(format!("{}.map", manifest.name));
        PlainOutput::remove_others(work_dir, manifest);
        let kept = keep
            .map(|(dir, key)| KeptArchive::open(dir, manifest, key))
            .transpose()?;
        // What a saved map claims must be in the kept archive too.
        let saved = read_private(&map_path)
            .and_then(|bytes| decode_state(&bytes, manifest))
            .filter(|_| match &kept {
                Some((_, false)) => {
                    log::info!(
                        "{}: the part received earlier was not kept as it came: starting over \
                         to keep its archive",
                        manifest.name
                    );
                    false
                }
                _ => true,
            });
        let kept = kept.map(|(k, _)| k);
        let file = open_private(&body_path)?;
        let length_ok = file
            .metadata()
            .map(|m| m.len() == manifest.body_len)
            .unwrap_or(false);
        let resumed = saved.filter(|_| length_ok).and_then(|state| {
            // Frames claimed in the output need the output that holds them.
            match state.done.contains(&true) {
                true => PlainOutput::reopen(work_dir, manifest).map(|o| (state, o)),
                false => PlainOutput::create(work_dir, manifest)
                    .ok()
                    .map(|o| (state, o)),
            }
        });
        let (resumed, output) = match resumed {
            Some((state, output)) => (Some(state), output),
            None => {
                let _ = fs::remove_file(&map_path);
                file.set_len(0)
                    .context(|| format!("cannot truncate {}", body_path.display()))?;
                check_space(work_dir, manifest)?;
                let output = PlainOutput::create(work_dir, manifest)?;
                // Sparse: only what goes to disk takes space.
                file.set_len(manifest.body_len)
                    .context(|| format!("cannot size {}", body_path.display()))?;
                (None, output)
            }
        };
        let done_at_open = resumed.as_ref().map_or_else(
            || vec![false; manifest.frame_count as usize],
            |s| s.done.clone(),
        );
        Ok((
            Self {
                file,
                saving: Arc::new(AtomicBool::new(false)),
                body_path,
                map_path,
                manifest: manifest.clone(),
                output,
                done_at_open,
                assembly: None,
                early: Vec::new(),
                early_payloads: Vec::new(),
                early_on_disk: 0,
                early_dropped: Vec::new(),
                kept,
            },
            resumed.map(|s| (s.map, s.resume)),
        ))
    }

    /// The frame table is known: frames at body `ranges` are assembled in memory
    /// from now on, but those with bytes already held (`received`) in the partial
    /// file stay there.
    pub fn set_frames(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
        received: &ReceivedMap,
    ) -> Result<()> {
        let on_disk = self.without_early(received);
        let early = std::mem::take(&mut self.early);
        let early_payloads = std::mem::take(&mut self.early_payloads);
        self.assembly = Some(FrameAssembly::new(
            ranges,
            self.manifest.payload_size as u32,
            self.manifest.cell_size,
            self.manifest.body_len,
            &self.done_at_open,
            &on_disk,
        ));
        self.write_payloads(&early_slices(&early, &early_payloads))
    }

    /// `map` less the packets held only in the memory for payloads that came
    /// before the frame table.
    fn without_early(&self, map: &ReceivedMap) -> ReceivedMap {
        let mut map = map.clone();
        let payload_size = self.manifest.payload_size.max(1) as u64;
        for (offset, _) in &self.early_payloads {
            let packet = (offset / payload_size) as u32;
            map.remove_range(packet..packet + 1);
        }
        map
    }

    /// The archive this storage holds.
    pub fn archive_id(&self) -> u64 {
        self.manifest.archive_id
    }

    /// Frames in the output when the storage was opened.
    pub fn done_at_open(&self) -> &[bool] {
        &self.done_at_open
    }

    /// A second handle on the output, for the frame worker.
    pub fn output(&self) -> Result<PlainOutput> {
        self.output
            .try_clone()
            .context(|| format!("cannot reopen {}", self.output.path.display()))
    }

    /// Takes payloads (body offset, bytes) from the caller's receive buffers: into
    /// frames held in memory, else into the partial file with one positioned
    /// vectored write per run of consecutive payloads.
    pub fn write_payloads(&mut self, payloads: &[(u64, &[u8])]) -> Result<()> {
        let Some(assembly) = self.assembly.as_mut() else {
            return self.hold_early(payloads);
        };
        let (mut to_disk, mut spill) = (Vec::new(), Vec::new());
        for &(offset, payload) in payloads {
            assembly.store(offset, payload, &mut to_disk, &mut spill);
        }
        // Spilled frames first: later parts of them are in `to_disk`.
        self.write_frames(spill)?;
        self.write_to_disk(&to_disk)
    }

    /// Writes frames that were in memory whole at their place in the partial file.
    fn write_frames(&mut self, frames: Vec<(u32, FrameBuffer)>) -> Result<()> {
        let Some(assembly) = self.assembly.as_mut() else {
            return Ok(());
        };
        for (frame, mut buffer) in frames {
            let r = assembly.range(frame);
            self.file
                .write_all_at(buffer.cells_mut((r.end - r.start) as usize), r.start)
                .context(|| format!("cannot write {}", self.body_path.display()))?;
            assembly.recycle(buffer);
        }
        Ok(())
    }

    /// Writes what is held only in memory (frames, and payloads that came before
    /// the frame table) to the partial file, so that a save claims it: the
    /// receiver is stopping, or closing this storage. True if there was any.
    pub fn flush_memory(&mut self) -> Result<bool> {
        let early = std::mem::take(&mut self.early);
        let early_payloads = std::mem::take(&mut self.early_payloads);
        self.write_to_disk(&early_slices(&early, &early_payloads))?;
        let frames = self.assembly.as_mut().map(FrameAssembly::take_memory);
        let frames = frames.unwrap_or_default();
        let any = !early_payloads.is_empty() || !frames.is_empty();
        self.write_frames(frames)?;
        Ok(any)
    }

    /// Before the frame table: its bytes go to the partial file (to be checked
    /// there), the rest to memory while there is room, then to the partial file
    /// up to its cap, and past that they are let go.
    fn hold_early(&mut self, payloads: &[(u64, &[u8])]) -> Result<()> {
        let table = self.manifest.table_len();
        let mut to_disk = Vec::new();
        for &(offset, payload) in payloads {
            let in_table = (table.saturating_sub(offset) as usize).min(payload.len());
            let (head, rest) = payload.split_at(in_table);
            if !head.is_empty() {
                to_disk.push((offset, head));
            }
            if rest.is_empty() {
                continue;
            }
            let at = offset + in_table as u64;
            if in_table == 0 && self.early.len() + rest.len() <= EARLY_BUDGET {
                if self.early.capacity() == 0 {
                    self.early.reserve_exact(EARLY_BUDGET);
                }
                self.early.extend_from_slice(rest);
                self.early_payloads.push((at, rest.len()));
            } else if in_table == 0
                && self.early_on_disk + rest.len() as u64
                    > FrameAssembly::spill_cap(self.manifest.body_len)
            {
                self.early_dropped.push(at..at + rest.len() as u64);
            } else {
                // Past the memory for it, or the rest of the packet ending the table.
                self.early_on_disk += rest.len() as u64;
                to_disk.push((at, rest));
            }
        }
        self.write_to_disk(&to_disk)
    }

    fn write_to_disk(&self, payloads: &[(u64, &[u8])]) -> Result<()> {
        write_runs(&self.file, payloads, 0)
            .context(|| format!("cannot write {}", self.body_path.display()))
    }

    /// Whether the frame worker is behind (`FrameAssembly::worker_backlogged`).
    pub fn worker_backlogged(&self) -> bool {
        self.assembly
            .as_ref()
            .is_some_and(FrameAssembly::worker_backlogged)
    }

    /// The worker is through with `frame` (`ok`: it is in the output).
    pub fn frame_opened(&mut self, frame: u32, ok: bool, buffer: Option<FrameBuffer>) {
        if let Some(a) = self.assembly.as_mut() {
            a.opened(frame, ok, buffer);
        }
    }

    /// Body ranges let go for want of room (before the frame table was known, or
    /// whole frames): their packets must come again.
    pub fn take_let_go(&mut self) -> Vec<std::ops::Range<u64>> {
        let mut let_go: Vec<_> = self.early_dropped.drain(..).collect();
        if let Some(a) = self.assembly.as_mut() {
            let frames = a.take_let_go().into_iter();
            let_go.extend(frames.map(|f| a.range(f)));
        }
        let_go
    }

    /// What a saved map may claim of `map`, and which frames are in the output.
    fn durable(&self, map: &ReceivedMap) -> (ReceivedMap, Vec<bool>) {
        match &self.assembly {
            Some(a) => (a.durable(map), a.done()),
            None => (self.without_early(map), self.done_at_open.clone()),
        }
    }

    /// Queues a durable save of `map` on `persister`.
    /// Returns false, queueing nothing, while this file's previous save is under way.
    pub fn persist_in_background(
        &mut self,
        map: &ReceivedMap,
        resume: &ResumePoint,
        persister: &Persister,
    ) -> Result<bool> {
        if self.saving.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut files = vec![self.body()?, self.output()?.file];
        if let Some(kept) = &self.kept {
            files.push(kept.handle()?);
        }
        let (map, done) = self.durable(map);
        self.saving.store(true, Ordering::Release);
        persister.submit(Job::Save {
            files,
            map_path: self.map_path.clone(),
            map: encode_map(&map, &done, resume, &self.manifest),
            saving: Arc::clone(&self.saving),
        });
        Ok(true)
    }

    /// Waits for this file's background save, if one is under way (so that it cannot
    /// land after this one), then syncs and saves `map` on this thread.
    pub fn persist_when_idle(&mut self, map: &ReceivedMap, resume: &ResumePoint) -> Result<()> {
        // A save is one fdatasync and a small write; a minute means the disk is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.saving.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.persist_now(map, resume)
    }

    /// Syncs the payloads written and saves `map`, on this thread.
    pub fn persist_now(&mut self, map: &ReceivedMap, resume: &ResumePoint) -> Result<()> {
        let (map, done) = self.durable(map);
        let kept = self.kept.as_ref().map(KeptArchive::handle).transpose()?;
        save(
            &[&self.file, &self.output.file]
                .into_iter()
                .chain(kept.as_ref())
                .collect::<Vec<_>>(),
            &self.map_path,
            &encode_map(&map, &done, resume, &self.manifest),
        )
    }

    /// A second handle on the body file, for unpacking on another thread.
    pub fn body(&self) -> Result<File> {
        self.file
            .try_clone()
            .context(|| format!("cannot reopen {}", self.body_path.display()))
    }

    /// Writes payloads as they came (sealed) to the kept archive, if one is kept.
    pub fn keep(&self, sealed: &[(u64, &[u8])]) -> Result<()> {
        match &self.kept {
            Some(kept) if !sealed.is_empty() => kept.write(sealed),
            _ => Ok(()),
        }
    }

    /// Whether the archive is kept as it comes (`--keep-archive`).
    pub fn keeps(&self) -> bool {
        self.kept.is_some()
    }

    /// Where the archive is being kept, if it is.
    pub fn kept_path(&self) -> Option<&Path> {
        self.kept.as_ref().map(KeptArchive::path)
    }

    /// The file is delivered: the kept archive, if any, is put in place.
    /// Returns where.
    pub fn finish_kept(&mut self) -> Result<Option<PathBuf>> {
        self.kept.take().map(KeptArchive::finish).transpose()
    }

    /// Removes the partial file and its map (after delivery), after any queued save.
    pub fn remove(self, persister: &Persister) {
        persister.submit(Job::Remove(vec![self.map_path, self.body_path]));
    }
}

/// The payloads held before the frame table: (body offset, bytes) from the
/// arena's bytes and their (offset, length) list.
fn early_slices<'a>(early: &'a [u8], payloads: &[(u64, usize)]) -> Vec<(u64, &'a [u8])> {
    let mut at = 0;
    payloads
        .iter()
        .map(|&(offset, len)| {
            at += len;
            (offset, &early[at - len..at])
        })
        .collect()
}

/// Fails, naming what is needed, unless `work_dir`'s file system has room for the
/// output and for the partial file at its cap (spec §5).
fn check_space(work_dir: &Path, manifest: &Manifest) -> Result<()> {
    let spill = FrameAssembly::spill_cap(manifest.body_len) + manifest.table_len();
    let needed = manifest.original_size + spill;
    let Some(free) = free_bytes(work_dir) else {
        return Ok(()); // cannot tell: preallocating the output will
    };
    if free >= needed {
        return Ok(());
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    Err(Error::with_code(
        format!(
            "not enough space in {} for {}: it needs {:.1} MiB (the file, {:.1} MiB, and up to {:.1} MiB for frames waiting for repair), {:.1} MiB are free",
            work_dir.display(),
            manifest.name,
            mib(needed),
            mib(manifest.original_size),
            mib(spill),
            mib(free)
        ),
        crate::error::EXIT_NO_ROOM,
    ))
}

/// Bytes an unprivileged user may still write on `dir`'s file system.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statvfs to fill.
    (unsafe { libc::statvfs(path.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn payloads_before_the_table_go_to_memory_then_to_disk_up_to_its_cap_then_are_let_go() {
        let key = loopcast_proto::MasterKey::from_bytes([3; 32]);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
        let mut original = vec![0u8; 40 << 20];
        blake3::Hasher::new().finalize_xof().fill(&mut original);
        let (manifest, _, _) = loopcast_proto::sim::pack(&key, &original, 1 << 20, 1428, &mut rng);
        let dir = tempfile::tempdir().unwrap();
        let (mut partial, resumed) = PartialFile::open(dir.path(), &manifest, None).unwrap();
        assert!(resumed.is_none());
        // Every packet after the table's, before the table is known.
        let p = manifest.payload_size as u64;
        let first = manifest.table_len().div_ceil(p);
        let bytes = vec![9u8; p as usize];
        let payloads: Vec<(u64, &[u8])> = (first..manifest.packet_count() as u64 - 1)
            .map(|k| (k * p, &bytes[..]))
            .collect();
        partial.write_payloads(&payloads).unwrap();
        let in_memory = EARLY_BUDGET as u64 / p;
        let cap = FrameAssembly::spill_cap(manifest.body_len);
        let on_disk = cap / p;
        let let_go = partial.take_let_go();
        assert_eq!(
            let_go.len() as u64,
            payloads.len() as u64 - in_memory - on_disk
        );
        let dropped = first + in_memory + on_disk;
        assert_eq!(let_go[0], dropped * p..(dropped + 1) * p);
        // The partial file holds no more than its cap.
        use std::os::unix::fs::MetadataExt;
        let used = fs::metadata(&partial.body_path).unwrap().blocks() * 512;
        assert!(
            used > 0 && used <= cap + 4096,
            "{used} bytes on disk, cap {cap}"
        );
        // What is only in memory is not claimed by a saved map.
        let mut map = ReceivedMap::new(manifest.packet_count());
        map.insert_range(0..manifest.packet_count());
        let (durable, _) = partial.durable(&map);
        assert_eq!(durable.count() as u64, map.count() as u64 - in_memory);
        // Stopping in order: what was in memory goes to the partial file, and a
        // save may claim it.
        assert!(partial.flush_memory().unwrap());
        let (durable, _) = partial.durable(&map);
        assert_eq!(durable.count(), map.count());
        assert!(!partial.flush_memory().unwrap(), "nothing left in memory");
    }
}
