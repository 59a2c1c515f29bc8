//! Benchmark (hack/bench/apps.sh): time from the deploy call to all pods
//! Ready, for 1, 10 and 50 replicas, through the core (API → etcd →
//! reconciler → server-side apply in a real Cell), against `kubectl apply`
//! of the same Deployment in the same Cell, same run. Prints the ratio.
//! Root only (a real Cell from leengine-testenv).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request};
use leengine_core::cells::CellSettings;
use leengine_core::deploy::objects;
use leengine_core::deploy::spec::{AppSpec, VersionSpec};
use leengine_core::deploy::{reconcile, DeploySettings};
use leengine_core::server::{self, Core, Settings};
use leengine_core::store::Db;
use leengine_core::users;
use leengine_testenv as te;
use serde_json::{json, Value};
use tower::ServiceExt as _;

const PATIENCE: Duration = Duration::from_secs(600);

fn sibling(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

async fn call(app: &axum::Router, token: &str, method: Method, path: &str, body: Value) -> Value {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

/// Ready pods in `ns` with `selector`.
fn ready(cell: &te::Cell, ns: &str, selector: &str) -> usize {
    let out = cell.kubectl(&["-n", ns, "get", "pods", "-l", selector, "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["items"].as_array().map_or(0, |items| {
        items
            .iter()
            .filter(|p| {
                p["metadata"]["deletionTimestamp"].is_null()
                    && p["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
            .count()
    })
}

fn wait_ready(cell: &te::Cell, ns: &str, selector: &str, n: usize) {
    let ok = te::wait_until(PATIENCE, || ready(cell, ns, selector) == n);
    assert!(ok, "{n} pods of {selector} in {ns} never became Ready");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("cells");
    std::fs::create_dir(&creds).unwrap();
    let etcd = te::Etcd::start_with_prefix(&te::unique_name("bench"));
    let db = Db::new(etcd.client(&te::Component::Core).await, etcd.keys().clone());
    let core = Core::new(
        db,
        Settings {
            cells: CellSettings {
                credentials_dir: creds.clone(),
                min_app_cells: 1,
            },
            deploy: DeploySettings {
                resync: Duration::from_secs(10),
                ..Default::default()
            },
            default_quota: leengine_core::quota::Quota {
                max_apps: 100,
                max_containers: 10_000,
                max_cpu_millis: None,
                max_memory_bytes: None,
            },
            ..Default::default()
        },
    )
    .unwrap();
    let app = server::app(core.clone());
    tokio::spawn(reconcile::run(core.clone()));
    users::create_user(&core.db, "root", "password-of-bench", true)
        .await
        .unwrap();
    let (_, token) = users::issue_token(&core.db, "root", "bench", None)
        .await
        .unwrap();

    let registry = te::Registry::start();
    let reg = registry.addr();
    te::Image::web(8080).push(&reg, "team/web", "v1", None);
    let cell = tokio::task::block_in_place(|| {
        te::Cell::start(te::CellSpec {
            nodes: 1,
            pools: vec![("web".into(), 130)],
            cni_plugin: sibling("leengine-cni"),
            node_agent: None,
            reclaim: false,
        })
    });
    let pool = cell.pools()[0].clone();
    let out = std::process::Command::new(sibling("cnictl"))
        .args(["--etcd", &cell.etcd_endpoint(), "pool", "add", "web"])
        .args([
            "--cidr",
            &pool.cidr,
            "--gateway",
            &pool.gateway,
            "--vlan",
            "130",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cell.trust_registry(&reg);
    std::fs::copy(cell.kubeconfig(), creds.join("c.kubeconfig")).unwrap();
    call(
        &app,
        &token,
        Method::POST,
        "/api/v1/admin/cells",
        json!({"name": "c", "kubeconfig": "c.kubeconfig"}),
    )
    .await;
    call(
        &app,
        &token,
        Method::POST,
        "/api/v1/groups",
        json!({"name": "team"}),
    )
    .await;
    call(
        &app,
        &token,
        Method::POST,
        "/api/v1/images",
        json!({"name": "team/web", "public": true}),
    )
    .await;
    let image = format!("{reg}/team/web");
    let health = json!({"path": "/healthz", "period_seconds": 1});
    // Warm the node's image cache so both sides measure scheduling and start.
    let warm = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: warm, namespace: default}}\nspec:\n  containers:\n  - {{name: w, image: \"{image}:v1\"}}\n"
    );
    cell.apply(&warm);
    tokio::task::block_in_place(|| {
        te::wait_until(PATIENCE, || {
            let out = cell.kubectl(&["get", "pod", "warm", "-o", "jsonpath={.status.phase}"]);
            String::from_utf8_lossy(&out.stdout) == "Running"
        })
    });
    cell.kubectl(&["delete", "pod", "warm", "--wait=false"]);

    println!("replicas  core_s  kubectl_s  ratio");
    for (i, n) in [1usize, 10, 50].into_iter().enumerate() {
        let name = format!("bench{i}");
        let created = call(
            &app,
            &token,
            Method::POST,
            "/api/v1/apps",
            json!({"name": name, "image": image}),
        )
        .await;
        let spec: AppSpec = serde_json::from_value(created["desired"].clone()).unwrap();
        // Namespace, Service and pull secret first: the timing is the deploy.
        tokio::task::block_in_place(|| {
            te::wait_until(PATIENCE, || {
                cell.kubectl(&["-n", &spec.namespace, "get", "secret", objects::PULL_SECRET])
                    .status
                    .success()
            })
        });
        let t0 = Instant::now();
        let v: VersionSpec = serde_json::from_value(
            call(
                &app,
                &token,
                Method::POST,
                &format!("/api/v1/apps/{name}/versions"),
                json!({"tag": "v1", "replicas": n, "health": health}),
            )
            .await,
        )
        .unwrap();
        let sel = objects::version_selector(&spec, v.version);
        tokio::task::block_in_place(|| wait_ready(&cell, &spec.namespace, &sel, n));
        let core_s = t0.elapsed().as_secs_f64();

        // Each side gets an empty node: the app goes before the reference.
        call(
            &app,
            &token,
            Method::DELETE,
            &format!("/api/v1/apps/{name}"),
            Value::Null,
        )
        .await;
        tokio::task::block_in_place(|| {
            te::wait_until(PATIENCE, || {
                !cell
                    .kubectl(&["get", "namespace", &spec.namespace])
                    .status
                    .success()
            })
        });
        // The same Deployment, applied by kubectl into its own namespace.
        let ref_ns = format!("ref{i}");
        let mut ref_app = spec.clone();
        ref_app.namespace = ref_ns.clone();
        ref_app.uid = format!("ref{i}");
        cell.kubectl(&["create", "namespace", &ref_ns]);
        let secret = serde_json::to_string(&objects::pull_secret(&ref_app, &[], "x", "y")).unwrap();
        let manifest = serde_json::to_string(&objects::deployment(
            &ref_app,
            &v,
            u32::try_from(n).expect("replicas"),
        ))
        .unwrap();
        cell.apply(&secret);
        let path = dir.path().join(format!("ref{i}.json"));
        std::fs::write(&path, &manifest).unwrap();
        let t1 = Instant::now();
        let out = cell.kubectl(&["apply", "-f", &path.display().to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ref_sel = objects::version_selector(&ref_app, v.version);
        tokio::task::block_in_place(|| wait_ready(&cell, &ref_ns, &ref_sel, n));
        let kubectl_s = t1.elapsed().as_secs_f64();
        println!(
            "{n:8}  {core_s:6.2}  {kubectl_s:9.2}  {:5.2}",
            core_s / kubectl_s
        );
        // Free the node for the next size.
        cell.kubectl(&["delete", "namespace", &ref_ns, "--wait=true"]);
    }
}
