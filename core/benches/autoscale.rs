//! Benchmark of issue 20 (hack/bench/autoscale.sh): a step of the load to
//! 5× on an app of one pod, through nginx — the time until enough pods
//! serve it, and the requests that failed during the ramp and during the
//! scale-down once the load falls back to the base. Three runs on the same Cell, app image
//! and load, one after the other:
//!
//! - **ours, CPU**: the core's autoscaler on `cpu_percent` of the request
//!   (node-agent cgroup readings through Prometheus);
//! - **HPA, CPU**: the same Deployment in a plain namespace under a
//!   `HorizontalPodAutoscaler` (autoscaling/v2, CPU utilization) of the
//!   Cell's kube-controller-manager, fed by metrics-server (built from its
//!   Go module, `hack/k8s.sh --metrics-server`), served by the same
//!   discovery, agent and nginx through a Service binding;
//! - **ours, requests/s**: the core's autoscaler on nginx's own counters.
//!
//! Each target is calibrated on the side's own reading of the base load at
//! one pod (target = 1.2 × that reading: the base needs 1 pod, and 5× needs
//! 4 to be within the 10 % tolerance both sides use — "enough"). Both sides decide every 15 s (HPA's default sync period; the
//! core's `--autoscale-period`) on 15 s of readings (metrics-server's
//! resolution in its manifest; the policy's `window_seconds`, Prometheus
//! scraping every 5 s), scale down after 30 s of stability, and scale up
//! at once. Root only.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::lb::{Cadence, LbRegion, Monitoring, CELL, DOMAIN};
use leengine_core::deploy::objects;
use leengine_core::deploy::spec::{AppSpec, VersionSpec};
use leengine_testenv as te;
use serde_json::{json, Value};

const PEER: &str = "hpa.example.com";
const PEER_NS: &str = "hpa";
const STEP: usize = 5;
/// Each target is this × the scaler's reading of the base load at one pod.
const HEADROOM: f64 = 1.2;
/// Pods that carry the step within the 10 % tolerance both scalers use:
/// the smallest n with 5 / (1.2 × n) ≤ 1.1, i.e. 4.
const ENOUGH: usize = 4;
const MAX: u32 = 8;
const DOWN_WINDOW: u32 = 30;
const CPU_REQUEST_MILLIS: f64 = 100.0;
/// Base load at one pod before the step.
const CALIBRATE: Duration = Duration::from_secs(45);
/// Load kept after enough pods serve, before it falls.
const HOLD: Duration = Duration::from_secs(15);
/// Hang guard for each wait; not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(300);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sync<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The offered load: `workers` paced clients POSTing the CPU-burning CGI.
#[derive(Clone, Copy)]
struct Offer {
    workers: usize,
    pause: Duration,
}

impl Offer {
    fn start(self, port: u16, host: &str) -> te::Load {
        te::Load::paced(
            port,
            host,
            "POST",
            "/cgi-bin/burn",
            self.workers,
            self.pause,
        )
    }
    fn times(self, k: usize) -> Offer {
        Offer {
            workers: self.workers * k,
            ..self
        }
    }
}

/// Who scales, and how it is set up and read.
enum Scaler {
    Ours { metric: &'static str },
    Hpa,
}

struct Side<'a> {
    r: &'a LbRegion,
    name: &'static str,
    scaler: Scaler,
    domain: &'a str,
    port: u16,
    ns: String,
    deployment: String,
    selector: String,
}

#[derive(Debug, Default)]
struct Outcome {
    name: &'static str,
    target: String,
    base_rps: f64,
    step_rps: f64,
    decided_s: Option<f64>,
    served_s: Option<f64>,
    most: usize,
    /// Each change of the Deployment's count during the ramp: (s, to).
    steps: Vec<(f64, usize)>,
    ramp: te::LoadCount,
    down_s: Option<f64>,
    down: te::LoadCount,
}

impl Side<'_> {
    fn spec_replicas(&self) -> usize {
        let out = self.r.cell.kubectl(&[
            "-n",
            &self.ns,
            "get",
            "deployment",
            &self.deployment,
            "-o",
            "jsonpath={.spec.replicas}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    fn served(&self) -> usize {
        self.r.agents[0].live_peers(self.domain).len()
    }

    fn pods(&self) -> usize {
        self.r.pods(&self.ns, &self.selector).0.len()
    }

    /// The scaler's own reading of the current load per pod.
    async fn reading(&self) -> f64 {
        match self.scaler {
            Scaler::Ours { metric } => {
                let (_, v) = self
                    .r
                    .call(Method::GET, "/api/v1/apps/web/autoscale", None)
                    .await;
                v["status"]["cells"][CELL]["readings"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["metric"] == metric)
                    .and_then(|x| x["value"].as_f64())
                    .unwrap_or_else(|| panic!("no {metric} reading: {v}"))
            }
            Scaler::Hpa => sync(|| pod_cpu_percent(self.r, &self.ns)),
        }
    }

    /// Ours: a policy pinned at one pod, so the status carries readings.
    async fn prepare(&self) {
        if let Scaler::Ours { .. } = self.scaler {
            self.put_policy(
                json!({"cpu_percent": 1000, "requests_per_second": 1000.0}),
                1,
            )
            .await;
        }
    }

    async fn put_policy(&self, targets: Value, max: u32) {
        let policy = json!({"min": 1, "max": max, "targets": targets, "window_seconds": 15,
            "scale_up_stabilization_seconds": 0,
            "scale_down_stabilization_seconds": DOWN_WINDOW});
        let (st, v) = self
            .r
            .call(Method::PUT, "/api/v1/apps/web/autoscale", Some(policy))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }

    /// Sets the real target: 1.2 × the base reading.
    async fn arm(&self, base: f64) -> String {
        match self.scaler {
            Scaler::Ours { metric } if metric == "requests_per_second" => {
                let t = (base * HEADROOM * 100.0).round() / 100.0;
                self.put_policy(json!({ metric: t }), MAX).await;
                format!("{t} req/s per pod")
            }
            Scaler::Ours { metric } => {
                let t = percent(base * HEADROOM);
                self.put_policy(json!({ metric: t }), MAX).await;
                format!("{t} % CPU")
            }
            Scaler::Hpa => {
                let t = percent(base * HEADROOM);
                let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": "web", "namespace": self.ns},
                    "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                                "name": self.deployment},
                             "minReplicas": 1, "maxReplicas": MAX,
                             "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                 "target": {"type": "Utilization", "averageUtilization": t}}}],
                             "behavior": {"scaleDown": {"stabilizationWindowSeconds": DOWN_WINDOW}}}});
                sync(|| self.r.cell.apply(&hpa.to_string()));
                format!("{t} % CPU")
            }
        }
    }

    async fn disarm(&self) {
        match self.scaler {
            Scaler::Ours { .. } => {
                let (st, v) = self
                    .r
                    .call(Method::DELETE, "/api/v1/apps/web/autoscale", None)
                    .await;
                assert!(st.is_success(), "{v}");
            }
            Scaler::Hpa => {
                let out = self
                    .r
                    .cell
                    .kubectl(&["-n", &self.ns, "delete", "hpa", "web"]);
                assert!(out.status.success(), "{out:?}");
            }
        }
    }

    async fn run(&self, base: Offer) -> Outcome {
        let mut o = Outcome {
            name: self.name,
            ..Outcome::default()
        };
        self.prepare().await;
        let load = base.start(self.port, self.domain);
        let t = Instant::now();
        tokio::time::sleep(CALIBRATE).await;
        let reading = self.reading().await;
        let calm = load.stop();
        o.base_rps = rate(&calm, t.elapsed());
        assert_eq!(calm.failed, 0, "{}: base load failed: {calm:?}", self.name);
        o.target = self.arm(reading).await;
        eprintln!(
            "{}: base {:.2} req/s, reading {reading:.2} → target {}",
            self.name, o.base_rps, o.target
        );

        let load = base.times(STEP).start(self.port, self.domain);
        let t0 = Instant::now();
        let mut served_at = None;
        while t0.elapsed() < PATIENCE && served_at.is_none_or(|t: Instant| t.elapsed() < HOLD) {
            let (want, serving) = sync(|| (self.spec_replicas(), self.served()));
            o.most = o.most.max(serving);
            if o.steps.last().map_or(1, |s| s.1) != want {
                o.steps.push((t0.elapsed().as_secs_f64(), want));
            }
            if o.decided_s.is_none() && want >= ENOUGH {
                o.decided_s = Some(t0.elapsed().as_secs_f64());
            }
            if served_at.is_none() && serving >= ENOUGH {
                served_at = Some(Instant::now());
                o.served_s = Some(t0.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        o.ramp = load.stop();
        o.step_rps = rate(&o.ramp, t0.elapsed());

        let light = base.start(self.port, self.domain);
        let t1 = Instant::now();
        while t1.elapsed() < PATIENCE {
            let done = sync(|| self.spec_replicas() == 1 && self.served() == 1 && self.pods() == 1);
            if done {
                o.down_s = Some(t1.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        o.down = light.stop();
        self.disarm().await;
        eprintln!("{}: {o:?}", self.name);
        o
    }
}

/// A whole percent, at least 1 (both APIs take integers).
fn percent(x: f64) -> u32 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    // rounded, clamped to 1..=10000
    let p = x.round().clamp(1.0, 10_000.0) as u32;
    p
}

fn rate(c: &te::LoadCount, over: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let n = (c.ok + c.failed) as f64;
    n / over.as_secs_f64()
}

/// CPU of the namespace's only pod, percent of its request, as
/// metrics-server serves it to HPA (mean of four 15 s readings).
fn pod_cpu_percent(r: &LbRegion, ns: &str) -> f64 {
    let mut sum = 0.0;
    for _ in 0..4 {
        let out = r.cell.kubectl(&[
            "get",
            "--raw",
            &format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods"),
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let millis: f64 = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["containers"].as_array().into_iter().flatten())
            .filter_map(|c| cpu_millis(c["usage"]["cpu"].as_str()?))
            .sum();
        sum += millis / CPU_REQUEST_MILLIS * 100.0;
        std::thread::sleep(Duration::from_secs(15));
    }
    sum / 4.0
}

/// A CPU quantity as metrics-server writes it (`12345678n`, `250u`, `12m`, `1`).
fn cpu_millis(q: &str) -> Option<f64> {
    let (num, scale) = match q.as_bytes().last()? {
        b'n' => (&q[..q.len() - 1], 1e-6),
        b'u' => (&q[..q.len() - 1], 1e-3),
        b'm' => (&q[..q.len() - 1], 1.0),
        _ => (q, 1000.0),
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "never".into(), |s| format!("{s:.1}"))
}

fn print(rows: &[Outcome]) {
    println!(
        "{:<16} {:>18} {:>8} {:>8} {:>9} {:>9} {:>5} {:>16} {:>9} {:>16}",
        "scaler",
        "target",
        "base/s",
        "step/s",
        "decided",
        "served",
        "most",
        "ramp fail/total",
        "down",
        "down fail/total"
    );
    for o in rows {
        println!(
            "{:<16} {:>18} {:>8.2} {:>8.2} {:>9} {:>9} {:>5} {:>16} {:>9} {:>16}",
            o.name,
            o.target,
            o.base_rps,
            o.step_rps,
            secs(o.decided_s),
            secs(o.served_s),
            o.most,
            format!("{} / {}", o.ramp.failed, o.ramp.ok + o.ramp.failed),
            secs(o.down_s),
            format!("{} / {}", o.down.failed, o.down.ok + o.down.failed),
        );
    }
    for o in rows {
        let steps: Vec<String> = o
            .steps
            .iter()
            .map(|(t, n)| format!("{n} at {t:.1} s"))
            .collect();
        println!("{}: count went to {}", o.name, steps.join(", "));
    }
    let hpa = rows
        .iter()
        .find(|o| o.name == "HPA, CPU")
        .and_then(|o| o.served_s);
    for o in rows.iter().filter(|o| o.name != "HPA, CPU") {
        if let (Some(ours), Some(theirs)) = (o.served_s, hpa) {
            println!(
                "time to {ENOUGH} pods serving, {} / HPA: {:.2}×",
                o.name,
                ours / theirs
            );
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let cadence = Cadence {
        scrape: Duration::from_secs(5),
        autoscale_period: Duration::from_secs(15),
    };
    let mut r = LbRegion::start_at(157, &["v1"], Monitoring::Containers, cadence).await;
    sync(|| r.cell.start_metrics_server());
    let base = Offer {
        workers: usize::try_from(env_or("AUTOSCALE_WORKERS", 2)).expect("workers"),
        pause: Duration::from_millis(env_or("AUTOSCALE_PAUSE_MS", 1000)),
    };
    let app = r.create_app("web").await;
    let spec: AppSpec = serde_json::from_value(app["desired"].clone()).unwrap();
    let body = json!({"tag": "v1", "replicas": 1,
        "resources": {"cpu_request": format!("{CPU_REQUEST_MILLIS}m")},
        "health": {"path": "/healthz", "period_seconds": 1}});
    let (st, v1) = r
        .call(Method::POST, "/api/v1/apps/web/versions", Some(body))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v1}");
    let n1 = v1["version"].as_u64().unwrap();
    sync(|| r.wait_served(&spec.namespace, &common::lb::version(n1), 1, true));

    let (peer, port) = r.plain_peer(&spec, PEER_NS, PEER).await;
    let version: VersionSpec = serde_json::from_value(v1.clone()).unwrap();
    let d = objects::deployment(&peer, &version, 1);
    let deployment = d.metadata.name.clone().expect("deployment name");
    sync(|| r.cell.apply(&serde_json::to_string(&d).unwrap()));
    sync(|| r.wait_served_on(PEER, PEER_NS, &common::lb::version(n1), 1, true));

    let ours = |name, metric| Side {
        r: &r,
        name,
        scaler: Scaler::Ours { metric },
        domain: DOMAIN,
        port: r.port,
        ns: spec.namespace.clone(),
        deployment: deployment.clone(),
        selector: common::lb::version(n1),
    };
    let hpa = Side {
        r: &r,
        name: "HPA, CPU",
        scaler: Scaler::Hpa,
        domain: PEER,
        port,
        ns: PEER_NS.into(),
        deployment: deployment.clone(),
        selector: common::lb::version(n1),
    };
    println!(
        "dev profile; {} CPUs; base load {} paced clients ({} ms pause), step ×{STEP}, \
         target {HEADROOM} × base reading, enough = {ENOUGH} pods, max {MAX}, \
         decide every 15 s on 15 s of readings, down window {DOWN_WINDOW} s",
        std::thread::available_parallelism().map_or(0, usize::from),
        base.workers,
        base.pause.as_millis()
    );
    let mut rows = vec![ours("ours, CPU", "cpu_percent").run(base).await];
    rows.push(hpa.run(base).await);
    rows.push(ours("ours, req/s", "requests_per_second").run(base).await);
    print(&rows);
}
