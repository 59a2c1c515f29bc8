//! OpenAPI paths and schemas of monitoring (`crate::monitor`): the series
//! read API, alert rules, notification contacts, Prometheus' service
//! discovery and Alertmanager's webhook.

use serde_json::{json, Map, Value};

use super::{array, no_content, ok_json, op, path_param, problem, schema_ref};
use crate::monitor::alerts::RuleMetric;
use crate::monitor::promql::Metric;

fn range_params() -> Vec<Value> {
    let q = |name: &str, desc: &str, min: i64| {
        json!({ "name": name, "in": "query", "required": false, "description": desc,
            "schema": { "type": "integer", "minimum": min } })
    };
    vec![
        q("start", "unix seconds; default: end - 1 h", 0),
        q("end", "unix seconds; default: now", 0),
        q(
            "step",
            "seconds between points; default: about 240 points, at most 11,000",
            1,
        ),
    ]
}

fn series_op(id: &str, summary: &str, params: Vec<Value>) -> Value {
    let mut o = op(
        id,
        summary,
        true,
        &params,
        None,
        ok_json("200", schema_ref("SeriesView")),
    );
    o["responses"]["404"] =
        problem("no such app, or an unknown metric (`unknown_metric`, listing the known ones)");
    o["responses"]["409"] = problem("the app has no spec yet (`app_not_deployed`)");
    o["responses"]["502"] = problem("Prometheus refused the query");
    o["responses"]["503"] = problem("no Prometheus configured, or it does not answer");
    o
}

pub(super) fn paths(p: &mut Map<String, Value>) {
    let name = path_param("name");
    let metric = path_param("metric");
    let mut app = vec![name.clone(), metric.clone()];
    app.extend(range_params());
    let mut pod = vec![name.clone(), path_param("pod"), metric];
    pod.extend(range_params());
    p.insert("/api/v1/apps/{name}/metrics/{metric}".into(), json!({
        "get": series_op("appMetric", "an app's series over a range, by pod (requests: by status class); the query is built by core with the app's namespace fixed (Guest+)", app),
    }));
    p.insert("/api/v1/apps/{name}/pods/{pod}/metrics/{metric}".into(), json!({
        "get": series_op("podMetric", "one pod's series over a range, by container (Guest+)", pod),
    }));

    let rule = [name.clone(), path_param("rule")];
    let mut create = op(
        "createAlertRule",
        "add an alert rule; invalid fields → 400 `invalid_alert_rule` naming the field (Master+)",
        true,
        std::slice::from_ref(&name),
        Some(schema_ref("AlertRuleInput")),
        ok_json("201", schema_ref("AlertRule")),
    );
    create["responses"]["409"] = problem("a rule of that name exists (`alert_rule_exists`)");
    p.insert("/api/v1/apps/{name}/alerts".into(), json!({
        "get": op("listAlertRules", "the app's alert rules (Guest+)", true, &[name], None, ok_json("200", array("AlertRule"))),
        "post": create,
    }));
    p.insert("/api/v1/apps/{name}/alerts/{rule}".into(), json!({
        "get": op("getAlertRule", "one alert rule (Guest+)", true, &rule, None, ok_json("200", schema_ref("AlertRule"))),
        "put": op("replaceAlertRule", "replace an alert rule; `name`, if given, must match the path (Master+)",
            true, &rule, Some(schema_ref("AlertRuleInput")), ok_json("200", schema_ref("AlertRule"))),
        "delete": op("deleteAlertRule", "delete an alert rule (Master+)", true, &rule, None, no_content()),
    }));

    p.insert("/api/v1/user/notifications".into(), json!({
        "get": op("getNotifications", "where the caller's alerts go", true, &[], None, ok_json("200", schema_ref("Contact"))),
        "put": op("setNotifications", "set where the caller's alerts go (`invalid_contact` naming the field)", true, &[],
            Some(schema_ref("Contact")), ok_json("200", schema_ref("Contact"))),
    }));

    let mut targets = op("monitorTargets", "Prometheus http_sd: the agents' scrape addresses from their etcd registrations (anonymous)",
        false, &[], None, ok_json("200", array("TargetGroup")));
    targets["security"] = json!([]);
    p.insert("/api/v1/monitor/targets".into(), json!({ "get": targets }));
    let mut hook = op("alertmanagerWebhook", "Alertmanager's webhook (version 4 payload; bearer = the webhook secret): each alert notifies the app's Owners and Masters and enters its activity",
        true, &[], Some(schema_ref("AlertmanagerPayload")), ("200".to_string(), json!({ "description": "delivered" })));
    hook["security"] = json!([{ "bearer": [] }]);
    hook["responses"]["404"] = problem("the webhook is not configured (`alerts_disabled`)");
    p.insert(
        "/api/v1/monitor/alertmanager".into(),
        json!({ "post": hook }),
    );
}

pub(super) fn schemas(s: &mut Map<String, Value>) {
    let metrics: Vec<&str> = Metric::ALL.iter().map(|m| m.as_str()).collect();
    let rule_metrics: Vec<String> = RuleMetric::ALL.iter().map(|m| m.name()).collect();
    let comparison = json!({ "type": "string", "enum": [">", ">=", "<", "<="] });
    let string_map = json!({ "type": "object", "additionalProperties": { "type": "string" } });
    let more = json!({
        "SeriesView": { "type": "object", "required": ["metric", "unit", "start", "end", "step", "series"], "properties": {
            "metric": { "type": "string", "enum": metrics }, "unit": { "type": "string" },
            "start": { "type": "integer" }, "end": { "type": "integer" }, "step": { "type": "integer" },
            "series": { "type": "array", "items": { "type": "object", "required": ["labels", "points"], "properties": {
                "labels": string_map,
                "points": { "type": "array", "description": "[unix seconds, value]",
                    "items": { "type": "array", "items": { "type": "number" }, "minItems": 2, "maxItems": 2 } } } } } } },
        "AlertRuleInput": { "type": "object", "required": ["metric", "comparison", "threshold"], "additionalProperties": false, "properties": {
            "name": { "type": "string", "description": "required on POST; on PUT it must equal the path's" },
            "metric": { "type": "string", "enum": rule_metrics }, "comparison": comparison,
            "threshold": { "type": "number", "description": "memory_percent: 0-100" },
            "for": { "type": "string", "description": "how long the condition must hold, e.g. `30s`, `5m`; whole seconds, at most 24h; default 0" } } },
        "AlertRule": { "type": "object", "required": ["name", "metric", "comparison", "threshold", "forSeconds", "updatedBy", "updated"], "properties": {
            "name": { "type": "string" }, "metric": { "type": "string", "enum": rule_metrics }, "comparison": comparison,
            "threshold": { "type": "number" }, "forSeconds": { "type": "integer" },
            "updatedBy": { "type": "string" }, "updated": { "type": "string", "format": "date-time" } } },
        "Contact": { "type": "object", "additionalProperties": false, "properties": {
            "email": { "type": "string" }, "webhook": { "type": "string", "description": "http://host:port/path; gets a JSON POST per notification" } } },
        "TargetGroup": { "type": "object", "required": ["targets", "labels"], "properties": {
            "targets": { "type": "array", "items": { "type": "string" } }, "labels": string_map } },
        "AlertmanagerPayload": { "type": "object", "required": ["alerts"], "properties": { "alerts": { "type": "array", "items": {
            "type": "object", "required": ["status", "fingerprint"], "properties": {
                "status": { "type": "string", "enum": ["firing", "resolved"] }, "labels": string_map, "annotations": string_map,
                "startsAt": { "type": "string" }, "endsAt": { "type": "string" }, "fingerprint": { "type": "string" } } } } } },
    });
    if let Value::Object(m) = more {
        s.extend(m);
    }
}
