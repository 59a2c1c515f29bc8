//! The plugin's first real user: kubelet → containerd (CRI) → leengine-cni,
//! in a real Cell (tests/testenv `Cell`: etcd 3.6, kube-apiserver,
//! controller-manager, scheduler, two nodes of the virtual data centre).
//! Observation uses kubectl, ovs-vsctl and ip; the product under test is
//! only what kubelet and containerd exec.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use leengine_ipam::{Filter, Ipam, Pool};
use leengine_testenv as te;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_leengine-cni");
const VLAN: u16 = 120;
/// Hang guard; not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(240);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A running Cell with pool `web` created, the web image in a registry the
/// nodes pull from, and an external "database" host on the pool's VLAN.
struct World {
    cell: te::Cell,
    registry: te::Registry,
    db: te::Pod,
    pool: te::CellPool,
}

impl World {
    fn new(nodes: usize) -> World {
        Self::with(nodes, None)
    }

    /// `node_agent`: run the node-agents, with reclaim on or off.
    fn with(nodes: usize, node_agent: Option<bool>) -> World {
        let cell = te::Cell::start(te::CellSpec {
            nodes,
            pools: vec![("web".into(), VLAN)],
            cni_plugin: BIN.into(),
            node_agent: node_agent.map(|_| sibling("leengine-node-agent")),
            reclaim: node_agent.unwrap_or(false),
            network: te::CellNetwork::Leengine,
        });
        let pool = cell.pools()[0].clone();
        let net = pool.cidr.trim_end_matches(".0/24").to_string();
        let db_ip = format!("{net}.250");
        let p = Pool::parse(
            "web",
            &pool.cidr,
            &pool.gateway,
            u32::from(VLAN),
            16,
            &[format!("{db_ip}/32")],
        )
        .unwrap();
        rt().block_on(async { ipam(&cell).await.add_pool(&p).await.unwrap() });
        let registry = te::Registry::start();
        te::Image::web(8080).push(&registry.addr(), "demo/web", "v1", None);
        cell.trust_registry(&registry.addr());
        let db = cell.add_external_host(VLAN, &format!("{db_ip}/24"));
        World {
            cell,
            registry,
            db,
            pool,
        }
    }

    fn image(&self) -> String {
        format!("{}/demo/web:v1", self.registry.addr())
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.cell.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pods(&self, selector: &str) -> Vec<Value> {
        let text = self.kubectl(&["get", "pods", "-l", selector, "-o", "json"]);
        let v: Value = serde_json::from_str(&text).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until exactly `n` pods match and all are Ready.
    fn wait_ready(&mut self, selector: &str, n: usize) -> Vec<Value> {
        let mut last = Vec::new();
        let ok = te::wait_until(PATIENCE, || {
            last = self.pods(selector);
            last.len() == n && last.iter().all(te::pod_ready)
        });
        if !ok {
            let summary: Vec<String> = last.iter().map(te::describe_pod).collect();
            panic!(
                "{n} ready pods for {selector} not reached: {summary:#?}\n{}",
                self.cell.logs()
            );
        }
        last
    }

    fn exec(&self, pod: &str, argv: &[&str]) -> std::process::Output {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(argv);
        self.cell.kubectl(&args)
    }
}

/// Another binary of the workspace, next to this crate's (`cargo test
/// --workspace` builds them all before any test runs).
fn sibling(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(BIN).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// `cnictl check` against the Cell's etcd and real apiserver: the leaked IPs.
fn cnictl_check(cell: &te::Cell) -> BTreeSet<Ipv4Addr> {
    let kubeconfig = cell.kubeconfig();
    let out = std::process::Command::new(sibling("cnictl"))
        .args([
            "check",
            "--grace",
            "0s",
            "-o",
            "json",
            "--etcd",
            &cell.etcd_endpoint(),
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(4)),
        "cnictl check: {code:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["apiserverConsulted"], true, "{report}");
    let leaked: BTreeSet<Ipv4Addr> = report["leaked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["attachment"]["ip"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        code == Some(4),
        !leaked.is_empty(),
        "exit code 4 = leaks found"
    );
    leaked
}

fn allocated(cell: &te::Cell) -> BTreeSet<Ipv4Addr> {
    rt().block_on(async {
        ipam(cell)
            .await
            .list_ips(&Filter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.ip)
            .collect()
    })
}

async fn ipam(cell: &te::Cell) -> Ipam {
    let cfg = leengine_store::EtcdConfig::new(vec![cell.etcd_endpoint()]);
    let client = leengine_store::connect(&cfg).await.unwrap();
    Ipam::new(client, cfg.keys(), "observer")
}

fn name(p: &Value) -> String {
    p["metadata"]["name"].as_str().unwrap().to_string()
}

fn ip(p: &Value) -> Ipv4Addr {
    p["status"]["podIP"].as_str().unwrap().parse().unwrap()
}

fn node(p: &Value) -> String {
    p["spec"]["nodeName"].as_str().unwrap().to_string()
}

fn deployment(name: &str, image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: {name}}}}}}}
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

/// The host-side ports the plugin made, keyed by pod IP: (VLAN tag, port name).
fn ovs_ports(cell: &te::Cell) -> BTreeMap<Ipv4Addr, (String, String)> {
    let out = cell.ovs().vsctl(&[
        "--format=json",
        "--columns=name,tag,external_ids",
        "find",
        "Port",
        "external_ids:leengine-owner=leengine-cni",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut ports = BTreeMap::new();
    for row in v["data"].as_array().unwrap() {
        let name = row[0].as_str().unwrap().to_string();
        let tag = row[1].to_string();
        let ids = row[2][1].as_array().unwrap();
        let ip = ids
            .iter()
            .find(|kv| kv[0] == "leengine-ip")
            .and_then(|kv| kv[1].as_str())
            .unwrap()
            .parse()
            .unwrap();
        ports.insert(ip, (tag, name));
    }
    ports
}

/// Host veth ends (`le…`) in the node namespace.
fn host_veths(cell: &te::Cell) -> Vec<String> {
    let out = cell.ovs().netns().must(&["ip", "-o", "link", "show"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("le"))
        .collect()
}

#[test]
fn deployment_on_two_nodes_gets_pool_ips_vlan_and_l2_reach_then_scales_to_zero() {
    let mut w = World::new(2);
    w.cell.apply(&deployment("web", &w.image(), 6));
    let pods = w.wait_ready("app=web", 6);

    // Every pod's IP is its IPAM allocation, inside a 16-address block its
    // node owns, in the pool; kubelet's readiness probe (through the router)
    // passed for all of them.
    let (attachments, blocks) = rt().block_on(async {
        let ipam = ipam(&w.cell).await;
        (
            ipam.list_ips(&Filter::default()).await.unwrap(),
            ipam.list_blocks(&Filter::default()).await.unwrap(),
        )
    });
    let by_ip: BTreeMap<Ipv4Addr, _> = attachments.iter().map(|a| (a.ip, a)).collect();
    let pool_net: ipnet::Ipv4Net = w.pool.cidr.parse().unwrap();
    let nodes: BTreeSet<String> = pods.iter().map(node).collect();
    assert_eq!(nodes.len(), 2, "spread over both nodes: {pods:?}");
    for p in &pods {
        let a = by_ip
            .get(&ip(p))
            .unwrap_or_else(|| panic!("{} has no IPAM allocation", te::describe_pod(p)));
        assert_eq!(a.pod_name.as_deref(), Some(name(p).as_str()));
        assert_eq!(a.pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.node, node(p), "allocated by its own node");
        assert!(pool_net.contains(&a.ip));
        assert_eq!(a.vlan.id(), VLAN);
        let block = blocks
            .iter()
            .find(|b| b.cidr == a.block)
            .expect("allocation's block exists");
        assert_eq!(block.node, node(p), "block owned by the pod's node");
        assert_eq!(block.cidr.prefix_len(), 28, "16-address blocks");
        assert!(block.cidr.contains(&a.ip));
    }
    assert_eq!(attachments.len(), 6, "no stray allocations");

    // The datapath: one access port per pod, tagged with the pool's VLAN.
    let ports = ovs_ports(&w.cell);
    for p in &pods {
        let (tag, _) = ports.get(&ip(p)).expect("OVS port for the pod");
        assert_eq!(tag, &VLAN.to_string());
    }

    // L2 reach: a pod talks HTTP to a pod on the other node and pings the
    // external database host on the ToR.
    let a = &pods[0];
    let b = pods.iter().find(|p| node(p) != node(a)).unwrap();
    let url = format!("http://{}:8080/cgi-bin/whoami", ip(b));
    // (busybox-static 1.35 wget crashes with -T; timeout bounds it instead)
    let out = w.exec(&name(a), &["timeout", "10", "wget", "-qO-", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&name(b)),
        "answered by {}",
        name(b)
    );
    let db = w.db.ip.clone();
    let out = w.exec(&name(a), &["ping", "-c", "1", "-W", "5", &db]);
    assert!(out.status.success(), "pod → database host: {out:?}");
    assert!(
        w.db.netns.ping(&ip(b).to_string(), 5),
        "database host → pod"
    );

    // Scale to zero: every address back in the pool, no port, no veth.
    w.kubectl(&["scale", "deployment/web", "--replicas=0"]);
    let clean = te::wait_until(PATIENCE, || {
        let left = rt().block_on(async {
            ipam(&w.cell)
                .await
                .list_ips(&Filter::default())
                .await
                .unwrap()
        });
        left.is_empty()
            && w.pods("app=web").is_empty()
            && ovs_ports(&w.cell).is_empty()
            && host_veths(&w.cell).is_empty()
    });
    assert!(
        clean,
        "left after scale to 0: ips={:?} ports={:?} veths={:?}",
        rt().block_on(async {
            ipam(&w.cell)
                .await
                .list_ips(&Filter::default())
                .await
                .unwrap()
        }),
        ovs_ports(&w.cell),
        host_veths(&w.cell)
    );
    let audit = rt().block_on(async { ipam(&w.cell).await.audit().await.unwrap() });
    assert!(audit.is_empty(), "IPAM audit: {audit:?}");
}

#[test]
fn statefulset_pod_recreated_keeps_its_ip() {
    let mut w = World::new(1);
    let image = w.image();
    w.cell.apply(&format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: default}}
spec:
  replicas: 1
  serviceName: db
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {image}
        readinessProbe:
          httpGet: {{path: /healthz, port: 8080}}
          periodSeconds: 1
"#
    ));
    let before = w.wait_ready("app=db", 1);
    let old_uid = before[0]["metadata"]["uid"].clone();
    let old_ip = ip(&before[0]);
    w.kubectl(&["delete", "pod", "db-0", "--wait=true"]);
    let mut after = Vec::new();
    let recreated = te::wait_until(PATIENCE, || {
        after = w.pods("app=db");
        after.len() == 1 && after[0]["metadata"]["uid"] != old_uid && te::pod_ready(&after[0])
    });
    assert!(
        recreated,
        "db-0 not re-created: {:?}",
        after.iter().map(te::describe_pod).collect::<Vec<_>>()
    );
    assert_eq!(
        ip(&after[0]),
        old_ip,
        "a re-created StatefulSet pod keeps its IP"
    );
}

#[test]
fn runtime_crash_leaks_are_found_by_cnictl_against_the_apiserver_and_reclaimed_by_the_node_agent() {
    let mut w = World::with(2, Some(false));
    w.cell.apply(&deployment("web", &w.image(), 4));
    let before = w.wait_ready("app=web", 4);
    let ips = |pods: &[Value]| pods.iter().map(ip).collect::<BTreeSet<_>>();

    // kill -9 of containerd and kubelet: the containers keep running, the
    // restarted runtime adopts them, nothing changes address or leaks.
    w.cell.kill_runtime(1);
    w.cell.restart_runtime(1);
    let adopted = w.wait_ready("app=web", 4);
    assert_eq!(
        ips(&adopted),
        ips(&before),
        "same sandboxes after a runtime restart"
    );
    assert!(
        cnictl_check(&w.cell).is_empty(),
        "a runtime restart leaks nothing"
    );

    // The node loses its runtime with all its state (the original's "dead
    // Docker"): no CNI DEL ever runs for the old sandboxes.
    let victim = w.cell.nodes()[1].name.clone();
    let dead: BTreeSet<Ipv4Addr> = before
        .iter()
        .filter(|p| node(p) == victim)
        .map(ip)
        .collect();
    assert!(!dead.is_empty(), "the spread put pods on {victim}");
    w.cell.crash_node(1);
    w.cell.restart_runtime(1);
    let mut back = Vec::new();
    let rebuilt = te::wait_until(PATIENCE, || {
        back = w.pods("app=web");
        back.len() == 4
            && back.iter().all(te::pod_ready)
            && back.iter().all(|p| !dead.contains(&ip(p)))
    });
    assert!(
        rebuilt,
        "pods not back with new sandboxes: {:?}",
        back.iter().map(te::describe_pod).collect::<Vec<_>>()
    );
    let live = ips(&back);

    // The dead sandboxes' addresses are still allocated; cnictl, asking the
    // real apiserver, calls exactly those leaked.
    let held = allocated(&w.cell);
    assert!(
        dead.is_subset(&held),
        "dead IPs {dead:?} still allocated in {held:?}"
    );
    assert_eq!(cnictl_check(&w.cell), dead);

    // The node-agent, once reclaim is on, releases them and nothing alive.
    w.cell.set_reclaim(1, true);
    let reclaimed = te::wait_until(PATIENCE, || allocated(&w.cell) == live);
    assert!(
        reclaimed,
        "allocated {:?}, live {live:?}\n{}",
        allocated(&w.cell),
        w.cell.node_agent_log(1)
    );
    let still = w.wait_ready("app=web", 4);
    assert_eq!(ips(&still), live, "no live pod lost its address");
    assert!(cnictl_check(&w.cell).is_empty());
    assert!(
        w.cell.node_agent_log(1).contains("apiserver=true"),
        "the node-agent did not run with the apiserver:\n{}",
        w.cell.node_agent_log(1)
    );

    // A live pod whose allocation looks dead to the netns check (its record
    // names a namespace that is gone): the apiserver's view keeps its IP.
    let alive = still
        .iter()
        .find(|p| node(p) == victim)
        .expect("a live pod on the node");
    let (key, original) = rt().block_on(fake_dead_netns(&w.cell, &victim, ip(alive)));
    let held = format!("ip={}", ip(alive));
    let vetoed = te::wait_until(PATIENCE, || {
        let log = w.cell.node_agent_log(1);
        log.lines()
            .any(|l| l.contains("a live pod holds its IP") && l.contains(&held))
    });
    assert!(vetoed, "no veto seen:\n{}", w.cell.node_agent_log(1));
    assert!(
        allocated(&w.cell).contains(&ip(alive)),
        "a live pod's IP was reclaimed"
    );
    assert!(
        ovs_ports(&w.cell).contains_key(&ip(alive)),
        "a live pod's OVS port was removed"
    );
    rt().block_on(async {
        let mut etcd = etcd(&w.cell).await;
        etcd.put(key, original, None).await.unwrap();
    });
    let after = w.wait_ready("app=web", 4);
    assert_eq!(ips(&after), live, "no live pod lost its address");
    let audit = rt().block_on(async { ipam(&w.cell).await.audit().await.unwrap() });
    assert!(audit.is_empty(), "IPAM audit: {audit:?}");
}

async fn etcd(cell: &te::Cell) -> etcd_client::Client {
    let cfg = leengine_store::EtcdConfig::new(vec![cell.etcd_endpoint()]);
    leengine_store::connect(&cfg).await.unwrap()
}

/// Rewrites the node's index record of `ip` so that its netns is a path
/// that does not exist (in a directory that does): dead, to the netns check.
/// Returns the key and the original value.
async fn fake_dead_netns(cell: &te::Cell, node: &str, ip: Ipv4Addr) -> (String, Vec<u8>) {
    let keys = leengine_store::EtcdConfig::new(vec![cell.etcd_endpoint()]).keys();
    let key = keys.node_ip(node, ip);
    let mut etcd = etcd(cell).await;
    let resp = etcd.get(key.as_str(), None).await.unwrap();
    let original = resp.kvs()[0].value().to_vec();
    let mut rec: Value = serde_json::from_slice(&original).unwrap();
    let netns = rec["netns"].as_str().unwrap().to_string();
    rec["netns"] = format!("{netns}-gone").into();
    etcd.put(key.as_str(), serde_json::to_vec(&rec).unwrap(), None)
        .await
        .unwrap();
    (key, original)
}
