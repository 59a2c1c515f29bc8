//! Drain before delete (the contract in docs/discovery.md, shared with
//! `leengine-discovery`): the reconciler names the pods that will go in
//! `{prefix}/drain/{group}/{domain}/{id}`, discovery takes them out of the
//! upstream and acknowledges in `{prefix}/drain-ack/{group}/{domain}/{id}`
//! once every live nginx agent applied it; only then are the pods deleted,
//! and the request removed. Without an ack within the timeout the deletion
//! goes ahead with a warning event on the app.
//!
//! The reconciler does not block on a drain: each pass calls [`step`] and
//! acts when it answers [`Progress::Acked`] or [`Progress::TimedOut`].

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::spec::Lb;
use crate::problem::ApiError;
use crate::store::{self, Db};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    pub cell: String,
    pub namespace: String,
    pub pods: Vec<String>,
    pub created: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainAck {
    pub revision: i64,
    pub acked: DateTime<Utc>,
}

/// What the pod picker needs to know about a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub name: String,
    pub ready: bool,
    pub scheduled: bool,
    pub created: Option<DateTime<Utc>>,
}

/// The `n` pods a scale-down removes: those already being drained first
/// (`draining`: their upstream exit is under way or done), then those
/// serving nobody (not scheduled, then not ready), then the youngest (the
/// least warmed up).
pub fn pick(pods: &[PodFacts], n: usize, draining: &BTreeSet<String>) -> Vec<String> {
    let mut v: Vec<&PodFacts> = pods.iter().collect();
    v.sort_by(|a, b| {
        (!draining.contains(&a.name), a.scheduled, a.ready)
            .cmp(&(!draining.contains(&b.name), b.scheduled, b.ready))
            .then_with(|| b.created.cmp(&a.created))
            .then_with(|| a.name.cmp(&b.name))
    });
    v.into_iter().take(n).map(|p| p.name.clone()).collect()
}

/// The id base of the drains of one version (or `all` of an app) in one
/// Cell; the namespace holds the app's uid. Each request appends its start
/// time, so an ack left from an earlier drain never answers a later one.
pub fn drain_base(namespace: &str, cell: &str, what: &str) -> String {
    format!("{}{what}.", cell_base(namespace, cell))
}

/// The id base of every drain of an app in one Cell.
pub fn cell_base(namespace: &str, cell: &str) -> String {
    format!("{namespace}.{cell}.")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Request written (or still there), no ack yet.
    Waiting,
    Acked,
    TimedOut,
}

/// Pure: where a drain started at `created` stands at `now`.
pub fn progress(
    created: DateTime<Utc>,
    acked: bool,
    now: DateTime<Utc>,
    timeout: Duration,
) -> Progress {
    let timeout = chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::seconds(10));
    if acked {
        Progress::Acked
    } else if now - created >= timeout {
        Progress::TimedOut
    } else {
        Progress::Waiting
    }
}

/// Pure: several requests drain one set of pods; the pods may go when
/// every request is acked or, failing that, has timed out.
pub fn overall(each: &[Progress]) -> Progress {
    if each.iter().all(|p| *p == Progress::Acked) {
        Progress::Acked
    } else if each.contains(&Progress::Waiting) {
        Progress::Waiting
    } else {
        Progress::TimedOut
    }
}

/// Pure: the pods of `requests` that still run (are in `live`): their
/// drain is under way, whatever becomes of the rest.
pub fn draining<'a>(
    requests: impl IntoIterator<Item = &'a DrainRequest>,
    live: &BTreeSet<String>,
) -> BTreeSet<String> {
    requests
        .into_iter()
        .flat_map(|r| r.pods.iter())
        .filter(|p| live.contains(*p))
        .cloned()
        .collect()
}

/// A drain under way: the pods it names (those still running).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub pods: Vec<String>,
    pub progress: Progress,
}

/// The requests under `base`, by id.
pub async fn requests(
    db: &Db,
    lb: &Lb,
    base: &str,
) -> Result<Vec<(String, DrainRequest)>, ApiError> {
    let prefix = db.keys.drain_request(&lb.group, &lb.domain, base);
    let strip = prefix.len() - base.len();
    Ok(db
        .list::<DrainRequest>(&prefix)
        .await?
        .into_iter()
        .map(|(key, r)| (key[strip..].to_string(), r))
        .collect())
}

/// Drains `want.pods` (all of them running, `live` being every running pod
/// in question): the requests under `base` that name a running pod stand;
/// pods none of them names — born while a drain was under way, say — get a
/// request of their own. Reports the progress of all of them together.
pub async fn step(
    db: &Db,
    lb: &Lb,
    base: &str,
    want: DrainRequest,
    live: &BTreeSet<String>,
    timeout: Duration,
) -> Result<Pending, ApiError> {
    let k = &db.keys;
    let mut current: Vec<(String, DrainRequest)> = requests(db, lb, base)
        .await?
        .into_iter()
        .filter(|(_, r)| r.pods.iter().any(|p| live.contains(p)))
        .collect();
    let named = draining(current.iter().map(|(_, r)| r), live);
    let missing: Vec<String> = want
        .pods
        .iter()
        .filter(|p| !named.contains(*p))
        .cloned()
        .collect();
    if !missing.is_empty() {
        let id = format!("{base}{}", want.created.timestamp_millis());
        let req = DrainRequest {
            pods: missing,
            ..want
        };
        let key = k.drain_request(&lb.group, &lb.domain, &id);
        let ok = db
            .commit(
                vec![store::absent(key.clone())],
                vec![store::put(key, &req)],
            )
            .await?;
        if !ok.applied() {
            return Err(store::contention());
        }
        tracing::info!(id, pods = ?req.pods, "drain requested");
        current.push((id, req));
    }
    let now = Utc::now();
    let mut each = Vec::with_capacity(current.len());
    for (id, r) in &current {
        let acked = db
            .get::<DrainAck>(&k.drain_ack(&lb.group, &lb.domain, id))
            .await?
            .is_some();
        each.push(progress(r.created, acked, now, timeout));
    }
    Ok(Pending {
        pods: draining(current.iter().map(|(_, r)| r), live)
            .into_iter()
            .collect(),
        progress: overall(&each),
    })
}

/// Pure: a request may go once none of its pods can be served any more —
/// each is gone or terminating (`live` holds the running pods) and no
/// endpoint of it is ready (`serving`, from the EndpointSlices). Deleting it
/// earlier would put a pod that is about to stop back into the upstream.
pub fn settled(r: &DrainRequest, live: &BTreeSet<String>, serving: &BTreeSet<String>) -> bool {
    !r.pods
        .iter()
        .any(|p| live.contains(p) || serving.contains(p))
}

/// The app is gone: every request under `base` goes.
pub async fn forget(db: &Db, lb: &Lb, base: &str) -> Result<(), ApiError> {
    let prefix = db.keys.drain_request(&lb.group, &lb.domain, base);
    if db.count(&prefix).await? > 0 {
        // No compare: an unconditional delete cannot conflict.
        let _ = db
            .commit(vec![], vec![store::delete_prefix(prefix)])
            .await?;
    }
    Ok(())
}

/// Deletes the request `id` (discovery then drops its ack).
pub async fn finish(db: &Db, lb: &Lb, id: &str) -> Result<(), ApiError> {
    let key = db.keys.drain_request(&lb.group, &lb.domain, id);
    // No compare: an unconditional delete cannot conflict.
    let _ = db.commit(vec![], vec![store::delete(key)]).await?;
    tracing::info!(id, "drain finished");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, scheduled: bool, age_s: i64) -> PodFacts {
        PodFacts {
            name: name.into(),
            ready,
            scheduled,
            created: Some(DateTime::from_timestamp(1_000_000 - age_s, 0).unwrap()),
        }
    }

    #[test]
    fn scale_down_takes_idle_pods_first_then_the_youngest() {
        let pods = [
            pod("old", true, true, 500),
            pod("young", true, true, 10),
            pod("unready", false, true, 900),
            pod("pending", false, false, 900),
        ];
        let none = BTreeSet::new();
        assert_eq!(pick(&pods, 1, &none), ["pending"]);
        assert_eq!(pick(&pods, 3, &none), ["pending", "unready", "young"]);
        assert_eq!(pick(&pods, 9, &none).len(), 4);
    }

    #[test]
    fn pods_being_drained_go_first() {
        let pods = [
            pod("old", true, true, 500),
            pod("young", true, true, 10),
            pod("pending", false, false, 900),
        ];
        let draining = BTreeSet::from(["old".to_string()]);
        assert_eq!(pick(&pods, 1, &draining), ["old"]);
        assert_eq!(pick(&pods, 2, &draining), ["old", "pending"]);
    }

    fn req(pods: &[&str]) -> DrainRequest {
        DrainRequest {
            cell: "c".into(),
            namespace: "n".into(),
            pods: pods.iter().map(|p| p.to_string()).collect(),
            created: Utc::now(),
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn only_running_pods_count_as_draining() {
        let a = req(&["p1", "p2"]);
        let b = req(&["p3"]);
        assert_eq!(
            draining([&a, &b], &set(&["p2", "p3", "p4"])),
            set(&["p2", "p3"])
        );
    }

    #[test]
    fn all_requests_must_be_acked_or_timed_out() {
        use Progress::*;
        assert_eq!(overall(&[]), Acked);
        assert_eq!(overall(&[Acked, Acked]), Acked);
        assert_eq!(overall(&[Acked, Waiting]), Waiting);
        assert_eq!(overall(&[TimedOut, Waiting]), Waiting);
        assert_eq!(overall(&[Acked, TimedOut]), TimedOut);
    }

    #[test]
    fn a_request_stays_while_any_pod_could_be_served() {
        let r = req(&["p1", "p2"]);
        assert!(!settled(&r, &set(&["p1"]), &set(&[])), "p1 still runs");
        assert!(
            !settled(&r, &set(&[]), &set(&["p2"])),
            "p2 is terminating but its endpoint is still ready"
        );
        assert!(settled(&r, &set(&["other"]), &set(&["other"])));
    }

    #[test]
    fn no_ack_means_wait_until_the_timeout() {
        let t0 = Utc::now();
        let ten = Duration::from_secs(10);
        assert_eq!(progress(t0, false, t0, ten), Progress::Waiting);
        assert_eq!(progress(t0, true, t0, ten), Progress::Acked);
        assert_eq!(
            progress(t0, false, t0 + chrono::Duration::seconds(10), ten),
            Progress::TimedOut
        );
    }
}
