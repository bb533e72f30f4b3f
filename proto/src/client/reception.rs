//! One file being received: its receiver machine, channels or unicast stream,
//! frames, and the timers around them.

use crate::rate::ChannelSelector;
use crate::wire::{AnnounceEntry, COOKIE_LEN};
use crate::{FileReceiver, FrameTracker};
use std::net::SocketAddr;
use std::time::Instant;

/// Where a reception stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Taking packets.
    Receiving,
    /// Every packet held; waiting for the last frames to unpack.
    Verifying,
    /// Delivered.
    Done,
    /// Given up by the driver (its output directory has no room for it).
    Skipped,
}

/// A unicast stream's server and the state of its request.
#[derive(Debug, Clone)]
pub(super) struct Stream {
    pub(super) server: SocketAddr,
    pub(super) cookie: [u8; COOKIE_LEN],
    pub(super) next_request: Instant,
}

/// A switch waiting for the new archive's manifest to verify.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) session: u32,
    pub(super) entry: AnnounceEntry,
    pub(super) by_unicast: bool,
}

/// One file being received.
pub struct Reception {
    pub(super) entry: AnnounceEntry,
    /// The server's unicast address, when known (ANNOUNCE's source, else `--server`).
    pub(super) server: Option<SocketAddr>,
    /// Multicast channels joined (announce indices; several with `--aggregate`).
    pub(super) joined: Vec<usize>,
    pub(super) selector: ChannelSelector,
    pub(super) next_sample: Instant,
    /// The unicast stream, once this file fell back to one.
    pub(super) stream: Option<Stream>,
    /// When DATA last arrived (or the reception started): the sync time-out.
    pub(super) last_data: Instant,
    /// On-demand file: when to ask again for its channels to start.
    pub(super) next_start_request: Option<Instant>,
    pub(super) fsm: FileReceiver,
    /// Frame tracking, from when the frame table has arrived and verified.
    pub(super) frames: Option<FrameTracker>,
    /// True while the driver checks the frame table.
    pub(super) checking_table: bool,
    /// True once the driver opened storage for the manifest.
    pub(super) storage_open: bool,
    /// A switch to another archive or session, until its manifest verifies.
    pub(super) pending: Option<Pending>,
    /// Since when manifests sealed with another key came, and that key's fingerprint.
    pub(super) wrong_key: Option<(Instant, [u8; crate::keys::FINGERPRINT_LEN])>,
    pub(super) phase: Phase,
    pub(super) started: Instant,
    pub(super) resumed: u32,
    /// Datagrams the driver's sockets for this reception dropped (buffer full).
    pub(super) kernel_drops: u32,
    /// While its channel is left over packets held: when to join it again.
    pub(super) away_until: Option<Instant>,
    /// When it last joined its channel (in the future while away): silence and the
    /// sync time-out count from here at the earliest.
    pub(super) listening_from: Instant,
    /// Time and loop positions passed at its first loop packet (positions passed
    /// while away count too, so the pace holds across time away).
    pub(super) pace: Option<(Instant, u64)>,
    /// When it may next look at the held run ahead of the loop.
    pub(super) next_skip_check: Instant,
}

impl Reception {
    /// When its server session has been silent (nothing that verifies) for
    /// `SESSION_SILENCE`: it counts as silent at any time after this.
    pub(super) fn silent_after(&self) -> Instant {
        let heard = self.fsm.last_heard().unwrap_or(self.started);
        heard.max(self.listening_from) + super::SESSION_SILENCE
    }

    /// Since when DATA is missed: its last arrival, or when the channel was joined
    /// again after time away.
    pub(super) fn data_missed_since(&self) -> Instant {
        self.last_data.max(self.listening_from)
    }

    /// True when its server session is silent at `now`.
    pub(super) fn silent(&self, now: Instant) -> bool {
        now > self.silent_after()
    }

    /// The file as listed.
    pub fn entry(&self) -> &AnnounceEntry {
        &self.entry
    }

    /// The receiver machine (manifest, received map, counters).
    pub fn receiver(&self) -> &FileReceiver {
        &self.fsm
    }

    /// Its frames' tracker, once the frame table is checked.
    pub fn frames(&self) -> Option<&FrameTracker> {
        self.frames.as_ref()
    }

    /// Where it stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Channels joined (announce indices).
    pub fn joined(&self) -> &[usize] {
        &self.joined
    }

    /// The server of its unicast stream, if it fell back to one.
    pub fn stream_server(&self) -> Option<SocketAddr> {
        self.stream.as_ref().map(|s| s.server)
    }

    /// The server's unicast address, when known.
    pub fn server(&self) -> Option<SocketAddr> {
        self.server
    }

    /// When it started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Datagrams the kernel dropped on its sockets (buffer full), as the driver said.
    pub fn kernel_drops(&self) -> u32 {
        self.kernel_drops
    }

    /// Packets resumed from an earlier run.
    pub fn resumed(&self) -> u32 {
        self.resumed
    }

    /// True while it is away from its channel (the loop passes packets held).
    pub fn away(&self) -> bool {
        self.away_until.is_some()
    }

    /// What to call the channel it reports on (announce index or unicast).
    pub(super) fn report_channel(&self) -> u8 {
        match (&self.stream, self.joined.first()) {
            (None, Some(&j)) => j as u8,
            _ => crate::wire::UNICAST_CHANNEL,
        }
    }
}

/// Creates the selector for `entry`'s channels within `max_rate`.
pub(super) fn selector_for(entry: &AnnounceEntry, max_rate: Option<u64>) -> ChannelSelector {
    let rates: Vec<u64> = entry.channels.iter().map(|c| c.rate_bps).collect();
    ChannelSelector::new(&rates, max_rate)
}
