//! An upgrade that keeps the app's addresses (docs/apps.md#replacing-a-version,
//! docs/ipam.md#the-reserve). The core (API + reconciler), leengine-discovery,
//! an nginx agent and a Cell with a node, all real: the app's pool is bound
//! through the core, v1 runs 4 pods, v2 is deployed with `replace`, and the
//! reconciler steps it one pod at a time — drain and delete a v1 pod, start
//! a v2 pod in its address — under a steady load of non-idempotent requests
//! through nginx.

mod common;

use axum::http::{Method, StatusCode};
use common::lb::{version, LbRegion, CELL, PATIENCE};
use leengine_testenv as te;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_a_version_hands_its_four_addresses_to_the_new_pods_and_fails_no_request() {
    let r = LbRegion::start(152, &["v1", "v2"]).await;
    let app = r.create_app("shop").await;
    let ns = app["desired"]["namespace"].as_str().unwrap().to_string();
    let (st, v) = r
        .env
        .call(
            &r.admin,
            Method::PUT,
            &format!("/api/v1/apps/shop/ip-pools/{CELL}/web"),
            Some(json!({"reserve_secs": 300})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");

    let v1 = r.deploy("shop", "v1", 4).await["version"].as_u64().unwrap();
    let first = tokio::task::block_in_place(|| r.wait_served(&ns, &version(v1), 4, true));
    let load = r.load(4);
    let progressed = |before: u64| te::wait_until(PATIENCE, || load.count().ok > before + 50);
    tokio::task::block_in_place(|| assert!(progressed(0), "no answers: {:?}", load.count()));

    let (st, v2) = r.try_deploy("shop", "v2", 4, true).await;
    assert_eq!(st, StatusCode::CREATED, "{v2}");
    assert_eq!(v2["replaces"], json!(v1), "{v2}");
    let v2 = v2["version"].as_u64().unwrap();
    let (st, v) = r.try_deploy("shop", "v1", 4, true).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("replacement_in_progress")),
        "one handover at a time: {v}"
    );

    let mid = load.count().ok;
    let second = tokio::task::block_in_place(|| {
        let second = r.wait_served(&ns, &version(v2), 4, true);
        let gone = te::wait_until(PATIENCE, || r.pod_count(&ns, &version(v1)) == 0);
        assert!(gone, "v1's pods are deleted");
        assert!(progressed(mid), "load stalled: {:?}", load.count());
        second
    });
    assert_eq!(second, first, "v2 ended with other addresses than v1 had");

    let count = load.stop();
    eprintln!(
        "requests through nginx: {} answered, {} failed",
        count.ok, count.failed
    );
    assert_eq!(
        count.failed, 0,
        "failed requests during the handover: {count:?}"
    );

    // v1 is retired by the reconciler once replaced: its record, its
    // Deployment and its quota charge go, and the feed says so.
    let mut versions = Vec::new();
    for _ in 0..PATIENCE.as_secs() * 4 {
        let (st, v) = r
            .call(Method::GET, "/api/v1/apps/shop/versions", None)
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        versions = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["version"].as_u64())
            .collect();
        if versions == [v2] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(versions, [v2], "v1 retired");
    let (_, feed) = r
        .call(Method::GET, "/api/v1/apps/shop/activity", None)
        .await;
    let replaced = feed
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["action"] == "version_replaced");
    let replaced = replaced.unwrap_or_else(|| panic!("no version_replaced in {feed}"));
    assert_eq!(replaced["actor"], "leengine");
    assert_eq!(replaced["detail"]["version"], json!(v1));
    let gone = tokio::task::block_in_place(|| {
        te::wait_until(PATIENCE, || {
            let out = r
                .cell
                .kubectl(&["-n", &ns, "get", "deployments", "-o", "name"]);
            String::from_utf8_lossy(&out.stdout).trim() == format!("deployment.apps/v{v2}")
        })
    });
    assert!(gone, "v1's Deployment is deleted");
    let (_, me) = r.call(Method::GET, "/api/v1/user", None).await;
    assert_eq!(
        me["usage"]["containers"],
        json!(4),
        "v1's charge released: {me}"
    );
}
