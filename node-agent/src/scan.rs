//! One scan: which of this node's allocations are alive (netns holds the
//! interface with the IP, asked through netlink inside the netns), the
//! report `cnictl check` reads, leak reclaim, and the swap guard.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use leengine_ipam::{Attachment, Filter, LiveAttachment, NodeAttachmentsReport};
use serde::Serialize;

use leengine_attach::{
    lock, teardown, HostLinks, IpOutcome, OvsPorts, Plan, PortScope, Release, Target,
};

use crate::agent::{now_secs, Live, Shared};
use crate::leak::{Observation, SuspectView};
use crate::metrics::BlockUse;
use crate::podview::{self, View, Withheld};
use crate::procfs::ns_id;

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanSummary {
    pub scanned_at: u64,
    pub duration_ms: f64,
    pub allocations: usize,
    pub alive: usize,
    pub dead: usize,
    pub unknown: usize,
    pub report_published: bool,
    pub suspects: Vec<SuspectView>,
    pub released: Vec<Released>,
    /// Ready for reclaim, but the apiserver did not allow it (this scan).
    pub withheld: Vec<Withheld>,
    pub swap_unconstrained: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    pub container_id: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
}

/// Dead, alive or "cannot tell" for one allocation.
async fn observe(a: &Attachment) -> Observation {
    let path = Path::new(&a.netns);
    if !path.is_absolute() {
        return Observation::Unknown;
    }
    if !path.exists() {
        // A missing /run/netns (agent sandboxed away from the runtime's
        // mounts) must not make every pod look dead; a missing /proc/PID is
        // the normal "process gone".
        let visible_parent = path.starts_with("/proc") || path.parent().is_some_and(Path::exists);
        return if visible_parent {
            Observation::Dead
        } else {
            Observation::Unknown
        };
    }
    match is_nsfs(path) {
        // The bind-mount target left behind after the namespace was unmounted.
        Ok(false) => return Observation::Dead,
        Ok(true) => {}
        Err(e) => {
            tracing::warn!(container_id = %a.container_id, netns = %a.netns, error = %e, "cannot stat netns");
            return Observation::Unknown;
        }
    }
    match leengine_netdp::netns_has_ipv4(path, &a.ifname, a.ip).await {
        Ok(true) => Observation::Alive,
        Ok(false) => Observation::Dead,
        Err(e) => {
            tracing::warn!(container_id = %a.container_id, netns = %a.netns, error = %e, "cannot inspect netns");
            Observation::Unknown
        }
    }
}

/// nsfs magic (`NSFS_MAGIC` in linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// True when `path` is a namespace file (a live bind mount or /proc/PID/ns/*).
fn is_nsfs(path: &Path) -> nix::Result<bool> {
    let st = nix::sys::statfs::statfs(path)?;
    Ok(st.filesystem_type().0 as i64 == NSFS_MAGIC)
}

pub async fn run(sh: &Shared) -> ScanSummary {
    let start = Instant::now();
    let mut sum = ScanSummary {
        scanned_at: now_secs(),
        ..Default::default()
    };
    let atts = match sh.ipam.node_attachments(&sh.cfg.node).await {
        Ok(a) => a,
        Err(e) => {
            let mut st = sh.state.lock().await;
            st.tracker.scan_failed();
            st.counters.scan_failures += 1;
            tracing::warn!(error = %e, "scan failed: cannot list this node's allocations; nothing reclaimed");
            sum.error = Some(e.to_string());
            sum.suspects = st.tracker.suspects(sh.now_ms());
            sum.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
            return sum;
        }
    };
    let observed: Vec<(Attachment, Observation)> = futures::stream::iter(atts)
        .map(|a| async move {
            let o = observe(&a).await;
            (a, o)
        })
        .buffer_unordered(sh.cfg.scan_concurrency)
        .collect()
        .await;
    let mut live = Vec::new();
    for (a, o) in &observed {
        match o {
            Observation::Alive => {
                sum.alive += 1;
                live.push(Live {
                    attachment: a.clone(),
                    ns_id: ns_id(Path::new(&a.netns)),
                });
            }
            Observation::Dead => sum.dead += 1,
            Observation::Unknown => sum.unknown += 1,
        }
    }
    sum.allocations = observed.len();
    let report = NodeAttachmentsReport {
        node: sh.cfg.node.clone(),
        scanned_at: sum.scanned_at,
        attachments: live
            .iter()
            .map(|l| LiveAttachment {
                container_id: l.attachment.container_id.clone(),
                ifname: l.attachment.ifname.clone(),
                ip: l.attachment.ip,
            })
            .collect(),
    };
    let published = sh.ipam.publish_node_report(&report).await;
    sum.report_published = published.is_ok();
    let blocks = sh
        .ipam
        .list_blocks(&Filter {
            node: Some(sh.cfg.node.clone()),
            pool: None,
        })
        .await;
    let to_release = {
        let mut st = sh.state.lock().await;
        st.counters.scans += 1;
        st.counters.alive = sum.alive as u64;
        st.counters.dead = sum.dead as u64;
        st.counters.unknown = sum.unknown as u64;
        st.live = live;
        if let Ok(b) = &blocks {
            st.blocks = b
                .iter()
                .map(|b| BlockUse {
                    pool: b.pool.clone(),
                    block: b.cidr.to_string(),
                    size: 1u64 << (32 - u32::from(b.cidr.prefix_len())),
                    used: b.allocations.len() as u64,
                })
                .collect();
        }
        if let Err(e) = &published {
            // etcd answered the listing but not the write: it is flapping,
            // so this scan does not count towards any release.
            tracing::warn!(error = %e, "cannot publish the attachments report; nothing reclaimed this scan");
            st.tracker.scan_failed();
            sum.error = Some(e.to_string());
            Vec::new()
        } else if sh.cfg.reclaim {
            st.tracker.observe(sh.now_ms(), now_secs(), &observed)
        } else {
            Vec::new()
        }
    };
    let (to_release, withheld) = apiserver_check(sh, to_release).await;
    sum.withheld = withheld;
    for a in to_release {
        if let Some(r) = reclaim(sh, &a).await {
            sum.released.push(r);
        }
    }
    if sh.cfg.swap_guard {
        sum.swap_unconstrained = swap_guard(sh).await;
    }
    let mut st = sh.state.lock().await;
    sum.suspects = st.tracker.suspects(sh.now_ms());
    st.counters.suspects = sum.suspects.len() as u64;
    let secs = start.elapsed().as_secs_f64();
    st.counters.last_scan_seconds = secs;
    sum.duration_ms = secs * 1000.0;
    tracing::info!(
        allocations = sum.allocations,
        alive = sum.alive,
        dead = sum.dead,
        unknown = sum.unknown,
        suspects = sum.suspects.len(),
        released = sum.released.len(),
        duration_ms = sum.duration_ms,
        "scan done"
    );
    sum
}

/// Lets the apiserver (when configured) veto reclaims: see `podview`.
async fn apiserver_check(
    sh: &Shared,
    candidates: Vec<Attachment>,
) -> (Vec<Attachment>, Vec<Withheld>) {
    if candidates.is_empty() {
        return (candidates, Vec::new());
    }
    let view = match &sh.kube {
        None => View::Unconfigured,
        Some(client) => match leengine_apiserver::node_pods(client.clone(), &sh.cfg.node).await {
            Ok(pods) => View::Pods(leengine_apiserver::live_pod_ips(&pods)),
            Err(e) => View::Unavailable(e.to_string()),
        },
    };
    let (go, withheld) = podview::split(&view, candidates);
    let mut st = sh.state.lock().await;
    for w in &withheld {
        match &w.why {
            podview::Why::HeldBy { pod } => {
                st.counters.reclaim_held += 1;
                tracing::warn!(container_id = %w.container_id, ip = %w.ip, pod = %pod,
                    "looks dead but a live pod holds its IP (apiserver); not reclaimed");
            }
            podview::Why::NoApiserver { .. } => st.counters.reclaim_no_apiserver += 1,
        }
    }
    if let View::Unavailable(e) = &view {
        tracing::warn!(error = %e, withheld = withheld.len(),
            "apiserver unavailable: nothing reclaimed this scan");
    }
    (go, withheld)
}

/// Reclaims one leaked allocation: port and veth first, the IP only once
/// they are gone (the shared attachment teardown).
async fn reclaim(sh: &Shared, a: &Attachment) -> Option<Released> {
    let dead_for_ms = {
        let st = sh.state.lock().await;
        st.tracker
            .suspects(sh.now_ms())
            .into_iter()
            .find(|s| s.container_id == a.container_id && s.ifname == a.ifname && s.seq == a.seq)
            .map(|s| s.dead_for_ms)
    };
    let result = tear_down(sh, a).await;
    let mut st = sh.state.lock().await;
    match result {
        Ok(IpOutcome::Released(_)) => {
            st.counters.released += 1;
            st.tracker.forget(a);
            drop(st);
            tracing::warn!(
                container_id = %a.container_id, ifname = %a.ifname, ip = %a.ip, pool = %a.pool,
                seq = a.seq, pod = a.pod().unwrap_or_default(), netns = %a.netns, dead_for_ms,
                "reclaimed leaked IP"
            );
            Some(Released {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
                ip: a.ip,
            })
        }
        Ok(_) => {
            st.counters.release_stale += 1;
            st.tracker.forget(a);
            tracing::info!(container_id = %a.container_id, ip = %a.ip, seq = a.seq, "allocation changed since the scan; not released");
            None
        }
        Err(e) => {
            st.counters.release_errors += 1;
            tracing::warn!(container_id = %a.container_id, ip = %a.ip, error = %e, "reclaim incomplete, IP kept; will retry");
            None
        }
    }
}

/// Under the lock the CNI plugin takes for this attachment, so a DEL or
/// ADD of it never interleaves; the allocation is re-read under it, since
/// the datapath goes before the IP's compare-and-release can tell.
async fn tear_down(sh: &Shared, a: &Attachment) -> Result<IpOutcome, String> {
    let _guard = lock::attachment_async(&a.container_id, &a.ifname)
        .await
        .map_err(|e| e.to_string())?;
    match sh.ipam.handle(&a.container_id, &a.ifname).await {
        Ok(Some(now)) if now.seq == a.seq => {}
        Ok(_) => return Ok(IpOutcome::Changed),
        Err(e) => return Err(e.to_string()),
    }
    let ovs = sh.ovs().await;
    let host = leengine_netdp::Netlink::host();
    let ports = OvsPorts::new(
        ovs.as_ref().map_err(ToString::to_string),
        PortScope::Anywhere,
    );
    let links = HostLinks::new(host.as_ref().map_err(ToString::to_string));
    let target = Target {
        container_id: &a.container_id,
        ifname: &a.ifname,
        netns: None,
    };
    let plan = Plan::all(target, Release::IfUnchanged(&sh.ipam, a));
    teardown::run(&links, &ports, plan)
        .await
        .map_err(|f| f.to_string())
}

/// Applies the swap guard to every container; returns those left unconstrained.
async fn swap_guard(sh: &Shared) -> Vec<String> {
    let cg = sh.cgroups.clone();
    let roots = sh.cfg.container_roots.clone();
    let results = tokio::task::spawn_blocking(move || {
        cg.containers(&roots)
            .into_iter()
            .map(|c| {
                let r = cg.guard_swap(&c);
                (c.rel, r)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut st = sh.state.lock().await;
    let mut bad = Vec::new();
    for (rel, r) in &results {
        if let Err(e) = r {
            if !st.swap_unconstrained.contains(rel) {
                tracing::warn!(container = %rel, error = %e, "swap guard could not constrain container");
            }
            bad.push(rel.clone());
        }
    }
    st.counters.swap_unconstrained = bad.len() as u64;
    st.counters.swap_constrained = (results.len() - bad.len()) as u64;
    st.swap_unconstrained = bad.clone();
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(netns: &str) -> Attachment {
        Attachment {
            netns: netns.into(),
            ..leengine_attach::fake::attachment("c1", 1)
        }
    }

    #[tokio::test]
    async fn verdicts_without_a_live_netns() {
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("ns-gone");
        assert_eq!(
            observe(&att(gone.to_str().unwrap())).await,
            Observation::Dead
        );
        // An empty file where a netns was bind-mounted: the namespace is gone.
        let stale = d.path().join("ns-stale");
        std::fs::write(&stale, "").unwrap();
        assert_eq!(
            observe(&att(stale.to_str().unwrap())).await,
            Observation::Dead
        );
        assert_eq!(
            observe(&att("/proc/999999999/ns/net")).await,
            Observation::Dead
        );
        // Cannot tell: the directory itself is not visible, or no usable path.
        assert_eq!(
            observe(&att("/nonexistent-leengine/netns/x")).await,
            Observation::Unknown
        );
        assert_eq!(observe(&att("relative/ns")).await, Observation::Unknown);
        assert_eq!(observe(&att("")).await, Observation::Unknown);
    }

    #[tokio::test]
    async fn own_netns_without_the_interface_is_dead() {
        // The test's own namespace is a live nsfs file without an eth0 holding 10.0.0.2.
        let mut a = att("/proc/self/ns/net");
        a.ifname = "leengine-none".into();
        assert_eq!(observe(&a).await, Observation::Dead);
    }
}
