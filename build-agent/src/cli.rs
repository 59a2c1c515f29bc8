//! Flags (clap) and their translation into the agent's [`Settings`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use leengine_build::validate::Policy;

use crate::agent::Settings;

#[derive(Debug, Parser)]
#[command(name = "leengine-build-agent", version = leengine_cli::version!(), about)]
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
    /// The platform registry `host[:port]`: tasks pushing elsewhere are refused.
    #[arg(long, env = "LEENGINE_BUILD_REGISTRY")]
    pub registry: String,
    /// Git server tasks may clone from, `scheme://host[:port]`; repeatable
    /// or comma-separated (the same list as the core's --build-git-host).
    #[arg(
        long = "git-host",
        env = "LEENGINE_BUILD_GIT_HOSTS",
        value_delimiter = ',',
        required = true
    )]
    pub git_hosts: Vec<String>,
    /// Clone credentials `{name}.json` (`{"groups": [..], "username": ..,
    /// "password": ..}`) a config may name as `repoCredential`: usable by
    /// configs whose image is in one of `groups`.
    #[arg(long, default_value = "/etc/leengine-build/git-credentials")]
    pub git_credentials_dir: PathBuf,
    /// Docker network of compile containers and Dockerfile RUN steps: they
    /// run user code. `none` (no network), or a network the operator
    /// restricted to the Maven mirror; `host` and `container:…` are refused.
    #[arg(long, default_value = "none", value_parser = parse_network)]
    pub compile_network: String,
    /// CPUs each compile container and build may use.
    #[arg(long, default_value_t = 2.0)]
    pub cpus: f64,
    /// Memory limit of each compile container and build (bytes, or with a
    /// k/m/g suffix, powers of 1024); swap is not added on top.
    #[arg(long, default_value = "4g", value_parser = parse_bytes)]
    pub memory: i64,
    /// Process limit of each compile container.
    #[arg(long, default_value_t = 4096)]
    pub pids_limit: i64,
    /// Upper bound for each of clone, compile, build and push.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub stage_timeout: Duration,
    /// Full logs on disk older than this are deleted.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub log_retention: Duration,
}

fn parse_network(s: &str) -> Result<String, String> {
    if s == "host" || s.starts_with("container:") {
        return Err(format!(
            "{s:?} would give user code the host's (or another container's) network, \
             from which etcd and the core are reachable"
        ));
    }
    if s.is_empty() {
        return Err("the compile network must not be empty".into());
    }
    Ok(s.to_string())
}

fn parse_bytes(s: &str) -> Result<i64, String> {
    let lower = s.to_ascii_lowercase();
    let (num, shift) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 10),
        Some(b'm') => (&lower[..lower.len() - 1], 20),
        Some(b'g') => (&lower[..lower.len() - 1], 30),
        _ => (lower.as_str(), 0),
    };
    num.parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n >= 6 * 1024 * 1024)
        .ok_or_else(|| {
            format!("{s:?} must be a byte count of at least 6m (Docker's minimum), e.g. 4g")
        })
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

impl Args {
    /// Checks what clap cannot and builds the agent's settings.
    pub fn settings(self) -> anyhow::Result<Settings> {
        leengine_build::validate::name("--id", &self.id)?;
        anyhow::ensure!(self.capacity >= 1, "--capacity must be at least 1");
        anyhow::ensure!(
            self.ttl >= Duration::from_secs(2),
            "--ttl must be at least 2s"
        );
        anyhow::ensure!(
            self.cpus > 0.0 && self.cpus.is_finite(),
            "--cpus must be a positive number"
        );
        anyhow::ensure!(self.pids_limit >= 16, "--pids-limit must be at least 16");
        #[allow(
            clippy::cast_possible_truncation,
            reason = "positive and finite (checked above); a float-to-int `as` saturates"
        )]
        let nano_cpus = (self.cpus * 1e9).round() as i64;
        let mut etcd = self.etcd_auth.config(self.etcd);
        etcd.prefix = Some(self.prefix);
        Ok(Settings {
            policy: Policy::new(Some(self.registry), &self.git_hosts)?,
            id: self.id,
            etcd,
            docker: self.docker,
            work_dir: self.work_dir,
            cache_dir: self.cache_dir,
            capacity: self.capacity,
            ttl: self.ttl,
            labels: self.labels.into_iter().collect(),
            compile_network: self.compile_network,
            limits: crate::docker::Limits {
                nano_cpus,
                memory: self.memory,
                pids: self.pids_limit,
            },
            git_credentials_dir: self.git_credentials_dir,
            stage_timeout: self.stage_timeout,
            log_retention: self.log_retention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_networks() {
        assert_eq!(parse_bytes("4g"), Ok(4 << 30));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("8388608"), Ok(8 << 20));
        assert!(parse_bytes("1k").is_err());
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_network("none").as_deref(), Ok("none"));
        assert_eq!(parse_network("maven-only").as_deref(), Ok("maven-only"));
        assert!(parse_network("host").is_err());
        assert!(parse_network("container:etcd").is_err());
    }
}
