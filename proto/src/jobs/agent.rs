//! The agent (spec §10.2): a node's standing receiver. It registers with its
//! directors every second, reporting its jobs; their ASSIGN answers tell it to
//! fetch or stop. The driver fetches (an ordinary receiver session per job) and
//! tells the agent how far it got. Contract as every endpoint's: after any
//! input, drain `poll_transmit` and `poll_event`, then sleep until `poll_timeout`.

use super::REGISTER_INTERVAL_MS;
use crate::wire::{
    self, AgentJobState, Assign, AssignAction, JobFailure, JobReport, MAX_JOB_REPORTS, MacKey,
    Packet, Register,
};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a finished job stays in the agent's reports (a director that
/// missed them asks again with an ASSIGN, and is answered from `finished`).
pub const KEEP_REPORTING: Duration = Duration::from_secs(10);
/// How long a REGISTER's answers are taken: older ASSIGNs are stale (T29).
pub const ANSWER_WINDOW: Duration = Duration::from_secs(3);
/// Most finished jobs an agent remembers (the oldest go first).
pub const MAX_FINISHED: usize = 4096;

/// What the agent asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// Fetch a job's files.
    Fetch {
        /// The job.
        job: u64,
        /// File names.
        files: Vec<String>,
        /// The archive each file is pinned to (0: any), one per file.
        archives: Vec<u64>,
        /// Time left until the job's deadline.
        remaining: Duration,
        /// Fastest channel to take, bits/s (0: any).
        max_rate_bps: u64,
    },
    /// Stop fetching a job (cancelled, or its deadline passed).
    Cancel {
        /// The job.
        job: u64,
    },
    /// A director answered for the first time, or after `DIRECTOR_SILENT`.
    DirectorHeard {
        /// Which.
        director: SocketAddr,
    },
}

/// Most bytes of job details one REGISTER carries (16 reports of 13 bytes, a
/// node name of 64 and this stay within a 1500-byte packet).
const MAX_REGISTER_DETAILS: usize = 3 * wire::MAX_JOB_DETAIL;
/// A director unheard this long is silent: the driver says so.
pub const DIRECTOR_SILENT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Reported {
    report: JobReport,
    /// When it became final (None: still receiving).
    finished: Option<Instant>,
}

/// The agent (see the module documentation for its contract).
pub struct Agent {
    key: MacKey,
    node: String,
    directors: Vec<SocketAddr>,
    /// Random per start: answers to an earlier start of this node are not ours.
    instance: u32,
    started: Instant,
    /// `started` on the wall clock, ms since the Unix epoch (told in REGISTERs).
    started_ms: u64,
    next_register: Instant,
    /// Sequences of REGISTERs sent within `ANSWER_WINDOW`.
    sent: VecDeque<(u64, Instant)>,
    free_bytes: u64,
    jobs: BTreeMap<u64, Reported>,
    /// Final reports of jobs finished, kept to answer a director asking again.
    finished: BTreeMap<u64, JobReport>,
    /// When each director last answered.
    heard: BTreeMap<SocketAddr, Instant>,
    /// The last cookie each director gave (in a HEARD).
    cookies: BTreeMap<SocketAddr, [u8; wire::COOKIE_LEN]>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<AgentEvent>,
}

impl Agent {
    /// An agent named `node` registering with `directors` under `key` (the
    /// site's director key), started at `now`, which the wall clock calls
    /// `started_ms` (ms since the Unix epoch); `instance` is random.
    pub fn new(
        key: MacKey,
        node: String,
        directors: Vec<SocketAddr>,
        now: Instant,
        started_ms: u64,
        instance: u32,
    ) -> Self {
        assert!(wire::valid_node_name(&node), "invalid node name");
        Self {
            key,
            node,
            directors,
            instance,
            started: now,
            started_ms,
            next_register: now,
            sent: VecDeque::new(),
            free_bytes: 0,
            jobs: BTreeMap::new(),
            finished: BTreeMap::new(),
            heard: BTreeMap::new(),
            cookies: BTreeMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Remembers a job finished before this start (from the driver's record).
    pub fn restore_finished(&mut self, job: u64, state: AgentJobState, failure: JobFailure) {
        self.keep_finished(final_report(job, state, failure, String::new()));
    }

    fn keep_finished(&mut self, report: JobReport) {
        self.finished.insert(report.job_id, report);
        while self.finished.len() > MAX_FINISHED {
            self.finished.pop_first();
        }
    }

    /// Sets what the output directory has free.
    pub fn set_free_bytes(&mut self, bytes: u64) {
        self.free_bytes = bytes;
    }

    /// How far a job being fetched is.
    pub fn progress(&mut self, job: u64, permille: u16, failure: JobFailure) {
        if let Some(r) = self.jobs.get_mut(&job)
            && r.finished.is_none()
        {
            r.report.permille = permille.min(999);
            r.report.failure = failure;
        }
    }

    /// A job ended: done, or failed for good (`detail` says how, in words).
    /// The next REGISTER says so.
    pub fn finish(
        &mut self,
        now: Instant,
        job: u64,
        state: AgentJobState,
        failure: JobFailure,
        detail: &str,
    ) {
        let report = final_report(job, state, failure, wire::job_detail(detail));
        if let Some(r) = self.jobs.get_mut(&job) {
            *r = Reported {
                report: report.clone(),
                finished: Some(now),
            };
        }
        self.keep_finished(report);
        self.next_register = now;
    }

    /// Takes one datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if !self.directors.contains(&from) || !self.key.verifies(bytes) {
            return;
        }
        let Ok(d) = wire::decode(bytes) else {
            return;
        };
        let echo = match &d.packet {
            Packet::Assign(assign) => assign.echo,
            Packet::Heard(heard) => heard.echo,
            _ => return,
        };
        let fresh = (self.sent.iter())
            .any(|&(seq, at)| seq == echo && now.saturating_duration_since(at) <= ANSWER_WINDOW);
        if d.session_id != self.instance || !fresh {
            return;
        }
        let before = self.heard.insert(from, now);
        if before.is_none_or(|at| now >= at + DIRECTOR_SILENT) {
            self.events
                .push_back(AgentEvent::DirectorHeard { director: from });
        }
        match d.packet {
            Packet::Assign(assign) => self.assign(now, assign),
            // The cookie proves this agent's address in its next REGISTERs.
            Packet::Heard(heard) => {
                self.cookies.insert(from, heard.cookie);
            }
            _ => {}
        }
    }

    /// The directors that have not answered within `DIRECTOR_SILENT`, with when
    /// each last did (None: never).
    pub fn silent_directors(&self, now: Instant) -> Vec<(SocketAddr, Option<Instant>)> {
        (self.directors.iter())
            .map(|&d| (d, self.heard.get(&d).copied()))
            .filter(|(_, at)| at.is_none_or(|at| now >= at + DIRECTOR_SILENT))
            .collect()
    }

    fn assign(&mut self, now: Instant, a: Assign) {
        match a.action {
            AssignAction::Fetch => {
                if self.jobs.contains_key(&a.job_id) {
                    return;
                }
                if let Some(report) = self.finished.get(&a.job_id).cloned() {
                    // Asked again for a job finished: say so again.
                    self.jobs.insert(
                        a.job_id,
                        Reported {
                            report,
                            finished: Some(now),
                        },
                    );
                    self.next_register = now;
                    return;
                }
                if self.receiving().count() >= MAX_JOB_REPORTS {
                    return;
                }
                self.jobs.insert(
                    a.job_id,
                    Reported {
                        report: JobReport {
                            job_id: a.job_id,
                            state: AgentJobState::Receiving,
                            permille: 0,
                            failure: JobFailure::None,
                            detail: String::new(),
                        },
                        finished: None,
                    },
                );
                self.events.push_back(AgentEvent::Fetch {
                    job: a.job_id,
                    files: a.files,
                    archives: a.archives,
                    remaining: Duration::from_millis(a.remaining_ms.into()),
                    max_rate_bps: a.max_rate_bps,
                });
            }
            AssignAction::Cancel => {
                let receiving = self
                    .jobs
                    .get(&a.job_id)
                    .is_some_and(|r| r.finished.is_none());
                if receiving {
                    self.jobs.remove(&a.job_id);
                    self.events.push_back(AgentEvent::Cancel { job: a.job_id });
                }
            }
        }
    }

    fn receiving(&self) -> impl Iterator<Item = &Reported> {
        self.jobs.values().filter(|r| r.finished.is_none())
    }

    /// Registers when due, and lets finished jobs out of the reports.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.jobs
            .retain(|_, r| r.finished.is_none_or(|at| now < at + KEEP_REPORTING));
        self.sent
            .retain(|&(_, at)| now.saturating_duration_since(at) <= ANSWER_WINDOW);
        if now < self.next_register {
            return;
        }
        let interval = Duration::from_millis(REGISTER_INTERVAL_MS);
        self.next_register = now + interval;
        // Receiving jobs first: they must be heard; finished ones as room allows.
        let mut jobs: Vec<JobReport> = self.receiving().map(|r| r.report.clone()).collect();
        jobs.extend(
            (self.jobs.values())
                .filter(|r| r.finished.is_some())
                .map(|r| r.report.clone()),
        );
        jobs.truncate(MAX_JOB_REPORTS);
        // Details as room allows: a REGISTER stays within one 1500-byte packet.
        let mut room = MAX_REGISTER_DETAILS;
        for j in &mut jobs {
            match room.checked_sub(j.detail.len()) {
                Some(left) => room = left,
                None => j.detail.clear(),
            }
        }
        // Milliseconds since start, plus one so that two REGISTERs in one
        // millisecond (a finish right after a turn) still grow.
        let since = now.saturating_duration_since(self.started).as_millis() as u64;
        let sequence = self.sent.back().map_or(since, |&(s, _)| since.max(s + 1));
        self.sent.push_back((sequence, now));
        let mut register = Register {
            sequence,
            started_ms: self.started_ms,
            cookie: [0; wire::COOKIE_LEN],
            free_bytes: self.free_bytes,
            node: self.node.clone(),
            jobs,
        };
        for &d in &self.directors {
            register.cookie = self.cookies.get(&d).copied().unwrap_or_default();
            let datagram = wire::encode_register(&self.key, self.instance, &register);
            self.out.push_back((d, datagram));
        }
    }

    /// The next datagram to send and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next thing to do.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// When the next REGISTER is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next_register
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Jobs being fetched.
    pub fn receiving_jobs(&self) -> impl Iterator<Item = u64> + '_ {
        self.receiving().map(|r| r.report.job_id)
    }
}

fn final_report(job: u64, state: AgentJobState, failure: JobFailure, detail: String) -> JobReport {
    JobReport {
        job_id: job,
        state,
        permille: if state == AgentJobState::Done {
            1000
        } else {
            0
        },
        failure,
        detail,
    }
}
