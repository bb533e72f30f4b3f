//! A follower's copy of the store (spec §10.5), brought up to date each tick
//! by what changed since it last read. A keys-only read of the job records
//! gives the store's revision and the jobs that exist; when the revision has
//! moved, the records and progress keys modified since are read at that
//! revision (etcd's `min_mod_revision`). A tick thus carries what changed, not
//! the whole store. A director elected brings the same copy up to date and
//! schedules from it.

use super::gateway::{Ask, Gateway};
use super::records;
use loopcast_proto::jobs::Job;
use std::collections::{BTreeMap, HashSet};

/// Record keys read per page (keys only).
const KEYS_PER_PAGE: usize = 1000;

/// What a follower holds of the store.
#[derive(Default)]
pub struct Followed {
    /// The store's revision when last read (0: never).
    revision: i64,
    /// Job records by key, as read.
    records: BTreeMap<String, Vec<u8>>,
    /// Targets' progress by key, as read.
    progress: BTreeMap<String, Vec<u8>>,
}

impl Followed {
    /// Reads what changed since the last call (the whole store on the
    /// first); true if anything did.
    pub fn update(&mut self, gateway: &Gateway, prefix: &str) -> Result<bool, String> {
        let (jobs_under, progress_under) = (
            records::jobs_prefix(prefix),
            records::progress_prefix(prefix),
        );
        let range = |under: &str, ask: Ask| {
            gateway.range(under.as_bytes(), &records::prefix_end(under), ask)
        };
        let keys_only = Ask {
            per_page: KEYS_PER_PAGE,
            keys_only: true,
            ..Ask::default()
        };
        let (live, revision) = range(&jobs_under, keys_only)?;
        if revision == self.revision {
            return Ok(false);
        }
        let changed = |per_page: usize| Ask {
            per_page,
            min_mod_revision: self.revision + 1,
            revision,
            ..Ask::default()
        };
        let (records, _) = range(&jobs_under, changed(records::RECORDS_PER_PAGE))?;
        let (progress, _) = range(&progress_under, changed(records::PROGRESS_PER_PAGE))?;
        // A job removed takes its record and its progress keys with it.
        let live: HashSet<String> = live.into_iter().map(|(key, _)| key).collect();
        self.records.retain(|key, _| live.contains(key));
        self.records.extend(records);
        self.progress.extend(progress);
        let held = &self.records;
        // (A key that is no progress key stays, to be told once by `assemble`.)
        self.progress.retain(|key, _| {
            records::progress_place(prefix, key)
                .is_none_or(|(id, _)| held.contains_key(&records::job_key(prefix, id)))
        });
        self.revision = revision;
        Ok(true)
    }

    /// The jobs as last read; what is not valid is left out and told once
    /// (`told`, T38).
    pub fn jobs(&self, prefix: &str, told: &mut HashSet<String>) -> Vec<Job> {
        let copy =
            |m: &BTreeMap<String, Vec<u8>>| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        records::assemble(prefix, copy(&self.records), copy(&self.progress), told)
    }
}
