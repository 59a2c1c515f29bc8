//! Allocation behaviour against a real etcd.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::{etcd_requests, opts, pod_req, req, Env};
use leengine_ipam::{IpState, IpamError};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_del_are_idempotent() {
    let env = Env::start().await;
    env.add_pool("p1", "10.1.0.0/22", "10.1.0.1", 100, 16, &[])
        .await;
    let ipam = env.ipam("n1");
    let first = ipam.assign(&pod_req("c1", "ns", "a")).await.unwrap();
    assert!(first.created);
    assert_eq!(
        (first.prefix_len, first.gateway, first.vlan.id()),
        (22, ip("10.1.0.1"), 100)
    );
    assert!(first.attachment.block.contains(&first.ip));
    assert_eq!(first.attachment.pod().as_deref(), Some("ns/a"));

    let again = ipam.assign(&pod_req("c1", "ns", "a")).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.ip, first.ip);
    assert_eq!(again.seq, first.seq);
    // The same handle from another node is still the same attachment.
    let other = env.ipam("n2").assign(&req("c1")).await.unwrap();
    assert_eq!(other.ip, first.ip);
    // Another interface of the same container is another attachment.
    let eth1 = ipam
        .assign(&leengine_ipam::AssignRequest {
            ifname: "eth1".into(),
            ..req("c1")
        })
        .await
        .unwrap();
    assert_ne!(eth1.ip, first.ip);

    assert_eq!(
        ipam.handle("c1", "eth0").await.unwrap(),
        Some(first.attachment.clone())
    );
    assert_eq!(ipam.node_attachments("n1").await.unwrap().len(), 2);
    let released = ipam.release("c1", "eth0").await.unwrap();
    assert_eq!(released.map(|a| a.ip), Some(first.ip));
    assert_eq!(ipam.release("c1", "eth0").await.unwrap(), None);
    assert_eq!(ipam.release("never-seen", "eth0").await.unwrap(), None);
    assert_eq!(ipam.handle("c1", "eth0").await.unwrap(), None);
    assert_eq!(ipam.node_attachments("n1").await.unwrap().len(), 1);
    let info = ipam.ip_info(first.ip).await.unwrap();
    assert!(matches!(
        info.state,
        IpState::Free { freed_at: Some(_) } | IpState::Reserved { .. }
    ));
    env.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused() {
    let env = Env::start().await;
    env.add_pool("p1", "10.1.0.0/24", "10.1.0.1", 100, 16, &[])
        .await;
    let ipam = env.ipam("n1");
    let e = ipam.assign(&req("")).await.unwrap_err();
    assert!(matches!(e, IpamError::InvalidRequest(_)), "{e}");
    let e = ipam.assign(&req("a/b")).await.unwrap_err();
    assert!(matches!(e, IpamError::InvalidRequest(_)), "{e}");
    let mut r = req("c1");
    r.pools = vec!["nope".into()];
    let e = ipam.assign(&r).await.unwrap_err();
    assert!(
        matches!(&e, IpamError::UnknownPool(p) if p == "nope"),
        "{e}"
    );
    assert!(ipam.list_ips(&Default::default()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_borrows_then_fails_cleanly() {
    let env = Env::start().await;
    // One block of 16: 13 assignable (network, broadcast, gateway excluded).
    env.add_pool("tiny", "10.2.0.0/28", "10.2.0.1", 7, 16, &[])
        .await;
    let a = env.ipam("n1");
    let b = env.ipam("n2");
    let mut got = BTreeSet::new();
    for i in 0..5 {
        got.insert(a.assign(&req(&format!("a{i}"))).await.unwrap().ip);
    }
    // n2 owns no block and none is free: it borrows from n1's block.
    for i in 0..8 {
        let asg = b.assign(&req(&format!("b{i}"))).await.unwrap();
        assert_eq!(asg.attachment.node, "n2");
        got.insert(asg.ip);
    }
    assert_eq!(got.len(), 13);
    for node in [&a, &b] {
        let e = node.assign(&req("one-too-many")).await.unwrap_err();
        assert!(
            matches!(&e, IpamError::PoolExhausted { pools } if pools == &["tiny"]),
            "{e}"
        );
    }
    let blocks = a.list_blocks(&Default::default()).await.unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].node, "n1");
    assert_eq!(b.node_attachments("n2").await.unwrap().len(), 8);
    let usage = a.pool_usage(Some("tiny")).await.unwrap();
    assert_eq!((usage[0].ips_used, usage[0].ips_free), (13, 0));
    // Freeing one makes room again.
    a.release("a0", "eth0").await.unwrap().unwrap();
    b.assign(&req("one-too-many")).await.unwrap();
    // A borrowed address is released from its owner's block.
    let borrowed = b.handle("b0", "eth0").await.unwrap().unwrap();
    assert!(b.release_if_unchanged(&borrowed).await.unwrap());
    assert!(b.release("b1", "eth0").await.unwrap().is_some());
    assert_eq!(b.node_attachments("n2").await.unwrap().len(), 7);
    let info = b.ip_info(borrowed.ip).await.unwrap();
    assert_eq!(info.block_node.as_deref(), Some("n1"));
    assert!(matches!(info.state, IpState::Free { .. }), "{info:?}");
    env.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusions_are_never_handed_out() {
    let env = Env::start().await;
    let pool = env
        .add_pool(
            "p1",
            "10.3.0.0/26",
            "10.3.0.62",
            9,
            16,
            &["10.3.0.5", "10.3.0.10-10.3.0.20", "10.3.0.32/29"],
        )
        .await;
    let ipam = env.ipam("n1");
    let mut got = BTreeSet::new();
    loop {
        match ipam.assign(&req(&format!("c{}", got.len()))).await {
            Ok(a) => assert!(got.insert(a.ip)),
            Err(IpamError::PoolExhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let expected: BTreeSet<Ipv4Addr> = pool
        .blocks()
        .flat_map(|b| pool.assignable_in(b).collect::<Vec<_>>())
        .collect();
    assert_eq!(got, expected);
    // 64 - net - bcast - gw - 1 - 11 - 8
    assert_eq!(got.len(), 64 - 3 - 1 - 11 - 8);
    for bad in [
        "10.3.0.5",
        "10.3.0.15",
        "10.3.0.33",
        "10.3.0.62",
        "10.3.0.0",
    ] {
        assert!(!got.contains(&ip(bad)), "{bad} was handed out");
    }
    // Four blocks of 16, but 10.3.0.16/28 still has assignable .21-.31: all claimed by n1.
    assert_eq!(
        ipam.list_blocks(&Default::default()).await.unwrap().len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_ip() {
    let env = Env::start().await;
    env.add_pool("p1", "10.4.0.0/24", "10.4.0.1", 10, 16, &["10.4.0.100"])
        .await;
    env.add_pool("p2", "10.5.0.0/24", "10.5.0.1", 11, 16, &[])
        .await;
    let n1 = env.ipam("n1");
    let n2 = env.ipam("n2");
    let mut r = req("c1");
    r.requested_ip = Some(ip("10.4.0.77"));
    let a = n1.assign(&r).await.unwrap();
    assert_eq!(
        (a.ip, a.pool.as_str(), a.vlan.id()),
        (ip("10.4.0.77"), "p1", 10)
    );
    // Its block was claimed for n1.
    let blocks = n1.list_blocks(&Default::default()).await.unwrap();
    assert_eq!(
        (
            blocks.len(),
            blocks[0].cidr.to_string(),
            blocks[0].node.as_str()
        ),
        (1, "10.4.0.64/28".into(), "n1")
    );

    let mut r2 = req("c2");
    r2.requested_ip = Some(ip("10.4.0.77"));
    let e = n2.assign(&r2).await.unwrap_err();
    assert!(
        matches!(&e, IpamError::RequestedIpTaken { ip: i, by } if *i == ip("10.4.0.77") && by.contains("c1")),
        "{e}"
    );
    // A requested IP inside n1's block is still given to n2 (the segment is one L2).
    r2.requested_ip = Some(ip("10.4.0.78"));
    assert_eq!(n2.assign(&r2).await.unwrap().attachment.node, "n2");

    for (bad, why) in [
        ("10.4.0.100", "excluded"),
        ("10.4.0.1", "gateway"),
        ("10.4.0.255", "broadcast"),
        ("10.9.0.5", "eligible pools"),
    ] {
        let mut r3 = req("c3");
        r3.requested_ip = Some(ip(bad));
        let e = n2.assign(&r3).await.unwrap_err();
        assert!(
            matches!(&e, IpamError::RequestedIpNotInPool { reason, .. } if reason.contains(why)),
            "{bad}: {e}"
        );
    }
    // Restricted to p2, an address of p1 is not eligible.
    let mut r4 = req("c4");
    r4.pools = vec!["p2".into()];
    r4.requested_ip = Some(ip("10.4.0.90"));
    assert!(matches!(
        n2.assign(&r4).await.unwrap_err(),
        IpamError::RequestedIpNotInPool { .. }
    ));
    assert!(n2.handle("c3", "eth0").await.unwrap().is_none());
    env.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_ip_comes_back_and_is_kept_from_others() {
    let env = Env::start().await;
    env.add_pool("p1", "10.6.0.0/28", "10.6.0.1", 12, 16, &[])
        .await;
    let n1 = env.ipam_with("n1", opts(0, 300));
    let n2 = env.ipam_with("n2", opts(0, 300));
    let first = n1.assign(&pod_req("c1", "shop", "web-0")).await.unwrap();
    n1.release("c1", "eth0").await.unwrap().unwrap();
    let info = n1.ip_info(first.ip).await.unwrap();
    assert!(
        matches!(&info.state, IpState::Reserved { reservation } if reservation.pod == "shop/web-0"),
        "{info:?}"
    );
    // Everyone else fills the pool around the reserved address.
    let mut others = BTreeSet::new();
    for i in 0..12 {
        others.insert(
            n1.assign(&pod_req(&format!("o{i}"), "shop", &format!("other-{i}")))
                .await
                .unwrap()
                .ip,
        );
    }
    assert!(!others.contains(&first.ip));
    assert!(matches!(
        n1.assign(&pod_req("o12", "shop", "other-12"))
            .await
            .unwrap_err(),
        IpamError::PoolExhausted { .. }
    ));
    let mut r = req("x");
    r.requested_ip = Some(first.ip);
    let e = n2.assign(&r).await.unwrap_err();
    assert!(
        matches!(&e, IpamError::RequestedIpTaken { by, .. } if by.contains("shop/web-0")),
        "{e}"
    );
    // The re-created pod (new sandbox, other node) gets its address back.
    let back = n2
        .assign(&pod_req("c1-new", "shop", "web-0"))
        .await
        .unwrap();
    assert_eq!(back.ip, first.ip);
    assert!(back.seq > first.seq);
    assert!(n2.ip_info(first.ip).await.is_ok());
    env.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldown_prefers_long_free_addresses() {
    let env = Env::start().await;
    env.add_pool("p1", "10.7.0.0/24", "10.7.0.1", 12, 16, &[])
        .await;
    let n1 = env.ipam_with("n1", opts(3600, 0));
    let a = n1.assign(&req("c1")).await.unwrap();
    n1.release("c1", "eth0").await.unwrap();
    let b = n1.assign(&req("c2")).await.unwrap();
    assert_ne!(a.ip, b.ip, "a just-freed address was handed out again");
    assert_eq!(b.attachment.block, a.attachment.block);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_release_never_frees_a_reassigned_ip() {
    let env = Env::start().await;
    env.add_pool("p1", "10.8.0.0/28", "10.8.0.1", 12, 16, &[])
        .await;
    let n1 = env.ipam("n1");
    let mut atts = Vec::new();
    for i in 0..13 {
        atts.push(n1.assign(&req(&format!("c{i}"))).await.unwrap().attachment);
    }
    let old = atts[4].clone();
    // The old pod dies and is released; its address goes to a new pod.
    assert!(n1.release_if_unchanged(&old).await.unwrap());
    let new = n1.assign(&req("newcomer")).await.unwrap();
    assert_eq!(new.ip, old.ip);
    // A stale release (from an old report) must not touch the newcomer.
    assert!(!n1.release_if_unchanged(&old).await.unwrap());
    // Same container id and ifname again, same IP: the sequence number still tells them apart.
    n1.release("newcomer", "eth0").await.unwrap();
    let again = n1.assign(&req(&old.container_id)).await.unwrap();
    assert_eq!(
        (again.ip, &again.attachment.container_id),
        (old.ip, &old.container_id)
    );
    assert!(!n1.release_if_unchanged(&old).await.unwrap());
    assert!(matches!(
        n1.ip_info(old.ip).await.unwrap().state,
        IpState::Allocated { .. }
    ));
    assert!(n1.release_if_unchanged(&again.attachment).await.unwrap());
    env.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_on_an_exhausted_pool_costs_one_read() {
    let env = Env::start().await;
    env.add_pool("tiny", "10.6.0.0/28", "10.6.0.1", 6, 16, &[])
        .await;
    // Other blocks in the Cell, which a scan for a borrowable address reads.
    env.add_pool("big", "10.7.0.0/24", "10.7.0.1", 8, 16, &[])
        .await;
    let (a, b) = (env.ipam("n1"), env.ipam("n2"));
    let tiny = |cid: &str| leengine_ipam::AssignRequest {
        pools: vec!["tiny".into()],
        ..req(cid)
    };
    for i in 0..13 {
        a.assign(&tiny(&format!("a{i}"))).await.unwrap();
    }
    for i in 0..4 {
        env.ipam(&format!("other{i}"))
            .assign(&leengine_ipam::AssignRequest {
                pools: vec!["big".into()],
                ..req(&format!("o{i}"))
            })
            .await
            .unwrap();
    }
    let exhausted = |r: Result<_, IpamError>| matches!(r, Err(IpamError::PoolExhausted { .. }));
    // The first ADD that finds the pool full looks everywhere...
    assert!(exhausted(b.assign(&tiny("late0")).await));
    // ...the next ones read once and answer.
    let (txn, range) = (
        etcd_requests(&env.etcd, "Txn"),
        etcd_requests(&env.etcd, "Range"),
    );
    for i in 1..6 {
        let node = if i % 2 == 0 { &a } else { &b };
        assert!(exhausted(node.assign(&tiny(&format!("late{i}"))).await));
    }
    assert_eq!(etcd_requests(&env.etcd, "Txn") - txn, 5);
    assert_eq!(etcd_requests(&env.etcd, "Range") - range, 0);
    // A release in the pool makes room again, at once.
    a.release("a3", "eth0").await.unwrap().unwrap();
    let got = b.assign(&tiny("late6")).await.unwrap();
    assert_eq!(got.attachment.node, "n2");
    assert!(exhausted(b.assign(&tiny("late7")).await));
    env.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_read_ahead_commits_even_when_its_block_changed_meanwhile() {
    let env = Env::start().await;
    env.add_pool("p1", "10.1.0.0/22", "10.1.0.1", 100, 16, &[])
        .await;
    let ipam = env.ipam("n1");
    let a = ipam.assign(&req("c1")).await.unwrap();
    let b = ipam.assign(&req("c2")).await.unwrap();
    let ahead = ipam.prepare_release("c1", "eth0").await.unwrap();
    let released = ipam.release_prepared(ahead).await.unwrap();
    assert_eq!(released.map(|x| x.ip), Some(a.ip));

    // Another address of the same block changes the block record after the
    // reads: the commit's compare fails and a fresh release does the job.
    let ahead = ipam.prepare_release("c2", "eth0").await.unwrap();
    let c = ipam.assign(&req("c3")).await.unwrap();
    assert_eq!(c.attachment.block, b.attachment.block);
    let released = ipam.release_prepared(ahead).await.unwrap();
    assert_eq!(released.map(|x| x.ip), Some(b.ip));
    assert_eq!(ipam.handle("c2", "eth0").await.unwrap(), None);

    // Nothing held: nothing to release.
    let none = ipam.prepare_release("never-seen", "eth0").await.unwrap();
    assert_eq!(ipam.release_prepared(none).await.unwrap(), None);
    assert_eq!(ipam.node_attachments("n1").await.unwrap().len(), 1);
    env.assert_consistent().await;
}
