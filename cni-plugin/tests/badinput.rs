//! Every bad input: a CNI error with the right code on stdout, exit 1, and
//! nothing left behind (no OVS port, no IP handle, no veth).

mod common;

use common::*;
use leengine_testenv as te;
use serde_json::json;

fn ns_has(ns: &te::Netns, ifname: &str) -> bool {
    ns_out(ns, &["ip", "-o", "link"]).contains(&format!(": {ifname}"))
}

#[test]
fn malformed_configs_and_env_are_refused_with_nothing_left() {
    let c = Cluster::new("10.71.0.0/24", "10.71.0.1", 171);
    let ns = te::Netns::new();
    let good = c.conf("1.0.0");
    let with = |k: &str, v: serde_json::Value| {
        let mut g = good.clone();
        g[k] = v;
        serde_json::to_vec(&g).unwrap()
    };
    let mut configs: Vec<(Vec<u8>, u64, &str)> = vec![
        (b"{".to_vec(), 6, "JSON"),
        (b"".to_vec(), 6, "JSON"),
        (b"42".to_vec(), 7, "object"),
        (with("cniVersion", json!("0.2.0")), 1, "0.2.0"),
        (with("cniVersion", json!("9.9.9")), 1, "9.9.9"),
        (with("bridge", json!("")), 7, "bridge"),
        (with("bridge", json!(null)), 7, "bridge"),
        (with("mtu", json!(1)), 7, "mtu"),
        (with("etcd", json!({})), 7, "endpoints"),
        (
            with("etcd", json!({"endpoints": ["ftp://x"]})),
            7,
            "ftp://x",
        ),
        (with("ovsdb", json!("db.sock")), 7, "ovsdb"),
        // One line naming the file, before anything is dialled or created.
        (
            with("etcd", {
                let mut e = good["etcd"].clone();
                e["cert"] = json!("/nonexistent/client.pem");
                e
            }),
            7,
            "client certificate file /nonexistent/client.pem",
        ),
        (
            with("etcd", {
                let mut e = good["etcd"].clone();
                e["ca"] = e["key"].clone();
                e
            }),
            7,
            "holds no PEM certificate",
        ),
        (with("garp", json!({"count": 1})), 7, "garp"),
        (with("pools", json!("p1")), 7, "pools"),
        (with("unknownKey", json!(1)), 7, "unknownKey"),
        (with("ipam", json!({"type": "host-local"})), 7, "ipam"),
        (
            with("hostNetns", json!("/run/netns/does-not-exist-xyz")),
            7,
            "hostNetns",
        ),
        (
            with("runtimeConfig", json!({"ips": ["10.71.0.5", "10.71.0.6"]})),
            2,
            "runtimeConfig.ips",
        ),
    ];
    let mut no_bridge = good.clone();
    no_bridge.as_object_mut().unwrap().remove("bridge");
    configs.push((serde_json::to_vec(&no_bridge).unwrap(), 7, "bridge"));
    for (stdin, code, needle) in configs {
        let env = [
            ("CNI_COMMAND", "ADD".to_string()),
            ("CNI_CONTAINERID", "bad-conf".to_string()),
            ("CNI_NETNS", ns.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
        ];
        let out = c.call_env(&env, &stdin);
        assert_eq!(out.code, 1);
        assert_eq!(
            out.err_code(),
            code,
            "{}: {}",
            String::from_utf8_lossy(&stdin),
            out.json
        );
        let text = format!(
            "{} {}",
            out.msg(),
            out.json["details"].as_str().unwrap_or_default()
        );
        assert!(text.contains(needle), "{needle}: {text}");
        assert!(out.json["cniVersion"].is_string());
    }

    let full = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "bad-env"),
        ("CNI_NETNS", ns.path().to_str().unwrap()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let stdin = serde_json::to_vec(&good).unwrap();
    for missing in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_PATH",
    ] {
        let env: Vec<(&str, String)> = full
            .iter()
            .filter(|(k, _)| *k != missing)
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        let out = c.call_env(&env, &stdin);
        assert_eq!(out.err_code(), 4, "{missing}");
        assert!(out.msg().contains(missing), "{}", out.msg());
    }
    let mut env: Vec<(&str, String)> = full.iter().map(|(k, v)| (*k, v.to_string())).collect();
    env[0].1 = "REBOOT".into();
    let out = c.call_env(&env, &stdin);
    assert_eq!(out.err_code(), 4);
    assert!(out.msg().contains("REBOOT"));
    env[0].1 = "ADD".into();
    env[3].1 = "this-name-is-too-long".into();
    assert_eq!(c.call_env(&env, &stdin).err_code(), 4);
    env[3].1 = "eth0".into();
    env.push(("CNI_ARGS", "K8S_POD_NAME=a;SURPRISE=1".into()));
    let out = c.call_env(&env, &stdin);
    assert_eq!(out.err_code(), 4);
    assert!(out.msg().contains("SURPRISE"));

    assert!(!ns_has(&ns, "eth0"));
    c.assert_clean();
}

#[test]
fn missing_netns_existing_ifname_and_missing_bridge() {
    let c = Cluster::new("10.72.0.0/24", "10.72.0.1", 172);
    let conf = c.conf("1.1.0");
    let gone = std::path::Path::new("/run/netns/leengine-no-such-ns");
    let out = c.call("ADD", "no-ns", Some(gone), "eth0", "", &conf);
    assert_eq!(out.err_code(), 3);
    assert!(out.msg().contains("leengine-no-such-ns"), "{}", out.msg());

    let ns = te::Netns::new();
    ns.must(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "keep0",
    ]);
    let out = c.call("ADD", "dup-if", Some(ns.path()), "eth0", "", &conf);
    assert_eq!(out.err_code(), 103);
    assert!(
        ns_has(&ns, "eth0") && ns_has(&ns, "keep0"),
        "the existing interface is untouched"
    );

    let ns2 = te::Netns::new();
    let mut nb = conf;
    nb["bridge"] = json!("nobr0");
    let out = c.call("ADD", "no-br", Some(ns2.path()), "eth0", "", &nb);
    assert_eq!(out.err_code(), 102);
    assert!(out.msg().contains("nobr0"));
    assert!(!ns_has(&ns2, "eth0"));
    c.assert_clean();
}

#[test]
fn unreachable_etcd_or_ovsdb_is_try_again_later_and_leaves_nothing() {
    let mut c = Cluster::new("10.73.0.0/24", "10.73.0.1", 173);
    let conf = c.conf("1.1.0");
    let ns = te::Netns::new();
    c.etcd.stop();
    let out = c.call("ADD", "etcd-down", Some(ns.path()), "eth0", "", &conf);
    assert_eq!(out.err_code(), 11, "{}", out.json);
    assert!(out.msg().contains("etcd"), "{}", out.msg());
    assert!(!ns_has(&ns, "eth0"));
    assert!(c.ports().is_empty());
    let st = c.call("STATUS", "", None, "", "", &conf);
    assert_eq!(st.err_code(), 50);
    // DEL cannot release the IP: the runtime must retry, so it fails with 11.
    assert_eq!(
        c.call("DEL", "etcd-down", Some(ns.path()), "eth0", "", &conf)
            .err_code(),
        11
    );
    c.etcd.restart();
    c.call("STATUS", "", None, "", "", &conf).ok();
    c.assert_clean();

    c.ovs.stop_db();
    let out = c.call("ADD", "ovs-down", Some(ns.path()), "eth0", "", &conf);
    assert_eq!(out.err_code(), 11, "{}", out.json);
    assert!(out.msg().contains("OVS"), "{}", out.msg());
    assert!(!ns_has(&ns, "eth0"));
    assert!(c.handles().is_empty());
    assert_eq!(c.call("STATUS", "", None, "", "", &conf).err_code(), 50);
}

#[test]
fn a_port_that_never_comes_up_is_reported_by_check_and_del_removes_it_all() {
    let c = Cluster::new("10.74.0.0/24", "10.74.0.1", 174);
    // The host ends go to a namespace where ovs-vswitchd cannot see them:
    // IP, veth and port are made, then the port never comes up. ADD does
    // not wait for the port, so it succeeds; CHECK is where this shows.
    let elsewhere = te::Netns::new();
    let mut conf = c.conf("1.1.0");
    conf["hostNetns"] = json!(elsewhere.path());
    let ns = te::Netns::new();
    let r = c
        .call("ADD", "half-done", Some(ns.path()), "eth0", "", &conf)
        .ok()
        .clone();
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    let mut cc = conf.clone();
    cc["prevResult"] = r;
    let out = c.call("CHECK", "half-done", Some(ns.path()), "eth0", "", &cc);
    assert_eq!(out.err_code(), 107, "{}", out.json);
    assert_eq!(
        out.msg(),
        format!(
            "OVS port {host_if} has no OpenFlow port: interface {host_if} failed: \
             could not open network device {host_if} (No such device)"
        ),
    );
    c.call("DEL", "half-done", Some(ns.path()), "eth0", "", &conf)
        .ok();
    assert!(!ns_has(&ns, "eth0"));
    assert!(!ns_out(&elsewhere, &["ip", "-o", "link"]).contains(": le"));
    c.assert_clean();
}

#[test]
fn exhausted_pool_is_a_plugin_code_and_rolls_back() {
    // /28: 14 hosts minus the gateway = 13 addresses.
    let c = Cluster::new("10.75.0.0/28", "10.75.0.1", 175);
    let conf = c.conf("1.0.0");
    let mut held = Vec::new();
    for i in 0..13 {
        let ns = te::Netns::new();
        c.call(
            "ADD",
            &format!("fill{i}"),
            Some(ns.path()),
            "eth0",
            "",
            &conf,
        )
        .ok();
        held.push(ns);
    }
    let ns = te::Netns::new();
    let out = c.call("ADD", "one-too-many", Some(ns.path()), "eth0", "", &conf);
    assert_eq!(out.err_code(), 100, "{}", out.json);
    assert!(!ns_has(&ns, "eth0"));
    assert_eq!(c.ports().len(), 13);
    assert_eq!(c.handles().len(), 13);
    for (i, ns) in held.iter().enumerate() {
        c.call(
            "DEL",
            &format!("fill{i}"),
            Some(ns.path()),
            "eth0",
            "",
            &conf,
        )
        .ok();
    }
    c.assert_clean();
}

#[test]
fn status_and_gc_need_cni_1_1() {
    let c = Cluster::new("10.76.0.0/24", "10.76.0.1", 176);
    c.call("STATUS", "", None, "", "", &c.conf("1.1.0")).ok();
    assert_eq!(
        c.call("STATUS", "", None, "", "", &c.conf("1.0.0"))
            .err_code(),
        1
    );
    assert_eq!(
        c.call("GC", "", None, "", "", &c.conf("0.4.0")).err_code(),
        1
    );
}

/// An operator running the file by hand gets the usage or the version on
/// stdout with exit 0; the runtime never passes flags.
#[test]
fn help_and_version_flags_answer_the_operator() {
    let bin = env!("CARGO_BIN_EXE_leengine-cni");
    for (flag, want) in [
        ("--help", "Usage: CNI_COMMAND="),
        ("--version", "leengine-cni 0."),
    ] {
        let out = std::process::Command::new(bin)
            .arg(flag)
            .env_remove("CNI_COMMAND")
            .output()
            .expect("run leengine-cni");
        assert!(out.status.success(), "{flag}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(want), "{flag}: {stdout}");
    }
}
