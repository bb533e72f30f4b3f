//! Address validation for unicast requests: a stateless, keyed, expiring cookie.
//! The server keeps no state per request; a cookie proves that whoever sends it
//! received the server's answer at that address within the cookie's lifetime.

use crate::wire::COOKIE_LEN;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a cookie stays valid after it was issued.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(30);
/// Bytes of the cookie's MAC (the rest is its expiry).
const MAC_LEN: usize = COOKIE_LEN - 8;

/// Issues and checks cookies with a key drawn at server start.
pub struct CookieJar {
    key: [u8; 32],
    epoch: Instant,
}

impl CookieJar {
    /// A jar with secret `key` (random per server instance); `epoch` starts its clock.
    pub fn new(key: [u8; 32], epoch: Instant) -> Self {
        Self { key, epoch }
    }

    fn mac(&self, addr: SocketAddr, expiry_ms: u64) -> [u8; MAC_LEN] {
        let mut input = Vec::with_capacity(27);
        crate::codec::put_socket_addr(&mut input, addr);
        input.extend_from_slice(&expiry_ms.to_be_bytes());
        let hash = blake3::keyed_hash(&self.key, &input);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&hash.as_bytes()[..MAC_LEN]);
        mac
    }

    /// A cookie for requests from `addr`, valid for `COOKIE_LIFETIME` from `now`.
    pub fn issue(&self, now: Instant, addr: SocketAddr) -> [u8; COOKIE_LEN] {
        let expiry_ms =
            (now.saturating_duration_since(self.epoch) + COOKIE_LIFETIME).as_millis() as u64;
        let mut cookie = [0u8; COOKIE_LEN];
        cookie[..8].copy_from_slice(&expiry_ms.to_be_bytes());
        cookie[8..].copy_from_slice(&self.mac(addr, expiry_ms));
        cookie
    }

    /// True when `cookie` was issued by this jar for `addr` and has not expired.
    pub fn check(&self, now: Instant, addr: SocketAddr, cookie: &[u8; COOKIE_LEN]) -> bool {
        let expiry_ms = u64::from_be_bytes(cookie[..8].try_into().expect("8 bytes"));
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        if now_ms > expiry_ms {
            return false;
        }
        // Compare without an early exit, so timing tells nothing about the MAC.
        let expected = self.mac(addr, expiry_ms);
        expected
            .iter()
            .zip(&cookie[8..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_valid_for_its_address_until_it_expires() {
        let start = Instant::now();
        let jar = CookieJar::new([3; 32], start);
        let addr: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let cookie = jar.issue(start, addr);
        assert!(jar.check(start + Duration::from_secs(29), addr, &cookie));
        assert!(!jar.check(start + Duration::from_secs(31), addr, &cookie));
        assert!(!jar.check(start, "10.0.0.5:4001".parse().unwrap(), &cookie));
        assert!(!jar.check(start, "10.0.0.6:4000".parse().unwrap(), &cookie));
        assert!(!CookieJar::new([4; 32], start).check(start, addr, &cookie));
        let mut forged = cookie;
        forged[..8].copy_from_slice(&u64::MAX.to_be_bytes()); // a later expiry breaks the MAC
        assert!(!jar.check(start, addr, &forged));
        assert!(!jar.check(start, addr, &[0; COOKIE_LEN]));
    }

    #[test]
    fn an_ipv6_cookie_is_bound_to_its_whole_address_and_port() {
        let start = Instant::now();
        let jar = CookieJar::new([3; 32], start);
        let addr: SocketAddr = "[fd77::14]:4000".parse().unwrap();
        let cookie = jar.issue(start, addr);
        assert!(jar.check(start, addr, &cookie));
        for other in ["[fd77::14]:4001", "[fd77::15]:4000", "[fd78::14]:4000"] {
            assert!(
                !jar.check(start, other.parse().unwrap(), &cookie),
                "{other}"
            );
        }
        // The IPv4 address written in the same last bytes is another address.
        let v4 = jar.issue(start, "0.0.0.20:4000".parse().unwrap());
        assert!(!jar.check(start, "[::14]:4000".parse().unwrap(), &v4));
    }
}
