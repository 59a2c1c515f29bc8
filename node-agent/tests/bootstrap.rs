//! Bootstrap through OVSDB: bridge + bond1 over the uplinks, trunks follow
//! the pools (also one added later), traffic survives a member going down,
//! bond health in the registration.

mod common;

use common::*;
use leengine_testenv as te;

fn trunks(node: &Node) -> String {
    node.ovs.vsctl(&["get", "port", "bond1", "trunks"])
}

fn bond_members(reg: &serde_json::Value) -> Vec<(String, bool)> {
    reg["bond"]["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|x| {
                    (
                        x["name"].as_str().unwrap().to_string(),
                        x["up"].as_bool().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bond_follows_pools_survives_a_member_down_and_reports_health() {
    let node = Node::new(false);
    add_pool(&node.etcd, "p1", "10.1.0.0/22", "10.1.0.1", 100);
    let dc = te::DataCentre::uplinks_only(&node.ovs, 1, &[100, 200]);
    let [m0, m1] = dc.node(0).members.clone();
    let agent = node.spawn(&[
        "--uplinks",
        &format!("{m0},{m1}"),
        "--bond-mode",
        "active-backup",
    ]);

    // The agent created the bridge and the bond with both members, trunking VLAN 100.
    assert!(
        te::wait_until(PATIENCE, || node
            .ovs
            .try_vsctl(&["get", "port", "bond1", "trunks"])
            .status
            .success()
            && trunks(&node) == "[100]"),
        "bond1 not formed:\n{}",
        agent.log()
    );
    assert_eq!(
        node.ovs
            .vsctl(&["get", "bridge", &node.bridge, "datapath_type"]),
        "netdev"
    );
    let ifaces = node.ovs.vsctl(&["list-ifaces", &node.bridge]);
    assert!(ifaces.contains(&m0) && ifaces.contains(&m1), "{ifaces}");
    assert_eq!(
        node.ovs.vsctl(&["get", "port", "bond1", "bond_mode"]),
        "active-backup"
    );

    // A pool added later is trunked too.
    add_pool(&node.etcd, "p2", "10.2.0.0/22", "10.2.0.1", 200);
    assert!(
        te::wait_until(PATIENCE, || trunks(&node) == "[100, 200]"),
        "trunks did not follow the new pool: {}",
        trunks(&node)
    );

    // Health in the registration: both members up, one active.
    let reg = {
        let mut last = None;
        te::wait_until(PATIENCE, || {
            last = node.registration();
            last.as_ref().is_some_and(|r| {
                bond_members(r).iter().filter(|(_, up)| *up).count() == 2
                    && r["bond"]["activeMember"].is_string()
            })
        });
        last.expect("registration")
    };
    assert_eq!(reg["bond"]["membersUp"], 2, "{reg}");
    let active = reg["bond"]["activeMember"].as_str().unwrap().to_string();

    // A pod on the node reaches a host behind the ToR in its VLAN.
    let pod = node.pod("c-bond-pod", "shop");
    let db = dc.add_external_host(100, "10.1.3.250/22");
    assert!(
        te::wait_until(PATIENCE, || pod.netns.ping(&db.ip, 1)),
        "pod cannot reach the external host through the bond"
    );

    // The active member goes down: traffic moves to the other one.
    let idx = if active == m0 { 0 } else { 1 };
    dc.set_member(0, idx, false);
    assert!(
        te::wait_until(PATIENCE, || pod.netns.ping(&db.ip, 1)),
        "traffic did not survive member {active} going down"
    );
    let reg = {
        let mut last = None;
        te::wait_until(PATIENCE, || {
            last = node.registration();
            last.as_ref().is_some_and(|r| r["bond"]["membersDown"] == 1)
        });
        last.unwrap()
    };
    assert!(
        bond_members(&reg).contains(&(active.clone(), false)),
        "{reg}"
    );
    assert_ne!(
        reg["bond"]["activeMember"].as_str(),
        Some(active.as_str()),
        "{reg}"
    );
    let m = agent.metrics();
    assert_eq!(
        sample(&m, "leengine_node_bond_member_up", &[("member", &active)]),
        Some(0.0),
        "{m}"
    );
}

#[test]
fn once_converges_and_prints_a_summary() {
    let node = Node::new(false);
    add_pool(&node.etcd, "p1", "10.1.0.0/22", "10.1.0.1", 300);
    let dc = te::DataCentre::uplinks_only(&node.ovs, 1, &[300]);
    let [m0, m1] = dc.node(0).members.clone();
    let _pod_ns = te::Netns::new();
    let mut args = node.base_args();
    args.extend([
        "--uplinks".into(),
        format!("{m0},{m1}"),
        "--bond-mode".into(),
        "balance-slb".into(),
        "--once".into(),
    ]);
    let out = node.host_command(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sum["allocations"], 0);
    assert_eq!(sum["reportPublished"], true);
    assert_eq!(
        node.ovs.vsctl(&["get", "port", "bond1", "bond_mode"]),
        "balance-slb"
    );
    assert_eq!(trunks(&node), "[300]");
    assert!(node
        .get_json(&format!("/leengine/nodes/{NODE}/attachments"))
        .is_some());
}

/// Runs the agent with `args`; asserts exit 2 and one line on stderr, returns it.
fn refused(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

#[test]
fn bad_configuration_fails_with_one_line() {
    let err = refused(&["--node", "x", "--bond-mode", "round-robin", "--once"]);
    assert!(err.contains("bond_mode"), "{err}");

    // A TLS file that is not there is named before anything is touched.
    let err = refused(&[
        "--node",
        "x",
        "--etcd-endpoints",
        "https://127.0.0.1:1",
        "--etcd-ca",
        "/dev/null",
        "--once",
    ]);
    assert!(
        err.contains("etcd CA file /dev/null holds no PEM certificate"),
        "{err}"
    );

    // So is a kubeconfig that is not YAML, on one line despite the parser's excerpt.
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, "clusters: [\n").unwrap();
    let kc = kc.to_str().unwrap();
    let err = refused(&["--node", "x", "--once", "--kubeconfig", kc]);
    assert!(
        err.contains(&format!("cannot read kubeconfig {kc}")),
        "{err}"
    );
}
