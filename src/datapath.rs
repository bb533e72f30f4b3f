//! Batched UDP I/O: GSO sends (one `sendmsg` carries up to 64 datagrams) with a
//! `sendmmsg` fallback, and `recvmmsg` receives with UDP GRO and the kernel's
//! drop counter (SO_RXQ_OVFL). Linux only, like the rest of the driver.

use crate::net::set_int_option;
use socket2::SockAddr;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

/// Most datagrams the kernel accepts in one GSO send (UDP_MAX_SEGMENTS).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most UDP payload bytes one send may carry, GSO or not (the IPv4 limit; IPv6 allows 20 more).
pub const MAX_SEND_BYTES: usize = 65507;
/// Datagrams (or GRO bundles) taken per `recvmmsg`.
const RECV_BATCH: usize = 16;
/// Room per received message: a GRO bundle is at most one IPv4 packet's worth.
const RECV_SLOT: usize = 65536;

/// Sends runs of equal-sized datagrams with as few system calls as the kernel allows.
#[derive(Debug)]
pub struct BatchSender {
    gso: bool,
}

impl BatchSender {
    /// A sender for `socket`; GSO is used when `want_gso` and the kernel supports it.
    pub fn new(socket: &impl AsRawFd, want_gso: bool) -> Self {
        // Setting UDP_SEGMENT to 0 (per-call sizes) succeeds only where GSO exists.
        let gso =
            want_gso && set_int_option(socket.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, 0);
        Self { gso }
    }

    /// Whether sends go out as GSO batches.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Most datagrams of `segment` bytes one call to `send` should carry.
    pub fn max_batch(&self, segment: usize) -> usize {
        (MAX_SEND_BYTES / segment.max(1)).clamp(1, MAX_GSO_SEGMENTS)
    }

    /// Sends `buf` as datagrams of `segment` bytes each (the last may be shorter) to
    /// `to`. ENOBUFS and EAGAIN are passed back: the caller's pacing decides when to retry.
    pub fn send(
        &mut self,
        socket: &impl AsRawFd,
        buf: &[u8],
        segment: usize,
        to: SocketAddr,
    ) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let fd = socket.as_raw_fd();
        if self.gso && buf.len() > segment {
            match send_gso(fd, buf, segment, to) {
                Ok(()) => return Ok(()),
                // EIO: the device cannot segment (no checksum offload); EINVAL: the
                // kernel refuses this segment size. Both mean: send one by one.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) => {
                    log::warn!("UDP GSO refused by the kernel ({e}); sending datagrams one by one");
                    self.gso = false;
                }
                Err(e) => return Err(e),
            }
        }
        send_each(fd, buf, segment, to)
    }
}

fn send_gso(fd: RawFd, buf: &[u8], segment: usize, to: SocketAddr) -> io::Result<()> {
    let addr = SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    let mut control = [0u64; 8]; // 64 bytes, aligned for cmsghdr
    debug_assert!(space <= size_of::<[u64; 8]>());
    // SAFETY: msghdr is plain old data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    // sendmsg only reads the name.
    msg.msg_name = addr.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = addr.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` bytes, enough for one u16 cmsg.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
    }
    loop {
        // SAFETY: fd is a socket; msg is fully initialised above.
        let n = unsafe { libc::sendmsg(fd, &msg, 0) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn send_each(fd: RawFd, buf: &[u8], segment: usize, to: SocketAddr) -> io::Result<()> {
    let addr = SockAddr::from(to);
    let mut iovs: Vec<libc::iovec> = buf
        .chunks(segment.max(1))
        .map(|c| libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain old data.
    let mut msgs: Vec<libc::mmsghdr> = (0..iovs.len()).map(|_| unsafe { zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        // sendmmsg only reads the name.
        m.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
        m.msg_hdr.msg_namelen = addr.len();
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut done = 0;
    while done < msgs.len() {
        let rest = &mut msgs[done..];
        // SAFETY: every header points at live iovecs into `buf` and at `addr`.
        let n = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if done > 0 && matches!(e.raw_os_error(), Some(libc::ENOBUFS) | Some(libc::EAGAIN)) {
                // Part went out; the kernel queue is full. Wait briefly for the rest
                // rather than report a half-sent batch.
                std::thread::sleep(std::time::Duration::from_micros(100));
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Receives many datagrams per system call, unbundling GRO super-packets.
pub struct BatchReceiver {
    buf: Vec<u8>,
    /// Per message received by the last call: (length, GRO segment size or 0).
    received: Vec<(usize, usize)>,
    /// Latest SO_RXQ_OVFL value per socket fd (the kernel's count of datagrams it
    /// dropped for want of buffer space).
    drops: Vec<(RawFd, u32)>,
}

impl Default for BatchReceiver {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchReceiver {
    /// Buffers for one batch (about 1 MiB), shared by every socket this receiver reads.
    pub fn new() -> Self {
        Self {
            buf: vec![0u8; RECV_BATCH * RECV_SLOT],
            received: Vec::with_capacity(RECV_BATCH),
            drops: Vec::new(),
        }
    }

    /// Prepares `socket` for batched reading: asks for its drop counter, and for GRO
    /// bundles when `want_gro`. Returns whether GRO is on.
    pub fn setup(socket: &impl AsRawFd, want_gro: bool) -> bool {
        let fd = socket.as_raw_fd();
        set_int_option(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1);
        want_gro && set_int_option(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
    }

    /// Reads up to one batch from a non-blocking socket. Returns the number of messages
    /// (0 once the socket is drained); `datagrams` then yields their datagrams.
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        self.received.clear();
        // SAFETY: CMSG_SPACE is a pure size computation.
        let cmsg_space = unsafe {
            libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) as usize
                + libc::CMSG_SPACE(size_of::<u32>() as u32) as usize
        };
        let mut control = [[0u64; 8]; RECV_BATCH];
        debug_assert!(cmsg_space <= size_of::<[u64; 8]>());
        // Arrays, not vectors: no allocation per call on the receive path.
        let base = self.buf.as_mut_ptr();
        let mut iovs: [libc::iovec; RECV_BATCH] = std::array::from_fn(|i| libc::iovec {
            // SAFETY: slot i lies inside `self.buf` (RECV_BATCH slots of RECV_SLOT bytes).
            iov_base: unsafe { base.add(i * RECV_SLOT) }.cast(),
            iov_len: RECV_SLOT,
        });
        // SAFETY: mmsghdr is plain old data.
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { zeroed() };
        for ((m, iov), c) in msgs.iter_mut().zip(iovs.iter_mut()).zip(control.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = c.as_mut_ptr().cast();
            m.msg_hdr.msg_controllen = size_of::<[u64; 8]>() as _;
        }
        let n = loop {
            // SAFETY: every header points at a live slot of `self.buf` and its control area.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    msgs.as_mut_ptr(),
                    RECV_BATCH as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(e),
            }
        };
        for m in &msgs[..n] {
            let mut segment = 0usize;
            // SAFETY: the kernel filled msg_control up to msg_controllen; CMSG_* walk it.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                while !cmsg.is_null() {
                    let data = libc::CMSG_DATA(cmsg);
                    match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                        (libc::SOL_UDP, libc::UDP_GRO) => {
                            segment = std::ptr::read_unaligned(data.cast::<libc::c_int>()) as usize
                        }
                        (libc::SOL_SOCKET, libc::SO_RXQ_OVFL) => {
                            let count = std::ptr::read_unaligned(data.cast::<u32>());
                            match self.drops.iter_mut().find(|(f, _)| *f == fd) {
                                Some(entry) => entry.1 = count,
                                None => self.drops.push((fd, count)),
                            }
                        }
                        _ => {}
                    }
                    cmsg = libc::CMSG_NXTHDR(&m.msg_hdr, cmsg);
                }
            }
            self.received.push((m.msg_len as usize, segment));
        }
        Ok(n)
    }

    /// The datagrams taken by the last `recv`, GRO bundles split back into datagrams.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        (self.buf.chunks(RECV_SLOT).zip(&self.received)).flat_map(|(slot, &(len, segment))| {
            let (len, step) = Self::split(len, segment);
            slot[..len].chunks(step)
        })
    }

    /// The same datagrams, to be changed where they lie (a receiver opens
    /// DATA's cells in place).
    pub fn datagrams_mut(&mut self) -> impl Iterator<Item = &mut [u8]> {
        (self.buf.chunks_mut(RECV_SLOT).zip(&self.received)).flat_map(|(slot, &(len, segment))| {
            let (len, step) = Self::split(len, segment);
            slot[..len].chunks_mut(step)
        })
    }

    /// Copies the bytes the last `recv` took into `copy`, each at the offset it
    /// has in this receiver's buffer (`address`): bytes as they came, for
    /// when what `datagrams_mut` yields is changed where it lies.
    pub fn copy_received(&self, copy: &mut Vec<u8>) {
        copy.resize(self.buf.len(), 0);
        for (i, &(len, _)) in self.received.iter().enumerate() {
            let slot = i * RECV_SLOT..i * RECV_SLOT + len.min(RECV_SLOT);
            copy[slot.clone()].copy_from_slice(&self.buf[slot]);
        }
    }

    /// The address of this receiver's buffer: a datagram's bytes at address
    /// *a* are at offset *a* − this in `copy_received`'s copy.
    pub fn address(&self) -> usize {
        self.buf.as_ptr() as usize
    }

    /// Bytes a slot holds, and the length of each datagram in it.
    fn split(len: usize, segment: usize) -> (usize, usize) {
        let len = len.min(RECV_SLOT);
        (len, if segment == 0 { len.max(1) } else { segment })
    }

    /// Datagrams the kernel dropped on `socket` for want of buffer space, as last
    /// reported with a received datagram.
    pub fn kernel_drops(&self, socket: &impl AsRawFd) -> u32 {
        let fd = socket.as_raw_fd();
        self.drops
            .iter()
            .find(|(f, _)| *f == fd)
            .map_or(0, |&(_, count)| count)
    }

    /// Forgets the drop counter of a socket about to be closed (its fd may be reused).
    pub fn forget(&mut self, socket: &impl AsRawFd) {
        let fd = socket.as_raw_fd();
        self.drops.retain(|(f, _)| *f != fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    const V4: &str = "127.0.0.1:0";
    const V6: &str = "[::1]:0";

    fn pair(local: &str) -> (UdpSocket, UdpSocket, SocketAddr) {
        let rx = UdpSocket::bind(local).unwrap();
        rx.set_nonblocking(true).unwrap();
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind(local).unwrap();
        (tx, rx, to)
    }

    fn roundtrip(local: &str, want_gso: bool, want_gro: bool) {
        let (tx, rx, to) = pair(local);
        let gro = BatchReceiver::setup(&rx, want_gro);
        let mut sender = BatchSender::new(&tx, want_gso);
        // 40 datagrams of 1000 bytes and a short last one, each numbered.
        let mut buf = Vec::new();
        for i in 0..40u8 {
            buf.extend(std::iter::repeat_n(i, 1000));
        }
        buf.extend([99u8; 123]);
        sender.send(&tx, &buf, 1000, to).unwrap();
        let mut receiver = BatchReceiver::new();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut messages = 0;
        let start = std::time::Instant::now();
        while got.len() < 41 && start.elapsed() < std::time::Duration::from_secs(5) {
            match receiver.recv(&rx).unwrap() {
                0 => std::thread::sleep(std::time::Duration::from_millis(1)),
                n => messages += n,
            }
            got.extend(receiver.datagrams().map(|d| d.to_vec()));
        }
        assert_eq!(got.len(), 41, "{local} gso {want_gso} gro {gro}");
        // GSO out and GRO in: the batch crosses loopback as one bundle.
        assert_eq!(messages == 1, want_gso && gro, "{messages} messages");
        for (i, d) in got.iter().take(40).enumerate() {
            assert_eq!(d.len(), 1000);
            assert!(d.iter().all(|&b| b == i as u8));
        }
        assert_eq!(got[40], vec![99u8; 123]);
        assert_eq!(receiver.kernel_drops(&rx), 0);
    }

    #[test]
    fn batches_arrive_whole_and_in_order_with_and_without_gso_and_gro() {
        for local in [V4, V6] {
            roundtrip(local, true, true);
            roundtrip(local, true, false);
            roundtrip(local, false, true);
            roundtrip(local, false, false);
        }
    }

    #[test]
    fn gso_is_available_on_loopback() {
        for local in [V4, V6] {
            let (tx, _rx, _) = pair(local);
            assert!(BatchSender::new(&tx, true).gso());
            assert!(!BatchSender::new(&tx, false).gso());
        }
    }

    #[test]
    fn kernel_drops_are_counted_when_the_buffer_overflows() {
        let (tx, rx, to) = pair(V4);
        socket2::SockRef::from(&rx)
            .set_recv_buffer_size(4096)
            .unwrap();
        BatchReceiver::setup(&rx, false);
        let mut sender = BatchSender::new(&tx, false);
        let buf = vec![7u8; 1000 * 64];
        sender.send(&tx, &buf, 1000, to).unwrap();
        let mut receiver = BatchReceiver::new();
        let mut taken = 0;
        while receiver.recv(&rx).unwrap() > 0 {
            taken += receiver.datagrams().count();
        }
        assert!(taken < 64, "a 4 KiB buffer held all 64 datagrams");
        // The count rides on datagrams queued after the drops.
        sender.send(&tx, &[1u8; 10], 1000, to).unwrap();
        for _ in 0..1000 {
            if receiver.recv(&rx).unwrap() > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(receiver.kernel_drops(&rx) as usize, 64 - taken);
    }
}
