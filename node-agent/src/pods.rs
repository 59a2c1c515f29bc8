//! Which pod a container cgroup belongs to, from the kubelet's pods as the
//! apiserver lists them for this node (`--kubeconfig`): the runtime id in
//! the container status names the cgroup leaf; the pod uid in the parent
//! directory names the sandbox. Refreshed every scan interval, so a scrape
//! never waits for the apiserver; a failed refresh keeps the last view.

use std::collections::HashMap;
use std::sync::Arc;

use leengine_apiserver::ContainerInfo;

use crate::agent::{stopped, Shared};

/// The pod containers of this node, by runtime id and by pod uid.
#[derive(Clone, Debug, Default)]
pub struct PodIndex {
    by_id: HashMap<String, ContainerInfo>,
    by_uid: HashMap<String, ContainerInfo>,
    pub all: Vec<ContainerInfo>,
}

/// What a cgroup leaf tells: the runtime's id for cgroupfs
/// (`kubepods/besteffort/pod<uid>/<id>`) and systemd
/// (`kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope`) drivers.
pub fn runtime_id(leaf: &str) -> &str {
    let leaf = leaf.strip_suffix(".scope").unwrap_or(leaf);
    ["cri-containerd-", "docker-", "crio-"]
        .iter()
        .find_map(|p| leaf.strip_prefix(p))
        .unwrap_or(leaf)
}

/// The pod uid of the cgroup directory holding the leaf, if it is a pod's.
pub fn pod_uid(rel: &str) -> Option<String> {
    let parent = rel.rsplit_once('/')?.0;
    let seg = parent.rsplit('/').next()?;
    let seg = seg.strip_suffix(".slice").unwrap_or(seg);
    let uid = seg.rsplit_once("pod")?.1;
    (!uid.is_empty()).then(|| uid.replace('_', "-"))
}

impl PodIndex {
    pub fn new(all: Vec<ContainerInfo>) -> Self {
        let mut by_id = HashMap::new();
        let mut by_uid = HashMap::new();
        for c in &all {
            if !c.id.is_empty() {
                by_id.insert(c.id.clone(), c.clone());
            }
            by_uid
                .entry(c.pod_uid.clone())
                .or_insert_with(|| ContainerInfo {
                    id: String::new(),
                    container: "POD".into(),
                    restarts: 0,
                    oom_killed: false,
                    cpu_limit_millis: None,
                    cpu_request_millis: None,
                    ..c.clone()
                });
        }
        Self { by_id, by_uid, all }
    }

    /// The container a cgroup is: a container status's id, else the
    /// sandbox (`POD`) of the pod whose directory holds it.
    pub fn lookup(&self, rel: &str, leaf: &str) -> Option<&ContainerInfo> {
        self.by_id
            .get(runtime_id(leaf))
            .or_else(|| self.by_uid.get(&pod_uid(rel)?))
    }
}

/// Keeps `sh.pods` fresh until shutdown.
pub async fn run(sh: Arc<Shared>, client: leengine_apiserver::Client) {
    let mut tick = tokio::time::interval(sh.cfg.scan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(sh.shutdown.clone()) => return,
        }
        match leengine_apiserver::node_pods(client.clone(), &sh.cfg.node).await {
            Ok(pods) => {
                let idx = PodIndex::new(leengine_apiserver::pod_containers(&pods));
                *sh.pods.lock().await = Some(idx);
                if std::mem::take(&mut failing) {
                    tracing::info!("pods for metrics labels listed again");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot list pods for metrics labels; keeping the last view");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, uid: &str, c: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            pod_uid: uid.into(),
            namespace: "web-u1".into(),
            pod: "web-1".into(),
            container: c.into(),
            app: "web".into(),
            version: "2".into(),
            restarts: 3,
            oom_killed: false,
            cpu_limit_millis: None,
            cpu_request_millis: None,
        }
    }

    #[test]
    fn leaves_and_parents_name_containers_and_sandboxes() {
        assert_eq!(runtime_id("cri-containerd-abc.scope"), "abc");
        assert_eq!(runtime_id("abc"), "abc");
        assert_eq!(
            pod_uid("kubepods/besteffort/pod1234-ab/abc").as_deref(),
            Some("1234-ab")
        );
        assert_eq!(
            pod_uid("kubepods.slice/kubepods-burstable-pod1234_ab.slice/cri-containerd-x.scope")
                .as_deref(),
            Some("1234-ab")
        );
        assert_eq!(pod_uid("docker/abc"), None);
        let idx = PodIndex::new(vec![info("abc", "1234-ab", "app")]);
        assert_eq!(
            idx.lookup("kubepods/pod1234-ab/abc", "abc")
                .unwrap()
                .container,
            "app"
        );
        let sandbox = idx.lookup("kubepods/pod1234-ab/fff", "fff").unwrap();
        assert_eq!((sandbox.container.as_str(), sandbox.restarts), ("POD", 0));
        assert!(idx.lookup("docker/abc2", "abc2").is_none());
    }
}
