//! Build dispatch (issue 7): build configs, manual and GitLab-webhook
//! triggers, rendezvous placement on live builders, and re-dispatch of tasks
//! whose builder's lease expired. The agents (`leengine-build-agent`) do the
//! work; this module only writes configs, runs and task keys.
//!
//! `router` also starts the background watcher on `{prefix}/builders/`: every
//! core replica runs one, and their writes are compare-and-swap, so only one
//! replica moves a given task.

mod api;
mod dispatch;
mod redispatch;
mod webhook;

use leengine_build::RegistryAuth;
use leengine_store::Keys;

use crate::store::Db;

pub use dispatch::{dispatch, live_builders, DispatchRequest};
pub use redispatch::handle_lost_builder;

#[derive(Clone)]
pub struct BuildsState {
    pub etcd: etcd_client::Client,
    pub keys: Keys,
    /// Credentials put into every task for the push; `None` pushes anonymously.
    pub registry_auth: Option<RegistryAuth>,
}

impl BuildsState {
    pub fn new(etcd: etcd_client::Client, keys: Keys) -> Self {
        Self {
            etcd,
            keys,
            registry_auth: None,
        }
    }

    pub fn with_registry_auth(mut self, auth: RegistryAuth) -> Self {
        self.registry_auth = Some(auth);
        self
    }

    /// The shared role engine works on a [`Db`].
    fn db(&self) -> Db {
        Db::new(self.etcd.clone(), self.keys.clone())
    }
}

/// Routes under `/api/v1/builds/`; also spawns the builder-loss watcher
/// (needs a running tokio runtime).
pub fn router(state: BuildsState) -> axum::Router {
    tokio::spawn(redispatch::watch_builders(state.clone()));
    api::routes().with_state(state)
}
