//! Pool and block administration against a real etcd.

mod common;

use common::{req, Env};
use leengine_ipam::{Filter, IpState, IpamError, LiveAttachment, NodeAttachmentsReport, Pool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_refuse_duplicates_overlaps_and_removal_in_use() {
    let env = Env::start().await;
    let admin = env.ipam("admin");
    env.add_pool("p1", "10.1.0.0/22", "10.1.0.1", 100, 16, &[])
        .await;
    let dup = Pool::parse("p1", "10.9.0.0/24", "10.9.0.1", 1, 16, &[]).unwrap();
    assert!(matches!(
        admin.add_pool(&dup).await.unwrap_err(),
        IpamError::PoolExists(_)
    ));
    let over = Pool::parse("p2", "10.1.2.0/24", "10.1.2.1", 1, 16, &[]).unwrap();
    let e = admin.add_pool(&over).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"pool CIDR 10.1.2.0/24 overlaps pool "p1" (10.1.0.0/22)"#
    );
    assert_eq!(admin.list_pools().await.unwrap().len(), 1);

    let n1 = env.ipam("n1");
    let a = n1.assign(&req("c1")).await.unwrap();
    let e = admin.remove_pool("p1").await.unwrap_err();
    assert!(
        matches!(&e, IpamError::PoolInUse { allocated: 1, .. }),
        "{e}"
    );
    let block = a.attachment.block.to_string();
    let e = admin.release_block(&block).await.unwrap_err();
    assert!(
        matches!(&e, IpamError::BlockInUse { allocated: 1, .. }),
        "{e}"
    );
    n1.release("c1", "eth0").await.unwrap();
    // An empty block stays with its node until released explicitly.
    let blocks = admin
        .list_blocks(&Filter {
            node: Some("n1".into()),
            pool: None,
        })
        .await
        .unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(admin.release_block(&block).await.unwrap().node, "n1");
    for (bad, want) in [
        (block.as_str(), "not claimed"),
        ("10.1.0.8/29", "are /28"),
        ("10.200.0.0/28", "in no pool"),
    ] {
        let e = admin.release_block(bad).await.unwrap_err();
        assert!(e.to_string().contains(want), "{bad}: {e}");
    }
    assert!(matches!(
        admin.release_block("10.1.0.1/28").await.unwrap_err(),
        IpamError::InvalidRequest(_)
    ));

    // A block claimed again after release never reuses sequence numbers.
    let b = n1.assign(&req("c2")).await.unwrap();
    assert!(b.seq > a.seq);
    n1.release("c2", "eth0").await.unwrap();
    admin.remove_pool("p1").await.unwrap();
    assert!(admin.list_pools().await.unwrap().is_empty());
    assert!(admin
        .list_blocks(&Filter::default())
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        admin.remove_pool("p1").await.unwrap_err(),
        IpamError::UnknownPool(_)
    ));
    env.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_listings_and_ip_info() {
    let env = Env::start().await;
    env.add_pool(
        "a",
        "10.1.0.0/24",
        "10.1.0.1",
        100,
        16,
        &["10.1.0.250-10.1.0.253"],
    )
    .await;
    env.add_pool("b", "10.2.0.0/26", "10.2.0.1", 101, 16, &[])
        .await;
    let n1 = env.ipam("n1");
    let n2 = env.ipam("n2");
    for i in 0..20 {
        n1.assign(&req(&format!("a{i}"))).await.unwrap();
    }
    let mut r = req("b0");
    r.pools = vec!["b".into()];
    let b0 = n2.assign(&r).await.unwrap();
    assert_eq!(b0.pool, "b");
    let usage = n1.pool_usage(None).await.unwrap();
    assert_eq!(usage.len(), 2);
    assert_eq!(
        (
            usage[0].blocks_claimed,
            usage[0].blocks_total,
            usage[0].ips_used
        ),
        (2, 16, 20)
    );
    assert_eq!(usage[0].ips_assignable, 256 - 3 - 4);
    assert_eq!(usage[0].ips_free, 256 - 3 - 4 - 20);
    assert_eq!((usage[1].blocks_claimed, usage[1].ips_used), (1, 1));

    let f = |node: Option<&str>, pool: Option<&str>| Filter {
        node: node.map(Into::into),
        pool: pool.map(Into::into),
    };
    assert_eq!(n1.list_ips(&f(None, None)).await.unwrap().len(), 21);
    assert_eq!(n1.list_ips(&f(Some("n1"), None)).await.unwrap().len(), 20);
    assert_eq!(n1.list_ips(&f(None, Some("b"))).await.unwrap().len(), 1);
    assert_eq!(
        n1.list_ips(&f(Some("n1"), Some("b"))).await.unwrap().len(),
        0
    );
    assert!(matches!(
        n1.list_ips(&f(None, Some("zz"))).await.unwrap_err(),
        IpamError::UnknownPool(_)
    ));
    assert_eq!(n1.list_blocks(&f(Some("n2"), None)).await.unwrap().len(), 1);

    let info = n1.ip_info(b0.ip).await.unwrap();
    assert_eq!(info.block_node.as_deref(), Some("n2"));
    assert!(
        matches!(&info.state, IpState::Allocated { attachment } if attachment.container_id == "b0")
    );
    let gw = n1.ip_info("10.1.0.1".parse().unwrap()).await.unwrap();
    assert!(matches!(&gw.state, IpState::Unassignable { reason } if reason == "gateway address"));
    let unclaimed = n1.ip_info("10.1.0.200".parse().unwrap()).await.unwrap();
    assert_eq!(unclaimed.state, IpState::Unclaimed);
    assert!(matches!(
        n1.ip_info("192.168.1.1".parse().unwrap())
            .await
            .unwrap_err(),
        IpamError::UnknownIp(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reports_round_trip() {
    let env = Env::start().await;
    let n1 = env.ipam("n1");
    let report = NodeAttachmentsReport {
        node: "n1".into(),
        scanned_at: 1234,
        attachments: vec![LiveAttachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            ip: "10.1.0.5".parse().unwrap(),
        }],
    };
    n1.publish_node_report(&report).await.unwrap();
    let reports = n1.node_reports().await.unwrap();
    assert_eq!(reports.get("n1"), Some(&report));
    // A report is not a registration.
    assert!(n1.registered_nodes().await.unwrap().is_empty());
    env.client
        .kv_client()
        .put(env.keys.node("n1"), "{}", None)
        .await
        .unwrap();
    assert_eq!(
        n1.registered_nodes()
            .await
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec!["n1"]
    );
    let bad = NodeAttachmentsReport {
        node: "a/b".into(),
        ..report
    };
    assert!(matches!(
        n1.publish_node_report(&bad).await.unwrap_err(),
        IpamError::InvalidRequest(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_notices_broken_state() {
    let env = Env::start().await;
    env.add_pool("p1", "10.1.0.0/24", "10.1.0.1", 100, 16, &[])
        .await;
    let n1 = env.ipam("n1");
    let a = n1.assign(&req("c1")).await.unwrap();
    n1.assign(&req("c2")).await.unwrap();
    env.assert_consistent().await;
    // A handle deleted behind IPAM's back leaves its block entry orphaned.
    env.client
        .kv_client()
        .delete(env.keys.handle("c1", "eth0"), None)
        .await
        .unwrap();
    let problems = n1.audit().await.unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&a.ip.to_string()) && p.contains("no matching handle")),
        "{problems:?}"
    );
    // So does a claim without its record.
    let cidr = a.attachment.block;
    env.client
        .kv_client()
        .delete(
            env.keys
                .node_block("n1", "p1", cidr.network(), cidr.prefix_len()),
            None,
        )
        .await
        .unwrap();
    let problems = n1.audit().await.unwrap();
    assert!(
        problems.iter().any(|p| p.contains("has no block record")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_block_claim_is_reported_not_looped_on() {
    let env = Env::start().await;
    env.add_pool("p1", "10.8.0.0/24", "10.8.0.1", 8, 16, &[])
        .await;
    // A claim whose block record is gone (hand edit, partial restore).
    let claim = env.keys.block("p1", "10.8.0.16".parse().unwrap(), 28);
    env.client
        .kv_client()
        .put(
            claim.clone(),
            r#"{"pool":"p1","cidr":"10.8.0.16/28","node":"n9"}"#,
            None,
        )
        .await
        .unwrap();
    let admin = env.ipam("admin");
    // A hang guard only: before the fix this call never returned.
    let info = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        admin.ip_info("10.8.0.20".parse().unwrap()),
    )
    .await
    .expect("ip_info loops on an orphan claim");
    let e = info.unwrap_err();
    assert!(
        matches!(&e, IpamError::Corrupt { key, .. } if key == &claim),
        "{e}"
    );
    assert!(e.to_string().contains("no block record"), "{e}");
    // Block release reports it too, instead of spinning.
    let e = admin.release_block("10.8.0.16/28").await.unwrap_err();
    assert!(matches!(&e, IpamError::Corrupt { .. }), "{e}");
}
