//! The partial directory is ours: created 0700, checked for owner and type (never
//! a symlink), and everything in it opened without following symlinks and created
//! 0600, so that no other user can read plaintext or make us write through a link
//! (spec §8, threats T14 and T15).

use super::PARTIAL_DIR;
use crate::error::{Context, Error, Result};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Suffix of unpacked plaintext before its final rename.
pub const UNPACKING_SUFFIX: &str = ".unpacking";

/// Creates `out_dir` if needed and returns its partial directory, made ours
/// (`own_dir`): plaintext a stopped run left there, 0600, is kept for its resume.
pub fn partial_dir(out_dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(out_dir)
        .context(|| format!("cannot create output directory {}", out_dir.display()))?;
    let dir = out_dir.join(PARTIAL_DIR);
    own_dir(&dir)?;
    Ok(dir)
}

/// Removes what stopped runs left in `out_dir`'s partial directory for the
/// files `names` (their `.part`, `.map` and `.unpacking` files); returns the
/// bytes freed. Nothing outside the partial directory is touched, and unlink
/// follows no symlink.
pub fn discard_partial(out_dir: &Path, names: &[String]) -> Result<u64> {
    let dir = out_dir.join(PARTIAL_DIR);
    let entries = match fs::read_dir(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        other => other.context(|| format!("cannot list {}", dir.display()))?,
    };
    let ours = |file: &str| {
        names.iter().any(|name| {
            file.strip_prefix(name.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| {
                    rest == "part"
                        || rest == "map"
                        || rest.strip_suffix(&UNPACKING_SUFFIX[1..]).is_some_and(|id| {
                            id.len() == 17
                                && id.ends_with('.')
                                && id[..16].bytes().all(|b| b.is_ascii_hexdigit())
                        })
                })
        })
    };
    let mut freed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| ours(n)) else {
            continue;
        };
        let path = dir.join(name);
        let size = fs::symlink_metadata(&path).map_or(0, |m| m.blocks() * 512);
        fs::remove_file(&path).context(|| format!("cannot remove {}", path.display()))?;
        freed += size;
    }
    Ok(freed)
}

/// Makes `dir` a directory of ours: created 0700 (its parent must exist); an
/// existing one must be a real directory owned by this user, and is set to 0700.
pub fn own_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .context(|| format!("cannot create {}", dir.display()))?,
        Err(e) => return Err(Error::new(format!("cannot inspect {}: {e}", dir.display()))),
        Ok(meta) => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            if !meta.file_type().is_dir() || meta.uid() != me {
                return Err(Error::new(format!(
                    "{} is not a directory of ours (a symlink, another file type, or owned by uid {}); refusing to use it",
                    dir.display(),
                    meta.uid()
                )));
            }
            if meta.mode() & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .context(|| format!("cannot restrict {} to 0700", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// Opens `path` for reading and writing, creating it 0600 if missing; a symlink
/// (or anything but a regular file) there is removed first, never followed.
pub fn open_private(path: &Path) -> Result<File> {
    if let Ok(meta) = fs::symlink_metadata(path)
        && !meta.file_type().is_file()
    {
        log::warn!("{} was not a regular file; removing it", path.display());
        fs::remove_file(path).context(|| format!("cannot remove {}", path.display()))?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .context(|| format!("cannot open {}", path.display()))
}

/// Creates `path` anew, 0600, exclusively (whatever was there is removed first and
/// never followed).
pub fn create_private(path: &Path) -> io::Result<File> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Reads `path` without following a symlink (None if it cannot).
pub fn read_private(path: &Path) -> Option<Vec<u8>> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod discard_tests {
    use super::*;

    #[test]
    fn only_the_named_files_leftovers_are_removed() {
        let out = tempfile::tempdir().unwrap();
        let dir = partial_dir(out.path()).unwrap();
        for f in [
            "a.iso.part",
            "a.iso.map",
            "a.iso.0123456789abcdef.unpacking",
            "a.iso.x",
            "a.isox.part",
            "b.iso.part",
        ] {
            fs::write(dir.join(f), b"12345").unwrap();
        }
        assert!(discard_partial(out.path(), &["a.iso".into()]).unwrap() > 0);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["a.iso.x", "a.isox.part", "b.iso.part"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn the_partial_directory_is_ours_and_links_are_never_followed() {
        let top = tempfile::tempdir().unwrap();
        let out = top.path().join("out");
        let dir = partial_dir(&out).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A wider directory of ours is narrowed.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        partial_dir(&out).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A planted link is removed, not followed: the victim keeps its bytes.
        let victim = top.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        symlink(&victim, dir.join("f.bin.part")).unwrap();
        let f = open_private(&dir.join("f.bin.part")).unwrap();
        f.set_len(0).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let mode = fs::metadata(dir.join("f.bin.part"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        symlink(&victim, dir.join("x.unpacking")).unwrap();
        create_private(&dir.join("x.unpacking")).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        symlink(&victim, dir.join("m.map")).unwrap();
        assert_eq!(read_private(&dir.join("m.map")), None);
        // The partial directory itself a symlink: refused.
        let other = top.path().join("other");
        let elsewhere = top.path().join("elsewhere");
        fs::create_dir_all(&other).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        symlink(&elsewhere, other.join(PARTIAL_DIR)).unwrap();
        let refused = partial_dir(&other).unwrap_err().message;
        assert!(refused.contains("not a directory of ours"), "{refused}");
    }
}
