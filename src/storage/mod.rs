//! Receiver storage: frames assembled in memory, the partial file for the rest,
//! the persisted received map, the persister thread, and unpacking a body into
//! the original with its atomic delivery.

mod frames;
mod kept;
mod map;
mod output;
mod partial;
mod persister;
mod private;
mod unpack;
mod vectored;

pub use frames::{FrameBuffer, FrameSource};
pub use kept::{KeptArchive, RelayNews};
pub use map::{SavedMap, SavedState, decode_state, encode_map};
pub use output::PlainOutput;
pub use partial::{PartialFile, Rebuilt, free_bytes};
pub use persister::{Job, Persister};
pub use private::{discard_partial, own_dir, partial_dir, read_private};
pub use unpack::{FrameReport, FrameWorker, OutputDir, deliver};

use crate::error::Error;
use std::ops::Range;

/// Folder inside the output directory that holds partial files and their maps.
pub const PARTIAL_DIR: &str = ".loopcast-partial";

/// Why a body did not unpack.
#[derive(Debug)]
pub enum UnpackFailure {
    /// The frame table is damaged: its packets must come again.
    Table,
    /// These body ranges (whole frames) failed: their packets must come again.
    Frames(Vec<Range<u64>>),
    /// Every frame opened, yet the whole does not match the manifest digest.
    Digest,
    /// Reading the body or writing the output failed.
    Io(Error),
}

impl std::fmt::Display for UnpackFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnpackFailure::Table => f.write_str("its frame table is damaged"),
            UnpackFailure::Frames(ranges) => write!(f, "{} frame(s) are damaged", ranges.len()),
            UnpackFailure::Digest => {
                f.write_str("every frame opened but the file does not match its digest")
            }
            UnpackFailure::Io(e) => write!(f, "{e}"),
        }
    }
}
