//! What the receiver session takes from and gives to its driver: configuration,
//! where datagrams come from and go, commands, storage results and events.

use crate::keys::FINGERPRINT_LEN;
use crate::receiver::{Rebuild, RepairKind};
use crate::wire::ChannelInfo;
use crate::{Manifest, MasterKey, NakMode, ReceivedMap, ResumePoint};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

/// What `recv` was asked to do, as far as the protocol is concerned.
#[derive(Clone)]
pub struct ClientConfig {
    /// Master key.
    pub key: MasterKey,
    /// Files to receive; empty means every file on air.
    pub names: Vec<String>,
    /// Wanted files pinned to one archive (a job's, T41): listings of other
    /// archives of those names are not followed, and look-ups ask for that one.
    pub pinned: std::collections::BTreeMap<String, u64>,
    /// Fastest channel to take, bits/s (None: the fastest on offer).
    pub max_rate: Option<u64>,
    /// Join every channel within `max_rate` at once.
    pub aggregate: bool,
    /// Ask for a unicast stream after this long without data.
    pub sync_timeout: Duration,
    /// The server's unicast address, for when no multicast is heard at all.
    pub server: Option<SocketAddr>,
    /// Skip multicast entirely: unicast from `server`.
    pub unicast_only: bool,
    /// How multicast receptions NAK (`Suppressed`; the others are for comparisons).
    pub nak_mode: NakMode,
    /// Directors to look the wanted files up with (empty: the directory group).
    pub directors: Vec<SocketAddr>,
    /// Never leave a channel while its loop passes packets held (spec §6.4): for comparisons.
    pub stay_joined: bool,
    /// Ask for copies of missing packets, or for parity (the driver then carries
    /// out `Command::Rebuild`).
    pub repair: RepairKind,
}

/// A file being received: its place in the session (stable while it runs; a
/// reception replaced by a newer archive of the same name keeps the number).
pub type ReceptionId = usize;

/// Where a datagram came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The directory group, sent from `source`.
    Directory {
        /// The sender's address.
        source: IpAddr,
    },
    /// The link (the socket for requests and reports), from a server.
    Link {
        /// The sender.
        from: SocketAddr,
    },
    /// The data socket of channel `channel` (announce index) of a reception.
    Channel {
        /// The reception.
        reception: ReceptionId,
        /// The channel's index in the file's ANNOUNCE entry.
        channel: usize,
    },
    /// The control socket (NAKs) of channel `channel` of a reception.
    Control {
        /// The reception.
        reception: ReceptionId,
        /// The channel's index.
        channel: usize,
    },
    /// The socket of a reception's unicast stream.
    Stream {
        /// The reception.
        reception: ReceptionId,
    },
}

/// Which socket a datagram goes out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The link: requests, reports and DONE of multicast receptions.
    Link,
    /// The multicast NAK sender (to a channel's control port).
    Multicast,
    /// A reception's unicast stream socket (its NAKs, reports, requests and DONE).
    Stream(ReceptionId),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The socket.
    pub via: Via,
    /// The destination.
    pub to: SocketAddr,
    /// The datagram.
    pub datagram: Vec<u8>,
}

/// New payload for the partial file of a reception, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Store<'a> {
    /// The reception.
    pub reception: ReceptionId,
    /// Where the payload goes in the archive body.
    pub body_offset: u64,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// What the driver must do for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Join channel `channel` (open its data and control sockets).
    Join {
        /// The reception.
        reception: ReceptionId,
        /// The channel's index in the ANNOUNCE entry.
        channel: usize,
        /// Where it is and how fast.
        info: ChannelInfo,
    },
    /// Leave channel `channel` (close its sockets).
    Leave {
        /// The reception.
        reception: ReceptionId,
        /// The channel's index.
        channel: usize,
    },
    /// Open a socket for a unicast stream from `server`.
    OpenStream {
        /// The reception.
        reception: ReceptionId,
        /// The server.
        server: SocketAddr,
    },
    /// Close the reception's unicast stream socket.
    CloseStream {
        /// The reception.
        reception: ReceptionId,
    },
    /// Open (or resume) the partial file for `manifest`, then call `storage_opened`.
    OpenStorage {
        /// The reception.
        reception: ReceptionId,
        /// The accepted manifest.
        manifest: Box<Manifest>,
    },
    /// Save the reception's progress now and let its storage go (the archive or
    /// the server changed; a new `OpenStorage` follows when a manifest arrives).
    CloseStorage {
        /// The reception.
        reception: ReceptionId,
        /// What it held, to save.
        map: ReceivedMap,
        /// Where its loops stood.
        resume: ResumePoint,
    },
    /// The frame table's packets are all held: read it, check it, and call
    /// `table_checked` with the frames' body ranges (or the failure).
    CheckTable {
        /// The reception.
        reception: ReceptionId,
    },
    /// Rebuild a block from parity: read its stored packets, rebuild the missing
    /// ones (`fec::Blocks::rebuild`) and write them as if they had arrived; call
    /// `rebuild_failed` if that cannot be done.
    Rebuild {
        /// The reception.
        reception: ReceptionId,
        /// What to rebuild.
        rebuild: Rebuild,
    },
    /// These frames have all their packets: verify, decrypt and unpack them, and
    /// call `frame_failed` for any that fails and `delivered` when the file is whole.
    Unpack {
        /// The reception.
        reception: ReceptionId,
        /// Frame indices.
        frames: Vec<u32>,
    },
}

/// What the storage found when it opened a partial file.
pub type Resumed = Option<(ReceivedMap, Option<ResumePoint>)>;

/// Why a reception fell back to a unicast stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No DATA on multicast for the sync time-out.
    SyncTimeout(Duration),
    /// The file was listed by unicast (no multicast heard), or `--unicast`.
    NoMulticast,
}

/// An error that ends the reception session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// A file's manifests are all sealed with another master key (for `WRONG_KEY_GRACE`).
    WrongKey {
        /// The file.
        name: String,
        /// Fingerprint of the key it was sealed with.
        theirs: [u8; FINGERPRINT_LEN],
    },
    /// The manifest names another file than the listing did.
    NameMismatch {
        /// The name listed.
        announced: String,
        /// The name in the manifest.
        manifest: String,
    },
    /// Every frame verified but the file does not match its digest.
    Inconsistent {
        /// The file.
        name: String,
    },
    /// A director says no live server carries the file.
    NotCarried {
        /// The file.
        name: String,
    },
}

/// What happened, for logs, progress bars and `--json`.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// A file is being received (new, or switched to a newer archive).
    Following {
        /// The reception.
        reception: ReceptionId,
        /// True when it replaced an older archive or a silent server.
        switched: bool,
        /// Packets stored of another archive of the file, dropped by the
        /// switch (0 when the archive is the same or nothing was stored).
        dropped: u32,
    },
    /// Storage resumed `held` packets from an earlier run.
    Resumed {
        /// The reception.
        reception: ReceptionId,
        /// Packets resumed.
        held: u32,
        /// True when the loop's progress since then is repaired at once (§6.1).
        behind: bool,
    },
    /// The reception moved to another channel.
    ChannelChanged {
        /// The reception.
        reception: ReceptionId,
        /// The channel it left.
        from: Option<usize>,
        /// The channel it joined.
        to: usize,
    },
    /// The reception asked for a unicast stream.
    FellBack {
        /// The reception.
        reception: ReceptionId,
        /// The server asked.
        server: SocketAddr,
        /// Why.
        why: Fallback,
    },
    /// Every packet is held; the last frames are being unpacked.
    AllHeld {
        /// The reception.
        reception: ReceptionId,
    },
    /// The frame table failed its digest; its packets are fetched again.
    TableDamaged {
        /// The reception.
        reception: ReceptionId,
    },
    /// A frame failed; its packets are fetched again.
    FrameDamaged {
        /// The reception.
        reception: ReceptionId,
        /// The frame.
        frame: u32,
        /// Packets to fetch again.
        packets: u32,
    },
    /// The file is delivered; the server was told.
    Delivered {
        /// The reception.
        reception: ReceptionId,
    },
    /// A listing entry was skipped: its name is not one safe path component (told
    /// once per name).
    EntryRefused {
        /// The server session that offered it.
        session: u32,
        /// The name as offered.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A director named the servers carrying a file, best first.
    Directed {
        /// The file.
        name: String,
        /// The servers' unicast addresses.
        servers: Vec<SocketAddr>,
    },
    /// A director moved a file to other servers.
    Redirected {
        /// The file.
        name: String,
        /// Why.
        reason: crate::wire::RedirectReason,
        /// The server it moves to.
        to: Option<SocketAddr>,
    },
    /// The server followed (or asked) for a file went silent; the next named is asked.
    ServerLost {
        /// The file.
        name: String,
        /// The silent server.
        server: SocketAddr,
        /// The server asked next, if any is left (the directors are asked again too).
        next: Option<SocketAddr>,
    },
    /// The session cannot go on.
    Failed(ClientError),
}

/// Body ranges of an archive's frames, in order (what the frame table says).
pub type FrameRanges = Vec<Range<u64>>;
