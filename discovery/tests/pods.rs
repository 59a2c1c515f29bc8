//! Discovery with real pods: a Deployment behind a Service, readiness
//! probes run by the kubelet, traffic through a real nginx agent.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use leengine_testenv as te;
use serde_json::Value;
use support::*;

const D: &str = "web.example.com";

fn deployment(name: &str, replicas: u32, probe_path: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web, variant: {name}}}}}\n  template:\n    metadata: {{labels: {{app: web, variant: {name}}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: web\n        image: leengine.local/web:1\n        imagePullPolicy: Never\n        readinessProbe:\n          httpGet: {{path: {probe_path}, port: 8080}}\n          initialDelaySeconds: 2\n          periodSeconds: 1\n"
    )
}

/// `pod name → (ip, container started at)` of the Deployment's pods.
type Pods = BTreeMap<String, (String, Option<SystemTime>)>;

/// The live (not deleted) pods of `variant`, and whether all are Ready.
fn pods(cell: &te::Cell, variant: &str) -> (Pods, bool) {
    let out = cell.kubectl(&[
        "-n",
        NS,
        "get",
        "pods",
        "-l",
        &format!("variant={variant}"),
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let items: Vec<&Value> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let ready = items.iter().all(|p| te::pod_ready(p));
    let pods = items
        .into_iter()
        .filter_map(|p| {
            let name = p["metadata"]["name"].as_str()?.to_string();
            let ip = p["status"]["podIP"].as_str().unwrap_or("").to_string();
            let started = p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(SystemTime::from);
            Some((name, (ip, started)))
        })
        .collect();
    (pods, ready)
}

/// Every upstream value written for `D`, with when this test saw it.
type Seen = Arc<Mutex<Vec<(SystemTime, BTreeSet<SocketAddr>)>>>;

fn record_upstreams(r: &Region) -> Seen {
    let log: Seen = Arc::default();
    let (l2, mut c) = (log.clone(), r.root.clone());
    let key = leengine_store::keys::slb_domain_upstream(GROUP, D);
    r.rt.spawn(async move {
        let mut s = c.watch(key, None).await.expect("watch upstream");
        while let Ok(Some(resp)) = s.message().await {
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                if let Ok(u) = leengine_slb::Upstream::parse(kv.value()) {
                    let set = u.servers.iter().map(|s| s.address).collect();
                    l2.lock().unwrap().push((SystemTime::now(), set));
                }
            }
        }
    });
    log
}

#[test]
fn pods_enter_only_after_readiness_and_leave_when_terminating() {
    let r = Region::start();
    let cell = web_cell(140);

    let port = te::free_port();
    r.publish_domain(D, port);
    let agent = r.agent("h1");
    r.register_cell("c1", &cell, &cell.api_url());
    r.bind("c1", "web", D);
    let seen = record_upstreams(&r);
    let d = r.discovery("d1", &[]);
    d.wait_active();

    cell.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {NS}}}\nspec:\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    ));
    // Same Service label, a probe that always fails: never served.
    cell.apply(&deployment("broken", 1, "/nope"));
    cell.apply(&deployment("good", 1, "/healthz"));

    let serving = |n: usize| {
        let mut last = None;
        let ok = te::wait_until(Duration::from_secs(120), || {
            last = r.upstream(D);
            let (good, ready) = pods(&cell, "good");
            let ips: BTreeSet<SocketAddr> = good
                .values()
                .filter_map(|(ip, _)| format!("{ip}:8080").parse().ok())
                .collect();
            ready
                && good.len() == n
                && ips.len() == n
                && last.as_ref().is_some_and(|(s, _)| *s == ips)
        });
        assert!(
            ok,
            "upstream never held the {n} good pods; last {last:?}\n{}",
            d.log()
        );
    };
    serving(1);

    cell.kubectl(&["-n", NS, "scale", "deployment/good", "--replicas=3"]);
    serving(3);
    // Every good pod answers through nginx.
    let (good, _) = pods(&cell, "good");
    let mut answered = BTreeSet::new();
    te::wait_until(Duration::from_secs(30), || {
        if let Some((200, body)) = te::http_get_host(port, D, "/cgi-bin/whoami") {
            answered.insert(body.split_whitespace().next().unwrap_or("").to_string());
        }
        answered.len() == 3
    });
    let names: BTreeSet<String> = good.keys().cloned().collect();
    assert_eq!(answered, names, "nginx reaches every ready pod");
    assert_eq!(agent.live_peers(D).len(), 3);

    cell.kubectl(&["-n", NS, "scale", "deployment/good", "--replicas=1"]);
    serving(1);

    // What was ever written: never the broken pod, and no good pod before
    // its probe could first pass (2 s after its container started).
    let (broken, _) = pods(&cell, "broken");
    let broken_ip: SocketAddr = format!("{}:8080", broken.values().next().unwrap().0)
        .parse()
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for (_, set) in &seen {
        assert!(
            !set.contains(&broken_ip),
            "the pod whose probe fails was served: {set:?}"
        );
    }
    for (name, (ip, started)) in &good {
        let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
        let first = seen
            .iter()
            .find(|(_, s)| s.contains(&addr))
            .map(|(t, _)| *t);
        let (Some(first), Some(started)) = (first, *started) else {
            panic!("pod {name}: first seen {first:?}, started {started:?}");
        };
        // startedAt has whole seconds: the true start is within 1 s after it.
        assert!(
            first >= started + Duration::from_millis(1500),
            "pod {name} entered the upstream {:?} after its container started, before readiness",
            first.duration_since(started).unwrap_or_default()
        );
    }
}
