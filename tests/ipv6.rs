//! Namespace lab tests over IPv6 (root only, like `tests/lab.rs`): a group in
//! ff15::/16, hosts in fd77::/64, a director, repair under loss, a look-up and a
//! receiver behind a switch that drops multicast, on unicast fallback; and hosts
//! with link-local addresses only, on a link-local group.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const GROUP6: &str = "[ff15::77]:7700";

/// Starts in host s a director on [fd77::1]:7790 (HTTP API on 7791) and a server
/// of `source` at 80 Mbit/s heartbeating to it, with `extra` flags; waits until
/// the director has heard the server. Their logs: (director, server).
fn director_and_server(
    lab: &mut Lab,
    d: &Path,
    key: &str,
    source: &Path,
    extra: &[&str],
) -> (PathBuf, PathBuf) {
    let director_log = d.join("director.log");
    let director = ["director", "-k", key, "--listen", "[fd77::1]:7790"];
    let director = [&director[..], &["--http", "[fd77::1]:7791"]].concat();
    lab.start("s", &director_log, &director);
    let server_log = d.join("s.log");
    let cache = d.join("cache");
    let server = [
        "serve",
        path(source),
        "-k",
        key,
        "-i",
        "fd77::1",
        "--rate",
        "80M",
    ];
    let server = [
        &server[..],
        &["--cache-dir", path(&cache), "--director", "[fd77::1]"],
        extra,
    ]
    .concat();
    lab.start("s", &server_log, &server);
    assert!(
        wait_for_log(&director_log, "is up", Duration::from_secs(60)),
        "no heartbeat reached the director: {}",
        std::fs::read_to_string(&director_log).unwrap_or_default()
    );
    (director_log, server_log)
}

#[test]
fn over_ipv6_a_lossy_receiver_a_director_look_up_and_a_unicast_fallback_all_get_the_file() {
    if !lab_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, source, data) = key_and_payload(d, 66);
    let mut lab = Lab::up(4, "v");
    lab.script(&["loss", "r2", "3"]);
    lab.script(&["block-multicast", "r4"]);
    let key_s = path(&key);
    let (director_log, server_log) =
        director_and_server(&mut lab, d, key_s, &source, &["-g", GROUP6]);
    let out: Vec<PathBuf> = (1..=4).map(|i| d.join(format!("out{i}"))).collect();
    let logs: Vec<PathBuf> = (1..=4).map(|i| d.join(format!("r{i}.log"))).collect();
    let mut receivers = Vec::new();
    for i in 0..4 {
        let iface = format!("fd77::{}", 11 + i);
        let mut args = vec!["recv", "-k", key_s, "-i", &iface, "-o", path(&out[i])];
        args.extend(["--timeout", "90"]);
        match i {
            // No -g: with an IPv6 director the default group is IPv6 too.
            2 => args.extend(["--director", "fd77::1", "payload.bin"]),
            3 => args.extend(["-g", GROUP6, "--server", "[fd77::1]"]),
            _ => args.extend(["-g", GROUP6]),
        }
        receivers.push(lab.start(&format!("r{}", i + 1), &logs[i], &args));
    }
    assert_all_received(&mut lab, &receivers, &logs, &out, &data);
    let log = |i: usize| std::fs::read_to_string(&logs[i]).unwrap();
    for i in 0..3 {
        assert!(
            log(i).contains("over [ff15::78]:7701"),
            "r{}: {}",
            i + 1,
            log(i)
        );
    }
    // r2 lost 3% on the wire: its NAKs went to the IPv6 control group and were answered.
    let naks = counter(&log(1), "naks_sent");
    assert!(naks > 0.0, "r2 lost packets yet sent no NAK: {}", log(1));
    assert!(
        counter(&log(1), "repairs") + counter(&log(1), "parity") > 0.0,
        "{}",
        log(1)
    );
    assert!(
        log(2).contains("payload.bin: the director names [fd77::1]:7700"),
        "r3 was not directed: {}",
        log(2)
    );
    assert!(
        log(3).contains("over unicast from [fd77::1]:7700"),
        "r4 did not fall back: {}",
        log(3)
    );
    let server_text = std::fs::read_to_string(&server_log).unwrap();
    assert!(
        server_text.contains("by unicast to [fd77::14]"),
        "{server_text}"
    );
    // A stream starts only on a request carrying a valid cookie: the cookie
    // went to r4's IPv6 address and came back.
    assert!(
        server_text.contains("streaming by unicast"),
        "{server_text}"
    );
    let director_text = std::fs::read_to_string(&director_log).unwrap();
    assert!(
        director_text.contains("at [fd77::1]:7700 is up"),
        "{director_text}"
    );
    let status = http_get_in(&lab, "r1", "fd77::1", 7791, "/v1/servers")
        .expect("the director's HTTP API answers over IPv6");
    assert_eq!(status[0]["address"], "[fd77::1]:7700", "{status}");
}

#[test]
fn with_link_local_addresses_only_a_link_local_group_and_a_link_local_server_serve_both_ways() {
    if !lab_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, source, data) = key_and_payload(d, 67);
    let mut lab = Lab::up(2, "w");
    let server_address = lab.script(&["link-local", "s"]);
    assert!(server_address.starts_with("fe80::"), "{server_address}");
    for host in ["r1", "r2"] {
        lab.script(&["link-local", host]);
    }
    lab.script(&["loss", "r1", "3"]);
    lab.script(&["block-multicast", "r2"]);
    let key_s = path(&key);
    let group = "[ff12::77]:7700";
    let cache = d.join("cache");
    let server = [
        "serve",
        path(&source),
        "-k",
        key_s,
        "-i",
        "eth0",
        "-g",
        group,
        "--rate",
        "80M",
        "--cache-dir",
        path(&cache),
    ];
    lab.start("s", &d.join("s.log"), &server);
    let server_flag = format!("[{server_address}]");
    let out: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("out{i}"))).collect();
    let logs: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("r{i}.log"))).collect();
    let mut receivers = Vec::new();
    for i in 0..2 {
        let mut args = vec![
            "recv",
            "-k",
            key_s,
            "-i",
            "eth0",
            "-g",
            group,
            "-o",
            path(&out[i]),
            "--timeout",
            "90",
        ];
        if i == 1 {
            args.extend(["--server", &server_flag]);
        }
        receivers.push(lab.start(&format!("r{}", i + 1), &logs[i], &args));
    }
    assert_all_received(&mut lab, &receivers, &logs, &out, &data);
    let log = |i: usize| std::fs::read_to_string(&logs[i]).unwrap();
    assert!(log(0).contains("over [ff12::78]:7701"), "{}", log(0));
    assert!(
        counter(&log(0), "naks_sent") > 0.0,
        "r1 lost 3% yet sent no NAK: {}",
        log(0)
    );
    let unicast_from = format!("over unicast from [{server_address}]:7700");
    assert!(log(1).contains(&unicast_from), "{}", log(1));
}

#[test]
fn over_ipv6_a_push_reaches_two_agents_with_no_group_given_anywhere() {
    if !lab_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, source, data) = key_and_payload(d, 68);
    let mut lab = Lab::up(2, "x");
    let key_s = path(&key);
    // No -g: with an IPv6 director the server takes the IPv6 default group.
    let (_, serve_log) = director_and_server(&mut lab, d, key_s, &source, &[]);
    let out: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("node{i}"))).collect();
    for (i, out) in out.iter().enumerate() {
        let (node, addr) = (format!("node-{}", i + 1), format!("fd77::{}", 11 + i));
        let agent = [
            "agent",
            "-k",
            key_s,
            "--director",
            "fd77::1",
            "--node",
            &node,
            "-i",
            &addr,
            "-o",
            path(out),
        ];
        lab.start(
            &format!("r{}", i + 1),
            &d.join(format!("{node}.log")),
            &agent,
        );
    }
    let push = [
        "push",
        "payload.bin",
        "-k",
        key_s,
        "--to",
        "node-1,node-2",
        "--director",
        "fd77::1",
        "--deadline",
        "90s",
    ];
    let push_log = d.join("push.log");
    let pushed = lab.start("s", &push_log, &push);
    let status = lab.wait(pushed, Duration::from_secs(100));
    let text = std::fs::read_to_string(&push_log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "push: {status:?}\n{text}"
    );
    for dir in &out {
        assert!(std::fs::read(dir.join("payload.bin")).unwrap() == data);
    }
    let serve_text = std::fs::read_to_string(&serve_log).unwrap();
    assert!(serve_text.contains("on [ff15::77:1]:7700"), "{serve_text}");
}
