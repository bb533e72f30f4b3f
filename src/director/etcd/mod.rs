//! Jobs on etcd for several directors (spec §10.5): each director campaigns in
//! an etcd election under a lease; the one elected schedules (the protocol
//! machine's `set_scheduling`) and writes changed jobs in transactions fenced
//! on its leadership key; the others read the jobs every 500 ms and answer
//! look-ups and status. Consensus is etcd's. This client speaks etcd's JSON
//! gateway (`gateway`) with the HTTP client the push already uses, so a build
//! needs no protobuf compiler; `records` lays the jobs out in keys.

mod follow;
mod gateway;
mod records;

pub use gateway::EtcdAccess;

use super::changes::Changes;
use crate::error::{Error, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use gateway::Gateway;
use loopcast_proto::director::Director;
use records::Op;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds a director's lease lives without keep-alives: a dead scheduler is
/// replaced within about this long.
pub const LEASE_TTL: i64 = 3;
/// How often keep-alives go, and how often a follower reads the jobs.
const TICK: Duration = Duration::from_millis(500);
/// How often the gateway's counters are logged (at debug).
const COUNTERS_EVERY: Duration = Duration::from_secs(5);
/// Most operations in one transaction (etcd's default limit is 128).
const OPS_PER_TXN: usize = 100;
/// Most bytes in one transaction (etcd refuses requests over 1.5 MiB by default).
const BYTES_PER_TXN: usize = 1 << 20;
/// How long one campaign request waits to be elected before it is asked
/// again (a campaign abandoned on etcd's side resigns; asked again under the
/// same lease, it finds its key).
const CAMPAIGN_WAIT: Duration = Duration::from_secs(20);
/// How long a save waits for etcd.
const SAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the director's threads ask of the etcd thread.
enum Request {
    /// Write these changes if this director schedules.
    Save(Changes, Sender<std::result::Result<(), String>>),
    /// Give up leadership now (revoke the lease), then stop.
    Stop(Sender<()>),
}

/// The handle the director's threads hold.
pub struct EtcdStore {
    requests: Sender<Request>,
}

impl EtcdStore {
    /// Starts the etcd thread for `access`, keys under `prefix`; `me` (this
    /// director's API address) is what the others show as the scheduler.
    pub fn start(
        access: &EtcdAccess,
        prefix: String,
        me: String,
        director: Arc<Mutex<Director>>,
    ) -> Result<EtcdStore> {
        let gateway = Gateway::new(access)?;
        let (requests, inbox) = mpsc::channel();
        std::thread::Builder::new()
            .name("director-etcd".into())
            .spawn(move || run(gateway, prefix, me, director, inbox))
            .map_err(|e| Error::new(format!("cannot start the etcd thread: {e}")))?;
        Ok(EtcdStore { requests })
    }

    /// Writes `changes` and waits for etcd (at most `SAVE_TIMEOUT`).
    pub fn write(&self, changes: Changes) -> Result<()> {
        let (reply, answer) = mpsc::channel();
        let gone = || Error::new("the etcd thread stopped");
        (self.requests.send(Request::Save(changes, reply))).map_err(|_| gone())?;
        match answer.recv_timeout(SAVE_TIMEOUT) {
            Ok(result) => result.map_err(|e| Error::new(format!("etcd: {e}"))),
            Err(RecvTimeoutError::Disconnected) => Err(gone()),
            Err(RecvTimeoutError::Timeout) => Err(Error::new(format!(
                "etcd did not answer within {} s",
                SAVE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Revokes this director's lease (a follower takes over at once), at most 2 s.
    pub fn stop(&self) {
        let (done, wait) = mpsc::channel();
        if self.requests.send(Request::Stop(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(2));
        }
    }
}

fn lock(d: &Mutex<Director>) -> std::sync::MutexGuard<'_, Director> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sessions one after another: an error (etcd unreachable, lease lost,
/// leadership lost) makes this director a follower, and it starts again.
fn run(
    gateway: Gateway,
    prefix: String,
    me: String,
    director: Arc<Mutex<Director>>,
    inbox: Receiver<Request>,
) {
    let mut failures = 0u32;
    let mut told = std::collections::HashSet::new();
    loop {
        let started = Instant::now();
        match session(&gateway, &prefix, &me, &director, &inbox, &mut told) {
            Ok(()) => return,
            Err(e) => {
                let was = lock(&director).scheduling();
                lock(&director).set_scheduling(false, None);
                // A session that ran a while is a new problem; the same failure
                // again is logged every 10th time (every 10 s or so).
                failures = if started.elapsed() > Duration::from_secs(10) {
                    0
                } else {
                    failures + 1
                };
                if was {
                    log::warn!("etcd: {e}; no longer scheduling jobs");
                } else if failures % 10 == 1 {
                    log::warn!("etcd: {e} (trying again every second)");
                }
                // Saves asked meanwhile are not this director's to make.
                let wait_until = Instant::now() + Duration::from_secs(1);
                while let Some(left) = wait_until.checked_duration_since(Instant::now()) {
                    match inbox.recv_timeout(left) {
                        Ok(Request::Save(_, reply)) => {
                            let _ = reply.send(Err("not scheduling".into()));
                        }
                        Ok(Request::Stop(done)) => {
                            let _ = done.send(());
                            return;
                        }
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
        }
    }
}

/// What the campaign thread reports: our leadership key and its creation
/// revision, or why the campaign failed.
type Won = std::result::Result<(String, i64), String>;

/// One lease: campaign (on a thread of its own, since etcd answers a campaign
/// only once elected), keep the lease alive, follow or schedule.
fn session(
    gateway: &Gateway,
    prefix: &str,
    me: &str,
    director: &Mutex<Director>,
    inbox: &Receiver<Request>,
    told: &mut std::collections::HashSet<String>,
) -> std::result::Result<(), String> {
    let granted = gateway.call("/v3/lease/grant", &json!({ "TTL": LEASE_TTL }), None)?;
    let lease = int(&granted["ID"]).ok_or("etcd granted no lease")?;
    let election = format!("{prefix}/scheduler");
    let abandoned = Arc::new(AtomicBool::new(false));
    let won = campaign(gateway.clone(), &election, me, lease, abandoned.clone())?;
    let result = lead_or_follow(
        gateway, prefix, &election, lease, director, inbox, &won, told,
    );
    abandoned.store(true, Ordering::Relaxed);
    if result.is_err() {
        // Best effort: a follower takes over at once instead of after the TTL.
        let _ = gateway.call(
            "/v3/lease/revoke",
            &json!({ "ID": lease.to_string() }),
            None,
        );
    }
    result
}

/// Starts the campaign thread under `lease`.
fn campaign(
    gateway: Gateway,
    election: &str,
    me: &str,
    lease: i64,
    abandoned: Arc<AtomicBool>,
) -> std::result::Result<Receiver<Won>, String> {
    let (tell, won) = mpsc::channel();
    let body = json!({"name": BASE64.encode(election), "lease": lease.to_string(),
                      "value": BASE64.encode(me)});
    std::thread::Builder::new()
        .name("director-campaign".into())
        .spawn(move || {
            while !abandoned.load(Ordering::Relaxed) {
                match gateway.call("/v3/election/campaign", &body, Some(CAMPAIGN_WAIT)) {
                    Err(e) if e.contains("no answer") => continue,
                    Err(e) => {
                        let _ = tell.send(Err(e));
                        return;
                    }
                    Ok(answer) => {
                        let leader = &answer["leader"];
                        let key = leader["key"].as_str().map(str::to_owned);
                        let rev = int(&leader["rev"]);
                        let _ = tell.send(match (key, rev) {
                            (Some(key), Some(rev)) => Ok((key, rev)),
                            _ => Err("elected without a leadership key".into()),
                        });
                        return;
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the campaign thread: {e}"))?;
    log::info!("etcd: campaigning to schedule jobs (lease {lease:x}, {LEASE_TTL} s)");
    Ok(won)
}

/// The session's loop: every `TICK` the lease is kept alive and, until
/// elected, the jobs are read from etcd; saves are written while elected.
/// (Eight arguments: the session's parts, each used here once.)
#[allow(clippy::too_many_arguments)]
fn lead_or_follow(
    gateway: &Gateway,
    prefix: &str,
    election: &str,
    lease: i64,
    director: &Mutex<Director>,
    inbox: &Receiver<Request>,
    won: &Receiver<Won>,
    told: &mut std::collections::HashSet<String>,
) -> std::result::Result<(), String> {
    // Our leadership key (base64, as etcd gives it) and its creation revision.
    let mut leading: Option<(String, i64)> = None;
    let mut followed = follow::Followed::default();
    let mut next_tick = Instant::now();
    let mut next_counters = next_tick + COUNTERS_EVERY;
    loop {
        let now = Instant::now();
        if now >= next_counters {
            next_counters = now + COUNTERS_EVERY;
            gateway.log_counters();
        }
        if now >= next_tick {
            next_tick = now + TICK;
            let alive = gateway.call(
                "/v3/lease/keepalive",
                &json!({ "ID": lease.to_string() }),
                None,
            )?;
            if int(&alive["result"]["TTL"]).unwrap_or(0) <= 0 {
                return Err("the lease expired".into());
            }
            if leading.is_none() {
                match won.try_recv() {
                    Ok(Ok(key)) => {
                        followed.update(gateway, prefix)?;
                        let jobs = followed.jobs(prefix, told);
                        let count = jobs.len();
                        let mut d = lock(director);
                        d.replace_jobs(jobs);
                        d.set_scheduling(true, None);
                        leading = Some(key);
                        log::info!("etcd: this director now schedules jobs ({count} in the store)");
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(mpsc::TryRecvError::Disconnected) => {
                        return Err("the campaign stopped".into());
                    }
                    Err(mpsc::TryRecvError::Empty) => {
                        // Follow the store (what changed), and tell who schedules.
                        let changed = followed.update(gateway, prefix)?;
                        let asked = json!({ "name": BASE64.encode(election) });
                        let leader = (gateway.call("/v3/election/leader", &asked, None).ok())
                            .and_then(|a| a["kv"]["value"].as_str().and_then(decode_text));
                        let mut d = lock(director);
                        if changed {
                            d.replace_jobs(followed.jobs(prefix, told));
                        }
                        d.set_scheduling(false, leader);
                    }
                }
            }
        }
        match inbox.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(Request::Save(records, reply)) => {
                let result = match &leading {
                    Some((key, rev)) => save(gateway, prefix, key, *rev, &records),
                    None => Err("not scheduling".into()),
                };
                let failed = result.clone().err();
                let _ = reply.send(result);
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            Ok(Request::Stop(done)) => {
                let _ = gateway.call(
                    "/v3/lease/revoke",
                    &json!({ "ID": lease.to_string() }),
                    None,
                );
                lock(director).set_scheduling(false, None);
                let _ = done.send(());
                return Ok(());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = gateway.call(
                    "/v3/lease/revoke",
                    &json!({ "ID": lease.to_string() }),
                    None,
                );
                return Ok(());
            }
        }
    }
}

/// Writes `changes` in transactions that apply only while our leadership key
/// (created at `rev`) stands: a director that lost the election writes nothing.
fn save(
    gateway: &Gateway,
    prefix: &str,
    key: &str,
    rev: i64,
    changes: &Changes,
) -> std::result::Result<(), String> {
    let ops: Vec<(usize, Value)> = (records::ops(prefix, changes).into_iter())
        .map(|op| match op {
            Op::Put(at, value) => (
                at.len() + value.len(),
                json!({"request_put": {"key": BASE64.encode(at), "value": BASE64.encode(value)}}),
            ),
            Op::Delete(at) => (at.len(), json!({"request_delete_range": {"key": BASE64.encode(at)}})),
            Op::DeletePrefix(at) => (
                2 * at.len(),
                json!({"request_delete_range": {"key": BASE64.encode(&at),
                                                "range_end": BASE64.encode(records::prefix_end(&at))}}),
            ),
        })
        .collect();
    let mut rest = &ops[..];
    while !rest.is_empty() {
        // As many as fit one transaction (at least one: a record fits).
        let mut bytes = 0;
        let count = (rest.iter().take(OPS_PER_TXN))
            .take_while(|(size, _)| {
                bytes += size * 4 / 3;
                bytes <= BYTES_PER_TXN
            })
            .count()
            .max(1);
        let (chunk, after) = rest.split_at(count);
        rest = after;
        let txn = json!({
            "compare": [{"target": "CREATE", "key": key, "result": "EQUAL",
                         "create_revision": rev.to_string()}],
            "success": chunk.iter().map(|(_, op)| op.clone()).collect::<Vec<_>>(),
        });
        let done = gateway.call("/v3/kv/txn", &txn, None)?;
        if done["succeeded"].as_bool() != Some(true) {
            return Err("lost the election (leadership key gone)".into());
        }
    }
    Ok(())
}

/// etcd's 64-bit integers, which its gateway writes as strings.
fn int(value: &Value) -> Option<i64> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| value.as_i64())
}

fn decode_text(base64: &str) -> Option<String> {
    let bytes = BASE64.decode(base64).ok()?;
    String::from_utf8(bytes).ok()
}
