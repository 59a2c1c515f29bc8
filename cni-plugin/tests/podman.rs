//! A real libcni client: podman (CNI backend) runs busybox on a network whose
//! conflist is leengine + portmap, in a two-node virtual data centre.

mod common;

use common::*;
use leengine_testenv as te;
use serde_json::json;
use std::path::Path;
use std::process::Command;

const VLAN: u32 = 195;

fn podman(dir: &Path, bin_dir: &Path, net_dir: &Path) -> Command {
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n\
             [engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n",
            bin_dir.display(),
            net_dir.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", &conf)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("runroot"))
        .args(["--storage-driver", "vfs"])
        .arg("--cni-config-dir")
        .arg(net_dir);
    cmd
}

fn node_ports(c: &Cluster, bridge: &str) -> Vec<String> {
    c.ovs
        .vsctl(&["list-ports", bridge])
        .lines()
        .filter(|p| p.starts_with("le"))
        .map(str::to_string)
        .collect()
}

#[test]
fn podman_container_gets_a_pool_ip_and_reaches_the_data_centre() {
    te::require_bin("podman", "podman");
    // The external host sits at the top of the /22, away from the blocks nodes claim first.
    let c = Cluster::new("10.95.0.0/22", "10.95.0.1", VLAN);
    let dc = te::DataCentre::new(&c.ovs, 2, &[u16::try_from(VLAN).unwrap()]);
    let external = dc.add_external_host(u16::try_from(VLAN).unwrap(), "10.95.3.250/22");

    // A pod on node 1, attached by the plugin directly.
    let mut conf_b = c.conf("1.0.0");
    conf_b["bridge"] = json!(dc.node_bridge(1));
    conf_b["node"] = json!("node-b");
    let peer_ns = te::Netns::new();
    let peer = c
        .call("ADD", "peer-b", Some(peer_ns.path()), "eth0", "", &conf_b)
        .ok()
        .clone();
    let peer_ip = peer["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();

    // podman's network on node 0: leengine + portmap.
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("bin");
    let net_dir = dir.path().join("net.d");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::create_dir_all(&net_dir).unwrap();
    std::os::unix::fs::symlink(BIN, bin_dir.join("leengine")).unwrap();
    for entry in std::fs::read_dir("/usr/lib/cni").unwrap() {
        let p = entry.unwrap().path();
        std::os::unix::fs::symlink(&p, bin_dir.join(p.file_name().unwrap())).unwrap();
    }
    let mut ours = c.conf("1.0.0");
    ours["bridge"] = json!(dc.node_bridge(0));
    ours.as_object_mut().unwrap().remove("cniVersion");
    ours.as_object_mut().unwrap().remove("name");
    ours["capabilities"] = json!({ "ips": true, "mac": true });
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "lenet",
        "plugins": [ours, { "type": "portmap", "capabilities": { "portMappings": true } }]
    });
    std::fs::write(
        net_dir.join("10-lenet.conflist"),
        serde_json::to_vec_pretty(&conflist).unwrap(),
    )
    .unwrap();
    let rootfs = te::busybox_rootfs(dir.path());

    let script = format!(
        "ip -o -4 addr show eth0; ip route; ping -c 1 -W 3 {peer_ip} && echo PEER-OK; \
         ping -c 1 -W 3 {} && echo EXTERNAL-OK",
        external.ip
    );
    let out = podman(dir.path(), &bin_dir, &net_dir)
        .args(["run", "--rm", "--network", "lenet"])
        .args([
            "--ulimit",
            "nofile=10000:10000",
            "--ulimit",
            "nproc=1000:1000",
        ])
        .arg("--rootfs")
        .arg(&rootfs)
        .args(["/bin/sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "podman failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("inet 10.95."), "{stdout}");
    assert!(stdout.contains("/22"), "{stdout}");
    assert!(stdout.contains("default via 10.95.0.1"), "{stdout}");
    assert!(
        stdout.contains("PEER-OK"),
        "cannot reach the pod on node 1:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("EXTERNAL-OK"),
        "cannot reach the external host:\n{stdout}\n{stderr}"
    );

    // After exit: IP freed, no port on node 0, no veth.
    assert!(
        node_ports(&c, dc.node_bridge(0)).is_empty(),
        "{:?}",
        node_ports(&c, dc.node_bridge(0))
    );
    assert_eq!(
        c.handles(),
        vec!["/leengine/ipam/handles/peer-b/eth0".to_string()]
    );
    c.call("DEL", "peer-b", Some(peer_ns.path()), "eth0", "", &conf_b)
        .ok();
    assert!(node_ports(&c, dc.node_bridge(1)).is_empty());
    c.assert_clean();
    drop(external);
}
