//! IPAM benchmark driver (run by `hack/bench/ipam.sh`, not a test).
//!
//! N simulated nodes × M pods allocated at a fixed concurrency against one
//! etcd; prints allocations/s, latency percentiles and a duplicate check,
//! then registers every node with a live-attachment report (a few
//! attachments left out as leaks) so `cnictl check` has real work to do.
//!
//! `alloc_bench ETCD_URL PREFIX [NODES] [PODS_PER_NODE] [CONCURRENCY]`

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use leengine_ipam::{
    AssignRequest, Ipam, IpamOptions, LiveAttachment, NodeAttachmentsReport, Pool,
};
use leengine_store::{EtcdConfig, Keys};

/// One in this many attachments is left out of its node's report (a "leak").
const LEAK_EVERY: usize = 100;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| args.get(i).map_or(Ok(default), |s| s.parse());
    let (Some(url), Some(prefix)) = (args.first(), args.get(1)) else {
        return Err(
            "usage: alloc_bench ETCD_URL PREFIX [NODES] [PODS_PER_NODE] [CONCURRENCY]".into(),
        );
    };
    let (nodes, pods, concurrency) = (arg(2, 600)?, arg(3, 20)?, arg(4, 64)?);
    let total = nodes * pods;

    let client = leengine_store::connect(&EtcdConfig::new([url.as_str()])).await?;
    let keys = Keys::new(prefix);
    let ipams: Vec<Ipam> = (0..nodes)
        .map(|n| {
            Ipam::new(client.clone(), keys.clone(), format!("node-{n:03}"))
                .with_options(IpamOptions::default())
        })
        .collect();
    // /22 pools, one VLAN each, enough for every node's blocks plus a margin.
    let blocks_needed = nodes * pods.div_ceil(16);
    let pool_count = (blocks_needed * 16 * 11 / 10).div_ceil(1024).max(1);
    for p in 0..pool_count {
        let (a, b) = (10 + p / 64, (p % 64) * 4);
        let pool = Pool::parse(
            &format!("vlan{}", 100 + p),
            &format!("10.{a}.{b}.0/22"),
            &format!("10.{a}.{b}.1"),
            u32::try_from(100 + p).expect("a few pools"),
            16,
            &[],
        )?;
        ipams[0].add_pool(&pool).await?;
    }
    println!("pools: {pool_count} x /22, nodes: {nodes}, pods/node: {pods}, allocations: {total}, concurrency: {concurrency}");

    // Round-robin over nodes, like pods landing across a Cell.
    let jobs = (0..total).map(|i| {
        let ipam = ipams[i % nodes].clone();
        async move {
            let req = AssignRequest {
                container_id: format!("{i:012x}"),
                ifname: "eth0".into(),
                netns: format!("/var/run/netns/cni-{i}"),
                pod_namespace: Some("bench".into()),
                pod_name: Some(format!("pod-{i}")),
                ..Default::default()
            };
            let t = Instant::now();
            let r = ipam.assign(&req).await;
            (t.elapsed(), r)
        }
    });
    let started = Instant::now();
    let results: Vec<_> = stream::iter(jobs)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed();

    let mut lat: Vec<Duration> = Vec::with_capacity(total);
    let mut ips = HashSet::new();
    let mut dups = 0;
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_node: BTreeMap<String, Vec<LiveAttachment>> = BTreeMap::new();
    for (d, r) in results {
        lat.push(d);
        match r {
            Ok(a) => {
                if !ips.insert(a.ip) {
                    dups += 1;
                }
                per_node
                    .entry(a.attachment.node.clone())
                    .or_default()
                    .push(LiveAttachment {
                        container_id: a.attachment.container_id,
                        ifname: a.attachment.ifname,
                        ip: a.ip,
                    });
            }
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    lat.sort();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a percentile index: a fraction in [0, 1] of a length"
    )]
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "allocations: {} ok, {} failed in {:.2}s = {:.0} allocations/s",
        ips.len() + dups,
        errors.values().sum::<usize>(),
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64()
    );
    println!(
        "latency: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(lat[lat.len() - 1])
    );
    for (e, n) in &errors {
        println!("error x{n}: {e}");
    }
    println!("duplicate IPs: {dups}");
    let t = Instant::now();
    let problems = ipams[0].audit().await?;
    println!(
        "audit (blocks/handles/indexes cross-check): {} problems in {:.2}s",
        problems.len(),
        t.elapsed().as_secs_f64()
    );
    for p in problems.iter().take(10) {
        println!("  {p}");
    }
    let blocks = ipams[0].list_blocks(&Default::default()).await?;
    println!("blocks claimed: {}", blocks.len());

    // Liveness for `cnictl check`: every node registered and reporting,
    // one attachment in LEAK_EVERY missing from the reports.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut left_out = 0;
    for (node, mut live) in per_node {
        let before = live.len();
        live.retain(|l| {
            u64::from_str_radix(&l.container_id, 16).unwrap_or(1) % LEAK_EVERY as u64 != 0
        });
        left_out += before - live.len();
        client.kv_client().put(keys.node(&node), "{}", None).await?;
        let report = NodeAttachmentsReport {
            node,
            scanned_at: now,
            attachments: live,
        };
        ipams[0].publish_node_report(&report).await?;
    }
    println!("node reports written; attachments left out (expected leaks): {left_out}");
    if dups > 0 || !errors.is_empty() || !problems.is_empty() {
        return Err("benchmark run was not clean".into());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
