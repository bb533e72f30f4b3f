//! The body's layout from the manifest's fields alone: frames, the frame
//! table's length and cells. Its own file so that the manifest, which checks a
//! layout, and the archive, which reads the manifest's header, do not import
//! each other.

use crate::cell::cells_for;

/// Bytes of one frame table entry.
pub const TABLE_ENTRY_LEN: usize = 4;

/// Number of frames for a file of `size` bytes (an empty file still has one, empty, frame).
pub fn frame_count(size: u64, frame_size: u32) -> u64 {
    size.div_ceil(frame_size as u64).max(1)
}

/// Bytes of the frame table (its data, before it is cut into cells).
pub fn table_len(frame_count: u32) -> u64 {
    frame_count as u64 * TABLE_ENTRY_LEN as u64
}

/// Cells the frame table of `frame_count` frames fills at the start of the body.
pub fn table_cells(frame_count: u32, cell_size: u16) -> u64 {
    cells_for(table_len(frame_count), cell_size)
}

/// Smallest possible body: the table's cells plus one cell per frame.
pub fn min_body_len(frame_count: u32, cell_size: u16) -> u64 {
    (table_cells(frame_count, cell_size) + frame_count as u64) * cell_size as u64
}
