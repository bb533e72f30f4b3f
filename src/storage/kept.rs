//! An archive kept as it came (`recv --keep-archive DIR`, spec §5): the sealed
//! cells of every DATA packet whose cells opened are written at their place in
//! `DIR/.loopcast-partial/NAME.kept` (the server's archive file: magic, manifest,
//! body), synced with each save of the received map, and renamed to
//! `DIR/NAME.lcar` once the file is delivered. Nothing is read back.

use super::private::{open_private, partial_dir};
use super::vectored::write_runs;
use crate::archive_file::sync_dir;
use crate::error::{Context, Error, Result};
use loopcast_proto::archive::{ARCHIVE_HEADER_LEN, encode_archive_header};
use loopcast_proto::{Manifest, MasterKey};
use std::fs::{self, File};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What a keeping receiver tells a relay's server in the same process
/// (`loopcast relay`): where each kept archive is, and what of it is written.
#[derive(Debug, Clone)]
pub enum RelayNews {
    /// The archive `archive_id` is kept at `path` (header and manifest written,
    /// its body sparse until its cells come).
    Opened {
        /// The archive.
        archive_id: u64,
        /// Its file name.
        name: String,
        /// The kept file.
        path: PathBuf,
    },
    /// These body ranges of `archive_id` are written as they came.
    Held {
        /// The archive.
        archive_id: u64,
        /// Body byte ranges.
        ranges: Vec<Range<u64>>,
    },
}

/// Suffix of an archive being kept, in the keep directory's partial directory.
pub const KEPT_SUFFIX: &str = ".kept";

/// One archive being kept as it arrives.
pub struct KeptArchive {
    file: File,
    path: PathBuf,
    /// Where it goes once the file is delivered.
    target: PathBuf,
    /// Archive-file offset of the body's first byte.
    body_start: u64,
}

impl KeptArchive {
    /// Opens (or starts) the kept archive of `manifest` in `dir`. Also returns
    /// whether it already held this archive (same header and manifest, full
    /// length): a resume may then keep what it claims, else it must start over.
    pub fn open(dir: &Path, manifest: &Manifest, key: &MasterKey) -> Result<(Self, bool)> {
        let work = partial_dir(dir)?;
        let path = work.join(format!("{}{KEPT_SUFFIX}", manifest.name));
        let file = open_private(&path)?;
        let head = archive_head(manifest, key);
        let body_start = head.len() as u64;
        let len = body_start + manifest.body_len;
        let mut held = vec![0u8; head.len()];
        let same = file.metadata().is_ok_and(|m| m.len() == len)
            && file.read_exact_at(&mut held, 0).is_ok()
            && held == head;
        let kept = Self {
            target: dir.join(format!("{}.lcar", manifest.name)),
            file,
            path,
            body_start,
        };
        if !same {
            let write_err = |e| Error::new(format!("cannot write {}: {e}", kept.path.display()));
            kept.file.set_len(0).map_err(write_err)?;
            let have = super::free_bytes(&work).unwrap_or(u64::MAX);
            if have < len {
                return Err(Error::with_code(
                    format!(
                        "{}: keeping its archive needs {} MiB in {}, and {} MiB are free",
                        manifest.name,
                        len.div_ceil(1 << 20),
                        dir.display(),
                        have >> 20
                    ),
                    crate::error::EXIT_NO_ROOM,
                ));
            }
            // Sparse until the cells come.
            kept.file.set_len(len).map_err(write_err)?;
            kept.file.write_all_at(&head, 0).map_err(write_err)?;
        }
        Ok((kept, same))
    }

    /// Writes sealed payloads (body offset, bytes as they came) at their places.
    pub fn write(&self, payloads: &[(u64, &[u8])]) -> Result<()> {
        write_runs(&self.file, payloads, self.body_start)
            .context(|| format!("cannot write {}", self.path.display()))
    }

    /// Where the archive is being kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle on the file, for a save to sync before the map claims its bytes.
    pub fn handle(&self) -> Result<File> {
        self.file
            .try_clone()
            .context(|| format!("cannot reopen {}", self.path.display()))
    }

    /// The file is delivered: the archive, whole, is synced and renamed into
    /// place (replacing one of that name). Returns where it is.
    pub fn finish(self) -> Result<PathBuf> {
        self.file
            .sync_all()
            .context(|| format!("cannot sync {}", self.path.display()))?;
        fs::rename(&self.path, &self.target).context(|| {
            format!(
                "cannot rename {} to {}",
                self.path.display(),
                self.target.display()
            )
        })?;
        if let Some(dir) = self.target.parent() {
            sync_dir(dir);
        }
        Ok(self.target)
    }
}

/// The archive file's bytes before its body: magic and manifest length, then the
/// manifest as `pack` wrote it (one cell per packet: a server signs its own
/// payload size, so the receiver's copy says the packer's again).
fn archive_head(manifest: &Manifest, key: &MasterKey) -> Vec<u8> {
    let packed = Manifest {
        payload_size: manifest.cell_size,
        ..manifest.clone()
    };
    let bytes = packed.encode(&key.file_key(manifest.archive_id));
    let mut head = encode_archive_header(bytes.len()).to_vec();
    debug_assert_eq!(head.len(), ARCHIVE_HEADER_LEN);
    head.extend_from_slice(&bytes);
    head
}
