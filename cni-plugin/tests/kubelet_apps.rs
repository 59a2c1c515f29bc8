//! Pools bound to apps with the real kubelet (tests/testenv `Cell`): an app
//! bound to a /27 gets every pod address from it, another app's pods never
//! do; scale 4 → 2 → 4 and a v1 → v2 upgrade (one Deployment per version,
//! as the core runs them: one v1 pod drained and deleted, then one v2 pod
//! started) end with the same four addresses. Binding and export go
//! through the `cnictl` binary.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use leengine_ipam::{Filter, Ipam, Pool};
use leengine_testenv as te;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_leengine-cni");
/// Hang guard; not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(240);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn sibling(name: &str) -> PathBuf {
    let p = std::path::Path::new(BIN).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

async fn ipam(cell: &te::Cell) -> Ipam {
    let cfg = leengine_store::EtcdConfig::new(vec![cell.etcd_endpoint()]);
    let client = leengine_store::connect(&cfg).await.unwrap();
    Ipam::new(client, cfg.keys(), "observer")
}

struct World {
    cell: te::Cell,
    image: String,
    _registry: te::Registry,
}

impl World {
    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.cell.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cnictl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(sibling("cnictl"))
            .args(["--etcd", &self.cell.etcd_endpoint()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cnictl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pods(&self, ns: &str, selector: &str) -> Vec<Value> {
        let text = self.kubectl(&["get", "pods", "-n", ns, "-l", selector, "-o", "json"]);
        let v: Value = serde_json::from_str(&text).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until exactly `n` pods match, all Ready, and IPAM holds exactly
    /// `allocated` addresses for the namespace (so every deleted pod's DEL ran).
    fn settle(&mut self, ns: &str, selector: &str, n: usize, allocated: usize) -> Vec<Value> {
        let mut last = Vec::new();
        let ok = te::wait_until(PATIENCE, || {
            last = self.pods(ns, selector);
            last.len() == n
                && last.iter().all(te::pod_ready)
                && app_ips(&self.cell, ns).len() == allocated
        });
        if !ok {
            let summary: Vec<String> = last.iter().map(te::describe_pod).collect();
            panic!(
                "{n} ready pods for {ns}/{selector} with {allocated} addresses not reached: {summary:#?} {:?}\n{}",
                app_ips(&self.cell, ns),
                self.cell.logs()
            );
        }
        last
    }

    fn scale(&self, ns: &str, deploy: &str, n: usize) {
        self.kubectl(&[
            "scale",
            "-n",
            ns,
            &format!("deployment/{deploy}"),
            &format!("--replicas={n}"),
        ]);
    }
}

/// Addresses IPAM holds for pods of `ns`.
fn app_ips(cell: &te::Cell, ns: &str) -> BTreeSet<Ipv4Addr> {
    rt().block_on(async {
        ipam(cell)
            .await
            .list_ips(&Filter::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.pod_namespace.as_deref() == Some(ns))
            .map(|a| a.ip)
            .collect()
    })
}

fn ips(pods: &[Value]) -> BTreeSet<Ipv4Addr> {
    pods.iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn deployment(ns: &str, name: &str, version: &str, image: &str, replicas: usize) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {ns}, version: "{version}"}}}}
  template:
    metadata: {{labels: {{app: {ns}, version: "{version}"}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {image}
        readinessProbe:
          httpGet: {{path: /healthz, port: 8080}}
          periodSeconds: 1
          failureThreshold: 1
"#
    )
}

#[test]
fn a_bound_app_keeps_its_27_through_scaling_and_an_upgrade() {
    let cell = te::Cell::start(te::CellSpec {
        nodes: 2,
        pools: vec![("web".into(), 130), ("shop".into(), 131)],
        cni_plugin: BIN.into(),
        node_agent: None,
        reclaim: false,
        network: te::CellNetwork::Leengine,
    });
    let (web, shop) = (cell.pools()[0].clone(), cell.pools()[1].clone());
    // The shop app's range: the first /27 of its segment.
    let shop27 = shop.cidr.replace(".0/24", ".0/27");
    let web_pool = Pool::parse("web", &web.cidr, &web.gateway, 130, 16, &[]).unwrap();
    let shop_pool = Pool::parse("shop", &shop27, &shop.gateway, 131, 8, &[]).unwrap();
    rt().block_on(async {
        let ipam = ipam(&cell).await;
        ipam.add_pool(&web_pool).await.unwrap();
        ipam.add_pool(&shop_pool).await.unwrap();
    });
    let registry = te::Registry::start();
    te::Image::web(8080).push(&registry.addr(), "demo/web", "v1", None);
    cell.trust_registry(&registry.addr());
    let image = format!("{}/demo/web:v1", registry.addr());
    let mut w = World {
        cell,
        image,
        _registry: registry,
    };
    let out = w.cnictl(&["pool", "bind", "shop", "--app", "shop"]);
    assert!(out.contains("bound to app shop"), "{out}");
    w.kubectl(&["create", "namespace", "shop"]);

    w.cell.apply(&deployment("shop", "v1", "1", &w.image, 4));
    w.cell
        .apply(&deployment("default", "blog", "1", &w.image, 4));
    let shop_net: ipnet::Ipv4Net = shop27.parse().unwrap();
    let first = ips(&w.settle("shop", "app=shop", 4, 4));
    let blog = ips(&w.settle("default", "app=default", 4, 4));
    assert!(
        first.iter().all(|ip| shop_net.contains(ip)),
        "{first:?} not in {shop27}"
    );
    assert!(
        blog.iter().all(|ip| !shop_net.contains(ip)),
        "blog pods in {shop27}: {blog:?}"
    );
    // Kubelet's readiness probes reached every pod: the /27 works end to end.

    // Scale 4 → 2 → 4: the same addresses.
    w.scale("shop", "v1", 2);
    w.settle("shop", "app=shop", 2, 2);
    let table = w.cnictl(&["pool", "list"]);
    let row = table.lines().find(|l| l.starts_with("shop ")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (cols[5], cols[6], cols[9]),
        ("2", "2", "shop"),
        "USED RESERVED APPS: {row}"
    );
    w.scale("shop", "v1", 4);
    let rescaled = ips(&w.settle("shop", "app=shop", 4, 4));
    assert_eq!(rescaled, first);

    // Upgrade v1 → v2, one pod at a time: drain (delete) one v1 pod, then
    // start one v2 pod.
    w.cell.apply(&deployment("shop", "v2", "2", &w.image, 0));
    for step in 1..=4 {
        w.scale("shop", "v1", 4 - step);
        w.settle("shop", "version=1", 4 - step, 3);
        w.scale("shop", "v2", step);
        w.settle("shop", "version=2", step, 4);
    }
    let upgraded = ips(&w.settle("shop", "app=shop", 4, 4));
    assert_eq!(upgraded, first, "v2 ended with other addresses than v1 had");
    let blog_now = ips(&w.settle("default", "app=default", 4, 4));
    assert_eq!(blog_now, blog);

    // The export for the firewall team: exactly the bound range.
    let plain = w.cnictl(&["pool", "export"]);
    assert_eq!(plain, format!("{shop27} shop shop 131\n"));
    let json: Value =
        serde_json::from_str(&w.cnictl(&["-o", "json", "pool", "export", "--app", "shop"]))
            .unwrap();
    let ranges = json["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 1);
    assert_eq!(ranges[0]["cidr"], shop27.as_str());
}
