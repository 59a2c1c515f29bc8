//! `/slb/{group}/agents/{host}`: what one agent has applied, kept under a
//! lease so a dead agent disappears.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub host: String,
    /// etcd revision up to which every event has been handled.
    pub applied_revision: i64,
    /// Domains whose latest config is NOT live, with the reason; they keep
    /// serving their last good config (or are not served if they never had one).
    #[serde(default)]
    pub errors: BTreeMap<String, DomainError>,
    /// A problem of the whole host (e.g. the live config itself no longer
    /// passes `nginx -t`); nothing is changed while it lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Domains with a live config file.
    #[serde(default)]
    pub domains: Vec<String>,
    pub reloads: u64,
    /// Upstream writes nginx's shared dict had no room for since the agent
    /// started (each also shows as a `shared-dict-full` error while it
    /// lasts): a growing count means `--shared-dict-size` is too small.
    #[serde(default)]
    pub shared_dict_refusals: u64,
    /// RFC 3339 time of the last successful reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<String>,
    /// RFC 3339 time this record was written.
    pub updated: String,
    /// Where Prometheus scrapes this agent (core's service discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainError {
    /// `mod_revision` of the config key that failed.
    pub revision: i64,
    /// `invalid` (schema/validation, or the admin port), `invalid-upstream`,
    /// `nginx-test` (`nginx -t` refused it), `reload` (it passed `nginx -t`
    /// but nginx could not load it, e.g. a port in use; rolled back) or
    /// `shared-dict-full` (no room for its peers; the previous ones stay).
    pub kind: String,
    pub message: String,
}
