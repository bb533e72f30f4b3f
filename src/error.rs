//! The one error type of the CLI: a one-line reason and the exit code it maps to.

use std::fmt;

/// Exit code for errors of every kind but the ones below.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code when `--timeout` ran out before the work was done.
pub const EXIT_TIMEOUT: i32 = 3;
/// Exit code when a director says no live server carries a wanted file.
pub const EXIT_NOT_CARRIED: i32 = 4;
/// Exit code when the output directory has no room for a wanted file.
pub const EXIT_NO_ROOM: i32 = 6;

/// Exit code of a command stopped by SIGINT (128 + 2), as shells expect.
pub const EXIT_INTERRUPTED: i32 = 130;

/// What one of loopcast's exit codes means, in words (None: success or unknown).
pub fn exit_meaning(code: Option<i32>) -> Option<&'static str> {
    match code? {
        EXIT_FAILURE => Some("an error"),
        2 => Some("bad arguments"),
        EXIT_TIMEOUT => Some("time-out"),
        EXIT_NOT_CARRIED => Some("no live server carries a file"),
        5 => Some("nodes missing"),
        EXIT_NO_ROOM => Some("no room for a file"),
        130 => Some("interrupted"),
        143 => Some("terminated"),
        _ => None,
    }
}

/// A failure with a one-line, user-facing reason.
#[derive(Debug)]
pub struct Error {
    /// What went wrong, in one line.
    pub message: String,
    /// Process exit code to use.
    pub code: i32,
}

/// Result with the CLI error.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A general failure.
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_code(message, EXIT_FAILURE)
    }

    /// A failure with its own exit code.
    pub fn with_code(message: impl Into<String>, code: i32) -> Self {
        Self {
            message: message.into(),
            code,
        }
    }

    /// A time-out.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::with_code(message, EXIT_TIMEOUT)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Adds "what we were doing" context to I/O and other errors.
pub trait Context<T> {
    /// Maps the error to `Error` with `what: cause`.
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::new(format!("{}: {e}", what())))
    }
}
