//! SIGINT/SIGTERM as an event the driver's mio loop can wait on.

use crate::error::{Context, Result};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::time::Duration;

/// Token of the signal source in every driver's poll.
pub const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);

/// A mio poll that reports SIGINT/SIGTERM; drivers register their sockets on it too.
pub struct StopSignals {
    /// The poll the driver waits on.
    pub poll: Poll,
    /// Events buffer reused across waits.
    pub events: Events,
    signals: Signals,
}

impl StopSignals {
    /// Installs the handlers and registers them on a fresh poll.
    pub fn new() -> Result<Self> {
        let poll = Poll::new().context(|| "cannot create event loop".into())?;
        let mut signals =
            Signals::new([SIGINT, SIGTERM]).context(|| "cannot install signal handlers".into())?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)
            .context(|| "cannot register signal handlers".into())?;
        Ok(Self {
            poll,
            events: Events::with_capacity(64),
            signals,
        })
    }

    /// Waits for events up to `timeout`; returns true if a stop signal arrived.
    /// Other events are left in `self.events` for the caller.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(crate::error::Error::new(format!("event loop failed: {e}"))),
        }
        let signalled = self.events.iter().any(|e| e.token() == SIGNAL_TOKEN)
            && self.signals.pending().next().is_some();
        Ok(signalled)
    }
}
