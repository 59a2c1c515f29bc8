//! Benchmark of issue 14 (hack/bench/apps.sh): time from the deploy call
//! (POST …/versions) to all pods Ready, and to all of them in the nginx
//! upstream of the app's domain (leengine-discovery → etcd → a real nginx
//! agent → nginx's live peers), for 1, 10 and 50 replicas, through the core
//! (API → etcd → reconciler → server-side apply in a real Cell). Reference,
//! same run: `kubectl apply` of the same Deployment (Ready only: without the
//! core nothing puts it in an upstream). Prints the core/kubectl ratio.
//! Root only.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::lb::{LbRegion, DOMAIN};
use leengine_core::deploy::objects;
use leengine_core::deploy::spec::{AppSpec, VersionSpec};
use leengine_testenv as te;

/// Hang guard; not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(600);

fn sync<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Seconds from `t0` until `n` pods of `sel` are Ready, then until nginx
/// serves exactly those pods for [`DOMAIN`] (when `upstream`).
fn wait(r: &LbRegion, t0: Instant, ns: &str, sel: &str, n: usize, upstream: bool) -> (f64, f64) {
    let mut ready_s = None;
    let ok = te::wait_until(PATIENCE, || {
        let (pods, ready) = r.pods(ns, sel);
        if ready_s.is_none() && ready && pods.len() == n {
            ready_s = Some(t0.elapsed().as_secs_f64());
        }
        ready_s.is_some()
            && (!upstream || {
                let want: BTreeSet<SocketAddr> = pods
                    .iter()
                    .filter_map(|(_, ip)| format!("{ip}:8080").parse().ok())
                    .collect();
                want.len() == n && r.agents.iter().all(|a| a.live_peers(DOMAIN) == want)
            })
    });
    assert!(ok, "{n} pods of {sel} in {ns}: ready/served never");
    (ready_s.unwrap_or_default(), t0.elapsed().as_secs_f64())
}

/// The same Deployment as the core's, applied by kubectl in namespace
/// `ref_ns` with the app's pull secret; seconds to all pods Ready.
fn reference(r: &LbRegion, dir: &std::path::Path, app: &AppSpec, v: &VersionSpec, n: usize) -> f64 {
    let c = &r.cell;
    let ns = format!("ref-{}", app.namespace);
    let ref_app = r.plain_namespace(app, &ns);
    let d = objects::deployment(&ref_app, v, u32::try_from(n).expect("replicas"));
    let path = dir.join(format!("{ns}.json"));
    std::fs::write(&path, serde_json::to_string(&d).unwrap()).unwrap();
    let t0 = Instant::now();
    let out = c.kubectl(&["apply", "-f", &path.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sel = objects::version_selector(&ref_app, v.version);
    let (ready_s, _) = wait(r, t0, &ns, &sel, n, false);
    // Free the node for the core's side.
    c.kubectl(&["delete", "namespace", &ns, "--wait=true"]);
    ready_s
}

fn sizes() -> Vec<usize> {
    std::env::var("REPLICAS")
        .unwrap_or_else(|_| "1 10 50".into())
        .split_whitespace()
        .map(|s| s.parse().expect("REPLICAS: numbers"))
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let r = LbRegion::start(153, &["v1"]).await;
    let dir = tempfile::tempdir().unwrap();
    println!(
        "replicas  core_ready_s  core_upstream_s  kubectl_ready_s  ratio_ready  ratio_upstream"
    );
    for (i, n) in sizes().into_iter().enumerate() {
        let name = format!("bench{i}");
        let app: AppSpec =
            serde_json::from_value(r.create_app(&name).await["desired"].clone()).unwrap();
        // Namespace, Service and pull secret first: the timing is the deploy.
        sync(|| {
            te::wait_until(PATIENCE, || {
                r.cell
                    .kubectl(&["-n", &app.namespace, "get", "secret", objects::PULL_SECRET])
                    .status
                    .success()
            })
        });
        let t0 = Instant::now();
        let v: VersionSpec = serde_json::from_value(
            r.deploy(&name, "v1", u32::try_from(n).expect("replicas"))
                .await,
        )
        .unwrap();
        let sel = objects::version_selector(&app, v.version);
        let (ready_s, upstream_s) = sync(|| wait(&r, t0, &app.namespace, &sel, n, true));
        r.delete_version(&name, v.version).await;
        sync(|| te::wait_until(PATIENCE, || r.pod_count(&app.namespace, &sel) == 0));
        let kubectl_s = sync(|| reference(&r, dir.path(), &app, &v, n));
        let (st, body) = r
            .call(Method::DELETE, &format!("/api/v1/apps/{name}"), None)
            .await;
        assert!(st.is_success() || st == StatusCode::NOT_FOUND, "{body}");
        println!(
            "{n:8}  {ready_s:12.2}  {upstream_s:15.2}  {kubectl_s:15.2}  {:11.2}  {:14.2}",
            ready_s / kubectl_s,
            upstream_s / kubectl_s
        );
    }
}
