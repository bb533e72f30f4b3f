//! `loopcast push` and `loopcast jobs`: clients of a director's HTTP API. A push
//! creates a job (a tagged POST, spec §10.4), then follows it until every
//! target is done or the job ends; `jobs` lists, shows and cancels jobs.

mod local;
mod render;

use crate::error::{EXIT_NOT_CARRIED, Error, Result};
use crate::events::Events;
use loopcast_proto::jobs::{ApiAuth, JobState};
use loopcast_proto::keys::hex;
use loopcast_proto::wire::MacKey;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Exit code of a push whose job ended with targets not done (deadline, failure, cancel).
pub const EXIT_TARGETS_MISSING: i32 = 5;
/// How often a push asks how its job is going.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often a push asks a director that just started again (every `POLL_INTERVAL`).
const NOT_YET_KNOWN_TRIES: u32 = 10;
/// How long a push keeps asking a director that does not answer, past the deadline.
const GRACE: Duration = Duration::from_secs(10);

/// What `push` was asked to do.
pub struct PushConfig {
    /// The jobs-API key (from the site key).
    pub key: MacKey,
    /// The directors' HTTP APIs (the one that schedules takes the job).
    pub directors: Vec<SocketAddr>,
    /// Names of files on air.
    pub files: Vec<String>,
    /// The archive each is pinned to (0: the one on air, as the director finds it).
    pub archives: Vec<u64>,
    /// Target node names.
    pub targets: Vec<String>,
    /// Deadline from now.
    pub deadline: Duration,
    /// Fastest channel the targets take (0: any).
    pub max_rate_bps: u64,
    /// Create the job and exit, without following it.
    pub detach: bool,
    /// Files on this host to serve for the job (their names are in `files`).
    pub serve: Vec<std::path::PathBuf>,
    /// The site key file (for serving them).
    pub key_path: std::path::PathBuf,
    /// `serve --interface` for them.
    pub interface: Option<String>,
    /// `serve --group` for them.
    pub group: Option<SocketAddr>,
    /// Print events as JSON lines on stdout.
    pub json: bool,
}

fn http() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build(),
    )
}

/// Sends a request that changes jobs, tagged under `key`; returns (status, JSON)
/// once the answer's tag verifies.
fn signed(
    key: &MacKey,
    director: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Value)> {
    let issued_ms = crate::director::unix_ms();
    let nonce: u64 = rand::random();
    let tag = ApiAuth::tag(key, method, path, issued_ms, nonce, body);
    let url = format!("http://{director}{path}");
    let request = match method {
        "POST" => http().post(&url),
        _ => http().delete(&url).force_send_body(),
    };
    let response = request
        .header("X-Loopcast-Issued", issued_ms.to_string())
        .header("X-Loopcast-Nonce", nonce.to_string())
        .header("X-Loopcast-Tag", hex(&tag))
        .header("Content-Type", "application/json")
        .send(body);
    let (status, text) = answer(response, director, &url, Some((key, nonce)))?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// An answer's status and body; with `check` (the key and the request's
/// nonce), only if the director's tag on it verifies (T39).
fn answer(
    response: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    director: SocketAddr,
    url: &str,
    check: Option<(&MacKey, u64)>,
) -> Result<(u16, String)> {
    let mut response = response.map_err(|e| {
        let refused = match &e {
            ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
            ureq::Error::ConnectionFailed => true,
            _ => false,
        };
        let hint = match refused {
            true => " (nothing listens there: a director's HTTP API is on its UDP port + 1 unless `director --http` put it elsewhere; give that with --api HOST:PORT)",
            false => "",
        };
        Error::new(format!("cannot reach the director's HTTP API at {director}: {e}{hint}"))
    })?;
    let tag = (response.headers().get("X-Loopcast-Tag"))
        .and_then(|v| v.to_str().ok())
        .and_then(loopcast_proto::keys::unhex)
        .unwrap_or_default();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| Error::new(format!("{url}: unreadable answer: {e}")))?;
    let status = response.status().as_u16();
    if let Some((key, nonce)) = check
        && !loopcast_proto::jobs::response_verifies(key, nonce, status, text.as_bytes(), &tag)
    {
        return Err(Error::new(format!(
            "{url}: the answer (HTTP {status}) does not verify with this key: the director holds another key than yours, or the answer is not the director's; not taken"
        )));
    }
    Ok((status, text))
}

/// GETs `path` from the director's API; with `key`, only an answer the
/// director tagged for this request is taken.
pub fn get(director: SocketAddr, path: &str, key: Option<&MacKey>) -> Result<(u16, Value)> {
    let url = format!("http://{director}{path}");
    let nonce: u64 = rand::random();
    let request = http()
        .get(&url)
        .header("X-Loopcast-Nonce", nonce.to_string());
    let (status, text) = answer(request.call(), director, &url, key.map(|k| (k, nonce)))?;
    let value = serde_json::from_str(&text)
        .map_err(|e| Error::new(format!("{url} is not the director's JSON: {e}")))?;
    Ok((status, value))
}

/// Items asked for per page of a listing (the director's largest).
const LISTING_PAGE: usize = 1000;

/// GETs every page of a listing (`?limit=&after=`, spec §9.4): the items of
/// all pages in one array. `key_field` is the item field pages continue after.
pub fn get_listing(
    director: SocketAddr,
    path: &str,
    key_field: &str,
    key: Option<&MacKey>,
) -> Result<(u16, Value)> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{path}?limit={LISTING_PAGE}");
        if let Some(after) = &after {
            let after =
                percent_encoding::utf8_percent_encode(after, percent_encoding::NON_ALPHANUMERIC);
            url.push_str(&format!("&after={after}"));
        }
        let (status, page) = get(director, &url, key)?;
        if status != 200 {
            return Ok((status, page));
        }
        let Value::Array(items) = page else {
            return Err(Error::new(format!("{path} at {director} is not a listing")));
        };
        let next = match items.last().map(|item| &item[key_field]) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let full = items.len() == LISTING_PAGE;
        all.extend(items);
        // A next page only after a full one, and only if it moves on.
        if !full || next.is_none() || next == after {
            break;
        }
        after = next;
    }
    Ok((200, Value::Array(all)))
}

/// A refusal as an error: exit 4 for what the site lacks (file, node), 1 otherwise.
fn refusal(status: u16, answer: &Value) -> Error {
    let message = answer["error"].as_str().unwrap_or("no reason given");
    let message = format!("the director refused (HTTP {status}): {message}");
    match answer["kind"].as_str() {
        Some("not_carried" | "unknown_node" | "no_such_job") => {
            Error::with_code(message, EXIT_NOT_CARRIED)
        }
        Some("invalid" | "ambiguous") => Error::with_code(message, 2),
        _ => Error::new(message),
    }
}

/// Creates the job, then follows it to its end.
pub fn push(config: PushConfig) -> Result<()> {
    // One id for every try of this request: a try whose answer was lost made
    // the job, and the next gets that job back rather than a second one.
    let request_id: u64 = rand::random::<u64>().max(1);
    let archives: Vec<String> = config
        .archives
        .iter()
        .map(|a| format!("{a:016x}"))
        .collect();
    let body = json!({"files": config.files, "targets": config.targets,
                      "deadline_s": config.deadline.as_secs(), "max_rate_bps": config.max_rate_bps,
                      "request_id": request_id, "archives": archives});
    let body = body.to_string();
    // Files of this host are served by this push, until the job ends, unless
    // a server carries them already.
    let to_serve = local::not_on_air(&config)?;
    let _server = match to_serve.is_empty() {
        true => None,
        false => {
            let udp = director_udp(&config.directors, &config.key)?;
            let mut server = local::LocalServer::start(&config, &to_serve, udp)?;
            server.wait_listed(
                &config.directors,
                &config.key,
                &config.files,
                config.deadline,
            )?;
            Some(server)
        }
    };
    warn_short_deadline(&config);
    let (director, job) = change(&config.key, &config.directors, "POST", "/v1/jobs", &body)?;
    let id = job["id"].as_u64().unwrap_or(0);
    let events = Events::new(config.json);
    events.emit(
        "job_created",
        json!({"job": id, "targets": config.targets.len()}),
    );
    log::info!(
        "job {id}: {} to {} node(s), deadline in {}",
        config.files.join(", "),
        config.targets.len(),
        render::duration(config.deadline)
    );
    if config.detach {
        println!("{id}");
        return Ok(());
    }
    follow(&config, director, id, &events)
}

/// Warns when the deadline is shorter than one loop of a file (at its fastest
/// channel within `--rate`): a node that joins late cannot finish in time.
fn warn_short_deadline(config: &PushConfig) {
    let Some((_, servers)) = (config.directors.iter())
        .find_map(|&d| get_listing(d, "/v1/servers", "address", Some(&config.key)).ok())
    else {
        return;
    };
    for name in &config.files {
        // The shortest loop of the file among the servers carrying it.
        let loop_secs = (servers.as_array().into_iter().flatten())
            .flat_map(|s| s["files"].as_array().into_iter().flatten())
            .filter(|f| f["name"] == name.as_str())
            .filter_map(|f| {
                let fastest = (f["channels"].as_array().into_iter().flatten())
                    .filter_map(|c| c["rate_bps"].as_u64())
                    .max()?;
                let rate = match config.max_rate_bps {
                    0 => fastest,
                    cap => fastest.min(cap),
                };
                Some(f["body_len"].as_u64()? as f64 * 8.0 / rate.max(1) as f64)
            })
            .fold(f64::INFINITY, f64::min);
        if loop_secs.is_finite() && config.deadline.as_secs_f64() < loop_secs {
            log::warn!(
                "--deadline {} is shorter than one loop of {} (about {}): a node that joins late cannot finish in time",
                render::duration(config.deadline),
                crate::units::display_name(name),
                render::duration(Duration::from_secs_f64(loop_secs))
            );
        }
    }
}

/// Where the directors take heartbeats: the first that answers tells its UDP
/// address (`/v1/status`); an unspecified one means the address its API was reached at.
fn director_udp(directors: &[SocketAddr], key: &MacKey) -> Result<SocketAddr> {
    let mut last = Error::new("no director given");
    for &api in directors {
        match get(api, "/v1/status", Some(key)) {
            Ok((200, status)) => {
                let listen: Option<SocketAddr> =
                    status["listen"].as_str().and_then(|l| l.parse().ok());
                if let Some(listen) = listen {
                    let ip = match listen.ip().is_unspecified() {
                        true => api.ip(),
                        false => listen.ip(),
                    };
                    return Ok(SocketAddr::new(ip, listen.port()));
                }
                last = Error::new(format!("the director at {api} does not tell its address"));
            }
            Ok((status, answer)) => last = refusal(status, &answer),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Sends a request that changes jobs to the director that schedules: each in
/// turn, past those unreachable or not scheduling; a director that just started
/// (and knows too little, 503) is asked again for up to 5 s. Returns the
/// director that took it and its answer.
fn change(
    key: &MacKey,
    directors: &[SocketAddr],
    method: &str,
    path: &str,
    body: &str,
) -> Result<(usize, Value)> {
    let mut last = Error::new("no director given");
    for _ in 0..NOT_YET_KNOWN_TRIES {
        for (k, &director) in directors.iter().enumerate() {
            match signed(key, director, method, path, body.as_bytes()) {
                Ok((200 | 201, answer)) => return Ok((k, answer)),
                Ok((503, answer)) => last = refusal(503, &answer),
                Ok((status, answer)) => return Err(refusal(status, &answer)),
                Err(e) => last = e,
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Err(last)
}

fn follow(config: &PushConfig, first: usize, id: u64, events: &Events) -> Result<()> {
    let give_up = Instant::now() + config.deadline + GRACE;
    let mut view = render::Follow::new(!config.json, events);
    let mut last_error = None;
    // The director that took the job, then (should it fail) the others in turn:
    // every director on a shared store shows every job.
    let mut at = first;
    loop {
        match get(
            config.directors[at],
            &format!("/v1/jobs/{id}"),
            Some(&config.key),
        ) {
            Ok((200, job)) => {
                last_error = None;
                view.update(&job);
                match job["state"].as_str().and_then(JobState::from_name) {
                    Some(JobState::Active) | None => {}
                    Some(JobState::Complete) => {
                        view.finish(&job);
                        return Ok(());
                    }
                    Some(state) => {
                        view.finish(&job);
                        return Err(missing(id, state, &job));
                    }
                }
            }
            Ok((status, answer)) if status != 404 => return Err(refusal(status, &answer)),
            // The director may be restarting (its store keeps the job), gone
            // (another on a shared store shows it), or following a shared store
            // from a moment ago (it does not know the job yet): ask the others.
            unanswered => {
                let e = match unanswered {
                    Ok((_, answer)) => refusal(404, &answer),
                    Err(e) => e,
                };
                if last_error.is_none() {
                    log::warn!("{e}; asking again");
                }
                last_error = Some(e);
                at = (at + 1) % config.directors.len();
            }
        }
        if Instant::now() >= give_up {
            let why = last_error.map_or("no answer".to_string(), |e| e.to_string());
            return Err(Error::with_code(
                format!(
                    "job {id}: the deadline passed and the director cannot tell how it ended: {why}"
                ),
                EXIT_TARGETS_MISSING,
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The error a push ends with when targets are missing.
fn missing(id: u64, state: JobState, job: &Value) -> Error {
    let mut missing: Vec<String> = (job["nodes"].as_array().into_iter().flatten())
        .filter(|n| n["state"] != "done")
        .map(|n| {
            let name = n["node"].as_str().unwrap_or("?");
            match n["failure"].as_str() {
                Some("none") | None => name.to_string(),
                Some(why) => format!("{name} ({why})"),
            }
        })
        .collect();
    missing.sort();
    let why = match state {
        JobState::Expired => "the deadline passed",
        JobState::Cancelled => "it was cancelled",
        _ => "targets failed",
    };
    Error::with_code(
        format!(
            "job {id} ended ({why}) with {} node(s) not done: {}",
            missing.len(),
            missing.join(", ")
        ),
        EXIT_TARGETS_MISSING,
    )
}

/// `jobs`: every job, or one with its nodes; `cancel` stops it (needs `key`).
pub fn jobs(
    directors: &[SocketAddr],
    id: Option<u64>,
    key: Option<MacKey>,
    cancel: bool,
    json: bool,
) -> Result<()> {
    let verify = key.as_ref();
    if verify.is_none() {
        log::warn!(
            "without --key the director's answer is not verified: anyone on the path can change it"
        );
    }
    if let (true, Some(key), Some(id)) = (cancel, verify, id) {
        change(key, directors, "DELETE", &format!("/v1/jobs/{id}"), "")?;
        println!("job {id} cancelled");
        return Ok(());
    }
    let path = id.map_or("/v1/jobs".to_string(), |id| format!("/v1/jobs/{id}"));
    // The first director that answers.
    let mut answered = Err(Error::new("no director given"));
    for &director in directors {
        answered = match id {
            Some(_) => get(director, &path, verify),
            None => get_listing(director, &path, "id", verify),
        };
        if answered.is_ok() {
            break;
        }
    }
    let (status, answer) = answered?;
    if status != 200 {
        return Err(refusal(status, &answer));
    }
    if json {
        println!("{answer:#}");
    } else if id.is_some() {
        render::job(&answer);
    } else {
        render::list(&answer);
    }
    Ok(())
}
