use crate::netns::{in_netns_async, NetnsFile};
use crate::{NetdpError, Result};
use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;
const ESRCH: i32 = libc::ESRCH;
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

/// A route-netlink connection bound to one network namespace for its life.
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// What the kernel says about an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
}

/// An IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub dst_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl Netlink {
    /// A socket in the caller's namespace (the host). Needs a Tokio runtime.
    pub fn host() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetdpError::Socket)?;
        Ok(Self {
            handle,
            conn: tokio::spawn(conn),
        })
    }

    /// A socket opened inside `ns` on a helper thread; every request made
    /// through it acts in `ns`, with no further namespace switching. The
    /// caller's task waits without blocking its thread: ADD opens the
    /// sandbox's socket while its address is being taken.
    pub async fn in_netns(ns: &NetnsFile) -> Result<Self> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = in_netns_async(ns, move || {
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })
        .await?
        .map_err(NetdpError::Socket)?;
        Ok(Self {
            handle,
            conn: tokio::spawn(conn),
        })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut req = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match req.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_from_msg(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(NetdpError::netlink(format!("get link {name}"), e)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut req = self.handle.link().get().match_index(index).execute();
        match req.try_next().await {
            Ok(m) => Ok(m.as_ref().map(link_from_msg)),
            Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(NetdpError::netlink(format!("get link #{index}"), e)),
        }
    }

    /// Creates veth `name` here, already up (one request fewer than setting
    /// it up after), with its peer `peer` created directly in `peer_ns`
    /// (down), both with `mtu`; the peer gets `peer_mac` if given.
    pub async fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_ns: &NetnsFile,
        mtu: u32,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<()> {
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(peer_ns.raw_fd());
        if let Some(mac) = peer_mac {
            peer_msg = peer_msg.address(mac.to_vec());
        }
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .mtu(mtu)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(EEXIST) => Err(NetdpError::LinkExists(format!(
                "{name} (host) or {peer} (sandbox)"
            ))),
            Err(e) => Err(NetdpError::netlink(format!("add veth {name}/{peer}"), e)),
        }
    }

    /// Sets the link up, with its MAC replaced first when `mac` is given:
    /// one request, so the link never goes up with the old MAC.
    pub async fn set_mac_and_up(&self, index: u32, mac: Option<[u8; 6]>) -> Result<()> {
        let mut msg = LinkUnspec::new_with_index(index).up();
        if let Some(mac) = mac {
            msg = msg.address(mac.to_vec());
        }
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| NetdpError::netlink(format!("set link #{index} up"), e))
    }

    pub async fn add_ipv4(&self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix_len)
            .execute()
            .await
            .map_err(|e| NetdpError::netlink(format!("add address {ip}/{prefix_len}"), e))
    }

    pub async fn ipv4_addrs(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetdpError::netlink(format!("list addresses of #{index}"), e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index && m.header.family == AddressFamily::Inet)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    pub async fn add_default_route(&self, index: u32, gateway: Ipv4Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| NetdpError::netlink(format!("add default route via {gateway}"), e))
    }

    /// IPv4 routes of the main table.
    pub async fn ipv4_routes(&self) -> Result<Vec<Route>> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetdpError::netlink("list routes", e))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.address_family == AddressFamily::Inet
                    && m.header.table == RouteHeader::RT_TABLE_MAIN
            })
            .map(route_from_msg)
            .collect())
    }

    /// Deletes an interface by name; `Ok(false)` if it was not there.
    pub async fn del_link(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno_of(&e), Some(ENODEV | ESRCH | EADDRNOTAVAIL)) => Ok(false),
            Err(e) => Err(NetdpError::netlink(format!("delete link {name}"), e)),
        }
    }
}

fn link_from_msg(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(a);
                link.mac = Some(mac);
            }
            _ => {}
        }
    }
    link
}

fn route_from_msg(msg: &RouteMessage) -> Route {
    let mut r = Route {
        dst: Ipv4Addr::UNSPECIFIED,
        dst_len: msg.header.destination_prefix_length,
        gateway: None,
        oif: None,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => r.dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.gateway = Some(*ip),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            _ => {}
        }
    }
    r
}
