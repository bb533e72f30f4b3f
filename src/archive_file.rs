//! Archive files on disk: packing a plain file into one, opening one to serve, and
//! the server's cache of packed files.

use crate::error::{Context, Error, Result};
use loopcast_proto::archive::{self, FileMeta, Packer};
use loopcast_proto::keys::hex;
use loopcast_proto::manifest::ManifestError;
use loopcast_proto::{Manifest, MasterKey, PayloadSource};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How `pack` cuts and compresses.
#[derive(Debug, Clone, Copy)]
pub struct PackOptions {
    /// Bytes of original data per frame.
    pub frame_size: u32,
    /// zstd level.
    pub level: i32,
    /// Threads that compress frames (1: on the calling thread).
    pub threads: usize,
    /// Bytes of each sealed cell (`wire::cell_size_for_packet`).
    pub cell_size: u16,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            frame_size: archive::DEFAULT_FRAME_SIZE,
            level: 3,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cell_size: loopcast_proto::wire::cell_size_for_packet(
                loopcast_proto::wire::DEFAULT_PACKET_SIZE,
            ),
        }
    }
}

fn open_source(input: &Path) -> Result<(File, fs::Metadata, String)> {
    let file = File::open(input).context(|| format!("cannot open {}", input.display()))?;
    let meta = file
        .metadata()
        .context(|| format!("cannot stat {}", input.display()))?;
    if !meta.is_file() {
        return Err(Error::new(format!(
            "{} is not a regular file",
            input.display()
        )));
    }
    let name = input
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::new(format!("{}: file name is not valid UTF-8", input.display())))?
        .to_owned();
    loopcast_proto::manifest::check_name(&name)
        .map_err(|why| Error::new(format!("{}: {why}", input.display())))?;
    Ok((file, meta, name))
}

/// Packs `input` into an archive at `output` (written to a temporary file, synced, then renamed).
pub fn pack_file(
    input: &Path,
    output: &Path,
    key: &MasterKey,
    options: PackOptions,
) -> Result<Manifest> {
    let (mut source, meta, name) = open_source(input)?;
    let archive_id = rand::random::<u64>();
    let mut packer = Packer::new(
        key,
        archive_id,
        meta.len(),
        options.frame_size,
        options.level,
        options.cell_size,
    )
    .map_err(|e| Error::new(e.to_string()))?;
    let manifest_len = loopcast_proto::manifest::FIXED_LEN + name.len();
    let body_start = (archive::ARCHIVE_HEADER_LEN + manifest_len) as u64;
    let table_len = packer.table_region_len();

    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        output
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("archive"),
        std::process::id()
    ));
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .context(|| format!("cannot create {}", tmp.display()))?;
        let write_err = |e: io::Error| Error::new(format!("cannot write {}: {e}", tmp.display()));
        let mut writer = io::BufWriter::with_capacity(4 << 20, &mut out);
        writer
            .write_all(&vec![0u8; (body_start + table_len) as usize])
            .map_err(write_err)?;
        seal_frames(
            &mut packer,
            &mut source,
            &mut writer,
            options.threads,
            || {
                Error::new(format!(
                    "{} changed while it was being packed",
                    input.display()
                ))
            },
        )
        .map_err(|e| match e {
            SealError::Read(e) => e,
            SealError::Write(e) => write_err(e),
        })?;
        writer.flush().map_err(write_err)?;
        drop(writer);
        let after = source
            .metadata()
            .context(|| format!("cannot stat {}", input.display()))?;
        if source.read(&mut [0u8; 1]).map(|n| n != 0).unwrap_or(true)
            || after.len() != meta.len()
            || after.mtime() != meta.mtime()
            || after.mtime_nsec() != meta.mtime_nsec()
        {
            return Err(Error::new(format!(
                "{} changed while it was being packed",
                input.display()
            )));
        }
        let file_meta = FileMeta {
            name,
            mode: meta.permissions().mode() & 0o7777,
            mtime_secs: meta.mtime(),
            mtime_nanos: meta.mtime_nsec() as u32,
        };
        // One cell per packet; a server signs its own payload size again (as
        // many cells as its packets carry).
        let payload = options.cell_size;
        let (table, manifest, manifest_bytes) = packer
            .finish(file_meta, payload)
            .map_err(|e| Error::new(e.to_string()))?;
        debug_assert_eq!(manifest_bytes.len(), manifest_len);
        out.write_all_at(&archive::encode_archive_header(manifest_bytes.len()), 0)
            .map_err(write_err)?;
        out.write_all_at(&manifest_bytes, archive::ARCHIVE_HEADER_LEN as u64)
            .map_err(write_err)?;
        out.write_all_at(&table, body_start).map_err(write_err)?;
        out.sync_all().map_err(write_err)?;
        fs::rename(&tmp, output)
            .context(|| format!("cannot rename {} to {}", tmp.display(), output.display()))?;
        sync_dir(dir);
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Why sealing the frames stopped.
enum SealError {
    /// The source could not be read as far as it should (it changed).
    Read(Error),
    /// The archive could not be written.
    Write(io::Error),
}

/// Reads every frame of the source, in order, compresses them on `threads`
/// threads (with each frame's share of the content digest), then seals each
/// into its cells here, in order (a cell's index depends on the frames before
/// it; sealing runs at several GB/s, compression far slower), and writes them
/// to `out`. At most two frames per thread are in flight, so memory stays
/// bounded; one thread compresses in place.
fn seal_frames(
    packer: &mut Packer,
    source: &mut impl Read,
    out: &mut impl Write,
    threads: usize,
    changed: impl Fn() -> Error,
) -> std::result::Result<(), SealError> {
    // Frame buffers come back from the compressing threads and are used again:
    // fresh megabytes each time would cost page faults.
    let read = |source: &mut dyn Read, packer: &mut Packer, spare: Option<Vec<u8>>| {
        let mut plain = spare.unwrap_or_default();
        plain.resize(packer.next_frame_len(), 0);
        source
            .read_exact(&mut plain)
            .map_err(|_| SealError::Read(changed()))?;
        let compressor = packer
            .take_next(&plain)
            .map_err(|e| SealError::Read(Error::new(e.to_string())))?;
        Ok::<_, SealError>((compressor, plain))
    };
    let count = packer.frame_count();
    if threads <= 1 {
        for _ in 0..count {
            let (compressor, plain) = read(source, packer, None)?;
            let stored = compressor.compress(&plain);
            let cells = packer.seal_stored(&stored, compressor.digest_part(&plain));
            out.write_all(&cells).map_err(SealError::Write)?;
        }
        return Ok(());
    }
    let in_flight = 2 * threads;
    let (jobs_tx, jobs_rx) =
        std::sync::mpsc::sync_channel::<(archive::FrameCompressor, Vec<u8>)>(in_flight);
    let jobs_rx = std::sync::Mutex::new(jobs_rx);
    type Compressed = (archive::StoredFrame, Option<archive::FramePart>, Vec<u8>);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Compressed>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (jobs_rx, done_tx) = (&jobs_rx, done_tx.clone());
            scope.spawn(move || {
                loop {
                    let job = jobs_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok((compressor, plain))) = job else {
                        return;
                    };
                    let stored = compressor.compress(&plain);
                    let part = compressor.digest_part(&plain);
                    if done_tx.send((stored, part, plain)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // Frames come back in any order; they are sealed and written in order.
        let mut waiting = std::collections::BTreeMap::new();
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let (mut sent, mut written) = (0u32, 0u32);
        while written < count {
            if sent < count && sent - written < in_flight as u32 {
                let job = read(source, packer, spare.pop())?;
                if jobs_tx.send(job).is_err() {
                    break;
                }
                sent += 1;
                continue;
            }
            let Ok((stored, part, plain)) = done_rx.recv() else {
                break;
            };
            spare.push(plain);
            waiting.insert(stored.index, (stored, part));
            while let Some((stored, part)) = waiting.remove(&written) {
                let cells = packer.seal_stored(&stored, part);
                out.write_all(&cells).map_err(SealError::Write)?;
                written += 1;
            }
        }
        drop(jobs_tx);
        Ok(())
    })
}

/// Fsyncs a directory so a rename in it survives a crash (best effort).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// True if `path` starts with the archive magic.
pub fn is_archive(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 8];
    let mut f = File::open(path).context(|| format!("cannot open {}", path.display()))?;
    match f.read_exact(&mut magic) {
        // A v3 archive counts as one, so that opening it says to pack it again.
        Ok(()) => Ok(magic == archive::ARCHIVE_MAGIC || archive::is_v3_archive(&magic)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::new(format!("cannot read {}: {e}", path.display()))),
    }
}

/// An archive opened for serving: its verified manifest and positioned reads of its body.
pub struct ArchiveFile {
    file: File,
    body_start: u64,
    /// The manifest, verified with the server's key.
    pub manifest: Manifest,
}

impl ArchiveFile {
    /// Opens and verifies an archive: magic, manifest MAC against `key`, and length.
    pub fn open(path: &Path, key: &MasterKey) -> Result<Self> {
        let file = File::open(path).context(|| format!("cannot open {}", path.display()))?;
        let mut header = [0u8; archive::ARCHIVE_HEADER_LEN];
        let not_archive = || Error::new(format!("{} is not a loopcast archive", path.display()));
        file.read_exact_at(&mut header, 0)
            .map_err(|_| not_archive())?;
        if archive::is_v3_archive(&header) {
            return Err(Error::new(format!(
                "{} is a format v3 archive, which this loopcast no longer reads; \
                 pack its file again with `loopcast pack`",
                path.display()
            )));
        }
        let manifest_len = archive::decode_archive_header(&header).ok_or_else(not_archive)?;
        let mut bytes = vec![0u8; manifest_len];
        file.read_exact_at(&mut bytes, archive::ARCHIVE_HEADER_LEN as u64)
            .map_err(|_| Error::new(format!("{} is truncated", path.display())))?;
        let manifest = Manifest::decode(&bytes, key).map_err(|e| match e {
            ManifestError::WrongKey => Error::new(format!(
                "{} was packed with another key (its fingerprint {}, this key's {})",
                path.display(),
                Manifest::decode_unverified(&bytes)
                    .map(|m| hex(&m.key_fingerprint))
                    .unwrap_or_default(),
                hex(&key.fingerprint())
            )),
            _ => Error::new(format!("{} has a corrupt manifest", path.display())),
        })?;
        let body_start = (archive::ARCHIVE_HEADER_LEN + manifest_len) as u64;
        let len = file
            .metadata()
            .context(|| format!("cannot stat {}", path.display()))?
            .len();
        if len != body_start + manifest.body_len {
            return Err(Error::new(format!(
                "{} is {} bytes, its manifest says {}: truncated or damaged",
                path.display(),
                len,
                body_start + manifest.body_len
            )));
        }
        Ok(Self {
            file,
            body_start,
            manifest,
        })
    }
}

impl ArchiveFile {
    /// The open archive file (for unpacking it in place).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Offset of the body (frame table, then frames) within the file.
    pub fn body_start(&self) -> u64 {
        self.body_start
    }
}

impl PayloadSource for ArchiveFile {
    fn read_payload(&mut self, body_offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, self.body_start + body_offset)
    }
}

/// Returns an archive for `path`: the file itself if it is one, else a packed copy in
/// `cache_dir`, reused while the source (path, size, mtime, inode) and key are unchanged.
pub fn archive_for(
    path: &Path,
    key: &MasterKey,
    cache_dir: &Path,
    options: PackOptions,
) -> Result<PathBuf> {
    if is_archive(path)? {
        return Ok(path.to_owned());
    }
    let (_, meta, _) = open_source(path)?;
    let canonical =
        fs::canonicalize(path).context(|| format!("cannot resolve {}", path.display()))?;
    let mut id = blake3::Hasher::new();
    id.update(canonical.as_os_str().as_encoded_bytes());
    for v in [
        meta.len(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.ino(),
        meta.dev(),
        options.frame_size as u64,
        options.level as u64,
        options.cell_size as u64,
    ] {
        id.update(&v.to_be_bytes());
    }
    id.update(&key.fingerprint());
    let cached = cache_dir.join(format!("{}.lcar", &id.finalize().to_hex()[..32]));
    if cached.exists() && ArchiveFile::open(&cached, key).is_ok() {
        log::info!(
            "{}: reusing packed archive {}",
            path.display(),
            cached.display()
        );
        return Ok(cached);
    }
    fs::create_dir_all(cache_dir)
        .context(|| format!("cannot create cache directory {}", cache_dir.display()))?;
    log::info!("{}: packing into {}", path.display(), cached.display());
    pack_file(path, &cached, key, options)?;
    Ok(cached)
}

/// Default cache directory: $XDG_CACHE_HOME/loopcast, else ~/.cache/loopcast.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("loopcast")
}
