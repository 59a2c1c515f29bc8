//! DEL: best effort and idempotent. Port, veth, then the IP (last, so an
//! address is never handed out again while its old datapath still exists).
//! Missing pieces are fine; only an unreachable etcd/OVSDB or a refused
//! change fails the call, after every step has been tried.

use crate::backend;
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::{CniError, CniResult};
use leengine_netdp::{host_veth_name, teardown};

pub async fn del(env: &CniEnv, conf: &NetConf) -> CniResult<()> {
    let cid = env.container_id.as_deref().unwrap_or_default();
    let ifname = env.ifname.as_deref().unwrap_or_default();
    let host_if = host_veth_name(cid, ifname);
    let mut errors: Vec<CniError> = Vec::new();

    let (ovs, ipam) = tokio::join!(backend::ovs(conf), backend::ipam(conf));
    match &ovs {
        Ok(ovs) => match ovs.del_port(&conf.bridge, &host_if).await {
            Ok(_) | Err(leengine_ovsdb::Error::NoBridge(_)) => {}
            Err(e) => errors.push(e.into()),
        },
        Err(e) => errors.push(e.clone()),
    }
    match backend::host_netlink(conf) {
        Ok(host) => {
            let sandbox = env.netns.as_deref().map(|p| (p, ifname));
            if let Err(e) = teardown(&host, &host_if, sandbox).await {
                errors.push(e.into());
            }
        }
        Err(e) => errors.push(e),
    }
    match &ipam {
        Ok(ipam) => match ipam.release(cid, ifname).await {
            Ok(Some(att)) => tracing::info!(container = cid, ifname, ip = %att.ip, "released"),
            Ok(None) => tracing::debug!(container = cid, ifname, "no IP held"),
            Err(e) => errors.push(e.into()),
        },
        Err(e) => errors.push(e.clone()),
    }
    let mut it = errors.into_iter();
    match it.next() {
        None => Ok(()),
        Some(first) => {
            let rest: Vec<String> = it.map(|e| e.to_string()).collect();
            Err(if rest.is_empty() {
                first
            } else {
                let d = rest.join("; ");
                first.with_details(d)
            })
        }
    }
}
