//! A file a relay serves while it still receives it (cut-through, spec §2.4):
//! which of its cells the relay holds, and so which of this server's packets
//! (whole cells, as many as its packets carry) its carousels may send.

use super::{Admission, Endpoint};
use crate::Manifest;
use crate::received::ReceivedMap;
use std::ops::Range;
use std::time::Instant;

impl<A: Admission> Endpoint<A> {
    /// A relayed file's body bytes `body` are held now (written where the
    /// driver reads them): its carousels, channels and unicast streams, may send
    /// the packets that became whole. Nothing for a file not relayed.
    pub fn hold(&mut self, now: Instant, archive_id: u64, body: Range<u64>) {
        let Some(f) = self.file_of(archive_id) else {
            return;
        };
        let file = &mut self.files[f];
        let Some(relayed) = file.relayed.as_mut() else {
            return;
        };
        let whole = relayed.hold(body);
        if whole.is_empty() {
            return;
        }
        for channel in &mut file.channels {
            whole
                .iter()
                .for_each(|run| channel.stream.carousel.hold(run.clone()));
        }
        let streams = (self.clients.iter_mut().enumerate())
            .filter_map(|(slot, c)| c.as_mut().filter(|c| c.file == f).map(|c| (slot, c)));
        let mut woken = Vec::new();
        for (slot, client) in streams {
            whole
                .iter()
                .for_each(|run| client.stream.carousel.hold(run.clone()));
            woken.push(slot);
        }
        if self.files[f].active {
            self.schedule_file(f, now);
        }
        for slot in woken {
            self.timers.schedule(self.client_timer(slot), now);
        }
    }

    /// Packets of file `file`'s loop not held yet (a relay's file still arriving).
    pub fn lacking(&self, file: usize) -> u32 {
        let channel = self.files.get(file).and_then(|f| f.channels.first());
        channel.map_or(0, |c| c.stream.carousel.lacking())
    }
}

/// The cells and packets held of a relayed file.
#[derive(Debug, Clone)]
pub(super) struct RelayedFile {
    cells: ReceivedMap,
    packets: ReceivedMap,
    cell_size: u64,
    cells_per_packet: u32,
}

impl RelayedFile {
    /// Nothing held yet of `manifest`'s archive.
    pub(super) fn new(manifest: &Manifest) -> Self {
        Self {
            cells: ReceivedMap::new(manifest.cell_count() as u32),
            packets: ReceivedMap::new(manifest.packet_count()),
            cell_size: manifest.cell_size.max(1) as u64,
            cells_per_packet: manifest.cells_per_packet().max(1) as u32,
        }
    }

    /// Body bytes `body` are held now: the cells wholly inside it count. Returns
    /// the packets that became whole (in runs).
    pub(super) fn hold(&mut self, body: Range<u64>) -> Vec<Range<u32>> {
        let first = body.start.div_ceil(self.cell_size) as u32;
        let end = (body.end / self.cell_size).min(self.cells.len() as u64) as u32;
        if first >= end {
            return Vec::new();
        }
        self.cells.insert_range(first..end);
        let cpp = self.cells_per_packet;
        let mut whole: Vec<Range<u32>> = Vec::new();
        for k in first / cpp..(end - 1) / cpp + 1 {
            let cells = k * cpp..((k + 1) * cpp).min(self.cells.len());
            if self.cells.count_in(cells.clone()) == cells.len() as u32 && self.packets.insert(k) {
                match whole.last_mut() {
                    Some(run) if run.end == k => run.end = k + 1,
                    _ => whole.push(k..k + 1),
                }
            }
        }
        whole
    }

    /// The packets held, in runs (for a carousel that starts now).
    pub(super) fn held_packets(&self) -> Vec<Range<u32>> {
        self.packets.held_runs(0..self.packets.len(), usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_is_held_once_every_cell_it_carries_is() {
        let key = crate::MasterKey::from_bytes([2; 32]);
        let (mut m, _, _) = crate::sim::random_archive(&key, 20_000, 1 << 12, 500, 1);
        m.payload_size = 3 * m.cell_size; // three cells a packet
        let mut r = RelayedFile::new(&m);
        let c = m.cell_size as u64;
        assert!(r.hold(0..c + 10).is_empty(), "one cell of packet 0");
        assert_eq!(r.hold(2 * c..3 * c), vec![], "cells 0 and 2: not 1");
        assert_eq!(r.hold(c..2 * c), vec![0..1]);
        assert_eq!(r.hold(3 * c..9 * c), vec![1..3]);
        assert!(r.hold(3 * c..9 * c).is_empty(), "held already");
        assert_eq!(r.held_packets(), vec![0..3]);
        // The last packet may carry fewer cells.
        let last = m.packet_count() - 1;
        let all = r.hold(0..m.body_len);
        assert_eq!(all.last().map(|run| run.end), Some(last + 1));
        assert_eq!(r.held_packets(), vec![0..last + 1]);
    }
}
