//! As the first plugin of a chain with the reference `portmap` and
//! `bandwidth` plugins, run inside the node namespace without `hostNetns`
//! (the production layout), each exec'd like libcni with prevResult passed on.

mod common;

use common::*;
use leengine_testenv as te;
use serde_json::{json, Value};

const REF: &str = "/usr/lib/cni";

#[test]
fn chain_with_portmap_and_bandwidth() {
    let c = Cluster::new("10.91.0.0/24", "10.91.0.1", 191);
    let node = c.ovs.netns();
    let etcd_port = node.forward_tcp(c.etcd.port());
    let pod = te::Netns::new();
    let mut ours = c.conf("1.0.0");
    ours.as_object_mut().unwrap().remove("hostNetns");
    ours["etcd"]["endpoints"] = json!([format!("https://127.0.0.1:{etcd_port}")]);
    let portmap = json!({
        "cniVersion": "1.0.0", "name": "pods", "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}
    });
    let bandwidth = json!({
        "cniVersion": "1.0.0", "name": "pods", "type": "bandwidth",
        "capabilities": {"bandwidth": true},
        "runtimeConfig": {"bandwidth": {"ingressRate": 1000000, "ingressBurst": 100000,
                                         "egressRate": 1000000, "egressBurst": 100000}}
    });
    let chain: Vec<(String, Value)> = vec![
        (BIN.to_string(), ours),
        (format!("{REF}/portmap"), portmap),
        (format!("{REF}/bandwidth"), bandwidth),
    ];
    let call = |bin: &str, cmd: &str, conf: &Value| -> Out {
        let env = [
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "chained".to_string()),
            ("CNI_NETNS", pod.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", REF.to_string()),
        ];
        exec(
            &mut node.command(&[bin]),
            &env,
            &serde_json::to_vec(conf).unwrap(),
        )
    };

    let mut prev: Option<Value> = None;
    for (bin, conf) in &chain {
        let mut conf = conf.clone();
        if let Some(p) = &prev {
            conf["prevResult"] = p.clone();
        }
        let out = call(bin, "ADD", &conf);
        prev = Some(out.ok().clone());
    }
    let result = prev.unwrap();
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert!(result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with("10.91.0."));
    // portmap's DNAT and bandwidth's qdisc exist in the node namespace.
    let nat =
        String::from_utf8_lossy(&node.exec(&["iptables-save", "-t", "nat"]).stdout).into_owned();
    assert!(nat.contains("18080"), "{nat}");
    let tc = String::from_utf8_lossy(&node.exec(&["tc", "qdisc", "show", "dev", &host_if]).stdout)
        .into_owned();
    assert!(tc.contains("tbf") || tc.contains("ingress"), "{tc}");
    assert_eq!(c.port_col(&host_if, "tag"), "191");

    // Debian's portmap (1.1.1) CHECK also looks for an ip6tables chain it
    // never creates for an IPv4-only result and always fails, whatever the
    // first plugin is (the same
    // happens after bridge + host-local); the other two are checked.
    for (bin, conf) in chain.iter().filter(|(b, _)| !b.ends_with("/portmap")) {
        let mut conf = conf.clone();
        conf["prevResult"] = result.clone();
        call(bin, "CHECK", &conf).ok();
    }
    for (bin, conf) in chain.iter().rev() {
        let mut conf = conf.clone();
        conf["prevResult"] = result.clone();
        call(bin, "DEL", &conf).ok();
    }
    let nat =
        String::from_utf8_lossy(&node.exec(&["iptables-save", "-t", "nat"]).stdout).into_owned();
    assert!(!nat.contains("18080"), "{nat}");
    c.assert_clean();
}
