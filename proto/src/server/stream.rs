//! One paced stream of a carousel: a multicast channel or a unicast client.

use super::BatchLimits;
use crate::pacer::Pacer;
use crate::sender::{Carousel, PayloadSource};
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

/// A carousel, its pacer and where its datagrams go: a channel's group or one client.
pub(super) struct Stream {
    pub(super) carousel: Carousel,
    pub(super) pacer: Pacer,
    /// Datagrams per send: about a millisecond of data at the stream's rate.
    pub(super) batch: usize,
    pub(super) to: SocketAddr,
}

impl Stream {
    pub(super) fn new(
        carousel: Carousel,
        to: SocketAddr,
        now: Instant,
        limits: BatchLimits,
    ) -> Self {
        let rate = carousel.rate();
        let mut stream = Self {
            carousel,
            pacer: Pacer::new(rate, 1, now),
            batch: 1,
            to,
        };
        stream.set_rate(rate, now, limits);
        stream
    }

    pub(super) fn set_rate(&mut self, rate_bps: u64, now: Instant, limits: BatchLimits) {
        let len = self.carousel.max_datagram_len();
        self.carousel.set_rate(rate_bps);
        self.pacer = Pacer::new(rate_bps, len, now);
        self.batch = self
            .pacer
            .burst_datagrams(len)
            .min(limits.datagrams)
            .min(limits.bytes / len)
            .max(1);
    }

    /// Writes up to `batch` datagrams the pacer allows into `buf`, all of one size
    /// but the last (UDP GSO's rule). Returns (bytes, segment, datagrams).
    pub(super) fn write_batch(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        source: &mut impl PayloadSource,
    ) -> io::Result<(usize, usize, usize)> {
        let (mut used, mut count, mut segment) = (0, 0, 0);
        while count < self.batch {
            let len = self.carousel.next_len(now);
            // 0: a relay's carousel with nothing held to send (Transmit::Idle).
            if len == 0 || (count > 0 && len > segment) || !self.pacer.try_send(now, len) {
                break;
            }
            let written = self
                .carousel
                .poll_transmit(now, &mut buf[used..used + len], source)?
                .len();
            debug_assert_eq!(written, len, "next_len predicts the datagram");
            if count == 0 {
                segment = written;
            }
            used += written;
            count += 1;
            if written < segment {
                break;
            }
        }
        Ok((used, segment, count))
    }
}
