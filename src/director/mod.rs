//! `loopcast director`: the driver of `proto::director::Director` — one UDP
//! socket, the clock, logs and `--json` events, the HTTP API (`http`) and the
//! job store (`jobs`). It decides nothing itself.

mod etcd;
mod http;

pub use etcd::EtcdAccess;
mod changes;
mod job_json;
mod jobs;
pub(crate) mod store;
mod writer;

use crate::error::Result;
use crate::events::Events;
use crate::signals::StopSignals;
use loopcast_proto::MasterKey;
use loopcast_proto::director::{Director, DirectorEvent};
use loopcast_proto::jobs::JobChange;
use loopcast_proto::wire::Found;
use mio::Token;
use serde_json::json;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `director` was asked to do.
pub struct DirectorConfig {
    /// Master key of the site.
    pub key: MasterKey,
    /// Address and port to listen on for heartbeats and look-ups.
    pub listen: SocketAddr,
    /// Print events as JSON lines on stdout.
    pub json: bool,
    /// Where to serve the HTTP API (None: nowhere).
    pub http: Option<SocketAddr>,
    /// Directory of the job store (None: jobs are kept in memory only).
    pub state: Option<PathBuf>,
    /// etcd to keep jobs on, shared with other directors (no endpoints: none).
    pub etcd: EtcdAccess,
    /// Prefix of this site's keys on etcd.
    pub etcd_prefix: String,
}

/// How often changed jobs are written to the store (progress lost in a crash
/// is reported again by the agents; a created job is stored before its answer).
const STORE_INTERVAL: Duration = Duration::from_millis(500);

const SOCKET: Token = Token(0);
/// Datagrams taken per wake-up before timers run again (a flood cannot hold them).
const MAX_PER_TURN: usize = 256;

/// Runs a director until SIGINT/SIGTERM.
pub fn run(config: DirectorConfig) -> Result<()> {
    let mut signals = StopSignals::new()?;
    let socket = signals.udp_socket(config.listen, SOCKET)?;
    let events = Events::new(config.json);
    let fingerprint = loopcast_proto::keys::hex(&config.key.fingerprint());
    let now = Instant::now();
    let mut d = Director::with_jobs_key(
        config.key.director_mac_key(),
        config.key.directory_mac_key(),
        Some(config.key.jobs_api_mac_key()),
        rand::random(),
        now,
    );
    d.set_wall_clock(now, unix_ms());
    let director = Arc::new(Mutex::new(d));
    let writer = Arc::new(writer::Writer::start(Arc::new(open_store(
        &config, &director,
    )?)));
    if let Some(address) = config.http {
        let answer_key = config.key.jobs_api_mac_key();
        http::serve(
            address,
            config.listen,
            director.clone(),
            writer.clone(),
            answer_key,
        )?;
        log::info!(
            "HTTP API on http://{address}/v1/servers (also /v1/files, /v1/receivers, /v1/jobs, /v1/nodes, /v1/status, /metrics)"
        );
    }
    let mut next_store = now + STORE_INTERVAL;
    let mut next_versions_look = now + crate::waiting::REPEAT;
    let mut versions_told = std::collections::BTreeSet::new();
    log::info!("director listening on {}", config.listen);
    events.emit("listening", json!({"address": config.listen.to_string()}));
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        let wait = {
            let mut director = lock(&director);
            director.handle_timeout(now);
            flush(&mut director, &socket, &events, &fingerprint);
            // Queued, written by the store's thread: the UDP loop never waits
            // on etcd (T42). A store still writing keeps the changes here.
            if now >= next_store && writer.idle() {
                next_store = now + STORE_INTERVAL;
                writer.take(&mut director);
            }
            if now >= next_versions_look {
                next_versions_look = now + crate::waiting::REPEAT;
                tell_versions(&director, &mut versions_told);
            }
            let wake = director
                .poll_timeout()
                .unwrap_or(now + Duration::from_secs(1));
            wake.min(next_store).saturating_duration_since(now)
        };
        if let Some(e) = writer.failed() {
            return Err(e);
        }
        if signals.wait(Some(wait.max(Duration::from_millis(1))))? {
            break;
        }
        for _ in 0..MAX_PER_TURN {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let mut director = lock(&director);
                    director.handle_datagram(Instant::now(), from, &buf[..n]);
                    flush(&mut director, &socket, &events, &fingerprint);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => log::warn!("receive failed: {e}"),
            }
        }
    }
    writer.take(&mut lock(&director));
    writer.finish()?;
    // Leadership is given up at once rather than when the lease runs out.
    if let store::Store::Etcd(etcd) = writer.store() {
        etcd.stop();
    }
    let director = lock(&director);
    let s = director.stats();
    log::info!(
        "stopping: {} server(s) live, {} look-up(s) answered, {} unauthenticated, {} stale heartbeat(s)",
        director.servers().count(),
        s.answered,
        s.unauthenticated,
        s.stale
    );
    Ok(())
}

/// Warns, once per set, of each name carried as several archives: the same
/// contents packed twice (a receiver moved between them starts again), or
/// different contents under one name (a receiver gets whichever ranks first).
fn tell_versions(d: &Director, told: &mut std::collections::BTreeSet<(String, Vec<u64>)>) {
    let versions = d.versions();
    let current: std::collections::BTreeSet<(String, Vec<u64>)> = (versions.iter())
        .filter(|(_, v)| v.len() > 1)
        .map(|(n, v)| (n.to_string(), v.keys().copied().collect()))
        .collect();
    for (name, ids) in current.difference(told) {
        let archives = &versions[name.as_str()];
        let digests: std::collections::BTreeSet<[u8; 32]> =
            archives.values().map(|(e, _)| e.content_digest).collect();
        let list: Vec<String> = (archives.iter())
            .map(|(id, (_, servers))| {
                let at: Vec<String> = servers.iter().map(|s| s.address.to_string()).collect();
                format!("{id:016x} on {}", at.join(", "))
            })
            .collect();
        let why = match digests.len() {
            1 => {
                "the same contents packed more than once: a receiver moved from one server to another starts again; pack once and serve the same .lcar everywhere"
            }
            _ => "different contents under one name: a receiver gets whichever server ranks first",
        };
        log::warn!(
            "{} is carried as {} archives ({}): {why}",
            crate::units::display_name(name),
            ids.len(),
            list.join("; ")
        );
    }
    *told = current;
}

/// The store `config` asks for, with its jobs put back into the director.
fn open_store(config: &DirectorConfig, director: &Arc<Mutex<Director>>) -> Result<store::Store> {
    if !config.etcd.endpoints.is_empty() {
        let me = config
            .http
            .map_or(config.listen.to_string(), |h| h.to_string());
        log::info!(
            "jobs on etcd at {} under {}",
            config.etcd.endpoints.join(","),
            config.etcd_prefix
        );
        // Following the store until elected: it reads the jobs itself.
        lock(director).set_scheduling(false, None);
        let etcd = etcd::EtcdStore::start(
            &config.etcd,
            config.etcd_prefix.clone(),
            me,
            director.clone(),
        )?;
        return Ok(store::Store::Etcd(etcd));
    }
    let Some(dir) = &config.state else {
        log::warn!("no --state directory: jobs are kept in memory and lost with this process");
        return Ok(store::Store::Memory);
    };
    let redb = store::RedbStore::open(dir)?;
    let stored = redb.load()?;
    log::info!("{} job(s) in the store at {}", stored.len(), dir.display());
    let mut d = lock(director);
    for job in stored {
        d.restore_job(job);
    }
    Ok(store::Store::Redb(redb))
}

/// Milliseconds since the Unix epoch, by this host's clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The director, from the loop or the HTTP thread (a panic elsewhere leaves it usable).
fn lock(director: &Mutex<Director>) -> std::sync::MutexGuard<'_, Director> {
    director.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends the director's answers and logs its events.
fn flush(director: &mut Director, socket: &mio::net::UdpSocket, events: &Events, ours: &str) {
    while let Some((to, datagram)) = director.poll_transmit() {
        if let Err(e) = socket.send_to(&datagram, to) {
            log::debug!("answer to {to} failed: {e}");
        }
    }
    while let Some(event) = director.poll_event() {
        match event {
            DirectorEvent::ServerUp {
                session_id,
                address,
            }
            | DirectorEvent::ServerDown {
                session_id,
                address,
            } => {
                let up = matches!(event, DirectorEvent::ServerUp { .. });
                let state = if up { "up" } else { "down" };
                log::info!("server {session_id:08x} at {address} is {state}");
                events.emit(
                    &format!("server_{state}"),
                    json!({"session": format!("{session_id:08x}"), "address": address.to_string()}),
                );
            }
            DirectorEvent::Redirected {
                to,
                name,
                reason,
                primary,
            } => {
                log::info!("moving {to} to {primary} for {name:?}: {}", reason.name());
                events.emit(
                    "redirected",
                    json!({"receiver": to.to_string(), "file": name,
                           "reason": reason.name(), "to": primary.to_string()}),
                );
            }
            DirectorEvent::Unauthenticated(stranger) => {
                let who = match (&stranger.node, stranger.key_fingerprint) {
                    (Some(node), _) => format!(" claiming node {node}"),
                    (None, Some(theirs)) => {
                        format!(
                            " under key fingerprint {}",
                            loopcast_proto::keys::hex(&theirs)
                        )
                    }
                    _ => String::new(),
                };
                log::warn!(
                    "{} unverified {} from {}{who} in the last 10 s: another site's key, or forged (ours: {ours}); ignored",
                    stranger.count,
                    stranger.packet,
                    stranger.from
                );
                events.emit(
                    "unauthenticated",
                    json!({"from": stranger.from.to_string(), "packet": stranger.packet,
                           "node": stranger.node, "count": stranger.count,
                           "key_fingerprint": stranger.key_fingerprint.map(|k| loopcast_proto::keys::hex(&k))}),
                );
            }
            DirectorEvent::NodeUp { node, address } => {
                log::info!("node {node} registered from {address}");
                events.emit(
                    "node_up",
                    json!({"node": node, "address": address.to_string()}),
                );
            }
            DirectorEvent::NodeDown { node } => {
                log::warn!("node {node} is unreachable (no REGISTER for 5 s)");
                events.emit("node_down", json!({"node": node}));
            }
            DirectorEvent::Job(JobChange::Job { job, state }) => {
                log::info!("job {job} is {}", state.name());
                events.emit("job", json!({"job": job, "state": state.name()}));
            }
            DirectorEvent::Job(JobChange::Node { job, node, state }) => {
                log::info!("job {job}: {node} is {}", state.name());
                events.emit(
                    "job_node",
                    json!({"job": job, "node": node, "state": state.name()}),
                );
            }
            DirectorEvent::Answered {
                from,
                name,
                found,
                primary,
            } => {
                let found = match found {
                    Found::Carried => "carried",
                    Found::NotCarried => "not_carried",
                    Found::NotYetKnown => "not_yet_known",
                };
                log::debug!("{from} asked for {name:?}: {found}");
                events.emit(
                    "answered",
                    json!({"from": from.to_string(), "file": name, "found": found,
                           "primary": primary.map(|p| p.to_string())}),
                );
            }
        }
    }
}
