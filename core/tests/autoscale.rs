//! Autoscaling on requests per second (docs/apps.md#autoscaling): the core
//! (API, reconciler, autoscaler), leengine-discovery, an nginx agent with
//! its nginx, a Cell with a node and Prometheus scraping the agent through
//! core's service discovery, all real. A load through nginx drives the
//! app from 1 to its max of 3 pods; a light load brings it back to 1 after
//! the down window, without a failed request; with Prometheus gone, a load
//! changes nothing and the status says why.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::lb::{version, LbRegion, Monitoring, CELL, DOMAIN, PATIENCE};
use leengine_testenv as te;
use serde_json::{json, Value};

async fn autoscale_status(r: &LbRegion) -> Value {
    let (st, v) = r
        .call(Method::GET, "/api/v1/apps/shop/autoscale", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["status"]["cells"][CELL].clone()
}

/// The newest version's count in the Cell as the core's record holds it.
async fn replicas(r: &LbRegion, v: u64) -> u64 {
    let (_, rec) = r
        .call(
            Method::GET,
            &format!("/api/v1/apps/shop/versions/{v}"),
            None,
        )
        .await;
    rec["cells"][CELL]
        .as_u64()
        .or(rec["replicas"].as_u64())
        .unwrap_or(0)
}

/// Polls (hang guard only) until `done` holds of the Cell's autoscale status.
async fn wait_status(r: &LbRegion, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..PATIENCE.as_secs() {
        last = autoscale_status(r).await;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("autoscaler never {what}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_per_second_scale_up_then_down_through_the_drain_and_no_metrics_freeze() {
    let mut r = LbRegion::start_monitored(154, &["v1"], Monitoring::Lb).await;
    let app = r.create_app("shop").await;
    let ns = app["desired"]["namespace"].as_str().unwrap().to_string();
    let v1 = r.deploy("shop", "v1", 1).await["version"].as_u64().unwrap();
    tokio::task::block_in_place(|| r.wait_served(&ns, &version(v1), 1, true));

    // Only Owner and Master set a policy; a bad one is refused whole.
    let dev = r.env.user("dora", false).await;
    r.env
        .set_role(&r.owner, "/api/v1/apps/shop/members/dora", "Developer")
        .await;
    let policy = json!({"min": 1, "max": 3, "targets": {"requests_per_second": 5},
        "window_seconds": 10, "scale_down_stabilization_seconds": 20});
    let path = "/api/v1/apps/shop/autoscale";
    let (st, v) = r
        .env
        .call(&dev, Method::PUT, path, Some(policy.clone()))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let mut bad = policy.clone();
    bad["min"] = json!(4);
    let (st, v) = r.call(Method::PUT, path, Some(bad)).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_policy")),
        "{v}"
    );
    let (st, v) = r.call(Method::GET, path, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "no policy yet: {v}");
    let (st, v) = r.call(Method::PUT, path, Some(policy)).await;
    assert_eq!(st, StatusCode::OK, "{v}");

    // A load far above 5 requests/s per pod: up to max.
    let heavy = r.load(4);
    let t = std::time::Instant::now();
    let up = wait_status(&r, "scaled up", |s| s["current"] == 3).await;
    eprintln!("scaled up after {:?}: {up}", t.elapsed());
    assert_eq!(
        up["last_scale"]["reading"]["metric"], "requests_per_second",
        "{up}"
    );
    tokio::task::block_in_place(|| r.wait_served(&ns, &version(v1), 3, true));
    let count = heavy.stop();
    assert_eq!(
        count.failed, 0,
        "failed requests while scaling up: {count:?}"
    );

    // About 2 requests/s: below the target for one pod, so down to min —
    // after the down window, through the drain, failing nothing.
    let light = te::Load::paced(
        r.port,
        DOMAIN,
        "POST",
        "/cgi-bin/whoami",
        1,
        Duration::from_millis(500),
    );
    let t = std::time::Instant::now();
    let down = wait_status(&r, "scaled down", |s| s["current"] == 1).await;
    eprintln!("scaled down after {:?}: {down}", t.elapsed());
    assert!(
        down["last_scale"]["from"].as_u64() > Some(1),
        "the last change was the scale-down: {down}"
    );
    tokio::task::block_in_place(|| r.wait_served(&ns, &version(v1), 1, true));
    let count = light.stop();
    eprintln!(
        "light load during the scale-down: {} answered, {} failed",
        count.ok, count.failed
    );
    assert!(count.ok > 0, "the light load got answers");
    assert_eq!(
        count.failed, 0,
        "failed requests while scaling down: {count:?}"
    );

    // Each decision is in the feed with its reason, and an Event in the Cell.
    let (_, feed) = r
        .call(Method::GET, "/api/v1/apps/shop/activity", None)
        .await;
    let autoscaled: Vec<&Value> = feed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "autoscaled")
        .collect();
    assert!(autoscaled.len() >= 2, "{feed}");
    assert!(autoscaled
        .iter()
        .all(|e| e["actor"] == "leengine-autoscaler"
            && e["detail"]["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("requests_per_second"))));
    let events = r.cell.kubectl(&["-n", &ns, "get", "events", "-o", "json"]);
    let events: Value = serde_json::from_slice(&events.stdout).unwrap();
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Autoscaled"),
        "no Autoscaled event: {events}"
    );

    // No metrics, no decision: with Prometheus gone a heavy load changes
    // nothing, and the status says why.
    drop(r.prometheus.take());
    let heavy = r.load(4);
    let frozen = wait_status(&r, "froze", |s| {
        s["frozen"]
            .as_str()
            .is_some_and(|f| f.contains("Prometheus"))
    })
    .await;
    // Several more periods (2 s each) under load, still frozen at 1.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let still = autoscale_status(&r).await;
    eprintln!("frozen: {still}");
    assert!(still["frozen"].is_string(), "{still}");
    assert_eq!(replicas(&r, v1).await, 1, "frozen: {frozen}");
    heavy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cpu_percent_of_the_request_scales_a_burning_app_up_and_back() {
    let r = LbRegion::start_monitored(155, &["v1"], Monitoring::Containers).await;
    let app = r.create_app("shop").await;
    let ns = app["desired"]["namespace"].as_str().unwrap().to_string();
    let body = json!({"tag": "v1", "replicas": 1, "resources": {"cpu_request": "100m"},
        "health": {"path": "/healthz", "period_seconds": 1}});
    let (st, v) = r
        .call(Method::POST, "/api/v1/apps/shop/versions", Some(body))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let v1 = v["version"].as_u64().unwrap();
    tokio::task::block_in_place(|| r.wait_served(&ns, &version(v1), 1, true));
    let policy = json!({"min": 1, "max": 2, "targets": {"cpu_percent": 50},
        "window_seconds": 10, "scale_down_stabilization_seconds": 10});
    let (st, v) = r
        .call(Method::PUT, "/api/v1/apps/shop/autoscale", Some(policy))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");

    // Shell arithmetic on every request: far above half of 0.1 core.
    let burn = te::Load::start(r.port, DOMAIN, "POST", "/cgi-bin/burn", 2);
    let t = std::time::Instant::now();
    let up = wait_status(&r, "scaled up on CPU", |s| s["current"] == 2).await;
    eprintln!("scaled up after {:?}: {up}", t.elapsed());
    assert_eq!(up["last_scale"]["reading"]["metric"], "cpu_percent", "{up}");
    tokio::task::block_in_place(|| r.wait_served(&ns, &version(v1), 2, true));
    let count = burn.stop();
    assert!(count.ok > 0, "the burn got answers: {count:?}");

    let down = wait_status(&r, "scaled down once idle", |s| s["current"] == 1).await;
    eprintln!("scaled down: {down}");
    assert_eq!(
        down["last_scale"]["reading"]["metric"], "cpu_percent",
        "{down}"
    );
    assert!(
        down["last_scale"]["reading"]["value"].as_f64() < Some(50.0),
        "{down}"
    );
}
