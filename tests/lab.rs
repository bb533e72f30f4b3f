//! Namespace lab test: a real broadcast between network namespaces built by
//! `scripts/lab.sh` (root only). The lab has a unique name per run and is removed
//! when the test ends, pass or fail. Without root the test is skipped, unless
//! LOOPCAST_LAB_REQUIRED=1 (CI sets it) makes that a failure.

use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_loopcast");
const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lab.sh");
const GROUP: &str = "239.77.0.1:7700";

/// A lab brought up for one test and torn down (processes first) when dropped.
struct Lab {
    prefix: String,
    children: Vec<Child>,
}

impl Lab {
    fn up(receivers: usize) -> Lab {
        let prefix = format!("lct{}", std::process::id() % 1_000_000);
        let lab = Lab {
            prefix,
            children: Vec::new(),
        };
        lab.script(&["up", &receivers.to_string()]);
        lab
    }

    fn script(&self, args: &[&str]) {
        let out = Command::new(LAB)
            .arg("-p")
            .arg(&self.prefix)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lab.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts loopcast in host `host` (s, r1, ...) with its log in `log`; returns its index.
    fn start(&mut self, host: &str, log: &Path, args: &[&str]) -> usize {
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-{host}", self.prefix), BIN])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    /// Waits for child `i` to exit, for at most `limit`.
    fn wait(&mut self, i: usize, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.children[i].try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(LAB)
            .args(["-p", &self.prefix, "down"])
            .status();
    }
}

fn lab_available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    let nft = Command::new("nft").arg("--version").output().is_ok();
    if root && nft {
        return true;
    }
    let why = if root { "nft is missing" } else { "not root" };
    assert!(
        std::env::var_os("LOOPCAST_LAB_REQUIRED").is_none(),
        "lab test required but {why}"
    );
    eprintln!("skipping the namespace lab test: {why}");
    false
}

fn recv_args<'a>(key: &'a str, iface: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "recv",
        "-k",
        key,
        "-i",
        iface,
        "-g",
        GROUP,
        "-o",
        out,
        "--timeout",
        "90",
    ]
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn four_receivers_with_loss_a_late_join_and_a_crash_all_get_identical_files() {
    if !lab_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("key");
    assert!(
        Command::new(BIN)
            .args(["keygen", "-o", path(&key)])
            .output()
            .unwrap()
            .status
            .success()
    );
    // 24 MB at 80 Mbit/s: about 2.5 s per loop.
    let mut data = vec![0u8; 24_000_000];
    rand::rngs::StdRng::seed_from_u64(77).fill_bytes(&mut data);
    let source = d.join("payload.bin");
    std::fs::write(&source, &data).unwrap();

    let mut lab = Lab::up(4);
    lab.script(&["loss", "r2", "5"]);
    let out: Vec<PathBuf> = (1..=4).map(|i| d.join(format!("out{i}"))).collect();
    let logs: Vec<PathBuf> = (1..=4).map(|i| d.join(format!("r{i}.log"))).collect();
    let key_s = path(&key);
    let (o1, o2, o4) = (path(&out[0]), path(&out[1]), path(&out[3]));
    let r1 = lab.start("r1", &logs[0], &recv_args(key_s, "10.77.0.11", o1));
    let r2 = lab.start("r2", &logs[1], &recv_args(key_s, "10.77.0.12", o2));
    let r4 = lab.start("r4", &logs[3], &recv_args(key_s, "10.77.0.14", o4));
    let cache = d.join("cache");
    lab.start(
        "s",
        &d.join("s.log"),
        &[
            "serve",
            path(&source),
            "-k",
            key_s,
            "-i",
            "10.77.0.1",
            "-g",
            GROUP,
            "--rate",
            "80M",
            "--cache-dir",
            path(&cache),
        ],
    );
    let started = Instant::now();

    // r4 is killed (SIGKILL) half way through its first loop, once its map is on disk.
    let map = out[3].join(".loopcast-partial").join("payload.bin.map");
    while !map.exists() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(map.exists(), "r4 persisted no received map");
    std::thread::sleep(Duration::from_millis(1000));
    lab.children[r4].kill().unwrap();
    lab.children[r4].wait().unwrap();
    assert!(
        !out[3].join("payload.bin").exists(),
        "r4 delivered its file before it was complete"
    );
    let log4b = d.join("r4b.log");
    let r4b = lab.start("r4", &log4b, &recv_args(key_s, "10.77.0.14", o4));

    // r3 starts 3 s after the sender.
    if let Some(wait) = Duration::from_secs(3).checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
    }
    let r3 = lab.start(
        "r3",
        &logs[2],
        &recv_args(key_s, "10.77.0.13", path(&out[2])),
    );

    for (name, i, log) in [
        ("r1", r1, &logs[0]),
        ("r2", r2, &logs[1]),
        ("r3", r3, &logs[2]),
        ("r4 (restarted)", r4b, &log4b),
    ] {
        let status = lab.wait(i, Duration::from_secs(100));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "{name} did not finish: {status:?}\n{text}"
        );
    }
    for (i, dir) in out.iter().enumerate() {
        let got = std::fs::read(dir.join("payload.bin"))
            .unwrap_or_else(|e| panic!("r{}: no output: {e}", i + 1));
        assert!(got == data, "r{}: output differs from the source", i + 1);
    }
    // r2 lost about 5% on the wire, so it must have asked for repairs.
    let log2 = std::fs::read_to_string(&logs[1]).unwrap();
    let naks: u64 = log2
        .split(" NAKs sent")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no NAK count in r2's log: {log2}"));
    assert!(naks > 0, "r2 lost packets yet sent no NAK: {log2}");
    let log4 = std::fs::read_to_string(&log4b).unwrap();
    assert!(log4.contains("resuming, "), "r4 did not resume: {log4}");
}
