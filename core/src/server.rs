//! Assembles the API: shared state, every module's routes, problem-JSON
//! fallbacks.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use leengine_build::RegistryAuth;

use crate::auth::{self, Authenticator};
use crate::problem::ApiError;
use crate::quota::Quota;
use crate::registry::RegistrySettings;
use crate::store::Db;
use crate::users::throttle::{Limits, Throttle};
use crate::{access, admin, apps, builds, images, openapi, registry, slb, users};

/// Operator settings of the core (from the command line of `main`).
#[derive(Clone)]
pub struct Settings {
    /// Quota of users without their own.
    pub default_quota: Quota,
    /// Lifetime of the token `POST /api/v1/login` returns.
    pub login_ttl: Duration,
    /// Registry token server; `None` disables `/v2/token` and notifications.
    pub registry: Option<RegistrySettings>,
    /// Push credentials written into every build task; `None` pushes
    /// anonymously (a registry without auth).
    pub build_registry_auth: Option<RegistryAuth>,
    /// Throttling of password checks (login, Basic auth, `/v2/token`).
    pub limits: Limits,
}

/// Redacts the build push secret (the registry settings redact their own).
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let build_auth = self
            .build_registry_auth
            .as_ref()
            .map(|a| (a.username.as_deref(), a.server.as_deref(), "<redacted>"));
        f.debug_struct("Settings")
            .field("default_quota", &self.default_quota)
            .field("login_ttl", &self.login_ttl)
            .field("registry", &self.registry)
            .field("build_registry_auth", &build_auth)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_quota: Quota {
                max_apps: 20,
                max_containers: 200,
            },
            login_ttl: Duration::from_secs(24 * 3600),
            registry: None,
            build_registry_auth: None,
            limits: Limits::default(),
        }
    }
}

/// State shared by the core's own handlers.
#[derive(Clone)]
pub struct Core {
    pub db: Db,
    pub settings: Arc<Settings>,
    pub registry: Option<Arc<registry::TokenServer>>,
    /// Shared by every password check of this replica.
    pub throttle: Arc<Throttle>,
}

impl Core {
    pub fn new(db: Db, settings: Settings) -> Result<Self, ApiError> {
        let registry = match &settings.registry {
            Some(r) => Some(Arc::new(registry::TokenServer::new(r)?)),
            None => None,
        };
        Ok(Self {
            db,
            throttle: Arc::new(Throttle::new(settings.limits)),
            settings: Arc::new(settings),
            registry,
        })
    }
}

/// The whole API with the etcd-backed authenticator.
pub fn app(core: Core) -> Router {
    let authn: Arc<dyn Authenticator> = Arc::new(users::EtcdAuthenticator {
        db: core.db.clone(),
        throttle: core.throttle.clone(),
    });
    app_with(core, authn)
}

/// The whole API with a chosen authenticator.
pub fn app_with(core: Core, authn: Arc<dyn Authenticator>) -> Router {
    let etcd = core.db.etcd.clone();
    let keys = core.db.keys.clone();
    let mut builds = builds::BuildsState::new(etcd.clone(), keys.clone());
    if let Some(auth) = &core.settings.build_registry_auth {
        builds = builds.with_registry_auth(auth.clone());
    }
    let own = Router::new()
        .merge(users::api::router())
        .merge(access::members::router())
        .merge(apps::router())
        .merge(images::router())
        .merge(admin::router())
        .merge(registry::router())
        .merge(openapi::router())
        .with_state(core);
    own.merge(slb::router(slb::SlbState::new(etcd, keys)))
        .merge(builds::router(builds))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(auth::layer(authn))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no_route", "no such endpoint")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_build_push_secret() {
        let s = Settings {
            build_registry_auth: Some(RegistryAuth {
                username: Some("ci".into()),
                password: Some("hunter2-push".into()),
                identity_token: Some("idtok-push".into()),
                server: Some("127.0.0.1:5000".into()),
            }),
            ..Default::default()
        };
        let text = format!("{s:?}");
        assert!(
            text.contains("ci") && text.contains("127.0.0.1:5000"),
            "{text}"
        );
        assert!(
            !text.contains("hunter2") && !text.contains("idtok"),
            "{text}"
        );
    }
}
