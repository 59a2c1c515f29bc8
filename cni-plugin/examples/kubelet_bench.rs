//! Benchmark harness for hack/bench/cni-kubelet.sh: pod start through the
//! real kubelet (issue 19's third benchmark). One run, three Cells of one
//! node each, one after the other, each with a different pod network:
//! leengine through the node-agent's CNI service (the packaged
//! configuration), leengine as a plain plugin process, and the reference
//! `bridge` + `host-local`. In each, a Deployment of PODS pods (the pause
//! image, already in containerd, so no pull is timed) is applied and timed
//! until every pod is Ready; then kubelet's own histograms are read from its
//! `/metrics` (through the apiserver's node proxy):
//! `kubelet_pod_start_sli_duration_seconds` (pod start, image pulls
//! excluded) and `kubelet_runtime_operations_duration_seconds` for
//! `run_podsandbox` (sandbox creation, which is where CNI ADD runs).
//!
//! A Cell's start and 30 sandboxes at once on two CPUs vary by ±20 % from
//! one Cell to the next, far more than the CNI call's share, so the three
//! networks are measured ROUNDS times, in a rotated order each round, and
//! the medians compared.
//!
//! usage: kubelet_bench [PODS=30] [ROUNDS=3]

use leengine_ipam::{Ipam, Pool};
use leengine_testenv as te;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const VLAN: u16 = 140;
/// Hang guard; not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(180);

/// `target/<profile>/NAME`, next to `examples/` where this runs from.
fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/examples")
        .join(name);
    assert!(bin.exists(), "build it first: {}", bin.display());
    bin
}

/// What one Cell measured.
struct Measured {
    label: &'static str,
    all_ready: Duration,
    sandbox: Histogram,
    start_sli: Histogram,
}

const NETWORKS: [(&str, te::CellNetwork); 3] = [
    ("leengine+node-agent", te::CellNetwork::LeengineAgent),
    ("leengine", te::CellNetwork::Leengine),
    ("bridge+host-local", te::CellNetwork::BridgeHostLocal),
];

fn main() {
    let mut args = std::env::args().skip(1);
    let pods: u32 = args.next().map_or(30, |a| a.parse().expect("PODS"));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("ROUNDS"));
    let mut results: Vec<Vec<Measured>> = NETWORKS.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..NETWORKS.len() {
            let k = (k + round) % NETWORKS.len();
            let (label, network) = NETWORKS[k];
            println!(
                "== round {}: {label}, Cell of one node, Deployment of {pods} pods",
                round + 1
            );
            let m = measure(label, network, pods);
            println!("   {}", m.line());
            results[k].push(m);
        }
    }
    report(&results);
}

fn measure(label: &'static str, network: te::CellNetwork, pods: u32) -> Measured {
    let mut cell = te::Cell::start(te::CellSpec {
        nodes: 1,
        pools: vec![("bench".into(), VLAN)],
        cni_plugin: sibling("leengine-cni"),
        node_agent: Some(sibling("leengine-node-agent")),
        reclaim: false,
        network,
    });
    if network != te::CellNetwork::BridgeHostLocal {
        add_pool(&cell);
    }
    let node = cell.nodes()[0].name.clone();
    // The histograms count from kubelet's start: only this Deployment's
    // pods are in the difference.
    let before = kubelet_metrics(&cell, &node);
    let t = Instant::now();
    cell.apply(&deployment(pods));
    wait_all_ready(&mut cell, pods);
    let all_ready = t.elapsed();
    let after = kubelet_metrics(&cell, &node);
    let m = Measured {
        label,
        all_ready,
        sandbox: Histogram::grown(
            &before,
            &after,
            "kubelet_runtime_operations_duration_seconds",
            "operation_type=\"run_podsandbox\"",
        ),
        start_sli: Histogram::grown(
            &before,
            &after,
            "kubelet_pod_start_sli_duration_seconds",
            "",
        ),
    };
    assert_eq!(
        m.sandbox.count, pods,
        "{label}: kubelet counted {} sandboxes for {pods} pods",
        m.sandbox.count
    );
    m
}

fn add_pool(cell: &te::Cell) {
    let p = &cell.pools()[0];
    let pool = Pool::parse("bench", &p.cidr, &p.gateway, u32::from(VLAN), 16, &[]).expect("pool");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let cfg = leengine_store::EtcdConfig::new(vec![cell.etcd_endpoint()]);
            let client = leengine_store::connect(&cfg).await.expect("etcd");
            Ipam::new(client, cfg.keys(), "bench")
                .add_pool(&pool)
                .await
                .expect("add pool");
        });
}

fn deployment(replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: bench, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: bench}}}}
  template:
    metadata: {{labels: {{app: bench}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: pause
        image: {image}
        imagePullPolicy: Never
"#,
        image = te::PAUSE_IMAGE
    )
}

fn wait_all_ready(cell: &mut te::Cell, n: u32) {
    let mut last = Vec::new();
    let ok = te::wait_until(PATIENCE, || {
        let out = cell.kubectl(&["get", "pods", "-l", "app=bench", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        last = v["items"].as_array().cloned().unwrap_or_default();
        last.len() == usize::try_from(n).unwrap_or(usize::MAX) && last.iter().all(te::pod_ready)
    });
    if !ok {
        let summary: Vec<String> = last.iter().map(te::describe_pod).collect();
        panic!(
            "{n} ready pods not reached: {summary:#?}\n{}\nnode-agent:\n{}",
            cell.logs(),
            cell.node_agent_log(0)
        );
    }
}

fn kubelet_metrics(cell: &te::Cell, node: &str) -> String {
    let path = format!("/api/v1/nodes/{node}/proxy/metrics");
    let out = cell.kubectl(&["get", "--raw", &path]);
    assert!(
        out.status.success(),
        "kubelet metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Prometheus histogram: cumulative bucket counts by upper bound.
#[derive(Debug, Default)]
struct Histogram {
    buckets: Vec<(f64, u32)>,
    sum: f64,
    count: u32,
}

impl Histogram {
    /// The series of `name` whose labels contain `labels` (all of them
    /// summed, e.g. across pod kinds).
    fn parse(text: &str, name: &str, labels: &str) -> Histogram {
        let mut h = Histogram::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if !series.contains(labels) {
                continue;
            }
            let v: f64 = value.parse().unwrap_or(0.0);
            if let Some(rest) = series.strip_prefix(&format!("{name}_bucket{{")) {
                let le = rest
                    .split("le=\"")
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(f64::INFINITY);
                match h.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += count(v),
                    None => h.buckets.push((le, count(v))),
                }
            } else if series.starts_with(&format!("{name}_sum")) {
                h.sum += v;
            } else if series.starts_with(&format!("{name}_count")) {
                h.count += count(v);
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }

    /// What was observed between two scrapes of the same series.
    fn grown(before: &str, after: &str, name: &str, labels: &str) -> Histogram {
        Histogram::parse(after, name, labels).minus(&Histogram::parse(before, name, labels))
    }

    fn minus(mut self, before: &Histogram) -> Histogram {
        for (le, c) in &mut self.buckets {
            let was = before
                .buckets
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0, |(_, c)| *c);
            *c = c.saturating_sub(was);
        }
        self.sum -= before.sum;
        self.count = self.count.saturating_sub(before.count);
        self
    }

    fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        self.sum / f64::from(self.count) * 1000.0
    }

    /// The upper bound of the bucket holding quantile `q`, in ms: what a
    /// histogram can say about it.
    fn quantile_bound_ms(&self, q: f64) -> f64 {
        let want = q * f64::from(self.count);
        self.buckets
            .iter()
            .find(|(_, c)| f64::from(*c) >= want)
            .map_or(f64::NAN, |(le, _)| le * 1000.0)
    }
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a sample count read from a float in the exposition format"
)]
fn count(v: f64) -> u32 {
    v.max(0.0).round() as u32
}

impl Measured {
    fn all_ready_ms(&self) -> f64 {
        self.all_ready.as_secs_f64() * 1000.0
    }

    fn line(&self) -> String {
        format!(
            "{:<20} all Ready {:>6.0} ms   sandbox mean {:>7.1} ms (p50 <= {:.0} ms)   pod start mean {:>6.0} ms",
            self.label,
            self.all_ready_ms(),
            self.sandbox.mean_ms(),
            self.sandbox.quantile_bound_ms(0.5),
            self.start_sli.mean_ms()
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians over the rounds, and their ratios to the reference's (the last network).
fn report(results: &[Vec<Measured>]) {
    let medians: Vec<[f64; 3]> = results
        .iter()
        .map(|ms| {
            [
                median(ms.iter().map(Measured::all_ready_ms).collect()),
                median(ms.iter().map(|m| m.sandbox.mean_ms()).collect()),
                median(ms.iter().map(|m| m.start_sli.mean_ms()).collect()),
            ]
        })
        .collect();
    let r = medians.last().expect("the reference");
    println!(
        "== medians of {} rounds       all Ready   sandbox mean   pod start mean    to bridge+host-local",
        results[0].len()
    );
    for ((label, _), m) in NETWORKS.iter().zip(&medians) {
        println!(
            "{label:<20} {:>14.0} ms {:>11.1} ms {:>13.0} ms    {:.2} / {:.2} / {:.2}",
            m[0],
            m[1],
            m[2],
            m[0] / r[0],
            m[1] / r[1],
            m[2] / r[2]
        );
    }
}
