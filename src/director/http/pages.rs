//! The director's read-only pages (GET). What a page shows is copied out of
//! the director under its lock, no more than the page holds, and rendered
//! after the lock is let go: no reader, however large its answer, holds up
//! the UDP loop (spec §9.4). Listings come in pages, `?limit=N&after=KEY`,
//! in the order of their key; a page of `limit` items may have a next one.

use super::super::job_json::{JobHead, job_json};
use super::super::jobs;
use super::{HttpStats, metrics};
use loopcast_proto::director::{Director, ReceiverSeen, ServerRecord, load_fraction};
use loopcast_proto::jobs::{Job, JobError, JobState};
use loopcast_proto::wire::AnnounceEntry;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Items in a page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 500;
/// The largest `limit` taken.
pub const MAX_PAGE: usize = 1000;

/// An answer: status, content type, body.
pub type Page = (u16, &'static str, String);

/// What the status page tells beyond the director machine.
pub struct Status {
    /// The job store's kind.
    pub store: &'static str,
    /// The UDP address heartbeats, look-ups and REGISTERs go to.
    pub listen: SocketAddr,
    /// The API's own counters, for /metrics.
    pub http: Arc<HttpStats>,
}

/// Where a listing starts and how long it is.
struct Paging {
    limit: usize,
    after: Option<String>,
}

/// `?limit=N&after=KEY` (KEY percent-encoded); an unknown parameter is an error.
fn paging(query: &str) -> Result<Paging, String> {
    let mut paging = Paging {
        limit: DEFAULT_PAGE,
        after: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| format!("{name} is not UTF-8"))?;
        match name {
            "limit" => {
                paging.limit = (value.parse().ok())
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| format!("limit must be 1 to {MAX_PAGE}"))?;
            }
            "after" => paging.after = Some(value.into_owned()),
            _ => return Err(format!("unknown parameter {name:?} (limit, after)")),
        }
    }
    Ok(paging)
}

/// The first `limit` of `items` whose key comes after `after`, in key order.
fn page_of<T, K: Ord>(
    items: impl Iterator<Item = T>,
    key: impl Fn(&T) -> K,
    after: Option<&K>,
    limit: usize,
) -> Vec<T> {
    let mut keyed: Vec<(K, T)> = (items.map(|t| (key(&t), t)))
        .filter(|(k, _)| after.is_none_or(|a| k > a))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().take(limit).map(|(_, t)| t).collect()
}

fn json_page(status: u16, json: &Value) -> Page {
    (status, "application/json", format!("{json:#}\n"))
}

fn bad_request(why: String) -> Page {
    json_page(400, &json!({"error": why, "kind": "invalid"}))
}

/// The page at `url`.
pub fn get(director: &Mutex<Director>, status: &Status, url: &str, now: Instant) -> Page {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let paging = match paging(query) {
        Ok(p) => p,
        Err(why) => return bad_request(why),
    };
    let lock = || super::super::lock(director);
    let (limit, after) = (paging.limit, paging.after.as_ref());
    let json = match path {
        "/v1/servers" => {
            let page: Vec<ServerRecord> = {
                let d = lock();
                let key = |s: &&ServerRecord| s.address.to_string();
                (page_of(d.servers(), key, after, limit).into_iter().cloned()).collect()
            };
            servers(&page, now)
        }
        "/v1/files" => {
            // Copied in a statement of its own: the lock goes with it.
            let page = versions_page(&lock(), after, limit);
            files(page)
        }
        "/v1/receivers" => {
            let after = after.map(|a| {
                let (address, name) = a.split_once('/').unwrap_or((a, ""));
                (address.to_owned(), name.to_owned())
            });
            let page: Vec<ReceiverSeen> = {
                let d = lock();
                let key = |r: &&ReceiverSeen| (r.address.to_string(), r.name.clone());
                (page_of(d.receivers(), key, after.as_ref(), limit)
                    .into_iter()
                    .cloned())
                .collect()
            };
            receivers(&page, now)
        }
        "/v1/nodes" => {
            let page = nodes_page(&lock(), after, limit);
            nodes(&page, now)
        }
        "/v1/jobs" => {
            let after = match after.map(|a| a.parse::<u64>()) {
                Some(Err(_)) => return bad_request("after must be a job id".into()),
                Some(Ok(id)) => Some(id),
                None => None,
            };
            let page: Vec<JobSummary> = {
                let d = lock();
                let page = page_of(d.jobs(), |j| j.id, after.as_ref(), limit);
                page.into_iter().map(JobSummary::of).collect()
            };
            Value::Array(page.iter().map(JobSummary::json).collect())
        }
        "/v1/status" => {
            let (scheduling, leader) = {
                let d = lock();
                (d.scheduling(), d.leader().map(str::to_owned))
            };
            json!({"scheduling": scheduling, "scheduler": leader,
                   "store": status.store, "listen": status.listen.to_string()})
        }
        "/metrics" => {
            let counts = metrics::Counts::of(&lock(), &status.http);
            return (200, metrics::CONTENT_TYPE, counts.encode());
        }
        _ => match path.strip_prefix("/v1/jobs/").map(str::parse::<u64>) {
            Some(Ok(id)) => {
                let copy = {
                    let d = lock();
                    (d.job(id).cloned()).map(|job| {
                        let reachable = jobs::reachable_targets(&d, &job);
                        (job, reachable)
                    })
                };
                match copy {
                    Some((job, reachable)) => job_json(&job, Some(&reachable)),
                    None => {
                        let (status, json) = jobs::refused(&JobError::NoSuchJob(id));
                        return json_page(status, &json);
                    }
                }
            }
            _ => {
                let help = "see /v1/servers, /v1/files, /v1/receivers, /v1/jobs, /v1/jobs/ID, \
                            /v1/nodes, /v1/status, /metrics\n";
                return (404, "text/plain", help.into());
            }
        },
    };
    json_page(200, &json)
}

/// Seconds from `then` to `now`, to the millisecond.
fn age(now: Instant, then: Instant) -> f64 {
    (now.saturating_duration_since(then).as_secs_f64() * 1000.0).round() / 1000.0
}

fn servers(list: &[ServerRecord], now: Instant) -> Value {
    Value::Array(
        (list.iter())
            .map(|s| {
                let files: Vec<Value> = s
                    .files()
                    .map(|e| {
                        json!({"name": e.name, "archive_id": format!("{:016x}", e.archive_id),
                               "size": e.original_size, "body_len": e.body_len, "idle": e.idle(),
                               "blake3": loopcast_proto::keys::hex(&e.content_digest),
                               "channels": e.channels.iter().map(|c| json!({
                                   "group": c.group.to_string(), "rate_bps": c.rate_bps})).collect::<Vec<_>>()})
                    })
                    .collect();
                let h = &s.load;
                json!({"session": format!("{:08x}", s.session_id), "address": s.address.to_string(),
                       "last_heard_s": age(now, s.last_heard), "load": load_fraction(h),
                       "capacity_bps": h.capacity_bps, "sending_bps": h.sending_bps,
                       "unicast_clients": h.unicast_clients, "unicast_max_clients": h.unicast_max_clients,
                       "receivers": h.receivers, "cpu_permille": h.cpu_permille, "directed": s.directed,
                       "throughput": h.subnets.iter().map(|t| json!({
                           "subnet": t.subnet.to_string(),
                           "receivers": t.receivers, "goodput_kbps": t.goodput_kbps})).collect::<Vec<_>>(),
                       "files": files})
            })
            .collect(),
    )
}

/// One version of a file as /v1/files shows it: its entry and the servers
/// carrying it (address, session, load), least loaded first.
type VersionCopy = (AnnounceEntry, Vec<(SocketAddr, u32, f64)>);

/// A page of /v1/files copied out of the director: names after `after`, at
/// most `limit`, each with its versions by archive id.
fn versions_page(
    d: &Director,
    after: Option<&String>,
    limit: usize,
) -> Vec<(String, BTreeMap<u64, VersionCopy>)> {
    let versions = d.versions();
    let names = (versions.into_iter()).filter(|(name, _)| after.is_none_or(|a| *name > a.as_str()));
    (names.take(limit))
        .map(|(name, versions)| {
            let versions = (versions.into_iter())
                .map(|(id, (entry, servers))| {
                    let mut servers: Vec<_> = (servers.iter())
                        .map(|s| (s.address, s.session_id, load_fraction(&s.load)))
                        .collect();
                    servers.sort_by(|a, b| a.2.total_cmp(&b.2));
                    (id, (entry.clone(), servers))
                })
                .collect();
            (name.to_owned(), versions)
        })
        .collect()
}

fn files(page: Vec<(String, BTreeMap<u64, VersionCopy>)>) -> Value {
    Value::Array(
        (page.into_iter())
            .map(|(name, versions)| {
                let versions: Vec<Value> = (versions.into_iter())
                    .map(|(id, (entry, servers))| {
                        let servers: Vec<Value> = (servers.iter())
                            .map(|(address, session, load)| {
                                json!({"address": address.to_string(),
                                       "session": format!("{session:08x}"), "load": load})
                            })
                            .collect();
                        json!({"archive_id": format!("{id:016x}"), "size": entry.original_size,
                               "blake3": loopcast_proto::keys::hex(&entry.content_digest),
                               "servers": servers})
                    })
                    .collect();
                json!({"name": name, "versions": versions})
            })
            .collect(),
    )
}

fn receivers(list: &[ReceiverSeen], now: Instant) -> Value {
    Value::Array(
        (list.iter())
            .map(|r| {
                json!({"address": r.address.to_string(), "file": r.name,
                       "primary": r.primary.map(|p| p.to_string()), "asked_s_ago": age(now, r.at)})
            })
            .collect(),
    )
}

/// A node as /v1/nodes shows it, with the active jobs that name it.
struct NodeCopy {
    name: String,
    address: SocketAddr,
    reachable: bool,
    last_heard: Instant,
    free_bytes: u64,
    active_jobs: usize,
}

/// A page of /v1/nodes copied out of the director.
fn nodes_page(d: &Director, after: Option<&String>, limit: usize) -> Vec<NodeCopy> {
    let page = page_of(d.nodes(), |n| n.name.clone(), after, limit);
    let active = |name: &str| {
        (d.jobs().filter(|j| j.state == JobState::Active))
            .filter(|j| j.nodes.get(name).is_some_and(|p| !p.state.is_final()))
            .count()
    };
    (page.into_iter())
        .map(|n| NodeCopy {
            name: n.name.clone(),
            address: n.address,
            reachable: n.reachable,
            last_heard: n.last_heard,
            free_bytes: n.free_bytes,
            active_jobs: active(&n.name),
        })
        .collect()
}

fn nodes(page: &[NodeCopy], now: Instant) -> Value {
    Value::Array(
        (page.iter())
            .map(|n| {
                json!({"node": n.name, "address": n.address.to_string(), "reachable": n.reachable,
                       "last_heard_s": age(now, n.last_heard), "free_bytes": n.free_bytes,
                       "active_jobs": n.active_jobs})
            })
            .collect(),
    )
}

/// A job as /v1/jobs lists it: its targets counted by state, not listed
/// (`/v1/jobs/ID` lists them).
struct JobSummary {
    head: JobHead,
    counts: BTreeMap<&'static str, u64>,
    targets: usize,
}

impl JobSummary {
    fn of(job: &Job) -> Self {
        let mut counts = BTreeMap::new();
        for p in job.nodes.values() {
            *counts.entry(p.state.name()).or_default() += 1;
        }
        JobSummary {
            head: JobHead::of(job),
            counts,
            targets: job.nodes.len(),
        }
    }

    fn json(&self) -> Value {
        let mut json = self.head.json();
        json["counts"] = json!(self.counts);
        json["targets"] = json!(self.targets);
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_comes_in_pages_that_join_up() {
        let keys = [5u64, 1, 9, 3, 7];
        let first = page_of(keys.iter(), |k| **k, None, 2);
        assert_eq!(first, [&1, &3]);
        let next = page_of(keys.iter(), |k| **k, Some(first[1]), 2);
        assert_eq!(next, [&5, &7]);
        let last = page_of(keys.iter(), |k| **k, Some(next[1]), 2);
        assert_eq!(last, [&9]);
    }

    #[test]
    fn paging_parameters_are_checked() {
        let p = paging("limit=2&after=a%2Fb%20c").unwrap();
        assert_eq!((p.limit, p.after.as_deref()), (2, Some("a/b c")));
        assert_eq!(paging("").unwrap().limit, DEFAULT_PAGE);
        assert!(paging("limit=0").is_err());
        assert!(paging(&format!("limit={}", MAX_PAGE + 1)).is_err());
        assert!(paging("limit=x").is_err());
        assert!(paging("colour=red").is_err());
        assert!(paging("after=%ff").is_err());
    }
}
