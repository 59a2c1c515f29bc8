//! Apps on Kubernetes (docs/apps.md): the desired state the API writes
//! ([`spec`]), the objects it becomes in each Cell ([`objects`]), the
//! reconciler that applies it ([`reconcile`]), drains ([`drain`]), a
//! version replaced one pod at a time ([`handover`]), the
//! registry robot of each app ([`robot`]), the version/read endpoints
//! ([`api`]) and autoscaling ([`autoscale`]'s rules, the [`autoscaler`]).

pub mod api;
pub mod autoscale;
pub mod autoscaler;
pub mod drain;
pub mod handover;
pub mod objects;
pub mod reconcile;
pub mod robot;
pub mod spec;

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Operator settings of the app layer.
#[derive(Clone, Debug)]
pub struct DeploySettings {
    /// Full reconcile of every Cell at least this often (changes in etcd
    /// trigger one at once); hand edits are put back within it.
    pub resync: Duration,
    /// How long a drain waits for discovery's acknowledgement.
    pub drain_timeout: Duration,
    /// A new robot pull secret this often (each valid twice as long).
    pub robot_rotation: Duration,
    /// How often the autoscaler reads the targets and decides.
    pub autoscale_period: Duration,
}

impl Default for DeploySettings {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            robot_rotation: Duration::from_secs(12 * 3600),
            autoscale_period: Duration::from_secs(15),
        }
    }
}

pub fn to_chrono(t: &Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(
        t.0.as_second(),
        u32::try_from(t.0.subsec_nanosecond()).unwrap_or(0),
    )
}

pub fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
