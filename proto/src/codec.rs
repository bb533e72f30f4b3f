//! Bounds-checked big-endian reader used by every decoder, so none can panic,
//! and the one encoding of an address that every packet carrying one uses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Family byte of an IPv4 address on the wire.
pub const FAMILY_V4: u8 = 4;
/// Family byte of an IPv6 address on the wire.
pub const FAMILY_V6: u8 = 6;

/// Cursor over a byte slice; every read checks the remaining length.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

/// A decoder ran out of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.bytes.len() < n {
            return Err(Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian i64.
    pub fn i64(&mut self) -> Result<i64, Truncated> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// Reads an address: a family byte (4 or 6), then 4 or 16 bytes. Any
    /// other family byte is `None`.
    pub fn ip(&mut self) -> Result<Option<IpAddr>, Truncated> {
        Ok(match self.u8()? {
            FAMILY_V4 => Some(Ipv4Addr::from(self.array::<4>()?).into()),
            FAMILY_V6 => Some(Ipv6Addr::from(self.array::<16>()?).into()),
            _ => None,
        })
    }

    /// Reads an address (`ip`) and a port.
    pub fn socket_addr(&mut self) -> Result<Option<SocketAddr>, Truncated> {
        let ip = self.ip()?;
        let port = self.u16()?;
        Ok(ip.map(|ip| SocketAddr::new(ip, port)))
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Appends `ip` as `Reader::ip` reads it: a family byte, then its bytes.
pub fn put_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            buf.push(FAMILY_V4);
            buf.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            buf.push(FAMILY_V6);
            buf.extend_from_slice(&v6.octets());
        }
    }
}

/// Appends `addr` as `Reader::socket_addr` reads it. A scope id is not sent: it
/// names an interface of the sender, which means nothing to the reader.
pub fn put_socket_addr(buf: &mut Vec<u8>, addr: SocketAddr) {
    put_ip(buf, addr.ip());
    buf.extend_from_slice(&addr.port().to_be_bytes());
}

/// Bytes `put_socket_addr` writes for `addr`.
pub fn socket_addr_len(addr: SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

/// The address `n` after `base`, in its family, if that does not wrap.
pub fn ip_after(base: IpAddr, n: u32) -> Option<IpAddr> {
    match base {
        IpAddr::V4(v4) => u32::from(v4)
            .checked_add(n)
            .map(|ip| Ipv4Addr::from(ip).into()),
        IpAddr::V6(v6) => u128::from(v6)
            .checked_add(n.into())
            .map(|ip| Ipv6Addr::from(ip).into()),
    }
}

/// How many addresses `ip` lies after `base`: `None` when it lies before, in
/// another family, or more than `u32::MAX` away.
pub fn ip_distance(base: IpAddr, ip: IpAddr) -> Option<u32> {
    match (base, ip) {
        (IpAddr::V4(b), IpAddr::V4(i)) => u32::from(i).checked_sub(u32::from(b)),
        (IpAddr::V6(b), IpAddr::V6(i)) => u128::from(i)
            .checked_sub(u128::from(b))
            .and_then(|d| u32::try_from(d).ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_back_as_written_and_unknown_families_are_none() {
        for addr in ["10.1.2.3:7000", "[ff15::77]:7700", "[fd00::1]:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut buf = Vec::new();
            put_socket_addr(&mut buf, addr);
            assert_eq!(buf.len(), socket_addr_len(addr));
            assert_eq!(Reader::new(&buf).socket_addr(), Ok(Some(addr)));
            assert_eq!(
                Reader::new(&buf[..buf.len() - 1]).socket_addr(),
                Err(Truncated)
            );
        }
        assert_eq!(Reader::new(&[5, 0, 0, 0, 0, 0, 0]).socket_addr(), Ok(None));
    }

    #[test]
    fn channel_arithmetic_works_in_both_families() {
        let v6: IpAddr = "ff15::77".parse().unwrap();
        let after = ip_after(v6, 3).unwrap();
        assert_eq!(after, "ff15::7a".parse::<IpAddr>().unwrap());
        assert_eq!(ip_distance(v6, after), Some(3));
        assert_eq!(ip_distance(after, v6), None);
        let v4: IpAddr = "239.1.2.3".parse().unwrap();
        assert_eq!(ip_distance(v4, ip_after(v4, 9).unwrap()), Some(9));
        assert_eq!(ip_distance(v4, v6), None);
        assert_eq!(ip_after("255.255.255.255".parse().unwrap(), 1), None);
    }
}
