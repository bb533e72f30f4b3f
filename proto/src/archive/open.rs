//! Opening a frame's cells where they lie: their tags (unless they were opened
//! as they came), their data moved together (unless it was as they came), then
//! decompressed.

use super::{FrameError, FrameLayout};
use crate::cell::{CellKey, cell_data_len, join_cells};

/// What state a frame's cells are in when it is opened (spec §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cells {
    /// Sealed, as an archive file holds them: each is opened (its tag checked).
    Sealed,
    /// Opened already, each as it came in a DATA packet (or was rebuilt from
    /// parity) and before it was stored: their tags were checked then.
    Opened,
    /// Opened as they came and their data already moved together (a receiver's
    /// frame in memory, spec §5): the stored bytes start at the first byte.
    Joined,
}

/// Opens frame `frame` of archive `archive_id` from its sealed cells.
pub fn open_frame(
    key: &CellKey,
    archive_id: u64,
    cell_size: u16,
    frame: &FrameLayout,
    sealed: &[u8],
) -> Result<Vec<u8>, FrameError> {
    let mut copy = sealed.to_vec();
    let mut scratch = match frame.entry.compressed {
        true => vec![0u8; frame.plain_len as usize],
        false => Vec::new(),
    };
    let plain = open_frame_in_place(
        key,
        archive_id,
        cell_size,
        frame,
        &mut copy,
        &mut scratch,
        Cells::Sealed,
    )?;
    Ok(plain.to_vec())
}

/// Opens frame `frame` where it lies in `bytes` (its cells) and returns its
/// plaintext: at the start of `bytes` when the frame was stored raw, else
/// decompressed into `scratch` (at least the frame's original length). No
/// allocation; the one copy is of each cell's data over the tags before it.
pub fn open_frame_in_place<'a>(
    key: &CellKey,
    archive_id: u64,
    cell_size: u16,
    frame: &FrameLayout,
    bytes: &'a mut [u8],
    scratch: &'a mut [u8],
    cells: Cells,
) -> Result<&'a [u8], FrameError> {
    if bytes.len() as u64 != frame.range.end - frame.range.start || cell_size == 0 {
        return Err(FrameError::Invalid);
    }
    let first = frame.range.start / cell_size as u64;
    if cells == Cells::Sealed && !key.open_cells(archive_id, first, bytes, cell_size) {
        return Err(FrameError::BadTag);
    }
    let stored_len = frame.entry.stored_len as usize;
    let data = match cells {
        Cells::Joined
            if stored_len <= bytes.len() / cell_size as usize * cell_data_len(cell_size) =>
        {
            &mut bytes[..stored_len]
        }
        Cells::Joined => return Err(FrameError::Invalid),
        Cells::Sealed | Cells::Opened => {
            join_cells(bytes, cell_size, stored_len).ok_or(FrameError::Invalid)?
        }
    };
    if !frame.entry.compressed {
        return match data.len() == frame.plain_len as usize {
            true => Ok(data),
            false => Err(FrameError::Invalid),
        };
    }
    let n = decompress(data, scratch, frame.plain_len as usize)?;
    Ok(&scratch[..n])
}

/// zstd-decompresses `data` into `out`, which must take exactly `plain_len` bytes.
fn decompress(data: &[u8], out: &mut [u8], plain_len: usize) -> Result<usize, FrameError> {
    let out = out.get_mut(..plain_len).ok_or(FrameError::Invalid)?;
    let n = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(data, out))
        .map_err(|_| FrameError::Decompress)?;
    match n == plain_len {
        true => Ok(n),
        false => Err(FrameError::Decompress),
    }
}
