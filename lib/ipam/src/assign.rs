//! CNI ADD: find or claim an address and write block + handle + index in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use leengine_store::keys::parse_block_segment;

use crate::choose::{choose_address, free_blocks, pick_free_block};
use crate::error::IpamError;
use crate::model::{
    Allocation, AssignRequest, Assignment, Attachment, Block, BlockClaim, Pool, StickyRecord,
};
use crate::store::{self, Rec};
use crate::{now_secs, Ipam};

/// `None` from a step: a compare failed (someone else wrote first); re-read and retry.
type Step = Option<Attachment>;

/// Blocks to try in a row when other nodes keep taking the one we aimed at.
const CLAIM_TRIES: usize = 8;

enum Claimed {
    Done(Box<Attachment>),
    /// The block exists now (another node claimed it).
    Taken,
    /// Something else changed (our handle, the pool): re-read everything.
    Conflict,
}

impl Claimed {
    fn done(self) -> Step {
        match self {
            Claimed::Done(a) => Some(*a),
            Claimed::Taken | Claimed::Conflict => None,
        }
    }
}

/// Claimed blocks per eligible pool, read at `revision`.
struct Claimable {
    by_pool: BTreeMap<String, BTreeSet<Ipv4Net>>,
    revision: i64,
}

pub(crate) async fn assign(ipam: &Ipam, req: &AssignRequest) -> Result<Assignment, IpamError> {
    validate(req)?;
    for attempt in 0..ipam.opts.max_attempts {
        if let Some(a) = try_assign(ipam, req).await? {
            if a.created {
                tracing::debug!(ip = %a.ip, container = %a.attachment.container_id, node = %a.attachment.node, "assigned");
            }
            return Ok(a);
        }
        backoff(attempt).await;
    }
    Err(IpamError::Contention {
        what: format!("assign {}/{}", req.container_id, req.ifname),
        attempts: ipam.opts.max_attempts,
    })
}

/// One read-decide-commit round; `None` when a compare failed.
async fn try_assign(ipam: &Ipam, req: &AssignRequest) -> Result<Option<Assignment>, IpamError> {
    let keys = &ipam.keys;
    let handle_key = keys.handle(&req.container_id, &req.ifname);
    let sticky_key = pod_identity(req).map(|(ns, name)| keys.sticky(ns, name));
    let mut reads = vec![
        store::get(&handle_key),
        store::get_prefix(&keys.pools_prefix()),
        store::get_prefix(&keys.node_blocks_prefix(&ipam.node)),
    ];
    if let Some(k) = &sticky_key {
        reads.push(store::get(k));
    }
    let batch = store::read(&ipam.client, reads).await?;
    if let Some(h) = store::decode_one::<Attachment>(&batch.responses[0])? {
        return Ok(Some(Assignment::new(h.value, false)));
    }
    let pools: Vec<Rec<Pool>> = store::decode_all(batch.responses[1].kvs())?;
    let own: Vec<Rec<Block>> = store::decode_all(batch.responses[2].kvs())?;
    let sticky = match &sticky_key {
        Some(_) => store::decode_one::<StickyRecord>(&batch.responses[3])?,
        None => None,
    };
    let ctx = Ctx {
        ipam,
        req,
        handle_key: &handle_key,
        now: now_secs(),
    };
    let eligible = eligible_pools(&pools, &req.pools)?;
    let step = if let Some(ip) = req.requested_ip {
        ctx.specific(&eligible, ip, None).await?
    } else if let Some(s) = sticky.filter(|s| s.value.until > ctx.now) {
        match ctx.specific(&eligible, s.value.ip, Some(&s.key)).await {
            // Someone took or excluded the address meanwhile: a fresh one will do.
            Err(IpamError::RequestedIpTaken { .. } | IpamError::RequestedIpNotInPool { .. }) => {
                ctx.any(&eligible, &own).await?
            }
            other => other?,
        }
    } else {
        ctx.any(&eligible, &own).await?
    };
    Ok(step.map(|att| Assignment::new(att, true)))
}

/// Randomised, growing pause so racing writers (one block is one key)
/// spread out instead of colliding again in lockstep.
pub(crate) async fn backoff(attempt: u32) {
    let cap = 1u64 << attempt.min(6);
    let ms = rand::random_range(0..=cap);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn validate(req: &AssignRequest) -> Result<(), IpamError> {
    let segment = |what: &str, v: &str| {
        if v.is_empty() || v.contains('/') || v.len() > 253 {
            Err(IpamError::InvalidRequest(format!(
                "{what} {v:?} must be 1-253 characters without '/'"
            )))
        } else {
            Ok(())
        }
    };
    segment("container id", &req.container_id)?;
    segment("ifname", &req.ifname)?;
    if let Some(ns) = &req.pod_namespace {
        segment("pod namespace", ns)?;
    }
    if let Some(name) = &req.pod_name {
        segment("pod name", name)?;
    }
    Ok(())
}

fn pod_identity(req: &AssignRequest) -> Option<(&str, &str)> {
    Some((req.pod_namespace.as_deref()?, req.pod_name.as_deref()?))
}

/// The requested pools in order (all must exist), or every pool by name.
fn eligible_pools<'a>(
    pools: &'a [Rec<Pool>],
    wanted: &[String],
) -> Result<Vec<&'a Rec<Pool>>, IpamError> {
    if wanted.is_empty() {
        let mut all: Vec<_> = pools.iter().collect();
        all.sort_by(|a, b| a.value.name.cmp(&b.value.name));
        return Ok(all);
    }
    wanted
        .iter()
        .map(|w| {
            pools
                .iter()
                .find(|p| &p.value.name == w)
                .ok_or_else(|| IpamError::UnknownPool(w.clone()))
        })
        .collect()
}

struct Ctx<'a> {
    ipam: &'a Ipam,
    req: &'a AssignRequest,
    handle_key: &'a str,
    now: u64,
}

impl Ctx<'_> {
    fn cooldown(&self) -> u64 {
        self.ipam.opts.cooldown.as_secs()
    }

    fn new_block(&self, pool: &Pool, cidr: Ipv4Net, revision: i64) -> Block {
        Block {
            pool: pool.name.clone(),
            cidr,
            node: self.ipam.node.clone(),
            claimed_at: self.now,
            next_seq: u64::try_from(revision).unwrap_or(0) + 1,
            allocations: Default::default(),
            freed_at: Default::default(),
            reserved: Default::default(),
        }
    }

    /// Records the allocation of `ip` in `block` and returns the attachment.
    fn allocate(&self, pool: &Pool, block: &mut Block, ip: Ipv4Addr) -> Attachment {
        let seq = block.next_seq;
        block.next_seq += 1;
        let now = self.now;
        block.allocations.insert(
            ip,
            Allocation {
                seq,
                container_id: self.req.container_id.clone(),
                ifname: self.req.ifname.clone(),
                node: self.ipam.node.clone(),
                since: now,
            },
        );
        block.reserved.remove(&ip);
        block.reserved.retain(|_, r| r.until > now);
        Attachment {
            container_id: self.req.container_id.clone(),
            ifname: self.req.ifname.clone(),
            netns: self.req.netns.clone(),
            pod_namespace: self.req.pod_namespace.clone(),
            pod_name: self.req.pod_name.clone(),
            node: self.ipam.node.clone(),
            ip,
            prefix_len: pool.cidr.prefix_len(),
            gateway: pool.gateway,
            vlan: pool.vlan,
            pool: pool.name.clone(),
            block: block.cidr,
            seq,
            since: now,
        }
    }

    /// Handle and node index of a new attachment.
    fn attachment_ops(&self, att: &Attachment) -> [etcd_client::TxnOp; 2] {
        [
            store::put(self.handle_key, att),
            store::put(&self.ipam.keys.node_ip(&att.node, att.ip), att),
        ]
    }

    /// Allocation in a block that already exists (ours or borrowed):
    /// block record, handle and node index in one transaction.
    async fn in_block(
        &self,
        pool: &Pool,
        block: &Rec<Block>,
        ip: Ipv4Addr,
        mut ops: Vec<etcd_client::TxnOp>,
    ) -> Result<Step, IpamError> {
        let mut b = block.value.clone();
        let att = self.allocate(pool, &mut b, ip);
        let compares = vec![
            store::unchanged(&block.key, Some(block.mod_revision)),
            store::unchanged(self.handle_key, None),
        ];
        ops.push(store::put(&block.key, &b));
        ops.extend(self.attachment_ops(&att));
        let ok = store::commit(&self.ipam.client, compares, ops).await?;
        Ok(ok.then_some(att))
    }

    /// Claims `cidr` (absent at `revision`) for this node and allocates `ip`
    /// (or its best address) in it: claim, block record, handle and index
    /// in one transaction.
    async fn claim(
        &self,
        pool: &Rec<Pool>,
        cidr: Ipv4Net,
        ip: Option<Ipv4Addr>,
        revision: i64,
        mut ops: Vec<etcd_client::TxnOp>,
    ) -> Result<Claimed, IpamError> {
        let p = &pool.value;
        let keys = &self.ipam.keys;
        let mut b = self.new_block(p, cidr, revision);
        let Some(ip) = ip.or_else(|| choose_address(p, &b, self.now, self.cooldown(), true)) else {
            return Ok(Claimed::Taken);
        };
        let att = self.allocate(p, &mut b, ip);
        let claim_key = keys.block(&p.name, cidr.network(), cidr.prefix_len());
        let record_key = keys.node_block(&b.node, &p.name, cidr.network(), cidr.prefix_len());
        let compares = vec![
            store::unchanged(&claim_key, None),
            store::unchanged(&pool.key, Some(pool.mod_revision)),
            store::unchanged(self.handle_key, None),
        ];
        let claim = BlockClaim {
            pool: p.name.clone(),
            cidr,
            node: b.node.clone(),
        };
        ops.push(store::put(&claim_key, &claim));
        ops.push(store::put(&record_key, &b));
        ops.extend(self.attachment_ops(&att));
        let outcome = store::commit_else(
            &self.ipam.client,
            compares,
            ops,
            vec![store::get(&claim_key)],
        )
        .await?;
        match outcome {
            Ok(()) => {
                tracing::info!(block = %cidr, pool = %p.name, node = %b.node, "claimed block");
                Ok(Claimed::Done(Box::new(att)))
            }
            Err(reads) => match reads
                .first()
                .map(store::decode_one::<BlockClaim>)
                .transpose()?
            {
                // Another node got the block first: the caller may try another one at once.
                Some(Some(other)) if other.value.node != self.ipam.node => Ok(Claimed::Taken),
                // A racing pod of this node claimed it: re-read and use it.
                _ => Ok(Claimed::Conflict),
            },
        }
    }

    /// A specific address: requested by the runtime, or the pod's sticky one
    /// (`sticky_key` is then deleted in the same transaction).
    async fn specific(
        &self,
        eligible: &[&Rec<Pool>],
        ip: Ipv4Addr,
        sticky_key: Option<&str>,
    ) -> Result<Step, IpamError> {
        let Some(pool) = eligible.iter().find(|p| p.value.cidr.contains(&ip)) else {
            let names: Vec<_> = eligible.iter().map(|p| p.value.name.as_str()).collect();
            return Err(IpamError::RequestedIpNotInPool {
                ip,
                reason: format!("not in the eligible pools {names:?}"),
            });
        };
        let p = &pool.value;
        if let Some(reason) = p.unassignable_reason(ip) {
            return Err(IpamError::RequestedIpNotInPool { ip, reason });
        }
        let cidr = p.block_of(ip).expect("ip is inside the pool");
        let extra: Vec<_> = sticky_key.map(store::delete).into_iter().collect();
        let block = match owned_block(self.ipam, p, cidr).await? {
            Owned::Claimed(b) => b,
            Owned::Unclaimed { revision } => {
                let claimed = self.claim(pool, cidr, Some(ip), revision, extra);
                return Ok(claimed.await?.done());
            }
            // Released between our two reads: start over.
            Owned::Vanished => return Ok(None),
        };
        if let Some(a) = block.value.allocations.get(&ip) {
            return Err(IpamError::RequestedIpTaken {
                ip,
                by: format!(
                    "container {} ifname {} on node {}",
                    a.container_id, a.ifname, a.node
                ),
            });
        }
        let me = pod_identity(self.req).map(|(ns, n)| format!("{ns}/{n}"));
        if let Some(r) = block.value.reserved.get(&ip) {
            if r.until > self.now && Some(&r.pod) != me.as_ref() {
                return Err(IpamError::RequestedIpTaken {
                    ip,
                    by: format!("reserved for pod {} until {}", r.pod, r.until),
                });
            }
        }
        self.in_block(p, &block, ip, extra).await
    }

    /// Any address: own blocks, then a new block, then still-cooling
    /// addresses of own blocks, pool by pool; borrowing from other nodes'
    /// blocks only when no pool has anything else left.
    async fn any(&self, eligible: &[&Rec<Pool>], own: &[Rec<Block>]) -> Result<Step, IpamError> {
        let names: BTreeSet<&str> = eligible.iter().map(|p| p.value.name.as_str()).collect();
        let mut blocks: Vec<&Rec<Block>> = own
            .iter()
            .filter(|b| names.contains(b.value.pool.as_str()))
            .collect();
        blocks.sort_by_key(|b| b.value.cidr);
        let cd = self.cooldown();
        let mut claimed: Option<Claimable> = None;
        for pool in eligible {
            let p = &pool.value;
            let mine: Vec<&Rec<Block>> = blocks
                .iter()
                .copied()
                .filter(|b| b.value.pool == p.name)
                .collect();
            for b in &mine {
                if let Some(ip) = choose_address(p, &b.value, self.now, cd, false) {
                    return self.in_block(p, b, ip, Vec::new()).await;
                }
            }
            if claimed.is_none() {
                match self.claimed_blocks(eligible, own.len()).await? {
                    Some(c) => claimed = Some(c),
                    // This node claimed a block since we looked: use it instead of another claim.
                    None => return Ok(None),
                }
            }
            let c = claimed.as_ref().expect("just read");
            if let Some(step) = self.claim_free(pool, c).await? {
                return Ok(step);
            }
            for b in &mine {
                if let Some(ip) = choose_address(p, &b.value, self.now, cd, true) {
                    return self.in_block(p, b, ip, Vec::new()).await;
                }
            }
        }
        for pool in eligible {
            if let Some(step) = self.borrow(pool).await? {
                return Ok(step);
            }
        }
        Err(IpamError::PoolExhausted {
            pools: names.into_iter().map(String::from).collect(),
        })
    }

    /// Which blocks of every eligible pool are claimed, in one round trip.
    /// `None` when this node's own block count changed since it last looked
    /// (`owned`): a racing pod of this node just claimed one.
    async fn claimed_blocks(
        &self,
        eligible: &[&Rec<Pool>],
        owned: usize,
    ) -> Result<Option<Claimable>, IpamError> {
        let keys = &self.ipam.keys;
        let prefixes: Vec<String> = eligible
            .iter()
            .map(|p| keys.pool_blocks_prefix(&p.value.name))
            .collect();
        let mut reads = vec![store::get_prefix_keys(
            &keys.node_blocks_prefix(&self.ipam.node),
        )];
        reads.extend(prefixes.iter().map(|p| store::get_prefix_keys(p)));
        let batch = store::read(&self.ipam.client, reads).await?;
        if batch.responses[0].kvs().len() != owned {
            return Ok(None);
        }
        let mut by_pool = BTreeMap::new();
        for ((pool, prefix), resp) in eligible.iter().zip(&prefixes).zip(&batch.responses[1..]) {
            by_pool.insert(pool.value.name.clone(), claimed_set(resp, prefix));
        }
        Ok(Some(Claimable {
            by_pool,
            revision: batch.revision,
        }))
    }

    /// Claims a free block of `pool`; `Ok(None)` when the pool has none
    /// left. A block another node took meanwhile is skipped at once.
    async fn claim_free(
        &self,
        pool: &Rec<Pool>,
        claimed: &Claimable,
    ) -> Result<Option<Step>, IpamError> {
        let p = &pool.value;
        let empty = BTreeSet::new();
        let mut taken = claimed.by_pool.get(&p.name).unwrap_or(&empty).clone();
        for _ in 0..CLAIM_TRIES {
            let free = free_blocks(p, &taken);
            let Some(cidr) = pick_free_block(&free, &self.ipam.node) else {
                return Ok(None);
            };
            match self
                .claim(pool, cidr, None, claimed.revision, Vec::new())
                .await?
            {
                Claimed::Taken => {
                    taken.insert(cidr);
                }
                other => return Ok(Some(other.done())),
            }
        }
        Ok(Some(None))
    }

    /// Last resort: a free address in a block another node owns.
    async fn borrow(&self, pool: &Rec<Pool>) -> Result<Option<Step>, IpamError> {
        let p = &pool.value;
        let root = self.ipam.keys.node_blocks_root();
        let (blocks, _) = store::scan_json::<Block>(&self.ipam.client, &root, 0).await?;
        let blocks: Vec<_> = blocks.iter().filter(|b| b.value.pool == p.name).collect();
        for cooldown_ok in [false, true] {
            for b in &blocks {
                if let Some(ip) =
                    choose_address(p, &b.value, self.now, self.cooldown(), cooldown_ok)
                {
                    tracing::info!(%ip, block = %b.value.cidr, owner = %b.value.node, "borrowing address");
                    return Ok(Some(self.in_block(p, b, ip, Vec::new()).await?));
                }
            }
        }
        Ok(None)
    }
}

/// Block CIDRs from a keys-only read of `{prefix}/ipam/blocks/{pool}/`.
fn claimed_set(resp: &etcd_client::GetResponse, prefix: &str) -> BTreeSet<Ipv4Net> {
    resp.kvs()
        .iter()
        .filter_map(|kv| {
            let seg = std::str::from_utf8(kv.key()).ok()?.strip_prefix(prefix)?;
            let (ip, len) = parse_block_segment(seg)?;
            Ipv4Net::new(ip, len).ok()
        })
        .collect()
}

/// Where the block `cidr` of `pool` stands.
pub(crate) enum Owned {
    /// Not claimed at `revision`.
    Unclaimed {
        revision: i64,
    },
    Claimed(Rec<Block>),
    /// Claimed, but the record was gone by the second read (released meanwhile).
    Vanished,
}

/// Reads the claim of `cidr`, then the owner's record of it.
pub(crate) async fn owned_block(
    ipam: &Ipam,
    pool: &Pool,
    cidr: Ipv4Net,
) -> Result<Owned, IpamError> {
    let claim_key = ipam
        .keys
        .block(&pool.name, cidr.network(), cidr.prefix_len());
    let batch = store::read(&ipam.client, vec![store::get(&claim_key)]).await?;
    let Some(claim) = store::decode_one::<BlockClaim>(&batch.responses[0])? else {
        return Ok(Owned::Unclaimed {
            revision: batch.revision,
        });
    };
    let key = ipam.keys.node_block(
        &claim.value.node,
        &pool.name,
        cidr.network(),
        cidr.prefix_len(),
    );
    let batch = store::read(&ipam.client, vec![store::get(&key)]).await?;
    Ok(match store::decode_one::<Block>(&batch.responses[0])? {
        Some(b) => Owned::Claimed(b),
        None => Owned::Vanished,
    })
}
