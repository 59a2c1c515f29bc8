//! CHECK: the attachment as it is (netns, OVS, etcd) against prevResult.
//! Every difference is listed in the error, not just the first.

use crate::backend::{Sessions, EXT_CONTAINER};
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::{CniError, CniResult, CHECK_MISMATCH, INVALID_CONFIG};
use crate::result::SuccessResult;
use leengine_netdp::{format_mac, host_veth_name, inspect, Netlink, NetnsFile};
use leengine_ovsdb::{Client as Ovs, PortInfo};
use std::time::Duration;

pub async fn check(env: &CniEnv, conf: &NetConf, s: &Sessions) -> CniResult<()> {
    let cid = env.container_id.as_deref().unwrap_or_default();
    let ifname = env.ifname.as_deref().unwrap_or_default();
    let ns_path = env.netns.as_deref().unwrap_or(std::path::Path::new(""));
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(INVALID_CONFIG, "CHECK needs prevResult"))?;
    let prev = SuccessResult::from_json(prev).map_err(|e| CniError::new(INVALID_CONFIG, e))?;
    let want = Expected::from_prev(&prev, ifname)?;

    let ns = NetnsFile::open(ns_path)?;
    let sandbox = Netlink::in_netns(&ns).await?;
    let (ovs, ipam) = tokio::try_join!(s.ovs(conf), s.ipam(conf))?;
    let mut diffs: Vec<String> = Vec::new();

    match inspect(&sandbox, ifname).await? {
        None => diffs.push(format!(
            "interface {ifname} is missing in {}",
            ns_path.display()
        )),
        Some(st) => {
            let mac = st.link.mac.as_ref().map(format_mac).unwrap_or_default();
            if !want.mac.is_empty() && !mac.eq_ignore_ascii_case(&want.mac) {
                diffs.push(format!(
                    "{ifname} MAC is {mac}, prevResult says {}",
                    want.mac
                ));
            }
            if st.link.mtu != Some(conf.mtu) {
                diffs.push(format!(
                    "{ifname} MTU is {:?}, config says {}",
                    st.link.mtu, conf.mtu
                ));
            }
            if !st.link.up {
                diffs.push(format!("{ifname} is down"));
            }
            let addr = (want.address.addr(), want.address.prefix_len());
            if !st.addrs.contains(&addr) {
                diffs.push(format!(
                    "{ifname} lacks address {} (has {:?})",
                    want.address, st.addrs
                ));
            }
            for r in &prev.routes {
                let found = st.routes.iter().any(|k| {
                    k.dst_len == r.dst.prefix_len()
                        && k.dst == r.dst.network()
                        && (r.gw.is_none() || k.gateway == r.gw)
                });
                if !found {
                    diffs.push(format!("route {} via {:?} is missing", r.dst, r.gw));
                }
            }
        }
    }

    let host_if = host_veth_name(cid, ifname);
    let handle = ipam.handle(cid, ifname).await?;
    match &handle {
        None => diffs.push(format!("IPAM holds no address for {cid}/{ifname}")),
        Some(h) if h.ip != want.address.addr() || h.prefix_len != want.address.prefix_len() => {
            diffs.push(format!(
                "IPAM holds {}/{} for {cid}/{ifname}, prevResult says {}",
                h.ip, h.prefix_len, want.address
            ))
        }
        Some(_) => {}
    }
    match ovs.port_info(&host_if).await? {
        None => diffs.push(format!("OVS port {host_if} is missing")),
        Some(p) => {
            if p.bridge.as_deref() != Some(conf.bridge.as_str()) {
                diffs.push(format!(
                    "OVS port {host_if} is on bridge {:?}, not {}",
                    p.bridge, conf.bridge
                ));
            }
            if let Some(h) = &handle {
                if p.tag != Some(h.vlan.id()) {
                    diffs.push(format!(
                        "OVS port {host_if} has VLAN tag {:?}, pool {} has VLAN {}",
                        p.tag, h.pool, h.vlan
                    ));
                }
            }
            if p.external_ids.get(EXT_CONTAINER).map(String::as_str) != Some(cid) {
                diffs.push(format!("OVS port {host_if} belongs to another container"));
            }
            if let Some(why) = not_up(&ovs, &host_if, &p).await {
                diffs.push(format!("OVS port {host_if} has no OpenFlow port: {why}"));
            }
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(CHECK_MISMATCH, diffs.join("; ")))
    }
}

/// How long CHECK gives a port that ovs-vswitchd has not handled yet.
const UP_GRACE: Duration = Duration::from_secs(2);

/// Why the port is not up, if it is not. ADD does not wait for ovs-vswitchd
/// to bring the port up, so a CHECK right after ADD may find it still
/// coming: it waits a little before calling it a port that never came up.
async fn not_up(ovs: &Ovs, host_if: &str, p: &PortInfo) -> Option<String> {
    if p.ofport().is_some_and(|o| o > 0) {
        return None;
    }
    if let Some(e) = p.interfaces.iter().find_map(|i| i.error.clone()) {
        let failed = leengine_ovsdb::OvsdbError::InterfaceFailed {
            iface: host_if.to_string(),
            error: e,
        };
        return Some(failed.to_string());
    }
    ovs.wait_ofport(host_if, UP_GRACE)
        .await
        .err()
        .map(|e| e.to_string())
}

struct Expected {
    mac: String,
    address: ipnet::Ipv4Net,
}

impl Expected {
    /// The sandbox interface named `ifname` in prevResult and its address.
    fn from_prev(prev: &SuccessResult, ifname: &str) -> CniResult<Self> {
        let idx = prev
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.is_some());
        let ip = prev
            .ips
            .iter()
            .find(|ip| idx.is_none() || ip.interface == idx)
            .ok_or_else(|| {
                CniError::new(
                    INVALID_CONFIG,
                    format!("prevResult has no IPv4 address for {ifname}"),
                )
            })?;
        Ok(Self {
            mac: idx
                .map(|i| prev.interfaces[i].mac.clone())
                .unwrap_or_default(),
            address: ip.address,
        })
    }
}
