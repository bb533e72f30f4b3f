//! What a job store is to write. Its own file so that the stores (redb here,
//! etcd in `etcd`) and the store that picks between them do not import each
//! other.

use loopcast_proto::jobs::{Job, NodeProgress};

/// What a store is to write, copied out of the director under its lock and
/// written without it.
#[derive(Debug, Default)]
pub struct Changes {
    /// Jobs whose record changed: (id, the job, or None where it was removed).
    pub jobs: Vec<(u64, Option<Job>)>,
    /// Targets whose progress moved (etcd only; redb writes their jobs whole):
    /// (job, node, progress).
    pub moved: Vec<(u64, String, NodeProgress)>,
}

impl Changes {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.moved.is_empty()
    }
}
