//! The server's events as log lines and `--json` events: the one place that words them.

use crate::events::{COUNTERS, Events};
use crate::units::{format_bytes, format_rate};
use loopcast_proto::server::{Endpoint, ServerEvent, StreamEnd};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most log lines about single receivers (joined, moved, completed) per second; the
/// rest are counted and told in one line, so thousands of receivers (or a key
/// holder inventing them) cannot flood the log. `--json` still has every event.
const RECEIVER_LINES_PER_SECOND: u32 = 20;

/// Tells how many lines about single receivers were held back, if any.
fn tell_held(held: u64) {
    if held > 0 {
        log::info!("{held} more receiver events in the last second (--json has them all)");
    }
}

/// Renders server events.
pub struct Render {
    events: Events,
    idle: Duration,
    /// The second being counted, lines logged in it, lines held back.
    receiver_lines: (Instant, u32, u64),
    /// The live status line (on a terminal).
    status: crate::progress::StatusLine,
    /// Bytes sent and the time since start at the last pulse.
    last_pulse: (u64, Duration),
    /// Per channel: NAKs, repairs and parity at the last pulse.
    channel_pulse: HashMap<(usize, usize), [u64; 3]>,
}

impl Render {
    /// A renderer printing `--json` events through `events`; `idle` is `--idle`.
    pub fn new(events: Events, idle: Duration) -> Self {
        Self {
            status: crate::progress::StatusLine::new(events.enabled()),
            events,
            idle,
            receiver_lines: (Instant::now(), 0, 0),
            last_pulse: (0, Duration::ZERO),
            channel_pulse: HashMap::new(),
        }
    }

    /// True when one more line about a single receiver may be logged now.
    fn receiver_line(&mut self) -> bool {
        let now = Instant::now();
        let (since, logged, held) = &mut self.receiver_lines;
        if now.duration_since(*since) >= Duration::from_secs(1) {
            tell_held(*held);
            (*since, *logged, *held) = (now, 0, 0);
        }
        if *logged < RECEIVER_LINES_PER_SECOND {
            *logged += 1;
            true
        } else {
            *held += 1;
            false
        }
    }

    /// Logs `event` and prints it as JSON when asked.
    pub fn server_event(&mut self, endpoint: &Endpoint, event: &ServerEvent) {
        let name = |file: usize| endpoint.manifest(file).name.as_str();
        let receiver = |id: u32| format!("{id:08x}");
        match *event {
            ServerEvent::ReceiverJoined {
                file,
                receiver: id,
                addr,
                channel,
            } => {
                let channel = describe_channel(endpoint, file, channel);
                if self.receiver_line() {
                    log::info!(
                        "{}: receiver {} at {addr} joined ({channel})",
                        name(file),
                        receiver(id)
                    );
                }
                self.events.emit(
                    "join",
                    json!({"file": name(file), "receiver": receiver(id),
                           "addr": addr.to_string(), "channel": channel}),
                );
            }
            ServerEvent::ReceiverMoved {
                file,
                receiver: id,
                channel,
            } => {
                let channel = describe_channel(endpoint, file, channel);
                if self.receiver_line() {
                    log::info!(
                        "{}: receiver {} moved to {channel}",
                        name(file),
                        receiver(id)
                    );
                }
                self.events.emit(
                    "channel_change",
                    json!({"file": name(file), "receiver": receiver(id), "channel": channel}),
                );
            }
            ServerEvent::ReceiverProgress { file, report } => self.events.emit(
                "progress",
                json!({"file": name(file), "receiver": receiver(report.receiver_id),
                       "held": report.held, "packets": report.packet_count,
                       "arrived": report.arrived, "lost": report.lost,
                       "kernel_drops": report.kernel_drops}),
            ),
            ServerEvent::ReceiverDone {
                file,
                receiver: id,
                addr,
                elapsed,
            } => {
                if self.receiver_line() {
                    log::info!(
                        "{}: receiver {} at {addr} completed in {:.2} s",
                        name(file),
                        receiver(id),
                        elapsed.as_secs_f64()
                    );
                }
                self.events.emit(
                    "done",
                    json!({"file": name(file), "receiver": receiver(id),
                           "addr": addr.to_string(), "seconds": elapsed.as_secs_f64()}),
                );
            }
            ServerEvent::ChannelsStarted { file, by } => {
                log::info!("{}: starting its channels on request from {by}", name(file));
                self.events.emit(
                    "channel_start",
                    json!({"file": name(file), "from": by.to_string()}),
                );
            }
            ServerEvent::ChannelsTaken {
                by_session,
                first_channel,
            } => {
                log::warn!(
                    "server {by_session:08x} on the directory group uses our channel addresses; starting again on channels from number {first_channel}"
                );
                self.events.emit(
                    "channels_taken",
                    json!({"by_session": format!("{by_session:08x}"), "first_channel": first_channel}),
                );
            }
            ServerEvent::ChannelsStopped { file } => {
                log::info!(
                    "{}: no receiver for {} s; stopping its channels",
                    name(file),
                    self.idle.as_secs()
                );
                self.events
                    .emit("channel_stop", json!({"file": name(file)}));
            }
            ServerEvent::RateChanged {
                file,
                channel,
                rate_bps,
            } => {
                let group = endpoint
                    .channel(file, channel)
                    .map(|(_, group)| group.to_string())
                    .unwrap_or_default();
                log::info!(
                    "{}: {group} now at {}",
                    name(file),
                    format_rate(rate_bps as f64)
                );
                self.events.emit(
                    "rate_change",
                    json!({"file": name(file), "channel": group, "rate_bps": rate_bps}),
                );
            }
            ServerEvent::StreamStarted { file, to } => {
                log::info!("{}: streaming by unicast to {to}", name(file));
                self.events.emit(
                    "fallback",
                    json!({"file": name(file), "receiver_addr": to.to_string()}),
                );
            }
            ServerEvent::StreamEnded {
                file,
                to,
                after,
                why,
            } => log::info!(
                "{}: unicast stream to {to} ended ({}) after {:.1} s",
                name(file),
                match why {
                    StreamEnd::Done => "done",
                    StreamEnd::Silent => "silent",
                },
                after.as_secs_f64()
            ),
            ServerEvent::StreamRefused { file, to, clients } => {
                log::warn!(
                    "{}: refusing a unicast stream to {to}: {clients} clients already (--unicast-max-clients)",
                    name(file)
                );
                self.events.emit(
                    "error",
                    json!({"file": name(file), "from": to.to_string(),
                           "error": "too many unicast clients"}),
                );
            }
        }
    }

    /// What each channel did, one line each at debug level and in `--json`.
    fn channel_lines(&self, endpoint: &Endpoint) {
        for (f, j) in (0..endpoint.file_count())
            .flat_map(|f| (0..endpoint.channels_per_file()).map(move |j| (f, j)))
        {
            let Some((c, group)) = endpoint.channel(f, j) else {
                continue;
            };
            let s = c.stats();
            let name = &endpoint.manifest(f).name;
            log::debug!(
                target: COUNTERS,
                "{name} on {group}: counters: loops={} repairs={} parity_repairs={} naks={} naks_dropped={} parity_on_loop={} repairs_skipped={} grtt_ms={:.1}",
                c.loops(),
                s.repair_packets,
                s.parity_packets,
                s.naks,
                s.naks_dropped,
                s.proactive_packets,
                s.repairs_skipped,
                c.grtt().as_secs_f64() * 1e3
            );
            self.events.emit(
                "channel_stats",
                json!({"file": name, "channel": group.to_string(), "loops": c.loops(),
                       "repairs": s.repair_packets, "parity_repairs": s.parity_packets,
                       "naks": s.naks, "naks_dropped": s.naks_dropped,
                       "parity_on_loop": s.proactive_packets, "repairs_skipped": s.repairs_skipped,
                       "grtt_ms": c.grtt().as_secs_f64() * 1e3}),
            );
        }
    }

    /// The closing line: how long, how much was sent, who finished; the
    /// counters at debug level and in `--json`.
    pub fn final_log(&self, endpoint: &Endpoint, started: Instant) {
        tell_held(self.receiver_lines.2);
        self.channel_lines(endpoint);
        let elapsed = started.elapsed().as_secs_f64();
        let receivers = endpoint.receivers();
        let done = receivers.iter().filter(|r| r.done).count();
        let unfinished = receivers.iter().filter(|r| !r.done).count();
        let stats = endpoint.stats();
        let rate_bps = stats.sent_bytes as f64 * 8.0 / elapsed.max(1e-9);
        log::info!(
            "stopped after {elapsed:.1} s: sent {} ({}); {done} receiver(s) done{}",
            format_bytes(stats.sent_bytes),
            format_rate(rate_bps),
            match unfinished {
                0 => String::new(),
                n => format!(", {n} unfinished"),
            }
        );
        // The unfinished, at most 20 of them: the table may hold thousands.
        for r in receivers.iter().filter(|r| !r.done).take(20) {
            log::debug!(
                "unfinished: {} at {} ({}/{} packets)",
                endpoint.manifest(r.file).name,
                r.addr,
                r.held,
                r.packet_count
            );
        }
        log::debug!(
            target: COUNTERS,
            "server counters: sent_bytes={} rate_bps={rate_bps:.0} unicast_bytes={} unvalidated={} forged={} dropped={} stale_reports={} receivers_done={done} receivers_unfinished={unfinished}",
            stats.sent_bytes,
            stats.unicast_bytes,
            stats.unvalidated,
            stats.unauthenticated,
            stats.dropped,
            stats.stale_reports
        );
        self.events.emit(
            "stopped",
            json!({"seconds": elapsed, "sent_bytes": stats.sent_bytes,
                   "unicast_bytes": stats.unicast_bytes, "receivers_done": done,
                   "receivers_unfinished": unfinished, "unvalidated": stats.unvalidated,
                   "unauthenticated": stats.unauthenticated, "dropped": stats.dropped,
                   "stale_reports": stats.stale_reports}),
        );
    }

    /// Once a second: the status line on a terminal, and at debug level what
    /// each channel did in the last second.
    pub fn pulse(&mut self, endpoint: &Endpoint, elapsed: Duration) {
        let sent = endpoint.stats().sent_bytes;
        let (last_sent, last_at) = self.last_pulse;
        let secs = elapsed.saturating_sub(last_at).as_secs_f64().max(1e-3);
        let rate = (sent.saturating_sub(last_sent)) as f64 * 8.0 / secs;
        let mut loops = 0;
        let mut channels = 0;
        for (f, j) in (0..endpoint.file_count())
            .flat_map(|f| (0..endpoint.channels_per_file()).map(move |j| (f, j)))
        {
            let Some((c, group)) = endpoint.channel(f, j) else {
                continue;
            };
            channels += 1;
            loops += c.loops();
            if log::log_enabled!(log::Level::Debug) {
                let s = c.stats();
                let key = (f, j);
                let before = self
                    .channel_pulse
                    .insert(key, [s.naks, s.repair_packets, s.parity_packets]);
                let [naks, repairs, parity] = before.unwrap_or_default();
                let lacking = match c.lacking() {
                    0 => String::new(),
                    n => format!("; relaying, {n} packets still to come"),
                };
                log::debug!(
                    "{} on {group}: loop {}, {} NAKs, {} repairs, {} parity in the last second; GRTT {:.1} ms{lacking}",
                    endpoint.manifest(f).name,
                    c.loops() + 1,
                    s.naks - naks,
                    s.repair_packets - repairs,
                    s.parity_packets - parity,
                    c.grtt().as_secs_f64() * 1e3
                );
            }
        }
        let receivers = endpoint.receivers();
        let done = receivers.iter().filter(|r| r.done).count();
        self.status.set(format!(
            "{} file(s) on {channels} channel(s), {} receiver(s) ({done} done), sending {}, {} loops, up {}",
            endpoint.file_count(),
            receivers.len(),
            format_rate(rate),
            loops,
            crate::units::format_duration(elapsed)
        ));
        self.last_pulse = (sent, elapsed);
    }

    /// Removes the status line (before the closing line).
    pub fn clear_status(&self) {
        self.status.clear();
    }
}

/// "channel GROUP at RATE", or "unicast".
fn describe_channel(endpoint: &Endpoint, file: usize, channel: u8) -> String {
    match endpoint.channel(file, channel as usize) {
        Some((c, group)) => format!("channel {group} at {}", format_rate(c.rate() as f64)),
        None => "unicast".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_about_single_receivers_are_limited_per_second() {
        let mut render = Render::new(Events::new(false), Duration::from_secs(10));
        let logged = (0..100).filter(|_| render.receiver_line()).count();
        assert_eq!(logged, RECEIVER_LINES_PER_SECOND as usize);
        assert_eq!(render.receiver_lines.2, 100 - logged as u64);
    }
}
