//! Which frames of an archive body have all their packets: lets a receiver verify
//! and unpack each frame as soon as it is whole, instead of after the last packet.

use crate::received::{ReceivedMap, packets_covering};
use std::ops::Range;

/// Per-frame count of missing packets, kept up to date as packets arrive.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    /// Body byte range of each frame.
    frames: Vec<Range<u64>>,
    payload_size: u32,
    /// Packets overlapping each frame that are not held yet.
    missing: Vec<u32>,
}

impl FrameTracker {
    /// A tracker for frames at `frames` (body byte ranges, in order, non-empty)
    /// carried in packets of `payload_size` bytes, counting from what `received` holds.
    pub fn new(frames: Vec<Range<u64>>, payload_size: u32, received: &ReceivedMap) -> Self {
        let mut tracker = Self {
            missing: vec![0; frames.len()],
            frames,
            payload_size: payload_size.max(1),
        };
        for frame in 0..tracker.frames.len() as u32 {
            tracker.recount(frame, received);
        }
        tracker
    }

    /// Number of frames.
    pub fn frame_count(&self) -> u32 {
        self.frames.len() as u32
    }

    /// Body byte range of `frame`.
    pub fn frame_range(&self, frame: u32) -> Range<u64> {
        self.frames[frame as usize].clone()
    }

    /// Packets that carry any byte of `frame`.
    pub fn packets_of(&self, frame: u32) -> Range<u32> {
        packets_covering(self.frames[frame as usize].clone(), self.payload_size)
    }

    /// Frames whose every packet is held.
    pub fn complete_frames(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.frame_count()).filter(|&f| self.is_complete(f))
    }

    /// Whether every packet of `frame` is held.
    pub fn is_complete(&self, frame: u32) -> bool {
        self.missing.get(frame as usize) == Some(&0)
    }

    /// Records that packet `index` arrived (newly held) and appends the frames it
    /// completed to `completed`.
    pub fn packet_arrived(&mut self, index: u32, completed: &mut Vec<u32>) {
        let start = index as u64 * self.payload_size as u64;
        let end = start + self.payload_size as u64;
        // First frame ending after the packet's start; frames are in body order.
        let first = self.frames.partition_point(|f| f.end <= start);
        for frame in first..self.frames.len() {
            if self.frames[frame].start >= end {
                break;
            }
            let m = &mut self.missing[frame];
            if *m > 0 {
                *m -= 1;
                if *m == 0 {
                    completed.push(frame as u32);
                }
            }
        }
    }

    /// Counts again, from `received`, the missing packets of every frame that
    /// packets `packets` carry bytes of.
    pub fn recount_packets(&mut self, packets: Range<u32>, received: &ReceivedMap) {
        let p = self.payload_size as u64;
        let bytes = packets.start as u64 * p..packets.end as u64 * p;
        let first = self.frames.partition_point(|f| f.end <= bytes.start);
        for frame in first..self.frames.len() {
            if self.frames[frame].start >= bytes.end {
                break;
            }
            self.recount(frame as u32, received);
        }
    }

    /// Counts `frame`'s missing packets again from `received` (after packets were
    /// marked missing because the frame failed to verify).
    pub fn recount(&mut self, frame: u32, received: &ReceivedMap) {
        let packets = self.packets_of(frame);
        let held = packets
            .clone()
            .filter(|&p| p < received.len() && received.contains(p))
            .count() as u32;
        self.missing[frame as usize] = packets.len() as u32 - held;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of 2500, 100 and 4000 bytes after a 40-byte table; 1000-byte packets.
    fn layout() -> (Vec<Range<u64>>, u32) {
        (vec![40..2540, 2540..2640, 2640..6640], 7)
    }

    #[test]
    fn a_frame_completes_when_its_last_packet_arrives_in_any_order() {
        let (frames, packets) = layout();
        let mut map = ReceivedMap::new(packets);
        let mut t = FrameTracker::new(frames, 1000, &map);
        assert_eq!(t.packets_of(0), 0..3);
        assert_eq!(t.packets_of(1), 2..3);
        assert_eq!(t.packets_of(2), 2..7);
        let mut done = Vec::new();
        for p in [6, 0, 5, 1, 3, 4] {
            map.insert(p);
            t.packet_arrived(p, &mut done);
        }
        assert!(done.is_empty(), "{done:?}");
        map.insert(2);
        t.packet_arrived(2, &mut done);
        assert_eq!(done, vec![0, 1, 2]);
        assert_eq!(t.complete_frames().count(), 3);
    }

    #[test]
    fn counts_start_from_the_received_map_and_recount_after_damage() {
        let (frames, packets) = layout();
        let mut map = ReceivedMap::new(packets);
        map.insert_range(0..7);
        let mut t = FrameTracker::new(frames, 1000, &map);
        assert_eq!(t.complete_frames().collect::<Vec<_>>(), vec![0, 1, 2]);
        map.remove_range(t.packets_of(2));
        t.recount(2, &map);
        // Frames 0 and 1 share packet 2 but were verified already: only 2 is recounted.
        assert_eq!(t.complete_frames().collect::<Vec<_>>(), vec![0, 1]);
        let mut done = Vec::new();
        for p in 2..7 {
            map.insert(p);
            t.packet_arrived(p, &mut done);
        }
        assert_eq!(done, vec![2]);
    }
}
