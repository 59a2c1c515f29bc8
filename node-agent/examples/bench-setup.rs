//! Benchmark setup for hack/bench/node-agent.sh: a pool and N allocations of
//! one node in etcd, each naming netns `/run/netns/{prefix}{i}`. Prints one
//! line per allocation, `NETNS IP/PREFIX`, for the script to create.
//!
//! usage: bench-setup ETCD_ENDPOINT NODE COUNT NETNS_PREFIX

use leengine_ipam::{AssignRequest, Ipam, Pool};
use leengine_store::EtcdConfig;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        a.len() == 5,
        "usage: bench-setup ETCD_ENDPOINT NODE COUNT NETNS_PREFIX"
    );
    let (endpoint, node, count, prefix) = (&a[1], &a[2], a[3].parse::<usize>()?, &a[4]);
    let cfg = EtcdConfig::new([endpoint.clone()]);
    let ipam = Ipam::new(
        leengine_store::connect(&cfg).await?,
        cfg.keys(),
        node.clone(),
    );
    ipam.add_pool(&Pool::parse(
        "bench",
        "10.64.0.0/16",
        "10.64.0.1",
        100,
        16,
        &[],
    )?)
    .await?;
    for i in 0..count {
        let netns = format!("{prefix}{i}");
        let got = ipam
            .assign(&AssignRequest {
                container_id: format!("bench-{i}"),
                ifname: "eth0".into(),
                netns: format!("/run/netns/{netns}"),
                pod_namespace: Some(format!("app{}", i % 10)),
                pod_name: Some(format!("pod-{i}")),
                ..Default::default()
            })
            .await?;
        println!("{netns} {}/{}", got.ip, got.prefix_len);
    }
    Ok(())
}
