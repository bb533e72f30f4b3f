//! Server side: the carousel that loops one archive on its channel, and the announcer.

use crate::wire::{self, Announce, AnnounceEntry, DataHeader};
use std::io;
use std::time::{Duration, Instant};

/// Longest time between two MANIFEST packets on a channel.
pub const MANIFEST_INTERVAL: Duration = Duration::from_millis(500);
/// Most DATA packets between two MANIFEST packets, so fast channels repeat it sooner.
pub const MANIFEST_EVERY_PACKETS: u32 = 1024;
/// Time between two rounds of ANNOUNCE packets on the directory group.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(500);

/// Where the carousel reads archive body bytes from (the driver does the I/O).
pub trait PayloadSource {
    /// Fills `buf` with body bytes starting at `body_offset`.
    fn read_payload(&mut self, body_offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// What `Carousel::poll_transmit` put in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// A MANIFEST datagram of this many bytes.
    Manifest(usize),
    /// DATA packet `index`, a datagram of `len` bytes.
    Data {
        /// Packet index.
        index: u32,
        /// Datagram length.
        len: usize,
    },
}

impl Transmit {
    /// Length of the datagram written.
    pub fn len(&self) -> usize {
        match *self {
            Transmit::Manifest(len) | Transmit::Data { len, .. } => len,
        }
    }

    /// True for an empty datagram (never produced; for API completeness).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Loops one archive body on a channel, interleaving its manifest.
pub struct Carousel {
    session_id: u32,
    archive_id: u64,
    manifest_datagram: Vec<u8>,
    body_len: u64,
    payload_size: usize,
    packet_count: u32,
    next_index: u32,
    next_manifest_at: Option<Instant>,
    data_since_manifest: u32,
    loops: u64,
}

impl Carousel {
    /// A carousel for the archive described by `manifest`, whose encoded form is `manifest_bytes`.
    pub fn new(session_id: u32, manifest: &crate::Manifest, manifest_bytes: &[u8]) -> Self {
        Self {
            session_id,
            archive_id: manifest.archive_id,
            manifest_datagram: wire::encode_manifest(session_id, manifest_bytes),
            body_len: manifest.body_len,
            payload_size: manifest.payload_size as usize,
            packet_count: manifest.packet_count(),
            next_index: 0,
            next_manifest_at: None,
            data_since_manifest: 0,
            loops: 0,
        }
    }

    /// Largest datagram this carousel writes; buffers passed in must be at least this long.
    pub fn max_datagram_len(&self) -> usize {
        (wire::DATA_HEADER_LEN + self.payload_size + wire::TRAILER_LEN)
            .max(self.manifest_datagram.len())
    }

    /// Number of completed loops over the archive.
    pub fn loops(&self) -> u64 {
        self.loops
    }

    /// Packets in one loop.
    pub fn packet_count(&self) -> u32 {
        self.packet_count
    }

    /// Writes the next datagram into `buf`: the manifest when it is due (500 ms or 1024
    /// DATA packets after the last), else the next DATA packet. The carousel never runs
    /// dry; the driver's pacer decides when to call.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        source: &mut impl PayloadSource,
    ) -> io::Result<Transmit> {
        if self.next_manifest_at.is_none_or(|at| now >= at)
            || self.data_since_manifest >= MANIFEST_EVERY_PACKETS
        {
            self.next_manifest_at = Some(now + MANIFEST_INTERVAL);
            self.data_since_manifest = 0;
            let len = self.manifest_datagram.len();
            buf[..len].copy_from_slice(&self.manifest_datagram);
            return Ok(Transmit::Manifest(len));
        }
        let index = self.next_index;
        let offset = index as u64 * self.payload_size as u64;
        let payload_len = (self.body_len - offset).min(self.payload_size as u64) as usize;
        let header = DataHeader {
            archive_id: self.archive_id,
            packet_index: index,
            packet_count: self.packet_count,
            flags: 0,
        };
        wire::write_data_header(buf, self.session_id, &header);
        source.read_payload(
            offset,
            &mut buf[wire::DATA_HEADER_LEN..wire::DATA_HEADER_LEN + payload_len],
        )?;
        let len = wire::seal_in_place(buf, wire::DATA_HEADER_LEN + payload_len);
        self.next_index += 1;
        self.data_since_manifest += 1;
        if self.next_index == self.packet_count {
            self.next_index = 0;
            self.loops += 1;
        }
        Ok(Transmit::Data { index, len })
    }
}

/// Sends the list of files on air on the directory group, split into parts that fit a datagram.
pub struct Announcer {
    datagrams: Vec<Vec<u8>>,
    next_at: Option<Instant>,
}

impl Announcer {
    /// Splits `entries` into ANNOUNCE datagrams of at most `max_datagram` bytes.
    /// Fails if there are more than 255 parts or an entry alone does not fit.
    pub fn new(
        session_id: u32,
        entries: &[AnnounceEntry],
        max_datagram: usize,
    ) -> Result<Self, String> {
        let budget = max_datagram - wire::COMMON_HEADER_LEN - wire::TRAILER_LEN - 3;
        let mut groups: Vec<Vec<AnnounceEntry>> = vec![Vec::new()];
        let mut used = 0;
        for e in entries {
            let len = wire::announce_entry_len(e);
            if len > budget {
                return Err(format!(
                    "announce entry for {:?} does not fit in a packet",
                    e.name
                ));
            }
            let group = groups.last_mut().expect("never empty");
            if used + len > budget || group.len() == 255 {
                groups.push(vec![e.clone()]);
                used = len;
            } else {
                group.push(e.clone());
                used += len;
            }
        }
        let parts =
            u8::try_from(groups.len()).map_err(|_| "too many files to announce".to_string())?;
        let datagrams = groups
            .into_iter()
            .enumerate()
            .map(|(i, entries)| {
                wire::encode_announce(
                    session_id,
                    &Announce {
                        part: i as u8,
                        parts,
                        entries,
                    },
                )
            })
            .collect();
        Ok(Self {
            datagrams,
            next_at: None,
        })
    }

    /// The ANNOUNCE datagrams to send now, if a round is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<&[Vec<u8>]> {
        if self.next_at.is_some_and(|at| now < at) {
            return None;
        }
        self.next_at = Some(now + ANNOUNCE_INTERVAL);
        Some(&self.datagrams)
    }

    /// When the next round is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_at
    }
}
