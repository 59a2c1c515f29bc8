//! Applications: records of what should run (versions with image tag and
//! replicas). Creating a Kubernetes Namespace/Service/RC from them is the
//! job of a controller outside this crate; here every deploy and scaling is
//! an etcd record, counted in the daily statistics and charged to the
//! creator's quota.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{self, Action, Grant, Kind, Resource, Role};
use crate::activity;
use crate::auth::Caller;
use crate::problem::{ApiError, Json, Path};
use crate::quota::{self, Delta};
use crate::server::Core;
use crate::stats::{self, Metric};
use crate::store;

/// The running version of an app.
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub version: u64,
    pub image: String,
    pub tag: String,
    pub replicas: u32,
    pub by: String,
    pub at: DateTime<Utc>,
}

/// An app as the API shows it.
#[derive(Serialize)]
pub struct AppView {
    pub name: String,
    pub creator: String,
    pub public: bool,
    pub description: String,
    pub created: DateTime<Utc>,
    pub state: AppState,
    /// The caller's role; `null` for a non-member viewing a public app.
    pub role: Option<Role>,
}

fn view(r: Resource, role: Option<Role>) -> AppView {
    AppView {
        state: r.app.unwrap_or_default(),
        name: r.name,
        creator: r.creator,
        public: r.public,
        description: r.description,
        created: r.created,
        role,
    }
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
        .route("/api/v1/apps/{name}/versions", get(versions))
}

async fn list(State(core): State<Core>, caller: Caller) -> Result<Json<Vec<AppView>>, ApiError> {
    let rows = access::visible(&core.db, &caller, Kind::App).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(r, role)| view(r, Some(role)))
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub public: bool,
}

pub const MAX_DESCRIPTION: usize = 1000;

pub fn check_description(d: &str) -> Result<(), ApiError> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::bad_request(
            "invalid_description",
            format!("a description has at most {MAX_DESCRIPTION} characters"),
        ));
    }
    Ok(())
}

async fn create(
    State(core): State<Core>,
    caller: Caller,
    Json(body): Json<NewApp>,
) -> Result<(StatusCode, Json<AppView>), ApiError> {
    check_description(&body.description)?;
    let (core, caller, body) = (&core, &caller, &body);
    let r = store::optimistic(move || async move {
        let charge = quota::charge(
            &core.db,
            core.settings.default_quota,
            &caller.user,
            Delta {
                apps: 1,
                containers: 0,
            },
        )
        .await?;
        let new = access::NewResource {
            kind: Kind::App,
            name: &body.name,
            public: body.public,
            description: body.description.clone(),
        };
        let created = access::try_register(&core.db, caller, new, charge).await?;
        match created {
            Some(r) => Ok(Some(r)),
            // The name is free but the usage record moved: charge again.
            None if !exists(core, &body.name).await? => Ok(None),
            None => Err(access::exists(Kind::App, &body.name)),
        }
    })
    .await?;
    tracing::info!(user = %caller.user, app = %r.name, "app created");
    let r = Resource {
        app: Some(AppState::default()),
        ..r
    };
    Ok((StatusCode::CREATED, Json(view(r, Some(Role::Owner)))))
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
    Ok(Json(view(g.resource.value, g.role)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub public: Option<bool>,
}

/// Shared by apps, images and groups: change description / public flag.
pub async fn patch_resource(
    core: &Core,
    caller: &Caller,
    kind: Kind,
    name: &str,
    p: &Patch,
) -> Result<Grant, ApiError> {
    if let Some(d) = &p.description {
        check_description(d)?;
    }
    store::optimistic(move || async move {
        let mut g = access::authorize(&core.db, Some(caller), kind, name, Action::Update).await?;
        let r = &mut g.resource.value;
        if let Some(d) = &p.description {
            r.description = d.clone();
        }
        if let Some(public) = p.public {
            r.public = public;
        }
        let ev = activity::event(
            &caller.user,
            "updated",
            serde_json::json!({ "description": p.description, "public": p.public }),
        );
        let done = core
            .db
            .commit(
                vec![g.resource.unchanged()],
                vec![
                    store::put(g.resource.key.as_str(), &g.resource.value),
                    activity::op(&core.db.keys, kind, name, &ev),
                ],
            )
            .await?;
        Ok(done.applied().then_some(g))
    })
    .await
}

async fn update(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
    Json(p): Json<Patch>,
) -> Result<Json<AppView>, ApiError> {
    let g = patch_resource(&core, &caller, Kind::App, &name, &p).await?;
    Ok(Json(view(g.resource.value, g.role)))
}

async fn remove(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (core, caller, name) = (&core, &caller, name.as_str());
    store::optimistic(move || async move {
        let g = access::authorize(&core.db, Some(caller), Kind::App, name, Action::Delete).await?;
        let r = &g.resource.value;
        let replicas = r.app.as_ref().map_or(0, |a| a.replicas);
        let (compares, mut ops) = quota::charge(
            &core.db,
            core.settings.default_quota,
            &r.creator,
            Delta {
                apps: -1,
                containers: -i64::from(replicas),
            },
        )
        .await?;
        ops.push(store::delete_prefix(
            core.db.keys.core_app_versions_prefix(name),
        ));
        let done = access::try_unregister(&core.db, &g, (compares, ops)).await?;
        Ok(done.applied().then_some(()))
    })
    .await?;
    tracing::info!(user = %caller.user, app = %name, "app deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    pub image: String,
    pub tag: String,
    /// Defaults to the current replica count (1 for a first deploy).
    #[serde(default)]
    pub replicas: Option<u32>,
}

/// Most replicas one app may ask for, whatever the quota says.
pub const MAX_REPLICAS: u32 = 10_000;

fn check_replicas(n: u32) -> Result<(), ApiError> {
    if n > MAX_REPLICAS {
        return Err(ApiError::bad_request(
            "invalid_replicas",
            format!("at most {MAX_REPLICAS} replicas"),
        ));
    }
    Ok(())
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

/// Deploying makes the platform pull the image with its own credentials,
/// so whoever deploys must be allowed to pull it. Every refusal is the same
/// 403 (existence of private images is not revealed).
async fn check_may_pull(core: &Core, caller: &Caller, image: &str) -> Result<(), ApiError> {
    let refused = || {
        ApiError::forbidden(
            "image_pull_forbidden",
            format!("{image:?} is not an image of the platform registry ([registry/]group/repo) that you may pull"),
        )
    };
    let repo = image_repository(image).ok_or_else(refused)?;
    if crate::registry::rights(core, Some(caller), repo)
        .await?
        .allows(Action::Pull)
    {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Writes a new state for the app (deploy or scale) with the quota charge,
/// the counted statistic and the activity event, all in one transaction.
async fn transition(
    core: &Core,
    caller: &Caller,
    name: &str,
    action: Action,
    next: impl Fn(&AppState) -> Result<(AppState, Option<Version>), ApiError>,
) -> Result<AppView, ApiError> {
    let db = &core.db;
    let next = &next;
    store::optimistic(move || async move {
        let g = access::authorize(db, Some(caller), Kind::App, name, action).await?;
        let mut r = g.resource.value.clone();
        let cur = r.app.clone().unwrap_or_default();
        let (state, version) = next(&cur)?;
        let (mut compares, mut ops) = quota::charge(
            db,
            core.settings.default_quota,
            &r.creator,
            Delta {
                apps: 0,
                containers: i64::from(state.replicas) - i64::from(cur.replicas),
            },
        )
        .await?;
        let (metric, verb, detail) = match &version {
            Some(v) => (Metric::Deploys, "deployed", serde_json::to_value(v)?),
            None => (
                Metric::Scalings,
                "scaled",
                serde_json::json!({ "from": cur.replicas, "to": state.replicas }),
            ),
        };
        let ev = activity::event(&caller.user, verb, detail);
        compares.push(g.resource.unchanged());
        if let Some(v) = &version {
            let vkey = db.keys.core_app_version(name, v.version);
            compares.push(store::absent(vkey.clone()));
            ops.push(store::put(vkey, v));
        }
        r.app = Some(state);
        ops.push(store::put(g.resource.key.as_str(), &r));
        ops.push(activity::op(&db.keys, Kind::App, name, &ev));
        ops.push(stats::op(&db.keys, metric, ev.at, &ev.id, name));
        if !db.commit(compares, ops).await?.applied() {
            return Ok(None);
        }
        tracing::info!(user = %caller.user, app = %name, action = verb, "app changed");
        Ok(Some(view(r, g.role)))
    })
    .await
}

async fn deploy(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<Deploy>,
) -> Result<Json<AppView>, ApiError> {
    check_image_ref(&body.image, &body.tag)?;
    if let Some(n) = body.replicas {
        check_replicas(n)?;
    }
    // The app first: a non-member learns nothing about images here.
    access::authorize(&core.db, Some(&caller), Kind::App, &name, Action::Deploy).await?;
    check_may_pull(&core, &caller, &body.image).await?;
    let by = caller.user.clone();
    let view = transition(&core, &caller, &name, Action::Deploy, |cur| {
        let replicas = body
            .replicas
            .unwrap_or(if cur.version == 0 { 1 } else { cur.replicas });
        let v = Version {
            version: cur.version + 1,
            image: body.image.clone(),
            tag: body.tag.clone(),
            replicas,
            by: by.clone(),
            at: Utc::now(),
        };
        let state = AppState {
            version: v.version,
            image: Some(v.image.clone()),
            tag: Some(v.tag.clone()),
            replicas,
        };
        Ok((state, Some(v)))
    })
    .await?;
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub replicas: u32,
}

async fn scale(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<Scale>,
) -> Result<Json<AppView>, ApiError> {
    check_replicas(body.replicas)?;
    let view = transition(&core, &caller, &name, Action::Scale, |cur| {
        if cur.version == 0 {
            return Err(ApiError::conflict(
                "not_deployed",
                "deploy a version before scaling",
            ));
        }
        Ok((
            AppState {
                replicas: body.replicas,
                ..cur.clone()
            },
            None,
        ))
    })
    .await?;
    Ok(Json(view))
}

async fn versions(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<Version>>, ApiError> {
    access::authorize(&core.db, Some(&caller), Kind::App, &name, Action::View).await?;
    let rows = core
        .db
        .list::<Version>(&core.db.keys.core_app_versions_prefix(&name))
        .await?;
    Ok(Json(rows.into_iter().map(|(_, v)| v).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
