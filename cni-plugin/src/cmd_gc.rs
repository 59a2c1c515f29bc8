//! GC (CNI 1.1): release this node's attachments the runtime no longer
//! knows (`cni.dev/valid-attachments`) and remove their OVS ports and veths.

use crate::backend::{self, EXT_CONTAINER, EXT_IFNAME, EXT_OWNER, OWNER};
use crate::config::NetConf;
use crate::error::{CniError, CniResult, INVALID_CONFIG};
use leengine_netdp::{host_veth_name, teardown};
use std::collections::BTreeSet;

pub async fn gc(conf: &NetConf) -> CniResult<()> {
    let valid: BTreeSet<(String, String)> = conf
        .valid_attachments
        .clone()
        .ok_or_else(|| CniError::new(INVALID_CONFIG, "GC needs cni.dev/valid-attachments"))?
        .into_iter()
        .collect();
    let (ovs, ipam) = tokio::try_join!(backend::ovs(conf), backend::ipam(conf))?;
    let node = ipam.node().to_string();
    let host = backend::host_netlink(conf)?;
    let mut errors = Vec::new();

    let mut stale: BTreeSet<(String, String)> = BTreeSet::new();
    for att in ipam.node_attachments(&node).await? {
        let key = (att.container_id.clone(), att.ifname.clone());
        if valid.contains(&key) {
            continue;
        }
        // Compare-and-release: an attachment re-made meanwhile stays.
        match ipam.release_if_unchanged(&att).await {
            Ok(true) => tracing::info!(container = %att.container_id, ip = %att.ip, "GC released"),
            Ok(false) => {}
            Err(e) => errors.push(CniError::from(e).to_string()),
        }
        stale.insert(key);
    }
    // Ports whose IP record is already gone are garbage too.
    for p in ovs.list_ports(&conf.bridge).await? {
        if p.external_ids.get(EXT_OWNER).map(String::as_str) != Some(OWNER) {
            continue;
        }
        if let (Some(c), Some(i)) = (
            p.external_ids.get(EXT_CONTAINER),
            p.external_ids.get(EXT_IFNAME),
        ) {
            let key = (c.clone(), i.clone());
            if !valid.contains(&key) {
                stale.insert(key);
            }
        }
    }
    for (cid, ifname) in &stale {
        let host_if = host_veth_name(cid, ifname);
        if let Err(e) = ovs.del_port(&conf.bridge, &host_if).await {
            errors.push(CniError::from(e).to_string());
        }
        if let Err(e) = teardown(&host, &host_if, None).await {
            errors.push(CniError::from(e).to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(crate::error::DATAPATH, "GC incomplete").with_details(errors.join("; ")))
    }
}
