//! Members and roles on the four resource kinds (app, image, group, build).
//!
//! Every resource has a record `{prefix}/core/resources/{kind}/{name}`
//! ([`Resource`]), its members under `{prefix}/core/members/{kind}/{name}/`
//! and a reverse index per user for "list what I belong to". Image names are
//! `group/repo`; a member of group `g` holds their role on every image `g/*`
//! (the higher of the two roles wins).
//!
//! For other modules of the crate (build configs live in `builds`):
//! - create a resource with [`register`] (the caller becomes Owner; pass your
//!   own ops to write your record in the same transaction);
//! - check a caller with [`authorize`] — it answers 404 to non-members of
//!   private resources, 403 to members lacking the role, 401 to anonymous
//!   callers who might be allowed after signing in;
//! - change its description or public flag with [`patch`];
//! - remove a resource with [`unregister`];
//! - record activity with `crate::activity` and daily counts with `crate::stats`.

pub mod members;
mod patch;
pub mod table;

pub use patch::{check_description, patch, Patch};
pub use table::{Action, Decision, Kind, Role};

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use etcd_client::{Compare, TxnOp};
use leengine_store::record;
use serde::{Deserialize, Serialize};

use crate::activity;
use crate::auth::Caller;
use crate::problem::ApiError;
use crate::store::{self, Commit, Db, Rec};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub kind: Kind,
    pub name: String,
    pub creator: String,
    pub public: bool,
    #[serde(default)]
    pub description: String,
    pub created: DateTime<Utc>,
    /// Fields a kind keeps on its record (an app's summary of its newest
    /// version, [`crate::apps::AppState`]); access neither reads nor
    /// changes them, and keeps them through every patch.
    #[serde(default, flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user: String,
    pub role: Role,
    pub added_by: String,
    pub added: DateTime<Utc>,
}

/// The outcome of a successful [`authorize`].
#[derive(Clone, Debug)]
pub struct Grant {
    pub resource: Rec<Resource>,
    /// Effective role; `None` for a non-member allowed by the public flag.
    pub role: Option<Role>,
}

/// Lower-case DNS-label-like names: they become etcd key segments, registry
/// repository components and Kubernetes namespaces.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
}

/// Validates a resource name of `kind` (images: `group/repo`).
pub fn valid_resource_name(kind: Kind, name: &str) -> bool {
    match kind {
        Kind::Image => name
            .split_once('/')
            .is_some_and(|(g, r)| valid_name(g) && valid_name(r)),
        _ => valid_name(name),
    }
}

/// The group an image belongs to.
pub fn image_group(image: &str) -> Option<&str> {
    image.split_once('/').map(|(g, _)| g)
}

fn not_found(kind: Kind, name: &str) -> ApiError {
    ApiError::not_found(
        kind.not_found_code(),
        format!("{} {name} not found", kind.as_str()),
    )
}

/// Reads a resource and the caller's direct (and, for images, group) role in
/// one round trip.
pub async fn load(
    db: &Db,
    kind: Kind,
    name: &str,
    user: Option<&str>,
) -> Result<(Option<Rec<Resource>>, Option<Role>), ApiError> {
    let k = &db.keys;
    let mut reads = vec![record::get(k.core_resource(kind.as_str(), name))];
    if let Some(user) = user {
        reads.push(record::get(k.core_member(kind.as_str(), name, user)));
        if let (Kind::Image, Some(group)) = (kind, image_group(name)) {
            reads.push(record::get(k.core_member(
                Kind::Group.as_str(),
                group,
                user,
            )));
        }
    }
    let batch = record::read(&db.etcd, reads).await?;
    let resource = record::decode_one::<Resource>(&batch.responses[0])?;
    let mut role = None;
    for get in &batch.responses[1..] {
        if let Some(m) = record::decode_one::<Member>(get)? {
            role = role.max(Some(m.value.role));
        }
    }
    Ok((resource, role))
}

/// Checks that `caller` (None = anonymous) may do `action` on the resource.
pub async fn authorize(
    db: &Db,
    caller: Option<&Caller>,
    kind: Kind,
    name: &str,
    action: Action,
) -> Result<Grant, ApiError> {
    if !valid_resource_name(kind, name) {
        return Err(not_found(kind, name));
    }
    let (resource, member_role) = load(db, kind, name, caller.map(|c| c.user.as_str())).await?;
    let resource = resource.ok_or_else(|| not_found(kind, name))?;
    let role = match caller {
        Some(c) if c.admin => Some(Role::Owner),
        _ => member_role,
    };
    match table::decide(kind, action, resource.value.public, role, caller.is_none()) {
        Decision::Allow => Ok(Grant { resource, role }),
        Decision::Hidden => Err(not_found(kind, name)),
        Decision::SignIn => Err(ApiError::unauthorized()),
        Decision::Forbidden => Err(ApiError::forbidden(
            "forbidden",
            format!(
                "{} may not {} {} {name}",
                role.map_or("a non-member".to_string(), |r| format!("role {r:?}")),
                action.as_str(),
                kind.as_str()
            ),
        )),
    }
}

/// Ops that add or change a member, with the reverse index.
pub fn member_ops(db: &Db, kind: Kind, name: &str, member: &Member) -> Vec<TxnOp> {
    let k = &db.keys;
    vec![
        store::put(k.core_member(kind.as_str(), name, &member.user), member),
        store::put(
            k.core_membership(&member.user, kind.as_str(), name),
            &member.role,
        ),
    ]
}

/// Creates a resource with `creator` as its Owner, plus `extra` ops of the
/// calling module, atomically. 409 `{kind}_exists` if the name is taken (or
/// an `extra` compare failed; callers that must tell the two apart use
/// [`try_register`]).
pub async fn register(
    db: &Db,
    creator: &Caller,
    kind: Kind,
    name: &str,
    public: bool,
    description: String,
    extra: (Vec<Compare>, Vec<TxnOp>),
) -> Result<Resource, ApiError> {
    let new = NewResource {
        kind,
        name,
        public,
        description,
    };
    try_register(db, creator, new, extra)
        .await?
        .ok_or_else(|| exists(kind, name))
}

pub fn exists(kind: Kind, name: &str) -> ApiError {
    ApiError::conflict(
        exists_code(kind),
        format!("{} {name} already exists", kind.as_str()),
    )
}

/// What a caller asks [`try_register`] to create.
#[derive(Clone, Debug)]
pub struct NewResource<'a> {
    pub kind: Kind,
    pub name: &'a str,
    pub public: bool,
    pub description: String,
}

/// [`register`], answering `None` when a compare failed: the name is
/// taken or one of the caller's `extra` compares did not hold.
pub async fn try_register(
    db: &Db,
    creator: &Caller,
    new: NewResource<'_>,
    extra: (Vec<Compare>, Vec<TxnOp>),
) -> Result<Option<Resource>, ApiError> {
    let NewResource {
        kind,
        name,
        public,
        description,
    } = new;
    if !valid_resource_name(kind, name) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!(
                "{name:?} is not a valid {} name (lower-case letters, digits, '-', '_', '.'; at most 63; images: group/repo)",
                kind.as_str()
            ),
        ));
    }
    let resource = Resource {
        kind,
        name: name.to_string(),
        creator: creator.user.clone(),
        public,
        description,
        created: Utc::now(),
        extra: serde_json::Map::new(),
    };
    let (mut compares, mut ops) = extra;
    let (c, o) = creation_ops(db, &resource);
    compares.extend(c);
    ops.extend(o);
    Ok(db
        .commit(compares, ops)
        .await?
        .applied()
        .then_some(resource))
}

/// The compares and ops that create `resource` (absent before) with its
/// creator as Owner and a `created` event.
pub fn creation_ops(db: &Db, resource: &Resource) -> (Vec<Compare>, Vec<TxnOp>) {
    let k = &db.keys;
    let kind = resource.kind;
    let key = k.core_resource(kind.as_str(), &resource.name);
    let owner = Member {
        user: resource.creator.clone(),
        role: Role::Owner,
        added_by: resource.creator.clone(),
        added: resource.created,
    };
    let ev = activity::event(
        &resource.creator,
        "created",
        serde_json::json!({ "public": resource.public }),
    );
    let mut ops = vec![store::put(key.clone(), resource)];
    ops.extend(member_ops(db, kind, &resource.name, &owner));
    ops.push(activity::op(k, kind, &resource.name, &ev));
    (vec![store::absent(key)], ops)
}

pub fn exists_code(kind: Kind) -> &'static str {
    match kind {
        Kind::App => "app_exists",
        Kind::Image => "image_exists",
        Kind::Group => "group_exists",
        Kind::Build => "build_config_exists",
    }
}

/// Deletes a resource, its members (both directions) and its feed, plus
/// `extra` ops, if nobody changed the resource since `grant`; 409
/// `contention` if someone did (or an `extra` compare failed: callers that
/// must tell why use [`try_unregister`]).
pub async fn unregister(
    db: &Db,
    grant: &Grant,
    extra: (Vec<Compare>, Vec<TxnOp>),
) -> Result<(), ApiError> {
    match try_unregister(db, grant, extra).await? {
        Commit::Applied { .. } => Ok(()),
        Commit::Conflict => Err(store::contention()),
    }
}

/// [`unregister`] with the commit's outcome.
pub async fn try_unregister(
    db: &Db,
    grant: &Grant,
    extra: (Vec<Compare>, Vec<TxnOp>),
) -> Result<Commit, ApiError> {
    let r = &grant.resource.value;
    let k = &db.keys;
    let kind = r.kind.as_str();
    let members = db.list_keys(&k.core_members_prefix(kind, &r.name)).await?;
    let (mut compares, mut ops) = extra;
    compares.push(grant.resource.unchanged());
    ops.push(store::delete(k.core_resource(kind, &r.name)));
    ops.push(store::delete_prefix(k.core_members_prefix(kind, &r.name)));
    ops.push(store::delete_prefix(k.core_activity_prefix(kind, &r.name)));
    let prefix = k.core_members_prefix(kind, &r.name);
    for key in members {
        if let Some(user) = key.strip_prefix(&prefix) {
            ops.push(store::delete(k.core_membership(user, kind, &r.name)));
        }
    }
    db.commit(compares, ops).await
}

/// Names of `kind` resources `user` is a direct member of.
pub async fn memberships(db: &Db, user: &str, kind: Kind) -> Result<Vec<(String, Role)>, ApiError> {
    let prefix = db.keys.core_memberships_prefix(user, kind.as_str());
    let rows = db.list::<Role>(&prefix).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(key, role)| key.strip_prefix(&prefix).map(|n| (n.to_string(), role)))
        .collect())
}

/// The resources of `kind` the caller may see, each with the caller's role
/// (admins see everything, as Owner). Non-admins cost reads proportional to
/// what they belong to, not to the number of resources.
pub async fn visible(
    db: &Db,
    caller: &Caller,
    kind: Kind,
) -> Result<Vec<(Resource, Role)>, ApiError> {
    let k = &db.keys;
    if caller.admin {
        let all = db
            .list::<Resource>(&k.core_resources_prefix(kind.as_str()))
            .await?;
        return Ok(all.into_iter().map(|(_, r)| (r, Role::Owner)).collect());
    }
    let mut roles: BTreeMap<String, Role> = BTreeMap::new();
    let mut found: BTreeMap<String, Resource> = BTreeMap::new();
    if kind == Kind::Image {
        for (group, role) in memberships(db, &caller.user, Kind::Group).await? {
            let prefix = k.core_group_resources_prefix(kind.as_str(), &group);
            for (_, r) in db.list::<Resource>(&prefix).await? {
                roles.insert(r.name.clone(), role);
                found.insert(r.name.clone(), r);
            }
        }
    }
    let direct = memberships(db, &caller.user, kind).await?;
    for chunk in direct.chunks(64) {
        let reads = chunk
            .iter()
            .map(|(name, _)| record::get(k.core_resource(kind.as_str(), name)))
            .collect();
        let batch = record::read(&db.etcd, reads).await?;
        for ((name, role), get) in chunk.iter().zip(&batch.responses) {
            let Some(r) = record::decode_one::<Resource>(get)? else {
                continue;
            };
            let slot = roles.entry(name.clone()).or_insert(*role);
            *slot = (*slot).max(*role);
            found.insert(name.clone(), r.value);
        }
    }
    Ok(found
        .into_iter()
        .filter_map(|(name, r)| Some((r, *roles.get(&name)?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("my-app.v2"));
        assert!(!valid_name("My"));
        assert!(!valid_name("-a"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(64)));
        assert!(!valid_name("a/b"));
        assert!(valid_resource_name(Kind::Image, "team/web"));
        assert!(!valid_resource_name(Kind::Image, "web"));
        assert!(!valid_resource_name(Kind::Image, "a/b/c"));
        assert!(!valid_resource_name(Kind::App, "team/web"));
        assert_eq!(image_group("team/web"), Some("team"));
    }
}
