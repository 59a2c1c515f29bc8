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

/// The `n` pods a scale-down removes: those serving nobody first (not
/// scheduled, then not ready), then the youngest (the least warmed up).
pub fn pick(pods: &[PodFacts], n: usize) -> Vec<String> {
    let mut v: Vec<&PodFacts> = pods.iter().collect();
    v.sort_by(|a, b| {
        (a.scheduled, a.ready)
            .cmp(&(b.scheduled, b.ready))
            .then_with(|| b.created.cmp(&a.created))
            .then_with(|| a.name.cmp(&b.name))
    });
    v.into_iter().take(n).map(|p| p.name.clone()).collect()
}

/// The id base of the drains of one version (or `all` of an app) in one
/// Cell; the namespace holds the app's uid. Each drain appends its start
/// time, so an ack left from an earlier drain never answers a later one.
pub fn drain_base(namespace: &str, cell: &str, what: &str) -> String {
    format!("{namespace}.{cell}.{what}.")
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

/// A drain under way: its id and the pods it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    pub pods: Vec<String>,
    pub progress: Progress,
}

/// Writes a request for `want` (unless one under `base` is pending: its
/// pods stand) and reports the progress.
pub async fn step(
    db: &Db,
    lb: &Lb,
    base: &str,
    want: DrainRequest,
    timeout: Duration,
) -> Result<Pending, ApiError> {
    let k = &db.keys;
    let prefix = k.drain_request(&lb.group, &lb.domain, base);
    let found = db.list::<DrainRequest>(&prefix).await?.into_iter().next();
    let (id, req) = match found {
        Some((key, r)) => (key[prefix.len() - base.len()..].to_string(), r),
        None => {
            let id = format!("{base}{}", want.created.timestamp_millis());
            let key = k.drain_request(&lb.group, &lb.domain, &id);
            let ok = db
                .commit(
                    vec![store::absent(key.clone())],
                    vec![store::put(key, &want)],
                )
                .await?;
            if !ok.applied() {
                return Err(store::contention());
            }
            tracing::info!(id, pods = ?want.pods, "drain requested");
            (id, want)
        }
    };
    let acked = db
        .get::<DrainAck>(&k.drain_ack(&lb.group, &lb.domain, &id))
        .await?
        .is_some();
    Ok(Pending {
        progress: progress(req.created, acked, Utc::now(), timeout),
        pods: req.pods,
        id,
    })
}

/// The pods are gone: every request under `base` goes (discovery then
/// drops their acks).
pub async fn finish(db: &Db, lb: &Lb, base: &str) -> Result<(), ApiError> {
    let prefix = db.keys.drain_request(&lb.group, &lb.domain, base);
    if db.count(&prefix).await? > 0 {
        // No compare: an unconditional delete cannot conflict.
        let _ = db
            .commit(vec![], vec![store::delete_prefix(prefix)])
            .await?;
    }
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
        assert_eq!(pick(&pods, 1), ["pending"]);
        assert_eq!(pick(&pods, 3), ["pending", "unready", "young"]);
        assert_eq!(pick(&pods, 9).len(), 4);
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
