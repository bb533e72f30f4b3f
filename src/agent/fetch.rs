//! One job's fetch: a `loopcast recv --json` child process of this binary (an
//! ordinary receiver session: multicast, unicast fallback, failover, resume),
//! its JSON events read on a thread of its own, then the `--on-complete` hook
//! for each file delivered. The hook's output goes to the log, prefixed, never
//! to stdout (where `agent --json` writes its events); a failed hook's status
//! and the tail of its error output are the job's detail.

use super::AgentConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// What a fetch tells the agent's loop.
#[derive(Debug)]
pub enum FetchNews {
    /// Thousandths of the job's packets held.
    Progress(u16),
    /// Every file delivered and every hook succeeded.
    Done,
    /// The receiver exited without the files (exit code, if any, and how it
    /// ended in words); try again.
    Stopped(Option<i32>, String),
    /// A hook failed: how, in words (its exit status and the tail of its
    /// error output).
    HookFailed(String),
    /// The job was cancelled and its receiver stopped; the bytes of partial
    /// data removed (None: kept, or none could be removed).
    Cancelled(Option<u64>),
}

/// Lines of a failed hook's error output kept for the job's detail.
const HOOK_TAIL_LINES: usize = 3;

/// A file `recv` delivered, as its `done` event says.
#[derive(Debug, Clone)]
struct Delivered {
    name: String,
    path: String,
    bytes: u64,
    blake3: String,
}

/// A running fetch: the child's PID, so that a cancel can stop it.
pub struct Fetch {
    child_pid: u32,
    cancelled: Arc<AtomicBool>,
}

impl Fetch {
    /// Starts `recv` for `files` of `job` (stopping after `timeout`), reporting to `news`.
    pub fn start(
        config: &AgentConfig,
        job: u64,
        files: Vec<String>,
        archives: &[u64],
        timeout: Duration,
        max_rate_bps: u64,
        news: Sender<(u64, FetchNews)>,
    ) -> std::io::Result<Fetch> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command
            .arg("recv")
            .arg("--json")
            .arg("-k")
            .arg(&config.key_path)
            .arg("--out")
            .arg(&config.out_dir)
            .arg("--director")
            .arg(config.director_list())
            .arg("--timeout")
            .arg(timeout.as_secs().max(1).to_string());
        if let Some(interface) = &config.interface {
            command.arg("--interface").arg(interface);
        }
        if max_rate_bps > 0 {
            command.arg("--max-rate").arg(max_rate_bps.to_string());
        }
        if let Some(dir) = &config.keep_archive {
            command.arg("--keep-archive").arg(dir);
        }
        // Each file pinned to its job's archive: `recv NAME@ARCHIVE` takes no other.
        let wanted = files
            .iter()
            .enumerate()
            .map(|(i, f)| match archives.get(i) {
                Some(&id) if id != 0 => format!("{f}@{id:016x}"),
                _ => f.clone(),
            });
        command.arg("--").args(wanted);
        // SAFETY: prctl is async-signal-safe; between fork and exec it only asks
        // the kernel to SIGTERM the child if the agent dies (even by SIGKILL), so
        // that no receiver outlives its agent (its progress stays for the resume).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let child_pid = child.id();
        let cancelled = Arc::new(AtomicBool::new(false));
        if let Some(stderr) = child.stderr.take() {
            let cancelled = cancelled.clone();
            std::thread::Builder::new()
                .name(format!("job-{job}-log"))
                .spawn(move || pass_log(stderr, &cancelled))?;
        }
        let hook = config.on_complete.clone();
        let (out_dir, keep_partial) = (config.out_dir.clone(), config.keep_partial);
        let stopped = cancelled.clone();
        std::thread::Builder::new()
            .name(format!("job-{job}"))
            .spawn(move || {
                let last = follow(&mut child, &files, job, &news);
                let status = child.wait();
                let end = match stopped.load(Ordering::Relaxed) {
                    true => cancelled_end(job, &out_dir, &files, keep_partial),
                    false => finish(job, status, last, hook.as_deref()),
                };
                let _ = news.send((job, end));
            })?;
        Ok(Fetch {
            child_pid,
            cancelled,
        })
    }

    /// Cancels: stops the child, whose end then removes what it received
    /// (unless `--keep-partial`) and is told as `FetchNews::Cancelled`.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.stop();
    }

    /// Stops the child (SIGTERM to the PID we started; its progress stays for a resume).
    pub fn stop(&self) {
        // SAFETY: kill has no memory preconditions; the PID is our own child's,
        // not yet reaped (its thread waits for it).
        unsafe {
            libc::kill(self.child_pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// Reads the child's events until its stdout closes; returns the files delivered.
fn follow(
    child: &mut Child,
    files: &[String],
    job: u64,
    news: &Sender<(u64, FetchNews)>,
) -> Vec<Delivered> {
    let Some(stdout) = child.stdout.take() else {
        return Vec::new();
    };
    // Per file: (packets held, packets in all).
    let mut held: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut delivered = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let file = event["file"].as_str().unwrap_or_default().to_owned();
        match event["event"].as_str() {
            Some("progress") => {
                let packets = event["packets"].as_u64().unwrap_or(0);
                held.insert(file, (event["held"].as_u64().unwrap_or(0), packets));
            }
            Some("done") => {
                delivered.push(Delivered {
                    name: file.clone(),
                    path: event["path"].as_str().unwrap_or_default().to_owned(),
                    bytes: event["bytes"].as_u64().unwrap_or(0),
                    blake3: event["blake3"].as_str().unwrap_or_default().to_owned(),
                });
                held.insert(file, (1, 1));
            }
            _ => continue,
        }
        // Files not heard of yet count as nothing held.
        let done: f64 = files
            .iter()
            .map(|f| {
                held.get(f)
                    .map_or(0.0, |&(h, n)| h as f64 / n.max(1) as f64)
            })
            .sum();
        let permille = (1000.0 * done / files.len().max(1) as f64) as u16;
        let _ = news.send((job, FetchNews::Progress(permille.min(999))));
    }
    delivered
}

/// Passes the receiver's log lines on to ours; once the job is cancelled, its
/// last line (an interrupted receiver's "run again to resume") is not ours to say.
fn pass_log(stderr: std::process::ChildStderr, cancelled: &AtomicBool) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if cancelled.load(Ordering::Relaxed) && line.starts_with("loopcast: error: interrupted") {
            continue;
        }
        eprintln!("{line}");
    }
}

/// A cancelled job's end: what it received is removed unless kept.
fn cancelled_end(job: u64, out_dir: &std::path::Path, files: &[String], keep: bool) -> FetchNews {
    if keep {
        return FetchNews::Cancelled(None);
    }
    match crate::storage::discard_partial(out_dir, files) {
        Ok(freed) => FetchNews::Cancelled(Some(freed)),
        Err(e) => {
            log::warn!("job {job}: cannot remove what it received: {e}");
            FetchNews::Cancelled(None)
        }
    }
}

/// How a process ended, in words: "exit 3", "killed by signal 9".
pub fn exit_words(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".to_string(),
    }
}

/// What the child's end means, after running the hook for each file delivered.
fn finish(
    job: u64,
    status: std::io::Result<ExitStatus>,
    delivered: Vec<Delivered>,
    hook: Option<&str>,
) -> FetchNews {
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return FetchNews::Stopped(s.code(), exit_words(s)),
        Err(e) => return FetchNews::Stopped(None, e.to_string()),
    }
    let Some(hook) = hook else {
        return FetchNews::Done;
    };
    for file in delivered {
        if let Err(how) = run_hook(job, hook, &file) {
            log::warn!("job {job}: --on-complete for {} failed: {how}", file.name);
            return FetchNews::HookFailed(how);
        }
    }
    FetchNews::Done
}

/// Runs the hook for `file`; its output is logged line by line. Err: how it
/// failed, with the tail of its error output.
fn run_hook(job: u64, hook: &str, file: &Delivered) -> Result<(), String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(hook)
        .env("LOOPCAST_JOB", job.to_string())
        .env("LOOPCAST_NAME", &file.name)
        .env("LOOPCAST_PATH", &file.path)
        .env("LOOPCAST_SIZE", file.bytes.to_string())
        .env("LOOPCAST_BLAKE3", &file.blake3)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let name = file.name.clone();
    let stdout = child.stdout.take();
    let out_thread = std::thread::spawn(move || {
        for line in stdout
            .map(BufReader::new)
            .into_iter()
            .flat_map(|r| r.lines())
        {
            let Ok(line) = line else { break };
            log::info!(
                "job {job}: hook ({name}): {}",
                crate::units::printable(&line)
            );
        }
    });
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for line in (child.stderr.take().map(BufReader::new).into_iter()).flat_map(|r| r.lines()) {
        let Ok(line) = line else { break };
        log::warn!(
            "job {job}: hook ({}) error output: {}",
            file.name,
            crate::units::printable(&line)
        );
        tail.push_back(line);
        if tail.len() > HOOK_TAIL_LINES {
            tail.pop_front();
        }
    }
    let _ = out_thread.join();
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for it: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let tail: Vec<String> = tail.into_iter().filter(|l| !l.trim().is_empty()).collect();
    Err(match tail.is_empty() {
        true => exit_words(status),
        false => format!("{}: {}", exit_words(status), tail.join(" / ")),
    })
}
