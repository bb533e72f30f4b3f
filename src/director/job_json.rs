//! The director's jobs in JSON: one form for the HTTP API and the stores, read
//! back with every field checked (a record no request could make is no job).
//! Its own file so that the stores, which read and write it, and the job API,
//! which writes through a store, do not import each other.

use loopcast_proto::jobs::{Job, JobSpec, JobState, NodeProgress, NodeState};
use loopcast_proto::wire::JobFailure;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

fn failure_name(f: JobFailure) -> &'static str {
    match f {
        JobFailure::None => "none",
        JobFailure::Retrying => "retrying",
        JobFailure::HookFailed => "hook_failed",
        JobFailure::NoRoom => "no_room",
    }
}

fn failure_from(name: &str) -> Option<JobFailure> {
    [
        JobFailure::None,
        JobFailure::Retrying,
        JobFailure::HookFailed,
        JobFailure::NoRoom,
    ]
    .into_iter()
    .find(|f| failure_name(*f) == name)
}

fn node_state_from(name: &str) -> Option<NodeState> {
    [
        NodeState::Waiting,
        NodeState::Receiving,
        NodeState::Done,
        NodeState::Failed,
        NodeState::Missed,
        NodeState::Cancelled,
    ]
    .into_iter()
    .find(|s| s.name() == name)
}

/// A job's own fields, without its targets: what every form of a job shows.
#[derive(Debug, Clone)]
pub struct JobHead {
    id: u64,
    state: JobState,
    files: Vec<String>,
    archives: Vec<u64>,
    created_ms: u64,
    deadline_ms: u64,
    deadline_at_ms: u64,
    max_rate_bps: u64,
    request_id: u64,
}

impl JobHead {
    /// `job`'s fields (a copy of a few, whatever its targets).
    pub fn of(job: &Job) -> Self {
        JobHead {
            id: job.id,
            state: job.state,
            files: job.spec.files.clone(),
            archives: job.spec.archives.clone(),
            created_ms: job.created_ms,
            deadline_ms: job.spec.deadline_ms,
            deadline_at_ms: job.deadline_at_ms(),
            max_rate_bps: job.spec.max_rate_bps,
            request_id: job.spec.request_id,
        }
    }

    /// As JSON, for more fields to be added.
    pub fn json(&self) -> Value {
        let archives: Vec<String> = self.archives.iter().map(|a| format!("{a:016x}")).collect();
        json!({"id": self.id, "state": self.state.name(), "files": self.files,
               "archives": archives, "created_ms": self.created_ms,
               "deadline_ms": self.deadline_ms, "deadline_at_ms": self.deadline_at_ms,
               "max_rate_bps": self.max_rate_bps, "request_id": self.request_id})
    }
}

/// A job as the API shows it and the redb store keeps it. `reachable` (the
/// targets reachable now) adds whether each is (the store has no use for it).
pub fn job_json(job: &Job, reachable: Option<&BTreeSet<String>>) -> Value {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let nodes: Vec<Value> = (job.nodes.iter())
        .map(|(name, p)| {
            *counts.entry(p.state.name()).or_default() += 1;
            let mut node = progress_json(p);
            node["node"] = json!(name);
            if let Some(reachable) = reachable {
                node["reachable"] = json!(reachable.contains(name));
            }
            node
        })
        .collect();
    let mut json = JobHead::of(job).json();
    json["counts"] = json!(counts);
    json["nodes"] = json!(nodes);
    json
}

/// A job's record on etcd: its fields and its targets' names; their progress
/// is kept under keys of their own (`etcd::records`).
pub fn record_json(job: &Job) -> Value {
    let mut json = JobHead::of(job).json();
    json["targets"] = json!(job.spec.targets);
    json
}

/// Reads `record_json`'s output back, every target waiting since the job was
/// made; None unless it is a job the API could have made (T38).
pub fn job_from_record(v: &Value) -> Option<Job> {
    let created_ms = v["created_ms"].as_u64()?;
    let waiting = NodeProgress {
        state: NodeState::Waiting,
        permille: 0,
        failure: JobFailure::None,
        moved_ms: created_ms,
        detail: String::new(),
    };
    let mut nodes = BTreeMap::new();
    for target in v["targets"].as_array()? {
        nodes.insert(target.as_str()?.to_owned(), waiting.clone());
    }
    let job = job_head_fields(v, nodes)?;
    loopcast_proto::jobs::check_spec(&job.spec).ok()?;
    Some(job)
}

/// One target's progress as the API shows it and the stores keep it.
pub fn progress_json(p: &NodeProgress) -> Value {
    json!({"state": p.state.name(), "permille": p.permille, "failure": failure_name(p.failure),
           "moved_ms": p.moved_ms, "detail": p.detail})
}

/// Reads `progress_json`'s output back; None unless the API could have made it.
pub fn progress_from_json(v: &Value) -> Option<NodeProgress> {
    progress_fields(v).filter(|p| p.detail.len() <= loopcast_proto::wire::MAX_JOB_DETAIL)
}

fn progress_fields(n: &Value) -> Option<NodeProgress> {
    Some(NodeProgress {
        state: node_state_from(n["state"].as_str()?)?,
        permille: n["permille"].as_u64()?.min(1000) as u16,
        failure: failure_from(n["failure"].as_str()?)?,
        moved_ms: n["moved_ms"].as_u64()?,
        detail: n["detail"].as_str().unwrap_or_default().to_owned(),
    })
}

/// Reads `job_json`'s output back; None unless it is a job the API could have
/// made (a store's record is checked as a request is: T38).
pub fn job_from_json(v: &Value) -> Option<Job> {
    let job = job_fields(v)?;
    loopcast_proto::jobs::check_spec(&job.spec).ok()?;
    let detail_fits = |p: &NodeProgress| p.detail.len() <= loopcast_proto::wire::MAX_JOB_DETAIL;
    job.nodes.values().all(detail_fits).then_some(job)
}

fn job_fields(v: &Value) -> Option<Job> {
    let mut nodes = BTreeMap::new();
    for n in v["nodes"].as_array()? {
        nodes.insert(n["node"].as_str()?.to_owned(), progress_fields(n)?);
    }
    job_head_fields(v, nodes)
}

/// A job from `JobHead::json`'s fields and its targets' progress.
fn job_head_fields(v: &Value, nodes: BTreeMap<String, NodeProgress>) -> Option<Job> {
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    Some(Job {
        id: v["id"].as_u64()?,
        spec: JobSpec {
            files: strings(&v["files"])?,
            targets: nodes.keys().cloned().collect(),
            deadline_ms: v["deadline_ms"].as_u64()?,
            max_rate_bps: v["max_rate_bps"].as_u64()?,
            request_id: v["request_id"].as_u64().unwrap_or(0),
            // Records from before pinning have none: their files are not pinned.
            archives: match v.get("archives") {
                None => Vec::new(),
                Some(a) => (a.as_array()?.iter())
                    .map(|a| u64::from_str_radix(a.as_str()?, 16).ok())
                    .collect::<Option<Vec<u64>>>()?,
            },
        },
        created_ms: v["created_ms"].as_u64()?,
        state: JobState::from_name(v["state"].as_str()?)?,
        nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_no_request_could_make_is_not_a_job() {
        let job = |files: Vec<String>, node: &str| {
            json!({"id": 5, "state": "active", "files": files, "created_ms": 1,
                   "deadline_ms": 60_000, "max_rate_bps": 0, "request_id": 0,
                   "nodes": [{"node": node, "state": "waiting", "permille": 0,
                              "failure": "none", "moved_ms": 0}]})
        };
        assert!(job_from_json(&job(vec!["a".into()], "n1")).is_some());
        // 17 files, or a 256-byte name, would reach encode_assign's assert.
        let seventeen: Vec<String> = (0..17).map(|i| format!("f{i}")).collect();
        assert!(job_from_json(&job(seventeen, "n1")).is_none());
        assert!(job_from_json(&job(vec!["x".repeat(256)], "n1")).is_none());
        assert!(job_from_json(&job(vec!["a".into()], "bad name!")).is_none());
    }
}
