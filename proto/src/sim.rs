//! A deterministic simulated LAN for the protocol machines: one file looped on one
//! or more channels (carousels), many receivers, seeded loss, delay and jitter, link
//! capacities, reports and a virtual clock. Tests and the repair benchmark drive it;
//! nothing here touches a socket or the real clock (the one `Instant::now()` is only
//! the origin of the virtual time line).

use crate::archive::{FileMeta, Packer, SALT_LEN};
use crate::rate::{AdaptMode, ChannelSelector, RateController, SELECT_SAMPLE, membership_memory};
use crate::receiver::NakMode;
use crate::sender::{DEFAULT_GRTT_FLOOR, DEFAULT_REPAIR_SHARE, RepairConfig};
use crate::wire::{self, Packet};
use crate::{Carousel, FileReceiver, MasterKey, Outcome, PayloadSource, Transmit};
use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

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
    /// Receivers choose among the channels (start on the fastest within `max_rate`,
    /// step down and up); otherwise they stay on the first channel.
    pub select: bool,
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
            select: false,
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
    /// DATA packets sent as repairs, all channels.
    pub repair_packets: u64,
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

struct Body(Rc<Vec<u8>>);

impl PayloadSource for Body {
    fn read_payload(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = offset as usize;
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }
}

enum Event {
    SenderSend(usize),
    ToReceiver(usize, Rc<Vec<u8>>, usize),
    /// A NAK to channel `.0`'s control port.
    ToSender(usize, Rc<Vec<u8>>),
    /// A REPORT to the server's unicast port.
    ToServer(Rc<Vec<u8>>),
    ReceiverTimer(usize),
}

struct Node {
    fsm: FileReceiver,
    join: Duration,
    body: Vec<u8>,
    last_arrival: Duration,
    timer: Option<Duration>,
    done: Option<Duration>,
    /// Channels this receiver is on; NAKs go to the first.
    channels: Vec<usize>,
    selector: Option<ChannelSelector>,
    next_sample: Duration,
    changes: Vec<(Duration, usize)>,
    capacity: Option<u64>,
    schedule: Vec<(Duration, f64)>,
}

impl Node {
    /// Chance that a datagram on this receiver's link is lost at `now` beyond the
    /// configured random loss: its schedule's, and what exceeds its capacity.
    fn extra_loss(&self, now: Duration, joined_rate: u64) -> f64 {
        let scheduled = self
            .schedule
            .iter()
            .take_while(|(from, _)| *from <= now)
            .last()
            .map_or(0.0, |&(_, p)| p);
        let over = self.capacity.map_or(0.0, |cap| {
            1.0 - (cap as f64 / joined_rate.max(1) as f64).min(1.0)
        });
        1.0 - (1.0 - scheduled) * (1.0 - over)
    }
}

/// The event queue: time, then insertion order, so equal times stay deterministic.
struct Queue {
    heap: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: Vec<Option<Event>>,
    free: Vec<usize>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: Duration, event: Event) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.events[slot] = Some(event);
                slot
            }
            None => {
                self.events.push(Some(event));
                self.events.len() - 1
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, slot)));
    }

    fn pop(&mut self) -> Option<(Duration, Event)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        self.free.push(slot);
        Some((at, self.events[slot].take().expect("queued event")))
    }
}

/// Packs `original` in memory with `frame_size` frames and `payload`-byte packets,
/// salts from `rng`; returns the manifest, its encoded bytes, and the body.
pub fn pack(
    key: &MasterKey,
    original: &[u8],
    frame_size: u32,
    payload: u16,
    rng: &mut impl Rng,
) -> (crate::Manifest, Vec<u8>, Vec<u8>) {
    let mut packer = Packer::new(key, rng.next_u64(), original.len() as u64, frame_size, 1)
        .expect("valid frame size");
    let mut frames = Vec::with_capacity(original.len() + 4096);
    let mut offset = 0;
    for _ in 0..packer.frame_count() {
        let n = packer.next_frame_len();
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        frames.extend(
            packer
                .seal_next(&original[offset..offset + n], salt)
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

/// Runs one simulation to completion (or the time limit) and reports what happened.
pub fn run(config: &SimConfig) -> SimReport {
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let key = MasterKey::from_bytes([7; 32]);
    let (manifest, manifest_bytes, body) = if config.sham_body {
        let (mut manifest, _, _) = pack(&key, &[], 1 << 20, 1440, &mut rng);
        manifest.body_len = config.file_size.max(64) as u64;
        let bytes = manifest.encode(&key.file_key(manifest.archive_id));
        (manifest, bytes, vec![0; config.file_size.max(64)])
    } else {
        let mut original = vec![0u8; config.file_size];
        rng.fill_bytes(&mut original);
        pack(&key, &original, 1 << 20, 1440, &mut rng)
    };
    let body = Rc::new(body);
    let origin = Instant::now();
    let session = 0x5eed;
    let rates: Vec<u64> = std::iter::once(config.rate_bps)
        .chain(config.more_rates.iter().copied())
        .collect();
    let packets = manifest.packet_count();
    let mut carousels: Vec<Carousel> = rates
        .iter()
        .enumerate()
        .map(|(j, &rate_bps)| {
            let repair = RepairConfig {
                rate_bps,
                share: config.repair_share,
                grtt_floor: config.grtt_floor,
                group_size: config.receivers as u32,
            };
            let phase = (packets as u64 * j as u64 / rates.len() as u64) as u32;
            Carousel::new(session, &manifest, &manifest_bytes, origin, repair).with_phase(phase)
        })
        .collect();
    let mut controllers: Vec<RateController> = match config.adapt {
        Some((mode, min, max)) => rates
            .iter()
            .map(|&r| RateController::new(mode, min, max, r))
            .collect(),
        None => Vec::new(),
    };
    let datagram_len = carousels[0].max_datagram_len();
    let mut source = Body(Rc::clone(&body));
    let mut nodes: Vec<Node> = (0..config.receivers)
        .map(|i| {
            let selector = (config.select || config.aggregate)
                .then(|| ChannelSelector::new(&rates, config.max_rate));
            let channels = match &selector {
                Some(s) if config.aggregate => s.allowed().to_vec(),
                Some(s) => vec![s.channel()],
                None => vec![0],
            };
            Node {
                fsm: FileReceiver::new(
                    key.clone(),
                    session,
                    manifest.archive_id,
                    config.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    config.nak_mode,
                ),
                join: config.join_at.get(i).copied().unwrap_or_default(),
                body: if config.store_bodies {
                    vec![0; manifest.body_len as usize]
                } else {
                    Vec::new()
                },
                last_arrival: Duration::ZERO,
                timer: None,
                done: None,
                channels,
                selector: selector.filter(|_| !config.aggregate),
                next_sample: SELECT_SAMPLE,
                changes: Vec::new(),
                capacity: config.capacity_bps.get(i).copied(),
                schedule: config.loss_schedule.get(i).cloned().unwrap_or_default(),
            }
        })
        .collect();
    let mut queue = Queue {
        heap: BinaryHeap::new(),
        events: Vec::new(),
        free: Vec::new(),
        seq: 0,
    };
    for ch in 0..carousels.len() {
        queue.push(Duration::ZERO, Event::SenderSend(ch));
    }
    let mut buf = vec![0u8; datagram_len];
    let (mut naks_sent, mut reports_sent, mut lost_data, mut cap_exceeded) =
        (0u64, 0u64, 0u64, false);
    let mut rate_changes = vec![(Duration::ZERO, carousels[0].rate())];
    let mut remaining = nodes.len();
    let credit_per_loop =
        config.repair_share.clamp(0.0, 0.9) / (1.0 - config.repair_share.clamp(0.0, 0.9));
    let link_delay = |rng: &mut SmallRng| config.delay + config.jitter.mul_f64(rng.random::<f64>());

    while let Some((now, event)) = queue.pop() {
        if remaining == 0 || now > config.time_limit {
            break;
        }
        let instant = origin + now;
        let touched = match event {
            Event::ToReceiver(i, ..) | Event::ReceiverTimer(i) => Some(i),
            Event::SenderSend(_) | Event::ToSender(..) | Event::ToServer(_) => None,
        };
        match event {
            Event::SenderSend(ch) => {
                if let Some(c) = controllers.get_mut(ch) {
                    let memory =
                        membership_memory(carousels[ch].group_size(), c.rate(), datagram_len);
                    if let Some(rate) = c.poll(instant, memory) {
                        carousels[ch].set_rate(rate);
                        if ch == 0 {
                            rate_changes.push((now, rate));
                        }
                    }
                }
                let rates_now: Vec<u64> = carousels.iter().map(Carousel::rate).collect();
                let carousel = &mut carousels[ch];
                let t = carousel
                    .poll_transmit(instant, &mut buf, &mut source)
                    .expect("in-memory source");
                let datagram = Rc::new(buf[..t.len()].to_vec());
                let is_data = matches!(t, Transmit::Data { .. } | Transmit::Repair { .. });
                let shared_lost = rng.random_bool(config.shared_loss);
                let mut lost_by_someone = false;
                for (i, node) in nodes.iter_mut().enumerate() {
                    if node.done.is_some() || now < node.join || !node.channels.contains(&ch) {
                        continue;
                    }
                    let joined_rate = node.channels.iter().map(|&c| rates_now[c]).sum();
                    let extra = node.extra_loss(now, joined_rate);
                    if shared_lost
                        || rng.random_bool(config.independent_loss)
                        || (extra > 0.0 && rng.random_bool(extra))
                    {
                        lost_by_someone = true;
                        continue;
                    }
                    let at = (now + link_delay(&mut rng)).max(node.last_arrival);
                    node.last_arrival = at;
                    queue.push(at, Event::ToReceiver(i, Rc::clone(&datagram), ch));
                }
                lost_data += (is_data && lost_by_someone) as u64;
                let s = carousel.stats();
                cap_exceeded |=
                    s.repair_packets as f64 > credit_per_loop * s.loop_packets as f64 + 64.0 + 1.0;
                let gap = Duration::from_secs_f64(t.len() as f64 * 8.0 / carousel.rate() as f64);
                queue.push(now + gap, Event::SenderSend(ch));
            }
            Event::ToSender(ch, datagram) => {
                carousels[ch].handle_datagram(instant, &datagram);
            }
            Event::ToServer(datagram) => {
                if let Ok(wire::Datagram {
                    packet: Packet::Report(report),
                    ..
                }) = wire::decode(&datagram)
                    && let Some(carousel) = carousels.get_mut(report.channel as usize)
                {
                    let ch = report.channel as usize;
                    carousel.note_receiver(instant, report.receiver_id);
                    if let Some(c) = controllers.get_mut(ch) {
                        c.handle_report(instant, &report, datagram_len);
                    }
                }
            }
            Event::ToReceiver(i, datagram, ch) => {
                let node = &mut nodes[i];
                if node.done.is_some() || !node.channels.contains(&ch) {
                    continue; // left that channel while the datagram was in flight
                }
                if let Outcome::Store {
                    body_offset,
                    payload,
                    ..
                } = node.fsm.handle_datagram_on(instant, ch, &datagram)
                    && config.store_bodies
                {
                    node.body[body_offset as usize..body_offset as usize + payload.len()]
                        .copy_from_slice(payload);
                }
                if node.fsm.is_complete() {
                    node.done = Some(now - node.join);
                    remaining -= 1;
                }
            }
            Event::ReceiverTimer(i) => {
                let node = &mut nodes[i];
                if node.done.is_some() || node.timer != Some(now) {
                    continue; // superseded
                }
                node.timer = None;
                node.fsm.handle_timeout(instant);
                if let Some(nak) = node.fsm.poll_transmit() {
                    naks_sent += 1;
                    let nak = Rc::new(nak);
                    let ch = node.channels[0];
                    if !rng.random_bool(config.independent_loss) {
                        queue.push(
                            now + link_delay(&mut rng),
                            Event::ToSender(ch, Rc::clone(&nak)),
                        );
                    }
                    for (j, other) in nodes.iter_mut().enumerate() {
                        if j == i
                            || other.done.is_some()
                            || now < other.join
                            || !other.channels.contains(&ch)
                            || rng.random_bool(config.independent_loss)
                        {
                            continue;
                        }
                        let at = (now + link_delay(&mut rng)).max(other.last_arrival);
                        other.last_arrival = at;
                        queue.push(at, Event::ToReceiver(j, Rc::clone(&nak), ch));
                    }
                }
            }
        }
        if let Some(i) = touched
            && nodes[i].done.is_none()
        {
            let node = &mut nodes[i];
            if let Some(report) = node.fsm.poll_report(instant, node.channels[0] as u8, 0) {
                reports_sent += 1;
                queue.push(now + link_delay(&mut rng), Event::ToServer(Rc::new(report)));
            }
            if now >= node.next_sample {
                node.next_sample = now + SELECT_SAMPLE;
                if let Some(selector) = node.selector.as_mut() {
                    let (advanced, arrived) = node.fsm.track_counters(node.channels[0]);
                    if let Some(ch) = selector.sample(advanced, arrived) {
                        node.channels = vec![ch];
                        node.changes.push((now, ch));
                    }
                }
            }
            // Only the receiver an event touched can have moved its deadline; keep one
            // timer event queued per receiver, at that deadline.
            if let Some(at) = node.fsm.poll_timeout() {
                let at = at.saturating_duration_since(origin).max(now);
                if node.timer != Some(at) {
                    node.timer = Some(at);
                    queue.push(at, Event::ReceiverTimer(i));
                }
            }
        }
    }
    let (loop_packets, repair_packets) = carousels.iter().fold((0, 0), |(l, r), c| {
        (l + c.stats().loop_packets, r + c.stats().repair_packets)
    });
    SimReport {
        ideal: Duration::from_secs_f64(manifest.body_len as f64 * 8.0 / config.rate_bps as f64),
        completion: nodes.iter().map(|n| n.done).collect(),
        naks_sent,
        reports_sent,
        lost_data,
        loop_packets,
        repair_packets,
        repair_cap_exceeded: cap_exceeded,
        bodies_identical: config.store_bodies.then(|| {
            nodes
                .iter()
                .filter(|n| n.done.is_some())
                .all(|n| n.body == *body)
        }),
        channel_changes: nodes.into_iter().map(|n| n.changes).collect(),
        rate_changes,
    }
}
