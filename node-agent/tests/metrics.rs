//! Metrics follow a pod's real traffic and a container's real disk I/O (a
//! cgroup under the configured root with a process in the pod netns), the
//! swap guard constrains that container, and a real Prometheus scrapes it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use leengine_testenv as te;

const CONTROLLERS: [&str; 3] = ["memory", "cpuacct", "blkio"];

/// A v1 container cgroup `ROOT/ctr` in every controller, removed on drop.
struct TestCgroup {
    root: String,
    proc_: Option<Child>,
}

impl TestCgroup {
    fn new() -> Self {
        let root = te::unique_name("lecg");
        for c in CONTROLLERS {
            std::fs::create_dir_all(format!("/sys/fs/cgroup/{c}/{root}/ctr")).unwrap();
        }
        std::fs::write(
            format!("/sys/fs/cgroup/memory/{root}/ctr/memory.limit_in_bytes"),
            "268435456",
        )
        .unwrap();
        TestCgroup { root, proc_: None }
    }

    fn file(&self, c: &str, f: &str) -> String {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{c}/{}/ctr/{f}", self.root))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Joins the cgroup, enters the pod netns, waits for `go`, writes 8 MiB
    /// with O_DIRECT, touches `done`, then idles.
    fn start_worker(&mut self, netns: &str, dir: &Path) {
        let joins: String = CONTROLLERS
            .iter()
            .map(|c| {
                format!(
                    "echo $$ > /sys/fs/cgroup/{c}/{}/ctr/cgroup.procs; ",
                    self.root
                )
            })
            .collect();
        let d = dir.display();
        let inner = format!(
            "while [ ! -e {d}/go ]; do sleep 0.05; done; \
             dd if=/dev/zero of={d}/data bs=1M count=8 oflag=direct 2>/dev/null; touch {d}/done; exec sleep 600"
        );
        let script = format!("{joins} exec nsenter --net=/run/netns/{netns} sh -c '{inner}'");
        self.proc_ = Some(
            Command::new("sh")
                .args(["-c", &script])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        assert!(
            te::wait_until(PATIENCE, || !self.file("memory", "cgroup.procs").is_empty()),
            "worker did not join the cgroup"
        );
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc_.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        for c in CONTROLLERS {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{c}/{}/ctr", self.root));
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{c}/{}", self.root));
        }
    }
}

struct Prometheus {
    child: Child,
    port: u16,
    netns: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(node: &Node, target_port: u16) -> Self {
        te::require_bin("prometheus", "prometheus");
        let dir = tempfile::tempdir().unwrap();
        let port = te::free_port();
        let conf = dir.path().join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: node-agent\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let data: PathBuf = dir.path().join("data");
        let child = node
            .ovs
            .command(&["prometheus"])
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            port,
            netns: node.ovs.netns().name().to_string(),
            _dir: dir,
        }
    }

    /// Result vector of an instant query (empty on any failure).
    fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-sf",
                "-m",
                "10",
                &url,
                "--data-urlencode",
            ])
            .arg(format!("query={q}"))
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn metrics_follow_traffic_and_disk_io_swap_guard_and_prometheus_scrape() {
    let node = Node::new(true);
    add_pool(&node.etcd, "p1", "10.1.0.0/22", "10.1.0.1", 100);
    let web = node.pod("c-web", "shop");
    let peer = node.pod("c-peer", "other");
    let mut cg = TestCgroup::new();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    cg.start_worker(web.netns.name(), work.path());
    let agent = node.spawn(&["--container-roots", &cg.root, "--swap-guard", "on"]);
    let scan = agent.scan();
    assert_eq!(scan["alive"], 2, "{scan}");
    assert!(
        scan["swapUnconstrained"].as_array().unwrap().is_empty(),
        "{scan}"
    );

    // Swap guard: memory+swap = memory limit, swappiness 0.
    assert_eq!(
        cg.file("memory", "memory.memsw.limit_in_bytes"),
        "268435456"
    );
    assert_eq!(cg.file("memory", "memory.swappiness"), "0");

    let before = agent.metrics();
    let web_labels = [("container_id", "c-web"), ("app", "shop")];
    let tx0 = sample(
        &before,
        "leengine_pod_network_transmit_bytes_total",
        &web_labels,
    )
    .expect(&before);
    let app_tx0 = sample(
        &before,
        "leengine_app_network_transmit_bytes_total",
        &[("app", "shop")],
    )
    .unwrap();
    let ctr = [("id", "ctr"), ("app", "shop")];
    let w0 = sample(
        &before,
        "leengine_container_task_io_write_bytes_total",
        &ctr,
    )
    .unwrap_or_else(|| panic!("container not tied to app shop:\n{before}"));
    assert!(sample(&before, "leengine_container_memory_bytes", &ctr).is_some());
    assert_eq!(
        sample(&before, "leengine_container_memory_limit_bytes", &ctr),
        Some(268435456.0)
    );
    assert_eq!(
        sample(
            &before,
            "leengine_node_swap_guard_containers",
            &[("state", "constrained")]
        ),
        Some(1.0)
    );
    assert!(sample(&before, "leengine_node_ip_block_used", &[("pool", "p1")]).unwrap() >= 2.0);

    // Traffic: the web pod pings its peer.
    let out = web
        .netns
        .exec(&["ping", "-c", "5", "-i", "0.2", "-s", "1000", &peer.ip]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Disk I/O in the container.
    std::fs::write(work.path().join("go"), "").unwrap();
    assert!(
        te::wait_until(PATIENCE, || work.path().join("done").exists()),
        "dd did not finish"
    );

    let after = agent.metrics();
    let tx1 = sample(
        &after,
        "leengine_pod_network_transmit_bytes_total",
        &web_labels,
    )
    .unwrap();
    assert!(tx1 >= tx0 + 5000.0, "tx {tx0} -> {tx1}");
    let app_tx1 = sample(
        &after,
        "leengine_app_network_transmit_bytes_total",
        &[("app", "shop")],
    )
    .unwrap();
    assert!(app_tx1 >= app_tx0 + 5000.0, "app tx {app_tx0} -> {app_tx1}");
    let w1 = sample(&after, "leengine_container_task_io_write_bytes_total", &ctr).unwrap();
    assert!(
        w1 >= w0 + 8.0 * 1024.0 * 1024.0,
        "disk writes {w0} -> {w1}\n{after}"
    );
    let app_w1 = sample(
        &after,
        "leengine_app_task_io_write_bytes_total",
        &[("app", "shop")],
    )
    .unwrap();
    assert!(app_w1 >= w1, "{after}");

    // A real Prometheus scrapes the endpoint.
    let prom = Prometheus::start(&node, agent.port);
    let mut result = Vec::new();
    assert!(
        te::wait_until(PATIENCE, || {
            result = prom.query("leengine_app_network_transmit_bytes_total{app=\"shop\"}");
            !result.is_empty()
        }),
        "Prometheus never got the metric"
    );
    let v: f64 = result[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(v >= app_tx1, "Prometheus saw {v}, endpoint said {app_tx1}");
    assert!(
        !prom.query("up{job=\"node-agent\"} == 1").is_empty(),
        "scrape target not up"
    );
}
