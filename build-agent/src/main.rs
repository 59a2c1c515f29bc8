//! `leengine-build-agent`: one per build host. Registers the host in etcd
//! under a lease, watches its task keys and turns each task into an image in
//! the registry (clone → compile → build → push).

mod agent;
mod context;
mod docker;
mod git;
mod registration;
mod report;
mod retention;
mod runner;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "leengine-build-agent", version, about)]
pub struct Args {
    /// Builder id: the key segment under {prefix}/builders/.
    #[arg(long, env = "LEENGINE_BUILDER_ID")]
    pub id: String,
    /// etcd client URLs, comma separated.
    #[arg(long, env = "LEENGINE_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    #[command(flatten)]
    pub etcd_auth: leengine_store::EtcdAuthArgs,
    #[arg(long, env = "LEENGINE_PREFIX", default_value = leengine_store::keys::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Docker Engine API socket.
    #[arg(long, default_value = "unix:///var/run/docker.sock")]
    pub docker: String,
    /// Checkouts, build contexts and full logs.
    #[arg(long, default_value = "/var/lib/leengine-build/work")]
    pub work_dir: PathBuf,
    /// Per-build-config caches ({cache-dir}/{config}/m2).
    #[arg(long, default_value = "/var/lib/leengine-build/cache")]
    pub cache_dir: PathBuf,
    /// Builds run at once.
    #[arg(long, default_value_t = 2)]
    pub capacity: u32,
    /// Registration lease TTL: how long after a crash the host is considered gone.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Labels published with the registration, `key=value`, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Network mode of compile containers (Maven needs to reach its mirror).
    #[arg(long, default_value = "bridge")]
    pub compile_network: String,
    /// Upper bound for each of clone, compile, build and push.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub stage_timeout: Duration,
    /// Full logs on disk older than this are deleted.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub log_retention: Duration,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} must be key=value"))?;
    if k.is_empty() {
        return Err(format!("label {s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("leengine-build-agent: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    leengine_build::validate::name("--id", &args.id)?;
    anyhow::ensure!(args.capacity >= 1, "--capacity must be at least 1");
    anyhow::ensure!(
        args.ttl >= Duration::from_secs(2),
        "--ttl must be at least 2s"
    );
    let agent = agent::Agent::start(&args).await.context("cannot start")?;
    agent.run().await
}
