//! The load-balancer contract shared by slb-core (writes `/slb/{group}/...`)
//! and the nginx agent (reads it): typed records with validation, nginx
//! config rendering, change classification, the upstream wire format the
//! lua balancer reads, and the lua code itself. Pure: no I/O here.

pub mod classify;
pub mod lua;
pub mod model;
pub mod render;
pub mod route;
pub mod status;
pub mod wire;

pub use classify::{classify, Change};
pub use model::{
    Balancing, DomainConfig, Listen, Location, LocationMatch, Rewrite, RewriteFlag, Server, Tls,
    Upstream,
};
pub use status::{AgentStatus, DomainError};

/// A record in etcd or an API body that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlbError {
    /// A field holds a value the load balancer cannot use.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The JSON does not match the schema.
    #[error("malformed JSON: {0}")]
    Json(String),
}

impl SlbError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<serde_json::Error> for SlbError {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e.to_string())
    }
}
