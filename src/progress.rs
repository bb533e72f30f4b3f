//! Progress on stderr when it is a terminal: a bar per file received, a status
//! line for a server. Log lines go through `LogWriter`, which lifts the bars
//! while a line is written, so that no stale copy of a bar stays behind.
//! Nothing extra is drawn when stderr is not a terminal (the receiver logs plain
//! progress lines instead).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Duration;

/// The one set of bars of this process, when stderr is a terminal.
fn terminal() -> Option<&'static MultiProgress> {
    static MULTI: OnceLock<Option<MultiProgress>> = OnceLock::new();
    MULTI
        .get_or_init(|| {
            std::io::stderr()
                .is_terminal()
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        })
        .as_ref()
}

/// Where log lines go: stderr, with the bars lifted while a line is written.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match terminal() {
            Some(multi) => multi.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The set of progress bars of one receiver run.
pub struct Progress {
    multi: Option<&'static MultiProgress>,
}

impl Progress {
    /// Bars when stderr is a terminal, else none.
    pub fn new() -> Self {
        Self { multi: terminal() }
    }

    /// True when bars are drawn (plain progress lines are then not needed).
    pub fn is_drawing(&self) -> bool {
        self.multi.is_some()
    }

    /// A bar for one file, waiting for its manifest (`FileProgress::set_total`).
    pub fn add(&self, name: &str) -> FileProgress {
        let bar = self.multi.map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{msg:20!} {spinner} waiting for its manifest")
                    .expect("static template"),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar.set_message(name.to_owned());
            bar
        });
        FileProgress {
            bar,
            bytes_per_packet: 0.0,
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// One file's bar (a no-op when not drawing), in bytes of the file.
pub struct FileProgress {
    bar: Option<ProgressBar>,
    /// The file's bytes over its packets: a packet held counts as that many.
    bytes_per_packet: f64,
}

impl FileProgress {
    /// Sets how many packets are held.
    pub fn set(&self, held: u64) {
        if let Some(b) = &self.bar {
            let bytes = (held as f64 * self.bytes_per_packet) as u64;
            b.set_position(bytes.min(b.length().unwrap_or(bytes)));
        }
    }

    /// The file has `packets` packets and `bytes` bytes (its manifest came):
    /// the bar starts counting.
    pub fn set_total(&mut self, packets: u64, bytes: u64) {
        self.bytes_per_packet = bytes as f64 / packets.max(1) as f64;
        if let Some(b) = &self.bar {
            b.disable_steady_tick();
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:20!} [{bar:40}] {percent:>3}% {binary_bytes:>10}/{binary_total_bytes} {binary_bytes_per_sec:>12} eta {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b.set_length(bytes);
            b.reset_eta();
        }
    }

    /// Ends the bar with a final message.
    pub fn finish(&self, message: String) {
        if let Some(b) = &self.bar {
            b.finish_with_message(message);
        }
    }
}

/// A one-line status, redrawn in place (a server's), when stderr is a terminal.
pub struct StatusLine {
    bar: Option<ProgressBar>,
}

impl StatusLine {
    /// A status line, unless stderr is not a terminal or `quiet`.
    pub fn new(quiet: bool) -> Self {
        let bar = terminal().filter(|_| !quiet).map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}").expect("static template"),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Self { bar }
    }

    /// Shows `text`.
    pub fn set(&self, text: String) {
        if let Some(b) = &self.bar {
            b.set_message(text);
        }
    }

    /// Removes the line.
    pub fn clear(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
