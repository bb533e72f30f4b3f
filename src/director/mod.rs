//! `loopcast director`: the driver of `proto::director::Director` — one UDP
//! socket, the clock, logs and `--json` events, and the HTTP status API
//! (`http`). It decides nothing itself.

mod http;

use crate::error::{Context, Result};
use crate::events::Events;
use crate::net;
use crate::signals::StopSignals;
use loopcast_proto::MasterKey;
use loopcast_proto::director::{Director, DirectorEvent};
use loopcast_proto::wire::Found;
use mio::{Interest, Token};
use serde_json::json;
use std::io::ErrorKind;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `director` was asked to do.
pub struct DirectorConfig {
    /// Master key of the site.
    pub key: MasterKey,
    /// Address and port to listen on for heartbeats and look-ups.
    pub listen: SocketAddrV4,
    /// Print events as JSON lines on stdout.
    pub json: bool,
    /// Where to serve the HTTP status API (None: nowhere).
    pub http: Option<SocketAddrV4>,
}

const SOCKET: Token = Token(0);
/// Datagrams taken per wake-up before timers run again (a flood cannot hold them).
const MAX_PER_TURN: usize = 256;

/// Runs a director until SIGINT/SIGTERM.
pub fn run(config: DirectorConfig) -> Result<()> {
    let mut signals = StopSignals::new()?;
    let std_socket = net::unicast_socket(*config.listen.ip(), config.listen.port(), 1 << 20)?;
    let mut socket = mio::net::UdpSocket::from_std(std_socket);
    signals
        .poll
        .registry()
        .register(&mut socket, SOCKET, Interest::READABLE)
        .context(|| "cannot register socket".into())?;
    let events = Events::new(config.json);
    let director = Arc::new(Mutex::new(Director::new(
        config.key.director_mac_key(),
        config.key.directory_mac_key(),
        Instant::now(),
    )));
    if let Some(address) = config.http {
        http::serve(address, director.clone())?;
        log::info!(
            "status API on http://{address}/v1/servers (also /v1/files, /v1/receivers, /metrics)"
        );
    }
    log::info!("director listening on {}", config.listen);
    events.emit("listening", json!({"address": config.listen.to_string()}));
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        let wait = {
            let mut director = lock(&director);
            director.handle_timeout(now);
            flush(&mut director, &socket, &events);
            director
                .poll_timeout()
                .map_or(Duration::from_secs(1), |at| {
                    at.saturating_duration_since(now)
                })
        };
        if signals.wait(Some(wait.max(Duration::from_millis(1))))? {
            break;
        }
        for _ in 0..MAX_PER_TURN {
            match socket.recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(from))) => {
                    let mut director = lock(&director);
                    director.handle_datagram(Instant::now(), from, &buf[..n]);
                    flush(&mut director, &socket, &events);
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => log::warn!("receive failed: {e}"),
            }
        }
    }
    let director = lock(&director);
    let s = director.stats();
    log::info!(
        "stopping: {} server(s) live, {} look-up(s) answered, {} unauthenticated, {} stale heartbeat(s)",
        director.servers().count(),
        s.answered,
        s.unauthenticated,
        s.stale
    );
    Ok(())
}

/// The director, from the loop or the HTTP thread (a panic elsewhere leaves it usable).
fn lock(director: &Mutex<Director>) -> std::sync::MutexGuard<'_, Director> {
    director.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends the director's answers and logs its events.
fn flush(director: &mut Director, socket: &mio::net::UdpSocket, events: &Events) {
    while let Some((to, datagram)) = director.poll_transmit() {
        if let Err(e) = socket.send_to(&datagram, to.into()) {
            log::debug!("answer to {to} failed: {e}");
        }
    }
    while let Some(event) = director.poll_event() {
        match event {
            DirectorEvent::ServerUp {
                session_id,
                address,
            }
            | DirectorEvent::ServerDown {
                session_id,
                address,
            } => {
                let up = matches!(event, DirectorEvent::ServerUp { .. });
                let state = if up { "up" } else { "down" };
                log::info!("server {session_id:08x} at {address} is {state}");
                events.emit(
                    &format!("server_{state}"),
                    json!({"session": format!("{session_id:08x}"), "address": address.to_string()}),
                );
            }
            DirectorEvent::Redirected {
                to,
                name,
                reason,
                primary,
            } => {
                log::info!("moving {to} to {primary} for {name:?}: {reason:?}");
                events.emit(
                    "redirected",
                    json!({"receiver": to.to_string(), "file": name,
                           "reason": format!("{reason:?}"), "to": primary.to_string()}),
                );
            }
            DirectorEvent::Answered {
                from,
                name,
                found,
                primary,
            } => {
                let found = match found {
                    Found::Carried => "carried",
                    Found::NotCarried => "not_carried",
                    Found::NotYetKnown => "not_yet_known",
                };
                log::debug!("{from} asked for {name:?}: {found}");
                events.emit(
                    "answered",
                    json!({"from": from.to_string(), "file": name, "found": found,
                           "primary": primary.map(|p| p.to_string())}),
                );
            }
        }
    }
}
