//! etcd's JSON gateway (`/v3/...` over HTTP or HTTPS, keys and values
//! base64) on a list of endpoints, with TLS (a CA of the site's, a client
//! certificate) and etcd's user authentication (a token, asked for again when
//! etcd says it expired). Ranges are read in pages, each answer within
//! `MAX_ANSWER_BYTES`, so a store of any allowed size can be read.

use crate::error::{Error, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeroize::Zeroizing;

/// How long one request to etcd may take (but the campaign's).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read: a page of records at their largest, base64 in
/// etcd's JSON (4/3, and room for keys and fields), so that a store of any
/// size the API allows is read, and nothing larger.
pub const MAX_ANSWER_BYTES: u64 =
    (super::records::RECORDS_PER_PAGE * super::records::MAX_RECORD_BYTES * 2) as u64;

/// How to reach etcd (`director --etcd …`).
#[derive(Debug, Clone, Default)]
pub struct EtcdAccess {
    /// `http://HOST:PORT` or `https://HOST:PORT`, tried in turn.
    pub endpoints: Vec<String>,
    /// PEM certificates of the CA that signed etcd's (`--etcd-ca`); default:
    /// the web's public roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain and key (`--etcd-cert`, `--etcd-key`).
    pub cert: Option<(PathBuf, PathBuf)>,
    /// etcd user and the file holding its password (`--etcd-user`,
    /// `--etcd-password-file`).
    pub user: Option<(String, PathBuf)>,
}

/// The gateway: a request goes to the endpoint that answered last, then to
/// the others in turn.
#[derive(Clone)]
pub struct Gateway {
    endpoints: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
    agent: ureq::Agent,
    /// User and password, when etcd wants them.
    user: Option<Arc<(String, Zeroizing<String>)>>,
    /// The token etcd gave for them.
    token: Arc<Mutex<Option<String>>>,
    /// Tokens asked for so far (logged as a counter).
    tokens: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes of etcd's answers read so far (logged as a counter).
    read_bytes: Arc<std::sync::atomic::AtomicU64>,
}

fn refuse(why: String) -> Error {
    Error::with_code(why, 2)
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| refuse(format!("{what} {}: {e}", path.display())))
}

/// The certificates in PEM text (other items left aside).
fn pem_certificates(pem: &[u8]) -> Vec<ureq::tls::Certificate<'static>> {
    (ureq::tls::parse_pem(pem))
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

/// A secret file must be ours alone (as the key file).
fn read_secret(path: &std::path::Path, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| refuse(format!("{what} {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "{what} {} is readable by its group or others (mode {:04o}); run chmod 600 on it",
            path.display(),
            mode & 0o7777
        )));
    }
    read(path, what).map(Zeroizing::new)
}

impl Gateway {
    /// Checks the endpoints and reads the TLS files and password.
    pub fn new(access: &EtcdAccess) -> Result<Gateway> {
        let mut endpoints = Vec::new();
        for endpoint in &access.endpoints {
            let trimmed = endpoint.trim_end_matches('/');
            let base = match trimmed.split_once("://") {
                Some(("http" | "https", rest)) if !rest.is_empty() => trimmed.to_owned(),
                Some((scheme, _)) => {
                    return Err(refuse(format!(
                        "--etcd {endpoint}: {scheme}:// is not etcd's; give http:// or https://HOST:PORT"
                    )));
                }
                None => format!("http://{trimmed}"),
            };
            endpoints.push(base);
        }
        let tls_files = access.ca.is_some() || access.cert.is_some();
        if tls_files && let Some(plain) = endpoints.iter().find(|e| e.starts_with("http://")) {
            return Err(refuse(format!(
                "--etcd {plain}: --etcd-ca and --etcd-cert are for https:// endpoints"
            )));
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &access.ca {
            let pem = read(ca, "--etcd-ca")?;
            let certs = pem_certificates(&pem);
            if certs.is_empty() {
                return Err(refuse(format!(
                    "--etcd-ca {}: no PEM certificate",
                    ca.display()
                )));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        if let Some((cert, key)) = &access.cert {
            let chain = read(cert, "--etcd-cert")?;
            let chain = pem_certificates(&chain);
            let key_pem = read_secret(key, "--etcd-key")?;
            let key_der = ureq::tls::PrivateKey::from_pem(&key_pem)
                .map_err(|e| refuse(format!("--etcd-key {}: {e}", key.display())))?;
            if chain.is_empty() {
                return Err(refuse(format!(
                    "--etcd-cert {}: no PEM certificate",
                    cert.display()
                )));
            }
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key_der)));
        }
        let user = match &access.user {
            None => None,
            Some((name, file)) => {
                let bytes = read_secret(file, "--etcd-password-file")?;
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    refuse(format!(
                        "--etcd-password-file {}: not UTF-8",
                        file.display()
                    ))
                })?;
                let password = Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned());
                Some(Arc::new((name.clone(), password)))
            }
        };
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(REQUEST_TIMEOUT))
                .tls_config(tls.build())
                .build(),
        );
        Ok(Gateway {
            endpoints: Arc::new(endpoints),
            current: Arc::default(),
            agent,
            user,
            token: Arc::default(),
            tokens: Arc::default(),
            read_bytes: Arc::default(),
        })
    }

    /// POSTs `body` to `path`; `wait` overrides the time-out of one try. A
    /// token etcd no longer takes is asked for again, once.
    pub fn call(
        &self,
        path: &str,
        body: &Value,
        wait: Option<Duration>,
    ) -> std::result::Result<Value, String> {
        let token = self.token()?;
        match self.call_as(path, body, wait, token.as_deref()) {
            Err(e) if token.is_some() && token_is_stale(&e) => {
                *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let token = self.token()?;
                self.call_as(path, body, wait, token.as_deref())
            }
            answered => answered,
        }
    }

    /// The token for our user (asked for when there is none), or None
    /// without a user.
    fn token(&self) -> std::result::Result<Option<String>, String> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        let mut held = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none() {
            let asked = json!({"name": user.0, "password": user.1.as_str()});
            let answer = self.call_as("/v3/auth/authenticate", &asked, None, None)?;
            let token = answer["token"].as_str().ok_or("etcd gave no token")?;
            *held = Some(token.to_owned());
            self.tokens.fetch_add(1, Ordering::Relaxed);
            self.log_counters();
        }
        Ok(held.clone())
    }

    fn call_as(
        &self,
        path: &str,
        body: &Value,
        wait: Option<Duration>,
        token: Option<&str>,
    ) -> std::result::Result<Value, String> {
        let body = body.to_string();
        let first = self.current.load(Ordering::Relaxed);
        let mut last_error = String::new();
        for turn in 0..self.endpoints.len() {
            let at = (first + turn) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[at]);
            match self.try_call(&url, &body, wait, token) {
                Ok(value) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(value);
                }
                // etcd's own refusal is the same at every endpoint.
                Err(Refused(e)) => return Err(e),
                Err(Unreachable(e)) => last_error = e,
            }
        }
        Err(last_error)
    }

    fn try_call(
        &self,
        url: &str,
        body: &str,
        wait: Option<Duration>,
        token: Option<&str>,
    ) -> std::result::Result<Value, CallError> {
        let mut request = self
            .agent
            .post(url)
            .header("Content-Type", "application/json");
        if let Some(token) = token {
            request = request.header("Authorization", token);
        }
        if let Some(wait) = wait {
            request = request.config().timeout_global(Some(wait)).build();
        }
        let mut response = match request.send(body) {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => {
                return Err(Unreachable(format!("{url}: no answer in time")));
            }
            Err(e) => return Err(Unreachable(format!("{url}: {e}"))),
        };
        let text = (response.body_mut().with_config().limit(MAX_ANSWER_BYTES))
            .read_to_string()
            .map_err(|e| Unreachable(format!("{url}: unreadable answer: {e}")))?;
        (self.read_bytes).fetch_add(text.len() as u64, Ordering::Relaxed);
        let value: Value =
            serde_json::from_str(text.lines().next().unwrap_or("")).map_err(|_| {
                let start: String = text.chars().take(120).collect();
                let status = response.status();
                Unreachable(format!(
                    "{url} is not etcd's JSON gateway (HTTP {status}: {start:?})"
                ))
            })?;
        // A streamed answer (keep-alive) tells its error inside, under HTTP 200.
        let streamed_error = value["error"]["message"].as_str();
        if !response.status().is_success() || streamed_error.is_some() {
            let why = (value["message"].as_str())
                .or(streamed_error)
                .or(value["error"].as_str())
                .unwrap_or("no reason given");
            return Err(Refused(format!("{url}: {why}")));
        }
        Ok(value)
    }

    /// Logs the counters line (target `loopcast::counters`, at debug).
    pub fn log_counters(&self) {
        log::debug!(
            target: "loopcast::counters",
            "etcd counters: etcd_tokens={} etcd_read_bytes={}",
            self.tokens.load(Ordering::Relaxed),
            self.read_bytes.load(Ordering::Relaxed)
        );
    }

    /// The keys (and values, unless `ask.keys_only`) in [`key`, `range_end`),
    /// read `ask.per_page` at a time, all at one revision (`ask.revision`, or
    /// the latest), which is returned with them.
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        ask: Ask,
    ) -> std::result::Result<(Vec<KeyValue>, i64), String> {
        let mut all = Vec::new();
        let mut from = key.to_vec();
        let mut revision = ask.revision;
        loop {
            let mut asked = json!({"key": BASE64.encode(&from), "range_end": BASE64.encode(range_end),
                                   "limit": ask.per_page.to_string(), "keys_only": ask.keys_only});
            if revision > 0 {
                asked["revision"] = json!(revision.to_string());
            }
            if ask.min_mod_revision > 0 {
                asked["min_mod_revision"] = json!(ask.min_mod_revision.to_string());
            }
            let got = self.call("/v3/kv/range", &asked, None)?;
            if revision <= 0 {
                revision = super::int(&got["header"]["revision"])
                    .ok_or("etcd gave no revision with a range")?;
            }
            let mut last = None;
            for kv in got["kvs"].as_array().into_iter().flatten() {
                let key = (kv["key"].as_str()).and_then(|k| BASE64.decode(k).ok());
                // etcd leaves an empty value out (and every value, keys only).
                let value =
                    (kv["value"].as_str()).map_or(Some(Vec::new()), |v| BASE64.decode(v).ok());
                let (Some(key), Some(value)) = (key, value) else {
                    return Err("etcd gave a key or value that is not base64".into());
                };
                all.push((String::from_utf8_lossy(&key).into_owned(), value));
                last = Some(key);
            }
            match (got["more"].as_bool(), last) {
                // The next page starts just after the last key.
                (Some(true), Some(mut last)) => {
                    last.push(0);
                    from = last;
                }
                _ => return Ok((all, revision)),
            }
        }
    }
}

/// A key (as text) and its value, as read.
pub type KeyValue = (String, Vec<u8>);

/// How to read a range ([`Gateway::range`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask {
    /// Keys per answer.
    pub per_page: usize,
    /// Keys only, no values.
    pub keys_only: bool,
    /// Only keys modified at this revision or later (0: all).
    pub min_mod_revision: i64,
    /// Read at this revision (0: the latest).
    pub revision: i64,
}

/// Whether etcd refused a token it no longer takes: expired, dropped (the
/// user's password set again), or issued before its users last changed.
fn token_is_stale(why: &str) -> bool {
    why.contains("invalid auth token") || why.contains("revision of auth store is old")
}

/// Why a call failed: etcd said no, or no endpoint answered.
enum CallError {
    Refused(String),
    Unreachable(String),
}
use CallError::{Refused, Unreachable};
