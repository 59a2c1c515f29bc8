//! Registration under a lease: appears, carries capacity/usage, disappears
//! within the TTL after kill -9, is revoked at once on SIGTERM.

mod common;

use common::*;
use leengine_testenv as te;
use nix::sys::signal::Signal;

#[test]
fn registration_appears_and_expires_after_kill_9() {
    let node = Node::new(true);
    let mut agent = node.spawn(&[]);
    assert!(
        te::wait_until(PATIENCE, || node.registration().is_some()),
        "no registration:\n{}",
        agent.log()
    );
    let reg = node.registration().unwrap();
    assert_eq!(reg["node"], NODE);
    assert_eq!(reg["agentVersion"], env!("CARGO_PKG_VERSION"));
    assert!(reg["capacity"]["cpus"].as_u64().unwrap() >= 1, "{reg}");
    assert!(
        reg["capacity"]["memoryBytes"].as_u64().unwrap() > 0,
        "{reg}"
    );
    assert!(
        reg["usage"]["memoryUsedBytes"].as_u64().unwrap() > 0,
        "{reg}"
    );
    assert!(reg["bond"].is_null(), "no uplinks configured: {reg}");
    let lease = node
        .etcd
        .etcdctl(&["get", &format!("/leengine/nodes/{NODE}"), "-w", "json"]);
    let kv: serde_json::Value = serde_json::from_slice(&lease.stdout).unwrap();
    assert!(
        kv["kvs"][0]["lease"].as_i64().unwrap_or(0) != 0,
        "registration is not under a lease: {kv}"
    );

    agent.signal(Signal::SIGKILL);
    agent.wait();
    assert!(
        te::wait_until(PATIENCE, || node.registration().is_none()),
        "registration outlived the agent"
    );
}

fn scans(agent: &Agent) -> f64 {
    sample(&agent.metrics(), "leengine_node_scans_total", &[]).unwrap()
}

#[test]
fn sighup_scans_now_and_sigterm_revokes_the_registration_at_once() {
    let node = Node::new(true);
    // A TTL far longer than the test: only a revoke can remove the key in time.
    // A scan period far longer too: only SIGHUP can trigger the second scan.
    let mut agent = node.spawn(&["--lease-ttl", "600s", "--scan-interval", "1h"]);
    assert!(
        te::wait_until(PATIENCE, || node.registration().is_some()),
        "{}",
        agent.log()
    );
    assert!(
        te::wait_until(PATIENCE, || scans(&agent) == 1.0),
        "{}",
        agent.log()
    );
    agent.signal(Signal::SIGHUP);
    assert!(
        te::wait_until(PATIENCE, || scans(&agent) == 2.0),
        "{}",
        agent.log()
    );
    agent.signal(Signal::SIGTERM);
    let status = agent.wait();
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert!(
        node.registration().is_none(),
        "lease not revoked:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("registration revoked"),
        "{}",
        agent.log()
    );
}

#[test]
fn scan_on_demand_is_refused_to_remote_peers_while_metrics_stay_scrapable() {
    let node = Node::new(true);
    let agent = node.spawn_on(&[], "0.0.0.0");
    // A non-loopback address of the node (its own namespace), as a remote
    // Prometheus or any other host would reach the endpoint.
    node.ovs
        .netns()
        .must(&["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"]);
    let (code, body) = agent.curl_at("192.0.2.1", "POST", "/scan").unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("only accepted from this host"), "{body}");
    let (code, metrics) = agent.curl_at("192.0.2.1", "GET", "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("leengine_node"), "{metrics}");
    // From this host it works.
    assert!(agent.scan()["allocations"].is_number(), "{}", agent.log());
}
