//! LeEngine's etcd contract.
//!
//! [`keys`] is the only module in the workspace that spells out etcd keys;
//! every other crate asks it for them. [`connect`] builds a client with the
//! timeouts and TLS settings every binary uses, and [`StoreError`] tells
//! "etcd is unreachable, try later" apart from "the data is wrong".

pub mod keys;

pub use keys::Keys;

use std::time::Duration;

/// How a binary reaches etcd.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix; defaults to [`keys::DEFAULT_PREFIX`].
    #[serde(default)]
    pub prefix: Option<String>,
    /// PEM file of the CA that signed etcd's server certificate.
    #[serde(default)]
    pub ca: Option<String>,
    /// PEM client certificate (mutual TLS).
    #[serde(default)]
    pub cert: Option<String>,
    /// PEM client key (mutual TLS).
    #[serde(default)]
    pub key: Option<String>,
}

impl EtcdConfig {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    pub fn keys(&self) -> Keys {
        Keys::new(self.prefix.as_deref().unwrap_or(keys::DEFAULT_PREFIX))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd could not be reached or did not answer in time.
    #[error("etcd unavailable at {endpoints}: {source}")]
    Unavailable {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    /// A TLS file could not be read.
    #[error("cannot read etcd TLS file {path}: {source}")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// No endpoint was configured.
    #[error("no etcd endpoints configured")]
    NoEndpoints,
}

/// Deadline for dialing etcd and for each request: a CNI ADD must fail fast
/// with "try again later" instead of hanging kubelet's sandbox creation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to etcd with the project-wide connect and request timeouts.
pub async fn connect(cfg: &EtcdConfig) -> Result<etcd_client::Client, StoreError> {
    connect_with_timeout(cfg, DEFAULT_TIMEOUT).await
}

pub async fn connect_with_timeout(
    cfg: &EtcdConfig,
    timeout: Duration,
) -> Result<etcd_client::Client, StoreError> {
    if cfg.endpoints.is_empty() {
        return Err(StoreError::NoEndpoints);
    }
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some(tls) = tls_options(cfg)? {
        opts = opts.with_tls(tls);
    }
    let endpoints = cfg.endpoints.join(",");
    let client = etcd_client::Client::connect(&cfg.endpoints, Some(opts))
        .await
        .map_err(|source| StoreError::Unavailable {
            endpoints: endpoints.clone(),
            source,
        })?;
    Ok(client)
}

fn tls_options(cfg: &EtcdConfig) -> Result<Option<etcd_client::TlsOptions>, StoreError> {
    if cfg.ca.is_none() && cfg.cert.is_none() {
        return Ok(None);
    }
    let read = |path: &String| {
        std::fs::read(path).map_err(|source| StoreError::TlsFile {
            path: path.clone(),
            source,
        })
    };
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &cfg.ca {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
        tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

/// True when an etcd error means "not reachable / not answering" (retry
/// later), as opposed to a request etcd understood and refused.
pub fn is_unavailable(err: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match err {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
        ),
        _ => false,
    }
}

/// Watches every key under `prefix` from revision `from` on (inclusive),
/// with progress notifications. Callers read the prefix first and pass
/// `read_revision + 1`, so no event between the read and the watch is lost.
pub async fn watch_prefix_from(
    client: &mut etcd_client::Client,
    prefix: &str,
    from: i64,
) -> Result<etcd_client::WatchStream, etcd_client::Error> {
    let opts = etcd_client::WatchOptions::new()
        .with_prefix()
        .with_start_revision(from)
        .with_progress_notify();
    client.watch(prefix, Some(opts)).await
}
