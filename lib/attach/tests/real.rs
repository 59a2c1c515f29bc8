//! The real `Ports` and `Links` against a real ovsdb-server and the kernel:
//! what they find, and that gone is success (rule 6 of the teardown).

use leengine_attach::{HostLinks, Links, OvsPorts, Port, PortScope, Ports, Target};
use leengine_netdp::{Netlink, NetnsFile};
use leengine_ovsdb::vswitch::ext_ids::{CONTAINER_ID, IFNAME};
use leengine_ovsdb::Client;
use leengine_testenv as te;

const T: Target<'static> = Target {
    container_id: "c-real",
    ifname: "eth0",
    netns: None,
};

fn add_port(ovs: &te::Ovs, bridge: &str, name: &str, cid: Option<&str>, ifname: &str) {
    let mut args = vec!["add-port".to_string(), bridge.into(), name.into()];
    if let Some(cid) = cid {
        args.extend([
            "--".into(),
            "set".into(),
            "port".into(),
            name.into(),
            format!("external_ids:{CONTAINER_ID}={cid}"),
            format!("external_ids:{IFNAME}={ifname}"),
        ]);
    }
    ovs.vsctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

fn sorted(mut v: Vec<Port>) -> Vec<(String, String)> {
    v.sort_by(|a, b| (&a.bridge, &a.name).cmp(&(&b.bridge, &b.name)));
    v.into_iter().map(|p| (p.bridge, p.name)).collect()
}

#[tokio::test]
async fn anywhere_finds_the_attachments_ports_by_name_and_ids_on_every_bridge() {
    let ovs = te::Ovs::start();
    let (b1, b2) = (ovs.add_bridge(), ovs.add_bridge());
    let host_if = T.host_ifname();
    add_port(&ovs, &b1, &host_if, None, "");
    add_port(&ovs, &b2, "renamed0", Some("c-real"), "eth0");
    add_port(&ovs, &b2, "second1", Some("c-real"), "eth1");
    add_port(&ovs, &b2, "stranger0", Some("c-else"), "eth0");
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let ports = OvsPorts::new(Ok(&c), PortScope::Anywhere);

    let found = ports.find(&T).await.unwrap();
    let mut want = vec![
        (b1.clone(), host_if.clone()),
        (b2.clone(), "renamed0".into()),
    ];
    want.sort();
    assert_eq!(sorted(found.clone()), want);
    for p in &found {
        ports.remove(p).await.unwrap();
    }
    assert_eq!(ovs.vsctl(&["list-ports", &b1]), "");
    assert_eq!(ovs.vsctl(&["list-ports", &b2]), "second1\nstranger0");
    // Gone is success: nothing left to find, removing again is fine.
    assert!(ports.find(&T).await.unwrap().is_empty());
    ports.remove(&found[0]).await.unwrap();
}

#[tokio::test]
async fn the_plugins_bridge_needs_no_lookup_and_a_gone_bridge_is_success() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let ports = OvsPorts::new(Ok(&c), PortScope::Bridge("br-never-made"));
    let found = ports.find(&T).await.unwrap();
    assert_eq!(
        sorted(found.clone()),
        vec![("br-never-made".to_string(), T.host_ifname())]
    );
    ports.remove(&found[0]).await.unwrap();

    let reason = "OVSDB unavailable: cannot connect to unix:/nowhere";
    let down = OvsPorts::new(Err(reason.into()), PortScope::Anywhere);
    let e = down.find(&T).await.unwrap_err();
    assert!(
        matches!(
            &e,
            leengine_attach::Failure::Unavailable { what: "OVSDB", .. }
        ),
        "{e:?}"
    );
    assert_eq!(e.to_string(), reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_remove_the_veth_and_missing_ones_are_success() {
    let ns = te::Netns::new();
    ns.must(&[
        "ip", "link", "add", "ta0", "type", "veth", "peer", "name", "ta1",
    ]);
    let nl = Netlink::in_netns(&NetnsFile::open(ns.path()).unwrap())
        .await
        .unwrap();
    let links = HostLinks::new(Ok(&nl));
    links.remove_host("ta0").await.unwrap();
    let out = String::from_utf8(ns.must(&["ip", "link"]).stdout).unwrap();
    assert!(!out.contains("ta0") && !out.contains("ta1"), "{out}");
    links.remove_host("ta0").await.unwrap();
    links.remove_sandbox(ns.path(), "ta1").await.unwrap();
    links
        .remove_sandbox(std::path::Path::new("/run/netns/attach-none-xyz"), "eth0")
        .await
        .unwrap();
    let none = HostLinks::new(Err("no socket".into()));
    assert!(none.remove_host("ta0").await.is_err());
}
