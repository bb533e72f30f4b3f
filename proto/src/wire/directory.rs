//! ANNOUNCE: the server's file list and each file's channels.

use super::{DecodeError, ENTRY_IDLE, MAX_CHANNELS, MacKey, PacketType, datagram};
use crate::codec::{Reader, put_socket_addr, socket_addr_len};
use crate::keys::FINGERPRINT_LEN;
use std::net::SocketAddr;

/// One multicast channel of a file: where and how fast it loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Multicast group and port of the channel's data.
    pub group: SocketAddr,
    /// UDP port on the channel's group where NAKs go.
    pub control_port: u16,
    /// Channel rate in bits per second (its starting rate when the server adapts it).
    pub rate_bps: u64,
}
impl ChannelInfo {
    /// Where NAKs for this channel go.
    pub fn control(&self) -> SocketAddr {
        SocketAddr::new(self.group.ip(), self.control_port)
    }
}
/// One file on air, as listed in ANNOUNCE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceEntry {
    /// Archive id of the file's current archive.
    pub archive_id: u64,
    /// Size of the original file in bytes.
    pub original_size: u64,
    /// Bytes of the archive body looped on the channel.
    pub body_len: u64,
    /// blake3 digest of the original file (the manifest's), so that a push or a
    /// director can tell one file packed twice from two files of one name.
    pub content_digest: [u8; 32],
    /// `ENTRY_IDLE` when the channels wait for a request.
    pub flags: u8,
    /// File name (UTF-8, at most 255 bytes).
    pub name: String,
    /// The file's channels, 1 to `MAX_CHANNELS`, in the server's order of rates.
    pub channels: Vec<ChannelInfo>,
}
impl AnnounceEntry {
    /// True when the file's channels are stopped until a receiver asks for it.
    pub fn idle(&self) -> bool {
        self.flags & ENTRY_IDLE != 0
    }
}
/// One ANNOUNCE datagram: part `part` of `parts` of the server's file list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// Index of this part, from 0.
    pub part: u8,
    /// How many parts the whole list has.
    pub parts: u8,
    /// The server's unicast port (requests, reports, unicast streams), on the
    /// address the ANNOUNCE came from.
    pub unicast_port: u16,
    /// Fingerprint of the server's master key, so a receiver holding another key
    /// can say so instead of waiting (not secret; a forger can write any).
    pub key_fingerprint: [u8; FINGERPRINT_LEN],
    /// Files listed in this part.
    pub entries: Vec<AnnounceEntry>,
}
/// Bytes of the ANNOUNCE header after the common header: part, parts, unicast
/// port, key fingerprint, count.
pub const ANNOUNCE_HEADER_LEN: usize = 5 + FINGERPRINT_LEN;
/// Bytes one entry takes in an ANNOUNCE datagram.
pub fn announce_entry_len(entry: &AnnounceEntry) -> usize {
    let channels: usize = entry
        .channels
        .iter()
        .map(|c| socket_addr_len(c.group) + 2 + 8)
        .sum();
    8 + 8 + 8 + 32 + 1 + 1 + entry.name.len() + 1 + channels
}
/// Encodes an ANNOUNCE datagram. Names over 255 bytes or more than `MAX_CHANNELS`
/// channels are a caller bug.
pub fn encode_announce(key: &MacKey, session_id: u32, announce: &Announce) -> Vec<u8> {
    datagram(key, PacketType::Announce, session_id, |buf| {
        buf.push(announce.part);
        buf.push(announce.parts);
        buf.extend_from_slice(&announce.unicast_port.to_be_bytes());
        buf.extend_from_slice(&announce.key_fingerprint);
        buf.push(announce.entries.len() as u8);
        for e in &announce.entries {
            assert!(e.name.len() <= 255, "announce name longer than 255 bytes");
            assert!(
                (1..=MAX_CHANNELS).contains(&e.channels.len()),
                "announce entry with {} channels",
                e.channels.len()
            );
            buf.extend_from_slice(&e.archive_id.to_be_bytes());
            buf.extend_from_slice(&e.original_size.to_be_bytes());
            buf.extend_from_slice(&e.body_len.to_be_bytes());
            buf.extend_from_slice(&e.content_digest);
            buf.push(e.flags);
            buf.push(e.name.len() as u8);
            buf.extend_from_slice(e.name.as_bytes());
            buf.push(e.channels.len() as u8);
            for c in &e.channels {
                put_socket_addr(buf, c.group);
                buf.extend_from_slice(&c.control_port.to_be_bytes());
                buf.extend_from_slice(&c.rate_bps.to_be_bytes());
            }
        }
    })
}
pub(super) fn decode_announce(r: &mut Reader<'_>) -> Result<Announce, DecodeError> {
    let part = r.u8()?;
    let parts = r.u8()?;
    let unicast_port = r.u16()?;
    let key_fingerprint = r.array()?;
    let count = r.u8()?;
    if parts == 0 || part >= parts {
        return Err(DecodeError::Invalid);
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let archive_id = r.u64()?;
        let original_size = r.u64()?;
        let body_len = r.u64()?;
        let content_digest = r.array()?;
        let flags = r.u8()?;
        let name_len = r.u8()? as usize;
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| DecodeError::Invalid)?
            .to_owned();
        let channel_count = r.u8()? as usize;
        if !(1..=MAX_CHANNELS).contains(&channel_count) {
            return Err(DecodeError::Invalid);
        }
        let mut channels = Vec::with_capacity(channel_count);
        for _ in 0..channel_count {
            channels.push(ChannelInfo {
                group: r.socket_addr()?.ok_or(DecodeError::Invalid)?,
                control_port: r.u16()?,
                rate_bps: r.u64()?,
            });
        }
        entries.push(AnnounceEntry {
            archive_id,
            original_size,
            body_len,
            content_digest,
            flags,
            name,
            channels,
        });
    }
    Ok(Announce {
        part,
        parts,
        unicast_port,
        key_fingerprint,
        entries,
    })
}
