use std::time::Duration;

use serde_json::Value;

/// Result alias of this crate.
pub type Result<T, E = OvsdbError> = std::result::Result<T, E>;

/// Why the OVSDB server could not be reached. Callers map every variant to
/// "try again later" (CNI code 11, STATUS code 50).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no connection established to {url} within {timeout:?}")]
    ConnectTimeout { url: String, timeout: Duration },
    #[error("no reply to {method} within {timeout:?}")]
    Timeout {
        method: &'static str,
        timeout: Duration,
    },
    #[error("not connected: the connection to the server is closed ({reason})")]
    Closed { reason: String },
}

/// Errors of the OVSDB client and of the Open_vSwitch operations.
#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("OVSDB unavailable: {0}")]
    Unavailable(#[from] Unavailable),
    #[error("invalid OVSDB address {0:?}: expected unix:PATH or tcp:HOST:PORT")]
    BadAddress(String),
    #[error("OVSDB server rejected {method}: {error}")]
    Rpc {
        method: String,
        /// The JSON-RPC `error`, as "error: details" when the server sent both.
        error: String,
    },
    #[error("OVSDB transaction failed at {op}: {error}{}", details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Operation {
        /// Index of the failed operation; `None` when the commit itself failed
        /// (constraint or referential integrity checks run at commit).
        index: Option<usize>,
        /// Human name of the failed operation ("op 2 (insert Port)" or "commit").
        op: String,
        /// RFC 7047 error string, e.g. "constraint violation".
        error: String,
        details: Option<String>,
    },
    #[error("malformed OVSDB message: {0}")]
    Protocol(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("bridge {0} does not exist")]
    NoBridge(String),
    #[error("port {0} already exists")]
    PortExists(String),
    #[error("port {port} is not on bridge {bridge}")]
    PortNotOnBridge { port: String, bridge: String },
    #[error("port {0} does not exist")]
    NoPort(String),
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("interface {iface} failed: {error}")]
    InterfaceFailed { iface: String, error: String },
    #[error("interface {iface} got no OpenFlow port within {timeout:?}")]
    OfportTimeout { iface: String, timeout: Duration },
    #[error("the Open_vSwitch table has no row (database not initialised)")]
    NotInitialised,
}

impl OvsdbError {
    /// True when the server could not be reached (socket missing, connection refused,
    /// connection lost, request timeout): the caller should try again later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, OvsdbError::Unavailable(_))
    }

    /// True when a transaction failed a schema constraint (unique index, type, size).
    pub fn is_constraint_violation(&self) -> bool {
        matches!(self, OvsdbError::Operation { error, .. } if error == "constraint violation")
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        OvsdbError::Protocol(msg.into())
    }

    pub(crate) fn rpc(method: &str, error: &Value) -> Self {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let error = match (text(error.get("error")), text(error.get("details"))) {
            (Some(e), Some(d)) => format!("{e}: {d}"),
            (Some(e), None) => e,
            _ => error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_string),
        };
        OvsdbError::Rpc {
            method: method.to_string(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rpc_errors_read_well() {
        let e = OvsdbError::rpc(
            "transact",
            &json!({"error": "unknown database", "details": "x is not a database"}),
        );
        assert_eq!(
            e.to_string(),
            "OVSDB server rejected transact: unknown database: x is not a database"
        );
        let e = OvsdbError::rpc("monitor_cancel", &json!("unknown monitor"));
        assert_eq!(
            e.to_string(),
            "OVSDB server rejected monitor_cancel: unknown monitor"
        );
        let e = OvsdbError::rpc("echo", &json!({"weird": 1}));
        assert_eq!(e.to_string(), r#"OVSDB server rejected echo: {"weird":1}"#);
    }

    #[test]
    fn classification() {
        let closed: OvsdbError = Unavailable::Closed {
            reason: "server closed the connection".into(),
        }
        .into();
        assert!(closed.is_unavailable());
        assert!(closed
            .to_string()
            .starts_with("OVSDB unavailable: not connected"));
        let cv = OvsdbError::Operation {
            index: None,
            op: "commit".into(),
            error: "constraint violation".into(),
            details: None,
        };
        assert!(cv.is_constraint_violation() && !cv.is_unavailable());
        assert_eq!(
            cv.to_string(),
            "OVSDB transaction failed at commit: constraint violation"
        );
    }
}
