//! Datagram format: common header, the body of each packet type, tag trailer.
//! `proto/PROTOCOL.md` is the normative description of every field here.

use crate::codec::{Reader, Truncated};
pub use auth::{MacKey, SessionKeys, TAG_LEN};

pub mod auth;
mod control;
mod data;
mod director;
mod directory;
mod jobs;

use control::decode_nak;
pub use control::{
    Done, Nak, Report, Request, Status, encode_cookie, encode_done, encode_nak, encode_report,
    encode_request, encode_status,
};
pub use data::{
    DataHeader, ParityHeader, encode_data, encode_manifest, encode_parity, write_data_header,
    write_parity_header,
};
pub use director::{
    Direction, Directions, Found, Heard, Heartbeat, LOOKUP_PADDING, Lookup, MAX_DIRECTIONS,
    MAX_SUBNETS, Redirect, RedirectReason, Subnet, SubnetThroughput, encode_directions,
    encode_heard, encode_heartbeat, encode_lookup, encode_redirect, subnet_of,
};
use director::{decode_directions, decode_heartbeat, decode_lookup, decode_redirect};
use directory::decode_announce;
pub use directory::{
    ANNOUNCE_HEADER_LEN, Announce, AnnounceEntry, ChannelInfo, announce_entry_len, encode_announce,
};
pub use jobs::{
    AgentJobState, Assign, AssignAction, JobFailure, JobReport, MAX_JOB_DETAIL, MAX_JOB_FILES,
    MAX_JOB_REPORTS, MAX_NODE_NAME, Register, encode_assign, encode_register, job_detail,
    valid_node_name,
};
use jobs::{decode_assign, decode_register};

/// First two bytes of every loopcast datagram: "LC".
pub const MAGIC: [u8; 2] = *b"LC";
/// Wire format version this code speaks.
pub const VERSION: u8 = 9;
/// Bytes of the common header (magic, version, type, session id).
pub const COMMON_HEADER_LEN: usize = 8;
/// Bytes of the trailer of a tagged packet (all but DATA and PARITY).
pub const TRAILER_LEN: usize = TAG_LEN;
/// Bytes of a DATA packet header, common header included.
pub const DATA_HEADER_LEN: usize = COMMON_HEADER_LEN + 20;
/// Bytes an IPv4 + UDP header add to a datagram.
pub const IP_UDP_OVERHEAD: usize = 28;
/// Bytes an IPv6 + UDP header add to a datagram.
pub const IP6_UDP_OVERHEAD: usize = 48;

/// Bytes the IP and UDP headers add to a datagram sent to `to`.
pub fn ip_udp_overhead(to: std::net::SocketAddr) -> usize {
    if to.is_ipv4() {
        IP_UDP_OVERHEAD
    } else {
        IP6_UDP_OVERHEAD
    }
}
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

/// Most archive payload bytes one DATA packet may carry for a given IP packet
/// size whose IP and UDP headers take `ip_udp_overhead` bytes, rounded down to
/// even. A server carries as many whole cells as fit (`cells_per_packet`).
pub const fn payload_size_for_packet(packet_size: usize, ip_udp_overhead: usize) -> usize {
    (packet_size.saturating_sub(ip_udp_overhead + DATA_HEADER_LEN)) & !1
}

/// The cell size `pack --packet-size S` makes: one cell per IPv6 packet of S
/// bytes, so that IPv4 and IPv6 servers share archives (spec §3.4).
pub const fn cell_size_for_packet(packet_size: usize) -> u16 {
    payload_size_for_packet(packet_size, IP6_UDP_OVERHEAD) as u16
}

/// Whole cells of `cell_size` one DATA packet carries at IP packet size
/// `packet_size` (0: the cells do not fit).
pub fn cells_per_packet(packet_size: usize, ip_udp_overhead: usize, cell_size: u16) -> u16 {
    (payload_size_for_packet(packet_size, ip_udp_overhead) / (cell_size.max(1) as usize)) as u16
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
    /// A server's load and liveness, to each director (its listing follows).
    Heartbeat = 10,
    /// A receiver's question to a director: who carries this file?
    Lookup = 11,
    /// A director's answer: the servers carrying the file, best first.
    Directions = 12,
    /// A director's unasked move of a receiver to other servers.
    Redirect = 13,
    /// An agent's liveness and job progress, to each director.
    Register = 14,
    /// A director's job for one agent.
    Assign = 15,
    /// Parity of a block of an archive's packets, on the data channel.
    Parity = 16,
    /// A director's word that it verified a HEARTBEAT or REGISTER.
    Heard = 17,
}

/// Bytes of a STATUS datagram: common header, 36-byte body, trailer.
pub const STATUS_DATAGRAM_LEN: usize = COMMON_HEADER_LEN + 36 + TRAILER_LEN;
/// DATA flag: this packet is a repair sent out of loop order; it does not move the
/// receiver's idea of where the loop is.
pub const FLAG_REPAIR: u16 = 1;
/// Most ranges and block requests one NAK may carry together (keeps a NAK
/// within 1472 bytes).
pub const MAX_NAK_RANGES: usize = 200;
/// Bytes of one NAK range: first packet (u32) and count (u16).
pub const NAK_RANGE_LEN: usize = 6;
/// REQUEST flag: stream the named file to the sender of this request by unicast.
pub const REQUEST_UNICAST: u8 = 1;
/// REQUEST flag: start the named file's multicast channels (`--on-demand` servers).
pub const REQUEST_START: u8 = 2;
/// ANNOUNCE entry flag: the file's channels are stopped until a receiver asks (on demand).
pub const ENTRY_IDLE: u8 = 1;

/// Why a datagram was rejected; receivers count these, never panic on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Shorter than its header, or a body field runs past the end.
    Truncated,
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
/// A decoded datagram; DATA payloads and MANIFEST bodies borrow from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A DATA packet and its payload.
    Data(DataHeader, &'a [u8]),
    /// A PARITY packet and its shard.
    Parity(ParityHeader, &'a [u8]),
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
    /// A HEARTBEAT packet.
    Heartbeat(Heartbeat),
    /// A LOOKUP packet.
    Lookup(Lookup),
    /// A DIRECTIONS packet.
    Directions(Directions),
    /// A REDIRECT packet.
    Redirect(Redirect),
    /// REGISTER.
    Register(Register),
    /// ASSIGN.
    Assign(Assign),
    /// HEARD.
    Heard(Heard),
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
/// A whole datagram: common header, the body `write` appends, the tag under `key`.
fn datagram(
    key: &MacKey,
    kind: PacketType,
    session_id: u32,
    write: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    put_common(&mut buf, kind, session_id);
    write(&mut buf);
    key.seal(&mut buf);
    buf
}
/// Decodes one datagram's fields; never panics, whatever the input. The tag is
/// not checked here: the caller checks it with the key the packet's type,
/// session and archive call for (`MacKey::verifies`; DATA's cells with their
/// `cell::CellKey`) before acting on anything in it.
pub fn decode(bytes: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    if bytes.len() < COMMON_HEADER_LEN + TRAILER_LEN {
        return Err(DecodeError::Truncated);
    }
    if bytes[0..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[2] != VERSION {
        return Err(DecodeError::BadVersion);
    }
    // DATA and PARITY have no trailer: their cells carry their tags.
    let untagged = [PacketType::Data as u8, PacketType::Parity as u8].contains(&bytes[3]);
    let content = match untagged {
        true => bytes,
        false => &bytes[..bytes.len() - TRAILER_LEN],
    };
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
        k if k == PacketType::Parity as u8 => {
            let header = ParityHeader {
                archive_id: r.u64()?,
                block: r.u32()?,
                packet_count: r.u32()?,
                parity_index: r.u16()?,
            };
            let _reserved = r.u16()?;
            let first = header.block as u64 * crate::fec::BLOCK_PACKETS as u64;
            if first >= header.packet_count as u64 || r.rest().is_empty() {
                return Err(DecodeError::Invalid);
            }
            return Ok(Datagram {
                session_id,
                packet: Packet::Parity(header, r.rest()),
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
            lacking: r.u32()?,
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
            echo_time_us: r.u64()?,
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
        k if k == PacketType::Heartbeat as u8 => Packet::Heartbeat(decode_heartbeat(&mut r)?),
        k if k == PacketType::Lookup as u8 => Packet::Lookup(decode_lookup(&mut r)?),
        k if k == PacketType::Directions as u8 => Packet::Directions(decode_directions(&mut r)?),
        k if k == PacketType::Redirect as u8 => Packet::Redirect(decode_redirect(&mut r)?),
        k if k == PacketType::Register as u8 => Packet::Register(decode_register(&mut r)?),
        k if k == PacketType::Assign as u8 => Packet::Assign(decode_assign(&mut r)?),
        k if k == PacketType::Heard as u8 => Packet::Heard(Heard {
            echo: r.u64()?,
            cookie: r.array()?,
        }),
        _ => return Err(DecodeError::UnknownType),
    };
    // Every body but DATA's and MANIFEST's must end exactly where its fields do.
    if !r.rest().is_empty() {
        return Err(DecodeError::Invalid);
    }
    Ok(Datagram { session_id, packet })
}

#[cfg(test)]
mod tests;
