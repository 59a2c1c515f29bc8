//! Registry notifications: every manifest push becomes a `pushed` event on
//! the image's activity feed and one count in the day's `pushes`. Events are
//! keyed by the registry's event id, so a re-delivered event is recorded
//! once. The first push of a repository creates the image record, with the
//! pusher as Owner.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::server;
use crate::access::{self, Kind, Resource};
use crate::activity::{self, Event};
use crate::auth::{constant_time_eq, credentials, Credentials};
use crate::problem::{ApiError, Json};
use crate::server::Core;
use crate::stats::{self, Metric};
use crate::store;

#[derive(Debug, Deserialize)]
pub struct Envelope {
    pub events: Vec<RegistryEvent>,
}

#[derive(Debug, Deserialize)]
pub struct RegistryEvent {
    pub id: String,
    #[serde(default)]
    pub timestamp: Option<DateTime<Utc>>,
    pub action: String,
    pub target: Target,
    #[serde(default)]
    pub actor: Actor,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    #[serde(default)]
    pub media_type: String,
    pub repository: String,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub tag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Actor {
    #[serde(default)]
    pub name: String,
}

/// Only manifest pushes count; blob uploads of the same push are noise.
pub fn is_counted_push(e: &RegistryEvent) -> bool {
    e.action == "push" && e.target.media_type.contains("manifest")
}

/// Event ids come from the registry; keep them key-safe.
fn safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub async fn receive(
    State(core): State<Core>,
    headers: HeaderMap,
    Json(env): Json<Envelope>,
) -> Result<StatusCode, ApiError> {
    let ts = server(&core)?;
    let Some(secret) = ts.notify_secret.as_deref() else {
        return Err(ApiError::not_found(
            "registry_disabled",
            "registry notifications are not configured",
        ));
    };
    match credentials(&headers)? {
        Some(Credentials::Bearer(t)) if constant_time_eq(t.as_bytes(), secret.as_bytes()) => {}
        _ => return Err(ApiError::unauthorized()),
    }
    for e in env.events.iter().filter(|e| is_counted_push(e)) {
        if !safe_id(&e.id) || !access::valid_resource_name(Kind::Image, &e.target.repository) {
            tracing::warn!(event = %e.id, repository = %e.target.repository, "registry event ignored: bad id or repository name");
            continue;
        }
        record(&core, e).await?;
    }
    Ok(StatusCode::OK)
}

async fn record(core: &Core, e: &RegistryEvent) -> Result<(), ApiError> {
    let db = &core.db;
    let at = e.timestamp.unwrap_or_else(Utc::now);
    let name = &e.target.repository;
    let ev = Event {
        id: format!(
            "{:020}-{}",
            at.timestamp_nanos_opt().unwrap_or_default(),
            e.id
        ),
        at,
        actor: e.actor.name.clone(),
        action: "pushed".to_string(),
        detail: serde_json::json!({ "tag": e.target.tag, "digest": e.target.digest }),
    };
    let key = db.keys.core_resource(Kind::Image.as_str(), name);
    let (key, ev) = (key.as_str(), &ev);
    store::optimistic(move || async move {
        let existing = db.get::<Resource>(key).await?;
        let (mut compares, mut ops) = match existing {
            Some(r) => (vec![r.unchanged()], vec![]),
            None if e.actor.name.is_empty() => {
                tracing::warn!(repository = %name, "push to an unknown image without an actor: not recorded");
                return Ok(Some(()));
            }
            None if crate::images::is_tombstoned(db, name).await? => {
                // A token issued before the delete; the name stays dead.
                tracing::warn!(repository = %name, actor = %e.actor.name, "push to a deleted image: not recorded");
                return Ok(Some(()));
            }
            None => access::creation_ops(
                db,
                &Resource {
                    kind: Kind::Image,
                    name: name.clone(),
                    creator: e.actor.name.clone(),
                    public: false,
                    description: String::new(),
                    created: at,
                    extra: serde_json::Map::new(),
                },
            ),
        };
        compares.push(store::absent(db.keys.core_image_tombstone(name)));
        ops.push(activity::op(&db.keys, Kind::Image, name, ev));
        ops.push(stats::op(&db.keys, Metric::Pushes, at, &e.id, name));
        if !db.commit(compares, ops).await?.applied() {
            return Ok(None);
        }
        tracing::info!(image = %name, tag = ?e.target.tag, actor = %e.actor.name, "push recorded");
        Ok(Some(()))
    })
    .await
}
