//! CNI error codes (spec section "Error") and the plugin's own codes (≥ 100).

use serde_json::json;

pub const INCOMPATIBLE_VERSION: u32 = 1;
pub const UNSUPPORTED_FIELD: u32 = 2;
pub const UNKNOWN_CONTAINER: u32 = 3;
pub const INVALID_ENV: u32 = 4;
pub const IO_FAILURE: u32 = 5;
pub const DECODE: u32 = 6;
pub const INVALID_CONFIG: u32 = 7;
pub const TRY_AGAIN_LATER: u32 = 11;
pub const NOT_AVAILABLE: u32 = 50;

/// No eligible pool has a free address.
pub const POOL_EXHAUSTED: u32 = 100;
/// The address asked for (CNI_ARGS `IP=`, runtimeConfig `ips`) is taken or not in a pool.
pub const IP_UNAVAILABLE: u32 = 101;
/// The configured OVS bridge does not exist.
pub const NO_BRIDGE: u32 = 102;
/// `CNI_IFNAME` already exists in the container's namespace.
pub const IFACE_EXISTS: u32 = 103;
/// A pool named in the config is not defined in etcd.
pub const UNKNOWN_POOL: u32 = 104;
/// The kernel or Open vSwitch refused a datapath change.
pub const DATAPATH: u32 = 105;
/// IPAM failed in a way that is not "unreachable" (corrupt record, etcd refusal).
pub const IPAM: u32 = 106;
/// CHECK found the attachment different from prevResult.
pub const CHECK_MISMATCH: u32 = 107;

/// A CNI error as printed on stdout: `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[{code}] {msg}{}", suffix(.details))]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

fn suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

pub type CniResult<T> = Result<T, CniError>;

impl From<leengine_ipam::IpamError> for CniError {
    fn from(e: leengine_ipam::IpamError) -> Self {
        use leengine_ipam::IpamError as E;
        let code = match &e {
            E::Unavailable(_) | E::Contention { .. } => TRY_AGAIN_LATER,
            E::PoolExhausted { .. } | E::AppPoolsExhausted { .. } | E::NoSharedPool { .. } => {
                POOL_EXHAUSTED
            }
            E::RequestedIpTaken { .. } | E::RequestedIpNotInPool { .. } => IP_UNAVAILABLE,
            E::UnknownPool(_) => UNKNOWN_POOL,
            E::InvalidRequest(_) => INVALID_ENV,
            _ => IPAM,
        };
        CniError::new(code, format!("IPAM: {e}"))
    }
}

impl From<leengine_ovsdb::OvsdbError> for CniError {
    fn from(e: leengine_ovsdb::OvsdbError) -> Self {
        use leengine_ovsdb::OvsdbError as E;
        let code = match &e {
            E::Unavailable(_) => TRY_AGAIN_LATER,
            E::NoBridge(_) => NO_BRIDGE,
            _ => DATAPATH,
        };
        CniError::new(code, format!("OVS: {e}"))
    }
}

impl From<leengine_netdp::NetdpError> for CniError {
    fn from(e: leengine_netdp::NetdpError) -> Self {
        use leengine_netdp::NetdpError as E;
        let code = match &e {
            E::NetnsMissing(_) => UNKNOWN_CONTAINER,
            E::LinkExists(_) => IFACE_EXISTS,
            _ => DATAPATH,
        };
        CniError::new(code, format!("datapath: {e}"))
    }
}

impl From<leengine_attach::lock::LockError> for CniError {
    fn from(e: leengine_attach::lock::LockError) -> Self {
        CniError::new(IO_FAILURE, format!("lock {}", e.path.display()))
            .with_details(e.source.to_string())
    }
}
