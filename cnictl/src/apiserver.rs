//! The apiserver's view of liveness: pods (with their IPs and phase) and nodes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, ObjectList};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use leengine_ipam::{ApiView, PodInfo};

/// Page size of list calls (the apiserver's own recommendation for big lists).
const PAGE: u32 = 500;

/// Connects with `kubeconfig` if given, else in-cluster or `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("no kubeconfig and not in a cluster (use --kubeconfig or --no-apiserver)")?,
    };
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    Client::try_from(config).context("cannot build Kubernetes client")
}

/// Lists every pod and node (paged).
pub async fn view(client: Client) -> crate::Result<ApiView> {
    let pods: Vec<Pod> = list_all(Api::all(client.clone())).await?;
    let nodes: Vec<Node> = list_all(Api::all(client)).await?;
    Ok(ApiView {
        pods: pods.iter().filter_map(pod_info).collect(),
        nodes: nodes
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect::<BTreeSet<_>>(),
    })
}

async fn list_all<K>(api: Api<K>) -> crate::Result<Vec<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page: ObjectList<K> = api.list(&lp).await.map_err(|e| {
            if matches!(e, kube::Error::HyperError(_) | kube::Error::Service(_)) {
                crate::CmdError::ApiserverUnavailable(e)
            } else {
                anyhow::Error::new(e)
                    .context("listing from the Kubernetes apiserver")
                    .into()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_json_maps_to_pod_info() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.1.0.5",
                       "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}]}
        }))
        .unwrap();
        let info = pod_info(&pod).unwrap();
        assert_eq!(info.ips, vec!["10.1.0.5".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(
            (info.namespace.as_str(), info.node.as_deref(), info.terminal),
            ("shop", Some("n1"), false)
        );
        let done: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "job", "namespace": "x"},
            "status": {"phase": "Succeeded"}
        }))
        .unwrap();
        let info = pod_info(&done).unwrap();
        assert!(info.terminal && info.ips.is_empty() && info.node.is_none());
    }
}
