//! `leengine-node-agent`: runs under systemd on every compute node.
//! See `docs/node-agent.md`.

mod agent;
mod bootstrap;
mod cgroup;
mod collect;
mod config;
mod http;
mod leak;
mod metrics;
mod podview;
mod procfs;
mod record;
mod register;
mod scan;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::agent::{stopped, Shared};
use crate::config::{Args, Config, LogFormat};
use crate::scan::ScanSummary;

fn main() {
    let args = Args::parse();
    let cfg = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leengine-node-agent: {}", chain(&e));
            std::process::exit(2);
        }
    };
    init_logs(cfg.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cfg)) {
        let msg = chain(&e);
        tracing::error!(error = %msg, "agent failed");
        eprintln!("leengine-node-agent: {msg}");
        std::process::exit(1);
    }
}

/// The error and its causes on one line, skipping causes the libraries
/// already spelled out in the message above them.
pub fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        // Some causes (YAML parse errors) draw a multi-line excerpt: its first line says it.
        let full = cause.to_string();
        let text = full.lines().next().unwrap_or_default();
        if out.contains(text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(text);
    }
    out
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => b.json().flatten_event(true).init(),
        LogFormat::Text => b.init(),
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
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
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (scan_tx, scan_rx) = mpsc::channel(16);
    // Bind before anything runs so a taken port fails the start, not later.
    let listener = match listen {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    let mut tasks = vec![
        tokio::spawn(bootstrap::run(sh.clone())),
        tokio::spawn(register::run(sh.clone())),
        tokio::spawn(scan_loop(sh.clone(), scan_rx)),
    ];
    if let Some(l) = listener {
        tracing::info!(addr = %l.local_addr()?, "HTTP endpoint listening");
        tasks.push(tokio::spawn(http::serve(l, sh.clone(), scan_tx.clone())));
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
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
