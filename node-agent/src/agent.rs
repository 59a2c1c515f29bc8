//! State shared by the agent's loops and its HTTP endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use leengine_ipam::Ipam;
use leengine_store::Keys;
use tokio::sync::{watch, Mutex};

use crate::cgroup::Cgroups;
use crate::config::Config;
use crate::leak::LeakTracker;
use crate::metrics::{BlockUse, Counters};
use crate::record::Host;

/// Liveness facts of the last complete scan.
#[derive(Clone, Debug)]
pub struct Live {
    pub attachment: leengine_ipam::Attachment,
    /// Identity of its netns, to find the containers running in it.
    pub ns_id: Option<(u64, u64)>,
}

#[derive(Debug)]
pub struct ScanState {
    pub tracker: LeakTracker,
    pub counters: Counters,
    pub live: Vec<Live>,
    pub blocks: Vec<BlockUse>,
    pub swap_unconstrained: Vec<String>,
}

pub struct Shared {
    pub cfg: Config,
    pub keys: Keys,
    pub etcd: etcd_client::Client,
    pub ipam: Ipam,
    /// The apiserver reclaim asks (`--kubeconfig`), if any.
    pub kube: Option<leengine_apiserver::Client>,
    pub cgroups: Cgroups,
    pub host: Mutex<Host>,
    pub state: Mutex<ScanState>,
    /// Pods of this node for metrics labels (`None` without `--kubeconfig`
    /// or before the first list).
    pub pods: Mutex<Option<crate::pods::PodIndex>>,
    /// This node's pod deletions (with `--kubeconfig`).
    pub deletions: Mutex<crate::deletions::Deletions>,
    ovs: Mutex<Option<leengine_ovsdb::Client>>,
    started: Instant,
    pub started_wall: u64,
    pub shutdown: watch::Receiver<bool>,
}

/// By hand: the etcd client has no `Debug`.
impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("cfg", &self.cfg)
            .field("keys", &self.keys)
            .field("started_wall", &self.started_wall)
            .finish_non_exhaustive()
    }
}

/// OVSDB requests must not hang a loop when ovsdb-server stalls.
const OVS_TIMEOUT: Duration = Duration::from_secs(5);

impl Shared {
    pub fn new(
        cfg: Config,
        etcd: etcd_client::Client,
        kube: Option<leengine_apiserver::Client>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Self>> {
        let keys = cfg.etcd.keys();
        let ipam = Ipam::new(etcd.clone(), keys.clone(), cfg.node.clone());
        Ok(Arc::new(Self {
            keys,
            ipam,
            kube,
            cgroups: Cgroups::new(&cfg.cgroup_root),
            host: Mutex::new(Host::new()?),
            state: Mutex::new(ScanState {
                tracker: LeakTracker::new(cfg.reclaim_grace),
                counters: Counters::default(),
                live: Vec::new(),
                blocks: Vec::new(),
                swap_unconstrained: Vec::new(),
            }),
            pods: Mutex::new(None),
            deletions: Mutex::new(Default::default()),
            ovs: Mutex::new(None),
            started: Instant::now(),
            started_wall: now_secs(),
            etcd,
            cfg,
            shutdown,
        }))
    }

    /// The OVSDB connection, (re)connected when missing or closed.
    pub async fn ovs(&self) -> Result<leengine_ovsdb::Client, leengine_ovsdb::OvsdbError> {
        let mut slot = self.ovs.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let opts = leengine_ovsdb::Options {
            connect_timeout: OVS_TIMEOUT,
            request_timeout: OVS_TIMEOUT,
        };
        let c = leengine_ovsdb::Client::connect_with(&self.cfg.ovsdb, opts).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Milliseconds on the agent's monotonic clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Resolves when shutdown is signalled.
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
