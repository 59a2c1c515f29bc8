use std::net::Ipv4Addr;

/// Everything IPAM can refuse or fail with. `Unavailable` is the only
/// "try again later" case (CNI error code 11); every other variant is a
/// definite answer about the request or the data.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// etcd could not be reached or did not answer in time.
    #[error("etcd unavailable: {}", summary(.0))]
    Unavailable(#[source] etcd_client::Error),
    /// etcd answered with an error that is not about reachability.
    #[error("etcd error: {}", summary(.0))]
    Etcd(#[source] etcd_client::Error),
    /// No eligible pool has a free address left.
    #[error("IP pools exhausted: no free address in {pools:?}")]
    PoolExhausted { pools: Vec<String> },
    /// Every pool bound to the pod's app (and the shared pools, if it falls back) is full.
    #[error("app {app:?} has no free address left in its IP pools {pools:?}")]
    AppPoolsExhausted { app: String, pools: Vec<String> },
    /// Every pool is bound to apps and the pod's namespace is none of them.
    #[error("no IP pool is open to pods of {namespace}: every pool is bound to other apps")]
    NoSharedPool { namespace: String },
    /// `unbind` of a pool the app is not bound to.
    #[error("app {app:?} is not bound to IP pool {pool:?}")]
    NotBound { app: String, pool: String },
    /// A pool cannot be removed while apps are bound to it.
    #[error("IP pool {pool:?} is bound to app(s) {apps:?}; unbind first")]
    PoolBound { pool: String, apps: Vec<String> },
    /// Binding would leave an address of another app (or of no known pod) in the pool.
    #[error("IP pool {pool:?} cannot be bound to {apps:?}: {ip} is held by {holder}")]
    BindConflict {
        pool: String,
        apps: Vec<String>,
        ip: Ipv4Addr,
        holder: String,
    },
    /// The named pool does not exist.
    #[error("unknown IP pool {0:?}")]
    UnknownPool(String),
    /// A pool with this name already exists.
    #[error("IP pool {0:?} already exists")]
    PoolExists(String),
    /// The pool definition is invalid (the message says why).
    #[error("invalid IP pool: {0}")]
    InvalidPool(String),
    /// The new pool's CIDR overlaps an existing pool.
    #[error("pool CIDR {cidr} overlaps pool {other:?} ({other_cidr})")]
    PoolOverlap {
        cidr: ipnet::Ipv4Net,
        other: String,
        other_cidr: ipnet::Ipv4Net,
    },
    /// A pool that still holds allocations cannot be removed.
    #[error("IP pool {pool:?} still has {allocated} allocated address(es)")]
    PoolInUse { pool: String, allocated: usize },
    /// The requested IP is held by another attachment or reserved for another pod.
    #[error("requested IP {ip} is already taken ({by})")]
    RequestedIpTaken { ip: Ipv4Addr, by: String },
    /// The requested IP lies in none of the eligible pools, or is not assignable in it.
    #[error("requested IP {ip} is not assignable: {reason}")]
    RequestedIpNotInPool { ip: Ipv4Addr, reason: String },
    /// The IP is in no pool.
    #[error("IP {0} is not in any pool")]
    UnknownIp(Ipv4Addr),
    /// The block does not exist (not claimed) or its name is malformed.
    #[error("unknown block {0:?}")]
    UnknownBlock(String),
    /// Only empty blocks can be released.
    #[error("block {block} still has {allocated} allocated address(es)")]
    BlockInUse { block: String, allocated: usize },
    /// The request itself is malformed (empty container id, bad ifname, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Too many concurrent writers changed the same records; the caller may retry.
    #[error("gave up after {attempts} conflicting attempts on {what}")]
    Contention { what: String, attempts: u32 },
    /// A record in etcd could not be decoded.
    #[error("corrupt record at {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl IpamError {
    /// True when the caller should retry later (etcd down): CNI code 11.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, IpamError::Unavailable(_))
    }
}

impl From<etcd_client::Error> for IpamError {
    fn from(e: etcd_client::Error) -> Self {
        if leengine_store::is_unavailable(&e) {
            IpamError::Unavailable(e)
        } else {
            IpamError::Etcd(e)
        }
    }
}

impl From<leengine_store::record::Corrupt> for IpamError {
    fn from(e: leengine_store::record::Corrupt) -> Self {
        IpamError::Corrupt {
            key: e.key,
            reason: e.reason,
        }
    }
}

impl From<leengine_store::record::ReadError> for IpamError {
    fn from(e: leengine_store::record::ReadError) -> Self {
        match e {
            leengine_store::record::ReadError::Etcd(e) => e.into(),
            leengine_store::record::ReadError::Corrupt(e) => e.into(),
        }
    }
}

/// gRPC errors render their whole transport chain; the status message is what an operator needs.
fn summary(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) if !s.message().is_empty() => {
            format!("{:?}: {}", s.code(), s.message())
        }
        other => other.to_string(),
    }
}
