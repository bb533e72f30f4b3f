//! Senders whose datagrams do not verify under the site's keys: told to the
//! operator by address, at most once per `TELL_EVERY` each, with what they
//! claim to be (a node name, a key fingerprint) since the claim is all there is
//! to go on. The table is bounded: past `MAX_STRANGERS` addresses, the ones
//! told longest ago make room, and the rest are only counted.

use crate::keys::FINGERPRINT_LEN;
use crate::wire::{self, Packet};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often one address's unverified datagrams are told.
pub const TELL_EVERY: Duration = Duration::from_secs(10);
/// Most addresses remembered.
pub const MAX_STRANGERS: usize = 256;
// (Entries are per address and packet type: at most `MAX_STRANGERS` of them.)

/// What an unverified datagram claims, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stranger {
    /// Where it came from.
    pub from: SocketAddr,
    /// Its packet type (HEARTBEAT, REGISTER, ANNOUNCE, LOOKUP).
    pub packet: &'static str,
    /// The node name a REGISTER claims.
    pub node: Option<String>,
    /// The key fingerprint an ANNOUNCE claims.
    pub key_fingerprint: Option<[u8; FINGERPRINT_LEN]>,
    /// Unverified datagrams from this address since it was last told.
    pub count: u64,
}

/// The table of addresses told lately.
#[derive(Default)]
pub(super) struct Strangers {
    /// Per address and packet type: when last told, and datagrams since.
    seen: HashMap<(SocketAddr, &'static str), (Instant, u64)>,
}

impl Strangers {
    /// Notes an unverified `packet` from `from`; returns it to tell, if due.
    pub(super) fn note(
        &mut self,
        now: Instant,
        from: SocketAddr,
        packet: &Packet<'_>,
    ) -> Option<Stranger> {
        let key = (from, packet_name(packet));
        if let Some((told, count)) = self.seen.get_mut(&key) {
            *count += 1;
            if now < *told + TELL_EVERY {
                return None;
            }
            let count = std::mem::take(count);
            *told = now;
            return Some(describe(from, packet, count));
        }
        if self.seen.len() >= MAX_STRANGERS {
            self.seen.retain(|_, (told, _)| now < *told + TELL_EVERY);
            if self.seen.len() >= MAX_STRANGERS {
                return None;
            }
        }
        self.seen.insert(key, (now, 0));
        Some(describe(from, packet, 1))
    }
}

fn packet_name(packet: &Packet<'_>) -> &'static str {
    match packet {
        Packet::Heartbeat(_) => "HEARTBEAT",
        Packet::Register(_) => "REGISTER",
        Packet::Announce(_) => "ANNOUNCE",
        Packet::Lookup(_) => "LOOKUP",
        _ => "datagram",
    }
}

fn describe(from: SocketAddr, packet: &Packet<'_>, count: u64) -> Stranger {
    let (node, key_fingerprint) = match packet {
        Packet::Register(r) if wire::valid_node_name(&r.node) => (Some(r.node.clone()), None),
        Packet::Announce(a) => (None, Some(a.key_fingerprint)),
        _ => (None, None),
    };
    Stranger {
        from,
        packet: packet_name(packet),
        node,
        key_fingerprint,
        count: count.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_told_once_per_ten_seconds_and_the_table_stays_bounded() {
        let now = Instant::now();
        let mut strangers = Strangers::default();
        let lookup = Packet::Lookup(wire::Lookup {
            archive_id: 0,
            receiver_id: 1,
            nonce: 2,
            name: "x".into(),
        });
        let a: SocketAddr = "10.0.0.1:9".parse().unwrap();
        assert!(strangers.note(now, a, &lookup).is_some());
        for _ in 0..100 {
            assert!(strangers.note(now + TELL_EVERY / 2, a, &lookup).is_none());
        }
        let told = strangers.note(now + TELL_EVERY, a, &lookup).unwrap();
        assert_eq!((told.packet, told.count), ("LOOKUP", 101));
        for i in 0..10 * MAX_STRANGERS as u16 {
            let from = SocketAddr::new([10, 1, (i >> 8) as u8, i as u8].into(), 9);
            strangers.note(now, from, &lookup);
        }
        assert!(strangers.seen.len() <= MAX_STRANGERS);
    }
}
