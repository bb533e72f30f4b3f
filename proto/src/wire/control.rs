//! Control packets: STATUS (server to receivers), NAK, REPORT, DONE and REQUEST
//! (receivers to server), COOKIE (the server's answer to an unvalidated REQUEST).

use super::{COOKIE_LEN, DecodeError, MAX_NAK_RANGES, MacKey, PacketType, datagram};
use crate::codec::Reader;

/// Server facts carried by STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Archive looped on this channel.
    pub archive_id: u64,
    /// Server clock in microseconds (opaque to receivers, echoed in NAKs).
    pub server_time_us: u64,
    /// Smoothed group round-trip time, microseconds.
    pub grtt_us: u32,
    /// Estimated number of receivers.
    pub group_size: u32,
    /// The channel's current rate in bits/s.
    pub rate_bps: u64,
    /// Packets of the loop this server does not hold yet (0: the whole archive;
    /// a relay still receiving it loops what it holds, spec §2.4).
    pub lacking: u32,
}
/// A request for missing packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nak {
    /// Archive the packets belong to.
    pub archive_id: u64,
    /// Random id of the sending receiver (so it can ignore its own NAKs).
    pub receiver_id: u32,
    /// `server_time_us` of the last STATUS heard (0: none yet).
    pub echo_time_us: u64,
    /// Microseconds between hearing that STATUS and sending this NAK.
    pub hold_us: u32,
    /// Missing packets as (first, count) ranges: resend these packets.
    pub ranges: Vec<(u32, u16)>,
    /// Blocks as (block, missing): send this many parity packets of the block
    /// (spec §6.5). `ranges` and `blocks` hold at most `MAX_NAK_RANGES` in all.
    pub blocks: Vec<(u32, u16)>,
}
/// A receiver's reception report for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    /// Archive being received.
    pub archive_id: u64,
    /// Random id of the receiver (as in its NAKs).
    pub receiver_id: u32,
    /// Index of the channel in the file's ANNOUNCE entry, or `UNICAST_CHANNEL`.
    pub channel: u8,
    /// Packets held so far.
    pub held: u32,
    /// Packets in the archive.
    pub packet_count: u32,
    /// Loop packets that arrived since the last report.
    pub arrived: u32,
    /// Loop packets the channel sent since the last report that did not arrive.
    pub lost: u32,
    /// Milliseconds the two counts above cover.
    pub interval_ms: u32,
    /// Datagrams the receiver's kernel dropped (socket buffer full), in total.
    pub kernel_drops: u32,
    /// `server_time_us` of the last STATUS heard (0: none yet): a report that does
    /// not echo a recent one is stale or replayed, and ignored (T10, T11).
    pub echo_time_us: u64,
}
/// A receiver's notice that it verified and delivered a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Archive delivered.
    pub archive_id: u64,
    /// Random id of the receiver.
    pub receiver_id: u32,
    /// Milliseconds from joining to delivery.
    pub elapsed_ms: u32,
}
/// A receiver's request to the server's unicast port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Random id of the receiver.
    pub receiver_id: u32,
    /// `REQUEST_UNICAST`, `REQUEST_START`; none: just the listing.
    pub flags: u8,
    /// Highest rate the receiver wants, bits/s (0: no limit).
    pub max_rate_bps: u64,
    /// The cookie from the server's COOKIE answer; all zero on a first request.
    pub cookie: [u8; COOKIE_LEN],
    /// Name of the file wanted (empty with no flags: the listing only).
    pub name: String,
}
/// Encodes a STATUS datagram.
pub fn encode_status(key: &MacKey, session_id: u32, status: &Status) -> Vec<u8> {
    datagram(key, PacketType::Status, session_id, |buf| {
        buf.extend_from_slice(&status.archive_id.to_be_bytes());
        buf.extend_from_slice(&status.server_time_us.to_be_bytes());
        buf.extend_from_slice(&status.grtt_us.to_be_bytes());
        buf.extend_from_slice(&status.group_size.to_be_bytes());
        buf.extend_from_slice(&status.rate_bps.to_be_bytes());
        buf.extend_from_slice(&status.lacking.to_be_bytes());
    })
}
/// Encodes a NAK datagram. More than `MAX_NAK_RANGES` ranges is a caller bug.
pub fn encode_nak(key: &MacKey, session_id: u32, nak: &Nak) -> Vec<u8> {
    assert!(
        nak.ranges.len() + nak.blocks.len() <= MAX_NAK_RANGES,
        "too many NAK ranges"
    );
    datagram(key, PacketType::Nak, session_id, |buf| {
        buf.extend_from_slice(&nak.archive_id.to_be_bytes());
        buf.extend_from_slice(&nak.receiver_id.to_be_bytes());
        buf.extend_from_slice(&nak.echo_time_us.to_be_bytes());
        buf.extend_from_slice(&nak.hold_us.to_be_bytes());
        buf.extend_from_slice(&(nak.ranges.len() as u16).to_be_bytes());
        for &(first, count) in &nak.ranges {
            buf.extend_from_slice(&first.to_be_bytes());
            buf.extend_from_slice(&count.to_be_bytes());
        }
        buf.extend_from_slice(&(nak.blocks.len() as u16).to_be_bytes());
        for &(block, missing) in &nak.blocks {
            buf.extend_from_slice(&block.to_be_bytes());
            buf.extend_from_slice(&missing.to_be_bytes());
        }
    })
}
/// Encodes a REPORT datagram (session id: the server's).
pub fn encode_report(key: &MacKey, session_id: u32, report: &Report) -> Vec<u8> {
    datagram(key, PacketType::Report, session_id, |buf| {
        buf.extend_from_slice(&report.archive_id.to_be_bytes());
        buf.extend_from_slice(&report.receiver_id.to_be_bytes());
        buf.push(report.channel);
        for v in [
            report.held,
            report.packet_count,
            report.arrived,
            report.lost,
            report.interval_ms,
            report.kernel_drops,
        ] {
            buf.extend_from_slice(&v.to_be_bytes());
        }
        buf.extend_from_slice(&report.echo_time_us.to_be_bytes());
    })
}
/// Encodes a DONE datagram (session id: the server's).
pub fn encode_done(key: &MacKey, session_id: u32, done: &Done) -> Vec<u8> {
    datagram(key, PacketType::Done, session_id, |buf| {
        buf.extend_from_slice(&done.archive_id.to_be_bytes());
        buf.extend_from_slice(&done.receiver_id.to_be_bytes());
        buf.extend_from_slice(&done.elapsed_ms.to_be_bytes());
    })
}
/// Encodes a REQUEST datagram (session id: the server's, or 0 when not known yet).
/// Names over 255 bytes are a caller bug.
pub fn encode_request(key: &MacKey, session_id: u32, request: &Request) -> Vec<u8> {
    assert!(
        request.name.len() <= 255,
        "request name longer than 255 bytes"
    );
    datagram(key, PacketType::Request, session_id, |buf| {
        buf.extend_from_slice(&request.receiver_id.to_be_bytes());
        buf.push(request.flags);
        buf.extend_from_slice(&request.max_rate_bps.to_be_bytes());
        buf.extend_from_slice(&request.cookie);
        buf.push(request.name.len() as u8);
        buf.extend_from_slice(request.name.as_bytes());
    })
}
/// Encodes a COOKIE datagram; it is never longer than the shortest REQUEST.
pub fn encode_cookie(key: &MacKey, session_id: u32, cookie: &[u8; COOKIE_LEN]) -> Vec<u8> {
    datagram(key, PacketType::Cookie, session_id, |buf| {
        buf.extend_from_slice(cookie)
    })
}
pub(super) fn decode_nak(r: &mut Reader<'_>) -> Result<Nak, DecodeError> {
    let archive_id = r.u64()?;
    let receiver_id = r.u32()?;
    let echo_time_us = r.u64()?;
    let hold_us = r.u32()?;
    let ranges = nak_pairs(r, MAX_NAK_RANGES)?;
    let blocks = nak_pairs(r, MAX_NAK_RANGES - ranges.len())?;
    if ranges.is_empty() && blocks.is_empty() {
        return Err(DecodeError::Invalid);
    }
    Ok(Nak {
        archive_id,
        receiver_id,
        echo_time_us,
        hold_us,
        ranges,
        blocks,
    })
}
/// A NAK's list of (u32, u16 ≥ 1) pairs, at most `max` of them, whose sum fits a u32.
fn nak_pairs(r: &mut Reader<'_>, max: usize) -> Result<Vec<(u32, u16)>, DecodeError> {
    let count = r.u16()? as usize;
    if count > max {
        return Err(DecodeError::Invalid);
    }
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let first = r.u32()?;
        let len = r.u16()?;
        if len == 0 || first.checked_add(len as u32).is_none() {
            return Err(DecodeError::Invalid);
        }
        pairs.push((first, len));
    }
    Ok(pairs)
}
