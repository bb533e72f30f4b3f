//! Receiver storage: the partial file written at packet offsets, its persisted
//! received map, unpacking a body into the original, and the atomic delivery.

use crate::error::{Context, Error, Result};
use loopcast_proto::archive::{UnpackError, Unpacker};
use loopcast_proto::{Manifest, MasterKey, ReceivedMap, ResumePoint};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime};

/// Folder inside the output directory that holds partial files and their maps.
pub const PARTIAL_DIR: &str = ".loopcast-partial";
/// Most payloads one vectored write takes (the kernel's IOV_MAX).
const MAX_IOVECS: usize = 1024;
const MAP_MAGIC: [u8; 8] = *b"LCMAP001";
const MAP_HEADER_LEN: usize = 8 + 8 + 2 + 4 + 8;

/// Why a body did not unpack.
#[derive(Debug)]
pub enum UnpackFailure {
    /// The frame table is damaged: its packets must come again.
    Table,
    /// These body ranges (whole frames) failed: their packets must come again.
    Frames(Vec<Range<u64>>),
    /// Every frame opened, yet the whole does not match the manifest digest.
    Digest,
    /// Reading the body or writing the output failed.
    Io(Error),
}

/// Unpacks the body stored in `body` from byte `body_start` into `out`, checking
/// every frame and the final digest. Bad frames are all reported, not just the first.
pub fn unpack_body(
    body: &File,
    body_start: u64,
    manifest: &Manifest,
    key: &MasterKey,
    out: &mut impl Write,
) -> std::result::Result<(), UnpackFailure> {
    let io_err = |what: &str, e: io::Error| UnpackFailure::Io(Error::new(format!("{what}: {e}")));
    let mut table = vec![0u8; manifest.table_len() as usize];
    body.read_exact_at(&mut table, body_start)
        .map_err(|e| io_err("cannot read frame table", e))?;
    let mut unpacker = Unpacker::new(key, manifest, &table).map_err(|_| UnpackFailure::Table)?;
    let ranges = unpacker.frame_ranges().to_vec();
    let mut bad = Vec::new();
    let mut sealed = Vec::new();
    for (index, range) in ranges.into_iter().enumerate() {
        sealed.resize((range.end - range.start) as usize, 0);
        body.read_exact_at(&mut sealed, body_start + range.start)
            .map_err(|e| io_err("cannot read frame", e))?;
        match unpacker.open(index as u32, &sealed) {
            Ok(plain) if bad.is_empty() => out
                .write_all(&plain)
                .map_err(|e| io_err("cannot write output", e))?,
            Ok(_) => {}
            Err(e) => {
                log::warn!(
                    "frame {index} of {}: {e}; receiving its packets again",
                    manifest.name
                );
                bad.push(range);
            }
        }
    }
    if !bad.is_empty() {
        return Err(UnpackFailure::Frames(bad));
    }
    out.flush().map_err(|e| io_err("cannot write output", e))?;
    unpacker.finish().map_err(|e| match e {
        UnpackError::Table => UnpackFailure::Table,
        UnpackError::Digest => UnpackFailure::Digest,
    })
}

/// Unpacks `body` into `dir/<manifest name>` atomically: a temporary file in
/// `work_dir`, synced, given the original's mode and mtime, then renamed.
pub fn deliver(
    body: &File,
    body_start: u64,
    manifest: &Manifest,
    key: &MasterKey,
    work_dir: &Path,
    dir: &Path,
) -> std::result::Result<PathBuf, UnpackFailure> {
    loopcast_proto::manifest::check_name(&manifest.name).map_err(|why| {
        UnpackFailure::Io(Error::new(format!(
            "refusing file name {:?}: {why}",
            manifest.name
        )))
    })?;
    let tmp = work_dir.join(format!("{}.unpacking", manifest.name));
    let target = dir.join(&manifest.name);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| {
                UnpackFailure::Io(Error::new(format!("cannot create {}: {e}", tmp.display())))
            })?;
        let mut writer = BufWriter::with_capacity(4 << 20, &file);
        unpack_body(body, body_start, manifest, key, &mut writer)?;
        drop(writer);
        finish_delivery(&file, &tmp, &target, manifest)?;
        crate::archive_file::sync_dir(dir);
        Ok(target.clone())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Gives the unpacked `file` (at `tmp`) the original's mode and mtime, syncs it and
/// renames it to `target`, then syncs the directory.
fn finish_delivery(
    file: &File,
    tmp: &Path,
    target: &Path,
    manifest: &Manifest,
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
        fs::rename(tmp, target)
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
        out_dir: &Path,
        report: impl Fn(FrameReport) + Send + 'static,
    ) -> Result<Self> {
        loopcast_proto::manifest::check_name(&manifest.name)
            .map_err(|why| Error::new(format!("refusing file name {:?}: {why}", manifest.name)))?;
        let tmp = work_dir.join(format!(
            "{}.{:016x}.unpacking",
            manifest.name, manifest.archive_id
        ));
        let target = out_dir.join(&manifest.name);
        let output = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .context(|| format!("cannot create {}", tmp.display()))?;
        preallocate(&output, manifest.original_size).context(|| {
            format!(
                "cannot allocate {} bytes for {}",
                manifest.original_size,
                tmp.display()
            )
        })?;
        let (jobs, rx) = mpsc::channel::<u32>();
        let cancelled = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancelled);
        std::thread::Builder::new()
            .name(format!("frames {}", manifest.name))
            .spawn(move || {
                let mut unpack = FrameUnpack {
                    body,
                    output,
                    unpacker: Some(unpacker),
                    done: vec![false; manifest.frame_count as usize],
                    remaining: manifest.frame_count,
                    manifest,
                    sealed: Vec::new(),
                };
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
                            let result = unpack.finish(&tmp, &target);
                            if result.is_err() {
                                let _ = fs::remove_file(&tmp);
                            }
                            report(match result {
                                Ok(()) => FrameReport::Delivered(target),
                                Err(e) => FrameReport::Failed(e),
                            });
                            break;
                        }
                        Err(e) => {
                            let _ = fs::remove_file(&tmp);
                            report(FrameReport::Failed(e));
                            break;
                        }
                    }
                }
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

/// The frame worker's state: which frames are in the output, and the in-order digest.
struct FrameUnpack {
    body: File,
    output: File,
    /// Taken by `finish`.
    unpacker: Option<Unpacker>,
    done: Vec<bool>,
    remaining: u32,
    manifest: Manifest,
    /// The frame being opened, as read from the body.
    sealed: Vec<u8>,
}

impl FrameUnpack {
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
            .read_exact_at(&mut self.sealed, range.start)
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

    fn finish(&mut self, tmp: &Path, target: &Path) -> std::result::Result<(), UnpackFailure> {
        let unpacker = self.unpacker.take().expect("finish runs once");
        unpacker.finish().map_err(|e| match e {
            UnpackError::Table => UnpackFailure::Table,
            UnpackError::Digest => UnpackFailure::Digest,
        })?;
        finish_delivery(&self.output, tmp, target, &self.manifest)
    }
}

/// A received map read back from disk, with where the loops stood when it was saved.
pub type SavedMap = (ReceivedMap, Option<ResumePoint>);

/// One file being received: its preallocated body file and persisted received map.
pub struct PartialFile {
    file: File,
    /// Set while a background save of this file is queued or running.
    saving: Arc<AtomicBool>,
    /// Where the body is written.
    pub body_path: PathBuf,
    map_path: PathBuf,
    manifest: Manifest,
}

impl PartialFile {
    /// Opens the partial file for `manifest` in `work_dir`; resumes the stored map if it
    /// belongs to the same archive and layout, else starts over with a fresh preallocated file.
    pub fn open(work_dir: &Path, manifest: &Manifest) -> Result<(Self, Option<SavedMap>)> {
        let body_path = work_dir.join(format!("{}.part", manifest.name));
        let map_path = work_dir.join(format!("{}.map", manifest.name));
        let resumed = fs::read(&map_path)
            .ok()
            .and_then(|bytes| decode_map(&bytes, manifest));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&body_path)
            .context(|| format!("cannot open {}", body_path.display()))?;
        let length_ok = file
            .metadata()
            .map(|m| m.len() == manifest.body_len)
            .unwrap_or(false);
        let resumed = resumed.filter(|_| length_ok);
        if resumed.is_none() {
            let _ = fs::remove_file(&map_path);
            file.set_len(0)
                .context(|| format!("cannot truncate {}", body_path.display()))?;
            preallocate(&file, manifest.body_len).context(|| {
                format!(
                    "cannot allocate {} bytes for {}",
                    manifest.body_len,
                    body_path.display()
                )
            })?;
        }
        Ok((
            Self {
                file,
                saving: Arc::new(AtomicBool::new(false)),
                body_path,
                map_path,
                manifest: manifest.clone(),
            },
            resumed,
        ))
    }

    /// Writes payloads (body offset, bytes) straight from the caller's receive
    /// buffers: one positioned vectored write per run of consecutive payloads, so
    /// the bytes are copied once, into the page cache.
    pub fn write_payloads(&self, payloads: &[(u64, &[u8])]) -> Result<()> {
        let mut rest = payloads;
        while let Some(&(start, _)) = rest.first() {
            let mut end = start;
            let run = rest
                .iter()
                .take(MAX_IOVECS)
                .take_while(|(offset, payload)| {
                    let next = *offset == end;
                    end += payload.len() as u64;
                    next
                })
                .count();
            write_vectored_at(&self.file, &rest[..run], start)
                .context(|| format!("cannot write {}", self.body_path.display()))?;
            rest = &rest[run..];
        }
        Ok(())
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
        let file = self.body()?;
        self.saving.store(true, Ordering::Release);
        persister.submit(Job::Save {
            file,
            map_path: self.map_path.clone(),
            map: encode_map(map, resume, &self.manifest),
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
        save(
            &self.file,
            &self.map_path,
            &encode_map(map, resume, &self.manifest),
        )
    }

    /// A second handle on the body file, for unpacking on another thread.
    pub fn body(&self) -> Result<File> {
        self.file
            .try_clone()
            .context(|| format!("cannot reopen {}", self.body_path.display()))
    }

    /// Removes the partial file and its map (after delivery), after any queued save.
    pub fn remove(self, persister: &Persister) {
        persister.submit(Job::Remove(vec![self.map_path, self.body_path]));
    }
}

/// `pwritev` of consecutive `payloads` at `offset`, resumed after short writes.
fn write_vectored_at(file: &File, payloads: &[(u64, &[u8])], offset: u64) -> io::Result<()> {
    let mut iovs: Vec<libc::iovec> = payloads
        .iter()
        .map(|(_, p)| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let (mut first, mut at) = (0, offset);
    while first < iovs.len() {
        let rest = &iovs[first..];
        // SAFETY: every iovec points into a payload the caller keeps alive for this call.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                rest.as_ptr(),
                rest.len() as libc::c_int,
                at as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // Skip what was written: whole iovecs, then part of the next.
        let mut written = n as usize;
        at += written as u64;
        while first < iovs.len() && written >= iovs[first].iov_len {
            written -= iovs[first].iov_len;
            first += 1;
        }
        if written > 0 {
            let iov = &mut iovs[first];
            // SAFETY: `written` is less than this iovec's length.
            iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(written) }.cast();
            iov.iov_len -= written;
        }
    }
    Ok(())
}

/// Syncs the body's data, then writes the map aside and renames it into place, so a
/// map never claims a packet whose bytes could be lost.
fn save(body: &File, map_path: &Path, map: &[u8]) -> Result<()> {
    body.sync_data()
        .context(|| format!("cannot sync the partial file for {}", map_path.display()))?;
    let tmp = map_path.with_extension("map.tmp");
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(map)?;
        f.sync_data()?;
        fs::rename(&tmp, map_path)
    };
    write().context(|| format!("cannot save {}", map_path.display()))
}

/// Work for the persister thread, done in order.
pub enum Job {
    /// Sync a body file and save its map.
    Save {
        /// Handle on the body file.
        file: File,
        /// Where the map goes.
        map_path: PathBuf,
        /// The encoded map.
        map: Vec<u8>,
        /// Cleared when the save is done.
        saving: Arc<AtomicBool>,
    },
    /// Remove these files.
    Remove(Vec<PathBuf>),
}

/// A thread that makes partial files durable, so `fdatasync` never stalls the receive loop.
pub struct Persister {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    error: Arc<Mutex<Option<Error>>>,
}

impl Persister {
    /// Starts the thread.
    pub fn new() -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let error = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&error);
        let thread = std::thread::Builder::new()
            .name("persister".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Save {
                            file,
                            map_path,
                            map,
                            saving,
                        } => {
                            if let Err(e) = save(&file, &map_path, &map) {
                                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            }
                            saving.store(false, Ordering::Release);
                        }
                        Job::Remove(paths) => paths.iter().for_each(|p| {
                            let _ = fs::remove_file(p);
                        }),
                    }
                }
            })
            .context(|| "cannot start the persister thread".into())?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            error,
        })
    }

    fn submit(&self, job: Job) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }

    /// The first error a background save hit, if any.
    pub fn take_error(&self) -> Option<Error> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Finishes all queued work and stops the thread.
    pub fn wait_idle(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.wait_idle();
    }
}

fn preallocate(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: posix_fallocate on a valid, open file descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate support: fall back to a sparse file.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Encodes a received map with the layout it belongs to, where the loops stood
/// (`ResumePoint`, after the map; maps saved before it was added end without it)
/// and a CRC32.
pub fn encode_map(map: &ReceivedMap, resume: &ResumePoint, manifest: &Manifest) -> Vec<u8> {
    let mut out = encode_map_header(manifest);
    out.extend_from_slice(&map.to_bytes());
    out.extend_from_slice(&resume.encode());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// The part of a saved map that names the archive and layout.
fn encode_map_header(manifest: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAP_HEADER_LEN + manifest.packet_count() as usize / 8 + 128);
    out.extend_from_slice(&MAP_MAGIC);
    out.extend_from_slice(&manifest.archive_id.to_be_bytes());
    out.extend_from_slice(&manifest.payload_size.to_be_bytes());
    out.extend_from_slice(&manifest.packet_count().to_be_bytes());
    out.extend_from_slice(&manifest.body_len.to_be_bytes());
    out
}

/// Decodes a persisted map; None unless it is intact and belongs to `manifest`'s
/// layout. The resume point is None in a map saved without one.
pub fn decode_map(bytes: &[u8], manifest: &Manifest) -> Option<SavedMap> {
    let (content, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(content).to_be_bytes() != crc
        || content.len() < MAP_HEADER_LEN
        || content[..MAP_HEADER_LEN] != encode_map_header(manifest)[..]
    {
        return None; // damaged, or another archive, payload size or length
    }
    let body = &content[MAP_HEADER_LEN..];
    let (map, resume) = body.split_at_checked((manifest.packet_count() as usize).div_ceil(8))?;
    let map = ReceivedMap::from_bytes(manifest.packet_count(), map)?;
    Some((map, ResumePoint::decode(resume)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_vectored_write_puts_every_payload_at_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("v"))
            .unwrap();
        // 1000 payloads of 1 to 7 bytes, consecutive from offset 5.
        let payloads: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| vec![(i % 251) as u8; 1 + (i % 7) as usize])
            .collect();
        let mut at = 5u64;
        let runs: Vec<(u64, &[u8])> = payloads
            .iter()
            .map(|p| {
                let run = (at, p.as_slice());
                at += p.len() as u64;
                run
            })
            .collect();
        write_vectored_at(&file, &runs, 5).unwrap();
        let mut expected = vec![0u8; 5];
        payloads.iter().for_each(|p| expected.extend(p));
        assert_eq!(fs::read(dir.path().join("v")).unwrap(), expected);
    }

    #[test]
    fn a_saved_map_keeps_its_resume_point_and_old_maps_still_load() {
        let key = MasterKey::from_bytes([3; 32]);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let (manifest, _, _) =
            loopcast_proto::sim::pack(&key, &[7u8; 50_000], 1 << 16, 1000, &mut rng);
        let mut map = ReceivedMap::new(manifest.packet_count());
        map.insert_range(0..17);
        let point = ResumePoint {
            session_id: 9,
            tracks: vec![loopcast_proto::receiver::SavedTrack {
                track: 0,
                join: 0,
                position: 16,
                advanced: 16,
            }],
        };
        let bytes = encode_map(&map, &point, &manifest);
        assert_eq!(
            decode_map(&bytes, &manifest),
            Some((map.clone(), Some(point)))
        );
        // A map saved before resume points: header, bits, CRC.
        let mut old = encode_map_header(&manifest);
        old.extend_from_slice(&map.to_bytes());
        let crc = crc32fast::hash(&old);
        old.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(decode_map(&old, &manifest), Some((map, None)));
        let mut damaged = bytes.clone();
        damaged[MAP_HEADER_LEN] ^= 1;
        assert_eq!(decode_map(&damaged, &manifest), None);
    }
}
