//! Archive format through the file-level packer and unpacker: edge sizes, large
//! incompressible data, wrong key, and a flipped bit in every frame.

use loopcast::archive_file::{ArchiveFile, PackOptions, pack_file};
use loopcast::storage::{
    FrameBuffer, FrameReport, FrameSource, FrameWorker, OutputDir, PlainOutput, UnpackFailure,
    deliver,
};
use loopcast_proto::MasterKey;
use loopcast_proto::archive::{Cells, Unpacker};
use rand::{Rng, RngExt, SeedableRng};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

fn key(byte: u8) -> MasterKey {
    MasterKey::from_bytes([byte; 32])
}

/// Packs `data` as `name` on 1 and on 3 threads, unpacks both into fresh
/// directories, checks they agree (same frame table), returns the result.
fn round_trip(dir: &Path, name: &str, data: &[u8], frame_size: u32) -> Vec<u8> {
    let serial = round_trip_on(dir, &format!("{name}.1"), data, frame_size, 1);
    let parallel = round_trip_on(dir, &format!("{name}.3"), data, frame_size, 3);
    assert_eq!(serial.1, parallel.1, "{name}: frame layouts differ");
    assert!(serial.0 == parallel.0, "{name}: unpacked files differ");
    serial.0
}

/// Packs `data` as `name` with `threads` compressing threads and unpacks it:
/// (the result, the frame layout its table gives).
fn round_trip_on(
    dir: &Path,
    name: &str,
    data: &[u8],
    frame_size: u32,
    threads: usize,
) -> (Vec<u8>, Vec<u8>) {
    let input = dir.join(name);
    fs::write(&input, data).unwrap();
    let archive = dir.join(format!("{name}.lcar"));
    let m = pack_file(
        &input,
        &archive,
        &key(1),
        PackOptions {
            frame_size,
            level: 3,
            threads,
            ..PackOptions::default()
        },
    )
    .unwrap();
    assert_eq!(m.original_size, data.len() as u64);
    // Hashed frame by frame on the compressing threads, it is blake3 of the whole.
    assert_eq!(&m.content_digest, blake3::hash(data).as_bytes(), "{name}");
    let opened = ArchiveFile::open(&archive, &key(1)).unwrap();
    let out = dir.join(format!("{name}.out"));
    fs::create_dir_all(&out).unwrap();
    let body_start = opened.body_start();
    let path = deliver(
        &File::open(&archive).unwrap(),
        body_start,
        &opened.manifest,
        &key(1),
        &out,
        &OutputDir::replacing(&out),
    )
    .unwrap();
    let mut table = vec![0u8; opened.manifest.table_len() as usize];
    std::os::unix::fs::FileExt::read_exact_at(
        &File::open(&archive).unwrap(),
        &mut table,
        body_start,
    )
    .unwrap();
    // The layout the table gives (its cells differ: each pack has its own archive id).
    let unpacker = Unpacker::new(&key(1), &opened.manifest, &mut table, Cells::Sealed).unwrap();
    let layout = format!("{:?}", unpacker.frame_ranges()).into_bytes();
    (fs::read(path).unwrap(), layout)
}

#[test]
fn edge_sizes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let frame = 64 * 1024;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut three_frames = vec![0u8; 3 * frame as usize];
    rng.fill_bytes(&mut three_frames);
    for (name, data) in [
        ("empty", Vec::new()),
        ("one", vec![0x5a]),
        ("exact", three_frames.clone()),
        ("plus1", [three_frames.clone(), vec![1]].concat()),
    ] {
        assert_eq!(round_trip(dir.path(), name, &data, frame), data, "{name}");
    }
}

#[test]
fn incompressible_64_mib_round_trips_and_highly_compressible_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 64 << 20];
    rand::rngs::StdRng::seed_from_u64(4).fill_bytes(&mut data);
    assert_eq!(round_trip(dir.path(), "random", &data, 1 << 20), data);
    let archive_len = fs::metadata(dir.path().join("random.3.lcar"))
        .unwrap()
        .len();
    // Grown by the cells' tags (16 bytes in every 1424), at most a cell of
    // padding per frame, and the table's cell (spec §3.4).
    let cells = (data.len() as u64).div_ceil(1408);
    assert!(
        archive_len < data.len() as u64 + cells * 16 + 65 * 1424 + 1000,
        "random data grew to {archive_len}"
    );

    let text: Vec<u8> = (0..8_000_000u32)
        .flat_map(|i| format!("line {}\n", i % 1000).into_bytes())
        .take(32 << 20)
        .collect();
    assert_eq!(round_trip(dir.path(), "text", &text, 1 << 20), text);
    let archive_len = fs::metadata(dir.path().join("text.3.lcar")).unwrap().len();
    assert!(
        archive_len < text.len() as u64 / 20,
        "compressible data only shrank to {archive_len}"
    );
}

#[test]
fn wrong_key_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("f");
    fs::write(&input, b"secret").unwrap();
    let archive = dir.path().join("f.lcar");
    pack_file(&input, &archive, &key(1), PackOptions::default()).unwrap();
    let err = ArchiveFile::open(&archive, &key(2))
        .err()
        .expect("opened with the wrong key");
    assert!(err.message.contains("another key"), "{}", err.message);
}

#[test]
fn a_flipped_bit_in_any_frame_is_detected_and_located() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 200_000];
    rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut data[..100_000]);
    let input = dir.path().join("f");
    fs::write(&input, &data).unwrap();
    let archive = dir.path().join("f.lcar");
    pack_file(
        &input,
        &archive,
        &key(1),
        PackOptions {
            frame_size: 32 * 1024,
            level: 3,
            ..PackOptions::default()
        },
    )
    .unwrap();
    let opened = ArchiveFile::open(&archive, &key(1)).unwrap();
    let m = &opened.manifest;
    let pristine = fs::read(&archive).unwrap();
    let body_start = opened.body_start();
    let mut table = vec![0u8; m.table_len() as usize];
    table.copy_from_slice(&pristine[body_start as usize..(body_start + m.table_len()) as usize]);
    let unpacker = Unpacker::new(&key(1), m, &mut table, Cells::Sealed).unwrap();
    let ranges = unpacker.frame_ranges().to_vec();
    assert_eq!(ranges.len(), 7);
    let out = dir.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    for (i, range) in ranges.iter().enumerate() {
        for _ in 0..4 {
            let mut damaged = pristine.clone();
            let offset = body_start + rng.random_range(range.clone());
            damaged[offset as usize] ^= 1 << rng.random_range(0..8);
            let path = dir.path().join("damaged.lcar");
            fs::write(&path, &damaged).unwrap();
            match deliver(
                &File::open(&path).unwrap(),
                body_start,
                m,
                &key(1),
                &out,
                &OutputDir::replacing(&out),
            ) {
                Err(UnpackFailure::Frames(bad)) => {
                    assert_eq!(bad, vec![range.clone()], "frame {i}")
                }
                other => panic!("frame {i}: damage not located: {other:?}"),
            }
            assert!(!out.join("f").exists(), "a damaged file was delivered");
        }
    }
    // Damage in the table is reported as such.
    let file = fs::OpenOptions::new().write(true).open(&archive).unwrap();
    file.write_all_at(&[0xff], body_start + 1).unwrap();
    assert!(matches!(
        deliver(
            &File::open(&archive).unwrap(),
            body_start,
            m,
            &key(1),
            &out,
            &OutputDir::replacing(&out)
        ),
        Err(UnpackFailure::Table)
    ));
}

#[test]
fn the_cache_reuses_an_archive_while_the_source_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("src.bin");
    fs::write(&input, vec![7u8; 300_000]).unwrap();
    let cache = dir.path().join("cache");
    let opts = PackOptions::default();
    let first = loopcast::archive_file::archive_for(&input, &key(1), &cache, opts).unwrap();
    let id = ArchiveFile::open(&first, &key(1))
        .unwrap()
        .manifest
        .archive_id;
    // A restarted server gets the very same archive (same id, so receivers resume).
    let again = loopcast::archive_file::archive_for(&input, &key(1), &cache, opts).unwrap();
    assert_eq!(again, first);
    assert_eq!(
        ArchiveFile::open(&again, &key(1))
            .unwrap()
            .manifest
            .archive_id,
        id
    );
    // Another key or a changed source gives a new archive.
    let other_key = loopcast::archive_file::archive_for(&input, &key(2), &cache, opts).unwrap();
    assert_ne!(other_key, first);
    fs::write(&input, vec![8u8; 300_001]).unwrap();
    let changed = loopcast::archive_file::archive_for(&input, &key(1), &cache, opts).unwrap();
    assert_ne!(changed, first);
    assert_ne!(
        ArchiveFile::open(&changed, &key(1))
            .unwrap()
            .manifest
            .archive_id,
        id
    );
    // A ready archive is served as it is.
    assert_eq!(
        loopcast::archive_file::archive_for(&changed, &key(1), &cache, opts).unwrap(),
        changed
    );
}

#[test]
fn the_frame_worker_unpacks_frames_out_of_order_reports_a_damaged_one_and_delivers_once_mended() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 700_000];
    rand::rngs::StdRng::seed_from_u64(9).fill_bytes(&mut data[..400_000]);
    let input = dir.path().join("w.bin");
    fs::write(&input, &data).unwrap();
    let archive = dir.path().join("w.lcar");
    pack_file(
        &input,
        &archive,
        &key(1),
        PackOptions {
            frame_size: 100_000,
            level: 3,
            ..PackOptions::default()
        },
    )
    .unwrap();
    let opened = ArchiveFile::open(&archive, &key(1)).unwrap();
    let m = opened.manifest.clone();
    // The body alone, as a receiver's partial file holds it: cells opened.
    let bytes = fs::read(&archive).unwrap();
    let sealed = &bytes[opened.body_start() as usize..];
    let bytes = loopcast_proto::sim::opened_body(&key(1), &m, sealed);
    let body_path = dir.path().join("w.part");
    fs::write(&body_path, &bytes).unwrap();
    let body = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&body_path)
        .unwrap();
    let mut table = bytes[..m.table_len() as usize].to_vec();
    let unpacker = Unpacker::new(&key(1), &m, &mut table, Cells::Opened).unwrap();
    let ranges = unpacker.frame_ranges().to_vec();
    assert_eq!(ranges.len(), 7);
    // Damage frame 4 in the partial file (its zstd magic: its cells were opened
    // as they came, so only decompression, or the digest, can tell).
    let pristine_byte = bytes[(ranges[4].start + 2) as usize];
    body.write_all_at(&[pristine_byte ^ 0x40], ranges[4].start + 2)
        .unwrap();

    let out = dir.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let output = PlainOutput::create(dir.path(), &m).unwrap();
    let worker = FrameWorker::start(
        body.try_clone().unwrap(),
        output,
        vec![false; 7],
        unpacker,
        m.clone(),
        &OutputDir::replacing(&out),
        std::time::Duration::ZERO,
        move |report| tx.send(report).unwrap(),
    )
    .unwrap();
    // Frames held in memory, as a receiver assembles them: their cells' data joined.
    let in_memory = |frame: usize| {
        let r = &ranges[frame];
        let mut buffer = FrameBuffer::new((r.end - r.start) as usize);
        loopcast_proto::cell::copy_joined(
            &bytes[r.start as usize..r.end as usize],
            m.cell_size,
            buffer.cells_mut((r.end - r.start) as usize),
        );
        FrameSource::Memory(buffer)
    };
    for frame in [6, 2, 4, 0, 1, 3, 5] {
        let source = match frame {
            6 | 2 | 0 => in_memory(frame),
            _ => FrameSource::Disk,
        };
        worker.submit(frame as u32, source);
    }
    let wait = || rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut opened_frames = Vec::new();
    loop {
        match wait() {
            FrameReport::Opened(frame, buffer) => {
                assert_eq!(buffer.is_some(), [6, 2, 0].contains(&frame));
                opened_frames.push(frame);
            }
            FrameReport::Bad(4, range, None) => {
                assert_eq!(range, ranges[4]);
                break;
            }
            other => panic!("expected frame 4 bad, got {other:?}"),
        }
    }
    assert_eq!(opened_frames, vec![6, 2], "in the order submitted");
    for _ in 0..4 {
        assert!(matches!(wait(), FrameReport::Opened(..)));
    }
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert!(
        !out.join("w.bin").exists(),
        "delivered with a frame missing"
    );
    // Frames opened from the partial file are punched out of it.
    let mut punched = vec![1u8; (ranges[1].end - ranges[1].start) as usize];
    body.read_exact_at(&mut punched, ranges[1].start).unwrap();
    assert!(punched.iter().all(|&b| b == 0));
    // The repair arrives (into memory): the frame is whole again.
    worker.submit(4, in_memory(4));
    assert!(matches!(wait(), FrameReport::Opened(4, Some(_))));
    match wait() {
        FrameReport::Delivered(path) => assert_eq!(fs::read(path).unwrap(), data),
        other => panic!("expected delivery, got {other:?}"),
    }
}

#[test]
fn payloads_read_in_order_or_out_of_order_are_the_bodys_bytes() {
    use loopcast_proto::PayloadSource;
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 3_000_000];
    rand::rngs::StdRng::seed_from_u64(12).fill_bytes(&mut data);
    let input = dir.path().join("r.bin");
    fs::write(&input, &data).unwrap();
    let archive = dir.path().join("r.lcar");
    pack_file(&input, &archive, &key(1), PackOptions::default()).unwrap();
    let mut source = ArchiveFile::open(&archive, &key(1)).unwrap();
    let (start, len) = (source.body_start() as usize, source.manifest.body_len);
    let bytes = fs::read(&archive).unwrap();
    let body = &bytes[start..];
    let p = 1424u64;
    let check = |source: &mut ArchiveFile, offset: u64, n: u64| {
        let n = n.min(len - offset) as usize;
        let mut buf = vec![0u8; n];
        source.read_payload(offset, &mut buf).unwrap();
        assert_eq!(&buf[..], &body[offset as usize..][..n], "at {offset}");
    };
    // Two loops in order (the second wraps round), repairs in between, and a
    // read larger than a packet.
    for round in 0..2 {
        let mut offset = 0;
        while offset < len {
            check(&mut source, offset, p);
            if offset % (200 * p) == 0 {
                check(&mut source, (offset * 7 + round * p) % len / p * p, p);
            }
            offset += p;
        }
    }
    check(&mut source, 0, 600 << 10);
    check(&mut source, len - 10, 10);
}

#[test]
fn an_archive_of_format_v3_is_refused_with_a_word_to_pack_it_again() {
    let dir = tempfile::tempdir().unwrap();
    // A v3 archive's first bytes: its magic, a manifest length, a v1 manifest.
    let old = dir.path().join("old.lcar");
    let mut bytes = b"LCARCH01".to_vec();
    bytes.extend_from_slice(&200u32.to_be_bytes());
    bytes.extend_from_slice(&[1u8; 400]);
    fs::write(&old, &bytes).unwrap();
    assert!(loopcast::archive_file::is_archive(&old).unwrap());
    let err = ArchiveFile::open(&old, &key(1))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("format v3") && err.contains("loopcast pack"),
        "{err}"
    );
}
