//! A routed site in the namespace lab (`scripts/lab.sh segments`): segments
//! joined by routers that forward unicast and no multicast. Root only; skipped
//! without it unless LOOPCAST_LAB_REQUIRED=1. The baseline relays are measured
//! against: without them, every node behind a router takes its own copy.

mod common;

use common::*;
use std::path::PathBuf;

/// The lab's multicast group (the sender's segment only: routers do not forward it).
const SITE_GROUP: &str = "239.77.0.1:7700";

/// A routed site of `hosts` per segment (lab tag `tag`) with the server in
/// segment a looping a 24 MB payload (seed `seed`) at 200 Mbit/s: the test's
/// directory (key, payload, the server's cache), the lab, the key, the payload.
fn site(hosts: &[usize], tag: &str, seed: u64) -> (tempfile::TempDir, Lab, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, source, data) = key_and_payload(d, seed);
    let mut lab = Lab::segments(hosts, tag);
    let cache = d.join("cache");
    let serve = [
        "serve",
        path(&source),
        "-k",
        path(&key),
        "-i",
        "10.77.1.1",
        "-g",
        SITE_GROUP,
        "--rate",
        "200M",
        "--cache-dir",
        path(&cache),
    ];
    lab.start("s", &d.join("s.log"), &serve);
    (dir, lab, key, data)
}

#[test]
fn without_relays_each_node_behind_a_router_takes_its_own_copy_across_it() {
    if !lab_available() {
        return;
    }
    let (dir, mut lab, key, data) = site(&[1, 3], "r", 31);
    let (d, key_s, cache) = (dir.path(), path(&key), dir.path().join("cache"));
    let before = lab.link_bytes("ab", 'b');
    let hosts = ["a1", "b1", "b2", "b3"];
    let out: Vec<PathBuf> = hosts.iter().map(|h| d.join(format!("out-{h}"))).collect();
    let logs: Vec<PathBuf> = hosts.iter().map(|h| d.join(format!("{h}.log"))).collect();
    let mut children = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let addr = lab.script(&["addr", host]);
        let mut args = vec!["recv", "-k", key_s, "-i", &addr, "-o", path(&out[i])];
        args.extend(["--timeout", "90"]);
        if host.starts_with('b') {
            // Behind the router no multicast is heard: unicast from the server.
            args.extend(["--unicast", "--server", "10.77.1.1"]);
        } else {
            args.extend(["-g", SITE_GROUP]);
        }
        children.push(lab.start(host, &logs[i], &args));
    }
    assert_all_received(&mut lab, &children, &logs, &out, &data);
    let crossed = lab.link_bytes("ab", 'b') - before;
    let archive = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "lcar"))
        .map(|e| e.metadata().unwrap().len())
        .expect("the server's archive in its cache");
    let copies = crossed as f64 / archive as f64;
    eprintln!("{crossed} bytes into segment b for a {archive}-byte archive: {copies:.2} copies");
    // Three unicast streams: three copies (and their headers, repairs and STATUS).
    assert!((2.8..3.6).contains(&copies), "{copies:.2} copies");
    let a1 = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(a1.contains("over 239.77."), "a1 took multicast: {a1}");
}

/// `relay` arguments for host `addr` taking `name` by unicast from `upstream`
/// and serving it on `SITE_GROUP` in its own segment, keeping it in `dir`.
fn relay_args<'a>(key: &'a str, addr: &'a str, upstream: &'a str, dir: &'a str) -> Vec<&'a str> {
    vec![
        "relay",
        "payload.bin",
        "-k",
        key,
        "-i",
        addr,
        "--unicast",
        "--server",
        upstream,
        "-o",
        dir,
        "--relay-group",
        SITE_GROUP,
        "--relay-interface",
        addr,
        "--relay-rate",
        "200M",
        "--timeout",
        "90",
    ]
}

/// `recv` arguments for host `addr` on its segment's `SITE_GROUP`, into `out`.
fn segment_recv<'a>(key: &'a str, addr: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut args = vec!["recv", "-k", key, "-i", addr, "-o", out, "-g", SITE_GROUP];
    args.extend(["--timeout", "90"]);
    args
}

#[test]
fn a_relay_in_each_segment_brings_one_copy_across_each_router() {
    if !lab_available() {
        return;
    }
    // a: the server; b: a relay and three receivers; c (behind b): a relay
    // fed by b's, and two receivers.
    let (dir, mut lab, key, data) = site(&[0, 4, 3], "t", 32);
    let (d, key_s) = (dir.path(), path(&key));
    let before = (lab.link_bytes("ab", 'b'), lab.link_bytes("bc", 'c'));
    let (relay_b, relay_c) = (d.join("relay-b1"), d.join("relay-c1"));
    let rb = relay_args(key_s, "10.77.2.11", "10.77.1.1:7700", path(&relay_b));
    lab.start("b1", &d.join("b1.log"), &rb);
    let rc = relay_args(key_s, "10.77.3.11", "10.77.2.11:7700", path(&relay_c));
    lab.start("c1", &d.join("c1.log"), &rc);
    let hosts = ["b2", "b3", "b4", "c2", "c3"];
    let out: Vec<PathBuf> = hosts.iter().map(|h| d.join(format!("out-{h}"))).collect();
    let logs: Vec<PathBuf> = hosts.iter().map(|h| d.join(format!("{h}.log"))).collect();
    let mut children = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let addr = lab.script(&["addr", host]);
        let args = segment_recv(key_s, &addr, path(&out[i]));
        children.push(lab.start(host, &logs[i], &args));
    }
    assert_all_received(&mut lab, &children, &logs, &out, &data);
    for relay in [&relay_b, &relay_c] {
        assert!(
            wait_for_path(
                &relay.join("payload.bin"),
                std::time::Duration::from_secs(60)
            ),
            "{} did not verify the file",
            relay.display()
        );
    }
    let archive = std::fs::metadata(relay_b.join("payload.bin.lcar"))
        .unwrap()
        .len();
    let into_b = (lab.link_bytes("ab", 'b') - before.0) as f64 / archive as f64;
    let into_c = (lab.link_bytes("bc", 'c') - before.1) as f64 / archive as f64;
    eprintln!("copies of the archive into b: {into_b:.2}, into c: {into_c:.2}");
    // One copy each (the relay's stream, its headers, STATUS and repairs), where
    // without relays b's three and c's two receivers took 3 and 2 (and c's
    // crossed b too).
    assert!(
        into_b <= 1.3 && into_c <= 1.3,
        "b {into_b:.2}, c {into_c:.2}"
    );
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.contains("over 239.77."),
            "not over its segment's relay: {text}"
        );
    }
}
