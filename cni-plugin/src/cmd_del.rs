//! DEL: best effort and idempotent. Port, veth, then the IP — and the IP
//! only once both are gone, so an address is never handed out again while
//! its old datapath (an OVS port in the pool's VLAN, a veth with its MAC)
//! may still exist. Missing pieces are fine; a failed teardown keeps the IP
//! and answers "try again later" so the runtime's next DEL finishes the job.

use crate::backend;
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::{CniError, CniResult, TRY_AGAIN_LATER};
use leengine_netdp::{host_veth_name, teardown};

pub async fn del(env: &CniEnv, conf: &NetConf) -> CniResult<()> {
    let cid = env.container_id.as_deref().unwrap_or_default();
    let ifname = env.ifname.as_deref().unwrap_or_default();
    let host_if = host_veth_name(cid, ifname);
    let mut datapath: Vec<CniError> = Vec::new();

    let (ovs, ipam) = tokio::join!(backend::ovs(conf), backend::ipam(conf));
    match &ovs {
        Ok(ovs) => match ovs.del_port(&conf.bridge, &host_if).await {
            Ok(_) | Err(leengine_ovsdb::OvsdbError::NoBridge(_)) => {}
            Err(e) => datapath.push(e.into()),
        },
        Err(e) => datapath.push(e.clone()),
    }
    match backend::host_netlink(conf) {
        Ok(host) => {
            let sandbox = env.netns.as_deref().map(|p| (p, ifname));
            if let Err(e) = teardown(&host, &host_if, sandbox).await {
                datapath.push(e.into());
            }
        }
        Err(e) => datapath.push(e),
    }
    if let Some(e) = kept_ip(cid, ifname, &datapath) {
        return Err(e);
    }
    match ipam?.release(cid, ifname).await {
        Ok(Some(att)) => tracing::info!(container = cid, ifname, ip = %att.ip, "released"),
        Ok(None) => tracing::debug!(container = cid, ifname, "no IP held"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The answer when the host side could not be torn down: retryable
/// whatever the cause, the IP untouched, every failure in the details.
fn kept_ip(cid: &str, ifname: &str, datapath: &[CniError]) -> Option<CniError> {
    if datapath.is_empty() {
        return None;
    }
    let details: Vec<String> = datapath.iter().map(ToString::to_string).collect();
    Some(
        CniError::new(
            TRY_AGAIN_LATER,
            format!(
                "DEL of {cid}/{ifname} incomplete: its datapath is not gone, so its IP is kept"
            ),
        )
        .with_details(details.join("; ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DATAPATH;

    #[test]
    fn any_teardown_failure_keeps_the_ip_and_is_retryable() {
        assert_eq!(kept_ip("c", "eth0", &[]), None);
        let e = kept_ip(
            "c",
            "eth0",
            &[
                CniError::new(DATAPATH, "datapath: refused"),
                CniError::new(TRY_AGAIN_LATER, "OVS: unavailable"),
            ],
        )
        .unwrap();
        assert_eq!(e.code, TRY_AGAIN_LATER);
        assert!(e.msg.contains("IP is kept"), "{}", e.msg);
        assert!(
            e.details.contains("refused") && e.details.contains("unavailable"),
            "{}",
            e.details
        );
    }
}
