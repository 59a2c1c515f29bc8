//! Leak reclaim against real etcd, OVS and netns: a pod whose netns vanished
//! without CNI DEL is released after the grace period and not before; live
//! pods are never released, also while etcd flaps; `--reclaim off` holds.

mod common;

use std::time::{Duration, Instant};

use common::*;
use leengine_testenv as te;

fn report_ips(node: &Node) -> Vec<String> {
    node.get_json(&format!("/leengine/nodes/{NODE}/attachments"))
        .map(|r| {
            r["attachments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["ip"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn dead_pod_is_reclaimed_after_grace_and_not_before_live_pod_kept() {
    let node = Node::new(true);
    add_pool(&node.etcd, "p1", "10.1.0.0/22", "10.1.0.1", 100);
    let live = node.pod("c-live", "shop");
    let mut doomed = node.pod("c-doomed", "shop");
    let grace = Duration::from_secs(6);
    let agent = node.spawn(&["--reclaim-grace", "6s"]);

    // Both are alive in the report cnictl check reads.
    assert!(
        te::wait_until(PATIENCE, || {
            let ips = report_ips(&node);
            ips.contains(&live.ip) && ips.contains(&doomed.ip)
        }),
        "report lacks the pods: {:?}\n{}",
        report_ips(&node),
        agent.log()
    );

    // The runtime crashed: netns gone, no CNI DEL.
    doomed.netns.delete();
    let t0 = Instant::now();
    let first = agent.scan();
    let second = agent.scan();
    let early = t0.elapsed();
    if early < grace {
        assert!(
            node.handle("c-doomed").is_some(),
            "released inside the grace period ({early:?})"
        );
        assert_eq!(second["released"].as_array().unwrap().len(), 0, "{second}");
        assert_eq!(second["suspects"][0]["containerId"], "c-doomed", "{second}");
        assert!(
            second["suspects"][0]["streak"].as_u64().unwrap() >= 2,
            "{second}"
        );
    }
    assert!(first["dead"].as_u64().unwrap() >= 1, "{first}");

    assert!(
        te::wait_until(PATIENCE, || node.handle("c-doomed").is_none()),
        "never reclaimed:\n{}",
        agent.log()
    );
    let released_after = t0.elapsed();
    assert!(
        released_after >= grace,
        "released after {released_after:?} < grace {grace:?}"
    );

    // The live pod is untouched; the dead one's OVS port is gone.
    assert!(node.handle("c-live").is_some());
    let ports = node.ports();
    assert!(ports.contains(&live.port), "{ports:?}");
    // The port went before the IP did: already gone when the IP is.
    assert!(
        !node.ports().contains(&doomed.port),
        "OVS port of the reclaimed pod left: {:?}",
        node.ports()
    );
    assert!(live.netns.ping(&live.ip, 1));
    // The IP is the last step; its log line follows it.
    assert!(
        te::wait_until(PATIENCE, || {
            let log = agent.log();
            log.contains("reclaimed leaked IP") && log.contains("c-doomed")
        }),
        "{}",
        agent.log()
    );
    let m = agent.metrics();
    assert_eq!(
        sample(
            &m,
            "leengine_node_reclaim_total",
            &[("outcome", "released")]
        ),
        Some(1.0),
        "{m}"
    );
    let audit = block_on(async { ipam(&node.etcd).await.audit().await.unwrap() });
    assert!(
        audit.is_empty(),
        "IPAM inconsistent after reclaim: {audit:?}"
    );
}

#[test]
fn reclaim_off_releases_nothing() {
    let node = Node::new(true);
    add_pool(&node.etcd, "p1", "10.1.0.0/22", "10.1.0.1", 100);
    let mut pod = node.pod("c-off", "shop");
    let agent = node.spawn(&["--reclaim", "off", "--reclaim-grace", "1s"]);
    pod.netns.delete();
    let t0 = Instant::now();
    // Many scans, long past the grace period.
    let mut scans = 0;
    while scans < 4 || t0.elapsed() < Duration::from_secs(3) {
        let s = agent.scan();
        assert_eq!(s["dead"], 1, "{s}");
        assert!(s["released"].as_array().unwrap().is_empty(), "{s}");
        scans += 1;
    }
    assert!(
        node.handle("c-off").is_some(),
        "released although reclaim is off"
    );
}

#[test]
fn live_pod_survives_etcd_flapping_and_the_agent_recovers() {
    let mut node = Node::new(true);
    add_pool(&node.etcd, "p1", "10.1.0.0/22", "10.1.0.1", 100);
    let live = node.pod("c-flap", "shop");
    let agent = node.spawn(&["--reclaim-grace", "2s"]);
    assert!(
        te::wait_until(PATIENCE, || report_ips(&node).contains(&live.ip)),
        "{}",
        agent.log()
    );

    for _ in 0..3 {
        node.etcd.stop();
        // Longer than the grace period with scans failing all the while.
        std::thread::sleep(Duration::from_secs(4));
        node.etcd.restart();
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        node.handle("c-flap").is_some(),
        "live pod released during etcd flapping:\n{}",
        agent.log()
    );
    assert!(live.netns.ping(&live.ip, 1));
    let m = agent.metrics();
    assert!(
        sample(&m, "leengine_node_scan_failures_total", &[]).unwrap() >= 1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "leengine_node_reclaim_total",
            &[("outcome", "released")]
        ),
        Some(0.0)
    );

    // Recovered: registered again and still reclaiming real leaks.
    assert!(
        te::wait_until(PATIENCE, || node.registration().is_some()),
        "{}",
        agent.log()
    );
    let mut dead = node.pod("c-after", "shop");
    dead.netns.delete();
    assert!(
        te::wait_until(PATIENCE, || node.handle("c-after").is_none()),
        "agent no longer reclaims after etcd came back:\n{}",
        agent.log()
    );
    assert!(node.handle("c-flap").is_some());
}

#[test]
fn an_unreachable_apiserver_reclaims_nothing_and_says_so() {
    let node = Node::new(true);
    add_pool(&node.etcd, "p1", "10.1.0.0/22", "10.1.0.1", 100);
    let mut pod = node.pod("c-noapi", "shop");
    // A kubeconfig naming a port nothing listens on: a real refused connection.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
            te::free_port()
        ),
    )
    .unwrap();
    let agent = node.spawn(&[
        "--reclaim-grace",
        "1s",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    pod.netns.delete();
    let t0 = Instant::now();
    let mut last = serde_json::Value::Null;
    // Many scans, long past the grace period and the two-scan streak.
    let mut scans = 0;
    while scans < 4 || t0.elapsed() < Duration::from_secs(3) {
        last = agent.scan();
        assert_eq!(last["dead"], 1, "{last}");
        assert!(last["released"].as_array().unwrap().is_empty(), "{last}");
        scans += 1;
    }
    assert_eq!(last["withheld"][0]["containerId"], "c-noapi", "{last}");
    assert_eq!(last["withheld"][0]["reason"], "noApiserver", "{last}");
    assert!(
        node.handle("c-noapi").is_some(),
        "released without the apiserver:\n{}",
        agent.log()
    );
    assert!(node.ports().contains(&pod.port), "its port was removed");
    let m = agent.metrics();
    assert!(
        sample(
            &m,
            "leengine_node_reclaim_total",
            &[("outcome", "no_apiserver")]
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
    assert!(
        agent.log().contains("apiserver unavailable"),
        "{}",
        agent.log()
    );
}
