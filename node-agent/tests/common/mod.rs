//! Runs the built agent inside the node's host namespace (`Ovs::netns`,
//! where ovs-vswitchd and the host veth ends live) against real etcd, OVS
//! and pod namespaces.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leengine_ipam::{AssignRequest, Attachment, Ipam, Pool};
use leengine_testenv as te;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_leengine-node-agent");
pub const NODE: &str = "node-a";
/// Upper bound for anything a test waits on; a hang guard, not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    rt().block_on(f)
}

pub async fn ipam(etcd: &te::Etcd) -> Ipam {
    Ipam::new(etcd.root_client().await, etcd.keys().clone(), NODE)
}

pub fn add_pool(etcd: &te::Etcd, name: &str, cidr: &str, gw: &str, vlan: u32) {
    let pool = Pool::parse(name, cidr, gw, vlan, 16, &[]).unwrap();
    block_on(async { ipam(etcd).await.add_pool(&pool).await.unwrap() });
}

/// One node: etcd, OVS, the forward, and the agent's flags.
pub struct Node {
    pub etcd: te::Etcd,
    pub ovs: te::Ovs,
    pub etcd_port: u16,
    pub bridge: String,
}

impl Node {
    /// `bridge_exists`: create the bridge first (as the CNI tests do) or
    /// leave it for the agent.
    pub fn new(bridge_exists: bool) -> Node {
        let etcd = te::Etcd::start();
        let ovs = te::Ovs::start();
        // etcd listens on the test namespace's loopback; the agent runs in the
        // node's host namespace.
        let etcd_port = ovs.netns().forward_tcp(etcd.port());
        let bridge = if bridge_exists {
            ovs.add_bridge()
        } else {
            te::unique_name("br")
        };
        Node {
            etcd,
            ovs,
            etcd_port,
            bridge,
        }
    }

    pub fn base_args(&self) -> Vec<String> {
        [
            "--node",
            NODE,
            "--etcd-endpoints",
            &format!("https://127.0.0.1:{}", self.etcd_port),
            "--ovsdb",
            &self.ovs.db_url(),
            "--bridge",
            &self.bridge,
            "--datapath-type",
            "netdev",
            "--lease-ttl",
            "3s",
            "--scan-interval",
            "1s",
            "--container-roots",
            "leengine-test-none",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(self.etcd.tls_args(&te::Component::node_agent(NODE)))
        .collect()
    }

    pub fn spawn(&self, extra: &[&str]) -> Agent {
        self.spawn_on(extra, "127.0.0.1")
    }

    /// Like `spawn`, with the HTTP endpoint on `host` (e.g. `0.0.0.0`).
    pub fn spawn_on(&self, extra: &[&str], host: &str) -> Agent {
        let port = te::free_port();
        let mut args = self.base_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--metrics-listen".into(), format!("{host}:{port}")]);
        let log = te::run_dir().join(format!("{}.log", te::unique_name("agent")));
        let child = self
            .host_command(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn agent");
        let mut agent = Agent {
            child: Some(child),
            port,
            log,
            netns: self.ovs.netns().name().to_string(),
        };
        let up = te::wait_until(PATIENCE, || {
            let exited = agent.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none(),
                "agent exited ({exited:?}):\n{}",
                agent.log()
            );
            agent.get("/healthz").is_some()
        });
        assert!(up, "agent did not come up:\n{}", agent.log());
        agent
    }

    /// The agent in the node's host namespace. `nsenter --net` rather than
    /// `ip netns exec`: the latter remounts /sys, hiding /sys/fs/cgroup.
    pub fn host_command(&self, args: &[String]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ovs.netns().path().display()))
            .arg(BIN)
            .args(args);
        c
    }

    pub fn ipam(&self) -> Ipam {
        block_on(ipam(&self.etcd))
    }

    /// The registration record, if present.
    pub fn registration(&self) -> Option<Value> {
        self.get_json(&format!("/leengine/nodes/{NODE}"))
    }

    pub fn get_json(&self, key: &str) -> Option<Value> {
        let out = self.etcd.etcdctl(&["get", key, "--print-value-only"]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!text.is_empty()).then(|| serde_json::from_str(&text).unwrap())
    }

    pub fn handle(&self, cid: &str) -> Option<Attachment> {
        block_on(async { ipam(&self.etcd).await.handle(cid, "eth0").await.unwrap() })
    }

    /// A pod as the CNI plugin leaves it: an allocation in etcd, a netns
    /// whose eth0 holds the address, the host veth on the bridge.
    pub fn pod(&self, cid: &str, app: &str) -> Pod {
        let netns = te::Netns::new();
        let a = block_on(async {
            ipam(&self.etcd)
                .await
                .assign(&AssignRequest {
                    container_id: cid.into(),
                    ifname: "eth0".into(),
                    netns: netns.path().display().to_string(),
                    pod_namespace: Some(app.into()),
                    pod_name: Some(format!("{cid}-pod")),
                    ..Default::default()
                })
                .await
                .unwrap()
        });
        let host_if = leengine_netdp::host_veth_name(cid, "eth0");
        let ovs = &self.ovs;
        run(ovs.command(&[
            "ip",
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ]));
        run(ovs.command(&["ip", "link", "set", &host_if, "up"]));
        ovs.vsctl(&[
            "add-port",
            &self.bridge,
            &host_if,
            &format!("tag={}", a.vlan),
            "--",
            "set",
            "port",
            &host_if,
            &format!("external_ids:leengine-container-id={cid}"),
            "external_ids:leengine-ifname=eth0",
        ]);
        netns.must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/{}", a.ip, a.prefix_len),
            "dev",
            "eth0",
        ]);
        netns.must(&["ip", "link", "set", "eth0", "up"]);
        Pod {
            netns,
            ip: a.ip.to_string(),
            cid: cid.into(),
            port: host_if,
        }
    }

    pub fn ports(&self) -> Vec<String> {
        self.ovs
            .vsctl(&["list-ports", &self.bridge])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

pub struct Pod {
    pub netns: te::Netns,
    pub ip: String,
    pub cid: String,
    pub port: String,
}

pub fn run(mut c: Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Agent {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
    netns: String,
}

impl Agent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().unwrap().id()).unwrap()
    }

    fn curl(&self, method: &str, path: &str) -> Option<String> {
        self.curl_at("127.0.0.1", method, path)
            .filter(|(code, _)| (200..300).contains(code))
            .map(|(_, body)| body)
    }

    /// `curl` inside the node's namespace to `host`: (status, body), or None
    /// when no HTTP answer came.
    pub fn curl_at(&self, host: &str, method: &str, path: &str) -> Option<(u16, String)> {
        let url = format!("http://{host}:{}{path}", self.port);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-s",
                "-m",
                "60",
                "-w",
                "\n%{http_code}",
                "-X",
                method,
                &url,
            ])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        let code: u16 = code.trim().parse().ok()?;
        (code != 0).then(|| (code, body.to_string()))
    }

    pub fn get(&self, path: &str) -> Option<String> {
        self.curl("GET", path)
    }

    /// Runs a scan now and returns its summary.
    pub fn scan(&self) -> Value {
        let body = self
            .curl("POST", "/scan")
            .unwrap_or_else(|| panic!("POST /scan failed:\n{}", self.log()));
        serde_json::from_str(&body).unwrap()
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").expect("GET /metrics")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for the process to end; returns its exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Value of the first sample of `name` whose labels contain every `labels` pair.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        if !labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            return None;
        }
        rest.rsplit(' ').next()?.parse().ok()
    })
}
