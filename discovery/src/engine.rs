//! The active replica's term: follow the registry, the bindings, the
//! drains and every Cell; write upstreams that changed; ack drains.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;
use leengine_store::Keys;
use tokio::sync::watch;

use crate::drain::{self, DrainId};
use crate::election::Term;
use crate::follow::follow;
use crate::hub::Hub;
use crate::model::{self, DomainRef, World};
use crate::pace::Pacer;
use crate::registry::{self, Task};
use crate::writer::{self, Current, Outcome};

#[derive(Clone, Debug)]
pub struct Settings {
    pub credentials_dir: PathBuf,
    pub min_write_interval: Duration,
    pub watch_timeout: Duration,
    /// How often what etcd holds is read again (a hand edit of a bound
    /// domain's servers is corrected then at the latest).
    pub resync: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TermEnd {
    #[error("another replica holds the leader record")]
    Fenced,
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// Poll interval of agents' status while a drain waits for them.
const ACK_POLL: Duration = Duration::from_millis(50);
/// How often a bound domain without a config is read again.
const NO_CONFIG_RETRY: Duration = Duration::from_secs(1);

pub async fn run_term(
    client: Client,
    keys: Keys,
    hub: Arc<Hub>,
    term: &Term,
    settings: &Settings,
) -> Result<(), TermEnd> {
    let (tx, rx) = watch::channel(BTreeMap::new());
    let _tasks = [
        Task::spawn(follow(
            client.clone(),
            keys.cells_prefix(),
            registry::cells(keys.clone(), tx),
        )),
        Task::spawn(follow(
            client.clone(),
            keys.discovery_services_prefix(),
            registry::bindings(keys.clone(), hub.clone()),
        )),
        Task::spawn(follow(
            client.clone(),
            keys.apps_prefix(),
            registry::apps(keys.clone(), hub.clone()),
        )),
        Task::spawn(follow(
            client.clone(),
            keys.drain_requests_prefix(),
            registry::drains(keys.clone(), hub.clone()),
        )),
        Task::spawn(registry::supervise(
            rx,
            hub.clone(),
            settings.credentials_dir.clone(),
            settings.watch_timeout,
        )),
    ];
    let mut e = Engine {
        acked: drain::existing(&mut client.clone(), &keys).await?,
        client,
        keys,
        hub,
        pacer: Pacer::new(settings.min_write_interval),
        cache: HashMap::new(),
        no_config: HashSet::new(),
        pending_since: HashMap::new(),
        effective: BTreeMap::new(),
        waiting: BTreeMap::new(),
        bound: BTreeSet::new(),
        released: BTreeSet::new(),
    };
    let mut resync_at = Instant::now() + settings.resync;
    loop {
        let (world, since) = e.hub.take();
        let next = e.round(&world, since, term).await?;
        e.acks(&world, term).await?;
        if Instant::now() >= resync_at {
            e.cache.clear();
            resync_at = Instant::now() + settings.resync;
        }
        let mut wake = next.unwrap_or(resync_at).min(resync_at);
        if !e.waiting.is_empty() {
            wake = wake.min(Instant::now() + ACK_POLL);
        }
        tokio::select! {
            _ = e.hub.changed.notified() => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

struct Engine {
    client: Client,
    keys: Keys,
    hub: Arc<Hub>,
    pacer: Pacer<DomainRef>,
    /// What etcd holds, as last read or written (domains with a config).
    cache: HashMap<DomainRef, Current>,
    /// Bound domains found without a config (warned about once).
    no_config: HashSet<DomainRef>,
    /// When a domain's pending change arrived (for the lag metric).
    pending_since: HashMap<DomainRef, Instant>,
    /// Revision of each domain's upstream while etcd holds the computed one.
    effective: BTreeMap<DomainRef, i64>,
    acked: BTreeSet<DrainId>,
    /// Drains whose upstream is written, waiting for the agents.
    waiting: BTreeMap<DrainId, i64>,
    /// Domains bound in the last round.
    bound: BTreeSet<DomainRef>,
    /// Domains that lost their last binding in this term and whose servers
    /// are not yet taken out (`model::released`).
    released: BTreeSet<DomainRef>,
}

impl Engine {
    async fn current(&mut self, d: &DomainRef) -> Result<Current, etcd_client::Error> {
        if let Some(c) = self.cache.get(d) {
            return Ok(c.clone());
        }
        let c = writer::read(&mut self.client, d).await?;
        if !c.config {
            if self.no_config.insert(d.clone()) {
                tracing::warn!(domain = %d, "domain has no config in slb-core; its upstream is written once it has");
            }
        } else {
            self.no_config.remove(d);
            self.cache.insert(d.clone(), c.clone());
        }
        Ok(c)
    }

    /// Writes every decided domain whose servers differ from etcd's and
    /// whose pacing allows it; returns when the next paced write is due.
    async fn round(
        &mut self,
        world: &World,
        since: Option<Instant>,
        term: &Term,
    ) -> Result<Option<Instant>, TermEnd> {
        let bound = world.bound_domains();
        self.released = model::released(&self.bound, &bound, &self.released);
        self.bound = bound;
        let mut desired = world.upstreams();
        for d in &self.released {
            desired.entry(d.clone()).or_default();
        }
        self.effective.retain(|d, _| desired.contains_key(d));
        let mut next: Option<Instant> = None;
        for (d, servers) in &desired {
            let cur = self.current(d).await?;
            if self.released.contains(d) && (!cur.config || cur.servers().is_none()) {
                // No config or no upstream: nothing to take out.
                self.released.remove(d);
                continue;
            }
            if !cur.config {
                // Not cached: looked at again every NO_CONFIG_RETRY.
                self.effective.remove(d);
                let again = Instant::now() + NO_CONFIG_RETRY;
                next = Some(next.map_or(again, |n| n.min(again)));
                continue;
            }
            if cur.servers().as_ref() == Some(servers) {
                self.effective.insert(d.clone(), cur.mod_revision);
                self.pending_since.remove(d);
                self.released.remove(d);
                continue;
            }
            self.effective.remove(d);
            let now = Instant::now();
            let arrived = *self
                .pending_since
                .entry(d.clone())
                .or_insert(since.unwrap_or(now));
            let due = self.pacer.due(d, now);
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            let up = writer::merged(&cur, servers);
            match writer::write(&mut self.client, term.fence(), d, &cur, &up).await {
                Ok(Outcome::Written { revision }) => {
                    let done = Instant::now();
                    self.pacer.wrote(d.clone(), done);
                    self.hub.writes.fetch_add(1, Ordering::Relaxed);
                    self.hub.record_lag((done - arrived).as_secs_f64());
                    self.pending_since.remove(d);
                    self.effective.insert(d.clone(), revision);
                    if self.released.remove(d) {
                        tracing::info!(domain = %d, revision, "domain lost its last binding: its servers taken out");
                    } else {
                        tracing::info!(domain = %d, servers = servers.len(), revision, "upstream written");
                    }
                    self.cache.insert(
                        d.clone(),
                        Current {
                            config: true,
                            upstream: Some(up),
                            mod_revision: revision,
                        },
                    );
                }
                Ok(Outcome::Conflict(now_cur)) => {
                    self.hub.write_conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(domain = %d, "upstream changed meanwhile; read again");
                    self.cache.insert(d.clone(), now_cur);
                    next = Some(Instant::now());
                }
                Ok(Outcome::Fenced) => return Err(TermEnd::Fenced),
                Err(e) => {
                    self.hub.write_errors.fetch_add(1, Ordering::Relaxed);
                    self.cache.remove(d);
                    return Err(e.into());
                }
            }
        }
        Ok(next)
    }

    async fn acks(&mut self, world: &World, term: &Term) -> Result<(), TermEnd> {
        let plan = drain::plan(&world.drains, &self.effective, &self.acked);
        for id in plan.stale {
            if !drain::set(&mut self.client, &self.keys, term.fence(), &id, None).await? {
                return Err(TermEnd::Fenced);
            }
            self.acked.remove(&id);
        }
        // A drain whose domain went back to a pending write waits again.
        self.waiting = plan.want;
        let groups: BTreeSet<String> = self.waiting.keys().map(|(d, _)| d.group.clone()).collect();
        for group in groups {
            let agents = drain::agents(&mut self.client, &group).await?;
            let ready: Vec<(DrainId, i64)> = self
                .waiting
                .iter()
                .filter(|((d, _), rev)| {
                    d.group == group && drain::applied_everywhere(&agents, **rev)
                })
                .map(|(id, rev)| (id.clone(), *rev))
                .collect();
            for (id, rev) in ready {
                if !drain::set(&mut self.client, &self.keys, term.fence(), &id, Some(rev)).await? {
                    return Err(TermEnd::Fenced);
                }
                tracing::info!(domain = %id.0, request = %id.1, revision = rev, agents = agents.len(), "drain acknowledged");
                self.hub.acks.fetch_add(1, Ordering::Relaxed);
                self.waiting.remove(&id);
                self.acked.insert(id);
            }
        }
        Ok(())
    }
}
