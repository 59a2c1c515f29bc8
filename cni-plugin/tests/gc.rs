//! GC (CNI 1.1): attachments of this network the runtime no longer lists
//! are released and their ports and veths removed once past the grace
//! period; listed ones, young ones and other networks' are untouched.

mod common;

use common::*;
use leengine_testenv as te;
use serde_json::{json, Value};

/// One GC call listing `valid`; `grace` = `gcGraceSecs` (None: the default).
fn gc(c: &Cluster, conf: &Value, valid: &[(&str, &str)], grace: Option<u64>) -> Out {
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = valid
        .iter()
        .map(|(cid, ifname)| json!({ "containerID": cid, "ifname": ifname }))
        .collect();
    if let Some(g) = grace {
        gc["gcGraceSecs"] = json!(g);
    }
    c.call_env(
        &[
            ("CNI_COMMAND", "GC".into()),
            ("CNI_PATH", "/usr/lib/cni".into()),
        ],
        &serde_json::to_vec(&gc).unwrap(),
    )
}

#[test]
fn gc_releases_what_the_runtime_no_longer_knows() {
    let c = Cluster::new("10.92.0.0/24", "10.92.0.1", 192);
    let conf = c.conf("1.1.0");
    let nss: Vec<te::Netns> = (0..3).map(|_| te::Netns::new()).collect();
    for (i, ns) in nss.iter().enumerate() {
        c.call("ADD", &format!("gc{i}"), Some(ns.path()), "eth0", "", &conf)
            .ok();
    }
    // An orphan port: its IP record is gone already.
    c.block_on(async { c.ipam().await.release("gc2", "eth0").await.unwrap() });
    assert_eq!(c.ports().len(), 3);

    gc(&c, &conf, &[("gc0", "eth0")], Some(0)).ok();
    assert_eq!(
        c.handles(),
        vec!["/leengine/ipam/handles/gc0/eth0".to_string()]
    );
    assert_eq!(c.ports().len(), 1);
    assert!(ns_out(&nss[0], &["ip", "-o", "link"]).contains(": eth0"));
    for ns in &nss[1..] {
        assert!(!ns_out(ns, &["ip", "-o", "link"]).contains(": eth0"));
    }
    // GC without the list is a config error.
    let out = c.call_env(
        &[("CNI_COMMAND", "GC".into())],
        &serde_json::to_vec(&conf).unwrap(),
    );
    assert_eq!(out.err_code(), 7);
    c.call("DEL", "gc0", Some(nss[0].path()), "eth0", "", &conf)
        .ok();
    c.assert_clean();
}

#[test]
fn gc_of_one_network_leaves_another_networks_attachments() {
    let c = Cluster::new("10.93.0.0/24", "10.93.0.1", 193);
    let pods = c.conf("1.1.0");
    let mut storage = pods.clone();
    storage["name"] = json!("storage");
    let (ns_a, ns_b) = (te::Netns::new(), te::Netns::new());
    c.call("ADD", "net-a", Some(ns_a.path()), "eth0", "", &pods)
        .ok();
    c.call("ADD", "net-b", Some(ns_b.path()), "net1", "", &storage)
        .ok();
    // The runtime of network "pods" knows none of its attachments any more.
    gc(&c, &pods, &[], Some(0)).ok();
    assert_eq!(
        c.handles(),
        vec!["/leengine/ipam/handles/net-b/net1".to_string()]
    );
    assert_eq!(c.ports().len(), 1);
    assert!(ns_out(&ns_b, &["ip", "-o", "link"]).contains(": net1"));
    c.call("DEL", "net-b", Some(ns_b.path()), "net1", "", &storage)
        .ok();
    c.assert_clean();
}

#[test]
fn gc_spares_a_just_added_attachment_the_runtime_has_not_listed_yet() {
    let c = Cluster::new("10.94.0.0/24", "10.94.0.1", 194);
    let conf = c.conf("1.1.0");
    let ns = te::Netns::new();
    // The runtime made its list, then this ADD completed, then GC ran.
    c.call("ADD", "young", Some(ns.path()), "eth0", "", &conf)
        .ok();
    gc(&c, &conf, &[], None).ok();
    assert_eq!(
        c.handles(),
        vec!["/leengine/ipam/handles/young/eth0".to_string()]
    );
    assert_eq!(c.ports().len(), 1);
    assert!(ns_out(&ns, &["ip", "-o", "link"]).contains(": eth0"));
    // Past its grace it goes.
    gc(&c, &conf, &[], Some(0)).ok();
    c.assert_clean();
}
