//! Pods of this node that were deleted, and whether the platform asked
//! (docs/monitoring.md#deleted-pods). The rules:
//!
//! * a deletion is the apiserver's `DELETED` watch event of a pod bound to
//!   this node. The object in it is the pod's last state, so a mark set
//!   before the deletion is in it; a list poll would miss a pod that went
//!   between two lists, and with it the mark;
//! * asked by the platform = the pod carries [`REMOVAL_ANNOTATION`]: core
//!   sets it before every scale-down, version removal and app removal it
//!   makes. Anything else (by hand, an API eviction, another controller)
//!   counts as `other`;
//! * every namespace with a pod on this node has both counters from first
//!   sight, at 0, so a rule's `increase()` sees the first deletion;
//! * deletions while the watch is broken are not counted: the relist that
//!   follows shows only that a pod is gone, not its last state.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use leengine_store::region::{REMOVAL_ANNOTATION, REMOVAL_BY_PLATFORM};

use crate::agent::{stopped, Shared};

/// Below the client's 30 s read timeout: an idle watch ends cleanly first.
const WATCH_SECS: u32 = 25;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    Platform,
    Other,
}

impl By {
    pub fn label(self) -> &'static str {
        match self {
            By::Platform => "platform",
            By::Other => "other",
        }
    }
}

/// Pure: who asked for this deleted pod's deletion, from its last state.
pub fn by(pod: &Pod) -> By {
    let mark = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REMOVAL_ANNOTATION));
    if mark.map(String::as_str) == Some(REMOVAL_BY_PLATFORM) {
        By::Platform
    } else {
        By::Other
    }
}

/// `(namespace, app)` of a pod; the app as metrics label it elsewhere.
fn owner(pod: &Pod) -> Option<(String, String)> {
    let ns = pod.metadata.namespace.clone()?;
    let app = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(leengine_apiserver::APP_LABEL))
        .cloned()
        .unwrap_or_else(|| ns.clone());
    Some((ns, app))
}

/// Deletions per `(namespace, app)`: `[platform, other]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deletions {
    counts: BTreeMap<(String, String), [u64; 2]>,
}

impl Deletions {
    pub fn seen(&mut self, pod: &Pod) {
        if let Some(k) = owner(pod) {
            self.counts.entry(k).or_default();
        }
    }

    pub fn deleted(&mut self, pod: &Pod) -> Option<By> {
        let k = owner(pod)?;
        let b = by(pod);
        self.counts.entry(k).or_default()[usize::from(b == By::Other)] += 1;
        Some(b)
    }

    /// `(namespace, app, by, count)`, every namespace with both.
    pub fn rows(&self) -> Vec<(String, String, By, u64)> {
        self.counts
            .iter()
            .flat_map(|((ns, app), c)| {
                [(By::Platform, c[0]), (By::Other, c[1])]
                    .map(|(b, n)| (ns.clone(), app.clone(), b, n))
            })
            .collect()
    }
}

/// Counts this node's pod deletions until shutdown.
pub async fn run(sh: Arc<Shared>, client: leengine_apiserver::Client) {
    let api: Api<Pod> = Api::all(client);
    let fields = format!("spec.nodeName={}", sh.cfg.node);
    let mut failing = false;
    loop {
        match follow(&sh, &api, &fields).await {
            Ok(()) => return,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "pod deletions not watched; retrying");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(sh.cfg.scan_interval) => {}
            _ = stopped(sh.shutdown.clone()) => return,
        }
    }
}

/// List, then watch from the list's revision; `Ok` only at shutdown.
async fn follow(sh: &Shared, api: &Api<Pod>, fields: &str) -> Result<(), String> {
    let list = api
        .list(&ListParams::default().fields(fields))
        .await
        .map_err(|e| e.to_string())?;
    {
        let mut d = sh.deletions.lock().await;
        list.items.iter().for_each(|p| d.seen(p));
    }
    let mut rv = list.metadata.resource_version.unwrap_or_default();
    loop {
        let wp = WatchParams::default().fields(fields).timeout(WATCH_SECS);
        let mut events = api
            .watch(&wp, &rv)
            .await
            .map_err(|e| e.to_string())?
            .boxed();
        loop {
            let ev = tokio::select! {
                ev = events.try_next() => ev.map_err(|e| e.to_string())?,
                _ = stopped(sh.shutdown.clone()) => return Ok(()),
            };
            let Some(ev) = ev else { break };
            match ev {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                    rv = p.metadata.resource_version.clone().unwrap_or(rv);
                    sh.deletions.lock().await.seen(&p);
                }
                WatchEvent::Deleted(p) => {
                    rv = p.metadata.resource_version.clone().unwrap_or(rv);
                    let b = sh.deletions.lock().await.deleted(&p);
                    tracing::info!(namespace = ?p.metadata.namespace, pod = ?p.metadata.name,
                        by = ?b.map(By::label), "pod deleted");
                }
                WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                // 410 Gone and the like: relist.
                WatchEvent::Error(s) => return Err(format!("watch: {s:?}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, mark: Option<&str>) -> Pod {
        let mut meta =
            serde_json::json!({"name": "p", "namespace": ns, "labels": {"leengine.io/app": "web"}});
        if let Some(m) = mark {
            meta["annotations"] = serde_json::json!({ REMOVAL_ANNOTATION: m });
        }
        serde_json::from_value(serde_json::json!({ "metadata": meta })).unwrap()
    }

    #[test]
    fn only_the_platforms_mark_makes_a_deletion_asked() {
        assert_eq!(by(&pod("web-u1", Some("platform"))), By::Platform);
        assert_eq!(by(&pod("web-u1", None)), By::Other);
        assert_eq!(by(&pod("web-u1", Some("someone"))), By::Other);
    }

    #[test]
    fn namespaces_count_from_zero_once_seen() {
        let mut d = Deletions::default();
        d.seen(&pod("web-u1", None));
        let zero = |b| ("web-u1".to_string(), "web".to_string(), b, 0);
        assert_eq!(d.rows(), [zero(By::Platform), zero(By::Other)]);
        assert_eq!(d.deleted(&pod("web-u1", None)), Some(By::Other));
        assert_eq!(
            d.deleted(&pod("web-u1", Some("platform"))),
            Some(By::Platform)
        );
        assert_eq!(d.deleted(&pod("web-u1", None)), Some(By::Other));
        let counts: Vec<u64> = d.rows().iter().map(|r| r.3).collect();
        assert_eq!(counts, [1, 2]);
    }
}
