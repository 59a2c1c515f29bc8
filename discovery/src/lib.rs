//! leengine-discovery: the ready endpoints of every Cell's managed
//! Services → `/slb/{group}/domains/{domain}/upstream`, and drains with
//! acknowledgement (docs/discovery.md). One replica per Region is active
//! (an etcd lease); the others wait to take over.

pub mod cellwatch;
pub mod drain;
pub mod election;
pub mod engine;
pub mod follow;
pub mod hub;
pub mod model;
pub mod pace;
pub mod registry;
pub mod slices;
pub mod status;
pub mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use leengine_store::StoreError;

use crate::hub::Hub;

#[derive(Parser, Debug)]
#[command(
    name = "leengine-discovery",
    version = leengine_cli::version!(),
    about = "EndpointSlices of every Cell into nginx upstreams, drains with acknowledgement"
)]
pub struct Args {
    /// etcd client URLs of the Region's etcd, comma separated.
    #[arg(
        long,
        env = "LEENGINE_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd: Vec<String>,
    #[command(flatten)]
    pub etcd_auth: leengine_store::EtcdAuthArgs,
    /// Key prefix of LeEngine's records (the SLB keys stay under /slb).
    #[arg(long, env = "LEENGINE_PREFIX", default_value = leengine_store::keys::DEFAULT_PREFIX)]
    pub prefix: String,
    /// This replica's name in the leader record; hostname-pid by default.
    #[arg(long)]
    pub id: Option<String>,
    /// TTL of the leader lease: a crashed active replica is replaced after about this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// Where the Cells' kubeconfigs are (a Cell record's `credential` is relative to it).
    #[arg(long, default_value = "/etc/leengine/cells")]
    pub credentials_dir: PathBuf,
    /// Least time between two writes of one domain's upstream: the first
    /// change is written at once, a burst after it once per interval.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub min_write_interval: Duration,
    /// Length of one watch request; the apiserver ends it and discovery
    /// resumes from the last resourceVersion.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub watch_timeout: Duration,
    /// Read etcd's upstreams again this often (hand edits get corrected).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub resync: Duration,
    /// Address of the status and metrics endpoint.
    #[arg(long, default_value = "127.0.0.1:9317")]
    pub listen: SocketAddr,
}

impl Args {
    /// Refuses settings that cannot work, before anything starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.lease_ttl < Duration::from_secs(2) {
            anyhow::bail!("--lease-ttl must be at least 2s (etcd grants whole seconds)");
        }
        if self.min_write_interval > Duration::from_secs(10) {
            anyhow::bail!("--min-write-interval must be at most 10s");
        }
        self.etcd_auth.config(self.etcd.clone()).check()?;
        Ok(())
    }
}

/// Runs discovery until stopped; [`Args::validate`] first.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = args.etcd_auth.config(args.etcd.clone());
    cfg.prefix = Some(args.prefix.clone());
    let keys = cfg.keys();
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let hub = Arc::new(Hub::default());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener,
        status::router(hub.clone(), &id),
    )));
    let settings = engine::Settings {
        credentials_dir: args.credentials_dir.clone(),
        min_write_interval: args.min_write_interval,
        watch_timeout: args.watch_timeout,
        resync: args.resync,
    };
    let mut signals = leengine_cli::Shutdown::install()?;
    let mut shutdown = Box::pin(async move {
        signals.recv().await;
    });
    let client = tokio::select! {
        c = connect(&cfg) => c?,
        _ = &mut shutdown => return Ok(()),
    };
    let leader = keys.discovery_leader();
    loop {
        let term = tokio::select! {
            t = election::campaign(&client, &leader, &id, args.lease_ttl) => t,
            _ = &mut shutdown => return Ok(()),
        };
        hub.active.store(true, Ordering::Relaxed);
        let ended = tokio::select! {
            r = engine::run_term(client.clone(), keys.clone(), hub.clone(), &term, &settings) => match r {
                Ok(()) => "term ended".to_string(),
                Err(e) => e.to_string(),
            },
            _ = term.lost() => "leader lease lost".to_string(),
            _ = &mut shutdown => {
                hub.active.store(false, Ordering::Relaxed);
                let _ = tokio::time::timeout(Duration::from_secs(1), term.resign()).await;
                tracing::info!("shut down; leadership handed over");
                return Ok(());
            }
        };
        hub.active.store(false, Ordering::Relaxed);
        hub.reset();
        tracing::warn!(reason = %ended, "no longer active; campaigning again");
        let _ = tokio::time::timeout(Duration::from_secs(1), term.resign()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connects, waiting while etcd is unreachable; wrong settings end the program.
async fn connect(cfg: &leengine_store::EtcdConfig) -> anyhow::Result<etcd_client::Client> {
    loop {
        match leengine_store::connect(cfg).await {
            Ok(c) => return Ok(c),
            Err(e @ StoreError::Unavailable { .. }) => {
                tracing::warn!(error = %e, "etcd unreachable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "discovery".into())
}
