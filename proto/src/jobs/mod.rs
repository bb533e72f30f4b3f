//! Distribution jobs (spec §10): a director's table of jobs — files, target
//! nodes, deadline — and each target's progress as its agent reports it, plus
//! the agent's own machine (`agent`). Times that must survive a restart are
//! wall-clock milliseconds handed in by the driver; nothing here reads a clock.

pub mod agent;
mod auth;

pub use auth::{ApiAuth, ApiRequest, MAX_CLOCK_SKEW_MS, response_tag, response_verifies};

use crate::wire::{AgentJobState, JobFailure, JobReport, MAX_JOB_FILES, MAX_JOB_REPORTS};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// How often an agent registers with each director.
pub const REGISTER_INTERVAL_MS: u64 = 1000;
/// A node unheard this long is unreachable (its jobs wait for it).
pub const UNREACHABLE_AFTER_MS: u64 = 5000;
/// Most targets one job names.
pub const MAX_TARGETS: usize = 4096;
/// Most jobs not yet finished that a director holds.
pub const MAX_ACTIVE_JOBS: usize = 256;
/// Most finished jobs a director keeps for `jobs` (the oldest go first).
pub const MAX_FINISHED_JOBS: usize = 1024;
/// Longest deadline a job may have: 30 days.
pub const MAX_DEADLINE_MS: u64 = 30 * 24 * 3600 * 1000;

/// What a push asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// Names of files on air (1 to `MAX_JOB_FILES`).
    pub files: Vec<String>,
    /// Node names (1 to `MAX_TARGETS`, no repeats).
    pub targets: Vec<String>,
    /// Milliseconds from creation to the deadline.
    pub deadline_ms: u64,
    /// Fastest channel the targets take, bits/s (0: any).
    pub max_rate_bps: u64,
    /// The client's id for this request (random; 0: none): a request sent
    /// again with it (its answer was lost) gets the job it made, not another.
    pub request_id: u64,
    /// The archive each file is pinned to, one per file (0: the director pins
    /// the one archive of that name on air when it creates the job), or empty
    /// (all 0). Agents take only that archive (T41).
    pub archives: Vec<u64>,
}

impl JobSpec {
    /// The archive file `i` is pinned to (0: not pinned).
    pub fn archive(&self, i: usize) -> u64 {
        self.archives.get(i).copied().unwrap_or(0)
    }
}

/// Where one target is with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Not yet heard working on it.
    Waiting,
    /// Fetching; `NodeProgress::permille` says how far.
    Receiving,
    /// Every file delivered and verified (and its hook succeeded).
    Done,
    /// Given up: `NodeProgress::failure` says why.
    Failed,
    /// The deadline passed before it was done.
    Missed,
    /// The job was cancelled before it was done.
    Cancelled,
}

impl NodeState {
    /// True once nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            NodeState::Done | NodeState::Failed | NodeState::Missed | NodeState::Cancelled
        )
    }

    /// The state's name in the API and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Waiting => "waiting",
            NodeState::Receiving => "receiving",
            NodeState::Done => "done",
            NodeState::Failed => "failed",
            NodeState::Missed => "missed",
            NodeState::Cancelled => "cancelled",
        }
    }
}

/// One target's progress in one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProgress {
    /// Its state.
    pub state: NodeState,
    /// Thousandths of the job's packets it holds.
    pub permille: u16,
    /// What its agent last said was wrong.
    pub failure: JobFailure,
    /// When its progress last moved (wall ms; 0: never).
    pub moved_ms: u64,
    /// What its agent last said in words (a failed hook's status and output).
    pub detail: String,
}

/// Where a whole job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Targets are still working on it.
    Active,
    /// Every target is done.
    Complete,
    /// Every target finished, some failed.
    Failed,
    /// The deadline passed with targets missing.
    Expired,
    /// Cancelled by a client.
    Cancelled,
}

impl JobState {
    /// The state's name in the API and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Active => "active",
            JobState::Complete => "complete",
            JobState::Failed => "failed",
            JobState::Expired => "expired",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses `name`'s output.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            JobState::Active,
            JobState::Complete,
            JobState::Failed,
            JobState::Expired,
            JobState::Cancelled,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// A job and its targets' progress: what a director stores and shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Its id: at least its creation time in wall ms, and above every id before.
    pub id: u64,
    /// What was asked.
    pub spec: JobSpec,
    /// When it was created (wall ms).
    pub created_ms: u64,
    /// Where it is.
    pub state: JobState,
    /// Each target's progress, by node name.
    pub nodes: BTreeMap<String, NodeProgress>,
}

impl Job {
    /// When its deadline passes (wall ms).
    pub fn deadline_at_ms(&self) -> u64 {
        self.created_ms.saturating_add(self.spec.deadline_ms)
    }

    /// Targets not (yet) done.
    pub fn missing(&self) -> impl Iterator<Item = &str> {
        (self.nodes.iter())
            .filter(|(_, p)| p.state != NodeState::Done)
            .map(|(n, _)| n.as_str())
    }
}

/// Why a job was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// The request is malformed: no files, no targets, repeats, bad names or deadline.
    Invalid(String),
    /// A file no live server carries (as the archive asked, if one was).
    NotCarried(String),
    /// A file carried as several archives, none named: the request must pin one.
    Ambiguous(String, Vec<u64>),
    /// A node no agent of that name has registered.
    UnknownNode(String),
    /// The director started too recently to know every server and node: ask again.
    NotYetKnown,
    /// Too many jobs are active, or a target has as many as its agent can report.
    Full(String),
    /// No such job.
    NoSuchJob(u64),
    /// The request's tag, time or nonce did not pass (§10.4).
    Unauthenticated(&'static str),
    /// This director does not schedule jobs now (another one does: its API
    /// address, if known).
    NotLeader(Option<String>),
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Invalid(why) => write!(f, "invalid job: {why}"),
            JobError::NotCarried(name) => write!(f, "no live server carries {name:?}"),
            JobError::Ambiguous(name, ids) => {
                let ids: Vec<String> = ids.iter().map(|id| format!("{id:016x}")).collect();
                write!(
                    f,
                    "{name:?} is on air as {} archives ({}): name one as NAME@ARCHIVE",
                    ids.len(),
                    ids.join(", ")
                )
            }
            JobError::UnknownNode(node) => write!(f, "unknown node {node:?}: no agent of that name has registered"),
            JobError::NotYetKnown => f.write_str("the director started moments ago and does not know every server and node yet; try again"),
            JobError::Full(why) => write!(f, "too many jobs: {why}"),
            JobError::NoSuchJob(id) => write!(f, "no job {id}"),
            JobError::Unauthenticated(why) => write!(f, "request refused: {why}"),
            JobError::NotLeader(Some(at)) => write!(f, "this director does not schedule jobs now; {at} does"),
            JobError::NotLeader(None) => f.write_str("this director does not schedule jobs now, and no director does yet; try again"),
        }
    }
}

/// Checks a spec on its own (names, counts, repeats, deadline).
pub fn check_spec(spec: &JobSpec) -> Result<(), JobError> {
    let invalid = |why: String| Err(JobError::Invalid(why));
    if spec.files.is_empty() || spec.files.len() > MAX_JOB_FILES {
        return invalid(format!("a job carries 1 to {MAX_JOB_FILES} files"));
    }
    if spec.targets.is_empty() || spec.targets.len() > MAX_TARGETS {
        return invalid(format!("a job names 1 to {MAX_TARGETS} targets"));
    }
    if let Some(f) = spec.files.iter().find(|f| f.is_empty() || f.len() > 255) {
        return invalid(format!("file name {f:?} is empty or over 255 bytes"));
    }
    if let Some(n) = spec
        .targets
        .iter()
        .find(|n| !crate::wire::valid_node_name(n))
    {
        return invalid(format!(
            "node name {n:?}: 1 to 64 letters, digits, '.', '-' or '_'"
        ));
    }
    if !spec.archives.is_empty() && spec.archives.len() != spec.files.len() {
        return invalid("an archive per file, or none".into());
    }
    if let Some(d) = first_repeat(&spec.files) {
        return invalid(format!("file {d:?} is named twice"));
    }
    if let Some(d) = first_repeat(&spec.targets) {
        return invalid(format!("node {d:?} is named twice"));
    }
    if spec.deadline_ms == 0 || spec.deadline_ms > MAX_DEADLINE_MS {
        return invalid("the deadline must be in the future and at most 30 days away".into());
    }
    Ok(())
}

fn first_repeat(names: &[String]) -> Option<&str> {
    let mut seen = HashSet::new();
    names
        .iter()
        .find(|n| !seen.insert(n.as_str()))
        .map(String::as_str)
}

/// What changed in the table, for the driver to store and render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobChange {
    /// A target's state changed (not mere percent).
    Node {
        /// The job.
        job: u64,
        /// The node.
        node: String,
        /// Its new state.
        state: NodeState,
    },
    /// The job's own state changed.
    Job {
        /// The job.
        job: u64,
        /// Its new state.
        state: JobState,
    },
}

/// The jobs a director holds.
#[derive(Debug, Default)]
pub struct JobTable {
    jobs: BTreeMap<u64, Job>,
    next_id: u64,
    /// Jobs whose record changed (made, a new state, removed) since the
    /// driver last took them.
    dirty: HashSet<u64>,
    /// Targets whose progress moved since then.
    moved: BTreeSet<(u64, String)>,
    changes: Vec<JobChange>,
}

/// What changed since the driver last stored the jobs: a store writes a job's
/// record for `jobs` and one target's progress for `moved`, so that a tick
/// writes in proportion to what changed (spec §10.5).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    /// Jobs whose record changed or that were removed.
    pub jobs: Vec<u64>,
    /// (job, node) whose progress moved, in jobs still held.
    pub moved: Vec<(u64, String)>,
}

impl JobTable {
    /// Replaces every job with `jobs` (a director that does not schedule,
    /// following the store); nothing becomes dirty.
    pub fn replace_all(&mut self, jobs: Vec<Job>) {
        self.jobs.clear();
        self.dirty.clear();
        self.moved.clear();
        for job in jobs {
            self.restore(job);
        }
    }

    /// Puts back a stored job (on a director's start).
    pub fn restore(&mut self, job: Job) {
        self.next_id = self.next_id.max(job.id + 1);
        self.jobs.insert(job.id, job);
    }

    /// Adds a job checked against everything but the site (the director checks
    /// files and nodes); returns its id.
    pub fn create(&mut self, spec: JobSpec, now_ms: u64) -> Result<u64, JobError> {
        check_spec(&spec)?;
        if spec.request_id != 0
            && let Some(made) = self.all().find(|j| j.spec.request_id == spec.request_id)
        {
            return Ok(made.id);
        }
        if self.active().count() >= MAX_ACTIVE_JOBS {
            return Err(JobError::Full(format!("{MAX_ACTIVE_JOBS} jobs are active")));
        }
        for node in &spec.targets {
            let active = self.active_for(node).count();
            if active >= MAX_JOB_REPORTS {
                return Err(JobError::Full(format!(
                    "node {node:?} already has {active} active jobs"
                )));
            }
        }
        // Ids from the wall clock: a director that lost its store (or another
        // director) does not hand out an id an agent recorded as finished.
        let id = self.next_id.max(now_ms).max(1);
        self.next_id = id + 1;
        let waiting = NodeProgress {
            state: NodeState::Waiting,
            permille: 0,
            failure: JobFailure::None,
            moved_ms: now_ms,
            detail: String::new(),
        };
        let nodes = (spec.targets.iter())
            .map(|n| (n.clone(), waiting.clone()))
            .collect();
        self.jobs.insert(
            id,
            Job {
                id,
                spec,
                created_ms: now_ms,
                state: JobState::Active,
                nodes,
            },
        );
        self.dirty.insert(id);
        self.changes.push(JobChange::Job {
            job: id,
            state: JobState::Active,
        });
        self.prune();
        Ok(id)
    }

    /// Cancels an active job: its unfinished targets are missed.
    pub fn cancel(&mut self, id: u64) -> Result<(), JobError> {
        let job = self.jobs.get(&id).ok_or(JobError::NoSuchJob(id))?;
        if job.state == JobState::Active {
            self.end(id, JobState::Cancelled);
        }
        Ok(())
    }

    /// Takes one node's report of one job; a final state is never undone.
    pub fn report(&mut self, node: &str, r: &JobReport, now_ms: u64) {
        let Some(job) = self.jobs.get_mut(&r.job_id) else {
            return;
        };
        if job.state != JobState::Active {
            return;
        }
        let Some(p) = job.nodes.get_mut(node) else {
            return;
        };
        if p.state.is_final() {
            return;
        }
        let state = match r.state {
            AgentJobState::Receiving => NodeState::Receiving,
            AgentJobState::Done => NodeState::Done,
            AgentJobState::Failed => NodeState::Failed,
        };
        let permille = if state == NodeState::Done {
            1000
        } else {
            r.permille
        };
        if permille != p.permille || state != p.state {
            p.moved_ms = now_ms;
        }
        let changed = state != p.state;
        if changed || permille != p.permille || r.failure != p.failure || r.detail != p.detail {
            self.moved.insert((r.job_id, node.to_owned()));
        }
        p.state = state;
        p.permille = permille;
        p.failure = r.failure;
        p.detail.clone_from(&r.detail);
        if changed {
            self.changes.push(JobChange::Node {
                job: r.job_id,
                node: node.to_owned(),
                state,
            });
            self.settle(r.job_id);
        }
    }

    /// Ends jobs whose deadline passed.
    pub fn expire(&mut self, now_ms: u64) {
        let due: Vec<u64> = (self.active())
            .filter(|j| now_ms >= j.deadline_at_ms())
            .map(|j| j.id)
            .collect();
        for id in due {
            self.end(id, JobState::Expired);
        }
    }

    /// A job whose every target is final is complete (or failed).
    fn settle(&mut self, id: u64) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if job.nodes.values().all(|p| p.state.is_final()) {
            let all_done = job.nodes.values().all(|p| p.state == NodeState::Done);
            let state = if all_done {
                JobState::Complete
            } else {
                JobState::Failed
            };
            self.end(id, state);
        }
    }

    fn end(&mut self, id: u64, state: JobState) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.state = state;
        let left = match state {
            JobState::Cancelled => NodeState::Cancelled,
            _ => NodeState::Missed,
        };
        for (node, p) in job.nodes.iter_mut().filter(|(_, p)| !p.state.is_final()) {
            p.state = left;
            self.moved.insert((id, node.clone()));
            self.changes.push(JobChange::Node {
                job: id,
                node: node.clone(),
                state: left,
            });
        }
        self.dirty.insert(id);
        self.changes.push(JobChange::Job { job: id, state });
        self.prune();
    }

    /// Forgets the oldest finished jobs beyond `MAX_FINISHED_JOBS`.
    fn prune(&mut self) {
        let finished: Vec<u64> = (self.jobs.values())
            .filter(|j| j.state != JobState::Active)
            .map(|j| j.id)
            .collect();
        let excess = finished.len().saturating_sub(MAX_FINISHED_JOBS);
        for id in finished.into_iter().take(excess) {
            self.jobs.remove(&id);
            self.dirty.insert(id);
        }
    }

    /// One job.
    pub fn get(&self, id: u64) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// Every job held, oldest first.
    pub fn all(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// Jobs not finished.
    pub fn active(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().filter(|j| j.state == JobState::Active)
    }

    /// Active jobs in which `node` is not final.
    pub fn active_for<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Job> + 'a {
        self.active()
            .filter(move |j| j.nodes.get(node).is_some_and(|p| !p.state.is_final()))
    }

    /// What changed (or was removed) since the last call: what to store.
    pub fn take_dirty(&mut self) -> Dirty {
        let mut jobs: Vec<u64> = self.dirty.drain().collect();
        jobs.sort_unstable();
        let moved = std::mem::take(&mut self.moved);
        // A removed job's progress goes with its record.
        let moved = (moved.into_iter())
            .filter(|(id, _)| self.jobs.contains_key(id))
            .collect();
        Dirty { jobs, moved }
    }

    /// State changes since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<JobChange> {
        std::mem::take(&mut self.changes)
    }
}

#[cfg(test)]
mod tests;
