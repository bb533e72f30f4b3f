//! `--json`: machine-readable events, one JSON object per line on stdout, for scripts.

use serde_json::{Map, Value};
use std::io::Write;
use std::time::Instant;

/// The log target of counters (debug level): key=value lines a server and a
/// receiver write at the end, for scripts and tests
/// (`RUST_LOG=info,loopcast::counters=debug`).
pub const COUNTERS: &str = "loopcast::counters";

/// Writes events as JSON lines when enabled; does nothing otherwise.
pub struct Events {
    enabled: bool,
    started: Instant,
}

impl Events {
    /// An event writer; `enabled` is the `--json` flag.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            started: Instant::now(),
        }
    }

    /// True with `--json`.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Prints `{"event": kind, "t": seconds since start, ...fields}` as one line.
    /// `fields` must be a JSON object (`serde_json::json!({...})`).
    pub fn emit(&self, kind: &str, fields: Value) {
        if !self.enabled {
            return;
        }
        let mut line = Map::new();
        line.insert("event".into(), kind.into());
        let t = (self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        line.insert("t".into(), t.into());
        if let Value::Object(more) = fields {
            line.extend(more);
        }
        let mut out = std::io::stdout().lock();
        // A closed stdout (the script went away) must not stop the transfer.
        let _ = writeln!(out, "{}", Value::Object(line));
        let _ = out.flush();
    }
}
