//! The agent's configuration: a TOML file (see `docs/node-agent.md` and
//! `node-agent/node-agent.example.toml`), overridden field by field by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use leengine_ovsdb::BondMode;
use leengine_store::EtcdConfig;
use serde::Deserialize;

#[derive(Parser, Debug, Default)]
#[command(
    name = "leengine-node-agent",
    version = leengine_cli::version!(),
    about = "LeEngine compute-node agent",
    args_override_self = true
)]
pub struct Args {
    /// TOML config file; flags override its values.
    #[arg(long, short = 'c', env = "LEENGINE_NODE_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Node name (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// etcd endpoints, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// etcd key prefix.
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    #[command(flatten)]
    pub etcd_auth: leengine_store::EtcdAuthArgs,
    /// OVSDB address (unix:PATH or tcp:HOST:PORT).
    #[arg(long)]
    pub ovsdb: Option<String>,
    /// OVS bridge the pods and the bond attach to.
    #[arg(long)]
    pub bridge: Option<String>,
    /// datapath_type of the bridge (system, netdev).
    #[arg(long)]
    pub datapath_type: Option<String>,
    /// Name of the bond port.
    #[arg(long)]
    pub bond: Option<String>,
    /// Uplink NICs that form the bond, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub uplinks: Option<Vec<String>>,
    /// active-backup, balance-slb or lacp (balance-tcp with LACP).
    #[arg(long)]
    pub bond_mode: Option<String>,
    /// Registration lease TTL (e.g. 15s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// Attachment scan period (e.g. 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub scan_interval: Option<Duration>,
    /// Automatic leak reclaim.
    #[arg(long)]
    pub reclaim: Option<OnOff>,
    /// How long an attachment must be seen dead before it is reclaimed.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub reclaim_grace: Option<Duration>,
    /// kubeconfig of the Cell's apiserver: reclaim then also asks it, and
    /// never takes an IP a live pod of this node holds.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Keep containers from using swap.
    #[arg(long)]
    pub swap_guard: Option<OnOff>,
    /// cgroup filesystem mount point.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// cgroup directories (relative to each controller) whose leaves are containers, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub container_roots: Option<Vec<String>>,
    /// Address of the metrics / control HTTP endpoint ("off" disables it).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// `host:port` Prometheus scrapes, published in the registration for
    /// core's service discovery (default: the listen address unless it is a
    /// wildcard).
    #[arg(long)]
    pub metrics_advertise: Option<String>,
    /// Unix socket of the CNI service the plugin hands its calls to
    /// (`agentSocket` in the network configuration); "off" disables it.
    #[arg(long)]
    pub cni_socket: Option<String>,
    /// One reconcile pass (bootstrap, scan + report, swap guard), then exit.
    #[arg(long)]
    pub once: bool,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    On,
    Off,
}

pub use leengine_cli::LogFormat;

/// The file's shape; every field optional so a file may set only what differs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    node: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    etcd: FileEtcd,
    #[serde(default)]
    ovs: FileOvs,
    #[serde(default)]
    registration: FileRegistration,
    #[serde(default)]
    scan: FileScan,
    #[serde(default)]
    reclaim: FileReclaim,
    #[serde(default)]
    swap_guard: FileSwap,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    cni: FileCni,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCni {
    socket: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEtcd {
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    user: Option<String>,
    password_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOvs {
    db: Option<String>,
    bridge: Option<String>,
    datapath_type: Option<String>,
    bond: Option<String>,
    uplinks: Option<Vec<String>>,
    bond_mode: Option<String>,
    #[serde(default, with = "humantime_serde")]
    reconcile_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRegistration {
    #[serde(default, with = "humantime_serde")]
    lease_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    refresh_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScan {
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    concurrency: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReclaim {
    enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    grace: Option<Duration>,
    kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSwap {
    enabled: Option<bool>,
    cgroup_root: Option<PathBuf>,
    container_roots: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    listen: Option<String>,
    advertise: Option<String>,
}

/// The effective, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: String,
    pub etcd: EtcdConfig,
    pub ovsdb: String,
    pub bridge: String,
    pub datapath_type: String,
    pub bond: String,
    pub uplinks: Vec<String>,
    pub bond_mode: BondMode,
    pub reconcile_interval: Duration,
    pub lease_ttl: Duration,
    pub refresh_interval: Duration,
    pub scan_interval: Duration,
    pub scan_concurrency: usize,
    pub reclaim: bool,
    pub reclaim_grace: Duration,
    /// The apiserver reclaim consults; `None`: the netns verdict alone.
    pub kubeconfig: Option<PathBuf>,
    pub swap_guard: bool,
    pub cgroup_root: PathBuf,
    pub container_roots: Vec<String>,
    pub metrics_listen: Option<SocketAddr>,
    /// Published as `metricsAddress`; `None`: not discoverable.
    pub metrics_advertise: Option<String>,
    /// Where the CNI service listens; `None`: off.
    pub cni_socket: Option<PathBuf>,
    pub once: bool,
    pub log_format: LogFormat,
}

pub const DEFAULT_GRACE: Duration = Duration::from_secs(15 * 60);
/// The CNI service's socket, as the packaged network configuration names it.
pub const DEFAULT_CNI_SOCKET: &str = "/run/leengine/cni.sock";

impl Config {
    pub fn load(args: Args) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => File::default(),
        };
        let cfg = Self::merge(args, file)?;
        cfg.etcd.check()?;
        if let Some(path) = &cfg.kubeconfig {
            leengine_apiserver::read_kubeconfig(path)?;
        }
        Ok(cfg)
    }

    /// Parses a config file's text (flags not applied).
    #[cfg(test)]
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let file: File = toml::from_str(text).context("invalid config")?;
        Self::merge(Args::default(), file)
    }

    fn merge(a: Args, f: File) -> anyhow::Result<Config> {
        let node = match a.node.or(f.node) {
            Some(n) => n,
            None => hostname()?,
        };
        if node.is_empty() || node.contains('/') {
            bail!("invalid node name {node:?}: must be non-empty and contain no '/'");
        }
        let endpoints = a
            .etcd_endpoints
            .or(f.etcd.endpoints)
            .unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()]);
        let etcd = EtcdConfig {
            endpoints,
            prefix: a.etcd_prefix.or(f.etcd.prefix),
            ca: a.etcd_auth.ca.or(f.etcd.ca),
            cert: a.etcd_auth.cert.or(f.etcd.cert),
            key: a.etcd_auth.key.or(f.etcd.key),
            user: a.etcd_auth.user.or(f.etcd.user),
            password_file: a.etcd_auth.password_file.or(f.etcd.password_file),
        };
        let mode_text = a
            .bond_mode
            .or(f.ovs.bond_mode)
            .unwrap_or_else(|| "active-backup".into());
        let bond_mode: BondMode = mode_text
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid bond_mode: {e}"))?;
        let uplinks = a.uplinks.or(f.ovs.uplinks).unwrap_or_default();
        if uplinks.iter().any(String::is_empty) {
            bail!("invalid uplinks: empty interface name");
        }
        let lease_ttl = a
            .lease_ttl
            .or(f.registration.lease_ttl)
            .unwrap_or(Duration::from_secs(15));
        if lease_ttl < Duration::from_secs(2) {
            bail!("invalid lease_ttl {lease_ttl:?}: at least 2s");
        }
        let refresh_interval = f
            .registration
            .refresh_interval
            .unwrap_or(Duration::from_secs(10));
        let scan_interval = a
            .scan_interval
            .or(f.scan.interval)
            .unwrap_or(Duration::from_secs(10));
        if scan_interval.is_zero() || refresh_interval.is_zero() {
            bail!("invalid interval: must be greater than zero");
        }
        let metrics_listen = match a
            .metrics_listen
            .or(f.metrics.listen)
            .unwrap_or_else(|| "127.0.0.1:9477".into())
            .as_str()
        {
            "off" | "" => None,
            addr => Some(
                addr.parse()
                    .with_context(|| format!("invalid metrics listen address {addr:?}"))?,
            ),
        };
        let metrics_advertise =
            advertise(metrics_listen, a.metrics_advertise.or(f.metrics.advertise))?;
        let cni_socket = match a
            .cni_socket
            .or(f.cni.socket)
            .unwrap_or_else(|| DEFAULT_CNI_SOCKET.into())
            .as_str()
        {
            "off" | "" => None,
            p if Path::new(p).is_absolute() => Some(PathBuf::from(p)),
            p => bail!("invalid cni socket {p:?}: want an absolute path or \"off\""),
        };
        let on = |x: Option<OnOff>| x.map(|v| v == OnOff::On);
        Ok(Config {
            node,
            etcd,
            ovsdb: a
                .ovsdb
                .or(f.ovs.db)
                .unwrap_or_else(|| "unix:/var/run/openvswitch/db.sock".into()),
            bridge: a.bridge.or(f.ovs.bridge).unwrap_or_else(|| "br0".into()),
            datapath_type: a
                .datapath_type
                .or(f.ovs.datapath_type)
                .unwrap_or_else(|| "system".into()),
            bond: a.bond.or(f.ovs.bond).unwrap_or_else(|| "bond1".into()),
            uplinks,
            bond_mode,
            reconcile_interval: f.ovs.reconcile_interval.unwrap_or(Duration::from_secs(60)),
            lease_ttl,
            refresh_interval,
            scan_interval,
            scan_concurrency: f.scan.concurrency.unwrap_or(32).max(1),
            reclaim: on(a.reclaim).or(f.reclaim.enabled).unwrap_or(true),
            reclaim_grace: a.reclaim_grace.or(f.reclaim.grace).unwrap_or(DEFAULT_GRACE),
            kubeconfig: a.kubeconfig.or(f.reclaim.kubeconfig),
            swap_guard: on(a.swap_guard).or(f.swap_guard.enabled).unwrap_or(false),
            cgroup_root: a
                .cgroup_root
                .or(f.swap_guard.cgroup_root)
                .unwrap_or_else(|| "/sys/fs/cgroup".into()),
            container_roots: a
                .container_roots
                .or(f.swap_guard.container_roots)
                .unwrap_or_else(|| {
                    crate::cgroup::DEFAULT_CONTAINER_ROOTS
                        .iter()
                        .map(|r| r.to_string())
                        .collect()
                }),
            metrics_listen,
            metrics_advertise,
            cni_socket,
            once: a.once,
            log_format: a.log_format.or(f.log_format).unwrap_or_default(),
        })
    }
}

/// What the registration tells Prometheus to scrape: a wildcard listen
/// address says nothing about where the host is reachable.
fn advertise(listen: Option<SocketAddr>, given: Option<String>) -> anyhow::Result<Option<String>> {
    match (listen, given) {
        (None, _) => Ok(None),
        (Some(_), Some(a)) => {
            let ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                bail!("invalid metrics advertise address {a:?}: want host:port");
            }
            Ok(Some(a))
        }
        (Some(l), None) if l.ip().is_unspecified() => Ok(None),
        (Some(l), None) => Ok(Some(l.to_string())),
    }
}

fn read_file(path: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
}

fn hostname() -> anyhow::Result<String> {
    let h = nix::unistd::gethostname().context("cannot read the host name")?;
    Ok(h.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses() {
        let text = include_str!("../node-agent.example.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.node, "node-1");
        assert_eq!(c.bond, "bond1");
        assert_eq!(c.uplinks, ["eth2", "eth3"]);
        assert_eq!(c.bond_mode, BondMode::ActiveBackup);
        assert_eq!(c.reclaim_grace, DEFAULT_GRACE);
        assert!(c.reclaim);
        assert_eq!(
            c.container_roots,
            [
                "docker",
                "kubepods",
                "kubepods.slice",
                "system.slice/docker-*.scope"
            ]
        );
    }

    #[test]
    fn the_cni_socket_defaults_on_turns_off_and_must_be_absolute() {
        let default = Config::from_toml("").unwrap();
        assert_eq!(
            default.cni_socket.as_deref(),
            Some(Path::new(DEFAULT_CNI_SOCKET))
        );
        let off = Config::from_toml("[cni]\nsocket = \"off\"\n").unwrap();
        assert_eq!(off.cni_socket, None);
        let e = Config::from_toml("[cni]\nsocket = \"run/cni.sock\"\n").unwrap_err();
        assert!(e.to_string().contains("run/cni.sock"), "{e}");
    }

    /// The conffile the Debian package installs as /etc/leengine/node-agent.toml.
    #[test]
    fn packaged_file_parses_with_tls_and_the_host_name() {
        let c = Config::from_toml(include_str!("../debian/node-agent.toml")).unwrap();
        assert_eq!(c.node, hostname().unwrap());
        assert_eq!(
            c.etcd.cert.as_deref(),
            Some("/etc/leengine/pki/node-agent.pem")
        );
        assert!(c.reclaim && c.swap_guard);
        assert_eq!(c.cni_socket.as_deref(), Some(Path::new(DEFAULT_CNI_SOCKET)));
    }

    #[test]
    fn flags_override_file() {
        let file: File = toml::from_str(
            "node = \"a\"\n[reclaim]\nenabled = true\ngrace = \"10m\"\nkubeconfig = \"/etc/a\"\n[ovs]\nbond_mode = \"balance-slb\"\n",
        )
        .unwrap();
        let args = Args {
            node: Some("b".into()),
            reclaim: Some(OnOff::Off),
            reclaim_grace: Some(Duration::from_secs(3)),
            ..Args::default()
        };
        let c = Config::merge(args, file).unwrap();
        assert_eq!(c.node, "b");
        assert!(!c.reclaim);
        assert_eq!(c.reclaim_grace, Duration::from_secs(3));
        assert_eq!(c.bond_mode, BondMode::BalanceSlb);
        assert_eq!(c.kubeconfig.as_deref(), Some(Path::new("/etc/a")));
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        for (text, word) in [
            ("[ovs]\nbond_mode = \"round-robin\"", "bond_mode"),
            ("node = \"a/b\"", "node"),
            ("[metrics]\nlisten = \"nowhere\"", "metrics"),
            ("[metrics]\nadvertise = \"nohost\"", "advertise"),
            ("[registration]\nlease_ttl = \"1s\"", "lease_ttl"),
            ("[ovs]\nbogus = 1", "bogus"),
        ] {
            let err = format!("{:#}", Config::from_toml(text).unwrap_err());
            assert!(err.contains(word), "{text}: {err}");
        }
    }
}
