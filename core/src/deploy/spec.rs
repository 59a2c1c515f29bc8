//! Desired state of apps, as the API writes it and the reconciler reads it:
//! `{prefix}/apps/{app}` ([`AppSpec`]) and
//! `{prefix}/apps/{app}/versions/{version}` ([`VersionSpec`]). Pure types
//! and rules.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;
use crate::quantity;
use crate::quota::Delta;

/// The load balancer of an app: its domain on one nginx group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lb {
    pub domain: String,
    pub group: String,
}

/// `{prefix}/apps/{app}`: fixed at creation but for the LB (`PUT`/`DELETE …/lb`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    pub name: String,
    /// Unique per app ever created; the Service selects on it.
    pub uid: String,
    /// Kubernetes namespace in every Cell; never reused (it holds the uid).
    pub namespace: String,
    /// Image repository, `[host/]group/repo`; versions default to it.
    #[serde(default)]
    pub image: Option<String>,
    pub cells: Vec<String>,
    #[serde(default)]
    pub lb: Option<Lb>,
    /// The container port the Service forwards to.
    pub port: u16,
}

/// HTTP health check → readiness probe (and liveness when asked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub path: String,
    /// Defaults to the app's port.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub initial_delay_seconds: u32,
    #[serde(default = "ten")]
    pub period_seconds: u32,
    #[serde(default = "one")]
    pub timeout_seconds: u32,
    #[serde(default = "one")]
    pub success_threshold: u32,
    #[serde(default = "three")]
    pub failure_threshold: u32,
    /// Also restart the container when the check keeps failing.
    #[serde(default)]
    pub liveness: bool,
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn ten() -> u32 {
    10
}

/// Requests and limits as Kubernetes quantities (`250m`, `128Mi`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
}

impl Resources {
    /// What one container is charged, in millicores and bytes: its request,
    /// or else its limit (as Kubernetes does: a container with a limit and
    /// no request is given a request equal to the limit), or else nothing
    /// (a best-effort container reserves nothing on its node). Quantities
    /// `check` refused never get here; unreadable ones count as nothing.
    pub fn charged(&self) -> (u64, u64) {
        let pick = |req: &Option<String>, lim: &Option<String>, parse: fn(&str) -> Option<u64>| {
            req.as_deref()
                .or(lim.as_deref())
                .and_then(parse)
                .unwrap_or(0)
        };
        (
            pick(&self.cpu_request, &self.cpu_limit, quantity::cpu_millis),
            pick(
                &self.memory_request,
                &self.memory_limit,
                quantity::memory_bytes,
            ),
        )
    }
}

/// What a user chooses for a version (also the template's answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionFields {
    /// Defaults to the app's image repository.
    #[serde(default)]
    pub image: Option<String>,
    pub tag: String,
    /// Replicas in every Cell of the app …
    #[serde(default = "one")]
    pub replicas: u32,
    /// … except where a Cell has its own count.
    #[serde(default)]
    pub cells: BTreeMap<String, u32>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub health: Option<Health>,
    /// Replace the newest version one pod at a time instead of starting
    /// beside it (docs/apps.md#replacing-a-version). Not part of a template.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
}

/// `{prefix}/apps/{app}/versions/{version}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSpec {
    pub version: u64,
    /// Resolved: the full repository the version runs.
    pub image: String,
    pub tag: String,
    pub replicas: u32,
    #[serde(default)]
    pub cells: BTreeMap<String, u32>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub health: Option<Health>,
    /// The version this one replaces one pod at a time; the reconciler
    /// deletes that version once it is replaced in every Cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<u64>,
    pub by: String,
    pub at: DateTime<Utc>,
}

/// Most replicas one version may ask for in one Cell, whatever the quota says.
pub const MAX_REPLICAS: u32 = 10_000;

impl VersionSpec {
    /// The version this one replaces, while that one is still among
    /// `versions` (a replacement under way).
    pub fn replaced<'a>(&self, versions: &'a [VersionSpec]) -> Option<&'a VersionSpec> {
        let old = self.replaces?;
        versions.iter().find(|v| v.version == old)
    }

    pub fn replicas_in(&self, cell: &str) -> u32 {
        self.cells.get(cell).copied().unwrap_or(self.replicas)
    }

    /// What this version holds over `cells`, for the quota: its containers
    /// and their requests (an app without Cells is a record only and counts
    /// its replicas once).
    pub fn charge(&self, cells: &[String]) -> Delta {
        let containers: i128 = if cells.is_empty() {
            self.replicas.into()
        } else {
            cells.iter().map(|c| i128::from(self.replicas_in(c))).sum()
        };
        let (cpu, memory) = self.resources.charged();
        Delta {
            apps: 0,
            containers,
            cpu_millis: containers * i128::from(cpu),
            memory_bytes: containers * i128::from(memory),
        }
    }

    /// The fields a next version starts from (`GET …/versions/template`).
    pub fn template(&self) -> VersionFields {
        VersionFields {
            image: Some(self.image.clone()),
            tag: self.tag.clone(),
            replicas: self.replicas,
            cells: self.cells.clone(),
            resources: self.resources.clone(),
            env: self.env.clone(),
            health: self.health.clone(),
            replace: false,
        }
    }
}

fn bad(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, detail)
}

/// An environment variable name as Kubernetes accepts it (C identifier style).
fn valid_env_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && !n.as_bytes()[0].is_ascii_digit()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks the fields against the app (its Cells): every refusal is a 400
/// with its own code, before anything is written.
pub fn check(f: &VersionFields, app_cells: &[String]) -> Result<(), ApiError> {
    let counts = std::iter::once(&f.replicas).chain(f.cells.values());
    if counts.into_iter().any(|&n| n > MAX_REPLICAS) {
        return Err(bad(
            "invalid_replicas",
            format!("at most {MAX_REPLICAS} replicas per Cell"),
        ));
    }
    if let Some(c) = f.cells.keys().find(|c| !app_cells.contains(c)) {
        return Err(bad(
            "unknown_cell",
            format!("the app does not run in cell {c}"),
        ));
    }
    let r = &f.resources;
    let cpu: fn(&str) -> Option<u64> = quantity::cpu_millis;
    let memory: fn(&str) -> Option<u64> = quantity::memory_bytes;
    for (name, q, parse) in [
        ("cpu_request", &r.cpu_request, cpu),
        ("cpu_limit", &r.cpu_limit, cpu),
        ("memory_request", &r.memory_request, memory),
        ("memory_limit", &r.memory_limit, memory),
    ] {
        if let Some(q) = q.as_deref().filter(|q| parse(q).is_none()) {
            return Err(bad(
                "invalid_resources",
                format!("{name} {q:?} is not a quantity (e.g. 250m, 128Mi)"),
            ));
        }
    }
    if let Some(k) = f.env.keys().find(|k| !valid_env_name(k)) {
        return Err(bad("invalid_env", format!("{k:?} is not a variable name")));
    }
    if let Some(h) = &f.health {
        if !h.path.starts_with('/') || h.path.len() > 1024 || h.path.contains(char::is_whitespace) {
            return Err(bad(
                "invalid_health",
                "the health check path is an absolute URL path",
            ));
        }
        let in_range = |n: u32, max: u32| (1..=max).contains(&n);
        let ok = in_range(h.period_seconds, 3600)
            && in_range(h.timeout_seconds, 3600)
            && in_range(h.success_threshold, 1000)
            && in_range(h.failure_threshold, 1000)
            && h.port != Some(0)
            && h.initial_delay_seconds <= 3600;
        if !ok {
            return Err(bad(
                "invalid_health",
                "period and timeout 1 to 3600 s, thresholds 1 to 1000, the port not 0, the delay at most 3600 s",
            ));
        }
        // Kubernetes refuses a liveness probe with any other.
        if h.liveness && h.success_threshold != 1 {
            return Err(bad(
                "invalid_health",
                "a liveness check has a success threshold of 1",
            ));
        }
    }
    Ok(())
}

/// Every app's spec, skipping the other records under `apps/` (versions,
/// status, robot). A spec that does not decode is skipped, not fatal: one
/// bad record must not hide every app from a listing.
pub async fn all(db: &crate::store::Db) -> Result<Vec<AppSpec>, ApiError> {
    let specs = db.list::<serde_json::Value>(&db.keys.apps_prefix()).await?;
    Ok(specs
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                db.keys.parse_app_key(k),
                Some(leengine_store::keys::AppKey::App(_))
            )
        })
        .filter_map(|(_, v)| serde_json::from_value::<AppSpec>(v).ok())
        .collect())
}

/// A Kubernetes DNS label from an app name (`_` and `.` become `-`) with
/// the uid's first characters: unique, and never the namespace of an
/// earlier app of the same name.
pub fn namespace_for(name: &str, uid: &str) -> String {
    let base: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(50)
        .collect();
    let base = base.trim_matches('-');
    format!("{base}-{}", &uid[..uid.len().min(8)])
}

/// The Deployment of a version.
pub fn deployment_name(version: u64) -> String {
    format!("v{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> VersionFields {
        serde_json::from_value(serde_json::json!({"tag": "v1"})).unwrap()
    }

    #[test]
    fn replicas_per_cell_override_the_default() {
        let mut f = fields();
        f.replicas = 2;
        f.cells.insert("b".into(), 5);
        let v = VersionSpec {
            version: 1,
            image: "t/w".into(),
            tag: f.tag.clone(),
            replicas: f.replicas,
            cells: f.cells.clone(),
            resources: Resources::default(),
            env: BTreeMap::new(),
            health: None,
            replaces: None,
            by: "u".into(),
            at: Utc::now(),
        };
        assert_eq!((v.replicas_in("a"), v.replicas_in("b")), (2, 5));
        assert_eq!(v.charge(&["a".into(), "b".into()]).containers, 7);
        assert_eq!(
            v.charge(&[]).containers,
            2,
            "an app without Cells counts once"
        );
        assert_eq!(v.template().cells, f.cells);
    }

    #[test]
    fn bad_fields_are_refused_with_their_own_code() {
        let cells = ["a".to_string()];
        assert!(check(&fields(), &cells).is_ok());
        let mut f = fields();
        f.cells.insert("zz".into(), 1);
        assert_eq!(check(&f, &cells).unwrap_err().code, "unknown_cell");
        let mut f = fields();
        f.resources.cpu_request = Some("lots".into());
        assert_eq!(check(&f, &cells).unwrap_err().code, "invalid_resources");
        let mut f = fields();
        f.env.insert("1X".into(), "y".into());
        assert_eq!(check(&f, &cells).unwrap_err().code, "invalid_env");
        let mut f = fields();
        f.replicas = MAX_REPLICAS + 1;
        assert_eq!(check(&f, &cells).unwrap_err().code, "invalid_replicas");
        let mut f = fields();
        f.health = Some(serde_json::from_value(serde_json::json!({"path": "healthz"})).unwrap());
        assert_eq!(check(&f, &cells).unwrap_err().code, "invalid_health");
    }

    #[test]
    fn quantities_are_checked_by_the_quota_reading() {
        let cells = ["a".to_string()];
        for (ok, bad) in [("250m", "1e3"), ("512Mi", "512MB"), ("1", ".5")] {
            let mut f = fields();
            f.resources.cpu_request = Some(ok.into());
            f.resources.memory_limit = Some(ok.into());
            assert!(check(&f, &cells).is_ok(), "{ok}");
            f.resources.memory_limit = Some(bad.into());
            assert_eq!(check(&f, &cells).unwrap_err().code, "invalid_resources");
        }
    }

    fn version(replicas: u32, cells: &[(&str, u32)], resources: Resources) -> VersionSpec {
        VersionSpec {
            version: 1,
            image: "t/w".into(),
            tag: "1".into(),
            replicas,
            cells: cells.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            resources,
            env: BTreeMap::new(),
            health: None,
            replaces: None,
            by: "u".into(),
            at: Utc::now(),
        }
    }

    #[test]
    fn a_version_is_charged_requests_times_replicas_over_its_cells() {
        let r = Resources {
            cpu_request: Some("250m".into()),
            memory_request: Some("512Mi".into()),
            cpu_limit: Some("2".into()),
            memory_limit: Some("1Gi".into()),
        };
        let d = version(2, &[("b", 3)], r).charge(&["a".into(), "b".into()]);
        assert_eq!(
            (d.containers, d.cpu_millis, d.memory_bytes),
            (5, 5 * 250, 5 * (512 << 20))
        );
    }

    #[test]
    fn without_a_request_the_limit_is_charged_and_without_either_nothing() {
        let limits_only = Resources {
            cpu_limit: Some("1".into()),
            memory_limit: Some("1Gi".into()),
            ..Resources::default()
        };
        let d = version(2, &[], limits_only).charge(&["a".into()]);
        assert_eq!((d.cpu_millis, d.memory_bytes), (2000, 2 << 30));
        let d = version(2, &[], Resources::default()).charge(&["a".into()]);
        assert_eq!((d.containers, d.cpu_millis, d.memory_bytes), (2, 0, 0));
    }

    #[test]
    fn namespaces_are_dns_labels_holding_the_uid() {
        assert_eq!(
            namespace_for("my_app.v2", "0123456789abcdef"),
            "my-app-v2-01234567"
        );
        let long = "a".repeat(63);
        assert!(namespace_for(&long, "0123456789abcdef").len() <= 63);
    }
}
