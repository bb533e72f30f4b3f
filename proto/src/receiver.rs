//! Receiver side: the state machine that takes one file's channel datagrams in and
//! says which payload goes where. The driver does the writing.

use crate::keys::{FINGERPRINT_LEN, MasterKey};
use crate::manifest::{Manifest, ManifestError};
use crate::received::ReceivedMap;
use crate::wire::{self, DecodeError, Packet};
use std::ops::Range;
use std::time::Instant;

/// What a datagram did to the receiver.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// New payload: the driver writes `payload` at `body_offset` of the partial file.
    Store {
        /// Packet index.
        packet_index: u32,
        /// Where the payload goes in the archive body.
        body_offset: u64,
        /// The payload bytes (borrowed from the datagram).
        payload: &'a [u8],
    },
    /// The first valid manifest arrived; the driver prepares storage (and may `restore`).
    ManifestAccepted,
    /// The manifest was signed with another master key.
    WrongKey {
        /// Fingerprint of the key the archive was sealed with.
        theirs: [u8; FINGERPRINT_LEN],
    },
    /// Nothing to do (duplicate, repeated manifest, other session or archive, or rejected).
    Nothing,
}

/// Counters of everything a receiver dropped or took, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReceiverStats {
    /// DATA packets stored.
    pub stored: u64,
    /// DATA packets already held.
    pub duplicates: u64,
    /// DATA packets that arrived before any manifest.
    pub before_manifest: u64,
    /// Datagrams from another server session.
    pub foreign_session: u64,
    /// DATA or MANIFEST packets of another archive.
    pub other_archive: u64,
    /// Datagrams with a bad CRC.
    pub bad_crc: u64,
    /// Datagrams that were not loopcast's (bad magic) or of an unknown version or type.
    pub not_ours: u64,
    /// Truncated datagrams or impossible field values.
    pub malformed: u64,
    /// Manifests that failed their MAC or layout checks.
    pub bad_manifest: u64,
}

impl ReceiverStats {
    /// Counts a datagram that failed to decode.
    fn count_decode_error(&mut self, e: DecodeError) {
        match e {
            DecodeError::BadCrc => self.bad_crc += 1,
            DecodeError::BadMagic | DecodeError::BadVersion | DecodeError::UnknownType => {
                self.not_ours += 1
            }
            DecodeError::Truncated | DecodeError::Invalid => self.malformed += 1,
        }
    }

    /// Datagrams dropped for any reason other than being duplicates.
    pub fn dropped(&self) -> u64 {
        self.before_manifest
            + self.foreign_session
            + self.other_archive
            + self.bad_crc
            + self.not_ours
            + self.malformed
            + self.bad_manifest
    }
}

/// Receives one archive from its channel.
pub struct FileReceiver {
    master: MasterKey,
    session_id: u32,
    archive_id: u64,
    manifest: Option<Manifest>,
    received: ReceivedMap,
    stats: ReceiverStats,
    last_heard: Option<Instant>,
}

impl FileReceiver {
    /// A receiver for archive `archive_id` sent by server session `session_id`.
    pub fn new(master: MasterKey, session_id: u32, archive_id: u64) -> Self {
        Self {
            master,
            session_id,
            archive_id,
            manifest: None,
            received: ReceivedMap::new(0),
            stats: ReceiverStats::default(),
            last_heard: None,
        }
    }

    /// Takes one datagram from the file's channel.
    pub fn handle_datagram<'a>(&mut self, now: Instant, bytes: &'a [u8]) -> Outcome<'a> {
        let datagram = match wire::decode(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.stats.count_decode_error(e);
                return Outcome::Nothing;
            }
        };
        if datagram.session_id != self.session_id {
            self.stats.foreign_session += 1;
            return Outcome::Nothing;
        }
        self.last_heard = Some(now);
        match datagram.packet {
            Packet::Data(header, payload) => self.handle_data(header, payload),
            Packet::Manifest(body) => self.handle_manifest(body),
            // Announces belong on the directory group; one here is harmless.
            Packet::Announce(_) => Outcome::Nothing,
        }
    }

    fn handle_manifest<'a>(&mut self, body: &[u8]) -> Outcome<'a> {
        if self.manifest.is_some() {
            return Outcome::Nothing;
        }
        match Manifest::decode(body, &self.master) {
            Ok(m) if m.archive_id == self.archive_id => {
                self.received = ReceivedMap::new(m.packet_count());
                self.manifest = Some(m);
                Outcome::ManifestAccepted
            }
            Ok(_) => {
                self.stats.other_archive += 1;
                Outcome::Nothing
            }
            Err(ManifestError::WrongKey) => match Manifest::decode_unverified(body) {
                Ok(m) if m.archive_id == self.archive_id => Outcome::WrongKey {
                    theirs: m.key_fingerprint,
                },
                _ => {
                    self.stats.bad_manifest += 1;
                    Outcome::Nothing
                }
            },
            Err(_) => {
                self.stats.bad_manifest += 1;
                Outcome::Nothing
            }
        }
    }

    fn handle_data<'a>(&mut self, header: wire::DataHeader, payload: &'a [u8]) -> Outcome<'a> {
        if header.archive_id != self.archive_id {
            self.stats.other_archive += 1;
            return Outcome::Nothing;
        }
        let Some(m) = &self.manifest else {
            self.stats.before_manifest += 1;
            return Outcome::Nothing;
        };
        let index = header.packet_index;
        if header.packet_count != self.received.len()
            || payload.len() as u64 != payload_len(m, index)
        {
            self.stats.malformed += 1;
            return Outcome::Nothing;
        }
        if !self.received.insert(index) {
            self.stats.duplicates += 1;
            return Outcome::Nothing;
        }
        self.stats.stored += 1;
        Outcome::Store {
            packet_index: index,
            body_offset: index as u64 * m.payload_size as u64,
            payload,
        }
    }

    /// Replaces the received map with one restored from disk (same archive and layout).
    /// Returns false, and changes nothing, if the map does not fit this archive.
    pub fn restore(&mut self, map: ReceivedMap) -> bool {
        if self.manifest.is_none() || map.len() != self.received.len() {
            return false;
        }
        self.received = map;
        true
    }

    /// Marks the packets holding body bytes `range` missing again (after a frame failed).
    pub fn mark_missing(&mut self, range: Range<u64>) -> u32 {
        let Some(m) = &self.manifest else { return 0 };
        let p = m.payload_size as u64;
        let packets = (range.start / p) as u32..range.end.div_ceil(p) as u32;
        self.received.remove_range(packets)
    }

    /// The manifest, once one has been accepted.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// Which packets are held.
    pub fn received(&self) -> &ReceivedMap {
        &self.received
    }

    /// True once the manifest is known and every packet is held.
    pub fn is_complete(&self) -> bool {
        self.manifest.is_some() && self.received.is_complete()
    }

    /// Counters of what was taken and dropped.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// When a datagram of this session was last heard.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// The server session this receiver follows.
    pub fn session_id(&self) -> u32 {
        self.session_id
    }
}

/// Payload bytes of packet `index` of the archive described by `m`.
pub fn payload_len(m: &Manifest, index: u32) -> u64 {
    let offset = index as u64 * m.payload_size as u64;
    m.body_len.saturating_sub(offset).min(m.payload_size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{FileMeta, Packer};
    use crate::wire::DataHeader;
    use proptest::prelude::*;

    fn setup() -> (MasterKey, Manifest, Vec<u8>) {
        let key = MasterKey::from_bytes([4; 32]);
        let mut packer = Packer::new(&key, 99, 5000, 4096, 3).unwrap();
        let mut body = Vec::new();
        for i in 0..2u8 {
            // Incompressible content, so the body spans several 1000-byte packets.
            let plain: Vec<u8> = (0..packer.next_frame_len() as u32)
                .map(|j| (j.wrapping_mul(2654435761) >> (13 + i)) as u8)
                .collect();
            body.extend(packer.seal_next(&plain, [i; 16]).unwrap());
        }
        let meta = FileMeta {
            name: "r.bin".into(),
            mode: 0o600,
            mtime_secs: 0,
            mtime_nanos: 0,
        };
        let (table, manifest, bytes) = packer.finish(meta, 1000).unwrap();
        let mut full = table;
        full.extend(body);
        assert_eq!(full.len() as u64, manifest.body_len);
        (key, manifest, bytes)
    }

    #[test]
    fn every_kind_of_bad_datagram_is_counted_not_stored() {
        let (key, m, manifest_bytes) = setup();
        let now = Instant::now();
        let mut r = FileReceiver::new(key, 7, m.archive_id);
        let data = |session, archive_id, index, count, len| {
            wire::encode_data(
                session,
                &DataHeader {
                    archive_id,
                    packet_index: index,
                    packet_count: count,
                    flags: 0,
                },
                &vec![1u8; len],
            )
        };
        let count = m.packet_count();
        assert_eq!(
            r.handle_datagram(now, &data(7, 99, 0, count, 1000)),
            Outcome::Nothing
        );
        assert_eq!(r.stats().before_manifest, 1);
        assert_eq!(
            r.handle_datagram(now, &wire::encode_manifest(7, &manifest_bytes)),
            Outcome::ManifestAccepted
        );
        let mut bad_crc = data(7, 99, 0, count, 1000);
        bad_crc[40] ^= 1;
        let mut not_ours = data(7, 99, 0, count, 1000);
        not_ours[0] = b'X';
        for (datagram, what) in [
            (bad_crc, "bad crc"),
            (not_ours, "magic"),
            (vec![1, 2, 3], "truncated"),
            (data(8, 99, 0, count, 1000), "other session"),
            (data(7, 98, 0, count, 1000), "other archive"),
            (data(7, 99, 0, count + 1, 1000), "wrong count"),
            (data(7, 99, 0, count, 999), "short payload"),
            (data(7, 99, count - 1, count, 1000), "long last payload"),
        ] {
            assert_eq!(
                r.handle_datagram(now, &datagram),
                Outcome::Nothing,
                "{what}"
            );
        }
        let s = r.stats().clone();
        assert_eq!(
            (
                s.bad_crc,
                s.not_ours,
                s.foreign_session,
                s.other_archive,
                s.malformed
            ),
            (1, 1, 1, 1, 4)
        );
        assert_eq!(s.stored, 0);
        let first = data(7, 99, 0, count, 1000);
        let outcome = r.handle_datagram(now, &first);
        assert!(
            matches!(
                outcome,
                Outcome::Store {
                    packet_index: 0,
                    body_offset: 0,
                    ..
                }
            ),
            "{outcome:?} {:?}",
            r.stats()
        );
        assert_eq!(
            r.handle_datagram(now, &data(7, 99, 0, count, 1000)),
            Outcome::Nothing
        );
        assert_eq!(r.stats().duplicates, 1);
        // A frame that failed verification makes its packets missing again.
        assert_eq!(r.mark_missing(0..10), 1);
        assert!(!r.received().contains(0));
    }

    proptest! {
        #[test]
        fn random_datagrams_never_panic(datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1200), 1..20)) {
            let (key, m, manifest_bytes) = setup();
            let now = Instant::now();
            let mut r = FileReceiver::new(key, 7, m.archive_id);
            r.handle_datagram(now, &wire::encode_manifest(7, &manifest_bytes));
            for d in &datagrams {
                let _ = r.handle_datagram(now, d);
            }
            prop_assert_eq!(r.stats().stored, 0);
        }
    }
}
