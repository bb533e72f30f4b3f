//! `loopcast ls`: what is on air, from the directory group's ANNOUNCE packets.

use crate::error::{Context, Result};
use crate::net;
use crate::signals::StopSignals;
use loopcast_proto::keys::FINGERPRINT_LEN;
use loopcast_proto::sender::HEAR_EVERY_SERVER;
use loopcast_proto::wire::{self, AnnounceEntry, MacKey, Packet};
use mio::{Interest, Token};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const DIRECTORY: Token = Token(0);

/// What `list_on_air` heard.
pub struct Listing {
    /// (session id, the server's key fingerprint, entry), by session and name.
    pub entries: Vec<(u32, [u8; FINGERPRINT_LEN], AnnounceEntry)>,
    /// Listings left out because they did not verify with the key given.
    pub unverified: u64,
}

/// Listens on the directory group for up to `timeout` and returns what is on air,
/// stopping early once every server heard has been heard whole, and not before
/// every server on the group has announced once (`HEAR_EVERY_SERVER`). With `key`, listings whose tag
/// does not verify with it are left out (and counted).
pub fn list_on_air(
    interface: net::Interface,
    group: SocketAddr,
    timeout: Duration,
    key: Option<&MacKey>,
) -> Result<Listing> {
    let socket = net::multicast_receiver(group, interface, 1 << 20)?;
    let mut socket = mio::net::UdpSocket::from_std(socket);
    let mut signals = StopSignals::new()?;
    signals
        .poll
        .registry()
        .register(&mut socket, DIRECTORY, Interest::READABLE)
        .context(|| "cannot register socket".into())?;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut parts: HashMap<u32, (u8, HashSet<u8>)> = HashMap::new();
    let mut found: BTreeMap<(u32, String), ([u8; FINGERPRINT_LEN], AnnounceEntry)> =
        BTreeMap::new();
    let mut unverified = 0;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        if signals.wait(Some(deadline.saturating_duration_since(Instant::now())))? {
            return Err(signals.interrupted("interrupted"));
        }
        while let Some(n) = net::recv_nonblocking(&socket, &mut buf)
            .context(|| format!("cannot receive on {group}"))?
        {
            let Ok(d) = wire::decode(&buf[..n]) else {
                continue;
            };
            if let Packet::Announce(a) = d.packet {
                if key.is_some_and(|k| !k.verifies(&buf[..n])) {
                    unverified += 1;
                    continue;
                }
                parts
                    .entry(d.session_id)
                    .or_insert_with(|| (a.parts, HashSet::new()))
                    .1
                    .insert(a.part);
                for e in a.entries {
                    found.insert((d.session_id, e.name.clone()), (a.key_fingerprint, e));
                }
            }
        }
        let all_whole = parts.values().all(|(n, heard)| heard.len() == *n as usize);
        if !parts.is_empty() && all_whole && started.elapsed() >= HEAR_EVERY_SERVER {
            break;
        }
    }
    Ok(Listing {
        entries: found
            .into_iter()
            .map(|((session, _), (fingerprint, e))| (session, fingerprint, e))
            .collect(),
        unverified,
    })
}
