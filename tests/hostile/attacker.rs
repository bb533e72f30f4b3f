//! The attacker of `tests/hostile.rs`: a host of the lab LAN without the key (but
//! for row 12), running the rows of spec §8 named in `LOOPCAST_ATTACK_ROWS`
//! against the transfer it finds on the directory group, for
//! `LOOPCAST_ATTACK_SECS`. It prints a summary line for the test to read.

use super::common::*;
use std::time::Duration;

/// Runs the attack the environment describes (see the module documentation).
pub fn run() {
    use loopcast_proto::MasterKey;
    use loopcast_proto::cell::CellKey;
    use loopcast_proto::manifest::Manifest;
    use loopcast_proto::wire::{self, Announce, AnnounceEntry, ChannelInfo, Packet};
    use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    use std::time::Instant;
    let Ok(iface) = std::env::var("LOOPCAST_ATTACK_IFACE") else {
        return; // run by hand or by `cargo test -- --ignored`: nothing to attack
    };
    let iface: Ipv4Addr = iface.parse().unwrap();
    let server: SocketAddrV4 = std::env::var("LOOPCAST_ATTACK_SERVER")
        .unwrap()
        .parse()
        .unwrap();
    let secs: u64 = std::env::var("LOOPCAST_ATTACK_SECS")
        .unwrap()
        .parse()
        .unwrap();
    let rows: Vec<u8> = std::env::var("LOOPCAST_ATTACK_ROWS")
        .unwrap()
        .split(',')
        .map(|r| r.parse().unwrap())
        .collect();
    let row = |n: u8| rows.contains(&n);
    // Used for the stream requests of T12 only; everything else is forged under a
    // key of the attacker's own.
    let insider = loopcast::keyfile::load(std::path::Path::new(
        &std::env::var("LOOPCAST_ATTACK_KEY").unwrap(),
    ))
    .unwrap();
    let own = MasterKey::from_bytes([0x66; 32]);
    let listen = |group: SocketAddrV4| -> UdpSocket {
        let s = join_group(group, iface);
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s
    };
    let mut buf = vec![0u8; 65536];
    // Learn the session and the file from the listing, and a manifest from the channel.
    let directory = listen(GROUP.parse().unwrap());
    let (session, entry) = loop {
        if let Ok(n) = directory.recv(&mut buf)
            && let Ok(d) = wire::decode(&buf[..n])
            && let Packet::Announce(a) = d.packet
            && let Some(e) = a.entries.into_iter().next()
        {
            break (d.session_id, e);
        }
    };
    let channel = entry.channels[0];
    let std::net::SocketAddr::V4(group) = channel.group else {
        panic!("the hostile lab runs on IPv4");
    };
    let data = listen(group);
    let manifest = loop {
        if let Ok(n) = data.recv(&mut buf)
            && let Ok(d) = wire::decode(&buf[..n])
            && let Packet::Manifest(body) = d.packet
        {
            break Manifest::decode_unverified(body).unwrap();
        }
    };
    let sender = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    sender.set_multicast_if_v4(&iface).unwrap();
    sender.set_multicast_ttl_v4(1).unwrap();
    sender.bind(&SocketAddrV4::new(iface, 0).into()).unwrap();
    let sender: UdpSocket = sender.into();
    // Forgeries, all under the attacker's own key.
    let own_keys = wire::SessionKeys::new(&own.file_key(manifest.archive_id), session);
    let own_cells = CellKey::new(&own.file_key(manifest.archive_id));
    let mut forged = manifest.clone();
    forged.key_fingerprint = own.fingerprint();
    let forged_manifest = wire::encode_manifest(
        &own_keys.mac,
        session,
        &forged.encode(&own.file_key(forged.archive_id)),
    );
    let fake = |name: String, n: u8| AnnounceEntry {
        archive_id: 0xfa4e + n as u64,
        original_size: 1000,
        body_len: 2000,
        content_digest: [7; 32],
        flags: 0,
        name,
        channels: vec![ChannelInfo {
            group: SocketAddrV4::new(Ipv4Addr::new(239, 77, 9, n), 9000 + n as u16).into(),
            control_port: 19000,
            rate_bps: 1_000_000,
        }],
    };
    let rogue_listing: Vec<Vec<u8>> = (0..3u8)
        .map(|part| {
            let mut entries: Vec<AnnounceEntry> = (0..20u8)
                .map(|i| fake(format!("fake-{part}-{i}"), part * 20 + i))
                .collect();
            if part == 0 {
                entries.push(fake("../evil".into(), 99));
            }
            wire::encode_announce(
                &own.directory_mac_key(),
                0xbad,
                &Announce {
                    part,
                    parts: 3,
                    unicast_port: 7700,
                    key_fingerprint: own.fingerprint(),
                    entries,
                },
            )
        })
        .collect();
    let count = manifest.packet_count();
    // A forged NAK (tagged under the attacker's own key) asking `ranges` and `blocks`.
    let forged_nak = |ranges: Vec<(u32, u16)>, blocks: Vec<(u32, u16)>| {
        let nak = wire::Nak {
            archive_id: manifest.archive_id,
            receiver_id: 0xbad,
            echo_time_us: 1,
            hold_us: 0,
            ranges,
            blocks,
        };
        wire::encode_nak(&own_keys.mac, session, &nak)
    };
    let whole_file = (0..count)
        .step_by(60_000)
        .map(|first| (first, (count - first).min(60_000) as u16));
    let nak = forged_nak(whole_file.take(wire::MAX_NAK_RANGES).collect(), Vec::new());
    // T32: every block's whole parity asked for, and forged parity.
    let blocks = loopcast_proto::fec::Blocks::of_manifest(&manifest);
    let every_block = (0..blocks.count()).map(|b| (b, blocks.source_count(b)));
    let block_nak = forged_nak(Vec::new(), every_block.take(wire::MAX_NAK_RANGES).collect());
    let shard = vec![0x5au8; blocks.shard_len()];
    let requesters: Vec<UdpSocket> = (0..16)
        .map(|_| {
            let s = UdpSocket::bind(SocketAddrV4::new(iface, 0)).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let request = |cookie: [u8; wire::COOKIE_LEN]| {
        wire::encode_request(
            &insider.directory_mac_key(),
            0,
            &wire::Request {
                receiver_id: 0xbad,
                flags: wire::REQUEST_UNICAST,
                max_rate_bps: 0,
                cookie,
                name: manifest.name.clone(),
            },
        )
    };
    if row(12) {
        for r in &requesters {
            r.send_to(&request([0; wire::COOKIE_LEN]), server).unwrap();
        }
    }
    // T35: genuine datagrams overheard on the channel, its control group and the
    // directory group, sent again: every control datagram 3 times at random
    // delays up to 0.5 s, about 2% of DATA at once, and each second the oldest
    // 64 DATA heard (a run of the loop from before).
    let control = listen(channel_control(channel));
    let mut replay = Replayer::new(row(35), [&data, &control, &directory]);
    // Every send counted: what failed is told, and fails the test (an attack
    // that did not leave this host proves nothing).
    let send_errors = std::cell::Cell::new(0u64);
    let send = |bytes: &[u8], to: std::net::SocketAddr| -> u64 {
        match sender.send_to(bytes, to) {
            Ok(_) => 1,
            Err(_) => {
                send_errors.set(send_errors.get() + 1);
                0
            }
        }
    };
    let (mut listings_sent, mut status_sent, mut manifests_sent) = (0u64, 0u64, 0u64);
    println!("attacking session {session:08x}");
    let mut streamed = vec![0u64; requesters.len()];
    let mut flap = 0u64;
    let (mut naks_sent, mut data_sent, mut reports_sent) = (0u64, 0u64, 0u64);
    let mut parity_sent = 0u64;
    let payload = vec![0xa5u8; manifest.payload_size as usize];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        flap += 1;
        if row(1) || row(16) {
            for d in &rogue_listing {
                listings_sent += send(d, GROUP.parse().unwrap());
            }
        }
        let mut flapping = entry.clone();
        flapping.archive_id = 0xf1a9_0000 + flap;
        let flapping = wire::encode_announce(
            &own.directory_mac_key(),
            session,
            &Announce {
                part: 0,
                parts: 1,
                unicast_port: 7700,
                key_fingerprint: insider.fingerprint(),
                entries: vec![flapping],
            },
        );
        if row(7) {
            listings_sent += send(&flapping, GROUP.parse().unwrap());
        }
        let status = wire::encode_status(
            &own_keys.mac,
            session,
            &wire::Status {
                archive_id: manifest.archive_id,
                server_time_us: 1,
                grtt_us: 0,
                group_size: 1,
                rate_bps: 1_000_000,
                lacking: 0,
            },
        );
        if row(4) || row(5) {
            status_sent += send(&status, channel.group);
        }
        if row(2) {
            manifests_sent += send(&forged_manifest, channel.group);
        }
        // T3, T13: 100 NAKs/s for the whole file; T6: about 1,000 forged DATA/s.
        for _ in 0..5 {
            if row(3) || row(4) || row(13) {
                naks_sent += send(&nak, channel.control());
            }
        }
        for i in 0..50u32 * row(6) as u32 {
            let index = (flap as u32 * 50 + i) % (count - 1);
            let header = wire::DataHeader {
                archive_id: manifest.archive_id,
                packet_index: index,
                packet_count: count,
                flags: 0,
            };
            // Cells sealed, at their place, under the attacker's own key.
            let mut cells = payload.clone();
            let first = index as u64 * manifest.cells_per_packet();
            own_cells.seal_cells(manifest.archive_id, first, &mut cells, manifest.cell_size);
            let forged = wire::encode_data(session, &header, &cells);
            data_sent += send(&forged, channel.group);
        }
        // T32: 100 NAKs/s asking every block's parity; about 1,000 forged PARITY/s.
        for _ in 0..5 * row(32) as u32 {
            naks_sent += send(&block_nak, channel.control());
        }
        for i in 0..50u32 * row(32) as u32 {
            let block = (flap as u32 * 50 + i) % blocks.count();
            let header = wire::ParityHeader {
                archive_id: manifest.archive_id,
                block,
                packet_count: count,
                parity_index: (flap % blocks.source_count(block) as u64) as u16,
            };
            // PARITY has no tag: any shard is taken, and fails at the rebuild.
            let forged = wire::encode_parity(session, &header, &shard);
            parity_sent += send(&forged, channel.group);
        }
        // T9: 500 new receiver ids a round, 10,000 a second.
        for i in 0..500u32 * row(9) as u32 {
            let report = wire::encode_report(
                &own_keys.mac,
                session,
                &wire::Report {
                    archive_id: manifest.archive_id,
                    receiver_id: flap as u32 * 500 + i,
                    channel: 0,
                    held: 0,
                    packet_count: count,
                    arrived: 0,
                    lost: 1000,
                    interval_ms: 100,
                    kernel_drops: 0,
                    echo_time_us: 1,
                },
            );
            reports_sent += send(&report, server.into());
        }
        for (i, r) in requesters.iter().enumerate() {
            while let Ok(n) = r.recv(&mut buf) {
                match wire::decode(&buf[..n]).map(|d| d.packet) {
                    Ok(Packet::Cookie(c)) => {
                        let _ = r.send_to(&request(c), server);
                    }
                    Ok(Packet::Data(..)) => streamed[i] += 1,
                    _ => {}
                }
            }
            // Keep what was granted: a stream ends when its client falls silent.
            if row(12) && flap.is_multiple_of(20) {
                let _ = r.send_to(&request([0; wire::COOKIE_LEN]), server);
            }
        }
        replay.round(&sender, &mut buf, Duration::from_millis(50));
    }
    let granted = streamed.iter().filter(|&&n| n > 0).count();
    println!(
        "attack done: rounds={flap} streams_granted={granted} stream_datagrams={} naks_sent={naks_sent} data_sent={data_sent} parity_sent={parity_sent} reports_sent={reports_sent} listings_sent={listings_sent} status_sent={status_sent} manifests_sent={manifests_sent} replayed_control={} replayed_data={} channel_bps={:.0} send_errors={}",
        streamed.iter().sum::<u64>(),
        replay.control_sent,
        replay.data_sent,
        // DATA heard on the channel while the attack ran, bits/s.
        replay.data_heard_bytes as f64 * 8.0 / start.elapsed().as_secs_f64(),
        send_errors.get() + replay.send_errors,
    );
}

/// Where a channel's NAKs go.
fn channel_control(c: loopcast_proto::wire::ChannelInfo) -> std::net::SocketAddrV4 {
    match c.control() {
        std::net::SocketAddr::V4(a) => a,
        std::net::SocketAddr::V6(_) => panic!("the hostile lab runs on IPv4"),
    }
}

/// T35's replayer: what it heard, sent again as it was.
struct Replayer<'a> {
    on: bool,
    sockets: [&'a std::net::UdpSocket; 3],
    /// Control datagrams to send again: (when, where, bytes).
    due: Vec<(std::time::Instant, std::net::SocketAddr, Vec<u8>)>,
    /// The first 64 DATA heard, and where they went.
    oldest: Vec<(std::net::SocketAddr, Vec<u8>)>,
    last_burst: std::time::Instant,
    /// Digests of datagrams heard, so that each is replayed once (its own
    /// replays come back to it).
    heard: std::collections::HashSet<[u8; 32]>,
    rng: rand::rngs::StdRng,
    control_sent: u64,
    data_sent: u64,
    send_errors: u64,
    /// Bytes of DATA heard on the channel (replays of its own included).
    data_heard_bytes: u64,
}

impl<'a> Replayer<'a> {
    fn new(on: bool, sockets: [&'a std::net::UdpSocket; 3]) -> Self {
        use rand::SeedableRng;
        for s in sockets {
            s.set_nonblocking(true).unwrap();
        }
        Self {
            on,
            sockets,
            due: Vec::new(),
            oldest: Vec::new(),
            last_burst: std::time::Instant::now(),
            heard: std::collections::HashSet::new(),
            rng: rand::rngs::StdRng::seed_from_u64(35),
            control_sent: 0,
            data_sent: 0,
            send_errors: 0,
            data_heard_bytes: 0,
        }
    }

    /// Sends `bytes` to `to`, counted as DATA or control, or as an error.
    fn send(
        &mut self,
        sender: &std::net::UdpSocket,
        bytes: &[u8],
        to: std::net::SocketAddr,
        data: bool,
    ) {
        match (sender.send_to(bytes, to), data) {
            (Err(_), _) => self.send_errors += 1,
            (Ok(_), true) => self.data_sent += 1,
            (Ok(_), false) => self.control_sent += 1,
        }
    }

    /// Hears what came for `wait`, and sends again what is due.
    fn round(&mut self, sender: &std::net::UdpSocket, buf: &mut [u8], wait: Duration) {
        use loopcast_proto::wire::{self, Packet};
        use rand::RngExt;
        let end = std::time::Instant::now() + wait;
        while std::time::Instant::now() < end {
            for s in self.sockets {
                let to = s.local_addr().unwrap();
                while let Ok(n) = s.recv(buf) {
                    // What the channel carries during the attack (T3's rate).
                    if let Ok(wire::Datagram {
                        packet: Packet::Data(..),
                        ..
                    }) = wire::decode(&buf[..n])
                    {
                        self.data_heard_bytes += n as u64;
                    }
                    if !self.on {
                        continue;
                    }
                    let bytes = buf[..n].to_vec();
                    if !self.heard.insert(*blake3::hash(&bytes).as_bytes()) {
                        continue;
                    }
                    let Ok(d) = wire::decode(&bytes) else {
                        continue;
                    };
                    let now = std::time::Instant::now();
                    match d.packet {
                        Packet::Data(..) => {
                            if self.oldest.len() < 64 {
                                self.oldest.push((to, bytes.clone()));
                            }
                            if self.rng.random::<f64>() < 0.02 {
                                self.send(sender, &bytes, to, true);
                            }
                        }
                        _ => {
                            for _ in 0..3 {
                                let delay =
                                    Duration::from_micros(self.rng.random_range(0..500_000));
                                self.due.push((now + delay, to, bytes.clone()));
                            }
                        }
                    }
                }
            }
            let now = std::time::Instant::now();
            let (ready, later): (Vec<_>, Vec<_>) =
                self.due.drain(..).partition(|(at, ..)| *at <= now);
            self.due = later;
            for (_, to, bytes) in ready {
                self.send(sender, &bytes, to, false);
            }
            if now >= self.last_burst + Duration::from_secs(1) {
                self.last_burst = now;
                for (to, bytes) in std::mem::take(&mut self.oldest) {
                    self.send(sender, &bytes, to, true);
                    self.oldest.push((to, bytes));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
