//! Sockets: interface resolution, multicast sender and receiver sockets, buffer sizing.

use crate::error::{Context, Error, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// Multicast TTL used unless `--ttl` says otherwise: stay on the LAN segment.
pub const DEFAULT_TTL: u32 = 1;
/// Smallest socket buffer we ask the kernel for.
pub const MIN_SOCKET_BUFFER: usize = 4 << 20;

/// Resolves `--interface`: an interface name or one of this host's IPv4 addresses.
/// `None` lets the kernel choose by its routing table.
pub fn resolve_interface(spec: Option<&str>) -> Result<Ipv4Addr> {
    let Some(spec) = spec else {
        return Ok(Ipv4Addr::UNSPECIFIED);
    };
    let addrs = if_addrs::get_if_addrs().context(|| "cannot list network interfaces".into())?;
    let v4 = |a: &if_addrs::Interface| match a.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        _ => None,
    };
    if let Ok(ip) = spec.parse::<Ipv4Addr>() {
        return addrs
            .iter()
            .filter_map(v4)
            .find(|a| *a == ip)
            .ok_or_else(|| {
                Error::new(format!(
                    "--interface {spec}: no interface of this host has that address"
                ))
            });
    }
    addrs
        .iter()
        .filter(|a| a.name == spec)
        .find_map(v4)
        .ok_or_else(|| {
            let mut names: Vec<_> = addrs
                .iter()
                .filter(|a| v4(a).is_some())
                .map(|a| a.name.clone())
                .collect();
            names.dedup();
            Error::new(format!(
                "--interface {spec}: no such interface with an IPv4 address (have: {})",
                names.join(", ")
            ))
        })
}

/// Sets an integer socket option; returns whether the kernel accepted it.
pub(crate) fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> bool {
    // SAFETY: setsockopt on a caller-owned fd with a pointer to a c_int of that length.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Socket buffer size for a stream of `rate_bps`: 50 ms of data, at least 4 MiB.
pub fn buffer_size_for_rate(rate_bps: u64) -> usize {
    ((rate_bps / 8 / 20) as usize).max(MIN_SOCKET_BUFFER)
}

/// Receive buffer size for DATA at `rate_bps`: 200 ms of data, at least 4 MiB. A
/// receiver shares its cores (with other receptions, its frame worker, other
/// programs) and the kernel charges each datagram's whole allocation, about
/// twice its payload: what a 50 ms buffer holds is gone in one lost time slice.
pub fn receive_buffer_for_rate(rate_bps: u64) -> usize {
    ((rate_bps / 8 / 5) as usize).max(MIN_SOCKET_BUFFER)
}

/// Asks for a buffer of `size` bytes, forcing past the sysctl limit when permitted
/// (root), and warns when the kernel granted less. Returns the size granted.
fn size_buffer(socket: &Socket, size: usize, receive: bool) -> usize {
    let (option, force) = if receive {
        (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE)
    } else {
        (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE)
    };
    let value = size.min(i32::MAX as usize / 2) as libc::c_int;
    for opt in [force, option] {
        if set_int_option(socket.as_raw_fd(), libc::SOL_SOCKET, opt, value) {
            break;
        }
    }
    let granted = if receive {
        socket.recv_buffer_size()
    } else {
        socket.send_buffer_size()
    }
    .unwrap_or(0);
    // Linux reports twice the requested size (it counts its bookkeeping).
    if granted < size {
        log::warn!(
            "{} buffer is {} bytes, less than the {} wanted; raise net.core.{}_max or run as root",
            if receive { "receive" } else { "send" },
            granted,
            size,
            if receive { "rmem" } else { "wmem" }
        );
    }
    granted
}

/// A blocking UDP socket that sends multicast out of `interface` with `ttl`.
pub fn multicast_sender(interface: Ipv4Addr, ttl: u32, send_buffer: usize) -> Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .context(|| "cannot create UDP socket".into())?;
    if !interface.is_unspecified() {
        socket
            .set_multicast_if_v4(&interface)
            .context(|| format!("cannot send multicast from {interface}"))?;
    }
    socket
        .set_multicast_ttl_v4(ttl)
        .context(|| "cannot set multicast TTL".into())?;
    socket
        .set_multicast_loop_v4(true)
        .context(|| "cannot enable multicast loop".into())?;
    size_buffer(&socket, send_buffer, false);
    socket
        .bind(&SocketAddrV4::new(interface, 0).into())
        .context(|| format!("cannot bind a sending socket to {interface}"))?;
    Ok(socket.into())
}

/// A non-blocking UDP socket bound to `group` and joined to it on `interface`.
/// Several receivers on one host can share a group (SO_REUSEADDR); binding to the
/// group address and IP_MULTICAST_ALL off keep other groups' traffic out.
pub fn multicast_receiver(
    group: SocketAddrV4,
    interface: Ipv4Addr,
    recv_buffer: usize,
) -> Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .context(|| "cannot create UDP socket".into())?;
    socket
        .set_reuse_address(true)
        .context(|| "cannot set SO_REUSEADDR".into())?;
    socket
        .set_multicast_all_v4(false)
        .context(|| "cannot clear IP_MULTICAST_ALL".into())?;
    size_buffer(&socket, recv_buffer, true);
    socket
        .bind(&group.into())
        .context(|| format!("cannot bind to {group}"))?;
    socket
        .join_multicast_v4(group.ip(), &interface)
        .context(|| format!("cannot join {} on interface {interface}", group.ip()))?;
    socket
        .set_nonblocking(true)
        .context(|| "cannot make socket non-blocking".into())?;
    Ok(socket.into())
}

/// The group `offset` addresses after `base`, on port base port + `offset`.
pub fn channel_for(base: SocketAddrV4, offset: u32) -> Result<SocketAddrV4> {
    let ip = u32::from(*base.ip())
        .checked_add(offset)
        .map(Ipv4Addr::from)
        .filter(|ip| ip.is_multicast());
    let port = base
        .port()
        .checked_add(u16::try_from(offset).unwrap_or(u16::MAX))
        .filter(|_| offset < u16::MAX as u32);
    match (ip, port) {
        (Some(ip), Some(port)) => Ok(SocketAddrV4::new(ip, port)),
        _ => Err(Error::new(format!(
            "too many files or rates for directory group {base}: channel {offset} would leave the multicast range"
        ))),
    }
}

/// Receives one datagram from a non-blocking socket into `buf`: `Ok(None)` once the
/// socket is drained (edge-triggered polls need that), retrying on EINTR.
pub fn recv_nonblocking(
    socket: &mio::net::UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<Option<usize>> {
    Ok(recv_from_nonblocking(socket, buf)?.map(|(n, _)| n))
}

/// `recv_nonblocking` that also says where the datagram came from (IPv4 only; others
/// are skipped).
pub fn recv_from_nonblocking(
    socket: &mio::net::UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<Option<(usize, SocketAddrV4)>> {
    loop {
        match socket.recv_from(buf) {
            Ok((n, std::net::SocketAddr::V4(from))) => return Ok(Some((n, from))),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A non-blocking UDP socket for unicast on `interface:port` (port 0: any free one;
/// unspecified interface: every address of the host).
pub fn unicast_socket(interface: Ipv4Addr, port: u16, buffer: usize) -> Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .context(|| "cannot create UDP socket".into())?;
    size_buffer(&socket, buffer, true);
    size_buffer(&socket, buffer, false);
    let local = SocketAddrV4::new(interface, port);
    socket
        .bind(&local.into())
        .context(|| format!("cannot bind a unicast socket to {local}"))?;
    socket
        .set_nonblocking(true)
        .context(|| "cannot make socket non-blocking".into())?;
    Ok(socket.into())
}

/// Distance between a channel's data port and its control (NAK) port.
pub const CONTROL_PORT_OFFSET: u16 = 10000;

/// The control port of a channel: NAKs go to the channel's group on this port, so the
/// server reads NAKs without reading its own data stream.
pub fn control_port_for(channel: SocketAddrV4) -> Result<u16> {
    channel
        .port()
        .checked_add(CONTROL_PORT_OFFSET)
        .ok_or_else(|| {
            Error::new(format!(
                "channel port {} leaves no room for its control port (+{CONTROL_PORT_OFFSET})",
                channel.port()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolves_by_name_and_address_and_bad_ones_fail() {
        assert_eq!(resolve_interface(Some("lo")).unwrap(), Ipv4Addr::LOCALHOST);
        assert_eq!(
            resolve_interface(Some("127.0.0.1")).unwrap(),
            Ipv4Addr::LOCALHOST
        );
        assert!(resolve_interface(Some("no-such-if0")).is_err());
        assert!(resolve_interface(Some("192.0.2.77")).is_err());
        assert!(resolve_interface(None).unwrap().is_unspecified());
    }

    #[test]
    fn channels_follow_the_directory_group() {
        let base: SocketAddrV4 = "239.255.77.1:7700".parse().unwrap();
        assert_eq!(
            channel_for(base, 1).unwrap(),
            "239.255.77.2:7701".parse().unwrap()
        );
        assert!(channel_for("239.255.255.255:7700".parse().unwrap(), 1).is_err());
    }
}
