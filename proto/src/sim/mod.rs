//! A deterministic simulated LAN that drives the very machines production runs: one
//! server endpoint (`server::Endpoint`) looping one file on one or more channels,
//! and many receiver sessions (`client::Session`), with seeded loss, delay and
//! jitter, link capacities and loss schedules on a virtual clock. Tests and the
//! repair benchmark drive it; nothing here touches a socket or the real clock (the
//! one `Instant::now()` is only the origin of the virtual time line). Test support,
//! not API: built for this crate's tests and with the `sim` feature.

pub mod fuzz;
mod lan;
mod queue;

pub use lan::run;

use crate::MasterKey;
use crate::archive::{FileMeta, Packer};
use crate::rate::AdaptMode;
use crate::receiver::NakMode;
use crate::sender::{DEFAULT_GRTT_FLOOR, DEFAULT_REPAIR_SHARE};
use crate::server::Archives;
use rand::{Rng, SeedableRng};
use std::io;
use std::time::Duration;

/// Archive bodies in memory, one per file, for a server endpoint.
pub struct Bodies(pub Vec<Vec<u8>>);

impl Archives for Bodies {
    fn read_payload(&mut self, file: usize, body_offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = body_offset as usize;
        buf.copy_from_slice(&self.0[file][start..start + buf.len()]);
        Ok(())
    }
}

/// One simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of receivers.
    pub receivers: usize,
    /// Bytes of the (random, incompressible) original file.
    pub file_size: usize,
    /// Loop a body of `file_size` zero bytes behind a manifest of an empty file instead
    /// of packing a real one: for long runs where only timing matters.
    pub sham_body: bool,
    /// Rate of the file's first channel, bits/s.
    pub rate_bps: u64,
    /// Rates of further channels of the same file, bits/s (phase-shifted loops).
    pub more_rates: Vec<u64>,
    /// Receivers join every channel within `max_rate` at once (`--aggregate`).
    pub aggregate: bool,
    /// Receivers' rate cap for choosing channels.
    pub max_rate: Option<u64>,
    /// Per receiver: the most its link carries, bits/s; beyond it datagrams are lost
    /// at random in proportion. Missing entries: no limit.
    pub capacity_bps: Vec<u64>,
    /// Per receiver: extra loss from given times on, as (from, loss) in time order.
    pub loss_schedule: Vec<Vec<(Duration, f64)>>,
    /// The server adapts every channel's rate to reports, within (min, max).
    pub adapt: Option<(AdaptMode, u64, u64)>,
    /// Chance that a datagram from the sender is lost for everyone (upstream loss).
    pub shared_loss: f64,
    /// Chance that a datagram is lost on one receiver's link, drawn per receiver.
    pub independent_loss: f64,
    /// One-way delay of every link.
    pub delay: Duration,
    /// Extra random delay per datagram and link, up to this (never reorders a link).
    pub jitter: Duration,
    /// When each receiver joins; missing entries join at 0.
    pub join_at: Vec<Duration>,
    /// How receivers NAK.
    pub nak_mode: NakMode,
    /// How receivers ask for their missing packets: copies or parity (§6.5).
    pub repair: crate::client::RepairKind,
    /// Parity the server sends on the loop after each block, as a share of it.
    pub fec_overhead: f64,
    /// Largest share of packets the sender spends on repairs.
    pub repair_share: f64,
    /// Lowest GRTT the sender advertises.
    pub grtt_floor: Duration,
    /// Seed of every random choice in the run.
    pub seed: u64,
    /// Keep every receiver's bytes and compare them with the sender's at the end.
    pub store_bodies: bool,
    /// Give up after this much virtual time.
    pub time_limit: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            receivers: 10,
            file_size: 4 << 20,
            sham_body: false,
            rate_bps: 100_000_000,
            more_rates: Vec::new(),
            aggregate: false,
            max_rate: None,
            capacity_bps: Vec::new(),
            loss_schedule: Vec::new(),
            adapt: None,
            shared_loss: 0.0,
            independent_loss: 0.0,
            delay: Duration::from_micros(200),
            jitter: Duration::from_micros(100),
            join_at: Vec::new(),
            nak_mode: NakMode::Suppressed,
            repair: crate::client::RepairKind::Copies,
            fec_overhead: 0.0,
            repair_share: DEFAULT_REPAIR_SHARE,
            grtt_floor: DEFAULT_GRTT_FLOOR,
            seed: 1,
            store_bodies: false,
            time_limit: Duration::from_secs(600),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// Archive body bytes ÷ the first channel's rate: one loop with nothing else sent.
    pub ideal: Duration,
    /// Per receiver: time from joining to holding every packet, if it got there.
    pub completion: Vec<Option<Duration>>,
    /// NAK packets sent by all receivers.
    pub naks_sent: u64,
    /// REPORT packets sent by all receivers.
    pub reports_sent: u64,
    /// DATA transmissions lost by at least one receiver that still needed them.
    pub lost_data: u64,
    /// DATA packets sent in loop order, all channels.
    pub loop_packets: u64,
    /// DATA and PARITY packets sent as repairs, all channels.
    pub repair_packets: u64,
    /// Of `repair_packets`, PARITY packets.
    pub parity_packets: u64,
    /// Whether repairs ever exceeded their share of the channel (plus a short burst).
    pub repair_cap_exceeded: bool,
    /// With `store_bodies`: whether every complete receiver holds the sender's bytes.
    pub bodies_identical: Option<bool>,
    /// Per receiver: (time, channel index) each time it moved to another channel.
    pub channel_changes: Vec<Vec<(Duration, usize)>>,
    /// The first channel's rate over time: (time, bits/s) at each change.
    pub rate_changes: Vec<(Duration, u64)>,
}

impl SimReport {
    /// True when every receiver completed.
    pub fn all_complete(&self) -> bool {
        self.completion.iter().all(Option::is_some)
    }

    /// Slowest completion time ÷ ideal.
    pub fn worst_ratio(&self) -> f64 {
        let worst = self
            .completion
            .iter()
            .map(|c| c.unwrap_or(Duration::MAX).as_secs_f64())
            .fold(0.0, f64::max);
        worst / self.ideal.as_secs_f64()
    }

    /// NAK packets per lost DATA transmission.
    pub fn naks_per_loss(&self) -> f64 {
        self.naks_sent as f64 / self.lost_data.max(1) as f64
    }

    /// NAKs sent by all receivers per DATA and PARITY packet the server sent.
    pub fn feedback(&self) -> f64 {
        self.naks_sent as f64 / (self.loop_packets + self.repair_packets).max(1) as f64
    }

    /// Repair packets as a share of all DATA packets sent.
    pub fn repair_overhead(&self) -> f64 {
        self.repair_packets as f64 / (self.loop_packets + self.repair_packets).max(1) as f64
    }

    /// The first channel's rate at time `t`.
    pub fn rate_at(&self, t: Duration) -> u64 {
        self.rate_changes
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(0, |&(_, r)| r)
    }
}

/// Packs `original` in memory with `frame_size` frames and `payload`-byte packets,
/// A random (incompressible) file of `size` bytes packed with `key` in frames of
/// `frame_size` and packets of `payload` bytes, from `seed`: (manifest, encoded
/// manifest, body).
pub fn random_archive(
    key: &MasterKey,
    size: usize,
    frame_size: u32,
    payload: u16,
    seed: u64,
) -> (crate::Manifest, Vec<u8>, Vec<u8>) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut original = vec![0u8; size];
    rng.fill_bytes(&mut original);
    pack(key, &original, frame_size, payload, &mut rng)
}

/// salts from `rng`; returns the manifest, its encoded bytes, and the body.
pub fn pack(
    key: &MasterKey,
    original: &[u8],
    frame_size: u32,
    payload: u16,
    rng: &mut impl Rng,
) -> (crate::Manifest, Vec<u8>, Vec<u8>) {
    // One cell per packet, as `pack` makes for the default packet size.
    let mut packer = Packer::new(
        key,
        rng.next_u64(),
        original.len() as u64,
        frame_size,
        1,
        payload,
    )
    .expect("valid frame and cell size");
    let mut frames = Vec::with_capacity(original.len() + 4096);
    let mut offset = 0;
    for _ in 0..packer.frame_count() {
        let n = packer.next_frame_len();
        frames.extend(
            packer
                .seal_next(&original[offset..offset + n])
                .expect("frame sizes follow the packer"),
        );
        offset += n;
    }
    let meta = FileMeta {
        name: "sim.bin".into(),
        mode: 0o644,
        mtime_secs: 0,
        mtime_nanos: 0,
    };
    let (mut body, manifest, bytes) = packer.finish(meta, payload).expect("valid name");
    body.extend(frames);
    (manifest, bytes, body)
}

/// `body` (sealed cells, as an archive holds them) as a receiver stores it:
/// every cell opened in place, its tag's bytes left where they were.
pub fn opened_body(key: &MasterKey, manifest: &crate::Manifest, body: &[u8]) -> Vec<u8> {
    let mut opened = body.to_vec();
    let cells = crate::cell::CellKey::new(&key.file_key(manifest.archive_id));
    let whole = cells.open_cells(manifest.archive_id, 0, &mut opened, manifest.cell_size);
    assert!(whole, "a body sealed under this key");
    opened
}
