//! Command line (clap derive).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Network ops tool for LeEngine's etcd IPAM.
///
/// Exit codes: 0 ok; 1 refused or failed (bad input, unknown pool/IP, in use);
/// 2 command-line usage error; 3 etcd or apiserver unreachable (retry later);
/// 4 `check` found leaks / `release` left some addresses alone.
#[derive(Debug, Parser)]
#[command(name = "cnictl", version = leengine_cli::version!())]
pub struct Cli {
    /// etcd client URLs, comma separated.
    #[arg(
        long = "etcd",
        env = "LEENGINE_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    pub etcd: Vec<String>,
    /// etcd key prefix.
    #[arg(
        long,
        env = "LEENGINE_ETCD_PREFIX",
        default_value = "/leengine",
        global = true
    )]
    pub prefix: String,
    #[command(flatten)]
    pub etcd_auth: leengine_store::EtcdAuthArgs,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// IP pools (ranges planned with the network team).
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Blocks claimed by nodes.
    #[command(subcommand)]
    Block(BlockCmd),
    /// Allocated addresses.
    #[command(subcommand)]
    Ip(IpCmd),
    /// Find leaked IPs: allocated in etcd but alive nowhere.
    Check(Liveness),
    /// Release leaked IPs, re-checking each one first.
    Release(ReleaseArgs),
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Add a pool.
    Add {
        name: String,
        /// The range, e.g. 10.1.0.0/22 (/16 to /28).
        #[arg(long)]
        cidr: String,
        /// The segment's gateway (inside the range).
        #[arg(long)]
        gateway: String,
        /// The segment's VLAN (1-4094).
        #[arg(long)]
        vlan: u32,
        /// Addresses per node block (a power of two).
        #[arg(long, default_value_t = 16)]
        block_size: u32,
        /// Never hand out: an IP, an a-b range or a CIDR (repeatable).
        #[arg(long = "exclude")]
        excludes: Vec<String>,
    },
    /// List pools with their usage.
    List,
    /// Show one pool.
    Show {
        name: String,
        /// Also list its claimed blocks.
        #[arg(long)]
        blocks: bool,
    },
    /// Remove a pool (refused while addresses are allocated or apps are bound to it).
    Rm { name: String },
    /// Bind a pool to an app: only the app's pods get addresses from it.
    Bind {
        name: String,
        /// The app's namespace.
        #[arg(long)]
        app: String,
        /// When its bound pools are full, may the app use the shared pools (true/false)?
        #[arg(long)]
        shared_fallback: Option<bool>,
        /// How long an address the app gave up stays reserved for it (0s: none; default 10m).
        #[arg(long, value_parser = humantime::parse_duration)]
        reserve: Option<Duration>,
    },
    /// Unbind a pool from an app.
    Unbind {
        name: String,
        #[arg(long)]
        app: String,
    },
    /// The ranges bound to an app (every app without --app), for firewall
    /// rules: one `CIDR APP POOL VLAN` line each, or JSON with -o json.
    Export {
        #[arg(long)]
        app: Option<String>,
    },
    /// An app's binding and the addresses reserved for it.
    App { app: String },
}

#[derive(Debug, Subcommand)]
pub enum BlockCmd {
    /// List claimed blocks.
    List(FilterArgs),
    /// Give an empty block back, e.g. 10.1.0.16/28.
    Release { block: String },
}

#[derive(Debug, Subcommand)]
pub enum IpCmd {
    /// List allocated addresses.
    List(FilterArgs),
    /// Show what one address is.
    Show { ip: Ipv4Addr },
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    #[arg(long)]
    pub node: Option<String>,
    #[arg(long)]
    pub pool: Option<String>,
}

/// Where liveness comes from, and how patient to be.
#[derive(Debug, Args)]
pub struct Liveness {
    /// An allocation younger than this is never called leaked (unless its node is gone).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Node-agent reports older than this are ignored.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_report_age: Duration,
    /// kubeconfig for the apiserver (default: in-cluster, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Do not ask the apiserver (even with a kubeconfig); rely on node-agent reports only.
    #[arg(long)]
    pub no_apiserver: bool,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Addresses to release (each must still be leaked).
    #[arg(
        required_unless_present = "from_report",
        conflicts_with = "from_report"
    )]
    pub ips: Vec<Ipv4Addr>,
    /// A report written by `cnictl check -o json`.
    #[arg(long)]
    pub from_report: Option<PathBuf>,
    #[command(flatten)]
    pub liveness: Liveness,
}
