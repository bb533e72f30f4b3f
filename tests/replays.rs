//! Genuine director traffic replayed, through the real binary on loopback
//! (spec §8: T21, T29, T36). A wire tap (a raw socket) records what servers,
//! agents and receivers send to the director; a raw sender replays it from any
//! source address, the real one included, as a host on the path would. Root
//! only, like the lab (CI requires it). Ports 28000 and up.

mod common;

use common::*;
use loopcast_proto::wire::{self, Packet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One datagram seen on its way to the director: its source and payload.
type Seen = (SocketAddrV4, Vec<u8>);

/// Records the UDP datagrams sent to one port on loopback, until dropped.
struct Tap {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tap {
    fn start(port: u16) -> Tap {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::UDP),
        )
        .expect("a raw socket (root)");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let socket: UdpSocket = socket.into();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopped) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stopped.load(Ordering::Relaxed) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                if let Some((from, to, payload)) = parse_udp(&buf[..n])
                    && to.port() == port
                {
                    into.lock().unwrap().push((from, payload.to_vec()));
                }
            }
        });
        Tap {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// What it recorded so far, forgotten by the tap.
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut self.seen.lock().unwrap())
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// (source, destination, payload) of an IPv4 UDP packet.
fn parse_udp(p: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, &[u8])> {
    let header = usize::from(p.first()? & 0x0f) * 4;
    if p.len() < header + 8 || p[9] != 17 {
        return None;
    }
    let ip = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    let port = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    let from = SocketAddrV4::new(ip(12), port(header));
    let to = SocketAddrV4::new(ip(16), port(header + 2));
    Some((from, to, &p[header + 8..]))
}

/// Sends UDP datagrams from any source address (IP_HDRINCL), counting them.
struct Spoofer {
    socket: socket2::Socket,
    sent: AtomicU64,
}

impl Spoofer {
    fn new() -> Spoofer {
        let raw = socket2::Protocol::from(255); // IPPROTO_RAW: we write the IP header
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(raw))
            .expect("a raw socket (root)");
        Spoofer {
            socket,
            sent: AtomicU64::new(0),
        }
    }

    /// Sends `payload` to `to` as if from `from`; a send error fails the test.
    fn send(&self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        let total = 20 + 8 + payload.len();
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        // id and checksum 0: the kernel fills them in; don't fragment; TTL 64; UDP.
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&from.ip().octets());
        p.extend_from_slice(&to.ip().octets());
        p.extend_from_slice(&from.port().to_be_bytes());
        p.extend_from_slice(&to.port().to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]); // no UDP checksum: IPv4 allows it
        p.extend_from_slice(payload);
        let sent = self.socket.send_to(&p, &to.into()).expect("spoofed send");
        assert_eq!(sent, total);
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether raw sockets can be had (root); required under LOOPCAST_LAB_REQUIRED.
fn raw_sockets() -> bool {
    let root = running_as_root();
    assert!(
        root || std::env::var_os("LOOPCAST_LAB_REQUIRED").is_none(),
        "replay test required but not root"
    );
    if !root {
        eprintln!("skipping the replay test: raw sockets need root");
    }
    root
}

/// 127.0.0.1 at test `n`'s port `k` (0: the director's UDP, 1: its API).
fn at(n: u16, k: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, 28000 + n * 10 + k)
}

/// A director on loopback for test `n`, with its key, directory and ports.
struct Site {
    dir: tempfile::TempDir,
    key: PathBuf,
    n: u16,
    _director: Running,
}

impl Site {
    fn new(n: u16) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key = new_key(dir.path());
        let (udp, http) = (at(n, 0).to_string(), at(n, 1).to_string());
        let director = start_logged(
            dir.path(),
            "director.log",
            &[
                "director",
                "-k",
                path(&key),
                "--listen",
                &udp,
                "--http",
                &http,
            ],
        );
        // Its API answers before anything asks it.
        let api = format!("http://{http}/metrics");
        let start = Instant::now();
        while ureq::get(&api).call().is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "no API at {api}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Site {
            dir,
            key,
            n,
            _director: director,
        }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn at(&self, k: u16) -> SocketAddrV4 {
        at(self.n, k)
    }

    fn udp(&self) -> SocketAddrV4 {
        self.at(0)
    }

    fn start(&self, log: &str, args: &[&str]) -> Running {
        start_logged(self.d(), &format!("{log}.log"), args)
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.d().join(format!("{log}.log"))).unwrap_or_default()
    }

    /// A file of `len` random bytes.
    fn file(&self, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
        use rand::{Rng, SeedableRng};
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(len as u64).fill_bytes(&mut data);
        let p = self.d().join(name);
        std::fs::write(&p, &data).unwrap();
        (p, data)
    }

    /// `serve FILE` at `rate`, unicast (and heartbeats) from port `k`.
    fn serve(&self, log: &str, file: &Path, k: u16, rate: &str) -> Running {
        let group = format!("239.255.{}.{k}:{}", 140 + self.n, self.at(k).port());
        let (port, udp) = (self.at(k).port().to_string(), self.udp().to_string());
        let cache = self.d().join(format!("cache-{k}"));
        let key = path(&self.key);
        let mut args = loopback_serve(key, &group, rate, path(&cache));
        args.extend(["--unicast-port", &port, "--director", &udp, path(file)]);
        self.start(log, &args)
    }

    /// `recv NAME` through the director, into `out`.
    fn recv(&self, name: &str, out: &Path) -> std::process::Command {
        recv_via_director(&self.key, &self.udp().to_string(), name, out, "30")
    }

    fn get(&self, path: &str) -> String {
        let url = format!("http://{}{path}", self.at(1));
        let mut answer = (ureq::get(&url).call()).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        answer.body_mut().read_to_string().unwrap()
    }

    fn get_json(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.get(path)).unwrap()
    }

    /// The names `/v1/files` lists.
    fn files_listed(&self) -> Vec<String> {
        (self.get_json("/v1/files").as_array().unwrap().iter())
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// A sample of the director's `/metrics`.
    fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics");
        let name = format!("loopcast_director_{name}");
        (text.lines())
            .find_map(|l| l.strip_prefix(&name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    /// The session of the server at `address`, if listed.
    fn session_at(&self, address: SocketAddrV4) -> Option<String> {
        (self.get_json("/v1/servers").as_array().unwrap().iter())
            .find(|s| s["address"] == address.to_string())
            .map(|s| s["session"].as_str().unwrap().to_owned())
    }

    /// Waits up to 15 s for `ready`, else fails naming `what`.
    fn wait(&self, what: &str, ready: impl Fn() -> bool) {
        let start = Instant::now();
        while !ready() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{what} within 15 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The payloads among `seen` from `source` whose packet `is`.
fn payloads(seen: &[Seen], source: SocketAddrV4, is: fn(&Packet) -> bool) -> Vec<Vec<u8>> {
    (seen.iter())
        .filter(|(from, p)| *from == source && wire::decode(p).is_ok_and(|d| is(&d.packet)))
        .map(|(_, p)| p.clone())
        .collect()
}

/// Runs `replay` every `every` in a thread until the returned flag is set.
fn replaying(every: Duration, replay: impl Fn() + Send + 'static) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            replay();
            std::thread::sleep(every);
        }
    });
    stop
}

#[test]
fn old_sessions_heartbeats_replayed_neither_unlist_a_restarted_server_nor_list_a_dead_one() {
    if !raw_sockets() {
        return;
    }
    let site = Site::new(0);
    let (one, one_data) = site.file("one.bin", 6_000_000);
    let (two, _) = site.file("two.bin", 1_000_000);
    let tap = Tap::start(site.udp().port());
    let (one_at, two_at) = (site.at(2), site.at(3));
    let mut first = site.serve("one-1", &one, 2, "20M");
    let mut second = site.serve("two", &two, 3, "20M");
    site.wait("both files listed", || site.files_listed().len() == 2);
    // Three heartbeats of each session, recorded.
    std::thread::sleep(Duration::from_millis(3200));
    let seen = tap.take();
    drop(tap);
    // All they sent: heartbeats and listings.
    let (old_one, old_two) = (
        payloads(&seen, one_at, |_| true),
        payloads(&seen, two_at, |_| true),
    );
    let heartbeats = |sent: &[Vec<u8>]| {
        (sent.iter())
            .filter(|p| wire::decode(p).is_ok_and(|d| matches!(d.packet, Packet::Heartbeat(_))))
            .count() as u64
    };
    let per_round = heartbeats(&old_one) + 2 * heartbeats(&old_two);
    assert!(
        heartbeats(&old_one) >= 3 && heartbeats(&old_two) >= 3,
        "{seen:?}"
    );
    let old_session = site.session_at(one_at).unwrap();
    let dead_session = site.session_at(two_at).unwrap();
    // `one` restarts at the same address; `two` dies for good.
    first.crash();
    second.crash();
    let _first = site.serve("one-2", &one, 2, "20M");
    site.wait("one restarted, two down", || {
        site.session_at(one_at).is_some_and(|s| s != old_session)
            && site.files_listed() == ["one.bin"]
    });
    let new_session = site.session_at(one_at).unwrap();
    let stale_before = site.metric("stale_heartbeats_total");
    // The attack: every recorded heartbeat 3 times a second, the first
    // session's from its (now the new session's) address, the dead one's from
    // its own address and from another host.
    let spoofer = Arc::new(Spoofer::new());
    let replays = Arc::clone(&spoofer);
    let (director, elsewhere) = (
        site.udp(),
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 3), 7700),
    );
    let round = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&round);
    let stop = replaying(Duration::from_millis(333), move || {
        counted.fetch_add(1, Ordering::Relaxed);
        for p in &old_one {
            replays.send(one_at, director, p);
        }
        for p in &old_two {
            replays.send(two_at, director, p);
            replays.send(elsewhere, director, p);
        }
    });
    // A receiver looks `one` up and takes it while the replays go on; the
    // listing is read every 100 ms.
    let out = site.d().join("out");
    let mut receiver = Running(
        (site.recv("one.bin", &out))
            .stderr(std::fs::File::create(site.d().join("recv.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let (mut polls, mut one_missing, mut two_listed) = (0, 0, 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let files = site.files_listed();
        polls += 1;
        let displaced = site.session_at(one_at) != Some(new_session.clone());
        one_missing += usize::from(displaced || !files.iter().any(|f| f == "one.bin"));
        let dead_back = site.session_at(two_at).is_some_and(|s| s == dead_session)
            || files.iter().any(|f| f == "two.bin");
        two_listed += usize::from(dead_back);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(400));
    let received = receiver.0.wait().unwrap();
    // The attack arrived: every replayed heartbeat was taken as stale.
    let sent = round.load(Ordering::Relaxed) * per_round;
    let stale = site.metric("stale_heartbeats_total") - stale_before;
    println!(
        "replayed {sent} heartbeats ({} datagrams), {stale} stale; of {polls} listings, the live server (or one.bin) missing from {one_missing}, the dead server in {two_listed}",
        spoofer.sent.load(Ordering::Relaxed)
    );
    assert!(
        sent >= 60 && stale >= sent * 9 / 10,
        "{sent} sent, {stale} stale"
    );
    assert_eq!(one_missing, 0, "the live server was unlisted");
    assert_eq!(two_listed, 0, "the dead server was listed again");
    assert!(received.success(), "{}", site.log("recv"));
    assert!(std::fs::read(out.join("one.bin")).unwrap() == one_data);
}

#[test]
fn an_earlier_agent_runs_registers_replayed_before_each_real_one_do_not_keep_a_cancel_from_it() {
    if !raw_sockets() {
        return;
    }
    let site = Site::new(1);
    // 16 MB at 4 Mbit/s: the job is still running when it is cancelled.
    let (big, _) = site.file("big.bin", 16_000_000);
    let _server = site.serve("serve", &big, 2, "4M");
    let tap = Tap::start(site.udp().port());
    let (key, udp) = (path(&site.key), site.udp().to_string());
    let out = site.d().join("out");
    let agent = |log: &str| site.start(log, &loopback_agent(key, "n1", &udp, path(&out)));
    let mut first = agent("agent-1");
    let node = || {
        let nodes = site.get_json("/v1/nodes");
        (nodes.as_array().unwrap().iter())
            .find(|n| n["node"] == "n1" && n["reachable"] == true)
            .map(|n| n["address"].as_str().unwrap().to_owned())
    };
    site.wait("the node registered", || node().is_some());
    std::thread::sleep(Duration::from_millis(3200));
    let first_at: SocketAddrV4 = node().unwrap().parse().unwrap();
    let old = payloads(&tap.take(), first_at, |p| matches!(p, Packet::Register(_)));
    assert!(old.len() >= 3, "{old:?}");
    first.crash();
    let _second = agent("agent-2");
    site.wait("the second run registered", || {
        node().is_some_and(|a| a != first_at.to_string())
    });
    let second_at: SocketAddrV4 = node().unwrap().parse().unwrap();
    let mut push = loopcast_cmd(&["push", "big.bin", "-k", key, "--to", "n1"])
        .args(["--director", &udp, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(site.d().join("push.log")).unwrap())
        .spawn()
        .unwrap();
    let events = std::io::BufRead::lines(std::io::BufReader::new(push.stdout.take().unwrap()));
    let first_event: serde_json::Value =
        serde_json::from_str(&events.into_iter().next().unwrap().unwrap()).unwrap();
    let push = Running(push);
    let id = first_event["job"].as_u64().expect("a job id");
    site.wait("the second run took the job", || {
        site.log("agent-2").contains(&format!("job {id}"))
    });
    // The attack: 850 ms after each real REGISTER (they come once a second),
    // so just before the next, one of the first run's, from its address and
    // from another host.
    let stale_before = site.metric("stale_registers_total");
    let spoofer = Arc::new(Spoofer::new());
    let replays = Arc::clone(&spoofer);
    let (director, elsewhere) = (
        site.udp(),
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 3), 7701),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    std::thread::spawn(move || {
        let is_register =
            |p: &Vec<u8>| wire::decode(p).is_ok_and(|d| matches!(d.packet, Packet::Register(_)));
        let mut due: Option<Instant> = None;
        while !stopped.load(Ordering::Relaxed) {
            let real = tap
                .take()
                .into_iter()
                .any(|(from, p)| from == second_at && is_register(&p));
            if real {
                due = Some(Instant::now() + Duration::from_millis(850));
            }
            if due.is_some_and(|at| Instant::now() >= at) {
                replays.send(first_at, director, old.last().unwrap());
                replays.send(elsewhere, director, old.last().unwrap());
                due = None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    std::thread::sleep(Duration::from_secs(5));
    let cancel = loopcast_cmd(&[
        "jobs",
        &id.to_string(),
        "--cancel",
        "-k",
        key,
        "--director",
        &udp,
    ])
    .output()
    .unwrap();
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    let told = format!("job {id}: cancelled");
    site.wait("the cancel reached the second run", || {
        site.log("agent-2").contains(&told)
    });
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    drop(push);
    let sent = spoofer.sent.load(Ordering::Relaxed);
    let stale = site.metric("stale_registers_total") - stale_before;
    println!(
        "replayed {sent} REGISTERs of the earlier run, {stale} stale; the cancel reached the node"
    );
    assert!(
        sent >= 6 && stale >= sent * 9 / 10,
        "{sent} sent, {stale} stale"
    );
    assert!(
        !out.join("big.bin").exists(),
        "the cancelled file was completed"
    );
}

#[test]
fn replayed_lookups_count_no_load_make_no_receiver_entry_and_are_not_answered_elsewhere() {
    if !raw_sockets() {
        return;
    }
    let site = Site::new(2);
    let (small, data) = site.file("small.bin", 1_000_000);
    let _server = site.serve("serve", &small, 2, "40M");
    site.wait("the file listed", || site.files_listed() == ["small.bin"]);
    let tap = Tap::start(site.udp().port());
    let out = site.d().join("out");
    let got = site.recv("small.bin", &out).output().unwrap();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(std::fs::read(out.join("small.bin")).unwrap() == data);
    std::thread::sleep(Duration::from_millis(300));
    let seen = tap.take();
    drop(tap);
    let lookups: Vec<Seen> = (seen.into_iter())
        .filter(|(_, p)| wire::decode(p).is_ok_and(|d| matches!(d.packet, Packet::Lookup(_))))
        .collect();
    assert!(!lookups.is_empty());
    // A heartbeat later the server's directed count is back to 0.
    std::thread::sleep(Duration::from_millis(1500));
    let directed = || {
        site.get_json("/v1/servers")[0]["directed"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(directed(), 0);
    let (receivers, replayed_before) = (
        site.metric("receivers"),
        site.metric("lookups_replayed_total"),
    );
    // The attack: each look-up every 100 ms from its receiver's address and
    // from a host of ours that counts what it is sent.
    let listener = UdpSocket::bind("127.0.0.4:0").unwrap();
    listener
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let SocketAddr::V4(elsewhere) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    let spoofer = Arc::new(Spoofer::new());
    let replays = Arc::clone(&spoofer);
    let director = site.udp();
    let stop = replaying(Duration::from_millis(100), move || {
        for (from, p) in &lookups {
            replays.send(*from, director, p);
            replays.send(elsewhere, director, p);
        }
    });
    let (mut most_directed, mut answers) = (0, 0);
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(4) {
        most_directed = most_directed.max(directed());
        while listener.recv(&mut buf).is_ok() {
            answers += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    let sent = spoofer.sent.load(Ordering::Relaxed);
    let replayed = site.metric("lookups_replayed_total") - replayed_before;
    println!(
        "replayed {sent} look-ups ({} from elsewhere), {replayed} refused as replays; most directed {most_directed}; {answers} answers elsewhere; receivers {receivers} -> {}",
        sent / 2,
        site.metric("receivers")
    );
    // The attack arrived: every one from elsewhere, and those from the
    // receiver's address within 500 ms of the last answered, were refused.
    assert!(
        sent >= 60 && replayed >= sent / 2,
        "{sent} sent, {replayed} refused"
    );
    assert_eq!(answers, 0, "a replay from elsewhere was answered");
    assert_eq!(most_directed, 0, "a replay counted load");
    assert_eq!(
        site.metric("receivers"),
        receivers,
        "a replay made a receiver entry"
    );
}
