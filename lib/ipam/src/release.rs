//! CNI DEL and guarded releases: free the block entry, drop handle and index, in one transaction.

use crate::error::IpamError;
use crate::model::{Attachment, Block, BlockClaim, Reservation, StickyRecord};
use crate::store::{self, Rec};
use crate::{now_secs, Ipam};
use leengine_store::retry;

pub(crate) async fn handle(
    ipam: &Ipam,
    container_id: &str,
    ifname: &str,
) -> Result<Option<Attachment>, IpamError> {
    let key = ipam.keys.handle(container_id, ifname);
    let batch = store::read(&ipam.client, vec![store::get(&key)]).await?;
    Ok(store::decode_one::<Attachment>(&batch.responses[0])?.map(|r| r.value))
}

pub(crate) async fn release(
    ipam: &Ipam,
    container_id: &str,
    ifname: &str,
) -> Result<Option<Attachment>, IpamError> {
    let key = ipam.keys.handle(container_id, ifname);
    let key = key.as_str();
    retry::optimistic::<_, IpamError, _, _>(ipam.opts.max_attempts, move || async move {
        let batch = store::read(&ipam.client, vec![store::get(key)]).await?;
        let Some(h) = store::decode_one::<Attachment>(&batch.responses[0])? else {
            return Ok(Some(None));
        };
        let block = read_block(ipam, &h.value).await?;
        Ok(free(ipam, &h, block).await?.then_some(Some(h.value)))
    })
    .await?
    .ok_or_else(|attempts| IpamError::Contention {
        what: format!("release {container_id}/{ifname}"),
        attempts,
    })
}

/// The reads of [`release`] done ahead (while the caller tears the
/// datapath down): the handle and its block as they were then. Its commit
/// compares both revisions, so a change in between only costs a fresh
/// release.
#[derive(Debug)]
pub struct PreparedRelease {
    container_id: String,
    ifname: String,
    read: Option<(Rec<Attachment>, BlockAt)>,
}

pub(crate) async fn prepare_release(
    ipam: &Ipam,
    container_id: &str,
    ifname: &str,
) -> Result<PreparedRelease, IpamError> {
    let key = ipam.keys.handle(container_id, ifname);
    let batch = store::read(&ipam.client, vec![store::get(&key)]).await?;
    let read = match store::decode_one::<Attachment>(&batch.responses[0])? {
        Some(h) => {
            let block = read_block(ipam, &h.value).await?;
            Some((h, block))
        }
        None => None,
    };
    Ok(PreparedRelease {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
        read,
    })
}

pub(crate) async fn release_prepared(
    ipam: &Ipam,
    p: PreparedRelease,
) -> Result<Option<Attachment>, IpamError> {
    match p.read {
        // Only ADD of this very (container, ifname) makes its handle, and
        // the caller holds the attachment's lock: none then is none now.
        None => Ok(None),
        Some((h, block)) => {
            if free(ipam, &h, block).await? {
                Ok(Some(h.value))
            } else {
                release(ipam, &p.container_id, &p.ifname).await
            }
        }
    }
}

pub(crate) async fn release_if_unchanged(
    ipam: &Ipam,
    expected: &Attachment,
) -> Result<bool, IpamError> {
    let key = ipam.keys.handle(&expected.container_id, &expected.ifname);
    let key = key.as_str();
    retry::optimistic::<_, IpamError, _, _>(ipam.opts.max_attempts, move || async move {
        let batch = store::read(&ipam.client, vec![store::get(key)]).await?;
        let Some(h) = store::decode_one::<Attachment>(&batch.responses[0])? else {
            return Ok(Some(false));
        };
        let same_handle = h.value.ip == expected.ip && h.value.seq == expected.seq;
        if !same_handle {
            return Ok(Some(false));
        }
        let block = read_block(ipam, &h.value).await?;
        let same_alloc = block
            .rec
            .as_ref()
            .is_some_and(|b| holds(&b.value, &h.value));
        if !same_alloc {
            return Ok(Some(false));
        }
        if !free(ipam, &h, block).await? {
            return Ok(None);
        }
        tracing::info!(ip = %expected.ip, seq = expected.seq, container = %expected.container_id, "released unchanged allocation");
        Ok(Some(true))
    })
    .await?
    .ok_or_else(|attempts| IpamError::Contention {
        what: format!("release {}", expected.ip),
        attempts,
    })
}

/// The record of the block an attachment's address is in, and its key.
#[derive(Debug)]
struct BlockAt {
    key: String,
    rec: Option<Rec<Block>>,
}

/// Reads the block claim and, in the same round trip, the record under the
/// attachment's node (the owner unless the address was borrowed).
async fn read_block(ipam: &Ipam, att: &Attachment) -> Result<BlockAt, IpamError> {
    let keys = &ipam.keys;
    let (net, len) = (att.block.network(), att.block.prefix_len());
    let claim_key = keys.block(&att.pool, net, len);
    let mine = keys.node_block(&att.node, &att.pool, net, len);
    let batch = store::read(
        &ipam.client,
        vec![store::get(&claim_key), store::get(&mine)],
    )
    .await?;
    let owner = match store::decode_one::<BlockClaim>(&batch.responses[0])? {
        Some(c) if c.value.node != att.node => c.value.node,
        _ => {
            return Ok(BlockAt {
                rec: store::decode_one(&batch.responses[1])?,
                key: mine,
            })
        }
    };
    let key = keys.node_block(&owner, &att.pool, net, len);
    let batch = store::read(&ipam.client, vec![store::get(&key)]).await?;
    Ok(BlockAt {
        rec: store::decode_one(&batch.responses[0])?,
        key,
    })
}

/// Whether `block` records exactly the allocation `att` describes.
fn holds(block: &Block, att: &Attachment) -> bool {
    block.allocations.get(&att.ip).is_some_and(|a| {
        a.seq == att.seq && a.container_id == att.container_id && a.ifname == att.ifname
    })
}

/// One transaction: free the address in its block (when the block still
/// records this very allocation), delete handle and node index, and keep a
/// sticky reservation for the pod identity. `Ok(false)` on a lost race.
async fn free(ipam: &Ipam, handle: &Rec<Attachment>, block: BlockAt) -> Result<bool, IpamError> {
    let att = &handle.value;
    let now = now_secs();
    let keys = &ipam.keys;
    let bkey = block.key;
    let compares = vec![
        store::unchanged(&handle.key, Some(handle.mod_revision)),
        store::unchanged(&bkey, block.rec.as_ref().map(|b| b.mod_revision)),
    ];
    let mut ops = vec![
        store::delete(&handle.key),
        store::delete(keys.node_ip(&att.node, att.ip)),
        // The pool has a free address again.
        store::delete(keys.pool_full(&att.pool)),
    ];
    let sticky_secs = ipam.opts.sticky_for.as_secs();
    match block.rec {
        Some(b) if holds(&b.value, att) => {
            let mut nb = b.value;
            nb.allocations.remove(&att.ip);
            nb.freed_at.insert(att.ip, now);
            nb.reserved.retain(|_, r| r.until > now);
            if let (Some(pod), true) = (att.pod(), sticky_secs > 0) {
                let until = now + sticky_secs;
                nb.reserved.insert(att.ip, Reservation { pod, until });
                let lease = ipam
                    .client
                    .lease_client()
                    .grant(i64::try_from(sticky_secs).unwrap_or(i64::MAX), None)
                    .await?;
                let sticky = StickyRecord {
                    ip: att.ip,
                    pool: att.pool.clone(),
                    until,
                };
                let skey = keys.sticky(
                    att.pod_namespace.as_deref().unwrap_or_default(),
                    att.pod_name.as_deref().unwrap_or_default(),
                );
                ops.push(store::put_leased(&skey, &sticky, lease.id()));
            }
            ops.push(store::put(&bkey, &nb));
        }
        _ => {
            // The handle outlived its block entry; dropping the handle is all that is left to do.
            tracing::warn!(ip = %att.ip, container = %att.container_id, "handle without matching block allocation");
        }
    }
    Ok(store::commit(&ipam.client, compares, ops).await?.applied())
}
