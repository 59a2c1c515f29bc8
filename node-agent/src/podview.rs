//! Whether the apiserver lets a reclaim go ahead (pure).
//!
//! With a kubeconfig, the netns verdict alone never frees an address:
//! * an allocation whose IP is the podIP of a live pod bound to this node
//!   (neither terminated nor being deleted) is never reclaimed, whatever
//!   its netns says;
//! * when the pods could not be listed, nothing is reclaimed: "cannot ask"
//!   never counts as "gone";
//! * a withheld allocation stays a suspect, so the first scan whose view
//!   allows it releases it (its grace period is not started over).
//!
//! Without a kubeconfig the netns verdict stands alone.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use leengine_ipam::Attachment;
use serde::Serialize;

/// The apiserver's answer for this node, fetched once per scan that has
/// something to reclaim.
#[derive(Clone, Debug)]
pub enum View {
    /// No kubeconfig: not asked.
    Unconfigured,
    /// Asked, no answer (unreachable, refused): the reason.
    Unavailable(String),
    /// IP → `namespace/name` of every live pod bound to the node.
    Pods(BTreeMap<Ipv4Addr, String>),
}

/// Why an allocation ready for reclaim was left alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "reason")]
pub enum Why {
    /// A live pod holds this IP.
    HeldBy { pod: String },
    /// The apiserver could not be asked.
    NoApiserver { error: String },
}

/// An allocation withheld from reclaim, as reported by a scan.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Withheld {
    pub container_id: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    #[serde(flatten)]
    pub why: Why,
}

pub fn withhold(view: &View, a: &Attachment) -> Option<Why> {
    match view {
        View::Unconfigured => None,
        View::Unavailable(error) => Some(Why::NoApiserver {
            error: error.clone(),
        }),
        View::Pods(live) => live.get(&a.ip).map(|pod| Why::HeldBy { pod: pod.clone() }),
    }
}

/// Splits the tracker's candidates into those to reclaim and those withheld.
pub fn split(view: &View, candidates: Vec<Attachment>) -> (Vec<Attachment>, Vec<Withheld>) {
    let mut go = Vec::new();
    let mut held = Vec::new();
    for a in candidates {
        match withhold(view, &a) {
            None => go.push(a),
            Some(why) => held.push(Withheld {
                container_id: a.container_id,
                ifname: a.ifname,
                ip: a.ip,
                why,
            }),
        }
    }
    (go, held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leak::{LeakTracker, Observation};
    use std::time::Duration;

    fn att(cid: &str, last: u8) -> Attachment {
        Attachment {
            ip: Ipv4Addr::new(10, 0, 0, last),
            ..leengine_attach::fake::attachment(cid, 1)
        }
    }

    fn pods(held: &[(u8, &str)]) -> View {
        View::Pods(
            held.iter()
                .map(|(last, who)| (Ipv4Addr::new(10, 0, 0, *last), who.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_live_pods_ip_is_never_reclaimed() {
        let (go, held) = split(
            &pods(&[(2, "shop/web-1")]),
            vec![att("dead", 2), att("gone", 3)],
        );
        assert_eq!(go, vec![att("gone", 3)]);
        assert_eq!(held.len(), 1);
        assert_eq!(
            held[0].why,
            Why::HeldBy {
                pod: "shop/web-1".into()
            }
        );
    }

    #[test]
    fn an_unreachable_apiserver_reclaims_nothing() {
        let view = View::Unavailable("connection refused".into());
        let (go, held) = split(&view, vec![att("a", 2), att("b", 3)]);
        assert!(go.is_empty());
        assert!(held
            .iter()
            .all(|w| matches!(&w.why, Why::NoApiserver { error } if error.contains("refused"))));
    }

    #[test]
    fn without_a_kubeconfig_the_netns_verdict_stands() {
        let (go, held) = split(&View::Unconfigured, vec![att("a", 2)]);
        assert_eq!((go.len(), held.len()), (1, 0));
    }

    #[test]
    fn a_withheld_suspect_is_released_by_the_first_view_that_allows_it() {
        let grace = Duration::from_secs(1);
        let mut t = LeakTracker::new(grace);
        let a = att("a", 2);
        let scan = [(a.clone(), Observation::Dead)];
        t.observe(0, 1_000_000, &scan);
        let ready = t.observe(1_000, 1_000_000, &scan);
        let (go, _) = split(&View::Unavailable("timeout".into()), ready);
        assert!(go.is_empty());
        // Not forgotten: the next scan offers it again, and with a view that
        // allows it, it goes at once, with no new grace period.
        let again = t.observe(1_001, 1_000_000, &scan);
        let (go, _) = split(&pods(&[]), again);
        assert_eq!(go, vec![a]);
    }
}
