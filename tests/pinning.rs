//! Jobs pinned to an archive (T41), through the binary on loopback: two
//! servers carry different files under one name (a key holder's own bytes
//! among them, the less loaded). A push of the bare name is refused as
//! ambiguous; a push of NAME@ARCHIVE delivers that archive's bytes to the
//! node, whichever server ranks first; `recv NAME@ARCHIVE` takes only it.

mod common;

use common::{loopback_serve, loopcast_cmd, path, recv_via_director, start_logged, wait_for_log};
use std::path::Path;
use std::time::{Duration, Instant};

const BASE: u16 = 26000;

fn random(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    data
}

#[test]
fn a_job_names_one_archive_and_the_node_gets_its_bytes_whichever_server_ranks_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = common::new_key(d);
    let director = format!("127.0.0.1:{}", BASE + 5);
    let _director = start_logged(
        d,
        "director.log",
        &["director", "-k", path(&key), "--listen", &director],
    );
    // The genuine file, and another under its name (on another server, less loaded).
    std::fs::create_dir_all(d.join("good")).unwrap();
    std::fs::create_dir_all(d.join("evil")).unwrap();
    let good = random(&d.join("good/f.bin"), 400_000, 1);
    let evil = random(&d.join("evil/f.bin"), 400_000, 2);
    let server = |n: u16, file: &str, extra: &[&str]| {
        let group = format!("239.254.{}.1:{}", 60 + n, BASE + 10 * n);
        let cache = d.join(format!("cache{n}"));
        let mut args = loopback_serve(path(&key), &group, "20M", path(&cache));
        args.extend(["--director", &director, file]);
        args.extend(extra);
        start_logged(d, &format!("serve{n}.log"), &args)
    };
    let good_path = d.join("good/f.bin");
    let evil_path = d.join("evil/f.bin");
    let _good = server(1, path(&good_path), &["--capacity", "1M"]);
    let _evil = server(2, path(&evil_path), &[]);
    let out = d.join("out");
    let _agent = start_logged(
        d,
        "agent.log",
        &[
            "agent",
            "-k",
            path(&key),
            "--director",
            &director,
            "-i",
            "127.0.0.1",
            "--node",
            "n1",
            "-o",
            path(&out),
        ],
    );
    // Both archives listed, the node registered.
    let api = format!("http://127.0.0.1:{}", BASE + 6);
    let digest = blake3::hash(&good).to_hex().to_string();
    let start_at = Instant::now();
    // Both ids from one listing: the genuine archive, and the other.
    let (archive, evil_id) = loop {
        let files: serde_json::Value = ureq::get(&format!("{api}/v1/files"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let versions = files[0]["versions"].as_array().cloned().unwrap_or_default();
        if versions.len() == 2 {
            let id = |genuine: bool| {
                let v = (versions.iter())
                    .find(|v| (v["blake3"] == digest.as_str()) == genuine)
                    .unwrap();
                v["archive_id"].as_str().unwrap().to_owned()
            };
            break (id(true), id(false));
        }
        assert!(start_at.elapsed() < Duration::from_secs(20), "{files}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(wait_for_log(
        &d.join("director.log"),
        "node n1 registered",
        Duration::from_secs(10)
    ));
    let push = |name: &str| {
        loopcast_cmd(&[
            "push",
            name,
            "-k",
            path(&key),
            "--to",
            "n1",
            "--director",
            &director,
        ])
        .args(["--deadline", "60s"])
        .output()
        .unwrap()
    };
    // Unpinned, a receiver takes the less loaded server: the other bytes.
    let ranked = d.join("ranked");
    let got = recv_via_director(&key, &director, "f.bin", &ranked, "30")
        .output()
        .unwrap();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(
        std::fs::read(ranked.join("f.bin")).unwrap(),
        evil,
        "the premise: it ranks first"
    );
    // The bare name: refused, naming both archives.
    let bare = push("f.bin");
    let err = String::from_utf8_lossy(&bare.stderr);
    assert_eq!(bare.status.code(), Some(2), "{err}");
    assert!(err.contains("on air as 2 archives"), "{err}");
    // Pinned: the node gets the genuine bytes.
    let pinned = push(&format!("f.bin@{archive}"));
    let err = String::from_utf8_lossy(&pinned.stderr);
    assert!(pinned.status.success(), "{err}");
    assert_eq!(std::fs::read(out.join("f.bin")).unwrap(), good);
    // recv NAME@ARCHIVE of the other takes only that one.
    let other = d.join("other");
    let pinned_name = format!("f.bin@{evil_id}");
    let got = recv_via_director(&key, &director, &pinned_name, &other, "30")
        .output()
        .unwrap();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(std::fs::read(other.join("f.bin")).unwrap(), evil);
}
