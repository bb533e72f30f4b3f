//! Unpacking a body into the original file: frame by frame as they arrive (the
//! frame worker, from memory or the partial file) or all at once (`loopcast
//! unpack`), one path for both; then the atomic delivery under the final name.

use super::UnpackFailure;
use super::frames::{FrameBuffer, FrameSource};
use super::output::PlainOutput;
use crate::error::{Context, Error, Result};
use loopcast_proto::archive::{Cells, UnpackError, Unpacker};
use loopcast_proto::{Manifest, MasterKey};
use std::fs::{self, File, FileTimes};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime};

/// Where delivered files go, and whether a delivery may replace a file of the same
/// name already there (`recv --no-clobber` says no).
#[derive(Debug, Clone)]
pub struct OutputDir {
    /// The directory.
    pub path: PathBuf,
    /// Replace an existing file (atomically, by rename) instead of refusing.
    pub replace: bool,
}

impl OutputDir {
    /// An output directory whose existing files are replaced.
    pub fn replacing(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            replace: true,
        }
    }

    /// Fails if `name` is already there and may not be replaced: checked before
    /// anything is received for it, so no transfer is wasted.
    pub fn check_free(&self, name: &str) -> Result<()> {
        let target = self.path.join(name);
        if !self.replace && fs::symlink_metadata(&target).is_ok() {
            return Err(Error::new(format!(
                "{} already exists; keeping it (--no-clobber)",
                target.display()
            )));
        }
        Ok(())
    }
}

/// Unpacks the whole body in `body` (from byte `body_start`) into
/// `dir/<manifest name>` atomically, on this thread, by the frame worker's path:
/// every frame checked and written at its place in a temporary file, the digest
/// checked, then the original's mode and mtime, a sync and the rename. Bad frames
/// are all reported, not just the first.
pub fn deliver(
    body: &File,
    body_start: u64,
    manifest: &Manifest,
    key: &MasterKey,
    work_dir: &Path,
    out: &OutputDir,
) -> std::result::Result<PathBuf, UnpackFailure> {
    let io = |what: &str, e: io::Error| UnpackFailure::Io(Error::new(format!("{what}: {e}")));
    let mut table = vec![0u8; manifest.table_len() as usize];
    body.read_exact_at(&mut table, body_start)
        .map_err(|e| io("cannot read frame table", e))?;
    let unpacker = Unpacker::new(key, manifest, &mut table, Cells::Sealed)
        .map_err(|_| UnpackFailure::Table)?;
    let body = body
        .try_clone()
        .map_err(|e| io("cannot reopen the archive", e))?;
    let output = PlainOutput::create(work_dir, manifest).map_err(UnpackFailure::Io)?;
    let done = vec![false; manifest.frame_count as usize];
    let mut unpack = FrameUnpack::new(
        body,
        body_start,
        unpacker,
        manifest.clone(),
        output,
        done,
        out,
    )
    .map_err(UnpackFailure::Io)?;
    unpack.punch = false; // an archive, not a partial file
    let mut bad = Vec::new();
    let mut result = Ok(());
    for frame in 0..manifest.frame_count {
        match unpack.frame(frame, None, Cells::Sealed) {
            Ok(Some(FrameOutcome::Bad(range))) => bad.push(range),
            Ok(Some(FrameOutcome::AllIn)) => result = unpack.finish(),
            Ok(None) => {}
            Err(e) => result = Err(e),
        }
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() && !bad.is_empty() {
        result = Err(UnpackFailure::Frames(bad));
    }
    match result {
        Ok(()) => Ok(unpack.target),
        Err(e) => {
            let _ = fs::remove_file(&unpack.output.path);
            Err(e)
        }
    }
}

/// Gives the unpacked `file` (at `tmp`) the original's mode and mtime, syncs it and
/// renames it to `target` (never over an existing file unless `replace`), then
/// syncs the directory.
fn finish_delivery(
    file: &File,
    tmp: &Path,
    target: &Path,
    manifest: &Manifest,
    replace: bool,
) -> std::result::Result<(), UnpackFailure> {
    let finish = || -> io::Result<()> {
        file.set_permissions(fs::Permissions::from_mode(manifest.mode & 0o777))?;
        let mtime = if manifest.mtime_secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::new(manifest.mtime_secs as u64, manifest.mtime_nanos)
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(manifest.mtime_secs.unsigned_abs())
        };
        file.set_times(FileTimes::new().set_modified(mtime))?;
        file.sync_all()?;
        if replace {
            fs::rename(tmp, target)
        } else {
            rename_no_replace(tmp, target)
        }
    };
    finish().map_err(|e| {
        UnpackFailure::Io(Error::new(format!(
            "cannot finish {}: {e}",
            target.display()
        )))
    })?;
    if let Some(dir) = target.parent() {
        crate::archive_file::sync_dir(dir);
    }
    Ok(())
}

/// Renames `from` to `to` unless `to` exists, atomically (renameat2 RENAME_NOREPLACE).
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::AlreadyExists {
            return Err(io::Error::new(
                e.kind(),
                "it appeared meanwhile; keeping it (--no-clobber)",
            ));
        }
        Err(e)
    }
}

/// What a frame worker reports to the receive loop.
#[derive(Debug)]
pub enum FrameReport {
    /// This frame is verified and in the output; its buffer comes back.
    Opened(u32, Option<FrameBuffer>),
    /// This frame failed to verify: the packets of this body range must come
    /// again; its buffer comes back.
    Bad(u32, Range<u64>, Option<FrameBuffer>),
    /// Every frame verified, the whole matched its digest, and the file is in place.
    Delivered(PathBuf),
    /// The file could not be delivered.
    Failed(UnpackFailure),
}

/// Verifies, decrypts and unpacks each frame on its own thread as soon as the receive
/// loop says it is whole, writing it at its place in the output; once every frame
/// is in and the digest matches, delivers the file atomically. Dropping it stops
/// the thread at the next frame.
pub struct FrameWorker {
    jobs: mpsc::Sender<(u32, FrameSource)>,
    cancelled: Arc<AtomicBool>,
}

impl FrameWorker {
    /// Starts a worker for the partial file `body` and the output `output`, whose
    /// frames in `done` are there already; `report` is called on the worker thread.
    /// It waits `delay` before each frame (a testing aid; zero in use).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        body: File,
        output: PlainOutput,
        done: Vec<bool>,
        unpacker: Unpacker,
        manifest: Manifest,
        out: &OutputDir,
        delay: Duration,
        report: impl Fn(FrameReport) + Send + 'static,
    ) -> Result<Self> {
        let mut unpack = FrameUnpack::new(body, 0, unpacker, manifest, output, done, out)?;
        let (jobs, rx) = mpsc::channel::<(u32, FrameSource)>();
        let cancelled = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancelled);
        std::thread::Builder::new()
            .name(format!("frames {}", unpack.manifest.name))
            .spawn(move || {
                // Frames a stopped run left in the output count for the digest now.
                let mut outcome = unpack.catch_up();
                let mut jobs = rx.into_iter();
                loop {
                    match outcome {
                        Ok(None) => {}
                        Ok(Some(FrameOutcome::AllIn)) => {
                            let result = unpack.finish();
                            let delivered = result.is_ok();
                            report(match result {
                                Ok(()) => FrameReport::Delivered(unpack.target.clone()),
                                Err(e) => FrameReport::Failed(e),
                            });
                            if !delivered {
                                let _ = fs::remove_file(&unpack.output.path);
                            }
                            return;
                        }
                        Ok(Some(FrameOutcome::Bad(_))) => unreachable!("reported with its buffer"),
                        Err(e) => {
                            // The output stays for a resume; the run ends.
                            report(FrameReport::Failed(e));
                            return;
                        }
                    }
                    let Some((frame, source)) = jobs.next() else {
                        return;
                    };
                    std::thread::sleep(delay);
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    // A receiver stores cells opened as they came, joined in
                    // memory and at their places on disk (spec §5).
                    let (mut buffer, cells) = match source {
                        FrameSource::Memory(b) => (Some(b), Cells::Joined),
                        FrameSource::Disk => (None, Cells::Opened),
                    };
                    outcome = match unpack.frame(frame, buffer.as_mut(), cells) {
                        Ok(Some(FrameOutcome::Bad(range))) => {
                            report(FrameReport::Bad(frame, range, buffer));
                            Ok(None)
                        }
                        Ok(done) => {
                            report(FrameReport::Opened(frame, buffer));
                            Ok(done)
                        }
                        Err(e) => Err(e),
                    };
                }
            })
            .context(|| "cannot start the frame worker thread".into())?;
        Ok(Self { jobs, cancelled })
    }

    /// Queues `frame`, whose packets are all held, in memory or in the partial file.
    pub fn submit(&self, frame: u32, source: FrameSource) {
        let _ = self.jobs.send((frame, source));
    }
}

impl Drop for FrameWorker {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

enum FrameOutcome {
    Bad(Range<u64>),
    AllIn,
}

/// Unpacking one body: which frames are in the output, and the in-order digest.
struct FrameUnpack {
    body: File,
    /// Where the body starts in `body` (0 in a partial file; after the header and
    /// manifest in an archive).
    body_start: u64,
    /// Punch frames out of `body` once opened (a partial file: the space and the
    /// dirty pages go at once).
    punch: bool,
    output: PlainOutput,
    /// The final name.
    target: PathBuf,
    /// May the final rename replace an existing file.
    replace: bool,
    /// Taken by `finish`.
    unpacker: Option<Unpacker>,
    done: Vec<bool>,
    remaining: u32,
    manifest: Manifest,
    /// A frame's cells read from `body`.
    cells: FrameBuffer,
    /// Decompressed plaintext, and plaintext read back for the digest.
    plain: FrameBuffer,
}

impl FrameUnpack {
    /// Prepares to unpack into `output` and then `out/<name>`; frames in `done`
    /// are in `output` already. Refuses a name that is not one safe path component.
    fn new(
        body: File,
        body_start: u64,
        unpacker: Unpacker,
        manifest: Manifest,
        output: PlainOutput,
        done: Vec<bool>,
        out: &OutputDir,
    ) -> Result<Self> {
        loopcast_proto::manifest::check_name(&manifest.name)
            .map_err(|why| Error::new(format!("refusing file name {:?}: {why}", manifest.name)))?;
        let largest = unpacker
            .frame_ranges()
            .iter()
            .map(|r| r.end - r.start)
            .max()
            .unwrap_or(0) as usize;
        Ok(Self {
            body,
            body_start,
            punch: true,
            output,
            target: out.path.join(&manifest.name),
            replace: out.replace,
            unpacker: Some(unpacker),
            remaining: done.iter().filter(|d| !**d).count() as u32,
            done,
            cells: FrameBuffer::new(largest),
            plain: FrameBuffer::new(manifest.frame_size as usize),
            manifest,
        })
    }

    fn io(what: &str, e: io::Error) -> UnpackFailure {
        UnpackFailure::Io(Error::new(format!("{what}: {e}")))
    }

    /// Plain bytes of frame `index` in the output.
    fn plain_range(manifest: &Manifest, index: u32) -> Range<u64> {
        let start = index as u64 * manifest.frame_size as u64;
        start..(start + manifest.frame_size as u64).min(manifest.original_size)
    }

    /// Opens frame `index` from `buffer` (in memory) or from the body, its cells
    /// in the state `cells` says, and writes it to the output.
    fn frame(
        &mut self,
        index: u32,
        buffer: Option<&mut FrameBuffer>,
        cells: Cells,
    ) -> std::result::Result<Option<FrameOutcome>, UnpackFailure> {
        let unpacker = self.unpacker.as_mut().expect("frames come before finish");
        if self.done.get(index as usize) != Some(&false) {
            return self.catch_up();
        }
        let range = unpacker.frame_ranges()[index as usize].clone();
        let len = (range.end - range.start) as usize;
        let from_disk = buffer.is_none();
        let bytes = match buffer {
            Some(b) => b.cells_mut(len),
            None => {
                let bytes = self.cells.cells_mut(len);
                self.body
                    .read_exact_at(bytes, self.body_start + range.start)
                    .map_err(|e| Self::io("cannot read frame", e))?;
                bytes
            }
        };
        let scratch = self.plain.aligned_mut(self.manifest.frame_size as usize);
        let opened = unpacker.open_in_place(index, bytes, scratch, cells);
        let at = Self::plain_range(&self.manifest, index).start;
        let written = match &opened {
            Ok(plain) => Some(self.output.write_at(plain, at)),
            Err(_) => None,
        };
        if from_disk && self.punch {
            punch_hole(&self.body, self.body_start + range.start, len as u64);
        }
        match (opened, written) {
            (Err(e), _) => {
                log::warn!(
                    "frame {index} of {}: {e}; receiving its packets again",
                    self.manifest.name
                );
                return Ok(Some(FrameOutcome::Bad(range)));
            }
            (_, Some(Err(e))) => return Err(Self::io("cannot write output", e)),
            _ => {}
        }
        self.done[index as usize] = true;
        self.remaining -= 1;
        self.catch_up()
    }

    /// Feeds the digest the frames in the output it still needs (opened ahead of
    /// their turn when it hashes in order, or left by a stopped run), read back;
    /// AllIn when every frame is in.
    fn catch_up(&mut self) -> std::result::Result<Option<FrameOutcome>, UnpackFailure> {
        let Some(unpacker) = self.unpacker.as_mut() else {
            return Ok(None);
        };
        while let Some(index) = unpacker.wanted(&self.done) {
            let r = Self::plain_range(&self.manifest, index);
            let plain = self.plain.aligned_mut((r.end - r.start) as usize);
            self.output
                .file
                .read_exact_at(plain, r.start)
                .map_err(|e| Self::io("cannot read back output", e))?;
            unpacker.hash_frame(index, plain);
        }
        Ok((self.remaining == 0).then_some(FrameOutcome::AllIn))
    }

    fn finish(&mut self) -> std::result::Result<(), UnpackFailure> {
        let unpacker = self.unpacker.take().expect("finish runs once");
        unpacker.finish().map_err(|e| match e {
            UnpackError::Table => UnpackFailure::Table,
            UnpackError::Digest => UnpackFailure::Digest,
        })?;
        finish_delivery(
            &self.output.file,
            &self.output.path,
            &self.target,
            &self.manifest,
            self.replace,
        )
    }
}

/// Frees `len` bytes of `file` at `at` (their dirty pages are dropped, never
/// written back); a file system that cannot is left as it is.
fn punch_hole(file: &File, at: u64, len: u64) {
    // SAFETY: fallocate on a valid, open file descriptor.
    let rc = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(file),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            at as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        log::debug!("cannot punch a hole: {}", io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_no_replace_rename_keeps_an_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("new"), dir.path().join("old"));
        fs::write(&from, b"new").unwrap();
        fs::write(&to, b"old").unwrap();
        let e = rename_no_replace(&from, &to).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&to).unwrap(), b"old");
        fs::remove_file(&to).unwrap();
        rename_no_replace(&from, &to).unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"new");
        assert!(!from.exists());
    }

    #[test]
    fn check_free_refuses_only_without_replace() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"x").unwrap();
        assert!(OutputDir::replacing(dir.path()).check_free("f").is_ok());
        let keep = OutputDir {
            path: dir.path().to_path_buf(),
            replace: false,
        };
        assert!(keep.check_free("f").is_err());
        assert!(keep.check_free("g").is_ok());
    }
}
