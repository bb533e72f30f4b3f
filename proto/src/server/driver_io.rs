//! What the server endpoint takes from and gives to its driver: configuration,
//! files, where datagrams come from and go.

use crate::rate::AdaptMode;
use crate::wire::MacKey;
use crate::{FileKey, Manifest};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// The largest batch the driver's socket takes in one send (UDP GSO limits).
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Bytes in one send.
    pub bytes: usize,
    /// Datagrams in one send.
    pub datagrams: usize,
}

/// What `serve` was asked to do, as far as the protocol is concerned.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This server instance's random session id.
    pub session_id: u32,
    /// Key of ANNOUNCE, REQUEST and COOKIE tags (`MasterKey::directory_mac_key`).
    pub directory_key: MacKey,
    /// Fingerprint of the master key, told in ANNOUNCE.
    pub key_fingerprint: [u8; crate::keys::FINGERPRINT_LEN],
    /// Directory group (ANNOUNCE goes there).
    pub directory: SocketAddr,
    /// Port for requests, reports and unicast streams.
    pub unicast_port: u16,
    /// Largest UDP payload (ANNOUNCE parts are cut to fit).
    pub max_datagram: usize,
    /// Largest share of each channel's packets spent on repairs (0 turns repair off).
    pub repair_share: f64,
    /// Parity sent on each multicast loop after every block, as a share of its
    /// packets (`serve --fec-overhead`; 0: parity only on request).
    pub fec_overhead: f64,
    /// Lowest GRTT advertised (`sender::DEFAULT_GRTT_FLOOR`).
    pub grtt_floor: Duration,
    /// Group size advertised until more receivers are heard (1 unless known).
    pub group_size: u32,
    /// Adapt each channel's rate to its receivers' reports, within (min, max).
    pub adapt: Option<(AdaptMode, u64, u64)>,
    /// Total rate of all unicast streams, bits/s.
    pub unicast_max_rate: u64,
    /// Most unicast streams at once.
    pub unicast_max_clients: usize,
    /// Start a file's channels only when a receiver asks, stop them when idle.
    pub on_demand: bool,
    /// How long an on-demand file's channels run with no request or report.
    pub idle: Duration,
    /// What one send may carry.
    pub batch: BatchLimits,
    /// Directors to heartbeat to (none: the server is found by its ANNOUNCE only).
    pub directors: Option<DirectorLink>,
}

/// Where and how a server heartbeats (spec §9.1).
#[derive(Debug, Clone)]
pub struct DirectorLink {
    /// Every director's address.
    pub addresses: Vec<SocketAddr>,
    /// Key of HEARTBEAT tags (`MasterKey::director_mac_key`).
    pub key: MacKey,
    /// The most the server means to send, bits/s (0: not said).
    pub capacity_bps: u64,
    /// When this server started, ms since the Unix epoch (told in heartbeats).
    pub started_ms: u64,
}

/// One multicast channel of a file, as the driver set it up.
#[derive(Debug, Clone, Copy)]
pub struct ChannelSpec {
    /// Multicast group and port of its data.
    pub group: SocketAddr,
    /// Port on the same group where NAKs come.
    pub control_port: u16,
    /// Starting rate, bits/s.
    pub rate_bps: u64,
}

/// One file to serve: its manifest (signed for this server's payload size) and channels.
#[derive(Debug, Clone)]
pub struct FileSpec {
    /// The manifest.
    pub manifest: Manifest,
    /// Its encoded, signed form.
    pub manifest_bytes: Vec<u8>,
    /// Its key: the session's packet keys are derived from it.
    pub file_key: FileKey,
    /// Its channels, one per rate, all files the same number.
    pub channels: Vec<ChannelSpec>,
    /// A relay's file, still arriving: its carousels send only what
    /// `Endpoint::hold` has named (cut-through, spec §2.4).
    pub relayed: bool,
}

/// Where the archive bytes come from: the driver reads file `file`'s body.
pub trait Archives {
    /// Fills `buf` with body bytes of file `file` from `body_offset`.
    fn read_payload(&mut self, file: usize, body_offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// Which of the driver's sockets a datagram goes out of, or came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    /// The multicast sender (channels and the directory).
    Multicast,
    /// The unicast port.
    Unicast,
}

/// Datagrams to send: `buf[..len]`, cut in datagrams of `segment` bytes (the last
/// may be shorter), all to `to` from `socket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The socket to send from.
    pub socket: Socket,
    /// The destination.
    pub to: SocketAddr,
    /// Bytes in the buffer.
    pub len: usize,
    /// Datagram size.
    pub segment: usize,
}

/// Where a datagram came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The control port of channel `channel` of file `file` (multicast NAKs).
    Control {
        /// File index.
        file: usize,
        /// Channel index.
        channel: usize,
        /// The sender's address (repairs are shared out per source address).
        from: SocketAddr,
    },
    /// The unicast port, from this address.
    Unicast(SocketAddr),
    /// The directory group (other servers' listings), from this address.
    Directory(SocketAddr),
}
