//! The built `cnictl` binary against a real etcd (and, for `check`, a real
//! kube-apiserver: testenv's Cell, control plane only).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};

use leengine_ipam::{AssignRequest, Ipam, IpamOptions, LiveAttachment, NodeAttachmentsReport};
use leengine_store::Keys;
use leengine_testenv as te;
use serde_json::{json, Value};

const PREFIX: &str = "/cnictl-test";

struct Env {
    etcd: te::Etcd,
    client: etcd_client::Client,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let etcd = te::Etcd::start_with_prefix(PREFIX);
        let client = etcd.root_client().await;
        Env {
            etcd,
            client,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cnictl(&self, args: &[&str]) -> Output {
        let tls = self.etcd.tls_files(&te::Component::Cnictl);
        Command::new(env!("CARGO_BIN_EXE_cnictl"))
            .args(args)
            .env("LEENGINE_ETCD_ENDPOINTS", self.etcd.endpoint())
            .env("LEENGINE_ETCD_CA", tls.ca)
            .env("LEENGINE_ETCD_CERT", tls.cert)
            .env("LEENGINE_ETCD_KEY", tls.key)
            .env("LEENGINE_ETCD_PREFIX", PREFIX)
            .env_remove("KUBECONFIG")
            .env("HOME", self.dir.path())
            .output()
            .unwrap()
    }

    /// Runs cnictl expecting `code`; returns stdout.
    fn run(&self, code: i32, args: &[&str]) -> String {
        let out = self.cnictl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code),
            "cnictl {args:?}: stderr {stderr}"
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, code: i32, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.run(code, &all)).unwrap()
    }

    /// Runs a command that must be refused: exit `code`, exactly one line on
    /// stderr containing `want`, nothing on stdout and nothing changed in etcd.
    async fn refused(&self, code: i32, args: &[&str], want: &str) {
        let before = self.dump().await;
        let out = self.cnictl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: not one line: {stderr}"
        );
        assert!(stderr.contains(want), "{args:?}: {stderr:?} lacks {want:?}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(self.dump().await, before, "{args:?} changed etcd");
    }

    /// Every key and value under the prefix.
    async fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let resp = self
            .client
            .kv_client()
            .get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        resp.kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect()
    }

    fn ipam(&self, node: &str) -> Ipam {
        let opts = IpamOptions {
            cooldown: std::time::Duration::ZERO,
            ..IpamOptions::default()
        };
        Ipam::new(self.client.clone(), Keys::new(PREFIX), node).with_options(opts)
    }

    async fn register(&self, node: &str) {
        let key = Keys::new(PREFIX).node(node);
        self.client.kv_client().put(key, "{}", None).await.unwrap();
    }
}

fn req(cid: &str, pod: &str) -> AssignRequest {
    AssignRequest {
        container_id: cid.into(),
        ifname: "eth0".into(),
        netns: format!("/run/netns/{cid}"),
        pod_namespace: Some("shop".into()),
        pod_name: Some(pod.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_and_bad_input() {
    let env = Env::start().await;
    let out = env.run(
        0,
        &[
            "pool",
            "add",
            "p1",
            "--cidr",
            "10.1.0.0/22",
            "--gateway",
            "10.1.0.1",
            "--vlan",
            "100",
            "--exclude",
            "10.1.0.2-10.1.0.9",
            "--exclude",
            "10.1.3.0/28",
        ],
    );
    assert!(out.contains("pool p1 added"), "{out}");
    env.run(
        0,
        &[
            "pool",
            "add",
            "p2",
            "--cidr",
            "10.2.0.0/24",
            "--gateway",
            "10.2.0.254",
            "--vlan",
            "200",
            "--block-size",
            "32",
        ],
    );

    let cases: &[(&[&str], i32, &str)] = &[
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.3.0.0/33",
                "--gateway",
                "10.3.0.1",
                "--vlan",
                "1",
            ],
            1,
            "not an IPv4 CIDR",
        ),
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.3.0.0",
                "--gateway",
                "10.3.0.1",
                "--vlan",
                "1",
            ],
            1,
            "not an IPv4 CIDR",
        ),
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.3.0.0/24",
                "--gateway",
                "10.4.0.1",
                "--vlan",
                "1",
            ],
            1,
            "gateway 10.4.0.1 is not a host address",
        ),
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.1.2.0/24",
                "--gateway",
                "10.1.2.1",
                "--vlan",
                "1",
            ],
            1,
            "overlaps pool \"p1\"",
        ),
        (
            &[
                "pool",
                "add",
                "p1",
                "--cidr",
                "10.9.0.0/24",
                "--gateway",
                "10.9.0.1",
                "--vlan",
                "1",
            ],
            1,
            "already exists",
        ),
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.3.0.0/24",
                "--gateway",
                "10.3.0.1",
                "--vlan",
                "4095",
            ],
            1,
            "VLAN 4095 is out of range",
        ),
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.3.0.0/24",
                "--gateway",
                "10.3.0.1",
                "--vlan",
                "0",
            ],
            1,
            "VLAN 0",
        ),
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.3.0.0/24",
                "--gateway",
                "10.3.0.1",
                "--vlan",
                "-3",
            ],
            2,
            "'-3'",
        ),
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.3.0.0/24",
                "--gateway",
                "10.3.0.1",
                "--vlan",
                "1",
                "--block-size",
                "10",
            ],
            1,
            "block size 10",
        ),
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.3.0.0/24",
                "--gateway",
                "10.3.0.1",
                "--vlan",
                "1",
                "--exclude",
                "10.3.0.9-10.3.0.2",
            ],
            1,
            "ends before",
        ),
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.3.0.0/24",
                "--gateway",
                "10.3.0.1",
            ],
            2,
            "--vlan",
        ),
        (&["pool", "show", "nope"], 1, "unknown IP pool \"nope\""),
        (&["pool", "rm", "nope"], 1, "unknown IP pool \"nope\""),
        (&["ip", "show", "192.168.0.1"], 1, "not in any pool"),
        (&["ip", "show", "10.1.0.300"], 2, "invalid value"),
        (&["ip", "list", "--pool", "nope"], 1, "unknown IP pool"),
        (&["block", "release", "10.1.0.16/28"], 1, "not claimed"),
        (&["block", "release", "10.1.0.17/28"], 1, "host bits"),
        (
            &["release", "192.168.0.1", "--no-apiserver"],
            1,
            "not in any pool",
        ),
        (&["release", "--no-apiserver"], 2, "required"),
        (&["-o", "yaml", "pool", "list"], 2, "invalid value 'yaml'"),
        (
            &[
                "--etcd",
                "https://127.0.0.1:1",
                "pool",
                "add",
                "x",
                "--cidr",
                "10.3.0.0/24",
                "--gateway",
                "10.3.0.1",
                "--vlan",
                "1",
            ],
            3,
            "etcd unavailable",
        ),
        (
            &["--etcd-cert", "/nonexistent/cnictl.pem", "pool", "list"],
            1,
            "cannot read etcd client certificate file /nonexistent/cnictl.pem",
        ),
        (
            &["--etcd-key", "/dev/null", "pool", "list"],
            1,
            "etcd client key file /dev/null holds no PEM private key",
        ),
    ];
    for (args, code, want) in cases {
        env.refused(*code, args, want).await;
    }

    let list = env.json(0, &["pool", "list"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["pool"]["name"], "p1");
    assert_eq!(list[0]["blocksTotal"], 64);
    assert_eq!(list[0]["ipsAssignable"], 1024 - 3 - 8 - 16);
    assert_eq!(list[1]["pool"]["blockSize"], 32);
    let table = env.run(0, &["pool", "list"]);
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    assert!(
        table.contains("10.2.0.0/24") && table.contains("0/8"),
        "{table}"
    );

    env.run(0, &["pool", "rm", "p2"]);
    assert_eq!(env.json(0, &["pool", "list"]).as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_and_ips() {
    let env = Env::start().await;
    env.run(
        0,
        &[
            "pool",
            "add",
            "p1",
            "--cidr",
            "10.1.0.0/24",
            "--gateway",
            "10.1.0.1",
            "--vlan",
            "100",
        ],
    );
    let n1 = env.ipam("n1");
    let n2 = env.ipam("n2");
    let a = n1.assign(&req("c1", "web-0")).await.unwrap();
    n2.assign(&req("c2", "web-1")).await.unwrap();

    let ips = env.json(0, &["ip", "list", "--node", "n1"]);
    assert_eq!(ips.as_array().unwrap().len(), 1);
    assert_eq!(ips[0]["containerId"], "c1");
    assert_eq!(env.json(0, &["ip", "list"]).as_array().unwrap().len(), 2);
    let show = env.run(0, &["ip", "show", &a.ip.to_string()]);
    for want in ["allocated", "c1", "shop/web-0", "n1", "eth0"] {
        assert!(show.contains(want), "{want} missing in {show}");
    }
    let info = env.json(0, &["ip", "show", &a.ip.to_string()]);
    assert_eq!(info["state"], "allocated");
    assert_eq!(info["attachment"]["podName"], "web-0");

    let blocks = env.json(0, &["block", "list", "--pool", "p1"]);
    assert_eq!(blocks.as_array().unwrap().len(), 2);
    let b1 = a.attachment.block.to_string();
    env.refused(1, &["block", "release", &b1], "still has 1 allocated")
        .await;
    env.refused(1, &["pool", "rm", "p1"], "still has 2 allocated")
        .await;
    n1.release("c1", "eth0").await.unwrap();
    let out = env.run(0, &["block", "release", &b1]);
    assert!(out.contains("released") && out.contains("n1"), "{out}");
    let left = env.json(0, &["block", "list"]);
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["node"], "n2");
    let table = env.run(0, &["pool", "show", "p1", "--blocks"]);
    assert!(
        table.contains("1/16 claimed") && table.contains("n2"),
        "{table}"
    );
}

/// A pod as the kubelet would have reported it (status set through the
/// status subresource, as kubelet does).
fn pod(name: &str, node: &str, ip: Option<Ipv4Addr>, phase: &str) -> (Value, Value) {
    let mut status = json!({"phase": phase, "hostIP": "192.168.10.1"});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    let obj = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "shop"}},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "registry.local/shop:1"}]},
    });
    (obj, json!({ "status": status }))
}

/// A real apiserver (no kubelets) holding `nodes` and `pods`; returns the
/// Cell (keep it alive) — its admin kubeconfig is what cnictl reads.
fn apiserver(pods: Vec<(Value, Value)>, nodes: &[&str]) -> te::Cell {
    let cell = te::Cell::start(te::CellSpec {
        nodes: 0,
        pools: vec![],
        cni_plugin: env!("CARGO_BIN_EXE_cnictl").into(),
        node_agent: None,
        reclaim: false,
        network: te::CellNetwork::Leengine,
    });
    let mut objects =
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})];
    objects.extend(
        nodes
            .iter()
            .map(|n| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}})),
    );
    cell.apply(&json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string());
    // The namespace's default service account comes from the controller
    // manager a moment later; pod admission waits for it.
    let list = json!({"apiVersion": "v1", "kind": "List",
                      "items": pods.iter().map(|p| p.0.clone()).collect::<Vec<_>>()});
    let created = te::wait_until(std::time::Duration::from_secs(60), || {
        cell.kubectl(&["apply", "-f", &write_temp(&list)])
            .status
            .success()
    });
    assert!(created, "pods not admitted");
    for (obj, status) in &pods {
        let name = obj["metadata"]["name"].as_str().unwrap();
        let out = cell.kubectl(&[
            "-n",
            "shop",
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cell
}

fn write_temp(v: &Value) -> String {
    let path = te::run_dir().join(format!("{}.json", te::unique_name("objs")));
    std::fs::write(&path, v.to_string()).unwrap();
    path.display().to_string()
}

fn kubeconfig(dir: &Path, server: &str) -> String {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n\
         users:\n- name: u\n  user:\n    token: t\n"
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn leaked_ips(report: &Value) -> Vec<String> {
    report["leaked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["attachment"]["ip"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_release() {
    let env = Env::start().await;
    env.run(
        0,
        &[
            "pool",
            "add",
            "p1",
            "--cidr",
            "10.1.0.0/24",
            "--gateway",
            "10.1.0.1",
            "--vlan",
            "100",
        ],
    );
    env.register("n1").await;
    env.register("n2").await;
    let (n1, n2, n3) = (env.ipam("n1"), env.ipam("n2"), env.ipam("n3"));
    let alive_api = n1.assign(&req("c-api", "web-0")).await.unwrap();
    let alive_report = n2.assign(&req("c-rep", "web-1")).await.unwrap();
    let leak = n1.assign(&req("c-leak", "web-2")).await.unwrap();
    let gone = n3.assign(&req("c-gone", "web-3")).await.unwrap();
    n2.publish_node_report(&NodeAttachmentsReport {
        node: "n2".into(),
        scanned_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        attachments: vec![LiveAttachment {
            container_id: "c-rep".into(),
            ifname: "eth0".into(),
            ip: alive_report.ip,
        }],
    })
    .await
    .unwrap();
    let pods = vec![
        pod("web-0", "n1", Some(alive_api.ip), "Running"),
        pod("web-2", "n1", Some(leak.ip), "Failed"),
        pod(
            "other",
            "n2",
            Some("10.1.0.200".parse().unwrap()),
            "Running",
        ),
        pod("pending", "n2", None, "Pending"),
    ];
    let cell = apiserver(pods, &["n1", "n2"]);
    let kc = cell.kubeconfig().display().to_string();

    // Default grace: only the gone node's allocation is a leak already.
    let r = env.json(4, &["check", "--kubeconfig", &kc]);
    assert_eq!(leaked_ips(&r), vec![gone.ip.to_string()]);
    assert_eq!(r["leaked"][0]["reason"], "nodeGone");
    assert_eq!(
        (
            r["allocated"].as_u64(),
            r["alive"].as_u64(),
            r["inGrace"].as_u64()
        ),
        (Some(4), Some(2), Some(1))
    );
    assert_eq!(r["apiserverConsulted"], true);
    assert_eq!(r["prefix"], PREFIX);

    // No grace: the failed pod's address leaks too.
    let report = env.json(4, &["check", "--kubeconfig", &kc, "--grace", "0s"]);
    let mut want = vec![leak.ip.to_string(), gone.ip.to_string()];
    want.sort_by_key(|s| s.parse::<Ipv4Addr>().unwrap());
    assert_eq!(leaked_ips(&report), want);
    let table = env.run(4, &["check", "--kubeconfig", &kc, "--grace", "0s"]);
    assert!(
        table.contains("2 leaked") && table.contains("c-leak") && table.contains("nodeGone"),
        "{table}"
    );

    // Without the apiserver (which wins over a kubeconfig, e.g. from $KUBECONFIG),
    // n1 has no report: its allocations are unknown, not leaked. Nor is n3's:
    // an unregistered node (its agent's lease lapsed) may still run its pods.
    let r = env.json(
        0,
        &[
            "check",
            "--no-apiserver",
            "--kubeconfig",
            &kc,
            "--grace",
            "0s",
        ],
    );
    assert_eq!(r["apiserverConsulted"], false);
    assert!(leaked_ips(&r).is_empty(), "{r}");
    assert_eq!(r["unknown"].as_array().unwrap().len(), 3);
    let out = env.run(
        4,
        &[
            "release",
            &gone.ip.to_string(),
            "--no-apiserver",
            "--grace",
            "0s",
        ],
    );
    assert!(out.contains("skipped") && out.contains("unknown"), "{out}");
    assert!(n3.handle("c-gone", "eth0").await.unwrap().is_some());
    // An unreachable apiserver is an error, never "everything leaked".
    let dead = kubeconfig(&env.dir.path().join(".."), "http://127.0.0.1:1");
    env.refused(3, &["check", "--kubeconfig", &dead], "apiserver")
        .await;

    let path = env.dir.path().join("report.json");
    std::fs::write(&path, serde_json::to_vec(&report).unwrap()).unwrap();
    let path = path.to_str().unwrap();
    // A report of another prefix is refused before anything happens.
    let other = env.dir.path().join("other.json");
    let mut foreign = report.clone();
    foreign["prefix"] = json!("/elsewhere");
    std::fs::write(&other, serde_json::to_vec(&foreign).unwrap()).unwrap();
    env.refused(
        1,
        &[
            "release",
            "--from-report",
            other.to_str().unwrap(),
            "--kubeconfig",
            &kc,
        ],
        "made for prefix /elsewhere",
    )
    .await;
    let junk = env.dir.path().join("junk.json");
    std::fs::write(&junk, "{\"not\": \"a report\"}").unwrap();
    env.refused(
        1,
        &[
            "release",
            "--from-report",
            junk.to_str().unwrap(),
            "--kubeconfig",
            &kc,
        ],
        "not a `cnictl check -o json` report",
    )
    .await;

    // Between report and release, the leaked address is freed (by the
    // node-agent, say) and the re-created pod gets it back (sticky IP).
    assert!(n1.release_if_unchanged(&leak.attachment).await.unwrap());
    let reborn = n2.assign(&req("c-new", "web-2")).await.unwrap();
    assert_eq!(reborn.ip, leak.ip);

    let out = env.json(
        4,
        &[
            "release",
            "--from-report",
            path,
            "--kubeconfig",
            &kc,
            "--grace",
            "0s",
        ],
    );
    let outcomes = out.as_array().unwrap();
    assert_eq!(outcomes.len(), 2);
    for o in outcomes {
        if o["ip"] == json!(leak.ip.to_string()) {
            assert_eq!(o["released"], false, "{o}");
            assert!(o["detail"].as_str().unwrap().contains("re-assigned"), "{o}");
        } else {
            assert_eq!(o["ip"], json!(gone.ip.to_string()));
            assert_eq!(o["released"], true, "{o}");
        }
    }
    let info = env.json(0, &["ip", "show", &leak.ip.to_string()]);
    assert_eq!(info["attachment"]["containerId"], "c-new");
    assert!(n3.handle("c-gone", "eth0").await.unwrap().is_none());

    // Release by IP re-checks too: an alive pod's address is left alone.
    let out = env.run(
        4,
        &[
            "release",
            &alive_api.ip.to_string(),
            "--kubeconfig",
            &kc,
            "--grace",
            "0s",
        ],
    );
    assert!(
        out.contains("skipped") && out.contains("not leaked"),
        "{out}"
    );
    assert!(n1.handle("c-api", "eth0").await.unwrap().is_some());
    // The apiserver still says web-2 failed: with no grace c-new is leaked and goes.
    let out = env.run(
        0,
        &[
            "release",
            &leak.ip.to_string(),
            "--kubeconfig",
            &kc,
            "--grace",
            "0s",
        ],
    );
    assert!(out.contains("released") && out.contains("c-new"), "{out}");
    let out = env.run(
        4,
        &[
            "release",
            &leak.ip.to_string(),
            "--kubeconfig",
            &kc,
            "--grace",
            "0s",
        ],
    );
    assert!(out.contains("not allocated"), "{out}");
    let r = env.json(0, &["check", "--kubeconfig", &kc, "--grace", "0s"]);
    assert!(leaked_ips(&r).is_empty());
    assert!(env.ipam("audit").audit().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_unbind_export_and_the_reserve() {
    let env = Env::start().await;
    for (name, cidr, gw) in [
        ("shop27", "10.1.8.0/27", "10.1.8.1"),
        ("shared", "10.2.0.0/24", "10.2.0.1"),
    ] {
        env.run(
            0,
            &[
                "pool",
                "add",
                name,
                "--cidr",
                cidr,
                "--gateway",
                gw,
                "--vlan",
                "108",
                "--block-size",
                "8",
            ],
        );
    }
    // A pod of another app already in the pool: binding would strand it.
    let blog = env.ipam("n1");
    let mut b = req("b1", "b-1");
    b.pod_namespace = Some("blog".into());
    b.pools = vec!["shop27".into()];
    let held = blog.assign(&b).await.unwrap();
    env.refused(
        1,
        &["pool", "bind", "shop27", "--app", "shop"],
        &format!("{} is held by pod blog/b-1", held.ip),
    )
    .await;
    blog.release("b1", "eth0").await.unwrap();

    let out = env.run(
        0,
        &["pool", "bind", "shop27", "--app", "shop", "--reserve", "5m"],
    );
    assert_eq!(
        out,
        "pool shop27 bound to app shop: pools shop27, shared fallback no, reserve 300s\n"
    );
    for (args, code, want) in [
        (
            &["pool", "bind", "nope", "--app", "shop"][..],
            1,
            "unknown IP pool \"nope\"",
        ),
        (
            &["pool", "bind", "shop27", "--app", "Shop"],
            1,
            "not a namespace name",
        ),
        (
            &["pool", "unbind", "shared", "--app", "shop"],
            1,
            "app \"shop\" is not bound to IP pool \"shared\"",
        ),
        (
            &["pool", "rm", "shop27"],
            1,
            "is bound to app(s) [\"shop\"]",
        ),
        (&["pool", "bind", "shop27"], 2, "--app"),
        (
            &[
                "pool",
                "bind",
                "shop27",
                "--app",
                "shop",
                "--shared-fallback",
                "maybe",
            ],
            2,
            "invalid value",
        ),
    ] {
        env.refused(code, args, want).await;
    }

    let ipam = env.ipam("n1");
    let a = ipam.assign(&req("c1", "web-0")).await.unwrap();
    assert!(a.ip.octets()[..3] == [10, 1, 8], "{}", a.ip);
    let table = env.run(0, &["pool", "list"]);
    let row = table.lines().find(|l| l.starts_with("shop27")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    // blog/b-1's sticky reservation is counted as reserved too.
    assert_eq!((cols[5], cols[6], cols[9]), ("1", "1", "shop"), "{table}");
    ipam.release("c1", "eth0").await.unwrap();
    let list = env.json(0, &["pool", "list"]);
    assert_eq!(list[1]["pool"]["name"], "shop27");
    assert_eq!(list[1]["apps"], json!(["shop"]));
    assert_eq!(
        (list[1]["ipsUsed"].clone(), list[1]["ipsReserved"].clone()),
        (json!(0), json!(2))
    );
    let app = env.json(0, &["pool", "app", "shop"]);
    assert_eq!(app["binding"]["reserveSecs"], 300);
    assert_eq!(app["reserve"][0]["ip"], a.ip.to_string());
    assert_eq!(app["reserve"][0]["pod"], "shop/web-0");
    let show = env.run(0, &["ip", "show", &a.ip.to_string()]);
    assert!(
        show.contains("reserved") && show.contains("for app"),
        "{show}"
    );

    assert_eq!(
        env.run(0, &["pool", "export"]),
        "10.1.8.0/27 shop shop27 108\n"
    );
    let export = env.json(0, &["pool", "export", "--app", "shop"]);
    assert_eq!(export["prefix"], PREFIX);
    assert_eq!(
        export["ranges"],
        json!([{"app": "shop", "pool": "shop27", "cidr": "10.1.8.0/27", "gateway": "10.1.8.1", "vlan": 108}])
    );
    assert_eq!(env.run(0, &["pool", "export", "--app", "blog"]), "");

    let out = env.run(0, &["pool", "unbind", "shop27", "--app", "shop"]);
    assert!(out.contains("binding removed"), "{out}");
    assert_eq!(env.run(0, &["pool", "export"]), "");
}
