//! `loopcast ls`: what is on air, from the directory group's ANNOUNCE packets.

use crate::error::{Context, Error, Result};
use crate::net;
use crate::signals::StopSignals;
use loopcast_proto::wire::{self, AnnounceEntry, Packet};
use mio::{Interest, Token};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

const DIRECTORY: Token = Token(0);

/// Listens on the directory group for up to `timeout` and returns what is on air,
/// as (session id, entry), stopping early once a whole listing was heard.
pub fn list_on_air(
    interface: Ipv4Addr,
    group: SocketAddrV4,
    timeout: Duration,
) -> Result<Vec<(u32, AnnounceEntry)>> {
    let socket = net::multicast_receiver(group, interface, 1 << 20)?;
    let mut socket = mio::net::UdpSocket::from_std(socket);
    let mut signals = StopSignals::new()?;
    signals
        .poll
        .registry()
        .register(&mut socket, DIRECTORY, Interest::READABLE)
        .context(|| "cannot register socket".into())?;
    let deadline = Instant::now() + timeout;
    let mut parts: HashMap<u32, (u8, HashSet<u8>)> = HashMap::new();
    let mut found: BTreeMap<(u32, String), AnnounceEntry> = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        if signals.wait(Some(deadline.saturating_duration_since(Instant::now())))? {
            return Err(Error::new("interrupted"));
        }
        while let Some(n) = net::recv_nonblocking(&socket, &mut buf)
            .context(|| format!("cannot receive on {group}"))?
        {
            let Ok(d) = wire::decode(&buf[..n]) else {
                continue;
            };
            if let Packet::Announce(a) = d.packet {
                parts
                    .entry(d.session_id)
                    .or_insert_with(|| (a.parts, HashSet::new()))
                    .1
                    .insert(a.part);
                for e in a.entries {
                    found.insert((d.session_id, e.name.clone()), e);
                }
            }
        }
        if !parts.is_empty() && parts.values().all(|(n, heard)| heard.len() == *n as usize) {
            break;
        }
    }
    Ok(found
        .into_iter()
        .map(|((session, _), e)| (session, e))
        .collect())
}
