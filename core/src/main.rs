//! `leengine-core`: serves the LeEngine API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use leengine_build::validate::Policy;
use leengine_core::builds::BuildSettings;
use leengine_core::cells::CellSettings;
use leengine_core::deploy::{reconcile, DeploySettings};
use leengine_core::monitor::MonitorSettings;
use leengine_core::quota::Quota;
use leengine_core::registry::RegistrySettings;
use leengine_core::server::{self, Core, Settings};
use leengine_core::store::Db;
use leengine_core::users;
use leengine_core::users::throttle::Limits;

#[derive(Parser, Debug)]
#[command(
    name = "leengine-core",
    version = leengine_cli::version!(),
    about = "LeEngine central API"
)]
struct Args {
    /// Address to serve on.
    #[arg(long, env = "LEENGINE_CORE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// etcd client URLs, comma-separated.
    #[arg(long, env = "LEENGINE_ETCD", value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    #[command(flatten)]
    etcd_auth: leengine_store::EtcdAuthArgs,
    /// etcd key prefix.
    #[arg(long, env = "LEENGINE_PREFIX")]
    prefix: Option<String>,
    /// Administrator account created at start-up if missing.
    #[arg(long, env = "LEENGINE_ADMIN_USER", default_value = "admin")]
    admin_user: String,
    /// File holding the administrator's initial password.
    #[arg(long, env = "LEENGINE_ADMIN_PASSWORD_FILE")]
    admin_password_file: Option<PathBuf>,
    /// Apps a user may create unless an admin set their quota.
    #[arg(long, default_value_t = 20)]
    default_max_apps: u32,
    /// Containers (replicas over the user's apps) allowed by default.
    #[arg(long, default_value_t = 200)]
    default_max_containers: u32,
    /// CPU (a Kubernetes quantity: cores or millicores, e.g. 100, 500m) the
    /// requests × replicas of a user's apps may reserve by default.
    #[arg(long, default_value = "100", value_parser = cpu_quantity)]
    default_max_cpu: u64,
    /// Memory (a Kubernetes quantity, e.g. 200Gi) the requests × replicas
    /// of a user's apps may reserve by default.
    #[arg(long, default_value = "200Gi", value_parser = memory_quantity)]
    default_max_memory: u64,
    /// Lifetime of login tokens.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    login_ttl: Duration,
    /// Registry token service name (the registry's auth.token.service).
    #[arg(long, requires = "token_key")]
    token_service: Option<String>,
    /// Registry token issuer (the registry's auth.token.issuer).
    #[arg(long, default_value = "leengine-core")]
    token_issuer: String,
    /// P-256 private key (PEM) that signs registry tokens.
    #[arg(long, requires = "token_service")]
    token_key: Option<PathBuf>,
    /// Certificate of that key (the registry's rootcertbundle), checked at start-up.
    #[arg(long)]
    token_cert: Option<PathBuf>,
    /// Registry token lifetime.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
    /// File holding the bearer secret the registry sends with notifications.
    #[arg(long)]
    notify_secret_file: Option<PathBuf>,
    /// The platform registry `host[:port]`: the only registry build
    /// configs may push to (without it no config is accepted).
    #[arg(long, env = "LEENGINE_BUILD_REGISTRY_SERVER")]
    build_registry_server: Option<String>,
    /// Password checks (login, Basic auth) one client IP may make at once.
    #[arg(long, default_value_t = Limits::default().client_burst)]
    auth_client_burst: u32,
    /// Password checks a client IP regains per minute (0: no per-client limit).
    #[arg(long, default_value_t = Limits::default().client_per_minute)]
    auth_client_per_minute: u32,
    /// Failed password checks one user name may take at once.
    #[arg(long, default_value_t = Limits::default().user_burst)]
    auth_user_burst: u32,
    /// Failed password checks a user name regains per minute (0: no per-user limit).
    #[arg(long, default_value_t = Limits::default().user_per_minute)]
    auth_user_per_minute: u32,
    /// Password hashes computed at the same time (default: the number of CPUs).
    #[arg(long)]
    hash_concurrency: Option<usize>,
    /// Git server builds may clone from, `scheme://host[:port]` (https,
    /// http, ssh, git); repeatable or comma-separated.
    #[arg(
        long = "build-git-host",
        env = "LEENGINE_BUILD_GIT_HOSTS",
        value_delimiter = ','
    )]
    build_git_hosts: Vec<String>,
    /// Lifetime of each build task's push token (must cover queue and build).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    build_push_token_ttl: Duration,
    /// Directory of the Cells' kubeconfigs (a Cell names its file).
    #[arg(
        long,
        env = "LEENGINE_CELL_CREDENTIALS_DIR",
        default_value = "/etc/leengine/cells"
    )]
    cell_credentials_dir: PathBuf,
    /// Least number of Cells an app runs in (capped by the Region's size).
    #[arg(long, default_value_t = 2)]
    min_app_cells: usize,
    /// Full reconcile of every Cell at least this often.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    reconcile_resync: Duration,
    /// How long a drain waits for discovery's acknowledgement.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// How often each app's registry robot gets a new pull secret.
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    robot_rotation: Duration,
    /// How often the autoscaler reads the apps' targets and decides.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    autoscale_period: Duration,
    /// Serve the API only; never campaign to run the reconciler.
    #[arg(long)]
    no_reconciler: bool,
    /// Directory of the built web console (`npm run build` in console/),
    /// served at `/` and `/boss`.
    #[arg(
        long,
        env = "LEENGINE_CONSOLE_DIR",
        default_value = "/usr/share/leengine-core/console"
    )]
    console_dir: PathBuf,
    /// Serve no web console (the API only).
    #[arg(long, conflicts_with = "console_dir")]
    no_console: bool,
    /// Prometheus `host:port` the read API queries and alert rules reload
    /// (docs/monitoring.md).
    #[arg(long, env = "LEENGINE_PROMETHEUS")]
    prometheus: Option<String>,
    /// Rule file core renders the apps' alert rules into (in Prometheus'
    /// `rule_files`); needs --prometheus.
    #[arg(long, requires = "prometheus")]
    alert_rules_file: Option<PathBuf>,
    /// How often the rule file is re-rendered from etcd (other replicas' edits).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    alert_rules_resync: Duration,
    /// File holding the bearer secret Alertmanager's webhook sends.
    #[arg(long)]
    alert_webhook_secret_file: Option<PathBuf>,
    /// SMTP relay `host:port` for alert e-mail.
    #[arg(long)]
    smtp: Option<String>,
    /// Sender address of alert e-mail.
    #[arg(long, default_value = "leengine@localhost")]
    mail_from: String,
}

fn read_secret(path: &PathBuf) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!s.is_empty(), "{} is empty", path.display());
    Ok(s)
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    let registry = match (&args.token_service, &args.token_key) {
        (Some(service), Some(key)) => Some(RegistrySettings {
            service: service.clone(),
            issuer: args.token_issuer.clone(),
            key_pem: read_secret(key)?,
            cert_pem: args.token_cert.as_ref().map(read_secret).transpose()?,
            ttl: args.token_ttl,
            notify_secret: args
                .notify_secret_file
                .as_ref()
                .map(read_secret)
                .transpose()?,
        }),
        _ => None,
    };
    let builds = BuildSettings {
        policy: Policy::new(args.build_registry_server.clone(), &args.build_git_hosts)?,
        push_token_ttl: args.build_push_token_ttl,
    };
    let defaults = Limits::default();
    let limits = Limits {
        client_burst: args.auth_client_burst,
        client_per_minute: args.auth_client_per_minute,
        user_burst: args.auth_user_burst,
        user_per_minute: args.auth_user_per_minute,
        hash_concurrency: args.hash_concurrency.unwrap_or(defaults.hash_concurrency),
    };
    anyhow::ensure!(
        limits.hash_concurrency > 0,
        "--hash-concurrency must be at least 1"
    );
    Ok(Settings {
        limits,
        builds,
        default_quota: Quota {
            max_apps: args.default_max_apps,
            max_containers: args.default_max_containers,
            max_cpu_millis: Some(args.default_max_cpu),
            max_memory_bytes: Some(args.default_max_memory),
        },
        login_ttl: args.login_ttl,
        registry,
        cells: CellSettings {
            credentials_dir: args.cell_credentials_dir.clone(),
            min_app_cells: args.min_app_cells,
        },
        deploy: DeploySettings {
            resync: args.reconcile_resync,
            drain_timeout: args.drain_timeout,
            robot_rotation: args.robot_rotation,
            autoscale_period: args.autoscale_period,
        },
        console_dir: (!args.no_console).then(|| args.console_dir.clone()),
        monitor: MonitorSettings {
            prometheus: args.prometheus.clone(),
            rules_file: args.alert_rules_file.clone(),
            webhook_secret: args
                .alert_webhook_secret_file
                .as_ref()
                .map(read_secret)
                .transpose()?,
            smtp: args.smtp.clone(),
            mail_from: args.mail_from.clone(),
        },
    })
}

const BIN: &str = "leengine-core";

fn main() -> std::process::ExitCode {
    let args: Args = match leengine_cli::parse(BIN) {
        Ok(a) => a,
        Err(code) => return code,
    };
    leengine_cli::Logs::default().init();
    let outcome = leengine_cli::block_on(None, run(args))
        .and_then(|r| r)
        .map(|()| leengine_cli::Exit::Ok);
    leengine_cli::finish(BIN, outcome)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let settings = settings(&args)?;
    let mut cfg = args.etcd_auth.config(args.etcd.clone());
    cfg.prefix = args.prefix.clone();
    let etcd = leengine_store::connect(&cfg).await?;
    let db = Db::new(etcd, cfg.keys());
    if let Some(path) = &args.admin_password_file {
        let password = read_secret(path)?;
        let created = users::bootstrap_admin(&db, &args.admin_user, &password)
            .await
            .map_err(|e| anyhow::anyhow!("bootstrapping admin {}: {e}", args.admin_user))?;
        tracing::info!(user = %args.admin_user, created, "admin account checked");
    }
    let core = Core::new(db, settings).map_err(|e| anyhow::anyhow!("{}", e.detail))?;
    if let Some(r) = &core.registry {
        tracing::info!(kid = r.kid(), "registry token server enabled");
    }
    server::spawn_background(&core);
    if !args.no_reconciler {
        tokio::spawn(reconcile::run(core.clone()));
    }
    if core.settings.monitor.rules_file.is_some() {
        tokio::spawn(leengine_core::monitor::alerts::sync_loop(
            core.clone(),
            args.alert_rules_resync,
        ));
    }
    let mut shutdown = leengine_cli::Shutdown::install().context("signal handlers")?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "serving");
    // Connect info gives the throttle of password checks the peer address.
    let app = server::app(core).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let stop = shutdown.recv().await;
            tracing::info!(signal = ?stop, "stopping");
        })
        .await?;
    Ok(())
}

fn cpu_quantity(q: &str) -> Result<u64, String> {
    leengine_core::quantity::cpu_millis(q)
        .ok_or_else(|| format!("{q:?} is not a CPU quantity (e.g. 100, 500m)"))
}

fn memory_quantity(q: &str) -> Result<u64, String> {
    leengine_core::quantity::memory_bytes(q)
        .ok_or_else(|| format!("{q:?} is not a memory quantity (e.g. 200Gi, 512Mi)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_flags_become_the_farm_policy() {
        let base = ["leengine-core", "--etcd", "http://127.0.0.1:2379"];
        let args = Args::try_parse_from(base.iter().copied().chain([
            "--build-registry-server",
            "127.0.0.1:5000",
            "--build-git-host",
            "https://gitlab.example,ssh://gitlab.example",
            "--build-push-token-ttl",
            "20m",
        ]))
        .unwrap();
        let b = settings(&args).unwrap().builds;
        assert_eq!(b.policy.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(b.policy.git_hosts.len(), 2);
        assert_eq!(b.push_token_ttl, Duration::from_secs(1200));
        let none = Args::try_parse_from(base).unwrap();
        assert_eq!(settings(&none).unwrap().builds.policy, Policy::default());
        let bad =
            Args::try_parse_from(base.iter().copied().chain(["--build-git-host", "/srv/git"]))
                .unwrap();
        assert!(settings(&bad).is_err(), "a local path is not a git host");
        // The long-lived push password is gone for good.
        assert!(
            Args::try_parse_from(base.iter().copied().chain(["--build-registry-user", "ci"]))
                .is_err()
        );
    }

    #[test]
    fn console_flags() {
        let base = ["leengine-core", "--etcd", "http://127.0.0.1:2379"];
        let dir = |extra: &[&str]| {
            let args = Args::try_parse_from(base.iter().chain(extra)).unwrap();
            settings(&args).unwrap().console_dir
        };
        assert_eq!(
            dir(&[]),
            Some(PathBuf::from("/usr/share/leengine-core/console"))
        );
        assert_eq!(
            dir(&["--console-dir", "/srv/console"]),
            Some(PathBuf::from("/srv/console"))
        );
        assert_eq!(dir(&["--no-console"]), None);
        let both = ["--no-console", "--console-dir", "/srv/console"];
        assert!(Args::try_parse_from(base.iter().chain(&both)).is_err());
    }

    #[test]
    fn auth_limit_flags() {
        let base = ["leengine-core", "--etcd", "http://127.0.0.1:2379"];
        let none = Args::try_parse_from(base).unwrap();
        assert_eq!(settings(&none).unwrap().limits, Limits::default());
        let args = Args::try_parse_from(base.iter().copied().chain([
            "--auth-client-burst",
            "5",
            "--auth-client-per-minute",
            "0",
            "--auth-user-burst",
            "3",
            "--auth-user-per-minute",
            "2",
            "--hash-concurrency",
            "1",
        ]))
        .unwrap();
        let l = settings(&args).unwrap().limits;
        assert_eq!(
            (
                l.client_burst,
                l.client_per_minute,
                l.user_burst,
                l.user_per_minute,
                l.hash_concurrency
            ),
            (5, 0, 3, 2, 1)
        );
        let zero = Args::try_parse_from(base.iter().copied().chain(["--hash-concurrency", "0"]));
        assert!(settings(&zero.unwrap()).is_err());
    }
}
