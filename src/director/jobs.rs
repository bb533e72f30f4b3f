//! The HTTP requests that create and cancel the director's jobs (spec §10.4);
//! their JSON form is `job_json`'s.

use super::job_json::job_json;
use super::writer::Writer;
use loopcast_proto::director::Director;
use loopcast_proto::jobs::{ApiRequest, Job, JobError, JobSpec};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a job request waits for its record to be written: the store's
/// own time-out (etcd: 5 s) behind one batch of the loop's.
const WRITE_WAIT: Duration = Duration::from_secs(12);

/// Largest request body taken (4096 targets of 64 bytes fit well).
pub const MAX_BODY: usize = 1 << 20;

/// An answer to an API request: status and JSON body.
pub type Answer = (u16, Value);

pub(super) fn refused(e: &JobError) -> Answer {
    let status = match e {
        JobError::Unauthenticated(_) => 401,
        JobError::NotLeader(_) => 503,
        JobError::NoSuchJob(_) => 404,
        JobError::NotYetKnown => 503,
        JobError::Full(_) => 429,
        _ => 400,
    };
    let kind = match e {
        JobError::Invalid(_) => "invalid",
        JobError::NotCarried(_) => "not_carried",
        JobError::Ambiguous(..) => "ambiguous",
        JobError::UnknownNode(_) => "unknown_node",
        JobError::NotYetKnown => "not_yet_known",
        JobError::Full(_) => "full",
        JobError::NoSuchJob(_) => "no_such_job",
        JobError::Unauthenticated(_) => "unauthenticated",
        JobError::NotLeader(_) => "not_leader",
    };
    (status, json!({"error": e.to_string(), "kind": kind}))
}

/// POST /v1/jobs and DELETE /v1/jobs/ID. The job is stored before the answer,
/// without the director's lock held while the store writes (T42).
pub fn change(director: &Mutex<Director>, writer: &Writer, request: &ApiRequest<'_>) -> Answer {
    let now = Instant::now();
    let mut d = director.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = d.authorize(now, request) {
        return refused(&e);
    }
    let (method, path) = (request.method, request.path);
    let result = match (method, path.strip_prefix("/v1/jobs")) {
        ("POST", Some("")) => match spec_from(request.body) {
            Ok(spec) => d.create_job(now, spec),
            Err(e) => Err(e),
        },
        ("DELETE", Some(rest)) => match rest.strip_prefix('/').and_then(|id| id.parse().ok()) {
            Some(id) => d.cancel_job(now, id).map(|()| id),
            None => return (404, json!({"error": "no such job", "kind": "no_such_job"})),
        },
        _ => return (405, json!({"error": "POST /v1/jobs or DELETE /v1/jobs/ID"})),
    };
    let id = match result {
        Ok(id) => id,
        Err(e) => return refused(&e),
    };
    let written = writer.take_for_answer(&mut d);
    let job = d.job(id).cloned().map(|job| {
        let reachable = reachable_targets(&d, &job);
        (job, reachable)
    });
    drop(d);
    let job = job.map_or(Value::Null, |(job, reachable)| {
        job_json(&job, Some(&reachable))
    });
    let written = (written.recv_timeout(WRITE_WAIT))
        .unwrap_or_else(|_| Err("the job store did not answer in time".into()));
    if let Err(e) = written {
        log::error!("{e}");
        return (503, json!({"error": e, "kind": "store"}));
    }
    let status = if method == "POST" { 201 } else { 200 };
    (status, job)
}

/// A job request's body: `{"files": [...], "targets": [...], "deadline_s": N,
/// "max_rate_bps": N, "request_id": N, "archives": ["hex", ...]}` (archives:
/// one per file, "0" or absent to let the director pin the one on air).
fn spec_from(body: &[u8]) -> std::result::Result<JobSpec, JobError> {
    let invalid = |why: &str| JobError::Invalid(why.to_owned());
    let v: Value = serde_json::from_slice(body).map_err(|_| invalid("the body is not JSON"))?;
    let strings = |key: &str| -> std::result::Result<Vec<String>, JobError> {
        (v[key]
            .as_array()
            .ok_or_else(|| invalid(&format!("{key} must be a list"))))?
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| invalid(&format!("{key} must be a list of names")))
    };
    let deadline_s = v["deadline_s"]
        .as_u64()
        .ok_or_else(|| invalid("deadline_s must be a whole number of seconds"))?;
    let archives = match v.get("archives") {
        None => Vec::new(),
        Some(_) => strings("archives")?
            .iter()
            .map(|a| u64::from_str_radix(a, 16).map_err(|_| invalid("archives must be hex ids")))
            .collect::<std::result::Result<_, _>>()?,
    };
    Ok(JobSpec {
        files: strings("files")?,
        targets: strings("targets")?,
        deadline_ms: deadline_s.saturating_mul(1000),
        max_rate_bps: v["max_rate_bps"].as_u64().unwrap_or(0),
        request_id: v["request_id"].as_u64().unwrap_or(0),
        archives,
    })
}

/// The targets of `job` whose agents are reachable now.
pub(super) fn reachable_targets(d: &Director, job: &Job) -> BTreeSet<String> {
    (job.nodes.keys())
        .filter(|n| d.node(n).is_some_and(|r| r.reachable))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::director::job_json::job_from_json;
    use crate::director::store::{RedbStore, Store};
    use loopcast_proto::jobs::JobState;
    use loopcast_proto::jobs::JobTable;
    use loopcast_proto::wire::JobFailure;
    use std::sync::Arc;

    #[test]
    fn a_job_survives_the_json_round_trip_and_the_store() {
        let mut t = JobTable::default();
        let spec = JobSpec {
            archives: Vec::new(),
            files: vec!["a.iso".into(), "b.img".into()],
            targets: vec!["n1".into(), "n2".into()],
            deadline_ms: 5000,
            max_rate_bps: 7,
            request_id: 9,
        };
        let id = t.create(spec, 1234).unwrap();
        let report = loopcast_proto::wire::JobReport {
            job_id: id,
            state: loopcast_proto::wire::AgentJobState::Receiving,
            permille: 321,
            failure: JobFailure::Retrying,
            detail: "exit 3: disk full".into(),
        };
        t.report("n2", &report, 2000);
        let job = t.get(id).unwrap().clone();
        assert_eq!(job_from_json(&job_json(&job, None)), Some(job.clone()));
        assert_eq!(job_from_json(&json!({"id": 1})), None);

        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let key = loopcast_proto::wire::MacKey::from_bytes([1; 32]);
        let mut d = Director::new(key.clone(), key, Instant::now());
        d.restore_job(job);
        d.cancel_job(Instant::now(), id).unwrap();
        let writer = Writer::start(Arc::new(Store::Redb(RedbStore::open(&state).unwrap())));
        let written = writer.take_for_answer(&mut d);
        assert_eq!(written.recv().unwrap(), Ok(()));
        writer.finish().unwrap();
        drop(writer);
        let cancelled = d.job(id).unwrap().clone();
        assert_eq!(cancelled.state, JobState::Cancelled);
        assert_eq!(
            RedbStore::open(&state).unwrap().load().unwrap(),
            vec![cancelled]
        );
    }
}
