//! `loopcast relay` through the real binary on loopback: a server on one
//! group, a relay taking its file and serving it on a second group as it
//! arrives, a receiver on the second group. Groups 239.252.N.1, ports
//! 29800 + 10·N.

mod common;

use common::{Running, loopback_serve, loopcast_cmd, new_key, path, start_logged, wait_for_path};
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

fn group(n: u16) -> String {
    format!("239.252.{n}.1:{}", 29800 + 10 * n)
}

#[test]
fn a_receiver_behind_a_relay_takes_the_file_while_the_relay_still_receives_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = new_key(d);
    // 24 MB, half random, packed: at 40 Mbit/s a loop of about 3 s upstream.
    let mut data = vec![0u8; 24_000_000];
    rand::rngs::StdRng::seed_from_u64(8).fill_bytes(&mut data[..12_000_000]);
    let (file, archive) = (d.join("big.bin"), d.join("big.lcar"));
    std::fs::write(&file, &data).unwrap();
    let packed = loopcast_cmd(&["pack", path(&file), "-k", path(&key), "-o", path(&archive)])
        .output()
        .unwrap();
    assert!(packed.status.success());
    let (upstream, downstream, cache) = (group(1), group(2), d.join("cache"));
    let mut serve = loopback_serve(path(&key), &upstream, "40M", path(&cache));
    serve.push(path(&archive));
    let _server = start_logged(d, "serve.log", &serve);
    let (relay_dir, out) = (d.join("relay"), d.join("out"));
    let relay_args = [
        "relay",
        "big.bin",
        "-k",
        path(&key),
        "-i",
        "127.0.0.1",
        "-g",
        &upstream,
        "-o",
        path(&relay_dir),
        "--relay-group",
        &downstream,
        "--relay-interface",
        "127.0.0.1",
        "--relay-rate",
        "400M",
        "--relay-packet-size",
        "1500",
    ];
    let mut relay = start_logged(d, "relay.log", &relay_args);
    let g = downstream.as_str();
    let receiver = loopcast_cmd(&["recv", "-k", path(&key), "-i", "127.0.0.1", "-g", g])
        .args(["-o", path(&out), "--timeout", "60"])
        .stderr(std::fs::File::create(d.join("recv.log")).unwrap())
        .spawn()
        .unwrap();
    let mut receiver = Running(receiver);
    // Cut-through: the receiver holds packets (its map is saved) while the
    // relay has not the whole archive yet.
    let (kept, held) = (
        relay_dir.join("big.bin.lcar"),
        out.join(".loopcast-partial/big.bin.map"),
    );
    let start = Instant::now();
    let mut before_the_relay = false;
    while !kept.exists() && start.elapsed() < Duration::from_secs(60) {
        before_the_relay |= held.exists() && !kept.exists();
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = receiver.0.wait().unwrap();
    let log = std::fs::read_to_string(d.join("recv.log")).unwrap();
    assert!(status.success(), "{log}");
    assert!(
        before_the_relay,
        "nothing held before the relay had it all: {log}"
    );
    assert!(log.contains("over 239.252.2."), "{log}");
    assert!(std::fs::read(out.join("big.bin")).unwrap() == data);
    // The relay kept the server's very archive, and verified the file.
    assert!(wait_for_path(
        &relay_dir.join("big.bin"),
        Duration::from_secs(30)
    ));
    assert!(std::fs::read(&kept).unwrap() == std::fs::read(&archive).unwrap());
    // SIGTERM: the relay stops as a server does.
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    unsafe { libc::kill(relay.0.id() as i32, libc::SIGTERM) };
    let code = relay.0.wait().unwrap().code();
    let relay_log = std::fs::read_to_string(d.join("relay.log")).unwrap();
    assert_eq!(code, Some(0), "{relay_log}");
    assert!(relay_log.contains("relaying as it arrives"), "{relay_log}");
}
