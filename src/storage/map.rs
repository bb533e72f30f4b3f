//! The received map as saved beside a partial file: the layout it belongs to,
//! the packets held, the frames in the output and where the loops stood, with a
//! CRC; and saving it durably (data first, then the map, renamed into place).

use super::private::create_private;
use crate::error::{Context, Result};
use loopcast_proto::{Manifest, ReceivedMap, ResumePoint};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Maps saved before frames were unpacked from memory (no list of frames in the output).
const MAP_MAGIC_V1: [u8; 8] = *b"LCMAP001";
const MAP_MAGIC: [u8; 8] = *b"LCMAP002";
const MAP_HEADER_LEN: usize = 8 + 8 + 2 + 4 + 8;
/// A received map read back from disk, with where the loops stood when it was saved.
pub type SavedMap = (ReceivedMap, Option<ResumePoint>);

/// A saved map, where the loops stood, and which frames were in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedState {
    /// Packets held (in the partial file, or in frames in the output).
    pub map: ReceivedMap,
    /// Where the loops stood (None in maps saved before resume points).
    pub resume: Option<ResumePoint>,
    /// Frames verified and written to the output.
    pub done: Vec<bool>,
}

/// Syncs the data (partial file and output), then writes the map aside and renames it into place, so a
/// map never claims a packet whose bytes could be lost.
pub(super) fn save(files: &[&File], map_path: &Path, map: &[u8]) -> Result<()> {
    for file in files {
        file.sync_data()
            .context(|| format!("cannot sync the data for {}", map_path.display()))?;
    }
    let tmp = map_path.with_extension("map.tmp");
    let write = || -> io::Result<()> {
        let mut f = create_private(&tmp)?;
        f.write_all(map)?;
        f.sync_data()?;
        fs::rename(&tmp, map_path)
    };
    write().context(|| format!("cannot save {}", map_path.display()))
}

/// Encodes a received map with the layout it belongs to, which frames are in the
/// output, where the loops stood (`ResumePoint`) and a CRC32.
pub fn encode_map(
    map: &ReceivedMap,
    done: &[bool],
    resume: &ResumePoint,
    manifest: &Manifest,
) -> Vec<u8> {
    let mut out = encode_map_header(&MAP_MAGIC, manifest);
    out.extend_from_slice(&map.to_bytes());
    let mut bits = vec![0u8; (manifest.frame_count as usize).div_ceil(8)];
    for (frame, _) in done.iter().enumerate().filter(|(_, d)| **d) {
        bits[frame / 8] |= 1 << (frame % 8);
    }
    out.extend_from_slice(&bits);
    out.extend_from_slice(&resume.encode());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// The part of a saved map that names the archive and layout.
fn encode_map_header(magic: &[u8; 8], manifest: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAP_HEADER_LEN + manifest.packet_count() as usize / 8 + 128);
    out.extend_from_slice(magic);
    out.extend_from_slice(&manifest.archive_id.to_be_bytes());
    out.extend_from_slice(&manifest.payload_size.to_be_bytes());
    out.extend_from_slice(&manifest.packet_count().to_be_bytes());
    out.extend_from_slice(&manifest.body_len.to_be_bytes());
    out
}

/// Decodes a persisted map; None unless it is intact and belongs to `manifest`'s
/// layout. Maps of the first format (no frames in the output; the resume point
/// may be missing too) still load.
pub fn decode_state(bytes: &[u8], manifest: &Manifest) -> Option<SavedState> {
    let (content, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(content).to_be_bytes() != crc || content.len() < MAP_HEADER_LEN {
        return None; // damaged
    }
    let version_1 = content[..MAP_HEADER_LEN] == encode_map_header(&MAP_MAGIC_V1, manifest)[..];
    if !version_1 && content[..MAP_HEADER_LEN] != encode_map_header(&MAP_MAGIC, manifest)[..] {
        return None; // another archive, payload size or length
    }
    let body = &content[MAP_HEADER_LEN..];
    let (map, rest) = body.split_at_checked((manifest.packet_count() as usize).div_ceil(8))?;
    let map = ReceivedMap::from_bytes(manifest.packet_count(), map)?;
    let frames = manifest.frame_count as usize;
    let (done, resume) = match version_1 {
        true => (vec![false; frames], rest),
        false => {
            let (bits, resume) = rest.split_at_checked(frames.div_ceil(8))?;
            let done = (0..frames).map(|f| bits[f / 8] & (1 << (f % 8)) != 0);
            (done.collect(), resume)
        }
    };
    Some(SavedState {
        map,
        resume: ResumePoint::decode(resume),
        done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_saved_map_keeps_its_frames_and_resume_point_and_old_maps_still_load() {
        let key = loopcast_proto::MasterKey::from_bytes([3; 32]);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let (manifest, _, _) =
            loopcast_proto::sim::pack(&key, &[7u8; 300_000], 1 << 16, 1000, &mut rng);
        assert_eq!(manifest.frame_count, 5);
        let mut map = ReceivedMap::new(manifest.packet_count());
        map.insert_range(0..17);
        let point = ResumePoint {
            session_id: 9,
            tracks: vec![loopcast_proto::receiver::SavedTrack {
                track: 0,
                join: 0,
                position: 16,
                advanced: 16,
            }],
        };
        let done = vec![true, false, false, true, false];
        let bytes = encode_map(&map, &done, &point, &manifest);
        let state = |map: &ReceivedMap, done: &[bool], resume| SavedState {
            map: map.clone(),
            resume,
            done: done.to_vec(),
        };
        assert_eq!(
            decode_state(&bytes, &manifest),
            Some(state(&map, &done, Some(point.clone())))
        );
        let none = vec![false; 5];
        // The first format: header, bits, resume point (or not), CRC.
        for resume in [Some(point), None] {
            let mut old = encode_map_header(&MAP_MAGIC_V1, &manifest);
            old.extend_from_slice(&map.to_bytes());
            if let Some(p) = &resume {
                old.extend_from_slice(&p.encode());
            }
            let crc = crc32fast::hash(&old);
            old.extend_from_slice(&crc.to_be_bytes());
            assert_eq!(
                decode_state(&old, &manifest),
                Some(state(&map, &none, resume))
            );
        }
        let mut damaged = bytes.clone();
        damaged[MAP_HEADER_LEN] ^= 1;
        assert_eq!(decode_state(&damaged, &manifest), None);
    }
}
