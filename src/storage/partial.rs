//! The partial file of one reception: payloads written at their offsets, and its
//! received map saved beside it (synced data first, then the map, renamed into place).

use super::persister::{Job, Persister};
use super::private::{create_private, open_private, read_private};
use crate::error::{Context, Result};
use loopcast_proto::{Manifest, ReceivedMap, ResumePoint};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Most payloads one vectored write takes (the kernel's IOV_MAX).
const MAX_IOVECS: usize = 1024;
const MAP_MAGIC: [u8; 8] = *b"LCMAP001";
const MAP_HEADER_LEN: usize = 8 + 8 + 2 + 4 + 8;

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
        let resumed = read_private(&map_path).and_then(|bytes| decode_map(&bytes, manifest));
        let file = open_private(&body_path)?;
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
pub(super) fn save(body: &File, map_path: &Path, map: &[u8]) -> Result<()> {
    body.sync_data()
        .context(|| format!("cannot sync the partial file for {}", map_path.display()))?;
    let tmp = map_path.with_extension("map.tmp");
    let write = || -> io::Result<()> {
        let mut f = create_private(&tmp)?;
        f.write_all(map)?;
        f.sync_data()?;
        fs::rename(&tmp, map_path)
    };
    write().context(|| format!("cannot save {}", map_path.display()))
}

pub(super) fn preallocate(file: &File, len: u64) -> io::Result<()> {
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
        let file = fs::OpenOptions::new()
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
        let key = loopcast_proto::MasterKey::from_bytes([3; 32]);
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
