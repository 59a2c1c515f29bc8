//! Monitoring (docs/monitoring.md): Prometheus service discovery of the
//! agents, and the read API over an app's series. Core builds every query
//! itself ([`promql`]) with the app's namespace fixed from its record.

pub mod alerts;
pub mod notify;
pub mod prom;
pub mod promql;
pub mod sd;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::access::{Action, Kind};
use crate::auth::Caller;
use crate::deploy::spec::AppSpec;
use crate::problem::{ApiError, Json, Path, Query};
use crate::server::Core;
use crate::{access, problem};

use self::prom::{Prometheus, Series};
use self::promql::{Metric, Scope};

/// Operator settings of monitoring.
#[derive(Clone, Default)]
pub struct MonitorSettings {
    /// Prometheus `host:port`; `None`: the read API answers 503.
    pub prometheus: Option<String>,
    /// The rule file core writes (Prometheus' `rule_files` must include it).
    pub rules_file: Option<std::path::PathBuf>,
    /// Bearer secret Alertmanager sends to the webhook; `None`: webhook off.
    pub webhook_secret: Option<String>,
    /// SMTP relay `host:port` for alert e-mail; `None`: webhooks only.
    pub smtp: Option<String>,
    pub mail_from: String,
}

/// By hand: the webhook secret must not reach a log.
impl std::fmt::Debug for MonitorSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorSettings")
            .field("prometheus", &self.prometheus)
            .field("rules_file", &self.rules_file)
            .field("smtp", &self.smtp)
            .field("mail_from", &self.mail_from)
            .finish_non_exhaustive()
    }
}

/// Most points one series may have (Prometheus refuses above 11,000).
const MAX_POINTS: i64 = 11_000;

pub fn router() -> Router<Core> {
    Router::new()
        .route("/api/v1/monitor/targets", get(targets))
        .route("/api/v1/apps/{name}/metrics/{metric}", get(app_series))
        .route(
            "/api/v1/apps/{name}/pods/{pod}/metrics/{metric}",
            get(pod_series),
        )
        .merge(alerts::router())
        .merge(notify::router())
}

/// Anonymous on purpose: Prometheus calls it, and the answer holds only
/// the scrape addresses the agents published in etcd.
async fn targets(State(core): State<Core>) -> Result<Json<Vec<sd::TargetGroup>>, ApiError> {
    Ok(Json(sd::targets(&core.db).await?))
}

/// `start`/`end`: unix seconds (default: the last hour); `step`: seconds
/// (default: about 240 points).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    #[serde(default)]
    pub start: Option<i64>,
    #[serde(default)]
    pub end: Option<i64>,
    #[serde(default)]
    pub step: Option<u64>,
}

/// A checked range: `(start, end, step)`.
pub fn check_range(r: &Range, now: i64) -> Result<(i64, i64, u64), ApiError> {
    let end = r.end.unwrap_or(now);
    let start = r.start.unwrap_or(end - 3600);
    if start >= end {
        return Err(ApiError::bad_request(
            "invalid_range",
            format!("start ({start}) must be before end ({end})"),
        ));
    }
    let step = match r.step {
        Some(0) => return Err(ApiError::bad_request("invalid_step", "step must be > 0")),
        Some(s) => s,
        None => u64::try_from((end - start) / 240).unwrap_or(1).max(1),
    };
    let points = (end - start) / i64::try_from(step).unwrap_or(i64::MAX);
    if points > MAX_POINTS {
        return Err(ApiError::bad_request(
            "invalid_step",
            format!("step {step}s gives {points} points; at most {MAX_POINTS}"),
        ));
    }
    Ok((start, end, step))
}

/// The answer of the read API.
#[derive(Debug, Serialize)]
pub struct SeriesView {
    pub metric: Metric,
    pub unit: &'static str,
    pub start: i64,
    pub end: i64,
    pub step: u64,
    pub series: Vec<Series>,
}

async fn app_series(
    State(core): State<Core>,
    caller: Caller,
    Path((name, metric)): Path<(String, String)>,
    Query(range): Query<Range>,
) -> Result<Json<SeriesView>, ApiError> {
    series(&core, &caller, &name, None, &metric, &range).await
}

async fn pod_series(
    State(core): State<Core>,
    caller: Caller,
    Path((name, pod, metric)): Path<(String, String, String)>,
    Query(range): Query<Range>,
) -> Result<Json<SeriesView>, ApiError> {
    if !valid_pod_name(&pod) {
        return Err(ApiError::bad_request(
            "invalid_pod",
            format!("pod {pod:?} is not a Kubernetes pod name"),
        ));
    }
    series(&core, &caller, &name, Some(&pod), &metric, &range).await
}

/// A DNS-1123 subdomain, as Kubernetes names pods.
pub fn valid_pod_name(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 253
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

async fn series(
    core: &Core,
    caller: &Caller,
    app: &str,
    pod: Option<&str>,
    metric: &str,
    range: &Range,
) -> Result<Json<SeriesView>, ApiError> {
    let Some(m) = Metric::parse(metric) else {
        let known: Vec<&str> = Metric::ALL.iter().map(|m| m.as_str()).collect();
        return Err(ApiError::not_found(
            "unknown_metric",
            format!("no metric {metric:?}; known: {}", known.join(", ")),
        ));
    };
    let (start, end, step) = check_range(range, Utc::now().timestamp())?;
    access::authorize(&core.db, Some(caller), Kind::App, app, Action::View).await?;
    let spec = core
        .db
        .get::<AppSpec>(&core.db.keys.app(app))
        .await?
        .ok_or_else(|| ApiError::conflict("app_not_deployed", format!("app {app} has no spec")))?
        .value;
    let prom = prometheus(core)?;
    let scope = Scope {
        namespace: &spec.namespace,
        pod,
        domain: spec.lb.as_ref().map(|l| l.domain.as_str()),
    };
    let window = format!("{}s", step.max(15) * 4);
    let series = match promql::query(m, &scope, &window) {
        Some(q) => prom.query_range(&q, start, end, step).await?,
        None => Vec::new(),
    };
    Ok(Json(SeriesView {
        metric: m,
        unit: m.unit(),
        start,
        end,
        step,
        series,
    }))
}

pub(crate) fn prometheus(core: &Core) -> Result<Prometheus, ApiError> {
    core.settings
        .monitor
        .prometheus
        .clone()
        .map(|addr| Prometheus { addr })
        .ok_or_else(|| problem::ApiError::unavailable("no Prometheus configured (--prometheus)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        let r = |start, end, step| Range { start, end, step };
        assert_eq!(
            check_range(&r(None, None, None), 7200).unwrap(),
            (3600, 7200, 15)
        );
        assert_eq!(
            check_range(&r(Some(10), Some(20), Some(1)), 0).unwrap(),
            (10, 20, 1)
        );
        assert_eq!(
            check_range(&r(Some(20), Some(10), None), 0)
                .unwrap_err()
                .code,
            "invalid_range"
        );
        assert_eq!(
            check_range(&r(Some(0), Some(10), Some(0)), 0)
                .unwrap_err()
                .code,
            "invalid_step"
        );
        assert_eq!(
            check_range(&r(Some(0), Some(100_000), Some(1)), 0)
                .unwrap_err()
                .code,
            "invalid_step"
        );
    }

    #[test]
    fn pod_names_are_dns_names() {
        assert!(valid_pod_name("web-7d9f-abcde"));
        assert!(!valid_pod_name("web\"}"));
        assert!(!valid_pod_name(""));
    }
}
