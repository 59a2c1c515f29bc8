//! Per-user quotas: how many apps a user may create and how many containers
//! (replicas over all apps they created) may run. Usage is a record updated
//! with compare-and-swap in the same transaction as the app change, so two
//! concurrent creations cannot both squeeze under the limit.

use etcd_client::{Compare, TxnOp};
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;
use crate::store::{self, Db};
use crate::users::User;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub max_apps: u32,
    pub max_containers: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub apps: u32,
    pub containers: u32,
}

/// A change of usage, e.g. `+1 app` or `+3 containers`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub apps: i64,
    pub containers: i64,
}

/// New usage after `delta`, or the problem that refuses it. Decreases are
/// always allowed (an admin may lower a quota below current use).
pub fn apply(quota: Quota, usage: Usage, delta: Delta) -> Result<Usage, ApiError> {
    let apps = i64::from(usage.apps) + delta.apps;
    let containers = i64::from(usage.containers) + delta.containers;
    if delta.apps > 0 && apps > i64::from(quota.max_apps) {
        return Err(ApiError::forbidden(
            "quota_apps",
            format!("quota exceeded: at most {} apps", quota.max_apps),
        ));
    }
    if delta.containers > 0 && containers > i64::from(quota.max_containers) {
        return Err(ApiError::forbidden(
            "quota_containers",
            format!(
                "quota exceeded: at most {} containers (in use {}, asked {:+})",
                quota.max_containers, usage.containers, delta.containers
            ),
        ));
    }
    Ok(Usage {
        apps: apps.clamp(0, u32::MAX.into()) as u32,
        containers: containers.clamp(0, u32::MAX.into()) as u32,
    })
}

/// Reads `user`'s quota and usage and returns the compares and ops that
/// record `delta`, or the quota problem.
pub async fn charge(
    db: &Db,
    default: Quota,
    user: &str,
    delta: Delta,
) -> Result<(Vec<Compare>, Vec<TxnOp>), ApiError> {
    let quota = db
        .get::<User>(&db.keys.core_user(user))
        .await?
        .and_then(|u| u.value.quota)
        .unwrap_or(default);
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
    };

    #[test]
    fn limits_increases_only() {
        let u = Usage {
            apps: 2,
            containers: 8,
        };
        assert_eq!(
            apply(
                Q,
                u,
                Delta {
                    apps: 1,
                    containers: 0
                }
            )
            .unwrap_err()
            .code,
            "quota_apps"
        );
        assert_eq!(
            apply(
                Q,
                u,
                Delta {
                    apps: 0,
                    containers: 3
                }
            )
            .unwrap_err()
            .code,
            "quota_containers"
        );
        assert_eq!(
            apply(
                Q,
                u,
                Delta {
                    apps: 0,
                    containers: 2
                }
            )
            .unwrap(),
            Usage {
                apps: 2,
                containers: 10
            }
        );
        let over = Usage {
            apps: 5,
            containers: 50,
        };
        assert_eq!(
            apply(
                Q,
                over,
                Delta {
                    apps: -1,
                    containers: -5
                }
            )
            .unwrap(),
            Usage {
                apps: 4,
                containers: 45
            }
        );
    }
}
