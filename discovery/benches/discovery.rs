//! Discovery benchmark (run by hack/bench/discovery.sh): Pod Ready → first
//! request answered by that pod through nginx, over N scale-ups 0 → 1, and
//! the parts of it (EndpointSlice ready → upstream written in etcd →
//! answered). Timestamps come from watches run by this process (pods,
//! EndpointSlices, the etcd upstream key) and from polling nginx every 2 ms.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, WatchEvent, WatchParams};
use leengine_testenv as te;
use support::*;

const D: &str = "bench.example.com";

/// First time each thing was seen: pod name → Ready, IP → slice ready, IP → in upstream.
#[derive(Default)]
struct Seen {
    ready: HashMap<String, Instant>,
    slice: HashMap<IpAddr, Instant>,
    upstream: HashMap<IpAddr, Instant>,
}

type Shared = Arc<Mutex<Seen>>;

fn main() {
    let n: usize = std::env::var("DISCOVERY_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let r = Region::start();
    let cell = web_cell(150);
    let port = te::free_port();
    r.publish_domain(D, port);
    let _agent = r.agent("h1");
    r.register_cell("c1", &cell, &cell.api_url());
    r.bind("c1", "web", D);
    let d = r.discovery("d1", &[]);
    d.wait_active();
    cell.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {NS}}}\nspec:\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n\
         ---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {NS}}}\nspec:\n  replicas: 0\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: web\n        image: leengine.local/web:1\n        imagePullPolicy: Never\n        readinessProbe:\n          httpGet: {{path: /healthz, port: 8080}}\n          periodSeconds: 1\n"
    ));
    r.wait_upstream(D, &[], "empty to begin with");

    let seen: Shared = Arc::default();
    let client = kube(&r.rt, &cell);
    r.rt.spawn(watch_pods(client.clone(), seen.clone()));
    r.rt.spawn(watch_slices(client, seen.clone()));
    r.rt.spawn(watch_upstream(r.root.clone(), seen.clone()));

    let (mut e2e, mut ours, mut nginx) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        *seen.lock().unwrap() = Seen::default();
        scale(&cell, 1);
        let mut answered = None;
        assert!(
            te::wait_until(Duration::from_secs(120), || {
                if let Some((200, body)) = te::http_get_host(port, D, "/cgi-bin/whoami") {
                    answered = Some((
                        Instant::now(),
                        body.split_whitespace().next().unwrap_or("").to_string(),
                    ));
                    return true;
                }
                std::thread::sleep(Duration::from_millis(2));
                false
            }),
            "scale-up {i} never answered:\n{}",
            d.log()
        );
        let (t_ok, pod) = answered.unwrap();
        // The watches may report a moment after the answer; give them time.
        std::thread::sleep(Duration::from_millis(300));
        let s = seen.lock().unwrap();
        let ready = s.ready.get(&pod).copied();
        let ip = s.upstream.keys().next().copied();
        let (Some(t_ready), Some(ip)) = (ready, ip) else {
            panic!("scale-up {i}: pod {pod} ready {ready:?}, upstream {ip:?}");
        };
        let (t_es, t_up) = (s.slice[&ip], s.upstream[&ip]);
        drop(s);
        e2e.push(ms(t_ok.saturating_duration_since(t_ready)));
        ours.push(ms(t_up.saturating_duration_since(t_es)));
        nginx.push(ms(t_ok.saturating_duration_since(t_up)));
        scale(&cell, 0);
        r.wait_upstream(D, &[], "scaled to zero");
        assert!(
            te::wait_until(Duration::from_secs(60), || {
                let out = cell.kubectl(&["-n", NS, "get", "pods", "-o", "name"]);
                out.stdout.is_empty()
            }),
            "pods gone"
        );
    }
    println!("\n{n} scale-ups 0 -> 1 (ms):\n");
    println!("| interval | p50 | p99 | max |\n|---|---|---|---|");
    for (what, v) in [
        (
            "Pod Ready -> first answer through nginx (end to end)",
            &mut e2e,
        ),
        (
            "EndpointSlice ready -> upstream in etcd (discovery)",
            &mut ours,
        ),
        (
            "upstream in etcd -> first answer (agent + nginx)",
            &mut nginx,
        ),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "| {what} | {:.1} | {:.1} | {:.1} |",
            pct(v, 0.5),
            pct(v, 0.99),
            v[v.len() - 1]
        );
    }
    println!(
        "\ndiscovery lag histogram count {:?}, sum {:?} s",
        d.metric("leengine_discovery_lag_seconds_count"),
        d.metric("leengine_discovery_lag_seconds_sum")
    );
}

fn scale(cell: &te::Cell, n: u32) {
    let out = cell.kubectl(&[
        "-n",
        NS,
        "scale",
        "deployment/web",
        &format!("--replicas={n}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "a rank within a short sample, q in [0, 1]"
)]
fn pct(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Calls `seen_obj` on every added or modified object, re-watching from the
/// last resourceVersion when the server ends a stream.
async fn follow<K>(api: Api<K>, mut seen_obj: impl FnMut(K))
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut rv = "0".to_string();
    loop {
        let Ok(s) = api.watch(&WatchParams::default(), &rv).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut s = s.boxed();
        while let Ok(Some(ev)) = s.try_next().await {
            match ev {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    rv = o.meta().resource_version.clone().unwrap_or(rv);
                    seen_obj(o);
                }
                WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                WatchEvent::Deleted(_) => {}
                WatchEvent::Error(_) => rv = "0".into(),
            }
        }
    }
}

async fn watch_pods(client: kube::Client, seen: Shared) {
    follow(Api::<Pod>::namespaced(client, NS), |p| {
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if let (true, Some(name)) = (ready, p.metadata.name) {
            seen.lock()
                .unwrap()
                .ready
                .entry(name)
                .or_insert_with(Instant::now);
        }
    })
    .await;
}

async fn watch_slices(client: kube::Client, seen: Shared) {
    follow(Api::<EndpointSlice>::namespaced(client, NS), |es| {
        let now = Instant::now();
        for e in &es.endpoints {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                for a in e.addresses.iter().filter_map(|a| a.parse().ok()) {
                    seen.lock().unwrap().slice.entry(a).or_insert(now);
                }
            }
        }
    })
    .await;
}

async fn watch_upstream(mut c: etcd_client::Client, seen: Shared) {
    let key = leengine_store::keys::slb_domain_upstream(GROUP, D);
    let mut s = c.watch(key, None).await.expect("watch upstream");
    while let Ok(Some(resp)) = s.message().await {
        let now = Instant::now();
        for ev in resp.events() {
            let Some(u) = ev
                .kv()
                .and_then(|kv| leengine_slb::Upstream::parse(kv.value()).ok())
            else {
                continue;
            };
            for sv in u.servers {
                seen.lock()
                    .unwrap()
                    .upstream
                    .entry(sv.address.ip())
                    .or_insert(now);
            }
        }
    }
}
