//! Sockets: interface resolution, multicast sender and receiver sockets, buffer sizing.

use crate::error::{Context, Error, Result};
use loopcast_proto::codec::ip_after;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// Multicast TTL used unless `--ttl` says otherwise: stay on the LAN segment.
pub const DEFAULT_TTL: u32 = 1;
/// Smallest socket buffer we ask the kernel for.
pub const MIN_SOCKET_BUFFER: usize = 4 << 20;

/// The interface `--interface` names: its addresses (sources and unicast
/// sockets) and its index (IPv6 groups and link-local addresses). Unnamed, all
/// is left to the kernel's routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interface {
    /// Its IPv4 address; None when none was named or it has none.
    pub v4: Option<Ipv4Addr>,
    /// Its IPv6 address, a global or unique-local one before a link-local one;
    /// None when none was named or it has none.
    pub v6: Option<Ipv6Addr>,
    /// Its index; 0 when none was named.
    pub index: u32,
}

impl Interface {
    /// The kernel chooses.
    pub const ANY: Interface = Interface {
        v4: None,
        v6: None,
        index: 0,
    };

    /// The local address for unicast (or a multicast sender) in `family`'s
    /// family on `port` (0: any free one): this interface's address, or every
    /// address of the host when none was named.
    pub fn local(&self, family: SocketAddr, port: u16) -> Result<SocketAddr> {
        Ok(match family {
            SocketAddr::V4(_) => (self.v4_or_any()?, port).into(),
            SocketAddr::V6(_) => match (self.v6, self.index) {
                (Some(ip), _) => self.scoped((ip, port).into()),
                (None, 0) => (Ipv6Addr::UNSPECIFIED, port).into(),
                (None, _) => {
                    return Err(Error::new(
                        "the --interface named has no IPv6 address; give an IPv4 group or another interface"
                            .to_string(),
                    ));
                }
            },
        })
    }

    /// Whether unicast sockets bind every address of the host in `family`'s family.
    pub fn binds_every_address(&self, family: SocketAddr) -> bool {
        match family {
            SocketAddr::V4(_) => self.v4.is_none(),
            SocketAddr::V6(_) => self.v6.is_none(),
        }
    }

    /// The IPv4 address to send and join IPv4 groups from.
    fn v4_or_any(&self) -> Result<Ipv4Addr> {
        match (self.v4, self.index) {
            (Some(ip), _) => Ok(ip),
            (None, 0) => Ok(Ipv4Addr::UNSPECIFIED),
            (None, _) => Err(Error::new(
                "the --interface named has no IPv4 address; give an IPv6 group or another interface"
                    .to_string(),
            )),
        }
    }

    /// The address a datagram from `from` is known by: a link-local IPv6 source
    /// on this interface loses its scope id, so that it compares equal to the
    /// same address learnt from a packet (which carries no scope).
    pub fn unscoped(&self, from: SocketAddr) -> SocketAddr {
        match from {
            SocketAddr::V6(mut v6) => {
                v6.set_flowinfo(0);
                if self.index != 0 && v6.scope_id() == self.index {
                    v6.set_scope_id(0);
                }
                SocketAddr::V6(v6)
            }
            v4 => v4,
        }
    }

    /// Where to send a datagram for `to`, or bind a group: a link-local IPv6
    /// address (or an interface- or link-local group) without a scope is taken
    /// to be on this interface.
    pub fn scoped(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V6(mut v6) if v6.scope_id() == 0 && needs_scope(v6.ip()) => {
                v6.set_scope_id(self.index);
                SocketAddr::V6(v6)
            }
            other => other,
        }
    }
}

/// "lo (127.0.0.1)", or "the kernel's choice of interface" when none was named.
impl std::fmt::Display for Interface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.index == 0 && self.v4.is_none() && self.v6.is_none() {
            return f.write_str("the kernel's choice of interface");
        }
        let mut name = [0u8; libc::IF_NAMESIZE];
        // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL included.
        let found =
            unsafe { !libc::if_indextoname(self.index, name.as_mut_ptr().cast()).is_null() };
        let end = name.iter().position(|&b| b == 0).unwrap_or(0);
        let name = match found {
            true => String::from_utf8_lossy(&name[..end]).into_owned(),
            false => format!("interface {}", self.index),
        };
        let addresses: Vec<String> = (self.v4.map(|a| a.to_string()).into_iter())
            .chain(self.v6.map(|a| a.to_string()))
            .collect();
        write!(f, "{name} ({})", addresses.join(", "))
    }
}

fn is_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// Link-local unicast, or a multicast group of interface- or link-local scope:
/// an address that means something only on one interface.
fn needs_scope(ip: &Ipv6Addr) -> bool {
    is_link_local(ip) || (ip.is_multicast() && matches!(ip.segments()[0] & 0xf, 1 | 2))
}

/// Resolves `--interface`: an interface name, or one of this host's IPv4 or
/// IPv6 addresses. `None` lets the kernel choose by its routing table.
pub fn resolve_interface(spec: Option<&str>) -> Result<Interface> {
    let Some(spec) = spec else {
        return Ok(Interface::ANY);
    };
    let addrs = if_addrs::get_if_addrs().context(|| "cannot list network interfaces".into())?;
    let name = if let Ok(ip) = spec.parse::<IpAddr>() {
        let found = addrs.iter().find(|a| a.ip() == ip).ok_or_else(|| {
            Error::new(format!(
                "--interface {spec}: no interface of this host has that address"
            ))
        })?;
        found.name.clone()
    } else if addrs.iter().any(|a| a.name == spec) {
        spec.to_string()
    } else {
        let mut names: Vec<_> = addrs.iter().map(|a| a.name.clone()).collect();
        names.dedup();
        return Err(Error::new(format!(
            "--interface {spec}: no such interface with an address (have: {})",
            names.join(", ")
        )));
    };
    let ips = || addrs.iter().filter(|a| a.name == name).map(|a| a.ip());
    let v4 = ips().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    });
    let v6s = || {
        ips().filter_map(|ip| match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        })
    };
    let v6 = v6s().find(|ip| !is_link_local(ip)).or_else(|| v6s().next());
    let index = addrs
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| a.index)
        .unwrap_or(0);
    if index == 0 {
        return Err(Error::new(format!(
            "--interface {spec}: the kernel gives {name} no index"
        )));
    }
    Ok(Interface { v4, v6, index })
}

fn domain_of(addr: SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn udp_socket(family: SocketAddr) -> Result<Socket> {
    let socket = Socket::new(domain_of(family), Type::DGRAM, Some(Protocol::UDP))
        .context(|| "cannot create UDP socket".into())?;
    if family.is_ipv6() {
        // An IPv6 socket hears IPv6 only; IPv4 has its own sockets.
        socket
            .set_only_v6(true)
            .context(|| "cannot set IPV6_V6ONLY".into())?;
    }
    Ok(socket)
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

/// A blocking UDP socket that sends multicast of `group`'s family out of
/// `interface` with `ttl` (the hop limit on IPv6).
pub fn multicast_sender(
    group: SocketAddr,
    interface: Interface,
    ttl: u32,
    send_buffer: usize,
) -> Result<UdpSocket> {
    let socket = udp_socket(group)?;
    match group {
        SocketAddr::V4(_) => {
            let ip = interface.v4_or_any()?;
            if !ip.is_unspecified() {
                socket
                    .set_multicast_if_v4(&ip)
                    .context(|| format!("cannot send multicast from {ip}"))?;
            }
            socket
                .set_multicast_ttl_v4(ttl)
                .context(|| "cannot set multicast TTL".into())?;
            socket
                .set_multicast_loop_v4(true)
                .context(|| "cannot enable multicast loop".into())?;
        }
        SocketAddr::V6(_) => {
            if interface.index != 0 {
                socket.set_multicast_if_v6(interface.index).context(|| {
                    format!("cannot send multicast on interface {}", interface.index)
                })?;
            }
            socket
                .set_multicast_hops_v6(ttl)
                .context(|| "cannot set the multicast hop limit".into())?;
            socket
                .set_multicast_loop_v6(true)
                .context(|| "cannot enable multicast loop".into())?;
        }
    }
    // Bound like the unicast socket, so that receivers answer the address
    // that socket listens on.
    let local = interface.local(group, 0)?;
    size_buffer(&socket, send_buffer, false);
    socket
        .bind(&local.into())
        .context(|| format!("cannot bind a sending socket to {local}"))?;
    Ok(socket.into())
}

/// Joins `group` on `socket` on `interface`.
pub fn join(socket: &Socket, group: IpAddr, interface: Interface) -> Result<()> {
    match group {
        IpAddr::V4(g) => {
            let ip = interface.v4_or_any()?;
            socket
                .join_multicast_v4(&g, &ip)
                .context(|| format!("cannot join {g} on interface {ip}"))
        }
        IpAddr::V6(g) => socket
            .join_multicast_v6(&g, interface.index)
            .context(|| format!("cannot join {g} on interface index {}", interface.index)),
    }
}

/// A non-blocking UDP socket bound to `group` and joined to it on `interface`.
/// Several receivers on one host can share a group (SO_REUSEADDR); binding to the
/// group address and IP_MULTICAST_ALL off keep other groups' traffic out.
pub fn multicast_receiver(
    group: SocketAddr,
    interface: Interface,
    recv_buffer: usize,
) -> Result<UdpSocket> {
    let socket = udp_socket(group)?;
    socket
        .set_reuse_address(true)
        .context(|| "cannot set SO_REUSEADDR".into())?;
    if group.is_ipv4() {
        socket
            .set_multicast_all_v4(false)
            .context(|| "cannot clear IP_MULTICAST_ALL".into())?;
    } else {
        socket
            .set_multicast_all_v6(false)
            .context(|| "cannot clear IPV6_MULTICAST_ALL".into())?;
    }
    size_buffer(&socket, recv_buffer, true);
    let bound = interface.scoped(group);
    socket
        .bind(&bound.into())
        .context(|| format!("cannot bind to {bound}"))?;
    join(&socket, group.ip(), interface)?;
    socket
        .set_nonblocking(true)
        .context(|| "cannot make socket non-blocking".into())?;
    Ok(socket.into())
}

/// The group `offset` addresses after `base`, on port base port + `offset`. An
/// IPv6 group keeps its flags and scope (its first two bytes).
pub fn channel_for(base: SocketAddr, offset: u32) -> Result<SocketAddr> {
    let same_prefix = |ip: &IpAddr| match (ip, base.ip()) {
        (IpAddr::V6(ip), IpAddr::V6(b)) => ip.segments()[0] == b.segments()[0],
        _ => true,
    };
    let ip = ip_after(base.ip(), offset).filter(|ip| ip.is_multicast() && same_prefix(ip));
    let port = base
        .port()
        .checked_add(u16::try_from(offset).unwrap_or(u16::MAX))
        .filter(|_| offset < u16::MAX as u32);
    match (ip, port) {
        (Some(ip), Some(port)) => Ok(SocketAddr::new(ip, port)),
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

/// `recv_nonblocking` that also says where the datagram came from.
pub fn recv_from_nonblocking(
    socket: &mio::net::UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<Option<(usize, SocketAddr)>> {
    loop {
        match socket.recv_from(buf) {
            Ok((n, from)) => return Ok(Some((n, from))),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A non-blocking UDP socket for unicast bound to `local`.
pub fn unicast_socket(local: SocketAddr, buffer: usize) -> Result<UdpSocket> {
    let socket = udp_socket(local)?;
    size_buffer(&socket, buffer, true);
    size_buffer(&socket, buffer, false);
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
pub fn control_port_for(channel: SocketAddr) -> Result<u16> {
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
        let lo = resolve_interface(Some("lo")).unwrap();
        assert_eq!(lo.v4, Some(Ipv4Addr::LOCALHOST));
        assert_ne!(lo.index, 0);
        assert_eq!(resolve_interface(Some("127.0.0.1")).unwrap(), lo);
        assert_eq!(resolve_interface(Some("::1")).unwrap(), lo);
        assert!(resolve_interface(Some("no-such-if0")).is_err());
        assert!(resolve_interface(Some("192.0.2.77")).is_err());
        assert!(resolve_interface(Some("2001:db8::77")).is_err());
        assert_eq!(resolve_interface(None).unwrap(), Interface::ANY);
    }

    #[test]
    fn link_local_addresses_take_the_interface_scope_and_lose_it_coming_in() {
        let interface = Interface {
            index: 7,
            ..Interface::ANY
        };
        let bare: SocketAddr = "[fe80::1]:7000".parse().unwrap();
        let scoped: SocketAddr = "[fe80::1%7]:7000".parse().unwrap();
        assert_eq!(interface.scoped(bare), scoped);
        assert_eq!(interface.unscoped(scoped), bare);
        let global: SocketAddr = "[fd00::1]:7000".parse().unwrap();
        assert_eq!(interface.scoped(global), global);
        let link_group: SocketAddr = "[ff12::77]:7000".parse().unwrap();
        assert_eq!(
            interface.scoped(link_group),
            "[ff12::77%7]:7000".parse().unwrap()
        );
        let site_group: SocketAddr = "[ff15::77]:7000".parse().unwrap();
        assert_eq!(interface.scoped(site_group), site_group);
        let elsewhere: SocketAddr = "[fe80::1%8]:7000".parse().unwrap();
        assert_eq!(interface.unscoped(elsewhere), elsewhere);
    }

    #[test]
    fn channels_follow_the_directory_group() {
        let base: SocketAddr = "239.255.77.1:7700".parse().unwrap();
        assert_eq!(
            channel_for(base, 1).unwrap(),
            "239.255.77.2:7701".parse().unwrap()
        );
        assert!(channel_for("239.255.255.255:7700".parse().unwrap(), 1).is_err());
        let base: SocketAddr = "[ff15::77]:7700".parse().unwrap();
        assert_eq!(
            channel_for(base, 2).unwrap(),
            "[ff15::79]:7702".parse().unwrap()
        );
        let top: SocketAddr = "[ff15:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:7700"
            .parse()
            .unwrap();
        assert!(channel_for(top, 1).is_err());
    }
}
