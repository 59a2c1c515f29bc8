//! LeEngine's etcd contract.
//!
//! [`keys`] is the only module in the workspace that spells out etcd keys;
//! every other crate asks it for them, and it also says which key ranges each
//! component may touch ([`keys::Component`], [`Keys::grants`]). [`connect`]
//! builds a client with the timeouts, TLS and authentication settings every
//! binary takes ([`EtcdAuthArgs`]), and [`StoreError`] tells "etcd is
//! unreachable, try later" apart from "the settings or data are wrong".
//!
//! The mechanisms every component shares, each in one place:
//! - [`record`]: typed JSON records with their revisions, the ops and
//!   compares of guarded transactions, commits with a typed outcome;
//! - [`retry`]: the one optimistic-retry loop and its budgets;
//! - [`lease`]: a record under a kept-alive lease (registrations, status,
//!   leader election);
//! - [`follow`]: snapshot-then-watch with resume and compaction resync.

pub mod follow;
pub mod keys;
pub mod lease;
pub mod record;
pub mod region;
pub mod retry;

pub use keys::Keys;

use std::time::Duration;

/// How a binary reaches etcd.
///
/// Every binary fills it from the same settings ([`EtcdAuthArgs`] for
/// flags, the same names in config files), so TLS and authentication are
/// configured alike everywhere. The client certificate is the identity:
/// etcd, run with `--client-cert-auth`, takes the user name from its CN;
/// `user` + `password_file` are the fallback where certificates cannot be
/// issued.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdConfig {
    /// Client URLs: `https://HOST:PORT` with TLS, `http://HOST:PORT` without.
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
    /// etcd user, for password authentication.
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the etcd user's password (first line).
    #[serde(default)]
    pub password_file: Option<String>,
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

    /// Checks the settings and reads every file they name, for binaries that
    /// refuse a bad configuration at start-up, before they change anything.
    pub fn check(&self) -> Result<(), StoreError> {
        tls_options(self)?;
        credentials(self)?;
        Ok(())
    }
}

/// The etcd TLS / authentication flags every binary takes, flattened into
/// its clap `Args` next to its endpoint flag:
/// `--etcd-ca`, `--etcd-cert`, `--etcd-key`, `--etcd-user`,
/// `--etcd-password-file` (env `LEENGINE_ETCD_CA`, ...). They are `global`
/// so that a CLI with subcommands (cnictl) takes them on either side of the
/// subcommand, like its other etcd flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EtcdAuthArgs {
    /// CA certificate (PEM) that signed etcd's server certificate; turns TLS on.
    #[arg(
        id = "etcd_ca",
        long = "etcd-ca",
        env = "LEENGINE_ETCD_CA",
        global = true
    )]
    pub ca: Option<String>,
    /// Client certificate (PEM); its CN is the etcd user.
    #[arg(
        id = "etcd_cert",
        long = "etcd-cert",
        env = "LEENGINE_ETCD_CERT",
        global = true
    )]
    pub cert: Option<String>,
    /// Client certificate's private key (PEM).
    #[arg(
        id = "etcd_key",
        long = "etcd-key",
        env = "LEENGINE_ETCD_KEY",
        global = true
    )]
    pub key: Option<String>,
    /// etcd user for password authentication (fallback to a client certificate).
    #[arg(
        id = "etcd_user",
        long = "etcd-user",
        env = "LEENGINE_ETCD_USER",
        global = true
    )]
    pub user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(
        id = "etcd_password_file",
        long = "etcd-password-file",
        env = "LEENGINE_ETCD_PASSWORD_FILE",
        global = true
    )]
    pub password_file: Option<String>,
}

impl EtcdAuthArgs {
    /// The connection settings for `endpoints` with these TLS / auth flags.
    pub fn config(&self, endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: None,
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            user: self.user.clone(),
            password_file: self.password_file.clone(),
        }
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
    /// etcd answered but refused the connection settings (bad password, TLS
    /// settings it cannot use).
    #[error("etcd at {endpoints} refused the connection: {source}")]
    Refused {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    /// A TLS or password file could not be read. The I/O error is part of
    /// the message, not a source, so one-line error chains say it once.
    #[error("cannot read etcd {what} file {path}: {error}")]
    ReadFile {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
    /// A TLS file was read but does not hold what it should.
    #[error("etcd {what} file {path} holds no PEM {expected}")]
    BadPem {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    /// The settings contradict each other.
    #[error("invalid etcd settings: {0}")]
    Invalid(String),
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
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some(tls) = tls_options(cfg)? {
        opts = opts.with_tls(tls);
    }
    if let Some((user, password)) = credentials(cfg)? {
        opts = opts.with_user(user, password);
    }
    let endpoints = cfg.endpoints.join(",");
    etcd_client::Client::connect(&cfg.endpoints, Some(opts))
        .await
        .map_err(|source| {
            if is_unavailable(&source) {
                StoreError::Unavailable { endpoints, source }
            } else {
                StoreError::Refused { endpoints, source }
            }
        })
}

/// Checks the settings and reads the TLS files, so that a wrong path or a
/// file of the wrong kind is reported by name before any dialing.
fn tls_options(cfg: &EtcdConfig) -> Result<Option<etcd_client::TlsOptions>, StoreError> {
    if cfg.endpoints.is_empty() {
        return Err(StoreError::NoEndpoints);
    }
    let https = cfg.endpoints.iter().filter(|e| e.starts_with("https://"));
    let http = cfg.endpoints.iter().find(|e| e.starts_with("http://"));
    let tls = cfg.ca.is_some() || cfg.cert.is_some() || cfg.key.is_some();
    match (&cfg.cert, &cfg.key) {
        (Some(_), None) => return Err(invalid("client certificate given without its key")),
        (None, Some(_)) => return Err(invalid("client key given without its certificate")),
        _ => {}
    }
    if !tls {
        if let Some(e) = https.into_iter().next() {
            return Err(invalid(format!("endpoint {e} needs a CA certificate")));
        }
        return Ok(None);
    }
    if let Some(e) = http {
        return Err(invalid(format!(
            "TLS is configured but endpoint {e} is plain http"
        )));
    }
    let Some(ca) = &cfg.ca else {
        return Err(invalid(
            "TLS needs the CA certificate that signed etcd's server certificate",
        ));
    };
    let mut tls = etcd_client::TlsOptions::new().ca_certificate(
        etcd_client::Certificate::from_pem(read_pem(ca, "CA", Pem::Certificate)?),
    );
    if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
        tls = tls.identity(etcd_client::Identity::from_pem(
            read_pem(cert, "client certificate", Pem::Certificate)?,
            read_pem(key, "client key", Pem::PrivateKey)?,
        ));
    }
    Ok(Some(tls))
}

fn credentials(cfg: &EtcdConfig) -> Result<Option<(String, String)>, StoreError> {
    match (&cfg.user, &cfg.password_file) {
        (None, None) => Ok(None),
        (Some(user), Some(path)) => {
            let text = read_file(path, "password")?;
            let password = String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            Ok(Some((user.clone(), password)))
        }
        (Some(_), None) => Err(invalid("etcd user given without a password file")),
        (None, Some(_)) => Err(invalid("etcd password file given without a user")),
    }
}

fn invalid(what: impl Into<String>) -> StoreError {
    StoreError::Invalid(what.into())
}

#[derive(Clone, Copy)]
enum Pem {
    Certificate,
    PrivateKey,
}

fn read_file(path: &str, what: &'static str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|error| StoreError::ReadFile {
        what,
        path: path.to_string(),
        error,
    })
}

/// Reads a PEM file and checks it holds what `kind` says: rustls would
/// otherwise reject it later with a message naming neither file nor role.
fn read_pem(path: &str, what: &'static str, kind: Pem) -> Result<Vec<u8>, StoreError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem = read_file(path, what)?;
    let (ok, expected) = match kind {
        Pem::Certificate => {
            let mut certs = CertificateDer::pem_slice_iter(&pem).peekable();
            let ok = certs.peek().is_some() && certs.all(|c| c.is_ok());
            (ok, "certificate")
        }
        Pem::PrivateKey => (PrivateKeyDer::from_pem_slice(&pem).is_ok(), "private key"),
    };
    if !ok {
        return Err(StoreError::BadPem {
            what,
            path: path.to_string(),
            expected,
        });
    }
    Ok(pem)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca: &str, cert: Option<&str>, key: Option<&str>) -> EtcdConfig {
        EtcdConfig {
            ca: Some(ca.into()),
            cert: cert.map(Into::into),
            key: key.map(Into::into),
            ..EtcdConfig::new(["https://127.0.0.1:2379"])
        }
    }

    fn err(cfg: &EtcdConfig) -> String {
        let e = tls_options(cfg)
            .and_then(|_| credentials(cfg))
            .expect_err("refused");
        e.to_string()
    }

    /// A PEM file of a throw-away self-signed certificate's shape: the
    /// content is only parsed as PEM here, not used for a handshake.
    fn pem_file(name: &str, label: &str) -> String {
        let path =
            std::env::temp_dir().join(format!("leengine-store-{}-{name}", std::process::id()));
        let body = "MIIBszCCAVmgAwIBAgIUXG8eTEST";
        std::fs::write(
            &path,
            format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"),
        )
        .unwrap();
        path.display().to_string()
    }

    #[test]
    fn a_missing_or_wrong_file_is_named() {
        assert_eq!(
            err(&tls("/nonexistent/ca.pem", None, None)),
            "cannot read etcd CA file /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
        let ca = pem_file("ca", "CERTIFICATE");
        assert_eq!(
            err(&tls(&ca, Some("/nonexistent/c.pem"), Some("/nonexistent/k.pem"))),
            "cannot read etcd client certificate file /nonexistent/c.pem: No such file or directory (os error 2)"
        );
        assert_eq!(
            err(&tls("/dev/null", None, None)),
            "etcd CA file /dev/null holds no PEM certificate"
        );
        // A key where the certificate belongs, and the other way round.
        let key = pem_file("key", "PRIVATE KEY");
        assert_eq!(
            err(&tls(&ca, Some(&key), Some(&key))),
            format!("etcd client certificate file {key} holds no PEM certificate")
        );
        assert_eq!(
            err(&tls(&ca, Some(&ca), Some(&ca))),
            format!("etcd client key file {ca} holds no PEM private key")
        );
        assert!(tls_options(&tls(&ca, Some(&ca), Some(&key)))
            .unwrap()
            .is_some());
        let pw = EtcdConfig {
            user: Some("ops".into()),
            password_file: Some("/nonexistent/pw".into()),
            ..EtcdConfig::new(["http://127.0.0.1:2379"])
        };
        assert_eq!(
            err(&pw),
            "cannot read etcd password file /nonexistent/pw: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn contradictory_settings_are_refused() {
        let ca = pem_file("ca2", "CERTIFICATE");
        assert!(err(&tls(&ca, Some(&ca), None)).contains("certificate given without its key"));
        assert!(err(&tls(&ca, None, Some(&ca))).contains("key given without its certificate"));
        let plain = EtcdConfig {
            ca: Some(ca.clone()),
            ..EtcdConfig::new(["http://127.0.0.1:2379"])
        };
        assert!(err(&plain).contains("endpoint http://127.0.0.1:2379 is plain http"));
        let no_ca = EtcdConfig::new(["https://127.0.0.1:2379"]);
        assert!(err(&no_ca).contains("needs a CA certificate"));
        let cert_only = EtcdConfig {
            cert: Some(ca.clone()),
            key: Some(ca),
            ..EtcdConfig::new(["https://127.0.0.1:2379"])
        };
        assert!(err(&cert_only).contains("TLS needs the CA certificate"));
        let user_only = EtcdConfig {
            user: Some("ops".into()),
            ..EtcdConfig::new(["http://127.0.0.1:2379"])
        };
        assert!(err(&user_only).contains("without a password file"));
        assert!(tls_options(&EtcdConfig::new(["http://127.0.0.1:2379"]))
            .unwrap()
            .is_none());
    }
}
