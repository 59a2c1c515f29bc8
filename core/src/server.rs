//! Assembles the API: shared state, every module's routes, problem-JSON
//! fallbacks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;

use crate::auth::{self, Authenticator};
use crate::cells::CellSettings;
use crate::deploy::DeploySettings;
use crate::monitor::MonitorSettings;
use crate::problem::ApiError;
use crate::quota::Quota;
use crate::registry::RegistrySettings;
use crate::store::Db;
use crate::users::throttle::{Limits, Throttle};
use crate::{
    access, admin, apps, builds, cells, console, deploy, images, monitor, openapi, registry, slb,
    users,
};

/// Operator settings of the core (from the command line of `main`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Quota of users without their own.
    pub default_quota: Quota,
    /// Lifetime of the token `POST /api/v1/login` returns.
    pub login_ttl: Duration,
    /// Registry token server; `None` disables `/v2/token` and notifications.
    pub registry: Option<RegistrySettings>,
    /// Build farm: the platform registry, allowed git hosts, push token
    /// lifetime (tokens are signed by the registry token server).
    pub builds: builds::BuildSettings,
    /// Throttling of password checks (login, Basic auth, `/v2/token`).
    pub limits: Limits,
    /// Where the Cells' kubeconfigs are; how many Cells an app needs.
    pub cells: CellSettings,
    /// Reconciler timings (resync, drain timeout, robot rotation).
    pub deploy: DeploySettings,
    /// The built web console (`console/dist`) served at `/` and `/boss`;
    /// `None`: the API only.
    pub console_dir: Option<PathBuf>,
    /// Prometheus, Alertmanager webhook, notification channels.
    pub monitor: MonitorSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_quota: Quota {
                max_apps: 20,
                max_containers: 200,
                max_cpu_millis: Some(100_000),
                max_memory_bytes: Some(200 << 30),
            },
            login_ttl: Duration::from_secs(24 * 3600),
            registry: None,
            builds: builds::BuildSettings::default(),
            limits: Limits::default(),
            cells: CellSettings::default(),
            deploy: DeploySettings::default(),
            console_dir: None,
            monitor: MonitorSettings::default(),
        }
    }
}

/// State shared by the core's own handlers.
#[derive(Debug, Clone)]
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

/// The core's background work besides the reconciler (the builder-loss
/// watcher), started by `main` beside the server — not by building the
/// router, which tests and tools may build without wanting watchers.
pub fn spawn_background(core: &Core) -> tokio::task::JoinHandle<()> {
    builds::spawn_redispatch(builds_state(core))
}

fn builds_state(core: &Core) -> builds::BuildsState {
    let builds = builds::BuildsState::new(
        core.db.etcd.clone(),
        core.db.keys.clone(),
        core.settings.builds.clone(),
    );
    match &core.registry {
        Some(tokens) => builds.with_push_tokens(tokens.clone()),
        None => builds,
    }
}

/// The whole API with a chosen authenticator.
pub fn app_with(core: Core, authn: Arc<dyn Authenticator>) -> Router {
    let etcd = core.db.etcd.clone();
    let keys = core.db.keys.clone();
    let builds = builds_state(&core);
    let console_dir = core.settings.console_dir.clone();
    let own = Router::new()
        .merge(users::api::router())
        .merge(access::members::router())
        .merge(apps::router())
        .merge(deploy::api::router())
        .merge(deploy::autoscaler::router())
        .merge(cells::api::router())
        .merge(images::router())
        .merge(admin::router())
        .merge(monitor::router())
        .merge(registry::router())
        .merge(openapi::router())
        .with_state(core);
    let mut all = own
        .merge(slb::router(slb::SlbState::new(etcd, keys)))
        .merge(builds::router(builds));
    if let Some(dir) = console_dir {
        all = all.merge(console::router(dir));
    }
    all.fallback(not_found)
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
