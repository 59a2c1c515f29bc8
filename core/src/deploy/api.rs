//! Versions of an app (deploy, scale, delete: desired state only — the
//! reconciler does the rest) and the live reads from the Cells (versions
//! with ready/desired per Cell, containers, events).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};

use super::objects::{self, MANAGED_SELECTOR};
use super::reconcile::CellStatus;
use super::spec::{self, deployment_name, AppSpec, VersionFields, VersionSpec};
use crate::access::{self, Action, Grant, Kind, Resource};
use crate::activity;
use crate::apps::AppState;
use crate::auth::Caller;
use crate::cells;
use crate::problem::{ApiError, Json, Path, Query};
use crate::quota::{self, Delta};
use crate::server::Core;
use crate::stats::{self, Metric};
use crate::store;

pub fn router() -> Router<Core> {
    Router::new()
        .route(
            "/api/v1/apps/{name}/versions",
            get(list_versions).post(create_version),
        )
        .route("/api/v1/apps/{name}/versions/template", get(template))
        .route(
            "/api/v1/apps/{name}/versions/{version}",
            get(show_version).delete(delete_version),
        )
        .route(
            "/api/v1/apps/{name}/versions/{version}/scale",
            post(scale_version),
        )
        .route("/api/v1/apps/{name}/containers", get(containers))
        .route("/api/v1/apps/{name}/events", get(events))
        .route("/api/v1/apps/{name}/status", get(status))
}

/// The app as stored: its resource record (with the summary), its spec and
/// its versions, oldest first.
#[derive(Debug)]
pub struct Current {
    pub grant: Grant,
    pub spec: AppSpec,
    pub versions: Vec<VersionSpec>,
}

impl Current {
    pub fn state(&self) -> Result<AppState, ApiError> {
        AppState::of(&self.grant.resource.value)
    }
    pub fn version(&self, n: u64) -> Result<&VersionSpec, ApiError> {
        self.versions
            .iter()
            .find(|v| v.version == n)
            .ok_or_else(|| version_not_found(n))
    }
}

fn version_not_found(n: u64) -> ApiError {
    ApiError::not_found("version_not_found", format!("version {n} not found"))
}

fn parse_version(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::not_found("version_not_found", format!("version {s} not found")))
}

/// Authorizes `action` on the app and reads everything it is made of.
pub async fn load(
    core: &Core,
    caller: &Caller,
    name: &str,
    action: Action,
) -> Result<Current, ApiError> {
    let grant = access::authorize(&core.db, Some(caller), Kind::App, name, action).await?;
    let keys = &core.db.keys;
    let spec = core
        .db
        .get::<AppSpec>(&keys.app(name))
        .await?
        .ok_or_else(|| {
            ApiError::conflict("app_incomplete", format!("app {name} has no desired state"))
        })?
        .value;
    let versions = core
        .db
        .list::<VersionSpec>(&keys.app_versions_prefix(name))
        .await?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    Ok(Current {
        grant,
        spec,
        versions,
    })
}

/// One change of an app's versions, decided on a fresh read.
#[derive(Debug)]
pub struct Change {
    pub put: Vec<VersionSpec>,
    pub delete: Vec<u64>,
    pub state: AppState,
    pub metric: Metric,
    pub verb: &'static str,
    pub detail: serde_json::Value,
}

/// Writes `decide`'s change with the quota charge (containers, CPU and
/// memory requests over the app's Cells), the activity event and the daily count in one
/// transaction, retried on contention. Returns the resource after it.
pub async fn change(
    core: &Core,
    caller: &Caller,
    name: &str,
    action: Action,
    decide: impl Fn(&Current) -> Result<Change, ApiError>,
) -> Result<(Resource, Grant, Change), ApiError> {
    let db = &core.db;
    let decide = &decide;
    store::optimistic(move || async move {
        let cur = load(core, caller, name, action).await?;
        let ch = decide(&cur)?;
        let cells = &cur.spec.cells;
        let before: Delta = cur
            .versions
            .iter()
            .filter(|v| {
                ch.delete.contains(&v.version) || ch.put.iter().any(|p| p.version == v.version)
            })
            .map(|v| v.charge(cells))
            .sum();
        let after: Delta = ch.put.iter().map(|v| v.charge(cells)).sum();
        let mut r = cur.grant.resource.value.clone();
        let (mut compares, mut ops) =
            quota::charge(db, core.settings.default_quota, &r.creator, after - before).await?;
        let ev = activity::event(&caller.user, ch.verb, ch.detail.clone());
        let key = db.keys.core_resource(Kind::App.as_str(), name);
        compares.push(cur.grant.resource.unchanged());
        for v in &ch.put {
            ops.push(store::put(db.keys.app_version(name, v.version), v));
        }
        for n in &ch.delete {
            ops.push(store::delete(db.keys.app_version(name, *n)));
        }
        ch.state.put(&mut r);
        ops.push(store::put(key, &r));
        ops.push(activity::op(&db.keys, Kind::App, name, &ev));
        ops.push(stats::op(&db.keys, ch.metric, ev.at, &ev.id, name));
        if !db.commit(compares, ops).await?.applied() {
            return Ok(None);
        }
        tracing::info!(user = %caller.user, app = %name, action = ch.verb, "app changed");
        Ok(Some((r, cur.grant, ch)))
    })
    .await
}

/// Deploying makes the platform pull the image with its own robot, so
/// whoever deploys must be allowed to pull it. Every refusal is the same
/// 403 (existence of private images is not revealed).
pub async fn check_may_pull(core: &Core, caller: &Caller, image: &str) -> Result<(), ApiError> {
    let refused = || {
        ApiError::forbidden(
            "image_pull_forbidden",
            format!("{image:?} is not an image of the platform registry ([registry/]group/repo) that you may pull"),
        )
    };
    let repo = crate::apps::image_repository(image).ok_or_else(refused)?;
    if crate::registry::rights(core, Some(caller), repo)
        .await?
        .allows(Action::Pull)
    {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Validates `f` and deploys it as the next version. Shared by
/// `POST …/versions` and the one-call `POST …/deploy`.
pub async fn deploy(
    core: &Core,
    caller: &Caller,
    name: &str,
    fields: impl Fn(&Current) -> VersionFields,
) -> Result<(Resource, Grant, VersionSpec), ApiError> {
    // The app first: a non-member learns nothing about images here.
    let cur = load(core, caller, name, Action::Deploy).await?;
    let first = fields(&cur);
    let image = resolve_image(&cur.spec, &first)?;
    crate::apps::check_image_ref(&image, &first.tag)?;
    spec::check(&first, &cur.spec.cells)?;
    check_may_pull(core, caller, &image).await?;
    crate::registry::manifest::require_tag(core, &image, &first.tag).await?;
    let by = caller.user.clone();
    let (r, g, ch) = change(core, caller, name, Action::Deploy, |cur| {
        let f = fields(cur);
        let image = resolve_image(&cur.spec, &f)?;
        spec::check(&f, &cur.spec.cells)?;
        let replaces = replaced_by_deploy(cur, f.replace)?;
        let n = cur.state()?.version + 1;
        let v = VersionSpec {
            version: n,
            image,
            tag: f.tag,
            replicas: f.replicas,
            cells: f.cells,
            resources: f.resources,
            env: f.env,
            health: f.health,
            replaces,
            by: by.clone(),
            at: Utc::now(),
        };
        Ok(Change {
            state: AppState {
                version: n,
                image: Some(v.image.clone()),
                tag: Some(v.tag.clone()),
                replicas: v.replicas,
            },
            detail: serde_json::json!({"version": n, "image": v.image, "tag": v.tag, "replicas": v.replicas, "cells": v.cells, "replaces": v.replaces}),
            put: vec![v],
            delete: vec![],
            metric: Metric::Deploys,
            verb: "deployed",
        })
    })
    .await?;
    Ok((r, g, the_version(ch)?))
}

/// The version a `replace` deploy replaces: the newest one. Replacing a
/// version that is itself still replacing another is refused, so one
/// handover runs at a time and each old pod is counted once.
fn replaced_by_deploy(cur: &Current, replace: bool) -> Result<Option<u64>, ApiError> {
    let Some(newest) = cur.versions.last().filter(|_| replace) else {
        return Ok(None);
    };
    if let Some(old) = newest.replaced(&cur.versions) {
        return Err(ApiError::conflict(
            "replacement_in_progress",
            format!(
                "version {} is still replacing version {}; wait for it or delete one of them",
                newest.version, old.version
            ),
        ));
    }
    Ok(Some(newest.version))
}

/// Who the activity feed names for what the reconciler decides itself.
pub const PLATFORM_ACTOR: &str = "leengine";

/// Deletes version `old` once `new` has replaced it in every Cell: its
/// quota charge is released, and the feed says `version_replaced`. Nothing
/// is written when either record changed meanwhile (a user deleted one,
/// or `new` no longer replaces `old`); the next pass decides again.
pub async fn retire_replaced(core: &Core, app: &str, old: u64, new: u64) -> Result<(), ApiError> {
    let db = &core.db;
    let keys = &db.keys;
    store::optimistic(|| async move {
        let (resource, spec) = (keys.core_resource(Kind::App.as_str(), app), keys.app(app));
        let (old_key, new_key) = (keys.app_version(app, old), keys.app_version(app, new));
        let (resource, spec, old_v, new_v) = tokio::try_join!(
            db.get::<Resource>(&resource),
            db.get::<AppSpec>(&spec),
            db.get::<VersionSpec>(&old_key),
            db.get::<VersionSpec>(&new_key),
        )?;
        let (Some(resource), Some(spec), Some(old_v), Some(new_v)) = (resource, spec, old_v, new_v)
        else {
            return Ok(Some(()));
        };
        if new_v.value.replaces != Some(old) {
            return Ok(Some(()));
        }
        let freed = Delta::default() - old_v.value.charge(&spec.value.cells);
        let (mut compares, mut ops) = quota::charge(
            db,
            core.settings.default_quota,
            &resource.value.creator,
            freed,
        )
        .await?;
        compares.extend([old_v.unchanged(), new_v.unchanged(), spec.unchanged()]);
        let ev = activity::event(
            PLATFORM_ACTOR,
            "version_replaced",
            serde_json::json!({"version": old, "tag": old_v.value.tag, "by_version": new}),
        );
        ops.push(store::delete(old_key.clone()));
        ops.push(activity::op(keys, Kind::App, app, &ev));
        if !db.commit(compares, ops).await?.applied() {
            return Ok(None);
        }
        tracing::info!(app, old, new, "version replaced");
        Ok(Some(()))
    })
    .await
}

/// The one version a deploy or a scaling wrote.
fn the_version(ch: Change) -> Result<VersionSpec, ApiError> {
    ch.put
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("no version"))
}

fn resolve_image(app: &AppSpec, f: &VersionFields) -> Result<String, ApiError> {
    f.image
        .clone()
        .or_else(|| app.image.clone())
        .ok_or_else(|| {
            ApiError::bad_request("invalid_image", "the app has no image repository: name one")
        })
}

/// Scales version `n` (default count and/or per-Cell counts).
pub async fn scale(
    core: &Core,
    caller: &Caller,
    name: &str,
    n: Option<u64>,
    body: &ScaleBody,
) -> Result<(Resource, Grant, VersionSpec), ApiError> {
    let (r, g, ch) = change(core, caller, name, Action::Scale, |cur| {
        let n = match n {
            Some(n) => n,
            None => cur.versions.last().map(|v| v.version).ok_or_else(|| {
                ApiError::conflict("not_deployed", "deploy a version before scaling")
            })?,
        };
        let old = cur.version(n)?;
        let mut v = old.clone();
        if let Some(r) = body.replicas {
            v.replicas = r;
        }
        v.cells.extend(body.cells.clone());
        spec::check(&v.template(), &cur.spec.cells)?;
        let mut state = cur.state()?;
        if n == state.version {
            state.replicas = v.replicas;
        }
        Ok(Change {
            detail: serde_json::json!({
                "version": n,
                "from": {"replicas": old.replicas, "cells": old.cells},
                "to": {"replicas": v.replicas, "cells": v.cells},
            }),
            put: vec![v],
            delete: vec![],
            state,
            metric: Metric::Scalings,
            verb: "scaled",
        })
    })
    .await?;
    Ok((r, g, the_version(ch)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleBody {
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub cells: BTreeMap<String, u32>,
}

async fn create_version(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
    Json(f): Json<VersionFields>,
) -> Result<(StatusCode, Json<VersionSpec>), ApiError> {
    let (_, _, v) = deploy(&core, &caller, &name, |_| f.clone()).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn scale_version(
    State(core): State<Core>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
    Json(body): Json<ScaleBody>,
) -> Result<Json<VersionSpec>, ApiError> {
    let n = parse_version(&version)?;
    let (_, _, v) = scale(&core, &caller, &name, Some(n), &body).await?;
    Ok(Json(v))
}

async fn delete_version(
    State(core): State<Core>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let n = parse_version(&version)?;
    change(&core, &caller, &name, Action::Deploy, |cur| {
        let v = cur.version(n)?;
        Ok(Change {
            put: vec![],
            delete: vec![n],
            state: cur.state()?,
            metric: Metric::Deletions,
            verb: "version_deleted",
            detail: serde_json::json!({"version": n, "tag": v.tag}),
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn template(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<VersionFields>, ApiError> {
    let cur = load(&core, &caller, &name, Action::View).await?;
    let last = cur.versions.last().ok_or_else(|| {
        ApiError::not_found("no_versions", format!("app {name} has no version yet"))
    })?;
    Ok(Json(last.template()))
}

/// A version with what each Cell runs of it.
#[derive(Debug, Serialize)]
pub struct VersionView {
    #[serde(flatten)]
    pub spec: VersionSpec,
    pub placement: Vec<Placement>,
}

#[derive(Debug, Serialize)]
pub struct Placement {
    pub cell: String,
    pub desired: u32,
    pub ready: u32,
    /// Whether the Deployment exists in the Cell yet.
    pub applied: bool,
}

/// `(spec replicas, ready)` per Deployment name in one Cell.
async fn live_deployments(
    core: &Core,
    cell: &str,
    ns: &str,
) -> Result<BTreeMap<String, u32>, ApiError> {
    let client = cell_client(core, cell).await?;
    let list = Api::<Deployment>::namespaced(client, ns)
        .list(&ListParams::default().labels(MANAGED_SELECTOR))
        .await
        .map_err(|e| cells::kube_error(cell, e))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|d| {
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            Some((d.metadata.name?, u32::try_from(ready).unwrap_or(0)))
        })
        .collect())
}

pub(crate) async fn cell_client(core: &Core, cell: &str) -> Result<kube::Client, ApiError> {
    let rec = cells::get(&core.db, cell)
        .await?
        .ok_or_else(|| cells::unavailable(cell, "no longer registered"))?;
    cells::client(&core.settings.cells, &rec.value).await
}

async fn views(core: &Core, cur: &Current) -> Result<Vec<VersionView>, ApiError> {
    let mut live = BTreeMap::new();
    for cell in &cur.spec.cells {
        live.insert(
            cell.clone(),
            live_deployments(core, cell, &cur.spec.namespace).await?,
        );
    }
    Ok(cur
        .versions
        .iter()
        .map(|v| VersionView {
            placement: cur
                .spec
                .cells
                .iter()
                .map(|c| {
                    let ready = live.get(c).and_then(|m| m.get(&deployment_name(v.version)));
                    Placement {
                        cell: c.clone(),
                        desired: v.replicas_in(c),
                        ready: ready.copied().unwrap_or(0),
                        applied: ready.is_some(),
                    }
                })
                .collect(),
            spec: v.clone(),
        })
        .collect())
}

async fn list_versions(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<VersionView>>, ApiError> {
    let cur = load(&core, &caller, &name, Action::View).await?;
    Ok(Json(views(&core, &cur).await?))
}

async fn show_version(
    State(core): State<Core>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<VersionView>, ApiError> {
    let n = parse_version(&version)?;
    let mut cur = load(&core, &caller, &name, Action::View).await?;
    cur.version(n)?;
    cur.versions.retain(|v| v.version == n);
    let v = views(&core, &cur)
        .await?
        .pop()
        .ok_or_else(|| version_not_found(n))?;
    Ok(Json(v))
}

#[derive(Debug, Serialize)]
pub struct ContainerView {
    pub pod: String,
    pub version: Option<u64>,
    pub cell: String,
    pub node: Option<String>,
    pub ip: Option<String>,
    pub phase: Option<String>,
    pub ready: bool,
    pub restarts: u32,
    pub started: Option<DateTime<Utc>>,
}

fn container_view(cell: &str, p: Pod) -> Option<ContainerView> {
    let status = p.status.unwrap_or_default();
    let ready = status
        .conditions
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let restarts = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
        .sum();
    Some(ContainerView {
        version: p
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(objects::VERSION_LABEL))
            .and_then(|v| v.parse().ok()),
        pod: p.metadata.name?,
        cell: cell.to_string(),
        node: p.spec.and_then(|s| s.node_name),
        ip: status.pod_ip,
        phase: status.phase,
        ready,
        restarts,
        started: status.start_time.as_ref().and_then(super::to_chrono),
    })
}

async fn containers(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<ContainerView>>, ApiError> {
    let cur = load(&core, &caller, &name, Action::View).await?;
    let mut out = Vec::new();
    let selector = format!("{}={}", objects::APP_UID_LABEL, cur.spec.uid);
    for cell in &cur.spec.cells {
        let client = cell_client(&core, cell).await?;
        let pods = Api::<Pod>::namespaced(client, &cur.spec.namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| cells::kube_error(cell, e))?;
        out.extend(
            pods.items
                .into_iter()
                .filter_map(|p| container_view(cell, p)),
        );
    }
    out.sort_by(|a, b| (a.version, &a.cell, &a.pod).cmp(&(b.version, &b.cell, &b.pod)));
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// At most this many events (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Skip this many of the newest first.
    #[serde(default)]
    pub offset: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct EventView {
    pub cell: String,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub object: Option<String>,
    pub count: i32,
    pub last: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// The offset of the next page; absent on the last.
    pub next_offset: Option<usize>,
}

fn event_view(cell: &str, e: Event) -> EventView {
    let last = e
        .last_timestamp
        .as_ref()
        .or(e.first_timestamp.as_ref())
        .and_then(super::to_chrono)
        .or_else(|| {
            e.event_time.as_ref().and_then(|t| {
                super::to_chrono(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.0))
            })
        })
        .or_else(|| {
            e.metadata
                .creation_timestamp
                .as_ref()
                .and_then(super::to_chrono)
        });
    let o = &e.involved_object;
    EventView {
        cell: cell.to_string(),
        type_: e.type_,
        reason: e.reason,
        message: e.message,
        object: o
            .name
            .as_ref()
            .map(|n| format!("{}/{n}", o.kind.as_deref().unwrap_or(""))),
        count: e.count.unwrap_or(1),
        last,
    }
}

async fn events(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = page.limit.unwrap_or(50);
    if limit == 0 || limit > 500 {
        return Err(ApiError::bad_request("invalid_limit", "limit is 1 to 500"));
    }
    let offset = page.offset.unwrap_or(0);
    let cur = load(&core, &caller, &name, Action::View).await?;
    let mut all = Vec::new();
    for cell in &cur.spec.cells {
        let client = cell_client(&core, cell).await?;
        let evs = Api::<Event>::namespaced(client, &cur.spec.namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| cells::kube_error(cell, e))?;
        all.extend(evs.items.into_iter().map(|e| event_view(cell, e)));
    }
    all.sort_by_key(|e| std::cmp::Reverse(e.last));
    let total = all.len();
    let events: Vec<EventView> = all.into_iter().skip(offset).take(limit).collect();
    let next_offset = (offset + events.len() < total).then_some(offset + events.len());
    Ok(Json(EventPage {
        events,
        next_offset,
    }))
}

#[derive(Debug, Serialize)]
pub struct CellStatusView {
    pub cell: String,
    #[serde(flatten)]
    pub status: CellStatus,
}

/// The reconciler's last word per Cell (from etcd: answers while a Cell is down).
async fn status(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<CellStatusView>>, ApiError> {
    let cur = load(&core, &caller, &name, Action::View).await?;
    let mut out = Vec::new();
    for cell in &cur.spec.cells {
        let s = core
            .db
            .get::<CellStatus>(&core.db.keys.app_status(&name, cell))
            .await?
            .map(|v| v.value)
            .unwrap_or_default();
        out.push(CellStatusView {
            cell: cell.clone(),
            status: s,
        });
    }
    Ok(Json(out))
}
