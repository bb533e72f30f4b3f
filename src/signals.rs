//! SIGINT/SIGTERM as an event the driver's mio loop can wait on.

use crate::error::{Context, Result};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Token of the signal source in every driver's poll.
pub const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
/// Token of the wake-up timer in every driver's poll.
const TIMER_TOKEN: Token = Token(usize::MAX - 2);

/// A mio poll that reports SIGINT/SIGTERM; drivers register their sockets on it too.
pub struct StopSignals {
    /// The poll the driver waits on.
    pub poll: Poll,
    /// Events buffer reused across waits.
    pub events: Events,
    signals: Signals,
    /// A timerfd: epoll's own time-out counts whole milliseconds, too coarse for
    /// pacing bursts of a millisecond.
    timer: OwnedFd,
    /// The stop signal that arrived, if one did.
    caught: Option<i32>,
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
        // SAFETY: timerfd_create returns a new fd we own, or -1.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(crate::error::Error::new(format!(
                "cannot create timer: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: fd is a fresh descriptor owned by nothing else.
        let timer = unsafe { OwnedFd::from_raw_fd(fd) };
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&timer.as_raw_fd()),
                TIMER_TOKEN,
                Interest::READABLE,
            )
            .context(|| "cannot register timer".into())?;
        Ok(Self {
            poll,
            events: Events::with_capacity(64),
            signals,
            timer,
            caught: None,
        })
    }

    /// A UDP socket bound to `local` (port 0: any free port), registered for
    /// reading as `token`.
    pub fn udp_socket(
        &self,
        local: std::net::SocketAddr,
        token: Token,
    ) -> Result<mio::net::UdpSocket> {
        let mut socket = mio::net::UdpSocket::from_std(crate::net::unicast_socket(local, 1 << 20)?);
        self.poll
            .registry()
            .register(&mut socket, token, Interest::READABLE)
            .context(|| "cannot register socket".into())?;
        Ok(socket)
    }

    /// Arms the timer to fire once after `after` (zero disarms it).
    fn arm(&self, after: Duration) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and a fully initialised itimerspec.
        unsafe { libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }

    /// Waits for events up to `timeout`; returns true if a stop signal arrived.
    /// Other events are left in `self.events` for the caller.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool> {
        // The timerfd wakes us to the microsecond; epoll's own time-out stays as a
        // backstop a millisecond later.
        let backstop = match timeout {
            Some(t) if !t.is_zero() => {
                self.arm(t);
                Some(t + Duration::from_millis(1))
            }
            other => other,
        };
        let polled = self.poll.poll(&mut self.events, backstop);
        if timeout.is_some_and(|t| !t.is_zero()) {
            self.arm(Duration::ZERO);
            let mut expirations = [0u8; 8];
            // SAFETY: reading 8 bytes from our non-blocking timerfd into an 8-byte buffer;
            // it only clears a pending expiry so the next edge is reported.
            unsafe { libc::read(self.timer.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
        }
        match polled {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(crate::error::Error::new(format!("event loop failed: {e}"))),
        }
        if self.events.iter().any(|e| e.token() == SIGNAL_TOKEN)
            && let Some(signal) = self.signals.pending().next()
        {
            self.caught = Some(signal);
            return Ok(true);
        }
        Ok(false)
    }

    /// The error a command interrupted by the signal caught ends with: exit
    /// 128 + the signal's number (130 for SIGINT), as shells expect.
    pub fn interrupted(&self, message: impl Into<String>) -> crate::error::Error {
        let signal = self.caught.unwrap_or(SIGINT);
        crate::error::Error::with_code(message, 128 + signal)
    }
}
