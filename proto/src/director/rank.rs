//! Ranking the servers that carry a file (spec §9.3).

use crate::wire::{Direction, Heartbeat, MAX_DIRECTIONS, subnet_of};
use std::net::{IpAddr, SocketAddr};

/// What a server in the same /24 as the receiver is worth, in load fraction.
pub const SAME_SUBNET_BONUS: f64 = 0.25;
/// What the best throughput to the receiver's /24 is worth, in load fraction
/// (others get their share of it in proportion to theirs).
pub const THROUGHPUT_BONUS: f64 = 0.25;

/// A live server carrying the file asked for.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its session id.
    pub session_id: u32,
    /// Its unicast address.
    pub address: SocketAddr,
    /// The archive it carries under the name.
    pub archive_id: u64,
    /// Its last heartbeat.
    pub load: Heartbeat,
}

/// How loaded a server is, 0 idle to 1 full (or more): the largest of its
/// sending rate against its capacity, its unicast streams against its most, and
/// the share of one core its process uses.
pub fn load_fraction(h: &Heartbeat) -> f64 {
    let rate = (h.capacity_bps > 0).then(|| h.sending_bps as f64 / h.capacity_bps as f64);
    let streams = (h.unicast_max_clients > 0)
        .then(|| h.unicast_clients as f64 / h.unicast_max_clients as f64);
    let cpu = h.cpu_permille as f64 / 1000.0;
    rate.into_iter().chain(streams).fold(cpu, f64::max)
}

/// The goodput a server's receivers in `receiver`'s subnet (/24, /64) report, kbit/s (0: none).
pub(super) fn throughput_to(h: &Heartbeat, receiver: IpAddr) -> u32 {
    let subnet = subnet_of(receiver);
    (h.subnets.iter())
        .find(|s| s.subnet == subnet)
        .map_or(0, |s| s.goodput_kbps)
}

/// The servers to name to a receiver at `receiver`, best first, with the archive
/// each carries: the lowest score first, ties to the lower session id. The score
/// is the load fraction, less `SAME_SUBNET_BONUS` in the receiver's subnet (/24 or /64), less
/// `THROUGHPUT_BONUS` times its receivers' goodput in the receiver's subnet over the
/// best such goodput among the candidates (spec §9.3). Only servers carrying the
/// best one's archive are named: two versions of a name are never mixed.
pub fn rank(candidates: &[Candidate], receiver: IpAddr) -> Vec<(u64, Direction)> {
    let best = (candidates.iter())
        .map(|c| throughput_to(&c.load, receiver))
        .max()
        .unwrap_or(0);
    let score = |c: &Candidate| {
        let near = if subnet_of(c.address.ip()) == subnet_of(receiver) {
            SAME_SUBNET_BONUS
        } else {
            0.0
        };
        let history = match best {
            0 => 0.0,
            best => THROUGHPUT_BONUS * throughput_to(&c.load, receiver) as f64 / best as f64,
        };
        load_fraction(&c.load) - near - history
    };
    let mut ranked: Vec<(f64, &Candidate)> = candidates.iter().map(|c| (score(c), c)).collect();
    ranked.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(a.1.session_id.cmp(&b.1.session_id))
    });
    let Some(archive_id) = ranked.first().map(|(_, c)| c.archive_id) else {
        return Vec::new();
    };
    ranked
        .into_iter()
        .filter(|(_, c)| c.archive_id == archive_id)
        .take(MAX_DIRECTIONS)
        .map(|(_, c)| {
            let permille = (load_fraction(&c.load) * 1000.0)
                .round()
                .min(u16::MAX as f64);
            (
                archive_id,
                Direction {
                    server: c.address,
                    session_id: c.session_id,
                    load_permille: permille as u16,
                },
            )
        })
        .collect()
}
