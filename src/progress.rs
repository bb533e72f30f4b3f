//! Progress on stderr: a bar per file on a terminal, nothing extra otherwise (the
//! receiver logs plain progress lines instead).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// The set of progress bars of one receiver run.
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars when stderr is a terminal, else none.
    pub fn new() -> Self {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self { multi }
    }

    /// True when bars are drawn (plain progress lines are then not needed).
    pub fn is_drawing(&self) -> bool {
        self.multi.is_some()
    }

    /// A bar for one file of `total` packets.
    pub fn add(&self, name: &str, total: u64) -> FileProgress {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:20!} [{bar:40}] {percent:>3}% {per_sec:>12} eta {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_message(name.to_owned());
            bar
        });
        FileProgress { bar }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// One file's bar (a no-op when not drawing).
pub struct FileProgress {
    bar: Option<ProgressBar>,
}

impl FileProgress {
    /// Sets how many packets are held.
    pub fn set(&self, held: u64) {
        if let Some(b) = &self.bar {
            b.set_position(held);
        }
    }

    /// Sets how many packets the file has, once its manifest is known.
    pub fn set_total(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Ends the bar with a final message.
    pub fn finish(&self, message: String) {
        if let Some(b) = &self.bar {
            b.finish_with_message(message);
        }
    }
}
