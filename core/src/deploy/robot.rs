//! Pull-only robot credentials of an app (`app$NAME`): what the Cells'
//! kubelets present to the core's registry token server through the pull
//! secret. A robot may pull the repositories of its app's versions and
//! nothing else. Rotation: a new secret every `rotate_every`, each valid
//! twice that long, so a pod pulling during a rotation still gets in.
//!
//! The secrets are kept in etcd (`{prefix}/apps/{app}/robot`, readable by
//! the core's etcd role only) because the reconciler must be able to write
//! the pull secret again into a Cell that lost it.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::spec::{AppSpec, VersionSpec};
use crate::auth::{constant_time_eq, credentials, Caller, Credentials, MaybeCaller};
use crate::problem::ApiError;
use crate::server::Core;
use crate::store::{self, Db};

pub const ROBOT_PREFIX: &str = "app$";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotSecret {
    pub secret: String,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotRecord {
    /// Newest last.
    pub secrets: Vec<RobotSecret>,
}

pub fn user_name(app: &str) -> String {
    format!("{ROBOT_PREFIX}{app}")
}

/// The record after a rotation check at `now` (pure): expired secrets go;
/// a new one comes when the newest is older than `every`. `None` when
/// nothing changes.
pub fn rotate(
    rec: &RobotRecord,
    now: DateTime<Utc>,
    every: Duration,
    fresh: impl FnOnce() -> String,
) -> Option<RobotRecord> {
    let every = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::hours(12));
    let mut next = rec.clone();
    next.secrets.retain(|s| s.expires > now);
    if next.secrets.last().is_none_or(|s| s.created + every <= now) {
        next.secrets.push(RobotSecret {
            secret: fresh(),
            created: now,
            expires: now + every * 2,
        });
    }
    (next != *rec).then_some(next)
}

fn fresh_secret() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The app's current robot password, rotated when due.
pub async fn current(db: &Db, app: &str, every: Duration) -> Result<String, ApiError> {
    let key = db.keys.app_robot(app);
    let key = &key;
    let secret = store::optimistic(move || async move {
        let cur = db.get::<RobotRecord>(key).await?;
        let (rec, rev) = cur.map_or((RobotRecord::default(), None), |v| {
            (v.value, Some(v.mod_revision))
        });
        let Some(next) = rotate(&rec, Utc::now(), every, fresh_secret) else {
            return Ok(Some(newest(&rec)));
        };
        // Only while the app exists: a deleted app gets no new robot.
        let done = db
            .commit(
                vec![
                    store::unchanged(key.as_str(), rev),
                    store::present(db.keys.app(app)),
                ],
                vec![store::put(key.as_str(), &next)],
            )
            .await?;
        if !done.applied() {
            return Ok(None);
        }
        tracing::info!(app, "robot pull credential rotated");
        Ok(Some(newest(&next)))
    })
    .await?;
    Ok(secret)
}

fn newest(rec: &RobotRecord) -> String {
    rec.secrets
        .last()
        .map(|s| s.secret.clone())
        .unwrap_or_default()
}

/// Whether `password` is a live secret of `app`'s robot.
pub async fn verify(db: &Db, app: &str, password: &str) -> Result<bool, ApiError> {
    if !crate::access::valid_name(app) {
        return Ok(false);
    }
    let Some(rec) = db.get::<RobotRecord>(&db.keys.app_robot(app)).await? else {
        return Ok(false);
    };
    let now = Utc::now();
    Ok(rec
        .value
        .secrets
        .iter()
        .any(|s| s.expires > now && constant_time_eq(s.secret.as_bytes(), password.as_bytes())))
}

/// The registry repositories (`group/repo`) the robot of `app` may pull.
pub fn repositories(app: &AppSpec, versions: &[VersionSpec]) -> BTreeSet<String> {
    app.image
        .iter()
        .chain(versions.iter().map(|v| &v.image))
        .filter_map(|i| crate::apps::image_repository(i))
        .map(str::to_string)
        .collect()
}

/// Who asks the token server: an app's robot or a user (or nobody).
pub enum TokenSubject {
    Robot(String),
    User(Option<Caller>),
}

impl FromRequestParts<Core> for TokenSubject {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, core: &Core) -> Result<Self, Self::Rejection> {
        if let Some(Credentials::Basic { user, secret }) = credentials(&parts.headers)? {
            if let Some(app) = user.strip_prefix(ROBOT_PREFIX) {
                return if verify(&core.db, app, &secret).await? {
                    Ok(Self::Robot(app.to_string()))
                } else {
                    Err(ApiError::unauthorized())
                };
            }
        }
        let MaybeCaller(c) = MaybeCaller::from_request_parts(parts, core).await?;
        Ok(Self::User(c))
    }
}

/// What the robot of `app` may do on repository `name`: pull, if it is one
/// of its app's.
pub async fn robot_actions(
    db: &Db,
    app: &str,
    name: &str,
    asked: &[String],
) -> Result<Vec<String>, ApiError> {
    let Some(spec) = db.get::<AppSpec>(&db.keys.app(app)).await? else {
        return Ok(Vec::new());
    };
    let versions: Vec<VersionSpec> = db
        .list::<VersionSpec>(&db.keys.app_versions_prefix(app))
        .await?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    if !repositories(&spec.value, &versions).contains(name) {
        return Ok(Vec::new());
    }
    Ok(asked
        .iter()
        .filter(|a| *a == "pull" || *a == "*")
        .map(|_| "pull".to_string())
        .take(1)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H12: Duration = Duration::from_secs(12 * 3600);

    #[test]
    fn a_first_secret_then_none_until_due() {
        let t0 = Utc::now();
        let r1 = rotate(&RobotRecord::default(), t0, H12, || "a".into()).unwrap();
        assert_eq!(r1.secrets.len(), 1);
        assert!(rotate(&r1, t0 + chrono::Duration::hours(11), H12, || "b".into()).is_none());
    }

    #[test]
    fn rotation_keeps_the_previous_secret_until_it_expires() {
        let t0 = Utc::now();
        let r1 = rotate(&RobotRecord::default(), t0, H12, || "a".into()).unwrap();
        let r2 = rotate(&r1, t0 + chrono::Duration::hours(13), H12, || "b".into()).unwrap();
        let names: Vec<&str> = r2.secrets.iter().map(|s| s.secret.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let r3 = rotate(&r2, t0 + chrono::Duration::hours(25), H12, || "c".into()).unwrap();
        let names: Vec<&str> = r3.secrets.iter().map(|s| s.secret.as_str()).collect();
        assert_eq!(names, ["b", "c"], "a expired after 24 h");
    }
}
