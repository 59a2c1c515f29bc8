//! Pool and block administration, listings, node reports and the leak check.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use leengine_store::keys::NodeKey;

use crate::apps::{self, AppBinding, AppRange, AppReserved, BindRequest};
use crate::assign::{owned_block, Owned};
use crate::check::{classify, ApiView, CheckInput, CheckOptions, CheckReport};
use crate::error::IpamError;
use crate::model::{
    Attachment, Block, BlockClaim, Filter, IpInfo, IpState, NodeAttachmentsReport, Pool, PoolUsage,
};
use crate::pool::parse_network;
use crate::store::{self, Rec};
use crate::{now_secs, Ipam};
use leengine_store::retry;

/// Blocks deleted per transaction by `remove_pool` (etcd allows 128 operations).
const BLOCKS_PER_TXN: usize = 40;

pub(crate) async fn list_pools(ipam: &Ipam) -> Result<Vec<Pool>, IpamError> {
    let (pools, _) = store::scan_json::<Pool>(&ipam.client, &ipam.keys.pools_prefix(), 0).await?;
    let mut pools: Vec<Pool> = pools.into_iter().map(|r| r.value).collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pools)
}

async fn pool_rec(ipam: &Ipam, name: &str) -> Result<Rec<Pool>, IpamError> {
    let batch = store::read(&ipam.client, vec![store::get(ipam.keys.pool(name))]).await?;
    store::decode_one(&batch.responses[0])?.ok_or_else(|| IpamError::UnknownPool(name.into()))
}

pub(crate) async fn get_pool(ipam: &Ipam, name: &str) -> Result<Pool, IpamError> {
    Ok(pool_rec(ipam, name).await?.value)
}

pub(crate) async fn add_pool(ipam: &Ipam, pool: &Pool) -> Result<(), IpamError> {
    pool.validate()?;
    let key = ipam.keys.pool(&pool.name);
    let key = key.as_str();
    retry::optimistic::<_, IpamError, _, _>(ipam.opts.max_attempts, move || async move {
        let prefix = ipam.keys.pools_prefix();
        let (existing, rev) = store::scan_json::<Pool>(&ipam.client, &prefix, 0).await?;
        if existing.iter().any(|p| p.value.name == pool.name) {
            return Err(IpamError::PoolExists(pool.name.clone()));
        }
        if let Some(o) = existing.iter().find(|p| p.value.overlaps(pool)) {
            return Err(IpamError::PoolOverlap {
                cidr: pool.cidr,
                other: o.value.name.clone(),
                other_cidr: o.value.cidr,
            });
        }
        // No pool may appear between our overlap check and the write.
        let compares = vec![
            store::unchanged(key, None),
            store::prefix_unchanged_since(&prefix, rev),
        ];
        let done = store::commit(&ipam.client, compares, vec![store::put(key, pool)]).await?;
        if done.applied() {
            tracing::info!(pool = %pool.name, cidr = %pool.cidr, vlan = pool.vlan.id(), "pool added");
        }
        Ok(done.applied().then_some(()))
    })
    .await?
    .ok_or_else(|attempts| IpamError::Contention {
        what: format!("add pool {}", pool.name),
        attempts,
    })
}

/// Every app binding, by app, and the revision read.
pub(crate) async fn bindings(ipam: &Ipam) -> Result<(Vec<AppBinding>, i64), IpamError> {
    let prefix = ipam.keys.app_pools_prefix();
    let (recs, rev) = store::scan_json::<AppBinding>(&ipam.client, &prefix, 0).await?;
    let mut out: Vec<AppBinding> = recs.into_iter().map(|r| r.value).collect();
    out.sort_by(|a, b| a.app.cmp(&b.app));
    Ok((out, rev))
}

/// Binds `req.pool` to `req.app`. Refused while the pool holds an address
/// of a pod outside the apps it would be bound to: the check and the write
/// are one snapshot (the write compares pools, bindings and every node's
/// allocation index as read), so no such address can appear in between.
pub(crate) async fn bind(ipam: &Ipam, req: &BindRequest) -> Result<AppBinding, IpamError> {
    retry::optimistic(ipam.opts.max_attempts, || bind_once(ipam, req))
        .await?
        .ok_or_else(|attempts| IpamError::Contention {
            what: format!("bind pool {} to {}", req.pool, req.app),
            attempts,
        })
}

async fn bind_once(ipam: &Ipam, req: &BindRequest) -> Result<Option<AppBinding>, IpamError> {
    let keys = &ipam.keys;
    let pool = pool_rec(ipam, &req.pool).await?;
    let (mut all, rev) = bindings(ipam).await?;
    let current = all
        .iter()
        .position(|b| b.app == req.app)
        .map(|i| all.remove(i));
    let newly = !current
        .as_ref()
        .is_some_and(|b| b.pools.contains(&req.pool));
    let next = apps::bind(current, req)?;
    all.push(next.clone());
    let mut compares = vec![
        store::unchanged(&pool.key, Some(pool.mod_revision)),
        store::prefix_unchanged_since(keys.app_pools_prefix(), rev),
    ];
    if newly {
        let root = keys.node_ips_root();
        let (atts, arev) = store::scan_json::<Attachment>(&ipam.client, &root, 0).await?;
        let atts: Vec<Attachment> = atts.into_iter().map(|a| a.value).collect();
        let apps = apps::apps_of(&all, &req.pool);
        if let Some(a) = apps::stranded(&atts, &req.pool, &apps) {
            return Err(IpamError::BindConflict {
                pool: req.pool.clone(),
                apps,
                ip: a.ip,
                holder: a
                    .pod()
                    .map(|p| format!("pod {p}"))
                    .unwrap_or_else(|| format!("container {}", a.container_id)),
            });
        }
        compares.push(store::prefix_unchanged_since(root, arev));
    }
    let ops = vec![store::put(keys.app_pools(&req.app), &next)];
    let done = store::commit(&ipam.client, compares, ops).await?;
    if done.applied() {
        tracing::info!(app = %req.app, pool = %req.pool, "pool bound");
    }
    Ok(done.applied().then_some(next))
}

/// Unbinds `pool` from `app`; the binding goes with its last pool. The
/// app's reserved addresses stay reserved until they expire.
pub(crate) async fn unbind(
    ipam: &Ipam,
    app: &str,
    pool: &str,
) -> Result<Option<AppBinding>, IpamError> {
    let key = ipam.keys.app_pools(app);
    let key = key.as_str();
    retry::optimistic::<_, IpamError, _, _>(ipam.opts.max_attempts, move || async move {
        let batch = store::read(&ipam.client, vec![store::get(key)]).await?;
        let Some(cur) = store::decode_one::<AppBinding>(&batch.responses[0])? else {
            return Err(IpamError::NotBound {
                app: app.into(),
                pool: pool.into(),
            });
        };
        let next = apps::unbind(cur.value, pool)?;
        let op = match &next {
            Some(b) => store::put(key, b),
            None => store::delete(key),
        };
        let compares = vec![store::unchanged(key, Some(cur.mod_revision))];
        let done = store::commit(&ipam.client, compares, vec![op]).await?;
        Ok(done.applied().then_some(next))
    })
    .await?
    .ok_or_else(|attempts| IpamError::Contention {
        what: format!("unbind pool {pool} from {app}"),
        attempts,
    })
}

/// The bound ranges of `app` (every app when `None`), from one snapshot.
pub(crate) async fn app_ranges(ipam: &Ipam, app: Option<&str>) -> Result<Vec<AppRange>, IpamError> {
    let keys = &ipam.keys;
    let reads = vec![
        store::get_prefix(keys.app_pools_prefix()),
        store::get_prefix(keys.pools_prefix()),
    ];
    let batch = store::read(&ipam.client, reads).await?;
    let bindings: Vec<Rec<AppBinding>> = store::decode_all(batch.responses[0].kvs())?;
    let pools: Vec<Rec<Pool>> = store::decode_all(batch.responses[1].kvs())?;
    let bindings: Vec<AppBinding> = bindings.into_iter().map(|b| b.value).collect();
    let pools: Vec<Pool> = pools.into_iter().map(|p| p.value).collect();
    Ok(apps::ranges(&bindings, &pools, app))
}

/// The app's reserve: addresses its pods gave up that it may take back, by address.
pub(crate) async fn app_reserve(ipam: &Ipam, app: &str) -> Result<Vec<AppReserved>, IpamError> {
    let prefix = ipam.keys.app_reserve_prefix(app);
    let (recs, _) = store::scan_json::<AppReserved>(&ipam.client, &prefix, 0).await?;
    let now = now_secs();
    let mut out: Vec<AppReserved> = recs
        .into_iter()
        .map(|r| r.value)
        .filter(|r| r.until > now)
        .collect();
    out.sort_by_key(|r| r.ip);
    Ok(out)
}

/// Every block record (all nodes, all pools).
async fn all_blocks(ipam: &Ipam) -> Result<Vec<Rec<Block>>, IpamError> {
    let root = ipam.keys.node_blocks_root();
    Ok(store::scan_json(&ipam.client, &root, 0).await?.0)
}

async fn pool_blocks(ipam: &Ipam, pool: &str) -> Result<Vec<Rec<Block>>, IpamError> {
    let mut blocks = all_blocks(ipam).await?;
    blocks.retain(|b| b.value.pool == pool);
    Ok(blocks)
}

pub(crate) async fn pool_usage(
    ipam: &Ipam,
    name: Option<&str>,
) -> Result<Vec<PoolUsage>, IpamError> {
    let pools = match name {
        Some(n) => vec![get_pool(ipam, n).await?],
        None => list_pools(ipam).await?,
    };
    let all = all_blocks(ipam).await?;
    let bindings = bindings(ipam).await?.0;
    let now = now_secs();
    let mut out = Vec::with_capacity(pools.len());
    for pool in pools {
        let blocks: Vec<_> = all.iter().filter(|b| b.value.pool == pool.name).collect();
        let used: u64 = blocks
            .iter()
            .map(|b| b.value.allocations.len() as u64)
            .sum();
        let reserved: u64 = blocks
            .iter()
            .flat_map(|b| {
                b.value
                    .reserved
                    .iter()
                    .filter(|(ip, r)| r.until > now && !b.value.allocations.contains_key(*ip))
            })
            .count() as u64;
        let assignable = pool.assignable_count();
        out.push(PoolUsage {
            blocks_claimed: blocks.len() as u64,
            blocks_total: pool.block_count(),
            ips_assignable: assignable,
            ips_used: used,
            ips_reserved: reserved,
            ips_free: assignable.saturating_sub(used + reserved),
            apps: apps::apps_of(&bindings, &pool.name),
            pool,
        });
    }
    Ok(out)
}

fn claim_key(ipam: &Ipam, b: &Block) -> String {
    ipam.keys
        .block(&b.pool, b.cidr.network(), b.cidr.prefix_len())
}

/// Ops that give a block back: record and claim go, the pool record is
/// rewritten unchanged and its "full" marker dropped. The rewrite makes every
/// claim prepared before this point fail its compare on the pool key: such a
/// claim may have seen the block unclaimed before its last owner took it,
/// and would seed the block's sequence numbers from that older revision —
/// numbers the last owner may have handed out, so a stale
/// `release_if_unchanged` of its allocation could match the new one.
fn give_back_ops(ipam: &Ipam, pool: &Rec<Pool>, b: &Rec<Block>) -> Vec<etcd_client::TxnOp> {
    vec![
        store::delete(&b.key),
        store::delete(claim_key(ipam, &b.value)),
        store::put(&pool.key, &pool.value),
        store::delete(ipam.keys.pool_full(&pool.value.name)),
    ]
}

pub(crate) async fn remove_pool(ipam: &Ipam, name: &str) -> Result<(), IpamError> {
    retry::optimistic(ipam.opts.max_attempts, || remove_pool_once(ipam, name))
        .await?
        .ok_or_else(|attempts| IpamError::Contention {
            what: format!("remove pool {name}"),
            attempts,
        })
}

/// One round of [`remove_pool`]; `None` when a compare failed.
async fn remove_pool_once(ipam: &Ipam, name: &str) -> Result<Option<()>, IpamError> {
    let mut pool = pool_rec(ipam, name).await?;
    let (bound, bindings_rev) = bindings(ipam).await?;
    let apps = apps::apps_of(&bound, name);
    if !apps.is_empty() {
        return Err(IpamError::PoolBound {
            pool: name.into(),
            apps,
        });
    }
    let blocks = pool_blocks(ipam, name).await?;
    let allocated: usize = blocks.iter().map(|b| b.value.allocations.len()).sum();
    if allocated > 0 {
        return Err(IpamError::PoolInUse {
            pool: name.into(),
            allocated,
        });
    }
    // Each chunk only deletes blocks still empty as read; the pool key
    // goes last, once no block is left (a claim compares the pool key).
    for chunk in blocks.chunks(BLOCKS_PER_TXN) {
        let mut compares: Vec<_> = chunk
            .iter()
            .map(|b| store::unchanged(&b.key, Some(b.mod_revision)))
            .collect();
        compares.push(store::unchanged(&pool.key, Some(pool.mod_revision)));
        let mut ops: Vec<_> = chunk
            .iter()
            .flat_map(|b| {
                [
                    store::delete(&b.key),
                    store::delete(claim_key(ipam, &b.value)),
                ]
            })
            .collect();
        ops.push(store::put(&pool.key, &pool.value));
        match store::commit(&ipam.client, compares, ops).await?.revision() {
            Some(rev) => pool.mod_revision = rev,
            None => return Ok(None),
        }
    }
    let compares = vec![
        store::unchanged(&pool.key, Some(pool.mod_revision)),
        store::prefix_empty(ipam.keys.pool_blocks_prefix(name)),
        store::prefix_unchanged_since(ipam.keys.app_pools_prefix(), bindings_rev),
    ];
    let ops = vec![
        store::delete(&pool.key),
        store::delete(ipam.keys.pool_full(name)),
    ];
    if !store::commit(&ipam.client, compares, ops).await?.applied() {
        return Ok(None);
    }
    tracing::info!(pool = %name, "pool removed");
    Ok(Some(()))
}

pub(crate) async fn list_blocks(ipam: &Ipam, filter: &Filter) -> Result<Vec<Block>, IpamError> {
    if let Some(p) = &filter.pool {
        get_pool(ipam, p).await?;
    }
    let prefix = match &filter.node {
        Some(n) => ipam.keys.node_blocks_prefix(n),
        None => ipam.keys.node_blocks_root(),
    };
    let (blocks, _) = store::scan_json::<Block>(&ipam.client, &prefix, 0).await?;
    let mut blocks: Vec<Block> = blocks
        .into_iter()
        .map(|r| r.value)
        .filter(|b| filter.node.as_ref().is_none_or(|n| &b.node == n))
        .filter(|b| filter.pool.as_ref().is_none_or(|p| &b.pool == p))
        .collect();
    blocks.sort_by(|a, b| (&a.pool, a.cidr).cmp(&(&b.pool, b.cidr)));
    Ok(blocks)
}

pub(crate) async fn release_block(ipam: &Ipam, block: &str) -> Result<Block, IpamError> {
    let cidr = parse_network(block).map_err(IpamError::InvalidRequest)?;
    let pools = list_pools(ipam).await?;
    let pool = pools
        .iter()
        .find(|p| p.cidr.contains(&cidr.network()))
        .ok_or_else(|| IpamError::UnknownBlock(format!("{cidr} (in no pool)")))?;
    if pool.block_of(cidr.network()) != Some(cidr) {
        return Err(IpamError::UnknownBlock(format!(
            "{cidr} (blocks of pool {} are /{})",
            pool.name,
            pool.block_prefix_len()
        )));
    }
    retry::optimistic::<_, IpamError, _, _>(ipam.opts.max_attempts, move || async move {
        let pool_rec = pool_rec(ipam, &pool.name).await?;
        let b = match owned_block(ipam, pool, cidr).await? {
            Owned::Claimed(b) => b,
            Owned::Unclaimed { .. } => {
                return Err(IpamError::UnknownBlock(format!("{cidr} (not claimed)")))
            }
        };
        if !b.value.allocations.is_empty() {
            return Err(IpamError::BlockInUse {
                block: cidr.to_string(),
                allocated: b.value.allocations.len(),
            });
        }
        let compares = vec![
            store::unchanged(&b.key, Some(b.mod_revision)),
            store::unchanged(&pool_rec.key, Some(pool_rec.mod_revision)),
        ];
        let ops = give_back_ops(ipam, &pool_rec, &b);
        if !store::commit(&ipam.client, compares, ops).await?.applied() {
            return Ok(None);
        }
        tracing::info!(block = %cidr, node = %b.value.node, "block released");
        Ok(Some(b.value))
    })
    .await?
    .ok_or_else(|attempts| IpamError::Contention {
        what: format!("release block {cidr}"),
        attempts,
    })
}

pub(crate) async fn node_attachments(
    ipam: &Ipam,
    node: &str,
) -> Result<Vec<Attachment>, IpamError> {
    let prefix = ipam.keys.node_ips_prefix(node);
    let (recs, _) = store::scan_json::<Attachment>(&ipam.client, &prefix, 0).await?;
    let mut out: Vec<Attachment> = recs.into_iter().map(|r| r.value).collect();
    out.sort_by_key(|a| a.ip);
    Ok(out)
}

async fn all_attachments(ipam: &Ipam) -> Result<Vec<Attachment>, IpamError> {
    let prefix = ipam.keys.handles_prefix();
    let (recs, _) = store::scan_json::<Attachment>(&ipam.client, &prefix, 0).await?;
    Ok(recs.into_iter().map(|r| r.value).collect())
}

pub(crate) async fn list_ips(ipam: &Ipam, filter: &Filter) -> Result<Vec<Attachment>, IpamError> {
    if let Some(p) = &filter.pool {
        get_pool(ipam, p).await?;
    }
    let mut all = match &filter.node {
        Some(n) => node_attachments(ipam, n).await?,
        None => all_attachments(ipam).await?,
    };
    all.retain(|a| filter.pool.as_ref().is_none_or(|p| &a.pool == p));
    all.sort_by_key(|a| a.ip);
    Ok(all)
}

pub(crate) async fn ip_info(ipam: &Ipam, ip: Ipv4Addr) -> Result<IpInfo, IpamError> {
    let pools = list_pools(ipam).await?;
    let pool = pools
        .iter()
        .find(|p| p.cidr.contains(&ip))
        .ok_or(IpamError::UnknownIp(ip))?;
    let cidr = pool.block_of(ip).expect("ip is inside the pool");
    let (key, block) = match owned_block(ipam, pool, cidr).await? {
        Owned::Claimed(b) => (b.key, Some(b.value)),
        Owned::Unclaimed { .. } => (String::new(), None),
    };
    let state = if let Some(reason) = pool.unassignable_reason(ip) {
        IpState::Unassignable { reason }
    } else {
        match &block {
            None => IpState::Unclaimed,
            Some(b) => match b.allocations.get(&ip) {
                Some(a) => {
                    let att = crate::release::handle(ipam, &a.container_id, &a.ifname)
                        .await?
                        .filter(|h| h.ip == ip && h.seq == a.seq)
                        .ok_or_else(|| IpamError::Corrupt {
                            key: key.clone(),
                            reason: format!("allocation of {ip} has no matching handle"),
                        })?;
                    IpState::Allocated {
                        attachment: Box::new(att),
                    }
                }
                None => match b.reserved.get(&ip).filter(|r| r.until > now_secs()) {
                    Some(r) => IpState::Reserved {
                        reservation: r.clone(),
                    },
                    None => IpState::Free {
                        freed_at: b.freed_at.get(&ip).copied(),
                    },
                },
            },
        }
    };
    Ok(IpInfo {
        ip,
        pool: pool.name.clone(),
        block: cidr,
        block_node: block.map(|b| b.node),
        state,
    })
}

pub(crate) async fn publish_node_report(
    ipam: &Ipam,
    report: &NodeAttachmentsReport,
) -> Result<(), IpamError> {
    if report.node.is_empty() || report.node.contains('/') {
        return Err(IpamError::InvalidRequest(format!(
            "node name {:?} must be non-empty without '/'",
            report.node
        )));
    }
    let key = ipam.keys.node_attachments(&report.node);
    ipam.client
        .kv_client()
        .put(key, store::json(report), None)
        .await?;
    Ok(())
}

/// Registrations and reports under `{prefix}/nodes/`.
async fn nodes(
    ipam: &Ipam,
) -> Result<(BTreeSet<String>, BTreeMap<String, NodeAttachmentsReport>), IpamError> {
    let (kvs, _) = store::scan(&ipam.client, &ipam.keys.nodes_prefix(), 0).await?;
    let mut registered = BTreeSet::new();
    let mut reports = BTreeMap::new();
    for kv in &kvs {
        let key = String::from_utf8_lossy(kv.key());
        match ipam.keys.parse_node_key(&key) {
            Some(NodeKey::Registration(n)) => {
                registered.insert(n.to_string());
            }
            Some(NodeKey::Attachments(n)) => {
                let r: Rec<NodeAttachmentsReport> = store::decode(kv)?;
                reports.insert(n.to_string(), r.value);
            }
            None => {}
        }
    }
    Ok((registered, reports))
}

pub(crate) async fn node_reports(
    ipam: &Ipam,
) -> Result<BTreeMap<String, NodeAttachmentsReport>, IpamError> {
    Ok(nodes(ipam).await?.1)
}

pub(crate) async fn registered_nodes(ipam: &Ipam) -> Result<BTreeSet<String>, IpamError> {
    Ok(nodes(ipam).await?.0)
}

pub(crate) async fn check(
    ipam: &Ipam,
    api: Option<ApiView>,
    opts: &CheckOptions,
) -> Result<CheckReport, IpamError> {
    let attachments = all_attachments(ipam).await?;
    let (registered_nodes, reports) = nodes(ipam).await?;
    let input = CheckInput {
        attachments,
        registered_nodes,
        reports,
        api,
    };
    Ok(classify(ipam.keys.prefix(), &input, opts))
}

pub(crate) async fn audit(ipam: &Ipam) -> Result<Vec<String>, IpamError> {
    let keys = &ipam.keys;
    let c = &ipam.client;
    let (blocks, rev) = store::scan_json::<Block>(c, &keys.node_blocks_root(), 0).await?;
    let (claims, _) = store::scan_json::<BlockClaim>(c, &keys.blocks_prefix(), rev).await?;
    let (handles, _) = store::scan_json::<Attachment>(c, &keys.handles_prefix(), rev).await?;
    let (index, _) = store::scan_json::<Attachment>(c, &keys.node_ips_root(), rev).await?;
    let (pools, _) = store::scan_json::<Pool>(c, &keys.pools_prefix(), rev).await?;
    let (bound, _) = store::scan_json::<AppBinding>(c, &keys.app_pools_prefix(), rev).await?;
    let bound: Vec<AppBinding> = bound.into_iter().map(|b| b.value).collect();
    let pools: BTreeMap<&str, &Pool> = pools
        .iter()
        .map(|p| (p.value.name.as_str(), &p.value))
        .collect();
    let handles: BTreeMap<&str, &Attachment> =
        handles.iter().map(|h| (h.key.as_str(), &h.value)).collect();
    let index: BTreeMap<&str, &Attachment> =
        index.iter().map(|h| (h.key.as_str(), &h.value)).collect();
    let claims: BTreeMap<&str, &BlockClaim> =
        claims.iter().map(|c| (c.key.as_str(), &c.value)).collect();
    let mut problems = Vec::new();
    let mut owner: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut recorded = BTreeSet::new();
    for rec in &blocks {
        let b = &rec.value;
        let expected = keys.node_block(&b.node, &b.pool, b.cidr.network(), b.cidr.prefix_len());
        if rec.key != expected {
            problems.push(format!(
                "block {} of {} stored at {}",
                b.cidr, b.node, rec.key
            ));
        }
        let ck = claim_key(ipam, b);
        if !claims
            .get(ck.as_str())
            .is_some_and(|c| c.node == b.node && c.cidr == b.cidr)
        {
            problems.push(format!(
                "block {} of {} has no matching claim",
                b.cidr, b.node
            ));
        }
        if !recorded.insert(ck) {
            problems.push(format!("block {} has two records", b.cidr));
        }
        let Some(pool) = pools.get(b.pool.as_str()) else {
            problems.push(format!(
                "block {} belongs to missing pool {}",
                b.cidr, b.pool
            ));
            continue;
        };
        if pool.block_of(b.cidr.network()) != Some(b.cidr) {
            problems.push(format!(
                "block {} is not a block of pool {}",
                b.cidr, b.pool
            ));
        }
        for (ip, a) in &b.allocations {
            let who = format!("{}/{}", a.container_id, a.ifname);
            if let Some(prev) = owner.insert(*ip, who.clone()) {
                problems.push(format!("{ip} allocated twice: {prev} and {who}"));
            }
            if !b.cidr.contains(ip) || !pool.is_assignable(*ip) {
                problems.push(format!(
                    "{ip} allocated in {} but not assignable there",
                    b.cidr
                ));
            }
            if a.seq >= b.next_seq {
                problems.push(format!("{ip} has seq {} >= next seq {}", a.seq, b.next_seq));
            }
            let h = handles.get(keys.handle(&a.container_id, &a.ifname).as_str());
            if !h.is_some_and(|h| h.ip == *ip && h.seq == a.seq && h.block == b.cidr) {
                problems.push(format!("{ip} ({who}) has no matching handle"));
            }
            let i = index.get(keys.node_ip(&a.node, *ip).as_str());
            if !i.is_some_and(|i| i.seq == a.seq && i.container_id == a.container_id) {
                problems.push(format!(
                    "{ip} ({who}) missing from node index of {}",
                    a.node
                ));
            }
        }
    }
    for (k, c) in &claims {
        if !recorded.contains(*k) {
            problems.push(format!(
                "claim of {} by {} has no block record",
                c.cidr, c.node
            ));
        }
    }
    for h in handles.values() {
        let apps = apps::apps_of(&bound, &h.pool);
        if !apps.is_empty() && !h.pod_namespace.as_ref().is_some_and(|ns| apps.contains(ns)) {
            problems.push(format!(
                "{} in pool {} (bound to {apps:?}) is held by {}",
                h.ip,
                h.pool,
                h.pod()
                    .unwrap_or_else(|| format!("container {}", h.container_id))
            ));
        }
        if owner.get(&h.ip) != Some(&format!("{}/{}", h.container_id, h.ifname)) {
            problems.push(format!(
                "handle {}/{} points at {} which its block does not record",
                h.container_id, h.ifname, h.ip
            ));
        }
    }
    for (k, i) in &index {
        if !handles.contains_key(keys.handle(&i.container_id, &i.ifname).as_str()) {
            problems.push(format!("node index entry {k} has no handle"));
        }
    }
    Ok(problems)
}
