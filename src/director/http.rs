//! The director's HTTP API (`director --http`): read-only JSON views of its
//! registry, jobs and nodes, Prometheus metrics, and the tagged requests that
//! create and cancel jobs (`jobs`), served by `tiny_http` on a thread of its own.

use super::jobs;
use super::store::Store;
use loopcast_proto::director::{Director, load_fraction};
use loopcast_proto::jobs::{ApiRequest, JobState};
use loopcast_proto::wire::MacKey;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tiny_http::{Header, Method, Response, Server};

/// What `/metrics` is: prometheus-client writes OpenMetrics 1.0 text (`# EOF`,
/// `_total` samples), which Prometheus reads when told so.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Starts the API on `address`; it serves until the process ends.
pub fn serve(
    address: SocketAddr,
    listen: SocketAddr,
    director: Arc<Mutex<Director>>,
    store: Arc<Store>,
    answer_key: MacKey,
) -> crate::error::Result<()> {
    let server = Server::http(address)
        .map_err(|e| crate::error::Error::new(format!("cannot serve HTTP on {address}: {e}")))?;
    std::thread::Builder::new()
        .name("director-http".into())
        .spawn(move || {
            for mut request in server.incoming_requests() {
                // A request with a nonce gets its answer tagged (T39).
                let nonce = (request.headers().iter())
                    .find(|h| h.field.equiv("X-Loopcast-Nonce"))
                    .and_then(|h| h.value.as_str().parse::<u64>().ok());
                let (status, kind, body) = match request.method() {
                    Method::Get => {
                        let d = super::lock(&director);
                        let status = Status { store: &store, listen };
                        match page(&d, &status, request.url(), Instant::now()) {
                            Some((status, kind, body)) => (status, kind, body),
                            None => (
                                404,
                                "text/plain",
                                "see /v1/servers, /v1/files, /v1/receivers, /v1/jobs, /v1/nodes, /metrics\n".into(),
                            ),
                        }
                    }
                    Method::Post | Method::Delete => {
                        let (status, json) = change(&mut request, &director, &store);
                        (status, "application/json", format!("{json:#}\n"))
                    }
                    _ => (405, "text/plain", "GET, or POST/DELETE on /v1/jobs\n".to_string()),
                };
                let header = Header::from_bytes(&b"Content-Type"[..], kind.as_bytes())
                    .expect("a static header");
                let tag = nonce.map(|n| {
                    let tag = loopcast_proto::jobs::response_tag(&answer_key, n, status, body.as_bytes());
                    Header::from_bytes(&b"X-Loopcast-Tag"[..], loopcast_proto::keys::hex(&tag))
                        .expect("hex is a valid header value")
                });
                let mut response = Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header);
                if let Some(tag) = tag {
                    response.add_header(tag);
                }
                if let Err(e) = request.respond(response) {
                    log::debug!("HTTP answer failed: {e}");
                }
            }
        })
        .map_err(|e| crate::error::Error::new(format!("cannot start the HTTP thread: {e}")))?;
    Ok(())
}

/// A request that creates or cancels a job: its headers and body checked and
/// handed to `jobs::change`.
fn change(
    request: &mut tiny_http::Request,
    director: &Mutex<Director>,
    store: &Store,
) -> jobs::Answer {
    let header = |name: &'static str| {
        (request.headers().iter())
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_owned())
    };
    let issued_ms = header("X-Loopcast-Issued").and_then(|v| v.parse().ok());
    let nonce = header("X-Loopcast-Nonce").and_then(|v| v.parse().ok());
    let tag = header("X-Loopcast-Tag").and_then(|v| loopcast_proto::keys::unhex(&v));
    let (Some(issued_ms), Some(nonce), Some(tag)) = (issued_ms, nonce, tag) else {
        return (
            401,
            json!({"error": "a request that changes jobs needs X-Loopcast-Issued, -Nonce and -Tag (see PROTOCOL.md §10.4)", "kind": "unauthenticated"}),
        );
    };
    let mut body = Vec::new();
    let read = (request.as_reader().take(jobs::MAX_BODY as u64 + 1)).read_to_end(&mut body);
    if read.is_err() || body.len() > jobs::MAX_BODY {
        return (
            413,
            json!({"error": "the body is unreadable or over 1 MiB"}),
        );
    }
    let method = request.method().as_str().to_owned();
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    let source = request
        .remote_addr()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |a| a.ip());
    let request = ApiRequest {
        method: &method,
        path: &path,
        issued_ms,
        nonce,
        body: &body,
        tag: &tag,
        source,
    };
    jobs::change(director, store, &request)
}

/// What the status page tells beyond the director machine.
pub struct Status<'a> {
    /// The job store.
    pub store: &'a Store,
    /// The UDP address heartbeats, look-ups and REGISTERs go to.
    pub listen: SocketAddr,
}

/// The page at `url`: (status, content type, body), or None for an unknown path.
pub fn page(
    d: &Director,
    status: &Status<'_>,
    url: &str,
    now: Instant,
) -> Option<(u16, &'static str, String)> {
    let path = url.split('?').next().unwrap_or(url);
    let (status, json) = match path {
        "/v1/servers" => (200, servers(d, now)),
        "/v1/files" => (200, files(d)),
        "/v1/receivers" => (200, receivers(d, now)),
        "/v1/nodes" => (200, jobs::nodes(d, now)),
        "/v1/status" => (
            200,
            json!({"scheduling": d.scheduling(), "scheduler": d.leader(),
                   "store": status.store.kind(), "listen": status.listen.to_string()}),
        ),
        "/metrics" => return Some((200, METRICS_CONTENT_TYPE, metrics(d))),
        _ => jobs::show(d, path)?,
    };
    Some((status, "application/json", format!("{json:#}\n")))
}

/// Seconds from `then` to `now`, to the millisecond.
pub(super) fn age(now: Instant, then: Instant) -> f64 {
    (now.saturating_duration_since(then).as_secs_f64() * 1000.0).round() / 1000.0
}

fn servers(d: &Director, now: Instant) -> Value {
    let mut list: Vec<_> = d.servers().collect();
    list.sort_by_key(|s| s.address);
    Value::Array(
        list.into_iter()
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
                       "receivers": h.receivers, "cpu_permille": h.cpu_permille,
                       "throughput": h.subnets.iter().map(|t| json!({
                           "subnet": t.subnet.to_string(),
                           "receivers": t.receivers, "goodput_kbps": t.goodput_kbps})).collect::<Vec<_>>(),
                       "files": files})
            })
            .collect(),
    )
}

fn files(d: &Director) -> Value {
    Value::Array(
        (d.versions().into_iter())
            .map(|(name, versions)| {
                let versions: Vec<Value> = (versions.into_iter())
                    .map(|(id, (entry, mut servers))| {
                        servers.sort_by(|a, b| {
                            load_fraction(&a.load).total_cmp(&load_fraction(&b.load))
                        });
                        let servers: Vec<Value> = (servers.iter())
                            .map(|s| {
                                json!({"address": s.address.to_string(),
                                       "session": format!("{:08x}", s.session_id),
                                       "load": load_fraction(&s.load)})
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

fn receivers(d: &Director, now: Instant) -> Value {
    let mut list: Vec<_> = d.receivers().collect();
    list.sort_by_key(|r| (r.address, r.name.clone()));
    Value::Array(
        list.into_iter()
            .map(|r| {
                json!({"address": r.address.to_string(), "file": r.name,
                       "primary": r.primary.map(|p| p.to_string()), "asked_s_ago": age(now, r.at)})
            })
            .collect(),
    )
}

fn metrics(d: &Director) -> String {
    let mut registry = Registry::with_prefix("loopcast_director");
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let g = Gauge::<i64>::default();
        g.set(value);
        registry.register(name, help, g);
    };
    let files: std::collections::HashSet<&str> = d
        .servers()
        .flat_map(|s| s.files().map(|e| e.name.as_str()))
        .collect();
    gauge(
        &mut registry,
        "servers",
        "Live servers",
        d.servers().count() as i64,
    );
    gauge(
        &mut registry,
        "files",
        "Distinct file names carried",
        files.len() as i64,
    );
    gauge(
        &mut registry,
        "receivers",
        "Receivers' recent look-ups",
        d.receivers().count() as i64,
    );
    let (nodes, reachable) = (d.nodes().count(), d.nodes().filter(|n| n.reachable).count());
    gauge(&mut registry, "nodes", "Agents' nodes known", nodes as i64);
    gauge(
        &mut registry,
        "nodes_unreachable",
        "Nodes whose agent is silent (5 s or more)",
        (nodes - reachable) as i64,
    );
    gauge(
        &mut registry,
        "scheduling",
        "1 when this director schedules jobs",
        i64::from(d.scheduling()),
    );
    // Jobs by state, and the targets of active jobs by their state.
    let jobs = Family::<Vec<(String, String)>, Gauge>::default();
    let targets = Family::<Vec<(String, String)>, Gauge>::default();
    for job in d.jobs() {
        jobs.get_or_create(&vec![("state".into(), job.state.name().into())])
            .inc();
        if job.state == JobState::Active {
            for p in job.nodes.values() {
                targets
                    .get_or_create(&vec![("state".into(), p.state.name().into())])
                    .inc();
            }
        }
    }
    registry.register("jobs", "Jobs held, by state", jobs);
    registry.register("job_targets", "Targets of active jobs, by state", targets);
    let s = d.stats();
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
            "ignored",
            "Datagrams not for a director, or malformed",
            s.ignored,
        ),
    ] {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        registry.register(name, help, c);
    }
    let load = Family::<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let sending = Family::<Vec<(String, String)>, Gauge>::default();
    for server in d.servers() {
        let labels = vec![
            ("session".to_string(), format!("{:08x}", server.session_id)),
            ("address".to_string(), server.address.to_string()),
        ];
        load.get_or_create(&labels).set(load_fraction(&server.load));
        sending
            .get_or_create(&labels)
            .set(server.load.sending_bps.min(i64::MAX as u64) as i64);
    }
    registry.register(
        "server_load",
        "A server's load, 0 idle to 1 full (spec §9.3)",
        load,
    );
    registry.register("server_sending_bps", "What a server sends, bits/s", sending);
    let mut text = String::new();
    if encode(&mut text, &registry).is_err() {
        text = "# encoding failed\n".into();
    }
    text
}
