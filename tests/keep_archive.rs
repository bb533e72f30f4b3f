//! `recv --keep-archive DIR` through the real binary on loopback: the archive
//! kept is the server's very file (`cmp`), serves again, survives SIGKILL, and
//! holds parity-rebuilt packets sealed again. Groups 239.253.N.1, ports
//! 29500 + 10·N.

mod common;

use common::{
    Running, counter, loopback_serve, loopcast_cmd, new_key, path, start_logged, wait_for_path,
};
use rand::{Rng, SeedableRng};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

fn group(n: u16) -> String {
    format!("239.253.{n}.1:{}", 29500 + 10 * n)
}

/// A key, a random file `name` of `len` bytes and its archive packed in `dir`:
/// (key, file, archive, the file's bytes).
fn packed(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, PathBuf, PathBuf, Vec<u8>) {
    let key = new_key(dir);
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data[..len / 2]);
    let file = dir.join(name);
    std::fs::write(&file, &data).unwrap();
    let archive = dir.join(format!("{name}.lcar"));
    let out = loopcast_cmd(&["pack", path(&file), "-k", path(&key), "-o", path(&archive)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    (key, file, archive, data)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Serves `archive` on group `n` at `rate`, logging to `dir/serve-N.log`.
fn serve(dir: &Path, key: &Path, archive: &Path, n: u16, rate: &str) -> Running {
    let (g, cache) = (group(n), dir.join("cache"));
    let mut args = loopback_serve(path(key), &g, rate, path(&cache));
    args.push(path(archive));
    start_logged(dir, &format!("serve-{n}.log"), &args)
}

/// `recv` on group `n` into `out` with `extra`, counters in its log.
fn recv(key: &Path, n: u16, out: &Path, extra: &[&str]) -> std::process::Command {
    let g = group(n);
    let mut c = loopcast_cmd(&["recv", "-k", path(key), "-i", "127.0.0.1", "-g", &g]);
    c.arg("-o")
        .arg(out)
        .args(extra)
        .env("RUST_LOG", common::WITH_COUNTERS);
    c
}

/// Runs `recv` on group `n` into `out` with `extra` to its end (at most 60 s),
/// asserts that it succeeded and that `out/name` is `data`; its output.
fn received(key: &Path, n: u16, out: &Path, extra: &[&str], name: &str, data: &[u8]) -> Output {
    let run = recv(key, n, out, extra)
        .args(["--timeout", "60"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(std::fs::read(out.join(name)).unwrap(), data);
    run
}

#[test]
fn a_kept_archive_is_the_servers_file_and_a_server_loops_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, _, archive, data) = packed(d, "kept.bin", 12_000_000, 1);
    let _server = serve(d, &key, &archive, 1, "400M");
    let (out, kept) = (d.join("out"), d.join("kept"));
    let keep = ["--keep-archive", path(&kept), "--json"];
    let run = received(&key, 1, &out, &keep, "kept.bin", &data);
    let kept_file = kept.join("kept.bin.lcar");
    assert_eq!(
        std::fs::read(&kept_file).unwrap(),
        std::fs::read(&archive).unwrap(),
        "the kept archive is not the server's file"
    );
    let mode = std::fs::metadata(&kept_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("\"archive\":"), "{stdout}");
    assert!(
        std::fs::read_dir(kept.join(".loopcast-partial"))
            .unwrap()
            .next()
            .is_none(),
        "something left in the keep directory's partial directory"
    );
    // Served again, it is the same archive: a second receiver takes the file.
    drop(_server);
    let _again = serve(d, &key, &kept_file, 2, "400M");
    let again = d.join("again");
    received(&key, 2, &again, &[], "kept.bin", &data);
}

#[test]
fn packets_rebuilt_from_parity_are_kept_sealed_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, _, archive, data) = packed(d, "fec.bin", 8_000_000, 2);
    let (g, cache) = (group(3), d.join("cache"));
    let mut args = loopback_serve(path(&key), &g, "64M", path(&cache));
    args.extend([path(&archive), "--fec-overhead", "10%"]);
    let _server = start_logged(d, "serve.log", &args);
    let (out, kept) = (d.join("out"), d.join("kept"));
    let extra = [
        "--keep-archive",
        path(&kept),
        "--debug-drop",
        "3",
        "--debug-seed",
        "2",
    ];
    let log = stderr(&received(&key, 3, &out, &extra, "fec.bin", &data));
    // The attack on the kept bytes here is the loss: what came back by parity
    // was never on the wire as this receiver holds it.
    assert!(counter(&log, "rebuilt") > 10.0, "{log}");
    assert_eq!(
        std::fs::read(kept.join("fec.bin.lcar")).unwrap(),
        std::fs::read(&archive).unwrap(),
        "rebuilt packets were not kept as they were sent"
    );
}

/// Starts `recv` on group `n` into `out` with `extra`, waits until it saved a
/// map and 1.2 s more, and SIGKILLs it.
fn killed_half_way(key: &Path, n: u16, out: &Path, extra: &[&str]) {
    let map = out.join(".loopcast-partial").join("big.bin.map");
    let mut first = Running(
        recv(key, n, out, extra)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let saved = wait_for_path(&map, Duration::from_secs(20));
    assert!(saved, "no received map was persisted");
    std::thread::sleep(Duration::from_millis(1200));
    first.crash();
    assert!(!out.join("big.bin").exists(), "delivered before complete");
}

#[test]
fn a_kept_archive_resumes_after_sigkill_and_one_never_kept_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 24 MB, half of it random, at 40 Mbit/s: a loop of about 3 s.
    let (key, _, archive, data) = packed(d, "big.bin", 24_000_000, 3);
    let _server = serve(d, &key, &archive, 4, "40M");
    let sealed = std::fs::read(&archive).unwrap();
    for kept_before in [true, false] {
        let (out, kept) = (
            d.join(format!("out-{kept_before}")),
            d.join(format!("kept-{kept_before}")),
        );
        let keep = ["--keep-archive", path(&kept)];
        killed_half_way(&key, 4, &out, if kept_before { &keep } else { &[] });
        let log = stderr(&received(&key, 4, &out, &keep, "big.bin", &data));
        assert!(
            std::fs::read(kept.join("big.bin.lcar")).unwrap() == sealed,
            "kept before: {kept_before}: the kept archive differs"
        );
        let resumed = counter(&log, "resumed");
        match kept_before {
            // What the first run stored and kept is not fetched again.
            true => assert!(resumed > 1000.0, "resumed {resumed}: {log}"),
            // Nothing kept of the first run's packets: the file starts over.
            false => {
                assert_eq!(resumed, 0.0, "{log}");
                assert!(log.contains("starting over"), "{log}");
            }
        }
    }
}
