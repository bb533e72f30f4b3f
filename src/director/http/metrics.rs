//! `/metrics`: the director's counts, taken under its lock as plain numbers
//! and written as OpenMetrics text after the lock is let go.

use super::HttpStats;
use loopcast_proto::director::{Director, DirectorStats, load_fraction};
use loopcast_proto::jobs::JobState;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

/// What `/metrics` is: prometheus-client writes OpenMetrics 1.0 text (`# EOF`,
/// `_total` samples), which Prometheus reads when told so.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The numbers `/metrics` shows.
pub struct Counts {
    servers: i64,
    files: i64,
    receivers: i64,
    nodes: i64,
    unreachable: i64,
    scheduling: bool,
    jobs: BTreeMap<&'static str, i64>,
    targets: BTreeMap<&'static str, i64>,
    stats: DirectorStats,
    /// Per server: session, address, load, bits/s sent.
    per_server: Vec<(u32, String, f64, i64)>,
    /// The HTTP API's own: refused, too large, timed out.
    http: [u64; 3],
}

impl Counts {
    /// Counts `d` (under its lock) and the API's counters.
    pub fn of(d: &Director, http: &HttpStats) -> Self {
        let files: HashSet<&str> = (d.servers())
            .flat_map(|s| s.files().map(|e| e.name.as_str()))
            .collect();
        let (mut jobs, mut targets) = (BTreeMap::new(), BTreeMap::new());
        for job in d.jobs() {
            *jobs.entry(job.state.name()).or_default() += 1;
            if job.state == JobState::Active {
                for p in job.nodes.values() {
                    *targets.entry(p.state.name()).or_default() += 1;
                }
            }
        }
        let nodes = d.nodes().count() as i64;
        Counts {
            servers: d.servers().count() as i64,
            files: files.len() as i64,
            receivers: d.receivers().count() as i64,
            nodes,
            unreachable: nodes - d.nodes().filter(|n| n.reachable).count() as i64,
            scheduling: d.scheduling(),
            jobs,
            targets,
            stats: d.stats().clone(),
            per_server: (d.servers())
                .map(|s| {
                    let sending = s.load.sending_bps.min(i64::MAX as u64) as i64;
                    let address = s.address.to_string();
                    (s.session_id, address, load_fraction(&s.load), sending)
                })
                .collect(),
            http: [
                http.refused.load(Ordering::Relaxed),
                http.too_large.load(Ordering::Relaxed),
                http.timed_out.load(Ordering::Relaxed),
            ],
        }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix("loopcast_director");
        let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
            let g = Gauge::<i64>::default();
            g.set(value);
            registry.register(name, help, g);
        };
        gauge(&mut registry, "servers", "Live servers", self.servers);
        let names = "Distinct file names carried";
        gauge(&mut registry, "files", names, self.files);
        let asked = "Receivers' recent look-ups";
        gauge(&mut registry, "receivers", asked, self.receivers);
        gauge(&mut registry, "nodes", "Agents' nodes known", self.nodes);
        let silent = "Nodes whose agent is silent (5 s or more)";
        gauge(&mut registry, "nodes_unreachable", silent, self.unreachable);
        let scheduling = "1 when this director schedules jobs";
        gauge(
            &mut registry,
            "scheduling",
            scheduling,
            self.scheduling.into(),
        );
        let by_state = |counts: &BTreeMap<&str, i64>| {
            let family = Family::<Vec<(String, String)>, Gauge>::default();
            for (state, n) in counts {
                (family.get_or_create(&vec![("state".into(), state.to_string())])).set(*n);
            }
            family
        };
        registry.register("jobs", "Jobs held, by state", by_state(&self.jobs));
        let targets = "Targets of active jobs, by state";
        registry.register("job_targets", targets, by_state(&self.targets));
        let s = &self.stats;
        let [refused, too_large, timed_out] = self.http;
        for (name, help, value) in [
            ("lookups_answered", "Look-ups answered", s.answered),
            (
                "lookups_not_carried",
                "Look-ups answered: not carried",
                s.not_carried,
            ),
            (
                "unauthenticated",
                "Datagrams whose tag did not verify",
                s.unauthenticated,
            ),
            (
                "stale_heartbeats",
                "Heartbeats no newer than the last (replays)",
                s.stale,
            ),
            (
                "heartbeats_unproven",
                "Heartbeats of new sessions whose address no cookie proved (T44)",
                s.unproven,
            ),
            (
                "stale_registers",
                "REGISTERs no newer than their node's (replays)",
                s.stale_registers,
            ),
            (
                "lookups_replayed",
                "Look-ups replayed: not answered, counted nowhere",
                s.replayed,
            ),
            (
                "ignored",
                "Datagrams not for a director, or malformed",
                s.ignored,
            ),
            (
                "http_refused",
                "HTTP connections closed unread: over a bound (§9.4)",
                refused,
            ),
            (
                "http_too_large",
                "HTTP requests whose header or body was over its bound",
                too_large,
            ),
            (
                "http_timed_out",
                "HTTP connections closed for a time-out (§9.4)",
                timed_out,
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(value);
            registry.register(name, help, c);
        }
        let load =
            Family::<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let sending = Family::<Vec<(String, String)>, Gauge>::default();
        for (session, address, fraction, bps) in &self.per_server {
            let labels = vec![
                ("session".to_string(), format!("{session:08x}")),
                ("address".to_string(), address.clone()),
            ];
            load.get_or_create(&labels).set(*fraction);
            sending.get_or_create(&labels).set(*bps);
        }
        let full = "A server's load, 0 idle to 1 full (spec §9.3)";
        registry.register("server_load", full, load);
        registry.register("server_sending_bps", "What a server sends, bits/s", sending);
        let mut text = String::new();
        if encode(&mut text, &registry).is_err() {
            text = "# encoding failed\n".into();
        }
        text
    }
}
