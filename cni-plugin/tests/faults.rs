//! Faults between the plugin and OVSDB: DEL keeps the IP while the
//! datapath cannot be torn down; ADD cleans up a port whose creation reply
//! was lost.

mod common;

use common::*;
use leengine_testenv as te;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[test]
fn del_keeps_the_ip_while_ovsdb_is_unreachable_and_a_later_del_frees_it() {
    let mut c = Cluster::new("10.95.0.0/24", "10.95.0.1", 195);
    let conf = c.conf("1.1.0");
    let ns = te::Netns::new();
    c.call("ADD", "del-fault", Some(ns.path()), "eth0", "", &conf)
        .ok();
    let mut dead = conf.clone();
    dead["ovsdb"] = json!(format!("unix:{}", c.ovs.dir().join("none.sock").display()));
    let out = c.call("DEL", "del-fault", Some(ns.path()), "eth0", "", &dead);
    assert_eq!(out.err_code(), 11, "{}", out.json);
    assert!(out.msg().contains("IP is kept"), "{}", out.msg());
    // The port still exists in the pool's VLAN: so must the IP.
    assert_eq!(c.ports().len(), 1);
    assert_eq!(
        c.handles(),
        vec!["/leengine/ipam/handles/del-fault/eth0".to_string()]
    );
    c.call("DEL", "del-fault", Some(ns.path()), "eth0", "", &conf)
        .ok();
    c.assert_clean();

    // Same with the database gone for good (testenv kills ovsdb-server).
    c.call("ADD", "db-down", Some(ns.path()), "eth0", "", &conf)
        .ok();
    c.ovs.stop_db();
    let out = c.call("DEL", "db-down", Some(ns.path()), "eth0", "", &conf);
    assert_eq!(out.err_code(), 11, "{}", out.json);
    assert_eq!(
        c.handles(),
        vec!["/leengine/ipam/handles/db-down/eth0".to_string()]
    );
}

#[test]
fn add_whose_port_reply_is_lost_removes_the_port_on_rollback() {
    let c = Cluster::new("10.96.0.0/24", "10.96.0.1", 196);
    let proxy = LoseReply::start(&c.ovs.db_sock(), &c.ovs.dir().join("lossy.sock"));
    let mut conf = c.conf("1.1.0");
    conf["ovsdb"] = json!(format!("unix:{}", proxy.path.display()));
    let ns = te::Netns::new();
    let out = c.call("ADD", "lost-reply", Some(ns.path()), "eth0", "", &conf);
    // The port was created; the plugin never heard so and gave up.
    assert_eq!(*proxy.dropped.lock().unwrap(), 1);
    assert_eq!(out.err_code(), 11, "{}", out.json);
    assert!(!ns_out(&ns, &["ip", "-o", "link"]).contains(": eth0"));
    c.assert_clean();
}

/// A unix-socket proxy in front of ovsdb-server that forwards everything
/// but swallows the reply to the first transaction inserting a Port — the
/// transaction itself commits.
struct LoseReply {
    path: PathBuf,
    dropped: Arc<Mutex<usize>>,
}

impl LoseReply {
    fn start(upstream: &Path, path: &Path) -> LoseReply {
        let listener = UnixListener::bind(path).unwrap();
        let dropped = Arc::new(Mutex::new(0));
        let upstream = upstream.to_path_buf();
        let count = dropped.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = UnixStream::connect(&upstream).unwrap();
                let doomed: Arc<Mutex<HashSet<String>>> = Arc::default();
                let (c_in, s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (d, n) = (doomed.clone(), count.clone());
                std::thread::spawn(move || {
                    pump(c_in, s_out, |msg| {
                        if *n.lock().unwrap() == 0
                            && d.lock().unwrap().is_empty()
                            && inserts_port(msg)
                        {
                            d.lock().unwrap().insert(msg["id"].to_string());
                        }
                        true
                    })
                });
                let n = count.clone();
                std::thread::spawn(move || {
                    pump(server, client, |msg| {
                        let lose = msg.get("result").is_some()
                            && doomed.lock().unwrap().remove(&msg["id"].to_string());
                        if lose {
                            *n.lock().unwrap() += 1;
                        }
                        !lose
                    })
                });
            }
        });
        LoseReply {
            path: path.to_path_buf(),
            dropped,
        }
    }
}

/// Copies JSON-RPC messages from `from` to `to` while `keep` says so.
fn pump(from: UnixStream, mut to: UnixStream, mut keep: impl FnMut(&Value) -> bool) {
    for msg in serde_json::Deserializer::from_reader(from).into_iter::<Value>() {
        let Ok(msg) = msg else { return };
        if keep(&msg) && to.write_all(msg.to_string().as_bytes()).is_err() {
            return;
        }
    }
}

fn inserts_port(msg: &Value) -> bool {
    msg["method"] == "transact"
        && msg["params"].as_array().is_some_and(|ops| {
            ops.iter()
                .any(|op| op["op"] == "insert" && op["table"] == "Port")
        })
}
