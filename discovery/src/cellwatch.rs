//! One Cell's EndpointSlices, followed: list, then watch from the list's
//! resourceVersion; a broken stream (apiserver restart, dropped
//! connection) resumes from the last resourceVersion seen, so no change is
//! missed; `410 Gone` (that version was compacted away) lists again, and
//! the list replaces the Cell's slices whole. While the apiserver cannot be
//! reached the Cell's last known slices stay in the [`World`](crate::model::World).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use leengine_apiserver::Timeouts;
use leengine_store::region::CellRecord;

use crate::hub::{touched, Hub, WatchState};
use crate::model::CellSlices;
use crate::slices::convert;

/// Page size of the full list.
const PAGE: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum CellError {
    /// The Cell's kubeconfig could not be used.
    #[error("cell {cell}: credential: {source}")]
    Credential {
        cell: String,
        #[source]
        source: leengine_apiserver::ApiError,
    },
    /// The record's apiserver URL or CA is unusable.
    #[error("cell {cell}: {reason}")]
    Record { cell: String, reason: String },
}

/// A client for the Cell: the kubeconfig named by the record's credential
/// (relative to `credentials_dir`), with the record's URL and CA.
pub async fn client(
    cell: &str,
    rec: &CellRecord,
    credentials_dir: &Path,
    watch_timeout: Duration,
) -> Result<kube::Client, CellError> {
    // A watch is closed by the server after `watch_timeout`; a connection
    // silent for longer than that is dead.
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        read: watch_timeout + Duration::from_secs(10),
        write: None,
    };
    let path = credentials_dir.join(&rec.credential);
    let mut cfg = leengine_apiserver::kubeconfig_config(&path, timeouts)
        .await
        .map_err(|source| CellError::Credential {
            cell: cell.into(),
            source,
        })?;
    let bad = |reason: String| CellError::Record {
        cell: cell.into(),
        reason,
    };
    cfg.cluster_url = rec
        .apiserver
        .parse()
        .map_err(|e| bad(format!("apiserver {:?}: {e}", rec.apiserver)))?;
    if let Some(pem) = &rec.ca {
        use rustls_pki_types::pem::PemObject;
        let certs: Result<Vec<_>, _> =
            rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
        let certs = certs.map_err(|e| bad(format!("ca: {e}")))?;
        if certs.is_empty() {
            return Err(bad("ca holds no PEM certificate".into()));
        }
        cfg.root_cert = Some(certs.into_iter().map(|c| c.to_vec()).collect());
    }
    kube::Client::try_from(cfg).map_err(|e| bad(e.to_string()))
}

/// Follows the Cell until aborted.
pub async fn run(cell: String, client: kube::Client, hub: Arc<Hub>, watch_timeout: Duration) {
    let api: Api<EndpointSlice> = Api::all(client);
    let mut rv: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = match rv.clone() {
            None => list(&cell, &api, &hub).await.map(|v| rv = Some(v)),
            Some(from) => watch(&cell, &api, &hub, &from, watch_timeout)
                .await
                .map(|next| rv = next),
        };
        match outcome {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(cell = %cell, error = %e, retry_in = ?backoff, "apiserver unreachable; keeping the Cell's last known endpoints");
                hub.cell_status(&cell, |s| {
                    if s.state == WatchState::Watching {
                        s.state = WatchState::Unreachable;
                    }
                    s.last_error = Some(e.to_string());
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Lists every EndpointSlice (paged) and replaces the Cell's; returns the
/// list's resourceVersion.
async fn list(cell: &str, api: &Api<EndpointSlice>, hub: &Hub) -> Result<String, kube::Error> {
    let mut slices = CellSlices::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await?;
        slices.extend(page.items.iter().filter_map(convert));
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(t) => token = Some(t),
            None => {
                let rv = page.metadata.resource_version.unwrap_or_default();
                tracing::info!(cell = %cell, slices = slices.len(), resource_version = %rv, "listed");
                hub.cell_listed(cell, slices, &rv);
                return Ok(rv);
            }
        }
    }
}

/// One watch stream from `from`. `Ok(Some(rv))`: resume from `rv`;
/// `Ok(None)`: `410 Gone`, list again; `Err`: the apiserver is not there.
async fn watch(
    cell: &str,
    api: &Api<EndpointSlice>,
    hub: &Hub,
    from: &str,
    timeout: Duration,
) -> Result<Option<String>, kube::Error> {
    let wp =
        WatchParams::default().timeout(u32::try_from(timeout.as_secs().max(1)).unwrap_or(u32::MAX));
    let stream = match api.watch(&wp, from).await {
        Err(kube::Error::Api(s)) if s.code == 410 => return Ok(gone(cell, from)),
        other => other?,
    };
    hub.cell_status(cell, |s| {
        s.watches += 1;
        s.state = WatchState::Watching;
        s.last_error = None;
    });
    let mut stream = stream.boxed();
    let mut rv = from.to_string();
    loop {
        let ev = match stream.try_next().await {
            Ok(Some(ev)) => ev,
            // The server ended the stream (its timeout): resume.
            Ok(None) => return Ok(Some(rv)),
            Err(e) => {
                tracing::info!(cell = %cell, error = %e, resource_version = %rv, "watch broken; resuming");
                return Ok(Some(rv));
            }
        };
        match ev {
            WatchEvent::Added(es) | WatchEvent::Modified(es) => {
                rv = version(&es).unwrap_or(rv);
                apply(cell, hub, &es, &rv, true);
            }
            WatchEvent::Deleted(es) => {
                rv = version(&es).unwrap_or(rv);
                apply(cell, hub, &es, &rv, false);
            }
            WatchEvent::Bookmark(b) => {
                rv = b.metadata.resource_version;
                hub.cell_status(cell, |s| s.resource_version = rv.clone());
            }
            WatchEvent::Error(s) if s.code == 410 => return Ok(gone(cell, &rv)),
            WatchEvent::Error(s) => {
                tracing::warn!(cell = %cell, code = s.code, message = %s.message, "watch error; resuming");
                return Ok(Some(rv));
            }
        }
    }
}

fn gone(cell: &str, rv: &str) -> Option<String> {
    tracing::warn!(cell = %cell, resource_version = %rv, "410 Gone: that version is compacted; listing again");
    None
}

fn version(es: &EndpointSlice) -> Option<String> {
    es.metadata.resource_version.clone()
}

fn apply(cell: &str, hub: &Hub, es: &EndpointSlice, rv: &str, present: bool) {
    let key = (
        es.metadata.namespace.clone().unwrap_or_default(),
        es.metadata.name.clone().unwrap_or_default(),
    );
    let slice = if present { convert(es) } else { None };
    let mut n = 0;
    hub.update(|w| {
        if let Some(Some(slices)) = w.cells.get_mut(cell) {
            match slice {
                Some((_, s)) => slices.insert(key, s),
                None => slices.remove(&key),
            };
            n = slices.len();
        }
    });
    hub.cell_status(cell, |s| {
        s.events += 1;
        s.slices = n;
        s.resource_version = rv.to_string();
        touched(s);
    });
}
