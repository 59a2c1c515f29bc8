//! LeEngine IPAM: IP pools in the Cell's etcd, handed out through
//! contiguous node-owned blocks (default 16 addresses).
//!
//! * A node allocates from blocks it owns; when they are full it claims the
//!   next free block with a create-only transaction (`create_revision == 0`),
//!   so two nodes can never own one block.
//! * Every change is one etcd transaction guarded by `mod_revision`
//!   compares on every record it read (block, handle, ...), retried a
//!   bounded number of times on conflict.
//! * Each allocation carries a sequence number unique for its block's whole
//!   history; [`Ipam::release_if_unchanged`] frees an address only if the
//!   allocation it saw is still the one in place.
//! * Reuse policy: longest-free address first; an address freed less than
//!   [`IpamOptions::cooldown`] ago is used only when nothing else is left.
//! * Sticky IPs: on release, a pod identity (namespace/name) keeps its
//!   address reserved for [`IpamOptions::sticky_for`].
//! * Apps: pools may be bound to apps (namespaces); a bound app's freed
//!   addresses are reserved for its next pods ([`apps`]).
//!
//! Pure logic lives in [`pool`] (validation, exclusions, carving),
//! [`choose`] (address/block choice) and [`check`] (leak classification).

pub mod apps;
pub mod check;
pub mod choose;
mod error;
mod model;
pub mod pool;
/// The shared typed-record layer, under the name this crate's modules use.
use leengine_store::record as store;

mod admin;
mod assign;
mod memo;
mod release;
mod vlan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

pub use apps::{AppBinding, AppRange, AppReserved, BindRequest};
pub use check::{ApiView, CheckOptions, CheckReport, Leak, LeakReason, PodInfo};
pub use error::IpamError;
pub use memo::Memo;
pub use model::{
    Allocation, AssignRequest, Assignment, Attachment, Block, Filter, IpInfo, IpState,
    LiveAttachment, NodeAttachmentsReport, Pool, PoolUsage, Reservation, StickyRecord,
};
pub use pool::Exclusion;
pub use release::PreparedRelease;
pub use vlan::{InvalidVlan, Vlan};

/// Tunables; the defaults suit a Cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamOptions {
    /// A freed address is not handed out again for this long unless nothing
    /// else is free (ARP caches and switch tables forget slowly).
    pub cooldown: Duration,
    /// How long a released pod identity keeps its address reserved; zero disables sticky IPs.
    pub sticky_for: Duration,
    /// Attempts per operation when concurrent writers conflict.
    pub max_attempts: u32,
}

impl Default for IpamOptions {
    fn default() -> Self {
        Self {
            cooldown: Duration::from_secs(60),
            sticky_for: Duration::from_secs(300),
            max_attempts: leengine_store::retry::CONTENDED,
        }
    }
}

/// IPAM bound to one node (the node whose blocks `assign` uses).
#[derive(Clone)]
pub struct Ipam {
    client: etcd_client::Client,
    keys: leengine_store::Keys,
    node: String,
    opts: IpamOptions,
}

/// By hand: the etcd client has no `Debug`.
impl std::fmt::Debug for Ipam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipam")
            .field("keys", &self.keys)
            .field("node", &self.node)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Ipam {
    pub fn new(
        client: etcd_client::Client,
        keys: leengine_store::Keys,
        node: impl Into<String>,
    ) -> Self {
        Self {
            client,
            keys,
            node: node.into(),
            opts: IpamOptions::default(),
        }
    }

    pub fn with_options(mut self, opts: IpamOptions) -> Self {
        self.opts = opts;
        self
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn keys(&self) -> &leengine_store::Keys {
        &self.keys
    }

    // ---- attachments (CNI plugin, node-agent) ----

    /// CNI ADD: an address for (container id, ifname). Idempotent: a replay
    /// returns the same address with `created == false`.
    pub async fn assign(&self, req: &AssignRequest) -> Result<Assignment, IpamError> {
        assign::assign(self, req, None).await
    }

    /// [`Ipam::assign`] for a caller that makes this node's assignments one
    /// at a time and keeps `memo` between them: most then take one round
    /// trip to etcd instead of two (see [`Memo`]). The outcome is the same.
    pub async fn assign_remembering(
        &self,
        req: &AssignRequest,
        memo: &mut Memo,
    ) -> Result<Assignment, IpamError> {
        assign::assign(self, req, Some(memo)).await
    }

    /// [`Ipam::assign_remembering`] for several requests at once (calls that
    /// queued for the node's turn): those the memo can decide share one
    /// commit. One answer per request, in order.
    pub async fn assign_all_remembering(
        &self,
        reqs: &[AssignRequest],
        memo: &mut Memo,
    ) -> Vec<Result<Assignment, IpamError>> {
        assign::assign_all(self, reqs, memo).await
    }

    /// CNI DEL: frees the attachment's address. Unknown handle → `Ok(None)`.
    pub async fn release(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Attachment>, IpamError> {
        release::release(self, container_id, ifname).await
    }

    /// The reads of [`Ipam::release`], done ahead: DEL reads while it
    /// removes the datapath, and commits with [`Ipam::release_prepared`]
    /// once that is gone. The caller holds the attachment's lock.
    pub async fn prepare_release(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<PreparedRelease, IpamError> {
        release::prepare_release(self, container_id, ifname).await
    }

    /// [`Ipam::release`] from reads done ahead; if anything changed since,
    /// a fresh release.
    pub async fn release_prepared(
        &self,
        prepared: PreparedRelease,
    ) -> Result<Option<Attachment>, IpamError> {
        release::release_prepared(self, prepared).await
    }

    /// The attachment held by (container id, ifname), if any.
    pub async fn handle(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Attachment>, IpamError> {
        release::handle(self, container_id, ifname).await
    }

    /// Frees `expected.ip` only if the same allocation (container id,
    /// ifname, sequence number) still holds it. `Ok(false)` when it changed
    /// or is gone: nothing was written.
    pub async fn release_if_unchanged(&self, expected: &Attachment) -> Result<bool, IpamError> {
        release::release_if_unchanged(self, expected).await
    }

    /// Every attachment whose allocation was made for `node`.
    pub async fn node_attachments(&self, node: &str) -> Result<Vec<Attachment>, IpamError> {
        admin::node_attachments(self, node).await
    }

    /// Every attachment of the Cell, filtered by node and/or pool, by IP.
    pub async fn list_ips(&self, filter: &Filter) -> Result<Vec<Attachment>, IpamError> {
        admin::list_ips(self, filter).await
    }

    /// What one address is: allocated (and to whom), reserved, free, ...
    pub async fn ip_info(&self, ip: Ipv4Addr) -> Result<IpInfo, IpamError> {
        admin::ip_info(self, ip).await
    }

    // ---- pools and blocks (cnictl) ----

    /// Stores a validated pool; refuses a duplicate name or an overlapping CIDR.
    pub async fn add_pool(&self, pool: &Pool) -> Result<(), IpamError> {
        admin::add_pool(self, pool).await
    }

    /// All pools, by name.
    pub async fn list_pools(&self) -> Result<Vec<Pool>, IpamError> {
        admin::list_pools(self).await
    }

    pub async fn get_pool(&self, name: &str) -> Result<Pool, IpamError> {
        admin::get_pool(self, name).await
    }

    /// Usage of every pool (or of the named one), by name.
    pub async fn pool_usage(&self, name: Option<&str>) -> Result<Vec<PoolUsage>, IpamError> {
        admin::pool_usage(self, name).await
    }

    /// Removes a pool and its (empty) blocks; refused while any address is allocated.
    pub async fn remove_pool(&self, name: &str) -> Result<(), IpamError> {
        admin::remove_pool(self, name).await
    }

    /// Claimed blocks, by pool then address.
    pub async fn list_blocks(&self, filter: &Filter) -> Result<Vec<Block>, IpamError> {
        admin::list_blocks(self, filter).await
    }

    /// Gives an empty block back (`10.1.0.16/28`); refused while it holds allocations.
    pub async fn release_block(&self, block: &str) -> Result<Block, IpamError> {
        admin::release_block(self, block).await
    }

    // ---- apps: bound pools and the reserve ----

    /// Binds a pool to an app (see [`apps`]); refused while the pool holds an
    /// address of a pod outside the apps it would then be bound to.
    pub async fn bind(&self, req: &BindRequest) -> Result<AppBinding, IpamError> {
        admin::bind(self, req).await
    }

    /// Unbinds a pool from an app; `Ok(None)` when that was its last pool.
    pub async fn unbind(&self, app: &str, pool: &str) -> Result<Option<AppBinding>, IpamError> {
        admin::unbind(self, app, pool).await
    }

    /// Every app binding, by app.
    pub async fn bindings(&self) -> Result<Vec<AppBinding>, IpamError> {
        Ok(admin::bindings(self).await?.0)
    }

    /// The ranges bound to `app` (every app when `None`), for firewall rules.
    pub async fn app_ranges(&self, app: Option<&str>) -> Result<Vec<AppRange>, IpamError> {
        admin::app_ranges(self, app).await
    }

    /// Addresses reserved for `app` (given up by its pods), by address.
    pub async fn app_reserve(&self, app: &str) -> Result<Vec<AppReserved>, IpamError> {
        admin::app_reserve(self, app).await
    }

    // ---- liveness and leak check ----

    /// Writes a node-agent report to `{prefix}/nodes/{node}/attachments`.
    pub async fn publish_node_report(
        &self,
        report: &NodeAttachmentsReport,
    ) -> Result<(), IpamError> {
        admin::publish_node_report(self, report).await
    }

    /// Every node-agent report, by node.
    pub async fn node_reports(&self) -> Result<BTreeMap<String, NodeAttachmentsReport>, IpamError> {
        admin::node_reports(self).await
    }

    /// Nodes whose registration key `{prefix}/nodes/{node}` exists.
    pub async fn registered_nodes(&self) -> Result<BTreeSet<String>, IpamError> {
        admin::registered_nodes(self).await
    }

    /// Leak check: etcd's allocations against the apiserver view (if any)
    /// and the node-agent reports.
    pub async fn check(
        &self,
        api: Option<ApiView>,
        opts: &CheckOptions,
    ) -> Result<CheckReport, IpamError> {
        admin::check(self, api, opts).await
    }

    /// Cross-checks blocks, handles and indexes; returns one line per
    /// inconsistency (empty = consistent). For tests, benchmarks and ops.
    pub async fn audit(&self) -> Result<Vec<String>, IpamError> {
        admin::audit(self).await
    }
}

/// Unix seconds now.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
