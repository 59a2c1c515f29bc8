//! CNI DEL and guarded releases: free the block entry, drop handle and index, in one transaction.

use crate::apps::{AppBinding, AppReserved};
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
    /// The binding of the attachment's app, if it has one.
    binding: Option<AppBinding>,
}

/// Reads the block claim and, in the same round trip, the record under the
/// attachment's node (the owner unless the address was borrowed).
async fn read_block(ipam: &Ipam, att: &Attachment) -> Result<BlockAt, IpamError> {
    let keys = &ipam.keys;
    let (net, len) = (att.block.network(), att.block.prefix_len());
    let claim_key = keys.block(&att.pool, net, len);
    let mine = keys.node_block(&att.node, &att.pool, net, len);
    let mut reads = vec![store::get(&claim_key), store::get(&mine)];
    if let Some(ns) = &att.pod_namespace {
        reads.push(store::get(keys.app_pools(ns)));
    }
    let batch = store::read(&ipam.client, reads).await?;
    let binding = match batch.responses.get(2) {
        Some(r) => store::decode_one::<AppBinding>(r)?.map(|b| b.value),
        None => None,
    };
    let owner = match store::decode_one::<BlockClaim>(&batch.responses[0])? {
        Some(c) if c.value.node != att.node => c.value.node,
        _ => {
            return Ok(BlockAt {
                rec: store::decode_one(&batch.responses[1])?,
                key: mine,
                binding,
            })
        }
    };
    let key = keys.node_block(&owner, &att.pool, net, len);
    let batch = store::read(&ipam.client, vec![store::get(&key)]).await?;
    Ok(BlockAt {
        rec: store::decode_one(&batch.responses[0])?,
        key,
        binding,
    })
}

/// Whether `block` records exactly the allocation `att` describes.
fn holds(block: &Block, att: &Attachment) -> bool {
    block.allocations.get(&att.ip).is_some_and(|a| {
        a.seq == att.seq && a.container_id == att.container_id && a.ifname == att.ifname
    })
}

/// One transaction: free the address in its block (when the block still
/// records this very allocation), delete handle and node index, and keep the
/// address reserved for the pod identity (sticky) and for its app (the app
/// reserve, when the app is bound). `Ok(false)` on a lost race.
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
    match block.rec {
        Some(b) if holds(&b.value, att) => {
            let mut nb = b.value;
            nb.allocations.remove(&att.ip);
            nb.freed_at.insert(att.ip, now);
            nb.reserved.retain(|_, r| r.until > now);
            if let Some(r) = reserve_ops(ipam, att, block.binding.as_ref(), now, &mut ops).await? {
                nb.reserved.insert(att.ip, r);
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

/// The sticky record and app-reserve entry for a freed address (each on a
/// lease of its lifetime), and the block reservation covering both.
async fn reserve_ops(
    ipam: &Ipam,
    att: &Attachment,
    binding: Option<&AppBinding>,
    now: u64,
    ops: &mut Vec<etcd_client::TxnOp>,
) -> Result<Option<Reservation>, IpamError> {
    let (Some(pod), Some(ns), Some(name)) = (att.pod(), &att.pod_namespace, &att.pod_name) else {
        return Ok(None);
    };
    let sticky_secs = ipam.opts.sticky_for.as_secs();
    let reserve_secs = binding.map_or(0, |b| b.reserve_secs);
    if sticky_secs == 0 && reserve_secs == 0 {
        return Ok(None);
    }
    let keys = &ipam.keys;
    let sticky_until = now + sticky_secs;
    if sticky_secs > 0 {
        let sticky = StickyRecord {
            ip: att.ip,
            pool: att.pool.clone(),
            until: sticky_until,
        };
        let lease = grant(ipam, sticky_secs).await?;
        ops.push(store::put_leased(keys.sticky(ns, name), &sticky, lease));
    }
    let mut app = None;
    if reserve_secs > 0 {
        let entry = AppReserved {
            ip: att.ip,
            pool: att.pool.clone(),
            pod: pod.clone(),
            sticky_until,
            until: now + reserve_secs,
        };
        let lease = grant(ipam, reserve_secs).await?;
        ops.push(store::put_leased(
            keys.app_reserve(ns, att.ip),
            &entry,
            lease,
        ));
        app = Some(ns.clone());
    }
    Ok(Some(Reservation {
        pod,
        until: now + sticky_secs.max(reserve_secs),
        app,
    }))
}

async fn grant(ipam: &Ipam, secs: u64) -> Result<i64, IpamError> {
    let ttl = i64::try_from(secs).unwrap_or(i64::MAX);
    Ok(ipam.client.lease_client().grant(ttl, None).await?.id())
}
