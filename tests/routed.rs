//! A routed site in the namespace lab (`scripts/lab.sh segments`): segments
//! joined by routers that forward unicast and no multicast. Root only; skipped
//! without it unless LOOPCAST_LAB_REQUIRED=1. The baseline relays are measured
//! against: without them, every node behind a router takes its own copy.

mod common;

use common::*;
use std::path::PathBuf;

/// The lab's multicast group (the sender's segment only: routers do not forward it).
const SITE_GROUP: &str = "239.77.0.1:7700";

#[test]
fn without_relays_each_node_behind_a_router_takes_its_own_copy_across_it() {
    if !lab_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, source, data) = key_and_payload(d, 31);
    let mut lab = Lab::segments(&[1, 3], "r");
    let (key_s, cache) = (path(&key), d.join("cache"));
    let serve = [
        "serve",
        path(&source),
        "-k",
        key_s,
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
