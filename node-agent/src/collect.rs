//! Gathers a metrics snapshot at scrape time: host figures, container
//! cgroups (tied to apps through the pod netns their tasks run in), pod
//! interface counters from inside each live netns, and the agent's counters.

use std::collections::HashMap;
use std::path::Path;

use futures::StreamExt;

use crate::agent::Shared;
use crate::metrics::{BondHealth, ContainerStat, PodNet, Snapshot};
use crate::procfs::{netns_if_stats, ns_id, tasks_io};

pub async fn snapshot(sh: &Shared) -> Snapshot {
    let node = sh.host.lock().await.stats();
    let (live, blocks, counters) = {
        let st = sh.state.lock().await;
        (st.live.clone(), st.blocks.clone(), st.counters.clone())
    };
    let apps: HashMap<(u64, u64), String> = live
        .iter()
        .filter_map(|l| Some((l.ns_id?, l.attachment.pod_namespace.clone()?)))
        .collect();
    let index = sh.pods.lock().await.clone().unwrap_or_default();
    let statuses = index.all.clone();
    let deletions = sh.deletions.lock().await.rows();
    let cg = sh.cgroups.clone();
    let roots = sh.cfg.container_roots.clone();
    let containers = tokio::task::spawn_blocking(move || {
        cg.containers(&roots)
            .into_iter()
            .map(|c| {
                let u = cg.usage(&c);
                let (tr, tw) = tasks_io(&u.pids);
                let mut stat = ContainerStat {
                    cpu_ns: u.cpu_ns,
                    memory: u.memory_bytes,
                    working_set: u.working_set,
                    memory_limit: u.memory_limit,
                    swap: u.swap_bytes,
                    blkio_read: u.io_read_bytes,
                    blkio_write: u.io_write_bytes,
                    read_ops: u.io_read_ops,
                    write_ops: u.io_write_ops,
                    task_io_read: tr,
                    task_io_write: tw,
                    ..Default::default()
                };
                match index.lookup(&c.rel, &c.name) {
                    Some(p) => {
                        stat.namespace.clone_from(&p.namespace);
                        stat.pod.clone_from(&p.pod);
                        stat.container.clone_from(&p.container);
                        stat.app.clone_from(&p.app);
                        stat.version.clone_from(&p.version);
                    }
                    // No pod claims it: the netns its tasks run in may.
                    None => {
                        stat.app = u
                            .pids
                            .iter()
                            .find_map(|p| ns_id(Path::new(&format!("/proc/{p}/ns/net"))))
                            .and_then(|id| apps.get(&id).cloned())
                            .unwrap_or_default();
                    }
                }
                stat.name = c.name;
                stat
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let pods: Vec<PodNet> = futures::stream::iter(live)
        .map(|l| async move {
            let a = l.attachment;
            let stats = netns_if_stats(Path::new(&a.netns), &a.ifname).await?;
            Some(PodNet {
                pod: a.pod_name.clone().unwrap_or_default(),
                namespace: a.pod_namespace.clone().unwrap_or_default(),
                app: a.pod_namespace.clone().unwrap_or_default(),
                container_id: a.container_id,
                ifname: a.ifname,
                stats,
            })
        })
        .buffer_unordered(sh.cfg.scan_concurrency)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    let bond = if sh.cfg.uplinks.is_empty() {
        None
    } else {
        crate::register::bond_status(sh)
            .await
            .ok()
            .map(|s| BondHealth {
                members: s
                    .members
                    .iter()
                    .map(|m| (m.name.clone(), m.is_up()))
                    .collect(),
                active: s.active_member,
                bond: s.name,
            })
    };
    let mut pods = pods;
    pods.sort_by(|a, b| a.container_id.cmp(&b.container_id));
    Snapshot {
        node,
        containers,
        pods,
        blocks,
        bond,
        counters,
        statuses,
        deletions,
    }
}
