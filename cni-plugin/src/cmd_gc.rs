//! GC (CNI 1.1): release this network's attachments on this node that the
//! runtime no longer knows (`cni.dev/valid-attachments`) and remove their
//! OVS ports and veths.
//!
//! The runtime's list only speaks for its own network, so GC's scope is
//! the attachments recorded (at ADD) with this network's name on this node;
//! another network's — or one made before the name was recorded — is never
//! touched. An attachment younger than `gcGraceSecs` survives: the list was
//! made before this call, and an ADD the runtime has not recorded yet is
//! not garbage. Each attachment is collected under the same lock ADD and
//! DEL take, and re-read under it.

use crate::backend::{self, Sessions, EXT_CONTAINER, EXT_IFNAME, EXT_NETWORK, EXT_OWNER, OWNER};
use crate::config::NetConf;
use crate::error::{CniError, CniResult, DATAPATH, INVALID_CONFIG};
use leengine_attach::{
    lock, teardown, Failures, HostLinks, IpOutcome, OvsPorts, Plan, PortScope, Release, Target,
};
use leengine_ipam::Attachment;
use std::collections::{BTreeMap, BTreeSet};

type Key = (String, String);

/// Which attachments one GC call may collect. Pure.
struct Scope<'a> {
    network: &'a str,
    node: &'a str,
    valid: &'a BTreeSet<Key>,
    grace_secs: u64,
}

impl Scope<'_> {
    /// An IPAM attachment is garbage when it is this network's on this
    /// node, the runtime did not list it, and it is past the grace period.
    fn collects(&self, a: &Attachment, now: u64) -> bool {
        a.network.as_deref() == Some(self.network)
            && a.node == self.node
            && !self
                .valid
                .contains(&(a.container_id.clone(), a.ifname.clone()))
            && now.saturating_sub(a.since) >= self.grace_secs
    }

    /// The attachment an OVS port (on our bridge) belongs to, when it is a
    /// port this plugin made for this network and the runtime did not list it.
    fn port(&self, external_ids: &BTreeMap<String, String>) -> Option<Key> {
        let get = |k: &str| external_ids.get(k).map(String::as_str);
        if get(EXT_OWNER) != Some(OWNER) || get(EXT_NETWORK) != Some(self.network) {
            return None;
        }
        let key = (
            get(EXT_CONTAINER)?.to_string(),
            get(EXT_IFNAME)?.to_string(),
        );
        (!self.valid.contains(&key)).then_some(key)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn gc(conf: &NetConf, s: &Sessions) -> CniResult<()> {
    let valid: BTreeSet<Key> = conf
        .valid_attachments
        .clone()
        .ok_or_else(|| CniError::new(INVALID_CONFIG, "GC needs cni.dev/valid-attachments"))?
        .into_iter()
        .collect();
    let (ovs, ipam) = tokio::try_join!(s.ovs(conf), s.ipam(conf))?;
    let node = ipam.node().to_string();
    let host = backend::host_netlink(conf).await?;
    let scope = Scope {
        network: &conf.name,
        node: &node,
        valid: &valid,
        grace_secs: conf.gc_grace.as_secs(),
    };

    // Candidates, unlocked: each is decided again under its lock below.
    let now = now_secs();
    let mut candidates: BTreeSet<Key> = ipam
        .node_attachments(&node)
        .await?
        .into_iter()
        .filter(|a| scope.collects(a, now))
        .map(|a| (a.container_id, a.ifname))
        .collect();
    // Ports whose IP record is already gone are garbage too.
    for p in ovs.list_ports(&conf.bridge).await? {
        candidates.extend(scope.port(&p.external_ids));
    }

    let ports = OvsPorts::new(Ok(&ovs), PortScope::Bridge(&conf.bridge));
    let links = HostLinks::new(Ok(&host));
    let mut failures = Failures::default();
    for (cid, ifname) in &candidates {
        let _guard = lock::attachment(cid, ifname)?;
        let handle = ipam.handle(cid, ifname).await?;
        // An ADD that finished meanwhile left a young attachment; a handle
        // of another network or node with these ids is not ours either.
        if handle
            .as_ref()
            .is_some_and(|h| !scope.collects(h, now_secs()))
        {
            continue;
        }
        let target = Target {
            container_id: cid,
            ifname,
            netns: None,
        };
        // Compare-and-release: an attachment re-made meanwhile stays.
        let ip = match &handle {
            Some(att) => Release::IfUnchanged(&ipam, att),
            None => Release::Keep,
        };
        match teardown::run(&links, &ports, Plan::all(target, ip)).await {
            Ok(IpOutcome::Released(att)) => {
                tracing::info!(container = %cid, ip = %att.ip, "GC released")
            }
            Ok(_) => {}
            Err(f) => failures.extend(f),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(DATAPATH, "GC incomplete").with_details(failures.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const NOW: u64 = 1_000_000;

    fn att(cid: &str, network: Option<&str>, node: &str, age: u64) -> Attachment {
        Attachment {
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: String::new(),
            pod_namespace: None,
            pod_name: None,
            node: node.into(),
            network: network.map(String::from),
            ip: Ipv4Addr::new(10, 0, 0, 2),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            vlan: leengine_ipam::Vlan::new(1).unwrap(),
            pool: "p".into(),
            block: "10.0.0.0/28".parse().unwrap(),
            seq: 1,
            since: NOW - age,
        }
    }

    fn scope(valid: &BTreeSet<Key>) -> Scope<'_> {
        Scope {
            network: "pods",
            node: "n1",
            valid,
            grace_secs: 300,
        }
    }

    #[test]
    fn collects_only_own_network_node_unlisted_and_old() {
        let valid: BTreeSet<Key> = [("listed".to_string(), "eth0".to_string())].into();
        let s = scope(&valid);
        assert!(s.collects(&att("gone", Some("pods"), "n1", 300), NOW));
        assert!(!s.collects(&att("listed", Some("pods"), "n1", 3000), NOW));
        assert!(!s.collects(&att("other-net", Some("storage"), "n1", 3000), NOW));
        assert!(!s.collects(&att("legacy", None, "n1", 3000), NOW));
        assert!(!s.collects(&att("other-node", Some("pods"), "n2", 3000), NOW));
        assert!(!s.collects(&att("young", Some("pods"), "n1", 299), NOW));
        // A clock behind the allocation's own: young, not ancient.
        assert!(!s.collects(&att("future", Some("pods"), "n1", 0), NOW - 10));
    }

    #[test]
    fn ports_of_other_networks_or_owners_are_not_ours() {
        let valid: BTreeSet<Key> = [("listed".to_string(), "eth0".to_string())].into();
        let s = scope(&valid);
        let ids = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ours = |cid: &str, net: &str| {
            ids(&[
                (EXT_OWNER, OWNER),
                (EXT_NETWORK, net),
                (EXT_CONTAINER, cid),
                (EXT_IFNAME, "eth0"),
            ])
        };
        assert_eq!(
            s.port(&ours("gone", "pods")),
            Some(("gone".into(), "eth0".into()))
        );
        assert_eq!(s.port(&ours("listed", "pods")), None);
        assert_eq!(s.port(&ours("gone", "storage")), None);
        assert_eq!(
            s.port(&ids(&[
                (EXT_OWNER, OWNER),
                (EXT_CONTAINER, "legacy"),
                (EXT_IFNAME, "eth0")
            ])),
            None
        );
        assert_eq!(
            s.port(&ids(&[
                (EXT_NETWORK, "pods"),
                (EXT_CONTAINER, "foreign"),
                (EXT_IFNAME, "eth0")
            ])),
            None
        );
    }
}
