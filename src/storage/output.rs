//! The output being unpacked: a preallocated 0600 file in the partial directory,
//! written frame by frame at the frames' plaintext offsets, directly (O_DIRECT,
//! no copy into the page cache) where the file system allows, and kept across
//! runs so that a resumed reception does not unpack its frames again.

use super::frames::ALIGN;
use super::private::{UNPACKING_SUFFIX, create_private};
use crate::error::{Context, Result};
use loopcast_proto::Manifest;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The plaintext output of one reception, before its final rename.
pub struct PlainOutput {
    /// Buffered handle: unaligned writes, reads, sync, metadata.
    pub file: File,
    /// Direct handle for aligned writes (None where O_DIRECT is refused).
    direct: Option<File>,
    /// Where it is.
    pub path: PathBuf,
}

impl PlainOutput {
    /// Where the output of `manifest` is unpacked in `work_dir`.
    pub fn path(work_dir: &Path, manifest: &Manifest) -> PathBuf {
        work_dir.join(format!(
            "{}.{:016x}{UNPACKING_SUFFIX}",
            manifest.name, manifest.archive_id
        ))
    }

    /// A new output for `manifest`, preallocated (so a full disk shows now).
    pub fn create(work_dir: &Path, manifest: &Manifest) -> Result<Self> {
        let path = Self::path(work_dir, manifest);
        let file = create_private(&path).context(|| format!("cannot create {}", path.display()))?;
        preallocate(&file, manifest.original_size).context(|| {
            format!(
                "cannot allocate {} bytes for {}",
                manifest.original_size,
                path.display()
            )
        })?;
        Ok(Self::with_direct(file, path))
    }

    /// The output a stopped run left for `manifest`, if it is there, a regular
    /// file of the right length.
    pub fn reopen(work_dir: &Path, manifest: &Manifest) -> Option<Self> {
        let path = Self::path(work_dir, manifest);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .ok()?;
        let meta = file.metadata().ok()?;
        (meta.is_file() && meta.len() == manifest.original_size)
            .then(|| Self::with_direct(file, path))
    }

    fn with_direct(file: File, path: PathBuf) -> Self {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
            .open(&path)
            .ok();
        Self { file, direct, path }
    }

    /// A second handle, for the frame worker.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            direct: self.direct.as_ref().map(File::try_clone).transpose()?,
            path: self.path.clone(),
        })
    }

    /// Writes `plain` at `at`: the `ALIGN`ed part directly when it starts aligned
    /// in memory and in the file, the rest through the page cache.
    pub fn write_at(&mut self, plain: &[u8], at: u64) -> io::Result<()> {
        let aligned = plain.len() / ALIGN * ALIGN;
        let direct_ok = (plain.as_ptr() as usize).is_multiple_of(ALIGN)
            && at.is_multiple_of(ALIGN as u64)
            && aligned > 0;
        if let (true, Some(direct)) = (direct_ok, &self.direct) {
            match direct.write_all_at(&plain[..aligned], at) {
                Ok(()) => {
                    return self
                        .file
                        .write_all_at(&plain[aligned..], at + aligned as u64);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    log::debug!("{}: direct writes refused ({e})", self.path.display());
                    self.direct = None;
                }
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(plain, at)
    }

    /// Removes outputs of other archives of the same name left in `work_dir`.
    pub fn remove_others(work_dir: &Path, manifest: &Manifest) {
        let ours = Self::path(work_dir, manifest);
        let prefix = format!("{}.", manifest.name);
        let Ok(entries) = fs::read_dir(work_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(UNPACKING_SUFFIX));
            if id.is_some_and(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                && entry.path() != ours
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Reserves `len` bytes for `file` where the file system can do so without
/// writing them, so that a full disk shows now: the `fallocate` system call
/// (glibc's `posix_fallocate` would write zeros through the whole file where the
/// call is not supported). Not on tmpfs, where it clears every page at once: 0.23 s
/// per 512 MiB here, spent while the receiver is not reading its sockets, which
/// at 2 Gbit/s backed the frame worker up past the partial file's cap. The free
/// space was checked before; elsewhere the file is only sized (sparse).
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    if on_tmpfs(file) {
        return file.set_len(len);
    }
    // SAFETY: fallocate on a valid, open file descriptor; mode 0 reserves and sizes.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        // File systems without fallocate support: a sparse file.
        e if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => file.set_len(len),
        e => Err(e),
    }
}

/// True when `file` is on tmpfs (memory).
fn on_tmpfs(file: &File) -> bool {
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs on a valid descriptor fills `stat` when it returns 0.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), stat.as_mut_ptr()) };
    // SAFETY: filled, as rc == 0 says.
    rc == 0 && unsafe { stat.assume_init() }.f_type == libc::TMPFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preallocation_reserves_blocks_except_on_tmpfs() {
        use std::os::unix::fs::MetadataExt;
        let len = 8 << 20;
        for dir in ["/dev/shm", "/var/tmp"] {
            let Ok(dir) = tempfile::tempdir_in(dir) else {
                continue; // no /dev/shm here
            };
            let file = fs::File::create(dir.path().join("p")).unwrap();
            preallocate(&file, len).unwrap();
            let meta = file.metadata().unwrap();
            assert_eq!(meta.len(), len);
            let reserved = meta.blocks() * 512;
            if on_tmpfs(&file) {
                assert_eq!(reserved, 0, "sized only, in {dir:?}");
            } else {
                assert!(reserved >= len, "{reserved} reserved in {dir:?}");
            }
        }
    }
}
