//! What every domain's upstream should be, from what the Cells last said.
//! Pure: the watchers fill [`World`], [`World::upstreams`] answers.
//!
//! Rules (docs/discovery.md):
//! - an endpoint serves when `conditions.ready` is true and it is not
//!   terminating: readiness gates entry, termination is an immediate exit;
//! - the port is the bound Service port (by name, else its first);
//! - pods named by a live drain request leave their domain's upstream;
//! - a Cell that was listed once keeps its last known slices while it is
//!   unreachable; a domain drawing on a Cell never listed yet is not
//!   decided at all (writing it would drop that Cell's peers).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// A Service in a Cell.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    pub cell: String,
    pub namespace: String,
    pub service: String,
}

/// An SLB domain: `/slb/{group}/domains/{domain}/`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainRef {
    pub group: String,
    pub domain: String,
}

impl std::fmt::Display for DomainRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.group, self.domain)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub ready: bool,
    pub terminating: bool,
    /// The pod behind it (`targetRef` of kind Pod).
    pub pod: Option<String>,
}

/// The part of one EndpointSlice discovery uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    pub namespace: String,
    /// `kubernetes.io/service-name`.
    pub service: String,
    /// `(name, port)` in the Service's order.
    pub ports: Vec<(Option<String>, u16)>,
    pub endpoints: Vec<Endpoint>,
}

/// One Cell's slices by `(namespace, slice name)`.
pub type CellSlices = BTreeMap<(String, String), Slice>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub target: DomainRef,
    /// Service port name; the first port when `None`.
    pub port: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drain {
    pub id: String,
    pub target: DomainRef,
    pub cell: String,
    pub namespace: String,
    pub pods: BTreeSet<String>,
}

impl Drain {
    fn covers(&self, target: &DomainRef, svc: &ServiceRef, pod: Option<&str>) -> bool {
        &self.target == target
            && self.cell == svc.cell
            && self.namespace == svc.namespace
            && pod.is_some_and(|p| self.pods.contains(p))
    }
}

/// The domains whose servers discovery must still take out: those bound
/// `before` and not `now`, and those already `pending` and still unbound.
/// An unbound domain's last upstream names pods that are going away, and
/// their addresses go back to the pools for other pods: kept, they would
/// send the domain's requests to whoever gets them next. Rebinding cancels.
pub fn released(
    before: &BTreeSet<DomainRef>,
    now: &BTreeSet<DomainRef>,
    pending: &BTreeSet<DomainRef>,
) -> BTreeSet<DomainRef> {
    before
        .iter()
        .chain(pending)
        .filter(|d| !now.contains(*d))
        .cloned()
        .collect()
}

/// Everything the upstreams are computed from.
#[derive(Clone, Debug, Default)]
pub struct World {
    /// Registered Cells: `None` until the first full list succeeded.
    pub cells: BTreeMap<String, Option<CellSlices>>,
    /// Plain Services bound by `{prefix}/discovery/services/`.
    pub bindings: BTreeMap<ServiceRef, Binding>,
    /// Apps' Services, from core's `{prefix}/apps/` records.
    pub app_bindings: BTreeMap<ServiceRef, Binding>,
    pub drains: Vec<Drain>,
}

impl World {
    /// Every domain some binding points at, decided or not.
    pub fn bound_domains(&self) -> BTreeSet<DomainRef> {
        self.bindings
            .values()
            .chain(self.app_bindings.values())
            .map(|b| b.target.clone())
            .collect()
    }

    /// The servers of every domain that can be decided now.
    pub fn upstreams(&self) -> BTreeMap<DomainRef, BTreeSet<SocketAddr>> {
        let mut out: BTreeMap<DomainRef, BTreeSet<SocketAddr>> = BTreeMap::new();
        let mut undecided = BTreeSet::new();
        for (svc, b) in self.bindings.iter().chain(&self.app_bindings) {
            let servers = out.entry(b.target.clone()).or_default();
            match self.cells.get(&svc.cell) {
                // Not a registered Cell: it has nothing to contribute.
                None => {}
                Some(None) => {
                    undecided.insert(b.target.clone());
                }
                Some(Some(slices)) => {
                    servers.extend(self.serving(svc, b, slices));
                }
            }
        }
        out.retain(|d, _| !undecided.contains(d));
        out
    }

    fn serving<'a>(
        &'a self,
        svc: &'a ServiceRef,
        b: &'a Binding,
        slices: &'a CellSlices,
    ) -> impl Iterator<Item = SocketAddr> + 'a {
        slices
            .values()
            .filter(move |s| s.namespace == svc.namespace && s.service == svc.service)
            .filter_map(move |s| Some((s, port_of(&s.ports, b.port.as_deref())?)))
            .flat_map(move |(s, port)| {
                s.endpoints
                    .iter()
                    .filter(|e| e.ready && !e.terminating)
                    .filter(move |e| {
                        !self
                            .drains
                            .iter()
                            .any(|d| d.covers(&b.target, svc, e.pod.as_deref()))
                    })
                    .map(move |e| SocketAddr::new(e.ip, port))
            })
    }
}

fn port_of(ports: &[(Option<String>, u16)], want: Option<&str>) -> Option<u16> {
    match want {
        None => ports.first().map(|p| p.1),
        Some(name) => ports
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name))
            .map(|p| p.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, ready: bool, terminating: bool, pod: &str) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            ready,
            terminating,
            pod: Some(pod.into()),
        }
    }

    fn slice(svc: &str, port: u16, eps: Vec<Endpoint>) -> Slice {
        Slice {
            namespace: "ns".into(),
            service: svc.into(),
            ports: vec![(Some("http".into()), port)],
            endpoints: eps,
        }
    }

    fn svc(cell: &str, name: &str) -> ServiceRef {
        ServiceRef {
            cell: cell.into(),
            namespace: "ns".into(),
            service: name.into(),
        }
    }

    fn dom(d: &str) -> DomainRef {
        DomainRef {
            group: "g".into(),
            domain: d.into(),
        }
    }

    fn world(cells: Vec<(&str, Option<Vec<Slice>>)>, binds: Vec<(ServiceRef, &str)>) -> World {
        World {
            cells: cells
                .into_iter()
                .map(|(c, s)| {
                    let slices = s.map(|v| {
                        v.into_iter()
                            .enumerate()
                            .map(|(i, s)| (("ns".to_string(), format!("s{i}")), s))
                            .collect()
                    });
                    (c.to_string(), slices)
                })
                .collect(),
            bindings: binds
                .into_iter()
                .map(|(s, d)| {
                    (
                        s,
                        Binding {
                            target: dom(d),
                            port: None,
                        },
                    )
                })
                .collect(),
            app_bindings: BTreeMap::new(),
            drains: vec![],
        }
    }

    fn addrs(v: &[&str]) -> BTreeSet<SocketAddr> {
        v.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn only_ready_endpoints_that_are_not_terminating_serve() {
        let w = world(
            vec![(
                "c1",
                Some(vec![slice(
                    "web",
                    8080,
                    vec![
                        ep("10.0.0.1", true, false, "a"),
                        ep("10.0.0.2", false, false, "b"),
                        // Terminating but still passing its probe (ready
                        // stays false for it in Kubernetes; serving may be true).
                        ep("10.0.0.3", true, true, "c"),
                    ],
                )]),
            )],
            vec![(svc("c1", "web"), "a.com")],
        );
        assert_eq!(w.upstreams()[&dom("a.com")], addrs(&["10.0.0.1:8080"]));
    }

    #[test]
    fn cells_are_merged_and_other_services_are_ignored() {
        let w = world(
            vec![
                (
                    "c1",
                    Some(vec![
                        slice("web", 8080, vec![ep("10.0.0.1", true, false, "a")]),
                        slice("other", 80, vec![ep("10.0.0.9", true, false, "z")]),
                    ]),
                ),
                (
                    "c2",
                    Some(vec![slice(
                        "web",
                        8080,
                        vec![ep("10.1.0.1", true, false, "a")],
                    )]),
                ),
            ],
            vec![(svc("c1", "web"), "a.com"), (svc("c2", "web"), "a.com")],
        );
        assert_eq!(
            w.upstreams()[&dom("a.com")],
            addrs(&["10.0.0.1:8080", "10.1.0.1:8080"])
        );
    }

    #[test]
    fn a_domain_drawing_on_a_cell_never_listed_is_not_decided() {
        let w = world(
            vec![
                (
                    "c1",
                    Some(vec![
                        slice("web", 8080, vec![ep("10.0.0.1", true, false, "a")]),
                        slice("api", 8080, vec![ep("10.0.0.2", true, false, "b")]),
                    ]),
                ),
                ("c2", None),
            ],
            vec![
                (svc("c1", "web"), "a.com"),
                (svc("c2", "web"), "a.com"),
                (svc("c1", "api"), "b.com"),
            ],
        );
        let up = w.upstreams();
        assert!(!up.contains_key(&dom("a.com")));
        assert_eq!(up[&dom("b.com")], addrs(&["10.0.0.2:8080"]));
    }

    #[test]
    fn an_unregistered_cell_contributes_nothing_and_empty_is_a_decision() {
        let w = world(vec![], vec![(svc("gone", "web"), "a.com")]);
        assert_eq!(w.upstreams()[&dom("a.com")], BTreeSet::new());
    }

    #[test]
    fn drained_pods_leave_only_their_domain_and_cell_and_a_service_has_one_domain() {
        let eps = || {
            vec![
                ep("10.0.0.1", true, false, "a"),
                ep("10.0.0.2", true, false, "b"),
            ]
        };
        let mut w = world(
            vec![
                ("c1", Some(vec![slice("web", 8080, eps())])),
                ("c2", Some(vec![slice("web", 8080, eps())])),
            ],
            vec![(svc("c1", "web"), "a.com"), (svc("c2", "web"), "a.com")],
        );
        // Same pod names and IPs in c2 (a test artefact) show the cell scoping.
        w.cells.get_mut("c2").unwrap().as_mut().unwrap().insert(
            ("ns".into(), "x".into()),
            slice("web", 8080, vec![ep("10.1.0.2", true, false, "b")]),
        );
        w.drains.push(Drain {
            id: "r0".into(),
            target: dom("b.com"),
            cell: "c1".into(),
            namespace: "ns".into(),
            pods: ["a".to_string()].into(),
        });
        w.drains.push(Drain {
            id: "r1".into(),
            target: dom("a.com"),
            cell: "c1".into(),
            namespace: "ns".into(),
            pods: ["b".to_string()].into(),
        });
        let up = w.upstreams();
        assert_eq!(
            up[&dom("a.com")],
            addrs(&["10.0.0.1:8080", "10.0.0.2:8080", "10.1.0.2:8080"]),
            "c2's 10.0.0.2 is pod b of c2, not drained"
        );
        w.cells.remove("c2");
        let up = w.upstreams();
        assert_eq!(
            up[&dom("a.com")],
            addrs(&["10.0.0.1:8080"]),
            "b.com's drain of pod a does not touch a.com"
        );
    }

    #[test]
    fn an_apps_service_and_a_plain_one_share_the_domain() {
        let mut w = world(
            vec![
                (
                    "c1",
                    Some(vec![slice(
                        "web",
                        8080,
                        vec![ep("10.0.0.1", true, false, "a")],
                    )]),
                ),
                (
                    "c2",
                    Some(vec![slice(
                        "app",
                        8080,
                        vec![ep("10.0.1.1", true, false, "b")],
                    )]),
                ),
            ],
            vec![(svc("c1", "web"), "a.com")],
        );
        w.app_bindings.insert(
            svc("c2", "app"),
            Binding {
                target: dom("a.com"),
                port: None,
            },
        );
        assert_eq!(
            w.upstreams()[&dom("a.com")],
            addrs(&["10.0.0.1:8080", "10.0.1.1:8080"])
        );
    }

    #[test]
    fn a_domain_losing_its_last_binding_is_released_until_bound_again() {
        let d = |n: &str| DomainRef {
            group: "public".into(),
            domain: n.into(),
        };
        let set = |v: &[&str]| v.iter().map(|n| d(n)).collect::<BTreeSet<_>>();
        let none = BTreeSet::new();
        // a.demo lost its binding; b.demo kept it.
        let r = released(&set(&["a.demo", "b.demo"]), &set(&["b.demo"]), &none);
        assert_eq!(r, set(&["a.demo"]));
        // Still pending while unbound, even when it was not bound last round.
        assert_eq!(released(&none, &none, &r), set(&["a.demo"]));
        // Bound again: nothing to take out.
        assert_eq!(released(&none, &set(&["a.demo"]), &r), none);
        // A domain never bound in this term is never touched.
        assert_eq!(released(&none, &none, &none), none);
    }

    #[test]
    fn bound_domains_include_undecided_ones() {
        let mut w = World::default();
        let target = DomainRef {
            group: "public".into(),
            domain: "shop.demo".into(),
        };
        w.cells.insert("c1".into(), None);
        w.app_bindings.insert(
            ServiceRef {
                cell: "c1".into(),
                namespace: "shop".into(),
                service: "app".into(),
            },
            Binding {
                target: target.clone(),
                port: None,
            },
        );
        assert!(w.upstreams().is_empty(), "c1 was never listed");
        assert_eq!(w.bound_domains(), BTreeSet::from([target]));
    }

    #[test]
    fn the_port_is_chosen_by_name_or_first() {
        let mut s = slice("web", 8080, vec![ep("10.0.0.1", true, false, "a")]);
        s.ports = vec![(Some("metrics".into()), 9100), (Some("http".into()), 8080)];
        let mut w = world(
            vec![("c1", Some(vec![s]))],
            vec![(svc("c1", "web"), "a.com")],
        );
        assert_eq!(w.upstreams()[&dom("a.com")], addrs(&["10.0.0.1:9100"]));
        w.bindings
            .values_mut()
            .for_each(|b| b.port = Some("http".into()));
        assert_eq!(w.upstreams()[&dom("a.com")], addrs(&["10.0.0.1:8080"]));
        w.bindings
            .values_mut()
            .for_each(|b| b.port = Some("nope".into()));
        assert_eq!(w.upstreams()[&dom("a.com")], BTreeSet::new());
    }
}
