//! Who may start streams and channels: a request must prove its source address.
//! Cookies are the one implementation today; tokens (access control) will be another.

use crate::cookie::CookieJar;
use crate::wire::COOKIE_LEN;
use std::net::SocketAddr;
use std::time::Instant;

/// Decides whether a request is admitted, and what a refused one gets back.
pub trait Admission {
    /// True when `proof` (the request's cookie field) admits a request from `from`.
    fn admits(&self, now: Instant, from: SocketAddr, proof: &[u8; COOKIE_LEN]) -> bool;

    /// What to send a request that was not admitted, so that it can prove itself
    /// next time: its proof field, for the COOKIE answer.
    fn challenge(&self, now: Instant, from: SocketAddr) -> [u8; COOKIE_LEN];
}

impl Admission for CookieJar {
    fn admits(&self, now: Instant, from: SocketAddr, proof: &[u8; COOKIE_LEN]) -> bool {
        self.check(now, from, proof)
    }

    fn challenge(&self, now: Instant, from: SocketAddr) -> [u8; COOKIE_LEN] {
        self.issue(now, from)
    }
}
