//! Runs the built plugin like libcni does (env + stdin) against real etcd
//! and OVS. testenv runs ovs-vswitchd in its own namespace (the "node"),
//! so the config points `hostNetns` there.
#![allow(dead_code)]

use leengine_testenv as te;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_leengine-cni");
pub const NODE: &str = "node-a";

pub struct Cluster {
    pub etcd: te::Etcd,
    pub ovs: te::Ovs,
    pub bridge: String,
}

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub json: Value,
    pub stderr: String,
}

impl Out {
    /// The CNI error code (panics when the call succeeded).
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected failure, got {}", self.json);
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.json))
    }
    pub fn ok(&self) -> &Value {
        assert_eq!(self.code, 0, "call failed: {} / {}", self.json, self.stderr);
        &self.json
    }
    pub fn msg(&self) -> String {
        self.json["msg"].as_str().unwrap_or_default().to_string()
    }
}

impl Cluster {
    /// etcd + OVS + a netdev bridge + pool `p1` = `cidr` on `vlan`.
    pub fn new(cidr: &str, gateway: &str, vlan: u32) -> Self {
        let etcd = te::Etcd::start();
        let ovs = te::Ovs::start();
        let bridge = ovs.add_bridge();
        let c = Cluster { etcd, ovs, bridge };
        c.add_pool("p1", cidr, gateway, vlan);
        c
    }

    pub fn add_pool(&self, name: &str, cidr: &str, gateway: &str, vlan: u32) {
        let pool = leengine_ipam::Pool::parse(name, cidr, gateway, vlan, 16, &[]).unwrap();
        self.block_on(async {
            self.ipam().await.add_pool(&pool).await.unwrap();
        });
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    pub async fn ipam(&self) -> leengine_ipam::Ipam {
        let client = self.etcd.root_client().await;
        leengine_ipam::Ipam::new(client, self.etcd.keys().clone(), NODE)
    }

    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "pods",
            "type": "leengine",
            "bridge": self.bridge,
            "ovsdb": self.ovs.db_url(),
            "etcd": self.etcd.config(&te::Component::cni_plugin(NODE)),
            "node": NODE,
            "mtu": 1400,
            "garp": { "count": 1, "intervalMs": 0 },
            "hostNetns": self.ovs.netns().path(),
        })
    }

    /// One plugin call as libcni makes it.
    pub fn call(
        &self,
        cmd: &str,
        cid: &str,
        netns: Option<&Path>,
        ifname: &str,
        args: &str,
        conf: &Value,
    ) -> Out {
        let mut env = vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", cid.to_string()),
            ("CNI_IFNAME", ifname.to_string()),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
            ("CNI_ARGS", args.to_string()),
        ];
        if let Some(ns) = netns {
            env.push(("CNI_NETNS", ns.display().to_string()));
        }
        self.call_env(&env, &serde_json::to_vec(conf).unwrap())
    }

    pub fn call_env(&self, env: &[(&str, String)], stdin: &[u8]) -> Out {
        exec(&mut Command::new(BIN), env, stdin)
    }

    pub fn ports(&self) -> Vec<String> {
        self.ovs
            .vsctl(&["list-ports", &self.bridge])
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn port_col(&self, port: &str, col: &str) -> String {
        self.ovs.vsctl(&["get", "port", port, col])
    }

    /// The port's ofport once ovs-vswitchd has handled it (ADD does not
    /// wait for that); panics if it never does.
    pub fn live_ofport(&self, port: &str) -> i64 {
        poll(&format!("ovs-vswitchd to give {port} an ofport"), || {
            let out = self.ovs.try_vsctl(&["get", "interface", port, "ofport"]);
            let n: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            (n > 0).then_some(n)
        })
    }

    /// Keys of attachment handles in etcd.
    pub fn handles(&self) -> Vec<String> {
        let out = self
            .etcd
            .etcdctl(&["get", "--prefix", "--keys-only", "/leengine/ipam/handles/"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// `ip -o link` of the node's host namespace (where host veth ends live).
    pub fn host_links(&self) -> String {
        let out = self.ovs.netns().exec(&["ip", "-o", "link"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Nothing of any attachment is left: no port, no handle, no `le…` veth.
    pub fn assert_clean(&self) {
        assert!(self.ports().is_empty(), "ports left: {:?}", self.ports());
        assert!(
            self.handles().is_empty(),
            "handles left: {:?}",
            self.handles()
        );
        let links = self.host_links();
        assert!(
            !links.lines().any(|l| l
                .split(':')
                .nth(1)
                .is_some_and(|n| n.trim().starts_with("le"))),
            "veths left: {links}"
        );
    }
}

pub fn exec(cmd: &mut Command, env: &[(&str, String)], stdin: &[u8]) -> Out {
    for k in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
        "CNI_PATH",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    Out {
        code: out.status.code().unwrap_or(-1),
        json: if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
        },
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ip -o -4 addr show IF` etc. inside a pod namespace.
pub fn ns_out(ns: &te::Netns, argv: &[&str]) -> String {
    let out = ns.exec(argv);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it gives a value; panics after 30 s naming `what`. The
/// bound is about liveness ("it happens"), not speed.
pub fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
