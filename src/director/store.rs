//! Where a director keeps its jobs: nowhere (memory only), a redb file in its
//! state directory (one director), or etcd (several directors, one of them
//! elected to schedule: `etcd`).

use super::changes::Changes;
use super::job_json::{job_from_json, job_json};
use crate::error::{Context, Error, Result};
use loopcast_proto::director::Director;
use loopcast_proto::jobs::Job;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use std::path::Path;

/// Job id → the job's JSON.
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");

/// A director's job store.
pub enum Store {
    /// Jobs live in memory and die with the process.
    Memory,
    /// `--state DIR`: a redb file.
    Redb(RedbStore),
    /// `--etcd URL,…`: shared by several directors.
    Etcd(super::etcd::EtcdStore),
}

impl Store {
    /// Takes what changed in `d` since the last take (quick: called with the
    /// director locked). A director that does not schedule, or keeps jobs in
    /// memory, has nothing to write.
    pub fn take(&self, d: &mut Director) -> Changes {
        let dirty = d.take_dirty_jobs();
        let copy = |id: u64| (id, d.job(id).cloned());
        match self {
            Store::Memory => Changes::default(),
            Store::Etcd(_) if !d.scheduling() => Changes::default(),
            Store::Etcd(_) => Changes {
                jobs: dirty.jobs.into_iter().map(copy).collect(),
                moved: (dirty.moved.into_iter())
                    .filter_map(|(id, node)| {
                        let progress = d.job(id)?.nodes.get(&node)?.clone();
                        Some((id, node, progress))
                    })
                    .collect(),
            },
            Store::Redb(_) => {
                let mut ids: Vec<u64> = dirty.jobs;
                ids.extend(dirty.moved.into_iter().map(|(id, _)| id));
                ids.sort_unstable();
                ids.dedup();
                Changes {
                    jobs: ids.into_iter().map(copy).collect(),
                    moved: Vec::new(),
                }
            }
        }
    }

    /// Writes `changes` (slow: etcd may take seconds, so it is called without
    /// the director's lock, which the UDP loop needs).
    pub fn write(&self, changes: Changes) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        match self {
            Store::Memory => Ok(()),
            Store::Redb(s) => s.write(changes),
            Store::Etcd(s) => s.write(changes),
        }
    }

    /// Whether a failed save should stop the director (a local disk error),
    /// rather than be logged (etcd, where losing leadership is routine).
    pub fn failure_is_fatal(&self) -> bool {
        matches!(self, Store::Redb(_))
    }

    /// The store's kind, for the status API.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Redb(_) => "redb",
            Store::Etcd(_) => "etcd",
        }
    }
}

/// A job from its stored record.
pub fn parse_record(bytes: &[u8]) -> Option<Job> {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| job_from_json(&v))
}

/// Jobs kept across restarts in `DIR/jobs.redb`.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`, a directory of ours (created 0700 if missing).
    pub fn open(dir: &Path) -> Result<RedbStore> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .context(|| format!("cannot create {}", parent.display()))?;
        }
        crate::storage::own_dir(dir)?;
        let path = dir.join("jobs.redb");
        let db = Database::create(&path)
            .context(|| format!("cannot open the job store {}", path.display()))?;
        Ok(RedbStore { db })
    }

    /// Every job stored.
    pub fn load(&self) -> Result<Vec<Job>> {
        let fail =
            |e: &dyn std::fmt::Display| Error::new(format!("cannot read the job store: {e}"));
        let txn = self.db.begin_read().map_err(|e| fail(&e))?;
        let table = match txn.open_table(JOBS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(fail(&e)),
        };
        let mut jobs = Vec::new();
        for entry in table.iter().map_err(|e| fail(&e))? {
            let (id, bytes) = entry.map_err(|e| fail(&e))?;
            // A record that does not read, or that no request could have made,
            // is left out (and told), never fatal.
            match parse_record(bytes.value()) {
                Some(job) => jobs.push(job),
                None => log::warn!(
                    "job {} in the store is not a valid job record; left out",
                    id.value()
                ),
            }
        }
        Ok(jobs)
    }

    /// Writes `changes` (a job no longer held is removed), in one transaction.
    pub fn write(&self, changes: Changes) -> Result<()> {
        let fail =
            |e: &dyn std::fmt::Display| Error::new(format!("cannot write the job store: {e}"));
        let txn = self.db.begin_write().map_err(|e| fail(&e))?;
        {
            let mut table = txn.open_table(JOBS).map_err(|e| fail(&e))?;
            for (id, job) in changes.jobs {
                match job {
                    Some(job) => {
                        let record = job_json(&job, None).to_string();
                        table.insert(id, record.as_bytes()).map(drop)
                    }
                    None => table.remove(id).map(drop),
                }
                .map_err(|e| fail(&e))?;
            }
        }
        txn.commit().map_err(|e| fail(&e))
    }
}
