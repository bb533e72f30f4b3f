//! What `push` and `jobs` show: a bar per node on a terminal, else a line each
//! time a node's state (or tenth of progress) changes; JSON events with `--json`.

use crate::events::Events;
use crate::units::{display_name, printable};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Instant;

pub use crate::units::format_duration as duration;

/// How a node is, as shown: state, and "unreachable" when its agent is silent.
fn node_label(n: &Value) -> String {
    let state = n["state"].as_str().unwrap_or("?");
    let mut label = state.to_string();
    if n["failure"].as_str().is_some_and(|f| f != "none") {
        label = format!("{label} ({})", n["failure"].as_str().unwrap_or(""));
    }
    if let Some(detail) = n["detail"].as_str().filter(|d| !d.is_empty()) {
        label = format!("{label}: {}", printable(detail));
    }
    let final_state = matches!(state, "done" | "failed" | "missed" | "cancelled");
    if n["reachable"] == false && !final_state {
        label.push_str(", unreachable");
    }
    label
}

fn permille(n: &Value) -> u64 {
    n["permille"].as_u64().unwrap_or(0).min(1000)
}

/// Following one job.
pub struct Follow<'a> {
    events: &'a Events,
    bars: Option<(MultiProgress, HashMap<String, ProgressBar>)>,
    /// Per node: the label and tenth of progress last shown.
    shown: HashMap<String, (String, u64)>,
    started: Instant,
}

impl<'a> Follow<'a> {
    /// Bars if `human` and stderr is a terminal; plain lines if `human`; else events only.
    pub fn new(human: bool, events: &'a Events) -> Self {
        let bars = (human && std::io::stderr().is_terminal()).then(|| {
            (
                MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                HashMap::new(),
            )
        });
        Self {
            events,
            bars,
            shown: HashMap::new(),
            started: Instant::now(),
        }
    }

    /// Shows what changed in `job` (the API's JSON).
    pub fn update(&mut self, job: &Value) {
        for n in job["nodes"].as_array().into_iter().flatten() {
            let name = printable(n["node"].as_str().unwrap_or("?")).into_owned();
            let label = node_label(n);
            let p = permille(n);
            if let Some((multi, bars)) = &mut self.bars {
                let bar = bars.entry(name.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(1000));
                    bar.set_style(
                        ProgressStyle::with_template("{prefix:16!} [{bar:40}] {percent:>3}% {msg}")
                            .expect("static template")
                            .progress_chars("=> "),
                    );
                    bar.set_prefix(name.clone());
                    bar
                });
                bar.set_position(p);
                bar.set_message(label.clone());
            }
            let tenth = p / 100;
            let changed = self.shown.get(&name) != Some(&(label.clone(), tenth));
            if changed {
                self.shown.insert(name.clone(), (label.clone(), tenth));
                if self.bars.is_none() && self.events_off() {
                    println!("{name:<16} {:>5.1}%  {label}", p as f64 / 10.0);
                }
                self.events.emit(
                    "node",
                    json!({"job": job["id"], "node": name, "state": n["state"],
                           "permille": p, "failure": n["failure"], "reachable": n["reachable"]}),
                );
            }
        }
    }

    fn events_off(&self) -> bool {
        // Plain lines are for people; with --json the events say it all.
        !self.events.enabled()
    }

    /// The last line: how the job ended.
    pub fn finish(&mut self, job: &Value) {
        if let Some((_, bars)) = &self.bars {
            for bar in bars.values() {
                bar.finish();
            }
        }
        let counts = &job["counts"];
        let total = job["nodes"].as_array().map_or(0, Vec::len);
        let done = counts["done"].as_u64().unwrap_or(0);
        let secs = self.started.elapsed().as_secs_f64();
        let state = job["state"].as_str().unwrap_or("?");
        if self.events_off() {
            println!(
                "job {}: {state}: {done} of {total} node(s) done in {secs:.1} s",
                job["id"]
            );
        }
        self.events.emit(
            "job_end",
            json!({"job": job["id"], "state": state, "done": done, "nodes": total, "seconds": secs}),
        );
    }
}

/// `jobs`: one line per job.
pub fn list(jobs: &Value) {
    let list = jobs.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no jobs");
        return;
    }
    println!(
        "{:<16} {:<10} {:>6} {:>6}  FILES",
        "ID", "STATE", "DONE", "NODES"
    );
    for j in &list {
        println!(
            "{:<16} {:<10} {:>6} {:>6}  {}",
            j["id"].as_u64().unwrap_or(0),
            j["state"].as_str().unwrap_or("?"),
            j["counts"]["done"].as_u64().unwrap_or(0),
            j["targets"].as_u64().unwrap_or(0),
            (j["files"].as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .map(display_name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// `jobs ID`: the job and a line per node.
pub fn job(j: &Value) {
    let files: Vec<_> = (j["files"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .map(display_name)
        .collect();
    println!(
        "job {}: {}, files {}",
        j["id"],
        j["state"].as_str().unwrap_or("?"),
        files.join(", ")
    );
    for n in j["nodes"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:>5.1}%  {}",
            printable(n["node"].as_str().unwrap_or("?")),
            permille(n) as f64 / 10.0,
            node_label(n)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(Duration::from_secs(45)), "45s");
        assert_eq!(duration(Duration::from_secs(1800)), "30m");
        assert_eq!(duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn a_silent_node_not_yet_final_is_shown_unreachable() {
        let n = json!({"state": "receiving", "failure": "none", "reachable": false});
        assert_eq!(node_label(&n), "receiving, unreachable");
        let n = json!({"state": "done", "failure": "none", "reachable": false});
        assert_eq!(node_label(&n), "done");
        let n = json!({"state": "receiving", "failure": "retrying", "reachable": true});
        assert_eq!(node_label(&n), "receiving (retrying)");
        let n = json!({"state": "failed", "failure": "hook_failed", "detail": "exit 3: no space"});
        assert_eq!(node_label(&n), "failed (hook_failed): exit 3: no space");
    }
}
