//! The autoscaler (docs/apps.md#autoscaling): the I/O around
//! [`autoscale`]'s rules. It runs on the reconciler's leader, every
//! `DeploySettings::autoscale_period`: for each app with a policy it reads
//! the targets from Prometheus, decides per Cell, and writes a new count
//! through [`api::change`] — the quota, the activity entry and the version
//! record exactly as a user's scaling, so a scale-down is the reconciler's
//! drained one. Each decision is also a Kubernetes Event on the Deployment.
//! And the policy endpoints: `GET/PUT/DELETE /api/v1/apps/{name}/autoscale`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, PostParams};
use serde::Serialize;

use super::api::{self, Change};
use super::autoscale::{self, CellStatus, Context, Decision, History, Policy, PolicyFields};
use super::autoscale::{Reading, Status};
use super::objects;
use super::reconcile::{self, Desired};
use super::spec::{deployment_name, AppSpec, VersionSpec};
use crate::access::{Action, Kind};
use crate::activity;
use crate::auth::Caller;
use crate::monitor::{self, promql};
use crate::problem::{ApiError, Json, Path};
use crate::quota::{self, Delta};
use crate::server::Core;
use crate::stats::Metric;
use crate::store;

/// Who the activity feed names for the autoscaler's changes.
pub const AUTOSCALER: &str = "leengine-autoscaler";

pub fn router() -> Router<Core> {
    Router::new().route(
        "/api/v1/apps/{name}/autoscale",
        get(show).put(set).delete(remove),
    )
}

/// The policy and what the autoscaler last saw and did.
#[derive(Debug, Serialize)]
pub struct View {
    #[serde(flatten)]
    pub policy: Policy,
    pub status: Option<Status>,
}

async fn show(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<View>, ApiError> {
    api::load(&core, &caller, &name, Action::View).await?;
    let keys = &core.db.keys;
    let policy = core
        .db
        .get::<Policy>(&keys.app_autoscale(&name))
        .await?
        .ok_or_else(no_policy)?
        .value;
    let status = core
        .db
        .get::<Status>(&keys.app_autoscale_status(&name))
        .await?
        .map(|s| s.value);
    Ok(Json(View { policy, status }))
}

fn no_policy() -> ApiError {
    ApiError::not_found("no_policy", "the app has no autoscaling policy")
}

/// Owner or Master (the right to scale). Checked against the newest
/// version: its requests for CPU and memory targets, and the quota for
/// `max` in every Cell.
async fn set(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
    Json(fields): Json<PolicyFields>,
) -> Result<Json<Policy>, ApiError> {
    let db = &core.db;
    let core = &core;
    let (caller, name, fields) = (&caller, &name, &fields);
    let policy = store::optimistic(move || async move {
        let cur = api::load(core, caller, name, Action::Scale).await?;
        let newest = cur.versions.last();
        fields.check(&Context {
            has_lb: cur.spec.lb.is_some(),
            resources: newest.map(|v| &v.resources),
        })?;
        let mut compares = match newest {
            Some(v) => max_fits_quota(core, &cur, v, fields.max).await?,
            None => Vec::new(),
        };
        let policy = Policy {
            policy: fields.clone(),
            by: caller.user.clone(),
            at: Utc::now(),
        };
        let ev = activity::event(&caller.user, "autoscale_set", serde_json::to_value(fields)?);
        compares.push(cur.grant.resource.unchanged());
        let ops = vec![
            store::put(db.keys.app_autoscale(name), &policy),
            activity::op(&db.keys, Kind::App, name, &ev),
        ];
        Ok(db.commit(compares, ops).await?.applied().then_some(policy))
    })
    .await?;
    Ok(Json(policy))
}

/// The quota's compares when `max` replicas of `v` in every Cell fit it:
/// checked, not charged (the autoscaler charges each step).
async fn max_fits_quota(
    core: &Core,
    cur: &api::Current,
    v: &VersionSpec,
    max: u32,
) -> Result<Vec<etcd_client::Compare>, ApiError> {
    let cells = &cur.spec.cells;
    let mut at_max = v.clone();
    at_max.cells = cells.iter().map(|c| (c.clone(), max)).collect();
    let more = at_max.charge(cells) - v.charge(cells);
    let more = Delta {
        containers: more.containers.max(0),
        cpu_millis: more.cpu_millis.max(0),
        memory_bytes: more.memory_bytes.max(0),
        ..Delta::default()
    };
    let creator = &cur.grant.resource.value.creator;
    let (compares, _) = quota::charge(&core.db, core.settings.default_quota, creator, more).await?;
    Ok(compares)
}

/// The counts stay where the autoscaler left them.
async fn remove(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let db = &core.db;
    let cur = api::load(&core, &caller, &name, Action::Scale).await?;
    let key = db.keys.app_autoscale(&name);
    let rec = db.get::<Policy>(&key).await?.ok_or_else(no_policy)?;
    let ev = activity::event(&caller.user, "autoscale_removed", serde_json::json!({}));
    let ops = vec![
        store::delete(key),
        store::delete(db.keys.app_autoscale_status(&name)),
        activity::op(&db.keys, Kind::App, &name, &ev),
    ];
    if !db
        .commit(vec![rec.unchanged(), cur.grant.resource.unchanged()], ops)
        .await?
        .applied()
    {
        return Err(store::contention());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Runs until dropped (with the reconciler's leadership). The histories
/// live in memory: a new leader starts with empty windows, so its first
/// scale-down waits a whole down window.
pub async fn run(core: Core) {
    let mut histories: BTreeMap<(String, String), History> = BTreeMap::new();
    let mut tick = tokio::time::interval(core.settings.deploy.autoscale_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = pass(&core, &mut histories).await {
            tracing::warn!(error = %e, "autoscale pass failed");
        }
    }
}

async fn pass(
    core: &Core,
    histories: &mut BTreeMap<(String, String), History>,
) -> Result<(), ApiError> {
    let d = reconcile::read_desired(core).await?;
    histories.retain(|(app, _), _| d.policies.contains_key(app));
    for (name, policy) in &d.policies {
        let Some(app) = d.apps.get(name) else {
            continue;
        };
        let Some(newest) = d.versions.get(name).and_then(|v| v.last()) else {
            continue;
        };
        let key = core.db.keys.app_autoscale_status(name);
        let before = core.db.get::<Status>(&key).await?.map(|s| s.value);
        let mut status = Status {
            version: newest.version,
            ..Status::default()
        };
        // Every ready pod of the app, in every Cell and version, shares
        // the domain's requests.
        let app_ready = d
            .status
            .iter()
            .filter(|((a, _), _)| a == name)
            .flat_map(|(_, st)| &st.versions)
            .map(|v| v.ready)
            .sum();
        for cell in &app.cells {
            let h = histories.entry((name.clone(), cell.clone())).or_default();
            let cx = CellCx {
                d: &d,
                app,
                newest,
                app_ready,
            };
            let mut s = decide_cell(core, &cx, &policy.policy, cell, h).await;
            // The last change stays on show until the next one.
            if s.last_scale.is_none() {
                s.last_scale = before
                    .as_ref()
                    .and_then(|b| b.cells.get(cell))
                    .and_then(|c| c.last_scale.clone());
            }
            status.cells.insert(cell.clone(), s);
        }
        status.at = Some(Utc::now());
        if let Err(e) = core.db.commit(vec![], vec![store::put(key, &status)]).await {
            tracing::warn!(app = %name, error = %e, "writing autoscale status");
        }
    }
    Ok(())
}

/// What one app's decisions in each of its Cells read.
struct CellCx<'a> {
    d: &'a Desired,
    app: &'a AppSpec,
    newest: &'a VersionSpec,
    app_ready: u32,
}

async fn decide_cell(
    core: &Core,
    cx: &CellCx<'_>,
    p: &PolicyFields,
    cell: &str,
    history: &mut History,
) -> CellStatus {
    let CellCx {
        d,
        app,
        newest,
        app_ready,
    } = *cx;
    let current = newest.replicas_in(cell);
    let mut s = CellStatus {
        current,
        desired: current,
        ..CellStatus::default()
    };
    let ready = match observed(d, app, newest, cell) {
        Ok(ready) => ready,
        Err(why) => {
            s.frozen = Some(why);
            return s;
        }
    };
    s.ready = ready;
    match readings(core, app, newest, p, cell, app_ready).await {
        Ok(rs) => s.readings = rs,
        Err(why) => {
            s.frozen = Some(why);
            return s;
        }
    }
    let (rec, why) = autoscale::recommend(ready, &s.readings, p.tolerance());
    s.recommended = Some(rec);
    let next = history.decide(p, Utc::now().timestamp(), current, rec);
    s.desired = next;
    if next == current {
        return s;
    }
    let decision = Decision {
        at: Utc::now(),
        from: current,
        to: next,
        reading: why.cloned(),
    };
    match apply(core, app, newest, cell, &decision).await {
        Ok(()) => {
            event(core, app, newest, cell, &decision).await;
            s.last_scale = Some(decision);
        }
        Err(e) => {
            s.desired = current;
            s.frozen = Some(format!("scaling to {next} refused: {}", e.detail));
        }
    }
    s
}

/// The newest version's ready pods in `cell`, or why nothing may be
/// decided there.
fn observed(d: &Desired, app: &AppSpec, newest: &VersionSpec, cell: &str) -> Result<u32, String> {
    let versions = d.versions.get(&app.name).map_or(&[][..], Vec::as_slice);
    if newest.replaced(versions).is_some() {
        return Err("a replacement is under way: the count is frozen until it ends".into());
    }
    let st = d
        .status
        .get(&(app.name.clone(), cell.to_string()))
        .ok_or_else(|| format!("Cell {cell} not reconciled yet: the count is frozen"))?;
    if let Some(e) = &st.error {
        return Err(format!("Cell {cell} unreadable: {e}; the count is frozen"));
    }
    let ready = st
        .versions
        .iter()
        .find(|v| v.version == newest.version)
        .map_or(0, |v| v.ready);
    if ready == 0 {
        return Err("no ready pod to measure: the count is frozen".into());
    }
    Ok(ready)
}

/// Every target's reading, or why one is missing (Prometheus down or
/// unset, no series).
async fn readings(
    core: &Core,
    app: &AppSpec,
    newest: &VersionSpec,
    p: &PolicyFields,
    cell: &str,
    app_ready: u32,
) -> Result<Vec<Reading>, String> {
    let prom =
        monitor::prometheus(core).map_err(|e| format!("{}; the count is frozen", e.detail))?;
    let domain = app.lb.as_ref().map(|l| l.domain.as_str());
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (metric, target) in p.targets.list() {
        let q = promql::autoscale(
            metric,
            &app.namespace,
            cell,
            newest.version,
            domain,
            p.window_seconds,
        )
        .ok_or_else(|| format!("{} needs the app's load balancer", metric.as_str()))?;
        let series = prom
            .query(&q)
            .await
            .map_err(|e| format!("{}; the count is frozen", e.detail))?;
        let values: Vec<f64> = series
            .iter()
            .filter_map(|s| s.points.last().map(|(_, v)| *v))
            .collect();
        match autoscale::per_pod(metric, &values, app_ready, &newest.resources) {
            Some(value) => out.push(Reading {
                metric,
                value,
                target,
            }),
            None => missing.push(metric),
        }
    }
    match autoscale::frozen_reason(&missing) {
        Some(why) => Err(why),
        None => Ok(out),
    }
}

/// The new count in `cell`, if the newest version is still `newest`.
async fn apply(
    core: &Core,
    app: &AppSpec,
    newest: &VersionSpec,
    cell: &str,
    decision: &Decision,
) -> Result<(), ApiError> {
    let caller = Caller {
        user: AUTOSCALER.into(),
        admin: true,
    };
    api::change(core, &caller, &app.name, Action::Scale, |cur| {
        let v = cur
            .versions
            .last()
            .filter(|v| v.version == newest.version && v.replicas_in(cell) == decision.from)
            .ok_or_else(|| ApiError::conflict("changed", "the app changed since the reading"))?;
        let mut v = v.clone();
        v.cells.insert(cell.to_string(), decision.to);
        Ok(Change {
            detail: serde_json::json!({
                "version": v.version,
                "cell": cell,
                "from": decision.from,
                "to": decision.to,
                "reading": decision.reading,
                "reason": decision.reason(),
            }),
            put: vec![v],
            delete: vec![],
            state: cur.state()?,
            metric: Metric::Scalings,
            verb: "autoscaled",
        })
    })
    .await?;
    tracing::info!(app = %app.name, cell, reason = %decision.reason(), "autoscaled");
    Ok(())
}

/// A Normal Event on the Deployment, beside the reconciler's own.
async fn event(core: &Core, app: &AppSpec, v: &VersionSpec, cell: &str, decision: &Decision) {
    let ev: Event = objects::deployment_event(
        &app.namespace,
        &deployment_name(v.version),
        ("Normal", "Autoscaled", decision.reason()),
    );
    let sent = async {
        let client = api::cell_client(core, cell).await?;
        Api::<Event>::namespaced(client, &app.namespace)
            .create(&PostParams::default(), &ev)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))
    };
    if let Err(e) = sent.await {
        tracing::warn!(app = %app.name, cell, error = %e, "recording the autoscale event");
    }
}
