//! Flags (clap).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version = leengine_cli::version!(), about = "Keeps nginx in step with /slb/{group}/ in etcd")]
pub struct Args {
    /// SLB group (nginx cluster) this host serves.
    #[arg(long, env = "LEENGINE_SLB_GROUP")]
    pub group: String,
    /// etcd client URLs, comma separated.
    #[arg(
        long,
        env = "LEENGINE_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd: Vec<String>,
    #[command(flatten)]
    pub etcd_auth: leengine_store::EtcdAuthArgs,
    /// Name in /slb/{group}/agents/; defaults to the hostname.
    #[arg(long)]
    pub host: Option<String>,
    /// Directory the agent owns: nginx.conf, domain files, lua modules.
    #[arg(long, default_value = "/etc/nginx/leengine")]
    pub conf_dir: PathBuf,
    /// Where the last pushed peers are kept (survive restarts).
    #[arg(long, default_value = "/var/lib/leengine-nginx-agent")]
    pub state_dir: PathBuf,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    pub nginx_bin: PathBuf,
    /// nginx `-p` prefix (relative paths, temp directories).
    #[arg(long, default_value = "/etc/nginx/")]
    pub nginx_prefix: PathBuf,
    /// nginx master pid file; written into nginx.conf and signalled on reload.
    #[arg(long, default_value = "/run/nginx.pid")]
    pub pid_file: PathBuf,
    /// This host's own address: domain listens that name no address bind
    /// it (`listen ADDR:PORT`), in both routing modes. Lets several nginx
    /// hosts of a group share a machine (127.0.0.2, 127.0.0.3, ...) and keeps
    /// the host's other addresses free. All addresses when not given.
    #[arg(long, env = "LEENGINE_LISTEN_ADDRESS")]
    pub listen_address: Option<std::net::IpAddr>,
    /// Port of the 127.0.0.1-only admin server inside nginx.
    #[arg(long, default_value_t = 8999)]
    pub admin_port: u16,
    #[arg(long, default_value = "/var/log/nginx/error.log")]
    pub error_log: PathBuf,
    /// Access log; off when not given.
    #[arg(long)]
    pub access_log: Option<PathBuf>,
    /// Directory of ndk_http_module.so and ngx_http_lua_module.so.
    #[arg(long, default_value = "/usr/lib/nginx/modules")]
    pub module_dir: PathBuf,
    /// Directory of resty.core (lua-resty-core).
    #[arg(long, default_value = "/usr/share/lua/5.1")]
    pub lua_system_dir: PathBuf,
    /// nginx worker_processes; `auto` when not given.
    #[arg(long)]
    pub worker_processes: Option<u16>,
    /// User the nginx workers run as (Debian: www-data); nginx's default
    /// (nobody) when not given.
    #[arg(long)]
    pub nginx_user: Option<String>,
    #[arg(long, default_value = "32m")]
    pub shared_dict_size: String,
    /// Quiet time that gathers a burst of config changes into one reload.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,
    /// How often a config refused by nginx -t (or a live config that no
    /// longer passes) is tried again without any etcd change.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub retry_refused: Duration,
    /// How long nginx gets, after a reload, to serve the new generation
    /// before the agent counts the reload as refused and rolls back.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub reload_timeout: Duration,
    /// How domains are served: `lua` (one shared server per listen, routes
    /// in nginx's shared dict, changed without reload; a TLS domain keeps a
    /// small server block for its certificate) or `generated` (a server
    /// block per domain, every change reloads).
    #[arg(long, value_enum, default_value_t = Routing::Lua)]
    pub routing: Routing,
    /// Address of `GET /metrics` for Prometheus; off when not given.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `host:port` Prometheus scrapes, published in the status for core's
    /// service discovery (default: the listen address unless a wildcard).
    #[arg(long, requires = "metrics_listen")]
    pub metrics_advertise: Option<String>,
    /// Count requests per domain in lua (`true`/`false`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub lb_metrics: bool,
    /// Lease TTL of the status key.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub status_ttl: Duration,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Routing {
    #[default]
    Lua,
    Generated,
}

impl Args {
    /// What clap cannot check; refused before anything runs.
    pub fn validate(&self) -> anyhow::Result<()> {
        leengine_slb::model::validate_domain(&self.group).map_err(|_| {
            anyhow::anyhow!(
                "--group {:?} must be a lowercase name (letters, digits, '-')",
                self.group
            )
        })?;
        if let Some(u) = &self.nginx_user {
            if u.is_empty()
                || !u
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                anyhow::bail!("--nginx-user {u:?} is not a user name");
            }
        }
        Ok(())
    }
}
