//! ANNOUNCE: the server's file list on the directory group.

use super::ANNOUNCE_INTERVAL;
use crate::wire::{self, Announce, AnnounceEntry};
use std::time::Instant;

/// Sends the list of files on air on the directory group, split into parts that fit a datagram.
pub struct Announcer {
    datagrams: Vec<Vec<u8>>,
    next_at: Option<Instant>,
}

impl Announcer {
    /// Splits `entries` into ANNOUNCE datagrams of at most `max_datagram` bytes,
    /// tagged with the directory key `key` (of fingerprint `key_fingerprint`), that name `unicast_port` as the
    /// server's. Fails if there are more than 255 parts or an entry alone does not fit.
    pub fn new(
        key: &wire::MacKey,
        key_fingerprint: [u8; crate::keys::FINGERPRINT_LEN],
        session_id: u32,
        entries: &[AnnounceEntry],
        unicast_port: u16,
        max_datagram: usize,
    ) -> Result<Self, String> {
        let budget =
            max_datagram - wire::COMMON_HEADER_LEN - wire::TRAILER_LEN - wire::ANNOUNCE_HEADER_LEN;
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
                    key,
                    session_id,
                    &Announce {
                        part: i as u8,
                        parts,
                        unicast_port,
                        key_fingerprint,
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

    /// The whole listing's datagrams, whether a round is due or not (unicast answers).
    pub fn datagrams(&self) -> &[Vec<u8>] {
        &self.datagrams
    }

    /// Replaces the listing (e.g. a file's channels started or stopped), keeping the schedule.
    pub fn replace(&mut self, newer: Announcer) {
        self.datagrams = newer.datagrams;
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
