//! Unpacking a body into the original file: frame by frame as they arrive (the
//! frame worker) or all at once (`loopcast unpack`), one path for both; then the
//! atomic delivery under the final name.

use super::UnpackFailure;
use super::partial::preallocate;
use super::private::{UNPACKING_SUFFIX, create_private};
use crate::error::{Context, Error, Result};
use loopcast_proto::archive::{UnpackError, Unpacker};
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
    let unpacker = Unpacker::new(key, manifest, &table).map_err(|_| UnpackFailure::Table)?;
    let body = body
        .try_clone()
        .map_err(|e| io("cannot reopen the archive", e))?;
    let mut unpack = FrameUnpack::new(body, body_start, unpacker, manifest.clone(), work_dir, out)
        .map_err(UnpackFailure::Io)?;
    let mut bad = Vec::new();
    let mut result = Ok(());
    for frame in 0..manifest.frame_count {
        match unpack.frame(frame) {
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
            let _ = fs::remove_file(&unpack.tmp);
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
    /// This frame failed to verify: the packets of this body range must come again.
    Bad(u32, Range<u64>),
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
    jobs: mpsc::Sender<u32>,
    cancelled: Arc<AtomicBool>,
}

impl FrameWorker {
    /// Starts a worker reading sealed frames from `body` (the partial file); `report`
    /// is called on the worker thread.
    pub fn start(
        body: File,
        unpacker: Unpacker,
        manifest: Manifest,
        work_dir: &Path,
        out: &OutputDir,
        report: impl Fn(FrameReport) + Send + 'static,
    ) -> Result<Self> {
        let mut unpack = FrameUnpack::new(body, 0, unpacker, manifest, work_dir, out)?;
        let (jobs, rx) = mpsc::channel::<u32>();
        let cancelled = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancelled);
        std::thread::Builder::new()
            .name(format!("frames {}", unpack.manifest.name))
            .spawn(move || {
                for frame in rx {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    match unpack.frame(frame) {
                        Ok(None) => {}
                        Ok(Some(FrameOutcome::Bad(range))) => {
                            report(FrameReport::Bad(frame, range))
                        }
                        Ok(Some(FrameOutcome::AllIn)) => {
                            let result = unpack.finish();
                            let delivered = result.is_ok();
                            report(match result {
                                Ok(()) => FrameReport::Delivered(unpack.target.clone()),
                                Err(e) => FrameReport::Failed(e),
                            });
                            if delivered {
                                return; // renamed into place: nothing left behind
                            }
                            break;
                        }
                        Err(e) => {
                            report(FrameReport::Failed(e));
                            break;
                        }
                    }
                }
                // Stopped, cancelled or failed: no plaintext is left behind.
                let _ = fs::remove_file(&unpack.tmp);
            })
            .context(|| "cannot start the frame worker thread".into())?;
        Ok(Self { jobs, cancelled })
    }

    /// Queues `frame`, whose packets are all written to the body file.
    pub fn submit(&self, frame: u32) {
        let _ = self.jobs.send(frame);
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
    output: File,
    /// The output while it is written, and its final name.
    tmp: PathBuf,
    target: PathBuf,
    /// May the final rename replace an existing file.
    replace: bool,
    /// Taken by `finish`.
    unpacker: Option<Unpacker>,
    done: Vec<bool>,
    remaining: u32,
    manifest: Manifest,
    /// The frame being opened, as read from the body.
    sealed: Vec<u8>,
}

impl FrameUnpack {
    /// Prepares to unpack into `out/<name>`, through a preallocated temporary
    /// file in `work_dir`; refuses a name that is not one safe path component.
    fn new(
        body: File,
        body_start: u64,
        unpacker: Unpacker,
        manifest: Manifest,
        work_dir: &Path,
        out: &OutputDir,
    ) -> Result<Self> {
        loopcast_proto::manifest::check_name(&manifest.name)
            .map_err(|why| Error::new(format!("refusing file name {:?}: {why}", manifest.name)))?;
        let tmp = work_dir.join(format!(
            "{}.{:016x}{UNPACKING_SUFFIX}",
            manifest.name, manifest.archive_id
        ));
        // Plaintext: 0600 until the final rename gives it the file's mode.
        let output = create_private(&tmp).context(|| format!("cannot create {}", tmp.display()))?;
        preallocate(&output, manifest.original_size).context(|| {
            format!(
                "cannot allocate {} bytes for {}",
                manifest.original_size,
                tmp.display()
            )
        })?;
        Ok(Self {
            body,
            body_start,
            output,
            tmp,
            target: out.path.join(&manifest.name),
            replace: out.replace,
            unpacker: Some(unpacker),
            done: vec![false; manifest.frame_count as usize],
            remaining: manifest.frame_count,
            manifest,
            sealed: Vec::new(),
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

    fn frame(&mut self, index: u32) -> std::result::Result<Option<FrameOutcome>, UnpackFailure> {
        let unpacker = self.unpacker.as_mut().expect("frames come before finish");
        if self.done.get(index as usize) != Some(&false) {
            return Ok(None);
        }
        let range = unpacker.frame_ranges()[index as usize].clone();
        // One buffer for every frame: no allocation and zeroing per frame.
        self.sealed.resize((range.end - range.start) as usize, 0);
        self.body
            .read_exact_at(&mut self.sealed, self.body_start + range.start)
            .map_err(|e| Self::io("cannot read frame", e))?;
        let plain = match unpacker.open(index, &self.sealed) {
            Ok(plain) => plain,
            Err(e) => {
                log::warn!(
                    "frame {index} of {}: {e}; receiving its packets again",
                    self.manifest.name
                );
                return Ok(Some(FrameOutcome::Bad(range)));
            }
        };
        let at = Self::plain_range(&self.manifest, index).start;
        self.output
            .write_all_at(&plain, at)
            .map_err(|e| Self::io("cannot write output", e))?;
        self.done[index as usize] = true;
        self.remaining -= 1;
        // Frames opened ahead of the digest are read back once their turn comes.
        while (unpacker.next_to_hash() as usize) < self.done.len()
            && self.done[unpacker.next_to_hash() as usize]
        {
            let r = Self::plain_range(&self.manifest, unpacker.next_to_hash());
            let mut plain = vec![0u8; (r.end - r.start) as usize];
            self.output
                .read_exact_at(&mut plain, r.start)
                .map_err(|e| Self::io("cannot read back output", e))?;
            unpacker.hash_next(&plain);
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
            &self.output,
            &self.tmp,
            &self.target,
            &self.manifest,
            self.replace,
        )
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
