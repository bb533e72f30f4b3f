//! One job's fetch: a `loopcast recv --json` child process of this binary (an
//! ordinary receiver session: multicast, unicast fallback, failover, resume),
//! its JSON events read on a thread of its own, then the `--on-complete` hook
//! for each file delivered.

use super::AgentConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// What a fetch tells the agent's loop.
#[derive(Debug)]
pub enum FetchNews {
    /// Thousandths of the job's packets held.
    Progress(u16),
    /// Every file delivered and every hook succeeded.
    Done,
    /// The receiver exited without the files (exit code, if any); try again.
    Stopped(Option<i32>),
    /// A hook failed (its exit code, if any).
    HookFailed(Option<i32>),
}

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
}

impl Fetch {
    /// Starts `recv` for `files` of `job` (stopping after `timeout`), reporting to `news`.
    pub fn start(
        config: &AgentConfig,
        job: u64,
        files: Vec<String>,
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
        command.arg("--").args(&files);
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
            .stderr(Stdio::inherit())
            .spawn()?;
        let child_pid = child.id();
        let hook = config.on_complete.clone();
        std::thread::Builder::new()
            .name(format!("job-{job}"))
            .spawn(move || {
                let last = follow(&mut child, &files, job, &news);
                let status = child.wait();
                let _ = news.send((job, finish(job, status, last, hook.as_deref())));
            })?;
        Ok(Fetch { child_pid })
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

/// What the child's end means, after running the hook for each file delivered.
fn finish(
    job: u64,
    status: std::io::Result<ExitStatus>,
    delivered: Vec<Delivered>,
    hook: Option<&str>,
) -> FetchNews {
    let status = match status {
        Ok(s) if s.success() => s,
        Ok(s) => return FetchNews::Stopped(s.code()),
        Err(_) => return FetchNews::Stopped(None),
    };
    debug_assert!(status.success());
    let Some(hook) = hook else {
        return FetchNews::Done;
    };
    for file in delivered {
        let run = Command::new("/bin/sh")
            .arg("-c")
            .arg(hook)
            .env("LOOPCAST_JOB", job.to_string())
            .env("LOOPCAST_NAME", &file.name)
            .env("LOOPCAST_PATH", &file.path)
            .env("LOOPCAST_SIZE", file.bytes.to_string())
            .env("LOOPCAST_BLAKE3", &file.blake3)
            .stdin(Stdio::null())
            .status();
        match run {
            Ok(s) if s.success() => {}
            Ok(s) => {
                log::warn!("job {job}: --on-complete for {} exited with {s}", file.name);
                return FetchNews::HookFailed(s.code());
            }
            Err(e) => {
                log::warn!("job {job}: cannot run --on-complete: {e}");
                return FetchNews::HookFailed(None);
            }
        }
    }
    FetchNews::Done
}
