//! Benchmark (b) of issue 15 (hack/bench/drain.sh): failed requests under
//! wrk load through nginx during a grey upgrade of 6 pods (v2 deployed
//! beside v1, then v1 removed) and a scale-down 6 → 2, once through the
//! core with drain-ack, once deleting the pods directly (`kubectl delete
//! deployment` / `kubectl scale`, the usual way) — the same Deployments,
//! the same discovery, agents and nginx, in the same run. Root only.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};

use common::lb::{LbRegion, DOMAIN};
use leengine_core::deploy::objects;
use leengine_core::deploy::spec::{AppSpec, VersionSpec};
use serde_json::Value;

const PLAIN: &str = "plain.example.com";
const PLAIN_NS: &str = "plain";
const WRK_CONNECTIONS: &str = "8";

/// wrk sending POSTs (nginx never retries them once sent) until stopped.
struct Wrk {
    child: Child,
    script: std::path::PathBuf,
}

#[derive(Debug, Default)]
struct Counts {
    requests: u64,
    failed: u64,
    detail: String,
}

impl Wrk {
    fn start(dir: &std::path::Path, port: u16, host: &str) -> Wrk {
        let script = dir.join(format!("post-{host}.lua"));
        std::fs::write(
            &script,
            format!("wrk.method = \"POST\"\nwrk.headers[\"Host\"] = \"{host}\"\n"),
        )
        .unwrap();
        let child = Command::new("wrk")
            .args([
                "-t",
                "2",
                "-c",
                WRK_CONNECTIONS,
                "-d",
                "3600s",
                "--timeout",
                "5s",
            ])
            .arg("-s")
            .arg(&script)
            .arg(format!("http://127.0.0.1:{port}/cgi-bin/whoami"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wrk (Debian package wrk)");
        std::thread::sleep(std::time::Duration::from_secs(1));
        Wrk { child, script }
    }

    /// SIGINT makes wrk print its summary; non-2xx/3xx answers and socket
    /// errors (connect, read, write, timeout) are the failed requests.
    fn stop(self) -> Counts {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let out = self.child.wait_with_output().unwrap();
        let _ = std::fs::remove_file(&self.script);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut c = Counts::default();
        for line in text.lines().map(str::trim) {
            if let Some(n) = line
                .split(" requests in ")
                .next()
                .filter(|_| line.contains(" requests in "))
            {
                c.requests = n.trim().parse().unwrap_or(0);
            }
            if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
                c.failed += n.trim().parse::<u64>().unwrap_or(0);
            }
            if let Some(rest) = line.strip_prefix("Socket errors:") {
                c.failed += rest
                    .split(',')
                    .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
                c.detail = rest.trim().to_string();
            }
        }
        c
    }
}

fn sel(n: u64) -> String {
    format!("leengine.io/version={n}")
}

fn sync<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The grey upgrade and the scale-down through the core (drain-ack).
async fn through_core(r: &LbRegion, dir: &std::path::Path) -> (Counts, Counts, AppSpec, Value) {
    let app = r.create_app("web").await;
    let spec: AppSpec = serde_json::from_value(app["desired"].clone()).unwrap();
    let ns = spec.namespace.clone();
    let v1 = r.deploy("web", "v1", 6).await;
    let n1 = v1["version"].as_u64().unwrap();
    sync(|| r.wait_served(&ns, &sel(n1), 6, true));

    let wrk = Wrk::start(dir, r.port, DOMAIN);
    let v2 = r.deploy("web", "v2", 6).await;
    let n2 = v2["version"].as_u64().unwrap();
    sync(|| r.wait_served(&ns, &sel(n2), 6, false));
    r.delete_version("web", n1).await;
    sync(|| r.wait_served(&ns, &sel(n2), 6, true));
    let upgrade = wrk.stop();

    let wrk = Wrk::start(dir, r.port, DOMAIN);
    r.scale("web", n2, 2).await;
    sync(|| r.wait_served(&ns, &sel(n2), 2, true));
    let down = wrk.stop();
    (upgrade, down, spec, v1)
}

/// The same Deployments in namespace `plain`, bound to [`PLAIN`], changed
/// with kubectl directly: pods are deleted at once, and leave the upstream
/// when their endpoints turn terminating.
async fn directly(
    r: &LbRegion,
    dir: &std::path::Path,
    app: &AppSpec,
    v: &Value,
) -> (Counts, Counts) {
    let (plain, port) = r.plain_peer(app, PLAIN_NS, PLAIN).await;
    let c = &r.cell;
    let version = |n: u64, tag: &str| {
        let mut s: VersionSpec = serde_json::from_value(v.clone()).unwrap();
        s.version = n;
        s.tag = tag.into();
        s
    };
    let apply = |n: u64, tag: &str, replicas: u32| {
        let d = objects::deployment(&plain, &version(n, tag), replicas);
        c.apply(&serde_json::to_string(&d).unwrap());
    };
    apply(1, "v1", 6);
    sync(|| r.wait_served_on(PLAIN, PLAIN_NS, &sel(1), 6, true));

    let wrk = Wrk::start(dir, port, PLAIN);
    apply(2, "v2", 6);
    sync(|| r.wait_served_on(PLAIN, PLAIN_NS, &sel(2), 6, false));
    let out = c.kubectl(&["-n", PLAIN_NS, "delete", "deployment", "v1", "--wait=false"]);
    assert!(out.status.success());
    sync(|| r.wait_served_on(PLAIN, PLAIN_NS, &sel(2), 6, true));
    let upgrade = wrk.stop();

    let wrk = Wrk::start(dir, port, PLAIN);
    let out = c.kubectl(&["-n", PLAIN_NS, "scale", "deployment", "v2", "--replicas=2"]);
    assert!(out.status.success());
    sync(|| r.wait_served_on(PLAIN, PLAIN_NS, &sel(2), 2, true));
    let down = wrk.stop();
    (upgrade, down)
}

fn row(what: &str, ours: &Counts, direct: &Counts) {
    println!(
        "{what:<24} {:>6} / {:<8} {:>6} / {:<8}  {}",
        ours.failed, ours.requests, direct.failed, direct.requests, direct.detail
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let r = LbRegion::start(152, &["v1", "v2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (up, down, spec, v1) = through_core(&r, dir.path()).await;
    let (d_up, d_down) = directly(&r, dir.path(), &spec, &v1).await;
    println!("wrk -t2 -c{WRK_CONNECTIONS}, POST through nginx; failed / requests");
    println!(
        "{:<24} {:>17} {:>17}",
        "operation", "drain-ack (core)", "direct (kubectl)"
    );
    row("grey upgrade of 6 pods", &up, &d_up);
    row("scale-down 6 -> 2", &down, &d_down);
}
