//! The director under arbitrary datagram sequences, with a job held for the
//! seeds' node so that its REGISTERs are answered.

use super::{FUZZ_JOB, FUZZ_NODE, Step, World};
use crate::director::{Director, MAX_NODES, MAX_SERVERS};
use crate::jobs::{Job, JobSpec, JobState, NodeProgress, NodeState};
use crate::wire::{self, PacketType};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

impl World {
    /// Runs `steps` into a director; Err names the bound that broke.
    pub fn drive_director(&self, steps: &[Step]) -> Result<(), String> {
        let mut now = Instant::now();
        let mut director = Director::new(
            self.key.director_mac_key(),
            self.key.directory_mac_key(),
            now,
        );
        // A job for the seeds' node, so that its REGISTERs are answered.
        let job = Job {
            id: FUZZ_JOB,
            spec: JobSpec {
                files: vec![self.manifest.name.clone(), "other".into()],
                targets: vec![FUZZ_NODE.into()],
                deadline_ms: 60_000,
                max_rate_bps: 0,
                request_id: 0,
                archives: vec![self.manifest.archive_id, 7],
            },
            created_ms: 0,
            state: JobState::Active,
            nodes: [(
                FUZZ_NODE.to_string(),
                NodeProgress {
                    state: NodeState::Waiting,
                    permille: 0,
                    failure: wire::JobFailure::None,
                    moved_ms: 0,
                    detail: String::new(),
                },
            )]
            .into(),
        };
        director.restore_job(job);
        for s in steps {
            now += Duration::from_millis(s.dt_ms as u64 * 4);
            let from = SocketAddr::new(Ipv4Addr::new(10, 0, 0, s.source).into(), 7000);
            let datagram = self.datagram(s);
            director.handle_datagram(now, from, &datagram);
            director.handle_timeout(now);
            // Answers go to the asker and are no longer than the question; moves
            // (REDIRECT, to receivers remembered) are at most one per answer.
            // ASSIGNs (to a node's REGISTER) may be longer: at most two per job
            // reported or held (their rate per node is a unit test's).
            let mut assigned = 0;
            while let Some((to, answer)) = director.poll_transmit() {
                let kind = answer.get(3).copied();
                if kind == Some(PacketType::Assign as u8) && to == from {
                    assigned += 1;
                    continue;
                }
                let redirect = kind == Some(PacketType::Redirect as u8);
                if !redirect && (to != from || answer.len() > datagram.len()) {
                    return Err(format!(
                        "{} bytes to {to} for {}",
                        answer.len(),
                        datagram.len()
                    ));
                }
            }
            if assigned > 2 * wire::MAX_JOB_REPORTS {
                return Err(format!("{assigned} ASSIGNs for one REGISTER"));
            }
            if director.nodes().count() > MAX_NODES {
                return Err(format!("{} nodes", director.nodes().count()));
            }
            let stats = director.stats();
            if stats.redirects > stats.answered {
                return Err(format!(
                    "{} redirects for {} answers",
                    stats.redirects, stats.answered
                ));
            }
            while director.poll_event().is_some() {}
            if director.servers().count() > MAX_SERVERS {
                return Err(format!("{} servers", director.servers().count()));
            }
        }
        Ok(())
    }
}
