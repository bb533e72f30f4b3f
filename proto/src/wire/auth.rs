//! Packet authentication (spec §2.10): every datagram but DATA and PARITY ends
//! in a 16-byte keyed-blake3 tag. DATA carries sealed cells (spec §3.4), each
//! with its own tag made at pack time, so the sender does no cryptography per
//! packet; PARITY is checked by the cells it rebuilds.

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of the tag that ends every tagged datagram.
pub const TAG_LEN: usize = 16;

/// Key of the keyed-blake3 tags on every packet but DATA.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MacKey([u8; 32]);

impl MacKey {
    /// Wraps 32 bytes of derived key material.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The tag of `content`.
    pub fn tag(&self, content: &[u8]) -> [u8; TAG_LEN] {
        let hash = blake3::keyed_hash(&self.0, content);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&hash.as_bytes()[..TAG_LEN]);
        tag
    }

    /// Appends the tag of everything in `buf`.
    pub fn seal(&self, buf: &mut Vec<u8>) {
        let tag = self.tag(buf);
        buf.extend_from_slice(&tag);
    }

    /// True when `datagram` ends in the tag of the rest (compared in constant time).
    pub fn verifies(&self, datagram: &[u8]) -> bool {
        let Some(split) = datagram.len().checked_sub(TAG_LEN) else {
            return false;
        };
        let (content, tag) = datagram.split_at(split);
        self.tag(content).ct_eq(tag).into()
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(…)")
    }
}

/// The keys of one archive in one server session: the blake3 key of its control
/// packets (spec §3.3). DATA and PARITY carry no tag: their cells carry their own.
#[derive(Clone, Debug)]
pub struct SessionKeys {
    /// Tags MANIFEST, STATUS, NAK, REPORT and DONE.
    pub mac: MacKey,
}

impl SessionKeys {
    /// The keys of archive `file_key` in session `session_id`.
    pub fn new(file_key: &crate::FileKey, session_id: u32) -> Self {
        Self {
            mac: file_key.session_mac_key(session_id),
        }
    }
}
