//! Receiver storage: the partial file written at packet offsets, its persisted
//! received map, the persister thread, and unpacking a body into the original with
//! its atomic delivery.

mod partial;
mod persister;
mod private;
mod unpack;

pub use partial::{PartialFile, SavedMap, decode_map, encode_map};
pub use persister::{Job, Persister};
pub use private::{partial_dir, remove_plaintext};
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
