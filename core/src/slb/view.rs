//! Response bodies and the per-agent sync judgement (pure).

use leengine_slb::{AgentStatus, DomainConfig, Upstream};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainView {
    pub group: String,
    pub domain: String,
    pub config: DomainConfig,
    pub upstream: Upstream,
    /// `mod_revision` of the config key (the `ETag`).
    pub config_revision: i64,
    pub upstream_revision: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainStatus {
    pub domain: String,
    pub config_revision: i64,
    pub upstream_revision: i64,
    pub agents: Vec<AgentDomainStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentDomainStatus {
    pub host: String,
    pub applied_revision: i64,
    /// The agent has handled both keys' latest writes and reports no error
    /// for the domain.
    pub in_sync: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<leengine_slb::DomainError>,
    pub updated: String,
}

pub fn agent_domain_status(
    agent: &AgentStatus,
    domain: &str,
    latest_revision: i64,
) -> AgentDomainStatus {
    let error = agent.errors.get(domain).cloned();
    AgentDomainStatus {
        host: agent.host.clone(),
        applied_revision: agent.applied_revision,
        in_sync: error.is_none() && agent.applied_revision >= latest_revision,
        error,
        updated: agent.updated.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_sync_needs_the_revision_and_no_error() {
        let mut a = AgentStatus {
            host: "h".into(),
            applied_revision: 10,
            ..Default::default()
        };
        assert!(agent_domain_status(&a, "d", 10).in_sync);
        assert!(!agent_domain_status(&a, "d", 11).in_sync);
        a.errors.insert(
            "d".into(),
            leengine_slb::DomainError {
                revision: 9,
                kind: "nginx-test".into(),
                message: "x".into(),
            },
        );
        let s = agent_domain_status(&a, "d", 5);
        assert!(!s.in_sync);
        assert_eq!(s.error.unwrap().kind, "nginx-test");
        assert!(agent_domain_status(&a, "other", 5).in_sync);
    }
}
