//! DATA at the receiver (spec §2.1): every cell a packet carries opened in place,
//! at its place, before anything in the packet is acted on; and the cells of
//! packets rebuilt from parity, opened the same way.

use super::{FileReceiver, NakTimer, Outcome, payload_len};
use crate::rate::ReportTimer;
use crate::wire::{self, Packet};
use rand::RngExt;
use std::time::Instant;

impl FileReceiver {
    /// A DATA datagram: its header decoded, then its cells opened where they lie.
    pub(super) fn take_data<'a>(
        &mut self,
        now: Instant,
        track: usize,
        bytes: &'a mut [u8],
    ) -> Outcome<'a> {
        let (session_id, header) = match wire::decode(bytes) {
            Ok(wire::Datagram {
                session_id,
                packet: Packet::Data(header, _),
            }) => (session_id, header),
            Ok(_) => return Outcome::Nothing,
            Err(e) => {
                self.stats.count_decode_error(e);
                return Outcome::Nothing;
            }
        };
        if session_id != self.session_id {
            self.stats.foreign_session += 1;
            return Outcome::Nothing;
        }
        self.handle_data(now, track, header, &mut bytes[wire::DATA_HEADER_LEN..])
    }

    fn handle_data<'a>(
        &mut self,
        now: Instant,
        track: usize,
        header: wire::DataHeader,
        payload: &'a mut [u8],
    ) -> Outcome<'a> {
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
        // Nothing of a DATA packet is acted on before every cell it carries
        // opens at its place (spec §2.1): the header's index names the cells.
        let first_cell = index as u64 * m.cells_per_packet();
        if !(self.cells).open_cells(self.archive_id, first_cell, payload, m.cell_size) {
            self.stats.unauthenticated += 1;
            return Outcome::Nothing;
        }
        self.data_heard = Some(now);
        self.last_heard = Some(now);
        if self.report_timer.is_none() {
            self.report_timer = Some(ReportTimer::new(now, self.rng.random::<f64>()));
        }
        let body_offset = index as u64 * m.payload_size as u64;
        let repair = header.flags & wire::FLAG_REPAIR != 0;
        if !repair {
            self.advance(now, track, index);
        }
        if !self.received.insert(index) {
            self.stats.duplicates += 1;
            return Outcome::Nothing;
        }
        self.stats.stored += 1;
        self.stats.repairs += repair as u64;
        if self.received.is_complete() {
            self.timer = NakTimer::Idle;
        }
        self.block_gained(index);
        Outcome::Store {
            packet_index: index,
            body_offset,
            payload,
        }
    }

    /// When a DATA packet of this reception last proved itself (new or held).
    pub fn data_heard(&self) -> Option<Instant> {
        self.data_heard
    }

    /// Opens, in place, the cells of packet `index` rebuilt from parity: true if
    /// they all open at their place (else the rebuild was wrong: a bad shard).
    pub fn open_rebuilt(&self, index: u32, payload: &mut [u8]) -> bool {
        let Some(m) = &self.manifest else {
            return false;
        };
        payload.len() as u64 == payload_len(m, index)
            && (self.cells).open_cells(
                self.archive_id,
                index as u64 * m.cells_per_packet(),
                payload,
                m.cell_size,
            )
    }

    /// Seals again, in place, the opened cells of packet `index` (as a store
    /// holds them), giving the bytes that came: what parity is computed over.
    pub fn seal_again(&self, index: u32, payload: &mut [u8]) {
        if let Some(m) = &self.manifest {
            let first = index as u64 * m.cells_per_packet();
            (self.cells).seal_cells(self.archive_id, first, payload, m.cell_size);
        }
    }
}
