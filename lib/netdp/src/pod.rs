use crate::netlink::{Link, Netlink, Route};
use crate::netns::{in_netns_async, NetnsFile};
use crate::{NetdpError, Result};
use std::net::Ipv4Addr;
use std::path::Path;

/// The veth pair of one attachment.
#[derive(Clone, Debug)]
pub struct VethSpec {
    pub host_ifname: String,
    pub sandbox_ifname: String,
    pub mtu: u32,
    pub sandbox_mac: Option<[u8; 6]>,
}

/// Layer-3 setup of the sandbox end.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub ifname: String,
    /// Replaces the interface's MAC before it goes up (the veth may be made
    /// before the address, and so its MAC, is known).
    pub mac: Option<[u8; 6]>,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// `arp_notify=1`: the kernel announces the address on link changes.
    pub arp_notify: bool,
    /// Checksum transmitted packets in software (needed when the peer sits
    /// on a userspace switch datapath, see [`set_tx_checksum`](crate::set_tx_checksum)).
    pub software_tx_checksum: bool,
}

/// An interface as seen from inside its namespace, with the routes through it.
#[derive(Clone, Debug)]
pub struct IfaceState {
    pub link: Link,
    pub addrs: Vec<(Ipv4Addr, u8)>,
    pub routes: Vec<Route>,
}

/// Creates the pair with the sandbox end born inside `ns`, brings the host
/// end up and returns (host, sandbox). Fails with `LinkExists` before
/// touching anything if the sandbox name is taken.
pub async fn create_veth(
    host: &Netlink,
    sandbox: &Netlink,
    ns: &NetnsFile,
    spec: &VethSpec,
) -> Result<(Link, Link)> {
    if sandbox.link_by_name(&spec.sandbox_ifname).await?.is_some() {
        return Err(NetdpError::LinkExists(format!(
            "{} in {}",
            spec.sandbox_ifname,
            ns.path().display()
        )));
    }
    host.add_veth(
        &spec.host_ifname,
        &spec.sandbox_ifname,
        ns,
        spec.mtu,
        spec.sandbox_mac,
    )
    .await?;
    let host_link = host
        .link_by_name(&spec.host_ifname)
        .await?
        .ok_or_else(|| NetdpError::LinkMissing(spec.host_ifname.clone()))?;
    let sandbox_link = sandbox
        .link_by_name(&spec.sandbox_ifname)
        .await?
        .ok_or_else(|| NetdpError::LinkMissing(spec.sandbox_ifname.clone()))?;
    Ok((host_link, sandbox_link))
}

/// MAC and arp_notify (before link-up, so the up event is announced),
/// address, link up, default route. Returns the link as it is then.
pub async fn configure_sandbox(
    sandbox: &Netlink,
    ns: &NetnsFile,
    cfg: &SandboxConfig,
) -> Result<Link> {
    let link = sandbox
        .link_by_name(&cfg.ifname)
        .await?
        .ok_or_else(|| NetdpError::LinkMissing(cfg.ifname.clone()))?;
    // The sysctl and the checksum setting need the namespace's thread, the
    // address a netlink request: both only have to precede link-up.
    let (tuned, addressed) = tokio::join!(
        tune(ns, cfg),
        sandbox.add_ipv4(link.index, cfg.ip, cfg.prefix_len)
    );
    tuned?;
    addressed?;
    sandbox.set_mac_and_up(link.index, cfg.mac).await?;
    if let Some(gw) = cfg.gateway {
        sandbox.add_default_route(link.index, gw).await?;
    }
    Ok(Link {
        mac: cfg.mac.or(link.mac),
        up: true,
        ..link
    })
}

/// `arp_notify` and software checksums, as `cfg` asks.
async fn tune(ns: &NetnsFile, cfg: &SandboxConfig) -> Result<()> {
    if !cfg.arp_notify && !cfg.software_tx_checksum {
        return Ok(());
    }
    let (notify, sw_csum) = (cfg.arp_notify, cfg.software_tx_checksum);
    let key = format!("net/ipv4/conf/{}/arp_notify", cfg.ifname);
    let ifname = cfg.ifname.clone();
    in_netns_async(ns, move || -> Result<()> {
        if notify {
            std::fs::write(format!("/proc/sys/{key}"), b"1")
                .map_err(|source| NetdpError::Sysctl { key, source })?;
        }
        if sw_csum {
            crate::set_tx_checksum(&ifname, false)
                .map_err(|source| NetdpError::Ethtool { ifname, source })?;
        }
        Ok(())
    })
    .await?
}

/// The interface `ifname`, its IPv4 addresses and the routes through it.
pub async fn inspect(nl: &Netlink, ifname: &str) -> Result<Option<IfaceState>> {
    let Some(link) = nl.link_by_name(ifname).await? else {
        return Ok(None);
    };
    let addrs = nl.ipv4_addrs(link.index).await?;
    let routes = nl
        .ipv4_routes()
        .await?
        .into_iter()
        .filter(|r| r.oif == Some(link.index))
        .collect();
    Ok(Some(IfaceState {
        link,
        addrs,
        routes,
    }))
}

/// True when the namespace at `path` exists and its `ifname` holds `ip`.
/// A namespace that is gone is simply "no". Meant for liveness scans.
pub async fn netns_has_ipv4(path: &Path, ifname: &str, ip: Ipv4Addr) -> Result<bool> {
    let ns = match NetnsFile::open(path) {
        Ok(ns) => ns,
        Err(NetdpError::NetnsMissing(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    let nl = Netlink::in_netns(&ns).await?;
    let Some(link) = nl.link_by_name(ifname).await? else {
        return Ok(false);
    };
    Ok(nl
        .ipv4_addrs(link.index)
        .await?
        .iter()
        .any(|(a, _)| *a == ip))
}

/// Deletes `ifname` inside the namespace at `path`; a namespace or an
/// interface already gone is `Ok(false)`. The attachment teardown
/// (`leengine-attach`) uses it for a sandbox end left without its peer.
pub async fn del_link_in(path: &Path, ifname: &str) -> Result<bool> {
    let ns = match NetnsFile::open(path) {
        Ok(ns) => ns,
        Err(NetdpError::NetnsMissing(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    Netlink::in_netns(&ns).await?.del_link(ifname).await
}
