//! An agent and a director talking on a virtual clock (a server heartbeating
//! the job's file to the director).

use super::super::agent::{Agent, AgentEvent};
use super::super::*;
use super::spec;
use crate::director::Director;
use crate::wire::{self, AnnounceEntry, ChannelInfo, Heartbeat, MacKey};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

const DIRECTOR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7790));
const SERVER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 7701));

fn agent_addr(k: u8) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(10, 0, 1, k).into(), 40000)
}

/// A director, a server heartbeating "image.iso", and agents, on a virtual clock.
struct Site {
    now: Instant,
    director: Director,
    agents: Vec<(Agent, SocketAddr)>,
    key: MacKey,
    heartbeats: u64,
    /// The server's last cookie from the director (T44).
    cookie: [u8; wire::COOKIE_LEN],
}

impl Site {
    fn new(nodes: &[&str]) -> Site {
        let now = Instant::now();
        let key = MacKey::from_bytes([1; 32]);
        let mut director = Director::new(key.clone(), MacKey::from_bytes([2; 32]), now);
        director.set_wall_clock(now, 1_000_000);
        let agents = (nodes.iter().enumerate())
            .map(|(k, n)| {
                let agent = Agent::new(
                    key.clone(),
                    n.to_string(),
                    vec![DIRECTOR],
                    now,
                    1_000_000,
                    k as u32 + 1,
                );
                (agent, agent_addr(k as u8 + 1))
            })
            .collect();
        Site {
            now,
            director,
            agents,
            key,
            heartbeats: 0,
            cookie: [0; wire::COOKIE_LEN],
        }
    }

    fn heartbeat(&mut self) {
        self.heartbeats += 1;
        let h = Heartbeat {
            sequence: self.heartbeats,
            started_ms: 1_000,
            unicast_port: SERVER.port(),
            listing_parts: 1,
            capacity_bps: 0,
            sending_bps: 0,
            unicast_clients: 0,
            unicast_max_clients: 8,
            receivers: 0,
            cpu_permille: 0,
            cookie: [0; wire::COOKIE_LEN],
            subnets: Vec::new(),
        };
        // With the last cookie; unknown to the director, again with the new one.
        for _ in 0..2 {
            let unproven = self.director.stats().unproven;
            let h = Heartbeat {
                cookie: self.cookie,
                ..h.clone()
            };
            let bytes = wire::encode_heartbeat(&self.key, 9, &h);
            self.director.handle_datagram(self.now, SERVER, &bytes);
            while let Some((to, bytes)) = self.director.poll_transmit() {
                if let Ok(wire::Packet::Heard(heard)) = wire::decode(&bytes).map(|d| d.packet) {
                    assert_eq!(to, SERVER);
                    self.cookie = heard.cookie;
                }
            }
            if self.director.stats().unproven == unproven {
                break;
            }
        }
        let entry = AnnounceEntry {
            archive_id: 5,
            original_size: 100,
            body_len: 100,
            content_digest: [7; 32],
            flags: 0,
            name: "image.iso".into(),
            channels: vec![ChannelInfo {
                group: SocketAddr::new(Ipv4Addr::new(239, 1, 1, 1).into(), 7701),
                control_port: 7702,
                rate_bps: 1_000_000,
            }],
        };
        let announce = wire::Announce {
            part: 0,
            parts: 1,
            unicast_port: SERVER.port(),
            key_fingerprint: [0; 16],
            entries: vec![entry],
        };
        let bytes = wire::encode_announce(&MacKey::from_bytes([2; 32]), 9, &announce);
        self.director.handle_datagram(self.now, SERVER, &bytes);
    }

    /// Runs `ms` of virtual time in 100 ms steps; returns the agents' events.
    fn run(&mut self, ms: u64) -> Vec<(usize, AgentEvent)> {
        let mut events = Vec::new();
        for _ in 0..ms / 100 {
            self.now += Duration::from_millis(100);
            if self.director.wall_ms(self.now).is_multiple_of(1000) {
                self.heartbeat();
            }
            self.director.handle_timeout(self.now);
            for (k, (agent, addr)) in self.agents.iter_mut().enumerate() {
                agent.handle_timeout(self.now);
                while let Some((to, bytes)) = agent.poll_transmit() {
                    assert_eq!(to, DIRECTOR);
                    self.director.handle_datagram(self.now, *addr, &bytes);
                }
                while let Some((to, bytes)) = self.director.poll_transmit() {
                    if to == *addr {
                        agent.handle_datagram(self.now, DIRECTOR, &bytes);
                    }
                }
                while let Some(e) = agent.poll_event() {
                    events.push((k, e));
                }
            }
            while self.director.poll_event().is_some() {}
        }
        events
    }
}

impl Site {
    /// Agent `k` finished job `id`: every file delivered.
    fn done(&mut self, k: usize, id: u64) {
        let now = self.now;
        self.agents[k]
            .0
            .finish(now, id, AgentJobState::Done, JobFailure::None, "");
    }
}

fn fetches(events: &[(usize, AgentEvent)]) -> Vec<usize> {
    (events.iter())
        .filter(|(_, e)| matches!(e, AgentEvent::Fetch { .. }))
        .map(|(k, _)| *k)
        .collect()
}

#[test]
fn agents_are_given_their_job_report_it_done_and_the_job_completes() {
    let mut site = Site::new(&["a", "b", "c"]);
    site.run(3100);
    // A file nobody carries and a node nobody runs are refused.
    let bad = JobSpec {
        files: vec!["nope".into()],
        ..spec(&["a"])
    };
    assert_eq!(
        site.director.create_job(site.now, bad),
        Err(JobError::NotCarried("nope".into()))
    );
    assert_eq!(
        site.director.create_job(site.now, spec(&["a", "zz"])),
        Err(JobError::UnknownNode("zz".into()))
    );
    let id = site
        .director
        .create_job(site.now, spec(&["a", "b"]))
        .unwrap();
    let events = site.run(1000);
    assert_eq!(
        fetches(&events),
        [0, 1],
        "each target once, c nothing: {events:?}"
    );
    // Progress reaches the director with the next REGISTER.
    site.agents[0].0.progress(id, 400, JobFailure::None);
    site.run(1000);
    assert_eq!(site.director.job(id).unwrap().nodes["a"].permille, 400);
    assert_eq!(
        site.director.job(id).unwrap().nodes["a"].state,
        NodeState::Receiving
    );
    site.done(0, id);
    site.done(1, id);
    let events = site.run(500);
    assert!(fetches(&events).is_empty(), "{events:?}");
    assert_eq!(site.director.job(id).unwrap().state, JobState::Complete);
}

#[test]
fn a_restarted_agent_is_given_its_unfinished_job_again_and_a_finished_one_is_answered_done() {
    let mut site = Site::new(&["a", "b"]);
    site.run(2500);
    let id = site
        .director
        .create_job(site.now, spec(&["a", "b"]))
        .unwrap();
    site.run(1000);
    site.done(1, id);
    site.run(1000);
    // Both agents restart: a new instance each; b's record says it finished.
    let now = site.now;
    for (k, (agent, _)) in site.agents.iter_mut().enumerate() {
        *agent = Agent::new(
            site.key.clone(),
            agent.node().to_owned(),
            vec![DIRECTOR],
            now,
            2_000_000,
            100 + k as u32,
        );
    }
    site.agents[1]
        .0
        .restore_finished(id, AgentJobState::Done, JobFailure::None);
    let events = site.run(1000);
    assert_eq!(fetches(&events), [0], "{events:?}");
    assert_eq!(
        site.director.job(id).unwrap().nodes["b"].state,
        NodeState::Done
    );
}

#[test]
fn a_silent_node_is_unreachable_and_the_job_waits_for_it_until_the_deadline() {
    let mut site = Site::new(&["a", "b"]);
    site.run(2500);
    let id = site
        .director
        .create_job(site.now, spec(&["a", "b"]))
        .unwrap();
    site.run(1000);
    let b = site.agents.pop().unwrap();
    site.run(6000);
    assert!(!site.director.node("b").unwrap().reachable);
    assert!(site.director.node("a").unwrap().reachable);
    site.done(0, id);
    site.run(1000);
    assert_eq!(site.director.job(id).unwrap().state, JobState::Active);
    // b comes back (same instance: it was only cut off) and finishes in time.
    site.agents.push(b);
    site.run(1000);
    assert!(site.director.node("b").unwrap().reachable);
    site.done(1, id);
    site.run(1000);
    assert_eq!(site.director.job(id).unwrap().state, JobState::Complete);
}

#[test]
fn the_deadline_cancels_the_work_of_agents_still_at_it() {
    let mut site = Site::new(&["a"]);
    site.run(2500);
    let short = JobSpec {
        deadline_ms: 3000,
        ..spec(&["a"])
    };
    let id = site.director.create_job(site.now, short).unwrap();
    let events = site.run(5000);
    assert!(
        events
            .iter()
            .any(|(_, e)| *e == AgentEvent::Cancel { job: id }),
        "{events:?}"
    );
    assert_eq!(site.director.job(id).unwrap().state, JobState::Expired);
    assert_eq!(site.agents[0].0.receiving_jobs().count(), 0);
}

#[test]
fn a_replayed_assign_is_stale_and_a_strangers_is_unheard() {
    let mut site = Site::new(&["a"]);
    site.run(2500);
    let (agent, _) = &mut site.agents[0];
    let now = site.now + Duration::from_secs(1);
    agent.handle_timeout(now);
    let (_, register) = agent.poll_transmit().unwrap();
    let wire::Packet::Register(r) = wire::decode(&register).unwrap().packet else {
        panic!("not a REGISTER");
    };
    let assign = |job_id| wire::Assign {
        archives: vec![0],
        echo: r.sequence,
        job_id,
        action: wire::AssignAction::Fetch,
        remaining_ms: 1000,
        max_rate_bps: 0,
        files: vec!["x".into()],
    };
    // A stranger's ASSIGN, with a fresh echo, starts nothing.
    let forged = wire::encode_assign(&MacKey::from_bytes([9; 32]), 1, &assign(78));
    agent.handle_datagram(now, DIRECTOR, &forged);
    assert_eq!(agent.poll_event(), None);
    // A genuine answer to that REGISTER, 4 s later (a replay), starts nothing;
    // within the answer window it would.
    let genuine = wire::encode_assign(&site.key, 1, &assign(77));
    agent.handle_datagram(now + Duration::from_secs(4), DIRECTOR, &genuine);
    assert_eq!(agent.poll_event(), None);
    agent.handle_datagram(now + Duration::from_secs(2), DIRECTOR, &genuine);
    assert!(matches!(
        agent.poll_event(),
        Some(AgentEvent::Fetch { job: 77, .. })
    ));
}

#[test]
fn a_replayed_register_is_stale_and_moves_nothing_back() {
    let mut site = Site::new(&["a"]);
    site.run(2500);
    let id = site.director.create_job(site.now, spec(&["a"])).unwrap();
    site.run(1000);
    let (agent, addr) = &mut site.agents[0];
    let addr = *addr;
    agent.progress(id, 300, JobFailure::None);
    let now = site.now + Duration::from_secs(1);
    agent.handle_timeout(now);
    let (_, at_30) = agent.poll_transmit().unwrap();
    site.director.handle_datagram(now, addr, &at_30);
    agent.finish(now, id, AgentJobState::Done, JobFailure::None, "");
    agent.handle_timeout(now);
    let (_, done) = agent.poll_transmit().unwrap();
    site.director.handle_datagram(now, addr, &done);
    assert_eq!(site.director.job(id).unwrap().state, JobState::Complete);
    let stale = site.director.stats().stale_registers;
    site.director.handle_datagram(now, addr, &at_30);
    assert_eq!(site.director.stats().stale_registers, stale + 1);
    assert_eq!(
        site.director.job(id).unwrap().nodes["a"].state,
        NodeState::Done
    );
}

#[test]
fn a_burst_of_registers_is_answered_at_most_every_half_second() {
    let mut site = Site::new(&["a"]);
    site.run(2500);
    site.director.create_job(site.now, spec(&["a"])).unwrap();
    // (The creation told the node at once.)
    assert!(site.director.poll_transmit().is_some());
    // Twenty REGISTERs of one node within 100 ms (as a replayed capture would
    // come): each is fresh, but one is answered.
    let addr = site.agents[0].1;
    let mut sent = Vec::new();
    for k in 0..20u64 {
        let r = wire::Register {
            sequence: 1_000_000 + k,
            started_ms: 2_000_000,
            cookie: [0; wire::COOKIE_LEN],
            free_bytes: 0,
            node: "a".into(),
            jobs: Vec::new(),
        };
        sent.push(wire::encode_register(&site.key, 99, &r));
    }
    let mut answers = 0;
    for (k, bytes) in sent.iter().enumerate() {
        let at = site.now + Duration::from_millis(600 + 5 * k as u64);
        site.director.handle_datagram(at, addr, bytes);
        while site.director.poll_transmit().is_some() {
            answers += 1;
        }
    }
    assert_eq!(answers, 1);
}

#[test]
fn a_new_job_reaches_reachable_agents_at_once_and_a_cancel_too() {
    let mut site = Site::new(&["a", "b"]);
    site.run(2500);
    let id = site
        .director
        .create_job(site.now, spec(&["a", "b"]))
        .unwrap();
    // Delivered within the same instant, before any REGISTER.
    let mut told = Vec::new();
    while let Some((to, bytes)) = site.director.poll_transmit() {
        let k = site.agents.iter().position(|(_, a)| *a == to).unwrap();
        site.agents[k].0.handle_datagram(site.now, DIRECTOR, &bytes);
        while let Some(e) = site.agents[k].0.poll_event() {
            told.push((k, e));
        }
    }
    assert_eq!(fetches(&told), [0, 1]);
    site.director.cancel_job(site.now, id).unwrap();
    let mut cancelled = 0;
    while let Some((to, bytes)) = site.director.poll_transmit() {
        let k = site.agents.iter().position(|(_, a)| *a == to).unwrap();
        site.agents[k].0.handle_datagram(site.now, DIRECTOR, &bytes);
        while let Some(e) = site.agents[k].0.poll_event() {
            cancelled += usize::from(e == AgentEvent::Cancel { job: id });
        }
    }
    assert_eq!(cancelled, 2);
}

#[test]
fn a_director_that_does_not_schedule_answers_no_agent_and_refuses_jobs() {
    let mut site = Site::new(&["a"]);
    site.run(2500);
    let id = site.director.create_job(site.now, spec(&["a"])).unwrap();
    let job = site.director.job(id).unwrap().clone();
    // (What creation sent at once is lost.)
    while site.director.poll_transmit().is_some() {}
    site.director
        .set_scheduling(false, Some("10.0.0.9:7791".into()));
    site.director.replace_jobs(vec![job.clone()]);
    let events = site.run(2000);
    // Its REGISTERs keep the node known, but no ASSIGN comes and no report counts.
    assert!(fetches(&events).is_empty(), "{events:?}");
    assert!(site.director.node("a").unwrap().reachable);
    assert_eq!(site.director.job(id), Some(&job));
    let e = site
        .director
        .create_job(site.now, spec(&["a"]))
        .unwrap_err();
    assert_eq!(e, JobError::NotLeader(Some("10.0.0.9:7791".into())));
    assert!(site.director.cancel_job(site.now, id).is_err());
    // Taking over: the next REGISTERs are answered.
    site.director.set_scheduling(true, None);
    let events = site.run(1500);
    assert_eq!(fetches(&events), [0]);
}

#[test]
fn a_request_sent_again_gets_the_job_it_made_not_another() {
    let mut t = JobTable::default();
    let asked = JobSpec {
        request_id: 42,
        ..spec(&["a"])
    };
    let first = t.create(asked.clone(), 1000).unwrap();
    assert_eq!(t.create(asked.clone(), 2000), Ok(first));
    assert_eq!(t.all().count(), 1);
    // Even once the job has ended, and in a table restored from the store.
    t.cancel(first).unwrap();
    let mut restored = JobTable::default();
    restored.restore(t.get(first).unwrap().clone());
    assert_eq!(restored.create(asked, 3000), Ok(first));
    // Without an id, each request is a job.
    assert_ne!(t.create(spec(&["a"]), 4000), t.create(spec(&["a"]), 5000));
}

#[test]
fn an_agent_with_no_job_hears_its_director_and_tells_when_it_falls_silent() {
    let mut site = Site::new(&["a"]);
    let (agent, _) = &site.agents[0];
    assert_eq!(agent.silent_directors(site.now).len(), 1, "never heard yet");
    site.run(2500);
    let (agent, _) = &site.agents[0];
    assert!(site.director.jobs().next().is_none());
    assert!(agent.silent_directors(site.now).is_empty());
    let later = site.now + crate::jobs::agent::DIRECTOR_SILENT;
    assert_eq!(agent.silent_directors(later).len(), 1);
}
