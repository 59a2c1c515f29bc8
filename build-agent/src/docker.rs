//! Compile, build and push through the Docker Engine API.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, ListContainersOptions, LogsOptions,
    PushImageOptions, RemoveContainerOptions, RemoveImageOptions,
};
use bollard::Docker;
use futures::StreamExt;
use leengine_build::PushAuth;

use crate::report::LogSink;

pub const LABEL_BUILDER: &str = "leengine.build.builder";
pub const LABEL_CONFIG: &str = "leengine.build.config";
pub const LABEL_RUN: &str = "leengine.build.run";

/// Long builds stream for a long time; our own stage timeout is the bound.
const CLIENT_TIMEOUT_SECS: u64 = 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The Docker API refused or failed a request.
    #[error("{what}: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    /// The compile script exited non-zero.
    #[error("compile script exited with status {0}")]
    CompileExit(i64),
    /// The task's push token expired before the push (raise the core's
    /// --build-push-token-ttl if builds queue that long).
    #[error("the push token expired at {0}; trigger the build again")]
    TokenExpired(chrono::DateTime<chrono::Utc>),
    /// Reading the build context back failed.
    #[error("cannot read build context: {0}")]
    Context(#[source] std::io::Error),
}

fn api(what: &'static str) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    move |source| DockerError::Api { what, source }
}

pub async fn connect(addr: &str) -> anyhow::Result<Docker> {
    let path = addr.strip_prefix("unix://").ok_or_else(|| {
        anyhow::anyhow!("--docker {addr:?}: only unix:///path/to/docker.sock is supported")
    })?;
    let docker = Docker::connect_with_unix(path, CLIENT_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        .map_err(|e| anyhow::anyhow!("--docker {addr}: {e}"))?;
    // dockerd refuses clients newer than itself; agree on its version.
    docker
        .negotiate_version()
        .await
        .map_err(|e| anyhow::anyhow!("docker at {addr} does not answer: {e}"))
}

/// Resource limits of everything that runs user code (compile containers,
/// Dockerfile RUN steps): one build must not starve the host or its
/// neighbours.
#[derive(Clone, Debug)]
pub struct Limits {
    pub nano_cpus: i64,
    /// Bytes; swap is set equal, i.e. none on top.
    pub memory: i64,
    pub pids: i64,
}

#[derive(Debug)]
pub struct CompileJob<'a> {
    pub name: String,
    pub image: &'a str,
    pub script: &'a str,
    pub src: &'a Path,
    pub cache: &'a Path,
    pub cache_mount: &'a str,
    pub network: &'a str,
    pub limits: &'a Limits,
    pub labels: HashMap<String, String>,
}

/// Runs the compile script in a container with the checkout at /workspace
/// and the config's cache at `cache_mount`; streams its output to the log.
/// The caller removes the container (also when this fails midway).
pub async fn compile(
    docker: &Docker,
    job: &CompileJob<'_>,
    log: &LogSink,
) -> Result<(), DockerError> {
    let body = ContainerCreateBody {
        image: Some(job.image.to_string()),
        cmd: Some(vec!["/bin/sh".into(), job.script.to_string()]),
        working_dir: Some("/workspace".into()),
        env: Some(vec![format!("LEENGINE_CACHE={}", job.cache_mount)]),
        labels: Some(job.labels.clone()),
        host_config: Some(HostConfig {
            binds: Some(vec![
                format!("{}:/workspace", job.src.display()),
                format!("{}:{}", job.cache.display(), job.cache_mount),
            ]),
            network_mode: Some(job.network.to_string()),
            nano_cpus: Some(job.limits.nano_cpus),
            memory: Some(job.limits.memory),
            memory_swap: Some(job.limits.memory),
            pids_limit: Some(job.limits.pids),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptions {
        name: Some(job.name.clone()),
        ..Default::default()
    };
    docker
        .create_container(Some(opts), body)
        .await
        .map_err(api("create compile container"))?;
    docker
        .start_container(&job.name, None)
        .await
        .map_err(api("start compile container"))?;
    let mut logs = docker.logs(
        &job.name,
        Some(LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        }),
    );
    while let Some(chunk) = logs.next().await {
        match chunk {
            Ok(out) => log.write(&out.to_string()),
            Err(e) => {
                log.write(&format!("(log stream ended: {e})"));
                break;
            }
        }
    }
    let mut wait = docker.wait_container(&job.name, None);
    match wait.next().await {
        Some(Ok(r)) if r.status_code == 0 => Ok(()),
        Some(Ok(r)) => Err(DockerError::CompileExit(r.status_code)),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
            Err(DockerError::CompileExit(code))
        }
        Some(Err(e)) => Err(api("wait for compile container")(e)),
        None => Err(DockerError::CompileExit(-1)),
    }
}

pub async fn remove_container(docker: &Docker, name: &str) {
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(name, Some(opts)).await {
        Ok(()) => {}
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => tracing::warn!(container = name, error = %e, "cannot remove container"),
    }
}

/// Containers a dead incarnation of this builder left behind.
pub async fn remove_builder_containers(docker: &Docker, builder: &str) {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_BUILDER}={builder}")],
    )]);
    let opts = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    match docker.list_containers(Some(opts)).await {
        Ok(list) => {
            for c in list {
                if let Some(id) = c.id {
                    tracing::info!(container = %id, "removing leftover build container");
                    remove_container(docker, &id).await;
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list leftover build containers"),
    }
}

/// Image ids created while building, for clean-up of a failed build.
#[derive(Default, Debug)]
pub struct BuildTrace {
    pub layers: Vec<String>,
}

/// Builds `reference` from the context tar. The classic builder prints
/// ` ---> <id>` for every step; those ids let a failed build's untagged
/// layers be removed afterwards.
#[derive(Debug)]
pub struct BuildJob<'a> {
    pub context: &'a Path,
    pub dockerfile: &'a str,
    pub reference: &'a str,
    pub labels: HashMap<String, String>,
    /// RUN steps run user code like the compile step does.
    pub network: &'a str,
    pub limits: &'a Limits,
}

pub async fn build(
    docker: &Docker,
    job: BuildJob<'_>,
    trace: &mut BuildTrace,
    log: &LogSink,
) -> Result<(), DockerError> {
    let BuildJob {
        context,
        dockerfile,
        reference,
        labels,
        network,
        limits,
    } = job;
    let bytes = tokio::fs::read(context)
        .await
        .map_err(DockerError::Context)?;
    // The classic builder's API fields are 32-bit: memory is capped at
    // 2 GiB - 1 there; it has no pids limit.
    let memory = i32::try_from(limits.memory).unwrap_or(i32::MAX);
    let opts = BuildImageOptions {
        dockerfile: dockerfile.to_string(),
        t: Some(reference.to_string()),
        rm: true,
        forcerm: true,
        labels: Some(labels),
        networkmode: Some(network.to_string()),
        memory: Some(memory),
        memswap: Some(memory),
        cpuperiod: Some(CPU_PERIOD_US),
        cpuquota: Some(
            i32::try_from(limits.nano_cpus * i64::from(CPU_PERIOD_US) / 1_000_000_000)
                .unwrap_or(i32::MAX),
        ),
        ..Default::default()
    };
    let mut stream = docker.build_image(opts, None, Some(bollard::body_full(bytes.into())));
    while let Some(item) = stream.next().await {
        let info = item.map_err(api("docker build"))?;
        if let Some(text) = info.stream {
            for line in text.lines() {
                if let Some(id) = line.trim().strip_prefix("---> ") {
                    let id = id.trim();
                    if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                        trace.layers.push(id.to_string());
                    }
                }
            }
            log.write(&text);
        }
    }
    Ok(())
}

/// CFS period of builds: the quota is `cpus × period`.
const CPU_PERIOD_US: i32 = 100_000;

/// Pushes with the task's scoped token, which dockerd hands to the registry
/// as the bearer token as it is (`registrytoken`), without a token request.
pub async fn push(
    docker: &Docker,
    image: &str,
    tag: &str,
    auth: Option<&PushAuth>,
    log: &LogSink,
) -> Result<(), DockerError> {
    if let Some(a) = auth.filter(|a| a.expires_at <= chrono::Utc::now()) {
        return Err(DockerError::TokenExpired(a.expires_at));
    }
    let creds = auth.map(|a| bollard::auth::DockerCredentials {
        registrytoken: Some(a.token.clone()),
        serveraddress: Some(a.server.clone()),
        ..Default::default()
    });
    let opts = PushImageOptions {
        tag: Some(tag.to_string()),
        ..Default::default()
    };
    let mut stream = docker.push_image(image, Some(opts), creds);
    let mut last = String::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(api("docker push"))?;
        if let Some(status) = info.status {
            // Progress lines repeat per chunk; keep one line per change.
            if status != last && !status.starts_with("Pushing") && !status.starts_with("Waiting") {
                log.write(&status);
                last = status;
            }
        }
    }
    Ok(())
}

/// Removes the built tag and the untagged layers a failed build left.
/// Tagged images (base images) are never removed.
pub async fn remove_build_images(docker: &Docker, reference: &str, trace: &BuildTrace) {
    let opts = || RemoveImageOptions {
        force: false,
        noprune: false,
        ..Default::default()
    };
    match docker.remove_image(reference, Some(opts()), None).await {
        Ok(_)
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => tracing::warn!(image = reference, error = %e, "cannot remove built image"),
    }
    for id in trace.layers.iter().rev() {
        let untagged = match docker.inspect_image(id).await {
            Ok(img) => img.repo_tags.unwrap_or_default().is_empty(),
            Err(_) => false, // already gone with its child
        };
        if untagged {
            if let Err(e) = docker.remove_image(id, Some(opts()), None).await {
                tracing::debug!(image = %id, error = %e, "layer kept");
            }
        }
    }
}
