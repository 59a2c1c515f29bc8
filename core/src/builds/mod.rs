//! Build dispatch (docs/build-farm.md): build configs, manual and GitLab-webhook
//! triggers, rendezvous placement on live builders, and re-dispatch of tasks
//! whose builder's lease expired. The agents (`leengine-build-agent`) do the
//! work; this module only writes configs, runs and task keys.
//!
//! `router` also starts the background watcher on `{prefix}/builders/`: every
//! core replica runs one, and their writes are compare-and-swap, so only one
//! replica moves a given task.

mod api;
mod dispatch;
mod push;
mod redispatch;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use leengine_build::validate::Policy;
use leengine_store::Keys;

use crate::registry::TokenServer;
use crate::store::Db;

pub use dispatch::{dispatch, live_builders, DispatchRequest};
pub use redispatch::handle_lost_builder;

/// How long a task's push token stays valid unless configured: it must
/// outlive the queue and every stage before the push.
pub const DEFAULT_PUSH_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The operator's choices for the build farm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildSettings {
    /// The platform registry and the allowed git hosts.
    pub policy: Policy,
    pub push_token_ttl: Duration,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            push_token_ttl: DEFAULT_PUSH_TOKEN_TTL,
        }
    }
}

#[derive(Clone)]
pub struct BuildsState {
    pub etcd: etcd_client::Client,
    pub keys: Keys,
    pub settings: Arc<BuildSettings>,
    /// Signs each task's push token; `None` pushes anonymously (a registry
    /// without auth).
    pub tokens: Option<Arc<TokenServer>>,
}

/// By hand: the etcd client has no `Debug`.
impl std::fmt::Debug for BuildsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildsState")
            .field("keys", &self.keys)
            .field("settings", &self.settings)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl BuildsState {
    pub fn new(etcd: etcd_client::Client, keys: Keys, settings: BuildSettings) -> Self {
        Self {
            etcd,
            keys,
            settings: Arc::new(settings),
            tokens: None,
        }
    }

    pub fn with_push_tokens(mut self, tokens: Arc<TokenServer>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// The shared role engine works on a [`Db`].
    fn db(&self) -> Db {
        Db::new(self.etcd.clone(), self.keys.clone())
    }
}

/// Routes under `/api/v1/builds/`.
pub fn router(state: BuildsState) -> axum::Router {
    api::routes().with_state(state)
}

/// The builder-loss watcher: re-dispatches the builds of a builder whose
/// lease ended (needs a running tokio runtime).
pub fn spawn_redispatch(state: BuildsState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(redispatch::watch_builders(state))
}
