//! `leengine-node-agent`: runs under systemd on every compute node.
//! See `docs/node-agent.md`.

pub mod agent;
pub mod bootstrap;
pub mod cgroup;
pub mod collect;
pub mod config;
pub mod deletions;
pub mod http;
pub mod leak;
pub mod metrics;
pub mod pods;
pub mod podview;
pub mod procfs;
pub mod record;
pub mod register;
pub mod scan;

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::agent::{stopped, Shared};
use crate::config::Config;
use crate::scan::ScanSummary;

/// The error and its causes on one line (`leengine_cli::one_line`).
pub(crate) fn chain(e: &anyhow::Error) -> String {
    leengine_cli::one_line(e.as_ref())
}

/// Runs the agent until SIGTERM/SIGINT (or, with `--once`, one pass).
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // Before etcd: a kubeconfig that cannot be read fails the start at once.
    let kube = match &cfg.kubeconfig {
        Some(path) => Some(
            leengine_apiserver::client(Some(path))
                .await
                .context("apiserver for reclaim")?,
        ),
        None => None,
    };
    let etcd = leengine_store::connect(&cfg.etcd)
        .await
        .context("cannot connect to etcd")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let once = cfg.once;
    let listen = cfg.metrics_listen;
    let sh = Shared::new(cfg, etcd, kube, stop_rx)?;
    if once {
        return run_once(&sh).await;
    }
    tracing::info!(node = %sh.cfg.node, bridge = %sh.cfg.bridge, bond = %sh.cfg.bond,
        uplinks = ?sh.cfg.uplinks, reclaim = sh.cfg.reclaim, grace = ?sh.cfg.reclaim_grace,
        apiserver = sh.kube.is_some(),
        swap_guard = sh.cfg.swap_guard, cgroups = ?sh.cgroups.layout(), "starting");
    // Handlers first: a signal that arrives once the agent looks up must
    // not hit the default action (SIGHUP would kill it, SIGTERM skip the revoke).
    let mut shutdown = leengine_cli::Shutdown::install()?;
    let mut hup = signal(SignalKind::hangup())?;
    let (scan_tx, scan_rx) = mpsc::channel(16);
    // Bind before anything runs so a taken port fails the start, not later.
    let listener = match listen {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    let cni = match &sh.cfg.cni_socket {
        Some(path) => Some(leengine_cni::serve::bind(path)?),
        None => None,
    };
    let mut tasks = vec![
        tokio::spawn(bootstrap::run(sh.clone())),
        tokio::spawn(register::run(sh.clone())),
        tokio::spawn(scan_loop(sh.clone(), scan_rx)),
    ];
    if let Some(client) = sh.kube.clone() {
        tasks.push(tokio::spawn(pods::run(sh.clone(), client.clone())));
        tasks.push(tokio::spawn(deletions::run(sh.clone(), client)));
    }
    if let Some(l) = cni {
        tracing::info!(socket = ?sh.cfg.cni_socket, "CNI service listening");
        let sessions = std::sync::Arc::new(leengine_cni::backend::Sessions::warm());
        tasks.push(tokio::spawn(leengine_cni::serve::serve(
            l,
            sessions,
            stopped(sh.shutdown.clone()),
        )));
    }
    if let Some(l) = listener {
        tracing::info!(addr = %l.local_addr()?, "HTTP endpoint listening");
        tasks.push(tokio::spawn(http::serve(l, sh.clone(), scan_tx.clone())));
    }
    loop {
        tokio::select! {
            _ = shutdown.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: scanning now");
                let (tx, _rx) = oneshot::channel();
                let _ = scan_tx.try_send(tx);
            }
        }
    }
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
    }
    Ok(())
}

/// `--once`: converge, scan + report (one scan can never reclaim: that
/// takes two), swap guard; the summary goes to stdout as JSON.
async fn run_once(sh: &Arc<Shared>) -> anyhow::Result<()> {
    let boot = bootstrap::converge(sh).await;
    let sum = scan::run(sh).await;
    println!("{}", serde_json::to_string(&sum)?);
    boot.context("bootstrap")?;
    if let Some(e) = sum.error {
        anyhow::bail!("scan: {e}");
    }
    Ok(())
}

async fn scan_loop(sh: Arc<Shared>, mut requests: mpsc::Receiver<oneshot::Sender<ScanSummary>>) {
    let mut tick = tokio::time::interval(sh.cfg.scan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut waiting = Vec::new();
        tokio::select! {
            _ = tick.tick() => {}
            r = requests.recv() => match r {
                Some(tx) => waiting.push(tx),
                None => return,
            },
            _ = stopped(sh.shutdown.clone()) => return,
        }
        // Requests that queued up meanwhile share this scan.
        while let Ok(tx) = requests.try_recv() {
            waiting.push(tx);
        }
        let sum = scan::run(&sh).await;
        for tx in waiting {
            let _ = tx.send(sum.clone());
        }
    }
}
