//! The plugin as a thin client of the node-agent's CNI service: the real
//! `leengine-node-agent` runs in the node's host namespace (as on a node),
//! the plugin is exec'd like libcni with `agentSocket` in its configuration,
//! and the work — the same as in the plugin process — happens in the agent
//! on warm etcd and OVSDB sessions. Observation uses ovs-vsctl, ip, etcd.

mod common;

use common::*;
use leengine_testenv as te;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const AGENT: &str = "leengine-node-agent";

/// A node whose agent serves CNI calls at `socket`.
struct Node {
    c: Cluster,
    socket: PathBuf,
    log: PathBuf,
    agent: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new(cidr: &str, gateway: &str, vlan: u32) -> Node {
        let c = Cluster::new(cidr, gateway, vlan);
        // The plugin's etcd address, reachable from the node namespace too:
        // the agent connects with the configuration the plugin was given.
        c.ovs.netns().mirror_tcp(c.etcd.port());
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cni.sock");
        let log = dir.path().join("agent.log");
        let mut n = Node {
            c,
            socket,
            log,
            agent: None,
            _dir: dir,
        };
        n.start_agent();
        n
    }

    fn start_agent(&mut self) {
        let bin = Path::new(BIN).with_file_name(AGENT);
        assert!(bin.exists(), "run `cargo build --workspace --bins` first");
        let etcd = format!("https://127.0.0.1:{}", self.c.etcd.port());
        let mut args: Vec<String> = [
            "--node",
            NODE,
            "--etcd-endpoints",
            &etcd,
            "--ovsdb",
            &self.c.ovs.db_url(),
            "--bridge",
            &self.c.bridge,
            "--datapath-type",
            "netdev",
            "--reclaim",
            "off",
            "--metrics-listen",
            "off",
            "--container-roots",
            "leengine-test-none",
            "--cni-socket",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(self.socket.display().to_string());
        args.extend(self.c.etcd.tls_args(&te::Component::node_agent(NODE)));
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.c.ovs.netns().path().display()))
            .arg(&bin)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap();
        self.agent = Some(child);
        poll("the agent's CNI socket", || {
            self.socket.exists().then_some(())
        });
    }

    /// SIGTERM, as systemd stops it.
    fn stop_agent(&mut self) {
        let mut child = self.agent.take().expect("agent running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        assert!(child.wait().unwrap().success(), "{}", self.agent_log());
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the agent did the ADD of `cid` (it logs each attachment).
    fn agent_attached(&self, cid: &str) -> bool {
        self.agent_log()
            .lines()
            .any(|l| l.contains("attached") && l.contains(&format!("container=\"{cid}\"")))
    }

    fn conf(&self) -> Value {
        let mut conf = self.c.conf("1.1.0");
        conf["agentSocket"] = json!(self.socket);
        conf
    }

    fn add(&self, cid: &str, ns: &te::Netns) -> Value {
        self.c
            .call("ADD", cid, Some(ns.path()), "eth0", "", &self.conf())
            .ok()
            .clone()
    }

    fn del(&self, cid: &str, ns: &te::Netns) {
        self.c
            .call("DEL", cid, Some(ns.path()), "eth0", "", &self.conf())
            .ok();
    }
}

impl Node {
    /// Nothing of any attachment is left, once the DELs' tails (the veth and
    /// the address, finished by the agent after its answer) are done.
    fn settled(&self) {
        poll("the DELs' veths and addresses to go", || {
            let veths = self.c.host_links();
            let veth_left = veths.lines().any(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|n| n.trim().starts_with("le"))
            });
            (self.c.handles().is_empty() && !veth_left).then_some(())
        });
        self.c.assert_clean();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

fn ip_of(r: &Value) -> String {
    let a = r["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

#[test]
fn add_check_del_run_in_the_agent_and_leave_the_node_as_the_plugin_would() {
    let n = Node::new("10.68.0.0/24", "10.68.0.1", 168);
    let ns = te::Netns::new();
    let r = n.add("via-agent", &ns);
    assert!(n.agent_attached("via-agent"), "{}", n.agent_log());
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    let ip = ip_of(&r);
    // The datapath, IPAM and the result are what the plugin process makes.
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["ips"][0]["gateway"], "10.68.0.1");
    assert!(ns_out(&ns, &["ip", "-o", "-4", "addr", "show", "eth0"]).contains(&ip));
    assert!(ns_out(&ns, &["ip", "-4", "route"]).contains("default via 10.68.0.1 dev eth0"));
    assert_eq!(n.c.ports(), vec![host_if.clone()]);
    assert_eq!(n.c.port_col(&host_if, "tag"), "168");
    assert!(n.c.port_col(&host_if, "external_ids").contains("via-agent"));
    assert_eq!(
        n.c.handles(),
        vec!["/leengine/ipam/handles/via-agent/eth0".to_string()]
    );
    n.c.live_ofport(&host_if);

    // CHECK in the agent: passes, then names a drift.
    let mut cc = n.conf();
    cc["prevResult"] = r;
    n.c.call("CHECK", "via-agent", Some(ns.path()), "eth0", "", &cc)
        .ok();
    n.c.ovs.vsctl(&["set", "port", &host_if, "tag=999"]);
    let bad =
        n.c.call("CHECK", "via-agent", Some(ns.path()), "eth0", "", &cc);
    assert_eq!(bad.err_code(), 107);
    assert!(bad.msg().contains("VLAN tag Some(999)"), "{}", bad.msg());

    // An error made in the agent reaches the runtime as the CNI error object.
    let mut unknown = n.conf();
    unknown["pools"] = json!(["nope"]);
    let other = te::Netns::new();
    let out =
        n.c.call("ADD", "bad-pool", Some(other.path()), "eth0", "", &unknown);
    assert_eq!(out.json["cniVersion"], "1.1.0", "{}", out.json);
    assert!(out.msg().contains("nope"), "{}", out.msg());
    assert!(!n.c.handles().iter().any(|h| h.contains("bad-pool")));

    n.del("via-agent", &ns);
    n.settled();
    assert!(!ns_out(&ns, &["ip", "link"]).contains("eth0"));
}

#[test]
fn pods_added_through_the_agent_announce_themselves_and_reach_each_other() {
    let n = Node::new("10.69.0.0/24", "10.69.0.1", 169);
    let first = te::Netns::new();
    let r1 = n.add("one", &first);
    let second = te::Netns::new();
    // Listen on the first pod: the second's gratuitous ARPs (a task of the
    // agent now, not a detached process) reach the VLAN once its port is up.
    let dump = first
        .command(&[
            "timeout", "10", "tcpdump", "-l", "-n", "-c", "2", "-i", "eth0", "arp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut conf = n.conf();
    conf["garp"] = json!({ "count": 3, "intervalMs": 300 });
    let r2 =
        n.c.call("ADD", "two", Some(second.path()), "eth0", "", &conf)
            .ok()
            .clone();
    let ip2 = ip_of(&r2);
    let out = dump.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let announced = format!("who-has {ip2} tell {ip2}");
    assert_eq!(
        text.lines().filter(|l| l.contains(&announced)).count(),
        2,
        "announcements of {ip2}: {text}"
    );
    let ip1 = ip_of(&r1);
    poll(&format!("two to reach {ip1}"), || {
        second.ping(&ip1, 1).then_some(())
    });
    n.del("one", &first);
    n.del("two", &second);
    n.settled();
}

#[test]
fn concurrent_calls_through_the_agent_get_distinct_addresses_and_clean_up() {
    let n = Node::new("10.70.0.0/24", "10.70.0.1", 170);
    let nss: Vec<te::Netns> = (0..12).map(|_| te::Netns::new()).collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let calls: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let n = &n;
                s.spawn(move || ip_of(&n.add(&format!("con{i}"), ns)))
            })
            .collect();
        calls.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: std::collections::BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), nss.len(), "{ips:?}");
    assert!((0..nss.len()).all(|i| n.agent_attached(&format!("con{i}"))));
    assert_eq!(n.c.handles().len(), nss.len());
    std::thread::scope(|s| {
        for (i, ns) in nss.iter().enumerate() {
            let n = &n;
            s.spawn(move || n.del(&format!("con{i}"), ns));
        }
    });
    n.settled();
}

#[test]
fn with_the_agent_stopped_the_plugin_does_the_call_itself_and_the_agent_picks_up_after() {
    let mut n = Node::new("10.71.0.0/24", "10.71.0.1", 171);
    n.stop_agent();
    // A stopped agent takes its socket away: nothing is left to hang on.
    assert!(!n.socket.exists(), "socket left at {}", n.socket.display());
    let ns = te::Netns::new();
    let r = n.add("alone", &ns);
    assert!(!n.agent_attached("alone"), "{}", n.agent_log());
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    n.c.live_ofport(&host_if);

    // The restarted agent takes the DEL of what the plugin made.
    n.start_agent();
    n.del("alone", &ns);
    n.settled();
    assert!(
        n.agent_log().contains("CNI service listening"),
        "{}",
        n.agent_log()
    );
}

#[test]
fn a_del_through_the_agent_answers_once_the_pod_is_off_the_switch_and_finishes_under_the_lock() {
    let n = Node::new("10.72.0.0/24", "10.72.0.1", 172);
    let ns = te::Netns::new();
    n.add("again", &ns);
    n.del("again", &ns);
    // Answered: the port is gone at once; veth and address follow.
    assert!(n.c.ports().is_empty(), "ports left: {:?}", n.c.ports());
    // An ADD of the same attachment right away waits for that tail (it
    // holds the attachment's lock): were the old eth0 still there, ADD
    // would fail with "interface eth0 already exists".
    let r = n.add("again", &ns);
    assert_eq!(n.c.ports().len(), 1);
    assert_eq!(
        n.c.handles(),
        vec!["/leengine/ipam/handles/again/eth0".to_string()]
    );
    assert!(!ip_of(&r).is_empty());
    n.del("again", &ns);
    n.settled();
    assert!(!ns_out(&ns, &["ip", "link"]).contains("eth0"));
}
