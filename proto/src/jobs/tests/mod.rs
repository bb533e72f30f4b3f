//! The job table and request authentication; `site`: an agent and a director
//! talking on a virtual clock.

mod site;

use super::*;
use crate::wire::{self, MacKey};

fn spec(targets: &[&str]) -> JobSpec {
    JobSpec {
        archives: Vec::new(),
        files: vec!["image.iso".into()],
        targets: targets.iter().map(|t| t.to_string()).collect(),
        deadline_ms: 60_000,
        max_rate_bps: 0,
        request_id: 0,
    }
}

fn report(job_id: u64, state: AgentJobState, permille: u16) -> JobReport {
    JobReport {
        job_id,
        state,
        permille,
        failure: JobFailure::None,
        detail: String::new(),
    }
}

#[test]
fn bad_specs_are_refused_with_the_reason() {
    let mut t = JobTable::default();
    let cases: [(JobSpec, &str); 6] = [
        (
            JobSpec {
                files: vec![],
                ..spec(&["a"])
            },
            "1 to 16 files",
        ),
        (spec(&[]), "1 to 4096 targets"),
        (spec(&["a", "b", "a"]), "node \"a\" is named twice"),
        (spec(&["a b"]), "node name \"a b\""),
        (
            JobSpec {
                deadline_ms: 0,
                ..spec(&["a"])
            },
            "deadline",
        ),
        (
            JobSpec {
                files: vec!["x".into(), "x".into()],
                ..spec(&["a"])
            },
            "file \"x\" is named twice",
        ),
    ];
    for (s, why) in cases {
        let e = t.create(s, 0).unwrap_err().to_string();
        assert!(e.contains(why), "{e} lacks {why}");
    }
    assert_eq!(t.all().count(), 0);
}

#[test]
fn a_job_completes_when_every_target_is_done_and_nothing_final_is_undone() {
    let mut t = JobTable::default();
    let id = t.create(spec(&["a", "b"]), 1000).unwrap();
    t.report("a", &report(id, AgentJobState::Receiving, 500), 2000);
    assert_eq!(t.get(id).unwrap().nodes["a"].permille, 500);
    t.report("a", &report(id, AgentJobState::Done, 0), 3000);
    // A late (or replayed) report of receiving does not undo done.
    t.report("a", &report(id, AgentJobState::Receiving, 10), 3500);
    assert_eq!(t.get(id).unwrap().nodes["a"].state, NodeState::Done);
    assert_eq!(t.get(id).unwrap().nodes["a"].permille, 1000);
    assert_eq!(t.get(id).unwrap().state, JobState::Active);
    // A node not in the job changes nothing.
    t.report("c", &report(id, AgentJobState::Done, 0), 3600);
    t.report("b", &report(id, AgentJobState::Done, 0), 4000);
    assert_eq!(t.get(id).unwrap().state, JobState::Complete);
    let dirty = t.take_dirty();
    assert_eq!(dirty.jobs, [id], "the record: a new state");
    assert_eq!(dirty.moved, [(id, "a".into()), (id, "b".into())]);
    // Progress alone moves only its target.
    let other = t.create(spec(&["a", "b"]), 5000).unwrap();
    t.take_dirty();
    t.report("b", &report(other, AgentJobState::Receiving, 10), 5100);
    let dirty = t.take_dirty();
    assert!(dirty.jobs.is_empty());
    assert_eq!(dirty.moved, [(other, "b".into())]);
}

#[test]
fn the_deadline_ends_a_job_and_names_what_is_missing() {
    let mut t = JobTable::default();
    let id = t.create(spec(&["a", "b"]), 1000).unwrap();
    t.report("a", &report(id, AgentJobState::Done, 0), 2000);
    t.expire(60_999);
    assert_eq!(t.get(id).unwrap().state, JobState::Active);
    t.expire(61_000);
    let job = t.get(id).unwrap();
    assert_eq!(job.state, JobState::Expired);
    assert_eq!(job.nodes["b"].state, NodeState::Missed);
    assert_eq!(job.missing().collect::<Vec<_>>(), ["b"]);
    // Reports after the end change nothing.
    t.report("b", &report(id, AgentJobState::Done, 0), 62_000);
    assert_eq!(t.get(id).unwrap().nodes["b"].state, NodeState::Missed);
}

#[test]
fn a_failed_target_fails_the_job_once_the_rest_are_final() {
    let mut t = JobTable::default();
    let id = t.create(spec(&["a", "b"]), 0).unwrap();
    t.report("a", &report(id, AgentJobState::Failed, 0), 1);
    assert_eq!(t.get(id).unwrap().state, JobState::Active);
    t.report("b", &report(id, AgentJobState::Done, 0), 2);
    assert_eq!(t.get(id).unwrap().state, JobState::Failed);
}

#[test]
fn a_cancelled_job_cancels_its_unfinished_targets_and_ids_never_repeat() {
    let mut t = JobTable::default();
    let a = t.create(spec(&["a"]), 0).unwrap();
    t.cancel(a).unwrap();
    assert_eq!(t.get(a).unwrap().state, JobState::Cancelled);
    assert_eq!(t.get(a).unwrap().nodes["a"].state, NodeState::Cancelled);
    assert_eq!(t.cancel(99), Err(JobError::NoSuchJob(99)));
    let job = t.get(a).unwrap().clone();
    let mut restored = JobTable::default();
    restored.restore(job);
    let b = restored.create(spec(&["a"]), 0).unwrap();
    assert!(b > a);
}

#[test]
fn a_node_takes_as_many_active_jobs_as_its_agent_can_report() {
    let mut t = JobTable::default();
    for _ in 0..wire::MAX_JOB_REPORTS {
        t.create(spec(&["a"]), 0).unwrap();
    }
    let e = t.create(spec(&["b", "a"]), 0).unwrap_err();
    assert!(matches!(e, JobError::Full(_)), "{e:?}");
}

#[test]
fn requests_need_the_key_a_fresh_time_and_a_new_nonce() {
    let key = MacKey::from_bytes([7; 32]);
    let mut auth = ApiAuth::new(key.clone());
    let body = b"{\"files\":[]}";
    let tag = ApiAuth::tag(&key, "POST", "/v1/jobs", 100_000, 5, body);
    let check = |auth: &mut ApiAuth, now, issued_ms, nonce, body: &[u8], tag: &[u8]| {
        let request = ApiRequest {
            method: "POST",
            path: "/v1/jobs",
            issued_ms,
            nonce,
            body,
            tag,
            source: [10, 0, 0, 1].into(),
        };
        auth.check(now, &request)
    };
    assert!(check(&mut auth, 100_500, 100_000, 5, body, &tag).is_ok());
    // The same request again is a replay.
    assert!(check(&mut auth, 100_600, 100_000, 5, body, &tag).is_err());
    // Another body, nonce or time under the same tag does not verify.
    let other = ApiAuth::tag(&key, "POST", "/v1/jobs", 100_000, 6, body);
    assert!(check(&mut auth, 100_600, 100_000, 6, b"{}", &other).is_err());
    assert!(check(&mut auth, 100_600, 100_001, 6, body, &other).is_err());
    // A stranger's key.
    let stranger = ApiAuth::tag(
        &MacKey::from_bytes([8; 32]),
        "POST",
        "/v1/jobs",
        100_000,
        7,
        body,
    );
    assert!(check(&mut auth, 100_600, 100_000, 7, body, &stranger).is_err());
    // Too far from the director's clock either way.
    let old = ApiAuth::tag(&key, "POST", "/v1/jobs", 10_000, 8, body);
    assert!(check(&mut auth, 100_600, 10_000, 8, body, &old).is_err());
    assert!(check(&mut auth, 100_600, 100_000, 6, body, &other).is_ok());
}

#[test]
fn one_subnet_cannot_fill_the_nonce_memory_for_everyone() {
    let key = MacKey::from_bytes([7; 32]);
    let mut auth = ApiAuth::new(key.clone());
    let body = b"{}";
    let mut check = |nonce: u64, source: [u8; 4]| {
        let tag = ApiAuth::tag(&key, "POST", "/v1/jobs", 100_000, nonce, body);
        let request = ApiRequest {
            method: "POST",
            path: "/v1/jobs",
            issued_ms: 100_000,
            nonce,
            body,
            tag: &tag,
            source: source.into(),
        };
        auth.check(100_000, &request).is_ok()
    };
    let from_one = (0..auth::MAX_NONCES as u64)
        .filter(|&n| check(n, [10, 0, 0, 9]))
        .count();
    assert_eq!(from_one, auth::MAX_NONCES_PER_SOURCE);
    assert!(
        check(1 << 40, [10, 0, 1, 9]),
        "another subnet still gets in"
    );
}
