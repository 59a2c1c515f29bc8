//! Applications: the resource (members, roles, activity) and its desired
//! state `{prefix}/apps/{app}` (namespace, uid, image, Cells, LB), written
//! together. Versions and reads are in [`crate::deploy::api`]; the
//! reconciler turns all of it into Kubernetes objects in every Cell.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{self, Action, Kind, Resource, Role};
use crate::activity;
use crate::auth::Caller;
use crate::cells;
use crate::deploy::api;
use crate::deploy::spec::{namespace_for, AppSpec, Lb, VersionFields};
use crate::problem::{ApiError, Json, Path};
use crate::quota::{self, Delta};
use crate::server::Core;
use crate::slb::dns::GroupDns;
use crate::stats::{self, Metric};
use crate::store;

/// Summary of the newest version (the versions themselves are under
/// `{prefix}/apps/{app}/versions/`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// 0 until the first deploy.
    pub version: u64,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    pub replicas: u32,
}

impl AppState {
    /// Where on the app's resource record the summary is kept.
    const FIELD: &'static str = "app";

    /// The summary on `r`; the default before the first deploy.
    pub fn of(r: &Resource) -> Result<AppState, ApiError> {
        r.extra
            .get(Self::FIELD)
            .map_or(Ok(AppState::default()), |v| {
                AppState::deserialize(v)
                    .map_err(|e| ApiError::internal(format!("app {}: stored state: {e}", r.name)))
            })
    }

    /// Writes the summary onto `r`.
    pub fn put(&self, r: &mut Resource) {
        r.extra.insert(Self::FIELD.into(), serde_json::json!(self));
    }
}

/// An app as the API shows it.
#[derive(Debug, Serialize)]
pub struct AppView {
    pub name: String,
    pub creator: String,
    pub public: bool,
    pub description: String,
    pub created: DateTime<Utc>,
    pub state: AppState,
    /// The caller's role; `null` for a non-member viewing a public app.
    pub role: Option<Role>,
    /// Namespace, Cells, image, LB (on create and show).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired: Option<AppSpec>,
    /// The LB and what to configure in DNS for it (on create, show and LB changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<LbDns>,
}

/// The app's domain, its nginx group and the group's DNS record: the user
/// makes `domain` a CNAME of `cname`, or gives it `vips` as A/AAAA records.
/// Both empty: the admins have not set the group's record yet.
#[derive(Debug, Serialize)]
pub struct LbDns {
    pub domain: String,
    pub group: String,
    pub cname: Option<String>,
    pub vips: Vec<std::net::IpAddr>,
}

async fn lb_dns(core: &Core, lb: &Lb) -> Result<LbDns, ApiError> {
    let rec = core
        .db
        .get::<GroupDns>(&leengine_store::keys::slb_group_dns(&lb.group))
        .await?
        .map(|r| r.value)
        .unwrap_or_default();
    Ok(LbDns {
        domain: lb.domain.clone(),
        group: lb.group.clone(),
        cname: rec.cname,
        vips: rec.vips,
    })
}

fn view(r: Resource, role: Option<Role>) -> Result<AppView, ApiError> {
    Ok(AppView {
        state: AppState::of(&r)?,
        name: r.name,
        creator: r.creator,
        public: r.public,
        description: r.description,
        created: r.created,
        role,
        desired: None,
        dns: None,
    })
}

pub fn router() -> Router<Core> {
    Router::new()
        .route("/api/v1/apps", get(list).post(create))
        .route(
            "/api/v1/apps/{name}",
            get(show).patch(update).delete(remove),
        )
        .route("/api/v1/apps/{name}/deploy", post(deploy))
        .route("/api/v1/apps/{name}/scale", post(scale))
        .route("/api/v1/apps/{name}/lb", put(put_lb).delete(delete_lb))
}

async fn list(State(core): State<Core>, caller: Caller) -> Result<Json<Vec<AppView>>, ApiError> {
    let rows = access::visible(&core.db, &caller, Kind::App).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(r, role)| view(r, Some(role)))
            .collect::<Result<_, _>>()?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub public: bool,
    /// Image repository `[host/]group/repo` versions run by default.
    #[serde(default)]
    pub image: Option<String>,
    /// Cells to run in; default: every active Cell.
    #[serde(default)]
    pub cells: Option<Vec<String>>,
    #[serde(default)]
    pub lb: Option<Lb>,
    /// Container port the Service forwards to (default 8080).
    #[serde(default)]
    pub port: Option<u16>,
}

/// A domain name as nginx and DNS take it.
pub(crate) fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn check_new_app(body: &NewApp) -> Result<(), ApiError> {
    access::check_description(&body.description)?;
    if let Some(i) = &body.image {
        check_image_ref(i, "latest")?;
    }
    if let Some(lb) = &body.lb {
        check_lb(lb)?;
    }
    if body.port == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_port",
            "the port is 1 to 65535",
        ));
    }
    Ok(())
}

/// The desired state of a new app and the transaction parts that place it
/// in its Cells (each Cell's app count, compared, so a Cell being removed
/// cannot receive it).
async fn placement(
    core: &Core,
    body: &NewApp,
) -> Result<(AppSpec, Vec<etcd_client::Compare>, Vec<etcd_client::TxnOp>), ApiError> {
    let keys = &core.db.keys;
    let registry = cells::list(&core.db).await?;
    let chosen = cells::place(
        &registry,
        body.cells.as_deref(),
        core.settings.cells.min_app_cells,
    )?;
    let uid = format!("{:016x}", rand::random::<u64>());
    let spec = AppSpec {
        name: body.name.clone(),
        namespace: namespace_for(&body.name, &uid),
        uid,
        image: body.image.clone(),
        cells: chosen.clone(),
        lb: body.lb.clone(),
        port: body.port.unwrap_or(8080),
    };
    let mut compares = vec![store::absent(keys.app(&body.name))];
    let mut ops = vec![store::put(keys.app(&body.name), &spec)];
    for c in &chosen {
        let cur = cells::get(&core.db, c).await?.ok_or_else(|| {
            ApiError::bad_request("unknown_cell", format!("cell {c} is not registered"))
        })?;
        compares.push(cur.unchanged());
        let mut rec = cur.value;
        rec.apps += 1;
        ops.push(store::put(keys.cell(c), &rec));
    }
    Ok((spec, compares, ops))
}

async fn create(
    State(core): State<Core>,
    caller: Caller,
    Json(body): Json<NewApp>,
) -> Result<(StatusCode, Json<AppView>), ApiError> {
    check_new_app(&body)?;
    let (core, caller, body) = (&core, &caller, &body);
    let (r, spec) = store::optimistic(move || async move {
        let (spec, place_compares, place_ops) = placement(core, body).await?;
        let (mut compares, mut ops) = quota::charge(
            &core.db,
            core.settings.default_quota,
            &caller.user,
            Delta {
                apps: 1,
                ..Delta::default()
            },
        )
        .await?;
        compares.extend(place_compares);
        ops.extend(place_ops);
        let new = access::NewResource {
            kind: Kind::App,
            name: &body.name,
            public: body.public,
            description: body.description.clone(),
        };
        match access::try_register(&core.db, caller, new, (compares, ops)).await? {
            Some(r) => Ok(Some((r, spec))),
            // The name is free but the usage or a Cell record moved: again.
            None if !exists(core, &body.name).await? => Ok(None),
            None => Err(access::exists(Kind::App, &body.name)),
        }
    })
    .await?;
    tracing::info!(user = %caller.user, app = %r.name, "app created");
    let mut r = r;
    AppState::default().put(&mut r);
    let v = with_desired(core, view(r, Some(Role::Owner))?, Some(spec)).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn exists(core: &Core, name: &str) -> Result<bool, ApiError> {
    Ok(core
        .db
        .get::<Resource>(&core.db.keys.core_resource(Kind::App.as_str(), name))
        .await?
        .is_some())
}

async fn show(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AppView>, ApiError> {
    let g = access::authorize(&core.db, Some(&caller), Kind::App, &name, Action::View).await?;
    let desired = core.db.get::<AppSpec>(&core.db.keys.app(&name)).await?;
    let v = view(g.resource.value, g.role)?;
    Ok(Json(
        with_desired(&core, v, desired.map(|d| d.value)).await?,
    ))
}

/// The view with the app's spec and, when it has an LB, its DNS record.
async fn with_desired(
    core: &Core,
    mut v: AppView,
    spec: Option<AppSpec>,
) -> Result<AppView, ApiError> {
    if let Some(lb) = spec.as_ref().and_then(|s| s.lb.as_ref()) {
        v.dns = Some(lb_dns(core, lb).await?);
    }
    v.desired = spec;
    Ok(v)
}

fn check_lb(lb: &Lb) -> Result<(), ApiError> {
    if !valid_domain(&lb.domain) || !access::valid_name(&lb.group) {
        return Err(ApiError::bad_request(
            "invalid_lb",
            "the LB is a lower-case domain name and an nginx group name",
        ));
    }
    Ok(())
}

/// Sets (`Some`) or removes (`None`) the app's LB, compared against the
/// spec read, with its activity event. The reconciler re-annotates the
/// Service and discovery moves the upstream to the new domain.
async fn set_lb(
    core: &Core,
    caller: &Caller,
    name: &str,
    lb: Option<&Lb>,
) -> Result<AppView, ApiError> {
    let keys = &core.db.keys;
    let (g, spec) = store::optimistic(move || async move {
        let g = access::authorize(&core.db, Some(caller), Kind::App, name, Action::Deploy).await?;
        let mut spec = core
            .db
            .get::<AppSpec>(&keys.app(name))
            .await?
            .ok_or_else(|| {
                ApiError::conflict("app_incomplete", format!("app {name} has no desired state"))
            })?;
        spec.value.lb = lb.cloned();
        let ev = activity::event(&caller.user, "lb_changed", serde_json::json!({ "lb": lb }));
        let done = core
            .db
            .commit(
                vec![spec.unchanged(), g.resource.unchanged()],
                vec![
                    store::put(keys.app(name), &spec.value),
                    activity::op(keys, Kind::App, name, &ev),
                ],
            )
            .await?;
        Ok(done.applied().then_some((g, spec.value)))
    })
    .await?;
    tracing::info!(user = %caller.user, app = %name, lb = ?lb, "app lb changed");
    with_desired(core, view(g.resource.value, g.role)?, Some(spec)).await
}

async fn put_lb(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
    Json(lb): Json<Lb>,
) -> Result<Json<AppView>, ApiError> {
    check_lb(&lb)?;
    Ok(Json(set_lb(&core, &caller, &name, Some(&lb)).await?))
}

async fn delete_lb(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AppView>, ApiError> {
    Ok(Json(set_lb(&core, &caller, &name, None).await?))
}

async fn update(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
    Json(p): Json<access::Patch>,
) -> Result<Json<AppView>, ApiError> {
    let g = access::patch(&core.db, &caller, Kind::App, &name, &p).await?;
    Ok(Json(view(g.resource.value, g.role)?))
}

async fn remove(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (core, caller, name) = (&core, &caller, name.as_str());
    let keys = &core.db.keys;
    store::optimistic(move || async move {
        let cur = api::load(core, caller, name, Action::Delete).await?;
        let r = &cur.grant.resource.value;
        let held: Delta = cur.versions.iter().map(|v| v.charge(&cur.spec.cells)).sum();
        let (mut compares, mut ops) = quota::charge(
            &core.db,
            core.settings.default_quota,
            &r.creator,
            Delta {
                apps: -1,
                ..Delta::default()
            } - held,
        )
        .await?;
        ops.push(store::delete(keys.app(name)));
        ops.push(store::delete_prefix(keys.app_children_prefix(name)));
        for c in &cur.spec.cells {
            if let Some(cell) = cells::get(&core.db, c).await? {
                compares.push(cell.unchanged());
                let mut rec = cell.value;
                rec.apps = rec.apps.saturating_sub(1);
                ops.push(store::put(keys.cell(c), &rec));
            }
        }
        let ev = activity::event(&caller.user, "deleted", serde_json::json!({"app": name}));
        ops.push(stats::op(keys, Metric::Deletions, ev.at, &ev.id, name));
        let done = access::try_unregister(&core.db, &cur.grant, (compares, ops)).await?;
        Ok(done.applied().then_some(()))
    })
    .await?;
    tracing::info!(user = %caller.user, app = %name, "app deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    pub image: String,
    pub tag: String,
    /// Defaults to the current replica count (1 for a first deploy).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Replace the newest version one pod at a time (see `VersionFields`).
    #[serde(default)]
    pub replace: bool,
}

/// Docker reference rules for the parts we accept: `[host[:port]/]path` and
/// a tag of `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn check_image_ref(image: &str, tag: &str) -> Result<(), ApiError> {
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.as_bytes()[0] != b'.'
        && tag.as_bytes()[0] != b'-'
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    let image_ok = !image.is_empty()
        && image.len() <= 255
        && image.split('/').all(|seg| !seg.is_empty())
        && image.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'.' | b'-' | b'/' | b':')
        });
    if !image_ok {
        return Err(ApiError::bad_request(
            "invalid_image",
            format!("{image:?} is not an image name"),
        ));
    }
    if !tag_ok {
        return Err(ApiError::bad_request(
            "invalid_tag",
            format!("{tag:?} is not an image tag"),
        ));
    }
    Ok(())
}

/// The platform repository (`group/repo`) an image reference names:
/// `[host[:port]/]group/repo`, the host told apart as docker does (it holds
/// a '.' or a ':' or is `localhost`).
pub fn image_repository(image: &str) -> Option<&str> {
    let path = match image.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => image,
    };
    access::valid_resource_name(Kind::Image, path).then_some(path)
}

async fn deploy(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<Deploy>,
) -> Result<Json<AppView>, ApiError> {
    check_image_ref(&body.image, &body.tag)?;
    // The previous version's fields, with the new image, tag and count.
    let (r, g, _) = api::deploy(&core, &caller, &name, |cur| {
        let mut f = cur
            .versions
            .last()
            .map(|v| v.template())
            .unwrap_or_else(|| VersionFields {
                image: None,
                tag: String::new(),
                replicas: 1,
                cells: Default::default(),
                resources: Default::default(),
                env: Default::default(),
                health: None,
                replace: false,
            });
        f.image = Some(body.image.clone());
        f.tag = body.tag.clone();
        if let Some(n) = body.replicas {
            f.replicas = n;
            f.cells.clear();
        }
        f.replace = body.replace;
        f
    })
    .await?;
    Ok(Json(view(r, g.role)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub replicas: u32,
}

/// Scales the newest version to `replicas` in every Cell.
async fn scale(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<Scale>,
) -> Result<Json<AppView>, ApiError> {
    let (r, g, _) = api::scale(
        &core,
        &caller,
        &name,
        None,
        &api::ScaleBody {
            replicas: Some(body.replicas),
            cells: Default::default(),
        },
    )
    .await?;
    Ok(Json(view(r, g.role)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_state_stays_where_records_already_keep_it() {
        let stored = serde_json::json!({"kind": "app", "name": "shop", "creator": "olga",
            "public": false, "description": "", "created": "2026-12-01T00:00:00Z",
            "app": {"version": 3, "image": "team/web", "tag": "v3", "replicas": 2}});
        let mut r: Resource = serde_json::from_value(stored.clone()).unwrap();
        let mut state = AppState::of(&r).unwrap();
        assert_eq!((state.version, state.replicas), (3, 2));
        assert_eq!(serde_json::to_value(&r).unwrap(), stored, "unchanged shape");
        state.replicas = 5;
        state.put(&mut r);
        assert_eq!(AppState::of(&r).unwrap().replicas, 5);

        r.extra.clear();
        assert_eq!(
            AppState::of(&r).unwrap(),
            AppState::default(),
            "before a deploy"
        );
        assert!(serde_json::to_value(&r).unwrap().get("app").is_none());
        r.extra
            .insert("app".into(), serde_json::json!({"version": "x"}));
        assert_eq!(AppState::of(&r).unwrap_err().code, "internal");
    }

    #[test]
    fn image_refs() {
        assert!(check_image_ref("127.0.0.1:5000/team/web", "v1.2").is_ok());
        assert!(check_image_ref("team/web", "3f2a9c1").is_ok());
        assert_eq!(
            check_image_ref("Team/Web", "v1").unwrap_err().code,
            "invalid_image"
        );
        assert_eq!(
            check_image_ref("team//web", "v1").unwrap_err().code,
            "invalid_image"
        );
        assert_eq!(
            check_image_ref("team/web", "").unwrap_err().code,
            "invalid_tag"
        );
        assert_eq!(
            check_image_ref("team/web", "-x").unwrap_err().code,
            "invalid_tag"
        );
        assert_eq!(
            check_image_ref("team/web", "a b").unwrap_err().code,
            "invalid_tag"
        );
    }

    #[test]
    fn image_repositories() {
        assert_eq!(image_repository("team/web"), Some("team/web"));
        assert_eq!(
            image_repository("127.0.0.1:5000/team/web"),
            Some("team/web")
        );
        assert_eq!(
            image_repository("registry.example/team/web"),
            Some("team/web")
        );
        assert_eq!(image_repository("localhost/team/web"), Some("team/web"));
        assert_eq!(image_repository("nginx"), None);
        assert_eq!(image_repository("docker.io/nginx"), None);
        assert_eq!(image_repository("a/b/c"), None);
        assert_eq!(image_repository("host:5000/a/b/c"), None);
    }
}
