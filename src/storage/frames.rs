//! Frames assembled in memory as their packets arrive. A frame whose packets all
//! come while it is held is verified, decrypted and written to the output from
//! memory: its bytes never touch the partial file (spec §5, "Storage"). A frame
//! still missing packets when its memory is wanted goes to the partial file
//! (spilled), up to a cap on the partial file's size; past the cap a new frame is
//! let go and its packets are fetched again.

use loopcast_proto::ReceivedMap;
use loopcast_proto::cell::{cell_data_len, copy_joined, copy_spread, spread_cells};
use loopcast_proto::fec::Blocks;
use loopcast_proto::received::packets_covering;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;

/// Alignment of plaintext for direct (O_DIRECT) writes of the output.
pub const ALIGN: usize = 4096;
/// Most bytes of frames held in memory at once, counting frames handed to the
/// frame worker and not yet given back.
pub const MEMORY_BUDGET: usize = 32 << 20;
/// The partial file holds at most 1/`SPILL_SHARE` of the body in frames waiting
/// for repair (files up to `MEMORY_BUDGET` never need it).
pub const SPILL_SHARE: u64 = 5;
/// Most bytes kept of frames handed to the worker that parity blocks not yet
/// whole still need for a rebuild (spec §6.5); the oldest go first, and their
/// blocks are then repaired by copies.
pub const RETAIN_BUDGET: usize = 8 << 20;

/// A reusable buffer for one frame's cells, `ALIGN`ed. A frame assembled in
/// memory holds its cells' data joined (each opened cell's data copied over its
/// tag's place as it is stored), so an uncompressed frame's plaintext starts at
/// the buffer's aligned start and is written to the output without another copy.
pub struct FrameBuffer {
    bytes: Vec<u8>,
    /// First `ALIGN`ed byte of `bytes`.
    aligned: usize,
}

impl std::fmt::Debug for FrameBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameBuffer({} bytes)", self.capacity())
    }
}

impl FrameBuffer {
    /// A buffer for frames of up to `capacity` bytes of cells.
    pub fn new(capacity: usize) -> Self {
        let bytes = vec![0u8; capacity + 2 * ALIGN];
        let aligned = bytes.as_ptr().align_offset(ALIGN);
        Self { bytes, aligned }
    }

    /// How long a frame's cells it holds.
    pub fn capacity(&self) -> usize {
        self.bytes.len() - 2 * ALIGN
    }

    /// Room for a frame's cells, `len` bytes, `ALIGN`ed.
    pub fn cells_mut(&mut self, len: usize) -> &mut [u8] {
        let start = self.aligned;
        &mut self.bytes[start..start + len]
    }

    /// The frame's cells of `len` bytes it holds.
    pub fn cells(&self, len: usize) -> &[u8] {
        let start = self.aligned;
        &self.bytes[start..start + len]
    }

    /// `len` bytes starting on an `ALIGN`ed address (for decompressed plaintext).
    pub fn aligned_mut(&mut self, len: usize) -> &mut [u8] {
        let start = self.aligned;
        &mut self.bytes[start..start + len]
    }
}

/// Where a frame's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Nothing of it is held, or what is held is in the partial file and it has
    /// not gone to memory (it may: the first packet decides).
    Nowhere,
    /// In a buffer of ours.
    Memory,
    /// In the partial file (spilled, or stored before the frame table was known).
    Disk,
    /// Handed to the frame worker (from the partial file: it counts there until
    /// the worker punches it out).
    Sent { from_disk: bool },
    /// Verified and in the output.
    Done,
}

/// What the frame worker is to open a frame from.
pub enum FrameSource {
    /// This buffer holds the frame's cells (opened as they came).
    Memory(FrameBuffer),
    /// The partial file holds it.
    Disk,
}

/// The frames of one reception: where each one's bytes are, the buffers of those
/// in memory, and the partial file's share.
pub struct FrameAssembly {
    ranges: Vec<Range<u64>>,
    payload_size: u32,
    /// The archive's cell size: frames and packets are whole cells.
    cell_size: u16,
    place: Vec<Place>,
    buffers: HashMap<u32, FrameBuffer>,
    /// Frames in memory, oldest first (the first to spill).
    oldest: VecDeque<u32>,
    pool: Vec<FrameBuffer>,
    buffer_len: usize,
    /// Bytes of buffers out of the pool (in memory or sent), and the most there may be.
    held: usize,
    budget: usize,
    /// Body bytes of frames in the partial file, and the most it may hold.
    spilled: u64,
    spill_cap: u64,
    /// Frames let go since the driver last asked (their packets must come again).
    let_go: Vec<u32>,
    /// The archive's parity blocks.
    blocks: Blocks,
    /// Bytes of frames handed to the worker that incomplete blocks need for a
    /// rebuild, oldest first: (body offset, bytes as they came).
    retained: VecDeque<(u64, Vec<u8>)>,
    retained_bytes: usize,
}

impl FrameAssembly {
    /// Frames at body `ranges`, carried in packets of `payload_size` bytes, both
    /// whole cells of `cell_size`; those in `done` are in the output already, and
    /// any other with a packet in `received` has its bytes in the partial file.
    pub fn new(
        ranges: Vec<Range<u64>>,
        payload_size: u32,
        cell_size: u16,
        body_len: u64,
        done: &[bool],
        received: &ReceivedMap,
    ) -> Self {
        let buffer_len = ranges.iter().map(|r| r.end - r.start).max().unwrap_or(0) as usize;
        let place: Vec<Place> = ranges
            .iter()
            .enumerate()
            .map(|(f, r)| {
                let packets = packets_covering(r.clone(), payload_size);
                if done.get(f) == Some(&true) {
                    Place::Done
                } else if packets.clone().any(|p| received.contains(p)) {
                    Place::Disk
                } else {
                    Place::Nowhere
                }
            })
            .collect();
        let spilled = ranges
            .iter()
            .zip(&place)
            .filter(|(_, p)| **p == Place::Disk)
            .map(|(r, _)| r.end - r.start)
            .sum();
        Self {
            payload_size: payload_size.max(1),
            cell_size: cell_size.max(loopcast_proto::cell::TAG_LEN as u16 + 1),
            place,
            buffers: HashMap::new(),
            oldest: VecDeque::new(),
            pool: Vec::new(),
            held: 0,
            budget: MEMORY_BUDGET,
            spilled,
            spill_cap: Self::spill_cap(body_len),
            let_go: Vec::new(),
            blocks: Blocks::new(body_len, payload_size),
            retained: VecDeque::new(),
            retained_bytes: 0,
            buffer_len,
            ranges,
        }
    }

    /// The most the partial file holds in frames waiting for repair (bytes).
    pub fn spill_cap(body_len: u64) -> u64 {
        body_len / SPILL_SHARE
    }

    /// Takes a payload at body `offset`: the parts in frames held in memory (or
    /// now taken into memory) are copied there; the rest is pushed to `to_disk`
    /// (with `spill`, frames moved out of memory to make room, to be written
    /// first, whole, at their place). Parts of frames let go or already done are dropped.
    pub fn store<'a>(
        &mut self,
        offset: u64,
        payload: &'a [u8],
        to_disk: &mut Vec<(u64, &'a [u8])>,
        spill: &mut Vec<(u32, FrameBuffer)>,
    ) {
        let end = offset + payload.len() as u64;
        let first = self.ranges.partition_point(|r| r.end <= offset);
        let mut covered = offset;
        for frame in first..self.ranges.len() {
            let r = self.ranges[frame].clone();
            if r.start >= end {
                break;
            }
            if covered < r.start {
                // Bytes before this frame (the frame table): the partial file.
                to_disk.push((
                    covered,
                    &payload[(covered - offset) as usize..(r.start - offset) as usize],
                ));
            }
            let (from, to) = (covered.max(r.start), end.min(r.end));
            let part = &payload[(from - offset) as usize..(to - offset) as usize];
            covered = to;
            let frame = frame as u32;
            if self.place[frame as usize] == Place::Nowhere {
                self.take_into_memory(frame, spill);
            }
            match self.place[frame as usize] {
                Place::Memory => {
                    let (size, data) = (self.cell_size as usize, cell_data_len(self.cell_size));
                    let buffer = self.buffers.get_mut(&frame).expect("held in memory");
                    let at = (from - r.start) as usize;
                    debug_assert!(
                        at.is_multiple_of(size) && part.len().is_multiple_of(size),
                        "whole cells"
                    );
                    let joined = buffer.cells_mut((r.end - r.start) as usize);
                    copy_joined(part, self.cell_size, &mut joined[at / size * data..]);
                }
                Place::Disk => to_disk.push((from, part)),
                Place::Nowhere | Place::Sent { .. } | Place::Done => {}
            }
        }
        if covered < end {
            to_disk.push((covered, &payload[(covered - offset) as usize..]));
        }
    }

    /// Reads back body bytes at `offset` as they were stored, into `buf` (opened
    /// cells; the bytes at tags' places are left as they were in `buf` where the
    /// frame is held joined in memory: sealing again writes them): parts
    /// in frames held in memory are copied, parts in the partial file are listed
    /// in `from_disk` (body offset, range of `buf`). False if a part is in a frame
    /// with the frame worker or in the output: no longer held as it came.
    pub fn read(
        &self,
        offset: u64,
        buf: &mut [u8],
        from_disk: &mut Vec<(u64, Range<usize>)>,
    ) -> bool {
        let end = offset + buf.len() as u64;
        let first = self.ranges.partition_point(|r| r.end <= offset);
        let mut covered = offset;
        let at = |byte: u64| (byte - offset) as usize;
        for frame in first..self.ranges.len() {
            let r = self.ranges[frame].clone();
            if r.start >= end {
                break;
            }
            if covered < r.start {
                from_disk.push((covered, at(covered)..at(r.start))); // the frame table
            }
            let (from, to) = (covered.max(r.start), end.min(r.end));
            covered = to;
            match self.place[frame] {
                Place::Memory => {
                    let joined = self.buffers[&(frame as u32)].cells((r.end - r.start) as usize);
                    self.spread_part(joined, from - r.start, &mut buf[at(from)..at(to)]);
                }
                Place::Disk | Place::Nowhere => from_disk.push((from, at(from)..at(to))),
                Place::Sent { .. } | Place::Done => {
                    let kept = self
                        .retained
                        .iter()
                        .find(|(start, bytes)| *start <= from && to <= start + bytes.len() as u64);
                    let Some((start, bytes)) = kept else {
                        return false;
                    };
                    let at_kept = (from - start) as usize;
                    buf[at(from)..at(to)]
                        .copy_from_slice(&bytes[at_kept..at_kept + (to - from) as usize]);
                }
            }
        }
        if covered < end {
            from_disk.push((covered, at(covered)..buf.len()));
        }
        true
    }

    /// Gives `frame` a buffer: from the pool, or new while under the budget, or
    /// by spilling the oldest frame in memory; else the frame goes to disk, or
    /// past the partial file's cap is let go.
    fn take_into_memory(&mut self, frame: u32, spill: &mut Vec<(u32, FrameBuffer)>) {
        if self.held + self.buffer_len > self.budget
            && let Some(oldest) = self.oldest.front().copied()
            && self.spilled + self.len(oldest) <= self.spill_cap
        {
            self.oldest.pop_front();
            spill.push((oldest, self.move_to_disk(oldest)));
        }
        if self.held + self.buffer_len > self.budget && self.held > 0 {
            // The memory is the worker's (a backlog): the frame goes to disk while
            // the partial file has room, else it is let go.
            let len = self.len(frame);
            if self.spilled + len <= self.spill_cap {
                self.place[frame as usize] = Place::Disk;
                self.spilled += len;
            } else {
                self.let_go.push(frame);
            }
            return;
        }
        let buffer = self
            .pool
            .pop()
            .unwrap_or_else(|| FrameBuffer::new(self.buffer_len));
        self.held += self.buffer_len;
        self.buffers.insert(frame, buffer);
        self.oldest.push_back(frame);
        self.place[frame as usize] = Place::Memory;
    }

    /// Whether the memory budget has no room for another frame while the frame
    /// worker holds a quarter of it or more (frames handed to it and not given
    /// back): the receive loop then leaves new datagrams in the socket until the
    /// worker gives a buffer back, rather than have a frame spilled to the
    /// partial file (or let go), which would only give the worker more to do.
    pub fn worker_backlogged(&self) -> bool {
        let with_worker = self
            .held
            .saturating_sub(self.buffers.len() * self.buffer_len);
        self.held + self.buffer_len > self.budget && 4 * with_worker >= self.budget
    }

    /// Returns a spilled frame's buffer, once its bytes are written.
    pub fn recycle(&mut self, buffer: FrameBuffer) {
        if buffer.capacity() == self.buffer_len {
            self.pool.push(buffer);
        }
    }

    /// Body bytes of frame `frame`.
    pub fn len(&self, frame: u32) -> u64 {
        let r = &self.ranges[frame as usize];
        r.end - r.start
    }

    /// Body range of frame `frame`.
    pub fn range(&self, frame: u32) -> Range<u64> {
        self.ranges[frame as usize].clone()
    }

    /// Before `frame` goes to the worker (which decrypts it where it lies): keeps
    /// a copy of its bytes in each parity block that is not whole in `received`,
    /// so that the block can still be rebuilt (a block can only straddle a frame
    /// at its edges: the blocks inside a whole frame are whole).
    pub fn retain_for_rebuild(&mut self, frame: u32, received: &ReceivedMap) {
        let (Some(buffer), Some(r)) = (self.buffers.get(&frame), self.ranges.get(frame as usize))
        else {
            return;
        };
        let p = self.payload_size as u64;
        let packets = packets_covering(r.clone(), self.payload_size);
        let Some(last) = packets.end.checked_sub(1) else {
            return;
        };
        let (first, last) = (self.blocks.of(packets.start), self.blocks.of(last));
        let joined = buffer.cells((r.end - r.start) as usize);
        for block in [first, last]
            .into_iter()
            .take(if first == last { 1 } else { 2 })
        {
            let in_block = self.blocks.packets(block);
            if received.count_in(in_block.clone()) as usize == in_block.len() {
                continue;
            }
            let from = r.start.max(in_block.start as u64 * p);
            let to = r.end.min(in_block.end as u64 * p);
            let mut bytes = vec![0u8; (to - from) as usize];
            self.spread_part(joined, from - r.start, &mut bytes);
            self.retained_bytes += bytes.len();
            self.retained.push_back((from, bytes));
        }
        while self.retained_bytes > RETAIN_BUDGET {
            let (_, gone) = self.retained.pop_front().expect("bytes are counted");
            self.retained_bytes -= gone.len();
        }
    }

    /// Hands `frame` (all its packets held) to the frame worker: from memory, or
    /// from the partial file. None if it is already there or done.
    pub fn take(&mut self, frame: u32) -> Option<FrameSource> {
        let place = self.place.get_mut(frame as usize)?;
        let source = match *place {
            Place::Memory => {
                self.oldest.retain(|&f| f != frame);
                FrameSource::Memory(self.buffers.remove(&frame).expect("held in memory"))
            }
            Place::Disk | Place::Nowhere => FrameSource::Disk,
            Place::Sent { .. } | Place::Done => return None,
        };
        *place = Place::Sent {
            from_disk: *place == Place::Disk,
        };
        Some(source)
    }

    /// The worker opened `frame` (or it failed, `ok` false: its packets come
    /// again); its buffer, if it had one, goes back to the pool.
    pub fn opened(&mut self, frame: u32, ok: bool, buffer: Option<FrameBuffer>) {
        if let Some(b) = buffer {
            self.held = self.held.saturating_sub(self.buffer_len);
            self.recycle(b);
        }
        let len = self.len(frame);
        if let Some(p) = self.place.get_mut(frame as usize) {
            if *p == (Place::Sent { from_disk: true }) {
                // Punched out of the partial file by the worker.
                self.spilled = self.spilled.saturating_sub(len);
            }
            *p = if ok { Place::Done } else { Place::Nowhere };
        }
    }

    /// Every frame held in memory, to be written whole at its place in the
    /// partial file (the receiver is stopping or closing this storage): from now
    /// on they are on disk, whatever the cap.
    pub fn take_memory(&mut self) -> Vec<(u32, FrameBuffer)> {
        let frames: Vec<u32> = self.oldest.drain(..).collect();
        frames
            .into_iter()
            .map(|frame| (frame, self.move_to_disk(frame)))
            .collect()
    }

    /// Takes frame `frame`'s buffer out of memory, its cells spread back to
    /// their places (the caller writes it to the partial file, where the frame
    /// now counts; `oldest` is the caller's).
    fn move_to_disk(&mut self, frame: u32) -> FrameBuffer {
        self.place[frame as usize] = Place::Disk;
        let len = self.len(frame);
        self.spilled += len;
        self.held = self.held.saturating_sub(self.buffer_len);
        let mut buffer = self.buffers.remove(&frame).expect("held in memory");
        let cells = len as usize / self.cell_size as usize;
        spread_cells(buffer.cells_mut(len as usize), self.cell_size, cells);
        buffer
    }

    /// Copies the cells at byte `at` (a cell's start) of a frame held `joined`
    /// into `out`, each cell's data at its place as the cells came.
    fn spread_part(&self, joined: &[u8], at: u64, out: &mut [u8]) {
        let first = at as usize / self.cell_size as usize;
        let data = cell_data_len(self.cell_size);
        copy_spread(&joined[first * data..], self.cell_size, out);
    }

    /// Frames let go since the last call.
    pub fn take_let_go(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.let_go)
    }

    /// Which frames are verified and in the output.
    pub fn done(&self) -> Vec<bool> {
        self.place.iter().map(|p| *p == Place::Done).collect()
    }

    /// Forgets the bytes kept for rebuilds within body `range` (its block is whole).
    pub fn forget_retained(&mut self, range: Range<u64>) {
        let retained_bytes = &mut self.retained_bytes;
        self.retained.retain(|(start, bytes)| {
            let inside = range.start <= *start && start + bytes.len() as u64 <= range.end;
            if inside {
                *retained_bytes -= bytes.len();
            }
            !inside
        });
    }

    /// `received` less the packets with bytes only in memory (frames held or sent
    /// and not yet in the output): what a saved map may claim.
    pub fn durable(&self, received: &ReceivedMap) -> ReceivedMap {
        let mut map = received.clone();
        for (frame, place) in self.place.iter().enumerate() {
            if matches!(place, Place::Memory | Place::Sent { .. }) {
                map.remove_range(packets_covering(
                    self.ranges[frame].clone(),
                    self.payload_size,
                ));
            }
        }
        map
    }
}

#[cfg(test)]
mod tests;
