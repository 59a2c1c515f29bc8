//! Proves every service the harness starts is real and works, and that the
//! virtual data centre forwards (and isolates) the way a real one does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use leengine_testenv as te;

#[tokio::test]
async fn etcd_put_get_txn_watch_and_lease_expiry() {
    let etcd = te::Etcd::start();
    let mut c = etcd.root_client().await;
    c.put("/smoke/a", "1", None).await.unwrap();
    let got = c.get("/smoke/a", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"1");

    // A compare-and-swap that must fail, then one that must succeed.
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let stale = Txn::new()
        .when([Compare::value("/smoke/a", CompareOp::Equal, "0")])
        .and_then([TxnOp::put("/smoke/a", "2", None)]);
    assert!(!c.txn(stale).await.unwrap().succeeded());
    let fresh = Txn::new()
        .when([Compare::value("/smoke/a", CompareOp::Equal, "1")])
        .and_then([TxnOp::put("/smoke/a", "2", None)]);
    assert!(c.txn(fresh).await.unwrap().succeeded());

    let mut stream = c.watch("/smoke/w", None).await.unwrap();
    c.put("/smoke/w", "x", None).await.unwrap();
    let value = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let resp = stream.message().await.unwrap().expect("watch open");
            // The first response only confirms the watch was created.
            if let Some(ev) = resp.events().first() {
                return ev.kv().unwrap().value().to_vec();
            }
        }
    })
    .await
    .expect("watch event in time");
    assert_eq!(value, b"x");

    let lease = c.lease_grant(1, None).await.unwrap().id();
    let opts = etcd_client::PutOptions::new().with_lease(lease);
    c.put("/smoke/leased", "v", Some(opts)).await.unwrap();
    assert_eq!(c.get("/smoke/leased", None).await.unwrap().count(), 1);
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.get("/smoke/leased", None).await.unwrap().count() == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "a 1 s lease never expired");
}

#[tokio::test]
async fn etcd_restart_keeps_data_and_port() {
    let mut etcd = te::Etcd::start();
    let mut c = etcd.root_client().await;
    c.put("/smoke/keep", "v", None).await.unwrap();
    etcd.stop();
    let down =
        leengine_store::connect_with_timeout(&etcd.root_config(), Duration::from_millis(300)).await;
    let unreachable = match down {
        Err(_) => true,
        Ok(mut d) => d.get("/smoke/keep", None).await.is_err(),
    };
    assert!(unreachable, "a stopped etcd must not answer");
    etcd.restart();
    let mut c = etcd.root_client().await;
    assert_eq!(
        c.get("/smoke/keep", None).await.unwrap().kvs()[0].value(),
        b"v"
    );
}

#[test]
fn pods_on_one_node_ping_in_their_access_vlan() {
    let ovs = te::Ovs::start();
    let dc = te::DataCentre::new(&ovs, 1, &[100]);
    let a = dc.add_pod(0, 100, "10.10.0.1/24");
    let b = dc.add_pod(0, 100, "10.10.0.2/24");
    assert!(
        a.netns.ping(&b.ip, 5),
        "same-VLAN pods on one node must reach each other"
    );
    let tag = ovs.vsctl(&["get", "port", &a.port, "tag"]);
    assert_eq!(tag, "100");
}

#[test]
fn pods_on_two_nodes_ping_through_bonds_and_tor_and_reach_the_external_host() {
    let ovs = te::Ovs::start();
    let dc = te::DataCentre::new(&ovs, 2, &[100, 200]);
    let a = dc.add_pod(0, 100, "10.10.0.1/24");
    let b = dc.add_pod(1, 100, "10.10.0.2/24");
    let db = dc.add_external_host(100, "10.10.0.250/24");
    assert!(a.netns.ping(&b.ip, 5), "pod on node 0 -> pod on node 1");
    assert!(b.netns.ping(&db.ip, 5), "pod on node 1 -> external host");
    assert!(db.netns.ping(&a.ip, 5), "external host -> pod on node 0");
}

#[test]
fn pods_in_different_vlans_cannot_reach_each_other() {
    let ovs = te::Ovs::start();
    let dc = te::DataCentre::new(&ovs, 2, &[100, 200]);
    let a = dc.add_pod(0, 100, "10.10.0.1/24");
    let same = dc.add_pod(1, 100, "10.10.0.3/24");
    let other = dc.add_pod(1, 200, "10.10.0.2/24");
    // Same subnet, different VLAN: only the VLAN separates them.
    assert!(a.netns.ping(&same.ip, 5), "control: same VLAN works");
    assert!(!a.netns.ping(&other.ip, 2), "VLAN 100 reached VLAN 200");
}

#[test]
fn traffic_survives_one_bond_member_going_down() {
    let ovs = te::Ovs::start();
    let dc = te::DataCentre::new(&ovs, 2, &[100]);
    let a = dc.add_pod(0, 100, "10.10.0.1/24");
    let b = dc.add_pod(1, 100, "10.10.0.2/24");
    assert!(a.netns.ping(&b.ip, 5));
    let active = dc.active_member(0).expect("bond has an active member");
    let idx = dc
        .node(0)
        .members
        .iter()
        .position(|m| *m == active)
        .expect("active member is one of ours");
    dc.set_member(0, idx, false);
    let moved = te::wait_until(Duration::from_secs(10), || {
        dc.active_member(0).is_some_and(|m| m != active)
    });
    assert!(moved, "bond did not fail over from {active}");
    let ok = te::wait_until(Duration::from_secs(15), || a.netns.ping(&b.ip, 1));
    assert!(ok, "no traffic after the active member went down");
}

#[test]
fn nginx_with_lua_serves_a_request() {
    let nginx = te::Nginx::start(|ctx| {
        format!(
            "{}events {{}}\nhttp {{\n{}server {{ listen 127.0.0.1:{}; \
             location / {{ content_by_lua_block {{ ngx.say('lua-' .. (1 + 41)) }} }} }}\n}}\n",
            ctx.main_preamble(),
            ctx.http_preamble(),
            ctx.port
        )
    });
    let body = http_get(nginx.port(), "/");
    assert!(body.contains("lua-42"), "{body}");
    assert!(!nginx.worker_pids().is_empty());
}

#[test]
fn dockerd_builds_and_runs_the_scratch_busybox_image() {
    let dockerd = te::Dockerd::start();
    te::build_busybox_image(&dockerd, "testenv/busybox:1");
    let out = dockerd
        .cli(&[
            "run",
            "--rm",
            "--network",
            "none",
            "testenv/busybox:1",
            "sh",
            "-c",
            "echo $((6*7))",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

#[test]
fn registry_accepts_a_push() {
    let dockerd = te::Dockerd::start();
    let reg = te::Registry::start();
    let image = format!("{}/smoke/busybox:v1", reg.addr());
    te::build_busybox_image(&dockerd, &image);
    let out = dockerd.cli(&["push", &image]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tags = reg.get("/v2/smoke/busybox/tags/list").unwrap();
    assert!(tags.contains("\"v1\""), "{tags}");
}

#[test]
fn netns_is_created_like_a_runtime_and_removed_on_drop() {
    let path;
    {
        let ns = te::Netns::new();
        path = ns.path().to_path_buf();
        assert!(path.exists());
        let lo = ns.must(&["ip", "-o", "link", "show", "lo"]);
        assert!(String::from_utf8_lossy(&lo.stdout).contains("UP"));
    }
    assert!(!path.exists(), "netns survived its drop");
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
