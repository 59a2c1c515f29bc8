//! Thin typed layer over etcd-client: JSON records with their revisions,
//! batched reads in one round trip, guarded commits.

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, GetResponse, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::IpamError;

/// A decoded record and the revision a compare must see unchanged.
#[derive(Clone, Debug)]
pub(crate) struct Rec<T> {
    pub key: String,
    pub value: T,
    pub mod_revision: i64,
}

pub(crate) fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<Rec<T>, IpamError> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let value = serde_json::from_slice(kv.value()).map_err(|e| IpamError::Corrupt {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    Ok(Rec {
        key,
        value,
        mod_revision: kv.mod_revision(),
    })
}

pub(crate) fn decode_all<T: DeserializeOwned>(kvs: &[KeyValue]) -> Result<Vec<Rec<T>>, IpamError> {
    kvs.iter().map(decode).collect()
}

pub(crate) fn decode_one<T: DeserializeOwned>(
    resp: &GetResponse,
) -> Result<Option<Rec<T>>, IpamError> {
    resp.kvs().first().map(decode).transpose()
}

pub(crate) fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("IPAM records always serialize")
}

pub(crate) fn put<T: Serialize>(key: &str, value: &T) -> TxnOp {
    TxnOp::put(key, json(value), None)
}

pub(crate) fn put_leased<T: Serialize>(key: &str, value: &T, lease: i64) -> TxnOp {
    TxnOp::put(key, json(value), Some(PutOptions::new().with_lease(lease)))
}

pub(crate) fn delete(key: &str) -> TxnOp {
    TxnOp::delete(key, None)
}

/// Compare: the key is as we read it (`Some(mod_revision)`) or still absent (`None`).
pub(crate) fn unchanged(key: &str, mod_revision: Option<i64>) -> Compare {
    match mod_revision {
        Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
        None => Compare::create_revision(key, CompareOp::Equal, 0),
    }
}

/// Compare: nothing under `prefix` was created or changed after `revision`.
pub(crate) fn prefix_unchanged_since(prefix: &str, revision: i64) -> Compare {
    Compare::mod_revision(prefix, CompareOp::Less, revision + 1).with_prefix()
}

/// Compare: no key exists under `prefix`.
pub(crate) fn prefix_empty(prefix: &str) -> Compare {
    Compare::create_revision(prefix, CompareOp::Equal, 0).with_prefix()
}

/// Several reads in one round trip (a read-only transaction), all at the
/// same revision. One RPC instead of several parallel ones: etcd's cost per
/// allocation is dominated by request handling, not by the reads' size.
pub(crate) struct Batch {
    pub responses: Vec<GetResponse>,
    pub revision: i64,
}

pub(crate) fn get(key: &str) -> TxnOp {
    TxnOp::get(key, None)
}

pub(crate) fn get_prefix(prefix: &str) -> TxnOp {
    TxnOp::get(prefix, Some(GetOptions::new().with_prefix()))
}

pub(crate) fn get_prefix_keys(prefix: &str) -> TxnOp {
    TxnOp::get(
        prefix,
        Some(GetOptions::new().with_prefix().with_keys_only()),
    )
}

pub(crate) async fn read(client: &Client, ops: Vec<TxnOp>) -> Result<Batch, IpamError> {
    if ops.is_empty() {
        return Ok(Batch {
            responses: Vec::new(),
            revision: 0,
        });
    }
    let resp = client.kv_client().txn(Txn::new().and_then(ops)).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let responses = resp
        .op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect();
    Ok(Batch {
        responses,
        revision,
    })
}

/// Commits `ops` if every compare holds; `Ok(false)` means someone else
/// changed what we read and the caller should re-read and retry.
pub(crate) async fn commit(
    client: &Client,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
) -> Result<bool, IpamError> {
    let resp = client
        .kv_client()
        .txn(Txn::new().when(compares).and_then(ops))
        .await?;
    Ok(resp.succeeded())
}

/// Like [`commit`], returning the revision of the write (`None`: a compare failed).
pub(crate) async fn commit_at(
    client: &Client,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
) -> Result<Option<i64>, IpamError> {
    let resp = client
        .kv_client()
        .txn(Txn::new().when(compares).and_then(ops))
        .await?;
    Ok(resp
        .succeeded()
        .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
}

/// Like [`commit`], but when a compare fails, `else_reads` are answered
/// (in the same round trip) so the caller can tell why.
pub(crate) async fn commit_else(
    client: &Client,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    else_reads: Vec<TxnOp>,
) -> Result<Result<(), Vec<GetResponse>>, IpamError> {
    let resp = client
        .kv_client()
        .txn(Txn::new().when(compares).and_then(ops).or_else(else_reads))
        .await?;
    if resp.succeeded() {
        return Ok(Ok(()));
    }
    Ok(Err(resp
        .op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect()))
}

/// Page size for big prefix reads (keeps every response far below gRPC's 4 MiB).
const PAGE: i64 = 2000;

/// Every key under `prefix` at one revision (`0` = latest), read in pages.
/// Returns the key-values and the revision they were read at.
pub(crate) async fn scan(
    client: &Client,
    prefix: &str,
    revision: i64,
) -> Result<(Vec<KeyValue>, i64), IpamError> {
    let end = prefix_end(prefix);
    let mut kv = client.kv_client();
    let mut start = prefix.as_bytes().to_vec();
    let mut out = Vec::new();
    let mut rev = revision;
    loop {
        let opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_revision(rev);
        let resp = kv.get(start.clone(), Some(opts)).await?;
        if rev == 0 {
            rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let kvs = resp.kvs();
        out.extend_from_slice(kvs);
        match kvs.last() {
            Some(last) if resp.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => return Ok((out, rev)),
        }
    }
}

/// Decoded records under `prefix`.
pub(crate) async fn scan_json<T: DeserializeOwned>(
    client: &Client,
    prefix: &str,
    revision: i64,
) -> Result<(Vec<Rec<T>>, i64), IpamError> {
    let (kvs, rev) = scan(client, prefix, revision).await?;
    Ok((decode_all(&kvs)?, rev))
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
