//! REGISTER and ASSIGN: an agent's liveness and job progress to its directors,
//! and a director's job for one agent (spec §10).

use super::{DecodeError, MacKey, PacketType, datagram};
use crate::codec::Reader;

/// Longest node name, bytes.
pub const MAX_NODE_NAME: usize = 64;
/// Most jobs one REGISTER reports on.
pub const MAX_JOB_REPORTS: usize = 16;
/// Most files one job carries.
pub const MAX_JOB_FILES: usize = 16;

/// True for a node name agents may use: 1 to 64 bytes of letters, digits, `.`, `-`, `_`.
pub fn valid_node_name(name: &str) -> bool {
    (1..=MAX_NODE_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Where an agent is with one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AgentJobState {
    /// Fetching its files (or waiting to try again).
    Receiving = 0,
    /// Every file delivered and verified, and the hook (if any) ran and succeeded.
    Done = 1,
    /// Given up for good (`JobFailure` says why).
    Failed = 2,
}

/// Why an agent's job is not going well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum JobFailure {
    /// Nothing wrong.
    None = 0,
    /// The last attempt to receive failed; the agent tries again.
    Retrying = 1,
    /// The files arrived but the `--on-complete` hook failed.
    HookFailed = 2,
    /// The output directory has no room for the files.
    NoRoom = 3,
}

/// Longest `JobReport::detail`, in bytes.
pub const MAX_JOB_DETAIL: usize = 160;

/// One job in an agent's REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    /// The job.
    pub job_id: u64,
    /// Where the agent is with it.
    pub state: AgentJobState,
    /// Thousandths of its packets held (1000 when done).
    pub permille: u16,
    /// What is wrong, if anything.
    pub failure: JobFailure,
    /// What the agent can say of it, in words (a failed hook's exit status and
    /// the tail of its error output), at most `MAX_JOB_DETAIL` bytes of UTF-8.
    pub detail: String,
}

/// `text` cut to at most `MAX_JOB_DETAIL` bytes, on a character boundary.
pub fn job_detail(text: &str) -> String {
    let mut end = text.len().min(MAX_JOB_DETAIL);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// An agent's liveness and progress, sent to each director every second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// Milliseconds since the agent started: grows, so a replay is dropped.
    pub sequence: u64,
    /// When the agent started, ms since the Unix epoch (its clock): an instance
    /// replaces another of its node only when it started later (T29).
    pub started_ms: u64,
    /// The last cookie a director gave the agent (zeros: none yet): it proves
    /// the agent's address, without which no answer outgrows the REGISTER.
    pub cookie: [u8; super::COOKIE_LEN],
    /// Bytes free in the agent's output directory.
    pub free_bytes: u64,
    /// The node's name (`valid_node_name`).
    pub node: String,
    /// The jobs it works on or finished lately, at most `MAX_JOB_REPORTS`.
    pub jobs: Vec<JobReport>,
}

/// What an ASSIGN tells an agent to do with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AssignAction {
    /// Fetch the job's files.
    Fetch = 0,
    /// Stop: the job was cancelled or its deadline passed.
    Cancel = 1,
}

/// A director's job for one agent, answering its REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assign {
    /// The sequence of the REGISTER it answers (an agent takes answers to its
    /// recent REGISTERs only, so a replayed ASSIGN is stale).
    pub echo: u64,
    /// The job.
    pub job_id: u64,
    /// Fetch or stop.
    pub action: AssignAction,
    /// Milliseconds left until the job's deadline.
    pub remaining_ms: u32,
    /// Fastest channel to take, bits/s (0: any).
    pub max_rate_bps: u64,
    /// The files' names (1 to `MAX_JOB_FILES`; none for a cancel).
    pub files: Vec<String>,
    /// The archive of each file the job is pinned to (0: any), one per file.
    pub archives: Vec<u64>,
}

/// Encodes a REGISTER (session id: the agent's instance). An invalid node name
/// or more than `MAX_JOB_REPORTS` jobs is a caller bug.
pub fn encode_register(key: &MacKey, instance: u32, r: &Register) -> Vec<u8> {
    assert!(valid_node_name(&r.node) && r.jobs.len() <= MAX_JOB_REPORTS);
    assert!(r.jobs.iter().all(|j| j.detail.len() <= MAX_JOB_DETAIL));
    datagram(key, PacketType::Register, instance, |buf| {
        buf.extend_from_slice(&r.sequence.to_be_bytes());
        buf.extend_from_slice(&r.started_ms.to_be_bytes());
        buf.extend_from_slice(&r.cookie);
        buf.extend_from_slice(&r.free_bytes.to_be_bytes());
        buf.push(r.node.len() as u8);
        buf.extend_from_slice(r.node.as_bytes());
        buf.push(r.jobs.len() as u8);
        for j in &r.jobs {
            buf.extend_from_slice(&j.job_id.to_be_bytes());
            buf.push(j.state as u8);
            buf.extend_from_slice(&j.permille.to_be_bytes());
            buf.push(j.failure as u8);
            buf.push(j.detail.len() as u8);
            buf.extend_from_slice(j.detail.as_bytes());
        }
    })
}

/// Encodes an ASSIGN (session id: the agent instance it answers). More than
/// `MAX_JOB_FILES` files or a name over 255 bytes is a caller bug.
pub fn encode_assign(key: &MacKey, instance: u32, a: &Assign) -> Vec<u8> {
    assert!(a.files.len() <= MAX_JOB_FILES && a.files.iter().all(|f| f.len() <= 255));
    assert_eq!(a.files.len(), a.archives.len(), "an archive per file");
    datagram(key, PacketType::Assign, instance, |buf| {
        buf.extend_from_slice(&a.echo.to_be_bytes());
        buf.extend_from_slice(&a.job_id.to_be_bytes());
        buf.push(a.action as u8);
        buf.extend_from_slice(&a.remaining_ms.to_be_bytes());
        buf.extend_from_slice(&a.max_rate_bps.to_be_bytes());
        buf.push(a.files.len() as u8);
        for (f, archive) in a.files.iter().zip(&a.archives) {
            buf.push(f.len() as u8);
            buf.extend_from_slice(f.as_bytes());
            buf.extend_from_slice(&archive.to_be_bytes());
        }
    })
}

fn string(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let len = r.u8()? as usize;
    std::str::from_utf8(r.take(len)?)
        .map(str::to_owned)
        .map_err(|_| DecodeError::Invalid)
}

pub(super) fn decode_register(r: &mut Reader<'_>) -> Result<Register, DecodeError> {
    let sequence = r.u64()?;
    let started_ms = r.u64()?;
    let cookie = r.array()?;
    let free_bytes = r.u64()?;
    let node = string(r)?;
    let count = r.u8()? as usize;
    if !valid_node_name(&node) || count > MAX_JOB_REPORTS {
        return Err(DecodeError::Invalid);
    }
    let mut jobs = Vec::with_capacity(count);
    for _ in 0..count {
        let job_id = r.u64()?;
        let state = match r.u8()? {
            0 => AgentJobState::Receiving,
            1 => AgentJobState::Done,
            2 => AgentJobState::Failed,
            _ => return Err(DecodeError::Invalid),
        };
        let permille = r.u16()?;
        let failure = match r.u8()? {
            0 => JobFailure::None,
            1 => JobFailure::Retrying,
            2 => JobFailure::HookFailed,
            3 => JobFailure::NoRoom,
            _ => return Err(DecodeError::Invalid),
        };
        let detail = string(r)?;
        if permille > 1000 || detail.len() > MAX_JOB_DETAIL {
            return Err(DecodeError::Invalid);
        }
        jobs.push(JobReport {
            job_id,
            state,
            permille,
            failure,
            detail,
        });
    }
    Ok(Register {
        sequence,
        started_ms,
        cookie,
        free_bytes,
        node,
        jobs,
    })
}

pub(super) fn decode_assign(r: &mut Reader<'_>) -> Result<Assign, DecodeError> {
    let echo = r.u64()?;
    let job_id = r.u64()?;
    let action = match r.u8()? {
        0 => AssignAction::Fetch,
        1 => AssignAction::Cancel,
        _ => return Err(DecodeError::Invalid),
    };
    let remaining_ms = r.u32()?;
    let max_rate_bps = r.u64()?;
    let count = r.u8()? as usize;
    if count > MAX_JOB_FILES || (action == AssignAction::Fetch) != (count > 0) {
        return Err(DecodeError::Invalid);
    }
    let mut files = Vec::with_capacity(count);
    let mut archives = Vec::with_capacity(count);
    for _ in 0..count {
        let name = string(r)?;
        if name.is_empty() {
            return Err(DecodeError::Invalid);
        }
        files.push(name);
        archives.push(r.u64()?);
    }
    Ok(Assign {
        echo,
        job_id,
        action,
        remaining_ms,
        max_rate_bps,
        files,
        archives,
    })
}
