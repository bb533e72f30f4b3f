//! The director's HTTP API (`director --http`): read-only JSON pages of its
//! registry, jobs and nodes (`pages`), Prometheus metrics (`metrics`), and the
//! tagged requests that create and cancel jobs (`jobs`). Served by hyper's
//! HTTP/1 server on a thread of its own (a current-thread tokio runtime that
//! does only the connections' I/O); each request's work runs on a small
//! blocking pool. The API does not trust its clients: every bound below is
//! spec §9.4, and what it closes is counted in /metrics.

mod metrics;
mod pages;

use super::jobs;
use super::writer::Writer;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use loopcast_proto::director::Director;
use loopcast_proto::jobs::ApiRequest;
use loopcast_proto::wire::MacKey;
use pages::Page;
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections open at once, from everyone.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections open at once from one address (a TCP peer has proven it).
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 16;
/// Time to send the request line and header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to send the body once the header is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection may stay open, its answer's writing included.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Bytes of request line and header.
pub const MAX_HEADER_BYTES: usize = 16 << 10;
/// Header fields.
pub const MAX_HEADERS: usize = 32;
/// Requests worked on at once; the others wait their turn.
const WORKERS: usize = 4;

/// What the API closed, for /metrics.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections closed unread: over `MAX_CONNECTIONS` or the per-source bound.
    pub refused: AtomicU64,
    /// Requests whose header or body was over its bound.
    pub too_large: AtomicU64,
    /// Connections closed because a time-out passed.
    pub timed_out: AtomicU64,
}

impl HttpStats {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything a request may use.
struct Api {
    director: Arc<Mutex<Director>>,
    writer: Arc<Writer>,
    answer_key: MacKey,
    status: pages::Status,
    open: Mutex<Open>,
}

/// Connections open now, in all and per source.
#[derive(Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One open connection's place under the bounds, given back when it closes.
struct Slot {
    api: Arc<Api>,
    source: IpAddr,
}

impl Slot {
    /// A place for a connection from `source`, unless a bound is reached.
    fn claim(api: &Arc<Api>, source: IpAddr) -> Option<Slot> {
        let mut open = api.open.lock().unwrap_or_else(|e| e.into_inner());
        let from_source = open.by_source.get(&source).copied().unwrap_or(0);
        if open.total >= MAX_CONNECTIONS || from_source >= MAX_CONNECTIONS_PER_SOURCE {
            return None;
        }
        open.total += 1;
        *open.by_source.entry(source).or_default() += 1;
        Some(Slot {
            api: api.clone(),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.api.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

/// Starts the API on `address`; it serves until the process ends.
pub fn serve(
    address: SocketAddr,
    listen: SocketAddr,
    director: Arc<Mutex<Director>>,
    writer: Arc<Writer>,
    answer_key: MacKey,
) -> crate::error::Result<()> {
    let cannot = |what: &str, e: std::io::Error| crate::error::Error::new(format!("{what}: {e}"));
    let listener = std::net::TcpListener::bind(address)
        .map_err(|e| cannot(&format!("cannot serve HTTP on {address}"), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| cannot("cannot serve HTTP", e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(WORKERS)
        .thread_name("director-http-work")
        .build()
        .map_err(|e| cannot("cannot start the HTTP runtime", e))?;
    let api = Arc::new(Api {
        status: pages::Status {
            store: writer.store().kind(),
            listen,
            http: Arc::default(),
        },
        director,
        writer,
        answer_key,
        open: Mutex::default(),
    });
    std::thread::Builder::new()
        .name("director-http".into())
        .spawn(move || runtime.block_on(accept(listener, api)))
        .map_err(|e| cannot("cannot start the HTTP thread", e))?;
    Ok(())
}

/// Takes connections for ever. An accept error (out of file descriptors)
/// pauses it rather than ending it.
async fn accept(listener: std::net::TcpListener, api: Arc<Api>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("the HTTP API cannot listen: {e}");
            return;
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("HTTP API: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = Slot::claim(&api, peer.ip()) else {
            HttpStats::count(&api.status.http.refused);
            continue;
        };
        tokio::spawn(connection(stream, peer, slot));
    }
}

/// Serves one connection (one request: no keep-alive) within its bounds.
async fn connection(stream: tokio::net::TcpStream, peer: SocketAddr, slot: Slot) {
    let api = slot.api.clone();
    let service = service_fn(|request| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(answer(request, peer.ip(), api).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(false);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    let stats = &api.status.http;
    match tokio::time::timeout(CONNECTION_LIFETIME, served).await {
        Err(_) => HttpStats::count(&stats.timed_out),
        Ok(Err(e)) if e.is_timeout() => HttpStats::count(&stats.timed_out),
        Ok(Err(e)) if e.is_parse_too_large() => HttpStats::count(&stats.too_large),
        Ok(Err(e)) => log::debug!("HTTP connection from {peer}: {e}"),
        Ok(Ok(())) => {}
    }
}

/// One request's answer; tagged when the request carries a nonce (T39).
async fn answer(request: Request<Incoming>, peer: IpAddr, api: Arc<Api>) -> Response<Full<Bytes>> {
    let nonce = header(&request, "x-loopcast-nonce").and_then(|v| v.parse::<u64>().ok());
    let (status, kind, body) = match *request.method() {
        Method::GET => {
            let url = (request.uri().path_and_query()).map_or("/", |p| p.as_str());
            let (url, worker) = (url.to_owned(), api.clone());
            work(move || pages::get(&worker.director, &worker.status, &url, Instant::now())).await
        }
        Method::POST | Method::DELETE => change(request, peer, &api).await,
        _ => {
            let allowed = "GET, or POST/DELETE on /v1/jobs\n";
            (405, "text/plain", allowed.to_string())
        }
    };
    let mut response = Response::builder()
        .status(status)
        .header("Content-Type", kind);
    if let Some(nonce) = nonce {
        let tag =
            loopcast_proto::jobs::response_tag(&api.answer_key, nonce, status, body.as_bytes());
        response = response.header("X-Loopcast-Tag", loopcast_proto::keys::hex(&tag));
    }
    (response.body(Full::new(Bytes::from(body))))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"bad status\n"))))
}

fn header(request: &Request<Incoming>, name: &str) -> Option<String> {
    let value = request.headers().get(name)?;
    value.to_str().ok().map(str::to_owned)
}

/// Runs `f` on the blocking pool: it may wait on the director's lock or on
/// the store, and the connections' I/O goes on meanwhile.
async fn work(f: impl FnOnce() -> Page + Send + 'static) -> Page {
    (tokio::task::spawn_blocking(f).await)
        .unwrap_or_else(|_| (500, "text/plain", "the request's handler failed\n".into()))
}

fn json_answer(status: u16, json: &serde_json::Value) -> Page {
    (status, "application/json", format!("{json:#}\n"))
}

/// A request that creates or cancels a job: its headers and body (within
/// their bounds) checked and handed to `jobs::change`.
async fn change(request: Request<Incoming>, peer: IpAddr, api: &Arc<Api>) -> Page {
    let issued_ms = header(&request, "x-loopcast-issued").and_then(|v| v.parse().ok());
    let nonce = header(&request, "x-loopcast-nonce").and_then(|v| v.parse().ok());
    let tag = header(&request, "x-loopcast-tag").and_then(|v| loopcast_proto::keys::unhex(&v));
    let (Some(issued_ms), Some(nonce), Some(tag)) = (issued_ms, nonce, tag) else {
        let why = "a request that changes jobs needs X-Loopcast-Issued, -Nonce and -Tag (see PROTOCOL.md §10.4)";
        return json_answer(401, &json!({"error": why, "kind": "unauthenticated"}));
    };
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let stats = &api.status.http;
    let body = Limited::new(request.into_body(), jobs::MAX_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(body)) => body.to_bytes(),
        Err(_) => {
            HttpStats::count(&stats.timed_out);
            let why = format!("the body did not come within {} s", BODY_TIMEOUT.as_secs());
            return json_answer(408, &json!({"error": why, "kind": "timed_out"}));
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            HttpStats::count(&stats.too_large);
            return json_answer(
                413,
                &json!({"error": "the body is over 1 MiB", "kind": "too_large"}),
            );
        }
        Ok(Err(e)) => {
            let why = format!("the body is unreadable: {e}");
            return json_answer(400, &json!({"error": why, "kind": "invalid"}));
        }
    };
    let api = api.clone();
    work(move || {
        let request = ApiRequest {
            method: &method,
            path: &path,
            issued_ms,
            nonce,
            body: &body,
            tag: &tag,
            source: peer,
        };
        let (status, json) = jobs::change(&api.director, &api.writer, &request);
        json_answer(status, &json)
    })
    .await
}
