use super::*;

/// Cells of 20 bytes (4 of data, then a 16-byte tag), so that a frame held
/// joined differs from its cells at their places.
const CELL: u16 = 20;

/// A 40-byte table, then frames of 2500, 100 and 4000 bytes; 1000-byte packets.
fn layout() -> (Vec<Range<u64>>, Vec<u8>) {
    let body: Vec<u8> = (0..6640u32).map(|i| (i % 251) as u8).collect();
    (vec![40..2540, 2540..2640, 2640..6640], body)
}

fn packet(body: &[u8], index: usize) -> (u64, &[u8]) {
    let start = index * 1000;
    (start as u64, &body[start..(start + 1000).min(body.len())])
}

/// Whether a frame was taken from memory.
fn in_memory(source: Option<FrameSource>) -> bool {
    matches!(source, Some(FrameSource::Memory(_)))
}

/// A frame taken from memory: its cells' data, joined.
fn joined(source: FrameSource, len: usize) -> Vec<u8> {
    match source {
        FrameSource::Memory(mut b) => b.cells_mut(len)[..len / 5].to_vec(),
        FrameSource::Disk => panic!("expected the frame in memory"),
    }
}

/// The data of the cells in `cells` (whole cells of `CELL`), joined.
fn data_of(cells: &[u8]) -> Vec<u8> {
    cells
        .chunks(CELL as usize)
        .flat_map(|c| c[..4].to_vec())
        .collect()
}

#[test]
fn frames_whose_packets_come_while_held_never_touch_the_disk() {
    let (ranges, body) = layout();
    let received = ReceivedMap::new(7);
    let mut a = FrameAssembly::new(ranges, 1000, CELL, 6640, &[false; 3], &received);
    let (mut to_disk, mut spill) = (Vec::new(), Vec::new());
    for p in [6, 0, 5, 1, 3, 4, 2] {
        let (at, payload) = packet(&body, p);
        a.store(at, payload, &mut to_disk, &mut spill);
    }
    // Only the frame table goes to the partial file.
    assert_eq!(to_disk, vec![(0, &body[..40])]);
    assert!(spill.is_empty());
    let mut all = ReceivedMap::new(7);
    all.insert_range(0..7);
    // Held in memory: a saved map may not claim them.
    assert_eq!(a.durable(&all).count(), 0);
    assert_eq!(joined(a.take(0).unwrap(), 2500), data_of(&body[40..2540]));
    assert_eq!(joined(a.take(2).unwrap(), 4000), data_of(&body[2640..6640]));
    assert!(a.take(0).is_none(), "handed over once");
    a.opened(0, true, None);
    a.opened(2, false, None);
    assert_eq!(a.done(), vec![true, false, false]);
    // Frame 0 is in the output: its packets (0..3) may be claimed but for
    // packet 2, which frame 1 (still in memory) shares.
    let durable = a.durable(&all);
    assert!(durable.contains_range(0..2) && !durable.contains(2));
}

/// Ten frames of 1000 bytes after a 40-byte table; room in memory for two, and
/// the partial file may hold 10040 / 5 = 2008 bytes: two frames.
fn ten_frames() -> (FrameAssembly, Vec<u8>) {
    let ranges: Vec<Range<u64>> = (0..10).map(|f| 40 + f * 1000..1040 + f * 1000).collect();
    let body: Vec<u8> = (0..10040u32).map(|i| (i % 241) as u8).collect();
    let received = ReceivedMap::new(11);
    let mut a = FrameAssembly::new(ranges, 1000, CELL, 10040, &[false; 10], &received);
    a.budget = 2 * a.buffer_len;
    (a, body)
}

/// Stores the first `len` bytes of each of `frames` of the ten-frame layout.
fn store_frame_starts<'a>(
    a: &mut FrameAssembly,
    body: &'a [u8],
    frames: Range<u64>,
    len: usize,
    to_disk: &mut Vec<(u64, &'a [u8])>,
    spill: &mut Vec<(u32, FrameBuffer)>,
) {
    for f in frames {
        let at = (40 + f * 1000) as usize;
        a.store(at as u64, &body[at..at + len], to_disk, spill);
    }
}

#[test]
fn past_the_budget_the_oldest_frame_spills_and_past_the_cap_a_new_one_is_let_go() {
    let (mut a, body) = ten_frames();
    let (mut to_disk, mut spill) = (Vec::new(), Vec::new());
    // The first cell of frames 0..=4, one at a time.
    store_frame_starts(&mut a, &body, 0..5, 20, &mut to_disk, &mut spill);
    // Frames 0 and 1 were spilled to make room for 2 and 3; frame 4 found the
    // partial file full and was let go.
    let spilled: Vec<u32> = spill.iter().map(|(f, _)| *f).collect();
    assert_eq!(spilled, vec![0, 1]);
    assert_eq!(a.take_let_go(), vec![4]);
    let mut buffer = spill.remove(0).1;
    assert_eq!(buffer.cells_mut(1000)[..4], body[40..44]);
    // Spilled, a frame's cells are at their places again (as on disk).
    let (mut c, _) = ten_frames();
    store_frame_starts(&mut c, &body, 0..1, 1000, &mut Vec::new(), &mut Vec::new());
    let all = c.take_memory();
    assert_eq!(data_of(all[0].1.cells(1000)), data_of(&body[40..1040]));
    // Later cells of a spilled frame go to disk; of a frame let go, nowhere.
    to_disk.clear();
    a.store(60, &body[60..80], &mut to_disk, &mut spill);
    a.store(4060, &body[4060..4080], &mut to_disk, &mut spill);
    assert_eq!(to_disk, vec![(60, &body[60..80])]);
    assert_eq!(a.take_let_go(), vec![4]);
    // A spilled frame is opened from the partial file, which then has room again.
    assert!(matches!(a.take(0), Some(FrameSource::Disk)));
    a.opened(0, true, None);
    a.recycle(buffer);
    a.store(4040, &body[4040..4060], &mut to_disk, &mut spill);
    assert_eq!(spill.len(), 2, "frame 2 spilled to make room for frame 4");
    assert!(a.take_let_go().is_empty());
}

#[test]
fn frames_with_bytes_held_before_the_table_stay_on_disk() {
    let (ranges, body) = layout();
    let mut received = ReceivedMap::new(7);
    received.insert(4); // bytes 4000..5000: frame 2
    let mut a = FrameAssembly::new(ranges, 1000, CELL, 6640, &[true, false, false], &received);
    let (mut to_disk, mut spill) = (Vec::new(), Vec::new());
    for p in [1, 2, 3] {
        let (at, payload) = packet(&body, p);
        a.store(at, payload, &mut to_disk, &mut spill);
    }
    // Frame 0 is done (its part of packets 1 and 2 is dropped), frame 1 goes to
    // memory, frame 2 to disk.
    assert_eq!(
        to_disk,
        vec![(2640, &body[2640..3000]), (3000, &body[3000..4000])]
    );
    assert_eq!(joined(a.take(1).unwrap(), 100), data_of(&body[2540..2640]));
    assert!(matches!(a.take(2), Some(FrameSource::Disk)));
    assert!(a.take(0).is_none());
}

#[test]
fn with_the_memory_all_at_the_worker_a_new_frame_goes_to_disk_within_the_cap() {
    let (mut a, body) = ten_frames();
    let (mut to_disk, mut spill) = (Vec::new(), Vec::new());
    store_frame_starts(&mut a, &body, 0..2, 1000, &mut to_disk, &mut spill);
    // Both frames whole and at the worker: nothing in memory to spill.
    assert!(in_memory(a.take(0)));
    assert!(in_memory(a.take(1)));
    to_disk.clear();
    store_frame_starts(&mut a, &body, 2..5, 20, &mut to_disk, &mut spill);
    // Frames 2 and 3 go to disk (the cap is 2008 bytes), frame 4 is let go.
    assert_eq!(
        to_disk,
        vec![(2040, &body[2040..2060]), (3040, &body[3040..3060])]
    );
    assert!(spill.is_empty());
    assert_eq!(a.take_let_go(), vec![4]);
    assert!(matches!(a.take(2), Some(FrameSource::Disk)));
}

#[test]
fn bytes_of_a_frame_sent_to_the_worker_are_read_back_for_a_rebuild_only_if_kept() {
    let (ranges, body) = layout();
    let mut received = ReceivedMap::new(7);
    let mut a = FrameAssembly::new(ranges, 1000, CELL, 6640, &[false; 3], &received);
    let (mut to_disk, mut spill) = (Vec::new(), Vec::new());
    // Frame 0 (packets 0..3) whole; packet 5, in frame 2, missing: the one
    // parity block (all 7 packets) is not whole.
    for p in [0, 1, 2, 3, 4, 6] {
        let (at, payload) = packet(&body, p);
        a.store(at, payload, &mut to_disk, &mut spill);
        received.insert(p as u32);
    }
    // Read back at their places (the tags' bytes are the caller's to write).
    let mut buf = vec![0u8; 1000];
    let mut from_disk = Vec::new();
    assert!(a.read(1000, &mut buf, &mut from_disk));
    assert_eq!(
        (data_of(&buf), from_disk.len()),
        (data_of(&body[1000..2000]), 0)
    );
    a.retain_for_rebuild(0, &received);
    assert!(a.take(0).is_some());
    // With the worker now (decrypted where it lies), but kept: still readable.
    buf.fill(0);
    assert!(a.read(1000, &mut buf, &mut from_disk));
    assert_eq!(data_of(&buf), data_of(&body[1000..2000]));
    // Packet 0 is partly the frame table (on disk), partly frame 0 (kept).
    assert!(a.read(0, &mut buf, &mut from_disk));
    assert_eq!(from_disk, vec![(0, 0..40)]);
    assert_eq!(data_of(&buf[40..]), data_of(&body[40..1000]));
    // Forgotten once the block is rebuilt, and not kept for a whole block.
    a.forget_retained(0..7000);
    assert!(!a.read(1000, &mut buf, &mut from_disk));
    let (at, payload) = packet(&body, 5);
    a.store(at, payload, &mut to_disk, &mut spill);
    received.insert(5);
    a.retain_for_rebuild(2, &received);
    assert!(a.take(2).is_some());
    assert!(!a.read(3000, &mut buf, &mut from_disk));
}

#[test]
fn the_worker_is_behind_when_the_memory_is_full_and_a_quarter_of_it_is_the_workers() {
    let (mut a, body) = ten_frames();
    a.budget = 4 * a.buffer_len;
    let (mut to_disk, mut spill) = (Vec::new(), Vec::new());
    store_frame_starts(&mut a, &body, 0..4, 1000, &mut to_disk, &mut spill);
    assert!(
        !a.worker_backlogged(),
        "full of frames being assembled: what they need is repairs"
    );
    let Some(FrameSource::Memory(first)) = a.take(0) else {
        panic!("frame 0 is in memory");
    };
    assert!(a.worker_backlogged(), "full, and a quarter at the worker");
    a.opened(0, true, Some(first));
    assert!(!a.worker_backlogged(), "room for a frame");
    store_frame_starts(&mut a, &body, 4..5, 1000, &mut to_disk, &mut spill);
    assert!(a.take(1).is_some() && a.take(2).is_some());
    assert!(a.worker_backlogged(), "full, half at the worker");
    // A frame the worker reads from the partial file holds no memory.
    assert!(matches!(a.take(6), Some(FrameSource::Disk)));
    assert!(a.worker_backlogged());
    assert!(spill.is_empty() && to_disk.is_empty());
}
