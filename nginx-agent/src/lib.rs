//! leengine-nginx-agent: keeps this host's nginx in step with
//! `/slb/{group}/domains/` in etcd (docs/slb.md). nginx itself is run by
//! systemd with `-c {conf-dir}/nginx.conf`; the agent owns that file, the
//! domain files and the lua modules, pushes peers to the local admin
//! endpoint, and reloads by signalling the master.

pub mod admin;
pub mod cli;
pub mod files;
pub mod metrics;
pub mod nginx;
pub mod pusher;
pub mod reconcile;
pub mod shared;
pub mod state;
pub mod status;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use leengine_slb::render::{MainParams, NamesHash};
use leengine_slb::wire;

use crate::cli::Args;
use crate::files::Layout;
use crate::reconcile::{Live, Reconciler, Timing};
use crate::shared::Shared;
use crate::state::Desired;

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM from the moment the agent says it is
    // starting is ours to act on, also while etcd is still waited for.
    let mut shutdown = leengine_cli::Shutdown::install().context("signal handlers")?;
    // Bad TLS settings stop the agent here; only an unreachable etcd is waited for.
    let etcd = args.etcd_auth.config(args.etcd);
    etcd.check()?;
    let host = match args.host {
        Some(h) => h,
        None => nix::unistd::gethostname()
            .context("hostname")?
            .to_string_lossy()
            .into_owned(),
    };
    let layout = Layout {
        conf_dir: args.conf_dir,
        state_dir: args.state_dir,
    };
    let gen = layout
        .prepare()
        .with_context(|| format!("preparing {}", layout.conf_dir.display()))?;
    let applied = layout.read_live().context("reading live domain files")?;
    let secret = layout
        .load_or_create_secret()
        .with_context(|| format!("admin secret {}", layout.admin_secret().display()))?;
    let dump = load_dump(&layout);
    let params = MainParams {
        module_dir: args.module_dir,
        lua_dir: layout.lua_dir(),
        lua_system_dir: args.lua_system_dir,
        domains_dir: layout.domains_link(),
        pid_file: args.pid_file.clone(),
        error_log: args.error_log,
        access_log: args.access_log,
        admin_port: args.admin_port,
        dump_file: layout.dump(),
        secret_file: layout.admin_secret(),
        worker_processes: args.worker_processes,
        user: args.nginx_user,
        shared_dict_size: args.shared_dict_size,
        names_hash: NamesHash::for_files(applied.values().map(String::as_str)),
        lb_metrics: args.lb_metrics,
    };
    // A fresh host gets a main config at once, so nginx can start before
    // etcd is reachable; later changes to it go through nginx -t.
    if !layout.main_conf().exists() {
        files::write_atomic(
            &layout.main_conf(),
            &leengine_slb::render::render_main(&params),
        )
        .context("writing nginx.conf")?;
    }
    tracing::info!(
        group = %args.group, host = %host, domains = applied.len(), routing = ?args.routing,
        listen_address = ?args.listen_address,
        dumped_upstreams = dump.upstreams.len(), dumped_routes = dump.routes.len(),
        "starting"
    );
    let mut shared = Shared::new(
        args.group,
        host,
        Desired::from_dump(dump, args.admin_port, args.routing)
            .with_listen_address(args.listen_address),
    );
    let metrics = match args.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
            shared.metrics_address = args
                .metrics_advertise
                .or_else(|| (!addr.ip().is_unspecified()).then(|| addr.to_string()));
            Some(l)
        }
        None => None,
    };
    let shared = Arc::new(shared);
    if let Some(l) = metrics {
        tokio::spawn(metrics::serve(
            l,
            shared.clone(),
            args.admin_port,
            args.lb_metrics,
        ));
    }
    let admin = admin::Admin {
        port: args.admin_port,
        secret,
    };
    tokio::spawn(pusher::run(shared.clone(), admin.clone(), layout.dump()));
    shared.upstream_changed.notify_one();
    let nginx = nginx::Nginx {
        bin: args.nginx_bin,
        prefix: args.nginx_prefix,
        pid_file: args.pid_file,
        error_log: params.error_log.clone(),
    };
    let timing = Timing {
        debounce: args.debounce,
        retry_refused: args.retry_refused,
        reload_timeout: args.reload_timeout,
    };
    let live = Live { applied, gen };
    let reconciler = Reconciler::new(shared.clone(), layout, nginx, params, admin, live, timing);
    tokio::spawn(reconciler.run());

    let status = StatusTask::default();
    let r = tokio::select! {
        r = follow_etcd(shared, &etcd, args.status_ttl, &status) => r,
        stop = shutdown.recv() => {
            tracing::info!(signal = ?stop, "stopping; nginx keeps serving");
            Ok(())
        }
    };
    status.stop().await;
    r
}

/// The status publisher, stopped on exit so its record goes at once rather
/// than a TTL later.
#[derive(Debug, Default)]
struct StatusTask {
    stop: Arc<tokio::sync::Notify>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl StatusTask {
    fn start(&self, shared: Arc<Shared>, client: etcd_client::Client, ttl: Duration) {
        let stop = self.stop.clone();
        let task = tokio::spawn(status::run(shared, client, ttl, async move {
            stop.notified().await;
        }));
        *self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
    }

    async fn stop(&self) {
        // notify_one keeps a permit when the publisher is not waiting yet.
        self.stop.notify_one();
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

/// Connects (waiting while etcd is unreachable), then publishes status and
/// follows the group's keys.
async fn follow_etcd(
    shared: Arc<Shared>,
    etcd: &leengine_store::EtcdConfig,
    status_ttl: Duration,
    status: &StatusTask,
) -> anyhow::Result<()> {
    let client = loop {
        match leengine_store::connect(etcd).await {
            Ok(c) => break c,
            Err(e @ leengine_store::StoreError::Unavailable { .. }) => {
                tracing::warn!(error = %e, "etcd not reachable; nginx keeps serving the last state");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    status.start(shared.clone(), client.clone(), status_ttl);
    watch::run(shared, client).await;
    Ok(())
}

/// The last pushed state; a corrupt dump is ignored (etcd refills it).
fn load_dump(layout: &Layout) -> wire::State {
    let path = layout.dump();
    match std::fs::read_to_string(&path) {
        Ok(text) => wire::decode_all(&text).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "ignoring corrupt upstream dump");
            wire::State::default()
        }),
        Err(_) => wire::State::default(),
    }
}
