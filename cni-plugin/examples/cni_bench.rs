//! Benchmark harness for hack/bench/cni.sh: this plugin (etcd + OVS) against
//! the reference `bridge` + `host-local` plugins, both exec'd the way libcni
//! does it (env + config on stdin, one process per call), in the same run.
//!
//! Ours runs twice: the plugin doing the call itself, and the plugin as a
//! thin client of the real node-agent's CNI service (`agentSocket`), which
//! holds warm etcd and OVSDB sessions. Ratios are to bridge + host-local.
//!
//! usage: cni_bench [PODS=100] [CONCURRENT=30]
//! With OVS_CNI set to an `ovs-cni` binary, it runs as a third plugin (with
//! host-local IPAM, on the same userspace OVS bridge as ours).
//! With BENCH_TRACE set, every plugin's stderr is shown (combine with
//! LEENGINE_CNI_LOG=leengine_cni=debug for per-step timestamps).

use leengine_testenv as te;
use serde_json::{json, Value};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REF_BRIDGE: &str = "/usr/lib/cni/bridge";
/// The node of the `leengine+node-agent` run; the one-shot plugin's is `bench`.
const AGENT_NODE: &str = "bench-agent";

struct Plugin {
    label: &'static str,
    bin: PathBuf,
    conf: Value,
    /// Namespace to exec the plugin in (the reference's "node"); None = ours,
    /// which is pointed at the OVS node namespace by `hostNetns`.
    exec_ns: Option<PathBuf>,
}

impl Plugin {
    /// Ours runs twice on one etcd and bridge: each run its own attachments.
    fn cid(&self, cid: &str) -> String {
        format!("{}-{cid}", self.label.replace('+', "-"))
    }

    fn call(&self, cmd: &str, cid: &str, netns: &Path) -> Duration {
        let cid = self.cid(cid);
        let mut c = Command::new(&self.bin);
        c.env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", &cid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=".to_string() + &cid,
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns) = &self.exec_ns {
            let file = std::fs::File::open(ns).expect("open node netns");
            // SAFETY: only setns(2) runs between fork and exec.
            unsafe {
                c.pre_exec(move || {
                    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let stdin = serde_json::to_vec(&self.conf).unwrap();
        let t = Instant::now();
        let mut child = c.spawn().expect("spawn plugin");
        child.stdin.take().unwrap().write_all(&stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let took = t.elapsed();
        if std::env::var_os("BENCH_TRACE").is_some() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(
            out.status.success(),
            "{} {cmd} {cid} failed: {}{}",
            self.label,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        took
    }
}

/// `target/<profile>/leengine-cni`, next to `examples/` where this runs from.
fn ours_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("leengine-cni");
    assert!(bin.exists(), "build the plugin first: {}", bin.display());
    bin
}

/// The real node-agent in the node's host namespace, serving CNI calls at
/// `socket` (reclaim and metrics off: only the CNI service is measured).
struct Agent(std::process::Child);

impl Agent {
    fn start(etcd: &te::Etcd, ovs: &te::Ovs, bridge: &str, socket: &Path) -> Agent {
        // The plugin's etcd address must work from the node namespace too.
        ovs.netns().mirror_tcp(etcd.port());
        let bin = ours_bin().with_file_name("leengine-node-agent");
        assert!(
            bin.exists(),
            "build the node-agent first: {}",
            bin.display()
        );
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", ovs.netns().path().display()))
            .arg(bin)
            .args([
                "--node",
                AGENT_NODE,
                "--ovsdb",
                &ovs.db_url(),
                "--bridge",
                bridge,
            ])
            .args(["--datapath-type", "netdev", "--reclaim", "off"])
            .args(["--metrics-listen", "off", "--container-roots", "none"])
            .args([
                "--etcd-endpoints",
                &format!("https://127.0.0.1:{}", etcd.port()),
            ])
            .args(etcd.tls_args(&te::Component::node_agent(AGENT_NODE)))
            .arg("--cni-socket")
            .arg(socket)
            .stdout(Stdio::null());
        if std::env::var_os("BENCH_TRACE").is_none() {
            c.stderr(Stdio::null());
        }
        let child = c.spawn().expect("spawn node-agent");
        let up = te::wait_until(Duration::from_secs(30), || socket.exists());
        assert!(up, "the node-agent's CNI socket did not appear");
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Until the address of `cid`'s eth0 is given back.
fn wait_released(etcd: &te::Etcd, cid: &str) {
    let key = etcd.keys().handle(cid, "eth0");
    let gone = te::wait_until(Duration::from_secs(10), || {
        etcd.etcdctl(&["get", &key, "--keys-only"])
            .stdout
            .is_empty()
    });
    assert!(gone, "{cid}: the agent did not release the address");
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a percentile index: a fraction in [0, 1] of a length"
)]
fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn stats(mut v: Vec<Duration>) -> [f64; 3] {
    v.sort();
    [pct(&v, 0.50), pct(&v, 0.90), pct(&v, 0.99)]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pods: usize = args.next().map_or(100, |a| a.parse().expect("PODS"));
    let concurrent: usize = args.next().map_or(30, |a| a.parse().expect("CONCURRENT"));

    let etcd = te::Etcd::start();
    let ovs = te::Ovs::start();
    let bridge = ovs.add_bridge();
    let pool =
        leengine_ipam::Pool::parse("bench", "10.210.0.0/20", "10.210.0.1", 210, 16, &[]).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            leengine_ipam::Ipam::new(etcd.root_client().await, etcd.keys().clone(), "bench")
                .add_pool(&pool)
                .await
                .unwrap();
        });
    let ref_node = te::Netns::new();
    let state = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "bench", "type": "leengine",
        "bridge": bridge, "ovsdb": ovs.db_url(),
        "etcd": etcd.config(&te::Component::cni_plugin("bench")), "node": "bench",
        "hostNetns": ovs.netns().path(),
    });
    let socket = state.path().join("cni.sock");
    let _agent = Agent::start(&etcd, &ovs, &bridge, &socket);
    // Its own node, as on a real one: the agent is then the only writer of
    // that node's blocks, and its IPAM memo is not made stale by the other
    // plugin's ADDs on every call.
    let mut via_agent = conf.clone();
    via_agent["agentSocket"] = json!(socket);
    via_agent["node"] = json!(AGENT_NODE);
    via_agent["etcd"] = json!(etcd.config(&te::Component::cni_plugin(AGENT_NODE)));
    // The agent runs in the node's namespace, where the host veth ends
    // belong, as on a real node; `hostNetns` is for a plugin outside it.
    via_agent
        .as_object_mut()
        .expect("a JSON object")
        .remove("hostNetns");
    let ours = Arc::new(Plugin {
        label: "leengine",
        bin: ours_bin(),
        conf,
        exec_ns: None,
    });
    let ours_agent = Arc::new(Plugin {
        label: "leengine+node-agent",
        bin: ours_bin(),
        conf: via_agent,
        exec_ns: None,
    });
    let reference = Arc::new(Plugin {
        label: "bridge+host-local",
        bin: REF_BRIDGE.into(),
        conf: json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "bridge",
            "bridge": te::unique_name("cnibr"), "isGateway": true,
            "ipam": { "type": "host-local", "subnet": "10.220.0.0/20",
                      "dataDir": state.path().join("host-local") }
        }),
        exec_ns: Some(ref_node.path().to_path_buf()),
    });

    let mut plugins = vec![reference, ours, ours_agent];
    if let Some(bin) = std::env::var_os("OVS_CNI") {
        plugins.push(Arc::new(Plugin {
            label: "ovs-cni+host-local",
            bin: bin.into(),
            conf: json!({
                "cniVersion": "1.0.0", "name": "bench", "type": "ovs",
                "bridge": bridge, "vlan": 230, "socket_file": ovs.db_url(),
                "ipam": { "type": "host-local", "subnet": "10.230.0.0/20",
                          "dataDir": state.path().join("host-local-ovs") }
            }),
            exec_ns: Some(ovs.netns().path().to_path_buf()),
        }));
    }

    // Warm-up (page cache, first block claim, bridge creation): not measured.
    for p in &plugins {
        let ns = te::Netns::new();
        p.call("ADD", "warmup", ns.path());
        p.call("DEL", "warmup", ns.path());
    }

    println!("== sequential: {pods} pods, ADD each then DEL each, plugins alternating per pod");
    let nss: Vec<Vec<te::Netns>> = (0..pods)
        .map(|_| plugins.iter().map(|_| te::Netns::new()).collect())
        .collect();
    let mut add = vec![vec![]; plugins.len()];
    let mut del = vec![vec![]; plugins.len()];
    for (i, ns) in nss.iter().enumerate() {
        for (k, p) in plugins.iter().enumerate() {
            add[k].push(p.call("ADD", &format!("seq{i}"), ns[k].path()));
        }
    }
    for (i, ns) in nss.iter().enumerate() {
        for (k, p) in plugins.iter().enumerate() {
            let cid = format!("seq{i}");
            del[k].push(p.call("DEL", &cid, ns[k].path()));
            if p.conf.get("agentSocket").is_some() {
                // Untimed: the agent finishes the veth and the address after
                // answering; the next plugin's DEL must not share the kernel
                // with that work.
                wait_released(&etcd, &p.cid(&cid));
            }
        }
    }
    println!(
        "{:<4} {:<20} {:>26}   {:>26}",
        "", "plugin", "p50/p90/p99 ms", "to bridge+host-local"
    );
    for (op, lat) in [("ADD", add), ("DEL", del)] {
        let s: Vec<[f64; 3]> = lat.into_iter().map(stats).collect();
        for (p, o) in plugins.iter().zip(&s) {
            let r = &s[0];
            println!(
                "{op:<4} {:<20} {:>8.1} {:>8.1} {:>8.1}   {:>8.2} {:>8.2} {:>8.2}",
                p.label,
                o[0],
                o[1],
                o[2],
                o[0] / r[0],
                o[1] / r[1],
                o[2] / r[2]
            );
        }
    }

    // The phases are measured apart: the node-agent finishes each DEL's veth
    // and address after answering, and those must not load the next phase.
    std::thread::sleep(Duration::from_secs(3));
    println!("== concurrent: {concurrent} simultaneous ADDs on one node");
    let mut reference_stats = None;
    for p in &plugins {
        let nss: Vec<Arc<te::Netns>> = (0..concurrent)
            .map(|_| Arc::new(te::Netns::new()))
            .collect();
        let start = Instant::now();
        let handles: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (p, ns) = (p.clone(), ns.clone());
                std::thread::spawn(move || p.call("ADD", &format!("con{i}"), ns.path()))
            })
            .collect();
        let lat: Vec<Duration> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let wall = start.elapsed().as_secs_f64() * 1000.0;
        let s = stats(lat);
        let r = *reference_stats.get_or_insert((wall, s));
        println!(
            "{:<20} wall {:>8.1} ms   per-ADD p50 {:>7.1} ms  p99 {:>7.1} ms   to bridge+host-local: wall {:.2} p50 {:.2} p99 {:.2}",
            p.label, wall, s[0], s[2], wall / r.0, s[0] / r.1[0], s[2] / r.1[2]
        );
        for (i, ns) in nss.iter().enumerate() {
            p.call("DEL", &format!("con{i}"), ns.path());
        }
    }
}
