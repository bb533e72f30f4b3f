//! Key hierarchy: master key → directory MAC key and per-file key → per-frame
//! key, manifest MAC key and the session's packet keys.
//!
//! Every derivation is HKDF-SHA256 with a distinct `info` label, so no key is
//! ever used for two purposes. The master key never leaves the machine.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub use crate::wire::auth::MacKey;

/// Length in bytes of every symmetric key in loopcast.
pub const KEY_LEN: usize = 32;
/// Length in bytes of a key fingerprint as carried in a manifest.
pub const FINGERPRINT_LEN: usize = 16;

const FILE_KEY_INFO: &[u8] = b"loopcast/v1/file-key";
const FINGERPRINT_INFO: &[u8] = b"loopcast/v1/fingerprint";
const MANIFEST_MAC_INFO: &[u8] = b"loopcast/v1/manifest-mac";
const FRAME_KEY_INFO: &[u8] = b"loopcast/v1/frame-key";
const DIRECTORY_MAC_INFO: &[u8] = b"loopcast/v3/directory-mac";
const DIRECTOR_MAC_INFO: &[u8] = b"loopcast/v3/director-mac";
const JOBS_API_MAC_INFO: &[u8] = b"loopcast/v3/jobs-api-mac";
const SESSION_MAC_INFO: &[u8] = b"loopcast/v3/session-mac";
const CELL_KEY_INFO: &[u8] = b"loopcast/v4/cell-key";

/// The secret shared by server and receivers; 32 random bytes from `keygen`.
/// Wiped from memory when dropped, like every key derived from it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; KEY_LEN]);

/// Key of one archive, derived from the master key and the archive id.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct FileKey([u8; KEY_LEN]);

/// AES-256-GCM key and nonce of one frame, derived from the file key and the frame's salt.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct FrameKey {
    /// AES-256 key.
    pub key: [u8; KEY_LEN],
    /// GCM nonce; unique because the key itself is unique per frame.
    pub nonce: [u8; 12],
}

fn expand(ikm: &[u8], salt: Option<&[u8]>, info: &[&[u8]], out: &mut [u8]) {
    let hk = Hkdf::<Sha256>::new(salt, ikm);
    let mut label = Vec::with_capacity(64);
    for part in info {
        label.extend_from_slice(part);
    }
    // Output lengths used here are far below HKDF's 255·32 byte limit.
    hk.expand(&label, out)
        .expect("HKDF output length is within limits");
}

impl MasterKey {
    /// Wraps 32 bytes of key material.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes (for writing a key file).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A public, non-secret identifier of this key, carried in manifests so a
    /// receiver can tell "wrong key" apart from "corrupt packet".
    pub fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        let mut out = [0u8; FINGERPRINT_LEN];
        expand(&self.0, None, &[FINGERPRINT_INFO], &mut out);
        out
    }

    /// The key of the archive with this id.
    pub fn file_key(&self, archive_id: u64) -> FileKey {
        let mut out = [0u8; KEY_LEN];
        expand(
            &self.0,
            None,
            &[FILE_KEY_INFO, &archive_id.to_be_bytes()],
            &mut out,
        );
        FileKey(out)
    }

    /// Key of the tags on ANNOUNCE, REQUEST and COOKIE, which name no archive.
    pub fn directory_mac_key(&self) -> MacKey {
        let mut out = [0u8; KEY_LEN];
        expand(&self.0, None, &[DIRECTORY_MAC_INFO], &mut out);
        MacKey::from_bytes(out)
    }

    /// Key of the tags on HEARTBEAT, LOOKUP and DIRECTIONS (servers, receivers
    /// and directors of one site).
    pub fn director_mac_key(&self) -> MacKey {
        let mut out = [0u8; KEY_LEN];
        expand(&self.0, None, &[DIRECTOR_MAC_INFO], &mut out);
        MacKey::from_bytes(out)
    }

    /// Key of the tags on requests that change jobs in a director's HTTP API
    /// (create, cancel): `push` and `jobs --cancel` hold the site key.
    pub fn jobs_api_mac_key(&self) -> MacKey {
        let mut out = [0u8; KEY_LEN];
        expand(&self.0, None, &[JOBS_API_MAC_INFO], &mut out);
        MacKey::from_bytes(out)
    }
}

impl std::fmt::Debug for MasterKey {
    /// Shows the fingerprint only; key bytes never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(fingerprint {})", hex(&self.fingerprint()))
    }
}

impl std::fmt::Debug for FileKey {
    /// Key bytes never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(…)")
    }
}

impl FileKey {
    /// Key of the blake3 keyed hash that authenticates the manifest.
    pub fn manifest_mac_key(&self) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        expand(&self.0, None, &[MANIFEST_MAC_INFO], &mut out);
        out
    }

    /// Key of the tags on one server session's MANIFEST, STATUS, NAK, REPORT and
    /// DONE packets of this archive: bound to the session, so a packet of another
    /// session (or another server serving the same archive) never verifies here.
    pub fn session_mac_key(&self, session_id: u32) -> MacKey {
        let mut out = [0u8; KEY_LEN];
        expand(
            &self.0,
            None,
            &[SESSION_MAC_INFO, &session_id.to_be_bytes()],
            &mut out,
        );
        MacKey::from_bytes(out)
    }

    /// AES-256-GCM key of this archive's sealed cells (format v4, `cell`).
    pub fn cell_key(&self) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        expand(&self.0, None, &[CELL_KEY_INFO], &mut out);
        out
    }

    /// Key and nonce of the frame whose header carries `salt`.
    pub fn frame_key(&self, salt: &[u8]) -> FrameKey {
        let mut out = [0u8; KEY_LEN + 12];
        expand(&self.0, Some(salt), &[FRAME_KEY_INFO], &mut out);
        let mut key = FrameKey {
            key: [0u8; KEY_LEN],
            nonce: [0u8; 12],
        };
        key.key.copy_from_slice(&out[..KEY_LEN]);
        key.nonce.copy_from_slice(&out[KEY_LEN..]);
        out.zeroize();
        key
    }
}

/// Formats bytes as lower-case hex (fingerprints and ids in logs and errors).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `hex`'s output back (either case); None unless it is whole hex bytes.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_reads_back() {
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(unhex("AbFF"), Some(vec![0xab, 0xff]));
        for bad in ["a", "zz", "0g", "\u{e9}\u{e9}"] {
            assert_eq!(unhex(bad), None, "{bad}");
        }
    }

    #[test]
    fn derivations_are_distinct_and_deterministic() {
        let a = MasterKey::from_bytes([1; 32]);
        let b = MasterKey::from_bytes([2; 32]);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.fingerprint());
        assert_ne!(a.file_key(1).0, a.file_key(2).0);
        assert_ne!(a.file_key(1).0, b.file_key(1).0);
        let fk = a.file_key(7);
        assert_ne!(fk.frame_key(&[0; 16]).key, fk.frame_key(&[1; 16]).key);
        assert_ne!(fk.manifest_mac_key(), fk.frame_key(&[0; 16]).key);
        let tagged = |k: &MacKey| k.tag(b"x");
        assert_ne!(
            tagged(&fk.session_mac_key(1)),
            tagged(&fk.session_mac_key(2))
        );
        assert_ne!(
            tagged(&fk.session_mac_key(1)),
            tagged(&a.directory_mac_key())
        );
        assert_ne!(
            tagged(&a.directory_mac_key()),
            tagged(&b.directory_mac_key())
        );
    }
}
