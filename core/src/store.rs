//! The core's view of etcd: the client and the key layout every handler
//! needs ([`Db`]), over the shared typed-record layer
//! (`leengine_store::record`) and retry loop (`leengine_store::retry`).

use etcd_client::{Client, Compare, GetOptions, TxnOp};
use leengine_store::retry;
use leengine_store::Keys;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

pub use leengine_store::record::{
    absent, delete, delete_prefix, present, put, unchanged, Commit, Rec,
};

/// What every handler of the core needs: the etcd client and the key layout.
#[derive(Clone)]
pub struct Db {
    pub etcd: Client,
    pub keys: Keys,
}

impl Db {
    pub fn new(etcd: Client, keys: Keys) -> Self {
        Self { etcd, keys }
    }

    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Rec<T>>, ApiError> {
        Ok(leengine_store::record::get_json(&self.etcd, key).await?)
    }

    /// Every record under `prefix`, in key order, with its key.
    pub async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, ApiError> {
        let resp = self
            .etcd
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let recs = leengine_store::record::decode_all::<T>(resp.kvs())?;
        Ok(recs.into_iter().map(|r| (r.key, r.value)).collect())
    }

    /// Keys only, for lists where the key says everything.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, ApiError> {
        let resp = self
            .etcd
            .kv_client()
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    }

    pub async fn count(&self, prefix: &str) -> Result<u64, ApiError> {
        let resp = self
            .etcd
            .kv_client()
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?;
        Ok(u64::try_from(resp.count()).unwrap_or(0))
    }

    /// Runs `ops` if every compare holds.
    pub async fn commit(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<Commit, ApiError> {
        Ok(leengine_store::record::commit(&self.etcd, compares, ops).await?)
    }
}

/// Runs one read-decide-commit `attempt` (`Ok(None)`: a compare failed)
/// until it is done, within the request budget; 409 `contention` when
/// every attempt lost its race.
pub async fn optimistic<T, F, Fut>(attempt: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, ApiError>>,
{
    retry::optimistic(retry::REQUEST, attempt)
        .await?
        .ok_or_else(|_| contention())
}

pub fn contention() -> ApiError {
    ApiError::conflict("contention", "too many concurrent changes; retry")
}
