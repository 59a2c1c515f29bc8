//! GC (CNI 1.1): attachments the runtime no longer lists are released and
//! their ports and veths removed; listed ones are untouched.

mod common;

use common::*;
use leengine_testenv as te;
use serde_json::json;

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

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "gc0", "ifname": "eth0" }]);
    let out = c.call_env(
        &[
            ("CNI_COMMAND", "GC".into()),
            ("CNI_PATH", "/usr/lib/cni".into()),
        ],
        &serde_json::to_vec(&gc).unwrap(),
    );
    out.ok();
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
