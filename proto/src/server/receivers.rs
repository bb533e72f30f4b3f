//! The server's table of receivers, kept from their REPORTs and DONEs: bounded in
//! size and pruned by age, so that no stream of reports can grow it without limit.

use crate::wire::Report;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most receivers the table holds; reports from further receivers are counted, not kept.
pub const MAX_RECEIVERS: usize = 4096;
/// A receiver not heard from for this long is forgotten.
pub const RECEIVER_MEMORY: Duration = Duration::from_secs(600);

/// What the server knows of one receiver of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverEntry {
    /// The file (index in the server's list).
    pub file: usize,
    /// The receiver's id (random per receiver and file).
    pub id: u32,
    /// Where its reports come from.
    pub addr: SocketAddr,
    /// The channel it reports (announce index, or `wire::UNICAST_CHANNEL`).
    pub channel: u8,
    /// Packets it holds.
    pub held: u32,
    /// Packets in the archive.
    pub packet_count: u32,
    /// When it was last heard.
    pub last_heard: Instant,
    /// True once it said DONE.
    pub done: bool,
    /// Loop packets arrived and milliseconds covered in its last report (its goodput).
    pub arrived: (u32, u32),
}

/// What a report changed in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// A receiver not known before.
    New,
    /// A known receiver now reports another channel.
    Moved,
    /// Nothing but its progress.
    Same,
    /// Not kept: the table is full.
    Full,
}

/// Receivers by (file, receiver id).
#[derive(Debug, Default)]
pub struct ReceiverTable {
    entries: HashMap<(usize, u32), ReceiverEntry>,
    /// Reports and DONEs not kept because the table was full.
    pub refused: u64,
}

impl ReceiverTable {
    /// Notes a report of file `file` from `from`.
    pub fn report(
        &mut self,
        now: Instant,
        file: usize,
        from: SocketAddr,
        report: &Report,
    ) -> Noted {
        let full = self.entries.len() >= MAX_RECEIVERS;
        let (entry, noted) = match self.entries.entry((file, report.receiver_id)) {
            Entry::Occupied(e) => {
                let e = e.into_mut();
                let noted = if e.channel == report.channel {
                    Noted::Same
                } else {
                    Noted::Moved
                };
                (e, noted)
            }
            Entry::Vacant(_) if full => {
                self.refused += 1;
                return Noted::Full;
            }
            Entry::Vacant(v) => (
                v.insert(ReceiverEntry {
                    file,
                    id: report.receiver_id,
                    addr: from,
                    channel: report.channel,
                    held: 0,
                    packet_count: report.packet_count,
                    last_heard: now,
                    done: false,
                    arrived: (0, 0),
                }),
                Noted::New,
            ),
        };
        entry.addr = from;
        entry.channel = report.channel;
        entry.held = report.held;
        entry.packet_count = report.packet_count;
        entry.last_heard = now;
        entry.arrived = (report.arrived, report.interval_ms);
        noted
    }

    /// Notes that receiver `id` of file `file` is done; true the first time.
    pub fn done(
        &mut self,
        now: Instant,
        file: usize,
        id: u32,
        from: SocketAddr,
        channel: u8,
    ) -> bool {
        let full = self.entries.len() >= MAX_RECEIVERS;
        let entry = match self.entries.entry((file, id)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if full => {
                self.refused += 1;
                return true; // still worth telling once; it is not remembered
            }
            Entry::Vacant(v) => v.insert(ReceiverEntry {
                file,
                id,
                addr: from,
                channel,
                held: 0,
                packet_count: 0,
                last_heard: now,
                done: false,
                arrived: (0, 0),
            }),
        };
        entry.last_heard = now;
        let first = !entry.done;
        entry.done = true;
        entry.held = entry.packet_count;
        first
    }

    /// Forgets receivers not heard from for `RECEIVER_MEMORY`.
    pub fn prune(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_heard) < RECEIVER_MEMORY);
    }

    /// Every receiver remembered.
    pub fn iter(&self) -> impl Iterator<Item = &ReceiverEntry> {
        self.entries.values()
    }

    /// Receivers remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no receiver is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn report(id: u32, channel: u8) -> Report {
        Report {
            receiver_id: id,
            channel,
            packet_count: 10,
            held: 3,
            ..Report::default()
        }
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_silent() {
        let now = Instant::now();
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 9);
        let mut t = ReceiverTable::default();
        assert_eq!(t.report(now, 0, addr, &report(1, 0)), Noted::New);
        assert_eq!(t.report(now, 0, addr, &report(1, 0)), Noted::Same);
        assert_eq!(t.report(now, 0, addr, &report(1, 1)), Noted::Moved);
        for id in 2..=MAX_RECEIVERS as u32 + 10 {
            t.report(now, 0, addr, &report(id, 0));
        }
        assert_eq!((t.len(), t.refused), (MAX_RECEIVERS, 10));
        assert!(t.done(now, 0, 1, addr, 0));
        assert!(!t.done(now, 0, 1, addr, 0));
        t.prune(now + RECEIVER_MEMORY);
        assert!(t.is_empty());
    }
}
