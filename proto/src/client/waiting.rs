//! What a receiver waits for, in words a driver can tell its operator: no
//! server heard, a file not on air (and what is), a director not answering, a
//! server named but silent, a channel joined but quiet. It reads the session's
//! state and changes nothing.

use super::{Phase, Session};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

/// One reason a wanted file is not arriving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// No listing verified with our key was heard, on the directory group or
    /// from `--server`. `foreign`: listings under another key were heard (the
    /// fingerprint their key claims).
    NoServer {
        /// Fingerprint of another key whose listings were heard.
        foreign: Option<[u8; crate::keys::FINGERPRINT_LEN]>,
    },
    /// Servers were heard, and none lists `name`; `on_air` is what they list.
    NotOnAir {
        /// The file wanted.
        name: String,
        /// The names the servers heard list (at most 8).
        on_air: Vec<String>,
    },
    /// The directors were asked where `name` is carried and none answered yet.
    NoDirector {
        /// The file wanted.
        name: String,
        /// The directors asked.
        directors: Vec<SocketAddr>,
    },
    /// The director named `server` for `name`, and it has not listed it yet.
    ServerSilent {
        /// The file wanted.
        name: String,
        /// The server asked.
        server: SocketAddr,
    },
    /// `name` is followed but no packet of it came yet.
    NoData {
        /// The file followed.
        name: String,
    },
}

/// Most names a `NotOnAir` lists.
const MAX_ON_AIR_SHOWN: usize = 8;

impl Session {
    /// Why the wanted files are not all arriving, at `now`; empty when every
    /// one is being received, verified or delivered.
    pub fn waiting(&self, now: Instant) -> Vec<Waiting> {
        let mut why = Vec::new();
        let followed = |name: &str| self.receptions.iter().any(|r| r.entry.name == name);
        if self.directed.active() {
            for name in self.config.names.iter().filter(|n| !followed(n)) {
                match self.directed.asking(name) {
                    Some(server) => why.push(Waiting::ServerSilent {
                        name: name.clone(),
                        server,
                    }),
                    None if !self.directed.answered(name) => why.push(Waiting::NoDirector {
                        name: name.clone(),
                        directors: self.directed.directors().to_vec(),
                    }),
                    None => {}
                }
            }
        } else if self.listings.values().all(|l| l.names.is_empty()) {
            let foreign = self.foreign_listing.as_ref().map(|(_, _, theirs)| *theirs);
            why.push(Waiting::NoServer { foreign });
        } else {
            let on_air: BTreeSet<&String> = self
                .listings
                .values()
                .flat_map(|l| l.names.iter())
                .collect();
            for name in self.config.names.iter().filter(|n| !followed(n)) {
                why.push(Waiting::NotOnAir {
                    name: name.clone(),
                    on_air: on_air
                        .iter()
                        .take(MAX_ON_AIR_SHOWN)
                        .map(|n| n.to_string())
                        .collect(),
                });
            }
        }
        for r in &self.receptions {
            if r.phase == Phase::Receiving
                && r.fsm.received().count() == 0
                && r.fsm
                    .last_heard()
                    .is_none_or(|at| at + super::SESSION_SILENCE < now)
            {
                why.push(Waiting::NoData {
                    name: r.entry.name.clone(),
                });
            }
        }
        why
    }
}
