//! A sysadmin's first hour, through the real binary on loopback: a wait is
//! never silent, a flag means one thing, output is short and honest, and the
//! safety rails hold. Each test uses its own group and ports (239.254.N.1,
//! 25000 + 10·N) and kills what it started, by handle, even when it fails.
//!
//! Over 600 lines on purpose: one file keeps this group numbers in view;
//! the tests are independent, behind shared helpers at the top.

mod common;

use common::{BIN, Running, SmallDisk, path, wait_for_log};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A temporary directory with a key, for test `n` (its group and ports).
struct Site {
    n: u16,
    dir: tempfile::TempDir,
    key: PathBuf,
    /// The key's fingerprint, as keygen printed it.
    fingerprint: String,
}

/// Makes a key at `key`; its fingerprint.
fn keygen(key: &Path) -> String {
    // --out is the same flag as --output.
    let made = loopcast(&["keygen", "--out", path(key)]).output().unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    let said = text(&made.stdout);
    said.split("fingerprint ")
        .nth(1)
        .unwrap()
        .trim_end_matches([')', '\n'])
        .to_owned()
}

impl Site {
    fn new(n: u16) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("site.key");
        let fingerprint = keygen(&key);
        Site {
            n,
            dir,
            key,
            fingerprint,
        }
    }

    fn port(&self, k: u16) -> u16 {
        25000 + self.n * 10 + k
    }

    fn group(&self) -> String {
        format!("239.254.{}.1:{}", self.n, self.port(0))
    }

    /// The director's UDP address (its HTTP API is on the next port).
    fn director(&self) -> String {
        format!("127.0.0.1:{}", self.port(5))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A file of `len` random bytes (incompressible) named `name`.
    fn file(&self, name: &str, len: usize, seed: u8) -> PathBuf {
        use rand::{Rng, SeedableRng};
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed as u64).fill_bytes(&mut data);
        let p = self.path(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    /// `loopcast ARGS` with its stderr in `log` (under the site's directory).
    fn start(&self, log: &str, args: &[&str]) -> Running {
        let log = std::fs::File::create(self.path(log)).unwrap();
        Running(
            loopcast(args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// A server of `files` on this site's group at `rate`, with `extra` arguments.
    fn serve(&self, log: &str, files: &[&Path], rate: &str, extra: &[&str]) -> Running {
        let mut args = vec!["serve", "-k", path(&self.key), "-i", "127.0.0.1"];
        let group = self.group();
        let cache = self.path("cache");
        args.extend(["-g", &group, "--rate", rate, "--cache-dir", path(&cache)]);
        args.extend(files.iter().map(|f| path(f)));
        args.extend(extra);
        self.start(log, &args)
    }

    /// `push FILE --to TO` to this site's director, with `extra`, run to its end.
    fn push(&self, file: &str, to: &str, extra: &[&str]) -> Output {
        let key = path(&self.key);
        let director = self.director();
        loopcast(&["push", file, "-k", key, "--to", to, "--director", &director])
            .args(extra)
            .output()
            .unwrap()
    }

    fn director_running(&self, log: &str) -> Running {
        let listen = self.director();
        self.start(
            log,
            &["director", "-k", path(&self.key), "--listen", &listen],
        )
    }
}

fn loopcast(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("RUST_LOG", "info")
        .env_remove("LOOPCAST_KEY")
        .env_remove("LOOPCAST_DIRECTOR")
        .env_remove("LOOPCAST_API");
    c
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// No Rust debug text in what a person reads.
fn assert_plain(log: &str) {
    for leak in ["Some(", "None)", "ServerDown", "Overloaded", "Ok(", "Err("] {
        assert!(!log.contains(leak), "debug text {leak:?} in: {log}");
    }
    assert!(!log.contains("panicked"), "panic: {log}");
}

/// Waits for the exit of `child`, at most `limit`.
fn wait_exit(child: &mut Running, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.0.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn signal(child: &Running, sig: i32) {
    // SAFETY: kill has no memory preconditions; the PID is our own child's.
    unsafe { libc::kill(child.0.id() as i32, sig) };
}

#[test]
fn a_receiver_hearing_no_server_says_so_within_15_s_and_sigint_exits_130() {
    let site = Site::new(1);
    let out = site.path("out");
    let group = site.group();
    let mut recv = site.start(
        "recv.log",
        &[
            "recv",
            "-k",
            path(&site.key),
            "-i",
            "127.0.0.1",
            "-g",
            &group,
            "-o",
            path(&out),
        ],
    );
    assert!(
        wait_for_log(
            &site.path("recv.log"),
            "still waiting",
            Duration::from_secs(15)
        ),
        "nothing said within 15 s: {}",
        site.log("recv.log")
    );
    signal(&recv, libc::SIGINT);
    let status = wait_exit(&mut recv, Duration::from_secs(5)).expect("it stops on SIGINT");
    let log = site.log("recv.log");
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(
        log.contains(&format!("no server heard on {group} via lo")),
        "{log}"
    );
    assert!(
        log.contains("loopcast: error: interrupted before anything was stored"),
        "{log}"
    );
    assert!(!log.contains("progress saved"), "{log}");
    assert_plain(&log);
}

#[test]
fn a_file_not_on_air_is_named_with_what_is_and_the_key_may_come_from_the_environment() {
    let site = Site::new(2);
    let file = site.file("a.bin", 200_000, 2);
    let _server = site.serve("serve.log", &[&file], "20M", &[]);
    let out = site.path("out");
    let started = Instant::now();
    let run = loopcast(&[
        "recv",
        "-i",
        "127.0.0.1",
        "-g",
        &site.group(),
        "-o",
        path(&out),
    ])
    .args(["--timeout", "12", "nosuch.iso"])
    .env("LOOPCAST_KEY", &site.key)
    .output()
    .unwrap();
    let log = text(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{log}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        log.contains("still waiting after 10 s, nosuch.iso: not on air"),
        "{log}"
    );
    let last = log.lines().last().unwrap();
    assert!(
        last.starts_with("loopcast: error: timed out after 12 s: nosuch.iso: not on air")
            && last.contains("on air: a.bin"),
        "{last}"
    );
    assert_plain(&log);
}

#[test]
fn a_receiver_told_a_director_that_does_not_answer_says_that_not_not_on_air() {
    let site = Site::new(3);
    let out = site.path("out");
    let run = loopcast(&[
        "recv",
        "-k",
        path(&site.key),
        "-i",
        "127.0.0.1",
        "-o",
        path(&out),
    ])
    .args(["--director", &site.director(), "--timeout", "11", "big.img"])
    .output()
    .unwrap();
    let log = text(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{log}");
    assert!(
        log.contains("still waiting after 10 s, big.img: no answer from the director"),
        "{log}"
    );
    let last = log.lines().last().unwrap();
    assert!(last.contains("no answer from the director"), "{last}");
    assert!(!last.contains("not on air"), "{last}");
    assert_plain(&log);
}

#[test]
fn agents_and_servers_say_when_their_director_is_silent_or_has_another_key() {
    let site = Site::new(4);
    let stranger = site.path("stranger.key");
    let theirs = keygen(&stranger);
    let director = site.director();
    let mut d = site.director_running("director.log");
    let file = site.file("f.bin", 100_000, 4);
    let out = site.path("out-a");
    let agent = |log: &str, key: &Path, node: &str| {
        site.start(
            log,
            &[
                "agent",
                "-k",
                path(key),
                "--director",
                &director,
                "-i",
                "127.0.0.1",
            ]
            .into_iter()
            .chain(["--node", node, "-o", path(&out)])
            .collect::<Vec<_>>(),
        )
    };
    let _good = agent("good.log", &site.key, "good");
    let _bad = agent("bad.log", &stranger, "impostor");
    let mut serve_args = vec![
        "serve",
        "-k",
        path(&stranger),
        "-i",
        "127.0.0.1",
        "--director",
    ];
    serve_args.push(&director);
    let group = site.group();
    let cache = site.path("cache");
    serve_args.extend(["-g", &group, "--cache-dir", path(&cache), path(&file)]);
    let _server = site.start("serve.log", &serve_args);
    let limit = Duration::from_secs(15);
    assert!(
        wait_for_log(&site.path("bad.log"), "has not answered REGISTERs", limit),
        "{}",
        site.log("bad.log")
    );
    assert!(
        wait_for_log(
            &site.path("serve.log"),
            "has not answered heartbeats",
            limit
        ),
        "{}",
        site.log("serve.log")
    );
    let director_log = site.log("director.log");
    assert!(
        director_log.contains("unverified REGISTER from 127.0.0.1:"),
        "{director_log}"
    );
    assert!(
        director_log.contains("claiming node impostor"),
        "{director_log}"
    );
    assert!(
        director_log.contains("unverified ANNOUNCE from"),
        "{director_log}"
    );
    // Both fingerprints are told: the director's own and the server's claim at
    // the director, the agent's and server's own on their side.
    assert!(
        director_log.contains(&format!("under key fingerprint {theirs}")),
        "{director_log}"
    );
    assert!(
        director_log.contains(&format!("ours: {}", site.fingerprint)),
        "{director_log}"
    );
    assert!(
        site.log("bad.log").contains(&format!("ours: {theirs}")),
        "{}",
        site.log("bad.log")
    );
    assert!(
        site.log("serve.log").contains(&format!("ours: {theirs}")),
        "{}",
        site.log("serve.log")
    );
    // The good agent hears its director; with the director down it says so,
    // and says when it answers again.
    assert!(
        !site.log("good.log").contains("has not answered"),
        "{}",
        site.log("good.log")
    );
    d.crash();
    assert!(
        wait_for_log(
            &site.path("good.log"),
            "has not answered REGISTERs for",
            limit
        ),
        "{}",
        site.log("good.log")
    );
    let _d = site.director_running("director2.log");
    assert!(
        wait_for_log(&site.path("good.log"), "answers again", limit),
        "{}",
        site.log("good.log")
    );
    for log in ["good.log", "bad.log", "serve.log", "director.log"] {
        assert_plain(&site.log(log));
    }
}

#[test]
fn ls_and_jobs_find_the_http_api_from_the_directors_address_or_hint_at_api() {
    let site = Site::new(5);
    let _d = site.director_running("director.log");
    let director = site.director();
    std::thread::sleep(Duration::from_millis(500));
    // The director's UDP address: the API is found on the next port.
    let jobs = loopcast(&["jobs", "--director", &director])
        .output()
        .unwrap();
    assert!(jobs.status.success(), "{}", text(&jobs.stderr));
    assert_eq!(text(&jobs.stdout).trim(), "no jobs");
    // From the environment, too.
    let jobs = loopcast(&["jobs"])
        .env("LOOPCAST_DIRECTOR", &director)
        .output()
        .unwrap();
    assert!(jobs.status.success(), "{}", text(&jobs.stderr));
    // The API's own port given as --director: nothing answers on the port
    // after it, and the error says where the API is looked for.
    let api = format!("127.0.0.1:{}", site.port(6));
    let wrong = loopcast(&["ls", "--director", &api]).output().unwrap();
    let err = text(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{err}");
    assert!(err.contains("--api HOST:PORT"), "{err}");
    // --api names it.
    let ls = loopcast(&["ls", "--director", &director, "--api", &api])
        .output()
        .unwrap();
    let err = text(&ls.stderr);
    assert_eq!(ls.status.code(), Some(3), "{err}");
    assert!(err.contains("knows no file on air"), "{err}");
    // An unknown job: exit 4, as documented.
    let unknown = loopcast(&["jobs", "12345", "--director", &director])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(4), "{}", text(&unknown.stderr));
    assert_plain(&(text(&wrong.stderr) + &text(&unknown.stderr)));
}

#[test]
fn usage_errors_exit_2_debug_flags_are_hidden_and_a_group_without_port_takes_7700() {
    let site = Site::new(6);
    let out = site.path("out");
    let run = loopcast(&[
        "recv",
        "-k",
        path(&site.key),
        "-o",
        path(&out),
        "--director",
        "127.0.0.1",
    ])
    .output()
    .unwrap();
    assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains("needs the names"),
        "{}",
        text(&run.stderr)
    );
    let help = loopcast(&["recv", "--help"]).output().unwrap();
    let help = text(&help.stdout);
    assert!(
        help.contains("--output <DIR>") && help.contains("[alias: --out]"),
        "{help}"
    );
    assert!(!help.contains("debug"), "{help}");
    let top = text(&loopcast(&["--help"]).output().unwrap().stdout);
    assert!(top.contains("130") && top.contains("LOOPCAST_KEY"), "{top}");
    // A group without a port takes 7700.
    let ls = loopcast(&["ls", "-k", path(&site.key), "-i", "127.0.0.1"])
        .args(["-g", &format!("239.254.{}.1", site.n), "--timeout", "1"])
        .output()
        .unwrap();
    let err = text(&ls.stderr);
    assert_eq!(ls.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("239.254.{}.1:7700", site.n)), "{err}");
}

/// Parses "NAME: done, SIZE in SECS s (RATE Mbit/s..." out of a receiver's log.
fn done_line(log: &str, name: &str) -> (f64, f64) {
    let line = (log.lines())
        .find(|l| l.contains(&format!("{name}: done, ")))
        .unwrap_or_else(|| panic!("no done line in {log}"));
    let secs: f64 = line
        .split(" in ")
        .nth(1)
        .unwrap()
        .split(" s ")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let rate = line.split('(').nth(1).unwrap();
    let (number, unit) = rate.split_once(' ').unwrap();
    let scale = match &unit[..4] {
        "Gbit" => 1e9,
        "Mbit" => 1e6,
        _ => 1e3,
    };
    (secs, number.parse::<f64>().unwrap() * scale)
}

#[test]
fn the_done_line_is_short_and_its_time_and_rate_count_from_the_commands_start() {
    let site = Site::new(7);
    let file = site.file("r.bin", 4 << 20, 7);
    let out = site.path("out");
    let group = site.group();
    let started = Instant::now();
    let mut recv = Running(
        loopcast(&[
            "recv",
            "-k",
            path(&site.key),
            "-i",
            "127.0.0.1",
            "-g",
            &group,
            "-o",
            path(&out),
        ])
        .arg("r.bin")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(site.path("recv.log")).unwrap())
        .spawn()
        .unwrap(),
    );
    // The receiver waits 2 s for the server: the time counts from its start.
    std::thread::sleep(Duration::from_secs(2));
    let _server = site.serve("serve.log", &[&file], "20M", &[]);
    let status = wait_exit(&mut recv, Duration::from_secs(30)).expect("it finishes");
    let elapsed = started.elapsed().as_secs_f64();
    let log = site.log("recv.log");
    assert!(status.success(), "{log}");
    let (secs, rate) = done_line(&log, "r.bin");
    assert!(
        (secs - elapsed).abs() <= 0.1 * elapsed,
        "{secs} s said, {elapsed} s measured: {log}"
    );
    let expected = (4u64 << 20) as f64 * 8.0 / elapsed;
    assert!(
        (rate - expected).abs() <= 0.1 * expected,
        "{rate} said, {expected} measured: {log}"
    );
    let line = log.lines().find(|l| l.contains("r.bin: done")).unwrap();
    assert!(line.len() < 200, "{line}");
    assert!(!log.contains("packets held"), "{log}");
    assert_eq!(log.matches("r.bin: done").count(), 1, "{log}");
    assert_plain(&log);
}

#[test]
fn metrics_are_openmetrics_and_say_so() {
    let site = Site::new(8);
    let _d = site.director_running("director.log");
    let api = format!("http://127.0.0.1:{}/metrics", site.port(6));
    let start = Instant::now();
    let mut response = loop {
        match ureq::get(&api).call() {
            Ok(r) => break r,
            Err(e) if start.elapsed() < Duration::from_secs(5) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let kind = response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        kind.starts_with("application/openmetrics-text; version=1.0.0"),
        "{kind}"
    );
    let body = response.body_mut().read_to_string().unwrap();
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&body);
    assert!(parsed.is_ok(), "{parsed:?}: {body}");
    let families = parsed.unwrap().families;
    assert!(families.contains_key("loopcast_director_servers"), "{body}");
}

#[test]
fn a_hooks_output_stays_out_of_json_its_failure_reaches_jobs_and_push_and_the_archive_is_kept() {
    let site = Site::new(9);
    let director = site.director();
    let _d = site.director_running("director.log");
    let file = site.file("h.bin", 300_000, 9);
    let _server = site.serve("serve.log", &[&file], "40M", &["--director", &director]);
    let out = site.path("out");
    let hook = "echo HOOK-SAYS-HELLO; echo first problem >&2; echo disk on fire >&2; exit 3";
    let agent_out = std::fs::File::create(site.path("agent.json")).unwrap();
    let _agent = Running(
        loopcast(&[
            "agent",
            "-k",
            path(&site.key),
            "--director",
            &director,
            "-i",
            "127.0.0.1",
        ])
        .args([
            "--node",
            "n1",
            "-o",
            path(&out),
            "--json",
            "--on-complete",
            hook,
            "--keep-archive",
            path(&site.path("kept")),
        ])
        .stdout(agent_out)
        .stderr(std::fs::File::create(site.path("agent.log")).unwrap())
        .spawn()
        .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let push = site.push("h.bin", "n1", &["--deadline", "60s"]);
    let said = text(&push.stdout) + &text(&push.stderr);
    assert_eq!(push.status.code(), Some(5), "{said}");
    assert!(
        said.contains("exit 3: first problem / disk on fire"),
        "{said}"
    );
    let id = said
        .split("job ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let jobs = loopcast(&["jobs", &id, "--director", &director])
        .output()
        .unwrap();
    assert!(
        text(&jobs.stdout).contains("failed (hook_failed): exit 3: first problem / disk on fire"),
        "{}",
        text(&jobs.stdout)
    );
    let json = std::fs::read_to_string(site.path("agent.json")).unwrap();
    assert!(!json.is_empty());
    for line in json.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line:?}"
        );
    }
    assert!(!json.contains("HOOK-SAYS-HELLO"), "{json}");
    let log = site.log("agent.log");
    assert!(log.contains("hook (h.bin): HOOK-SAYS-HELLO"), "{log}");
    assert_plain(&log);
    assert_plain(&said);
    // The job's archive, kept as it came, is the one in the server's cache.
    let kept = std::fs::read(site.path("kept").join("h.bin.lcar")).unwrap();
    let cached = std::fs::read_dir(site.path("cache")).unwrap().flatten();
    let served: Vec<Vec<u8>> = cached
        .filter(|e| e.path().extension().is_some_and(|x| x == "lcar"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert!(
        served.contains(&kept),
        "the kept archive is not the server's"
    );
}

#[test]
fn a_cancelled_job_removes_its_partial_data_unless_kept_and_shows_cancelled() {
    let site = Site::new(10);
    let director = site.director();
    let _d = site.director_running("director.log");
    // 6 MiB at 4 Mbit/s: a loop of 12 s, cancelled in its first seconds.
    let file = site.file("c.bin", 6 << 20, 10);
    let _server = site.serve("serve.log", &[&file], "4M", &["--director", &director]);
    let agent = |node: &str, extra: &[&str]| {
        let out = site.path(&format!("out-{node}"));
        site.start(
            &format!("{node}.log"),
            &[
                "agent",
                "-k",
                path(&site.key),
                "--director",
                &director,
                "-i",
                "127.0.0.1",
                "--node",
                node,
                "-o",
                path(&out),
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        )
    };
    let _a = agent("n1", &[]);
    let _b = agent("n2", &["--keep-partial"]);
    std::thread::sleep(Duration::from_secs(3));
    // A deadline shorter than a loop is warned of.
    let push = site.push("c.bin", "n1,n2", &["--deadline", "5m", "--detach"]);
    assert!(push.status.success(), "{}", text(&push.stderr));
    let id = text(&push.stdout).trim().to_owned();
    let partial = |node: &str| site.path(&format!("out-{node}/.loopcast-partial/c.bin.part"));
    let start = Instant::now();
    while !(partial("n1").exists() && partial("n2").exists())
        && start.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(partial("n1").exists() && partial("n2").exists());
    let cancel = loopcast(&[
        "jobs",
        &id,
        "--director",
        &director,
        "--cancel",
        "-k",
        path(&site.key),
    ])
    .output()
    .unwrap();
    assert!(cancel.status.success(), "{}", text(&cancel.stderr));
    assert!(
        wait_for_log(
            &site.path("n1.log"),
            "cancelled; removed",
            Duration::from_secs(10)
        ),
        "{}",
        site.log("n1.log")
    );
    assert!(
        wait_for_log(
            &site.path("n2.log"),
            "cancelled; what it received is kept",
            Duration::from_secs(10)
        ),
        "{}",
        site.log("n2.log")
    );
    assert!(!partial("n1").exists(), "n1's partial data is left");
    assert!(partial("n2").exists(), "n2 was told to keep it");
    let shown = loopcast(&["jobs", &id, "--director", &director])
        .output()
        .unwrap();
    let shown = text(&shown.stdout);
    assert!(
        shown.contains("cancelled") && !shown.contains("missed"),
        "{shown}"
    );
    for log in ["n1.log", "n2.log"] {
        let log = site.log(log);
        assert!(!log.contains("run the same command to resume"), "{log}");
        assert_plain(&log);
    }
}

#[test]
fn a_short_deadline_and_a_slow_rate_are_warned_of() {
    let site = Site::new(11);
    let director = site.director();
    let _d = site.director_running("director.log");
    let file = site.file("slow.bin", 2 << 20, 11);
    let _server = site.serve("serve.log", &[&file], "1K", &["--director", &director]);
    assert!(
        wait_for_log(
            &site.path("serve.log"),
            "one loop of",
            Duration::from_secs(5)
        ),
        "{}",
        site.log("serve.log")
    );
    std::thread::sleep(Duration::from_secs(3));
    let push = site.push("slow.bin", "nobody", &["--deadline", "90s"]);
    let err = text(&push.stderr);
    assert!(
        err.contains("--deadline 1m30s is shorter than one loop of slow.bin"),
        "{err}"
    );
    assert_eq!(push.status.code(), Some(4), "{err}"); // no such node
}

#[test]
fn a_push_of_a_file_on_air_uses_its_server_and_one_of_other_contents_is_refused() {
    let site = Site::new(12);
    let director = site.director();
    let _d = site.director_running("director.log");
    let file = site.file("same.bin", 500_000, 12);
    // The server holds the group's port: a push's own server must not collide.
    let _server = site.serve("serve.log", &[&file], "40M", &["--director", &director]);
    let out = site.path("out");
    let _agent = site.start(
        "agent.log",
        &[
            "agent",
            "-k",
            path(&site.key),
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
    std::thread::sleep(Duration::from_secs(3));
    let group = site.group();
    let push = |f: &Path| {
        site.push(
            path(f),
            "n1",
            &["-i", "127.0.0.1", "-g", &group, "--deadline", "60s"],
        )
    };
    let same = push(&file);
    let err = text(&same.stderr);
    assert!(same.status.success(), "{err}");
    assert!(
        err.contains("same.bin is on air already with the same contents"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out.join("same.bin")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    // Another file of that name: refused, naming both digests.
    let other_dir = site.path("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = other_dir.join("same.bin");
    std::fs::write(&other, b"other contents").unwrap();
    let refused = push(&other);
    let err = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("on air with other contents"), "{err}");
    // A new file: the push serves it on a port of its own, beside the server.
    let new = site.file("new.bin", 300_000, 13);
    let served = push(&new);
    let err = text(&served.stderr);
    assert!(served.status.success(), "{err}");
    assert!(!err.contains("error"), "{err}");
    assert_eq!(
        std::fs::read(out.join("new.bin")).unwrap(),
        std::fs::read(&new).unwrap()
    );
    // The director warned of nothing: one archive per name.
    assert!(
        !site.log("director.log").contains("carried as"),
        "{}",
        site.log("director.log")
    );
}

#[test]
fn one_name_on_two_archives_is_warned_of_and_a_receiver_switching_says_what_it_drops() {
    let site = Site::new(13);
    let director = site.director();
    let mut d = site.director_running("director.log");
    // The same file packed twice: two archives of one name.
    let file = site.file("twice.bin", 3 << 20, 13);
    let dir2 = site.path("second");
    std::fs::create_dir(&dir2).unwrap();
    let copy = dir2.join("twice.bin");
    std::fs::copy(&file, &copy).unwrap();
    let first = site.serve("s1.log", &[&file], "8M", &["--director", &director]);
    let second_group = format!("239.254.{}.1:{}", site.n + 20, site.port(8));
    let cache2 = site.path("cache2");
    let second = site.start(
        "s2.log",
        &[
            "serve",
            "-k",
            path(&site.key),
            "-i",
            "127.0.0.1",
            "-g",
            &second_group,
            "--rate",
            "8M",
        ]
        .into_iter()
        .chain([
            "--cache-dir",
            path(&cache2),
            "--director",
            &director,
            path(&copy),
        ])
        .collect::<Vec<_>>(),
    );
    assert!(
        wait_for_log(
            &site.path("director.log"),
            "twice.bin is carried as 2 archives",
            Duration::from_secs(15)
        ),
        "{}",
        site.log("director.log")
    );
    assert!(
        site.log("director.log")
            .contains("the same contents packed more than once")
    );
    // A receiver sent to the first moves to the second when it dies, and says
    // that it drops what it stored.
    let out = site.path("out");
    let mut recv = site.start(
        "recv.log",
        &[
            "recv",
            "-k",
            path(&site.key),
            "-i",
            "127.0.0.1",
            "-o",
            path(&out),
            "--director",
            &director,
            "twice.bin",
        ],
    );
    let start = Instant::now();
    while !site.log("recv.log").contains("joining") && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // The first server the director named goes: the receiver moves to the
    // other archive, and says that it drops what it stored.
    let named = (site.log("recv.log").lines())
        .find_map(|l| l.split("the director names ").nth(1).map(str::to_owned))
        .expect("the director named servers");
    let (mut gone, mut other) = match named.starts_with(&format!("127.0.0.1:{}", site.port(0))) {
        true => (first, second),
        false => (second, first),
    };
    gone.crash();
    let status = wait_exit(&mut recv, Duration::from_secs(40));
    let log = site.log("recv.log");
    d.crash();
    other.crash();
    assert!(status.is_some_and(|s| s.success()), "{log}");
    assert!(
        log.contains("another packing or version than the one being received; dropping the"),
        "{log}"
    );
    assert_eq!(
        std::fs::read(out.join("twice.bin")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    assert_plain(&log);
}

#[test]
fn on_a_disk_too_small_for_one_of_two_files_the_other_is_taken_and_the_exit_is_6() {
    let site = Site::new(14);
    let Some(disk) = SmallDisk::mount(&site.path("disk"), "2m") else {
        return;
    };
    let small = site.file("small.bin", 200_000, 14);
    let big = site.file("big.bin", 3 << 20, 15);
    let _server = site.serve("serve.log", &[&small, &big], "40M", &[]);
    let group = site.group();
    let run = loopcast(&[
        "recv",
        "-k",
        path(&site.key),
        "-i",
        "127.0.0.1",
        "-g",
        &group,
        "-o",
        path(&disk.0),
    ])
    .args(["--timeout", "30", "small.bin", "big.bin"])
    .output()
    .unwrap();
    let log = text(&run.stderr);
    assert_eq!(run.status.code(), Some(6), "{log}");
    assert_eq!(
        std::fs::read(disk.0.join("small.bin")).unwrap(),
        std::fs::read(&small).unwrap()
    );
    assert!(!disk.0.join("big.bin").exists());
    let last = log.lines().last().unwrap();
    assert!(
        last.contains("big.bin") && last.contains("not enough space"),
        "{last}"
    );
    assert_plain(&log);
}

/// Runs `loopcast ARGS` on a terminal (`script` gives it a pty) for at most
/// `limit`; what the terminal showed.
fn on_a_terminal(args: &[&str], limit: Duration) -> String {
    let command = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("timeout")
        .args(["-s", "INT", &limit.as_secs().to_string()])
        .args(["script", "-qfec", &command, "/dev/null"])
        .env("RUST_LOG", "info")
        .env("COLUMNS", "160")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    text(&out.stdout)
}

#[test]
fn on_a_terminal_bars_have_units_wait_for_the_manifest_and_a_server_shows_its_status() {
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("LOOPCAST_LAB_REQUIRED").is_none(),
            "script (util-linux) is missing"
        );
        return;
    }
    let site = Site::new(15);
    let file = site.file("t.bin", 3 << 20, 15);
    let group = site.group();
    let cache = site.path("cache");
    let key = site.key.clone();
    let serving = std::thread::spawn(move || {
        on_a_terminal(
            &[
                "serve",
                "-k",
                path(&key),
                "-i",
                "127.0.0.1",
                "-g",
                &group,
                "--rate",
                "8M",
                "--cache-dir",
                path(&cache),
                path(&file),
            ],
            Duration::from_secs(8),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = site.path("out");
    let shown = on_a_terminal(
        &[
            "recv",
            "-k",
            path(&site.key),
            "-i",
            "127.0.0.1",
            "-g",
            &site.group(),
            "-o",
            path(&out),
            "--timeout",
            "20",
        ],
        Duration::from_secs(25),
    );
    let served = serving.join().unwrap();
    assert!(shown.contains("t.bin: done, "), "{shown}");
    assert!(
        shown.contains("MiB/s") || shown.contains("KiB/s"),
        "no rate with its unit: {shown}"
    );
    assert!(!shown.contains("100% 0/s"), "{shown}");
    assert!(
        served.contains("receiver(s)") && served.contains("sending "),
        "no status line: {served}"
    );
    // A log line printed while the status line is drawn is printed whole, on a
    // line of its own (the status line is lifted, then drawn again below it).
    let joined = (served.lines()).find(|l| l.contains("t.bin: receiver") && l.contains("joined"));
    // What the terminal keeps of the line: after its last carriage return.
    let joined = strip_escapes(joined.unwrap_or_default());
    let joined = joined.rsplit('\r').next().unwrap_or_default();
    assert!(
        joined.starts_with("[20") && joined.ends_with("Mbit/s)"),
        "{joined:?}"
    );
}

/// `line` without its terminal escape sequences (ESC [ ... letter).
fn strip_escapes(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
