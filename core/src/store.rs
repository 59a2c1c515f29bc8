//! Thin typed access to etcd for the core's records (JSON values).

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use leengine_store::Keys;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::problem::ApiError;

/// What every handler of the core needs: the etcd client and the key layout.
#[derive(Clone)]
pub struct Db {
    pub etcd: Client,
    pub keys: Keys,
}

/// By hand: the etcd client has no `Debug`.
impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// A decoded record and the revision to compare against when updating it.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: i64,
}

impl Db {
    pub fn new(etcd: Client, keys: Keys) -> Self {
        Self { etcd, keys }
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, ApiError> {
        let resp = self.etcd.kv_client().get(key, None).await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some(Versioned {
                value: serde_json::from_slice(kv.value())?,
                mod_revision: kv.mod_revision(),
            })),
        }
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
        resp.kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                Ok((key, serde_json::from_slice(kv.value())?))
            })
            .collect()
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

    /// Runs `ops` if every compare holds; `false` when a compare failed
    /// (someone else changed the data: re-read and decide again).
    pub async fn commit(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<bool, ApiError> {
        let txn = Txn::new().when(compares).and_then(ops);
        Ok(self.etcd.kv_client().txn(txn).await?.succeeded())
    }
}

pub fn put<T: Serialize>(key: impl Into<Vec<u8>>, value: &T) -> TxnOp {
    TxnOp::put(key, serde_json::to_vec(value).unwrap_or_default(), None)
}

pub fn delete(key: impl Into<Vec<u8>>) -> TxnOp {
    TxnOp::delete(key, None)
}

pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> TxnOp {
    TxnOp::delete(
        prefix,
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
}

pub fn absent(key: impl Into<Vec<u8>>) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, 0)
}

pub fn present(key: impl Into<Vec<u8>>) -> Compare {
    Compare::create_revision(key, CompareOp::Greater, 0)
}

/// The key still has the revision we read (0 = still absent).
pub fn unchanged(key: impl Into<Vec<u8>>, mod_revision: i64) -> Compare {
    Compare::mod_revision(key, CompareOp::Equal, mod_revision)
}

/// Optimistic transactions retry this often before answering 409.
pub const MAX_ATTEMPTS: usize = 16;

pub fn contention() -> ApiError {
    ApiError::conflict("contention", "too many concurrent changes; retry")
}
