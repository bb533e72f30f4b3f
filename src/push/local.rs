//! A push of files on this host: `push` serves them itself — a `loopcast serve`
//! child heartbeating to the director, on demand, on a unicast port of its own
//! so that it never collides with another server of the host — for as long as
//! the job runs. A file some server carries already (the same contents: the
//! same blake3) is pushed from there instead.

use super::PushConfig;
use crate::error::{Error, Result};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the local server has to stop after SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The `serve` child; stopped (SIGTERM, by its PID) when dropped.
pub struct LocalServer {
    child: Child,
}

impl LocalServer {
    /// Starts serving `files`, heartbeating to the director at `udp`.
    pub fn start(
        config: &PushConfig,
        files: &[std::path::PathBuf],
        udp: SocketAddr,
    ) -> Result<LocalServer> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::new(format!("cannot find this program to serve with: {e}")))?;
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .args(files)
            .arg("-k")
            .arg(&config.key_path)
            .arg("--director")
            .arg(udp.to_string())
            .arg("--on-demand")
            .args(["--unicast-port", "0"]);
        if let Some(interface) = &config.interface {
            command.arg("--interface").arg(interface);
        }
        if let Some(group) = &config.group {
            command.arg("--group").arg(group.to_string());
        }
        if config.max_rate_bps > 0 {
            command.arg("--rate").arg(config.max_rate_bps.to_string());
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn"); // its receivers' comings and goings are not the push's
        }
        // SAFETY: prctl is async-signal-safe; the server dies with the push (which
        // forks it from its only thread), even if the push is SIGKILLed.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| Error::new(format!("cannot start serving: {e}")))?;
        log::info!(
            "serving {} from this host until the job ends",
            (files.iter())
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(LocalServer { child })
    }

    /// Waits until the director lists every one of `names` (packing comes first,
    /// so a big file takes a while), or the server fails, or `limit` passes.
    pub fn wait_listed(
        &mut self,
        directors: &[SocketAddr],
        key: &loopcast_proto::wire::MacKey,
        names: &[String],
        limit: Duration,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::new(format!(
                    "serving the files failed ({status}); see its error above"
                )));
            }
            let listed = (directors.iter())
                .find_map(|&d| super::get_listing(d, "/v1/files", "name", Some(key)).ok())
                .is_some_and(|(_, files)| {
                    names.iter().all(|n| {
                        (files.as_array().into_iter().flatten()).any(|f| f["name"] == n.as_str())
                    })
                });
            if listed {
                return Ok(());
            }
            if start.elapsed() >= limit {
                return Err(Error::new(format!(
                    "the director did not list {} within {} s of serving it",
                    names.join(", "),
                    limit.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The files of `config.serve` no live server carries: those to serve here. A
/// file on air with the same contents is pushed from there; one whose name is
/// on air with other contents is refused (the job names files by name, so a
/// node could get either).
pub fn not_on_air(config: &PushConfig) -> Result<Vec<std::path::PathBuf>> {
    if config.serve.is_empty() {
        return Ok(Vec::new());
    }
    let files = (config.directors.iter())
        .find_map(|&d| super::get_listing(d, "/v1/files", "name", Some(&config.key)).ok())
        .map(|(_, files)| files)
        .unwrap_or_default();
    let mut to_serve = Vec::new();
    for path in &config.serve {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let versions: Vec<&serde_json::Value> = (files.as_array().into_iter().flatten())
            .filter(|f| f["name"] == name)
            .flat_map(|f| f["versions"].as_array().into_iter().flatten())
            .collect();
        if versions.is_empty() {
            to_serve.push(path.clone());
            continue;
        }
        let digest = file_digest(path)?;
        match versions.iter().find(|v| v["blake3"] == digest.as_str()) {
            Some(v) => log::info!(
                "{name} is on air already with the same contents (archive {}, from {}); pushing that",
                v["archive_id"].as_str().unwrap_or("?"),
                v["servers"][0]["address"].as_str().unwrap_or("?")
            ),
            None => {
                return Err(Error::new(format!(
                    "{name} is on air with other contents (archive {}, blake3 {}, from {}); this file's blake3 is {digest}: rename it, or stop that server",
                    versions[0]["archive_id"].as_str().unwrap_or("?"),
                    versions[0]["blake3"].as_str().unwrap_or("?"),
                    versions[0]["servers"][0]["address"].as_str().unwrap_or("?")
                )));
            }
        }
    }
    Ok(to_serve)
}

/// The blake3 digest of the file at `path`, hex (as the manifest has it).
fn file_digest(path: &std::path::Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    std::fs::File::open(path)
        .and_then(|file| hasher.update_reader(file).map(|_| ()))
        .map_err(|e| Error::new(format!("cannot read {}: {e}", path.display())))?;
    Ok(hasher.finalize().to_hex().to_string())
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the PID is our unreaped child's.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < STOP_WAIT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
