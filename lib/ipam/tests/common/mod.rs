#![allow(dead_code)] // each test binary uses a different part

use std::time::Duration;

use leengine_ipam::{AssignRequest, Ipam, IpamOptions, Pool};
use leengine_store::Keys;
use leengine_testenv as te;

pub struct Env {
    pub etcd: te::Etcd,
    pub client: etcd_client::Client,
    pub keys: Keys,
}

impl Env {
    pub async fn start() -> Env {
        // The library does not care who calls it; the binaries' tests run
        // it under their components' roles.
        let etcd = te::Etcd::start_with_prefix("/t");
        let client = etcd.root_client().await;
        Env {
            etcd,
            client,
            keys: Keys::new("/t"),
        }
    }

    /// IPAM for `node` with no cooldown and no sticky IPs unless a test asks.
    pub fn ipam(&self, node: &str) -> Ipam {
        self.ipam_with(node, opts(0, 0))
    }

    pub fn ipam_with(&self, node: &str, o: IpamOptions) -> Ipam {
        Ipam::new(self.client.clone(), self.keys.clone(), node).with_options(o)
    }

    pub async fn add_pool(
        &self,
        name: &str,
        cidr: &str,
        gw: &str,
        vlan: u32,
        bs: u32,
        ex: &[&str],
    ) -> Pool {
        let ex: Vec<String> = ex.iter().map(|s| s.to_string()).collect();
        let pool = Pool::parse(name, cidr, gw, vlan, bs, &ex).unwrap();
        self.ipam("admin").add_pool(&pool).await.unwrap();
        pool
    }

    /// Fails the test if blocks, handles and indexes disagree.
    pub async fn assert_consistent(&self) {
        let problems = self.ipam("audit").audit().await.unwrap();
        assert!(
            problems.is_empty(),
            "inconsistent IPAM state:\n{}",
            problems.join("\n")
        );
    }
}

pub fn opts(cooldown: u64, sticky: u64) -> IpamOptions {
    IpamOptions {
        cooldown: Duration::from_secs(cooldown),
        sticky_for: Duration::from_secs(sticky),
        ..IpamOptions::default()
    }
}

pub fn req(cid: &str) -> AssignRequest {
    AssignRequest {
        container_id: cid.into(),
        ifname: "eth0".into(),
        netns: format!("/run/netns/{cid}"),
        ..Default::default()
    }
}

pub fn pod_req(cid: &str, ns: &str, name: &str) -> AssignRequest {
    AssignRequest {
        pod_namespace: Some(ns.into()),
        pod_name: Some(name.into()),
        ..req(cid)
    }
}

/// Requests etcd served, by gRPC method, from its own `/metrics`.
pub fn etcd_requests(etcd: &te::Etcd, method: &str) -> u64 {
    use std::io::{Read, Write};
    let addr = etcd.metrics_addr();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let label = format!("grpc_method=\"{method}\"");
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v.to_string().parse::<u64>().expect("a whole count"))
        .collect();
    assert!(!counts.is_empty(), "etcd reports no {method} requests");
    counts.iter().sum()
}
