//! Pools bound to apps, through the plugin: the pod's namespace from
//! CNI_ARGS chooses the pool, a drained pod's address (and with it the MAC
//! derived from it) goes to the app's next pod, a full bound pool is a CNI
//! error naming app and pool.

mod common;

use common::{ns_out, Cluster};
use leengine_ipam::{AssignRequest, BindRequest};
use leengine_testenv as te;

fn pod_args(ns: &str, name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID=u-{name}")
}

fn ip_of(r: &serde_json::Value) -> String {
    r["ips"][0]["address"].as_str().unwrap().to_string()
}

#[test]
fn a_bound_apps_pods_use_its_pool_and_hand_addresses_over() {
    let c = Cluster::new("10.64.0.0/24", "10.64.0.1", 164);
    c.add_pool("shop", "10.65.0.0/28", "10.65.0.1", 165);
    c.block_on(async {
        let req = BindRequest {
            app: "shop".into(),
            pool: "shop".into(),
            ..Default::default()
        };
        c.ipam().await.bind(&req).await.unwrap();
    });
    let conf = c.conf("1.0.0");
    let (ns_a, ns_b, ns_c) = (te::Netns::new(), te::Netns::new(), te::Netns::new());

    let shop = c.call(
        "ADD",
        "cid-a",
        Some(ns_a.path()),
        "eth0",
        &pod_args("shop", "web-v1"),
        &conf,
    );
    let shop = shop.ok().clone();
    let shop_ip = ip_of(&shop);
    assert!(
        shop_ip.starts_with("10.65.0.") && shop_ip.ends_with("/28"),
        "{shop_ip}"
    );
    assert_eq!(shop["ips"][0]["gateway"], "10.65.0.1");
    let mac = shop["interfaces"][1]["mac"].as_str().unwrap().to_string();
    assert_eq!(
        c.port_col(shop["interfaces"][0]["name"].as_str().unwrap(), "tag"),
        "165"
    );

    let blog = c.call(
        "ADD",
        "cid-b",
        Some(ns_b.path()),
        "eth0",
        &pod_args("blog", "b-0"),
        &conf,
    );
    assert!(ip_of(blog.ok()).starts_with("10.64.0."), "{}", blog.json);

    // v1 drains, v2 starts: same address, same MAC.
    c.call(
        "DEL",
        "cid-a",
        Some(ns_a.path()),
        "eth0",
        &pod_args("shop", "web-v1"),
        &conf,
    )
    .ok();
    let v2 = c.call(
        "ADD",
        "cid-c",
        Some(ns_c.path()),
        "eth0",
        &pod_args("shop", "web-v2"),
        &conf,
    );
    let v2 = v2.ok().clone();
    assert_eq!(ip_of(&v2), shop_ip);
    assert_eq!(v2["interfaces"][1]["mac"].as_str().unwrap(), mac);
    assert!(ns_out(&ns_c, &["ip", "link", "show", "eth0"]).contains(&mac));

    // Fill the rest of the /28 (13 assignable) for the app, then one more pod.
    c.block_on(async {
        let ipam = c.ipam().await;
        for i in 0..12 {
            let r = AssignRequest {
                container_id: format!("fill-{i}"),
                ifname: "eth0".into(),
                netns: "/dev/null".into(),
                pod_namespace: Some("shop".into()),
                pod_name: Some(format!("fill-{i}")),
                ..Default::default()
            };
            ipam.assign(&r).await.unwrap();
        }
    });
    let ns_d = te::Netns::new();
    let full = c.call(
        "ADD",
        "cid-d",
        Some(ns_d.path()),
        "eth0",
        &pod_args("shop", "web-x"),
        &conf,
    );
    assert_eq!(full.err_code(), 100, "{}", full.msg());
    assert!(
        full.msg().contains("app \"shop\"") && full.msg().contains("[\"shop\"]"),
        "{}",
        full.msg()
    );
    assert!(!ns_out(&ns_d, &["ip", "link"]).contains("eth0"));
    assert_eq!(c.ports().len(), 2);

    for (cid, ns, args) in [
        ("cid-b", &ns_b, pod_args("blog", "b-0")),
        ("cid-c", &ns_c, pod_args("shop", "web-v2")),
    ] {
        c.call("DEL", cid, Some(ns.path()), "eth0", &args, &conf)
            .ok();
    }
    assert!(c.ports().is_empty());
}
