//! Deploy, and the LB follows — without a failed request. The core (API +
//! reconciler), leengine-discovery, two nginx agents and a Cell with a
//! node, all real, and nobody else writing drain acks: a steady load of
//! non-idempotent requests through nginx while an app is upgraded v1 → v2
//! (v2 beside v1, then v1 deleted through the drain) and scaled down 6 → 2.

mod common;

use common::lb::{version, LbRegion, CELL, GROUP};
use leengine_testenv as te;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grey_upgrade_and_scale_down_under_load_fail_no_request() {
    let r = LbRegion::start(150, &["v1", "v2"]).await;
    let app = r.create_app("web").await;
    let ns = app["desired"]["namespace"].as_str().unwrap().to_string();
    let v1 = r.deploy("web", "v1", 6).await["version"].as_u64().unwrap();
    let first = tokio::task::block_in_place(|| r.wait_served(&ns, &version(v1), 6, true));

    let load = r.load(4);
    let progressed =
        |before: u64| te::wait_until(common::lb::PATIENCE, || load.count().ok > before + 50);
    tokio::task::block_in_place(|| assert!(progressed(0), "no answers: {:?}", load.count()));

    // Grey upgrade: v2 serves beside v1 once Ready, then v1 is drained and goes.
    let v2 = r.deploy("web", "v2", 6).await["version"].as_u64().unwrap();
    let second = tokio::task::block_in_place(|| r.wait_served(&ns, &version(v2), 6, false));
    assert!(first.is_disjoint(&second));
    let mid = load.count().ok;
    r.delete_version("web", v1).await;
    tokio::task::block_in_place(|| {
        r.wait_served(&ns, &version(v2), 6, true);
        let gone = te::wait_until(common::lb::PATIENCE, || r.pod_count(&ns, &version(v1)) == 0);
        assert!(gone, "v1's pods are deleted after their drain");
        assert!(progressed(mid), "load stalled: {:?}", load.count());
    });

    // Scale-down 6 → 2: the four pods that go are drained first.
    let mid = load.count().ok;
    r.scale("web", v2, 2).await;
    let last = tokio::task::block_in_place(|| {
        let last = r.wait_served(&ns, &version(v2), 2, true);
        assert!(progressed(mid), "load stalled: {:?}", load.count());
        last
    });
    assert!(last.is_subset(&second));

    let count = load.stop();
    eprintln!(
        "requests through nginx: {} answered, {} failed",
        count.ok, count.failed
    );
    assert_eq!(
        count.failed, 0,
        "failed requests during the upgrade and scale-down: {count:?}"
    );
    assert!(count.ok > 0);
    // The acks came from discovery, within the timeout: no DrainTimeout.
    let acks = r.discovery.metric("leengine_discovery_drain_acks_total");
    assert!(
        acks.is_some_and(|a| a >= 2.0),
        "discovery acked both drains: {acks:?}"
    );
    let (_, evs) = r
        .call(
            axum::http::Method::GET,
            "/api/v1/apps/web/events?limit=500",
            None,
        )
        .await;
    assert!(
        !evs["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["reason"] == "DrainTimeout"),
        "{evs}"
    );
    // Once the drained pods are gone, their requests go too.
    let prefix = r
        .env
        .core
        .db
        .keys
        .drain_request(GROUP, common::lb::DOMAIN, "");
    let mut settled = false;
    for _ in 0..common::lb::PATIENCE.as_secs() * 4 {
        settled = r.env.core.db.count(&prefix).await.unwrap() == 0;
        if settled {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(settled, "drain requests left in {CELL}");
}
