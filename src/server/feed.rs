//! A relay's server: the news of its receiver in the same process (`relay`),
//! handed to the endpoint as it comes, and everything held so far, to hand
//! to a new endpoint when the server starts again on other channels.

use crate::storage::RelayNews;
use loopcast_proto::server::Endpoint;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// Longest a relay's server waits before it looks for news again: packets are
/// on its loop at most this long after they are written.
pub(super) const FEED_INTERVAL: Duration = Duration::from_millis(2);

/// The receiver's news, and what it told so far.
pub(super) struct Feed {
    news: Receiver<RelayNews>,
    /// Per archive, body ranges written (adjacent ones joined).
    held: HashMap<u64, Vec<Range<u64>>>,
    /// False once the receiver is gone (every file delivered, or stopped).
    pub(super) open: bool,
}

impl Feed {
    /// A feed from `news`, with what came before serving started.
    pub(super) fn new(early: Vec<RelayNews>, news: Receiver<RelayNews>) -> Self {
        let mut feed = Self {
            news,
            held: HashMap::new(),
            open: true,
        };
        early.into_iter().for_each(|n| feed.note(n));
        feed
    }

    fn note(&mut self, news: RelayNews) {
        if let RelayNews::Held { archive_id, ranges } = news {
            let held = self.held.entry(archive_id).or_default();
            for r in ranges {
                match held.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => held.push(r),
                }
            }
        }
    }

    /// Hands everything held so far to a new `endpoint`.
    pub(super) fn replay(&self, now: Instant, endpoint: &mut Endpoint) {
        for (&archive_id, ranges) in &self.held {
            ranges
                .iter()
                .for_each(|r| endpoint.hold(now, archive_id, r.clone()));
        }
    }

    /// Hands the news that came since the last call to `endpoint`.
    pub(super) fn take(&mut self, now: Instant, endpoint: &mut Endpoint) {
        loop {
            match self.news.try_recv() {
                Ok(news) => {
                    if let RelayNews::Held { archive_id, ranges } = &news {
                        ranges
                            .iter()
                            .for_each(|r| endpoint.hold(now, *archive_id, r.clone()));
                    }
                    self.note(news);
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.open = false;
                    return;
                }
            }
        }
    }
}
