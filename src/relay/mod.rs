//! `loopcast relay`: a receiver that keeps each archive as it arrives and a
//! server that loops it into the relay's own segment as it arrives
//! (cut-through, spec §2.4), in one process. The receiver tells the server,
//! through a channel, where each kept archive is and which of its body bytes
//! are written; the server's endpoint sends only what is held.

use crate::error::{Error, Result};
use crate::recv::RecvConfig;
use crate::server::ServeConfig;
use crate::storage::RelayNews;
use std::sync::mpsc;

/// What `relay` was asked to do: receive as `recv` (keeping archives in its
/// output directory) and serve what it receives as `serve`.
pub struct RelayConfig {
    /// The receiving side (its `keep_archive` is set to its output directory).
    pub recv: RecvConfig,
    /// The serving side (its paths are the kept archives, filled in at start).
    pub serve: ServeConfig,
}

/// Runs the relay until SIGINT or SIGTERM (the receiver ends once every file is
/// delivered; the server goes on serving them).
pub fn run(mut config: RelayConfig) -> Result<()> {
    let wanted = config.recv.names.len();
    if wanted == 0 {
        return Err(Error::new("relay needs the names of the files to relay"));
    }
    let (tx, rx) = mpsc::channel();
    let out = config.recv.out_dir.clone();
    config.recv.keep_archive.get_or_insert(out);
    config.recv.relay_news = Some(tx);
    let recv = config.recv;
    let receiver = std::thread::Builder::new()
        .name("relay-recv".into())
        .spawn(move || crate::recv::recv(recv))
        .map_err(|e| Error::new(format!("cannot start the relay's receiver: {e}")))?;
    // Serving starts once every wanted archive is kept (their manifests known);
    // what was written meanwhile is handed over first.
    // Each archive once, by name: a reception started again opens it again.
    let mut paths = std::collections::BTreeMap::new();
    let mut early = Vec::new();
    while paths.len() < wanted {
        // The receiver's own --timeout or a signal ends it, and the channel with it.
        match rx.recv() {
            Ok(RelayNews::Opened { name, path, .. }) => {
                if !paths.contains_key(&name) {
                    log::info!("{name}: relaying as it arrives");
                }
                paths.insert(name, path);
            }
            Ok(news) => early.push(news),
            Err(_) => {
                return match receiver.join() {
                    Ok(Err(e)) => Err(e),
                    _ => Err(Error::new(
                        "the relay's receiver ended before its files came",
                    )),
                };
            }
        }
    }
    config.serve.paths = paths.into_values().collect();
    crate::server::serve_relayed(config.serve, early, rx)?;
    // Stopped by a signal: the receiver saw it too and saves its progress.
    match receiver.join() {
        // 128 + SIGINT or SIGTERM: the receiver was stopped with the server.
        Ok(result) => result.or_else(|e| match e.code {
            130 | 143 => Ok(()),
            _ => Err(e),
        }),
        Err(_) => Err(Error::new("the relay's receiver panicked")),
    }
}
