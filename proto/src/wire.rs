//! Datagram format: common header, the body of each packet type, CRC32 trailer.
//! `proto/PROTOCOL.md` is the normative description of every field here.

use crate::codec::{Reader, Truncated};
use std::net::{Ipv4Addr, SocketAddrV4};

/// First two bytes of every loopcast datagram: "LC".
pub const MAGIC: [u8; 2] = *b"LC";
/// Wire format version this code speaks.
pub const VERSION: u8 = 2;
/// Bytes of the common header (magic, version, type, session id).
pub const COMMON_HEADER_LEN: usize = 8;
/// Bytes of the CRC32 trailer.
pub const TRAILER_LEN: usize = 4;
/// Bytes of a DATA packet header, common header included.
pub const DATA_HEADER_LEN: usize = COMMON_HEADER_LEN + 20;
/// Bytes an IPv4 + UDP header add to a datagram.
pub const IP_UDP_OVERHEAD: usize = 28;
/// Default IP packet size: a standard Ethernet MTU.
pub const DEFAULT_PACKET_SIZE: usize = 1500;
/// Smallest IP packet size accepted; a manifest must fit in one packet.
pub const MIN_PACKET_SIZE: usize = 576;
/// Largest IP packet size accepted (a jumbo frame).
pub const MAX_PACKET_SIZE: usize = 9000;
/// Most channels (rates) one file may be looped on.
pub const MAX_CHANNELS: usize = 8;
/// Bytes of an address-validation cookie.
pub const COOKIE_LEN: usize = 24;
/// `Report::channel` of a receiver fed by unicast.
pub const UNICAST_CHANNEL: u8 = 255;

/// Archive payload bytes carried by one DATA packet for a given IP packet size.
pub fn payload_size_for_packet(packet_size: usize) -> usize {
    packet_size - IP_UDP_OVERHEAD - DATA_HEADER_LEN - TRAILER_LEN
}

/// Datagram types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketType {
    /// A slice of an archive body.
    Data = 1,
    /// The authenticated manifest of the archive looped on this channel.
    Manifest = 2,
    /// The list of files on air, sent on the directory group.
    Announce = 3,
    /// Server timing and group facts for receivers' timers, on the data channel.
    Status = 4,
    /// A receiver's request for missing packets, on the control port.
    Nak = 5,
    /// A receiver's reception report, to the server's unicast port.
    Report = 6,
    /// A receiver's notice that it verified a file, to the server's unicast port.
    Done = 7,
    /// A receiver's request for the listing, a unicast stream or a channel start.
    Request = 8,
    /// The server's answer to a request without a valid cookie.
    Cookie = 9,
}

/// Bytes of a STATUS datagram: common header, 32-byte body, trailer.
pub const STATUS_DATAGRAM_LEN: usize = COMMON_HEADER_LEN + 32 + TRAILER_LEN;
/// DATA flag: this packet is a repair sent out of loop order; it does not move the
/// receiver's idea of where the loop is.
pub const FLAG_REPAIR: u16 = 1;
/// Most ranges one NAK may carry (keeps a NAK within 1472 bytes).
pub const MAX_NAK_RANGES: usize = 200;
/// Bytes of one NAK range: first packet (u32) and count (u16).
pub const NAK_RANGE_LEN: usize = 6;
/// REQUEST flag: stream the named file to the sender of this request by unicast.
pub const REQUEST_UNICAST: u8 = 1;
/// REQUEST flag: start the named file's multicast channels (`--on-demand` servers).
pub const REQUEST_START: u8 = 2;
/// ANNOUNCE entry flag: the file's channels are stopped until a receiver asks (on demand).
pub const ENTRY_IDLE: u8 = 1;

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
    /// Missing packets as (first, count) ranges.
    pub ranges: Vec<(u32, u16)>,
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

/// Why a datagram was rejected; receivers count these, never panic on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Shorter than its header, or a body field runs past the end.
    Truncated,
    /// The CRC32 trailer does not match.
    BadCrc,
    /// Not "LC".
    BadMagic,
    /// A wire version this code does not speak.
    BadVersion,
    /// A type byte this code does not know.
    UnknownType,
    /// A field holds an impossible value (index ≥ count, bad lengths…).
    Invalid,
}

impl From<Truncated> for DecodeError {
    fn from(_: Truncated) -> Self {
        DecodeError::Truncated
    }
}

/// Header of a DATA packet (after the common header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Archive the payload belongs to.
    pub archive_id: u64,
    /// Packet number k: the payload is body bytes [k·P, k·P + len).
    pub packet_index: u32,
    /// Number of packets in one loop of the archive.
    pub packet_count: u32,
    /// Flag bits: `FLAG_REPAIR`; others are sent as 0 and ignored.
    pub flags: u16,
}

/// One multicast channel of a file: where and how fast it loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Multicast group and port of the channel's data.
    pub group: SocketAddrV4,
    /// UDP port on the channel's group where NAKs go.
    pub control_port: u16,
    /// Channel rate in bits per second (its starting rate when the server adapts it).
    pub rate_bps: u64,
}

impl ChannelInfo {
    /// Where NAKs for this channel go.
    pub fn control(&self) -> SocketAddrV4 {
        SocketAddrV4::new(*self.group.ip(), self.control_port)
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
    /// Files listed in this part.
    pub entries: Vec<AnnounceEntry>,
}

/// A decoded datagram; DATA payloads and MANIFEST bodies borrow from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A DATA packet and its payload.
    Data(DataHeader, &'a [u8]),
    /// A MANIFEST packet; the body is decoded by `Manifest::decode`.
    Manifest(&'a [u8]),
    /// An ANNOUNCE packet.
    Announce(Announce),
    /// A STATUS packet.
    Status(Status),
    /// A NAK packet.
    Nak(Nak),
    /// A REPORT packet.
    Report(Report),
    /// A DONE packet.
    Done(Done),
    /// A REQUEST packet.
    Request(Request),
    /// A COOKIE packet.
    Cookie([u8; COOKIE_LEN]),
}

/// A decoded datagram with its sender's session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Random id of the server instance the datagram belongs to.
    pub session_id: u32,
    /// The packet itself.
    pub packet: Packet<'a>,
}

/// Appends the common header to an empty `buf`.
fn put_common(buf: &mut Vec<u8>, kind: PacketType, session_id: u32) {
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
    buf.push(kind as u8);
    buf.extend_from_slice(&session_id.to_be_bytes());
}

/// A whole datagram: common header, the body `write` appends, CRC trailer.
fn datagram(kind: PacketType, session_id: u32, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    put_common(&mut buf, kind, session_id);
    write(&mut buf);
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_be_bytes());
    buf
}

/// Writes a DATA header into `buf[..DATA_HEADER_LEN]`; the payload follows it.
pub fn write_data_header(buf: &mut [u8], session_id: u32, header: &DataHeader) {
    buf[0..2].copy_from_slice(&MAGIC);
    buf[2] = VERSION;
    buf[3] = PacketType::Data as u8;
    buf[4..8].copy_from_slice(&session_id.to_be_bytes());
    buf[8..16].copy_from_slice(&header.archive_id.to_be_bytes());
    buf[16..20].copy_from_slice(&header.packet_index.to_be_bytes());
    buf[20..24].copy_from_slice(&header.packet_count.to_be_bytes());
    buf[24..26].copy_from_slice(&header.flags.to_be_bytes());
    buf[26..28].copy_from_slice(&0u16.to_be_bytes());
}

/// Appends the CRC32 trailer over `buf[..len]` at `buf[len..len + 4]`; returns the datagram length.
pub fn seal_in_place(buf: &mut [u8], len: usize) -> usize {
    let crc = crc32fast::hash(&buf[..len]);
    buf[len..len + TRAILER_LEN].copy_from_slice(&crc.to_be_bytes());
    len + TRAILER_LEN
}

/// Encodes a complete DATA datagram (used by tests and tools; the sender writes in place).
pub fn encode_data(session_id: u32, header: &DataHeader, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; DATA_HEADER_LEN + payload.len() + TRAILER_LEN];
    write_data_header(&mut buf, session_id, header);
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + payload.len()].copy_from_slice(payload);
    seal_in_place(&mut buf, DATA_HEADER_LEN + payload.len());
    buf
}

/// Encodes a MANIFEST datagram around already-encoded manifest bytes.
pub fn encode_manifest(session_id: u32, manifest: &[u8]) -> Vec<u8> {
    datagram(PacketType::Manifest, session_id, |b| {
        b.extend_from_slice(manifest)
    })
}

/// Bytes of the ANNOUNCE header after the common header: part, parts, unicast port, count.
pub const ANNOUNCE_HEADER_LEN: usize = 5;
/// Bytes one channel takes in an ANNOUNCE entry.
const CHANNEL_INFO_LEN: usize = 4 + 2 + 2 + 8;

/// Bytes one entry takes in an ANNOUNCE datagram.
pub fn announce_entry_len(entry: &AnnounceEntry) -> usize {
    8 + 8 + 8 + 1 + 1 + entry.name.len() + 1 + entry.channels.len() * CHANNEL_INFO_LEN
}

/// Encodes an ANNOUNCE datagram. Names over 255 bytes or more than `MAX_CHANNELS`
/// channels are a caller bug.
pub fn encode_announce(session_id: u32, announce: &Announce) -> Vec<u8> {
    datagram(PacketType::Announce, session_id, |buf| {
        buf.push(announce.part);
        buf.push(announce.parts);
        buf.extend_from_slice(&announce.unicast_port.to_be_bytes());
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
            buf.push(e.flags);
            buf.push(e.name.len() as u8);
            buf.extend_from_slice(e.name.as_bytes());
            buf.push(e.channels.len() as u8);
            for c in &e.channels {
                buf.extend_from_slice(&c.group.ip().octets());
                buf.extend_from_slice(&c.group.port().to_be_bytes());
                buf.extend_from_slice(&c.control_port.to_be_bytes());
                buf.extend_from_slice(&c.rate_bps.to_be_bytes());
            }
        }
    })
}

/// Decodes and checks one datagram; never panics, whatever the input.
pub fn decode(bytes: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    if bytes.len() < COMMON_HEADER_LEN + TRAILER_LEN {
        return Err(DecodeError::Truncated);
    }
    if bytes[0..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let (content, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    let crc = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if crc32fast::hash(content) != crc {
        return Err(DecodeError::BadCrc);
    }
    if bytes[2] != VERSION {
        return Err(DecodeError::BadVersion);
    }
    let mut r = Reader::new(&content[3..]);
    let kind = r.u8()?;
    let session_id = r.u32()?;
    let packet = match kind {
        k if k == PacketType::Data as u8 => {
            let header = DataHeader {
                archive_id: r.u64()?,
                packet_index: r.u32()?,
                packet_count: r.u32()?,
                flags: r.u16()?,
            };
            let _reserved = r.u16()?;
            if header.packet_index >= header.packet_count || r.rest().is_empty() {
                return Err(DecodeError::Invalid);
            }
            return Ok(Datagram {
                session_id,
                packet: Packet::Data(header, r.rest()),
            });
        }
        k if k == PacketType::Manifest as u8 => {
            return Ok(Datagram {
                session_id,
                packet: Packet::Manifest(r.rest()),
            });
        }
        k if k == PacketType::Announce as u8 => Packet::Announce(decode_announce(&mut r)?),
        k if k == PacketType::Status as u8 => Packet::Status(Status {
            archive_id: r.u64()?,
            server_time_us: r.u64()?,
            grtt_us: r.u32()?,
            group_size: r.u32()?,
            rate_bps: r.u64()?,
        }),
        k if k == PacketType::Nak as u8 => Packet::Nak(decode_nak(&mut r)?),
        k if k == PacketType::Report as u8 => Packet::Report(Report {
            archive_id: r.u64()?,
            receiver_id: r.u32()?,
            channel: r.u8()?,
            held: r.u32()?,
            packet_count: r.u32()?,
            arrived: r.u32()?,
            lost: r.u32()?,
            interval_ms: r.u32()?,
            kernel_drops: r.u32()?,
        }),
        k if k == PacketType::Done as u8 => Packet::Done(Done {
            archive_id: r.u64()?,
            receiver_id: r.u32()?,
            elapsed_ms: r.u32()?,
        }),
        k if k == PacketType::Request as u8 => {
            let receiver_id = r.u32()?;
            let flags = r.u8()?;
            let max_rate_bps = r.u64()?;
            let cookie = r.array()?;
            let name_len = r.u8()? as usize;
            let name = std::str::from_utf8(r.take(name_len)?)
                .map_err(|_| DecodeError::Invalid)?
                .to_owned();
            Packet::Request(Request {
                receiver_id,
                flags,
                max_rate_bps,
                cookie,
                name,
            })
        }
        k if k == PacketType::Cookie as u8 => Packet::Cookie(r.array()?),
        _ => return Err(DecodeError::UnknownType),
    };
    // Every body but DATA's and MANIFEST's must end exactly where its fields do.
    if !r.rest().is_empty() {
        return Err(DecodeError::Invalid);
    }
    Ok(Datagram { session_id, packet })
}

/// Encodes a STATUS datagram.
pub fn encode_status(session_id: u32, status: &Status) -> Vec<u8> {
    datagram(PacketType::Status, session_id, |buf| {
        buf.extend_from_slice(&status.archive_id.to_be_bytes());
        buf.extend_from_slice(&status.server_time_us.to_be_bytes());
        buf.extend_from_slice(&status.grtt_us.to_be_bytes());
        buf.extend_from_slice(&status.group_size.to_be_bytes());
        buf.extend_from_slice(&status.rate_bps.to_be_bytes());
    })
}

/// Encodes a NAK datagram. More than `MAX_NAK_RANGES` ranges is a caller bug.
pub fn encode_nak(session_id: u32, nak: &Nak) -> Vec<u8> {
    assert!(nak.ranges.len() <= MAX_NAK_RANGES, "too many NAK ranges");
    datagram(PacketType::Nak, session_id, |buf| {
        buf.extend_from_slice(&nak.archive_id.to_be_bytes());
        buf.extend_from_slice(&nak.receiver_id.to_be_bytes());
        buf.extend_from_slice(&nak.echo_time_us.to_be_bytes());
        buf.extend_from_slice(&nak.hold_us.to_be_bytes());
        buf.extend_from_slice(&(nak.ranges.len() as u16).to_be_bytes());
        for &(first, count) in &nak.ranges {
            buf.extend_from_slice(&first.to_be_bytes());
            buf.extend_from_slice(&count.to_be_bytes());
        }
    })
}

/// Encodes a REPORT datagram (session id: the server's).
pub fn encode_report(session_id: u32, report: &Report) -> Vec<u8> {
    datagram(PacketType::Report, session_id, |buf| {
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
    })
}

/// Encodes a DONE datagram (session id: the server's).
pub fn encode_done(session_id: u32, done: &Done) -> Vec<u8> {
    datagram(PacketType::Done, session_id, |buf| {
        buf.extend_from_slice(&done.archive_id.to_be_bytes());
        buf.extend_from_slice(&done.receiver_id.to_be_bytes());
        buf.extend_from_slice(&done.elapsed_ms.to_be_bytes());
    })
}

/// Encodes a REQUEST datagram (session id: the server's, or 0 when not known yet).
/// Names over 255 bytes are a caller bug.
pub fn encode_request(session_id: u32, request: &Request) -> Vec<u8> {
    assert!(
        request.name.len() <= 255,
        "request name longer than 255 bytes"
    );
    datagram(PacketType::Request, session_id, |buf| {
        buf.extend_from_slice(&request.receiver_id.to_be_bytes());
        buf.push(request.flags);
        buf.extend_from_slice(&request.max_rate_bps.to_be_bytes());
        buf.extend_from_slice(&request.cookie);
        buf.push(request.name.len() as u8);
        buf.extend_from_slice(request.name.as_bytes());
    })
}

/// Encodes a COOKIE datagram; it is never longer than the shortest REQUEST.
pub fn encode_cookie(session_id: u32, cookie: &[u8; COOKIE_LEN]) -> Vec<u8> {
    datagram(PacketType::Cookie, session_id, |buf| {
        buf.extend_from_slice(cookie)
    })
}

fn decode_nak(r: &mut Reader<'_>) -> Result<Nak, DecodeError> {
    let archive_id = r.u64()?;
    let receiver_id = r.u32()?;
    let echo_time_us = r.u64()?;
    let hold_us = r.u32()?;
    let count = r.u16()? as usize;
    if count == 0 || count > MAX_NAK_RANGES {
        return Err(DecodeError::Invalid);
    }
    let mut ranges = Vec::with_capacity(count);
    for _ in 0..count {
        let first = r.u32()?;
        let len = r.u16()?;
        if len == 0 || first.checked_add(len as u32).is_none() {
            return Err(DecodeError::Invalid);
        }
        ranges.push((first, len));
    }
    Ok(Nak {
        archive_id,
        receiver_id,
        echo_time_us,
        hold_us,
        ranges,
    })
}

fn decode_announce(r: &mut Reader<'_>) -> Result<Announce, DecodeError> {
    let part = r.u8()?;
    let parts = r.u8()?;
    let unicast_port = r.u16()?;
    let count = r.u8()?;
    if parts == 0 || part >= parts {
        return Err(DecodeError::Invalid);
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let archive_id = r.u64()?;
        let original_size = r.u64()?;
        let body_len = r.u64()?;
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
            let ip = Ipv4Addr::from(r.array::<4>()?);
            channels.push(ChannelInfo {
                group: SocketAddrV4::new(ip, r.u16()?),
                control_port: r.u16()?,
                rate_bps: r.u64()?,
            });
        }
        entries.push(AnnounceEntry {
            archive_id,
            original_size,
            body_len,
            flags,
            name,
            channels,
        });
    }
    Ok(Announce {
        part,
        parts,
        unicast_port,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn channel_strategy() -> impl Strategy<Value = ChannelInfo> {
        (any::<[u8; 4]>(), any::<u16>(), any::<u16>(), any::<u64>()).prop_map(
            |(ip, port, control_port, rate_bps)| ChannelInfo {
                group: SocketAddrV4::new(Ipv4Addr::from(ip), port),
                control_port,
                rate_bps,
            },
        )
    }

    fn entry_strategy() -> impl Strategy<Value = AnnounceEntry> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
            "[a-zA-Z0-9._ -]{0,60}",
            proptest::collection::vec(channel_strategy(), 1..=MAX_CHANNELS),
        )
            .prop_map(|(a, o, b, flags, name, channels)| AnnounceEntry {
                archive_id: a,
                original_size: o,
                body_len: b,
                flags,
                name,
                channels,
            })
    }

    proptest! {
        #[test]
        fn data_round_trips(session in any::<u32>(), id in any::<u64>(), count in 1u32.., idx in any::<u32>(),
                            flags in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 1..1500)) {
            let header = DataHeader { archive_id: id, packet_index: idx % count, packet_count: count, flags };
            let bytes = encode_data(session, &header, &payload);
            let d = decode(&bytes).unwrap();
            prop_assert_eq!(d.session_id, session);
            prop_assert_eq!(d.packet, Packet::Data(header, &payload[..]));
        }

        #[test]
        fn manifest_packet_round_trips(session in any::<u32>(), body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let bytes = encode_manifest(session, &body);
            let d = decode(&bytes).unwrap();
            prop_assert_eq!(d.packet, Packet::Manifest(&body[..]));
        }

        #[test]
        fn announce_round_trips(session in any::<u32>(), parts in 1u8.., part in any::<u8>(), unicast_port in any::<u16>(),
                                entries in proptest::collection::vec(entry_strategy(), 0..5)) {
            let a = Announce { part: part % parts, parts, unicast_port, entries };
            let bytes = encode_announce(session, &a);
            prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Announce(a));
        }

        #[test]
        fn status_round_trips(session in any::<u32>(), a in any::<u64>(), t in any::<u64>(), g in any::<u32>(), n in any::<u32>(), rate in any::<u64>()) {
            let st = Status { archive_id: a, server_time_us: t, grtt_us: g, group_size: n, rate_bps: rate };
            let bytes = encode_status(session, &st);
            prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Status(st));
        }

        #[test]
        fn nak_round_trips(session in any::<u32>(), a in any::<u64>(), id in any::<u32>(), echo in any::<u64>(), hold in any::<u32>(),
                           ranges in proptest::collection::vec((0u32..u32::MAX / 2, 1u16..), 1..MAX_NAK_RANGES)) {
            let nak = Nak { archive_id: a, receiver_id: id, echo_time_us: echo, hold_us: hold, ranges };
            let bytes = encode_nak(session, &nak);
            prop_assert!(bytes.len() <= DEFAULT_PACKET_SIZE - IP_UDP_OVERHEAD);
            prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Nak(nak));
        }

        #[test]
        fn report_and_done_round_trip(session in any::<u32>(), a in any::<u64>(), id in any::<u32>(), channel in any::<u8>(),
                                      counts in any::<[u32; 6]>()) {
            let report = Report { archive_id: a, receiver_id: id, channel, held: counts[0], packet_count: counts[1],
                                  arrived: counts[2], lost: counts[3], interval_ms: counts[4], kernel_drops: counts[5] };
            let bytes = encode_report(session, &report);
            prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Report(report));
            let done = Done { archive_id: a, receiver_id: id, elapsed_ms: counts[0] };
            let bytes = encode_done(session, &done);
            prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Done(done));
        }

        #[test]
        fn requests_round_trip_and_a_cookie_answer_is_never_longer(session in any::<u32>(), id in any::<u32>(), flags in any::<u8>(),
                                      rate in any::<u64>(), cookie in any::<[u8; COOKIE_LEN]>(), name in "[a-z.]{0,40}") {
            let request = Request { receiver_id: id, flags, max_rate_bps: rate, cookie, name };
            let bytes = encode_request(session, &request);
            let answer = encode_cookie(session, &cookie);
            prop_assert!(answer.len() <= bytes.len());
            prop_assert_eq!(decode(&answer).unwrap().packet, Packet::Cookie(cookie));
            prop_assert_eq!(decode(&bytes).unwrap().packet, Packet::Request(request));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn random_bodies_with_valid_crc_never_panic(kind in 0u8..11, body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut bytes = vec![b'L', b'C', VERSION, kind, 0, 0, 0, 1];
            bytes.extend_from_slice(&body);
            let crc = crc32fast::hash(&bytes);
            bytes.extend_from_slice(&crc.to_be_bytes());
            let _ = decode(&bytes);
        }

        #[test]
        fn any_flipped_bit_is_rejected(payload in proptest::collection::vec(any::<u8>(), 1..200), bit in any::<usize>()) {
            let header = DataHeader { archive_id: 9, packet_index: 0, packet_count: 1, flags: 0 };
            let mut bytes = encode_data(1, &header, &payload);
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&bytes).is_err());
        }
    }

    #[test]
    fn rejects_each_kind_of_bad_datagram() {
        let header = DataHeader {
            archive_id: 1,
            packet_index: 0,
            packet_count: 1,
            flags: 0,
        };
        let good = encode_data(5, &header, b"abc");
        assert_eq!(decode(&good[..5]), Err(DecodeError::Truncated));
        let mut bad_crc = good.clone();
        *bad_crc.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&bad_crc), Err(DecodeError::BadCrc));
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert_eq!(decode(&bad_magic), Err(DecodeError::BadMagic));
        let reseal = |mut v: Vec<u8>| {
            let n = v.len() - TRAILER_LEN;
            seal_in_place(&mut v, n);
            v
        };
        let mut bad_version = good.clone();
        bad_version[2] = 9;
        assert_eq!(decode(&reseal(bad_version)), Err(DecodeError::BadVersion));
        let mut bad_type = good.clone();
        bad_type[3] = 77;
        assert_eq!(decode(&reseal(bad_type)), Err(DecodeError::UnknownType));
        let out_of_range = DataHeader {
            packet_index: 3,
            packet_count: 3,
            ..header
        };
        assert_eq!(
            decode(&encode_data(5, &out_of_range, b"x")),
            Err(DecodeError::Invalid)
        );
    }

    #[test]
    fn default_payload_size_is_1440() {
        assert_eq!(payload_size_for_packet(DEFAULT_PACKET_SIZE), 1440);
    }
}
