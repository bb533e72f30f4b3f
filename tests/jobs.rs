//! Distribution jobs through the real binary on loopback: a director, a server,
//! agents and `push` (spec §10). Each test has its own group and ports (131 and
//! up, apart from e2e.rs's), and kills what it started, pass or fail.

mod common;

use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_loopcast");

use common::Running;

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A loopback site for test `n`: key, payloads, director and server ports.
struct Site {
    dir: tempfile::TempDir,
    key: PathBuf,
    n: u16,
}

impl Site {
    fn new(n: u16) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let out = Command::new(BIN)
            .args(["keygen", "-o", path(&key)])
            .output()
            .unwrap();
        assert!(out.status.success());
        Site { dir, key, n }
    }

    fn base(&self) -> u16 {
        21000 + self.n * 10
    }

    fn director_udp(&self) -> String {
        format!("127.0.0.1:{}", self.base())
    }

    fn director_http(&self) -> String {
        format!("127.0.0.1:{}", self.base() + 1)
    }

    fn file(&self, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
        // Random, so that packing does not shrink it.
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(len as u64 ^ self.n as u64).fill_bytes(&mut data);
        let p = self.dir.path().join(name);
        std::fs::write(&p, &data).unwrap();
        (p, data)
    }

    fn log(&self, name: &str) -> (PathBuf, std::fs::File) {
        let p = self.dir.path().join(format!("{name}.log"));
        let f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        (p, f)
    }

    fn director(&self, state: bool) -> Running {
        let (_, log) = self.log("director");
        let mut c = Command::new(BIN);
        c.args(["director", "-k", path(&self.key), "--json", "--listen"])
            .arg(self.director_udp())
            .arg("--http")
            .arg(self.director_http())
            .env("RUST_LOG", "info")
            .env_remove("STATE_DIRECTORY");
        if state {
            c.arg("--state").arg(self.dir.path().join("state"));
        }
        let child = c.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        Running(child)
    }

    fn server(&self, files: &[&Path], rate: &str) -> Running {
        let (_, log) = self.log("serve");
        let group = format!("239.255.{}.1:{}", self.n, self.base() + 2);
        let child = Command::new(BIN)
            .arg("serve")
            .args(files)
            .args([
                "-k",
                path(&self.key),
                "-i",
                "127.0.0.1",
                "-g",
                &group,
                "--rate",
                rate,
            ])
            .args(["--unicast-port", &(self.base() + 3).to_string()])
            .arg("--director")
            .arg(self.director_udp())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .unwrap();
        Running(child)
    }

    fn out(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("out-{node}"))
    }

    fn agent(&self, node: &str, extra: &[&str]) -> Running {
        let (_, log) = self.log(&format!("agent-{node}"));
        let child = Command::new(BIN)
            .args([
                "agent",
                "-k",
                path(&self.key),
                "--node",
                node,
                "-i",
                "127.0.0.1",
            ])
            .arg("--director")
            .arg(self.director_udp())
            .arg("--out")
            .arg(self.out(node))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Running(child)
    }

    fn loopcast(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).env("RUST_LOG", "info");
        c
    }

    /// `push FILES --to TARGETS` plus `extra`, run to its end.
    fn push(&self, files: &[&str], to: &str, extra: &[&str]) -> Output {
        self.loopcast(&["push"])
            .args(files)
            .args([
                "-k",
                path(&self.key),
                "--to",
                to,
                "--director",
                &self.director_udp(),
            ])
            .args(extra)
            .output()
            .unwrap()
    }

    fn jobs(&self, extra: &[&str]) -> Output {
        self.loopcast(&["jobs", "--director", &self.director_udp()])
            .args(extra)
            .output()
            .unwrap()
    }

    /// Waits until the director has heard every one of `nodes` and a server
    /// carrying `file` (what a push needs), at most 15 s.
    fn wait_ready(&self, nodes: &[&str], file: &str) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            let nodes_up = get(&self.director_http(), "/v1/nodes").is_some_and(|v| {
                nodes.iter().all(|n| {
                    (v.as_array().into_iter().flatten())
                        .any(|x| x["node"] == *n && x["reachable"] == true)
                })
            });
            let carried = get(&self.director_http(), "/v1/files")
                .is_some_and(|v| (v.as_array().into_iter().flatten()).any(|f| f["name"] == file));
            if nodes_up && carried {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the director did not hear {nodes:?} and {file} within 15 s");
    }
}

/// GET from the director's API with the binary's own client (`jobs --json` is
/// jobs-only): a tiny HTTP/1.0 exchange is enough for a test.
fn get(at: &str, path: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&get_text(at, path)?).ok()
}

/// The body of GET `path`.
fn get_text(at: &str, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(at).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {at}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_owned())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_push_reaches_three_agents_runs_their_hooks_and_says_who_has_it() {
    let site = Site::new(131);
    let (image, data) = site.file("image.bin", 3_000_000);
    let _director = site.director(false);
    let _server = site.server(&[&image], "200M");
    let hook = "printf '%s %s %s %s %s' \"$LOOPCAST_JOB\" \"$LOOPCAST_NAME\" \"$LOOPCAST_SIZE\" \"$LOOPCAST_BLAKE3\" \"$LOOPCAST_PATH\" > \"$LOOPCAST_PATH.hook\"";
    let agents: Vec<Running> = ["a", "b", "c"]
        .iter()
        .map(|n| site.agent(n, &["--on-complete", hook, "--json"]))
        .collect();
    site.wait_ready(&["a", "b", "c"], "image.bin");
    let targets = site.dir.path().join("targets");
    std::fs::write(&targets, "# the rack\na\nb  # second\n\nc\n").unwrap();
    let to = format!("@{}", path(&targets));
    let out = site.push(&["image.bin"], &to, &["--deadline", "2m", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // --json: one event per line, ending in the job's end with all three done.
    let events: Vec<serde_json::Value> = (stdout(&out).lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let end = events.last().unwrap();
    assert_eq!(end["event"], "job_end");
    assert_eq!(end["state"], "complete");
    assert_eq!(
        (end["done"].as_u64(), end["nodes"].as_u64()),
        (Some(3), Some(3))
    );
    let id = events[0]["job"].as_u64().unwrap();
    let digest = blake3::hash(&data).to_hex().to_string();
    for node in ["a", "b", "c"] {
        let file = site.out(node).join("image.bin");
        assert!(
            std::fs::read(&file).unwrap() == data,
            "{node}'s copy differs"
        );
        let hook = std::fs::read_to_string(site.out(node).join("image.bin.hook")).unwrap();
        let expected = format!("{id} image.bin 3000000 {digest} {}", file.display());
        assert_eq!(hook, expected);
    }
    // `jobs` lists it; `jobs ID` shows each node done; --json is the API's.
    let list = site.jobs(&[]);
    assert!(list.status.success());
    assert!(
        stdout(&list).contains(&format!("{id:<16} complete")),
        "{}",
        stdout(&list)
    );
    let one = stdout(&site.jobs(&[&id.to_string()]));
    assert_eq!(one.matches("100.0%  done").count(), 3, "{one}");
    let json: serde_json::Value =
        serde_json::from_slice(&site.jobs(&[&id.to_string(), "--json"]).stdout).unwrap();
    assert_eq!(json["counts"]["done"], 3);
    drop(agents);
}

#[test]
fn a_killed_agent_resumes_its_job_after_a_restart_and_the_push_completes() {
    let site = Site::new(132);
    // 12 MB at 40 Mbit/s: a loop of about 2.4 s, so the kill lands mid-file.
    let (image, data) = site.file("image.bin", 12_000_000);
    let _director = site.director(false);
    let _server = site.server(&[&image], "40M");
    let _a = site.agent("a", &[]);
    let mut b = site.agent("b", &[]);
    site.wait_ready(&["a", "b"], "image.bin");
    let push = site
        .loopcast(&["push", "image.bin", "-k", path(&site.key), "--to", "a,b"])
        .args(["--director", &site.director_udp(), "--deadline", "90s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill b (and with it its receiver) once it holds something, before it is done.
    let (b_log, _) = site.log("agent-b");
    let partial = site.out("b").join(".loopcast-partial");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20)
        && std::fs::read_dir(&partial).map_or(true, |d| d.count() == 0)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(700));
    b.crash();
    assert!(
        !std::fs::read_to_string(&b_log)
            .unwrap()
            .contains(": done, "),
        "b finished before the kill; the test proves nothing: {}",
        std::fs::read_to_string(&b_log).unwrap()
    );
    std::thread::sleep(Duration::from_secs(1));
    let _b = site.agent("b", &[]);
    let out = push.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("complete: 2 of 2 node(s) done"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        std::fs::read(site.out("b").join("image.bin")).unwrap(),
        data
    );
    let log = std::fs::read_to_string(&b_log).unwrap();
    assert!(log.contains("resuming"), "b started over: {log}");
}

#[test]
fn a_node_that_never_starts_is_named_when_the_deadline_passes() {
    let site = Site::new(133);
    let (image, _) = site.file("image.bin", 1_000_000);
    let _director = site.director(false);
    let _server = site.server(&[&image], "100M");
    let _a = site.agent("a", &[]);
    // d registers once, so it is a known node, then its agent is gone.
    let mut d = site.agent("d", &[]);
    site.wait_ready(&["a", "d"], "image.bin");
    d.crash();
    let out = site.push(&["image.bin"], "a,d", &["--deadline", "8s"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("with 1 node(s) not done: d") && err.contains("the deadline passed"),
        "{err}"
    );
    // /metrics counts the expired job and the silent node.
    let metrics = get_text(&site.director_http(), "/metrics").unwrap();
    for line in [
        "loopcast_director_jobs{state=\"expired\"} 1",
        "loopcast_director_nodes 2",
        "loopcast_director_nodes_unreachable 1",
        "loopcast_director_scheduling 1",
    ] {
        assert!(metrics.contains(line), "{line} missing: {metrics}");
    }
    // On the way, d was shown unreachable, and a done.
    let shown = stdout(&out);
    assert!(shown.contains("unreachable"), "{shown}");
    assert!(shown.contains("expired: 1 of 2 node(s) done"), "{shown}");
    assert!(site.out("a").join("image.bin").exists());
}

#[test]
fn two_pushes_at_once_from_two_clients_both_complete() {
    let site = Site::new(134);
    let (one, one_data) = site.file("one.bin", 4_000_000);
    let (two, two_data) = site.file("two.bin", 4_000_000);
    let _director = site.director(false);
    let _server = site.server(&[&one, &two], "100M");
    let _agents: Vec<Running> = ["a", "b", "c"].iter().map(|n| site.agent(n, &[])).collect();
    site.wait_ready(&["a", "b", "c"], "two.bin");
    let spawn = |file: &str, to: &str| {
        site.loopcast(&["push", file, "-k", path(&site.key), "--to", to])
            .args(["--director", &site.director_udp(), "--rate", "100M"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn("one.bin", "a,b");
    let second = spawn("two.bin", "b,c");
    for push in [first, second] {
        let out = push.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(
        std::fs::read(site.out("a").join("one.bin")).unwrap(),
        one_data
    );
    assert_eq!(
        std::fs::read(site.out("b").join("one.bin")).unwrap(),
        one_data
    );
    assert_eq!(
        std::fs::read(site.out("b").join("two.bin")).unwrap(),
        two_data
    );
    assert_eq!(
        std::fs::read(site.out("c").join("two.bin")).unwrap(),
        two_data
    );
    assert!(!site.out("c").join("one.bin").exists());
}

#[test]
fn bad_pushes_are_refused_with_a_reason_and_start_nothing() {
    let site = Site::new(135);
    let (image, _) = site.file("image.bin", 100_000);
    let _director = site.director(false);
    let _server = site.server(&[&image], "10M");
    let _a = site.agent("a", &[]);
    site.wait_ready(&["a"], "image.bin");
    // (files, --to, more flags, exit code, reason)
    type Case<'a> = (&'a [&'a str], &'a str, &'a [&'a str], i32, &'a str);
    let cases: [Case; 5] = [
        (&["image.bin"], "a,zz", &[], 4, "unknown node \"zz\""),
        (&["image.bin"], "a,a", &[], 2, "node \"a\" is named twice"),
        (
            &["nope.bin"],
            "a",
            &[],
            4,
            "no live server carries \"nope.bin\"",
        ),
        (
            &["image.bin"],
            "a",
            &["--deadline", "0"],
            2,
            "not a duration in the future",
        ),
        (&["image.bin"], "a/b", &[], 2, "node name \"a/b\""),
    ];
    for (files, to, extra, code, why) in cases {
        let out = site.push(files, to, extra);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{to} {extra:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    }
    // A key that is not the site's: the tag fails.
    let stranger = site.dir.path().join("stranger");
    assert!(
        site.loopcast(&["keygen", "-o", path(&stranger)])
            .output()
            .unwrap()
            .status
            .success()
    );
    let out = site
        .loopcast(&["push", "image.bin", "-k", path(&stranger), "--to", "a"])
        .args(["--director", &site.director_udp()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("(HTTP 401)"), "{}", stderr(&out));
    assert!(stderr(&out).contains("another key"), "{}", stderr(&out));
    // None of them made a job.
    let list = site.jobs(&["--json"]);
    assert_eq!(stdout(&list).trim(), "[]");
}

#[test]
fn a_job_survives_a_director_restart_and_can_be_cancelled() {
    let site = Site::new(136);
    let (image, _) = site.file("image.bin", 100_000);
    let mut director = site.director(true);
    let _server = site.server(&[&image], "10M");
    // b is known but gone, so the job stays active.
    let mut b = site.agent("b", &[]);
    site.wait_ready(&["b"], "image.bin");
    b.crash();
    let out = site.push(&["image.bin"], "b", &["--detach", "--rate", "5M"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id: u64 = stdout(&out).trim().parse().unwrap();
    let before: serde_json::Value =
        serde_json::from_slice(&site.jobs(&[&id.to_string(), "--json"]).stdout).unwrap();
    assert_eq!(before["state"], "active");
    assert_eq!(before["max_rate_bps"], 5_000_000);
    director.crash();
    let _director = site.director(true);
    let start = Instant::now();
    let after = loop {
        let out = site.jobs(&[&id.to_string(), "--json"]);
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let strip = |mut v: serde_json::Value| {
        for n in v["nodes"].as_array_mut().unwrap() {
            n.as_object_mut().unwrap().remove("reachable");
        }
        v
    };
    assert_eq!(strip(after), strip(before));
    // Cancel: needs the key; the job ends cancelled, and so does b (not missed).
    let no_key = site.jobs(&[&id.to_string(), "--cancel"]);
    assert_eq!(no_key.status.code(), Some(2));
    let out = site.jobs(&[&id.to_string(), "--cancel", "-k", path(&site.key)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&site.jobs(&[&id.to_string()]));
    assert!(
        shown.matches("cancelled").count() >= 2 && !shown.contains("missed"),
        "{shown}"
    );
    let out = site.jobs(&["99", "--cancel", "-k", path(&site.key)]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

#[test]
fn a_push_of_a_file_on_this_host_serves_it_itself_until_the_job_ends() {
    let site = Site::new(137);
    let (image, data) = site.file("local.bin", 2_000_000);
    let _director = site.director(false);
    let _agents: Vec<Running> = ["a", "b"].iter().map(|n| site.agent(n, &[])).collect();
    // No server: the push serves the file itself, on this test's own group.
    let start = Instant::now();
    while get(&site.director_http(), "/v1/nodes")
        .is_none_or(|v| v.as_array().is_none_or(|a| a.len() < 2))
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "agents not heard"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let group = format!("239.255.{}.1:{}", site.n, site.base() + 2);
    let out = site.push(
        &[path(&image)],
        "a,b",
        &["-i", "127.0.0.1", "-g", &group, "--deadline", "60s"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("complete: 2 of 2 node(s) done"),
        "{}",
        stdout(&out)
    );
    for node in ["a", "b"] {
        assert_eq!(
            std::fs::read(site.out(node).join("local.bin")).unwrap(),
            data
        );
    }
    // Its server ended with it: the director stops listing the file within
    // its 3 s heartbeat silence.
    let start = Instant::now();
    while get(&site.director_http(), "/v1/files")
        .is_some_and(|f| f.as_array().is_some_and(|a| !a.is_empty()))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the push's server outlived it"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // With --detach it is refused: nothing would serve the file after the push.
    let out = site.push(&[path(&image)], "a", &["--detach"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--detach cannot push files of this host"));
}

#[test]
fn a_node_whose_disk_cannot_hold_the_file_is_shown_without_room_and_named_at_the_deadline() {
    let site = Site::new(138);
    let (image, _) = site.file("big.bin", 3_000_000);
    let Some(_disk) = common::SmallDisk::mount(&site.out("full"), "1m") else {
        return;
    };
    let _director = site.director(false);
    let _server = site.server(&[&image], "100M");
    let _agent = site.agent("full", &[]);
    site.wait_ready(&["full"], "big.bin");
    let out = site.push(&["big.bin"], "full", &["--deadline", "8s"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not done: full (no_room)"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("receiving (no_room)"),
        "{}",
        stdout(&out)
    );
}
