//! Records of the Region layer that more than one component reads: the
//! Cell registry (written by core, read by the app reconciler and service
//! discovery), plain Service bindings, and the drain contract between the
//! app reconciler and service discovery (docs/discovery.md).

use serde::{Deserialize, Serialize};

/// `{prefix}/cells/{cell}`: how to reach one Cell (ARCHITECTURE.md §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CellRecord {
    /// `https://HOST:PORT` of the Cell's kube-apiserver (core's record
    /// spells it `api_url`).
    #[serde(alias = "api_url")]
    pub apiserver: String,
    /// PEM of the CA that signed the apiserver's certificate; the
    /// kubeconfig's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Where the reader finds its credential for this Cell: a kubeconfig
    /// file, absolute or relative to the reader's credentials directory.
    /// Secrets never go into etcd; each component holds its own. (Core's
    /// record spells it `kubeconfig`: a file name in the credentials directory.)
    #[serde(alias = "kubeconfig")]
    pub credential: String,
    /// The Cell's etcd (its IPAM), client URLs.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// nginx groups that serve this Cell's apps.
    #[serde(default, alias = "nginx_groups")]
    pub nginx_groups: Vec<String>,
}

/// `{prefix}/discovery/services/{cell}/{namespace}/{service}`: publish a
/// plain Service's ready endpoints in a domain's upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceBinding {
    pub group: String,
    pub domain: String,
    /// The Service port to use, by name; the Service's only (or first)
    /// port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
}

/// The name of the one Service core creates in each app's namespace.
pub const APP_SERVICE: &str = "app";

/// What discovery reads of core's `{prefix}/apps/{app}` record (core owns
/// the whole record; unknown fields are ignored here on purpose): an app
/// with a load balancer binds its Service [`APP_SERVICE`] in each of its
/// Cells to the LB's domain.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AppRoute {
    pub namespace: String,
    pub cells: Vec<String>,
    #[serde(default)]
    pub lb: Option<AppLb>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AppLb {
    pub domain: String,
    pub group: String,
}

/// `{prefix}/drain/{group}/{domain}/{id}`: core asks for these pods to
/// leave the domain's upstream before it deletes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainRequest {
    pub cell: String,
    pub namespace: String,
    pub pods: Vec<String>,
    /// RFC 3339.
    pub created: String,
}

/// `{prefix}/drain-ack/{group}/{domain}/{id}`: every live nginx agent of
/// the group has applied an upstream without the pods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainAck {
    /// etcd revision of the upstream that excludes the pods; every live
    /// agent reported `appliedRevision >=` it.
    pub revision: i64,
    /// RFC 3339.
    pub acked: String,
}

/// Pod annotation core sets before every deletion it causes (scale-down,
/// version removal, app removal); the node-agent counts a deleted pod
/// without it as deleted without the platform asking (docs/monitoring.md).
pub const REMOVAL_ANNOTATION: &str = "leengine.io/removal";
/// Its value.
pub const REMOVAL_BY_PLATFORM: &str = "platform";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_records_have_the_contract_shape() {
        let req: DrainRequest = serde_json::from_str(
            r#"{"cell":"bj1","namespace":"shop","pods":["web-1"],"created":"2026-12-02T01:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(req.pods, ["web-1"]);
        let ack = serde_json::to_value(DrainAck {
            revision: 42,
            acked: "2026-12-02T01:00:01Z".into(),
        })
        .unwrap();
        assert_eq!(
            ack,
            serde_json::json!({"revision": 42, "acked": "2026-12-02T01:00:01Z"})
        );
    }

    #[test]
    fn a_binding_with_an_unknown_field_is_refused() {
        assert!(serde_json::from_str::<ServiceBinding>(
            r#"{"group":"g","domain":"a.com","weight":2}"#
        )
        .is_err());
        let cell: CellRecord = serde_json::from_str(
            r#"{"apiserver":"https://10.0.0.1:6443","credential":"bj1.kubeconfig"}"#,
        )
        .unwrap();
        assert!(cell.ca.is_none() && cell.nginx_groups.is_empty());
        // The record as core (core/src/cells) writes it.
        let core: CellRecord = serde_json::from_str(
            r#"{"name":"bj1","kubeconfig":"bj1.kubeconfig","api_url":"https://10.0.0.1:6443",
                "etcd":[],"nginx_groups":["public"],"state":"active","apps":0,"created":"2026-12-02T01:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(core.credential, "bj1.kubeconfig");
        assert_eq!(core.apiserver, "https://10.0.0.1:6443");
        assert_eq!(core.nginx_groups, ["public"]);
    }
}
