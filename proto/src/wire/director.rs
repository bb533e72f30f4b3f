//! HEARTBEAT, LOOKUP and DIRECTIONS: a server's load to the directors, a
//! receiver's question for a file, and a director's ranked answer (spec §9).

use super::{DecodeError, MacKey, PacketType, datagram};
use crate::codec::{FAMILY_V4, FAMILY_V6, Reader, put_socket_addr};
use std::net::{IpAddr, SocketAddr};

/// Zero bytes that end every LOOKUP, so that no answer is longer than its
/// question, even one naming four IPv6 servers.
pub const LOOKUP_PADDING: usize = 120;
/// Most servers one DIRECTIONS names: the primary and three alternates.
pub const MAX_DIRECTIONS: usize = 4;
/// Most subnets one HEARTBEAT reports its receivers' throughput for.
pub const MAX_SUBNETS: usize = 32;

/// Receivers near each other, as heartbeats and the ranking group them: the
/// same IPv4 /24 or the same IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subnet {
    /// An IPv4 /24: the address's first three bytes.
    V4([u8; 3]),
    /// An IPv6 /64: the address's first eight bytes.
    V6([u8; 8]),
}

impl std::fmt::Display for Subnet {
    /// As people write it: "10.0.9.0/24", "fd00:1:2:3::/64".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Subnet::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            Subnet::V6(prefix) => {
                let mut octets = [0u8; 16];
                octets[..8].copy_from_slice(&prefix);
                write!(f, "{}/64", std::net::Ipv6Addr::from(octets))
            }
        }
    }
}

/// What a server's receivers in one subnet report getting from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetThroughput {
    /// The receivers' subnet.
    pub subnet: Subnet,
    /// Receivers counted (at most 255).
    pub receivers: u8,
    /// Their mean goodput, kbit/s.
    pub goodput_kbps: u32,
}

/// The subnet of `ip` as heartbeats name it. An IPv4 address mapped into IPv6
/// is its IPv4 /24.
pub fn subnet_of(ip: IpAddr) -> Subnet {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            Subnet::V4([a, b, c])
        }
        IpAddr::V6(v6) => {
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&v6.octets()[..8]);
            Subnet::V6(prefix)
        }
    }
}

fn put_subnet(buf: &mut Vec<u8>, subnet: Subnet) {
    match subnet {
        Subnet::V4(bytes) => {
            buf.push(FAMILY_V4);
            buf.extend_from_slice(&bytes);
        }
        Subnet::V6(bytes) => {
            buf.push(FAMILY_V6);
            buf.extend_from_slice(&bytes);
        }
    }
}

fn subnet(r: &mut Reader<'_>) -> Result<Subnet, DecodeError> {
    match r.u8()? {
        FAMILY_V4 => Ok(Subnet::V4(r.array()?)),
        FAMILY_V6 => Ok(Subnet::V6(r.array()?)),
        _ => Err(DecodeError::Invalid),
    }
}

/// A server's heartbeat to a director: its load, then its listing follows as
/// ANNOUNCE datagrams by unicast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Milliseconds since the server started: grows with every heartbeat, so a
    /// replayed one is older than the last heard and is dropped.
    pub sequence: u64,
    /// When the server started, ms since the Unix epoch (its clock): a session
    /// replaces another at its address only when it started later (T21).
    pub started_ms: u64,
    /// The server's unicast port (requests, reports, unicast streams).
    pub unicast_port: u16,
    /// ANNOUNCE parts of the listing that follows.
    pub listing_parts: u8,
    /// The most the server means to send, bits/s (`serve --capacity`; 0: not set).
    pub capacity_bps: u64,
    /// What it sends now: its running channels' and streams' rates, bits/s.
    pub sending_bps: u64,
    /// Unicast streams running.
    pub unicast_clients: u16,
    /// Most unicast streams it takes.
    pub unicast_max_clients: u16,
    /// Receivers in its table (heard from within its memory).
    pub receivers: u32,
    /// The CPU the server process uses, in thousandths of one core.
    pub cpu_permille: u16,
    /// The last cookie this director gave the server in a HEARD (zeros: none
    /// yet): it proves the server's address, without which no record is made (T44).
    pub cookie: [u8; super::COOKIE_LEN],
    /// Its receivers' goodput by subnet, at most `MAX_SUBNETS`.
    pub subnets: Vec<SubnetThroughput>,
}

/// A receiver's question: which servers carry `name`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The receiver's random id.
    pub receiver_id: u32,
    /// Random per question; the answer echoes it.
    pub nonce: u64,
    /// File name (at most 255 bytes).
    pub name: String,
    /// The archive wanted (0: any archive of the name): a receiver pinned to
    /// one archive is named only servers carrying it (T41).
    pub archive_id: u64,
}

/// What a director knows of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Found {
    /// Live servers carry it: the answer names them, best first.
    Carried = 0,
    /// No live server carries it.
    NotCarried = 1,
    /// The director started too recently to know every server: ask again.
    NotYetKnown = 2,
}

/// One server in a director's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direction {
    /// The server's unicast address (its requests, reports, streams).
    pub server: SocketAddr,
    /// Its session id.
    pub session_id: u32,
    /// Its load in thousandths of its capacity (the ranking's figure, §9.3).
    pub load_permille: u16,
}

/// A director's answer to a LOOKUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directions {
    /// The LOOKUP's nonce.
    pub nonce: u64,
    /// Whether the name is carried.
    pub found: Found,
    /// The name asked for.
    pub name: String,
    /// The archive every server named carries (0 when not carried).
    pub archive_id: u64,
    /// Servers, best first, at most `MAX_DIRECTIONS`.
    pub servers: Vec<Direction>,
}

/// Why a director moves a receiver to other servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RedirectReason {
    /// Its server stopped heartbeating.
    ServerDown = 0,
    /// Its server has more unicast streams than it takes.
    Overloaded = 1,
    /// Receivers near it get at least twice as much from another server.
    Throughput = 2,
}

impl RedirectReason {
    /// The reason as a word for logs and JSON: server_down, overloaded, throughput.
    pub fn name(self) -> &'static str {
        match self {
            RedirectReason::ServerDown => "server_down",
            RedirectReason::Overloaded => "overloaded",
            RedirectReason::Throughput => "throughput",
        }
    }
}

/// A director's unasked move of a receiver: the servers to take a file from
/// now, best first. It echoes the nonce of the receiver's last answered LOOKUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// Why.
    pub reason: RedirectReason,
    /// The servers, as a DIRECTIONS names them (found: carried).
    pub directions: Directions,
}

/// Encodes a REDIRECT: the reason, then a DIRECTIONS body.
pub fn encode_redirect(key: &MacKey, r: &Redirect) -> Vec<u8> {
    let d = &r.directions;
    assert!(d.name.len() <= 255 && d.servers.len() <= MAX_DIRECTIONS);
    datagram(key, PacketType::Redirect, 0, |buf| {
        buf.push(r.reason as u8);
        put_directions(buf, d);
    })
}

pub(super) fn decode_redirect(r: &mut Reader<'_>) -> Result<Redirect, DecodeError> {
    let reason = match r.u8()? {
        0 => RedirectReason::ServerDown,
        1 => RedirectReason::Overloaded,
        2 => RedirectReason::Throughput,
        _ => return Err(DecodeError::Invalid),
    };
    let directions = decode_directions(r)?;
    if directions.found != Found::Carried {
        return Err(DecodeError::Invalid);
    }
    Ok(Redirect { reason, directions })
}

/// A director's word that it took a HEARTBEAT or REGISTER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// The sequence of the HEARTBEAT or REGISTER answered.
    pub echo: u64,
    /// A cookie proving the asker's address, for its next REGISTERs (§10.3);
    /// zeros in answer to a heartbeat.
    pub cookie: [u8; super::COOKIE_LEN],
}

/// Encodes a HEARD (session id: the server's session or the agent's instance).
pub fn encode_heard(key: &MacKey, session_id: u32, h: &Heard) -> Vec<u8> {
    datagram(key, PacketType::Heard, session_id, |buf| {
        buf.extend_from_slice(&h.echo.to_be_bytes());
        buf.extend_from_slice(&h.cookie);
    })
}

/// Encodes a HEARTBEAT (session id: the server's).
pub fn encode_heartbeat(key: &MacKey, session_id: u32, h: &Heartbeat) -> Vec<u8> {
    datagram(key, PacketType::Heartbeat, session_id, |buf| {
        buf.extend_from_slice(&h.sequence.to_be_bytes());
        buf.extend_from_slice(&h.started_ms.to_be_bytes());
        buf.extend_from_slice(&h.unicast_port.to_be_bytes());
        buf.push(h.listing_parts);
        buf.extend_from_slice(&h.capacity_bps.to_be_bytes());
        buf.extend_from_slice(&h.sending_bps.to_be_bytes());
        buf.extend_from_slice(&h.unicast_clients.to_be_bytes());
        buf.extend_from_slice(&h.unicast_max_clients.to_be_bytes());
        buf.extend_from_slice(&h.receivers.to_be_bytes());
        buf.extend_from_slice(&h.cpu_permille.to_be_bytes());
        buf.extend_from_slice(&h.cookie);
        assert!(
            h.subnets.len() <= MAX_SUBNETS,
            "more than {MAX_SUBNETS} subnets"
        );
        buf.push(h.subnets.len() as u8);
        for s in &h.subnets {
            put_subnet(buf, s.subnet);
            buf.push(s.receivers);
            buf.extend_from_slice(&s.goodput_kbps.to_be_bytes());
        }
    })
}

/// Encodes a LOOKUP, padded with `LOOKUP_PADDING` zero bytes. A name over 255
/// bytes is a caller bug.
pub fn encode_lookup(key: &MacKey, lookup: &Lookup) -> Vec<u8> {
    assert!(
        lookup.name.len() <= 255,
        "lookup name longer than 255 bytes"
    );
    datagram(key, PacketType::Lookup, 0, |buf| {
        buf.extend_from_slice(&lookup.receiver_id.to_be_bytes());
        buf.extend_from_slice(&lookup.nonce.to_be_bytes());
        buf.push(lookup.name.len() as u8);
        buf.extend_from_slice(lookup.name.as_bytes());
        buf.extend_from_slice(&lookup.archive_id.to_be_bytes());
        buf.extend_from_slice(&[0; LOOKUP_PADDING]);
    })
}

/// Encodes a DIRECTIONS. More than `MAX_DIRECTIONS` servers or a name over 255
/// bytes is a caller bug.
pub fn encode_directions(key: &MacKey, d: &Directions) -> Vec<u8> {
    assert!(d.name.len() <= 255 && d.servers.len() <= MAX_DIRECTIONS);
    datagram(key, PacketType::Directions, 0, |buf| put_directions(buf, d))
}

fn put_directions(buf: &mut Vec<u8>, d: &Directions) {
    buf.extend_from_slice(&d.nonce.to_be_bytes());
    buf.push(d.found as u8);
    buf.push(d.name.len() as u8);
    buf.extend_from_slice(d.name.as_bytes());
    buf.extend_from_slice(&d.archive_id.to_be_bytes());
    buf.push(d.servers.len() as u8);
    for s in &d.servers {
        put_socket_addr(buf, s.server);
        buf.extend_from_slice(&s.session_id.to_be_bytes());
        buf.extend_from_slice(&s.load_permille.to_be_bytes());
    }
}

pub(super) fn decode_heartbeat(r: &mut Reader<'_>) -> Result<Heartbeat, DecodeError> {
    let mut h = Heartbeat {
        sequence: r.u64()?,
        started_ms: r.u64()?,
        unicast_port: r.u16()?,
        listing_parts: r.u8()?,
        capacity_bps: r.u64()?,
        sending_bps: r.u64()?,
        unicast_clients: r.u16()?,
        unicast_max_clients: r.u16()?,
        receivers: r.u32()?,
        cpu_permille: r.u16()?,
        cookie: r.array()?,
        subnets: Vec::new(),
    };
    let count = r.u8()? as usize;
    if h.listing_parts == 0 || count > MAX_SUBNETS {
        return Err(DecodeError::Invalid);
    }
    for _ in 0..count {
        h.subnets.push(SubnetThroughput {
            subnet: subnet(r)?,
            receivers: r.u8()?,
            goodput_kbps: r.u32()?,
        });
    }
    Ok(h)
}

fn name(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let len = r.u8()? as usize;
    std::str::from_utf8(r.take(len)?)
        .map(str::to_owned)
        .map_err(|_| DecodeError::Invalid)
}

pub(super) fn decode_lookup(r: &mut Reader<'_>) -> Result<Lookup, DecodeError> {
    let receiver_id = r.u32()?;
    let nonce = r.u64()?;
    let name = name(r)?;
    let archive_id = r.u64()?;
    if r.take(LOOKUP_PADDING)?.iter().any(|&b| b != 0) {
        return Err(DecodeError::Invalid);
    }
    Ok(Lookup {
        receiver_id,
        nonce,
        name,
        archive_id,
    })
}

pub(super) fn decode_directions(r: &mut Reader<'_>) -> Result<Directions, DecodeError> {
    let nonce = r.u64()?;
    let found = match r.u8()? {
        0 => Found::Carried,
        1 => Found::NotCarried,
        2 => Found::NotYetKnown,
        _ => return Err(DecodeError::Invalid),
    };
    let name = name(r)?;
    let archive_id = r.u64()?;
    let count = r.u8()? as usize;
    if count > MAX_DIRECTIONS || (found == Found::Carried) != (count > 0) {
        return Err(DecodeError::Invalid);
    }
    let mut servers = Vec::with_capacity(count);
    for _ in 0..count {
        servers.push(Direction {
            server: r.socket_addr()?.ok_or(DecodeError::Invalid)?,
            session_id: r.u32()?,
            load_permille: r.u16()?,
        });
    }
    Ok(Directions {
        nonce,
        found,
        name,
        archive_id,
        servers,
    })
}
