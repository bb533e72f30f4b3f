//! A thread that makes partial files durable, off the receive loop.

use super::map::save;
use crate::error::{Context, Error, Result};
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

/// Work for the persister thread, done in order.
pub enum Job {
    /// Sync a reception's files and save its map.
    Save {
        /// Handles on the partial file and the output.
        files: Vec<File>,
        /// Where the map goes.
        map_path: PathBuf,
        /// The encoded map.
        map: Vec<u8>,
        /// Cleared when the save is done.
        saving: Arc<AtomicBool>,
    },
    /// Remove these files.
    Remove(Vec<PathBuf>),
}

/// A thread that makes partial files durable, so `fdatasync` never stalls the receive loop.
pub struct Persister {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    error: Arc<Mutex<Option<Error>>>,
}

impl Persister {
    /// Starts the thread.
    pub fn new() -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let error = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&error);
        let thread = std::thread::Builder::new()
            .name("persister".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Save {
                            files,
                            map_path,
                            map,
                            saving,
                        } => {
                            let files: Vec<&File> = files.iter().collect();
                            if let Err(e) = save(&files, &map_path, &map) {
                                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            }
                            saving.store(false, Ordering::Release);
                        }
                        Job::Remove(paths) => paths.iter().for_each(|p| {
                            let _ = fs::remove_file(p);
                        }),
                    }
                }
            })
            .context(|| "cannot start the persister thread".into())?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            error,
        })
    }

    pub(super) fn submit(&self, job: Job) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }

    /// The first error a background save hit, if any.
    pub fn take_error(&self) -> Option<Error> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Finishes all queued work and stops the thread.
    pub fn wait_idle(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.wait_idle();
    }
}
