//! Receiver storage: the partial file written at packet offsets, its persisted
//! received map, unpacking a body into the original, and the atomic delivery.

use crate::error::{Context, Error, Result};
use loopcast_proto::archive::{UnpackError, Unpacker};
use loopcast_proto::{Manifest, MasterKey, ReceivedMap};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Folder inside the output directory that holds partial files and their maps.
pub const PARTIAL_DIR: &str = ".loopcast-partial";
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
        let finish = || -> io::Result<()> {
            file.set_permissions(fs::Permissions::from_mode(manifest.mode & 0o777))?;
            let mtime = if manifest.mtime_secs >= 0 {
                SystemTime::UNIX_EPOCH
                    + Duration::new(manifest.mtime_secs as u64, manifest.mtime_nanos)
            } else {
                SystemTime::UNIX_EPOCH - Duration::from_secs(manifest.mtime_secs.unsigned_abs())
            };
            file.set_times(FileTimes::new().set_modified(mtime))?;
            file.sync_all()?;
            fs::rename(&tmp, &target)
        };
        finish().map_err(|e| {
            UnpackFailure::Io(Error::new(format!(
                "cannot finish {}: {e}",
                target.display()
            )))
        })?;
        crate::archive_file::sync_dir(dir);
        Ok(target.clone())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// One file being received: its preallocated body file and persisted received map.
pub struct PartialFile {
    file: File,
    /// Where the body is written.
    pub body_path: PathBuf,
    map_path: PathBuf,
    manifest: Manifest,
}

impl PartialFile {
    /// Opens the partial file for `manifest` in `work_dir`; resumes the stored map if it
    /// belongs to the same archive and layout, else starts over with a fresh preallocated file.
    pub fn open(work_dir: &Path, manifest: &Manifest) -> Result<(Self, Option<ReceivedMap>)> {
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
                body_path,
                map_path,
                manifest: manifest.clone(),
            },
            resumed,
        ))
    }

    /// Writes one payload at its body offset.
    pub fn write(&self, body_offset: u64, payload: &[u8]) -> Result<()> {
        self.file
            .write_all_at(payload, body_offset)
            .context(|| format!("cannot write {}", self.body_path.display()))
    }

    /// Makes what was written durable, then records `map` (written aside and renamed), so
    /// the map never claims a packet whose bytes might be lost.
    pub fn persist(&self, map: &ReceivedMap) -> Result<()> {
        self.file
            .sync_data()
            .context(|| format!("cannot sync {}", self.body_path.display()))?;
        let tmp = self.map_path.with_extension("map.tmp");
        let bytes = encode_map(map, &self.manifest);
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
            fs::rename(&tmp, &self.map_path)
        };
        write().context(|| format!("cannot save {}", self.map_path.display()))
    }

    /// A second handle on the body file, for unpacking on another thread.
    pub fn body(&self) -> Result<File> {
        self.file
            .try_clone()
            .context(|| format!("cannot reopen {}", self.body_path.display()))
    }

    /// Removes the partial file and its map (after delivery).
    pub fn remove(self) {
        let _ = fs::remove_file(&self.map_path);
        let _ = fs::remove_file(&self.body_path);
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

/// Encodes a received map with the layout it belongs to and a CRC32.
pub fn encode_map(map: &ReceivedMap, manifest: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAP_HEADER_LEN + map.len() as usize / 8 + 8);
    out.extend_from_slice(&MAP_MAGIC);
    out.extend_from_slice(&manifest.archive_id.to_be_bytes());
    out.extend_from_slice(&manifest.payload_size.to_be_bytes());
    out.extend_from_slice(&map.len().to_be_bytes());
    out.extend_from_slice(&manifest.body_len.to_be_bytes());
    out.extend_from_slice(&map.to_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes a persisted map; None unless it is intact and belongs to `manifest`'s layout.
pub fn decode_map(bytes: &[u8], manifest: &Manifest) -> Option<ReceivedMap> {
    let (content, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(content).to_be_bytes() != crc
        || content.len() < MAP_HEADER_LEN
        || content[..8] != MAP_MAGIC
    {
        return None;
    }
    let expected = encode_map(&ReceivedMap::new(manifest.packet_count()), manifest);
    if content[..MAP_HEADER_LEN] != expected[..MAP_HEADER_LEN] {
        return None; // another archive, payload size or length
    }
    ReceivedMap::from_bytes(manifest.packet_count(), &content[MAP_HEADER_LEN..])
}
