//! Many writers racing on several nodes, and etcd dying mid-run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{req, Env};
use futures::future::join_all;
use leengine_ipam::{Filter, IpamError};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_nodes_never_share_an_ip_or_a_block() {
    let env = Env::start().await;
    env.add_pool("a", "10.10.0.0/25", "10.10.0.1", 20, 16, &[])
        .await;
    env.add_pool(
        "b",
        "10.10.1.0/24",
        "10.10.1.1",
        21,
        16,
        &["10.10.1.2-10.10.1.9"],
    )
    .await;
    let nodes: Vec<_> = (0..5).map(|n| env.ipam(&format!("node{n}"))).collect();
    // 240 attachments from 5 nodes at once, plus the same handle raced from two nodes.
    let tasks = (0..240).map(|i| {
        let ipam = nodes[i % nodes.len()].clone();
        tokio::spawn(async move { ipam.assign(&req(&format!("c{i}"))).await })
    });
    let dup = (0..2).map(|n| {
        let ipam = nodes[n].clone();
        tokio::spawn(async move { ipam.assign(&req("same-handle")).await })
    });
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let dups: Vec<_> = join_all(dup)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(dups[0].ip, dups[1].ip);
    assert_eq!(dups.iter().filter(|d| d.created).count(), 1);

    let ips: BTreeSet<_> = results.iter().map(|a| a.ip).collect();
    assert_eq!(ips.len(), 240, "duplicate IPs handed out");
    assert!(!ips.contains(&dups[0].ip));
    let admin = env.ipam("admin");
    let blocks = admin.list_blocks(&Filter::default()).await.unwrap();
    let cidrs: BTreeSet<_> = blocks.iter().map(|b| b.cidr).collect();
    assert_eq!(cidrs.len(), blocks.len(), "a block is recorded twice");
    // Counts add up: every allocation is in exactly one block, per node.
    let in_blocks: usize = blocks.iter().map(|b| b.allocations.len()).sum();
    assert_eq!(in_blocks, 241);
    let usage: u64 = admin
        .pool_usage(None)
        .await
        .unwrap()
        .iter()
        .map(|u| u.ips_used)
        .sum();
    assert_eq!(usage, 241);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for r in &results {
        *per_node.entry(r.attachment.node.clone()).or_default() += 1;
    }
    for (node, n) in &per_node {
        let listed = admin.node_attachments(node).await.unwrap().len();
        let expected = n + usize::from(dups[0].attachment.node == *node);
        assert_eq!(listed, expected, "{node}");
    }
    env.assert_consistent().await;

    // Half of them go away while new ones arrive, still racing.
    let churn = results.iter().enumerate().map(|(i, a)| {
        let ipam = nodes[(i + 1) % nodes.len()].clone();
        let cid = a.attachment.container_id.clone();
        tokio::spawn(async move {
            if i % 2 == 0 {
                ipam.release(&cid, "eth0").await.map(|r| r.is_some())
            } else {
                ipam.assign(&req(&format!("new{i}")))
                    .await
                    .map(|a| a.created)
            }
        })
    });
    for r in join_all(churn).await {
        assert!(r.unwrap().unwrap());
    }
    let all = admin.list_ips(&Filter::default()).await.unwrap();
    assert_eq!(all.len(), 241);
    let distinct: BTreeSet<_> = all.iter().map(|a| a.ip).collect();
    assert_eq!(distinct.len(), 241);
    env.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_overlapping_pools_only_one_wins() {
    let env = Env::start().await;
    // Every one of them contains 10.20.0.0/26.
    let cidrs = [
        "10.20.0.0/22",
        "10.20.0.0/24",
        "10.20.0.0/23",
        "10.20.0.0/26",
        "10.20.0.0/25",
        "10.20.0.0/21",
    ];
    let tasks = cidrs.iter().enumerate().map(|(i, c)| {
        let ipam = env.ipam("admin");
        let gw = c.replace(".0/", ".1/");
        let gw = gw.split('/').next().unwrap().to_string();
        let pool = leengine_ipam::Pool::parse(&format!("p{i}"), c, &gw, 5, 4, &[]).unwrap();
        tokio::spawn(async move { ipam.add_pool(&pool).await })
    });
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(r, IpamError::PoolOverlap { .. }), "{r}");
    }
    assert_eq!(env.ipam("admin").list_pools().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_stopping_mid_run_gives_clean_errors_and_no_corruption() {
    let mut env = Env::start().await;
    env.add_pool("p", "10.30.0.0/22", "10.30.0.1", 30, 16, &[])
        .await;
    let nodes: Vec<_> = (0..3).map(|n| env.ipam(&format!("n{n}"))).collect();
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let ipam = nodes[i % 3].clone();
            tokio::spawn(async move {
                // Spread the work out so etcd dies in the middle of it.
                tokio::time::sleep(Duration::from_millis((i as u64 % 50) * 20)).await;
                (i, ipam.assign(&req(&format!("c{i}"))).await)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    env.etcd.stop();
    let results = join_all(tasks).await;
    let mut ok = 0;
    let mut failed = Vec::new();
    for r in results {
        let (i, r) = r.unwrap();
        match r {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(
                    e.is_unavailable(),
                    "task {i}: not a clean unavailable error: {e}"
                );
                failed.push(i);
            }
        }
    }
    assert!(
        ok > 0 && !failed.is_empty(),
        "etcd did not die mid-run: {ok} ok, {} failed",
        failed.len()
    );
    // While etcd is down, releases fail the same clean way.
    let e = nodes[0].release("c0", "eth0").await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");

    env.etcd.restart();
    // State is consistent; failed ADDs are retried by the runtime and succeed.
    let mut recovered = false;
    for _ in 0..50 {
        if nodes[0].list_pools().await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "client did not reconnect after etcd restart");
    env.assert_consistent().await;
    for i in &failed {
        nodes[i % 3].assign(&req(&format!("c{i}"))).await.unwrap();
    }
    let all = nodes[0].list_ips(&Filter::default()).await.unwrap();
    assert_eq!(all.len(), 150);
    assert_eq!(all.iter().map(|a| a.ip).collect::<BTreeSet<_>>().len(), 150);
    env.assert_consistent().await;
}
