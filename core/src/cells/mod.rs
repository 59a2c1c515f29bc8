//! The Region's Cells (ARCHITECTURE.md §6): one Kubernetes cluster each,
//! registered by an administrator under `{prefix}/cells/{cell}`.
//!
//! A record names its credentials by reference: `kubeconfig` is a file name
//! inside the core's `--cell-credentials-dir` (the same on every core
//! replica), never the credentials themselves, so no API answer and no etcd
//! read of the registry reveals a key.

pub mod api;
pub mod nodes;
pub mod pools;
pub mod ranges;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::config::Kubeconfig;
use leengine_apiserver::Timeouts;
use leengine_store::Keys;
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;
use crate::store::Db;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellState {
    /// New apps may be placed here.
    #[default]
    Active,
    /// No new app is placed here; existing apps keep running.
    Draining,
}

/// `{prefix}/cells/{cell}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellRecord {
    pub name: String,
    /// File name of the Cell's kubeconfig in the credentials directory.
    pub kubeconfig: String,
    /// The apiserver the kubeconfig points at (as read at registration).
    pub api_url: String,
    /// The Cell's etcd (its IPAM), client URLs.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// The nginx groups that serve this Cell's apps.
    #[serde(default)]
    pub nginx_groups: Vec<String>,
    /// IP pools an app's Owner may bind to the app (administrators bind any).
    #[serde(default)]
    pub delegated_pools: Vec<String>,
    #[serde(default)]
    pub state: CellState,
    /// Apps placed here; kept in the same transactions as app creation and
    /// deletion, so "remove when empty" needs no scan that could race.
    #[serde(default)]
    pub apps: u32,
    pub created: DateTime<Utc>,
}

/// Where the Cells' kubeconfigs live on a core host.
#[derive(Clone, Debug)]
pub struct CellSettings {
    pub credentials_dir: PathBuf,
    /// Least number of Cells an app runs in (capped by the Region's size).
    pub min_app_cells: usize,
}

impl Default for CellSettings {
    fn default() -> Self {
        Self {
            credentials_dir: PathBuf::from("/etc/leengine/cells"),
            min_app_cells: 2,
        }
    }
}

/// A Cell's apiserver did not answer: 503 naming the Cell, never a 500.
pub fn unavailable(cell: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "cell_unavailable",
        format!("cell {cell} is unavailable: {e}"),
    )
}

fn not_found(cell: &str) -> ApiError {
    ApiError::not_found("cell_not_found", format!("cell {cell} is not registered"))
}

/// Connect and request timeout for a Cell's etcd: a dead Cell must turn
/// into a quick 503, not a stalled answer.
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(3);

/// A client of the Cell's etcd (its IPAM and its nodes' registrations) and
/// the default key prefix its agents write under. The record naming no
/// etcd → 409 `cell_etcd_unset`; an etcd that does not answer → 503.
pub async fn etcd(cell: &CellRecord) -> Result<(etcd_client::Client, Keys), ApiError> {
    if cell.etcd.is_empty() {
        return Err(ApiError::conflict(
            "cell_etcd_unset",
            format!(
                "cell {} has no etcd registered (PATCH the Cell's etcd)",
                cell.name
            ),
        ));
    }
    let cfg = leengine_store::EtcdConfig::new(cell.etcd.clone());
    let client = leengine_store::connect_with_timeout(&cfg, ETCD_TIMEOUT)
        .await
        .map_err(|e| unavailable(&cell.name, e))?;
    Ok((client, cfg.keys()))
}

/// Maps a Kubernetes client error of `cell` onto the API's problems: the
/// Cell answered with an error status → 502 `cell_error`; anything else
/// (connect, TLS, timeout) → 503 `cell_unavailable`.
pub fn kube_error(cell: &str, e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(s) => ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "cell_error",
            format!("cell {cell} refused: {} ({})", s.message, s.code),
        ),
        other => unavailable(cell, other),
    }
}

/// A credential reference is a plain file name: no directories, no `..`.
pub fn valid_reference(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && !r.starts_with('.')
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn invalid_reference(reference: &str) -> String {
    format!("{reference:?} is not a file name in the credentials directory")
}

fn kubeconfig_path(settings: &CellSettings, reference: &str) -> PathBuf {
    Path::new(&settings.credentials_dir).join(reference)
}

/// Reads the referenced kubeconfig; returns it and its server URL.
pub fn read_kubeconfig(
    settings: &CellSettings,
    reference: &str,
) -> Result<(Kubeconfig, String), String> {
    if !valid_reference(reference) {
        return Err(invalid_reference(reference));
    }
    let path = kubeconfig_path(settings, reference);
    let kc = leengine_apiserver::read_kubeconfig(&path).map_err(|e| e.to_string())?;
    let server = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .ok_or_else(|| format!("{} names no cluster server", path.display()))?;
    Ok((kc, server))
}

/// A Kubernetes client for the Cell. Short timeouts: a dead Cell must turn
/// into a quick 503, and must not stall the reconciler's other Cells.
pub async fn client(settings: &CellSettings, cell: &CellRecord) -> Result<kube::Client, ApiError> {
    if !valid_reference(&cell.kubeconfig) {
        return Err(unavailable(&cell.name, invalid_reference(&cell.kubeconfig)));
    }
    let timeouts = Timeouts {
        connect: Duration::from_secs(3),
        read: Duration::from_secs(15),
        write: Some(Duration::from_secs(15)),
    };
    let path = kubeconfig_path(settings, &cell.kubeconfig);
    let config = leengine_apiserver::kubeconfig_config(&path, timeouts)
        .await
        .map_err(|e| unavailable(&cell.name, e))?;
    kube::Client::try_from(config).map_err(|e| unavailable(&cell.name, e))
}

pub async fn get(db: &Db, name: &str) -> Result<Option<crate::store::Rec<CellRecord>>, ApiError> {
    db.get(&db.keys.cell(name)).await
}

/// The registered Cell `name`, else 404 `cell_not_found`.
pub async fn require(db: &Db, name: &str) -> Result<crate::store::Rec<CellRecord>, ApiError> {
    get(db, name).await?.ok_or_else(|| not_found(name))
}

/// Every registered Cell, by name.
pub async fn list(db: &Db) -> Result<Vec<CellRecord>, ApiError> {
    Ok(db
        .list::<CellRecord>(&db.keys.cells_prefix())
        .await?
        .into_iter()
        .map(|(_, c)| c)
        .collect())
}

/// The Cells a new app is placed in: the ones asked for, or every active
/// Cell; at least `min(min_app_cells, active Cells)` of them (the original's
/// rule against losing a machine room). Pure: `cells` is the registry.
pub fn place(
    cells: &[CellRecord],
    asked: Option<&[String]>,
    min_app_cells: usize,
) -> Result<Vec<String>, ApiError> {
    let active: Vec<&CellRecord> = cells
        .iter()
        .filter(|c| c.state == CellState::Active)
        .collect();
    let chosen: Vec<String> = match asked {
        None => active.iter().map(|c| c.name.clone()).collect(),
        Some(names) => {
            let mut v = names.to_vec();
            v.sort();
            v.dedup();
            for n in &v {
                match cells.iter().find(|c| &c.name == n) {
                    None => {
                        return Err(ApiError::bad_request(
                            "unknown_cell",
                            format!("cell {n} is not registered"),
                        ))
                    }
                    Some(c) if c.state == CellState::Draining => {
                        return Err(ApiError::conflict(
                            "cell_draining",
                            format!("cell {n} is draining: no new apps are placed there"),
                        ))
                    }
                    Some(_) => {}
                }
            }
            v
        }
    };
    let need = min_app_cells.min(active.len());
    if chosen.len() < need {
        return Err(ApiError::bad_request(
            "too_few_cells",
            format!(
                "an app runs in at least {need} Cells of this Region (asked for {})",
                chosen.len()
            ),
        ));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(name: &str, state: CellState) -> CellRecord {
        CellRecord {
            name: name.into(),
            kubeconfig: format!("{name}.kubeconfig"),
            api_url: String::new(),
            etcd: vec![],
            nginx_groups: vec![],
            delegated_pools: vec![],
            state,
            apps: 0,
            created: Utc::now(),
        }
    }

    #[test]
    fn an_app_goes_to_every_active_cell_by_default() {
        let cells = [
            cell("a", CellState::Active),
            cell("b", CellState::Draining),
            cell("c", CellState::Active),
        ];
        assert_eq!(place(&cells, None, 2).unwrap(), ["a", "c"]);
    }

    #[test]
    fn at_least_two_cells_when_the_region_has_two() {
        let cells = [cell("a", CellState::Active), cell("b", CellState::Active)];
        let one = ["a".to_string()];
        assert_eq!(
            place(&cells, Some(&one), 2).unwrap_err().code,
            "too_few_cells"
        );
        // The operator may lower the rule.
        assert_eq!(place(&cells, Some(&one), 1).unwrap(), ["a"]);
        // A Region of one Cell asks for one.
        assert_eq!(place(&cells[..1], None, 2).unwrap(), ["a"]);
        // A Region without Cells keeps apps as records only.
        assert!(place(&[], None, 2).unwrap().is_empty());
    }

    #[test]
    fn draining_and_unknown_cells_are_refused() {
        let cells = [cell("a", CellState::Active), cell("b", CellState::Draining)];
        let b = ["a".to_string(), "b".to_string()];
        assert_eq!(
            place(&cells, Some(&b), 1).unwrap_err().code,
            "cell_draining"
        );
        let x = ["x".to_string()];
        assert_eq!(place(&cells, Some(&x), 1).unwrap_err().code, "unknown_cell");
    }

    #[test]
    fn references_are_file_names() {
        assert!(valid_reference("c1.kubeconfig"));
        assert!(!valid_reference("../etc/passwd"));
        assert!(!valid_reference("a/b"));
        assert!(!valid_reference(".hidden"));
        assert!(!valid_reference(""));
    }
}
