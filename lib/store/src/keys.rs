//! Every etcd key LeEngine reads or writes (docs/architecture.md, "One owner for every etcd key").
//!
//! Functions ending in `_prefix` return a prefix with a trailing `/`, ready
//! for a range read or a watch. Names that go into a key segment must not
//! contain `/`; block CIDRs are written `10.0.4.16-28` for that reason.

use std::net::Ipv4Addr;

pub const DEFAULT_PREFIX: &str = "/leengine";
/// SLB keys keep the original system's layout and ignore the prefix.
pub const SLB_ROOT: &str = "/slb";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// `prefix` is normalised to start with `/` and not end with one.
    pub fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_end_matches('/');
        let prefix = if trimmed.starts_with('/') {
            trimmed.to_string()
        } else {
            format!("/{trimmed}")
        };
        Self { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // ---- IPAM ----

    pub fn pools_prefix(&self) -> String {
        format!("{}/ipam/pools/", self.prefix)
    }
    pub fn pool(&self, pool: &str) -> String {
        format!("{}{pool}", self.pools_prefix())
    }
    pub fn blocks_prefix(&self) -> String {
        format!("{}/ipam/blocks/", self.prefix)
    }
    pub fn pool_blocks_prefix(&self, pool: &str) -> String {
        format!("{}{pool}/", self.blocks_prefix())
    }
    /// Block claim (owner node); `network` and `prefix_len` describe the block.
    pub fn block(&self, pool: &str, network: Ipv4Addr, prefix_len: u8) -> String {
        format!(
            "{}{}",
            self.pool_blocks_prefix(pool),
            block_segment(network, prefix_len)
        )
    }
    pub fn handles_prefix(&self) -> String {
        format!("{}/ipam/handles/", self.prefix)
    }
    pub fn container_handles_prefix(&self, container_id: &str) -> String {
        format!("{}{container_id}/", self.handles_prefix())
    }
    pub fn handle(&self, container_id: &str, ifname: &str) -> String {
        format!("{}{ifname}", self.container_handles_prefix(container_id))
    }
    /// Sticky reservations: a pod identity keeps its last IP for a while.
    pub fn sticky_prefix(&self) -> String {
        format!("{}/ipam/sticky/", self.prefix)
    }
    pub fn sticky(&self, namespace: &str, name: &str) -> String {
        format!("{}{namespace}/{name}", self.sticky_prefix())
    }
    /// App bindings `{prefix}/ipam/app-pools/{namespace}`: the pools an app's
    /// pods take their addresses from; a pool named in any binding is closed to
    /// every other app.
    pub fn app_pools_prefix(&self) -> String {
        format!("{}/ipam/app-pools/", self.prefix)
    }
    pub fn app_pools(&self, namespace: &str) -> String {
        format!("{}{namespace}", self.app_pools_prefix())
    }
    /// An app's reserve `{prefix}/ipam/app-reserve/{namespace}/{ip}`: addresses
    /// its pods gave up, kept (on a lease) for its next pods.
    pub fn app_reserve_root(&self) -> String {
        format!("{}/ipam/app-reserve/", self.prefix)
    }
    pub fn app_reserve_prefix(&self, namespace: &str) -> String {
        format!("{}{namespace}/", self.app_reserve_root())
    }
    pub fn app_reserve(&self, namespace: &str, ip: Ipv4Addr) -> String {
        format!("{}{ip}", self.app_reserve_prefix(namespace))
    }
    /// "Pool full" markers `{prefix}/ipam/full/{pool}`: left by an ADD that
    /// found no address anywhere in the pool, deleted by every release in it,
    /// so ADDs on an exhausted pool need not scan every block.
    pub fn pool_full_prefix(&self) -> String {
        format!("{}/ipam/full/", self.prefix)
    }
    pub fn pool_full(&self, pool: &str) -> String {
        format!("{}{pool}", self.pool_full_prefix())
    }
    /// Block records by owner `{prefix}/ipam/node-blocks/{node}/{pool}/{block}`
    /// (allocations, sequence numbers): one range read gives a node all its
    /// blocks. `block()` holds only the claim (which node owns the block).
    pub fn node_blocks_root(&self) -> String {
        format!("{}/ipam/node-blocks/", self.prefix)
    }
    pub fn node_blocks_prefix(&self, node: &str) -> String {
        format!("{}{node}/", self.node_blocks_root())
    }
    pub fn node_block(&self, node: &str, pool: &str, network: Ipv4Addr, prefix_len: u8) -> String {
        format!(
            "{}{pool}/{}",
            self.node_blocks_prefix(node),
            block_segment(network, prefix_len)
        )
    }
    /// Allocations by node `{prefix}/ipam/node-ips/{node}/{ip}` (copy of the handle record).
    pub fn node_ips_root(&self) -> String {
        format!("{}/ipam/node-ips/", self.prefix)
    }
    pub fn node_ips_prefix(&self, node: &str) -> String {
        format!("{}{node}/", self.node_ips_root())
    }
    pub fn node_ip(&self, node: &str, ip: Ipv4Addr) -> String {
        format!("{}{ip}", self.node_ips_prefix(node))
    }

    // ---- nodes ----

    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }
    pub fn node(&self, node: &str) -> String {
        format!("{}{node}", self.nodes_prefix())
    }
    pub fn node_attachments(&self, node: &str) -> String {
        format!("{}/attachments", self.node(node))
    }
    /// Classifies a key read under [`Keys::nodes_prefix`].
    pub fn parse_node_key<'a>(&self, key: &'a str) -> Option<NodeKey<'a>> {
        let rest = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("/nodes/")?;
        match rest.split_once('/') {
            None if !rest.is_empty() => Some(NodeKey::Registration(rest)),
            Some((node, "attachments")) if !node.is_empty() => Some(NodeKey::Attachments(node)),
            _ => None,
        }
    }

    // ---- build farm ----

    pub fn builders_prefix(&self) -> String {
        format!("{}/builders/", self.prefix)
    }
    pub fn builder(&self, builder: &str) -> String {
        format!("{}{builder}", self.builders_prefix())
    }
    pub fn builder_tasks_prefix(&self, builder: &str) -> String {
        format!("{}/tasks/", self.builder(builder))
    }
    pub fn builder_task(&self, builder: &str, task: &str) -> String {
        format!("{}{task}", self.builder_tasks_prefix(builder))
    }
    pub fn builds_prefix(&self) -> String {
        format!("{}/builds/", self.prefix)
    }
    pub fn build_configs_prefix(&self) -> String {
        format!("{}configs/", self.builds_prefix())
    }
    pub fn build_config(&self, config: &str) -> String {
        format!("{}{config}", self.build_configs_prefix())
    }
    pub fn build_runs_prefix(&self, config: &str) -> String {
        format!("{}runs/{config}/", self.builds_prefix())
    }
    pub fn build_run(&self, config: &str, run: &str) -> String {
        format!("{}{run}", self.build_runs_prefix(config))
    }
    /// Classifies a key read under [`Self::builders_prefix`].
    pub fn parse_builder_key<'a>(&self, key: &'a str) -> Option<BuilderKey<'a>> {
        let rest = key.strip_prefix(&self.builders_prefix())?;
        match rest.split_once('/') {
            None if !rest.is_empty() => Some(BuilderKey::Builder(rest)),
            Some((builder, tail)) => {
                let task = tail.strip_prefix("tasks/")?;
                (!builder.is_empty() && !task.is_empty() && !task.contains('/'))
                    .then_some(BuilderKey::Task { builder, task })
            }
            None => None,
        }
    }

    // ---- core ----

    pub fn core_prefix(&self) -> String {
        format!("{}/core/", self.prefix)
    }
    /// A core collection, e.g. `core("users")` → `{prefix}/core/users/`.
    pub fn core_collection(&self, collection: &str) -> String {
        format!("{}{collection}/", self.core_prefix())
    }
    pub fn core_item(&self, collection: &str, id: &str) -> String {
        format!("{}{id}", self.core_collection(collection))
    }
    // Resource `kind`s are `app`, `image`, `group`, `build`; image names hold
    // exactly one `/` (`group/repo`), so they nest one level below the kind.
    pub fn core_users_prefix(&self) -> String {
        self.core_collection("users")
    }
    pub fn core_user(&self, user: &str) -> String {
        self.core_item("users", user)
    }
    pub fn core_tokens_prefix(&self) -> String {
        self.core_collection("tokens")
    }
    pub fn core_token(&self, id: &str) -> String {
        self.core_item("tokens", id)
    }
    pub fn core_resources_prefix(&self, kind: &str) -> String {
        format!("{}resources/{kind}/", self.core_prefix())
    }
    /// Resources of `kind` under a group (an image `group/name`).
    pub fn core_group_resources_prefix(&self, kind: &str, group: &str) -> String {
        format!("{}{group}/", self.core_resources_prefix(kind))
    }
    pub fn core_resource(&self, kind: &str, name: &str) -> String {
        format!("{}{name}", self.core_resources_prefix(kind))
    }
    pub fn core_members_prefix(&self, kind: &str, name: &str) -> String {
        format!("{}members/{kind}/{name}/", self.core_prefix())
    }
    pub fn core_member(&self, kind: &str, name: &str, user: &str) -> String {
        format!("{}{user}", self.core_members_prefix(kind, name))
    }
    /// Reverse index of members: what a user belongs to, per kind.
    pub fn core_memberships_prefix(&self, user: &str, kind: &str) -> String {
        format!("{}memberships/{user}/{kind}/", self.core_prefix())
    }
    pub fn core_membership(&self, user: &str, kind: &str, name: &str) -> String {
        format!("{}{name}", self.core_memberships_prefix(user, kind))
    }
    pub fn core_activity_prefix(&self, kind: &str, name: &str) -> String {
        format!("{}activity/{kind}/{name}/", self.core_prefix())
    }
    pub fn core_activity(&self, kind: &str, name: &str, id: &str) -> String {
        format!("{}{id}", self.core_activity_prefix(kind, name))
    }
    /// One key per counted event, so counting never contends on a counter.
    pub fn core_stats_prefix(&self, day: &str, metric: &str) -> String {
        format!("{}stats/{day}/{metric}/", self.core_prefix())
    }
    pub fn core_stat_event(&self, day: &str, metric: &str, id: &str) -> String {
        format!("{}{id}", self.core_stats_prefix(day, metric))
    }
    pub fn core_usage(&self, user: &str) -> String {
        self.core_item("usage", user)
    }
    /// A deleted image `group/repo`: the name stays reserved, so the
    /// registry content left under it goes to nobody.
    pub fn core_image_tombstone(&self, image: &str) -> String {
        self.core_item("tombstones/image", image)
    }
    /// Alert rules of every app (core renders them into one rule file).
    pub fn core_alert_rules_root(&self) -> String {
        self.core_collection("alerts")
    }
    pub fn core_alert_rules_prefix(&self, app: &str) -> String {
        format!("{}{app}/", self.core_alert_rules_root())
    }
    pub fn core_alert_rule(&self, app: &str, rule: &str) -> String {
        format!("{}{rule}", self.core_alert_rules_prefix(app))
    }
    /// Last notified state of one alert (Alertmanager's fingerprint), so a
    /// repeated webhook call notifies nobody twice.
    pub fn core_alert_state(&self, app: &str, fingerprint: &str) -> String {
        format!("{}alert-state/{app}/{fingerprint}", self.core_prefix())
    }
    /// Last notified state of one Region alert (a default alert of no app,
    /// notified to the admins).
    pub fn core_region_alert_state(&self, fingerprint: &str) -> String {
        format!("{}region-alert-state/{fingerprint}", self.core_prefix())
    }
    /// A user's notification channels (e-mail, webhook).
    pub fn core_notify(&self, user: &str) -> String {
        self.core_item("notify", user)
    }
}

// ---- the app layer (ARCHITECTURE.md §6): Cells, desired state, drains ----

impl Keys {
    /// Cell registrations `{prefix}/cells/{cell}`.
    pub fn cells_prefix(&self) -> String {
        format!("{}/cells/", self.prefix)
    }
    pub fn cell(&self, cell: &str) -> String {
        format!("{}{cell}", self.cells_prefix())
    }
    /// Desired state of every app, `{prefix}/apps/`.
    pub fn apps_prefix(&self) -> String {
        format!("{}/apps/", self.prefix)
    }
    /// `{prefix}/apps/{app}`: namespace, uid, image, Cells, LB.
    pub fn app(&self, app: &str) -> String {
        format!("{}{app}", self.apps_prefix())
    }
    /// Everything below the app record (versions, status, robot).
    pub fn app_children_prefix(&self, app: &str) -> String {
        format!("{}/", self.app(app))
    }
    pub fn app_versions_prefix(&self, app: &str) -> String {
        format!("{}versions/", self.app_children_prefix(app))
    }
    /// Zero-padded so key order is version order.
    pub fn app_version(&self, app: &str, version: u64) -> String {
        format!("{}{version:010}", self.app_versions_prefix(app))
    }
    /// Observed state of the app in one Cell (written by the reconciler).
    pub fn app_status(&self, app: &str, cell: &str) -> String {
        format!("{}status/{cell}", self.app_children_prefix(app))
    }
    /// The app's pull-only registry robot credentials.
    pub fn app_robot(&self, app: &str) -> String {
        format!("{}robot", self.app_children_prefix(app))
    }
    /// The app's autoscaling policy (`core`'s `deploy::autoscale::Policy`).
    pub fn app_autoscale(&self, app: &str) -> String {
        format!("{}autoscale", self.app_children_prefix(app))
    }
    /// What the autoscaler last saw and decided, per Cell (written by it).
    pub fn app_autoscale_status(&self, app: &str) -> String {
        format!("{}autoscale-status", self.app_children_prefix(app))
    }
    /// Classifies a key read under [`Keys::apps_prefix`].
    pub fn parse_app_key<'a>(&self, key: &'a str) -> Option<AppKey<'a>> {
        let rest = key.strip_prefix(&self.apps_prefix())?;
        let Some((app, tail)) = rest.split_once('/') else {
            return (!rest.is_empty()).then_some(AppKey::App(rest));
        };
        if app.is_empty() {
            return None;
        }
        match tail {
            "robot" => return Some(AppKey::Robot(app)),
            "autoscale" => return Some(AppKey::Autoscale(app)),
            "autoscale-status" => return Some(AppKey::AutoscaleStatus(app)),
            _ => {}
        }
        if let Some(v) = tail.strip_prefix("versions/") {
            return v.parse().ok().map(|v| AppKey::Version(app, v));
        }
        let cell = tail.strip_prefix("status/")?;
        (!cell.is_empty() && !cell.contains('/')).then_some(AppKey::Status(app, cell))
    }
    /// Plain Services published to a domain without the app model:
    /// `{prefix}/discovery/services/{cell}/{namespace}/{service}`
    /// ([`crate::region::ServiceBinding`]).
    pub fn discovery_services_prefix(&self) -> String {
        format!("{}/discovery/services/", self.prefix)
    }
    pub fn discovery_service(&self, cell: &str, namespace: &str, service: &str) -> String {
        format!(
            "{}{cell}/{namespace}/{service}",
            self.discovery_services_prefix()
        )
    }
    /// `(cell, namespace, service)` of a key under [`Self::discovery_services_prefix`].
    pub fn parse_discovery_service<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let rest = key.strip_prefix(&self.discovery_services_prefix())?;
        let mut it = rest.split('/');
        let (c, n, s) = (it.next()?, it.next()?, it.next()?);
        (it.next().is_none() && ![c, n, s].contains(&"")).then_some((c, n, s))
    }
    /// The active discovery replica's leased record (one per Region).
    pub fn discovery_leader(&self) -> String {
        format!("{}/discovery/leader", self.prefix)
    }
    /// Drain requests `{prefix}/drain/{group}/{domain}/{id}` (core writes).
    pub fn drain_requests_prefix(&self) -> String {
        format!("{}/drain/", self.prefix)
    }
    pub fn drain_request(&self, group: &str, domain: &str, id: &str) -> String {
        format!("{}{group}/{domain}/{id}", self.drain_requests_prefix())
    }
    /// Drain acknowledgements `{prefix}/drain-ack/{group}/{domain}/{id}` (discovery writes).
    pub fn drain_acks_prefix(&self) -> String {
        format!("{}/drain-ack/", self.prefix)
    }
    pub fn drain_ack(&self, group: &str, domain: &str, id: &str) -> String {
        format!("{}{group}/{domain}/{id}", self.drain_acks_prefix())
    }
    /// `(group, domain, id)` of a drain request or ack key.
    pub fn parse_drain_key<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let rest = key
            .strip_prefix(&self.drain_requests_prefix())
            .or_else(|| key.strip_prefix(&self.drain_acks_prefix()))?;
        let mut it = rest.split('/');
        let (g, d, i) = (it.next()?, it.next()?, it.next()?);
        (it.next().is_none() && ![g, d, i].contains(&"")).then_some((g, d, i))
    }
    /// The etcd election the core replicas campaign on to run the reconciler.
    pub fn reconciler_election(&self) -> String {
        format!("{}leader/reconciler", self.core_prefix())
    }
}

/// What a key under `{prefix}/apps/` names.
#[derive(Debug, PartialEq, Eq)]
pub enum AppKey<'a> {
    App(&'a str),
    Version(&'a str, u64),
    Status(&'a str, &'a str),
    Robot(&'a str),
    Autoscale(&'a str),
    AutoscaleStatus(&'a str),
}

// ---- access: which component may touch which keys ----

/// A program that talks to etcd, with the instance its rights are scoped
/// to. Its [`user`](Component::user) is the etcd user and the CN of its
/// client certificate; [`Keys::grants`] lists what that user's role allows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The central API: users, resources, build configs/runs, task dispatch
    /// and the SLB domains it publishes.
    Core,
    /// One build host, by builder id.
    BuildAgent(String),
    /// The nginx agents of one SLB group (they share the group's domains).
    NginxAgent(String),
    /// One compute node's agent, by node name.
    NodeAgent(String),
    /// The CNI plugin on one node, by node name.
    CniPlugin(String),
    /// The network operators' tool.
    Cnictl,
    /// Service discovery (`leengine-discovery`), one active per Region.
    Discovery,
}

impl Component {
    pub fn build_agent(builder: &str) -> Self {
        Self::BuildAgent(builder.into())
    }
    pub fn nginx_agent(group: &str) -> Self {
        Self::NginxAgent(group.into())
    }
    pub fn node_agent(node: &str) -> Self {
        Self::NodeAgent(node.into())
    }
    pub fn cni_plugin(node: &str) -> Self {
        Self::CniPlugin(node.into())
    }

    /// etcd user (= role) name: `core`, `cnictl`, `build-agent.{builder}`,
    /// `nginx-agent.{group}`, `node-agent.{node}`, `cni-plugin.{node}`.
    pub fn user(&self) -> String {
        match self {
            Self::Core => "core".into(),
            Self::Cnictl => "cnictl".into(),
            Self::Discovery => "discovery".into(),
            Self::BuildAgent(b) => format!("build-agent.{b}"),
            Self::NginxAgent(g) => format!("nginx-agent.{g}"),
            Self::NodeAgent(n) => format!("node-agent.{n}"),
            Self::CniPlugin(n) => format!("cni-plugin.{n}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

impl Access {
    /// The permission type as `etcdctl role grant-permission` spells it.
    pub fn etcd_name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::ReadWrite => "readwrite",
        }
    }
}

/// One etcd role permission: `key` alone, or every key starting with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub key: String,
    pub prefix: bool,
    pub access: Access,
}

impl Grant {
    fn prefix(key: String, access: Access) -> Self {
        Self {
            key,
            prefix: true,
            access,
        }
    }
    fn key(key: String, access: Access) -> Self {
        Self {
            key,
            prefix: false,
            access,
        }
    }

    /// Whether this grant lets `access` happen on `key`.
    pub fn allows(&self, key: &str, access: Access) -> bool {
        let covers = if self.prefix {
            key.starts_with(&self.key)
        } else {
            key == self.key
        };
        covers && (access == Access::Read || self.access == Access::ReadWrite)
    }
}

impl Keys {
    /// The etcd role of `component` under this prefix: the only key ranges
    /// it reads or writes. Leases need no grant; revoking one needs write
    /// access to the keys attached to it, which each component has for its
    /// own lease-bound keys.
    pub fn grants(&self, component: &Component) -> Vec<Grant> {
        use Access::{Read, ReadWrite};
        let p = &self.prefix;
        let ipam = || Grant::prefix(format!("{p}/ipam/"), ReadWrite);
        let nodes = || Grant::prefix(self.nodes_prefix(), Read);
        let own_node = |n: &str| {
            [
                Grant::key(self.node(n), ReadWrite),
                Grant::prefix(format!("{}/", self.node(n)), ReadWrite),
            ]
        };
        match component {
            Component::Core => vec![
                Grant::prefix(self.core_prefix(), ReadWrite),
                Grant::prefix(self.builds_prefix(), ReadWrite),
                // Dispatch writes tasks and watches registrations.
                Grant::prefix(self.builders_prefix(), ReadWrite),
                Grant::prefix(format!("{SLB_ROOT}/"), ReadWrite),
                Grant::prefix(self.cells_prefix(), ReadWrite),
                Grant::prefix(self.apps_prefix(), ReadWrite),
                Grant::prefix(self.drain_requests_prefix(), ReadWrite),
                Grant::prefix(self.drain_acks_prefix(), Read),
                // Prometheus service discovery lists the nodes' metrics addresses.
                Grant::prefix(self.nodes_prefix(), Read),
            ],
            Component::Discovery => vec![
                Grant::prefix(self.cells_prefix(), Read),
                Grant::prefix(self.discovery_services_prefix(), Read),
                Grant::prefix(self.apps_prefix(), Read),
                Grant::key(self.discovery_leader(), ReadWrite),
                Grant::prefix(self.drain_requests_prefix(), Read),
                Grant::prefix(self.drain_acks_prefix(), ReadWrite),
                // Upstream keys, the configs they need and the agents'
                // status. etcd ranges cannot single out the `upstream`
                // leaf under every domain; the one writer function only
                // writes that leaf (docs/discovery.md).
                Grant::prefix(format!("{SLB_ROOT}/"), ReadWrite),
            ],
            Component::BuildAgent(b) => vec![
                Grant::key(self.builder(b), ReadWrite),
                Grant::prefix(format!("{}/", self.builder(b)), ReadWrite),
                // Results go to the run record, keyed by config and run only.
                Grant::prefix(format!("{}runs/", self.builds_prefix()), ReadWrite),
            ],
            Component::NginxAgent(g) => vec![
                Grant::prefix(slb_group_prefix(g), Read),
                Grant::prefix(slb_agents_prefix(g), ReadWrite),
            ],
            Component::NodeAgent(n) => {
                let mut v = vec![ipam(), nodes()];
                v.extend(own_node(n));
                v
            }
            // GC reads the node's attachment report; ADD/DEL are IPAM only.
            Component::CniPlugin(_) | Component::Cnictl => vec![ipam(), nodes()],
        }
    }
}

/// What a key under `{prefix}/builders/` names.
#[derive(Debug, PartialEq, Eq)]
pub enum BuilderKey<'a> {
    /// `{prefix}/builders/{builder}`: the registration (lease-bound).
    Builder(&'a str),
    /// `{prefix}/builders/{builder}/tasks/{task}`.
    Task { builder: &'a str, task: &'a str },
}

/// What a key under `{prefix}/nodes/` names.
#[derive(Debug, PartialEq, Eq)]
pub enum NodeKey<'a> {
    /// `{prefix}/nodes/{node}`
    Registration(&'a str),
    /// `{prefix}/nodes/{node}/attachments`
    Attachments(&'a str),
}

/// `10.0.4.16/28` → `10.0.4.16-28` (a key segment may not hold `/`).
pub fn block_segment(network: Ipv4Addr, prefix_len: u8) -> String {
    format!("{network}-{prefix_len}")
}

/// Inverse of [`block_segment`].
pub fn parse_block_segment(seg: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = seg.rsplit_once('-')?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((ip.parse().ok()?, len))
}

// ---- SLB (no prefix: the original layout) ----

pub fn slb_group_prefix(group: &str) -> String {
    format!("{SLB_ROOT}/{group}/")
}
pub fn slb_domains_prefix(group: &str) -> String {
    format!("{}domains/", slb_group_prefix(group))
}
pub fn slb_domain_prefix(group: &str, domain: &str) -> String {
    format!("{}{domain}/", slb_domains_prefix(group))
}
pub fn slb_domain_config(group: &str, domain: &str) -> String {
    format!("{}config", slb_domain_prefix(group, domain))
}
pub fn slb_domain_upstream(group: &str, domain: &str) -> String {
    format!("{}upstream", slb_domain_prefix(group, domain))
}
/// `/slb/{group}/dns`: what users point their DNS at (CNAME target, VIPs).
/// Outside `domains/` and `agents/`, so nginx agents pass it by.
pub fn slb_group_dns(group: &str) -> String {
    format!("{}dns", slb_group_prefix(group))
}
pub fn slb_agents_prefix(group: &str) -> String {
    format!("{}agents/", slb_group_prefix(group))
}
pub fn slb_agent(group: &str, host: &str) -> String {
    format!("{}{host}", slb_agents_prefix(group))
}

/// Every SLB group's keys (service discovery looks for agents under it).
pub fn slb_root_prefix() -> String {
    format!("{SLB_ROOT}/")
}

/// `(group, host)` of an agent status key `/slb/{group}/agents/{host}`.
pub fn parse_slb_agent_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(SLB_ROOT)?.strip_prefix('/')?;
    let (group, rest) = rest.split_once('/')?;
    let host = rest.strip_prefix("agents/")?;
    (!group.is_empty() && !host.is_empty() && !host.contains('/')).then_some((group, host))
}

/// What a key under `/slb/{group}/domains/` names.
#[derive(Debug, PartialEq, Eq)]
pub enum SlbDomainKey<'a> {
    Config(&'a str),
    Upstream(&'a str),
}

/// Classifies a key read under [`slb_domains_prefix`]; `None` for anything else.
pub fn parse_slb_domain_key<'a>(group: &str, key: &'a str) -> Option<SlbDomainKey<'a>> {
    let rest = key.strip_prefix(SLB_ROOT)?.strip_prefix('/')?;
    let rest = rest.strip_prefix(group)?.strip_prefix("/domains/")?;
    let (domain, leaf) = rest.split_once('/')?;
    match leaf {
        "config" => Some(SlbDomainKey::Config(domain)),
        "upstream" => Some(SlbDomainKey::Upstream(domain)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_normalised() {
        assert_eq!(Keys::new("leengine/").prefix(), "/leengine");
        assert_eq!(Keys::new("/a/b").pool("p1"), "/a/b/ipam/pools/p1");
        let k = Keys::new("/a");
        assert_eq!(k.app_pools("shop"), "/a/ipam/app-pools/shop");
        let ip: Ipv4Addr = "10.1.8.3".parse().unwrap();
        assert_eq!(
            k.app_reserve("shop", ip),
            "/a/ipam/app-reserve/shop/10.1.8.3"
        );
        assert!(k
            .app_reserve("shop", ip)
            .starts_with(&k.app_reserve_prefix("shop")));
    }

    #[test]
    fn block_segment_round_trips() {
        let ip: Ipv4Addr = "10.0.4.16".parse().unwrap();
        let seg = block_segment(ip, 28);
        assert_eq!(seg, "10.0.4.16-28");
        assert_eq!(parse_block_segment(&seg), Some((ip, 28)));
        assert_eq!(parse_block_segment("10.0.4.16-33"), None);
        assert_eq!(parse_block_segment("garbage"), None);
    }

    #[test]
    fn slb_agent_keys_parse() {
        assert_eq!(
            parse_slb_agent_key(&slb_agent("g1", "h1")),
            Some(("g1", "h1"))
        );
        assert_eq!(parse_slb_agent_key(&slb_domain_config("g1", "a.com")), None);
        assert_eq!(parse_slb_agent_key("/slb/g1/agents/"), None);
        assert_eq!(parse_slb_agent_key("/leengine/nodes/n1"), None);
    }

    #[test]
    fn slb_keys_classify() {
        let k = slb_domain_upstream("2", "a.example.com");
        assert_eq!(k, "/slb/2/domains/a.example.com/upstream");
        assert_eq!(
            parse_slb_domain_key("2", &k),
            Some(SlbDomainKey::Upstream("a.example.com"))
        );
        assert_eq!(parse_slb_domain_key("20", &k), None);
        assert_eq!(
            parse_slb_domain_key("2", "/slb/2/domains/x/config"),
            Some(SlbDomainKey::Config("x"))
        );
        assert_eq!(parse_slb_domain_key("2", "/slb/2/agents/h1"), None);
    }

    #[test]
    fn node_keys_parse() {
        let k = Keys::default();
        assert_eq!(
            k.parse_node_key(&k.node("n1")),
            Some(NodeKey::Registration("n1"))
        );
        assert_eq!(
            k.parse_node_key(&k.node_attachments("n1")),
            Some(NodeKey::Attachments("n1"))
        );
        assert_eq!(k.parse_node_key("/leengine/nodes/n1/other"), None);
        assert_eq!(k.parse_node_key("/other/nodes/n1"), None);
        assert!(k
            .node_block("n1", "p", Ipv4Addr::new(10, 0, 0, 16), 28)
            .starts_with(&k.node_blocks_prefix("n1")));
    }

    #[test]
    fn node_keys_nest() {
        let k = Keys::default();
        assert!(k.node_attachments("n1").starts_with(&k.node("n1")));
        assert!(k.builder_task("b1", "t1").starts_with(&k.builders_prefix()));
    }

    #[test]
    fn builder_keys_classify() {
        let k = Keys::default();
        assert_eq!(
            k.parse_builder_key(&k.builder("b1")),
            Some(BuilderKey::Builder("b1"))
        );
        assert_eq!(
            k.parse_builder_key(&k.builder_task("b1", "r1")),
            Some(BuilderKey::Task {
                builder: "b1",
                task: "r1"
            })
        );
        assert_eq!(k.parse_builder_key(&k.builder_tasks_prefix("b1")), None);
        assert_eq!(k.parse_builder_key(&k.builders_prefix()), None);
        assert_eq!(k.parse_builder_key("/other/builders/b1"), None);
        assert_eq!(
            k.build_config("c"),
            format!("{}c", k.build_configs_prefix())
        );
    }

    #[test]
    fn app_keys_classify() {
        let k = Keys::new("/p");
        assert_eq!(k.parse_app_key(&k.app("web")), Some(AppKey::App("web")));
        assert_eq!(
            k.parse_app_key(&k.app_version("web", 3)),
            Some(AppKey::Version("web", 3))
        );
        assert_eq!(
            k.parse_app_key(&k.app_status("web", "c1")),
            Some(AppKey::Status("web", "c1"))
        );
        assert_eq!(
            k.parse_app_key(&k.app_robot("web")),
            Some(AppKey::Robot("web"))
        );
        assert_eq!(
            k.parse_app_key(&k.app_autoscale("web")),
            Some(AppKey::Autoscale("web"))
        );
        assert_eq!(
            k.parse_app_key(&k.app_autoscale_status("web")),
            Some(AppKey::AutoscaleStatus("web"))
        );
        assert_eq!(k.parse_app_key("/p/apps/web/other"), None);
        assert_eq!(k.parse_app_key("/p/apps/web/versions/x"), None);
        assert!(k.app_version("web", 2) < k.app_version("web", 10));
        // One app's keys never fall under a longer name's prefix.
        assert!(!k.app("webx").starts_with(&k.app_children_prefix("web")));
        let core = k.grants(&Component::Core);
        let can = |key: &str, a| core.iter().any(|g| g.allows(key, a));
        assert!(can(&k.drain_request("g", "d", "i"), Access::ReadWrite));
        assert!(can(&k.drain_ack("g", "d", "i"), Access::Read));
        assert!(!can(&k.drain_ack("g", "d", "i"), Access::ReadWrite));
    }

    #[test]
    fn grants_confine_each_component() {
        let k = Keys::new("/p");
        let can =
            |c: &Component, key: &str, a: Access| k.grants(c).iter().any(|g| g.allows(key, a));
        let nginx = Component::nginx_agent("g");
        assert!(can(&nginx, &slb_domain_config("g", "a.com"), Access::Read));
        assert!(can(&nginx, &slb_agent("g", "h1"), Access::ReadWrite));
        assert!(!can(
            &nginx,
            &slb_domain_config("g", "a.com"),
            Access::ReadWrite
        ));
        assert!(!can(
            &nginx,
            &slb_domain_config("g2", "a.com"),
            Access::Read
        ));
        assert!(!can(&nginx, &k.core_user("u"), Access::Read));

        let b1 = Component::build_agent("b1");
        assert!(can(&b1, &k.builder("b1"), Access::ReadWrite));
        assert!(can(&b1, &k.builder_task("b1", "t"), Access::ReadWrite));
        assert!(can(&b1, &k.build_run("c", "r"), Access::ReadWrite));
        // A builder whose id extends another's is not covered by it.
        assert!(!can(&b1, &k.builder("b1x"), Access::Read));
        assert!(!can(&b1, &k.builder_task("b2", "t"), Access::Read));
        assert!(!can(&b1, &k.build_config("c"), Access::Read));
        assert!(!can(&b1, &k.core_user("u"), Access::Read));

        let n1 = Component::node_agent("n1");
        assert!(can(&n1, &k.node_attachments("n1"), Access::ReadWrite));
        assert!(can(&n1, &k.node("n2"), Access::Read));
        assert!(!can(&n1, &k.node("n2"), Access::ReadWrite));
        assert!(can(&n1, &k.handle("c", "eth0"), Access::ReadWrite));
        assert!(!can(&n1, &k.builder("b1"), Access::Read));

        let cni = Component::cni_plugin("n1");
        assert!(can(&cni, &k.pool("p"), Access::ReadWrite));
        assert!(!can(&cni, &k.node("n1"), Access::ReadWrite));
        assert!(!can(&Component::Cnictl, &k.core_user("u"), Access::Read));

        assert!(can(
            &Component::Core,
            &slb_domain_config("g", "a"),
            Access::ReadWrite
        ));
        assert!(can(
            &Component::Core,
            &k.builder_task("b1", "t"),
            Access::ReadWrite
        ));
        assert!(!can(&Component::Core, &k.pool("p"), Access::Read));
        assert!(can(&Component::Core, &k.node("n1"), Access::Read));
        assert!(!can(&Component::Core, &k.node("n1"), Access::ReadWrite));
        // Every grant of every component stays under its prefix or /slb/.
        for c in [
            Component::Core,
            b1,
            nginx,
            n1,
            cni,
            Component::Cnictl,
            Component::Discovery,
        ] {
            for g in k.grants(&c) {
                assert!(
                    g.key.starts_with("/p/") || g.key.starts_with("/slb/"),
                    "{g:?}"
                );
            }
        }
    }

    #[test]
    fn region_keys_parse_and_the_drain_contract_is_granted() {
        let k = Keys::new("/p");
        assert_eq!(k.cell("bj1"), "/p/cells/bj1");
        let svc = k.discovery_service("bj1", "shop", "web");
        assert_eq!(
            k.parse_discovery_service(&svc),
            Some(("bj1", "shop", "web"))
        );
        assert_eq!(
            k.parse_discovery_service("/p/discovery/services/bj1/shop"),
            None
        );
        assert_eq!(
            k.parse_discovery_service("/p/discovery/services/bj1//web"),
            None
        );
        let req = k.drain_request("g", "a.com", "r1");
        let ack = k.drain_ack("g", "a.com", "r1");
        assert_eq!(req, "/p/drain/g/a.com/r1");
        assert_eq!(ack, "/p/drain-ack/g/a.com/r1");
        assert_eq!(k.parse_drain_key(&req), Some(("g", "a.com", "r1")));
        assert_eq!(k.parse_drain_key(&ack), Some(("g", "a.com", "r1")));
        assert_eq!(k.parse_drain_key("/p/drain/g/a.com"), None);

        let can =
            |c: &Component, key: &str, a: Access| k.grants(c).iter().any(|g| g.allows(key, a));
        let (core, disc) = (Component::Core, Component::Discovery);
        assert!(can(&core, &req, Access::ReadWrite));
        assert!(can(&core, &ack, Access::Read));
        assert!(!can(&core, &ack, Access::ReadWrite));
        assert!(can(&disc, &req, Access::Read));
        assert!(!can(&disc, &req, Access::ReadWrite));
        assert!(can(&disc, &ack, Access::ReadWrite));
        assert!(can(
            &disc,
            &slb_domain_upstream("g", "a.com"),
            Access::ReadWrite
        ));
        assert!(can(&disc, &k.discovery_leader(), Access::ReadWrite));
        assert!(can(&disc, &k.cell("bj1"), Access::Read));
        assert!(!can(&disc, &k.cell("bj1"), Access::ReadWrite));
        assert!(!can(&disc, &svc, Access::ReadWrite));
        assert!(!can(&disc, &k.core_user("u"), Access::Read));
        assert!(!can(&disc, &k.pool("p"), Access::Read));
    }
}
