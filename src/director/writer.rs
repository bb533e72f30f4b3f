//! The one thread that writes the job store (T42). Changes are taken from the
//! director and queued under its lock, so batches keep the order in which
//! they were taken, and written here in that order: the UDP loop queues and
//! goes on (it never waits on etcd), the job API waits for its own batch.

use super::changes::Changes;
use super::store::Store;
use crate::error::{Error, Result};
use loopcast_proto::director::Director;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One batch and, for the job API, where to say how its write went.
struct Batch {
    changes: Changes,
    done: Option<Sender<std::result::Result<(), String>>>,
}

/// The store and its writing thread.
pub struct Writer {
    store: Arc<Store>,
    queue: Mutex<Option<Sender<Batch>>>,
    /// Batches queued or being written.
    pending: Arc<AtomicUsize>,
    /// A local store's failure: it stops the director.
    fatal: Arc<Mutex<Option<String>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the thread that writes to `store`.
    pub fn start(store: Arc<Store>) -> Writer {
        let (queue, batches) = mpsc::channel::<Batch>();
        let pending = Arc::new(AtomicUsize::new(0));
        let fatal = Arc::new(Mutex::new(None));
        let thread = {
            let (store, pending, fatal) = (store.clone(), pending.clone(), fatal.clone());
            std::thread::Builder::new()
                .name("job-store".into())
                .spawn(move || write_all(&store, &batches, &pending, &fatal))
                .expect("a thread for the job store")
        };
        Writer {
            store,
            queue: Mutex::new(Some(queue)),
            pending,
            fatal,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// The store written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes what changed in `d` (locked) and queues it; returns at once.
    pub fn take(&self, d: &mut Director) {
        self.send(self.store.take(d), None);
    }

    /// Takes what changed in `d` (locked) and queues it; the receiver tells
    /// when it is written. Wait on it after letting the lock go.
    pub fn take_for_answer(&self, d: &mut Director) -> Receiver<std::result::Result<(), String>> {
        let (done, written) = mpsc::channel();
        self.send(self.store.take(d), Some(done));
        written
    }

    /// Whether every batch queued has been written (the loop takes changes
    /// only then, so a stalled store holds one batch, not a queue of them).
    pub fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// A local store's write failure, which stops the director.
    pub fn failed(&self) -> Option<Error> {
        let fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        fatal.as_ref().map(|e| Error::new(e.clone()))
    }

    /// Writes what is queued, then stops the thread (at shutdown).
    pub fn finish(&self) -> Result<()> {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        self.failed().map_or(Ok(()), Err)
    }

    fn send(&self, changes: Changes, done: Option<Sender<std::result::Result<(), String>>>) {
        if changes.is_empty() {
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
            return;
        }
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(queue) = queue.as_ref() else {
            return; // finishing: the last take writes itself
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        if queue.send(Batch { changes, done }).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The thread: each batch in turn; a failure is logged (etcd, where losing
/// leadership is routine) or kept to stop the director (redb).
fn write_all(
    store: &Store,
    batches: &Receiver<Batch>,
    pending: &AtomicUsize,
    fatal: &Mutex<Option<String>>,
) {
    for batch in batches {
        let result = store.write(batch.changes).map_err(|e| e.to_string());
        if let Err(e) = &result {
            if store.failure_is_fatal() {
                *fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
            } else if batch.done.is_none() {
                log::warn!("{e}");
            }
        }
        if let Some(done) = batch.done {
            let _ = done.send(result);
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}
