//! Leak classification (pure): allocated in etcd but not alive anywhere.
//!
//! An attachment is *alive* when any source vouches for it: the apiserver
//! lists a non-terminal pod with its IP (or the same pod identity still
//! waiting for an IP), or its node's fresh node-agent report lists it.
//! It is *leaked* only when something could have vouched for it and nothing
//! did (apiserver consulted, node gone, or a fresh report of its node), and
//! it is older than the grace period — unless its node is gone (unknown to
//! the apiserver and unregistered in etcd), which flags it at once. Without
//! the apiserver no node is ever gone. With no evidence either way it is
//! *unknown*, never leaked.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::{Attachment, NodeAttachmentsReport};

/// A pod as the apiserver sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub ips: Vec<Ipv4Addr>,
    /// Phase Succeeded or Failed: its sandbox is gone, its IP is not in use.
    pub terminal: bool,
}

/// What the apiserver told us, when it was consulted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiView {
    pub pods: Vec<PodInfo>,
    pub nodes: BTreeSet<String>,
}

/// Everything the classification needs, gathered from etcd and the apiserver.
#[derive(Clone, Debug, Default)]
pub struct CheckInput {
    pub attachments: Vec<Attachment>,
    /// Nodes whose registration key exists in etcd.
    pub registered_nodes: BTreeSet<String>,
    pub reports: BTreeMap<String, NodeAttachmentsReport>,
    pub api: Option<ApiView>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Unix seconds "now".
    pub now: u64,
    /// An allocation younger than this is never leaked (unless its node is gone).
    pub grace_secs: u64,
    /// A node report older than this is ignored.
    pub max_report_age_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LeakReason {
    /// Neither registered in etcd nor known to the apiserver.
    NodeGone,
    /// No pod and no live attachment for it after the grace period.
    NotAlive,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leak {
    pub reason: LeakReason,
    pub age_secs: u64,
    pub attachment: Attachment,
}

/// `cnictl check -o json`; also the input of `cnictl release --from-report`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// etcd prefix the report was made for; a release refuses another prefix's report.
    pub prefix: String,
    pub generated_at: u64,
    pub grace_secs: u64,
    pub apiserver_consulted: bool,
    pub allocated: usize,
    pub alive: usize,
    pub in_grace: usize,
    pub leaked: Vec<Leak>,
    /// No source could vouch either way (no apiserver, node registered, no fresh report).
    pub unknown: Vec<Attachment>,
}

/// Classifies every attachment. Pure; see the module docs for the rules.
pub fn classify(prefix: &str, input: &CheckInput, opts: &CheckOptions) -> CheckReport {
    let live = Liveness::new(input, opts);
    let mut report = CheckReport {
        prefix: prefix.to_string(),
        generated_at: opts.now,
        grace_secs: opts.grace_secs,
        apiserver_consulted: input.api.is_some(),
        allocated: input.attachments.len(),
        alive: 0,
        in_grace: 0,
        leaked: Vec::new(),
        unknown: Vec::new(),
    };
    for a in &input.attachments {
        match live.verdict(a, opts) {
            Verdict::Alive => report.alive += 1,
            Verdict::InGrace => report.in_grace += 1,
            Verdict::Unknown => report.unknown.push(a.clone()),
            Verdict::Leaked(reason) => report.leaked.push(Leak {
                reason,
                age_secs: opts.now.saturating_sub(a.since),
                attachment: a.clone(),
            }),
        }
    }
    report.leaked.sort_by_key(|l| l.attachment.ip);
    report.unknown.sort_by_key(|a| a.ip);
    report
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Alive,
    InGrace,
    Unknown,
    Leaked(LeakReason),
}

struct Liveness<'a> {
    input: &'a CheckInput,
    pod_ips: BTreeSet<Ipv4Addr>,
    /// Non-terminal pods that have no IP yet (sandbox being set up).
    pending_pods: BTreeSet<(String, String)>,
    fresh_reports: BTreeMap<&'a str, Fresh>,
}

struct Fresh {
    scanned_at: u64,
    handles: BTreeSet<(String, String)>,
    ips: BTreeSet<Ipv4Addr>,
}

impl<'a> Liveness<'a> {
    fn new(input: &'a CheckInput, opts: &CheckOptions) -> Self {
        let mut pod_ips = BTreeSet::new();
        let mut pending_pods = BTreeSet::new();
        for pod in input.api.iter().flat_map(|v| &v.pods) {
            if pod.terminal {
                continue;
            }
            pod_ips.extend(pod.ips.iter().copied());
            if pod.ips.is_empty() {
                pending_pods.insert((pod.namespace.clone(), pod.name.clone()));
            }
        }
        let fresh_reports = input
            .reports
            .iter()
            .filter(|(_, r)| r.scanned_at + opts.max_report_age_secs >= opts.now)
            .map(|(node, r)| {
                let mut f = Fresh {
                    scanned_at: r.scanned_at,
                    handles: BTreeSet::new(),
                    ips: BTreeSet::new(),
                };
                for l in &r.attachments {
                    f.handles.insert((l.container_id.clone(), l.ifname.clone()));
                    f.ips.insert(l.ip);
                }
                (node.as_str(), f)
            })
            .collect();
        Self {
            input,
            pod_ips,
            pending_pods,
            fresh_reports,
        }
    }

    /// Gone = unknown to the apiserver *and* unregistered in etcd. Without
    /// the apiserver a missing registration proves nothing: it sits on the
    /// node-agent's lease, which lapses whenever the agent is down, upgraded
    /// or cut off from etcd while the node's pods keep running.
    fn node_gone(&self, node: &str) -> bool {
        !self.input.registered_nodes.contains(node)
            && self
                .input
                .api
                .as_ref()
                .is_some_and(|api| !api.nodes.contains(node))
    }

    fn verdict(&self, a: &Attachment, opts: &CheckOptions) -> Verdict {
        let report = self.fresh_reports.get(a.node.as_str());
        let alive_api = self.pod_ips.contains(&a.ip)
            || matches!((&a.pod_namespace, &a.pod_name),
                (Some(ns), Some(n)) if self.pending_pods.contains(&(ns.clone(), n.clone())));
        let alive_node = report.is_some_and(|r| {
            r.ips.contains(&a.ip)
                || r.handles
                    .contains(&(a.container_id.clone(), a.ifname.clone()))
        });
        if alive_api || alive_node {
            return Verdict::Alive;
        }
        let gone = self.node_gone(&a.node);
        if gone {
            return Verdict::Leaked(LeakReason::NodeGone);
        }
        // A scan older than the allocation says nothing about it.
        let evidence = self.input.api.is_some() || report.is_some_and(|r| r.scanned_at >= a.since);
        if !evidence {
            return Verdict::Unknown;
        }
        if opts.now.saturating_sub(a.since) < opts.grace_secs {
            return Verdict::InGrace;
        }
        Verdict::Leaked(LeakReason::NotAlive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LiveAttachment;

    const NOW: u64 = 100_000;
    const GRACE: u64 = 900;

    fn att(n: u8, node: &str, age: u64) -> Attachment {
        Attachment {
            container_id: format!("c{n}"),
            ifname: "eth0".into(),
            netns: format!("/run/netns/c{n}"),
            pod_namespace: Some("ns".into()),
            pod_name: Some(format!("pod{n}")),
            node: node.into(),
            network: None,
            ip: Ipv4Addr::new(10, 1, 0, n),
            prefix_len: 22,
            gateway: Ipv4Addr::new(10, 1, 0, 1),
            vlan: crate::Vlan::new(100).unwrap(),
            pool: "p".into(),
            block: "10.1.0.0/28".parse().unwrap(),
            seq: u64::from(n),
            since: NOW - age,
        }
    }

    fn pod(n: u8, ips: &[u8], terminal: bool) -> PodInfo {
        PodInfo {
            namespace: "ns".into(),
            name: format!("pod{n}"),
            node: Some("n1".into()),
            ips: ips.iter().map(|i| Ipv4Addr::new(10, 1, 0, *i)).collect(),
            terminal,
        }
    }

    fn opts() -> CheckOptions {
        CheckOptions {
            now: NOW,
            grace_secs: GRACE,
            max_report_age_secs: 600,
        }
    }

    fn leaked_ips(r: &CheckReport) -> Vec<u8> {
        r.leaked
            .iter()
            .map(|l| l.attachment.ip.octets()[3])
            .collect()
    }

    #[test]
    fn apiserver_view_decides_after_grace() {
        let input = CheckInput {
            attachments: vec![
                att(2, "n1", 5000), // pod alive with this IP
                att(3, "n1", 5000), // no pod: leaked
                att(4, "n1", 60),   // no pod but young: in grace
                att(5, "n1", 5000), // pod finished: leaked
                att(6, "n1", 5000), // pod pending without IP: alive
            ],
            registered_nodes: ["n1".to_string()].into(),
            reports: BTreeMap::new(),
            api: Some(ApiView {
                pods: vec![pod(2, &[2], false), pod(5, &[5], true), pod(6, &[], false)],
                nodes: ["n1".to_string()].into(),
            }),
        };
        let r = classify("/leengine", &input, &opts());
        assert_eq!(leaked_ips(&r), vec![3, 5]);
        assert_eq!((r.alive, r.in_grace, r.unknown.len()), (2, 1, 0));
        assert!(r.leaked.iter().all(|l| l.reason == LeakReason::NotAlive));
        assert_eq!(r.leaked[0].age_secs, 5000);
        assert_eq!(r.prefix, "/leengine");
    }

    #[test]
    fn gone_node_is_flagged_at_once_unless_alive() {
        let input = CheckInput {
            attachments: vec![att(2, "dead", 10), att(3, "dead", 10)],
            registered_nodes: BTreeSet::new(),
            reports: BTreeMap::new(),
            api: Some(ApiView {
                pods: vec![pod(3, &[3], false)],
                nodes: BTreeSet::new(),
            }),
        };
        let r = classify("/x", &input, &opts());
        assert_eq!(leaked_ips(&r), vec![2]);
        assert_eq!(r.leaked[0].reason, LeakReason::NodeGone);
        assert_eq!(r.alive, 1);
    }

    #[test]
    fn unregistered_node_without_apiserver_is_unknown() {
        // The agent's lease lapsed (agent down or cut off from etcd): its
        // pods may well be running, and nothing but the apiserver can tell.
        let input = CheckInput {
            attachments: vec![att(2, "lapsed", 5000), att(3, "lapsed", 10)],
            registered_nodes: BTreeSet::new(),
            reports: BTreeMap::new(),
            api: None,
        };
        let r = classify("/x", &input, &opts());
        assert!(r.leaked.is_empty(), "{:?}", r.leaked);
        assert_eq!(r.unknown.len(), 2);
    }

    #[test]
    fn unregistered_node_without_apiserver_still_judged_by_its_fresh_report() {
        let input = CheckInput {
            attachments: vec![att(2, "lapsed", 5000), att(3, "lapsed", 5000)],
            registered_nodes: BTreeSet::new(),
            reports: [(
                "lapsed".to_string(),
                NodeAttachmentsReport {
                    node: "lapsed".into(),
                    scanned_at: NOW - 30,
                    attachments: vec![LiveAttachment {
                        container_id: "c2".into(),
                        ifname: "eth0".into(),
                        ip: Ipv4Addr::new(10, 1, 0, 2),
                    }],
                },
            )]
            .into(),
            api: None,
        };
        let r = classify("/x", &input, &opts());
        assert_eq!(leaked_ips(&r), vec![3]);
        assert_eq!(r.leaked[0].reason, LeakReason::NotAlive);
        assert_eq!(r.alive, 1);
    }

    #[test]
    fn node_known_to_apiserver_is_not_gone() {
        let input = CheckInput {
            attachments: vec![att(2, "n1", 10)],
            api: Some(ApiView {
                pods: vec![],
                nodes: ["n1".to_string()].into(),
            }),
            ..Default::default()
        };
        let r = classify("/x", &input, &opts());
        assert_eq!((r.in_grace, r.leaked.len()), (1, 0));
    }

    #[test]
    fn node_reports_without_apiserver() {
        let report = |node: &str, scanned_at: u64, live: &[u8]| NodeAttachmentsReport {
            node: node.into(),
            scanned_at,
            attachments: live
                .iter()
                .map(|n| LiveAttachment {
                    container_id: format!("c{n}"),
                    ifname: "eth0".into(),
                    ip: Ipv4Addr::new(10, 1, 0, *n),
                })
                .collect(),
        };
        let input = CheckInput {
            attachments: vec![
                att(2, "n1", 5000), // listed: alive
                att(3, "n1", 5000), // not listed, fresh report: leaked
                att(4, "n2", 5000), // n2's report is stale: unknown
                att(5, "n3", 5000), // n3 has no report: unknown
                att(6, "n1", 5),    // newer than n1's scan: unknown
            ],
            registered_nodes: ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect(),
            reports: [
                ("n1".to_string(), report("n1", NOW - 30, &[2])),
                ("n2".to_string(), report("n2", NOW - 3600, &[])),
            ]
            .into(),
            api: None,
        };
        let r = classify("/x", &input, &opts());
        assert_eq!(leaked_ips(&r), vec![3]);
        let unknown: Vec<u8> = r.unknown.iter().map(|a| a.ip.octets()[3]).collect();
        assert_eq!(unknown, vec![4, 5, 6]);
        assert_eq!(r.alive, 1);
        assert!(!r.apiserver_consulted);
    }

    #[test]
    fn either_source_vouching_is_enough() {
        let input = CheckInput {
            attachments: vec![att(2, "n1", 5000)],
            registered_nodes: ["n1".to_string()].into(),
            reports: [(
                "n1".to_string(),
                NodeAttachmentsReport {
                    node: "n1".into(),
                    scanned_at: NOW,
                    attachments: vec![LiveAttachment {
                        container_id: "c2".into(),
                        ifname: "eth0".into(),
                        ip: Ipv4Addr::new(10, 1, 0, 2),
                    }],
                },
            )]
            .into(),
            api: Some(ApiView::default()),
        };
        let r = classify("/x", &input, &opts());
        assert_eq!((r.alive, r.leaked.len()), (1, 0));
    }
}
