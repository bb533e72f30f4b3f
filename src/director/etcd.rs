//! Jobs on etcd for several directors (spec §10.5): each director campaigns in
//! an etcd election under a lease; the one elected schedules (the protocol
//! machine's `set_scheduling`) and writes changed jobs in transactions fenced
//! on its leadership key; the others read the jobs every 500 ms and answer
//! look-ups and status. Consensus is etcd's; this is a client on a thread of
//! its own (tokio, as etcd-client needs).

use super::store::{parse_record, records};
use crate::error::{Error, Result};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use loopcast_proto::director::Director;
use loopcast_proto::jobs::Job;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Seconds a director's lease lives without keep-alives: a dead scheduler is
/// replaced within about this long.
pub const LEASE_TTL: i64 = 3;
/// How often keep-alives go, and how often a follower reads the jobs.
const TICK: Duration = Duration::from_millis(500);
/// Most operations in one transaction (etcd's default limit is 128).
const OPS_PER_TXN: usize = 100;
/// How long one request to etcd may take (but the campaign, which waits).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a save waits for etcd.
const SAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the director's threads ask of the etcd thread.
enum Request {
    /// Write these records (id, JSON or None to delete) if this director schedules.
    Save(
        Vec<(u64, Option<String>)>,
        oneshot::Sender<std::result::Result<(), String>>,
    ),
    /// Give up leadership now (revoke the lease), then stop.
    Stop(oneshot::Sender<()>),
}

/// The handle the director's threads hold.
pub struct EtcdStore {
    requests: mpsc::UnboundedSender<Request>,
}

impl EtcdStore {
    /// Starts the etcd thread for `endpoints`, keys under `prefix`; `me` (this
    /// director's API address) is what the others show as the scheduler.
    pub fn start(
        endpoints: Vec<String>,
        prefix: String,
        me: String,
        director: Arc<Mutex<Director>>,
    ) -> Result<EtcdStore> {
        let (requests, inbox) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(format!("cannot start the etcd client: {e}")))?;
        std::thread::Builder::new()
            .name("director-etcd".into())
            .spawn(move || runtime.block_on(run(endpoints, prefix, me, director, inbox)))
            .map_err(|e| Error::new(format!("cannot start the etcd thread: {e}")))?;
        Ok(EtcdStore { requests })
    }

    /// Writes the jobs changed in `d`, if `d` schedules, and waits for etcd.
    pub fn save_changed(&self, d: &mut Director) -> Result<()> {
        let ids = d.take_dirty_jobs();
        if ids.is_empty() || !d.scheduling() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        let gone = || Error::new("the etcd thread stopped");
        (self.requests.send(Request::Save(records(d, &ids), reply))).map_err(|_| gone())?;
        let started = Instant::now();
        let mut answer = answer;
        loop {
            match answer.try_recv() {
                Ok(result) => return result.map_err(|e| Error::new(format!("etcd: {e}"))),
                Err(oneshot::error::TryRecvError::Closed) => return Err(gone()),
                Err(oneshot::error::TryRecvError::Empty) if started.elapsed() < SAVE_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return Err(Error::new("etcd did not answer within 5 s")),
            }
        }
    }

    /// Revokes this director's lease (a follower takes over at once), at most 2 s.
    pub fn stop(&self) {
        let (done, wait) = oneshot::channel();
        if self.requests.send(Request::Stop(done)).is_ok() {
            let started = Instant::now();
            let mut wait = wait;
            while matches!(wait.try_recv(), Err(oneshot::error::TryRecvError::Empty))
                && started.elapsed() < Duration::from_secs(2)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn lock(d: &Mutex<Director>) -> std::sync::MutexGuard<'_, Director> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sessions one after another: an error (etcd unreachable, lease lost,
/// leadership lost) makes this director a follower, and it starts again.
async fn run(
    endpoints: Vec<String>,
    prefix: String,
    me: String,
    director: Arc<Mutex<Director>>,
    mut inbox: mpsc::UnboundedReceiver<Request>,
) {
    loop {
        match session(&endpoints, &prefix, &me, &director, &mut inbox).await {
            Ok(()) => return,
            Err(e) => {
                let was = lock(&director).scheduling();
                lock(&director).set_scheduling(false, None);
                if was {
                    log::warn!("etcd: {e}; no longer scheduling jobs");
                } else {
                    log::warn!("etcd: {e}");
                }
                // Saves asked meanwhile are not this director's to make.
                while let Ok(request) = inbox.try_recv() {
                    match request {
                        Request::Save(_, reply) => {
                            let _ = reply.send(Err("not scheduling".into()));
                        }
                        Request::Stop(done) => {
                            let _ = done.send(());
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn session(
    endpoints: &[String],
    prefix: &str,
    me: &str,
    director: &Mutex<Director>,
    inbox: &mut mpsc::UnboundedReceiver<Request>,
) -> std::result::Result<(), String> {
    // No time-out on the connection: the campaign waits as long as another
    // director leads. Every other request has its own (`bounded`).
    let options = ConnectOptions::new().with_connect_timeout(REQUEST_TIMEOUT);
    let client = bounded(Client::connect(endpoints, Some(options))).await?;
    let mut kv = client.kv_client();
    let mut leases = client.lease_client();
    let lease = bounded(leases.grant(LEASE_TTL, None)).await?.id();
    let (mut keeper, mut alive) = bounded(leases.keep_alive(lease)).await?;
    let election = format!("{prefix}/scheduler");
    let mut campaigner = client.election_client();
    let mut asker = client.election_client();
    let campaign = campaigner.campaign(election.clone(), me, lease);
    tokio::pin!(campaign);
    // Our leadership key and its creation revision, once elected.
    let mut leading: Option<(Vec<u8>, i64)> = None;
    let mut tick = tokio::time::interval(TICK);
    log::info!("etcd: campaigning to schedule jobs (lease {lease:x}, {LEASE_TTL} s)");
    loop {
        tokio::select! {
            won = &mut campaign, if leading.is_none() => {
                let won = won.map_err(|e| e.to_string())?;
                let key = won.leader().ok_or("elected without a leadership key")?;
                leading = Some((key.key().to_vec(), key.rev()));
                let jobs = load(&mut kv, prefix).await?;
                let count = jobs.len();
                let mut d = lock(director);
                d.replace_jobs(jobs);
                d.set_scheduling(true, None);
                log::info!("etcd: this director now schedules jobs ({count} in the store)");
            }
            request = inbox.recv() => match request {
                Some(Request::Save(records, reply)) => {
                    let result = match &leading {
                        Some((key, rev)) => save(&mut kv, prefix, key, *rev, records).await,
                        None => Err("not scheduling".into()),
                    };
                    let failed = result.clone().err();
                    let _ = reply.send(result);
                    if let Some(e) = failed {
                        return Err(e);
                    }
                }
                stop => {
                    let _ = bounded(leases.revoke(lease)).await;
                    lock(director).set_scheduling(false, None);
                    if let Some(Request::Stop(done)) = stop {
                        let _ = done.send(());
                    }
                    return Ok(());
                }
            },
            message = alive.message() => match message {
                Ok(Some(m)) if m.ttl() > 0 => {}
                Ok(_) => return Err("the lease expired".into()),
                Err(e) => return Err(e.to_string()),
            },
            _ = tick.tick() => {
                bounded(keeper.keep_alive()).await?;
                if leading.is_none() {
                    // Follow the store, and tell who schedules.
                    let jobs = load(&mut kv, prefix).await?;
                    let leader = (bounded(asker.leader(election.clone())).await.ok())
                        .and_then(|r| r.kv().and_then(|kv| kv.value_str().ok().map(str::to_owned)));
                    let mut d = lock(director);
                    d.replace_jobs(jobs);
                    d.set_scheduling(false, leader);
                }
            }
        }
    }
}

fn job_key(prefix: &str, id: u64) -> String {
    format!("{prefix}/jobs/{id:020}")
}

/// Every job under `prefix` (a record that does not read is skipped, logged).
async fn load(
    kv: &mut etcd_client::KvClient,
    prefix: &str,
) -> std::result::Result<Vec<Job>, String> {
    let all = format!("{prefix}/jobs/");
    let got = bounded(kv.get(all, Some(GetOptions::new().with_prefix()))).await?;
    let mut jobs = Vec::new();
    for record in got.kvs() {
        match parse_record(record.value()) {
            Some(job) => jobs.push(job),
            None => log::warn!("etcd: {:?} is not a job record", record.key_str()),
        }
    }
    Ok(jobs)
}

/// Writes `records` in transactions that apply only while our leadership key
/// (created at `rev`) stands: a director that lost the election writes nothing.
async fn save(
    kv: &mut etcd_client::KvClient,
    prefix: &str,
    key: &[u8],
    rev: i64,
    records: Vec<(u64, Option<String>)>,
) -> std::result::Result<(), String> {
    for chunk in records.chunks(OPS_PER_TXN) {
        let ops: Vec<TxnOp> = (chunk.iter())
            .map(|(id, record)| match record {
                Some(json) => TxnOp::put(job_key(prefix, *id), json.as_str(), None),
                None => TxnOp::delete(job_key(prefix, *id), None),
            })
            .collect();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, rev)])
            .and_then(ops);
        let done = bounded(kv.txn(txn)).await?;
        if !done.succeeded() {
            return Err("lost the election (leadership key gone)".into());
        }
    }
    Ok(())
}

/// `request`, failing after `REQUEST_TIMEOUT`.
async fn bounded<T>(
    request: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
    }
}
