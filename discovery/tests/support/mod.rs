//! A Region for discovery tests: the Region's etcd (TLS, per-component
//! identities), real Cells, real nginx agents with nginx, discovery
//! replicas as processes, and a TCP proxy in front of an apiserver whose
//! connections a test can cut.

#![allow(dead_code)] // each test uses a different part

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use leengine_store::keys::{slb_agent, slb_domain_config, slb_domain_upstream};
use leengine_store::region::{CellRecord, DrainRequest, ServiceBinding};
use leengine_testenv as te;
pub use leengine_testenv::{Discovery, NginxAgent as Agent};
use serde_json::json;

pub const GROUP: &str = "g1";
pub const NS: &str = "default";
/// Hang guard for waits; not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Another binary of the workspace, next to this crate's.
pub fn sibling(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_leengine-discovery")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p leengine-nginx-agent -p leengine-cni -p cnictl` first",
        p.display()
    );
    p
}

pub struct Region {
    pub etcd: te::Etcd,
    pub rt: tokio::runtime::Runtime,
    pub root: etcd_client::Client,
    pub dir: tempfile::TempDir,
}

impl Region {
    pub fn start() -> Region {
        let etcd = te::Etcd::start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let root = rt.block_on(etcd.root_client());
        let dir = tempfile::Builder::new()
            .prefix("discovery-")
            .tempdir_in(te::run_dir())
            .expect("tempdir");
        Region {
            etcd,
            rt,
            root,
            dir,
        }
    }

    pub fn keys(&self) -> &leengine_store::Keys {
        self.etcd.keys()
    }

    pub fn put(&self, key: &str, value: &str) {
        let mut c = self.root.clone();
        self.rt.block_on(c.put(key, value, None)).expect("etcd put");
    }

    pub fn delete(&self, key: &str) {
        let mut c = self.root.clone();
        self.rt.block_on(c.delete(key, None)).expect("etcd delete");
    }

    pub fn get(&self, key: &str) -> Option<(Vec<u8>, i64)> {
        let mut c = self.root.clone();
        let r = self.rt.block_on(c.get(key, None)).expect("etcd get");
        r.kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision()))
    }

    /// Registers `cell` reaching its apiserver at `apiserver` (the Cell's
    /// own URL, or a proxy in front of it).
    pub fn register_cell(&self, name: &str, cell: &te::Cell, apiserver: &str) {
        let rec = CellRecord {
            apiserver: apiserver.to_string(),
            ca: Some(std::fs::read_to_string(cell.ca_cert()).expect("cell CA")),
            credential: cell.kubeconfig().display().to_string(),
            etcd: vec![cell.etcd_endpoint()],
            nginx_groups: vec![GROUP.into()],
        };
        self.put(
            &self.keys().cell(name),
            &serde_json::to_string(&rec).unwrap(),
        );
    }

    pub fn bind(&self, cell: &str, service: &str, domain: &str) {
        let b = ServiceBinding {
            group: GROUP.into(),
            domain: domain.into(),
            port: None,
        };
        self.put(
            &self.keys().discovery_service(cell, NS, service),
            &serde_json::to_string(&b).unwrap(),
        );
    }

    /// The domain's config, as slb-core would publish it.
    pub fn publish_domain(&self, domain: &str, port: u16) {
        self.put(
            &slb_domain_config(GROUP, domain),
            &format!(r#"{{"listen":[{{"port":{port}}}]}}"#),
        );
    }

    /// The servers of the domain's upstream in etcd, and its revision.
    pub fn upstream(&self, domain: &str) -> Option<(BTreeSet<SocketAddr>, i64)> {
        let (v, rev) = self.get(&slb_domain_upstream(GROUP, domain))?;
        let up = leengine_slb::Upstream::parse(&v).expect("discovery wrote a valid upstream");
        Some((up.servers.iter().map(|s| s.address).collect(), rev))
    }

    pub fn wait_upstream(&self, domain: &str, want: &[&str], why: &str) -> i64 {
        let want: BTreeSet<SocketAddr> = want.iter().map(|a| a.parse().unwrap()).collect();
        let mut last = None;
        let ok = te::wait_until(PATIENCE, || {
            last = self.upstream(domain);
            last.as_ref().is_some_and(|(s, _)| *s == want)
        });
        assert!(
            ok,
            "{why}: upstream of {domain} never became {want:?}; last {last:?}"
        );
        last.unwrap().1
    }

    pub fn drain(&self, domain: &str, id: &str, cell: &str, pods: &[&str]) {
        let r = DrainRequest {
            cell: cell.into(),
            namespace: NS.into(),
            pods: pods.iter().map(|p| p.to_string()).collect(),
            created: "2026-12-02T01:00:00Z".into(),
        };
        self.put(
            &self.keys().drain_request(GROUP, domain, id),
            &serde_json::to_string(&r).unwrap(),
        );
    }

    pub fn ack(&self, domain: &str, id: &str) -> Option<leengine_store::region::DrainAck> {
        let (v, _) = self.get(&self.keys().drain_ack(GROUP, domain, id))?;
        Some(serde_json::from_slice(&v).expect("ack JSON"))
    }

    pub fn discovery(&self, id: &str, extra: &[&str]) -> Discovery {
        let bin = Path::new(env!("CARGO_BIN_EXE_leengine-discovery"));
        Discovery::start(bin, &self.etcd, self.dir.path(), id, extra)
    }

    pub fn agent(&self, host: &str) -> Agent {
        Agent::start(&sibling("leengine-nginx-agent"), &self.etcd, GROUP, host)
    }

    pub fn agent_status(&self, host: &str) -> Option<leengine_slb::AgentStatus> {
        let (v, _) = self.get(&slb_agent(GROUP, host))?;
        serde_json::from_slice(&v).ok()
    }
}

/// A Cell without nodes: control plane only. Its EndpointSlices are
/// written by the test (a Service without selector), which makes any
/// endpoint state, and fast churn, possible.
pub fn bare_cell() -> te::Cell {
    te::Cell::start(te::CellSpec {
        nodes: 0,
        pools: vec![],
        cni_plugin: sibling("leengine-cni"),
        node_agent: None,
        reclaim: false,
        network: te::CellNetwork::Leengine,
    })
}

/// A Cell with one node, pool `web` on `vlan` (in the Cell's etcd) and the
/// test web image (`leengine.local/web:1`, busybox httpd on 8080) imported.
pub fn web_cell(vlan: u16) -> te::Cell {
    let cell = te::Cell::start(te::CellSpec {
        nodes: 1,
        pools: vec![("web".into(), vlan)],
        cni_plugin: sibling("leengine-cni"),
        node_agent: None,
        reclaim: false,
        network: te::CellNetwork::Leengine,
    });
    let pool = cell.pools()[0].clone();
    let out = Command::new(sibling("cnictl"))
        .args(["--etcd", &cell.etcd_endpoint(), "pool", "add", "web"])
        .args(["--cidr", &pool.cidr, "--gateway", &pool.gateway])
        .args(["--vlan", &vlan.to_string()])
        .output()
        .expect("run cnictl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cell.import_image(0, &te::Image::web(8080).save("leengine.local/web:1"));
    cell
}

/// A kube client acting as the Cell's admin.
pub fn kube(rt: &tokio::runtime::Runtime, cell: &te::Cell) -> kube::Client {
    rt.block_on(leengine_apiserver::client(Some(&cell.kubeconfig())))
        .unwrap()
}

/// A Service without selector (its slices are the test's).
pub fn selectorless_service(cell: &te::Cell, name: &str) {
    cell.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    ));
}

/// `(ip, ready, terminating, pod)`
pub type Ep = (String, bool, bool, String);

pub fn ep(ip: &str, ready: bool, terminating: bool, pod: &str) -> Ep {
    (ip.into(), ready, terminating, pod.into())
}

/// A ready endpoint.
pub fn up(ip: &str, pod: &str) -> Ep {
    ep(ip, true, false, pod)
}

/// Creates or replaces the EndpointSlice `slice` of `service`.
pub fn set_slice(
    rt: &tokio::runtime::Runtime,
    client: &kube::Client,
    service: &str,
    slice: &str,
    eps: &[Ep],
) {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let endpoints: Vec<serde_json::Value> = eps
        .iter()
        .map(|(ip, ready, terminating, pod)| {
            json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
                   "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}})
        })
        .collect();
    let body = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": slice, "namespace": NS, "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": "discovery-test"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    });
    rt.block_on(api.patch(
        slice,
        &PatchParams::apply("discovery-test").force(),
        &Patch::Apply(&body),
    ))
    .expect("apply EndpointSlice");
}

/// A TCP proxy in front of `target` whose connections can be cut.
pub struct Proxy {
    pub port: u16,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    blocked: Arc<std::sync::atomic::AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub fn start(rt: &tokio::runtime::Runtime, target: SocketAddr) -> Proxy {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c2, b2) = (conns.clone(), blocked.clone());
        let accept = rt.spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if b2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c2.lock().unwrap().push(h);
            }
        });
        Proxy {
            port,
            conns,
            blocked,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Drops every open connection (a network blip).
    pub fn cut(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Refuses new connections (after cutting the open ones) until unblocked.
    pub fn block(&self, on: bool) {
        self.blocked.store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            self.cut();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// `host:port` of the Cell's apiserver.
pub fn api_addr(cell: &te::Cell) -> SocketAddr {
    cell.api_url()
        .trim_start_matches("https://")
        .parse()
        .unwrap()
}
