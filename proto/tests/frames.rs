//! The receiver session's count of each frame's missing packets stays true when
//! packets are taken back: a frame is unpacked only once all its packets are held.

use loopcast_proto::archive::{Cells, Unpacker};
use loopcast_proto::client::{ClientConfig, Command, Origin, RepairKind, Session};
use loopcast_proto::wire::{self, Announce, AnnounceEntry, ChannelInfo, DataHeader};
use loopcast_proto::{MasterKey, NakMode};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const SESSION: u32 = 0x5e55;

#[test]
fn packets_taken_back_from_one_frame_uncount_its_neighbour_too() {
    let key = MasterKey::from_bytes([3; 32]);
    // 4 kB frames in 500-byte cells, two to a packet: neighbouring frames
    // (9 cells each) share a packet.
    let (mut m, _, body) = loopcast_proto::sim::random_archive(&key, 20_000, 4096, 500, 9);
    m.payload_size = 1000;
    let manifest_bytes = m.encode(&key.file_key(m.archive_id));
    let keys = wire::SessionKeys::new(&key.file_key(m.archive_id), SESSION);
    let channel = ChannelInfo {
        group: SocketAddr::new(Ipv4Addr::new(239, 9, 9, 2).into(), 7002),
        control_port: 17002,
        rate_bps: 10_000_000,
    };
    let now = Instant::now();
    let config = ClientConfig {
        pinned: Default::default(),
        key: key.clone(),
        names: Vec::new(),
        max_rate: None,
        aggregate: false,
        sync_timeout: Duration::from_secs(3600),
        server: None,
        unicast_only: false,
        nak_mode: NakMode::Suppressed,
        directors: Vec::new(),
        stay_joined: true,
        repair: RepairKind::Parity,
    };
    let mut session = Session::new(config, now, 1);
    let listing = Announce {
        part: 0,
        parts: 1,
        unicast_port: 7000,
        key_fingerprint: key.fingerprint(),
        entries: vec![AnnounceEntry {
            archive_id: m.archive_id,
            original_size: m.original_size,
            body_len: m.body_len,
            content_digest: m.content_digest,
            flags: 0,
            name: m.name.clone(),
            channels: vec![channel],
        }],
    };
    let source = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let directory = key.directory_mac_key();
    let announce = wire::encode_announce(&directory, SESSION, &listing);
    session.handle_datagram(now, Origin::Directory { source }, &mut announce.to_vec());
    let on_channel = Origin::Channel {
        reception: 0,
        channel: 0,
    };
    let manifest = wire::encode_manifest(&keys.mac, SESSION, &manifest_bytes);
    session.handle_datagram(now, on_channel, &mut manifest.to_vec());
    // Every packet but the last: every frame is whole but the last one.
    let count = m.packet_count();
    let mut ranges = None;
    let data = |k: u32| {
        let at = k as usize * 1000;
        let payload = &body[at..(at + 1000).min(body.len())];
        let header = DataHeader {
            archive_id: m.archive_id,
            packet_index: k,
            packet_count: count,
            flags: 0,
        };
        wire::encode_data(SESSION, &header, payload)
    };
    for k in 0..count - 1 {
        let _ = session.handle_datagram(now, on_channel, &mut data(k).to_vec());
        while let Some(command) = session.poll_command() {
            match command {
                Command::OpenStorage { reception, .. } => session.storage_opened(reception, None),
                Command::CheckTable { reception } => {
                    let mut table = body[..m.table_len() as usize].to_vec();
                    let unpacker = Unpacker::new(&key, &m, &mut table, Cells::Sealed).unwrap();
                    ranges = Some(unpacker.frame_ranges().to_vec());
                    session.table_checked(now, reception, m.archive_id, ranges.clone());
                }
                _ => {}
            }
        }
    }
    let ranges = ranges.expect("the table was checked");
    let whole_and_held = |session: &Session| {
        let r = session.reception(0).unwrap();
        let frames = r.frames().unwrap();
        let whole: Vec<u32> = frames.complete_frames().collect();
        let held = whole
            .iter()
            .all(|&f| r.receiver().received().contains_range(frames.packets_of(f)));
        (whole, held)
    };
    let (whole, held) = whole_and_held(&session);
    assert_eq!(whole.len(), ranges.len() - 1);
    assert!(held);
    // The driver lets frame 1 go: its packets, the one it shares with frame 2
    // included, are missing again, and neither frame counts as whole.
    session.storage_dropped(now, 0, m.archive_id, ranges[1].clone());
    let (whole, held) = whole_and_held(&session);
    assert!(held, "a frame counted whole lacks packets: {whole:?}");
    assert!(!whole.contains(&1) && !whole.contains(&2), "{whole:?}");
    // The last packet makes the last frame whole and queues its unpacking; it is
    // let go before the driver polls: no Unpack names it.
    let last = ranges.len() as u32 - 1;
    let _ = session.handle_datagram(now, on_channel, &mut data(count - 1).to_vec());
    session.storage_dropped(now, 0, m.archive_id, ranges[last as usize].clone());
    while let Some(command) = session.poll_command() {
        if let Command::Unpack { frames, .. } = command {
            assert!(!frames.contains(&last), "{frames:?}");
        }
    }
}
