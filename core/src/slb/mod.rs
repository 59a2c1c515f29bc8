//! slb-core: the HTTP API that writes `/slb/{group}/domains/{domain}/`
//! (docs/slb.md). Config changes and the upstream replacement service
//! discovery makes are admin-only; any authenticated user may read, as in
//! the original system. Every change is one etcd transaction that compares
//! the domain's existence (and, with `If-Match`, its config revision).

mod api;
pub mod dns;
mod view;

use leengine_store::Keys;

pub use api::router;

#[derive(Clone)]
pub struct SlbState {
    pub etcd: etcd_client::Client,
}

/// By hand: the etcd client has no `Debug`.
impl std::fmt::Debug for SlbState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlbState").finish_non_exhaustive()
    }
}

impl SlbState {
    /// The SLB keys keep the original prefix-less layout (`/slb/...`), so the
    /// key prefix is not needed here.
    pub fn new(etcd: etcd_client::Client, _keys: Keys) -> Self {
        Self { etcd }
    }
}
