//! Leaving a channel while its loop passes packets the receiver holds (spec §6.4).
//! A receiver that switched servers, resumed, or is in its last loop would
//! otherwise take every packet it holds again; it leaves the channel over a long
//! enough run of them and joins again just before the loop reaches what it lacks.
//! It stays while repairs of its gaps are due, since they come on the channel.
//! Coming back late costs no data: what the loop passed that was missing is a gap,
//! NAKed as any other.

use super::{Command, Phase, ReceptionId, Session};
use crate::rate::SELECT_SAMPLE;
use crate::sender::MANIFEST_EVERY_PACKETS;
use crate::wire;
use std::time::{Duration, Instant};

/// The shortest time worth leaving a channel for.
pub const MIN_AWAY: Duration = Duration::from_millis(100);
/// The longest time away at once: a pace foretold wrong (a STATUS saying a far
/// lower rate than the loop runs at) costs at most this, and silence is noticed
/// within this of its start. A longer run held is left again on coming back.
pub const MAX_AWAY: Duration = Duration::from_secs(2);
/// Back on the channel this long before the loop is due at a missing packet...
pub const AWAY_MARGIN: Duration = Duration::from_millis(10);
/// ...and earlier by this share of the time away (the loop slows for repairs and
/// speeds up when the rate adapts).
pub const AWAY_MARGIN_SHARE: f64 = 0.005;
/// How often, at most, a reception taking packets it holds looks at the run ahead.
pub const SKIP_CHECK: Duration = Duration::from_millis(20);
/// The loop's pace is measured once this long after joining; before that it
/// is taken from the channel's rate less the MANIFESTs, which is never slower than
/// the loop.
pub const PACE_WINDOW: Duration = Duration::from_millis(250);

impl Session {
    /// A loop packet came on `track` of reception `id` (`new`: one it lacked). If
    /// the packets after it are held for at least `MIN_AWAY` of the loop, the
    /// reception leaves its channel until just before the loop passes them.
    pub(super) fn maybe_leave(&mut self, now: Instant, id: ReceptionId, track: usize, new: bool) {
        let (aggregate, stay) = (self.config.aggregate, self.config.stay_joined);
        let r = &mut self.receptions[id];
        if aggregate || stay || r.stream.is_some() || r.joined != [track] {
            return;
        }
        let (Some((position, advanced)), Some(payload_size)) = (
            r.fsm.loop_position(track),
            r.fsm.manifest().map(|m| m.payload_size),
        ) else {
            return;
        };
        if r.pending.is_some()
            || r.away_until.is_some()
            || r.phase != Phase::Receiving
            // Repairs come on the channel: stay for them. This also keeps a
            // replayed packet from taking the reception away over packets it
            // lacks: the jump to it would have made gaps (T28).
            || r.fsm.awaiting_repair()
        {
            return;
        }
        if r.fsm.server_lacks() {
            // A relay still receiving loops only what it holds: its loop is not
            // the archive's, so neither its pace nor the run held ahead of it
            // foretell anything. Its pace is measured once it holds all.
            r.pace = None;
            return;
        }
        let (since, advanced_then) = *r.pace.get_or_insert((now, advanced));
        if new || now < r.next_skip_check {
            return;
        }
        r.next_skip_check = now + SKIP_CHECK;
        let measured = now.saturating_duration_since(since);
        let per_second = if measured >= PACE_WINDOW && advanced > advanced_then {
            (advanced - advanced_then) as f64 / measured.as_secs_f64()
        } else {
            let rate = (r.fsm.status_rate()).unwrap_or(r.entry.channels[track].rate_bps);
            let datagram = payload_size as usize + wire::DATA_HEADER_LEN;
            // A MANIFEST goes out among every `MANIFEST_EVERY_PACKETS` DATA at least.
            let every = MANIFEST_EVERY_PACKETS as f64;
            rate as f64 / (8 * datagram) as f64 * every / (every + 1.0)
        };
        let held = r.fsm.held_after(position);
        let passing = held as f64 / per_second.max(1.0);
        let away = Duration::from_secs_f64(passing * (1.0 - AWAY_MARGIN_SHARE))
            .saturating_sub(AWAY_MARGIN);
        if away < MIN_AWAY {
            return;
        }
        let away = away.min(MAX_AWAY);
        let back = now + away;
        r.away_until = Some(back);
        r.listening_from = back;
        r.fsm.stop_listening(track);
        self.out.command(Command::Leave {
            reception: id,
            channel: track,
        });
    }

    /// Joins reception `id`'s channel again once its time away is over. Returns
    /// whether it is still away.
    pub(super) fn away_timer(&mut self, now: Instant, id: ReceptionId) -> bool {
        let r = &mut self.receptions[id];
        let Some(back) = r.away_until else {
            return false;
        };
        if now < back {
            return true;
        }
        r.away_until = None;
        r.listening_from = now;
        r.next_sample = now + SELECT_SAMPLE;
        let Some(&channel) = r.joined.first() else {
            return false;
        };
        self.out.command(Command::Join {
            reception: id,
            channel,
            info: r.entry.channels[channel],
        });
        false
    }
}
