//! Prometheus text exposition (format 0.0.4) of one snapshot (pure).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::procfs::IfStats;

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub node: NodeStats,
    pub containers: Vec<ContainerStat>,
    pub pods: Vec<PodNet>,
    pub blocks: Vec<BlockUse>,
    pub bond: Option<BondHealth>,
    pub counters: Counters,
    /// Container statuses of this node's pods (restarts, OOM kills).
    pub statuses: Vec<leengine_apiserver::ContainerInfo>,
    /// `(namespace, app, by, count)` of this node's deleted pods.
    pub deletions: Vec<(String, String, crate::deletions::By, u64)>,
}

#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    pub cpus: usize,
    pub cpu_usage_ratio: f64,
    pub memory_total: u64,
    pub memory_used: u64,
    pub swap_total: u64,
    pub swap_used: u64,
    pub load1: f64,
    pub disks: Vec<DiskStat>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStat {
    pub mount: String,
    pub total: u64,
    pub available: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ContainerStat {
    /// The cgroup leaf (label `id`).
    pub name: String,
    /// The pod's app (its namespace or `leengine.io/app` label); for a cgroup
    /// no pod claims, the namespace of the pod netns its tasks run in; "" if none.
    pub app: String,
    /// From the kubelet's pods; "" when no pod claims the cgroup.
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub version: String,
    pub cpu_ns: Option<u64>,
    pub memory: Option<u64>,
    pub working_set: Option<u64>,
    pub memory_limit: Option<u64>,
    pub swap: Option<u64>,
    pub blkio_read: Option<u64>,
    pub blkio_write: Option<u64>,
    pub read_ops: Option<u64>,
    pub write_ops: Option<u64>,
    pub task_io_read: u64,
    pub task_io_write: u64,
}

impl ContainerStat {
    fn labels(&self) -> [(&str, &str); 6] {
        [
            ("id", &self.name),
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("container", &self.container),
            ("app", &self.app),
            ("version", &self.version),
        ]
    }
}

#[derive(Clone, Debug, Default)]
pub struct PodNet {
    pub container_id: String,
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    pub app: String,
    pub ifname: String,
    pub stats: IfStats,
}

#[derive(Clone, Debug, Default)]
pub struct BlockUse {
    pub pool: String,
    pub block: String,
    pub size: u64,
    pub used: u64,
}

#[derive(Clone, Debug, Default)]
pub struct BondHealth {
    pub bond: String,
    pub members: Vec<(String, bool)>,
    pub active: Option<String>,
}

/// Agent counters (monotonic ones end in `_total` when rendered).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub scans: u64,
    pub scan_failures: u64,
    pub last_scan_seconds: f64,
    pub alive: u64,
    pub dead: u64,
    pub unknown: u64,
    pub suspects: u64,
    pub released: u64,
    pub release_stale: u64,
    pub release_errors: u64,
    /// Withheld: a live pod of the apiserver holds the IP.
    pub reclaim_held: u64,
    /// Withheld: the apiserver could not be asked.
    pub reclaim_no_apiserver: u64,
    pub swap_constrained: u64,
    pub swap_unconstrained: u64,
}

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, kind, help);
        self.sample(name, labels, value);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Per app (pod namespace) sums over containers and pod interfaces.
#[derive(Default)]
struct AppSum {
    cpu_ns: u64,
    memory: u64,
    blkio_read: u64,
    blkio_write: u64,
    task_io_read: u64,
    task_io_write: u64,
    rx: u64,
    tx: u64,
}

pub fn render(s: &Snapshot) -> String {
    let mut o = Out {
        text: String::with_capacity(4096 + 512 * (s.containers.len() + s.pods.len())),
    };
    render_node(&mut o, s);
    render_containers(&mut o, s);
    render_pods(&mut o, s);
    render_apps(&mut o, s);
    render_agent(&mut o, s);
    o.text
}

fn render_node(o: &mut Out, s: &Snapshot) {
    let n = &s.node;
    o.one(
        "leengine_node_cpus",
        "gauge",
        "Logical CPUs of the node.",
        &[],
        n.cpus as f64,
    );
    o.one(
        "leengine_node_cpu_usage_ratio",
        "gauge",
        "Node CPU busy fraction (0-1).",
        &[],
        n.cpu_usage_ratio,
    );
    o.one(
        "leengine_node_load1",
        "gauge",
        "1-minute load average.",
        &[],
        n.load1,
    );
    o.one(
        "leengine_node_memory_total_bytes",
        "gauge",
        "Node memory.",
        &[],
        n.memory_total as f64,
    );
    o.one(
        "leengine_node_memory_used_bytes",
        "gauge",
        "Node memory in use.",
        &[],
        n.memory_used as f64,
    );
    o.one(
        "leengine_node_swap_total_bytes",
        "gauge",
        "Node swap.",
        &[],
        n.swap_total as f64,
    );
    o.one(
        "leengine_node_swap_used_bytes",
        "gauge",
        "Node swap in use.",
        &[],
        n.swap_used as f64,
    );
    o.family(
        "leengine_node_disk_total_bytes",
        "gauge",
        "Size of each mounted filesystem.",
    );
    for d in &n.disks {
        o.sample(
            "leengine_node_disk_total_bytes",
            &[("mount", &d.mount)],
            d.total as f64,
        );
    }
    o.family(
        "leengine_node_disk_available_bytes",
        "gauge",
        "Free space of each mounted filesystem.",
    );
    for d in &n.disks {
        o.sample(
            "leengine_node_disk_available_bytes",
            &[("mount", &d.mount)],
            d.available as f64,
        );
    }
    o.family(
        "leengine_node_ip_block_size",
        "gauge",
        "Addresses in each IP block this node owns.",
    );
    for b in &s.blocks {
        o.sample(
            "leengine_node_ip_block_size",
            &[("pool", &b.pool), ("block", &b.block)],
            b.size as f64,
        );
    }
    o.family(
        "leengine_node_ip_block_used",
        "gauge",
        "Allocated addresses in each IP block this node owns.",
    );
    for b in &s.blocks {
        o.sample(
            "leengine_node_ip_block_used",
            &[("pool", &b.pool), ("block", &b.block)],
            b.used as f64,
        );
    }
    if let Some(b) = &s.bond {
        o.family(
            "leengine_node_bond_member_up",
            "gauge",
            "1 when the bond member's link is up.",
        );
        for (m, up) in &b.members {
            o.sample(
                "leengine_node_bond_member_up",
                &[("bond", &b.bond), ("member", m)],
                f64::from(u8::from(*up)),
            );
        }
        o.family(
            "leengine_node_bond_active_member",
            "gauge",
            "1 for the member carrying traffic.",
        );
        for (m, _) in &b.members {
            let active = b.active.as_deref() == Some(m.as_str());
            o.sample(
                "leengine_node_bond_active_member",
                &[("bond", &b.bond), ("member", m)],
                f64::from(u8::from(active)),
            );
        }
    }
}

fn render_containers(o: &mut Out, s: &Snapshot) {
    type Get = fn(&ContainerStat) -> Option<f64>;
    let families: [(&str, &str, &str, Get); 12] = [
        (
            "leengine_container_cpu_seconds_total",
            "counter",
            "CPU time used by the container.",
            |c| c.cpu_ns.map(|n| n as f64 / 1e9),
        ),
        (
            "leengine_container_memory_bytes",
            "gauge",
            "Memory charged to the container.",
            |c| c.memory.map(|m| m as f64),
        ),
        (
            "leengine_container_memory_working_set_bytes",
            "gauge",
            "Memory charged minus inactive file cache.",
            |c| c.working_set.map(|m| m as f64),
        ),
        (
            "leengine_container_memory_limit_bytes",
            "gauge",
            "Memory limit (absent: unlimited).",
            |c| c.memory_limit.map(|m| m as f64),
        ),
        (
            "leengine_container_swap_bytes",
            "gauge",
            "Swap charged to the container (absent: not accounted).",
            |c| c.swap.map(|m| m as f64),
        ),
        (
            "leengine_container_blkio_read_bytes_total",
            "counter",
            "Bytes read from block devices (blkio / io.stat).",
            |c| c.blkio_read.map(|m| m as f64),
        ),
        (
            "leengine_container_blkio_write_bytes_total",
            "counter",
            "Bytes written to block devices (blkio / io.stat).",
            |c| c.blkio_write.map(|m| m as f64),
        ),
        (
            "leengine_container_blkio_read_ops_total",
            "counter",
            "Read operations on block devices (blkio io_serviced / io.stat rios).",
            |c| c.read_ops.map(|m| m as f64),
        ),
        (
            "leengine_container_blkio_write_ops_total",
            "counter",
            "Write operations on block devices (blkio io_serviced / io.stat wios).",
            |c| c.write_ops.map(|m| m as f64),
        ),
        (
            "leengine_container_task_io_read_bytes_total",
            "counter",
            "Storage bytes read by the container's live tasks (/proc/PID/io).",
            |c| Some(c.task_io_read as f64),
        ),
        (
            "leengine_container_task_io_write_bytes_total",
            "counter",
            "Storage bytes written by the container's live tasks (/proc/PID/io).",
            |c| Some(c.task_io_write as f64),
        ),
        (
            "leengine_container_info",
            "gauge",
            "1 per container cgroup, with the pod it belongs to.",
            |_| Some(1.0),
        ),
    ];
    for (name, kind, help, get) in families {
        o.family(name, kind, help);
        for c in &s.containers {
            if let Some(v) = get(c) {
                o.sample(name, &c.labels(), v);
            }
        }
    }
    render_statuses(o, s);
    render_deletions(o, s);
}

fn render_deletions(o: &mut Out, s: &Snapshot) {
    let name = "leengine_pod_deletions_total";
    o.family(
        name,
        "counter",
        "Pods of this node deleted, by whether the platform asked (by=platform|other).",
    );
    for (ns, app, by, n) in &s.deletions {
        let labels = [("namespace", ns.as_str()), ("app", app), ("by", by.label())];
        o.sample(name, &labels, *n as f64);
    }
}

/// From the pods' container statuses: they outlive each container's cgroup.
fn render_statuses(o: &mut Out, s: &Snapshot) {
    type Get = fn(&leengine_apiserver::ContainerInfo) -> Option<f64>;
    let families: [(&str, &str, &str, Get); 4] = [
        (
            "leengine_container_restarts_total",
            "counter",
            "Restarts of the pod's container (kubelet's restartCount).",
            |c| Some(c.restarts as f64),
        ),
        (
            "leengine_container_oom_killed",
            "gauge",
            "1 when the container's last termination was the OOM killer's.",
            |c| Some(f64::from(u8::from(c.oom_killed))),
        ),
        (
            "leengine_container_cpu_limit_cores",
            "gauge",
            "CPU limit of the container in the pod spec (absent: none).",
            |c| c.cpu_limit_millis.map(|m| m as f64 / 1000.0),
        ),
        (
            "leengine_container_cpu_request_cores",
            "gauge",
            "CPU request of the container in the pod spec (absent: none).",
            |c| c.cpu_request_millis.map(|m| m as f64 / 1000.0),
        ),
    ];
    for (name, kind, help, get) in families {
        o.family(name, kind, help);
        for c in &s.statuses {
            let labels = [
                ("namespace", c.namespace.as_str()),
                ("pod", &c.pod),
                ("container", &c.container),
                ("app", &c.app),
                ("version", &c.version),
            ];
            if let Some(v) = get(c) {
                o.sample(name, &labels, v);
            }
        }
    }
}

fn render_pods(o: &mut Out, s: &Snapshot) {
    type Get = fn(&IfStats) -> u64;
    let families: [(&str, &str, Get); 4] = [
        (
            "leengine_pod_network_receive_bytes_total",
            "Bytes received on the pod interface.",
            |x| x.rx_bytes,
        ),
        (
            "leengine_pod_network_transmit_bytes_total",
            "Bytes sent on the pod interface.",
            |x| x.tx_bytes,
        ),
        (
            "leengine_pod_network_receive_packets_total",
            "Packets received on the pod interface.",
            |x| x.rx_packets,
        ),
        (
            "leengine_pod_network_transmit_packets_total",
            "Packets sent on the pod interface.",
            |x| x.tx_packets,
        ),
    ];
    for (name, help, get) in families {
        o.family(name, "counter", help);
        for p in &s.pods {
            let labels = [
                ("container_id", p.container_id.as_str()),
                ("namespace", &p.namespace),
                ("pod", &p.pod),
                ("app", &p.app),
                ("interface", &p.ifname),
            ];
            o.sample(name, &labels, get(&p.stats) as f64);
        }
    }
}

fn render_apps(o: &mut Out, s: &Snapshot) {
    let mut apps: BTreeMap<&str, AppSum> = BTreeMap::new();
    for c in s.containers.iter().filter(|c| !c.app.is_empty()) {
        let a = apps.entry(&c.app).or_default();
        a.cpu_ns += c.cpu_ns.unwrap_or(0);
        a.memory += c.memory.unwrap_or(0);
        a.blkio_read += c.blkio_read.unwrap_or(0);
        a.blkio_write += c.blkio_write.unwrap_or(0);
        a.task_io_read += c.task_io_read;
        a.task_io_write += c.task_io_write;
    }
    for p in s.pods.iter().filter(|p| !p.app.is_empty()) {
        let a = apps.entry(&p.app).or_default();
        a.rx += p.stats.rx_bytes;
        a.tx += p.stats.tx_bytes;
    }
    type Get = fn(&AppSum) -> f64;
    let families: [(&str, &str, &str, Get); 8] = [
        (
            "leengine_app_cpu_seconds_total",
            "counter",
            "CPU time of the app's containers on this node.",
            |a| a.cpu_ns as f64 / 1e9,
        ),
        (
            "leengine_app_memory_bytes",
            "gauge",
            "Memory of the app's containers on this node.",
            |a| a.memory as f64,
        ),
        (
            "leengine_app_network_receive_bytes_total",
            "counter",
            "Bytes received by the app's pods on this node.",
            |a| a.rx as f64,
        ),
        (
            "leengine_app_network_transmit_bytes_total",
            "counter",
            "Bytes sent by the app's pods on this node.",
            |a| a.tx as f64,
        ),
        (
            "leengine_app_blkio_read_bytes_total",
            "counter",
            "Block-device bytes read by the app's containers.",
            |a| a.blkio_read as f64,
        ),
        (
            "leengine_app_blkio_write_bytes_total",
            "counter",
            "Block-device bytes written by the app's containers.",
            |a| a.blkio_write as f64,
        ),
        (
            "leengine_app_task_io_read_bytes_total",
            "counter",
            "Storage bytes read by the app's live tasks.",
            |a| a.task_io_read as f64,
        ),
        (
            "leengine_app_task_io_write_bytes_total",
            "counter",
            "Storage bytes written by the app's live tasks.",
            |a| a.task_io_write as f64,
        ),
    ];
    for (name, kind, help, get) in families {
        o.family(name, kind, help);
        for (app, sum) in &apps {
            o.sample(name, &[("app", app)], get(sum));
        }
    }
}

fn render_agent(o: &mut Out, s: &Snapshot) {
    let c = &s.counters;
    o.one(
        "leengine_node_scans_total",
        "counter",
        "Attachment scans completed.",
        &[],
        c.scans as f64,
    );
    o.one(
        "leengine_node_scan_failures_total",
        "counter",
        "Attachment scans that could not complete (nothing was reclaimed).",
        &[],
        c.scan_failures as f64,
    );
    o.one(
        "leengine_node_scan_duration_seconds",
        "gauge",
        "Duration of the last scan.",
        &[],
        c.last_scan_seconds,
    );
    o.family(
        "leengine_node_attachments",
        "gauge",
        "Allocations of this node by liveness in the last scan.",
    );
    for (state, v) in [("alive", c.alive), ("dead", c.dead), ("unknown", c.unknown)] {
        o.sample("leengine_node_attachments", &[("state", state)], v as f64);
    }
    o.one(
        "leengine_node_reclaim_suspects",
        "gauge",
        "Dead allocations waiting for their grace period.",
        &[],
        c.suspects as f64,
    );
    o.family(
        "leengine_node_reclaim_total",
        "counter",
        "Reclaim attempts by outcome.",
    );
    for (outcome, v) in [
        ("released", c.released),
        ("stale", c.release_stale),
        ("error", c.release_errors),
        ("held_by_pod", c.reclaim_held),
        ("no_apiserver", c.reclaim_no_apiserver),
    ] {
        o.sample(
            "leengine_node_reclaim_total",
            &[("outcome", outcome)],
            v as f64,
        );
    }
    o.family(
        "leengine_node_swap_guard_containers",
        "gauge",
        "Containers by swap-guard state.",
    );
    for (state, v) in [
        ("constrained", c.swap_constrained),
        ("unconstrained", c.swap_unconstrained),
    ] {
        o.sample(
            "leengine_node_swap_guard_containers",
            &[("state", state)],
            v as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        Snapshot {
            node: NodeStats {
                cpus: 2,
                memory_total: 100,
                disks: vec![DiskStat {
                    mount: "/".into(),
                    total: 10,
                    available: 4,
                }],
                ..Default::default()
            },
            containers: vec![
                ContainerStat {
                    name: "c1".into(),
                    app: "shop".into(),
                    namespace: "shop".into(),
                    pod: "web-1".into(),
                    container: "app".into(),
                    version: "2".into(),
                    working_set: Some(8),
                    read_ops: Some(3),
                    cpu_ns: Some(1_500_000_000),
                    memory: Some(10),
                    blkio_write: Some(7),
                    task_io_write: 5,
                    ..Default::default()
                },
                ContainerStat {
                    name: "c2".into(),
                    app: "shop".into(),
                    cpu_ns: Some(500_000_000),
                    memory: Some(5),
                    ..Default::default()
                },
                ContainerStat {
                    name: "odd\"name".into(),
                    ..Default::default()
                },
            ],
            pods: vec![PodNet {
                container_id: "sb1".into(),
                namespace: "shop".into(),
                pod: "web-1".into(),
                app: "shop".into(),
                ifname: "eth0".into(),
                stats: IfStats {
                    rx_bytes: 100,
                    tx_bytes: 200,
                    rx_packets: 1,
                    tx_packets: 2,
                },
            }],
            blocks: vec![BlockUse {
                pool: "p1".into(),
                block: "10.0.0.16/28".into(),
                size: 16,
                used: 3,
            }],
            bond: Some(BondHealth {
                bond: "bond1".into(),
                members: vec![("eth2".into(), true), ("eth3".into(), false)],
                active: Some("eth2".into()),
            }),
            counters: Counters {
                released: 4,
                ..Default::default()
            },
            statuses: vec![leengine_apiserver::ContainerInfo {
                namespace: "shop".into(),
                pod: "web-1".into(),
                container: "app".into(),
                app: "shop".into(),
                version: "2".into(),
                restarts: 3,
                oom_killed: true,
                cpu_limit_millis: Some(1500),
                ..Default::default()
            }],
            deletions: vec![("shop".into(), "shop".into(), crate::deletions::By::Other, 2)],
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn app_sums_and_labels() {
        let t = render(&snap());
        let l = lines(&t);
        assert!(
            l.contains(&"leengine_app_cpu_seconds_total{app=\"shop\"} 2"),
            "{t}"
        );
        assert!(l.contains(&"leengine_app_memory_bytes{app=\"shop\"} 15"));
        assert!(l.contains(&"leengine_app_network_transmit_bytes_total{app=\"shop\"} 200"));
        assert!(l.contains(&"leengine_app_blkio_write_bytes_total{app=\"shop\"} 7"));
        let c1 = "id=\"c1\",namespace=\"shop\",pod=\"web-1\",container=\"app\",app=\"shop\",version=\"2\"";
        assert!(l.contains(&format!("leengine_container_cpu_seconds_total{{{c1}}} 1.5").as_str()));
        assert!(
            l.contains(&format!("leengine_container_memory_working_set_bytes{{{c1}}} 8").as_str())
        );
        assert!(l.contains(&format!("leengine_container_blkio_read_ops_total{{{c1}}} 3").as_str()));
        let st = "namespace=\"shop\",pod=\"web-1\",container=\"app\",app=\"shop\",version=\"2\"";
        assert!(l.contains(&format!("leengine_container_restarts_total{{{st}}} 3").as_str()));
        assert!(l.contains(&format!("leengine_container_oom_killed{{{st}}} 1").as_str()));
        assert!(l.contains(&format!("leengine_container_cpu_limit_cores{{{st}}} 1.5").as_str()));
        assert!(
            !l.iter()
                .any(|x| x.starts_with("leengine_container_cpu_request_cores")),
            "no request: no sample"
        );
        assert!(l.contains(
            &"leengine_pod_deletions_total{namespace=\"shop\",app=\"shop\",by=\"other\"} 2"
        ));
        assert!(
            !l.iter()
                .any(|x| x.starts_with("leengine_app_") && x.contains("app=\"\"")),
            "containers without an app are not summed"
        );
        assert!(l.contains(&"leengine_pod_network_receive_bytes_total{container_id=\"sb1\",namespace=\"shop\",pod=\"web-1\",app=\"shop\",interface=\"eth0\"} 100"));
        assert!(l.contains(&"leengine_node_ip_block_used{pool=\"p1\",block=\"10.0.0.16/28\"} 3"));
        assert!(l.contains(&"leengine_node_bond_member_up{bond=\"bond1\",member=\"eth3\"} 0"));
        assert!(l.contains(&"leengine_node_bond_active_member{bond=\"bond1\",member=\"eth2\"} 1"));
        assert!(l.contains(&"leengine_node_reclaim_total{outcome=\"released\"} 4"));
        assert!(l.contains(&"leengine_node_disk_available_bytes{mount=\"/\"} 4"));
    }

    #[test]
    fn absent_values_are_not_rendered_and_every_family_is_typed_once() {
        let t = render(&snap());
        assert!(
            !t.contains("leengine_container_memory_limit_bytes{"),
            "unlimited: no sample"
        );
        assert!(
            !t.contains("leengine_container_memory_bytes{id=\"odd"),
            "no memory value: no sample"
        );
        assert!(t.contains("id=\"odd\\\"name\""), "quotes escaped: {t}");
        let mut seen = std::collections::BTreeSet::new();
        for l in t.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = l.split_whitespace().nth(2).unwrap();
            assert!(seen.insert(name.to_string()), "{name} typed twice");
        }
        for l in lines(&t) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(seen.contains(name), "{name} has no TYPE line");
        }
    }
}
