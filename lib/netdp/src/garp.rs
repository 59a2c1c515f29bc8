use crate::netns::{in_netns_async, NetnsFile};
use crate::{NetdpError, Result};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// What to announce, where, how often.
#[derive(Clone, Debug)]
pub struct GarpSpec {
    pub ifname: String,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub count: u32,
    pub interval: Duration,
}

/// A gratuitous ARP request (`arping -U` style): broadcast, sender and
/// target protocol address both `ip`, so every neighbour and switch on the
/// segment refreshes `ip -> mac`.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // op: request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&[0u8; 6]);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// A raw AF_PACKET socket opened inside a pod's namespace. A socket keeps
/// the namespace it was made in, so it sends there from any thread, without
/// another namespace switch.
#[derive(Debug)]
pub struct GarpSocket(OwnedFd);

impl GarpSocket {
    /// Opens the socket in the calling thread's namespace.
    pub(crate) fn open_here() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// One gratuitous ARP for `ip` out of interface `ifindex`.
    pub fn send(&self, ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET is 17");
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&BROADCAST);
        let frame = garp_frame(mac, ip);
        // SAFETY: buffer and address point to live, correctly sized values.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                socklen_of::<libc::sockaddr_ll>(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Sends `spec.count` gratuitous ARPs from inside `ns`, `spec.interval` apart.
pub async fn send_garp(ns: &NetnsFile, spec: GarpSpec) -> Result<()> {
    let err = |source| NetdpError::Garp {
        ifname: spec.ifname.clone(),
        source,
    };
    let ifname = spec.ifname.clone();
    let (sock, ifindex) = in_netns_async(ns, move || -> io::Result<_> {
        let ifindex = nix::net::if_::if_nametoindex(ifname.as_str())?;
        Ok((GarpSocket::open_here()?, ifindex))
    })
    .await?
    .map_err(err)?;
    for i in 0..spec.count {
        if i > 0 {
            tokio::time::sleep(spec.interval).await;
        }
        sock.send(ifindex, spec.mac, spec.ip).map_err(err)?;
    }
    Ok(())
}

/// `size_of::<T>()` as a socket address length; every sockaddr fits.
fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).expect("a sockaddr is small")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_a_broadcast_arp_request_for_itself() {
        let mac = [0x0a, 0x4c, 10, 0, 0, 5];
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        let f = garp_frame(mac, ip);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[10, 0, 0, 5]);
        assert_eq!(&f[38..42], &[10, 0, 0, 5]);
    }
}
