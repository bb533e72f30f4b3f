//! The jobs' layout on etcd (spec §10.5): `PREFIX/jobs/ID` (20 digits) holds
//! a job's record, its fields and its targets' names; `PREFIX/progress/ID/NODE`
//! holds one target's progress, and a target without one is waiting since the
//! job was made. A tick of progress writes only the targets that moved; a
//! record is written when its job is made or changes state, and removed with
//! its progress.

use super::super::changes::Changes;
use super::super::job_json::{job_from_record, progress_from_json, progress_json, record_json};
use loopcast_proto::jobs::Job;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

/// Records read per page.
pub const RECORDS_PER_PAGE: usize = 32;
/// Progress keys read per page.
pub const PROGRESS_PER_PAGE: usize = 4096;
/// The largest record a job the API takes can make (16 files of 255 bytes
/// escaped, 4096 targets of 64 bytes): a test checks it. A page of them sizes
/// `gateway::MAX_ANSWER_BYTES`; one record fits etcd's request limit (1.5 MiB
/// by default).
pub const MAX_RECORD_BYTES: usize = 384 << 10;
/// Most bad records told (each once).
const MAX_TOLD: usize = 1024;

/// One write: put a value, or delete a key or every key under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put `value` at the key.
    Put(String, Vec<u8>),
    /// Delete the key.
    Delete(String),
    /// Delete every key starting with this.
    DeletePrefix(String),
}

/// Where records are.
pub fn jobs_prefix(prefix: &str) -> String {
    format!("{prefix}/jobs/")
}

/// Where progress is.
pub fn progress_prefix(prefix: &str) -> String {
    format!("{prefix}/progress/")
}

/// Where job `id`'s record is.
pub fn job_key(prefix: &str, id: u64) -> String {
    format!("{}{id:020}", jobs_prefix(prefix))
}

fn job_progress_prefix(prefix: &str, id: u64) -> String {
    format!("{}{id:020}/", progress_prefix(prefix))
}

/// The job and target a progress key is for (None: not a progress key).
pub fn progress_place<'a>(prefix: &str, key: &'a str) -> Option<(u64, &'a str)> {
    let rest = key.strip_prefix(&progress_prefix(prefix))?;
    let (id, node) = rest.split_once('/')?;
    Some((id.parse().ok()?, node))
}

/// The end of the range of keys starting with `prefix`: its last byte plus one.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What writing `changes` takes.
pub fn ops(prefix: &str, changes: &Changes) -> Vec<Op> {
    let mut ops = Vec::new();
    for (id, job) in &changes.jobs {
        match job {
            Some(job) => ops.push(Op::Put(
                job_key(prefix, *id),
                record_json(job).to_string().into_bytes(),
            )),
            None => {
                ops.push(Op::Delete(job_key(prefix, *id)));
                ops.push(Op::DeletePrefix(job_progress_prefix(prefix, *id)));
            }
        }
    }
    for (id, node, progress) in &changes.moved {
        let key = format!("{}{node}", job_progress_prefix(prefix, *id));
        ops.push(Op::Put(
            key,
            progress_json(progress).to_string().into_bytes(),
        ));
    }
    ops
}

/// The jobs from their `records` and `progress` (key, value) as read. A record
/// that does not read, or that no request could have made (T38), and a
/// progress key of no target, or that the API could not have made, are left
/// out and told once (`told`).
pub fn assemble(
    prefix: &str,
    records: Vec<(String, Vec<u8>)>,
    progress: Vec<(String, Vec<u8>)>,
    told: &mut HashSet<String>,
) -> Vec<Job> {
    let mut tell = |key: &str, what: &str| {
        if told.len() < MAX_TOLD && told.insert(key.to_owned()) {
            log::warn!("etcd: {key:?} is not a valid {what}; left out");
        }
    };
    let mut jobs = BTreeMap::new();
    for (key, value) in records {
        let job = serde_json::from_slice::<Value>(&value)
            .ok()
            .and_then(|v| job_from_record(&v))
            .filter(|job| key == job_key(prefix, job.id));
        match job {
            Some(job) => {
                jobs.insert(job.id, job);
            }
            None => tell(&key, "job record"),
        }
    }
    for (key, value) in progress {
        let place = progress_place(prefix, &key);
        let progress = serde_json::from_slice::<Value>(&value)
            .ok()
            .and_then(|v| progress_from_json(&v));
        match (place, progress) {
            (Some((id, node)), Some(progress)) => {
                // Not told: a job pruned since, or whose record was left out.
                if let Some(job) = jobs.get_mut(&id) {
                    match job.nodes.get_mut(node) {
                        Some(target) => *target = progress,
                        None => tell(&key, "target's progress"),
                    }
                }
            }
            _ => tell(&key, "target's progress"),
        }
    }
    jobs.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopcast_proto::jobs::{JobSpec, JobState, NodeProgress, NodeState};
    use loopcast_proto::wire::JobFailure;

    fn job(targets: usize, name_len: usize) -> Job {
        let targets: Vec<String> = (0..targets)
            .map(|i| format!("{i:0>width$}", width = name_len))
            .collect();
        let waiting = NodeProgress {
            state: NodeState::Waiting,
            permille: 0,
            failure: JobFailure::None,
            moved_ms: 7,
            detail: String::new(),
        };
        Job {
            id: 1_765_000_000_000,
            spec: JobSpec {
                // Control characters: the longest JSON escape (\u0001).
                files: (0..16).map(|i| format!("{i:\u{1}<255}")).collect(),
                targets: targets.clone(),
                deadline_ms: 60_000,
                max_rate_bps: u64::MAX,
                request_id: u64::MAX,
                archives: vec![u64::MAX; 16],
            },
            created_ms: 7,
            state: JobState::Active,
            nodes: targets.into_iter().map(|t| (t, waiting.clone())).collect(),
        }
    }

    #[test]
    fn the_largest_record_fits_its_bound() {
        let big = job(loopcast_proto::jobs::MAX_TARGETS, 64);
        loopcast_proto::jobs::check_spec(&big.spec).unwrap();
        let bytes = record_json(&big).to_string().len();
        assert!(bytes <= MAX_RECORD_BYTES, "{bytes}");
        assert!(bytes > MAX_RECORD_BYTES / 2, "{bytes}: the bound is loose");
    }

    #[test]
    fn a_tick_writes_only_the_progress_that_moved() {
        let mut big = job(4096, 16);
        let record = ops(
            "/p",
            &Changes {
                jobs: vec![(big.id, Some(big.clone()))],
                moved: Vec::new(),
            },
        );
        let bytes = |ops: &[Op]| -> usize {
            (ops.iter())
                .map(|op| match op {
                    Op::Put(k, v) => k.len() + v.len(),
                    Op::Delete(k) | Op::DeletePrefix(k) => k.len(),
                })
                .sum()
        };
        let whole = bytes(&record);
        // One target moves: one small put.
        let node = big.spec.targets[17].clone();
        let moved = big.nodes.get_mut(&node).unwrap();
        moved.state = NodeState::Receiving;
        moved.permille = 420;
        let tick = ops(
            "/p",
            &Changes {
                jobs: Vec::new(),
                moved: vec![(big.id, node.clone(), moved.clone())],
            },
        );
        assert_eq!(tick.len(), 1);
        // Before per-target keys, a tick rewrote the job whole, progress and all.
        let before = super::super::super::job_json::job_json(&big, None)
            .to_string()
            .len();
        eprintln!(
            "a job of 4096 targets: record {whole} bytes, a tick {} bytes (the whole job: {before})",
            bytes(&tick)
        );
        assert!(bytes(&tick) * 500 < whole, "{} of {whole}", bytes(&tick));
        // Read back: the record and the progress make the job again.
        let split = |ops: Vec<Op>| -> Vec<(String, Vec<u8>)> {
            (ops.into_iter())
                .map(|op| match op {
                    Op::Put(k, v) => (k, v),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let mut told = HashSet::new();
        let back = assemble("/p", split(record), split(tick), &mut told);
        assert_eq!(back, vec![big]);
        assert!(told.is_empty());
    }

    #[test]
    fn bad_records_and_progress_are_left_out_and_told_once() {
        let good = job(2, 4);
        let record = record_json(&good).to_string().into_bytes();
        let key = job_key("/p", good.id);
        let records = vec![
            (key.clone(), record),
            (job_key("/p", 5), b"{not json".to_vec()),
            // A record under another job's key.
            (
                job_key("/p", 6),
                record_json(&good).to_string().into_bytes(),
            ),
        ];
        let at = |node: &str| format!("{}{node}", job_progress_prefix("/p", good.id));
        let progress = vec![
            (at("0000"), br#"{"state":"done"}"#.to_vec()),
            (
                at("nobody"),
                br#"{"state":"done","permille":1000,"failure":"none","moved_ms":1}"#.to_vec(),
            ),
        ];
        let mut told = HashSet::new();
        let back = assemble("/p", records.clone(), progress.clone(), &mut told);
        assert_eq!(back, vec![good]);
        assert_eq!(told.len(), 4, "{told:?}");
        assemble("/p", records, progress, &mut told);
        assert_eq!(told.len(), 4);
    }

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(prefix_end("/p/jobs/"), b"/p/jobs0");
        assert_eq!(prefix_end("a\u{7f}"), [b'a', 0x80]);
    }
}
