//! Member management and activity endpoints, the same for every kind.
//!
//! Routes (images are named `{group}/{repo}`, build configs `configs/{id}`,
//! the others `{name}`):
//! `GET {base}/members`, `PUT|DELETE {base}/members/{user}`, `GET {base}/activity`.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::Router;
use chrono::Utc;
use serde::Deserialize;

use super::{authorize, member_ops, Action, Grant, Kind, Member, Role};
use crate::activity::{self, Event};
use crate::auth::Caller;
use crate::problem::{ApiError, Json, Path, Query};
use crate::server::Core;
use crate::store;

/// The resource name from the path parameters of either route shape.
fn resource_name(kind: Kind, p: &HashMap<String, String>) -> Result<String, ApiError> {
    let name = match kind {
        Kind::Image => p
            .get("group")
            .zip(p.get("repo"))
            .map(|(g, r)| format!("{g}/{r}")),
        Kind::Build => p.get("id").cloned(),
        _ => p.get("name").cloned(),
    };
    name.ok_or_else(|| ApiError::internal("route lacks its name parameters"))
}

fn base(kind: Kind) -> &'static str {
    match kind {
        Kind::App => "/api/v1/apps/{name}",
        Kind::Image => "/api/v1/images/{group}/{repo}",
        Kind::Group => "/api/v1/groups/{name}",
        // Shares the build config routes of `crate::builds`.
        Kind::Build => "/api/v1/builds/configs/{id}",
    }
}

pub fn router() -> Router<Core> {
    let mut r = Router::new();
    for kind in Kind::ALL {
        let b = base(kind);
        r = r
            .route(
                &format!("{b}/members"),
                get(move |s, c, p| list(kind, s, c, p)),
            )
            .route(
                &format!("{b}/members/{{user}}"),
                put(move |s, c, p, body| set(kind, s, c, p, body))
                    .delete(move |s, c, p| remove(kind, s, c, p)),
            )
            .route(
                &format!("{b}/activity"),
                get(move |s, c, p, q| feed(kind, s, c, p, q)),
            );
    }
    r
}

async fn list(
    kind: Kind,
    State(core): State<Core>,
    caller: Caller,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Json<Vec<Member>>, ApiError> {
    let name = resource_name(kind, &p)?;
    authorize(&core.db, Some(&caller), kind, &name, Action::View).await?;
    let prefix = core.db.keys.core_members_prefix(kind.as_str(), &name);
    let members = core.db.list::<Member>(&prefix).await?;
    Ok(Json(members.into_iter().map(|(_, m)| m).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMember {
    pub role: Role,
}

/// Who may touch whom: nobody below Owner grants or edits a role above
/// their own (a Master cannot make or unmake Owners).
fn check_rank(
    grant: &Grant,
    caller: &Caller,
    target_now: Option<Role>,
    target_new: Option<Role>,
) -> Result<(), ApiError> {
    if caller.admin {
        return Ok(());
    }
    let mine = grant.role.unwrap_or(Role::Guest);
    if target_now.is_some_and(|r| r > mine) || target_new.is_some_and(|r| r > mine) {
        return Err(ApiError::forbidden(
            "role_too_high",
            format!("a {mine:?} cannot grant or change a role above {mine:?}"),
        ));
    }
    Ok(())
}

/// Applies a member change with compare-and-swap on the resource record:
/// every member change re-writes it, so two concurrent changes cannot both
/// pass the "last Owner" check.
async fn change(
    core: &Core,
    caller: &Caller,
    kind: Kind,
    name: &str,
    user: &str,
    new_role: Option<Role>,
) -> Result<Option<Member>, ApiError> {
    let db = &core.db;
    store::optimistic(move || async move {
        let grant = authorize(db, Some(caller), kind, name, Action::ManageMembers).await?;
        let prefix = db.keys.core_members_prefix(kind.as_str(), name);
        let members: Vec<Member> = db
            .list(&prefix)
            .await?
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        let current = members.iter().find(|m| m.user == user).map(|m| m.role);
        if new_role.is_none() && current.is_none() {
            return Err(ApiError::not_found(
                "member_not_found",
                format!("{user} is not a member of {} {name}", kind.as_str()),
            ));
        }
        check_rank(&grant, caller, current, new_role)?;
        let owners = members.iter().filter(|m| m.role == Role::Owner).count();
        if current == Some(Role::Owner) && new_role != Some(Role::Owner) && owners == 1 {
            return Err(ApiError::conflict(
                "last_owner",
                format!("{user} is the last Owner of {} {name}", kind.as_str()),
            ));
        }
        let mut compares = vec![grant.resource.unchanged()];
        let mut ops = vec![store::put(
            grant.resource.key.as_str(),
            &grant.resource.value,
        )];
        let (member, action) = match new_role {
            Some(role) => {
                if current.is_none() {
                    if db
                        .get::<serde_json::Value>(&db.keys.core_user(user))
                        .await?
                        .is_none()
                    {
                        return Err(ApiError::not_found(
                            "user_not_found",
                            format!("no user {user}"),
                        ));
                    }
                    compares.push(store::present(db.keys.core_user(user)));
                }
                let m = Member {
                    user: user.to_string(),
                    role,
                    added_by: caller.user.clone(),
                    added: Utc::now(),
                };
                ops.extend(member_ops(db, kind, name, &m));
                let action = if current.is_some() {
                    "member_changed"
                } else {
                    "member_added"
                };
                (Some(m), action)
            }
            None => {
                ops.push(store::delete(db.keys.core_member(
                    kind.as_str(),
                    name,
                    user,
                )));
                ops.push(store::delete(db.keys.core_membership(
                    user,
                    kind.as_str(),
                    name,
                )));
                (None, "member_removed")
            }
        };
        let ev = activity::event(
            &caller.user,
            action,
            serde_json::json!({ "user": user, "role": new_role, "previous": current }),
        );
        ops.push(activity::op(&db.keys, kind, name, &ev));
        Ok(db.commit(compares, ops).await?.applied().then_some(member))
    })
    .await
}

async fn set(
    kind: Kind,
    State(core): State<Core>,
    caller: Caller,
    Path(p): Path<HashMap<String, String>>,
    Json(body): Json<SetMember>,
) -> Result<Json<Member>, ApiError> {
    let name = resource_name(kind, &p)?;
    let user = p.get("user").cloned().unwrap_or_default();
    let member = change(&core, &caller, kind, &name, &user, Some(body.role)).await?;
    member
        .map(Json)
        .ok_or_else(|| ApiError::internal("member change returned nothing"))
}

async fn remove(
    kind: Kind,
    State(core): State<Core>,
    caller: Caller,
    Path(p): Path<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let name = resource_name(kind, &p)?;
    let user = p.get("user").cloned().unwrap_or_default();
    change(&core, &caller, kind, &name, &user, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct FeedQuery {
    #[serde(default = "default_limit")]
    pub limit: usize,
}

pub const MAX_FEED: usize = 1000;

fn default_limit() -> usize {
    100
}

async fn feed(
    kind: Kind,
    State(core): State<Core>,
    caller: Caller,
    Path(p): Path<HashMap<String, String>>,
    Query(q): Query<FeedQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    if q.limit > MAX_FEED {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit is at most {MAX_FEED}"),
        ));
    }
    let name = resource_name(kind, &p)?;
    authorize(&core.db, Some(&caller), kind, &name, Action::View).await?;
    Ok(Json(activity::list(&core.db, kind, &name, q.limit).await?))
}
