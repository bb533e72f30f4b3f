//! A stalled job store does not stall the director (spec T42): etcd on
//! loopback is stopped (SIGSTOP) while a job moves. The director's UDP loop
//! goes on hearing its server and answering look-ups; once etcd is back, the
//! job completes. Needs `etcd` (`.ci/run` installs it). Ports 28100 and up.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ETCD: &str = "http://127.0.0.1:28100";
const DIRECTOR: &str = "127.0.0.1:28102";
const API: &str = "127.0.0.1:28103";

/// GET `path` from the director's API, as JSON (None: no answer in 2 s).
fn get(path: &str) -> Option<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let mut answer = agent.get(&format!("http://{API}{path}")).call().ok()?;
    serde_json::from_str(&answer.body_mut().read_to_string().ok()?).ok()
}

/// Waits up to `secs` for `ready`, else fails naming `what`.
fn wait_for(what: &str, secs: u64, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what} within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stopped_etcd_stalls_neither_heartbeats_nor_look_ups_and_the_job_completes_after() {
    if !etcd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key_file = new_key(d);
    let key = path(&key_file);
    let etcd = Command::new("etcd")
        .args(["--data-dir", path(&d.join("etcd"))])
        .args([
            "--listen-client-urls",
            ETCD,
            "--advertise-client-urls",
            ETCD,
        ])
        .args(["--listen-peer-urls", "http://127.0.0.1:28101"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:28101"])
        .args(["--initial-cluster", "default=http://127.0.0.1:28101"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("etcd.log")).unwrap())
        .spawn()
        .unwrap();
    let mut etcd = Running(etcd);
    let signal = |name: &str, pid: u32| {
        let sent = Command::new("kill").args([name, &pid.to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {name}");
    };
    let _director = start_logged(
        d,
        "director.log",
        &[
            "director",
            "-k",
            key,
            "--listen",
            DIRECTOR,
            "--http",
            API,
            "--etcd",
            ETCD,
            "--etcd-prefix",
            "/stall",
        ],
    );
    wait_for("the director scheduling", 20, || {
        get("/v1/status").is_some_and(|s| s["scheduling"] == true)
    });
    // 16 MB at 8 Mbit/s: the job moves for about 16 s.
    let payload = d.join("payload.bin");
    let mut data = vec![0u8; 16_000_000];
    rand::Rng::fill_bytes(
        &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(42),
        &mut data,
    );
    std::fs::write(&payload, &data).unwrap();
    let cache = d.join("cache");
    let mut serve = loopback_serve(key, "239.255.150.1:28105", "8M", path(&cache));
    serve.extend([
        "--unicast-port",
        "28104",
        "--director",
        DIRECTOR,
        path(&payload),
    ]);
    let _server = start_logged(d, "serve.log", &serve);
    let out = d.join("out");
    let _agent = start_logged(
        d,
        "agent.log",
        &loopback_agent(key, "n1", DIRECTOR, path(&out)),
    );
    wait_for("the node and the file known", 15, || {
        let node = get("/v1/nodes").is_some_and(|n| n[0]["reachable"] == true);
        node && get("/v1/files").is_some_and(|f| f[0]["name"] == "payload.bin")
    });
    let push_log = d.join("push.log");
    let push = loopcast_cmd(&[
        "push",
        "payload.bin",
        "-k",
        key,
        "--to",
        "n1",
        "--director",
        DIRECTOR,
    ])
    .stdout(std::fs::File::create(&push_log).unwrap())
    .stderr(
        std::fs::File::options()
            .append(true)
            .open(&push_log)
            .unwrap(),
    )
    .spawn()
    .unwrap();
    let mut push = Running(push);
    wait_for("the node receiving", 15, || {
        (out.join(".loopcast-partial").read_dir()).is_ok_and(|mut d| d.next().is_some())
    });
    std::thread::sleep(Duration::from_secs(1));
    // etcd stops answering for 7 s: the job's progress cannot be written.
    signal("-STOP", etcd.0.id());
    let stopped = Instant::now();
    let (mut polls, mut unlisted, mut oldest_heartbeat) = (0, 0, 0.0f64);
    let mut looked_up = None;
    while stopped.elapsed() < Duration::from_secs(7) {
        polls += 1;
        let servers = get("/v1/servers").unwrap_or_default();
        match servers[0]["last_heard_s"].as_f64() {
            Some(age) => oldest_heartbeat = oldest_heartbeat.max(age),
            None => unlisted += 1,
        }
        // Midway, a look-up of a name no server carries: answered at once
        // (exit 4) by a loop that is not waiting on etcd.
        if looked_up.is_none() && stopped.elapsed() > Duration::from_secs(3) {
            let none = d.join("none");
            let asked = recv_via_director(&key_file, DIRECTOR, "absent.bin", &none, "3")
                .output()
                .unwrap();
            looked_up = asked.status.code();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    signal("-CONT", etcd.0.id());
    let resumed = stopped.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(d.join("director.log")).unwrap();
    println!(
        "etcd stopped {resumed:.1} s: {polls} polls, server unlisted in {unlisted}, oldest heartbeat {oldest_heartbeat:.1} s; a look-up exited {looked_up:?}"
    );
    // The stall reached the director: a write waited for etcd and gave up.
    assert!(log.contains("/v3/kv/txn: no answer in time"), "{log}");
    assert_eq!(unlisted, 0, "the server was declared down during the stall");
    // Heartbeats come every second; 1.5 s leaves room for a late one.
    assert!(
        oldest_heartbeat <= 1.5,
        "a heartbeat waited {oldest_heartbeat} s"
    );
    assert_eq!(looked_up, Some(4), "the look-up was not answered");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = push.0.try_wait().unwrap() {
            break status;
        }
        let shown = std::fs::read_to_string(&push_log).unwrap_or_default();
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the push did not end: {shown}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let shown = std::fs::read_to_string(&push_log).unwrap_or_default();
    assert!(status.success(), "{shown}");
    assert!(std::fs::read(out.join("payload.bin")).unwrap() == data);
    etcd.crash();
}
