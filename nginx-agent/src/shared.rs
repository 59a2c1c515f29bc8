//! State shared by the agent's tasks. Locks are never held across an await.

use std::collections::BTreeMap;
use std::sync::Mutex;

use leengine_slb::{AgentStatus, DomainError};
use tokio::sync::Notify;

use crate::state::Desired;

#[derive(Debug)]
pub struct Shared {
    pub group: String,
    pub host: String,
    pub desired: Mutex<Desired>,
    /// Something in etcd changed: the reconciler re-renders (coalesced).
    pub config_changed: Notify,
    /// Peers may have changed: the pusher diffs and pushes at once.
    pub upstream_changed: Notify,
    /// nginx reloaded or restarted: push the whole state again.
    pub repush: Notify,
    pub report: Mutex<Report>,
    pub report_changed: Notify,
    /// Published in the status for Prometheus' discovery.
    pub metrics_address: Option<String>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub reconciled_revision: i64,
    pub pushed_revision: i64,
    /// Set by the reconciler (config files).
    pub errors: BTreeMap<String, DomainError>,
    /// Set by the pusher (peers nginx had no room for).
    pub push_errors: BTreeMap<String, DomainError>,
    pub shared_dict_refusals: u64,
    pub error: Option<String>,
    pub domains: Vec<String>,
    pub reloads: u64,
    pub last_reload: Option<String>,
}

impl Shared {
    pub fn new(group: String, host: String, desired: Desired) -> Self {
        Self {
            group,
            host,
            desired: Mutex::new(desired),
            config_changed: Notify::new(),
            upstream_changed: Notify::new(),
            repush: Notify::new(),
            report: Mutex::new(Report::default()),
            report_changed: Notify::new(),
            metrics_address: None,
        }
    }

    pub fn desired(&self) -> std::sync::MutexGuard<'_, Desired> {
        self.desired.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn update_report(&self, f: impl FnOnce(&mut Report)) {
        f(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()));
        self.report_changed.notify_one();
    }

    pub fn status(&self) -> AgentStatus {
        let r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        AgentStatus {
            host: self.host.clone(),
            applied_revision: r.reconciled_revision.min(r.pushed_revision),
            errors: merged_errors(&r.errors, &r.push_errors),
            error: r.error.clone(),
            domains: r.domains.clone(),
            reloads: r.reloads,
            shared_dict_refusals: r.shared_dict_refusals,
            last_reload: r.last_reload.clone(),
            updated: now(),
            metrics_address: self.metrics_address.clone(),
        }
    }
}

/// A config error says more about a domain than a push error (its peers
/// belong to a server block that may not even be live).
fn merged_errors(
    config: &BTreeMap<String, DomainError>,
    push: &BTreeMap<String, DomainError>,
) -> BTreeMap<String, DomainError> {
    let mut out = push.clone();
    out.extend(config.iter().map(|(d, e)| (d.clone(), e.clone())));
    out
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
