//! Several servers in the namespace lab (root only; see `lab.rs`): two servers
//! on one directory group without a director, and two servers of one archive
//! behind two directors, with the primary killed mid-transfer.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn pack(source: &Path, key: &Path, archive: &Path) {
    let out = Command::new(BIN)
        .args(["pack", path(source), "-k", path(key), "-o", path(archive)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `serve` of `file` from host address `addr` on the default directory group.
fn serve_on_default_group<'a>(
    file: &'a str,
    key: &'a str,
    addr: &'a str,
    cache: &'a str,
) -> Vec<&'a str> {
    vec![
        "serve",
        file,
        "-k",
        key,
        "-i",
        addr,
        "--rate",
        "40M",
        "--cache-dir",
        cache,
    ]
}

#[test]
fn two_servers_on_the_default_group_are_both_listed_and_a_receiver_gets_both_files() {
    if !lab_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, one, one_data) = key_and_payload(d, 13);
    let two = d.join("two.bin");
    let two_data: Vec<u8> = one_data.iter().rev().take(3_000_000).copied().collect();
    std::fs::write(&two, &two_data).unwrap();
    let mut lab = Lab::up(2, "g");
    let key_s = path(&key);
    let (c1, c2) = (d.join("c1"), d.join("c2"));
    lab.start(
        "s",
        &d.join("s.log"),
        &serve_on_default_group(path(&one), key_s, "10.77.0.1", path(&c1)),
    );
    // The second without -i: its unicast socket holds every address on the
    // group's port, so it hears the other server through it.
    std::thread::sleep(Duration::from_millis(250));
    let mut second = serve_on_default_group(path(&two), key_s, "10.77.0.11", path(&c2));
    second.drain(4..6); // "-i", the address
    lab.start("r1", &d.join("r1s.log"), &second);
    // A server new on the group moves off channels another uses (within 750 ms).
    std::thread::sleep(Duration::from_millis(1500));
    let ls = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}-r2", lab.prefix),
            BIN,
            "ls",
            "-k",
            key_s,
            "-i",
            "10.77.0.12",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(
        listing.contains("payload.bin") && listing.contains("two.bin"),
        "{listing}"
    );
    let channels = channels_listed(&listing);
    assert_eq!(channels.len(), 2, "one channel address each: {listing}");
    let out = d.join("out");
    let log = d.join("r2.log");
    let args = [
        "recv",
        "-k",
        key_s,
        "-i",
        "10.77.0.12",
        "-o",
        path(&out),
        "--timeout",
        "90",
    ];
    let r = lab.start("r2", &log, &args);
    let status = lab.wait(r, Duration::from_secs(100));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{text}");
    assert!(std::fs::read(out.join("payload.bin")).unwrap() == one_data);
    assert!(std::fs::read(out.join("two.bin")).unwrap() == two_data);
}

/// Seconds from a receiver's start to `needle`, from its `--json` lines' "t".
fn event_time(json: &str, needle: &str) -> Option<f64> {
    json.lines()
        .find(|l| l.contains(needle))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["t"].as_f64())
}

#[test]
fn behind_two_directors_every_receiver_finishes_from_the_other_server_when_the_primary_dies() {
    if !lab_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, source, data) = key_and_payload(d, 31);
    let archive = d.join("payload.lcar");
    pack(&source, &key, &archive);
    let mut lab = Lab::up(7, "d");
    let key_s = path(&key);
    // Directors on r2 and r3; servers of the same archive on s and r1; receivers r4-r7.
    let (d1, d2) = ("10.77.0.12", "10.77.0.13");
    let mut directors = Vec::new();
    for (host, addr) in [("r2", d1), ("r3", d2)] {
        let listen = format!("{addr}:7790");
        let args = ["director", "-k", key_s, "--listen", &listen];
        directors.push(lab.start(host, &d.join(format!("{host}.log")), &args));
    }
    let both = format!("{d1},{d2}");
    let mut servers = Vec::new();
    // s is the primary: 40M of 1G against 40M of 100M.
    for (host, addr, capacity) in [("s", "10.77.0.1", "1G"), ("r1", "10.77.0.11", "100M")] {
        let cache = d.join(format!("cache-{host}"));
        let mut args = serve_on_default_group(path(&archive), key_s, addr, path(&cache));
        args.extend(["--director", &both, "--capacity", capacity]);
        servers.push(lab.start(host, &d.join(format!("{host}.log")), &args));
    }
    // A server holding another key heartbeats too: it must not be registered.
    let other_key = d.join("other.key");
    assert!(
        Command::new(BIN)
            .args(["keygen", "-o", path(&other_key)])
            .status()
            .unwrap()
            .success()
    );
    let other_cache = d.join("cache-other");
    let mut forged = serve_on_default_group(
        path(&source),
        path(&other_key),
        "10.77.0.11",
        path(&other_cache),
    );
    forged.extend([
        "--director",
        &both,
        "--unicast-port",
        "7799",
        "-g",
        "239.255.78.1:7800",
    ]);
    lab.start("r1", &d.join("forged.log"), &forged);
    std::thread::sleep(Duration::from_millis(2500));
    // One director is killed: look-ups go to the other.
    lab.children[directors[0]].kill().unwrap();
    lab.children[directors[0]].wait().unwrap();
    let absent = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}-r4", lab.prefix),
            BIN,
            "recv",
            "-k",
            key_s,
        ])
        .args([
            "-i",
            "10.77.0.14",
            "-o",
            path(&d.join("none")),
            "--director",
            &both,
            "absent.bin",
        ])
        .output()
        .unwrap();
    assert_eq!(
        absent.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&absent.stderr)
    );
    let mut receivers = Vec::new();
    for i in 4..=7 {
        let host = format!("r{i}");
        let addr = format!("10.77.0.{}", 10 + i);
        let out = d.join(format!("out{i}"));
        let events = d.join(format!("r{i}.json"));
        let ns = format!("{}-{host}", lab.prefix);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                BIN,
                "recv",
                "-k",
                key_s,
                "-i",
                &addr,
                "-o",
                path(&out),
            ])
            .args([
                "--director",
                &both,
                "--json",
                "--timeout",
                "90",
                "payload.bin",
            ])
            .env("RUST_LOG", WITH_COUNTERS)
            .stdout(std::fs::File::create(&events).unwrap())
            .stderr(std::fs::File::create(d.join(format!("r{i}.log"))).unwrap())
            .spawn()
            .unwrap();
        lab.children.push(child);
        receivers.push((
            lab.children.len() - 1,
            out,
            events,
            d.join(format!("r{i}.log")),
            std::time::Instant::now(),
        ));
    }
    for (_, _, events, _, _) in &receivers {
        assert!(wait_for_log(
            events,
            "\"server\":\"10.77.0.1:7700\"",
            Duration::from_secs(15)
        ));
    }
    // 24 MB at 40 Mbit/s is a 4.8 s loop: 40% is about 1.9 s after joining.
    std::thread::sleep(Duration::from_millis(1900));
    lab.children[servers[0]].kill().unwrap();
    let killed = std::time::Instant::now();
    lab.children[servers[0]].wait().unwrap();
    let mut gaps = Vec::new();
    let mut twice = Vec::new();
    let mut redirected = 0;
    for (i, out, events, log, started) in &receivers {
        let status = lab.wait(*i, Duration::from_secs(100));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(status.is_some_and(|s| s.success()), "{status:?}\n{text}");
        assert!(std::fs::read(out.join("payload.bin")).unwrap() == data);
        let json = std::fs::read_to_string(events).unwrap();
        // Moved by the director's REDIRECT, or by its own silence detection.
        let lost = event_time(&json, "\"server_lost\"");
        let moved = event_time(&json, "\"redirected\"");
        assert!(lost.is_some() || moved.is_some(), "{json}");
        redirected += usize::from(moved.is_some());
        let joined =
            event_time(&json, "\"server\":\"10.77.0.11:7700\"").expect("joined the alternate");
        gaps.push(joined - killed.duration_since(*started).as_secs_f64());
        // Packets the alternate sent that the primary had sent already.
        let duplicates = counter(&text, "duplicates");
        twice.push(duplicates / 16_807.0);
    }
    // Figures for the record (times are not asserted: they are the wall clock's).
    eprintln!(
        "kill to joining the alternate (s): {gaps:?}; redirected by the director: {redirected} of 4; share received twice: {twice:?}"
    );
    // docs/testing.md states 2.5 s from the kill: within 2x of it.
    for gap in &gaps {
        assert!(*gap <= 5.0, "kill to joining the alternate: {gaps:?}");
    }
    // Each left the alternate's channel while its loop passed what it held
    // (spec §6.4): without that, about 40% came twice. What still comes twice is
    // at most a run too short to leave for (100 ms) and the margins (10 ms and 1%
    // of the time away): about 3% of this 4.8 s loop at the worst, well under 1%
    // as a rule.
    for share in &twice {
        assert!(*share < 0.03, "share received twice: {twice:?}");
    }
    // The server under another key (unicast port 7799) was heard, told of as
    // unverified, and never registered.
    let registry = std::fs::read_to_string(d.join("r3.log")).unwrap();
    assert!(registry.contains("at 10.77.0.11:7700 is up"), "{registry}");
    assert!(
        registry.contains("unverified HEARTBEAT from 10.77.0.11:7799"),
        "{registry}"
    );
    assert!(!registry.contains(":7799 is up"), "{registry}");
}
