//! Typed records: JSON values read with the revision a later commit must see
//! unchanged, the ops and compares of a guarded transaction, and commits with
//! a typed outcome.
//!
//! "Unchanged" has one meaning everywhere: the key still has the
//! `mod_revision` it was read with, or — for a key that was absent — it is
//! still absent ([`unchanged`], [`Rec::unchanged`]).

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value that is not the JSON its reader expects.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("record {key} is corrupt: {reason}")]
pub struct Corrupt {
    pub key: String,
    pub reason: String,
}

/// A read of typed records failed: etcd did not answer, or answered with a
/// value that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// A decoded record, its key and the revision a compare must see unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct Rec<T> {
    pub key: String,
    pub value: T,
    pub mod_revision: i64,
}

impl<T> Rec<T> {
    /// Compare: the key still has the revision it was read at.
    pub fn unchanged(&self) -> Compare {
        unchanged(self.key.as_str(), Some(self.mod_revision))
    }
}

pub fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<Rec<T>, Corrupt> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    match serde_json::from_slice(kv.value()) {
        Ok(value) => Ok(Rec {
            key,
            value,
            mod_revision: kv.mod_revision(),
        }),
        Err(e) => Err(Corrupt {
            key,
            reason: e.to_string(),
        }),
    }
}

pub fn decode_all<T: DeserializeOwned>(kvs: &[KeyValue]) -> Result<Vec<Rec<T>>, Corrupt> {
    kvs.iter().map(decode).collect()
}

/// The first (for a single-key read: the only) record of a response.
pub fn decode_one<T: DeserializeOwned>(resp: &GetResponse) -> Result<Option<Rec<T>>, Corrupt> {
    resp.kvs().first().map(decode).transpose()
}

/// The JSON of a record. Every record type of the workspace is plain data
/// (strings, numbers, maps with string keys), which always serializes.
pub fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records are plain data and always serialize")
}

pub fn put<T: Serialize>(key: impl AsRef<[u8]>, value: &T) -> TxnOp {
    TxnOp::put(bytes(key), json(value), None)
}

/// A put bound to `lease`: the key goes when the lease does.
pub fn put_leased<T: Serialize>(key: impl AsRef<[u8]>, value: &T, lease: i64) -> TxnOp {
    TxnOp::put(
        bytes(key),
        json(value),
        Some(PutOptions::new().with_lease(lease)),
    )
}

pub fn delete(key: impl AsRef<[u8]>) -> TxnOp {
    TxnOp::delete(bytes(key), None)
}

pub fn delete_prefix(prefix: impl AsRef<[u8]>) -> TxnOp {
    TxnOp::delete(bytes(prefix), Some(DeleteOptions::new().with_prefix()))
}

pub fn get(key: impl AsRef<[u8]>) -> TxnOp {
    TxnOp::get(bytes(key), None)
}

pub fn get_prefix(prefix: impl AsRef<[u8]>) -> TxnOp {
    TxnOp::get(bytes(prefix), Some(GetOptions::new().with_prefix()))
}

pub fn get_prefix_keys(prefix: impl AsRef<[u8]>) -> TxnOp {
    TxnOp::get(
        bytes(prefix),
        Some(GetOptions::new().with_prefix().with_keys_only()),
    )
}

/// Compare: the key is as it was read — `Some(mod_revision)` — or, read as
/// absent (`None`), still absent.
pub fn unchanged(key: impl AsRef<[u8]>, mod_revision: Option<i64>) -> Compare {
    match mod_revision {
        Some(rev) => Compare::mod_revision(bytes(key), CompareOp::Equal, rev),
        None => absent(key),
    }
}

pub fn absent(key: impl AsRef<[u8]>) -> Compare {
    Compare::create_revision(bytes(key), CompareOp::Equal, 0)
}

pub fn present(key: impl AsRef<[u8]>) -> Compare {
    Compare::create_revision(bytes(key), CompareOp::Greater, 0)
}

/// Compare: nothing under `prefix` was created or changed after `revision`.
pub fn prefix_unchanged_since(prefix: impl AsRef<[u8]>, revision: i64) -> Compare {
    Compare::mod_revision(bytes(prefix), CompareOp::Less, revision + 1).with_prefix()
}

/// Compare: no key exists under `prefix`.
pub fn prefix_empty(prefix: impl AsRef<[u8]>) -> Compare {
    Compare::create_revision(bytes(prefix), CompareOp::Equal, 0).with_prefix()
}

/// Compare: the key is bound to `lease` (a record this holder still owns).
pub fn leased_by(key: impl AsRef<[u8]>, lease: i64) -> Compare {
    Compare::lease(bytes(key), CompareOp::Equal, lease)
}

/// Keys are taken as anything byte-like (`&str`, `String`, `&String`).
fn bytes(key: impl AsRef<[u8]>) -> Vec<u8> {
    key.as_ref().to_vec()
}

/// One typed record, or `None` when the key is absent.
pub async fn get_json<T: DeserializeOwned>(
    client: &Client,
    key: &str,
) -> Result<Option<Rec<T>>, ReadError> {
    let resp = client.kv_client().get(key, None).await?;
    Ok(decode_one(&resp)?)
}

/// Several reads answered in one round trip (a read-only transaction), all
/// at the same revision. One RPC instead of several parallel ones: etcd's
/// cost per request is dominated by request handling, not by the reads' size.
pub struct Batch {
    /// One response per read, in the order the reads were given.
    pub responses: Vec<GetResponse>,
    /// The revision every read saw.
    pub revision: i64,
}

pub async fn read(client: &Client, reads: Vec<TxnOp>) -> Result<Batch, etcd_client::Error> {
    if reads.is_empty() {
        return Ok(Batch {
            responses: Vec::new(),
            revision: 0,
        });
    }
    let resp = client.kv_client().txn(Txn::new().and_then(reads)).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    Ok(Batch {
        responses: gets(resp.op_responses()),
        revision,
    })
}

/// What a guarded commit came to.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Every compare held; the ops were applied at `revision`.
    Applied { revision: i64 },
    /// A compare failed (someone changed what was read): nothing was
    /// written. Re-read and decide again.
    Conflict,
}

impl Commit {
    pub fn applied(self) -> bool {
        matches!(self, Commit::Applied { .. })
    }

    /// The write's revision, `None` on conflict.
    pub fn revision(self) -> Option<i64> {
        match self {
            Commit::Applied { revision } => Some(revision),
            Commit::Conflict => None,
        }
    }
}

/// Applies `ops` if every compare holds.
pub async fn commit(
    client: &Client,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
) -> Result<Commit, etcd_client::Error> {
    let resp = client
        .kv_client()
        .txn(Txn::new().when(compares).and_then(ops))
        .await?;
    Ok(if resp.succeeded() {
        Commit::Applied {
            revision: resp.header().map_or(0, |h| h.revision()),
        }
    } else {
        Commit::Conflict
    })
}

/// Like [`commit`], but when a compare fails `else_reads` are answered in
/// the same round trip, so the caller can tell why without another read.
/// `Err(responses)` is the conflict, with one response per else-read.
pub async fn commit_else(
    client: &Client,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    else_reads: Vec<TxnOp>,
) -> Result<Result<i64, Vec<GetResponse>>, etcd_client::Error> {
    let resp = client
        .kv_client()
        .txn(Txn::new().when(compares).and_then(ops).or_else(else_reads))
        .await?;
    if resp.succeeded() {
        return Ok(Ok(resp.header().map_or(0, |h| h.revision())));
    }
    Ok(Err(gets(resp.op_responses())))
}

fn gets(responses: Vec<TxnOpResponse>) -> Vec<GetResponse> {
    responses
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect()
}

/// Page size for big prefix reads (keeps every response far below gRPC's 4 MiB).
const PAGE: i64 = 2000;

/// Every key under `prefix` at one revision (`0` = latest), read in pages.
/// Returns the key-values and the revision they were read at.
pub async fn scan(
    client: &Client,
    prefix: &str,
    revision: i64,
) -> Result<(Vec<KeyValue>, i64), etcd_client::Error> {
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
            rev = resp.header().map_or(0, |h| h.revision());
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

/// Decoded records under `prefix`, in key order, and the revision read at.
pub async fn scan_json<T: DeserializeOwned>(
    client: &Client,
    prefix: &str,
    revision: i64,
) -> Result<(Vec<Rec<T>>, i64), ReadError> {
    let (kvs, rev) = scan(client, prefix, revision).await?;
    Ok((decode_all(&kvs)?, rev))
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn commit_outcome_says_whether_and_where() {
        assert!(Commit::Applied { revision: 7 }.applied());
        assert_eq!(Commit::Applied { revision: 7 }.revision(), Some(7));
        assert!(!Commit::Conflict.applied());
        assert_eq!(Commit::Conflict.revision(), None);
    }
}
