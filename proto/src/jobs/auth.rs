//! Authentication of requests that change jobs (spec §10.4): a tag under the
//! jobs-API key over the method, path, issue time, nonce and body, a bounded
//! clock skew, and nonces remembered while their time is acceptable, so a
//! captured request cannot be replayed.

use super::JobError;
use crate::wire::{MacKey, TAG_LEN};
use std::collections::HashMap;

/// Most a request's issue time may differ from the director's clock, ms.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;
/// Most nonces remembered; past it, requests are refused until old ones age out.
pub const MAX_NONCES: usize = 4096;
/// Most nonces remembered from one /24 (or /64): one host cannot lock everyone
/// out of the job API (T40).
pub const MAX_NONCES_PER_SOURCE: usize = 256;

/// The bytes a request's tag covers.
pub fn request_content(
    method: &str,
    path: &str,
    issued_ms: u64,
    nonce: u64,
    body: &[u8],
) -> Vec<u8> {
    let mut content = format!("{method} {path}\n{issued_ms}\n{nonce}\n").into_bytes();
    content.extend_from_slice(body);
    content
}

/// The bytes an answer's tag covers: its status and body, and the nonce of
/// the request it answers (so that an answer cannot be replayed or moved to
/// another request).
fn response_content(nonce: u64, status: u16, body: &[u8]) -> Vec<u8> {
    let mut content = format!("ANSWER {status}\n{nonce}\n").into_bytes();
    content.extend_from_slice(body);
    content
}

/// The tag a director puts on its answer to a request of `nonce` (any method,
/// T39): clients holding the key check what they are told.
pub fn response_tag(key: &MacKey, nonce: u64, status: u16, body: &[u8]) -> [u8; TAG_LEN] {
    key.tag(&response_content(nonce, status, body))
}

/// True when `tag` is the director's tag on this answer to request `nonce`.
pub fn response_verifies(key: &MacKey, nonce: u64, status: u16, body: &[u8], tag: &[u8]) -> bool {
    let mut tagged = response_content(nonce, status, body);
    tagged.extend_from_slice(tag);
    tag.len() == TAG_LEN && key.verifies(&tagged)
}

/// A request that changes jobs, as the director's HTTP API received it.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    /// "POST" or "DELETE".
    pub method: &'a str,
    /// The path, without a query.
    pub path: &'a str,
    /// `X-Loopcast-Issued`: ms since the Unix epoch, by the client's clock.
    pub issued_ms: u64,
    /// `X-Loopcast-Nonce`: random per request.
    pub nonce: u64,
    /// The body.
    pub body: &'a [u8],
    /// `X-Loopcast-Tag`, decoded.
    pub tag: &'a [u8],
    /// Where it came from (the TCP peer).
    pub source: std::net::IpAddr,
}

/// Checks requests and remembers their nonces.
#[derive(Debug)]
pub struct ApiAuth {
    key: MacKey,
    /// Nonce → issue time and source subnet, for requests taken within the skew.
    seen: HashMap<u64, (u64, crate::wire::Subnet)>,
}

impl ApiAuth {
    /// A checker for tags under `key` (`MasterKey::jobs_api_mac_key`).
    pub fn new(key: MacKey) -> Self {
        Self {
            key,
            seen: HashMap::new(),
        }
    }

    /// The key requests and answers are tagged under.
    pub fn key(&self) -> &MacKey {
        &self.key
    }

    /// The tag a client puts on a request.
    pub fn tag(
        key: &MacKey,
        method: &str,
        path: &str,
        issued_ms: u64,
        nonce: u64,
        body: &[u8],
    ) -> [u8; TAG_LEN] {
        key.tag(&request_content(method, path, issued_ms, nonce, body))
    }

    /// Accepts a request once: its tag verifies, it was issued within
    /// `MAX_CLOCK_SKEW_MS` of `now_ms`, and its nonce is new.
    pub fn check(&mut self, now_ms: u64, r: &ApiRequest<'_>) -> Result<(), JobError> {
        let (issued_ms, nonce, tag) = (r.issued_ms, r.nonce, r.tag);
        let mut datagram = request_content(r.method, r.path, issued_ms, nonce, r.body);
        datagram.extend_from_slice(tag);
        if tag.len() != TAG_LEN || !self.key.verifies(&datagram) {
            return Err(JobError::Unauthenticated(
                "bad tag (is the key the site's?)",
            ));
        }
        if now_ms.abs_diff(issued_ms) > MAX_CLOCK_SKEW_MS {
            return Err(JobError::Unauthenticated(
                "issued more than 60 s from the director's clock",
            ));
        }
        self.seen
            .retain(|_, (issued, _)| now_ms.abs_diff(*issued) <= MAX_CLOCK_SKEW_MS);
        if self.seen.contains_key(&nonce) {
            return Err(JobError::Unauthenticated("a replayed request"));
        }
        let subnet = crate::wire::subnet_of(r.source);
        let from_here = self.seen.values().filter(|(_, s)| *s == subnet).count();
        if self.seen.len() >= MAX_NONCES || from_here >= MAX_NONCES_PER_SOURCE {
            return Err(JobError::Unauthenticated(
                "too many requests in the last minute",
            ));
        }
        self.seen.insert(nonce, (issued_ms, subnet));
        Ok(())
    }
}

#[cfg(test)]
mod answer_tests {
    use super::*;

    #[test]
    fn an_answer_verifies_only_for_its_request_status_body_and_key() {
        let key = MacKey::from_bytes([3; 32]);
        let tag = response_tag(&key, 7, 200, b"{}");
        assert!(response_verifies(&key, 7, 200, b"{}", &tag));
        assert!(
            !response_verifies(&key, 8, 200, b"{}", &tag),
            "another request"
        );
        assert!(
            !response_verifies(&key, 7, 404, b"{}", &tag),
            "another status"
        );
        assert!(
            !response_verifies(&key, 7, 200, b"{ }", &tag),
            "another body"
        );
        assert!(!response_verifies(
            &MacKey::from_bytes([4; 32]),
            7,
            200,
            b"{}",
            &tag
        ));
        assert!(
            !response_verifies(&key, 7, 200, b"{}", &tag[..8]),
            "a short tag"
        );
        assert!(!response_verifies(&key, 7, 200, b"{}", &[]), "no tag");
    }
}
