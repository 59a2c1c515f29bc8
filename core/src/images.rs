//! Image groups (registry namespaces) and images (repositories `group/repo`).
//!
//! An image is created explicitly, or implicitly by its first push from a
//! group member with push rights (the registry notification creates the
//! record, with the pusher as Owner).
//!
//! Deleting an image deletes its record, not the registry's content, so the
//! delete leaves a tombstone (`{prefix}/core/tombstones/image/{name}`) and
//! the name is never given out again: no token grants anything on it (but
//! pull and delete to admins, who clean the registry up), it cannot be
//! created again, and neither a push notification nor a re-created group
//! revives it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{self, Action, Kind, Resource, Role};
use crate::auth::{Caller, MaybeCaller};
use crate::problem::{ApiError, Json, Path};
use crate::server::Core;
use crate::store::{self, Commit, Db};

#[derive(Debug, Serialize)]
pub struct ResourceView {
    pub name: String,
    pub creator: String,
    pub public: bool,
    pub description: String,
    pub created: DateTime<Utc>,
    /// The caller's role; `null` for a non-member of a public resource.
    pub role: Option<Role>,
}

pub fn view(r: Resource, role: Option<Role>) -> ResourceView {
    ResourceView {
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
        .route("/api/v1/groups", get(list_groups).post(create_group))
        .route(
            "/api/v1/groups/{name}",
            get(show_group).patch(update_group).delete(delete_group),
        )
        .route("/api/v1/images", get(list_images).post(create_image))
        .route(
            "/api/v1/images/{group}/{repo}",
            get(show_image).patch(update_image).delete(delete_image),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewResource {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub public: bool,
}

async fn list_groups(
    State(core): State<Core>,
    caller: Caller,
) -> Result<Json<Vec<ResourceView>>, ApiError> {
    let rows = access::visible(&core.db, &caller, Kind::Group).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(r, role)| view(r, Some(role)))
            .collect(),
    ))
}

async fn create_group(
    State(core): State<Core>,
    caller: Caller,
    Json(b): Json<NewResource>,
) -> Result<(StatusCode, Json<ResourceView>), ApiError> {
    access::check_description(&b.description)?;
    let r = access::register(
        &core.db,
        &caller,
        Kind::Group,
        &b.name,
        b.public,
        b.description,
        Default::default(),
    )
    .await?;
    tracing::info!(user = %caller.user, group = %r.name, "group created");
    Ok((StatusCode::CREATED, Json(view(r, Some(Role::Owner)))))
}

async fn show_group(
    State(core): State<Core>,
    MaybeCaller(caller): MaybeCaller,
    Path(name): Path<String>,
) -> Result<Json<ResourceView>, ApiError> {
    let g = access::authorize(&core.db, caller.as_ref(), Kind::Group, &name, Action::View).await?;
    Ok(Json(view(g.resource.value, g.role)))
}

async fn update_group(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
    Json(p): Json<access::Patch>,
) -> Result<Json<ResourceView>, ApiError> {
    let g = access::patch(&core.db, &caller, Kind::Group, &name, &p).await?;
    Ok(Json(view(g.resource.value, g.role)))
}

async fn delete_group(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let g = access::authorize(&core.db, Some(&caller), Kind::Group, &name, Action::Delete).await?;
    let images = core.db.keys.core_resources_prefix(Kind::Image.as_str()) + &name + "/";
    // The group must stay empty until the delete commits.
    let empty = leengine_store::record::prefix_empty(images.clone());
    match access::try_unregister(&core.db, &g, (vec![empty], vec![])).await? {
        Commit::Applied { .. } => {
            tracing::info!(user = %caller.user, group = %name, "group deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Commit::Conflict if core.db.count(&images).await? > 0 => Err(ApiError::conflict(
            "group_not_empty",
            format!("group {name} still has images; delete them first"),
        )),
        Commit::Conflict => Err(store::contention()),
    }
}

async fn list_images(
    State(core): State<Core>,
    caller: Caller,
) -> Result<Json<Vec<ResourceView>>, ApiError> {
    let rows = access::visible(&core.db, &caller, Kind::Image).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(r, role)| view(r, Some(role)))
            .collect(),
    ))
}

/// Creating `group/repo` needs push rights on the group.
pub async fn check_may_create_image(
    core: &Core,
    caller: &Caller,
    name: &str,
) -> Result<(), ApiError> {
    if !access::valid_resource_name(Kind::Image, name) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("{name:?} is not an image name (group/repo, lower-case)"),
        ));
    }
    let group = access::image_group(name).unwrap_or_default();
    access::authorize(&core.db, Some(caller), Kind::Group, group, Action::Push).await?;
    Ok(())
}

/// A tombstone: who deleted the image, and when.
#[derive(Debug, Serialize, Deserialize)]
pub struct Tombstone {
    pub by: String,
    pub at: DateTime<Utc>,
}

fn deleted(name: &str) -> ApiError {
    ApiError::conflict(
        "image_deleted",
        format!("image {name} was deleted; its name is not given out again"),
    )
}

/// Whether image `name` was deleted (its name is reserved for good).
pub async fn is_tombstoned(db: &Db, name: &str) -> Result<bool, ApiError> {
    Ok(db
        .get::<Tombstone>(&db.keys.core_image_tombstone(name))
        .await?
        .is_some())
}

async fn create_image(
    State(core): State<Core>,
    caller: Caller,
    Json(b): Json<NewResource>,
) -> Result<(StatusCode, Json<ResourceView>), ApiError> {
    access::check_description(&b.description)?;
    check_may_create_image(&core, &caller, &b.name).await?;
    if is_tombstoned(&core.db, &b.name).await? {
        return Err(deleted(&b.name));
    }
    // The group must still exist, and the name must not be deleted, when
    // the image is written.
    let group = access::image_group(&b.name).unwrap_or_default();
    let guards = vec![
        store::present(core.db.keys.core_resource(Kind::Group.as_str(), group)),
        store::absent(core.db.keys.core_image_tombstone(&b.name)),
    ];
    let new = access::NewResource {
        kind: Kind::Image,
        name: &b.name,
        public: b.public,
        description: b.description,
    };
    let created = access::try_register(&core.db, &caller, new, (guards, vec![])).await?;
    let r = match created {
        Some(r) => r,
        None if is_tombstoned(&core.db, &b.name).await? => return Err(deleted(&b.name)),
        None => return Err(access::exists(Kind::Image, &b.name)),
    };
    tracing::info!(user = %caller.user, image = %r.name, "image created");
    Ok((StatusCode::CREATED, Json(view(r, Some(Role::Owner)))))
}

async fn show_image(
    State(core): State<Core>,
    MaybeCaller(caller): MaybeCaller,
    Path((group, repo)): Path<(String, String)>,
) -> Result<Json<ResourceView>, ApiError> {
    let name = format!("{group}/{repo}");
    let g = access::authorize(&core.db, caller.as_ref(), Kind::Image, &name, Action::View).await?;
    Ok(Json(view(g.resource.value, g.role)))
}

async fn update_image(
    State(core): State<Core>,
    caller: Caller,
    Path((group, repo)): Path<(String, String)>,
    Json(p): Json<access::Patch>,
) -> Result<Json<ResourceView>, ApiError> {
    let g = access::patch(
        &core.db,
        &caller,
        Kind::Image,
        &format!("{group}/{repo}"),
        &p,
    )
    .await?;
    Ok(Json(view(g.resource.value, g.role)))
}

async fn delete_image(
    State(core): State<Core>,
    caller: Caller,
    Path((group, repo)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let name = format!("{group}/{repo}");
    let g = access::authorize(&core.db, Some(&caller), Kind::Image, &name, Action::Delete).await?;
    let tombstone = Tombstone {
        by: caller.user.clone(),
        at: Utc::now(),
    };
    let mark = store::put(core.db.keys.core_image_tombstone(&name), &tombstone);
    access::unregister(&core.db, &g, (vec![], vec![mark])).await?;
    tracing::info!(user = %caller.user, image = %name, "image deleted");
    Ok(StatusCode::NO_CONTENT)
}
