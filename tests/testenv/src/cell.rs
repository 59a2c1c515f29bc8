//! A real Kubernetes Cell on the virtual data centre: etcd 3.6, kube-apiserver,
//! kube-controller-manager, kube-scheduler, and per node a containerd (with
//! its CRI plugin calling `leengine-cni`) and a kubelet. The binaries come
//! from `hack/k8s.sh` (built from the `k8s.io/kubernetes` Go module).
//!
//! The network is the one a machine room has. Each node's OVS bridge is
//! bonded to the ToR ([`DataCentre`]); pods sit on VLAN access ports. The
//! management network (where kubelets, apiserver and the tests live: this
//! process's namespace) is separate: a router namespace holds each pool's
//! gateway address on an access port of the ToR and one management address,
//! so kubelet's HTTP probes reach pods through it, as in the original.
//!
//! ```text
//!  test process netns ── mgmt veth ── router netns ── VLAN access ports ── ToR ═ bond ═ node bridge ── pods
//!  (apiserver, kubelets,  172.31.S.0/24              gateways 10.(56+S).K.1
//!   containerd, etcd)
//! ```
//!
//! Every Cell takes a slot `S` (a lock file), which makes its management
//! subnet and pool ranges unique among concurrently running tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::cgroup;
use crate::dc::{attach_host, DataCentre, Pod};
use crate::image::Image;
use crate::netns::Netns;
use crate::ovs::Ovs;
use crate::pki::{Ca, CertPair};
use crate::run::{free_port, must, new_dir, tail, unique_name, wait_until, Daemon};

/// Hang guard for anything a Cell waits on; not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(180);
/// The sandbox image every containerd of a Cell is configured with.
pub const PAUSE_IMAGE: &str = "leengine.local/pause:3.10";

/// What a Cell is made of.
#[derive(Clone, Debug)]
pub struct CellSpec {
    pub nodes: usize,
    /// Pools the Cell's network routes (one VLAN each); the test creates
    /// them in the Cell's etcd with [`CellPool::cidr`] and
    /// [`CellPool::gateway`] before pods are made.
    pub pools: Vec<(String, u16)>,
    /// The `leengine-cni` binary (installed as CNI type `leengine`).
    pub cni_plugin: PathBuf,
    /// The `leengine-node-agent` binary, run on every node (in the node's
    /// host namespace, reclaim grace 3 s, scans every second, asking the
    /// Cell's apiserver with the admin kubeconfig before a reclaim) when given.
    pub node_agent: Option<PathBuf>,
    /// Whether the node-agents start with leak reclaim on
    /// ([`Cell::set_reclaim`] changes it per node).
    pub reclaim: bool,
    /// The pods' network.
    pub network: CellNetwork,
}

/// What kubelet's pods are attached with (the CNI configuration of every node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CellNetwork {
    /// `leengine-cni`, each call in its own process.
    #[default]
    Leengine,
    /// `leengine-cni` relaying to the node-agent's CNI service
    /// (`agentSocket`), as the packaged configuration does; needs `node_agent`.
    LeengineAgent,
    /// The reference for benchmarks: `bridge` + `host-local`, a Linux bridge
    /// in the runtime's (the host's) namespace, no VLAN, no etcd.
    BridgeHostLocal,
}

/// A pool the Cell's router serves: a /24 of the Cell's range.
#[derive(Clone, Debug)]
pub struct CellPool {
    pub name: String,
    pub vlan: u16,
    pub cidr: String,
    pub gateway: String,
}

/// One compute node: its containerd and kubelet.
#[derive(Debug)]
pub struct KubeNode {
    pub name: String,
    /// The node's management address (kubelet's `--node-ip`).
    pub ip: String,
    pub bridge: String,
    dir: PathBuf,
    cgroup_root: String,
    kubelet_port: u16,
    kubelet: Option<Daemon>,
    containerd: Option<Daemon>,
    node_agent: Option<Daemon>,
    reclaim: bool,
    /// The node-agent's HTTP endpoint (`127.0.0.1:PORT` in the node namespace).
    pub agent_port: u16,
    /// The Linux bridge of [`CellNetwork::BridgeHostLocal`], in the host namespace.
    ref_bridge: String,
    /// Where the node-agent serves CNI calls. Outside the node's directory,
    /// like its kubeconfig: a node crash kills every process naming that
    /// directory, and the node-agent is not the node's runtime.
    pub cni_socket: PathBuf,
}

/// Whether a pod (as `kubectl get -o json` shows it) has condition Ready.
pub fn pod_ready(p: &serde_json::Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// One line about a pod for assertion messages: name, node, IP, phase, Ready.
pub fn describe_pod(p: &serde_json::Value) -> String {
    format!(
        "{} on {} ip={} phase={} ready={}",
        p["metadata"]["name"].as_str().unwrap_or("?"),
        p["spec"]["nodeName"].as_str().unwrap_or("-"),
        p["status"]["podIP"].as_str().unwrap_or("-"),
        p["status"]["phase"].as_str().unwrap_or("-"),
        pod_ready(p)
    )
}

/// Where the Kubernetes binaries are (`hack/k8s.sh --print`); metrics-server
/// only when built (`hack/k8s.sh --metrics-server`).
fn k8s_bin(tool: &str) -> PathBuf {
    static ENV: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = ENV.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack/k8s.sh");
        let out = must(Command::new("bash").arg(&script).arg("--print"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(PathBuf::from)
            .expect("hack/k8s.sh --print names the binaries")
    };
    let (p, build) = match tool {
        "etcd" => (
            get("LEENGINE_ETCD36="),
            "bash hack/k8s.sh` (hack/deps.sh runs it)",
        ),
        "metrics-server" => (
            get("LEENGINE_METRICS_SERVER="),
            "bash hack/k8s.sh --metrics-server`",
        ),
        _ => (
            get("LEENGINE_K8S_BIN=").join(tool),
            "bash hack/k8s.sh` (hack/deps.sh runs it)",
        ),
    };
    if !p.exists() {
        panic!("missing {}: build it with `{build}", p.display());
    }
    p
}

/// The test Cell. Fields drop in order: nodes, then the control plane, then
/// the network.
#[derive(Debug)]
pub struct Cell {
    pub name: String,
    nodes: Vec<KubeNode>,
    metrics_server: Option<Daemon>,
    scheduler: Option<Daemon>,
    controller_manager: Option<Daemon>,
    apiserver: Option<Daemon>,
    etcd: Option<Daemon>,
    router: Netns,
    ovs: Ovs,
    slot: Slot,
    dir: PathBuf,
    ca: Ca,
    etcd_port: u16,
    api_port: u16,
    pools: Vec<CellPool>,
    tor: String,
    mgmt_link: String,
    spec: CellSpec,
}

impl Cell {
    /// Starts the whole Cell and returns when every node is Ready.
    pub fn start(spec: CellSpec) -> Cell {
        let slot = Slot::claim();
        let dir = new_dir("cell");
        let name = unique_name("c");
        let ca = Ca::new(&dir.join("pki"), &format!("{name}-ca"));
        let ovs = Ovs::start();
        let vlans: Vec<u16> = spec.pools.iter().map(|p| p.1).collect();
        let dc = DataCentre::new(&ovs, spec.nodes, &vlans);
        let bridges: Vec<String> = (0..spec.nodes)
            .map(|i| dc.node_bridge(i).to_string())
            .collect();
        let tor = dc.tor_bridge().to_string();
        drop(dc);
        let mut cell = Cell {
            name,
            nodes: Vec::new(),
            metrics_server: None,
            scheduler: None,
            controller_manager: None,
            apiserver: None,
            etcd: None,
            router: Netns::new(),
            ovs,
            slot,
            dir,
            ca,
            etcd_port: free_port(),
            api_port: free_port(),
            pools: Vec::new(),
            tor,
            mgmt_link: String::new(),
            spec: spec.clone(),
        };
        cell.wire_management();
        for (k, (pool, vlan)) in spec.pools.iter().enumerate() {
            cell.add_pool_route(pool, *vlan, k);
        }
        cell.start_etcd();
        if spec.network == CellNetwork::LeengineAgent {
            // The node-agents, in the node namespace, take the CNI calls with
            // the plugin's configuration: its etcd address must work there too.
            cell.ovs.netns().mirror_tcp(cell.etcd_port);
        }
        cell.write_control_plane_pki();
        cell.start_apiserver();
        cell.start_controllers();
        let pause = Image::pause().save(PAUSE_IMAGE);
        for (i, bridge) in bridges.into_iter().enumerate() {
            let node = cell.make_node(i, bridge);
            cell.nodes.push(node);
            cell.start_node(i, &pause);
        }
        for i in 0..cell.nodes.len() {
            cell.wait_node_ready(i);
        }
        cell
    }

    fn mgmt_prefix(&self) -> String {
        format!("172.31.{}", self.slot.0)
    }

    /// The veth from this namespace to the router; our end holds the node
    /// addresses and the apiserver's advertised one.
    fn wire_management(&mut self) {
        let ours = unique_name("mg");
        let p = self.mgmt_prefix();
        let ip = |args: &[&str]| must(Command::new("ip").args(args));
        ip(&[
            "link",
            "add",
            &ours,
            "type",
            "veth",
            "peer",
            "name",
            "mgmt",
            "netns",
            self.router.name(),
        ]);
        for i in 0..self.spec.nodes {
            ip(&["addr", "add", &format!("{p}.{}/24", 10 + i), "dev", &ours]);
        }
        ip(&["addr", "add", &format!("{p}.2/24"), "dev", &ours]);
        ip(&["link", "set", &ours, "up"]);
        let r = &self.router;
        r.must(&["ip", "addr", "add", &format!("{p}.1/24"), "dev", "mgmt"]);
        r.must(&["ip", "link", "set", "mgmt", "up"]);
        r.must(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        self.mgmt_link = ours;
    }

    /// Pool `k`'s gateway on a ToR access port in its VLAN (inside the
    /// router), and the route to it from the management side.
    fn add_pool_route(&mut self, name: &str, vlan: u16, k: usize) {
        let net = format!("10.{}.{k}", 56 + u32::from(self.slot.0));
        let pool = CellPool {
            name: name.to_string(),
            vlan,
            cidr: format!("{net}.0/24"),
            gateway: format!("{net}.1"),
        };
        let host_end = unique_name("gw");
        let router_end = format!("vl{vlan}");
        must(&mut self.ovs.command(&[
            "ip",
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            &router_end,
            "netns",
            self.router.name(),
        ]));
        must(&mut self.ovs.command(&["ip", "link", "set", &host_end, "up"]));
        self.ovs
            .vsctl(&["add-port", &self.tor, &host_end, &format!("tag={vlan}")]);
        let r = &self.router;
        r.must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", pool.gateway),
            "dev",
            &router_end,
        ]);
        r.must(&["ip", "link", "set", &router_end, "up"]);
        // The ToR port is on OVS's userspace datapath (see attach_host).
        r.must(&["ethtool", "-K", &router_end, "tx", "off"]);
        must(Command::new("ip").args([
            "route",
            "add",
            &pool.cidr,
            "via",
            &format!("{}.1", self.mgmt_prefix()),
            "dev",
            &self.mgmt_link,
        ]));
        self.pools.push(pool);
    }

    fn start_etcd(&mut self) {
        let bin = k8s_bin("etcd");
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{}", free_port());
        let mut cmd = Command::new(bin);
        cmd.args(["--name", "cell"])
            .arg("--data-dir")
            .arg(self.dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("cell={peer}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn", "--listen-metrics-urls", ""]);
        let d = Daemon::spawn("etcd", &self.dir, &mut cmd);
        self.etcd = Some(d);
        let port = self.etcd_port;
        self.wait("etcd", |_| {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    fn issue(&self, name: &str, subject: &str, sans: &[String]) -> CertPair {
        self.ca.issue(name, subject, sans)
    }

    /// Serving and client certificates, service-account keys and the
    /// kubeconfigs of the control plane; made once, so a restarted apiserver
    /// keeps every credential valid.
    fn write_control_plane_pki(&self) {
        let p = self.mgmt_prefix();
        let svc = format!("172.30.{}", self.slot.0);
        self.issue(
            "apiserver",
            "/CN=kube-apiserver",
            &[
                "IP:127.0.0.1".into(),
                format!("IP:{p}.2"),
                format!("IP:{svc}.1"),
                "DNS:localhost".into(),
                "DNS:kubernetes".into(),
                "DNS:kubernetes.default".into(),
                "DNS:kubernetes.default.svc".into(),
            ],
        );
        self.issue(
            "apiserver-kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            &[],
        );
        // The aggregation layer's client (metrics-server trusts it through
        // the requestheader flags).
        self.issue("front-proxy-client", "/CN=front-proxy-client", &[]);
        self.ca.service_account_keys();
        self.write_kubeconfig("admin", "/O=system:masters/CN=leengine-admin");
        self.write_kubeconfig("controller-manager", "/CN=system:kube-controller-manager");
        self.write_kubeconfig("scheduler", "/CN=system:kube-scheduler");
    }

    fn start_apiserver(&mut self) {
        let pki = |f: &str| self.dir.join("pki").join(f).display().to_string();
        let mut cmd = Command::new(k8s_bin("kube-apiserver"));
        cmd.arg(format!(
            "--etcd-servers=http://127.0.0.1:{}",
            self.etcd_port
        ))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", self.api_port))
        .arg(format!("--advertise-address={}.2", self.mgmt_prefix()))
        .arg(format!("--tls-cert-file={}", pki("apiserver.crt")))
        .arg(format!("--tls-private-key-file={}", pki("apiserver.key")))
        .arg(format!("--client-ca-file={}", pki("ca.crt")))
        .arg(format!(
            "--kubelet-client-certificate={}",
            pki("apiserver-kubelet-client.crt")
        ))
        .arg(format!(
            "--kubelet-client-key={}",
            pki("apiserver-kubelet-client.key")
        ))
        .arg(format!("--kubelet-certificate-authority={}", pki("ca.crt")))
        .arg("--kubelet-preferred-address-types=InternalIP")
        .arg(format!("--requestheader-client-ca-file={}", pki("ca.crt")))
        .arg("--requestheader-allowed-names=front-proxy-client")
        .arg("--requestheader-username-headers=X-Remote-User")
        .arg("--requestheader-group-headers=X-Remote-Group")
        .arg("--requestheader-extra-headers-prefix=X-Remote-Extra-")
        .arg(format!(
            "--proxy-client-cert-file={}",
            pki("front-proxy-client.crt")
        ))
        .arg(format!(
            "--proxy-client-key-file={}",
            pki("front-proxy-client.key")
        ))
        // No kube-proxy here: the aggregator dials an APIService's endpoint.
        .arg("--enable-aggregator-routing=true")
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg(format!("--service-account-key-file={}", pki("sa.pub")))
        .arg(format!(
            "--service-account-signing-key-file={}",
            pki("sa.key")
        ))
        .arg(format!(
            "--service-cluster-ip-range=172.30.{}.0/24",
            self.slot.0
        ))
        .arg("--authorization-mode=Node,RBAC")
        .arg("--allow-privileged=true")
        .arg("--profiling=false")
        .arg("--enable-priority-and-fairness=false")
        .arg("--v=1");
        self.apiserver = Some(Daemon::spawn("kube-apiserver", &self.dir, &mut cmd));
        self.wait("kube-apiserver", |c| {
            c.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
    }

    fn start_controllers(&mut self) {
        let sa = self.dir.join("pki/sa.key");
        let cm = self.dir.join("controller-manager.kubeconfig");
        let mut cmd = Command::new(k8s_bin("kube-controller-manager"));
        cmd.arg(format!("--kubeconfig={}", cm.display()))
            .arg(format!("--authentication-kubeconfig={}", cm.display()))
            .arg(format!("--authorization-kubeconfig={}", cm.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .arg(format!(
                "--service-account-private-key-file={}",
                sa.display()
            ))
            .arg(format!("--root-ca-file={}", self.ca.cert().display()))
            .arg("--use-service-account-credentials=true")
            .arg("--leader-elect=false")
            .arg("--v=1");
        self.controller_manager = Some(Daemon::spawn(
            "kube-controller-manager",
            &self.dir,
            &mut cmd,
        ));
        let sched = self.dir.join("scheduler.kubeconfig");
        let mut cmd = Command::new(k8s_bin("kube-scheduler"));
        cmd.arg(format!("--kubeconfig={}", sched.display()))
            .arg(format!("--authentication-kubeconfig={}", sched.display()))
            .arg(format!("--authorization-kubeconfig={}", sched.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .arg("--leader-elect=false")
            .arg("--v=1");
        self.scheduler = Some(Daemon::spawn("kube-scheduler", &self.dir, &mut cmd));
        // Pod admission needs the namespace's service account, which the
        // controller manager makes: until then every pod is refused.
        self.wait("the default service account", |c| {
            c.kubectl(&["-n", "default", "get", "serviceaccount", "default"])
                .status
                .success()
        });
    }

    /// A kubeconfig for a client certificate with `subject`; returns its path.
    fn write_kubeconfig(&self, name: &str, subject: &str) -> PathBuf {
        let pair = self.issue(name, subject, &[]);
        let path = self.dir.join(format!("{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cell\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\n\
             contexts:\n- name: c\n  context:\n    cluster: cell\n    user: u\ncurrent-context: c\n",
            self.api_url(),
            self.ca.cert().display(),
            pair.cert.display(),
            pair.key.display()
        );
        fs::write(&path, text).expect("write kubeconfig");
        path
    }

    fn conflist(&self, n: &KubeNode) -> serde_json::Value {
        let pools: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
        let mut leengine = serde_json::json!({
            "type": "leengine",
            "bridge": n.bridge,
            "ovsdb": self.ovs.db_url(),
            "etcd": { "endpoints": [self.etcd_endpoint()], "prefix": "/leengine" },
            "node": n.name,
            "pools": pools,
            "hostNetns": self.ovs.netns().path(),
        });
        let plugin = match self.spec.network {
            CellNetwork::Leengine => leengine,
            CellNetwork::LeengineAgent => {
                leengine["agentSocket"] = n.cni_socket.display().to_string().into();
                leengine
            }
            CellNetwork::BridgeHostLocal => serde_json::json!({
                "type": "bridge",
                "bridge": n.ref_bridge,
                "isGateway": true,
                "ipam": {
                    "type": "host-local",
                    // Beside the pools' /24s (10.{56+S}.k.0).
                    "subnet": format!("10.{}.250.0/24", 56 + u32::from(self.slot.0)),
                    "dataDir": n.dir.join("host-local"),
                },
            }),
        };
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "leengine",
            "plugins": [plugin],
        })
    }

    fn make_node(&self, i: usize, bridge: String) -> KubeNode {
        let name = format!("{}-n{i}", self.name);
        let dir = self.dir.join(&name);
        fs::create_dir_all(dir.join("cni/bin")).expect("mkdir cni bin");
        fs::create_dir_all(dir.join("cni/net.d")).expect("mkdir cni conf");
        fs::create_dir_all(dir.join("certs.d")).expect("mkdir certs.d");
        std::os::unix::fs::symlink(&self.spec.cni_plugin, dir.join("cni/bin/leengine"))
            .expect("link leengine-cni");
        for e in fs::read_dir("/usr/lib/cni")
            .expect("reference CNI plugins (containernetworking-plugins)")
            .flatten()
        {
            let _ = std::os::unix::fs::symlink(e.path(), dir.join("cni/bin").join(e.file_name()));
        }
        KubeNode {
            ip: format!("{}.{}", self.mgmt_prefix(), 10 + i),
            bridge,
            cgroup_root: cgroup::create_root(&unique_name("kube")),
            kubelet_port: free_port(),
            kubelet: None,
            containerd: None,
            node_agent: None,
            reclaim: self.spec.reclaim,
            agent_port: free_port(),
            ref_bridge: format!("lekb{}n{i}", self.slot.0),
            cni_socket: self.dir.join(format!("cni-of-{name}.sock")),
            dir,
            name,
        }
    }

    fn write_node_config(&self, i: usize) {
        let n = &self.nodes[i];
        let conflist = self.conflist(n);
        fs::write(
            n.dir.join("cni/net.d/10-leengine.conflist"),
            serde_json::to_string_pretty(&conflist).expect("json"),
        )
        .expect("write conflist");
        let d = n.dir.display();
        let containerd = format!(
            r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # This machine lacks CAP_SYS_RESOURCE: no negative oom_score_adj (docs/testenv.md).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"#
        );
        fs::write(n.dir.join("containerd.toml"), containerd).expect("write containerd config");
        let serving = self.issue(
            &format!("{}-serving", n.name),
            &format!("/CN={}", n.name),
            &[format!("IP:{}", n.ip), format!("DNS:{}", n.name)],
        );
        let kubelet = format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             address: {ip}\nport: {port}\nreadOnlyPort: 0\nhealthzBindAddress: 127.0.0.1\nhealthzPort: 0\n\
             cgroupDriver: cgroupfs\ncgroupRoot: {cg}\nfailSwapOn: false\n\
             containerRuntimeEndpoint: unix://{d}/containerd.sock\n\
             authentication:\n  anonymous:\n    enabled: false\n  webhook:\n    enabled: false\n  x509:\n    clientCAFile: {ca}\n\
             authorization:\n  mode: AlwaysAllow\n\
             tlsCertFile: {cert}\ntlsPrivateKeyFile: {key}\n\
             resolvConf: /etc/resolv.conf\nserializeImagePulls: false\n\
             evictionHard:\n  memory.available: 1%\n  nodefs.available: 1%\n  imagefs.available: 1%\n\
             imageGCHighThresholdPercent: 99\nimageGCLowThresholdPercent: 98\n\
             nodeStatusReportFrequency: 10s\nsyncFrequency: 10s\nfileCheckFrequency: 10s\n",
            ip = n.ip,
            port = n.kubelet_port,
            cg = n.cgroup_root,
            ca = self.ca.cert().display(),
            cert = serving.cert.display(),
            key = serving.key.display(),
        );
        fs::write(n.dir.join("kubelet.yaml"), kubelet).expect("write kubelet config");
        self.write_kubeconfig(
            &format!("{}-kubelet", n.name),
            &format!("/O=system:nodes/CN=system:node:{}", n.name),
        );
    }

    fn start_node(&mut self, i: usize, pause: &Path) {
        if !self.nodes[i].dir.join("kubelet.yaml").exists() {
            self.write_node_config(i);
        }
        if self.nodes[i].node_agent.is_none() {
            self.start_node_agent(i);
        }
        self.start_containerd(i, pause);
        self.start_kubelet(i);
    }

    fn start_node_agent(&mut self, i: usize) {
        let Some(bin) = self.spec.node_agent.clone() else {
            return;
        };
        let etcd = self.ovs.netns().forward_tcp(self.etcd_port);
        let kubeconfig = self.node_agent_kubeconfig(i);
        let n = &self.nodes[i];
        let args = [
            "--kubeconfig".to_string(),
            kubeconfig.display().to_string(),
            "--node".into(),
            n.name.clone(),
            "--etcd-endpoints".into(),
            format!("http://127.0.0.1:{etcd}"),
            "--ovsdb".into(),
            self.ovs.db_url(),
            "--bridge".into(),
            n.bridge.clone(),
            "--datapath-type".into(),
            "netdev".into(),
            "--lease-ttl".into(),
            "5s".into(),
            "--scan-interval".into(),
            "1s".into(),
            "--reclaim-grace".into(),
            "3s".into(),
            "--reclaim".into(),
            if n.reclaim { "on" } else { "off" }.into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", n.agent_port),
            // Its own, not the system's /run/leengine/cni.sock: the Cell's
            // nodes share one host.
            "--cni-socket".into(),
            n.cni_socket.display().to_string(),
            // Metrics of this kubelet's containers (its --cgroup-root).
            "--container-roots".into(),
            format!("{}/kubepods", n.cgroup_root.trim_start_matches('/')),
        ];
        let bin = bin.display().to_string();
        let mut argv: Vec<&str> = vec![bin.as_str()];
        argv.extend(args.iter().map(String::as_str));
        // nsenter, not `ip netns exec`: that remounts /sys, and the agent's
        // metrics and swap guard need the host's cgroup mounts.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.ovs.netns().path().display()))
            .args(&argv);
        cmd.env("RUST_LOG", "info");
        let d = Daemon::spawn("node-agent", &n.dir, &mut cmd);
        self.nodes[i].node_agent = Some(d);
    }

    /// The Cell's admin kubeconfig, pointed at a forward of the apiserver
    /// into the node namespace the node-agent runs in.
    fn node_agent_kubeconfig(&self, i: usize) -> PathBuf {
        let port = self.ovs.netns().forward_tcp(self.api_port);
        let admin = fs::read_to_string(self.kubeconfig()).expect("read admin kubeconfig");
        let text = admin.replace(
            &format!("server: {}", self.api_url()),
            &format!("server: https://127.0.0.1:{port}"),
        );
        assert_ne!(
            text,
            admin,
            "admin kubeconfig names no server {}",
            self.api_url()
        );
        // Outside the node's directory: a node crash kills every process
        // naming that directory, and the node-agent is not the node's runtime.
        let path = self
            .dir
            .join(format!("node-agent-of-{}.kubeconfig", self.nodes[i].name));
        fs::write(&path, text).expect("write node-agent kubeconfig");
        path
    }

    fn start_containerd(&mut self, i: usize, pause: &Path) {
        let n = &self.nodes[i];
        let sock = n.dir.join("containerd.sock");
        let _ = fs::remove_file(&sock);
        let mut cmd = Command::new(crate::run::require_bin("containerd", "containerd"));
        cmd.arg("--config").arg(n.dir.join("containerd.toml"));
        let mut d = Daemon::spawn("containerd", &n.dir, &mut cmd);
        if !wait_until(PATIENCE, || {
            d.assert_running();
            sock.exists()
        }) {
            panic!("containerd of {} did not start:\n{}", n.name, tail(&d.log));
        }
        must(
            Command::new(crate::run::require_bin("ctr", "containerd"))
                .arg("--address")
                .arg(&sock)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(pause)
                .stdout(Stdio::null()),
        );
        self.nodes[i].containerd = Some(d);
    }

    fn start_kubelet(&mut self, i: usize) {
        let n = &self.nodes[i];
        let mut cmd = Command::new(k8s_bin("kubelet"));
        cmd.arg(format!("--config={}", n.dir.join("kubelet.yaml").display()))
            .arg(format!(
                "--kubeconfig={}",
                self.dir
                    .join(format!("{}-kubelet.kubeconfig", n.name))
                    .display()
            ))
            .arg(format!("--root-dir={}", n.dir.join("kubelet").display()))
            .arg(format!(
                "--cert-dir={}",
                n.dir.join("kubelet-pki").display()
            ))
            .arg(format!("--hostname-override={}", n.name))
            .arg(format!("--node-ip={}", n.ip))
            .arg("--v=1");
        self.nodes[i].kubelet = Some(Daemon::spawn("kubelet", &n.dir, &mut cmd));
    }

    fn wait_node_ready(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        self.wait(&format!("node {name}"), |c| {
            let out = c.kubectl(&[
                "get",
                "node",
                &name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            String::from_utf8_lossy(&out.stdout).trim() == "True"
        });
    }

    /// Polls `ready` (with every daemon checked alive each round); panics
    /// naming `what` and showing the logs of the component that died or,
    /// on a time-out, the tails of all of them.
    fn wait(&mut self, what: &str, mut ready: impl FnMut(&Cell) -> bool) {
        let ok = wait_until(PATIENCE, || {
            self.assert_running();
            ready(self)
        });
        if !ok {
            panic!(
                "{what} did not become ready in {PATIENCE:?}:\n{}",
                self.logs()
            );
        }
    }

    fn daemons(&mut self) -> Vec<&mut Daemon> {
        let mut v: Vec<&mut Daemon> = Vec::new();
        for d in [
            &mut self.etcd,
            &mut self.apiserver,
            &mut self.controller_manager,
            &mut self.scheduler,
            &mut self.metrics_server,
        ]
        .into_iter()
        .flatten()
        {
            v.push(d);
        }
        for n in &mut self.nodes {
            v.extend(n.node_agent.as_mut());
            v.extend(n.containerd.as_mut());
            v.extend(n.kubelet.as_mut());
        }
        v
    }

    fn assert_running(&mut self) {
        for d in self.daemons() {
            d.assert_running();
        }
    }

    /// The last lines of every component's log.
    pub fn logs(&mut self) -> String {
        self.daemons()
            .iter()
            .map(|d| format!("--- {} ({})\n{}", d.name, d.log.display(), tail(&d.log)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `https://127.0.0.1:PORT`
    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The cluster-admin kubeconfig (tests and the platform's core use it).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.ca.cert()
    }

    /// The Cell's etcd (Kubernetes' and the IPAM's): `http://127.0.0.1:PORT`.
    pub fn etcd_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    pub fn pools(&self) -> &[CellPool] {
        &self.pools
    }

    pub fn nodes(&self) -> &[KubeNode] {
        &self.nodes
    }

    pub fn ovs(&self) -> &Ovs {
        &self.ovs
    }

    /// The router namespace (it holds every pool's gateway; a test may ping
    /// from it as "the management network").
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// A host outside the Cell (a database, say) on the ToR in `vlan`.
    pub fn add_external_host(&self, vlan: u16, cidr: &str) -> Pod {
        attach_host(&self.ovs, &self.tor, vlan, cidr)
    }

    /// `kubectl` as cluster admin (tests observe with it).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(k8s_bin("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }

    /// `kubectl apply -f -` with `manifest`; panics when it fails.
    pub fn apply(&self, manifest: &str) {
        use std::io::Write;
        let mut child = Command::new(k8s_bin("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifest.as_bytes())
            .expect("write manifest");
        let out = child.wait_with_output().expect("kubectl apply");
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Lets every containerd of the Cell pull from `registry` (`HOST:PORT`)
    /// over plain HTTP.
    pub fn trust_registry(&self, registry: &str) {
        for n in &self.nodes {
            let dir = n.dir.join("certs.d").join(registry);
            fs::create_dir_all(&dir).expect("mkdir certs.d host");
            fs::write(
                dir.join("hosts.toml"),
                format!(
                    "server = \"http://{registry}\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                ),
            )
            .expect("write hosts.toml");
        }
    }

    /// Imports `image` as `reference` into node `i`'s containerd.
    pub fn import_image(&self, i: usize, tar: &Path) {
        let n = &self.nodes[i];
        must(
            Command::new(crate::run::require_bin("ctr", "containerd"))
                .arg("--address")
                .arg(n.dir.join("containerd.sock"))
                .args(["-n", "k8s.io", "images", "import"])
                .arg(tar)
                .stdout(Stdio::null()),
        );
    }

    /// kill -9 of node `i`'s kubelet and containerd (their containers keep
    /// running, as after a real runtime crash).
    pub fn kill_runtime(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        for d in [n.kubelet.take(), n.containerd.take()]
            .into_iter()
            .flatten()
        {
            let mut d = d;
            d.kill9();
        }
    }

    /// Node `i` loses its runtime and everything it ran: kubelet, containerd,
    /// the shims, every container and the pod namespaces (a crash plus the
    /// runtime's state wiped, the original's "dead Docker"), without any
    /// CNI DEL. Use [`restart_runtime`](Self::restart_runtime) after it.
    pub fn crash_node(&mut self, i: usize) {
        self.kill_runtime(i);
        let n = &self.nodes[i];
        kill_processes_naming(&n.dir);
        cgroup::kill_all(&n.cgroup_root, false);
        unmount_below(&n.dir.join("containerd"));
        unmount_below(&n.dir.join("kubelet"));
        let _ = fs::remove_dir_all(n.dir.join("containerd"));
    }

    /// Starts node `i`'s containerd and kubelet again.
    pub fn restart_runtime(&mut self, i: usize) {
        let pause = Image::pause().save(PAUSE_IMAGE);
        self.start_node(i, &pause);
        self.wait_node_ready(i);
    }

    /// Restarts node `i`'s node-agent with leak reclaim `on` or off.
    pub fn set_reclaim(&mut self, i: usize, on: bool) {
        self.nodes[i].node_agent.take();
        self.nodes[i].reclaim = on;
        self.start_node_agent(i);
    }

    /// The node-agent log of node `i`.
    pub fn node_agent_log(&self, i: usize) -> String {
        fs::read_to_string(self.nodes[i].dir.join("node-agent.log")).unwrap_or_default()
    }

    /// Kills the apiserver (SIGKILL); [`start_apiserver_again`](Self::start_apiserver_again) brings it back on the same port.
    /// Starts metrics-server (`hack/k8s.sh --metrics-server`) the way its
    /// release manifest does, but outside the Cell, on the management
    /// address: an APIService `v1beta1.metrics.k8s.io` served through a
    /// selector-less Service whose Endpoints name that address. Scrapes each
    /// kubelet (at its status port, trusting the Cell's CA) every 15 s, the
    /// manifest's resolution. Returns when `kubectl top`'s API lists a pod
    /// or node metric.
    pub fn start_metrics_server(&mut self) {
        let port = free_port();
        let ip = format!("{}.2", self.mgmt_prefix());
        let kc = self.kubeconfig().display().to_string();
        let mut cmd = Command::new(k8s_bin("metrics-server"));
        cmd.arg(format!("--kubeconfig={kc}"))
            .arg(format!("--authentication-kubeconfig={kc}"))
            .arg(format!("--authorization-kubeconfig={kc}"))
            .arg(format!("--bind-address={ip}"))
            .arg(format!("--secure-port={port}"))
            .arg(format!(
                "--cert-dir={}",
                self.dir.join("metrics-server").display()
            ))
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg("--kubelet-use-node-status-port")
            .arg(format!(
                "--kubelet-certificate-authority={}",
                self.ca.cert().display()
            ))
            .arg("--metric-resolution=15s")
            .arg("--v=1");
        self.metrics_server = Some(Daemon::spawn("metrics-server", &self.dir, &mut cmd));
        let manifest = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "metrics-server", "namespace": "kube-system"},
             "spec": {"ports": [{"port": 443, "targetPort": port}]}},
            {"apiVersion": "v1", "kind": "Endpoints",
             "metadata": {"name": "metrics-server", "namespace": "kube-system"},
             "subsets": [{"addresses": [{"ip": ip}], "ports": [{"port": port}]}]},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
             "metadata": {"name": "v1beta1.metrics.k8s.io"},
             "spec": {"group": "metrics.k8s.io", "version": "v1beta1",
                      "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
                      // As the release manifest: its serving cert is self-signed.
                      "insecureSkipTLSVerify": true,
                      "groupPriorityMinimum": 100, "versionPriority": 100}},
        ]});
        self.apply(&manifest.to_string());
        self.wait("metrics-server", |c| {
            let out = c.kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"]);
            out.status.success()
                && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .ok()
                    .and_then(|v| v["items"].as_array().map(|a| !a.is_empty()))
                    .unwrap_or(false)
        });
    }

    pub fn stop_apiserver(&mut self) {
        if let Some(mut d) = self.apiserver.take() {
            d.kill9();
        }
    }

    pub fn start_apiserver_again(&mut self) {
        self.start_apiserver();
    }
}

/// SIGKILLs every process whose command line names `dir` (containerd's
/// shims carry its socket path).
fn kill_processes_naming(dir: &Path) {
    let marker = dir.to_string_lossy().into_owned();
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(c) = fs::read(p.path().join("cmdline")) {
            if String::from_utf8_lossy(&c).contains(&marker) {
                crate::run::signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// Lazily unmounts everything mounted below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let marker = dir.to_string_lossy().into_owned();
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| t.starts_with(marker.as_str()))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = Command::new("umount").args(["-l", t]).status();
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kubelet.take();
            n.containerd.take();
            n.node_agent.take();
            kill_processes_naming(&n.dir);
            cgroup::kill_all(&n.cgroup_root, true);
            if self.spec.network == CellNetwork::BridgeHostLocal {
                let _ = Command::new("ip")
                    .args(["link", "del", &n.ref_bridge])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        self.scheduler.take();
        self.controller_manager.take();
        self.apiserver.take();
        self.etcd.take();
        unmount_below(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One of 200 Cell slots, held by a lock file naming this run; a slot whose
/// run is gone is taken over.
#[derive(Debug)]
struct Slot(u8);

const SLOTS: &str = "/tmp/leengine-testenv/cell-slots";

impl Slot {
    fn claim() -> Slot {
        fs::create_dir_all(SLOTS).expect("mkdir cell slots");
        let me = crate::run::run_dir().to_string_lossy().into_owned();
        for n in 0..200u8 {
            let f = Path::new(SLOTS).join(n.to_string());
            if let Ok(owner) = fs::read_to_string(&f) {
                if Path::new(owner.trim()).exists() {
                    continue;
                }
                let _ = fs::remove_file(&f);
            }
            // The owner is written before the slot file appears (a hard link
            // fails if it exists): a half-written, empty slot file would read
            // as "run gone" and be taken by a concurrent claimer.
            let tmp = Path::new(SLOTS).join(format!(".{n}.{}", unique_name("slot")));
            fs::write(&tmp, me.as_bytes()).expect("write slot");
            let taken = fs::hard_link(&tmp, &f).is_ok();
            let _ = fs::remove_file(&tmp);
            if taken {
                return Slot(n);
            }
        }
        panic!("all 200 Cell slots in {SLOTS} are taken");
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = fs::remove_file(Path::new(SLOTS).join(self.0.to_string()));
    }
}
