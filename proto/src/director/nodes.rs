//! The director's side of distribution jobs (spec §10.3): agents' REGISTERs
//! keep a table of nodes and move their jobs' progress; each is answered with
//! an ASSIGN per job the agent should start or stop.

use super::{Director, DirectorEvent};
use crate::jobs::{ApiRequest, Job, JobError, JobSpec, JobState, UNREACHABLE_AFTER_MS};
use crate::wire::{self, AgentJobState, Assign, AssignAction, MAX_JOB_REPORTS, Register};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most nodes a director keeps.
pub const MAX_NODES: usize = 4096;
/// Most nodes whose REGISTERs come from one /24 (or /64): one host cannot fill
/// the table for everyone.
pub const MAX_NODES_PER_SOURCE: usize = 256;
/// An unreachable node is forgotten after this long (its jobs still name it).
pub const FORGET_NODE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// A node's REGISTERs are answered at most this often: ASSIGNs are larger than
/// REGISTERs, and a burst of captured REGISTERs replayed right after a restart
/// must not turn into a burst of ASSIGNs at a spoofed address (T29).
pub const ANSWER_EVERY: Duration = Duration::from_millis(500);

/// What a director knows of one agent.
#[derive(Debug, Clone)]
pub struct NodeRecord {
    /// The node's name.
    pub name: String,
    /// Its agent's instance (random per start).
    pub instance: u32,
    /// Where its REGISTERs come from.
    pub address: SocketAddr,
    /// Its last REGISTER's sequence.
    pub sequence: u64,
    /// When its agent started, as its REGISTERs say (ms since the Unix epoch).
    pub started_ms: u64,
    /// When that came.
    pub last_heard: Instant,
    /// Bytes free in its output directory.
    pub free_bytes: u64,
    /// Heard within `UNREACHABLE_AFTER_MS`.
    pub reachable: bool,
    /// When its REGISTER was last answered.
    pub answered: Option<Instant>,
    /// Its last REGISTER's cookie proved its address (§10.3): ASSIGNs may be
    /// larger than what it sent.
    pub proven: bool,
}

impl Director {
    /// Takes an agent's REGISTER (tag already verified).
    pub(super) fn register(
        &mut self,
        now: Instant,
        from: SocketAddr,
        instance: u32,
        asked_len: usize,
        r: Register,
    ) {
        let wall = self.wall_ms(now);
        let answered = self.nodes.get(&r.node).and_then(|n| n.answered);
        let back = match self.nodes.get(&r.node) {
            Some(n) if n.instance == instance && r.sequence <= n.sequence => {
                self.stats.stale_registers += 1;
                return;
            }
            // Another run of the node's agent takes the record only if it
            // started later: an earlier run's REGISTER is a replay (T29). A node
            // unreachable takes any (its clock may have stepped back).
            Some(n) if n.instance != instance && n.reachable && r.started_ms <= n.started_ms => {
                self.stats.stale_registers += 1;
                return;
            }
            Some(n) => !n.reachable || n.instance != instance,
            // A node is made only by a REGISTER whose cookie proves its
            // address (spoofed sources make none), at most
            // `MAX_NODES_PER_SOURCE` per source subnet, `MAX_NODES` in all.
            None if !self.cookies.check(now, from, &r.cookie) => {
                let heard = wire::Heard {
                    echo: r.sequence,
                    cookie: self.cookies.issue(now, from),
                };
                self.out.push_back((
                    from,
                    wire::encode_heard(&self.director_key, instance, &heard),
                ));
                return;
            }
            None if self.nodes.len() >= MAX_NODES
                || self.nodes_from(from) >= MAX_NODES_PER_SOURCE =>
            {
                self.stats.over_capacity += 1;
                return;
            }
            None => true,
        };
        self.nodes.insert(
            r.node.clone(),
            NodeRecord {
                name: r.node.clone(),
                instance,
                address: from,
                sequence: r.sequence,
                started_ms: r.started_ms,
                last_heard: now,
                free_bytes: r.free_bytes,
                reachable: true,
                answered,
                proven: self.cookies.check(now, from, &r.cookie),
            },
        );
        if back {
            self.events.push_back(DirectorEvent::NodeUp {
                node: r.node.clone(),
                address: from,
            });
        }
        if self.scheduling {
            for report in &r.jobs {
                self.jobs.report(&r.node, report, wall);
            }
        }
        // Only the scheduling director moves jobs (§10.5); every director
        // says it heard a fresh REGISTER (HEARD, unless ASSIGNs say it), with
        // a cookie for the agent's next REGISTERs.
        let heard = wire::Heard {
            echo: r.sequence,
            cookie: self.cookies.issue(now, from),
        };
        let heard = wire::encode_heard(&self.director_key, instance, &heard);
        let proven = self.nodes.get(&r.node).is_some_and(|n| n.proven);
        if !self.scheduling || answered.is_some_and(|at| now < at + ANSWER_EVERY) {
            if answered.is_none_or(|at| now >= at + ANSWER_EVERY) {
                if let Some(n) = self.nodes.get_mut(&r.node) {
                    n.answered = Some(now);
                }
                self.out.push_back((from, heard));
            }
            return;
        }
        if let Some(n) = self.nodes.get_mut(&r.node) {
            n.answered = Some(now);
        }
        // Start what it should be fetching and is not; stop what it should not.
        let receiving: BTreeSet<u64> = (r.jobs.iter())
            .filter(|j| j.state == AgentJobState::Receiving)
            .map(|j| j.job_id)
            .collect();
        let mut answers: Vec<Assign> = (self.jobs.active_for(&r.node))
            .filter(|j| !receiving.contains(&j.id))
            .take(MAX_JOB_REPORTS)
            .map(|j| fetch(j, r.sequence, wall))
            .collect();
        let active: BTreeSet<u64> = self.jobs.active_for(&r.node).map(|j| j.id).collect();
        answers.extend(
            (receiving.iter())
                .filter(|id| !active.contains(id))
                .map(|&id| cancel(id, r.sequence)),
        );
        let datagrams: Vec<Vec<u8>> = (answers.iter())
            .map(|a| wire::encode_assign(&self.director_key, instance, a))
            .collect();
        // No more bytes to an address not proven than it sent (no amplifier):
        // it gets the cookie now, its ASSIGNs with its next REGISTER.
        let bytes: usize = datagrams.iter().map(Vec::len).sum();
        if datagrams.is_empty() || (!proven && bytes > asked_len) {
            self.out.push_back((from, heard));
            return;
        }
        for datagram in datagrams {
            self.out.push_back((from, datagram));
        }
    }

    /// Nodes registered from `from`'s subnet.
    fn nodes_from(&self, from: SocketAddr) -> usize {
        let subnet = wire::subnet_of(from.ip());
        (self.nodes.values())
            .filter(|n| wire::subnet_of(n.address.ip()) == subnet)
            .count()
    }

    /// Marks nodes unheard for `UNREACHABLE_AFTER_MS` unreachable, forgets long-gone ones.
    pub(super) fn check_nodes(&mut self, now: Instant) {
        let unreachable = Duration::from_millis(UNREACHABLE_AFTER_MS);
        for n in self.nodes.values_mut() {
            if n.reachable && now >= n.last_heard + unreachable {
                n.reachable = false;
                self.events.push_back(DirectorEvent::NodeDown {
                    node: n.name.clone(),
                });
            }
        }
        self.nodes
            .retain(|_, n| n.reachable || now < n.last_heard + FORGET_NODE_AFTER);
    }

    /// Creates a job: its files must be carried by live servers and its targets
    /// known; returns its id.
    pub fn create_job(&mut self, now: Instant, mut spec: JobSpec) -> Result<u64, JobError> {
        crate::jobs::check_spec(&spec)?;
        self.check_scheduling()?;
        let young = now < self.started + super::KNOWS_ALL_AFTER;
        // Each file pinned to one archive on air: the one asked, or the only one.
        let mut archives = Vec::with_capacity(spec.files.len());
        for (i, f) in spec.files.iter().enumerate() {
            let mut carried: Vec<u64> = self.carrying(f).iter().map(|c| c.archive_id).collect();
            carried.sort_unstable();
            carried.dedup();
            let asked = spec.archive(i);
            archives.push(match (asked, carried.as_slice()) {
                (0, [only]) => *only,
                (0, []) => {
                    return Err(match young {
                        true => JobError::NotYetKnown,
                        false => JobError::NotCarried(f.clone()),
                    });
                }
                (0, _) => return Err(JobError::Ambiguous(f.clone(), carried)),
                (id, _) if carried.contains(&id) => id,
                (id, _) => {
                    return Err(match young {
                        true => JobError::NotYetKnown,
                        false => JobError::NotCarried(format!("{f}@{id:016x}")),
                    });
                }
            });
        }
        spec.archives = archives;
        if let Some(n) = spec.targets.iter().find(|n| !self.nodes.contains_key(*n)) {
            return Err(match young {
                true => JobError::NotYetKnown,
                false => JobError::UnknownNode(n.clone()),
            });
        }
        let wall = self.wall_ms(now);
        let id = self.jobs.create(spec, wall)?;
        self.drain_job_changes();
        self.tell_targets(now, id, AssignAction::Fetch);
        Ok(id)
    }

    /// Cancels a job; its reachable agents are told at once, the others at their next REGISTER.
    pub fn cancel_job(&mut self, now: Instant, id: u64) -> Result<(), JobError> {
        self.check_scheduling()?;
        let active = self
            .jobs
            .get(id)
            .is_some_and(|j| j.state == JobState::Active);
        self.jobs.cancel(id)?;
        self.drain_job_changes();
        if active {
            self.tell_targets(now, id, AssignAction::Cancel);
        }
        Ok(())
    }

    /// Sends each reachable target of job `id` an ASSIGN now, rather than at
    /// its next REGISTER (up to a second later): it echoes the node's last
    /// REGISTER, at most a second old, so the agent takes it.
    fn tell_targets(&mut self, now: Instant, id: u64, action: AssignAction) {
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        let wall = self.wall_ms(now);
        for name in job.nodes.keys() {
            // Unasked, so only to an address proven (§10.3).
            let Some(n) = self.nodes.get(name).filter(|n| n.reachable && n.proven) else {
                continue;
            };
            let a = match action {
                AssignAction::Fetch => fetch(job, n.sequence, wall),
                AssignAction::Cancel => cancel(id, n.sequence),
            };
            let datagram = wire::encode_assign(&self.director_key, n.instance, &a);
            self.out.push_back((n.address, datagram));
        }
    }

    fn check_scheduling(&self) -> Result<(), JobError> {
        match self.scheduling {
            true => Ok(()),
            false => Err(JobError::NotLeader(self.leader.clone())),
        }
    }

    /// Makes this director schedule jobs (the only one of several on a shared
    /// store), or follow the store, whose scheduler's API is at `leader`.
    pub fn set_scheduling(&mut self, scheduling: bool, leader: Option<String>) {
        self.scheduling = scheduling;
        self.leader = leader;
    }

    /// Whether this director schedules jobs.
    pub fn scheduling(&self) -> bool {
        self.scheduling
    }

    /// The API address of the director that schedules, when another does and it is known.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// Replaces every job with the store's (a director that does not schedule).
    pub fn replace_jobs(&mut self, jobs: Vec<Job>) {
        self.jobs.replace_all(jobs);
    }

    /// Puts back a job from the store (on start).
    pub fn restore_job(&mut self, job: Job) {
        self.jobs.restore(job);
    }

    /// One job.
    pub fn job(&self, id: u64) -> Option<&Job> {
        self.jobs.get(id)
    }

    /// Every job held, oldest first.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.all()
    }

    /// Jobs changed or removed, and targets whose progress moved, since the
    /// last call: what to store.
    pub fn take_dirty_jobs(&mut self) -> crate::jobs::Dirty {
        self.jobs.take_dirty()
    }

    /// The nodes known.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// One node.
    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(name)
    }

    /// Checks a request that changes jobs (§10.4) and remembers its nonce.
    pub fn authorize(&mut self, now: Instant, request: &ApiRequest<'_>) -> Result<(), JobError> {
        let wall = self.wall_ms(now);
        let result = match &mut self.api {
            Some(api) => api.check(wall, request),
            None => Err(JobError::Unauthenticated(
                "this director takes no job requests",
            )),
        };
        if result.is_err() {
            self.stats.unauthenticated += 1;
        }
        result
    }

    pub(super) fn drain_job_changes(&mut self) {
        for change in self.jobs.take_changes() {
            self.events.push_back(DirectorEvent::Job(change));
        }
    }
}

/// An ASSIGN to fetch `job`, answering REGISTER `echo` at wall time `wall`.
fn fetch(job: &Job, echo: u64, wall: u64) -> Assign {
    Assign {
        echo,
        job_id: job.id,
        action: AssignAction::Fetch,
        remaining_ms: job
            .deadline_at_ms()
            .saturating_sub(wall)
            .min(u32::MAX as u64) as u32,
        max_rate_bps: job.spec.max_rate_bps,
        files: job.spec.files.clone(),
        archives: (0..job.spec.files.len())
            .map(|i| job.spec.archive(i))
            .collect(),
    }
}

/// An ASSIGN to stop job `job_id`, answering REGISTER `echo`.
fn cancel(job_id: u64, echo: u64) -> Assign {
    Assign {
        echo,
        job_id,
        action: AssignAction::Cancel,
        remaining_ms: 0,
        max_rate_bps: 0,
        files: Vec::new(),
        archives: Vec::new(),
    }
}
