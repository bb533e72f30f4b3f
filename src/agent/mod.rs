//! `loopcast agent`: the driver of `proto::jobs::agent::Agent` — a UDP socket
//! to the directors, one `recv` child per job (`fetch`), the `--on-complete`
//! hook, and the record of finished jobs that lets a restarted agent answer
//! "done" rather than fetch again. Which jobs to run is the directors' and the
//! agent machine's decision, not this driver's.

mod fetch;

use crate::error::{Context, EXIT_NO_ROOM, Result};
use crate::events::Events;
use crate::signals::StopSignals;
use fetch::{Fetch, FetchNews};
use loopcast_proto::MasterKey;
use loopcast_proto::jobs::agent::{Agent, AgentEvent};
use loopcast_proto::wire::{AgentJobState, JobFailure};
use mio::Token;
use serde_json::json;
use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What `agent` was asked to do.
pub struct AgentConfig {
    /// The site key file (handed to each `recv`).
    pub key_path: PathBuf,
    /// The site key.
    pub key: MasterKey,
    /// This node's name.
    pub node: String,
    /// Directors to register with.
    pub directors: Vec<SocketAddr>,
    /// Where files go.
    pub out_dir: PathBuf,
    /// Shell command run for each file delivered.
    pub on_complete: Option<String>,
    /// `--interface`, passed on to each `recv`.
    pub interface: Option<String>,
    /// Where its socket binds: the interface's address in the directors'
    /// family (unspecified: the kernel's choice).
    pub local: SocketAddr,
    /// Print events as JSON lines on stdout.
    pub json: bool,
    /// Keep what a cancelled or expired job received (`--keep-partial`).
    pub keep_partial: bool,
    /// Keep each job's archives as they came in this directory (`--keep-archive`).
    pub keep_archive: Option<PathBuf>,
}

impl AgentConfig {
    /// The directors as `recv --director` takes them.
    fn director_list(&self) -> String {
        let list: Vec<String> = self.directors.iter().map(|d| d.to_string()).collect();
        list.join(",")
    }
}

const SOCKET: Token = Token(0);
/// How long after a failed attempt a job is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Longest sleep: fetch news is looked at at least this often.
const TICK: Duration = Duration::from_millis(100);
/// The agent's own directory inside `--out`, and its record of finished jobs.
const STATE_DIR: &str = ".loopcast-agent";
const FINISHED_FILE: &str = "finished";

/// A job being fetched.
struct Running {
    files: Vec<String>,
    /// The archive each file is pinned to (0: any).
    archives: Vec<u64>,
    deadline: Instant,
    max_rate_bps: u64,
    /// The `recv` child, or None while waiting to try again.
    fetch: Option<Fetch>,
    retry_at: Option<Instant>,
    /// Thousandths held, as its receiver last said (kept across a retry).
    permille: u16,
    /// Cancelled: its receiver is stopping, and then what it received goes.
    cancelled: bool,
}

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(config: AgentConfig) -> Result<()> {
    std::fs::create_dir_all(&config.out_dir).context(|| {
        format!(
            "cannot create output directory {}",
            config.out_dir.display()
        )
    })?;
    let state_dir = config.out_dir.join(STATE_DIR);
    crate::storage::own_dir(&state_dir)?;
    let finished_path = state_dir.join(FINISHED_FILE);
    let mut signals = StopSignals::new()?;
    let socket = signals.udp_socket(config.local, SOCKET)?;
    let events = Events::new(config.json);
    let now = Instant::now();
    let mut agent = Agent::new(
        config.key.director_mac_key(),
        config.node.clone(),
        config.directors.clone(),
        now,
        crate::director::unix_ms(),
        rand::random(),
    );
    let mut restored = 0;
    for (job, state, failure) in read_finished(&finished_path) {
        agent.restore_finished(job, state, failure);
        restored += 1;
    }
    log::info!(
        "agent {} registering with {}; files go to {} ({restored} finished job(s) on record)",
        config.node,
        config.director_list(),
        config.out_dir.display()
    );
    events.emit(
        "registering",
        json!({"node": config.node, "directors": config.director_list()}),
    );
    let mut silent = crate::waiting::SilentDirectors::new(
        "REGISTERs",
        loopcast_proto::keys::hex(&config.key.fingerprint()),
        now,
    );
    let mut heard_once = std::collections::HashSet::new();
    let (news_tx, news_rx) = mpsc::channel();
    let mut running: HashMap<u64, Running> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let result = 'run: loop {
        let now = Instant::now();
        if now >= agent.poll_timeout() {
            let free = crate::storage::free_bytes(&config.out_dir).unwrap_or(0);
            agent.set_free_bytes(free);
        }
        agent.handle_timeout(now);
        flush(&mut agent, &socket);
        // What the directors asked.
        while let Some(event) = agent.poll_event() {
            match event {
                AgentEvent::Fetch {
                    job,
                    files,
                    archives,
                    remaining,
                    max_rate_bps,
                } => {
                    log::info!("job {job}: fetching {}", files.join(", "));
                    events.emit("job_start", json!({"job": job, "files": files}));
                    let mut r = Running {
                        files,
                        archives,
                        deadline: now + remaining,
                        max_rate_bps,
                        fetch: None,
                        retry_at: Some(now),
                        permille: 0,
                        cancelled: false,
                    };
                    start(&config, job, &mut r, now, &news_tx);
                    running.insert(job, r);
                }
                AgentEvent::Cancel { job } => {
                    let Some(r) = running.get_mut(&job) else {
                        continue;
                    };
                    let why = match now >= r.deadline {
                        true => "its deadline passed",
                        false => "cancelled",
                    };
                    log::info!("job {job}: {why}; stopping its receiver");
                    r.cancelled = true;
                    r.retry_at = None;
                    match &r.fetch {
                        Some(f) => f.cancel(),
                        None => {
                            let files = running.remove(&job).map(|r| r.files).unwrap_or_default();
                            let freed = discard(&config, job, &files);
                            cancelled(job, freed, &events);
                        }
                    }
                }
                // The first answer is told here; one after silence, by `silent`.
                AgentEvent::DirectorHeard { director } => {
                    if heard_once.insert(director) {
                        log::info!("director {director} answers");
                    }
                }
            }
        }
        // What the fetches said.
        while let Ok((job, news)) = news_rx.try_recv() {
            let Some(r) = running.get_mut(&job) else {
                continue;
            };
            let end = match news {
                FetchNews::Progress(permille) => {
                    r.permille = permille;
                    agent.progress(job, permille, JobFailure::None);
                    None
                }
                FetchNews::Done => Some((AgentJobState::Done, JobFailure::None, String::new())),
                FetchNews::HookFailed(how) => {
                    log::warn!("job {job}: files delivered, but the hook failed: {how}");
                    Some((AgentJobState::Failed, JobFailure::HookFailed, how))
                }
                FetchNews::Cancelled(freed) => {
                    running.remove(&job);
                    cancelled(job, freed, &events);
                    None
                }
                FetchNews::Stopped(_, _) if now >= r.deadline => {
                    log::info!("job {job}: its deadline passed");
                    let files = running.remove(&job).map(|r| r.files).unwrap_or_default();
                    let freed = discard(&config, job, &files);
                    cancelled(job, freed, &events);
                    None
                }
                FetchNews::Stopped(code, how) => {
                    log::warn!(
                        "job {job}: receiving stopped ({how}{}); trying again in {} s",
                        crate::error::exit_meaning(code)
                            .map_or(String::new(), |m| format!(": {m}")),
                        RETRY_AFTER.as_secs()
                    );
                    r.fetch = None;
                    r.retry_at = Some(now + RETRY_AFTER);
                    // Room may be made: a full disk is retried too, but told.
                    let failure = match code {
                        Some(EXIT_NO_ROOM) => JobFailure::NoRoom,
                        _ => JobFailure::Retrying,
                    };
                    agent.progress(job, r.permille, failure);
                    None
                }
            };
            if let Some((state, failure, detail)) = end {
                running.remove(&job);
                let done = state == AgentJobState::Done;
                log::info!("job {job}: {}", if done { "done" } else { "failed" });
                events.emit("job_end", json!({"job": job, "done": done}));
                if let Err(e) = record_finished(&finished_path, job, state, failure) {
                    break 'run Err(e);
                }
                agent.finish(now, job, state, failure, &detail);
            }
        }
        silent.look(now, &agent.silent_directors(now));
        for (&job, r) in running.iter_mut() {
            if r.retry_at.is_some_and(|at| now >= at) {
                start(&config, job, r, now, &news_tx);
            }
        }
        flush(&mut agent, &socket);
        let wait = agent
            .poll_timeout()
            .saturating_duration_since(Instant::now())
            .min(TICK);
        match signals.wait(Some(wait)) {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
        loop {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => agent.handle_datagram(Instant::now(), from, &buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("receive failed: {e}");
                    break;
                }
            }
        }
    };
    for (job, r) in running {
        if let Some(f) = r.fetch {
            log::info!("job {job}: stopping its receiver; it resumes when the agent is back");
            f.stop();
        }
    }
    result
}

/// Removes what job `job` received of `files`, unless `--keep-partial`; the bytes freed.
fn discard(config: &AgentConfig, job: u64, files: &[String]) -> Option<u64> {
    if config.keep_partial {
        return None;
    }
    match crate::storage::discard_partial(&config.out_dir, files) {
        Ok(freed) => Some(freed),
        Err(e) => {
            log::warn!("job {job}: cannot remove what it received: {e}");
            None
        }
    }
}

/// Tells that job `job` ended unfinished, and what became of its partial data.
fn cancelled(job: u64, freed: Option<u64>, events: &Events) {
    match freed {
        Some(bytes) => log::info!(
            "job {job}: cancelled; removed {} it had received (--keep-partial keeps it)",
            crate::units::format_bytes(bytes)
        ),
        None => log::info!("job {job}: cancelled; what it received is kept"),
    }
    events.emit("job_cancelled", json!({"job": job, "freed_bytes": freed}));
}

/// Starts (or starts again) a job's `recv`, unless its deadline passed.
fn start(
    config: &AgentConfig,
    job: u64,
    r: &mut Running,
    now: Instant,
    news: &mpsc::Sender<(u64, FetchNews)>,
) {
    r.retry_at = None;
    let left = r.deadline.saturating_duration_since(now);
    if left.is_zero() {
        return;
    }
    match Fetch::start(
        config,
        job,
        r.files.clone(),
        &r.archives,
        left,
        r.max_rate_bps,
        news.clone(),
    ) {
        Ok(f) => r.fetch = Some(f),
        Err(e) => {
            log::warn!("job {job}: cannot start a receiver: {e}");
            r.retry_at = Some(now + RETRY_AFTER);
        }
    }
}

fn flush(agent: &mut Agent, socket: &mio::net::UdpSocket) {
    while let Some((to, datagram)) = agent.poll_transmit() {
        if let Err(e) = socket.send_to(&datagram, to) {
            log::debug!("REGISTER to {to} failed: {e}");
        }
    }
}

fn state_name(state: AgentJobState, failure: JobFailure) -> &'static str {
    match (state, failure) {
        (AgentJobState::Done, _) => "done",
        (_, JobFailure::HookFailed) => "hook_failed",
        _ => "failed",
    }
}

/// Appends "JOB STATE" to the record of finished jobs, durably (0600, no symlink followed).
fn record_finished(
    path: &std::path::Path,
    job: u64,
    state: AgentJobState,
    failure: JobFailure,
) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .context(|| format!("cannot open {}", path.display()))?;
    writeln!(file, "{job} {}", state_name(state, failure))
        .and_then(|()| file.sync_data())
        .context(|| format!("cannot write {}", path.display()))
}

/// The record of finished jobs (lines that do not parse are skipped).
fn read_finished(path: &std::path::Path) -> Vec<(u64, AgentJobState, JobFailure)> {
    let text = crate::storage::read_private(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (job, state) = line.split_once(' ')?;
            let (state, failure) = match state {
                "done" => (AgentJobState::Done, JobFailure::None),
                "hook_failed" => (AgentJobState::Failed, JobFailure::HookFailed),
                "failed" => (AgentJobState::Failed, JobFailure::None),
                _ => return None,
            };
            Some((job.parse().ok()?, state, failure))
        })
        .collect()
}
