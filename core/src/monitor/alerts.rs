//! User-set alert rules per app: stored at `{prefix}/core/alerts/{app}/{rule}`,
//! edited by the app's Owners and Masters (`update`), rendered by core into
//! one Prometheus rule file (JSON, which Prometheus reads as YAML) and
//! loaded through Prometheus' HTTP reload.

use std::path::Path;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::promql::literal;
use crate::access::{Action, Kind};
use crate::auth::Caller;
use crate::deploy::spec::AppSpec;
use crate::problem::{ApiError, Json, Path as UrlPath};
use crate::server::Core;
use crate::store::{self, Db};
use crate::{access, activity};

/// What a rule watches, per pod (or per container where noted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleMetric {
    /// CPU in percent of the container's limit (else its request, else
    /// one core), per container.
    CpuPercent,
    /// Working set in percent of the memory limit, per container.
    MemoryPercent,
    NetworkRxBytes,
    NetworkTxBytes,
    DiskReadBytes,
    DiskWriteBytes,
    DiskReadOps,
    DiskWriteOps,
    /// Restarts in the last 10 minutes, per container.
    Restarts,
    /// 1 when the container's last termination was the OOM killer's.
    OomKilled,
    /// Pods of the app deleted in the last 10 minutes without the platform
    /// asking (by hand, an eviction, another controller), per app.
    PodsDeleted,
}

impl RuleMetric {
    pub const ALL: [RuleMetric; 11] = [
        RuleMetric::CpuPercent,
        RuleMetric::MemoryPercent,
        RuleMetric::NetworkRxBytes,
        RuleMetric::NetworkTxBytes,
        RuleMetric::DiskReadBytes,
        RuleMetric::DiskWriteBytes,
        RuleMetric::DiskReadOps,
        RuleMetric::DiskWriteOps,
        RuleMetric::Restarts,
        RuleMetric::OomKilled,
        RuleMetric::PodsDeleted,
    ];

    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The PromQL of the watched value in namespace `ns`.
    pub fn expr(self, ns: &str) -> String {
        let sel = format!("{{namespace={}}}", literal(ns));
        let rate = |family: &str| format!("sum by (pod) (rate({family}{sel}[1m]))");
        match self {
            RuleMetric::CpuPercent => super::promql::cpu_percent(ns),
            RuleMetric::MemoryPercent => format!(
                "100 * max by (pod, container) (leengine_container_memory_working_set_bytes{sel} / leengine_container_memory_limit_bytes{sel})"
            ),
            RuleMetric::NetworkRxBytes => rate("leengine_pod_network_receive_bytes_total"),
            RuleMetric::NetworkTxBytes => rate("leengine_pod_network_transmit_bytes_total"),
            RuleMetric::DiskReadBytes => rate("leengine_container_blkio_read_bytes_total"),
            RuleMetric::DiskWriteBytes => rate("leengine_container_blkio_write_bytes_total"),
            RuleMetric::DiskReadOps => rate("leengine_container_blkio_read_ops_total"),
            RuleMetric::DiskWriteOps => rate("leengine_container_blkio_write_ops_total"),
            RuleMetric::Restarts => format!(
                "sum by (pod, container) (increase(leengine_container_restarts_total{sel}[10m]))"
            ),
            RuleMetric::OomKilled => {
                format!("max by (pod, container) (leengine_container_oom_killed{sel})")
            }
            RuleMetric::PodsDeleted => super::promql::pods_deleted(ns),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    #[serde(rename = ">")]
    Above,
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = "<=")]
    AtMost,
}

impl Comparison {
    fn op(self) -> &'static str {
        match self {
            Comparison::Above => ">",
            Comparison::AtLeast => ">=",
            Comparison::Below => "<",
            Comparison::AtMost => "<=",
        }
    }
}

/// `{prefix}/core/alerts/{app}/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertRule {
    pub name: String,
    pub metric: RuleMetric,
    pub comparison: Comparison,
    pub threshold: f64,
    /// Seconds the condition must hold before the alert fires.
    pub for_seconds: u64,
    pub updated_by: String,
    pub updated: DateTime<Utc>,
}

/// Longest `for` accepted: an alert that waits a day says nothing.
const MAX_FOR_SECS: u64 = 24 * 3600;

fn field(name: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_alert_rule", format!("{name}: {detail}"))
}

/// The rule in a request body; `name` comes from the body on create and
/// from the path on update. Every error names its field.
pub fn parse_rule(body: &Value, name: Option<&str>, actor: &str) -> Result<AlertRule, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| field("body", "must be a JSON object"))?;
    const FIELDS: [&str; 5] = ["name", "metric", "comparison", "threshold", "for"];
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(field(k, "unknown field"));
    }
    let name = match (name, obj.get("name")) {
        (Some(n), None) => n.to_string(),
        (Some(n), Some(v)) if v.as_str() == Some(n) => n.to_string(),
        (Some(_), Some(_)) => return Err(field("name", "differs from the rule in the path")),
        (None, Some(v)) => v
            .as_str()
            .ok_or_else(|| field("name", "must be a string"))?
            .to_string(),
        (None, None) => return Err(field("name", "is required")),
    };
    if !access::valid_name(&name) {
        return Err(field(
            "name",
            "lowercase letters, digits and '-', starting with a letter",
        ));
    }
    let known = || {
        RuleMetric::ALL
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let metric = obj
        .get("metric")
        .ok_or_else(|| field("metric", format!("is required: one of {}", known())))
        .and_then(|v| {
            serde_json::from_value::<RuleMetric>(v.clone())
                .map_err(|_| field("metric", format!("must be one of {}", known())))
        })?;
    let comparison = obj
        .get("comparison")
        .ok_or_else(|| field("comparison", "is required: >, >=, < or <="))
        .and_then(|v| {
            serde_json::from_value::<Comparison>(v.clone())
                .map_err(|_| field("comparison", "must be >, >=, < or <="))
        })?;
    let threshold = obj
        .get("threshold")
        .ok_or_else(|| field("threshold", "is required"))?
        .as_f64()
        .filter(|t| t.is_finite())
        .ok_or_else(|| field("threshold", "must be a finite number"))?;
    if metric == RuleMetric::MemoryPercent && !(0.0..=100.0).contains(&threshold) {
        return Err(field("threshold", "a memory percentage is 0-100"));
    }
    let for_seconds = match obj.get("for") {
        None => 0,
        Some(v) => {
            let text = v
                .as_str()
                .ok_or_else(|| field("for", "must be a duration such as \"30s\" or \"5m\""))?;
            let d = humantime::parse_duration(text)
                .map_err(|e| field("for", format!("{text:?}: {e}")))?;
            if d.subsec_nanos() != 0 || d.as_secs() > MAX_FOR_SECS {
                return Err(field("for", "whole seconds, at most 24h"));
            }
            d.as_secs()
        }
    };
    Ok(AlertRule {
        name,
        metric,
        comparison,
        threshold,
        for_seconds,
        updated_by: actor.to_string(),
        updated: Utc::now(),
    })
}

/// Label every app alert carries: the webhook finds the app by it.
pub const APP_LABEL: &str = "leengine_app";
pub const RULE_LABEL: &str = "leengine_rule";
/// Label of the Region's default alerts; those of no app reach the admins.
pub const DEFAULT_LABEL: &str = "leengine_default";

fn rule_json(app: &str, ns: &str, r: &AlertRule) -> Value {
    json!({
        "alert": "LeengineAppRule",
        "expr": format!("{} {} {}", r.metric.expr(ns), r.comparison.op(), r.threshold),
        "for": format!("{}s", r.for_seconds),
        "labels": { APP_LABEL: app, RULE_LABEL: r.name, "metric": r.metric.name() },
        "annotations": {
            "summary": format!("{} {} {} for {}s", r.metric.name(), r.comparison.op(), r.threshold, r.for_seconds),
            "value": "{{ $value }}",
        },
    })
}

/// Alerts every Region has: the swap guard's unsolved problem made visible.
fn default_rules() -> Value {
    json!({
        "name": "leengine-defaults",
        "rules": [
            {
                "alert": "LeengineContainerSwapping",
                "expr": "leengine_container_swap_bytes{namespace!=\"\"} > 0",
                "for": "1m",
                "labels": { DEFAULT_LABEL: "swap" },
                "annotations": { "summary": "a container uses swap", "value": "{{ $value }}" },
            },
            {
                "alert": "LeengineSwapGuardUnconstrained",
                "expr": "leengine_node_swap_guard_containers{state=\"unconstrained\"} > 0",
                "for": "1m",
                "labels": { DEFAULT_LABEL: "swap_guard" },
                "annotations": { "summary": "the swap guard could not constrain containers", "value": "{{ $value }}" },
            },
        ],
    })
}

/// The whole rule file: one group per app with rules, then the defaults.
pub fn render(apps: &[(String, String, Vec<AlertRule>)]) -> String {
    let mut groups: Vec<Value> = apps
        .iter()
        .filter(|(_, _, rules)| !rules.is_empty())
        .map(|(app, ns, rules)| {
            json!({
                "name": format!("app-{app}"),
                "rules": rules.iter().map(|r| rule_json(app, ns, r)).collect::<Vec<_>>(),
            })
        })
        .collect();
    groups.push(default_rules());
    let mut text = serde_json::to_string_pretty(&json!({ "groups": groups })).unwrap_or_default();
    text.push('\n');
    text
}

/// Every app's rules with its namespace (apps without a spec are skipped:
/// they run nowhere).
async fn all_rules(db: &Db) -> Result<Vec<(String, String, Vec<AlertRule>)>, ApiError> {
    let root = db.keys.core_alert_rules_root();
    let rules = db.list::<AlertRule>(&root).await?;
    let mut out: Vec<(String, String, Vec<AlertRule>)> = Vec::new();
    for (key, rule) in rules {
        let Some(app) = key
            .strip_prefix(&root)
            .and_then(|r| r.split_once('/'))
            .map(|(a, _)| a.to_string())
        else {
            continue;
        };
        match out.last_mut() {
            Some(last) if last.0 == app => last.2.push(rule),
            _ => {
                let Some(spec) = db.get::<AppSpec>(&db.keys.app(&app)).await? else {
                    continue;
                };
                out.push((app, spec.value.namespace, vec![rule]));
            }
        }
    }
    Ok(out)
}

/// Renders the rule file from etcd and, when it changed, writes it
/// (atomically) and reloads Prometheus. No rules file configured: nothing.
pub async fn sync(core: &Core) -> Result<(), ApiError> {
    let Some(path) = core.settings.monitor.rules_file.clone() else {
        return Ok(());
    };
    let text = render(&all_rules(&core.db).await?);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    write_atomic(&path, &text)
        .map_err(|e| ApiError::internal(format!("writing {}: {e}", path.display())))?;
    super::prometheus(core)?.reload().await
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Re-syncs periodically: rules written by other core replicas reach this
/// replica's file too.
pub async fn sync_loop(core: Core, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = sync(&core).await {
            tracing::warn!(error = %e, "alert rules not synced to Prometheus");
        }
    }
}

pub fn router() -> Router<Core> {
    Router::new()
        .route("/api/v1/apps/{name}/alerts", get(list).post(create))
        .route(
            "/api/v1/apps/{name}/alerts/{rule}",
            get(show).put(replace).delete(remove),
        )
}

async fn list(
    State(core): State<Core>,
    caller: Caller,
    UrlPath(app): UrlPath<String>,
) -> Result<Json<Vec<AlertRule>>, ApiError> {
    access::authorize(&core.db, Some(&caller), Kind::App, &app, Action::View).await?;
    let rules = core
        .db
        .list::<AlertRule>(&core.db.keys.core_alert_rules_prefix(&app))
        .await?;
    Ok(Json(rules.into_iter().map(|(_, r)| r).collect()))
}

async fn show(
    State(core): State<Core>,
    caller: Caller,
    UrlPath((app, rule)): UrlPath<(String, String)>,
) -> Result<Json<AlertRule>, ApiError> {
    access::authorize(&core.db, Some(&caller), Kind::App, &app, Action::View).await?;
    core.db
        .get::<AlertRule>(&core.db.keys.core_alert_rule(&app, &rule))
        .await?
        .map(|r| Json(r.value))
        .ok_or_else(|| not_found(&rule))
}

fn not_found(rule: &str) -> ApiError {
    ApiError::not_found("alert_rule_not_found", format!("no alert rule {rule}"))
}

async fn create(
    State(core): State<Core>,
    caller: Caller,
    UrlPath(app): UrlPath<String>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<AlertRule>), ApiError> {
    access::authorize(&core.db, Some(&caller), Kind::App, &app, Action::Update).await?;
    let rule = parse_rule(&body, None, &caller.user)?;
    let key = core.db.keys.core_alert_rule(&app, &rule.name);
    let done = core
        .db
        .commit(
            vec![store::absent(&key)],
            vec![
                store::put(&key, &rule),
                event(&core, &caller, &app, "alert_rule_created", &rule),
            ],
        )
        .await?;
    if !done.applied() {
        return Err(ApiError::conflict(
            "alert_rule_exists",
            format!("alert rule {} exists", rule.name),
        ));
    }
    synced(&core).await;
    Ok((StatusCode::CREATED, Json(rule)))
}

async fn replace(
    State(core): State<Core>,
    caller: Caller,
    UrlPath((app, name)): UrlPath<(String, String)>,
    Json(body): Json<Value>,
) -> Result<Json<AlertRule>, ApiError> {
    access::authorize(&core.db, Some(&caller), Kind::App, &app, Action::Update).await?;
    let rule = parse_rule(&body, Some(&name), &caller.user)?;
    let key = core.db.keys.core_alert_rule(&app, &name);
    let done = core
        .db
        .commit(
            vec![store::present(&key)],
            vec![
                store::put(&key, &rule),
                event(&core, &caller, &app, "alert_rule_updated", &rule),
            ],
        )
        .await?;
    if !done.applied() {
        return Err(not_found(&name));
    }
    synced(&core).await;
    Ok(Json(rule))
}

async fn remove(
    State(core): State<Core>,
    caller: Caller,
    UrlPath((app, name)): UrlPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    access::authorize(&core.db, Some(&caller), Kind::App, &app, Action::Update).await?;
    let key = core.db.keys.core_alert_rule(&app, &name);
    let ev = activity::event(&caller.user, "alert_rule_deleted", json!({ "rule": name }));
    let done = core
        .db
        .commit(
            vec![store::present(&key)],
            vec![
                store::delete(&key),
                activity::op(&core.db.keys, Kind::App, &app, &ev),
            ],
        )
        .await?;
    if !done.applied() {
        return Err(not_found(&name));
    }
    synced(&core).await;
    Ok(StatusCode::NO_CONTENT)
}

fn event(
    core: &Core,
    caller: &Caller,
    app: &str,
    action: &str,
    r: &AlertRule,
) -> etcd_client::TxnOp {
    let ev = activity::event(&caller.user, action, json!({ "rule": r }));
    activity::op(&core.db.keys, Kind::App, app, &ev)
}

/// The rule is stored either way; a Prometheus that is down gets it at the
/// next periodic sync.
async fn synced(core: &Core) {
    if let Err(e) = sync(core).await {
        tracing::warn!(error = %e, "alert rule stored; Prometheus not reloaded yet");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<AlertRule, ApiError> {
        parse_rule(&v, None, "u")
    }

    #[test]
    fn every_bad_field_is_named() {
        let ok = json!({"name": "cpu-high", "metric": "cpu_percent", "comparison": ">", "threshold": 50, "for": "30s"});
        let r = parse(ok.clone()).unwrap();
        assert_eq!((r.for_seconds, r.threshold), (30, 50.0));
        for (k, v) in [
            ("name", json!("Bad Name")),
            ("metric", json!("load")),
            ("comparison", json!("==")),
            ("threshold", json!("high")),
            ("for", json!("soon")),
            ("for", json!("48h")),
            ("bogus", json!(1)),
        ] {
            let mut body = ok.clone();
            body[k] = v;
            let e = parse(body).unwrap_err();
            assert_eq!(e.code, "invalid_alert_rule");
            assert!(e.detail.starts_with(&format!("{k}:")), "{k}: {}", e.detail);
        }
        let mut no_threshold = ok.clone();
        no_threshold.as_object_mut().unwrap().remove("threshold");
        assert!(parse(no_threshold)
            .unwrap_err()
            .detail
            .starts_with("threshold:"));
        let mut mem = ok;
        mem["metric"] = json!("memory_percent");
        mem["threshold"] = json!(150);
        assert!(parse(mem).unwrap_err().detail.starts_with("threshold:"));
        assert!(parse_rule(&json!({"name": "x"}), Some("y"), "u")
            .unwrap_err()
            .detail
            .starts_with("name:"));
    }

    #[test]
    fn rules_render_with_the_namespace_fixed() {
        let r = parse(json!({"name": "cpu", "metric": "cpu_percent", "comparison": ">=", "threshold": 80, "for": "1m"})).unwrap();
        let text = render(&[("web".into(), "web-\"u1".into(), vec![r])]);
        let v: Value = serde_json::from_str(&text).unwrap();
        let rule = &v["groups"][0]["rules"][0];
        assert_eq!(
            rule["expr"],
            format!("{} >= 80", super::super::promql::cpu_percent("web-\"u1"))
        );
        assert_eq!(rule["for"], "60s");
        assert_eq!(rule["labels"]["leengine_app"], "web");
        assert_eq!(v["groups"][1]["name"], "leengine-defaults");
    }
}
