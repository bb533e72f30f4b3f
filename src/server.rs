//! `loopcast serve`: loops each file on its own multicast channel, announces them all.

use crate::archive_file::{ArchiveFile, PackOptions, archive_for};
use crate::datapath::BatchSender;
use crate::error::{Context, Error, Result};
use crate::net;
use crate::pacer::Pacer;
use crate::signals::StopSignals;
use crate::timers::TimerHeap;
use crate::units::{format_bytes, format_rate};
use loopcast_proto::wire::{self, AnnounceEntry};
use loopcast_proto::{Announcer, Carousel, MasterKey, RepairConfig};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `serve` was asked to do.
pub struct ServeConfig {
    /// Plain files or ready archives.
    pub paths: Vec<PathBuf>,
    /// Master key.
    pub key: MasterKey,
    /// Local address to send from (unspecified: the kernel's choice).
    pub interface: Ipv4Addr,
    /// Directory group.
    pub group: SocketAddrV4,
    /// Rate of each channel, bits/s.
    pub rate_bps: u64,
    /// IP packet size.
    pub packet_size: usize,
    /// Multicast TTL.
    pub ttl: u32,
    /// Largest share of each channel's packets spent on repairs (0 turns repair off).
    pub repair_share: f64,
    /// Where packed archives of plain files are kept.
    pub cache_dir: PathBuf,
    /// How plain files are packed.
    pub pack: PackOptions,
    /// Send with UDP GSO when the kernel allows (`--no-gso` clears it).
    pub gso: bool,
}

/// One file on air.
struct Channel {
    archive: ArchiveFile,
    carousel: Carousel,
    pacer: Pacer,
    /// Datagrams per send: about a millisecond of data at the channel rate.
    batch: usize,
    address: SocketAddrV4,
    /// Where receivers send NAKs for this file.
    control: mio::net::UdpSocket,
    control_port: u16,
}

/// Most sends one channel makes per wake-up before yielding to the others.
const MAX_SENDS_PER_WAKE: usize = 16;

/// Runs the server until SIGINT or SIGTERM.
pub fn serve(config: ServeConfig) -> Result<()> {
    let session_id: u32 = rand::random();
    let payload_size = wire::payload_size_for_packet(config.packet_size) as u16;
    let now = Instant::now();
    let mut channels = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, path) in config.paths.iter().enumerate() {
        let archive_path = archive_for(path, &config.key, &config.cache_dir, config.pack)?;
        let mut archive = ArchiveFile::open(&archive_path, &config.key)?;
        if !names.insert(archive.manifest.name.clone()) {
            return Err(Error::new(format!(
                "two files are named {:?}; names must be unique on one server",
                archive.manifest.name
            )));
        }
        // Re-sign with this server's payload size; the body and archive id are unchanged.
        archive.manifest.payload_size = payload_size;
        let manifest_bytes = archive
            .manifest
            .encode(&config.key.file_key(archive.manifest.archive_id));
        let repair = RepairConfig {
            rate_bps: config.rate_bps,
            share: config.repair_share,
            ..RepairConfig::default()
        };
        let carousel = Carousel::new(session_id, &archive.manifest, &manifest_bytes, now, repair);
        let address = net::channel_for(config.group, i as u32 + 1)?;
        let control_port = net::control_port_for(address)?;
        let control = mio::net::UdpSocket::from_std(net::multicast_receiver(
            SocketAddrV4::new(*address.ip(), control_port),
            config.interface,
            1 << 20,
        )?);
        let pacer = Pacer::new(config.rate_bps, carousel.max_datagram_len(), now);
        let batch = pacer.burst_datagrams(carousel.max_datagram_len());
        log::info!(
            "serving {} ({}, archive {} in {} packets) on {} at {}",
            archive.manifest.name,
            format_bytes(archive.manifest.original_size),
            format_bytes(archive.manifest.body_len),
            archive.manifest.packet_count(),
            address,
            format_rate(config.rate_bps as f64)
        );
        channels.push(Channel {
            archive,
            carousel,
            pacer,
            batch,
            address,
            control,
            control_port,
        });
    }
    let entries: Vec<AnnounceEntry> = channels
        .iter()
        .map(|c| AnnounceEntry {
            archive_id: c.archive.manifest.archive_id,
            original_size: c.archive.manifest.original_size,
            body_len: c.archive.manifest.body_len,
            channel: c.address,
            control_port: c.control_port,
            rate_bps: config.rate_bps,
            name: c.archive.manifest.name.clone(),
        })
        .collect();
    let max_datagram = config.packet_size - wire::IP_UDP_OVERHEAD;
    let mut announcer = Announcer::new(session_id, &entries, max_datagram).map_err(Error::new)?;
    let socket = net::multicast_sender(
        config.interface,
        config.ttl,
        net::buffer_size_for_rate(config.rate_bps * channels.len() as u64),
    )?;
    let mut sender = BatchSender::new(&socket, config.gso);
    for ch in &mut channels {
        ch.batch = ch
            .batch
            .min(sender.max_batch(ch.carousel.max_datagram_len()));
    }
    log::info!(
        "session {session_id:08x}: announcing {} file(s) on {}; {}",
        channels.len(),
        config.group,
        if sender.gso() {
            "sending with UDP GSO"
        } else {
            "sending without GSO (sendmmsg)"
        }
    );

    let mut signals = StopSignals::new()?;
    for (id, ch) in channels.iter_mut().enumerate() {
        signals
            .poll
            .registry()
            .register(&mut ch.control, mio::Token(id), mio::Interest::READABLE)
            .context(|| "cannot register socket".into())?;
    }
    let mut timers = TimerHeap::default();
    for id in 0..channels.len() {
        timers.schedule(id, now);
    }
    let mut buf = vec![
        0u8;
        channels
            .iter()
            .map(|c| c.carousel.max_datagram_len() * (c.batch + 1))
            .max()
            .unwrap_or(0)
            .max(max_datagram)
    ];
    let mut sent_bytes = 0u64;
    let started = Instant::now();
    loop {
        let now = Instant::now();
        if let Some(datagrams) = announcer.poll_transmit(now) {
            for d in datagrams {
                send(&mut sender, &socket, d, d.len(), config.group)?;
            }
        }
        // Serve each due channel once per pass: a channel whose tokens are not yet
        // back must wait for the next pass, never spin within this one.
        let due: Vec<usize> = std::iter::from_fn(|| timers.pop_due(now)).collect();
        for id in due {
            let ch = &mut channels[id];
            let len = ch.carousel.max_datagram_len();
            for _ in 0..MAX_SENDS_PER_WAKE {
                match send_batch(ch, now, &mut buf, &mut sender, &socket)? {
                    0 => break,
                    bytes => sent_bytes += bytes as u64,
                }
            }
            timers.schedule(id, ch.pacer.ready_at(len * ch.batch));
        }
        let deadline = [timers.next_deadline(), announcer.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if signals.wait(wait)? {
            break;
        }
        let readable: Vec<usize> = signals
            .events
            .iter()
            .map(|e| e.token().0)
            .filter(|&t| t < channels.len())
            .collect();
        for id in readable {
            let ch = &mut channels[id];
            while let Some(n) = net::recv_nonblocking(&ch.control, &mut buf)
                .context(|| format!("cannot receive NAKs on port {}", ch.control_port))?
            {
                ch.carousel.handle_datagram(Instant::now(), &buf[..n]);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let loops: Vec<String> = channels
        .iter()
        .map(|c| {
            let s = c.carousel.stats();
            format!(
                "{}: {} loops, {} repairs for {} NAKs ({} dropped), {} left to the loop, GRTT {:.1} ms",
                c.archive.manifest.name,
                c.carousel.loops(),
                s.repair_packets,
                s.naks,
                s.naks_dropped,
                s.repairs_skipped,
                c.carousel.grtt().as_secs_f64() * 1e3
            )
        })
        .collect();
    log::info!(
        "stopped after {elapsed:.1} s, {} sent ({}); {}",
        format_bytes(sent_bytes),
        format_rate(sent_bytes as f64 * 8.0 / elapsed.max(1e-9)),
        loops.join(", ")
    );
    Ok(())
}

/// Sends up to `ch.batch` datagrams that the pacer allows as one batch; a longer
/// datagram after shorter ones (GSO needs equal sizes, the last may be shorter)
/// goes in a batch of its own. Returns the bytes sent, 0 when the pacer allowed none.
fn send_batch(
    ch: &mut Channel,
    now: Instant,
    buf: &mut [u8],
    sender: &mut BatchSender,
    socket: &UdpSocket,
) -> Result<usize> {
    let len = ch.carousel.max_datagram_len();
    let (mut used, mut count, mut segment, mut total) = (0, 0, 0, 0);
    while count < ch.batch && ch.pacer.try_send(now, len) {
        let n = ch
            .carousel
            .poll_transmit(now, &mut buf[used..used + len], &mut ch.archive)
            .context(|| format!("cannot read archive of {}", ch.archive.manifest.name))?
            .len();
        if count > 0 && n > segment {
            send(sender, socket, &buf[..used], segment, ch.address)?;
            total += used;
            buf.copy_within(used..used + n, 0);
            (used, count) = (0, 0);
        }
        if count == 0 {
            segment = n;
        }
        used += n;
        count += 1;
        if n < segment {
            break;
        }
    }
    if count > 0 {
        send(sender, socket, &buf[..used], segment, ch.address)?;
        total += used;
    }
    Ok(total)
}

/// Sends `batch` as datagrams of `segment` bytes, waiting out a full kernel queue.
fn send(
    sender: &mut BatchSender,
    socket: &UdpSocket,
    batch: &[u8],
    segment: usize,
    to: SocketAddrV4,
) -> Result<()> {
    loop {
        match sender.send(socket, batch, segment, to) {
            Ok(()) => return Ok(()),
            // The device queue is momentarily full: back off briefly instead of failing.
            Err(e)
                if e.raw_os_error() == Some(libc::ENOBUFS)
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(e) => return Err(Error::new(format!("cannot send to {to}: {e}"))),
        }
    }
}
