//! Master key files: 64 hex digits and a newline, mode 0600.

use crate::error::{Context, Error, Result};
use loopcast_proto::MasterKey;
use loopcast_proto::keys::{KEY_LEN, hex};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use zeroize::Zeroize;

/// Writes a new random master key to `path` (mode 0600); refuses to overwrite.
pub fn generate(path: &Path) -> Result<MasterKey> {
    let mut bytes = [0u8; KEY_LEN];
    rand::fill(&mut bytes);
    let key = MasterKey::from_bytes(bytes);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::new(format!(
                "{} already exists; refusing to overwrite a key",
                path.display()
            )),
            _ => Error::new(format!("cannot create key file {}: {e}", path.display())),
        })?;
    file.write_all(format!("{}\n", hex(key.as_bytes())).as_bytes())
        .and_then(|_| file.sync_all())
        .context(|| format!("cannot write key file {}", path.display()))?;
    Ok(key)
}

/// Reads a master key file written by `generate` (64 hex digits; surrounding white space ignored).
/// Refuses a key file that its group or others may read (as ssh does).
pub fn load(path: &Path) -> Result<MasterKey> {
    let mut text = std::fs::read_to_string(path)
        .context(|| format!("cannot read key file {}", path.display()))?;
    let key = parse(text.trim());
    text.zeroize();
    let key = key.ok_or_else(|| Error::new(format!("{} is not a loopcast key file (expected 64 hex digits, as written by `loopcast keygen`)", path.display())))?;
    let mode = std::fs::metadata(path)
        .context(|| format!("cannot read key file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(Error::new(format!(
            "key file {} is readable by its group or others (mode {:04o}); run chmod 600 on it",
            path.display(),
            mode & 0o7777
        )));
    }
    Ok(key)
}

fn parse(hex_text: &str) -> Option<MasterKey> {
    if hex_text.len() != KEY_LEN * 2 || !hex_text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; KEY_LEN];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex_text[2 * i..2 * i + 2], 16).ok()?;
    }
    let key = MasterKey::from_bytes(bytes);
    bytes.zeroize();
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = generate(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load(&path).unwrap().as_bytes(), key.as_bytes());
        assert!(generate(&path).unwrap_err().message.contains("refusing"));
        // Readable by others: refused, with the fix in the message.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = load(&path).unwrap_err().message;
        assert!(refused.contains("chmod 600"), "{refused}");
        std::fs::write(&path, "not a key").unwrap();
        assert!(load(&path).is_err());
        assert!(parse(&"zz".repeat(32)).is_none());
        assert!(parse("é").is_none());
    }
}
