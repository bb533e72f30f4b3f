//! Opening sealed frames: checking the header against where the frame was found,
//! verifying and decrypting it where it lies, and decompressing it.

use super::{
    FLAG_COMPRESSED, FRAME_HEADER_LEN, FRAME_OVERHEAD, FRAME_VERSION, FrameError, FramePlace,
    MAX_FRAME_SIZE, cipher,
};
use crate::codec::Reader;
use crate::keys::FileKey;
use aes_gcm::Tag;
use aes_gcm::aead::AeadInOut;
use ctr::cipher::{KeyIvInit, StreamCipher};

/// What opening a frame checks of its sealing (spec §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Verify the GCM tag, then decrypt: a frame from a file, or with bytes
    /// rebuilt from parity.
    Tag,
    /// Decrypt only: every byte of the frame came as it was sent in a DATA packet
    /// whose GMAC verified under this archive's key, so the tag would prove again
    /// what the packets proved. The header is still checked, and the content
    /// digest still covers the plaintext.
    Packets,
}

/// Verifies, decrypts and decompresses one sealed frame found at `place`.
pub fn open_frame(
    file_key: &FileKey,
    place: &FramePlace,
    sealed: &[u8],
) -> Result<Vec<u8>, FrameError> {
    let mut copy = sealed.to_vec();
    let mut scratch = match frame_is_compressed(sealed) {
        true => vec![0u8; place.frame_size.min(MAX_FRAME_SIZE) as usize],
        false => Vec::new(),
    };
    Ok(open_frame_in_place(file_key, place, &mut copy, &mut scratch, Check::Tag)?.to_vec())
}

fn frame_is_compressed(sealed: &[u8]) -> bool {
    sealed.get(1).is_some_and(|f| f & FLAG_COMPRESSED != 0)
}

/// Verifies and decrypts one sealed frame found at `place` where it lies, and
/// returns its plaintext: inside `sealed` (right after the frame header) when the
/// frame was stored uncompressed, else decompressed into `scratch` (at least
/// `frame_size` bytes). No allocation, no copy of an uncompressed frame.
pub fn open_frame_in_place<'a>(
    file_key: &FileKey,
    place: &FramePlace,
    sealed: &'a mut [u8],
    scratch: &'a mut [u8],
    check: Check,
) -> Result<&'a [u8], FrameError> {
    let frame = SealedFrame::parse(place, sealed)?;
    let (head, rest) = sealed.split_at_mut(FRAME_HEADER_LEN);
    let (data, tag) = rest.split_at_mut(frame.stored_len);
    match check {
        Check::Tag => {
            let (cipher, nonce) = cipher(file_key, &head[28..]);
            cipher
                .decrypt_inout_detached(&nonce, head, (&mut data[..]).into(), &frame.tag(tag)?)
                .map_err(|_| FrameError::BadTag)?;
        }
        Check::Packets => gcm_keystream(file_key, &head[28..]).apply_keystream(data),
    }
    if !frame.compressed {
        return Ok(data);
    }
    let n = decompress(data, scratch, frame.plain_len)?;
    Ok(&scratch[..n])
}

/// The keystream GCM encrypts a frame with (NIST SP 800-38D: AES-CTR with a
/// 32-bit big-endian counter, from the nonce followed by 2; block 1 masks the tag).
fn gcm_keystream(file_key: &FileKey, salt: &[u8]) -> ctr::Ctr32BE<aes::Aes256> {
    let fk = file_key.frame_key(salt);
    let mut iv = [0u8; 16];
    iv[..12].copy_from_slice(&fk.nonce);
    iv[15] = 2;
    ctr::Ctr32BE::<aes::Aes256>::new(&fk.key.into(), &iv.into())
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

/// What a sealed frame's header says, checked against where it was found.
struct SealedFrame {
    compressed: bool,
    plain_len: usize,
    stored_len: usize,
}

impl SealedFrame {
    fn parse(place: &FramePlace, sealed: &[u8]) -> Result<Self, FrameError> {
        if sealed.len() < FRAME_OVERHEAD {
            return Err(FrameError::Invalid);
        }
        let mut h = Reader::new(&sealed[..FRAME_HEADER_LEN]);
        let parse = (|| {
            Some((
                h.u8().ok()?,
                h.u8().ok()?,
                h.u16().ok()?,
                h.u64().ok()?,
                h.u32().ok()?,
                h.u32().ok()?,
                h.u32().ok()?,
                h.u32().ok()?,
            ))
        })();
        let Some((version, flags, _reserved, archive_id, index, count, plain_len, stored_len)) =
            parse
        else {
            return Err(FrameError::Invalid);
        };
        let matches = version == FRAME_VERSION
            && flags & !FLAG_COMPRESSED == 0
            && archive_id == place.archive_id
            && index == place.index
            && count == place.count
            && plain_len <= place.frame_size
            && stored_len as usize + FRAME_OVERHEAD == sealed.len()
            && (flags & FLAG_COMPRESSED != 0 || stored_len == plain_len);
        if !matches {
            return Err(FrameError::Invalid);
        }
        Ok(Self {
            compressed: flags & FLAG_COMPRESSED != 0,
            plain_len: plain_len as usize,
            stored_len: stored_len as usize,
        })
    }

    fn tag(&self, bytes: &[u8]) -> Result<Tag, FrameError> {
        Tag::try_from(bytes).map_err(|_| FrameError::Invalid)
    }
}
