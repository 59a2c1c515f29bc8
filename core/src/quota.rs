//! Per-user quotas: how many apps a user may create, and how many
//! containers, CPU and memory the replicas of all apps they created may ask
//! for. Usage is a record updated with compare-and-swap in the same
//! transaction as the app change, so two concurrent changes cannot both
//! squeeze under a limit, and a refused change writes nothing.
//!
//! CPU and memory are the versions' requests × replicas over the app's
//! Cells (see `VersionSpec::charge`): what the scheduler reserves.

use std::ops::{Add, Sub};

use etcd_client::{Compare, TxnOp};
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;
use crate::store::{self, Db};
use crate::users::User;

/// A user's limits. CPU and memory are optional so that records written
/// before they existed, and `PUT …/quota` bodies without them, mean "the
/// configured default" (see `effective`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub max_apps: u32,
    pub max_containers: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<u64>,
}

impl Quota {
    /// This quota with the limits it leaves open taken from `default`.
    pub fn effective(self, default: Quota) -> Quota {
        Quota {
            max_cpu_millis: self.max_cpu_millis.or(default.max_cpu_millis),
            max_memory_bytes: self.max_memory_bytes.or(default.max_memory_bytes),
            ..self
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub apps: u32,
    pub containers: u32,
    #[serde(default)]
    pub cpu_millis: u64,
    #[serde(default)]
    pub memory_bytes: u64,
}

/// A change of usage, e.g. `+1 app` or `+3 containers, +750 millicores`.
/// Wide integers: replicas × requests of a hostile version cannot wrap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub apps: i128,
    pub containers: i128,
    pub cpu_millis: i128,
    pub memory_bytes: i128,
}

impl Add for Delta {
    type Output = Delta;
    fn add(self, o: Delta) -> Delta {
        Delta {
            apps: self.apps + o.apps,
            containers: self.containers + o.containers,
            cpu_millis: self.cpu_millis + o.cpu_millis,
            memory_bytes: self.memory_bytes + o.memory_bytes,
        }
    }
}

impl Sub for Delta {
    type Output = Delta;
    fn sub(self, o: Delta) -> Delta {
        Delta {
            apps: self.apps - o.apps,
            containers: self.containers - o.containers,
            cpu_millis: self.cpu_millis - o.cpu_millis,
            memory_bytes: self.memory_bytes - o.memory_bytes,
        }
    }
}

impl std::iter::Sum for Delta {
    fn sum<I: Iterator<Item = Delta>>(iter: I) -> Delta {
        iter.fold(Delta::default(), Add::add)
    }
}

/// One counted resource: its problem code, how it is named, in use, asked
/// for, and its limit (`None`: unlimited).
#[derive(Debug)]
struct Line {
    code: &'static str,
    what: &'static str,
    used: i128,
    asked: i128,
    limit: Option<i128>,
}

/// New usage after `delta`, or the problem that refuses it (the first
/// resource over its limit: apps, containers, CPU, memory). A resource
/// that does not grow is never refused: an admin may lower a quota below
/// current use, and scaling down or deleting must still work then.
pub fn apply(quota: Quota, usage: Usage, delta: Delta) -> Result<Usage, ApiError> {
    let lines = [
        Line {
            code: "quota_apps",
            what: "apps",
            used: usage.apps.into(),
            asked: delta.apps,
            limit: Some(quota.max_apps.into()),
        },
        Line {
            code: "quota_containers",
            what: "containers",
            used: usage.containers.into(),
            asked: delta.containers,
            limit: Some(quota.max_containers.into()),
        },
        Line {
            code: "quota_cpu",
            what: "CPU millicores",
            used: usage.cpu_millis.into(),
            asked: delta.cpu_millis,
            limit: quota.max_cpu_millis.map(i128::from),
        },
        Line {
            code: "quota_memory",
            what: "bytes of memory",
            used: usage.memory_bytes.into(),
            asked: delta.memory_bytes,
            limit: quota.max_memory_bytes.map(i128::from),
        },
    ];
    for l in &lines {
        if let Some(limit) = l.limit.filter(|&max| l.asked > 0 && l.used + l.asked > max) {
            return Err(ApiError::forbidden(
                l.code,
                format!(
                    "quota exceeded: at most {limit} {} (in use {}, asked {:+})",
                    l.what, l.used, l.asked
                ),
            ));
        }
    }
    let [apps, containers, cpu, memory] = lines.map(|l| (l.used + l.asked).max(0));
    Ok(Usage {
        apps: u32::try_from(apps).unwrap_or(u32::MAX),
        containers: u32::try_from(containers).unwrap_or(u32::MAX),
        cpu_millis: u64::try_from(cpu).unwrap_or(u64::MAX),
        memory_bytes: u64::try_from(memory).unwrap_or(u64::MAX),
    })
}

/// `user`'s quota, or the configured default, with open limits filled in.
pub async fn of(db: &Db, default: Quota, user: &str) -> Result<Quota, ApiError> {
    Ok(db
        .get::<User>(&db.keys.core_user(user))
        .await?
        .and_then(|u| u.value.quota)
        .map_or(default, |q| q.effective(default)))
}

/// Reads `user`'s quota and usage and returns the compares and ops that
/// record `delta`, or the quota problem.
pub async fn charge(
    db: &Db,
    default: Quota,
    user: &str,
    delta: Delta,
) -> Result<(Vec<Compare>, Vec<TxnOp>), ApiError> {
    let quota = of(db, default, user).await?;
    let key = db.keys.core_usage(user);
    let current = db.get::<Usage>(&key).await?;
    let (usage, rev) = current.map_or((Usage::default(), None), |v| {
        (v.value, Some(v.mod_revision))
    });
    let next = apply(quota, usage, delta)?;
    Ok((
        vec![store::unchanged(key.clone(), rev)],
        vec![store::put(key, &next)],
    ))
}

pub async fn usage(db: &Db, user: &str) -> Result<Usage, ApiError> {
    Ok(db
        .get::<Usage>(&db.keys.core_usage(user))
        .await?
        .map(|v| v.value)
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quota = Quota {
        max_apps: 2,
        max_containers: 10,
        max_cpu_millis: Some(4000),
        max_memory_bytes: Some(1 << 30),
    };

    fn usage(apps: u32, containers: u32, cpu_millis: u64, memory_bytes: u64) -> Usage {
        Usage {
            apps,
            containers,
            cpu_millis,
            memory_bytes,
        }
    }

    fn delta(apps: i128, containers: i128, cpu_millis: i128, memory_bytes: i128) -> Delta {
        Delta {
            apps,
            containers,
            cpu_millis,
            memory_bytes,
        }
    }

    fn refused(u: Usage, d: Delta) -> String {
        apply(Q, u, d).unwrap_err().code.to_string()
    }

    #[test]
    fn an_increase_past_any_limit_is_refused_with_its_code() {
        let u = usage(2, 8, 3000, 512 << 20);
        assert_eq!(refused(u, delta(1, 0, 0, 0)), "quota_apps");
        assert_eq!(refused(u, delta(0, 3, 0, 0)), "quota_containers");
        assert_eq!(refused(u, delta(0, 1, 1001, 0)), "quota_cpu");
        assert_eq!(refused(u, delta(0, 1, 0, (512 << 20) + 1)), "quota_memory");
    }

    #[test]
    fn the_refusal_names_asked_in_use_and_limit() {
        let e = apply(Q, usage(0, 1, 3000, 0), delta(0, 1, 1500, 0)).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::FORBIDDEN);
        for part in ["at most 4000", "in use 3000", "asked +1500"] {
            assert!(e.detail.contains(part), "{part} in {}", e.detail);
        }
    }

    #[test]
    fn reaching_a_limit_exactly_is_allowed() {
        assert_eq!(
            apply(Q, usage(2, 8, 3000, 0), delta(0, 2, 1000, 1 << 30)).unwrap(),
            usage(2, 10, 4000, 1 << 30)
        );
    }

    #[test]
    fn decreases_are_allowed_even_over_the_limit() {
        let over = usage(5, 50, 9000, 4 << 30);
        assert_eq!(
            apply(Q, over, delta(-1, -5, -1000, -(1 << 30))).unwrap(),
            usage(4, 45, 8000, 3 << 30)
        );
    }

    #[test]
    fn a_resource_that_does_not_grow_is_not_checked() {
        // Over the CPU limit already, a change that adds memory only passes.
        assert_eq!(
            apply(Q, usage(0, 0, 9000, 0), delta(0, 0, 0, 1)).unwrap(),
            usage(0, 0, 9000, 1)
        );
    }

    #[test]
    fn an_open_limit_is_unlimited_and_usage_never_goes_negative() {
        let open = Quota {
            max_cpu_millis: None,
            max_memory_bytes: None,
            ..Q
        };
        let huge = i128::from(u64::MAX) * 3;
        assert_eq!(
            apply(open, usage(0, 0, 0, 0), delta(0, 0, huge, huge)).unwrap(),
            usage(0, 0, u64::MAX, u64::MAX)
        );
        assert_eq!(
            apply(Q, usage(1, 1, 10, 10), delta(-2, -2, -20, -20)).unwrap(),
            usage(0, 0, 0, 0)
        );
    }

    #[test]
    fn a_users_quota_takes_the_default_for_limits_it_leaves_open() {
        let old: Quota =
            serde_json::from_value(serde_json::json!({"max_apps": 1, "max_containers": 2}))
                .unwrap();
        let q = old.effective(Q);
        assert_eq!(
            (
                q.max_apps,
                q.max_containers,
                q.max_cpu_millis,
                q.max_memory_bytes
            ),
            (1, 2, Some(4000), Some(1 << 30))
        );
        let own = Quota {
            max_cpu_millis: Some(1),
            ..old
        };
        assert_eq!(own.effective(Q).max_cpu_millis, Some(1));
    }

    #[test]
    fn usage_recorded_before_cpu_and_memory_decodes_as_zero() {
        let u: Usage =
            serde_json::from_value(serde_json::json!({"apps": 1, "containers": 3})).unwrap();
        assert_eq!(u, usage(1, 3, 0, 0));
    }
}
