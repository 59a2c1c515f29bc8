//! Pools bound to apps and the app reserve (pure rules; the etcd side is in
//! `admin`, `assign` and `release`).
//!
//! * An app is a Kubernetes namespace (the runtime passes it to the plugin as
//!   `K8S_POD_NAMESPACE`). A pool named in any app's binding is **bound**:
//!   only pods of the apps bound to it get addresses there.
//! * A pod of a bound app takes addresses from its binding's pools in the
//!   binding's order, then — only if the binding says `sharedFallback` — from
//!   the shared (unbound) pools the CNI config allows.
//! * The reserve: an address a pod of a bound app gives up stays reserved for
//!   the app for `reserveSecs`. The app's next pod takes a reserved address
//!   before any other: first one whose pod-identity (sticky) window has
//!   passed or was its own, lowest address first; then the lowest of the
//!   rest. The MAC is derived from the address, so it follows the address.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::IpamError;
use crate::model::{Attachment, Pool};
use crate::Vlan;

/// How long an app's freed address stays reserved for it unless the binding says otherwise.
pub const DEFAULT_RESERVE_SECS: u64 = 600;

/// `{prefix}/ipam/app-pools/{namespace}`: the pools one app's pods use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppBinding {
    /// The app's namespace.
    pub app: String,
    /// Bound pools, in order of preference.
    pub pools: Vec<String>,
    /// When every bound pool is full, also use the shared pools.
    #[serde(default)]
    pub shared_fallback: bool,
    /// How long an address the app gave up stays reserved for it (0: no reserve).
    pub reserve_secs: u64,
}

/// `{prefix}/ipam/app-reserve/{namespace}/{ip}` (on a lease of the reserve
/// time): an address the app gave up and may take back until `until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppReserved {
    pub ip: Ipv4Addr,
    pub pool: String,
    /// The pod (`namespace/name`) that gave it up.
    pub pod: String,
    /// Until then the pod identity itself has first call (sticky IP).
    pub sticky_until: u64,
    pub until: u64,
}

/// A change to one app's binding, as `cnictl pool bind` / `unbind` ask.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindRequest {
    pub app: String,
    pub pool: String,
    /// `None` keeps the binding's current setting (false for a new one).
    pub shared_fallback: Option<bool>,
    /// `None` keeps the current reserve time ([`DEFAULT_RESERVE_SECS`] for a new binding).
    pub reserve_secs: Option<u64>,
}

/// The pools an ADD may use, and the app whose binding chose them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eligible {
    pub pools: Vec<String>,
    /// Set when the pod's app has a binding (errors then name the app).
    pub app: Option<String>,
}

/// Which pools a pod of `namespace` may take an address from. `all` are
/// the Cell's pools by name, `config` the CNI config's list (empty: all).
pub fn eligible(
    all: &[String],
    config: &[String],
    bindings: &[AppBinding],
    namespace: Option<&str>,
) -> Eligible {
    let bound: BTreeSet<&str> = bindings
        .iter()
        .flat_map(|b| b.pools.iter().map(String::as_str))
        .collect();
    let base = if config.is_empty() { all } else { config };
    let shared = base.iter().filter(|p| !bound.contains(p.as_str())).cloned();
    match namespace.and_then(|ns| bindings.iter().find(|b| b.app == ns)) {
        Some(b) => {
            let mut pools = b.pools.clone();
            if b.shared_fallback {
                pools.extend(shared);
            }
            Eligible {
                pools,
                app: Some(b.app.clone()),
            }
        }
        None => Eligible {
            pools: shared.collect(),
            app: None,
        },
    }
}

/// The app's reserved addresses in the order a new pod `pod` tries them:
/// those no other pod identity still has first call on (or its own), then
/// the rest; lowest address first within each group. Expired entries are
/// left out.
pub fn reserved_order(entries: &[AppReserved], pod: Option<&str>, now: u64) -> Vec<Ipv4Addr> {
    let mut live: Vec<(bool, Ipv4Addr)> = entries
        .iter()
        .filter(|e| e.until > now)
        .map(|e| {
            let others_first = e.sticky_until > now && Some(e.pod.as_str()) != pod;
            (others_first, e.ip)
        })
        .collect();
    live.sort();
    live.into_iter().map(|(_, ip)| ip).collect()
}

fn valid_app(app: &str) -> Result<(), IpamError> {
    // A Kubernetes namespace: an RFC 1123 label.
    let ok = !app.is_empty()
        && app.len() <= 63
        && app
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !app.starts_with('-')
        && !app.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(IpamError::InvalidRequest(format!(
            "app {app:?} is not a namespace name (1-63 of a-z, 0-9, '-', not starting or ending with '-')"
        )))
    }
}

/// `current` with `req.pool` added (appended; an existing entry keeps its
/// place) and the settings applied.
pub fn bind(current: Option<AppBinding>, req: &BindRequest) -> Result<AppBinding, IpamError> {
    valid_app(&req.app)?;
    let mut b = current.unwrap_or_else(|| AppBinding {
        app: req.app.clone(),
        pools: Vec::new(),
        shared_fallback: false,
        reserve_secs: DEFAULT_RESERVE_SECS,
    });
    if !b.pools.contains(&req.pool) {
        b.pools.push(req.pool.clone());
    }
    if let Some(f) = req.shared_fallback {
        b.shared_fallback = f;
    }
    if let Some(r) = req.reserve_secs {
        b.reserve_secs = r;
    }
    Ok(b)
}

/// `current` without `pool`; `None` when no pool is left (the binding goes).
pub fn unbind(current: AppBinding, pool: &str) -> Result<Option<AppBinding>, IpamError> {
    if !current.pools.iter().any(|p| p == pool) {
        return Err(IpamError::NotBound {
            app: current.app,
            pool: pool.into(),
        });
    }
    let mut b = current;
    b.pools.retain(|p| p != pool);
    Ok((!b.pools.is_empty()).then_some(b))
}

/// The apps bound to `pool`, by name.
pub fn apps_of(bindings: &[AppBinding], pool: &str) -> Vec<String> {
    let mut apps: Vec<String> = bindings
        .iter()
        .filter(|b| b.pools.iter().any(|p| p == pool))
        .map(|b| b.app.clone())
        .collect();
    apps.sort();
    apps
}

/// An allocation in `pool` that binding the pool to `apps` would strand:
/// one of a pod outside those apps (or of no known pod).
pub fn stranded<'a>(
    attachments: &'a [Attachment],
    pool: &str,
    apps: &[String],
) -> Option<&'a Attachment> {
    attachments
        .iter()
        .find(|a| a.pool == pool && !a.pod_namespace.as_ref().is_some_and(|ns| apps.contains(ns)))
}

/// One bound range, for the firewall team.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppRange {
    pub app: String,
    pub pool: String,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub vlan: Vlan,
    /// Other apps bound to the same pool (a firewall rule on the range admits them too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
}

/// Every bound range of `app` (every app when `None`), by app then binding order.
pub fn ranges(bindings: &[AppBinding], pools: &[Pool], app: Option<&str>) -> Vec<AppRange> {
    let mut chosen: Vec<&AppBinding> = bindings
        .iter()
        .filter(|b| app.is_none_or(|a| a == b.app))
        .collect();
    chosen.sort_by(|a, b| a.app.cmp(&b.app));
    chosen
        .into_iter()
        .flat_map(|b| {
            b.pools.iter().filter_map(move |name| {
                let p = pools.iter().find(|p| &p.name == name)?;
                Some(AppRange {
                    app: b.app.clone(),
                    pool: p.name.clone(),
                    cidr: p.cidr,
                    gateway: p.gateway,
                    vlan: p.vlan,
                    shared_with: apps_of(bindings, name)
                        .into_iter()
                        .filter(|a| a != &b.app)
                        .collect(),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(app: &str, pools: &[&str], fallback: bool) -> AppBinding {
        AppBinding {
            app: app.into(),
            pools: pools.iter().map(|p| p.to_string()).collect(),
            shared_fallback: fallback,
            reserve_secs: 600,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_bound_app_uses_only_its_pools_unless_it_falls_back() {
        let all = names(&["a", "b", "shop1", "shop2", "x"]);
        let bs = [
            binding("shop", &["shop2", "shop1"], false),
            binding("blog", &["x"], true),
        ];
        let shop = eligible(&all, &[], &bs, Some("shop"));
        assert_eq!(shop.pools, names(&["shop2", "shop1"]));
        assert_eq!(shop.app.as_deref(), Some("shop"));
        // Fallback: its own pool first, then the shared pools (never another app's).
        let blog = eligible(&all, &[], &bs, Some("blog"));
        assert_eq!(blog.pools, names(&["x", "a", "b"]));
        // Fallback honours the CNI config's list for the shared part.
        let blog = eligible(&all, &names(&["b", "shop1"]), &bs, Some("blog"));
        assert_eq!(blog.pools, names(&["x", "b"]));
    }

    #[test]
    fn other_apps_and_unnamed_pods_never_see_bound_pools() {
        let all = names(&["a", "shop1"]);
        let bs = [binding("shop", &["shop1"], false)];
        for ns in [Some("web"), None] {
            let e = eligible(&all, &[], &bs, ns);
            assert_eq!(e.pools, names(&["a"]));
            assert_eq!(e.app, None);
        }
        // Even when the CNI config names the bound pool.
        let e = eligible(&all, &names(&["shop1", "a"]), &bs, Some("web"));
        assert_eq!(e.pools, names(&["a"]));
        // No binding at all: the old behaviour.
        assert_eq!(eligible(&all, &[], &[], Some("web")).pools, all);
    }

    fn reserved(ip: &str, pod: &str, sticky_until: u64, until: u64) -> AppReserved {
        AppReserved {
            ip: ip.parse().unwrap(),
            pool: "p".into(),
            pod: pod.into(),
            sticky_until,
            until,
        }
    }

    #[test]
    fn reserve_order_is_lowest_first_after_other_pods_sticky_windows() {
        let es = [
            reserved("10.1.8.9", "shop/web-a", 0, 2000),
            reserved("10.1.8.3", "shop/web-b", 1500, 2000),
            reserved("10.1.8.5", "shop/web-c", 0, 2000),
            reserved("10.1.8.2", "shop/web-d", 0, 900),
        ];
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        // .2 expired; .3 is still web-b's sticky address: last.
        assert_eq!(
            reserved_order(&es, Some("shop/web-new"), 1000),
            vec![ip("10.1.8.5"), ip("10.1.8.9"), ip("10.1.8.3")]
        );
        // web-b itself has first call on .3.
        assert_eq!(
            reserved_order(&es, Some("shop/web-b"), 1000)[0],
            ip("10.1.8.3")
        );
        // After the sticky window: plain lowest first.
        assert_eq!(reserved_order(&es, None, 1600)[0], ip("10.1.8.3"));
        assert!(reserved_order(&es, None, 2000).is_empty());
    }

    #[test]
    fn an_app_reservation_admits_every_pod_of_the_app_and_only_them() {
        let r = crate::model::Reservation {
            pod: "shop/web-a".into(),
            until: 2000,
            app: Some("shop".into()),
        };
        assert!(!r.excludes(Some("shop/web-a"), 1000));
        assert!(!r.excludes(Some("shop/web-b"), 1000));
        assert!(r.excludes(Some("shopx/web-b"), 1000));
        assert!(r.excludes(Some("blog/web-a"), 1000));
        assert!(r.excludes(None, 1000));
        assert!(!r.excludes(None, 2000));
        let sticky = crate::model::Reservation { app: None, ..r };
        assert!(sticky.excludes(Some("shop/web-b"), 1000));
        assert!(!sticky.excludes(Some("shop/web-a"), 1000));
    }

    #[test]
    fn bind_and_unbind_keep_order_and_settings() {
        let req = |pool: &str, f: Option<bool>, r: Option<u64>| BindRequest {
            app: "shop".into(),
            pool: pool.into(),
            shared_fallback: f,
            reserve_secs: r,
        };
        let b = bind(None, &req("p1", None, None)).unwrap();
        assert_eq!(b, binding("shop", &["p1"], false));
        let b = bind(Some(b), &req("p2", Some(true), Some(60))).unwrap();
        let b = bind(Some(b), &req("p1", None, None)).unwrap();
        assert_eq!(b.pools, names(&["p1", "p2"]));
        assert!(b.shared_fallback);
        assert_eq!(b.reserve_secs, 60);
        let b = unbind(b, "p1").unwrap().unwrap();
        assert_eq!(b.pools, names(&["p2"]));
        assert!(matches!(
            unbind(b.clone(), "p9"),
            Err(IpamError::NotBound { app, pool }) if app == "shop" && pool == "p9"
        ));
        assert_eq!(unbind(b, "p2").unwrap(), None);
        for bad in ["", "Shop", "-shop", "a/b", &"a".repeat(64)] {
            let r = BindRequest {
                app: bad.into(),
                ..req("p1", None, None)
            };
            assert!(matches!(bind(None, &r), Err(IpamError::InvalidRequest(_))));
        }
    }

    #[test]
    fn ranges_list_bound_pools_per_app() {
        let pool = |n: &str, c: &str, g: &str| Pool::parse(n, c, g, 8, 4, &[]).unwrap();
        let pools = [
            pool("shop1", "10.1.8.0/27", "10.1.8.1"),
            pool("both", "10.1.9.0/28", "10.1.9.1"),
            pool("free", "10.1.10.0/24", "10.1.10.1"),
        ];
        let bs = [
            binding("shop", &["shop1", "both"], false),
            binding("blog", &["both"], false),
        ];
        let all = ranges(&bs, &pools, None);
        let got: Vec<_> = all
            .iter()
            .map(|r| (r.app.as_str(), r.cidr.to_string(), r.shared_with.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("blog", "10.1.9.0/28".to_string(), names(&["shop"])),
                ("shop", "10.1.8.0/27".to_string(), vec![]),
                ("shop", "10.1.9.0/28".to_string(), names(&["blog"])),
            ]
        );
        assert_eq!(ranges(&bs, &pools, Some("shop")).len(), 2);
        assert!(ranges(&bs, &pools, Some("web")).is_empty());
    }

    #[test]
    fn stranded_finds_foreign_or_anonymous_allocations() {
        let att = |pool: &str, ns: Option<&str>| Attachment {
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: "n".into(),
            pod_namespace: ns.map(String::from),
            pod_name: Some("p".into()),
            node: "n1".into(),
            network: None,
            ip: "10.1.8.2".parse().unwrap(),
            prefix_len: 27,
            gateway: "10.1.8.1".parse().unwrap(),
            vlan: Vlan::new(8).unwrap(),
            pool: pool.into(),
            block: "10.1.8.0/28".parse().unwrap(),
            seq: 1,
            since: 0,
        };
        let apps = names(&["shop"]);
        let atts = [att("p", Some("shop")), att("q", Some("web"))];
        assert_eq!(stranded(&atts, "p", &apps), None);
        let atts = [att("p", Some("shop")), att("p", Some("web"))];
        assert_eq!(
            stranded(&atts, "p", &apps).and_then(|a| a.pod_namespace.as_deref()),
            Some("web")
        );
        assert!(stranded(&[att("p", None)], "p", &apps).is_some());
    }
}
