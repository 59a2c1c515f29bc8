//! ADD / CHECK / DEL / VERSION against real etcd, OVS and netns.

mod common;

use common::*;
use leengine_testenv as te;
use serde_json::json;

#[test]
fn add_check_del_full_cycle() {
    let c = Cluster::new("10.61.0.0/22", "10.61.0.1", 161);
    let ns = te::Netns::new();
    let conf = c.conf("1.1.0");
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=x";
    let res = c.call("ADD", "cid-one", Some(ns.path()), "eth0", args, &conf);
    let r = res.ok().clone();

    // Result: host + sandbox interfaces, IP with interface index and gateway, default route.
    assert_eq!(r["cniVersion"], "1.1.0");
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(
        host_if.starts_with("le") && host_if.len() <= 15,
        "{host_if}"
    );
    assert!(r["interfaces"][0].get("sandbox").is_none());
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(
        r["interfaces"][1]["sandbox"],
        ns.path().display().to_string()
    );
    assert_eq!(r["interfaces"][1]["mtu"], 1400);
    let addr = r["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("10.61.") && addr.ends_with("/22"),
        "{addr}"
    );
    assert_eq!(r["ips"][0]["gateway"], "10.61.0.1");
    assert_eq!(r["ips"][0]["interface"], 1);
    assert_eq!(
        r["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": "10.61.0.1"})
    );
    let ip: std::net::Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
    let o = ip.octets();
    let want_mac = format!("0a:4c:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
    assert_eq!(r["interfaces"][1]["mac"], want_mac.as_str());

    // The kernel agrees.
    let link = ns_out(&ns, &["ip", "-o", "link", "show", "eth0"]);
    assert!(
        link.contains(&want_mac) && link.contains("mtu 1400") && link.contains("UP"),
        "{link}"
    );
    assert!(ns_out(&ns, &["ip", "-o", "-4", "addr", "show", "eth0"]).contains(&addr));
    assert!(ns_out(&ns, &["ip", "-4", "route"]).contains("default via 10.61.0.1 dev eth0"));
    assert_eq!(
        ns_out(&ns, &["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]).trim(),
        "1"
    );
    // OVS agrees: access port in the pool's VLAN, with our external_ids and an ofport.
    assert_eq!(c.ports(), vec![host_if.clone()]);
    assert_eq!(c.port_col(&host_if, "tag"), "161");
    let ext = c.port_col(&host_if, "external_ids");
    for want in ["cid-one", "eth0", "shop", "web-0", ip.to_string().as_str()] {
        assert!(ext.contains(want), "{want} missing in {ext}");
    }
    c.live_ofport(&host_if);
    // etcd agrees.
    assert_eq!(
        c.handles(),
        vec!["/leengine/ipam/handles/cid-one/eth0".to_string()]
    );

    // CHECK with prevResult passes...
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = r;
    c.call(
        "CHECK",
        "cid-one",
        Some(ns.path()),
        "eth0",
        args,
        &check_conf,
    )
    .ok();

    // ...and names every difference once things drift.
    ns.must(&["ip", "route", "del", "default"]);
    c.ovs.vsctl(&["set", "port", &host_if, "tag=999"]);
    let bad = c.call(
        "CHECK",
        "cid-one",
        Some(ns.path()),
        "eth0",
        args,
        &check_conf,
    );
    assert_eq!(bad.err_code(), 107);
    let msg = bad.msg();
    assert!(msg.contains("route 0.0.0.0/0"), "{msg}");
    assert!(msg.contains("VLAN tag Some(999)"), "{msg}");
    let mut wrong_mac = check_conf.clone();
    wrong_mac["prevResult"]["interfaces"][1]["mac"] = json!("0a:4c:00:00:00:01");
    let bad = c.call(
        "CHECK",
        "cid-one",
        Some(ns.path()),
        "eth0",
        args,
        &wrong_mac,
    );
    assert!(bad.msg().contains("MAC"), "{}", bad.msg());

    // DEL removes everything; twice is fine.
    c.call("DEL", "cid-one", Some(ns.path()), "eth0", args, &conf)
        .ok();
    c.assert_clean();
    assert!(!ns_out(&ns, &["ip", "link"]).contains("eth0"));
    let again = c.call("DEL", "cid-one", Some(ns.path()), "eth0", args, &conf);
    assert_eq!(again.code, 0, "{:?}", again);
    assert!(again.json.is_null());
    // CHECK after DEL reports the missing pieces.
    let gone = c.call(
        "CHECK",
        "cid-one",
        Some(ns.path()),
        "eth0",
        args,
        &check_conf,
    );
    assert_eq!(gone.err_code(), 107);
    assert!(gone.msg().contains("missing"), "{}", gone.msg());
}

#[test]
fn del_succeeds_without_add_and_after_the_netns_is_gone() {
    let c = Cluster::new("10.62.0.0/24", "10.62.0.1", 162);
    let conf = c.conf("1.0.0");
    c.call("DEL", "never-added", None, "eth0", "", &conf).ok();
    let mut ns = te::Netns::new();
    c.call("DEL", "never-added", Some(ns.path()), "eth0", "", &conf)
        .ok();

    let r = c.call("ADD", "cid-gone", Some(ns.path()), "eth0", "", &conf);
    r.ok();
    ns.delete(); // the runtime lost the netns before calling DEL
    c.call("DEL", "cid-gone", Some(ns.path()), "eth0", "", &conf)
        .ok();
    c.assert_clean();
}

#[test]
fn every_spec_version_gets_its_own_result_shape() {
    let c = Cluster::new("10.63.0.0/24", "10.63.0.1", 163);
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let ns = te::Netns::new();
        let cid = format!("ver{i}");
        let mut conf = c.conf(v);
        conf["dns"] = json!({ "nameservers": ["10.63.0.2"], "search": ["svc.local"] });
        let r = c
            .call("ADD", &cid, Some(ns.path()), "eth0", "", &conf)
            .ok()
            .clone();
        assert_eq!(r["cniVersion"], *v);
        assert_eq!(r["dns"]["nameservers"][0], "10.63.0.2");
        let has_version = r["ips"][0].get("version").is_some();
        assert_eq!(has_version, v.starts_with("0."), "{v}: {r}");
        assert_eq!(
            r["interfaces"][1].get("mtu").is_some(),
            *v == "1.1.0",
            "{v}"
        );
        if *v != "0.3.0" && *v != "0.3.1" {
            let mut cc = conf.clone();
            cc["prevResult"] = r.clone();
            c.call("CHECK", &cid, Some(ns.path()), "eth0", "", &cc).ok();
        } else {
            let mut cc = conf.clone();
            cc["prevResult"] = r.clone();
            let e = c.call("CHECK", &cid, Some(ns.path()), "eth0", "", &cc);
            assert_eq!(e.err_code(), 1, "CHECK is not defined before 0.4.0");
        }
        c.call("DEL", &cid, Some(ns.path()), "eth0", "", &conf).ok();
    }
    c.assert_clean();
}

#[test]
fn version_lists_every_supported_version() {
    let mut cmd = std::process::Command::new(BIN);
    let out = exec(
        &mut cmd,
        &[("CNI_COMMAND", "VERSION".into())],
        br#"{"cniVersion":"1.1.0"}"#,
    );
    let v = out.ok();
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    assert_eq!(v["cniVersion"], "1.1.0");
}

#[test]
fn requested_ip_and_mac_are_honoured() {
    let c = Cluster::new("10.64.0.0/24", "10.64.0.1", 164);
    let ns = te::Netns::new();
    let r = c
        .call(
            "ADD",
            "cid-ip",
            Some(ns.path()),
            "eth0",
            "IP=10.64.0.77",
            &c.conf("1.0.0"),
        )
        .ok()
        .clone();
    assert_eq!(r["ips"][0]["address"], "10.64.0.77/24");
    let ns2 = te::Netns::new();
    let mut conf = c.conf("1.0.0");
    conf["runtimeConfig"] = json!({ "ips": ["10.64.0.78/24"], "mac": "02:11:22:33:44:55" });
    let r2 = c
        .call("ADD", "cid-rt", Some(ns2.path()), "eth0", "", &conf)
        .ok()
        .clone();
    assert_eq!(r2["ips"][0]["address"], "10.64.0.78/24");
    assert_eq!(r2["interfaces"][1]["mac"], "02:11:22:33:44:55");
    assert!(ns_out(&ns2, &["ip", "link", "show", "eth0"]).contains("02:11:22:33:44:55"));
    // Taken address: plugin code 101, nothing left of the failed attempt.
    let ns3 = te::Netns::new();
    let taken = c.call(
        "ADD",
        "cid-dup",
        Some(ns3.path()),
        "eth0",
        "IP=10.64.0.77",
        &c.conf("1.0.0"),
    );
    assert_eq!(taken.err_code(), 101, "{}", taken.msg());
    assert_eq!(c.ports().len(), 2);
    assert_eq!(c.handles().len(), 2);
    assert!(!ns_out(&ns3, &["ip", "link"]).contains("eth0"));
    for (cid, ns) in [("cid-ip", &ns), ("cid-rt", &ns2)] {
        c.call("DEL", cid, Some(ns.path()), "eth0", "", &c.conf("1.0.0"))
            .ok();
    }
    c.assert_clean();
}

#[test]
fn gratuitous_arps_follow_the_add_once_the_port_is_up() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let c = Cluster::new("10.65.0.0/24", "10.65.0.1", 165);
    let ns = te::Netns::new();
    let mut conf = c.conf("1.1.0");
    conf["garp"] = json!({ "count": 3, "intervalMs": 600 });
    let r = c
        .call("ADD", "garp", Some(ns.path()), "eth0", "", &conf)
        .ok()
        .clone();
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    let ip = r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // ADD returned before any: the follow-up sends all three, `intervalMs`
    // apart, from when the port is up.
    let mut dump = c
        .ovs
        .command(&[
            "timeout", "5", "tcpdump", "-l", "-n", "-c", "2", "-i", &host_if, "arp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(dump.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "tcpdump did not start"
        );
    }
    let waited = std::time::Instant::now();
    let out = dump.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let announced = format!("who-has {ip} tell {ip}");
    assert_eq!(
        text.lines().filter(|l| l.contains(&announced)).count(),
        2,
        "{text}"
    );
    assert!(waited.elapsed() < std::time::Duration::from_secs(5));
    c.call("DEL", "garp", Some(ns.path()), "eth0", "", &conf)
        .ok();
    c.assert_clean();
}

/// Sends SIGCONT to a stopped ovs-vswitchd when dropped, even on panic.
struct Stopped(String);

impl Stopped {
    fn vswitchd(c: &Cluster) -> Stopped {
        let pid = std::fs::read_to_string(c.ovs.dir().join("vswitchd.pid")).unwrap();
        let pid = pid.trim().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success());
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0])
            .status();
    }
}

#[test]
fn a_pod_reaches_its_gateway_and_peer_after_add_returns_without_waiting_for_the_switch() {
    let c = Cluster::new("10.66.0.0/24", "10.66.0.1", 166);
    // The gateway: an internal port in the pool's VLAN on the node.
    c.ovs.vsctl(&[
        "add-port",
        &c.bridge,
        "gw166",
        "tag=166",
        "--",
        "set",
        "interface",
        "gw166",
        "type=internal",
    ]);
    let node = c.ovs.netns();
    poll("the gateway's device", || {
        node.exec(&["ip", "link", "show", "gw166"])
            .status
            .success()
            .then_some(())
    });
    node.must(&["ip", "addr", "add", "10.66.0.1/24", "dev", "gw166"]);
    node.must(&["ip", "link", "set", "gw166", "up"]);
    let conf = c.conf("1.1.0");
    let peer_ns = te::Netns::new();
    let peer = c
        .call("ADD", "peer", Some(peer_ns.path()), "eth0", "", &conf)
        .ok()
        .clone();
    let peer_ip = peer["ips"][0]["address"].as_str().unwrap();
    let peer_ip = peer_ip.split('/').next().unwrap().to_string();

    // With ovs-vswitchd stopped, ADD still answers: it does not wait for
    // the port to come up. CHECK sees the port is not up.
    let ns = te::Netns::new();
    let stopped = Stopped::vswitchd(&c);
    let r = c
        .call("ADD", "pod", Some(ns.path()), "eth0", "", &conf)
        .ok()
        .clone();
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    let mut cc = conf.clone();
    cc["prevResult"] = r;
    let out = c.call("CHECK", "pod", Some(ns.path()), "eth0", "", &cc);
    assert_eq!(out.err_code(), 107, "{}", out.json);
    assert!(
        out.msg()
            .starts_with(&format!("OVS port {host_if} has no OpenFlow port: ")),
        "{}",
        out.msg()
    );

    // Once the switch runs, the pod reaches its gateway and its peer, and
    // CHECK passes.
    drop(stopped);
    for to in ["10.66.0.1", peer_ip.as_str()] {
        poll(&format!("the pod to reach {to}"), || {
            ns.ping(to, 1).then_some(())
        });
    }
    c.live_ofport(&host_if);
    c.call("CHECK", "pod", Some(ns.path()), "eth0", "", &cc)
        .ok();

    for (cid, ns) in [("pod", &ns), ("peer", &peer_ns)] {
        c.call("DEL", cid, Some(ns.path()), "eth0", "", &conf).ok();
    }
    c.ovs.vsctl(&["del-port", &c.bridge, "gw166"]);
    c.assert_clean();
}

#[test]
fn each_new_pod_reaches_the_one_before_once_its_add_returned() {
    // No switch pause: the ordinary case, ADD after ADD, each pod pinging
    // the one before as soon as its ADD returned.
    let c = Cluster::new("10.67.0.0/24", "10.67.0.1", 167);
    let conf = c.conf("1.1.0");
    let mut pods: Vec<(String, te::Netns, String)> = Vec::new();
    for i in 0..4 {
        let ns = te::Netns::new();
        let cid = format!("chain{i}");
        let r = c
            .call("ADD", &cid, Some(ns.path()), "eth0", "", &conf)
            .ok()
            .clone();
        let ip = r["ips"][0]["address"].as_str().unwrap();
        let ip = ip.split('/').next().unwrap().to_string();
        if let Some((_, _, prev_ip)) = pods.last() {
            poll(&format!("{cid} to reach {prev_ip}"), || {
                ns.ping(prev_ip, 1).then_some(())
            });
        }
        pods.push((cid, ns, ip));
    }
    for (cid, ns, _) in &pods {
        c.call("DEL", cid, Some(ns.path()), "eth0", "", &conf).ok();
    }
    c.assert_clean();
}
