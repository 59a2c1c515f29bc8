//! Typed Open_vSwitch operations against real ovsdb-server + ovs-vswitchd, observed
//! with ovs-vsctl.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use leengine_ovsdb::{BondMode, Client, Converge, OvsdbError};
use leengine_testenv as te;

fn ids(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn ensure_bridge_creates_once_and_converges_datapath() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let br = te::unique_name("br");
    assert!(!c.bridge_exists(&br).await.unwrap());
    assert_eq!(
        c.ensure_bridge(&br, "netdev").await.unwrap(),
        Converge::Created
    );
    assert!(c.bridge_exists(&br).await.unwrap());
    ovs.vsctl(&["br-exists", &br]);
    assert_eq!(common::get(&ovs, "Bridge", &br, "datapath_type"), "netdev");
    assert_eq!(
        ovs.vsctl(&["list-ifaces", &br]),
        "",
        "only the internal port"
    );
    assert_eq!(common::get(&ovs, "Interface", &br, "type"), "internal");

    assert_eq!(
        c.ensure_bridge(&br, "netdev").await.unwrap(),
        Converge::Unchanged
    );
    assert_eq!(common::count(&ovs, "Bridge", &format!("name={br}")), 1);
    assert_eq!(
        c.ensure_bridge(&br, "system").await.unwrap(),
        Converge::Updated
    );
    assert_eq!(common::get(&ovs, "Bridge", &br, "datapath_type"), "system");
    assert_eq!(
        c.ensure_bridge(&br, "netdev").await.unwrap(),
        Converge::Updated
    );

    // The internal port comes up in ovs-vswitchd.
    let ofport = c.wait_ofport(&br, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        common::get(&ovs, "Interface", &br, "ofport"),
        ofport.to_string()
    );
    let err = c.ensure_bridge("", "netdev").await.unwrap_err();
    assert!(matches!(err, OvsdbError::Invalid(_)), "{err:?}");
}

#[tokio::test]
async fn access_port_with_tag_external_ids_and_ofport() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let br = ovs.add_bridge();
    let (veth, _peer) = common::veth(&ovs, true);
    let ext = ids(&[
        ("leengine/container", "c0ffee"),
        ("leengine/ip", "10.1.0.7"),
    ]);
    let uuid = c
        .add_access_port(&br, &veth, Some(100), &ext)
        .await
        .unwrap();

    assert_eq!(ovs.vsctl(&["port-to-br", &veth]), br);
    assert_eq!(common::get(&ovs, "Port", &veth, "tag"), "100");
    assert_eq!(common::get(&ovs, "Port", &veth, "_uuid"), uuid);
    assert_eq!(
        common::get(&ovs, "Port", &veth, "external_ids:\"leengine/container\""),
        "c0ffee"
    );
    assert_eq!(common::get(&ovs, "Interface", &veth, "type"), "system");

    let ofport = c.wait_ofport(&veth, Duration::from_secs(10)).await.unwrap();
    assert!(ofport > 0);
    assert_eq!(
        common::get(&ovs, "Interface", &veth, "ofport"),
        ofport.to_string()
    );

    let info = c.port_info(&veth).await.unwrap().expect("port exists");
    assert_eq!(info.bridge.as_deref(), Some(br.as_str()));
    assert_eq!(info.tag, Some(100));
    assert_eq!(info.external_ids, ext);
    assert_eq!(info.ofport(), Some(i64::from(ofport)));
    assert!(info.trunks.is_empty());

    let found = c
        .find_ports_by_external_id("leengine/container", "c0ffee")
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        [veth.as_str()]
    );
    assert!(c
        .find_ports_by_external_id("leengine/container", "other")
        .await
        .unwrap()
        .is_empty());

    let listed = c.list_ports(&br).await.unwrap();
    let mut names: Vec<_> = listed.iter().map(|p| p.name.clone()).collect();
    names.sort();
    let mut want = vec![br.clone(), veth.clone()];
    want.sort();
    assert_eq!(names, want);
    assert!(c.port_info("no-such-port").await.unwrap().is_none());

    // Untagged access port.
    let (veth2, _) = common::veth(&ovs, true);
    c.add_access_port(&br, &veth2, None, &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(common::get(&ovs, "Port", &veth2, "tag"), "[]");
}

#[tokio::test]
async fn add_port_refuses_missing_bridge_and_duplicates_leaving_nothing() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let br = ovs.add_bridge();
    let (veth, _) = common::veth(&ovs, true);
    let missing = te::unique_name("nobr");
    let err = c
        .add_access_port(&missing, &veth, Some(10), &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, OvsdbError::NoBridge(ref b) if *b == missing),
        "{err:?}"
    );
    assert!(!err.is_unavailable());
    assert_eq!(common::count(&ovs, "Port", &format!("name={veth}")), 0);
    assert_eq!(common::count(&ovs, "Interface", &format!("name={veth}")), 0);

    c.add_access_port(&br, &veth, Some(10), &BTreeMap::new())
        .await
        .unwrap();
    let err = c
        .add_access_port(&br, &veth, Some(20), &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, OvsdbError::PortExists(ref p) if *p == veth),
        "{err:?}"
    );
    assert_eq!(
        common::get(&ovs, "Port", &veth, "tag"),
        "10",
        "first port untouched"
    );

    let err = c
        .add_access_port(&br, "x", Some(4096), &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(err, OvsdbError::Invalid(_)), "{err:?}");
}

#[tokio::test]
async fn wait_ofport_reports_interface_errors() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let br = ovs.add_bridge();
    // No such device in the namespace: ovs-vswitchd records why it could not open it.
    let ghost = te::unique_name("ghost");
    c.add_access_port(&br, &ghost, Some(5), &BTreeMap::new())
        .await
        .unwrap();
    let err = c
        .wait_ofport(&ghost, Duration::from_secs(10))
        .await
        .unwrap_err();
    match &err {
        OvsdbError::InterfaceFailed { iface, error } => {
            assert_eq!(iface, &ghost);
            assert!(error.contains("No such device"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    let err = c
        .wait_ofport("not-a-row", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, OvsdbError::NoInterface(_)), "{err:?}");
}

#[tokio::test]
async fn del_port_is_idempotent_and_bridge_scoped() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let br = ovs.add_bridge();
    let other = ovs.add_bridge();
    let (veth, _) = common::veth(&ovs, true);
    c.add_access_port(&br, &veth, Some(7), &BTreeMap::new())
        .await
        .unwrap();

    let err = c.del_port(&other, &veth).await.unwrap_err();
    assert!(matches!(err, OvsdbError::PortNotOnBridge { .. }), "{err:?}");
    assert_eq!(ovs.vsctl(&["port-to-br", &veth]), br);

    assert!(c.del_port(&br, &veth).await.unwrap());
    assert!(!ovs.vsctl(&["list-ports", &br]).lines().any(|l| l == veth));
    assert_eq!(common::count(&ovs, "Port", &format!("name={veth}")), 0);
    assert_eq!(
        common::count(&ovs, "Interface", &format!("name={veth}")),
        0,
        "interface collected"
    );

    assert!(
        !c.del_port(&br, &veth).await.unwrap(),
        "second delete is a no-op"
    );
    assert!(!c.del_port(&te::unique_name("nobr"), &veth).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_port_adds_on_one_connection() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let br = ovs.add_bridge();
    let veths: Vec<String> = (0..20).map(|_| common::veth(&ovs, true).0).collect();
    let tasks: Vec<_> = veths
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = c.clone();
            let (br, v) = (br.clone(), v.clone());
            tokio::spawn(async move {
                let vlan = 100 + u16::try_from(i).unwrap();
                c.add_access_port(&br, &v, Some(vlan), &ids(&[("idx", &i.to_string())]))
                    .await?;
                c.wait_ofport(&v, Duration::from_secs(20)).await
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap() > 0);
    }
    for (i, v) in veths.iter().enumerate() {
        assert_eq!(common::get(&ovs, "Port", v, "tag"), (100 + i).to_string());
        assert_eq!(
            common::get(&ovs, "Port", v, "external_ids:idx"),
            i.to_string()
        );
    }
    assert_eq!(c.list_ports(&br).await.unwrap().len(), 21);
}

#[tokio::test]
async fn bond_converges_and_reports_health() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let br = ovs.add_bridge();
    let bond = te::unique_name("bond");
    let (m1, p1) = common::veth(&ovs, true);
    let (m2, _p2) = common::veth(&ovs, true);
    let (m3, _p3) = common::veth(&ovs, true);
    let members = vec![m1.clone(), m2.clone()];

    let missing = te::unique_name("nobr");
    let err = c
        .ensure_bond(&missing, &bond, &members, BondMode::ActiveBackup, &[100])
        .await
        .unwrap_err();
    assert!(matches!(err, OvsdbError::NoBridge(_)), "{err:?}");

    let r = c
        .ensure_bond(&br, &bond, &members, BondMode::ActiveBackup, &[200, 100])
        .await;
    assert_eq!(r.unwrap(), Converge::Created);
    assert_eq!(ovs.vsctl(&["port-to-br", &bond]), br);
    assert_eq!(
        common::get(&ovs, "Port", &bond, "bond_mode"),
        "active-backup"
    );
    assert_eq!(common::get(&ovs, "Port", &bond, "trunks"), "[100, 200]");
    let mut ifaces: Vec<String> = ovs
        .vsctl(&["list-ifaces", &br])
        .lines()
        .map(str::to_string)
        .collect();
    ifaces.sort();
    let mut want = members.clone();
    want.sort();
    assert_eq!(ifaces, want);

    let again = c
        .ensure_bond(
            &br,
            &bond,
            &[m2.clone(), m1.clone()],
            BondMode::ActiveBackup,
            &[100, 200],
        )
        .await;
    assert_eq!(again.unwrap(), Converge::Unchanged);

    // A pool added later: its VLAN joins the trunk.
    let r = c
        .ensure_bond(
            &br,
            &bond,
            &members,
            BondMode::ActiveBackup,
            &[100, 200, 300],
        )
        .await;
    assert_eq!(r.unwrap(), Converge::Updated);
    assert_eq!(
        common::get(&ovs, "Port", &bond, "trunks"),
        "[100, 200, 300]"
    );
    let m1_uuid = common::get(&ovs, "Interface", &m1, "_uuid");

    // Replace a member: the kept one keeps its row, the dropped one is collected.
    let r = c
        .ensure_bond(
            &br,
            &bond,
            &[m1.clone(), m3.clone()],
            BondMode::BalanceSlb,
            &[100, 200, 300],
        )
        .await;
    assert_eq!(r.unwrap(), Converge::Updated);
    assert_eq!(common::get(&ovs, "Port", &bond, "bond_mode"), "balance-slb");
    assert_eq!(common::get(&ovs, "Interface", &m1, "_uuid"), m1_uuid);
    assert_eq!(common::count(&ovs, "Interface", &format!("name={m2}")), 0);

    let r = c
        .ensure_bond(
            &br,
            &bond,
            &members,
            BondMode::ActiveBackup,
            &[100, 200, 300],
        )
        .await;
    assert_eq!(r.unwrap(), Converge::Updated);

    // Health: both members up, one active; then one member's link goes down.
    let healthy = poll(|| async {
        let s = c.bond_status(&bond).await.unwrap();
        (s.is_healthy() && s.active_member.is_some()).then_some(s)
    })
    .await
    .expect("bond healthy with an active member");
    assert_eq!(healthy.members.len(), 2);
    assert!(members.contains(healthy.active_member.as_ref().unwrap()));
    assert_eq!(healthy.trunks, vec![100, 200, 300]);

    common::run(&ovs, &["ip", "link", "set", &p1, "down"]);
    let degraded = poll(|| async {
        let s = c.bond_status(&bond).await.unwrap();
        (s.members_down() == 1).then_some(s)
    })
    .await
    .expect("one member reported down");
    assert!(degraded.is_up());
    assert!(!degraded.is_healthy());
    let down: Vec<_> = degraded
        .members
        .iter()
        .filter(|m| !m.is_up())
        .map(|m| m.name.clone())
        .collect();
    assert_eq!(down, [m1.as_str()]);
    assert_eq!(common::get(&ovs, "Interface", &m1, "link_state"), "down");

    let err = c.bond_status("no-such-bond").await.unwrap_err();
    assert!(matches!(err, OvsdbError::NoPort(_)), "{err:?}");
}

/// Polls an observation for up to 20 s (ovs-vswitchd updates status columns asynchronously).
async fn poll<T, F, Fut>(mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < end {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_converges_settle_on_one_row() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let br = te::unique_name("br");
    let (m1, _) = common::veth(&ovs, true);
    let (m2, _) = common::veth(&ovs, true);
    let bond = te::unique_name("bond");
    let run =
        |f: &dyn Fn() -> tokio::task::JoinHandle<Converge>| (0..5).map(|_| f()).collect::<Vec<_>>();

    let bridges = run(&|| {
        let (c, br) = (c.clone(), br.clone());
        tokio::spawn(async move { c.ensure_bridge(&br, "netdev").await.unwrap() })
    });
    let mut outcomes = Vec::new();
    for t in bridges {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(
        outcomes.iter().filter(|o| **o == Converge::Created).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(common::count(&ovs, "Bridge", &format!("name={br}")), 1);

    // Each racer reads "absent", all but one lose the guarded create and retry as readers.
    let bonds = run(&|| {
        let (c, br, bond) = (c.clone(), br.clone(), bond.clone());
        let members = vec![m1.clone(), m2.clone()];
        tokio::spawn(async move {
            c.ensure_bond(&br, &bond, &members, BondMode::ActiveBackup, &[10, 20])
                .await
                .unwrap()
        })
    });
    let mut outcomes = Vec::new();
    for t in bonds {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(
        outcomes.iter().filter(|o| **o == Converge::Created).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| *o != Converge::Updated),
        "{outcomes:?}"
    );
    assert_eq!(common::count(&ovs, "Port", &format!("name={bond}")), 1);
    assert_eq!(common::get(&ovs, "Port", &bond, "trunks"), "[10, 20]");
}

#[tokio::test]
async fn wait_ofport_times_out_when_vswitchd_never_handles_the_port() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    // ovs-vswitchd cannot create a datapath of an unknown type, so the bridge's ports
    // never get an ofport.
    let br = te::unique_name("br");
    c.ensure_bridge(&br, "no-such-datapath").await.unwrap();
    let (veth, _) = common::veth(&ovs, true);
    c.add_access_port(&br, &veth, Some(3), &BTreeMap::new())
        .await
        .unwrap();
    let err = c
        .wait_ofport(&veth, Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OvsdbError::OfportTimeout { ref iface, .. } if *iface == veth),
        "{err:?}"
    );
    assert_eq!(common::get(&ovs, "Interface", &veth, "ofport"), "[]");
}

#[tokio::test]
async fn ensure_bridge_on_an_uninitialised_database_fails_cleanly() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    c.transact(
        leengine_ovsdb::DB,
        vec![leengine_ovsdb::Op::delete("Open_vSwitch", vec![])],
    )
    .await
    .unwrap();
    let br = te::unique_name("br");
    let err = c.ensure_bridge(&br, "netdev").await.unwrap_err();
    assert!(matches!(err, OvsdbError::NotInitialised), "{err:?}");
    assert!(
        !c.bridge_exists(&br).await.unwrap(),
        "the orphan bridge was collected"
    );
}
