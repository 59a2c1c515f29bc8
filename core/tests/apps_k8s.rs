//! Apps on two real Cells: the core's API writes the desired state, its
//! reconciler (leader-elected, in process) applies it to both Cells'
//! apiservers; kubelets pull the app image from the platform registry with
//! the app's robot pull secret; drains go through the drain contract with
//! this test playing discovery (writing the ack, or not).

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use base64::Engine as _;
use common::{
    jwt_claims, registry_settings, registry_token, start_cell_with_pool, token_keypair,
    token_registry, Auth, Env,
};
use leengine_core::cells::CellSettings;
use leengine_core::deploy::drain::DrainRequest;
use leengine_core::deploy::{reconcile, DeploySettings};
use leengine_core::server::Settings;
use leengine_testenv as te;
use serde_json::{json, Value};

/// Hang guard; not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(240);
const GROUP: &str = "g1";
const DOMAIN: &str = "web.example.com";

fn kjson(cell: &te::Cell, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = cell.kubectl(&a);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Pods of `version` in the app's namespace.
fn pods(cell: &te::Cell, ns: &str, version: u64) -> Vec<Value> {
    let sel = format!("leengine.io/version={version}");
    kjson(cell, &["-n", ns, "get", "pods", "-l", &sel])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn names(pods: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = pods
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// `n` Ready pods of `version`, each with an address of the Cell's pool.
fn wait_ready(cell: &te::Cell, ns: &str, version: u64, n: usize) {
    let net = cell.pools()[0].cidr.rsplit_once('.').unwrap().0.to_string() + ".";
    let mut seen = Vec::new();
    let ok = te::wait_until(PATIENCE, || {
        seen = pods(cell, ns, version);
        let live: Vec<&Value> = seen
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        live.len() == n
            && live.iter().all(|p| {
                te::pod_ready(p)
                    && p["status"]["podIP"]
                        .as_str()
                        .is_some_and(|ip| ip.starts_with(&net))
            })
    });
    assert!(
        ok,
        "{}: v{version} wants {n} Ready pods in {net}0/24: {seen:#?}",
        cell.name
    );
}

fn wait_gone(cell: &te::Cell, ns: &str, version: u64) {
    let ok = te::wait_until(PATIENCE, || pods(cell, ns, version).is_empty());
    assert!(ok, "{}: v{version} pods still there", cell.name);
}

/// Blocks the async test thread for a synchronous wait.
fn sync<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The drain requests under id `base` (`{ns}.{cell}.v{n}.`), with their ids.
async fn drain_requests(env: &Env, base: &str) -> Vec<(String, DrainRequest)> {
    let prefix = env.core.db.keys.drain_request(GROUP, DOMAIN, base);
    let rows = env.core.db.list::<DrainRequest>(&prefix).await.unwrap();
    let strip = prefix.len() - base.len();
    rows.into_iter()
        .map(|(k, r)| (k[strip..].to_string(), r))
        .collect()
}

/// The first pending drain request under id `base`, with its id.
async fn drain_request(env: &Env, base: &str) -> Option<(String, DrainRequest)> {
    drain_requests(env, base).await.into_iter().next()
}

/// A request under `base` other than `known`.
async fn wait_another_request(env: &Env, base: &str, known: &str) -> (String, DrainRequest) {
    for _ in 0..PATIENCE.as_secs() * 4 {
        if let Some(r) = drain_requests(env, base)
            .await
            .into_iter()
            .find(|(id, _)| id != known)
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no second drain request {base}*");
}

/// The requests under `base` go once their pods cannot be served.
async fn wait_no_request(env: &Env, base: &str) {
    for _ in 0..PATIENCE.as_secs() * 4 {
        if drain_requests(env, base).await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("drain requests {base}* never removed");
}

async fn wait_drain_request(env: &Env, base: &str) -> (String, DrainRequest) {
    for _ in 0..PATIENCE.as_secs() * 4 {
        if let Some(r) = drain_request(env, base).await {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no drain request {base}*");
}

/// What discovery does once every nginx agent applied the upstream.
async fn ack(env: &Env, id: &str) {
    let key = env.core.db.keys.drain_ack(GROUP, DOMAIN, id);
    let v = json!({"revision": 1, "acked": chrono::Utc::now()}).to_string();
    let mut root = env.etcd.root_client().await;
    root.put(key, v, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apps_run_in_two_cells_with_versions_drains_and_convergence() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("cells");
    std::fs::create_dir(&creds).unwrap();
    let (key, cert, cert_path) = token_keypair(dir.path());
    let env = Env::start(Settings {
        registry: Some(registry_settings(key, cert)),
        cells: CellSettings {
            credentials_dir: creds.clone(),
            min_app_cells: 2,
        },
        deploy: DeploySettings {
            resync: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(8),
            ..DeploySettings::default()
        },
        ..Default::default()
    })
    .await;
    let core_port = env.serve().await;
    tokio::spawn(reconcile::run(env.core.clone()));
    let registry = token_registry(core_port, &cert_path);
    let reg = registry.addr();

    let admin = env.user("root", true).await;
    let Auth::Bearer(olga_token) = env.user("olga", false).await else {
        unreachable!()
    };
    let olga = Auth::Bearer(olga_token.clone());
    let mary = env.user("mary", false).await;
    let dan = env.user("dan", false).await;
    let pat = env.user("pat", false).await;
    for (path, body) in [
        ("/api/v1/groups", json!({"name": "team"})),
        ("/api/v1/images", json!({"name": "team/web"})),
        ("/api/v1/images", json!({"name": "team/other"})),
    ] {
        env.create(&olga, path, body).await;
    }
    let push = registry_token(
        core_port,
        "repository:team/web:push,pull",
        "olga",
        &olga_token,
    );
    for tag in ["v1", "v2", "v3"] {
        te::Image::web(8080).push(&reg, "team/web", tag, Some(&push));
    }

    let (ca, mut cb) = sync(|| {
        std::thread::scope(|s| {
            let a = s.spawn(|| start_cell_with_pool(130));
            let b = s.spawn(|| start_cell_with_pool(131));
            (a.join().unwrap(), b.join().unwrap())
        })
    });
    for c in [&ca, &cb] {
        c.trust_registry(&reg);
    }

    // ---- Cells registry ----
    for (name, cell) in [("cella", &ca), ("cellb", &cb)] {
        std::fs::copy(cell.kubeconfig(), creds.join(format!("{name}.kubeconfig"))).unwrap();
        let v = env
            .create(
                &admin,
                "/api/v1/admin/cells",
                json!({"name": name, "kubeconfig": format!("{name}.kubeconfig"),
                    "etcd": [cell.etcd_endpoint()], "nginx_groups": [GROUP]}),
            )
            .await;
        assert_eq!(v["api_url"], cell.api_url());
    }
    let (st, v) = env
        .call(
            &admin,
            Method::POST,
            "/api/v1/admin/cells",
            Some(json!({"name": "cellc", "kubeconfig": "../../etc/passwd"})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_kubeconfig"))
    );
    let (st, cells) = env
        .call(&admin, Method::GET, "/api/v1/admin/cells", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(cells.as_array().unwrap().len(), 2);
    assert!(
        !cells.to_string().contains("BEGIN"),
        "credentials by reference only: {cells}"
    );
    let (st, _) = env
        .call(&olga, Method::GET, "/api/v1/admin/cells", None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // ---- app create: both Cells, namespace, Service, pull secret ----
    let (st, v) = env
        .call(
            &olga,
            Method::POST,
            "/api/v1/apps",
            Some(json!({"name": "solo", "cells": ["cella"]})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("too_few_cells"))
    );
    let app = env
        .create(
            &olga,
            "/api/v1/apps",
            json!({"name": "web", "image": format!("{reg}/team/web"),
                "lb": {"domain": DOMAIN, "group": GROUP}}),
        )
        .await;
    assert_eq!(app["desired"]["cells"], json!(["cella", "cellb"]));
    let ns = app["desired"]["namespace"].as_str().unwrap().to_string();
    let uid = app["desired"]["uid"].as_str().unwrap().to_string();
    for (user, role) in [("mary", "Master"), ("dan", "Developer"), ("pat", "Master")] {
        env.set_role(&olga, &format!("/api/v1/apps/web/members/{user}"), role)
            .await;
    }
    for user in ["mary", "dan"] {
        let member = format!("/api/v1/images/team/web/members/{user}");
        env.set_role(&olga, &member, "Reporter").await;
    }
    let mut robot_password = String::new();
    for c in [&ca, &cb] {
        let ok = sync(|| {
            te::wait_until(PATIENCE, || {
                let svc = kjson(c, &["-n", &ns, "get", "service", "app"]);
                let secret = kjson(c, &["-n", &ns, "get", "secret", "leengine-pull"]);
                let sel_ok = svc["spec"]["selector"] == json!({"leengine.io/app-uid": uid});
                let Some(raw) = secret["data"][".dockerconfigjson"].as_str() else {
                    return false;
                };
                let cfg: Value = serde_json::from_slice(
                    &base64::engine::general_purpose::STANDARD
                        .decode(raw)
                        .unwrap(),
                )
                .unwrap();
                robot_password = cfg["auths"][&reg]["password"].as_str().unwrap_or("").into();
                sel_ok && cfg["auths"][&reg]["username"] == "app$web"
            })
        });
        assert!(ok, "{}: namespace {ns}, Service and pull secret", c.name);
    }
    // The robot pulls its app's repository, nothing else, never pushes.
    let robot = |scope: &str| {
        let t = registry_token(core_port, scope, "app$web", &robot_password);
        jwt_claims(&t)["access"].clone()
    };
    assert_eq!(
        robot("repository:team/web:pull,push")[0]["actions"],
        json!(["pull"])
    );
    assert_eq!(robot("repository:team/other:pull"), json!([]));

    // ---- roles and pull rights ----
    let v1 = json!({"tag": "v1", "replicas": 2,
        "health": {"path": "/healthz", "period_seconds": 2}, "env": {"VERSION": "one"}});
    let (st, v) = env
        .call(
            &dan,
            Method::POST,
            "/api/v1/apps/web/versions",
            Some(v1.clone()),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );
    let (st, v) = env
        .call(
            &pat,
            Method::POST,
            "/api/v1/apps/web/versions",
            Some(v1.clone()),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("image_pull_forbidden"))
    );
    let v = env.create(&mary, "/api/v1/apps/web/versions", v1).await;
    assert_eq!(v["version"], 1);
    let (_, me) = env.call(&olga, Method::GET, "/api/v1/user", None).await;
    assert_eq!(
        me["usage"]["containers"], 4,
        "2 replicas × 2 Cells charged to the creator"
    );

    sync(|| {
        wait_ready(&ca, &ns, 1, 2);
        wait_ready(&cb, &ns, 1, 2);
    });
    let (st, versions) = env
        .call(&dan, Method::GET, "/api/v1/apps/web/versions", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{versions}");
    assert_eq!(
        versions[0]["placement"],
        json!([{"cell": "cella", "desired": 2, "ready": 2, "applied": true},
               {"cell": "cellb", "desired": 2, "ready": 2, "applied": true}])
    );
    let (_, containers) = env
        .call(&dan, Method::GET, "/api/v1/apps/web/containers", None)
        .await;
    let list = containers.as_array().unwrap();
    assert_eq!(list.len(), 4, "{containers}");
    assert!(
        list.iter().all(|c| c["ready"] == true
            && c["ip"].is_string()
            && c["node"].is_string()
            && c["version"] == 1
            && c["phase"] == "Running"),
        "{containers}"
    );
    // Boss's view of the Cell's IPAM: cella's two pods hold addresses of its pool.
    let (st, pools) = env
        .call(&admin, Method::GET, "/api/v1/admin/cells/cella/pools", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{pools}");
    let web = &pools[0];
    assert_eq!(
        (pools.as_array().unwrap().len(), web["name"].as_str()),
        (1, Some("web")),
        "{pools}"
    );
    assert_eq!(
        (web["vlan"].as_u64(), web["cidr"].as_str()),
        (Some(130), Some(ca.pools()[0].cidr.as_str()))
    );
    let n = |k: &str| web[k].as_u64().unwrap();
    assert!(n("ips_used") >= 2 && n("blocks_claimed") >= 1, "{web}");
    assert_eq!(
        n("ips_used") + n("ips_reserved") + n("ips_free"),
        n("ips_assignable"),
        "{web}"
    );
    let (st, _) = env
        .call(&olga, Method::GET, "/api/v1/admin/cells/cella/pools", None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // ---- the app's IP range: bound by its Owner once delegated, exported ----
    let bind = "/api/v1/apps/web/ip-pools/cella/web";
    let (st, v) = env.call(&olga, Method::PUT, bind, Some(json!({}))).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("pool_not_delegated")),
        "{v}"
    );
    let (st, _) = env
        .call(
            &admin,
            Method::PATCH,
            "/api/v1/admin/cells/cella",
            Some(json!({"delegated_pools": ["web"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = env.call(&mary, Method::PUT, bind, Some(json!({}))).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("owner_only")),
        "a Master: {v}"
    );
    let (st, v) = env
        .call(&olga, Method::PUT, bind, Some(json!({"reserve_secs": 300})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v["binding"],
        json!({"pools": ["web"], "shared_fallback": false, "reserve_secs": 300})
    );
    assert_eq!(
        v["ranges"][0]["cidr"].as_str(),
        Some(ca.pools()[0].cidr.as_str())
    );
    let used = |k: &str| v["ranges"][0][k].as_u64().unwrap_or(u64::MAX);
    assert!(used("ips_used") >= 1, "the app's pods hold addresses: {v}");
    assert_eq!(
        used("ips_used") + used("ips_reserved") + used("ips_free"),
        used("ips_assignable"),
        "{v}"
    );
    let (st, v) = env
        .call(
            &olga,
            Method::PUT,
            "/api/v1/apps/web/ip-pools/cella/nopool",
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "not delegated either: {v}");
    let (st, v) = env
        .call(
            &admin,
            Method::PUT,
            "/api/v1/apps/web/ip-pools/cella/nopool",
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("pool_not_found")),
        "{v}"
    );
    // The export covers every Cell of the app in one call: only cella binds a range.
    let (st, all) = env
        .call(&dan, Method::GET, "/api/v1/apps/web/ip-ranges", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{all}");
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    assert_eq!(
        (all[1]["cell"].as_str(), all[1]["binding"].is_null()),
        (Some("cellb"), true),
        "{all}"
    );
    let (st, text) = env
        .call(
            &dan,
            Method::GET,
            "/api/v1/apps/web/ip-ranges?format=text",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let want = format!("cella {} web web vlan=130\n", ca.pools()[0].cidr);
    assert_eq!(text.as_str(), Some(want.as_str()));
    let (st, _) = env.call(&olga, Method::DELETE, bind, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = env.call(&olga, Method::DELETE, bind, None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("pool_not_bound")),
        "{v}"
    );
    let (st, tpl) = env
        .call(
            &dan,
            Method::GET,
            "/api/v1/apps/web/versions/template",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (tpl["tag"].as_str(), tpl["replicas"].as_u64()),
        (Some("v1"), Some(2))
    );
    assert_eq!(tpl["health"]["path"], "/healthz");
    assert_eq!(tpl["env"], json!({"VERSION": "one"}));

    // ---- grey upgrade: v2 beside v1, then v1 drained and deleted ----
    let mut v2 = tpl.clone();
    v2["tag"] = json!("v2");
    v2["replicas"] = json!(1);
    env.create(&mary, "/api/v1/apps/web/versions", v2).await;
    sync(|| {
        wait_ready(&ca, &ns, 2, 1);
        wait_ready(&cb, &ns, 2, 1);
    });
    assert_eq!(pods(&ca, &ns, 1).len(), 2, "v1 still serves beside v2");
    let (st, _) = env
        .call(&mary, Method::DELETE, "/api/v1/apps/web/versions/1", None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let base_a = format!("{ns}.cella.v1.");
    let (id_a, req) = wait_drain_request(&env, &base_a).await;
    // The request names the pods while they still run; without an ack they stay.
    let before = pods(&ca, &ns, 1);
    assert_eq!(names(&before), {
        let mut p = req.pods.clone();
        p.sort();
        p
    });
    assert!(before
        .iter()
        .all(|p| p["metadata"]["deletionTimestamp"].is_null()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pods(&ca, &ns, 1).len(), 2, "pods wait for the ack");
    // A pod born during the drain (its ReplicaSet replaces a pod that died)
    // gets a request of its own; the version goes only when both are acked.
    let victim = req.pods[0].clone();
    let out = ca.kubectl(&["-n", &ns, "delete", "pod", &victim, "--wait=false"]);
    assert!(out.status.success());
    let (id_b, born) = wait_another_request(&env, &base_a, &id_a).await;
    assert!(
        born.pods.iter().all(|p| !req.pods.contains(p)),
        "only the newcomer: {born:?} {req:?}"
    );
    ack(&env, &id_a).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let live: Vec<String> = pods(&ca, &ns, 1)
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        born.pods.iter().all(|p| live.contains(p)),
        "the newcomer waits for its own ack: {live:?} {born:?}"
    );
    ack(&env, &id_b).await;
    sync(|| wait_gone(&ca, &ns, 1));
    wait_no_request(&env, &base_a).await;
    // cellb gets no ack: the timeout path deletes anyway, with a warning event.
    sync(|| wait_gone(&cb, &ns, 1));
    let (st, evs) = env
        .call(&dan, Method::GET, "/api/v1/apps/web/events?limit=500", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{evs}");
    let events = evs["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["reason"] == "DrainTimeout"
            && e["cell"] == "cellb"
            && e["type"] == "Warning"),
        "{evs}"
    );
    assert!(!events
        .iter()
        .any(|e| e["reason"] == "DrainTimeout" && e["cell"] == "cella"));
    let lasts: Vec<chrono::DateTime<chrono::Utc>> = events
        .iter()
        .filter_map(|e| e["last"].as_str()?.parse().ok())
        .collect();
    assert!(
        lasts.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {lasts:?}"
    );
    let (_, page) = env
        .call(&dan, Method::GET, "/api/v1/apps/web/events?limit=1", None)
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_offset"], 1);

    // ---- scale per Cell; scale-down drains exactly the pods that go ----
    let (st, _) = env
        .call(
            &dan,
            Method::POST,
            "/api/v1/apps/web/versions/2/scale",
            Some(json!({"cells": {"cella": 2}})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, v) = env
        .call(
            &mary,
            Method::POST,
            "/api/v1/apps/web/versions/2/scale",
            Some(json!({"cells": {"cella": 3}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    sync(|| wait_ready(&ca, &ns, 2, 3));
    let (st, _) = env
        .call(
            &mary,
            Method::POST,
            "/api/v1/apps/web/versions/2/scale",
            Some(json!({"cells": {"cella": 2}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (id, req) = wait_drain_request(&env, &format!("{ns}.cella.v2.")).await;
    assert_eq!(req.pods.len(), 1, "{req:?}");
    assert_eq!(pods(&ca, &ns, 2).len(), 3, "nothing deleted before the ack");
    ack(&env, &id).await;
    sync(|| wait_ready(&ca, &ns, 2, 2));
    let live: Vec<Value> = pods(&ca, &ns, 2)
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let left = names(&live);
    assert!(
        !left.contains(&req.pods[0]),
        "the drained pod is the one deleted: {left:?} {req:?}"
    );

    // ---- hand edits are put back ----
    let out = ca.kubectl(&["-n", &ns, "scale", "deployment", "v2", "--replicas=5"]);
    assert!(out.status.success());
    let out = cb.kubectl(&["-n", &ns, "delete", "service", "app"]);
    assert!(out.status.success());
    let back = sync(|| {
        te::wait_until(PATIENCE, || {
            kjson(&ca, &["-n", &ns, "get", "deployment", "v2"])["spec"]["replicas"] == 2
                && kjson(&cb, &["-n", &ns, "get", "service", "app"])["spec"]["selector"]
                    == json!({"leengine.io/app-uid": uid})
        })
    });
    assert!(back, "the reconciler puts hand edits back");

    // ---- a Cell down: reads 503 naming it, deploys land when it is back ----
    cb.stop_apiserver();
    let (st, v) = env
        .call(&dan, Method::GET, "/api/v1/apps/web/versions", None)
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("cell_unavailable")),
        "{v}"
    );
    assert!(v["detail"].as_str().unwrap().contains("cellb"), "{v}");
    let (st, _) = env
        .call(&dan, Method::GET, "/api/v1/apps/web/containers", None)
        .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    env.create(
        &mary,
        "/api/v1/apps/web/versions",
        json!({"tag": "v3", "replicas": 1,
            "health": {"path": "/healthz", "period_seconds": 2}}),
    )
    .await;
    sync(|| wait_ready(&ca, &ns, 3, 1));
    let mut status = Value::Null;
    for _ in 0..120 {
        status = env
            .call(&dan, Method::GET, "/api/v1/apps/web/status", None)
            .await
            .1;
        if status[1]["error"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        status[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cellb")),
        "{status}"
    );
    sync(|| cb.start_apiserver_again());
    sync(|| wait_ready(&cb, &ns, 3, 1));

    // ---- activity, stats ----
    let (_, feed) = env
        .call(&dan, Method::GET, "/api/v1/apps/web/activity", None)
        .await;
    let actions: Vec<&str> = feed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["deployed", "scaled", "version_deleted"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    let (_, stats) = env
        .call(&admin, Method::GET, "/api/v1/admin/stats", None)
        .await;
    let today = stats["days"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            today["deploys"].as_u64(),
            today["scalings"].as_u64(),
            today["deletions"].as_u64()
        ),
        (Some(3), Some(2), Some(1)),
        "{stats}"
    );

    // ---- delete the app: nothing left in either Cell; then the Cells go ----
    let (st, v) = env
        .call(&admin, Method::DELETE, "/api/v1/admin/cells/cella", None)
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("cell_not_empty"))
    );
    let (st, _) = env
        .call(&olga, Method::DELETE, "/api/v1/apps/web", None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    for c in [&ca, &cb] {
        let gone = sync(|| {
            te::wait_until(PATIENCE, || {
                !c.kubectl(&["get", "namespace", &ns]).status.success()
            })
        });
        assert!(
            gone,
            "{}: namespace {ns} removed with everything in it",
            c.name
        );
        let left = kjson(
            c,
            &[
                "get",
                "deployments,pods,services,secrets",
                "-A",
                "-l",
                "leengine.io/managed-by=leengine-core",
            ],
        );
        assert_eq!(left["items"], json!([]), "{}", c.name);
    }
    let (_, me) = env.call(&olga, Method::GET, "/api/v1/user", None).await;
    assert_eq!(
        (
            me["usage"]["apps"].as_u64(),
            me["usage"]["containers"].as_u64()
        ),
        (Some(0), Some(0))
    );
    for name in ["cella", "cellb"] {
        let (st, v) = env
            .call(
                &admin,
                Method::DELETE,
                &format!("/api/v1/admin/cells/{name}"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    }
}
