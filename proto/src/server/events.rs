//! What the server endpoint tells its driver happened, and its counters.

use crate::wire::Report;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a unicast stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Its client said DONE.
    Done,
    /// Its client was silent for `UNICAST_CLIENT_TIMEOUT`.
    Silent,
}

/// What happened, for logs and `--json`.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// A receiver reported for the first time.
    ReceiverJoined {
        /// File index.
        file: usize,
        /// Receiver id.
        receiver: u32,
        /// Where it reports from.
        addr: SocketAddr,
        /// Its channel (announce index or `wire::UNICAST_CHANNEL`).
        channel: u8,
    },
    /// A receiver reports another channel.
    ReceiverMoved {
        /// File index.
        file: usize,
        /// Receiver id.
        receiver: u32,
        /// Its new channel.
        channel: u8,
    },
    /// A receiver's report.
    ReceiverProgress {
        /// File index.
        file: usize,
        /// The report.
        report: Report,
    },
    /// A receiver delivered the file.
    ReceiverDone {
        /// File index.
        file: usize,
        /// Receiver id.
        receiver: u32,
        /// Where DONE came from.
        addr: SocketAddr,
        /// Its time from joining to delivery.
        elapsed: Duration,
    },
    /// An on-demand file's channels started.
    ChannelsStarted {
        /// File index.
        file: usize,
        /// Who asked.
        by: SocketAddr,
    },
    /// Another server on the directory group uses one of this server's channel
    /// addresses, and this one is new on the group: the driver restarts it under
    /// a new session with its channels numbered from `first_channel` (spec §7.8).
    ChannelsTaken {
        /// The other server's session.
        by_session: u32,
        /// The first channel number to take (the rest follow it in order).
        first_channel: u32,
    },
    /// An on-demand file's channels stopped (idle).
    ChannelsStopped {
        /// File index.
        file: usize,
    },
    /// An adaptive channel changed its rate.
    RateChanged {
        /// File index.
        file: usize,
        /// Channel index.
        channel: usize,
        /// The new rate, bits/s.
        rate_bps: u64,
    },
    /// A unicast stream started.
    StreamStarted {
        /// File index.
        file: usize,
        /// Its client.
        to: SocketAddr,
    },
    /// A unicast stream ended.
    StreamEnded {
        /// File index.
        file: usize,
        /// Its client.
        to: SocketAddr,
        /// How long it ran.
        after: Duration,
        /// Why.
        why: StreamEnd,
    },
    /// A unicast stream was refused: `--unicast-max-clients` are streaming.
    StreamRefused {
        /// File index.
        file: usize,
        /// Who asked.
        to: SocketAddr,
        /// Streams running.
        clients: usize,
    },
}

/// Counters for the final log and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerStats {
    /// Bytes sent on every stream (channels and unicast).
    pub sent_bytes: u64,
    /// Of those, bytes sent to unicast clients.
    pub unicast_bytes: u64,
    /// Requests answered with a challenge (cookie) only.
    pub unvalidated: u64,
    /// Datagrams on the unicast port that did not decode or were not ours.
    pub dropped: u64,
    /// Datagrams on the unicast port whose tag did not verify (forged or corrupt).
    pub unauthenticated: u64,
    /// Reports that echoed no STATUS sent lately (stale or replayed), ignored.
    pub stale_reports: u64,
}
