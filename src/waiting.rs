//! Telling the operator, every `REPEAT` or so, what a command is waiting on:
//! here, directors that do not answer heartbeats or REGISTERs (an agent's and a
//! server's), and when they answer again.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often a wait is told again.
pub const REPEAT: Duration = Duration::from_secs(10);

/// Says which directors are silent, at most every `REPEAT`, and which answer again.
pub struct SilentDirectors {
    /// What sends to them ("heartbeats", "REGISTERs"), for the message.
    what: &'static str,
    /// This site's key fingerprint, hex.
    fingerprint: String,
    started: Instant,
    next_look: Instant,
    told: BTreeSet<SocketAddr>,
}

impl SilentDirectors {
    /// A reporter for `what` sent from `started`, under the key of `fingerprint`.
    pub fn new(what: &'static str, fingerprint: String, started: Instant) -> Self {
        Self {
            what,
            fingerprint,
            started,
            next_look: started + REPEAT,
            told: BTreeSet::new(),
        }
    }

    /// Looks at `silent` (director, last heard) when due, and warns of each.
    /// Directors told before and no longer silent are said to answer again.
    pub fn look(&mut self, now: Instant, silent: &[(SocketAddr, Option<Instant>)]) {
        for back in (self.told.iter().copied())
            .filter(|d| silent.iter().all(|(s, _)| s != d))
            .collect::<Vec<_>>()
        {
            log::info!("director {back} answers again");
            self.told.remove(&back);
        }
        if now < self.next_look {
            return;
        }
        self.next_look = now + REPEAT;
        for &(director, last) in silent {
            let since = last.unwrap_or(self.started);
            let secs = now.saturating_duration_since(since).as_secs();
            let when = match last {
                Some(_) => format!("has not answered {} for {secs} s", self.what),
                None => format!("has not answered {} in {secs} s since start", self.what),
            };
            log::warn!(
                "director {director} {when}: is it running and listening on that UDP port ({} by default), with this site's key (ours: {})?",
                crate::units::DEFAULT_DIRECTOR_PORT,
                self.fingerprint
            );
            self.told.insert(director);
        }
    }
}
