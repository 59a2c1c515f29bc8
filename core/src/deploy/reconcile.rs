//! The reconciler: desired state in etcd → objects in every Cell.
//!
//! It runs inside the core, on the one replica that won the etcd election
//! [`Keys::reconciler_election`](leengine_store::Keys::reconciler_election)
//! (docs/apps.md says why not a separate binary). Level-triggered: each
//! pass reads the whole desired state and applies all of it with
//! server-side apply under one field manager, so a Cell that was down, an
//! object edited by hand or a pass cut short by an error all converge on
//! the next pass. Passes run on every change under `{prefix}/apps/`,
//! `{prefix}/cells/`, `{prefix}/drain-ack/`, and every `resync`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use leengine_store::keys::AppKey;
use leengine_store::region::{REMOVAL_ANNOTATION, REMOVAL_BY_PLATFORM};
use serde::{Deserialize, Serialize};

use super::drain::{self, DrainRequest, PodFacts, Progress};
use super::handover;
use super::objects::{self, FIELD_MANAGER, MANAGED_SELECTOR};
use super::spec::{deployment_name, AppSpec, Lb, VersionSpec};
use super::{api, robot};
use crate::cells::{self, kube_error, CellRecord};
use crate::problem::ApiError;
use crate::server::Core;
use crate::store;

/// Observed state of one version in one Cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionStatus {
    pub version: u64,
    pub desired: u32,
    pub ready: u32,
    /// A scale-down or deletion waits for discovery's acknowledgement.
    #[serde(default)]
    pub draining: bool,
    /// This version is replacing that one here, one pod at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacing: Option<u64>,
    /// This version is being replaced here by that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<u64>,
}

/// `{prefix}/apps/{app}/status/{cell}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellStatus {
    /// The last pass failed with this (the Cell unreachable, say).
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub versions: Vec<VersionStatus>,
}

/// The desired state, read in one range.
#[derive(Debug, Default)]
pub struct Desired {
    pub apps: BTreeMap<String, AppSpec>,
    pub versions: BTreeMap<String, Vec<VersionSpec>>,
    pub status: BTreeMap<(String, String), CellStatus>,
    pub policies: BTreeMap<String, super::autoscale::Policy>,
}

pub async fn read_desired(core: &Core) -> Result<Desired, ApiError> {
    let keys = &core.db.keys;
    let mut d = Desired::default();
    for (key, value) in core
        .db
        .list::<serde_json::Value>(&keys.apps_prefix())
        .await?
    {
        match keys.parse_app_key(&key) {
            Some(AppKey::App(a)) => {
                d.apps.insert(a.to_string(), serde_json::from_value(value)?);
            }
            Some(AppKey::Version(a, _)) => d
                .versions
                .entry(a.to_string())
                .or_default()
                .push(serde_json::from_value(value)?),
            Some(AppKey::Status(a, c)) => {
                d.status.insert(
                    (a.to_string(), c.to_string()),
                    serde_json::from_value(value)?,
                );
            }
            // A policy that does not decode stops its app's autoscaling
            // only, never the reconciliation of every app.
            Some(AppKey::Autoscale(a)) => match serde_json::from_value(value) {
                Ok(p) => {
                    d.policies.insert(a.to_string(), p);
                }
                Err(e) => tracing::warn!(app = a, error = %e, "autoscale policy unreadable"),
            },
            Some(AppKey::Robot(_) | AppKey::AutoscaleStatus(_)) | None => {}
        }
    }
    Ok(d)
}

/// Campaigns for leadership, reconciles while leader, campaigns again when
/// the lease is lost. Never returns; errors are logged and retried.
pub async fn run(core: Core) {
    loop {
        if let Err(e) = lead(&core).await {
            tracing::warn!(error = %e, "reconciler leadership ended");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn lead(core: &Core) -> Result<(), ApiError> {
    let mut etcd = core.db.etcd.clone();
    let lease = etcd.lease_grant(10, None).await?.id();
    let (mut keeper, mut acks) = etcd.lease_keep_alive(lease).await?;
    let me = format!("{}-{}", std::process::id(), lease);
    // Keep the lease alive while campaigning: the wait may be long.
    let alive = async {
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            keeper.keep_alive().await?;
            match acks.message().await? {
                Some(r) if r.ttl() > 0 => {}
                _ => return Ok::<(), ApiError>(()),
            }
        }
    };
    let work = async {
        etcd.campaign(core.db.keys.reconciler_election(), me.clone(), lease)
            .await?;
        tracing::info!(id = %me, "reconciler leader");
        reconcile_forever(core).await;
        Ok::<(), ApiError>(())
    };
    let out = tokio::select! {
        r = alive => r,
        r = work => r,
    };
    let _ = core.db.etcd.clone().lease_revoke(lease).await;
    out
}

async fn reconcile_forever(core: &Core) {
    let wake = Arc::new(tokio::sync::Notify::new());
    let keys = &core.db.keys;
    // The watches end with the leadership (this future is dropped then).
    let _watches = Watches(
        [
            keys.apps_prefix(),
            keys.cells_prefix(),
            keys.drain_acks_prefix(),
        ]
        .into_iter()
        .map(|prefix| tokio::spawn(watch(core.clone(), prefix, wake.clone())))
        .chain([tokio::spawn(super::autoscaler::run(core.clone()))])
        .collect(),
    );
    loop {
        // A handover waits on pods (gone, Ready) that no etcd watch sees.
        let resync = match pass(core).await {
            Ok(true) => HANDOVER_RESYNC.min(core.settings.deploy.resync),
            Ok(false) => core.settings.deploy.resync,
            Err(e) => {
                tracing::warn!(error = %e, "reconcile pass failed");
                core.settings.deploy.resync
            }
        };
        tokio::select! {
            _ = wake.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
            _ = tokio::time::sleep(resync) => {}
        }
    }
}

/// How often passes run while a version replaces another somewhere.
const HANDOVER_RESYNC: Duration = Duration::from_secs(1);

struct Watches(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Watches {
    fn drop(&mut self) {
        for w in &self.0 {
            w.abort();
        }
    }
}

/// Wakes the loop on every change under `prefix` (re-watching after
/// errors) but the autoscaler's status, which it writes every period.
async fn watch(core: Core, prefix: String, wake: Arc<tokio::sync::Notify>) {
    let keys = &core.db.keys;
    let wakes = |e: &etcd_client::Event| {
        let key = e.kv().and_then(|kv| kv.key_str().ok()).unwrap_or("");
        !matches!(keys.parse_app_key(key), Some(AppKey::AutoscaleStatus(_)))
    };
    loop {
        let opts = etcd_client::WatchOptions::new().with_prefix();
        let etcd = &core.db.etcd;
        if let Ok(mut stream) = etcd.watch_client().watch(prefix.clone(), Some(opts)).await {
            while let Ok(Some(m)) = stream.message().await {
                if m.events().iter().any(wakes) {
                    wake.notify_one();
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One full pass over every Cell, the Cells in parallel; then the versions
/// replaced in every Cell of their app go. Whether a handover is still
/// under way somewhere.
pub async fn pass(core: &Core) -> Result<bool, ApiError> {
    let desired = read_desired(core).await?;
    let cells = cells::list(&core.db).await?;
    let runs = cells.iter().map(|c| reconcile_cell(core, c, &desired));
    let seen: BTreeMap<(String, String), CellStatus> = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut stepping = false;
    for (app, old, new) in replacements(&desired) {
        if !replaced_everywhere(&desired.apps[&app], new, &seen) {
            stepping = true;
        } else if let Err(e) = api::retire_replaced(core, &app, old, new).await {
            // One app's failed write must not hold back the others'.
            tracing::warn!(app = %app, old, new, error = %e, "retiring a replaced version");
            stepping = true;
        }
    }
    Ok(stepping)
}

/// `(app, old, new)` for every version that replaces one still there.
fn replacements(d: &Desired) -> Vec<(String, u64, u64)> {
    d.versions
        .iter()
        .flat_map(|(app, vs)| {
            vs.iter()
                .filter_map(move |v| Some((app.clone(), v.replaced(vs)?.version, v.version)))
        })
        .collect()
}

/// Every Cell of the app answered this pass and none still steps `new`.
fn replaced_everywhere(
    app: &AppSpec,
    new: u64,
    seen: &BTreeMap<(String, String), CellStatus>,
) -> bool {
    app.cells.iter().all(|cell| {
        seen.get(&(app.name.clone(), cell.clone()))
            .is_some_and(|s| {
                s.error.is_none()
                    && s.versions
                        .iter()
                        .any(|v| v.version == new && v.replacing.is_none())
            })
    })
}

/// The apps' statuses in this Cell after applying them.
async fn reconcile_cell(
    core: &Core,
    cell: &CellRecord,
    d: &Desired,
) -> Vec<((String, String), CellStatus)> {
    let mut seen = Vec::new();
    let here: Vec<&AppSpec> = d
        .apps
        .values()
        .filter(|a| a.cells.contains(&cell.name))
        .collect();
    let client = cells::client(&core.settings.cells, cell).await;
    for app in &here {
        let versions = d.versions.get(&app.name).map_or(&[][..], Vec::as_slice);
        let status = match &client {
            Ok(c) => {
                let r = CellRun {
                    core,
                    client: c.clone(),
                    cell: &cell.name,
                };
                r.app(app, versions).await.unwrap_or_else(|e| CellStatus {
                    error: Some(e.detail),
                    versions: Vec::new(),
                })
            }
            Err(e) => CellStatus {
                error: Some(e.detail.clone()),
                versions: Vec::new(),
            },
        };
        let key = (app.name.clone(), cell.name.clone());
        if d.status.get(&key) != Some(&status) {
            if let Some(e) = &status.error {
                tracing::warn!(cell = %cell.name, app = %app.name, error = %e, "cell not converged");
            }
            write_status(core, &app.name, &cell.name, &status).await;
        }
        seen.push((key, status));
    }
    if let Ok(c) = client {
        let r = CellRun {
            core,
            client: c,
            cell: &cell.name,
        };
        let keep: BTreeSet<&str> = here.iter().map(|a| a.uid.as_str()).collect();
        if let Err(e) = r.collect_garbage(&keep).await {
            tracing::warn!(cell = %cell.name, error = %e.detail, "garbage collection failed");
        }
    }
    seen
}

/// Only while the app exists: a late pass must not resurrect its keys.
async fn write_status(core: &Core, app: &str, cell: &str, s: &CellStatus) {
    let keys = &core.db.keys;
    let r = core
        .db
        .commit(
            vec![store::present(keys.app(app))],
            vec![store::put(keys.app_status(app, cell), s)],
        )
        .await;
    if let Err(e) = r {
        tracing::warn!(app, cell, error = %e, "writing cell status");
    }
}

fn version_base(app: &AppSpec, cell: &str, version: u64) -> String {
    drain::drain_base(&app.namespace, cell, &format!("v{version}"))
}

/// The pods of one version, as the picker sees them (terminating ones left out).
fn pod_facts(pods: &[Pod]) -> Vec<PodFacts> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Some(PodFacts {
                name: p.metadata.name.clone()?,
                ready,
                scheduled: p.spec.as_ref().is_some_and(|s| s.node_name.is_some()),
                created: p
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .and_then(super::to_chrono),
            })
        })
        .collect()
}

/// Counts of the versions in a handover in one Cell, and who replaces whom
/// while it lasts.
#[derive(Debug, Default)]
struct Plan {
    counts: BTreeMap<u64, u32>,
    replacing: BTreeMap<u64, u64>,
    replaced_by: BTreeMap<u64, u64>,
}

fn find_deployment(live: &[Deployment], version: u64) -> Option<&Deployment> {
    let name = deployment_name(version);
    live.iter()
        .find(|d| d.metadata.name.as_deref() == Some(name.as_str()))
}

/// `spec.replicas` and ready replicas of a Deployment (0, 0 when absent).
fn replicas(d: Option<&Deployment>) -> (u32, u32) {
    let count = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    let spec = count(d.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas));
    let ready = count(
        d.and_then(|d| d.status.as_ref())
            .and_then(|s| s.ready_replicas),
    );
    (spec, ready)
}

fn live_names(facts: &[PodFacts]) -> BTreeSet<String> {
    facts.iter().map(|p| p.name.clone()).collect()
}

/// One Cell's client with the calls of a pass.
struct CellRun<'a> {
    core: &'a Core,
    client: kube::Client,
    cell: &'a str,
}

impl CellRun<'_> {
    fn err(&self) -> impl Fn(kube::Error) -> ApiError + '_ {
        move |e| kube_error(self.cell, e)
    }

    fn apply_params() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    /// Namespace, Service, pull secret, one Deployment per version; then
    /// the Deployments of deleted versions go (drained first).
    async fn app(&self, app: &AppSpec, versions: &[VersionSpec]) -> Result<CellStatus, ApiError> {
        let pp = Self::apply_params();
        let ns = &app.namespace;
        Api::<Namespace>::all(self.client.clone())
            .patch(ns, &pp, &Patch::Apply(objects::namespace(app)))
            .await
            .map_err(self.err())?;
        Api::<Service>::namespaced(self.client.clone(), ns)
            .patch(
                objects::SERVICE_NAME,
                &pp,
                &Patch::Apply(objects::service(app)),
            )
            .await
            .map_err(self.err())?;
        self.pull_secret(app, versions).await?;
        let deps: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let live = deps
            .list(&ListParams::default().labels(MANAGED_SELECTOR))
            .await
            .map_err(self.err())?
            .items;
        let plan = self.plan(app, versions, &live).await?;
        let mut status = CellStatus::default();
        for v in versions {
            let current = find_deployment(&live, v.version);
            let count = plan.counts.get(&v.version).copied();
            let count = count.unwrap_or_else(|| v.replicas_in(self.cell));
            let mut s = self.version(app, v, current, count).await?;
            s.replacing = plan.replacing.get(&v.version).copied();
            s.replaced_by = plan.replaced_by.get(&v.version).copied();
            status.versions.push(s);
        }
        for d in &live {
            let Some(name) = d.metadata.name.as_deref() else {
                continue;
            };
            if versions.iter().any(|v| deployment_name(v.version) == name) {
                continue;
            }
            let version = d
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(objects::VERSION_LABEL))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            self.remove_version(app, version, name).await?;
        }
        if let Some(lb) = &app.lb {
            self.settle_drains(app, lb).await?;
        }
        Ok(status)
    }

    /// This pass's counts of the versions in a handover (the others run
    /// their own counts), see [`handover::step`].
    async fn plan(
        &self,
        app: &AppSpec,
        versions: &[VersionSpec],
        live: &[Deployment],
    ) -> Result<Plan, ApiError> {
        let mut plan = Plan::default();
        for new in versions {
            let Some(old) = new.replaced(versions) else {
                continue;
            };
            let (new_spec, new_ready) = replicas(find_deployment(live, new.version));
            let (old_spec, _) = replicas(find_deployment(live, old.version));
            let old_pods = self.version_pods(app, old.version).await?.len();
            let step = handover::step(&handover::Observed {
                new_desired: new.replicas_in(self.cell),
                old_desired: old.replicas_in(self.cell),
                new_spec,
                new_ready,
                old_spec,
                old_pods: u32::try_from(old_pods).unwrap_or(u32::MAX),
            });
            plan.counts.insert(new.version, step.new);
            plan.counts.insert(old.version, step.old);
            if !step.done {
                plan.replacing.insert(new.version, old.version);
                plan.replaced_by.insert(old.version, new.version);
            }
        }
        Ok(plan)
    }

    async fn pull_secret(&self, app: &AppSpec, versions: &[VersionSpec]) -> Result<(), ApiError> {
        let hosts: BTreeSet<String> = app
            .image
            .iter()
            .chain(versions.iter().map(|v| &v.image))
            .filter_map(|i| objects::registry_host(i))
            .map(str::to_string)
            .collect();
        let hosts: Vec<String> = hosts.into_iter().collect();
        let password = robot::current(
            &self.core.db,
            &app.name,
            self.core.settings.deploy.robot_rotation,
        )
        .await?;
        let secret = objects::pull_secret(app, &hosts, &robot::user_name(&app.name), &password);
        Api::<Secret>::namespaced(self.client.clone(), &app.namespace)
            .patch(
                objects::PULL_SECRET,
                &Self::apply_params(),
                &Patch::Apply(secret),
            )
            .await
            .map_err(self.err())?;
        Ok(())
    }

    async fn version_pods(&self, app: &AppSpec, version: u64) -> Result<Vec<Pod>, ApiError> {
        Ok(Api::<Pod>::namespaced(self.client.clone(), &app.namespace)
            .list(&ListParams::default().labels(&objects::version_selector(app, version)))
            .await
            .map_err(self.err())?
            .items)
    }

    /// Applies one version with `desired` replicas; a scale-down of an app
    /// with an LB first drains the pods that will go, and holds the old
    /// count until then.
    async fn version(
        &self,
        app: &AppSpec,
        v: &VersionSpec,
        live: Option<&Deployment>,
        desired: u32,
    ) -> Result<VersionStatus, ApiError> {
        let current = live
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.replicas)
            .and_then(|r| u32::try_from(r).ok());
        let mut replicas = desired;
        let mut draining = false;
        if let (Some(lb), Some(current)) = (&app.lb, current) {
            if current > desired {
                let base = version_base(app, self.cell, v.version);
                let facts = pod_facts(&self.version_pods(app, v.version).await?);
                let live = live_names(&facts);
                let requests = drain::requests(&self.core.db, lb, &base).await?;
                let already = drain::draining(requests.iter().map(|(_, r)| r), &live);
                let chosen = drain::pick(&facts, (current - desired) as usize, &already);
                let pending = self.drain(app, lb, &base, chosen, &live).await?;
                let named = pending.pods;
                self.mark_for_deletion(&app.namespace, &named).await;
                match pending.progress {
                    Progress::Waiting => {
                        replicas = current;
                        draining = true;
                    }
                    done => {
                        if done == Progress::TimedOut {
                            self.warn_timeout(app, &deployment_name(v.version), &named)
                                .await;
                        }
                        let gone = u32::try_from(named.len()).unwrap_or(u32::MAX);
                        replicas = desired.max(current.saturating_sub(gone));
                    }
                }
            }
        } else if let Some(current) = current.filter(|c| *c > desired) {
            // No LB, no drain; still mark the pods that go, so the
            // deletion counts as the platform's (and the marked ones go).
            let facts = pod_facts(&self.version_pods(app, v.version).await?);
            let chosen = drain::pick(&facts, (current - desired) as usize, &BTreeSet::new());
            self.mark_for_deletion(&app.namespace, &chosen).await;
        }
        let d = objects::deployment(app, v, replicas);
        let applied = Api::<Deployment>::namespaced(self.client.clone(), &app.namespace)
            .patch(
                &deployment_name(v.version),
                &Self::apply_params(),
                &Patch::Apply(d),
            )
            .await
            .map_err(self.err())?;
        let ready = applied
            .status
            .and_then(|s| s.ready_replicas)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0);
        Ok(VersionStatus {
            version: v.version,
            desired: v.replicas_in(self.cell),
            ready,
            draining,
            replacing: None,
            replaced_by: None,
        })
    }

    async fn drain(
        &self,
        app: &AppSpec,
        lb: &Lb,
        base: &str,
        pods: Vec<String>,
        live: &BTreeSet<String>,
    ) -> Result<drain::Pending, ApiError> {
        let want = DrainRequest {
            cell: self.cell.to_string(),
            namespace: app.namespace.clone(),
            pods,
            created: Utc::now(),
        };
        drain::step(
            &self.core.db,
            lb,
            base,
            want,
            live,
            self.core.settings.deploy.drain_timeout,
        )
        .await
    }

    /// The lowest deletion cost makes the ReplicaSet controller remove
    /// exactly the drained pods when the count goes down; the removal mark
    /// tells the node-agents the platform asked for the deletion
    /// (docs/monitoring.md#deleted-pods).
    async fn mark_for_deletion(&self, namespace: &str, pods: &[String]) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let patch = serde_json::json!({"metadata": {"annotations": {
            objects::DELETION_COST: "-1000",
            REMOVAL_ANNOTATION: REMOVAL_BY_PLATFORM,
        }}});
        for p in pods {
            if let Err(e) = api
                .patch(p, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(pod = %p, error = %e, "deletion cost not set");
            }
        }
    }

    /// A deleted version: drain all its pods (if the app has an LB), then
    /// delete its Deployment.
    async fn remove_version(
        &self,
        app: &AppSpec,
        version: u64,
        name: &str,
    ) -> Result<(), ApiError> {
        let live = live_names(&pod_facts(&self.version_pods(app, version).await?));
        if let Some(lb) = &app.lb {
            let base = version_base(app, self.cell, version);
            if !live.is_empty() {
                let all = live.iter().cloned().collect();
                let pending = self.drain(app, lb, &base, all, &live).await?;
                match pending.progress {
                    Progress::Waiting => return Ok(()),
                    Progress::TimedOut => self.warn_timeout(app, name, &pending.pods).await,
                    Progress::Acked => {}
                }
            }
        }
        let all: Vec<String> = live.into_iter().collect();
        self.mark_for_deletion(&app.namespace, &all).await;
        self.delete_deployment(app, name).await
    }

    /// Requests whose pods can no longer be served go (see
    /// [`drain::settled`]); until then discovery keeps those pods out.
    async fn settle_drains(&self, app: &AppSpec, lb: &Lb) -> Result<(), ApiError> {
        let db = &self.core.db;
        let requests =
            drain::requests(db, lb, &drain::cell_base(&app.namespace, self.cell)).await?;
        if requests.is_empty() {
            return Ok(());
        }
        let pods = Api::<Pod>::namespaced(self.client.clone(), &app.namespace)
            .list(&ListParams::default())
            .await
            .map_err(self.err())?
            .items;
        let live = live_names(&pod_facts(&pods));
        let serving = self.serving_pods(app).await?;
        for (id, r) in requests {
            if drain::settled(&r, &live, &serving) {
                drain::finish(db, lb, &id).await?;
            }
        }
        Ok(())
    }

    /// The pods with a ready endpoint in the app Service's EndpointSlices
    /// (what discovery would put into the upstream without a request).
    async fn serving_pods(&self, app: &AppSpec) -> Result<BTreeSet<String>, ApiError> {
        let selector = format!("kubernetes.io/service-name={}", objects::SERVICE_NAME);
        let slices = Api::<EndpointSlice>::namespaced(self.client.clone(), &app.namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(self.err())?;
        Ok(slices
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .filter_map(|e| e.target_ref.as_ref()?.name.clone())
            .collect())
    }

    async fn delete_deployment(&self, app: &AppSpec, name: &str) -> Result<(), ApiError> {
        let r = Api::<Deployment>::namespaced(self.client.clone(), &app.namespace)
            .delete(name, &DeleteParams::background())
            .await;
        match r {
            Ok(_) => {
                tracing::info!(cell = self.cell, app = %app.name, deployment = name, "version removed");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(kube_error(self.cell, e)),
        }
    }

    /// A warning Event on the Deployment: shows in the app's events.
    async fn warn_timeout(&self, app: &AppSpec, deployment: &str, pods: &[String]) {
        tracing::warn!(cell = self.cell, app = %app.name, deployment, ?pods, "drain not acknowledged in time; deleting anyway");
        let message = format!(
            "no drain acknowledgement within {:?}; deleting {} without it",
            self.core.settings.deploy.drain_timeout,
            pods.join(", ")
        );
        let ev = objects::deployment_event(
            &app.namespace,
            deployment,
            ("Warning", "DrainTimeout", message),
        );
        let api: Api<Event> = Api::namespaced(self.client.clone(), &app.namespace);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::warn!(error = %e, "recording the drain timeout event");
        }
    }

    /// Namespaces of ours whose app is gone (or no longer placed here):
    /// drained when they remember an LB, then deleted with all they hold.
    async fn collect_garbage(&self, keep: &BTreeSet<&str>) -> Result<(), ApiError> {
        let nss = Api::<Namespace>::all(self.client.clone())
            .list(&ListParams::default().labels(MANAGED_SELECTOR))
            .await
            .map_err(self.err())?;
        for ns in nss.items {
            let meta = &ns.metadata;
            let uid = meta
                .labels
                .as_ref()
                .and_then(|l| l.get(objects::APP_UID_LABEL));
            if uid.is_some_and(|u| keep.contains(u.as_str())) || meta.deletion_timestamp.is_some() {
                continue;
            }
            let Some(name) = meta.name.clone() else {
                continue;
            };
            if !self.drain_namespace(&ns, &name).await? {
                continue;
            }
            let pods = Api::<Pod>::namespaced(self.client.clone(), &name)
                .list(&ListParams::default())
                .await
                .map_err(self.err())?;
            let all: Vec<String> = live_names(&pod_facts(&pods.items)).into_iter().collect();
            self.mark_for_deletion(&name, &all).await;
            match Api::<Namespace>::all(self.client.clone())
                .delete(&name, &DeleteParams::background())
                .await
            {
                Ok(_) => {
                    tracing::info!(cell = self.cell, namespace = %name, "app namespace removed")
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(kube_error(self.cell, e)),
            }
        }
        Ok(())
    }

    /// Whether the namespace may go now (drained, timed out, or no LB).
    async fn drain_namespace(&self, ns: &Namespace, name: &str) -> Result<bool, ApiError> {
        let ann = ns.metadata.annotations.as_ref();
        let get = |k: &str| ann.and_then(|a| a.get(k)).cloned();
        let (Some(group), Some(domain)) = (
            get(objects::LB_GROUP_ANNOTATION),
            get(objects::LB_DOMAIN_ANNOTATION),
        ) else {
            return Ok(true);
        };
        let lb = Lb { domain, group };
        let live = live_names(&pod_facts(
            &Api::<Pod>::namespaced(self.client.clone(), name)
                .list(&ListParams::default())
                .await
                .map_err(self.err())?
                .items,
        ));
        let base = drain::drain_base(name, self.cell, "all");
        if live.is_empty() {
            drain::forget(&self.core.db, &lb, &base).await?;
            return Ok(true);
        }
        let want = DrainRequest {
            cell: self.cell.to_string(),
            namespace: name.to_string(),
            pods: live.iter().cloned().collect(),
            created: Utc::now(),
        };
        let pending = drain::step(
            &self.core.db,
            &lb,
            &base,
            want,
            &live,
            self.core.settings.deploy.drain_timeout,
        )
        .await?;
        if pending.progress == Progress::Waiting {
            return Ok(false);
        }
        drain::forget(&self.core.db, &lb, &base).await?;
        Ok(true)
    }
}
