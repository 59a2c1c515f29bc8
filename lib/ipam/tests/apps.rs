//! Pools bound to apps and the app reserve, against a real etcd.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::{opts, pod_req, req, Env};
use ipnet::Ipv4Net;
use leengine_ipam::{BindRequest, CheckOptions, IpState, Ipam, IpamError};

fn bind_req(app: &str, pool: &str) -> BindRequest {
    BindRequest {
        app: app.into(),
        pool: pool.into(),
        ..Default::default()
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

async fn assign_ip(ipam: &Ipam, cid: &str, ns: &str, name: &str) -> Ipv4Addr {
    ipam.assign(&pod_req(cid, ns, name)).await.unwrap().ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_app_fills_only_its_pool_and_no_other_pod_gets_one() {
    let env = Env::start().await;
    env.add_pool("shop27", "10.1.8.0/27", "10.1.8.1", 8, 8, &[])
        .await;
    env.add_pool("shared", "10.2.0.0/24", "10.2.0.1", 9, 16, &[])
        .await;
    let (n1, n2) = (env.ipam("n1"), env.ipam("n2"));
    n1.bind(&bind_req("shop", "shop27")).await.unwrap();
    let shop = net("10.1.8.0/27");

    // 29 assignable addresses in the /27 (minus network, broadcast,
    // gateway), handed out on two nodes; other pods interleaved.
    let mut got = BTreeSet::new();
    for i in 0..29 {
        let node = if i % 2 == 0 { &n1 } else { &n2 };
        let a = assign_ip(node, &format!("s{i}"), "shop", &format!("web-{i}")).await;
        assert!(shop.contains(&a), "shop pod got {a}");
        assert!(got.insert(a));
        let other = assign_ip(node, &format!("w{i}"), "blog", &format!("b-{i}")).await;
        assert!(!shop.contains(&other), "blog pod got {other}");
        let anon = node.assign(&req(&format!("x{i}"))).await.unwrap().ip;
        assert!(!shop.contains(&anon), "pod without namespace got {anon}");
    }
    // Full: the error names the app and its pool; the shared pool is not used.
    let e = n1
        .assign(&pod_req("s-full", "shop", "web-full"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, IpamError::AppPoolsExhausted { app, pools } if app == "shop" && pools == &["shop27"]),
        "{e}"
    );
    assert!(e.to_string().contains("\"shop\"") && e.to_string().contains("shop27"));
    // With shared fallback the next pod takes a shared address.
    n1.bind(&BindRequest {
        shared_fallback: Some(true),
        ..bind_req("shop", "shop27")
    })
    .await
    .unwrap();
    let a = assign_ip(&n2, "s-full", "shop", "web-full").await;
    assert!(net("10.2.0.0/24").contains(&a), "{a}");

    let usage = n1.pool_usage(Some("shop27")).await.unwrap();
    assert_eq!(
        (usage[0].ips_used, usage[0].ips_free, usage[0].apps.clone()),
        (29, 0, vec!["shop".to_string()])
    );
    env.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_admin_refuses_what_would_break_the_rule() {
    let env = Env::start().await;
    env.add_pool("p", "10.1.8.0/27", "10.1.8.1", 8, 8, &[])
        .await;
    env.add_pool("q", "10.1.9.0/27", "10.1.9.1", 8, 8, &[])
        .await;
    let ipam = env.ipam("n1");
    // Another app's pod in the pool: binding would strand it.
    let a = assign_ip(&ipam, "w1", "blog", "b-1").await;
    let e = ipam.bind(&bind_req("shop", "p")).await.unwrap_err();
    assert!(
        matches!(&e, IpamError::BindConflict { ip, holder, .. } if *ip == a && holder == "pod blog/b-1"),
        "{e}"
    );
    assert!(ipam.bindings().await.unwrap().is_empty());
    // Binding the pool to that app too is fine (a pool may serve several apps).
    ipam.bind(&bind_req("blog", "p")).await.unwrap();
    ipam.bind(&bind_req("shop", "p")).await.unwrap();
    let usage = ipam.pool_usage(Some("p")).await.unwrap();
    assert_eq!(usage[0].apps, vec!["blog".to_string(), "shop".to_string()]);

    let e = ipam.bind(&bind_req("shop", "nope")).await.unwrap_err();
    assert!(
        matches!(&e, IpamError::UnknownPool(p) if p == "nope"),
        "{e}"
    );
    let e = ipam.bind(&bind_req("Bad/App", "p")).await.unwrap_err();
    assert!(matches!(e, IpamError::InvalidRequest(_)), "{e}");
    let e = ipam.remove_pool("p").await.unwrap_err();
    assert!(
        matches!(&e, IpamError::PoolBound { pool, apps } if pool == "p" && apps.len() == 2),
        "{e}"
    );
    let e = ipam.unbind("shop", "q").await.unwrap_err();
    assert!(matches!(e, IpamError::NotBound { .. }), "{e}");
    let e = ipam.unbind("nobody", "p").await.unwrap_err();
    assert!(matches!(e, IpamError::NotBound { .. }), "{e}");

    // Every pool bound elsewhere: a third app's pod gets a precise error.
    ipam.bind(&bind_req("shop", "q")).await.unwrap();
    let e = ipam.assign(&pod_req("x", "web", "x")).await.unwrap_err();
    assert!(
        matches!(&e, IpamError::NoSharedPool { namespace } if namespace == "web"),
        "{e}"
    );

    // The export: exactly the bound ranges, per app.
    let ranges = ipam.app_ranges(Some("shop")).await.unwrap();
    let got: Vec<_> = ranges.iter().map(|r| (r.pool.as_str(), r.cidr)).collect();
    assert_eq!(
        got,
        vec![("p", net("10.1.8.0/27")), ("q", net("10.1.9.0/27"))]
    );
    assert_eq!(ranges[0].shared_with, vec!["blog".to_string()]);
    assert_eq!(ipam.app_ranges(None).await.unwrap().len(), 3);

    // Unbinding the last pool removes the binding; the pool is shared again.
    assert!(ipam.unbind("shop", "q").await.unwrap().is_some());
    assert!(ipam.unbind("shop", "p").await.unwrap().is_none());
    assert_eq!(ipam.bindings().await.unwrap().len(), 1);
    let x = assign_ip(&ipam, "x", "web", "x").await;
    assert!(net("10.1.9.0/27").contains(&x), "{x}");
    ipam.unbind("blog", "p").await.unwrap();
    ipam.release("w1", "eth0").await.unwrap();
    ipam.release("x", "eth0").await.unwrap();
    ipam.remove_pool("p").await.unwrap();
    env.assert_consistent().await;
}

/// Scale 4 → 2 → 4 and a v1 → v2 upgrade (one pod replaced at a time,
/// on other nodes) end with the same four addresses; meanwhile the
/// reserved addresses are neither free for another app sharing the pool
/// nor leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_up_and_upgrade_keep_the_apps_addresses() {
    let env = Env::start().await;
    env.add_pool("p", "10.1.8.0/26", "10.1.8.1", 8, 8, &[])
        .await;
    // Production-like: cooldown and sticky IPs on.
    let nodes: Vec<Ipam> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| env.ipam_with(n, opts(60, 300)))
        .collect();
    let admin = &nodes[0];
    admin.bind(&bind_req("shop", "p")).await.unwrap();
    admin.bind(&bind_req("blog", "p")).await.unwrap();

    let mut v1 = BTreeSet::new();
    for i in 0..4 {
        let node = &nodes[i % 3];
        v1.insert(assign_ip(node, &format!("v1-{i}"), "shop", &format!("web-v1-{i}")).await);
    }
    // Scale down to 2: two addresses go to the app's reserve.
    let mut gone = BTreeSet::new();
    for i in [1, 3] {
        let a = nodes[0]
            .release(&format!("v1-{i}"), "eth0")
            .await
            .unwrap()
            .unwrap();
        gone.insert(a.ip);
    }
    let reserve: BTreeSet<_> = admin
        .app_reserve("shop")
        .await
        .unwrap()
        .iter()
        .map(|r| r.ip)
        .collect();
    assert_eq!(reserve, gone);
    let usage = admin.pool_usage(Some("p")).await.unwrap();
    assert_eq!((usage[0].ips_used, usage[0].ips_reserved), (2, 2));
    let info = admin.ip_info(*gone.first().unwrap()).await.unwrap();
    assert!(
        matches!(&info.state, IpState::Reserved { reservation } if reservation.app.as_deref() == Some("shop")),
        "{info:?}"
    );
    // Not leaked either: the check counts only the two allocations.
    let check = CheckOptions {
        now: u64::MAX / 2,
        grace_secs: 0,
        max_report_age_secs: 600,
    };
    let report = admin.check(None, &check).await.unwrap();
    assert_eq!(report.allocated, 2);
    assert!(report.leaked.is_empty());
    // The other app sharing the pool never gets them.
    for i in 0..5 {
        let b = assign_ip(&nodes[i % 3], &format!("b{i}"), "blog", &format!("b-{i}")).await;
        assert!(!v1.contains(&b), "blog pod got shop's reserved {b}");
    }
    // Scale up to 4 with new pod names, on another node: the same addresses,
    // lowest first.
    let want: Vec<_> = gone.iter().copied().collect();
    for (k, i) in [4, 5].into_iter().enumerate() {
        let a = assign_ip(
            &nodes[2],
            &format!("v1-{i}"),
            "shop",
            &format!("web-v1-{i}"),
        )
        .await;
        assert_eq!(a, want[k]);
    }
    assert!(admin.app_reserve("shop").await.unwrap().is_empty());

    // Upgrade: each v1 pod drains, then a v2 pod starts (maxSurge 0).
    let running: Vec<String> = ["v1-0", "v1-2", "v1-4", "v1-5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut v2 = BTreeSet::new();
    for (i, old) in running.iter().enumerate() {
        let freed = nodes[i % 3].release(old, "eth0").await.unwrap().unwrap();
        let node = &nodes[(i + 1) % 3];
        let a = assign_ip(node, &format!("v2-{i}"), "shop", &format!("web-v2-{i}")).await;
        assert_eq!(a, freed.ip, "v2 pod {i} did not take over {}", freed.ip);
        v2.insert(a);
    }
    assert_eq!(v2, v1);
    env.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserve_lapses_after_its_time_and_a_pod_keeps_its_sticky_address() {
    let env = Env::start().await;
    env.add_pool(
        "p",
        "10.1.8.0/28",
        "10.1.8.1",
        8,
        8,
        &["10.1.8.7-10.1.8.14"],
    )
    .await;
    let ipam = env.ipam_with("n1", opts(0, 300));
    for app in ["shop", "blog"] {
        ipam.bind(&BindRequest {
            reserve_secs: Some(1),
            ..bind_req(app, "p")
        })
        .await
        .unwrap();
    }
    // Five assignable addresses (.2-.6).
    let mut shop = Vec::new();
    for i in 0..3 {
        shop.push(assign_ip(&ipam, &format!("s{i}"), "shop", &format!("web-{i}")).await);
    }
    for i in 0..2 {
        assign_ip(&ipam, &format!("b{i}"), "blog", &format!("b-{i}")).await;
    }
    ipam.release("s0", "eth0").await.unwrap();
    ipam.release("s1", "eth0").await.unwrap();
    // web-1 comes back (same pod name): its own address, not the lowest.
    assert_eq!(assign_ip(&ipam, "s1b", "shop", "web-1").await, shop[1]);
    // Blog cannot have the reserved .2 while the reserve lasts ...
    let e = ipam
        .assign(&pod_req("b2", "blog", "b-2"))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::AppPoolsExhausted { .. }), "{e}");
    // ... and the sticky window (300 s) outlasts the app reserve (1 s):
    // the address stays web-0's.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let e = ipam
        .assign(&pod_req("b2", "blog", "b-2"))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::AppPoolsExhausted { .. }), "{e}");
    assert_eq!(assign_ip(&ipam, "s0b", "shop", "web-0").await, shop[0]);
    // Without a sticky window the address goes back to the pool once the reserve lapses.
    let plain = env.ipam_with("n1", opts(0, 0));
    plain.release("s2", "eth0").await.unwrap();
    let e = plain
        .assign(&pod_req("b2", "blog", "b-2"))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::AppPoolsExhausted { .. }), "{e}");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(assign_ip(&plain, "b2", "blog", "b-2").await, shop[2]);
    env.assert_consistent().await;
}
