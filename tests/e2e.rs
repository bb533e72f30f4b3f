//! End-to-end tests through the real binary, multicast on loopback only
//! (--interface 127.0.0.1). Every test uses its own group and port, and kills the
//! processes it started (by handle) even when it fails.
//!
//! Over 600 lines on purpose: one file keeps the group numbers of all loopback
//! tests in view (two tests on one group would hear each other's servers); the
//! tests are independent and short, behind shared helpers at the top.

mod common;

use loopcast_proto::manifest::Manifest;
use loopcast_proto::wire::{self, Announce, AnnounceEntry, ChannelInfo};
use rand::{Rng, SeedableRng};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_loopcast");

use common::{Running, counter};

/// Directory group of test `n`: distinct groups and ports keep parallel tests apart.
fn group(n: u8) -> String {
    format!("239.255.{n}.1:{}", 21000 + n as u16 * 10)
}

fn loopcast(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env("RUST_LOG", common::WITH_COUNTERS);
    c
}

fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("key");
    let out = loopcast(&["keygen", "-o", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    key
}

fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    data
}

/// `SUBCOMMAND -k KEY -i 127.0.0.1 -g GROUP`: every test's traffic stays on loopback.
fn on_loopback(subcommand: &str, key: &Path, group: &str) -> Command {
    loopcast(&[
        subcommand,
        "-k",
        key.to_str().unwrap(),
        "-i",
        "127.0.0.1",
        "-g",
        group,
    ])
}

fn serve(
    dir: &Path,
    key: &Path,
    files: &[&Path],
    group: &str,
    rate: &str,
    extra: &[&str],
) -> Running {
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut c = on_loopback("serve", key, group);
    c.args(files)
        .args(["--rate", rate, "--cache-dir"])
        .arg(dir.join("cache"))
        .args(extra);
    Running(c.stderr(log).stdout(Stdio::null()).spawn().unwrap())
}

/// A temporary directory with a key, one random file and a server looping it on
/// test `n`'s group. Dropping it stops the server and removes the directory.
struct Lab {
    _server: Running,
    key: PathBuf,
    group: String,
    data: Vec<u8>,
    dir: tempfile::TempDir,
}

fn lab(n: u8, name: &str, len: usize, rate: &str) -> Lab {
    lab_with(n, name, len, rate, &[])
}

/// `lab` with extra `serve` arguments.
fn lab_with(n: u8, name: &str, len: usize, rate: &str, serve_args: &[&str]) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let file = dir.path().join(name);
    let data = random_file(&file, len, n as u64);
    let group = group(n);
    let server = serve(dir.path(), &key, &[&file], &group, rate, serve_args);
    Lab {
        _server: server,
        key,
        group,
        data,
        dir,
    }
}

/// Receives `name` from `lab` into its `out` directory with `extra` arguments,
/// asserts that the run succeeded and the file is whole, and returns its log.
fn receive_whole(lab: &Lab, name: &str, extra: &[&str]) -> String {
    let out = lab.dir.path().join("out");
    let result = recv_command(&lab.key, &lab.group, &out, extra)
        .output()
        .unwrap();
    let log = stderr(&result);
    assert!(result.status.success(), "{log}");
    assert_eq!(std::fs::read(out.join(name)).unwrap(), lab.data);
    log
}

fn recv_command(key: &Path, group: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = on_loopback("recv", key, group);
    c.arg("-o").arg(out).args(extra);
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Checks a documented failure: exit code `code` (1 error, 2 usage, 3 time-out),
/// no panic, and for errors and time-outs a one-line reason naming `needle` as
/// the last line (usage errors are clap's, naming `needle` somewhere).
fn assert_clean_failure(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code, expected {code}: {err}"
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    if code != 2 {
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with("loopcast: error: ") && last.contains(needle),
            "the last line is not a one-line reason naming {needle:?}: {last:?}"
        );
    }
}

#[test]
fn two_files_to_a_receiver_from_the_start_and_one_joining_2s_later() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = keygen(d);
    let a = random_file(&d.join("a.bin"), 6_000_000, 1);
    let b: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    std::fs::write(d.join("b.txt"), &b).unwrap();
    let g = group(101);
    let mut server = serve(
        d,
        &key,
        &[&d.join("a.bin"), &d.join("b.txt")],
        &g,
        "40M",
        &[],
    );
    let first = recv_command(&key, &g, &d.join("outA"), &["--timeout", "60"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let late = recv_command(&key, &g, &d.join("outB"), &["--timeout", "60"])
        .output()
        .unwrap();
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "receiver A: {}", stderr(&first));
    assert!(late.status.success(), "receiver B: {}", stderr(&late));
    for out in ["outA", "outB"] {
        assert_eq!(
            std::fs::read(d.join(out).join("a.bin")).unwrap(),
            a,
            "{out}/a.bin"
        );
        assert_eq!(
            std::fs::read(d.join(out).join("b.txt")).unwrap(),
            b,
            "{out}/b.txt"
        );
    }
    // ls sees both files on air.
    let ls = loopcast(&["ls", "-i", "127.0.0.1", "-g", &g])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.status.success() && listing.contains("a.bin") && listing.contains("b.txt"),
        "{listing}"
    );
    assert!(stderr(&ls).contains("unverified"), "{}", stderr(&ls));
    // With the key: verified, and the key's fingerprint shown.
    let ls = on_loopback("ls", &key, &g).output().unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    let fingerprint =
        loopcast_proto::keys::hex(&loopcast::keyfile::load(&key).unwrap().fingerprint());
    assert!(
        ls.status.success() && listing.contains("a.bin") && listing.contains(&fingerprint[..8]),
        "{listing}"
    );
    assert!(!stderr(&ls).contains("unverified"), "{}", stderr(&ls));
    // With another key nothing verifies: a time-out naming what was ignored.
    std::fs::create_dir(d.join("other")).unwrap();
    let other = keygen(&d.join("other"));
    let ls = on_loopback("ls", &other, &g)
        .args(["--timeout", "1"])
        .output()
        .unwrap();
    assert_clean_failure(&ls, 3, "no server heard");
    assert!(
        stderr(&ls).contains("do not verify with the key"),
        "{}",
        stderr(&ls)
    );
    // SIGTERM stops the server cleanly: exit 0 and a closing summary.
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    assert_eq!(
        unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) },
        0
    );
    let status = server.0.wait().unwrap();
    let log = std::fs::read_to_string(d.join("serve.log")).unwrap();
    assert!(
        status.success() && log.contains("stopped after"),
        "{status:?}: {log}"
    );
}

#[test]
fn a_receiver_killed_half_way_resumes_with_what_it_stored() {
    // 24 MB at 40 Mbit/s: about 5 s per loop.
    let lab = lab(102, "big.bin", 24_000_000, "40M");
    let (d, key, g, data) = (lab.dir.path(), &lab.key, &lab.group, &lab.data);
    let out = d.join("out");
    let map = out.join(".loopcast-partial").join("big.bin.map");
    let mut first = Running(
        recv_command(key, g, &out, &[])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let saved = common::wait_for_path(&map, Duration::from_secs(20));
    assert!(saved, "no received map was persisted");
    std::thread::sleep(Duration::from_millis(1200));
    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();
    assert!(
        !out.join("big.bin").exists(),
        "file delivered before it was complete"
    );
    let second = recv_command(key, g, &out, &["--timeout", "60"])
        .output()
        .unwrap();
    let log = stderr(&second);
    assert!(second.status.success(), "{log}");
    let resumed = resumed_packets(&log) as u64;
    assert!(resumed > 1000, "resumed only {resumed} packets: {log}");
    assert_eq!(&std::fs::read(out.join("big.bin")).unwrap(), data);
    assert!(
        !out.join(".loopcast-partial").join("big.bin.part").exists(),
        "partial file left behind"
    );
}

#[test]
fn a_receiver_killed_at_60_percent_repairs_what_the_loop_passed_and_needs_under_a_loop() {
    // 24 MB at 24 Mbit/s: one loop is 8 s, so the map (saved every second) trails
    // the data by a small part of a loop.
    let lab = lab(111, "resume.bin", 24_000_000, "24M");
    let loop_secs = 24_000_000.0 * 8.0 / 24e6;
    let (d, key, g, data) = (lab.dir.path(), &lab.key, &lab.group, &lab.data);
    let out = d.join("out");
    let mut first = Running(
        recv_command(key, g, &out, &[])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs_f64(0.6 * loop_secs + 0.3));
    first.0.kill().unwrap(); // SIGKILL, the server looping on
    first.0.wait().unwrap();
    let second = recv_command(key, g, &out, &["--timeout", "60"])
        .output()
        .unwrap();
    let log = stderr(&second);
    assert!(second.status.success(), "{log}");
    assert_eq!(&std::fs::read(out.join("resume.bin")).unwrap(), data);
    let resumed = resumed_packets(&log);
    let total = 24_000_000f64 / 1440.0;
    let loops = loops_after(&log);
    let repairs = count_before(&log, "repairs");
    eprintln!(
        "resumed {resumed} packets ({:.0}%), then held every packet after {loops:.2} loops with {repairs} repairs",
        100.0 * resumed / total
    );
    assert!(
        log.contains("repairing what the loop passed meanwhile"),
        "{log}"
    );
    assert!(resumed > 0.3 * total && repairs > 0, "{log}");
    // Without repair behind the loop, the packets lost at the kill come a loop later
    // (1.05 loops measured); with it, the loop's remaining 40% and the repairs overlap.
    assert!(loops <= 0.75, "took {loops:.2} loops: {log}");
}

#[test]
fn wrong_key_is_reported_quickly_and_nothing_is_stored() {
    let lab = lab(103, "f.bin", 2_000_000, "20M");
    let (d, g) = (lab.dir.path(), &lab.group);
    let other = d.join("other-key");
    assert!(
        loopcast(&["keygen", "-o", other.to_str().unwrap()])
            .output()
            .unwrap()
            .status
            .success()
    );
    let start = Instant::now();
    let out = recv_command(&other, g, &d.join("out"), &["--timeout", "30"])
        .output()
        .unwrap();
    assert_clean_failure(&out, 1, "wrong key");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(!d.join("out").join("f.bin").exists());
    assert!(
        !d.join("out")
            .join(".loopcast-partial")
            .join("f.bin.part")
            .exists(),
        "data stored under the wrong key"
    );
}

#[test]
fn a_path_traversal_name_from_a_rogue_sender_is_skipped_and_the_real_file_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key_path = keygen(d);
    // A real server on the group, and beside it the rogue.
    let good = random_file(&d.join("good.bin"), 2_000_000, 104);
    let _server = serve(
        d,
        &key_path,
        &[&d.join("good.bin")],
        &group(104),
        "40M",
        &[],
    );
    let key = loopcast::keyfile::load(&key_path).unwrap();
    let g: SocketAddrV4 = group(104).parse().unwrap();
    let channel = SocketAddrV4::new(Ipv4Addr::new(239, 255, 104, 2), g.port() + 1);
    // A rogue sender with the right key, announcing and signing "../evil".
    let manifest = Manifest {
        archive_id: 5,
        key_fingerprint: key.fingerprint(),
        original_size: 1,
        mode: 0o644,
        mtime_secs: 0,
        mtime_nanos: 0,
        frame_size: 1 << 20,
        frame_count: 1,
        body_len: 2 * 1424,
        payload_size: 1424,
        cell_size: 1424,
        content_digest: [0; 32],
        table_digest: [0; 32],
        name: "../evil".into(),
    };
    let announce = wire::encode_announce(
        &key.directory_mac_key(),
        9,
        &Announce {
            part: 0,
            parts: 1,
            unicast_port: channel.port(),
            key_fingerprint: key.fingerprint(),
            entries: vec![AnnounceEntry {
                archive_id: 5,
                original_size: 1,
                body_len: 2 * 1424,
                content_digest: [7; 32],
                flags: 0,
                name: "../evil".into(),
                channels: vec![ChannelInfo {
                    group: channel.into(),
                    control_port: channel.port() + 10000,
                    rate_bps: 1_000_000,
                }],
            }],
        },
    );
    let manifest_datagram = wire::encode_manifest(
        &key.file_key(5).session_mac_key(9),
        9,
        &manifest.encode(&key.file_key(5)),
    );
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let s2 = socket2::SockRef::from(&sender);
    s2.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    s2.set_multicast_ttl_v4(1).unwrap();
    let out_dir = d.join("out");
    let child = recv_command(&key_path, &g.to_string(), &out_dir, &["--timeout", "20"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let start = Instant::now();
    while child.0.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(15) {
        sender.send_to(&announce, g).unwrap();
        sender.send_to(&manifest_datagram, channel).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    // The rogue entry is skipped, told once, and never fatal: the real file arrives.
    assert!(status.success(), "{err}");
    assert_eq!(std::fs::read(out_dir.join("good.bin")).unwrap(), good);
    assert_eq!(err.matches("../evil").count(), 1, "{err}");
    assert!(err.contains("skipping it"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!d.join("evil").exists() && !out_dir.join("../evil").exists());
}

#[test]
fn bad_inputs_fail_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = keygen(d);
    let k = key.to_str().unwrap();
    // Missing input, for pack and for serve.
    assert_clean_failure(
        &loopcast(&[
            "pack",
            "/nonexistent/x",
            "-k",
            k,
            "-o",
            d.join("x.lcar").to_str().unwrap(),
        ])
        .output()
        .unwrap(),
        1,
        "cannot open /nonexistent/x",
    );
    assert_clean_failure(
        &loopcast(&[
            "serve",
            "/nonexistent/x",
            "-k",
            k,
            "-i",
            "127.0.0.1",
            "-g",
            &group(105),
        ])
        .output()
        .unwrap(),
        1,
        "cannot open /nonexistent/x",
    );
    // Unwritable output directory: a path below a regular file.
    std::fs::write(d.join("plain"), b"").unwrap();
    let out = recv_command(&key, &group(105), &d.join("plain/sub"), &["--timeout", "5"])
        .output()
        .unwrap();
    assert_clean_failure(&out, 1, "cannot create output directory");
    // Missing or malformed key file.
    assert_clean_failure(
        &loopcast(&["recv", "-k", "/nonexistent/key", "-o", d.to_str().unwrap()])
            .output()
            .unwrap(),
        1,
        "cannot read key file",
    );
    assert_clean_failure(
        &loopcast(&[
            "recv",
            "-k",
            d.join("plain").to_str().unwrap(),
            "-o",
            d.to_str().unwrap(),
        ])
        .output()
        .unwrap(),
        1,
        "not a loopcast key file",
    );
    // keygen never overwrites.
    assert_clean_failure(
        &loopcast(&["keygen", "-o", k]).output().unwrap(),
        1,
        "refusing to overwrite",
    );
    // A non-multicast group and a bad rate are usage errors.
    let out = loopcast(&["serve", k, "-k", k, "-g", "10.1.1.1:7700"])
        .output()
        .unwrap();
    assert_clean_failure(&out, 2, "not a multicast address");
    let out = loopcast(&["serve", k, "-k", k, "--rate", "fast"])
        .output()
        .unwrap();
    assert_clean_failure(&out, 2, "not a rate");
    // One command's addresses are of one family.
    let out = loopcast(&["serve", k, "-k", k, "-g", "[fd00::1]:7700"])
        .output()
        .unwrap();
    assert_clean_failure(&out, 2, "not a multicast address");
    let out = loopcast(&[
        "serve",
        k,
        "-k",
        k,
        "-g",
        "[ff15::77]:7700",
        "--director",
        "127.0.0.1",
    ])
    .output()
    .unwrap();
    assert_clean_failure(
        &out,
        2,
        "--director 127.0.0.1:7790 is IPv4 but --group [ff15::77]:7700 is IPv6",
    );
    let dir = d.to_str().unwrap();
    let out = loopcast(&[
        "recv",
        "-k",
        k,
        "-o",
        dir,
        "--server",
        "[fd00::5]",
        "-g",
        "239.1.2.3:7000",
    ])
    .output()
    .unwrap();
    assert_clean_failure(
        &out,
        2,
        "--group 239.1.2.3:7000 is IPv4 but --server [fd00::5]:7000 is IPv6",
    );
    let out = loopcast(&[
        "agent",
        "-k",
        k,
        "-o",
        dir,
        "--director",
        "fd00::9,10.0.0.9",
    ])
    .output()
    .unwrap();
    assert_clean_failure(&out, 2, "use addresses of one family");
    // Nothing on air: time-out exit code 3 and a reason.
    let out = recv_command(
        &key,
        &group(106),
        &d.join("o"),
        &["wanted.bin", "--timeout", "1"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_clean_failure(&out, 3, "wanted.bin: not on air");
}

#[test]
fn a_full_disk_is_reported_up_front_and_a_disk_of_1_4x_the_file_is_enough() {
    let lab = lab(107, "f.bin", 3_000_000, "40M");
    let (d, key, g) = (lab.dir.path(), &lab.key, &lab.group);
    let mount = |name: &str, size: &str| common::SmallDisk::mount(&d.join(name), size);
    let Some(small) = mount("small", "1m") else {
        return;
    };
    let out = recv_command(key, g, &small.0, &["--timeout", "30"])
        .output()
        .unwrap();
    assert_clean_failure(&out, 6, "not enough space");
    let said = stderr(&out);
    assert!(said.contains("it needs 3.4 MiB"), "{said}");
    assert!(!small.0.join("f.bin").exists());
    // 4 MiB (1.4x the file; a receiver used to need 2x) holds the output and the
    // partial file at its cap.
    let enough = mount("enough", "4m").unwrap();
    let out = recv_command(key, g, &enough.0, &["--timeout", "30"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(enough.0.join("f.bin")).unwrap(), lab.data);
}

/// Packets a receiver log says it resumed from an earlier run.
fn resumed_packets(log: &str) -> f64 {
    log.split("resuming, ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line in: {log}"))
}

/// Loops a receiver log says it waited from joining to holding every packet.
fn loops_after(log: &str) -> f64 {
    counter(log, "loops")
}

/// A receiver's counter `key`, as a whole number.
fn count_before(log: &str, key: &str) -> u64 {
    counter(log, key) as u64
}

#[test]
fn a_lossy_receiver_joining_mid_stream_is_repaired_by_parity_within_1_5_loops() {
    let (loops, log) = lossy_receiver(108, &["--repair", "parity"]);
    // Most losses are rebuilt; copies repair the frame table and blocks partly
    // unpacked before their parity came.
    let rebuilt = count_before(&log, "rebuilt");
    let copies = count_before(&log, "repairs");
    assert!(rebuilt > 100 && rebuilt > 2 * copies, "{log}");
    assert!(loops <= 1.5, "took {loops:.2} loops: {log}");
}

#[test]
fn a_lossy_receiver_asking_for_copies_is_repaired_within_1_5_loops() {
    let (loops, log) = lossy_receiver(124, &["--repair", "copies"]);
    assert!(count_before(&log, "repairs") > 100, "{log}");
    assert_eq!(count_before(&log, "rebuilt"), 0, "{log}");
    assert!(loops <= 1.5, "took {loops:.2} loops: {log}");
}

/// A receiver dropping 5% of DATA and PARITY, joining a 16 MB loop at 64
/// Mbit/s (one loop is about 2 s) 1 s in: the loops it saw pass until it held
/// every packet, and its log. Counted in loops, not seconds: two busy cores
/// make wall time a poor measure.
fn lossy_receiver(n: u8, extra: &[&str]) -> (f64, String) {
    let lab = lab(n, "lossy.bin", 16_000_000, "64M");
    std::thread::sleep(Duration::from_millis(1000));
    let mut args = vec!["--debug-drop", "5", "--debug-seed", "7", "--timeout", "60"];
    args.extend(extra);
    let out = recv_command(&lab.key, &lab.group, &lab.dir.path().join("out"), &args)
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("--debug-seed 7"), "{log}");
    assert_eq!(
        &std::fs::read(lab.dir.path().join("out/lossy.bin")).unwrap(),
        &lab.data
    );
    let loops = loops_after(&log);
    let (dropped, naks) = (
        count_before(&log, "debug_dropped"),
        count_before(&log, "naks_sent"),
    );
    eprintln!("held every packet after {loops:.2} loops; {dropped} dropped, {naks} NAKs");
    assert!(dropped > 100 && naks > 0, "{log}");
    (loops, log)
}

#[test]
fn a_receiver_whose_frame_worker_is_behind_leaves_datagrams_in_the_socket() {
    // A 96 MB loop at 1 Gbit/s comes in about four times faster than a frame
    // worker waiting 30 ms per 1 MiB frame takes it. Once its frame memory is
    // full and the worker holds a quarter of it, the receiver leaves datagrams
    // to the kernel, so the socket buffer overflows (the kernel drops what the
    // loop brings again) and nothing it took is let go. Without the hold-back,
    // frames spill to the partial file until its cap and then payloads are let
    // go (25,369 in a trial, with no drop by the kernel).
    let lab = lab(126, "slow.bin", 96_000_000, "1G");
    let args = ["--debug-frame-delay", "30", "--timeout", "60"];
    let log = receive_whole(&lab, "slow.bin", &args);
    let (kernel, let_go) = (
        count_before(&log, "kernel_drops"),
        count_before(&log, "let_go"),
    );
    eprintln!("{kernel} dropped by the kernel, {let_go} let go");
    assert!(kernel > 100, "the worker was never behind: {log}");
    assert_eq!(let_go, 0, "{log}");
}

#[test]
fn parity_on_the_loop_rebuilds_what_a_receiver_loses_without_asking() {
    // 10% parity after each block; the receiver loses 3%: nearly every block is
    // rebuilt from the parity that follows it.
    let lab = lab_with(125, "fec.bin", 8_000_000, "64M", &["--fec-overhead", "10%"]);
    let args = ["--debug-drop", "3", "--debug-seed", "2", "--timeout", "60"];
    let log = receive_whole(&lab, "fec.bin", &args);
    let (rebuilt, dropped) = (
        count_before(&log, "rebuilt"),
        count_before(&log, "debug_dropped"),
    );
    eprintln!("{rebuilt} of {dropped} packets dropped were rebuilt");
    assert!(rebuilt * 2 > dropped, "{log}");
}

#[test]
fn without_gso_and_gro_the_file_still_arrives_whole() {
    let lab = lab_with(109, "plain-path.bin", 3_000_000, "200M", &["--no-gso"]);
    let out = lab.dir.path().join("out");
    let result = recv_command(&lab.key, &lab.group, &out, &["--no-gro", "--timeout", "30"])
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", stderr(&result));
    assert_eq!(std::fs::read(out.join("plain-path.bin")).unwrap(), lab.data);
    let serve_log = std::fs::read_to_string(lab.dir.path().join("serve.log")).unwrap();
    assert!(serve_log.contains("without GSO"), "{serve_log}");
}

#[test]
fn two_servers_on_one_group_are_both_listed_and_a_receiver_gets_both_files() {
    // Two servers on one directory group, each with its own file (issue 13's
    // first lab trial: ls stopped at the first whole listing, and a receiver of
    // every file stopped after one server's).
    let top = tempfile::tempdir().unwrap();
    let key = keygen(top.path());
    let g = group(119);
    let port: u16 = g.rsplit(':').next().unwrap().parse().unwrap();
    let mut servers = Vec::new();
    for (name, unicast_port) in [("one.bin", port), ("two.bin", port + 9)] {
        let dir = top.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join(name);
        random_file(&file, 100_000, unicast_port as u64);
        let unicast = unicast_port.to_string();
        servers.push(serve(
            &dir,
            &key,
            &[&file],
            &g,
            "10M",
            &["--unicast-port", &unicast],
        ));
        // Half an announce interval apart: a listing that stops at the first whole
        // one misses the other server most of the time.
        std::thread::sleep(Duration::from_millis(250));
    }
    // A server new on the group moves off channels another uses (within 750 ms).
    std::thread::sleep(Duration::from_millis(1500));
    let ls = on_loopback("ls", &key, &g).output().unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "{}", stderr(&ls));
    assert!(
        listing.contains("one.bin") && listing.contains("two.bin"),
        "{listing}"
    );
    let sessions: std::collections::HashSet<&str> = listing
        .lines()
        .skip(1)
        .filter_map(|l| {
            // The session: the first column of 8 hex digits.
            l.split_whitespace()
                .find(|w| w.len() == 8 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    assert_eq!(sessions.len(), 2, "{listing}");
    // Each server on channels of its own: the group address each line lists.
    let channels = common::channels_listed(&listing);
    assert_eq!(channels.len(), 2, "{listing}");
    let out = top.path().join("out");
    let got = recv_command(&key, &g, &out, &["--timeout", "60", "one.bin", "two.bin"])
        .output()
        .unwrap();
    assert!(got.status.success(), "{}", stderr(&got));
    // Asking for every file: every server's files, not only the first heard.
    let all = top.path().join("all");
    let got_all = recv_command(&key, &g, &all, &["--timeout", "60"])
        .output()
        .unwrap();
    assert!(got_all.status.success(), "{}", stderr(&got_all));
    for (dir, name) in [
        (&out, "one.bin"),
        (&out, "two.bin"),
        (&all, "one.bin"),
        (&all, "two.bin"),
    ] {
        let sent = std::fs::read(top.path().join(name).join(name)).unwrap();
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), sent, "{name}");
    }
}

/// Runs `command` to its end and returns its status and the bytes it wrote to
/// block devices (ru_oublock: bytes dirtied less those dropped before writeback).
fn run_counting_writes(mut command: Command) -> (std::process::ExitStatus, u64) {
    use std::os::unix::process::ExitStatusExt;
    // Reaped by wait4 below, which std's wait cannot do: it gives the rusage.
    #[allow(clippy::zombie_processes)]
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    (
        std::process::ExitStatus::from_raw(status),
        usage.ru_oublock as u64 * 512,
    )
}

#[test]
fn a_receiver_writes_each_byte_to_the_disk_about_once() {
    // Frames whose packets all arrive while held in memory go from there to the
    // output: nothing of them touches the partial file (it used to take every
    // byte once, and the output again: 2x).
    let lab = lab(118, "w.bin", 24 << 20, "400M");
    // On a disk, not tmpfs (which counts no writes).
    let disk = tempfile::tempdir_in("/var/tmp").unwrap();
    let (status, written) = run_counting_writes(recv_command(
        &lab.key,
        &lab.group,
        disk.path(),
        &["--timeout", "60"],
    ));
    assert!(status.success());
    assert_eq!(std::fs::read(disk.path().join("w.bin")).unwrap(), lab.data);
    if written == 0 {
        // CI's machines keep /var/tmp on a disk: there the test must run.
        assert!(
            std::env::var_os("LOOPCAST_LAB_REQUIRED").is_none(),
            "/var/tmp counts no block writes, and LOOPCAST_LAB_REQUIRED is set"
        );
        eprintln!("SKIPPED: /var/tmp counts no block writes here (tmpfs?)");
        return;
    }
    let ratio = written as f64 / lab.data.len() as f64;
    eprintln!("device writes: {written} bytes, {ratio:.2}x the file");
    assert!(ratio < 1.2, "{ratio:.2}x the file written");
}

#[test]
fn no_clobber_keeps_an_existing_file_and_without_it_the_file_is_replaced() {
    let lab = lab(117, "kept.bin", 500_000, "200M");
    let out = lab.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("kept.bin"), b"the old one").unwrap();
    let args = ["--no-clobber", "--timeout", "30", "kept.bin"];
    let refused = recv_command(&lab.key, &lab.group, &out, &args)
        .output()
        .unwrap();
    assert_clean_failure(&refused, 1, "already exists; keeping it (--no-clobber)");
    assert_eq!(std::fs::read(out.join("kept.bin")).unwrap(), b"the old one");
    let replaced = recv_command(&lab.key, &lab.group, &out, &["--timeout", "30", "kept.bin"])
        .output()
        .unwrap();
    assert!(replaced.status.success(), "{}", stderr(&replaced));
    assert_eq!(std::fs::read(out.join("kept.bin")).unwrap(), lab.data);
}

#[test]
fn with_two_rates_a_capped_receiver_takes_the_slow_channel_and_another_the_fast_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = keygen(d);
    let file = d.join("two-rates.bin");
    let data = random_file(&file, 8_000_000, 110);
    let g = group(110);
    let log = std::fs::File::create(d.join("serve.log")).unwrap();
    let mut serve = on_loopback("serve", &key, &g);
    serve
        .arg(&file)
        .args(["--rates", "40M,160M", "--cache-dir"])
        .arg(d.join("cache"));
    let _server = Running(serve.stderr(log).stdout(Stdio::null()).spawn().unwrap());
    let capped = recv_command(
        &key,
        &g,
        &d.join("slow"),
        &["--max-rate", "50M", "--timeout", "60"],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let uncapped = recv_command(&key, &g, &d.join("fast"), &["--timeout", "60", "--json"])
        .output()
        .unwrap();
    let capped = capped.wait_with_output().unwrap();
    // Channel 1 of the file is the group's +1 (40M), channel 2 its +2 (160M).
    let slow_channel = "over 239.255.110.2:22101 (40.0 Mbit/s)";
    let fast_channel = "over 239.255.110.3:22102 (160.0 Mbit/s)";
    for (out, name, channel) in [
        (&capped, "slow", slow_channel),
        (&uncapped, "fast", fast_channel),
    ] {
        let err = stderr(out);
        assert!(out.status.success(), "{name}: {err}");
        assert!(err.contains(channel), "{name} did not use {channel}: {err}");
        assert_eq!(
            std::fs::read(d.join(name).join("two-rates.bin")).unwrap(),
            data
        );
    }
    // The server logs each receiver's DONE (sent just before the receiver exits).
    let started = Instant::now();
    let completions = || {
        let log = std::fs::read_to_string(d.join("serve.log")).unwrap();
        (log.matches(" completed in ").count(), log)
    };
    while completions().0 < 2 && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (count, serve_log) = completions();
    assert_eq!(count, 2, "{serve_log}");
    // --json: one event object per line, from join to done.
    let events: Vec<serde_json::Value> = String::from_utf8(uncapped.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"join"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    let done = events.last().unwrap();
    assert_eq!(done["file"], "two-rates.bin");
    assert_eq!(done["bytes"], 8_000_000);
}

/// Stops a child with SIGTERM (a clean stop: the server prints its closing line).
fn terminate(child: &mut Running) {
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let _ = child.0.wait();
}

/// JSON event kinds printed on a process's stdout, one object per line.
fn json_kinds(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            v["event"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn an_archive_and_a_plain_file_served_with_every_serve_flag_and_one_picked_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = keygen(d);
    let k = key.to_str().unwrap();
    let a = random_file(&d.join("a.bin"), 16_000_000, 112);
    random_file(&d.join("b.bin"), 1_000_000, 113);
    // pack (cells for 1200-byte packets), and unpack offline.
    let archive = d.join("a.lcar");
    let packed = loopcast(&["pack", d.join("a.bin").to_str().unwrap(), "-k", k, "-o"])
        .arg(&archive)
        .args(["--packet-size", "1200"])
        .output()
        .unwrap();
    assert!(packed.status.success(), "{}", stderr(&packed));
    assert!(
        String::from_utf8_lossy(&packed.stdout).contains("1124-byte cells"),
        "{}",
        String::from_utf8_lossy(&packed.stdout)
    );
    // Cells that do not fit the server's packets: refused at start, saying how.
    let small = loopcast(&[
        "serve",
        archive.to_str().unwrap(),
        "-k",
        k,
        "-i",
        "127.0.0.1",
    ])
    .args(["--packet-size", "1100", "-g", "239.255.112.99:22199"])
    .output()
    .unwrap();
    assert_eq!(small.status.code(), Some(1), "{}", stderr(&small));
    assert!(
        stderr(&small).contains("its cells are 1124 bytes") && stderr(&small).contains("pack"),
        "{}",
        stderr(&small)
    );
    let unpacked = loopcast(&["unpack", archive.to_str().unwrap(), "-k", k, "-o"])
        .arg(d.join("restored"))
        .output()
        .unwrap();
    assert!(unpacked.status.success(), "{}", stderr(&unpacked));
    assert_eq!(std::fs::read(d.join("restored/a.bin")).unwrap(), a);
    // The ready archive and a plain file, two rates each, adaptive, 1200-byte
    // packets, repair off, events as JSON.
    let g = group(112);
    let mut serve = on_loopback("serve", &key, &g);
    serve
        .arg(&archive)
        .arg(d.join("b.bin"))
        .args(["--rates", "20M,40M", "--adapt", "min", "--min-rate", "10M"])
        .args([
            "--max-rate",
            "80M",
            "--packet-size",
            "1200",
            "--repair-share",
            "0",
        ])
        .arg("--json")
        .arg("--cache-dir")
        .arg(d.join("cache"));
    let mut server = Running(
        serve
            .stderr(std::fs::File::create(d.join("serve.log")).unwrap())
            .stdout(std::fs::File::create(d.join("serve.json")).unwrap())
            .spawn()
            .unwrap(),
    );
    let out = d.join("out");
    let got = recv_command(
        &key,
        &g,
        &out,
        &["a.bin", "--aggregate", "--json", "--timeout", "60"],
    )
    .output()
    .unwrap();
    let log = stderr(&got);
    assert!(got.status.success(), "{log}");
    assert_eq!(std::fs::read(out.join("a.bin")).unwrap(), a);
    assert!(!out.join("b.bin").exists(), "b.bin was not asked for");
    // --aggregate: both channels of a.bin at once.
    assert!(log.contains("(20.0 Mbit/s) + "), "{log}");
    // recv --json: join first, done last, progress lines between when it took long.
    let kinds = json_kinds(&got.stdout);
    assert_eq!(kinds.first().map(String::as_str), Some("join"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("done"), "{kinds:?}");
    // --packet-size 1200: payloads of 1140 bytes, so more packets than 1500 would give.
    let packets = count_before(&log, "packets");
    assert!(
        packets as f64 >= 16_000_000.0 / 1140.0,
        "{packets} packets: {log}"
    );
    std::thread::sleep(Duration::from_millis(300)); // the server logs the DONE
    terminate(&mut server);
    let serve_log = std::fs::read_to_string(d.join("serve.log")).unwrap();
    assert!(serve_log.contains("stopped after"), "{serve_log}");
    // --repair-share 0: no channel repaired anything.
    let channels = (serve_log.lines()).filter(|l| l.contains(": counters: loops="));
    let unrepaired = channels.filter(|l| l.contains(" repairs=0 ")).count();
    assert_eq!(unrepaired, 4, "{serve_log}");
    assert!(!serve_log.contains("in 0 packets"), "{serve_log}");
    // serve --json: the receiver's join and done; --adapt moved a channel's rate.
    let served = json_kinds(&std::fs::read(d.join("serve.json")).unwrap());
    for kind in ["join", "progress", "done", "rate_change"] {
        assert!(served.iter().any(|k| k == kind), "no {kind} in {served:?}");
    }
}

#[test]
fn unicast_only_receivers_beyond_the_client_cap_wait_their_turn() {
    let lab = lab_with(
        113,
        "u.bin",
        6_000_000,
        "40M",
        &["--unicast-max-clients", "1", "--unicast-max-rate", "30M"],
    );
    let (d, key, g) = (lab.dir.path(), &lab.key, &lab.group);
    let server = format!("127.0.0.1:{}", g.rsplit(':').next().unwrap());
    let args = ["--unicast", "--server", server.as_str(), "--timeout", "60"];
    let first = recv_command(key, g, &d.join("one"), &args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let second = recv_command(key, g, &d.join("two"), &args)
        .output()
        .unwrap();
    let first = first.wait_with_output().unwrap();
    for (out, name) in [(&first, "one"), (&second, "two")] {
        let log = stderr(out);
        assert!(out.status.success(), "{name}: {log}");
        assert!(
            log.contains(&format!("over unicast from {server}")),
            "{log}"
        );
        assert_eq!(std::fs::read(d.join(name).join("u.bin")).unwrap(), lab.data);
    }
    let serve_log = std::fs::read_to_string(d.join("serve.log")).unwrap();
    assert!(
        serve_log.contains("refusing a unicast stream"),
        "the second receiver was never refused: {serve_log}"
    );
}

#[test]
fn a_server_restarted_with_its_cache_is_followed_at_once_and_nothing_stored_is_lost() {
    // 16 MB at 32 Mbit/s: a loop is 4 s; the server stops 2 s in and comes back.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = keygen(d);
    let file = d.join("restart.bin");
    let data = random_file(&file, 16_000_000, 114);
    let g = group(114);
    let mut first = serve(d, &key, &[&file], &g, "32M", &[]);
    let receiver = recv_command(&key, &g, &d.join("out"), &["--timeout", "60"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    terminate(&mut first);
    std::thread::sleep(Duration::from_millis(300));
    let _second = serve(d, &key, &[&file], &g, "32M", &[]);
    let out = receiver.wait_with_output().unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(std::fs::read(d.join("out/restart.bin")).unwrap(), data);
    assert!(log.contains("following server "), "{log}");
    assert!(log.contains("keeping what is stored"), "{log}");
    // What it held before the restart was kept: it resumed a good part of the file.
    let resumed = resumed_packets(&log);
    let total = 16_000_000.0 / 1440.0;
    eprintln!("resumed {resumed} of about {total:.0} packets after the server restart");
    assert!(resumed > 0.25 * total, "{log}");
    // It followed the new session at its first listing, before the sync time-out.
    assert!(!log.contains("unicast stream"), "{log}");
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_partial_directory_is_private_and_nothing_in_it_is_followed_or_left_readable() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    // 16 MB at 32 Mbit/s: 4 s a loop, time to look inside while it runs.
    let lab = lab(115, "p.bin", 16_000_000, "32M");
    let (d, key, g) = (lab.dir.path(), &lab.key, &lab.group);
    // T14: the partial directory a symlink to elsewhere: refused, nothing written there.
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let linked = d.join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    symlink(&elsewhere, linked.join(".loopcast-partial")).unwrap();
    let out = recv_command(key, g, &linked, &["--timeout", "10"])
        .output()
        .unwrap();
    assert_clean_failure(&out, 1, "not a directory of ours");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    // T14: a directory of ours left open to all, with a link planted in it towards
    // a file of ours: narrowed to 0700, the link replaced, the victim untouched.
    let out_dir = d.join("out");
    let partial = out_dir.join(".loopcast-partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o777)).unwrap();
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    symlink(&victim, partial.join("p.bin.part")).unwrap();
    symlink(&victim, partial.join("p.bin.map")).unwrap();
    // A plaintext leftover of another archive of that name is removed.
    std::fs::write(
        partial.join("p.bin.0000000000000001.unpacking"),
        b"old plain",
    )
    .unwrap();
    let mut child = Running(
        recv_command(key, g, &out_dir, &["--timeout", "60"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // T15: while it runs, the plaintext being unpacked is ours alone.
    let start = Instant::now();
    let mut seen = None;
    while seen.is_none() && start.elapsed() < Duration::from_secs(20) {
        seen = std::fs::read_dir(&partial)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.to_string_lossy();
                name.ends_with(".unpacking") && !name.contains("0000000000000001")
            })
            .find_map(|p| std::fs::symlink_metadata(&p).ok().map(|m| (p, m)));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (seen, meta) = seen.expect("an unpacking file while receiving");
    assert_eq!(mode_of(&partial), 0o700);
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{}",
        seen.display()
    );
    assert!(!partial.join("p.bin.0000000000000001.unpacking").exists());
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(std::fs::read(out_dir.join("p.bin")).unwrap(), lab.data);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "{err}");
    assert_eq!(mode_of(&victim), 0o600);
    // Delivered with the file's own mode (the source's), and nothing plain left.
    let left: Vec<_> = std::fs::read_dir(&partial).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    // T15: a run that ends by time-out keeps what it unpacked for its resume,
    // readable by us alone.
    let out2 = d.join("out2");
    let timed = recv_command(key, g, &out2, &["--timeout", "2"])
        .output()
        .unwrap();
    assert_clean_failure(&timed, 3, "timed out");
    let partial2 = out2.join(".loopcast-partial");
    assert_eq!(mode_of(&partial2), 0o700);
    let plain: Vec<_> = std::fs::read_dir(&partial2)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".unpacking"))
        .collect();
    assert!(!plain.is_empty());
    for p in plain {
        assert_eq!(mode_of(&p.path()), 0o600, "{}", p.path().display());
    }
}

#[test]
fn as_another_user_the_partial_directory_of_someone_else_is_refused() {
    // Needs root to act as another user (nobody, via setpriv); CI runs as root.
    let root = common::running_as_root();
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if !(root && setpriv) {
        assert!(
            std::env::var_os("LOOPCAST_LAB_REQUIRED").is_none(),
            "needs root and setpriv under CI"
        );
        eprintln!("SKIPPED: needs root and setpriv");
        return;
    }
    let lab = lab(116, "n.bin", 2_000_000, "40M");
    let (d, g) = (lab.dir.path(), &lab.group);
    let nobody = |c: &mut Command| {
        let program = c.get_program().to_owned();
        let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
        let mut wrapped = Command::new("setpriv");
        wrapped
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info");
        wrapped
    };
    // The key and a directory that belong to nobody.
    let home = d.join("nobody");
    std::fs::create_dir_all(&home).unwrap();
    let key = home.join("key");
    std::fs::copy(&lab.key, &key).unwrap();
    for p in [&home, &key] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    std::os::unix::fs::chown(d, Some(0), Some(0)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Its partial directory made beforehand by root: not ours, refused.
    let out = home.join("out");
    std::fs::create_dir_all(out.join(".loopcast-partial")).unwrap();
    std::os::unix::fs::chown(&out, Some(65534), Some(65534)).unwrap();
    let refused = nobody(&mut recv_command(&key, g, &out, &["--timeout", "10"]))
        .output()
        .unwrap();
    assert_clean_failure(&refused, 1, "owned by uid 0");
    // Its own: the file arrives, and the partial directory is nobody's, 0700.
    let own = home.join("own");
    std::fs::create_dir_all(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(65534), Some(65534)).unwrap();
    let got = nobody(&mut recv_command(&key, g, &own, &["--timeout", "30"]))
        .output()
        .unwrap();
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(std::fs::read(own.join("n.bin")).unwrap(), lab.data);
    let partial = own.join(".loopcast-partial");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&partial).unwrap().uid(), 65534);
    assert_eq!(mode_of(&partial), 0o700);
}

#[test]
fn a_receiver_told_only_directors_fails_over_to_the_other_server_keeping_what_it_holds() {
    // Two servers loop one archive (packed once, copied: same archive id) on
    // their own groups and heartbeat to a director; a receiver knows only a dead
    // director and the live one. The primary is killed at about 40%: the
    // receiver finishes from the other server with what it stored kept.
    let top = tempfile::tempdir().unwrap();
    let key = keygen(top.path());
    let file = top.path().join("image.bin");
    let data = random_file(&file, 6_000_000, 120);
    let archive = top.path().join("image.lca");
    let packed = loopcast(&[
        "pack",
        file.to_str().unwrap(),
        "-k",
        key.to_str().unwrap(),
        "-o",
    ])
    .arg(&archive)
    .output()
    .unwrap();
    assert!(packed.status.success(), "{}", stderr(&packed));
    let director_at = format!("127.0.0.1:{}", 21000 + 123 * 10);
    let dead_director = format!("127.0.0.1:{}", 21000 + 123 * 10 + 1);
    let http_at = format!("127.0.0.1:{}", 21000 + 123 * 10 + 2);
    let director_log = std::fs::File::create(top.path().join("director.log")).unwrap();
    let _director = Running(
        loopcast(&[
            "director",
            "-k",
            key.to_str().unwrap(),
            "--listen",
            &director_at,
            "--json",
            "--http",
            &http_at,
        ])
        .stdout(std::fs::File::create(top.path().join("director.json")).unwrap())
        .stderr(director_log)
        .spawn()
        .unwrap(),
    );
    let mut servers = Vec::new();
    // The first has the lower load (8M of 100M against 8M of 10M): the primary.
    for (n, capacity) in [(120u8, "100M"), (121, "10M")] {
        let dir = top.path().join(n.to_string());
        std::fs::create_dir(&dir).unwrap();
        let extra = ["--director", &director_at, "--capacity", capacity];
        servers.push(serve(&dir, &key, &[&archive], &group(n), "8M", &extra));
    }
    let primary = format!("127.0.0.1:{}", 21000 + 120 * 10);
    let alternate = format!("127.0.0.1:{}", 21000 + 121 * 10);
    // Within two heartbeats the director knows both; before, it says "not yet".
    std::thread::sleep(Duration::from_millis(2500));
    // Its status API and `ls --director` show both servers carrying one version.
    let get = |path: &str| {
        let mut answer = ureq::get(&format!("http://{http_at}{path}"))
            .call()
            .unwrap();
        answer.body_mut().read_to_string().unwrap()
    };
    let files: serde_json::Value = serde_json::from_str(&get("/v1/files")).unwrap();
    assert_eq!(files[0]["name"], "image.bin", "{files}");
    assert_eq!(files[0]["versions"].as_array().unwrap().len(), 1, "{files}");
    assert_eq!(
        files[0]["versions"][0]["servers"].as_array().unwrap().len(),
        2,
        "{files}"
    );
    let registry: serde_json::Value = serde_json::from_str(&get("/v1/servers")).unwrap();
    assert_eq!(registry.as_array().unwrap().len(), 2, "{registry}");
    assert!(get("/metrics").contains("loopcast_director_servers 2"));
    assert!(
        ureq::get(&format!("http://{http_at}/nothing"))
            .call()
            .is_err()
    );
    let ls = (loopcast(&["ls", "--director", &director_at, "--api", &http_at]).output()).unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "{}", stderr(&ls));
    assert!(
        listing.contains(&primary) && listing.contains(&alternate),
        "{listing}"
    );
    let directors = format!("{dead_director},{director_at}");
    let absent = recv_command(&key, &group(122), &top.path().join("none"), &[])
        .args(["--director", &directors, "--timeout", "20", "absent.bin"])
        .output()
        .unwrap();
    assert_clean_failure(&absent, 4, "no live server carries it");
    let out = top.path().join("out");
    let events = top.path().join("recv.json");
    let mut receiver = Running(
        recv_command(&key, &group(122), &out, &[])
            .args([
                "--director",
                &directors,
                "--json",
                "--timeout",
                "60",
                "image.bin",
            ])
            .stdout(std::fs::File::create(&events).unwrap())
            .stderr(std::fs::File::create(top.path().join("recv.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let joined = format!("\"server\":\"{primary}\"");
    assert!(
        common::wait_for_log(&events, &joined, Duration::from_secs(10)),
        "never joined {primary}"
    );
    std::thread::sleep(Duration::from_millis(2400)); // 40% of a 6 s loop
    drop(servers.remove(0));
    let status = receiver.0.wait().unwrap();
    let log = std::fs::read_to_string(top.path().join("recv.log")).unwrap();
    assert!(status.success(), "{log}");
    assert_eq!(std::fs::read(out.join("image.bin")).unwrap(), data);
    let json = std::fs::read_to_string(&events).unwrap();
    // Moved by the director (its REDIRECT, as the primary stops heartbeating)
    // or by the receiver itself (3 s without a word from the primary).
    let lost = format!("\"next\":\"{alternate}\"");
    let moved = format!("\"to\":\"{alternate}\"");
    assert!(json.contains(&lost) || json.contains(&moved), "{json}");
    assert!(
        json.contains(&format!("\"server\":\"{alternate}\"")),
        "{json}"
    );
    // What the primary sent was kept: the switch resumed it (about 40% of the
    // 4202 packets; at least 20%).
    assert!(resumed_packets(&log) >= 840.0, "{log}");
    let director = std::fs::read_to_string(top.path().join("director.json")).unwrap();
    assert!(director.contains("\"event\":\"server_down\""), "{director}");
    let receivers: serde_json::Value = serde_json::from_str(&get("/v1/receivers")).unwrap();
    let files: Vec<&str> = (receivers.as_array().unwrap().iter())
        .map(|r| r["file"].as_str().unwrap())
        .collect();
    assert!(
        files.contains(&"image.bin") && files.contains(&"absent.bin"),
        "{receivers}"
    );
}
