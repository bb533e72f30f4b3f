//! The namespace lab for integration tests: a lab per test built by
//! `scripts/lab.sh` (root only), named uniquely and torn down, processes first,
//! even when the test fails.
#![allow(dead_code)] // each test file uses its own part of it

use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_loopcast");
pub const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lab.sh");
pub const GROUP: &str = "239.77.0.1:7700";

/// A lab brought up for one test and torn down (processes first) when dropped.
pub struct Lab {
    pub prefix: String,
    pub children: Vec<Child>,
}

impl Lab {
    /// A lab named after this process and `tag` (tests in one process run side by side).
    pub fn up(receivers: usize, tag: &str) -> Lab {
        let prefix = format!("lct{}{tag}", std::process::id() % 1_000_000);
        let lab = Lab {
            prefix,
            children: Vec::new(),
        };
        lab.script(&["up", &receivers.to_string()]);
        lab
    }

    /// A routed site (`lab.sh segments`): `hosts[k]` hosts in segment k (a, b,
    /// ...), the sender in segment a, routers between neighbouring segments.
    pub fn segments(hosts: &[usize], tag: &str) -> Lab {
        let prefix = format!("lct{}{tag}", std::process::id() % 1_000_000);
        let lab = Lab {
            prefix,
            children: Vec::new(),
        };
        let counts: Vec<String> = hosts.iter().map(|n| n.to_string()).collect();
        let mut args = vec!["segments"];
        args.extend(counts.iter().map(String::as_str));
        lab.script(&args);
        lab
    }

    /// Bytes router `router` (ab, bc, ...) has sent into segment `segment` (b, ...).
    pub fn link_bytes(&self, router: &str, segment: char) -> u64 {
        let said = self.script(&["link-bytes", router]);
        (said.split_whitespace())
            .find_map(|kv| kv.strip_prefix(&format!("{segment}=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no bytes into {segment} in {said:?}"))
    }

    /// Runs `lab.sh ARGS` on this lab (it must succeed); what it printed.
    pub fn script(&self, args: &[&str]) -> String {
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
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts loopcast in host `host` (s, r1, ...) with its log in `log`; returns its index.
    pub fn start(&mut self, host: &str, log: &Path, args: &[&str]) -> usize {
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-{host}", self.prefix), BIN])
            .args(args)
            .env("RUST_LOG", WITH_COUNTERS)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    /// Runs this test binary's ignored helper test `helper` in host `host`, with
    /// `env`; returns what it printed (it must succeed).
    pub fn run_helper(&self, host: &str, helper: &str, env: &[(&str, &str)]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{}-{host}", self.prefix)])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", helper, "--ignored", "--nocapture"])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{helper} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Like `run_helper`, in the background: the helper's exit is the caller's to await.
    pub fn spawn_helper(
        &mut self,
        host: &str,
        helper: &str,
        env: &[(&str, &str)],
        log: &Path,
    ) -> usize {
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{}-{host}", self.prefix)])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", helper, "--ignored", "--nocapture"])
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    /// Waits for child `i` to exit, for at most `limit`.
    pub fn wait(&mut self, i: usize, limit: Duration) -> Option<ExitStatus> {
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

/// Waits for each receiver `children[i]` (100 s at most) and checks that it
/// exited 0 with `out[i]/payload.bin` equal to `data`; its log is `logs[i]`.
pub fn assert_all_received(
    lab: &mut Lab,
    children: &[usize],
    logs: &[PathBuf],
    out: &[PathBuf],
    data: &[u8],
) {
    for (i, &child) in children.iter().enumerate() {
        let status = lab.wait(child, Duration::from_secs(100));
        let text = std::fs::read_to_string(&logs[i]).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "r{} did not finish: {status:?}\n{text}",
            i + 1
        );
        let got = std::fs::read(out[i].join("payload.bin")).unwrap();
        assert!(got == data, "r{}: output differs from the source", i + 1);
    }
}

pub fn lab_available() -> bool {
    let root = running_as_root();
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

pub fn recv_args<'a>(key: &'a str, iface: &'a str, out: &'a str) -> Vec<&'a str> {
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

/// `serve SOURCE` at 80 Mbit/s from the lab's sender address.
pub fn serve_args<'a>(source: &'a str, key: &'a str, cache: &'a str) -> Vec<&'a str> {
    vec![
        "serve",
        source,
        "-k",
        key,
        "-i",
        "10.77.0.1",
        "-g",
        GROUP,
        "--rate",
        "80M",
        "--cache-dir",
        cache,
    ]
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A new key and a 24 MB random payload in `d`: (key file, payload file, payload).
pub fn key_and_payload(d: &Path, seed: u64) -> (PathBuf, PathBuf, Vec<u8>) {
    let key = d.join("key");
    assert!(
        Command::new(BIN)
            .args(["keygen", "-o", path(&key)])
            .output()
            .unwrap()
            .status
            .success()
    );
    let mut data = vec![0u8; 24_000_000];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let source = d.join("payload.bin");
    std::fs::write(&source, &data).unwrap();
    (key, source, data)
}

/// Waits until `path` exists, for at most `limit`; returns whether it does.
pub fn wait_for_path(path: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while !path.exists() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    path.exists()
}

/// Waits until `log` contains `needle`, for at most `limit`; returns whether it did.
pub fn wait_for_log(log: &Path, needle: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The log filter that adds a receiver's counters (key=value lines) to its log.
pub const WITH_COUNTERS: &str = "info,loopcast::counters=debug";

/// The value of `key` in the last counters line of a receiver's `log` (run
/// with `RUST_LOG=WITH_COUNTERS`): `counter(log, "naks_sent")`.
pub fn counter(log: &str, key: &str) -> f64 {
    let needle = format!(" {key}=");
    (log.lines().rev())
        .filter(|l| l.contains("counters: ") || l.contains("all held: "))
        .find_map(|l| l.split(&needle).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter {key:?} in: {log}"))
}

/// Reads `key=value` from the probe helper's output line.
pub fn probe_value(output: &str, key: &str) -> u64 {
    output
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in probe output: {output}"))
}

/// A UDP socket bound to multicast `group` and joined to it on `iface` (for the
/// helpers that run inside a lab namespace).
pub fn join_group(group: std::net::SocketAddrV4, iface: std::net::Ipv4Addr) -> std::net::UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&group.into()).unwrap();
    s.join_multicast_v4(group.ip(), &iface).unwrap();
    s.into()
}

/// The channel group each line of `loopcast ls` output lists (one per server
/// file line, header skipped).
pub fn channels_listed(listing: &str) -> std::collections::HashSet<&str> {
    listing
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("239.")))
        .collect()
}

/// POSTs `body` (JSON) to `http://ip:port/path` from inside host `host` of
/// `lab`; the answer's JSON body, if any.
pub fn http_post_in(
    lab: &Lab,
    host: &str,
    ip: &str,
    port: u16,
    path: &str,
    body: &str,
) -> Option<serde_json::Value> {
    let request = format!(
        "POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http_in(lab, host, ip, port, request)
}

/// GETs `http://ip:port/path` from inside host `host`; the answer's JSON body.
pub fn http_get_in(
    lab: &Lab,
    host: &str,
    ip: &str,
    port: u16,
    path: &str,
) -> Option<serde_json::Value> {
    http_in(lab, host, ip, port, format!("GET {path} HTTP/1.0\r\n\r\n"))
}

/// Sends `request` to ip:port over TCP from inside host `host` (bash's
/// /dev/tcp: the lab's addresses are reachable only from its namespaces); the
/// answer's JSON body, if any.
fn http_in(
    lab: &Lab,
    host: &str,
    ip: &str,
    port: u16,
    request: String,
) -> Option<serde_json::Value> {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port} && printf '%s' \"$REQUEST\" >&3 && cat <&3");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}-{host}", lab.prefix),
            "bash",
            "-c",
            &script,
        ])
        .env("REQUEST", request)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (_, body) = text.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// A small tmpfs mounted for one test and unmounted when it ends.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. "1m") on a new directory `at`; None
    /// where that cannot be done (not root), which fails under
    /// LOOPCAST_LAB_REQUIRED (CI runs as root: there the test must not skip).
    pub fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status();
        if mounted.is_ok_and(|s| s.success()) {
            return Some(SmallDisk(at.to_path_buf()));
        }
        assert!(
            std::env::var_os("LOOPCAST_LAB_REQUIRED").is_none(),
            "cannot mount a tmpfs, and LOOPCAST_LAB_REQUIRED is set"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        None
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A child process killed when the test ends, pass or fail.
pub struct Running(pub Child);

impl Running {
    /// SIGKILL, as a crash (also what the drop does).
    pub fn crash(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Whether `etcd` is installed (required under LOOPCAST_LAB_REQUIRED).
pub fn etcd_available() -> bool {
    if Command::new("etcd").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("LOOPCAST_LAB_REQUIRED").is_none(),
        "etcd is required (.ci/run installs etcd-server)"
    );
    eprintln!("skipping: etcd is missing");
    false
}

/// Whether these tests run as root.
pub fn running_as_root() -> bool {
    (Command::new("id").arg("-u").output()).is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// The binary with `args`, logging at info, taking no key from the environment.
pub fn loopcast_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("RUST_LOG", "info")
        .env_remove("LOOPCAST_KEY");
    c
}

/// `agent` arguments on loopback: node `node` under `key`, reporting to
/// `director`, receiving into `out`.
pub fn loopback_agent<'a>(
    key: &'a str,
    node: &'a str,
    director: &'a str,
    out: &'a str,
) -> [&'a str; 11] {
    [
        "agent",
        "-k",
        key,
        "--node",
        node,
        "-i",
        "127.0.0.1",
        "--director",
        director,
        "--out",
        out,
    ]
}

/// `serve` on loopback with `key`, `group`, `rate` and `cache`; files and
/// other flags follow.
pub fn loopback_serve<'a>(
    key: &'a str,
    group: &'a str,
    rate: &'a str,
    cache: &'a str,
) -> Vec<&'a str> {
    let i = "127.0.0.1";
    vec![
        "serve",
        "-k",
        key,
        "-i",
        i,
        "-g",
        group,
        "--rate",
        rate,
        "--cache-dir",
        cache,
    ]
}

/// `recv NAME` on loopback, told only `director`, into `out`, giving up after
/// `timeout` seconds.
pub fn recv_via_director(
    key: &Path,
    director: &str,
    name: &str,
    out: &Path,
    timeout: &str,
) -> Command {
    let mut c = loopcast_cmd(&["recv", name, "-k", path(key), "-i", "127.0.0.1"]);
    c.args([
        "--director",
        director,
        "-o",
        path(out),
        "--timeout",
        timeout,
    ]);
    c
}

/// Starts the binary with `args`, its log in `dir/log`; killed when dropped.
pub fn start_logged(dir: &Path, log: &str, args: &[&str]) -> Running {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    Running(
        loopcast_cmd(args)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// A new key at `dir/key`.
pub fn new_key(dir: &Path) -> PathBuf {
    let key = dir.join("key");
    let made = loopcast_cmd(&["keygen", "-o", path(&key)])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    key
}
