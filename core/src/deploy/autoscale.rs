//! Autoscaling rules (docs/apps.md#autoscaling), pure: the policy and its
//! checks, the replica count readings ask for, and the stabilization that
//! keeps the count from flapping. The I/O shell is `autoscaler.rs`.
//!
//! Rules:
//! - A policy belongs to the app and scales its newest version, in every
//!   Cell of the app, between `min` and `max` (per Cell). Older versions
//!   keep the count their user gave them: they are on their way out (a
//!   grey upgrade) and a new version inherits the policy without a step.
//! - Each target proposes `ceil(ready × value / target)`, as Kubernetes'
//!   HPA does, unless `value / target` is within the tolerance of 1; the
//!   largest proposal wins, so every target is met.
//! - No reading, no decision: a Cell that cannot be read, a target with no
//!   series or no ready pod freezes that Cell's count (and says why). The
//!   recommendations before the freeze stay, so the down window still
//!   holds when readings come back.
//! - Scaling up takes the lowest recommendation of the up window (default
//!   0 s: at once); scaling down the highest of the down window (default
//!   300 s), so a short dip never removes pods.
//! - The result is clamped to `[min, max]`, also when a user set a count
//!   outside it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::spec::{Resources, MAX_REPLICAS};
use crate::problem::ApiError;

/// Largest percentage target (a thousand times the request).
const MAX_PERCENT: f64 = 100_000.0;
/// Largest per-pod rate target.
const MAX_PER_POD: f64 = 1e12;

/// What an Owner or Master sets: `PUT /api/v1/apps/{name}/autoscale`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFields {
    /// Fewest replicas of the newest version in each Cell (at least 1).
    pub min: u32,
    /// Most replicas of the newest version in each Cell.
    pub max: u32,
    /// Targets, at least one.
    #[serde(default)]
    pub targets: Targets,
    /// Readings are averaged over this many seconds.
    #[serde(default = "default_window")]
    pub window_seconds: u32,
    /// A scale-up waits until every recommendation of this window agrees.
    #[serde(default)]
    pub scale_up_stabilization_seconds: u32,
    /// A scale-down waits until every recommendation of this window agrees.
    #[serde(default = "default_down")]
    pub scale_down_stabilization_seconds: u32,
    /// No change while every reading is within this percentage of its target.
    #[serde(default = "default_tolerance")]
    pub tolerance_percent: u32,
}

fn default_window() -> u32 {
    60
}
fn default_down() -> u32 {
    300
}
fn default_tolerance() -> u32 {
    10
}

/// Per-pod targets; absent ones are not used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// CPU used, in percent of the container's CPU request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u32>,
    /// Memory working set, in percent of the container's memory request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_percent: Option<u32>,
    /// Requests per second per pod, from the app's load balancer counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Disk bytes read and written per second per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes_per_second: Option<f64>,
}

/// `{prefix}/apps/{app}/autoscale`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub policy: PolicyFields,
    pub by: String,
    pub at: DateTime<Utc>,
}

/// The metrics a target can follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    CpuPercent,
    MemoryPercent,
    RequestsPerSecond,
    DiskBytesPerSecond,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::CpuPercent => "cpu_percent",
            Target::MemoryPercent => "memory_percent",
            Target::RequestsPerSecond => "requests_per_second",
            Target::DiskBytesPerSecond => "disk_bytes_per_second",
        }
    }
}

impl Targets {
    pub fn list(&self) -> Vec<(Target, f64)> {
        [
            (Target::CpuPercent, self.cpu_percent.map(f64::from)),
            (Target::MemoryPercent, self.memory_percent.map(f64::from)),
            (Target::RequestsPerSecond, self.requests_per_second),
            (Target::DiskBytesPerSecond, self.disk_bytes_per_second),
        ]
        .into_iter()
        .filter_map(|(t, v)| Some((t, v?)))
        .collect()
    }
}

/// What the app offers the policy: whether it has an LB, and the newest
/// version's resources.
#[derive(Debug)]
pub struct Context<'a> {
    pub has_lb: bool,
    pub resources: Option<&'a Resources>,
}

impl PolicyFields {
    /// 422 `invalid_policy` with the first problem.
    pub fn check(&self, cx: &Context<'_>) -> Result<(), ApiError> {
        let bad = |m: String| Err(ApiError::bad_request("invalid_policy", m));
        if self.min == 0 {
            return bad("min must be at least 1: with no pod there is nothing to measure".into());
        }
        if self.min > self.max {
            return bad(format!("min {} is above max {}", self.min, self.max));
        }
        if self.max > MAX_REPLICAS {
            return bad(format!("max {} is above {MAX_REPLICAS}", self.max));
        }
        let targets = self.targets.list();
        if targets.is_empty() {
            return bad("give at least one target".into());
        }
        for (t, v) in &targets {
            let most = match t {
                Target::CpuPercent | Target::MemoryPercent => MAX_PERCENT,
                Target::RequestsPerSecond | Target::DiskBytesPerSecond => MAX_PER_POD,
            };
            if !(v.is_finite() && *v > 0.0 && *v <= most) {
                return bad(format!(
                    "target {} must be above 0 and at most {most}",
                    t.as_str()
                ));
            }
        }
        if !(10..=3600).contains(&self.window_seconds) {
            return bad("window_seconds must be within 10..=3600".into());
        }
        for (name, s) in [
            ("scale_up", self.scale_up_stabilization_seconds),
            ("scale_down", self.scale_down_stabilization_seconds),
        ] {
            if s > 3600 {
                return bad(format!("{name}_stabilization_seconds must be at most 3600"));
            }
        }
        if self.tolerance_percent > 50 {
            return bad("tolerance_percent must be at most 50".into());
        }
        if self.targets.requests_per_second.is_some() && !cx.has_lb {
            return bad("requests_per_second needs the app's load balancer (PUT …/lb)".into());
        }
        let r = cx.resources.cloned().unwrap_or_default();
        if self.targets.cpu_percent.is_some() && r.cpu_request.is_none() {
            return bad("cpu_percent needs a CPU request on the newest version".into());
        }
        if self.targets.memory_percent.is_some() && r.memory_request.is_none() {
            return bad("memory_percent needs a memory request on the newest version".into());
        }
        Ok(())
    }

    pub fn tolerance(&self) -> f64 {
        f64::from(self.tolerance_percent) / 100.0
    }
}

/// One target's per-pod average over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub metric: Target,
    pub value: f64,
    pub target: f64,
}

/// A target's per-pod value from its series: `values` per pod of the
/// newest version here (the domain's total for requests, shared by every
/// ready pod of the app, in every Cell and version); `None` with no series
/// to judge by.
pub fn per_pod(target: Target, values: &[f64], app_ready: u32, r: &Resources) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let sum: f64 = values.iter().sum();
    let count = f64::from(u32::try_from(values.len()).unwrap_or(u32::MAX));
    let mean = sum / count;
    match target {
        Target::RequestsPerSecond => (app_ready > 0).then(|| sum / f64::from(app_ready)),
        Target::CpuPercent => {
            let cores = crate::quantity::cpu_millis(r.cpu_request.as_deref()?)?;
            (cores > 0).then(|| 100.0 * mean * 1000.0 / u64_f64(cores))
        }
        Target::MemoryPercent => {
            let bytes = crate::quantity::memory_bytes(r.memory_request.as_deref()?)?;
            (bytes > 0).then(|| 100.0 * mean / u64_f64(bytes))
        }
        Target::DiskBytesPerSecond => Some(mean),
    }
}

#[allow(
    clippy::cast_precision_loss,
    reason = "a request in millicores or bytes: far below 2^53"
)]
fn u64_f64(v: u64) -> f64 {
    v as f64
}

/// What the readings ask for, and the reading that asked for it (`None`:
/// every reading within tolerance, the ready count stays).
pub fn recommend(ready: u32, readings: &[Reading], tolerance: f64) -> (u32, Option<&Reading>) {
    let mut best: (u32, Option<&Reading>) = (ready, None);
    for r in readings {
        let ratio = r.value / r.target;
        if !ratio.is_finite() || (ratio - 1.0).abs() <= tolerance {
            continue;
        }
        let want = proposal(ready, ratio);
        if best.1.is_none() || want > best.0 {
            best = (want, Some(r));
        }
    }
    best
}

/// `ceil(ready × ratio)`, within `0..=MAX_REPLICAS`.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "an integer in (0, MAX_REPLICAS) by the checks before the cast"
)]
fn proposal(ready: u32, ratio: f64) -> u32 {
    let want = (f64::from(ready) * ratio).ceil();
    if want.is_nan() || want <= 0.0 {
        return 0;
    }
    if want >= f64::from(MAX_REPLICAS) {
        return MAX_REPLICAS;
    }
    want as u32
}

/// Recommendations of one Cell, newest last, as `(unix seconds, count)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History(Vec<(i64, u32)>);

impl History {
    /// Records `rec` at `now` and returns the count to run: stabilized
    /// against the windows, clamped to `[min, max]`.
    pub fn decide(&mut self, p: &PolicyFields, now: i64, current: u32, rec: u32) -> u32 {
        self.0.push((now, rec));
        let keep = i64::from(
            p.scale_up_stabilization_seconds
                .max(p.scale_down_stabilization_seconds),
        );
        self.0.retain(|(t, _)| now - t <= keep);
        let within = |secs: u32| {
            self.0
                .iter()
                .filter(move |(t, _)| now - t <= i64::from(secs))
                .map(|(_, r)| *r)
        };
        let next = if rec > current {
            within(p.scale_up_stabilization_seconds)
                .min()
                .unwrap_or(rec)
                .max(current)
        } else if rec < current {
            within(p.scale_down_stabilization_seconds)
                .max()
                .unwrap_or(rec)
                .min(current)
        } else {
            current
        };
        next.clamp(p.min, p.max)
    }
}

/// Why a Cell's count stays as it is.
pub fn frozen_reason(missing: &[Target]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let names: Vec<&str> = missing.iter().map(|t| t.as_str()).collect();
    Some(format!(
        "no readings for {}: the replica count is frozen",
        names.join(", ")
    ))
}

/// `{prefix}/apps/{app}/autoscale-status`: per Cell.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: u64,
    pub cells: BTreeMap<String, CellStatus>,
    pub at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CellStatus {
    /// The newest version's replica count in the Cell.
    pub current: u32,
    pub ready: u32,
    /// What the readings ask for, before stabilization and bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended: Option<u32>,
    pub desired: u32,
    #[serde(default)]
    pub readings: Vec<Reading>,
    /// Set: no decision is made here (why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale: Option<Decision>,
}

/// One change of the count, as the activity feed and the Cell's events
/// record it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at: DateTime<Utc>,
    pub from: u32,
    pub to: u32,
    /// The reading that decided, `None` when the bounds did (a count a
    /// user set outside `[min, max]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading: Option<Reading>,
}

impl Decision {
    pub fn reason(&self) -> String {
        match &self.reading {
            Some(r) => format!(
                "{} {:.2} per pod against a target of {:.2}: {} → {} replicas",
                r.metric.as_str(),
                r.value,
                r.target,
                self.from,
                self.to
            ),
            None => format!(
                "outside the policy's bounds: {} → {} replicas",
                self.from, self.to
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PolicyFields {
        PolicyFields {
            min: 1,
            max: 10,
            targets: Targets {
                requests_per_second: Some(100.0),
                ..Targets::default()
            },
            window_seconds: 60,
            scale_up_stabilization_seconds: 0,
            scale_down_stabilization_seconds: 300,
            tolerance_percent: 10,
        }
    }

    fn reading(metric: Target, value: f64, target: f64) -> Reading {
        Reading {
            metric,
            value,
            target,
        }
    }

    fn cx() -> Context<'static> {
        Context {
            has_lb: true,
            resources: None,
        }
    }

    fn refusal(p: &PolicyFields, cx: &Context<'_>) -> String {
        p.check(cx).unwrap_err().detail
    }

    #[test]
    fn a_policy_needs_bounds_in_order_and_a_target() {
        assert!(policy().check(&cx()).is_ok());
        let p = PolicyFields { min: 0, ..policy() };
        assert!(refusal(&p, &cx()).contains("at least 1"));
        let p = PolicyFields {
            min: 5,
            max: 4,
            ..policy()
        };
        assert!(refusal(&p, &cx()).contains("above max"));
        let p = PolicyFields {
            max: MAX_REPLICAS + 1,
            ..policy()
        };
        assert!(refusal(&p, &cx()).contains("above"));
        let p = PolicyFields {
            targets: Targets::default(),
            ..policy()
        };
        assert!(refusal(&p, &cx()).contains("at least one target"));
        let p = PolicyFields {
            targets: Targets {
                requests_per_second: Some(0.0),
                ..Targets::default()
            },
            ..policy()
        };
        assert!(refusal(&p, &cx()).contains("above 0"));
        let p = PolicyFields {
            targets: Targets {
                requests_per_second: Some(2e12),
                ..Targets::default()
            },
            ..policy()
        };
        assert!(refusal(&p, &cx()).contains("at most"));
        let p = PolicyFields {
            window_seconds: 5,
            ..policy()
        };
        assert!(refusal(&p, &cx()).contains("window_seconds"));
        let p = PolicyFields {
            tolerance_percent: 60,
            ..policy()
        };
        assert!(refusal(&p, &cx()).contains("tolerance"));
    }

    #[test]
    fn a_target_needs_what_it_measures_against() {
        let no_lb = Context {
            has_lb: false,
            resources: None,
        };
        assert!(refusal(&policy(), &no_lb).contains("load balancer"));
        let cpu = PolicyFields {
            targets: Targets {
                cpu_percent: Some(70),
                ..Targets::default()
            },
            ..policy()
        };
        assert!(refusal(&cpu, &cx()).contains("CPU request"));
        let r = Resources {
            cpu_request: Some("100m".into()),
            ..Resources::default()
        };
        let with = Context {
            has_lb: false,
            resources: Some(&r),
        };
        assert!(cpu.check(&with).is_ok());
        let mem = PolicyFields {
            targets: Targets {
                memory_percent: Some(70),
                ..Targets::default()
            },
            ..policy()
        };
        assert!(refusal(&mem, &with).contains("memory request"));
    }

    #[test]
    fn each_target_proposes_ready_times_value_over_target_and_the_largest_wins() {
        let rs = [
            reading(Target::RequestsPerSecond, 250.0, 100.0),
            reading(Target::CpuPercent, 90.0, 60.0),
        ];
        let (n, why) = recommend(2, &rs, 0.1);
        assert_eq!(n, 5);
        assert_eq!(why.unwrap().metric, Target::RequestsPerSecond);
        // ceil: 3 pods at 110 % of a target of 100 → 3.3 → 4.
        let (n, _) = recommend(3, &[reading(Target::CpuPercent, 115.0, 100.0)], 0.1);
        assert_eq!(n, 4);
    }

    #[test]
    fn readings_within_tolerance_keep_the_ready_count() {
        let rs = [reading(Target::RequestsPerSecond, 108.0, 100.0)];
        assert_eq!(recommend(4, &rs, 0.1), (4, None));
        // One target within tolerance, the other far below: the other decides.
        let rs = [
            reading(Target::RequestsPerSecond, 95.0, 100.0),
            reading(Target::CpuPercent, 10.0, 50.0),
        ];
        let (n, why) = recommend(4, &rs, 0.1);
        assert_eq!((n, why.map(|r| r.metric)), (1, Some(Target::CpuPercent)));
    }

    #[test]
    fn no_load_proposes_zero_which_the_bounds_raise_to_min() {
        let rs = [reading(Target::RequestsPerSecond, 0.0, 100.0)];
        assert_eq!(recommend(4, &rs, 0.1).0, 0);
        let mut h = History::default();
        let p = PolicyFields {
            min: 2,
            scale_down_stabilization_seconds: 0,
            ..policy()
        };
        assert_eq!(h.decide(&p, 0, 4, 0), 2);
    }

    #[test]
    fn a_proposal_never_exceeds_the_replica_cap() {
        let rs = [reading(Target::RequestsPerSecond, 1e12, 1.0)];
        assert_eq!(recommend(10, &rs, 0.1).0, MAX_REPLICAS);
        let rs = [reading(Target::RequestsPerSecond, f64::NAN, 1.0)];
        assert_eq!(recommend(10, &rs, 0.1).0, 10);
    }

    #[test]
    fn scale_up_is_immediate_by_default() {
        let mut h = History::default();
        assert_eq!(h.decide(&policy(), 0, 2, 6), 6);
    }

    #[test]
    fn scale_down_waits_for_the_stable_window() {
        let p = PolicyFields {
            scale_down_stabilization_seconds: 60,
            ..policy()
        };
        let mut h = History::default();
        assert_eq!(h.decide(&p, 0, 6, 6), 6);
        // Load gone at t=10: the recommendation of t=0 still holds the count.
        assert_eq!(h.decide(&p, 10, 6, 1), 6);
        assert_eq!(h.decide(&p, 40, 6, 1), 6);
        // t=61: the 6 of t=0 is out of the window; only 1s remain.
        assert_eq!(h.decide(&p, 61, 6, 1), 1);
    }

    #[test]
    fn a_short_dip_inside_the_down_window_removes_no_pod() {
        let p = PolicyFields {
            scale_down_stabilization_seconds: 60,
            ..policy()
        };
        let mut h = History::default();
        for t in (0..300).step_by(15) {
            let rec = if t == 90 { 1 } else { 5 };
            assert_eq!(h.decide(&p, t, 5, rec), 5, "t={t}");
        }
    }

    #[test]
    fn an_up_window_takes_the_lowest_recommendation_in_it() {
        let p = PolicyFields {
            scale_up_stabilization_seconds: 30,
            ..policy()
        };
        let mut h = History::default();
        assert_eq!(h.decide(&p, 0, 2, 2), 2);
        assert_eq!(h.decide(&p, 15, 2, 8), 2);
        assert_eq!(h.decide(&p, 31, 2, 8), 8);
    }

    #[test]
    fn a_count_outside_the_bounds_is_brought_inside() {
        let mut h = History::default();
        let p = PolicyFields {
            min: 3,
            max: 5,
            ..policy()
        };
        assert_eq!(h.decide(&p, 0, 1, 1), 3);
        assert_eq!(h.decide(&p, 1, 9, 9), 5);
        assert_eq!(h.decide(&p, 2, 4, 40), 5);
    }

    #[test]
    fn requests_are_shared_by_every_ready_pod_of_the_app() {
        let r = Resources::default();
        // Two nginx hosts' totals for the domain, 6 ready pods.
        assert_eq!(
            per_pod(Target::RequestsPerSecond, &[200.0, 100.0], 6, &r),
            Some(50.0)
        );
        assert_eq!(per_pod(Target::RequestsPerSecond, &[300.0], 0, &r), None);
        assert_eq!(per_pod(Target::RequestsPerSecond, &[], 6, &r), None);
    }

    #[test]
    fn cpu_and_memory_are_percent_of_the_request_averaged_over_pods() {
        let r = Resources {
            cpu_request: Some("200m".into()),
            memory_request: Some("100Mi".into()),
            ..Resources::default()
        };
        // Pods using 0.1 and 0.3 cores of a 0.2-core request: 100 %.
        let cpu = per_pod(Target::CpuPercent, &[0.1, 0.3], 2, &r).unwrap();
        assert!((cpu - 100.0).abs() < 1e-9, "{cpu}");
        let mem = per_pod(Target::MemoryPercent, &[f64::from(50u32 << 20)], 1, &r).unwrap();
        assert!((mem - 50.0).abs() < 1e-9, "{mem}");
        assert_eq!(
            per_pod(Target::CpuPercent, &[0.1], 1, &Resources::default()),
            None
        );
        assert_eq!(
            per_pod(Target::DiskBytesPerSecond, &[f64::NAN], 1, &r),
            None
        );
    }

    #[test]
    fn missing_readings_name_the_targets_and_freeze() {
        assert_eq!(frozen_reason(&[]), None);
        let r = frozen_reason(&[Target::CpuPercent, Target::RequestsPerSecond]).unwrap();
        assert!(r.contains("cpu_percent, requests_per_second"));
        assert!(r.contains("frozen"));
    }

    #[test]
    fn a_decision_says_its_metric_value_and_target() {
        let d = Decision {
            at: Utc::now(),
            from: 2,
            to: 5,
            reading: Some(reading(Target::RequestsPerSecond, 250.0, 100.0)),
        };
        assert_eq!(
            d.reason(),
            "requests_per_second 250.00 per pod against a target of 100.00: 2 → 5 replicas"
        );
    }
}
