//! The apiserver's view of liveness: pods (with their IPs and phase) and
//! nodes. `cnictl check` reads the whole cluster; the node-agent reads the
//! pods bound to its node before it reclaims anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, ObjectList};
use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::Config;
use leengine_ipam::{ApiView, PodInfo};

pub mod quantity;

pub use kube::Client;

/// Page size of list calls (the apiserver's own recommendation for big lists).
const PAGE: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot read kubeconfig {}: {source}", path.display())]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("invalid kubeconfig {}: {source}", path.display())]
    InvalidKubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("no kubeconfig given and not in a cluster: {0}")]
    NoConfig(#[source] InferConfigError),
    #[error("cannot build Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The apiserver could not be reached: retry later.
    #[error("Kubernetes apiserver unavailable: {0}")]
    Unavailable(#[source] kube::Error),
    /// The apiserver answered with an error (RBAC, bad request, ...).
    #[error("listing from the Kubernetes apiserver: {0}")]
    List(#[source] kube::Error),
}

impl ApiError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ApiError::Unavailable(_))
    }
}

/// Reads and parses a kubeconfig file (no network): for checking a
/// configuration before anything starts.
pub fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, ApiError> {
    Kubeconfig::read_from(path).map_err(|source| ApiError::ReadKubeconfig {
        path: path.to_path_buf(),
        source,
    })
}

/// How long a client waits to connect, and for a silent read or write.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Option<Duration>,
}

impl Timeouts {
    /// For tools and agents that list and then exit or retry.
    pub const DEFAULT: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        read: Duration::from_secs(30),
        write: None,
    };

    fn apply(self, config: &mut Config) {
        config.connect_timeout = Some(self.connect);
        config.read_timeout = Some(self.read);
        config.write_timeout = self.write;
    }
}

/// The client configuration a kubeconfig file describes, with `timeouts`:
/// every component turns a kubeconfig into a client here.
pub async fn kubeconfig_config(path: &Path, timeouts: Timeouts) -> Result<Config, ApiError> {
    let kc = read_kubeconfig(path)?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|source| ApiError::InvalidKubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    timeouts.apply(&mut config);
    Ok(config)
}

/// Connects with `kubeconfig` if given, else in-cluster or `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ApiError> {
    let config = match kubeconfig {
        Some(path) => kubeconfig_config(path, Timeouts::DEFAULT).await?,
        None => {
            let mut config = Config::infer().await.map_err(ApiError::NoConfig)?;
            Timeouts::DEFAULT.apply(&mut config);
            config
        }
    };
    Client::try_from(config).map_err(ApiError::Client)
}

/// Every pod and node of the cluster (paged).
pub async fn view(client: Client) -> Result<ApiView, ApiError> {
    let pods: Vec<Pod> = list_all(Api::all(client.clone()), ListParams::default()).await?;
    let nodes: Vec<Node> = list_all(Api::all(client), ListParams::default()).await?;
    Ok(ApiView {
        pods: pods.iter().filter_map(pod_info).collect(),
        nodes: nodes
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect::<BTreeSet<_>>(),
    })
}

/// The pods bound to `node` (paged, filtered by the apiserver).
pub async fn node_pods(client: Client, node: &str) -> Result<Vec<Pod>, ApiError> {
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    list_all(Api::all(client), lp).await
}

async fn list_all<K>(api: Api<K>, base: ListParams) -> Result<Vec<K>, ApiError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = base.clone().limit(PAGE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page: ObjectList<K> = api.list(&lp).await.map_err(|e| {
            if matches!(e, kube::Error::HyperError(_) | kube::Error::Service(_)) {
                ApiError::Unavailable(e)
            } else {
                ApiError::List(e)
            }
        })?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

/// Pure mapping of a pod to what the leak check needs.
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let status = pod.status.as_ref();
    let mut ips: Vec<Ipv4Addr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status
        .and_then(|s| s.pod_ip.as_ref())
        .and_then(|ip| ip.parse().ok())
    {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let phase = status.and_then(|s| s.phase.as_deref());
    Some(PodInfo {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        ips,
        terminal: matches!(phase, Some("Succeeded" | "Failed")),
    })
}

/// The IPv4 addresses live pods hold, each with its `namespace/name`. Live
/// means neither terminated (Succeeded, Failed) nor being deleted: those
/// are the only pods whose address a reclaim must never take.
pub fn live_pod_ips(pods: &[Pod]) -> BTreeMap<Ipv4Addr, String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(pod_info)
        .filter(|p| !p.terminal)
        .flat_map(|p| {
            let who = format!("{}/{}", p.namespace, p.name);
            p.ips.into_iter().map(move |ip| (ip, who.clone()))
        })
        .collect()
}

/// Labels the core's deploy puts on every pod it makes (core/src/deploy/objects.rs).
pub const APP_LABEL: &str = "leengine.io/app";
pub const VERSION_LABEL: &str = "leengine.io/version";

/// One container of a pod, as metrics label it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    /// Runtime id without the `containerd://` scheme; empty before the
    /// container first started.
    pub id: String,
    pub pod_uid: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// `leengine.io/app`, else the namespace (one app = one namespace).
    pub app: String,
    pub version: String,
    pub restarts: u64,
    /// The last termination was the OOM killer's.
    pub oom_killed: bool,
    /// The container's CPU limit and request in millicores (pod spec);
    /// `None` when unset or not a CPU quantity.
    pub cpu_limit_millis: Option<u64>,
    pub cpu_request_millis: Option<u64>,
}

/// `(limit, request)` of container `name`'s CPU in the pod spec.
fn cpu_of(p: &Pod, name: &str) -> (Option<u64>, Option<u64>) {
    let Some(r) = p
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == name))
        .and_then(|c| c.resources.as_ref())
    else {
        return (None, None);
    };
    let get =
        |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            m.and_then(|m| m.get("cpu"))
                .and_then(|q| quantity::cpu_millis(&q.0))
        };
    (get(r.limits.as_ref()), get(r.requests.as_ref()))
}

/// Every container status of `pods`, with the pod's identity and labels.
pub fn pod_containers(pods: &[Pod]) -> Vec<ContainerInfo> {
    let mut out = Vec::new();
    for p in pods {
        let m = &p.metadata;
        let (Some(ns), Some(name)) = (m.namespace.clone(), m.name.clone()) else {
            continue;
        };
        let label = |k: &str| m.labels.as_ref().and_then(|l| l.get(k)).cloned();
        let statuses = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten();
        for c in statuses {
            let oom = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or(c.state.as_ref().and_then(|s| s.terminated.as_ref()))
                .and_then(|t| t.reason.as_deref())
                == Some("OOMKilled");
            let (cpu_limit_millis, cpu_request_millis) = cpu_of(p, &c.name);
            out.push(ContainerInfo {
                id: c
                    .container_id
                    .as_deref()
                    .map(|id| id.split_once("://").map_or(id, |(_, i)| i).to_string())
                    .unwrap_or_default(),
                pod_uid: m.uid.clone().unwrap_or_default(),
                namespace: ns.clone(),
                pod: name.clone(),
                container: c.name.clone(),
                app: label(APP_LABEL).unwrap_or_else(|| ns.clone()),
                version: label(VERSION_LABEL).unwrap_or_default(),
                restarts: u64::try_from(c.restart_count).unwrap_or(0),
                oom_killed: oom,
                cpu_limit_millis,
                cpu_request_millis,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn container_statuses_carry_pod_labels_and_restarts() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "web-u1", "uid": "u-1",
                         "labels": {"leengine.io/app": "web", "leengine.io/version": "3"}},
            "spec": {"containers": [
                {"name": "app", "image": "i", "resources": {"limits": {"cpu": "1500m"}, "requests": {"cpu": "250m"}}},
                {"name": "side", "image": "i", "resources": {"requests": {"cpu": "2"}}}
            ]},
            "status": {"containerStatuses": [
                {"name": "app", "image": "i", "imageID": "", "ready": true, "restartCount": 2,
                 "containerID": "containerd://abc", "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
                {"name": "side", "image": "i", "imageID": "", "ready": false, "restartCount": 0}
            ]}
        }));
        let c = pod_containers(&[p]);
        assert_eq!(
            c[0],
            ContainerInfo {
                id: "abc".into(),
                pod_uid: "u-1".into(),
                namespace: "web-u1".into(),
                pod: "web-1".into(),
                container: "app".into(),
                app: "web".into(),
                version: "3".into(),
                restarts: 2,
                oom_killed: true,
                cpu_limit_millis: Some(1500),
                cpu_request_millis: Some(250),
            }
        );
        assert_eq!((c[1].id.as_str(), c[1].oom_killed), ("", false));
        assert_eq!(
            (c[1].cpu_limit_millis, c[1].cpu_request_millis),
            (None, Some(2000))
        );
        let bare = pod(serde_json::json!({
            "metadata": {"name": "x", "namespace": "ns"},
            "status": {"containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}
        }));
        assert_eq!(
            pod_containers(&[bare])[0].app,
            "ns",
            "no label: the namespace is the app"
        );
    }

    #[test]
    fn pod_json_maps_to_pod_info() {
        let p = pod(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.1.0.5",
                       "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}]}
        }));
        let info = pod_info(&p).unwrap();
        assert_eq!(info.ips, vec!["10.1.0.5".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(
            (info.namespace.as_str(), info.node.as_deref(), info.terminal),
            ("shop", Some("n1"), false)
        );
        let done = pod(serde_json::json!({
            "metadata": {"name": "job", "namespace": "x"},
            "status": {"phase": "Succeeded"}
        }));
        let info = pod_info(&done).unwrap();
        assert!(info.terminal && info.ips.is_empty() && info.node.is_none());
    }

    #[test]
    fn only_pods_neither_terminated_nor_deleted_hold_their_ip() {
        let with = |name: &str, ip: &str, phase: &str, deleting: bool| {
            let mut meta = serde_json::json!({"name": name, "namespace": "shop"});
            if deleting {
                meta["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
            }
            pod(serde_json::json!({
                "metadata": meta,
                "status": {"phase": phase, "podIP": ip}
            }))
        };
        let ips = live_pod_ips(&[
            with("running", "10.1.0.2", "Running", false),
            with("pending", "10.1.0.3", "Pending", false),
            with("failed", "10.1.0.4", "Failed", false),
            with("succeeded", "10.1.0.5", "Succeeded", false),
            with("deleting", "10.1.0.6", "Running", true),
        ]);
        let held: Vec<String> = ips.iter().map(|(ip, who)| format!("{ip}={who}")).collect();
        assert_eq!(held, ["10.1.0.2=shop/running", "10.1.0.3=shop/pending"]);
    }
}
