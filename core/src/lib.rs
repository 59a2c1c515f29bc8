//! LeEngine core: the central REST API (docs/core-api.md).
//!
//! Shared contract for every module in this crate:
//! - errors: [`problem::ApiError`] (problem JSON); extract bodies, queries and
//!   paths with [`problem::Json`], [`problem::Query`], [`problem::Path`];
//! - identity: [`auth::Caller`] (401 without valid credentials) and
//!   [`auth::MaybeCaller`] (anonymous allowed);
//! - roles on resources: [`access`] (`register`, `authorize`, `unregister`),
//!   activity feed: [`activity`], daily counts: [`stats`];
//! - each feature module exposes `router() -> axum::Router<server::Core>`
//!   (handlers take `State<Core>`); `slb` and `builds`, which predate
//!   `Core`, take their own `XState::new(etcd_client::Client, Keys)`.
//!   [`server::app`] merges the routers; background work is started by
//!   `main` ([`server::spawn_background`], the reconciler), never by
//!   building a router.

pub mod access;
pub mod activity;
pub mod admin;
pub mod apps;
pub mod auth;
pub mod builds;
pub mod cells;
pub mod console;
pub mod deploy;
pub mod images;
pub mod monitor;
pub mod openapi;
pub mod problem;
/// Kubernetes quantities, read the same way by the quota, the deploy check
/// and the node-agent's metrics.
pub use leengine_apiserver::quantity;
pub mod quota;
pub mod registry;
pub mod server;
pub mod slb;
pub mod stats;
pub mod store;
pub mod users;
