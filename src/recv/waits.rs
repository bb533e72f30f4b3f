//! What a receiver waits for, in words: every `WAITING_INTERVAL` without a
//! packet, in the time-out and interruption messages, and in `--json`.

use super::RecvConfig;
use super::render::{Render, via};
use loopcast_proto::MasterKey;
use loopcast_proto::client::{Phase, Session, Waiting};
use loopcast_proto::keys::hex;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;

/// Packets held over every reception: what "progress" means for the waiting report.
pub fn packets_held(session: &Session) -> u64 {
    (session.receptions().iter())
        .map(|r| r.receiver().received().count() as u64)
        .sum()
}

/// Where the receiver listens: the group and the interface, or `--server`.
fn listening(config: &RecvConfig) -> String {
    match (config.server, config.unicast_only) {
        (Some(server), true) => format!("from {server} by unicast"),
        (Some(server), false) => format!(
            "on {} via {}, and from {server}",
            config.group, config.interface
        ),
        (None, _) => format!("on {} via {}", config.group, config.interface),
    }
}

/// One reason a file is not arriving, in words with its likely cause.
fn reason(why: &Waiting, config: &RecvConfig, key: &MasterKey) -> (Option<String>, String) {
    let ours = || hex(&key.fingerprint());
    match why {
        Waiting::NoServer {
            foreign: Some(theirs),
        } => (
            None,
            format!(
                "no server with our key heard {}; servers there use another key (fingerprint {}, ours {}): give the site's key with -k",
                listening(config),
                hex(theirs),
                ours()
            ),
        ),
        Waiting::NoServer { foreign: None } => (
            None,
            format!(
                "no server heard {}: is one running on this group, and does multicast reach this interface? (`loopcast ls` lists what is heard)",
                listening(config)
            ),
        ),
        Waiting::NotOnAir { name, on_air } => (
            Some(name.clone()),
            format!(
                "not on air {}; on air: {}",
                listening(config),
                on_air.join(", ")
            ),
        ),
        Waiting::NoDirector { name, directors } => {
            let list: Vec<String> = directors.iter().map(|d| d.to_string()).collect();
            (
                Some(name.clone()),
                format!(
                    "no answer from the director(s) at {}: is a director running there (UDP port, 7790 by default), and does it have this site's key (ours: {})?",
                    list.join(", "),
                    ours()
                ),
            )
        }
        Waiting::ServerSilent { name, server } => (
            Some(name.clone()),
            format!("the director named server {server}, which has not answered yet"),
        ),
        Waiting::NoData { name } => (
            Some(name.clone()),
            format!(
                "no packet yet {}; a firewall, or multicast not reaching this host? (after --sync-timeout a server given with --server streams by unicast)",
                listening(config)
            ),
        ),
    }
}

/// A warning per reason the receiver still waits, `elapsed` after its start.
pub fn still_waiting_lines(
    why: &[Waiting],
    config: &RecvConfig,
    elapsed: std::time::Duration,
) -> Vec<String> {
    why.iter()
        .map(|w| match reason(w, config, &config.key) {
            (Some(name), text) => format!("after {} s, {name}: {text}", elapsed.as_secs()),
            (None, text) => format!("after {} s, {text}", elapsed.as_secs()),
        })
        .collect()
}

impl Render {
    /// Says what the receiver still waits for (every `WAITING_INTERVAL` without a packet).
    pub fn still_waiting(
        &self,
        why: &[Waiting],
        config: &RecvConfig,
        elapsed: std::time::Duration,
    ) {
        for line in still_waiting_lines(why, config, elapsed) {
            log::warn!("still waiting {line}");
        }
        self.events().emit(
            "waiting",
            json!({"seconds": elapsed.as_secs(),
                   "reasons": still_waiting_lines(why, config, elapsed)}),
        );
    }
}

/// The message of a receiver stopped by a signal: what it holds, and whether a
/// second run resumes anything.
pub fn interrupted(session: &Session, config: &RecvConfig) -> String {
    if packets_held(session) == 0 {
        return format!(
            "interrupted before anything was stored: {}",
            missing(session, config)
        );
    }
    format!(
        "interrupted; what arrived is kept, run the same command to resume: {}",
        missing(session, config)
    )
}

/// What is still missing, per file, for time-out and interruption messages.
pub fn missing(session: &Session, config: &RecvConfig) -> String {
    let mut parts: BTreeMap<String, String> = BTreeMap::new();
    for r in session.receptions() {
        let status = match (r.phase(), r.receiver().manifest()) {
            (Phase::Done, _) => continue,
            (Phase::Skipped, _) => "no room for it".to_string(),
            (Phase::Verifying, _) => "verifying".to_string(),
            (_, Some(m)) => format!(
                "{} of {} packets",
                r.receiver().received().count(),
                m.packet_count()
            ),
            (_, None) => format!("nothing heard on {}", via(r)),
        };
        parts.insert(r.entry().name.clone(), status);
    }
    let mut general = Vec::new();
    for why in session.waiting(Instant::now()) {
        match reason(&why, config, &config.key) {
            (Some(name), text) => {
                parts.entry(name).or_insert(text);
            }
            (None, text) => general.push(text),
        }
    }
    for name in &config.names {
        parts
            .entry(name.clone())
            .or_insert_with(|| "not on air".to_string());
    }
    let mut lines: Vec<String> = parts
        .into_iter()
        .map(|(n, s)| format!("{n}: {s}"))
        .collect();
    if lines.is_empty() || config.names.is_empty() {
        lines.extend(general);
    }
    lines.join("; ")
}
