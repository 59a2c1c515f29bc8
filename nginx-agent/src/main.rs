//! leengine-nginx-agent: keeps this host's nginx in step with
//! `/slb/{group}/domains/` in etcd (docs/slb.md). nginx itself is run by
//! systemd with `-c {conf-dir}/nginx.conf`; the agent owns that file, the
//! domain files and the lua modules, pushes peers to the local admin
//! endpoint, and reloads by signalling the master.

mod admin;
mod files;
mod nginx;
mod pusher;
mod reconcile;
mod shared;
mod state;
mod status;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use leengine_slb::render::MainParams;
use leengine_slb::wire;

use crate::files::Layout;
use crate::reconcile::Reconciler;
use crate::shared::Shared;
use crate::state::Desired;

#[derive(Parser, Debug)]
#[command(version, about = "Keeps nginx in step with /slb/{group}/ in etcd")]
struct Args {
    /// SLB group (nginx cluster) this host serves.
    #[arg(long, env = "LEENGINE_SLB_GROUP")]
    group: String,
    /// etcd client URLs, comma separated.
    #[arg(
        long,
        env = "LEENGINE_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    etcd: Vec<String>,
    #[command(flatten)]
    etcd_auth: leengine_store::EtcdAuthArgs,
    /// Name in /slb/{group}/agents/; defaults to the hostname.
    #[arg(long)]
    host: Option<String>,
    /// Directory the agent owns: nginx.conf, domain files, lua modules.
    #[arg(long, default_value = "/etc/nginx/leengine")]
    conf_dir: PathBuf,
    /// Where the last pushed peers are kept (survive restarts).
    #[arg(long, default_value = "/var/lib/leengine-nginx-agent")]
    state_dir: PathBuf,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx_bin: PathBuf,
    /// nginx `-p` prefix (relative paths, temp directories).
    #[arg(long, default_value = "/etc/nginx/")]
    nginx_prefix: PathBuf,
    /// nginx master pid file; written into nginx.conf and signalled on reload.
    #[arg(long, default_value = "/run/nginx.pid")]
    pid_file: PathBuf,
    /// Port of the 127.0.0.1-only admin server inside nginx.
    #[arg(long, default_value_t = 8999)]
    admin_port: u16,
    #[arg(long, default_value = "/var/log/nginx/error.log")]
    error_log: PathBuf,
    /// Access log; off when not given.
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// Directory of ndk_http_module.so and ngx_http_lua_module.so.
    #[arg(long, default_value = "/usr/lib/nginx/modules")]
    module_dir: PathBuf,
    /// Directory of resty.core (lua-resty-core).
    #[arg(long, default_value = "/usr/share/lua/5.1")]
    lua_system_dir: PathBuf,
    /// nginx worker_processes; `auto` when not given.
    #[arg(long)]
    worker_processes: Option<u16>,
    /// User the nginx workers run as (Debian: www-data); nginx's default
    /// (nobody) when not given.
    #[arg(long)]
    nginx_user: Option<String>,
    #[arg(long, default_value = "32m")]
    shared_dict_size: String,
    /// Quiet time that gathers a burst of config changes into one reload.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    debounce: Duration,
    /// How often a config refused by nginx -t (or a live config that no
    /// longer passes) is tried again without any etcd change.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    retry_refused: Duration,
    /// How long nginx gets, after a reload, to serve the new generation
    /// before the agent counts the reload as refused and rolls back.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    reload_timeout: Duration,
    /// Lease TTL of the status key.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    status_ttl: Duration,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(),
        // One line: clap's message without its usage block.
        Err(e) => {
            let text = e.to_string();
            let msg: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            fail(&anyhow::anyhow!(
                "{}",
                msg.join(" ").trim_start_matches("error: ")
            ))
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => fail(&anyhow::anyhow!("tokio runtime: {e}")),
    };
    if let Err(e) = rt.block_on(run(args)) {
        fail(&e);
    }
}

fn fail(e: &anyhow::Error) -> ! {
    eprintln!("leengine-nginx-agent: {e:#}");
    std::process::exit(1);
}

async fn run(args: Args) -> anyhow::Result<()> {
    leengine_slb::model::validate_domain(&args.group).map_err(|_| {
        anyhow::anyhow!(
            "--group {:?} must be a lowercase name (letters, digits, '-')",
            args.group
        )
    })?;
    if let Some(u) = &args.nginx_user {
        if u.is_empty()
            || !u
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            anyhow::bail!("--nginx-user {u:?} is not a user name");
        }
    }
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
        group = %args.group, host = %host, domains = applied.len(), dumped_upstreams = dump.len(),
        "starting"
    );
    let shared = Arc::new(Shared::new(
        args.group,
        host,
        Desired::from_dump(dump, args.admin_port),
    ));
    let admin = admin::Admin {
        port: args.admin_port,
        secret,
    };
    tokio::spawn(pusher::run(shared.clone(), admin.clone(), layout.dump()));
    shared.upstream_changed.notify_one();
    let reconciler = Reconciler {
        shared: shared.clone(),
        layout,
        nginx: nginx::Nginx {
            bin: args.nginx_bin,
            prefix: args.nginx_prefix,
            pid_file: args.pid_file,
            error_log: params.error_log.clone(),
        },
        params,
        debounce: args.debounce,
        applied,
        gen,
        failed: BTreeMap::new(),
        stuck: false,
        retry_refused: args.retry_refused,
        admin,
        reload_timeout: args.reload_timeout,
        token: format!(
            "{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_millis()
        ),
    };
    tokio::spawn(reconciler.run());

    let client = loop {
        match leengine_store::connect(&etcd).await {
            Ok(c) => break c,
            Err(e @ leengine_store::StoreError::Unavailable { .. }) => {
                tracing::warn!(error = %e, "etcd not reachable; nginx keeps serving the last state");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let status = tokio::spawn(status::run(
        shared.clone(),
        client.clone(),
        args.status_ttl,
        async {
            let _ = stopped.await;
        },
    ));
    let r = tokio::select! {
        () = watch::run(shared, client) => Ok(()),
        r = tokio::signal::ctrl_c() => r.context("signal handler"),
    };
    // The status record goes at once rather than a TTL later.
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), status).await;
    r
}

/// The last pushed peers; a corrupt dump is ignored (etcd refills it).
fn load_dump(layout: &Layout) -> BTreeMap<String, leengine_slb::Upstream> {
    let path = layout.dump();
    match std::fs::read_to_string(&path) {
        Ok(text) => wire::decode_all(&text).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "ignoring corrupt upstream dump");
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}
