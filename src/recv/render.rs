//! The receiver's events as log lines, progress bars and `--json` events: the one
//! place that words them.

use super::{Local, RecvConfig};
use crate::events::{COUNTERS, Events};
use crate::units::{format_bytes, format_rate};
use loopcast_proto::MasterKey;
use loopcast_proto::client::{ClientError, ClientEvent, Fallback, Phase, Reception, Session};
use loopcast_proto::keys::hex;
use loopcast_proto::wire::RedirectReason;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;

/// Renders receiver events.
pub struct Render {
    events: Events,
    /// When the command started: times and rates count from it.
    started: Instant,
    /// Per file: counters at the last debug pulse (stored, NAKs sent, NAKs
    /// heard, repairs, parity taken, kernel drops).
    pulse: std::cell::RefCell<BTreeMap<String, [u64; 6]>>,
}

impl Render {
    /// A renderer printing `--json` events through `events`.
    pub fn new(events: Events) -> Self {
        Self {
            events,
            started: Instant::now(),
            pulse: Default::default(),
        }
    }

    /// The first line: what is awaited, where.
    pub fn waiting(&self, config: &RecvConfig) {
        let wanted = if config.names.is_empty() {
            "files".to_string()
        } else {
            config.names.join(", ")
        };
        let directors: Vec<String> = config.directors.iter().map(|d| d.to_string()).collect();
        match (config.server, config.unicast_only) {
            (Some(server), true) => log::info!("asking {server} for {wanted} by unicast"),
            _ if !directors.is_empty() => {
                log::info!("asking {} where {wanted} is carried", directors.join(", "))
            }
            _ => log::info!(
                "waiting for {wanted} on {} via {}",
                config.group,
                config.interface
            ),
        }
    }

    /// Logs `event` and prints it as JSON when asked.
    pub fn client_event(&self, session: &Session, local: Option<&Local>, event: &ClientEvent) {
        let reception = |id| session.reception(id).expect("events name live receptions");
        match *event {
            ClientEvent::Following {
                reception: id,
                switched,
                dropped,
            } => {
                let r = reception(id);
                let e = r.entry();
                if dropped > 0 {
                    log::warn!(
                        "{}: server {:08x} serves it as archive {:016x}, another packing or version than the one being received; dropping the {dropped} packets stored and starting over (a site should serve one archive of a file everywhere)",
                        e.name,
                        r.receiver().session_id(),
                        e.archive_id
                    );
                } else if switched {
                    log::info!(
                        "{}: following server {:08x} (archive {:016x}), keeping what is stored",
                        e.name,
                        r.receiver().session_id(),
                        e.archive_id
                    );
                }
                if switched {
                    self.events.emit(
                        "switched",
                        json!({"file": e.name, "archive": format!("{:016x}", e.archive_id),
                               "dropped_packets": dropped}),
                    );
                }
                self.events.emit(
                    "join",
                    json!({"file": e.name, "size": e.original_size,
                           "server": r.server().map(|s| s.to_string())}),
                );
                if !r.joined().is_empty() {
                    log::info!(
                        "{}: joining {} ({}{})",
                        e.name,
                        via(r),
                        format_bytes(e.original_size),
                        if e.idle() {
                            ", on demand: asking the server to start it"
                        } else {
                            ""
                        }
                    );
                }
            }
            ClientEvent::Resumed {
                reception: id,
                held,
                behind,
            } => {
                let r = reception(id);
                let total = r.receiver().received().len();
                log::info!(
                    "{}: resuming, {held} of {total} packets already stored{}",
                    r.entry().name,
                    if behind {
                        "; repairing what the loop passed meanwhile"
                    } else {
                        ""
                    }
                );
                if let Some(l) = local {
                    l.progress.set(held as u64);
                }
            }
            ClientEvent::ChannelChanged {
                reception: id,
                from,
                to,
            } => {
                let r = reception(id);
                let channels = &r.entry().channels;
                let down = from.is_some_and(|f| channels[f].rate_bps > channels[to].rate_bps);
                log::info!(
                    "{}: {} to {} ({})",
                    r.entry().name,
                    if down {
                        "sustained loss, stepping down"
                    } else {
                        "clean for a while, stepping up"
                    },
                    channels[to].group,
                    format_rate(channels[to].rate_bps as f64)
                );
                self.events.emit(
                    "channel_change",
                    json!({"file": r.entry().name,
                           "from_rate_bps": from.map(|f| channels[f].rate_bps),
                           "to_rate_bps": channels[to].rate_bps,
                           "channel": channels[to].group.to_string(),
                           "reason": if down { "loss" } else { "clean" }}),
                );
            }
            ClientEvent::Directed {
                ref name,
                ref servers,
            } => {
                let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
                log::info!("{}: the director names {}", name, list.join(", "));
                self.events
                    .emit("directed", json!({"file": name, "servers": list}));
            }
            ClientEvent::Redirected {
                ref name,
                reason,
                to,
            } => {
                let why = match reason {
                    RedirectReason::ServerDown => "its server is down",
                    RedirectReason::Overloaded => "its server is overloaded",
                    RedirectReason::Throughput => "another server serves this subnet better",
                };
                let to = to.map_or("-".to_string(), |t| t.to_string());
                log::info!("{name}: the director moves it to {to}: {why}");
                self.events.emit(
                    "redirected",
                    json!({"file": name, "to": to, "reason": reason.name()}),
                );
            }
            ClientEvent::ServerLost {
                ref name,
                server,
                next,
            } => {
                match next {
                    Some(next) => log::warn!("{}: {server} went silent; asking {next}", name),
                    None => {
                        log::warn!("{}: {server} went silent; asking the directors again", name)
                    }
                }
                self.events.emit(
                    "server_lost",
                    json!({"file": name, "server": server.to_string(),
                           "next": next.map(|n| n.to_string())}),
                );
            }
            ClientEvent::FellBack {
                reception: id,
                server,
                why,
            } => {
                let r = reception(id);
                let why = match why {
                    Fallback::SyncTimeout(t) => {
                        format!("no data for {:.1} s on multicast", t.as_secs_f64())
                    }
                    Fallback::NoMulticast => "no multicast heard".to_string(),
                };
                log::info!(
                    "{}: {why}; asking {server} for a unicast stream",
                    r.entry().name
                );
                self.events.emit(
                    "fallback",
                    json!({"file": r.entry().name, "server": server.to_string(), "reason": why}),
                );
            }
            ClientEvent::AllHeld { reception: id } => {
                let r = reception(id);
                log::debug!(
                    target: COUNTERS,
                    "{}: all held: packets={} after_s={:.2} loops={:.2}",
                    r.entry().name,
                    r.receiver().received().len(),
                    self.started.elapsed().as_secs_f64(),
                    r.receiver().loops_waited()
                );
                if let Some(l) = local {
                    l.progress.set(r.receiver().received().count() as u64);
                }
            }
            ClientEvent::TableDamaged { reception: id } => log::warn!(
                "{}: frame table failed its digest; receiving it again",
                reception(id).entry().name
            ),
            ClientEvent::FrameDamaged {
                reception: id,
                frame,
                packets,
            } => log::warn!(
                "{}: frame {frame} is damaged; {packets} packets to receive again",
                reception(id).entry().name
            ),
            ClientEvent::Delivered { reception: id } => self.delivered(reception(id), local),
            ClientEvent::EntryRefused {
                session,
                ref name,
                why,
            } => {
                log::warn!("server {session:08x} offers a file named {name:?} ({why}); skipping it")
            }
            ClientEvent::Failed(_) => {}
        }
    }

    fn delivered(&self, r: &Reception, local: Option<&Local>) {
        let secs = self.started.elapsed().as_secs_f64();
        let s = r.receiver().stats();
        let size = r.entry().original_size;
        let path = local
            .and_then(|l| l.delivered.as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // Bytes that came in this run: a resumed file had some already.
        let total = r.receiver().received().len().max(1) as f64;
        let this_run = size as f64 * (1.0 - r.resumed() as f64 / total);
        let resumed = match r.resumed() {
            0 => String::new(),
            n => format!(
                ", {:.0}% of it from an earlier run",
                100.0 * n as f64 / total
            ),
        };
        let kept = local.and_then(|l| l.kept.as_ref());
        let kept_note = kept.map_or(String::new(), |k| {
            format!(" (archive kept: {})", k.display())
        });
        log::info!(
            "{}: done, {} in {secs:.1} s ({}{resumed}) over {} -> {path}{kept_note}",
            r.entry().name,
            format_bytes(size),
            format_rate(this_run * 8.0 / secs.max(1e-9)),
            via(r),
        );
        // The counters, as key=value for scripts and tests (RUST_LOG=loopcast::counters=debug).
        log::debug!(
            target: COUNTERS,
            "{}: counters: stored={} resumed={} duplicates={} passed_away={} before_manifest={} \
             other_session={} other_archive={} forged={} bad_manifest={} malformed={} debug_dropped={} kernel_drops={} \
             let_go={} repairs={} parity={} parity_unused={} rebuilt={} rebuilt_by_copies={} wrong_shards={} \
             naks_sent={} naks_heard={} naks_suppressed={} reported_lost={} stale_status={} \
             out_of_pace={} via={}",
            r.entry().name,
            s.stored,
            r.resumed(),
            s.duplicates,
            r.receiver().passed_away(),
            s.before_manifest,
            s.foreign_session,
            s.other_archive,
            s.unauthenticated,
            s.bad_manifest,
            s.malformed + s.not_ours,
            local.map_or(0, |l| l.debug_dropped),
            r.kernel_drops(),
            local.map_or(0, |l| l.let_go),
            s.repairs,
            s.parity,
            s.parity_unused,
            s.rebuilt,
            local.map_or(0, |l| l.rebuilds_by_copies),
            local.map_or(0, |l| l.wrong_shards),
            s.naks_sent,
            s.naks_heard,
            s.naks_suppressed,
            s.reported_lost,
            s.stale_status,
            s.out_of_pace,
            via(r).replace(' ', "_"),
        );
        if let Some(l) = local {
            l.progress.set(r.receiver().received().count() as u64);
            l.progress.finish(format!("{} done", r.entry().name));
        }
        self.events.emit(
            "done",
            json!({"file": r.entry().name, "path": path, "seconds": secs,
                   "bytes": size, "via": via(r), "stored": s.stored, "resumed": r.resumed(),
                   "duplicates": s.duplicates, "repairs": s.repairs,
                   "rebuilt": s.rebuilt, "parity": s.parity, "naks_sent": s.naks_sent,
                   "naks_suppressed": s.naks_suppressed, "unauthenticated": s.unauthenticated,
                   "kernel_drops": r.kernel_drops(),
                   "let_go": local.map_or(0, |l| l.let_go),
                   "blake3": r.receiver().manifest().map(|m| loopcast_proto::keys::hex(&m.content_digest)),
                   "passed_away": r.receiver().passed_away(),
                   "archive": kept.map(|k| k.display().to_string())}),
        );
    }

    /// At debug level, once a second per file being received: what came and
    /// what was asked in the last second.
    fn debug_pulse(&self, r: &Reception) {
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        let s = r.receiver().stats();
        let now = [
            s.stored,
            s.naks_sent,
            s.naks_heard,
            s.repairs,
            s.parity,
            r.kernel_drops() as u64,
        ];
        let mut pulse = self.pulse.borrow_mut();
        let before = pulse
            .insert(r.entry().name.clone(), now)
            .unwrap_or_default();
        let d = |i: usize| now[i].saturating_sub(before[i]);
        log::debug!(
            "{}: +{} packets/s ({} of {}), {} NAKs sent, {} heard, {} repairs, {} parity, {} kernel drops, over {}",
            r.entry().name,
            d(0),
            r.receiver().received().count(),
            r.receiver().received().len(),
            d(1),
            d(2),
            d(3),
            d(4),
            d(5),
            via(r)
        );
    }

    /// A progress event per file being received, and a log line if `log_too`.
    pub fn progress(&self, session: &Session, log_too: bool) {
        for r in session
            .receptions()
            .iter()
            .filter(|r| r.phase() == Phase::Receiving)
        {
            self.debug_pulse(r);
            let held = r.receiver().received().count();
            let name = &r.entry().name;
            match r.receiver().manifest() {
                Some(m) => {
                    self.events.emit(
                        "progress",
                        json!({"file": name, "held": held, "packets": m.packet_count(),
                               "via": via(r)}),
                    );
                    if log_too {
                        log::info!(
                            "{name}: {:.1}% ({held} of {} packets) over {}",
                            100.0 * held as f64 / m.packet_count().max(1) as f64,
                            m.packet_count(),
                            via(r)
                        );
                    }
                }
                None if log_too => log::info!("{name}: waiting for its manifest on {}", via(r)),
                None => {}
            }
        }
    }

    /// The last line of a successful run of several files (one file's done
    /// line says it all), and the session's counters.
    pub fn finished(&self, session: &Session) {
        log::debug!(
            target: COUNTERS,
            "session counters: listings_unverified={} entries_refused={}",
            session.unauthenticated(),
            session.refused_entries()
        );
        let done: Vec<&Reception> = (session.receptions().iter())
            .filter(|r| r.phase() == Phase::Done)
            .collect();
        if done.len() > 1 {
            let bytes: u64 = done.iter().map(|r| r.entry().original_size).sum();
            log::info!(
                "all {} files received: {} in {:.1} s",
                done.len(),
                format_bytes(bytes),
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// The `--json` events.
    pub(super) fn events(&self) -> &Events {
        &self.events
    }

    /// An error that ends the run, as a JSON event (the log line is main's).
    pub fn error(&self, e: &crate::error::Error) {
        self.events.emit("error", json!({"error": e.to_string()}));
    }
}

/// The channels or stream a reception takes its packets from.
pub(super) fn via(r: &Reception) -> String {
    if let Some(server) = r.stream_server() {
        return format!("unicast from {server}");
    }
    r.joined()
        .iter()
        .map(|&j| {
            let c = &r.entry().channels[j];
            format!("{} ({})", c.group, format_rate(c.rate_bps as f64))
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// The one-line reason of an error that ends the session.
pub fn failure(e: &ClientError, key: &MasterKey) -> String {
    match e {
        ClientError::WrongKey { name, theirs } => format!(
            "wrong key: {name} was sealed with a key of fingerprint {}, ours is {}",
            hex(theirs),
            hex(&key.fingerprint())
        ),
        ClientError::NameMismatch {
            announced,
            manifest,
        } => {
            format!("server announced {announced:?} but its manifest names {manifest:?}; refusing")
        }
        ClientError::Inconsistent { name } => format!(
            "{name}: every frame verified but the file does not match its manifest digest; the server's archive is inconsistent"
        ),
        ClientError::NotCarried { name } => {
            format!("{name}: the director says no live server carries it")
        }
    }
}
