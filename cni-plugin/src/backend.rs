//! Connections to etcd (IPAM) and OVSDB, with their failures mapped to CNI codes.

use crate::config::NetConf;
use crate::error::{CniError, CniResult, INVALID_CONFIG, TRY_AGAIN_LATER};
use leengine_ipam::Ipam;
use leengine_netdp::{NetdpError, Netlink, NetnsFile};
use leengine_ovsdb::Client as Ovs;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long the follow-up after ADD waits for ovs-vswitchd to give the
/// port an OpenFlow number.
pub const OFPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-request limit for etcd and OVSDB: a dead server must turn into
/// "try again later" quickly, not hang the runtime.
const TIMEOUT: Duration = Duration::from_secs(3);

/// external_ids keys on the OVS port of every attachment.
pub use leengine_ovsdb::vswitch::ext_ids::{
    CONTAINER_ID as EXT_CONTAINER, IFNAME as EXT_IFNAME, IP as EXT_IP, NETWORK as EXT_NETWORK,
    OWNER as EXT_OWNER, OWNER_CNI as OWNER, POD_NAME as EXT_POD_NAME, POD_NAMESPACE as EXT_POD_NS,
};

pub async fn ovs(conf: &NetConf) -> CniResult<Ovs> {
    ovs_at(&conf.ovsdb).await
}

/// OVSDB at `url` (`unix:PATH`, `tcp:HOST:PORT`).
pub async fn ovs_at(url: &str) -> CniResult<Ovs> {
    let opts = leengine_ovsdb::Options {
        connect_timeout: TIMEOUT,
        request_timeout: TIMEOUT,
    };
    Ovs::connect_with(url, opts).await.map_err(CniError::from)
}

pub async fn ipam(conf: &NetConf) -> CniResult<Ipam> {
    let client = leengine_store::connect_with_timeout(&conf.etcd, TIMEOUT)
        .await
        .map_err(|e| {
            let code = match e {
                leengine_store::StoreError::Unavailable { .. } => TRY_AGAIN_LATER,
                _ => INVALID_CONFIG,
            };
            CniError::new(code, format!("etcd: {e}"))
        })?;
    Ok(Ipam::new(client, conf.etcd.keys(), node_name(conf)?))
}

/// A netlink socket in the namespace of the host veth ends (`hostNetns`).
pub fn host_netlink(conf: &NetConf) -> CniResult<Netlink> {
    match &conf.host_netns {
        None => Ok(Netlink::host()?),
        Some(p) => match NetnsFile::open(p) {
            Ok(ns) => Ok(Netlink::in_netns(&ns)?),
            Err(NetdpError::NetnsMissing(_)) => Err(CniError::new(
                INVALID_CONFIG,
                format!("hostNetns {} does not exist", p.display()),
            )),
            Err(e) => Err(e.into()),
        },
    }
}

/// The configured node name, else the host name.
pub fn node_name(conf: &NetConf) -> CniResult<String> {
    if let Some(n) = &conf.node {
        return Ok(n.clone());
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            CniError::new(
                INVALID_CONFIG,
                "no \"node\" configured and the host name is unreadable",
            )
        })
}

#[derive(Debug)]
pub struct PortIds<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub pod_namespace: Option<&'a str>,
    pub pod_name: Option<&'a str>,
    pub ip: std::net::Ipv4Addr,
}

pub fn external_ids(ids: &PortIds<'_>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(EXT_OWNER.into(), OWNER.into());
    m.insert(EXT_NETWORK.into(), ids.network.into());
    m.insert(EXT_CONTAINER.into(), ids.container_id.into());
    m.insert(EXT_IFNAME.into(), ids.ifname.into());
    m.insert(EXT_IP.into(), ids.ip.to_string());
    if let Some(ns) = ids.pod_namespace {
        m.insert(EXT_POD_NS.into(), ns.into());
    }
    if let Some(n) = ids.pod_name {
        m.insert(EXT_POD_NAME.into(), n.into());
    }
    m
}
