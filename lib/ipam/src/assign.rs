//! CNI ADD: find or claim an address and write block + handle + index in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use leengine_store::keys::parse_block_segment;

use crate::apps::{eligible, reserved_order, AppBinding, AppReserved};
use crate::choose::{choose_address, free_blocks, pick_free_block};
use crate::error::IpamError;
use crate::memo::{Learned, Memo, Seen};
use crate::model::{
    Allocation, AssignRequest, Assignment, Attachment, Block, BlockClaim, FullMarker, Pool,
    StickyRecord,
};
use crate::store::{self, Rec};
use crate::{now_secs, Ipam};
use leengine_store::retry;

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

/// Most requests one commit can carry: etcd refuses a transaction of more
/// than 128 operations or compares (`--max-txn-ops`); a request takes two
/// writes, up to three compares, and at worst one block of its own.
const BATCH: usize = 30;

pub(crate) async fn assign(
    ipam: &Ipam,
    req: &AssignRequest,
    memo: Option<&mut Memo>,
) -> Result<Assignment, IpamError> {
    let Some(memo) = memo else {
        return ordinary(ipam, req, None).await;
    };
    let mut answers = assign_all(ipam, std::slice::from_ref(req), memo).await;
    answers.pop().expect("one answer per request")
}

/// Every request, in order: first those the memo can decide, together in
/// one commit per [`BATCH`]; the rest, and all of them when that commit
/// loses a compare, one by one the ordinary way.
pub(crate) async fn assign_all(
    ipam: &Ipam,
    reqs: &[AssignRequest],
    memo: &mut Memo,
) -> Vec<Result<Assignment, IpamError>> {
    let mut answers: Vec<Option<Result<Assignment, IpamError>>> =
        reqs.iter().map(|_| None).collect();
    for (n, chunk) in reqs.chunks(BATCH).enumerate() {
        match quick(ipam, chunk, memo).await {
            Ok(done) => {
                for (i, a) in done {
                    answers[n * BATCH + i] = Some(Ok(a));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "assignment on the memo failed: reading afresh");
                memo.forget();
            }
        }
    }
    let mut out = Vec::with_capacity(reqs.len());
    for (req, answer) in reqs.iter().zip(answers) {
        out.push(match answer {
            Some(a) => a,
            None => ordinary(ipam, req, Some(memo)).await,
        });
    }
    out
}

/// Read, decide, commit, retried on conflict; what it read refills `memo`.
async fn ordinary(
    ipam: &Ipam,
    req: &AssignRequest,
    memo: Option<&mut Memo>,
) -> Result<Assignment, IpamError> {
    validate(req)?;
    let outcome = retry::optimistic(ipam.opts.max_attempts, || try_assign(ipam, req))
        .await
        .and_then(|r| {
            r.ok_or_else(|attempts| IpamError::Contention {
                what: format!("assign {}/{}", req.container_id, req.ifname),
                attempts,
            })
        });
    let a = match (outcome, memo) {
        (Ok((a, learned)), Some(m)) => {
            m.learn(learned);
            a
        }
        (Ok((a, _)), None) => a,
        (Err(e), m) => {
            if let Some(m) = m {
                m.forget();
            }
            return Err(e);
        }
    };
    if a.created {
        tracing::debug!(ip = %a.ip, container = %a.attachment.container_id, node = %a.attachment.node, "assigned");
    }
    Ok(a)
}

/// The requests the memo can decide (see [`crate::memo`]), by their index
/// in `reqs`, committed together in one round trip. Empty when it can
/// decide none, or when the commit lost a compare (the memo then dropped).
async fn quick(
    ipam: &Ipam,
    reqs: &[AssignRequest],
    memo: &mut Memo,
) -> Result<Vec<(usize, Assignment)>, IpamError> {
    let Some(seen) = &memo.seen else {
        return Ok(Vec::new());
    };
    let mut plan = Plan::new(ipam, seen);
    for (i, req) in reqs.iter().enumerate() {
        plan.add(i, req, &memo.reserving);
    }
    let Commit {
        compares,
        ops,
        blocks,
        decided,
    } = plan.into_commit();
    if decided.is_empty() {
        return Ok(Vec::new());
    }
    let Some(revision) = store::commit(&ipam.client, compares, ops).await?.revision() else {
        tracing::debug!("assignment memo stale: reading afresh");
        memo.forget();
        return Ok(Vec::new());
    };
    if let Some(seen) = &mut memo.seen {
        for (key, value) in blocks {
            seen.put(Rec {
                key,
                value,
                mod_revision: revision,
            });
        }
    }
    Ok(decided
        .into_iter()
        .map(|(i, att)| (i, Assignment::new(att, true)))
        .collect())
}

/// What a [`Plan`] commits, and what the commit decides.
struct Commit {
    compares: Vec<etcd_client::Compare>,
    ops: Vec<etcd_client::TxnOp>,
    /// The blocks as the commit writes them.
    blocks: Vec<(String, Block)>,
    decided: Vec<(usize, Attachment)>,
}

/// Assignments decided on a memo, for one commit: each one's allocation
/// applied to a working copy of the node's blocks, and a compare for every
/// fact the memo supplied.
struct Plan<'a> {
    ipam: &'a Ipam,
    /// The memo's view, its blocks with this plan's allocations.
    work: Seen,
    /// Blocks written, with the `mod_revision` the memo has for them.
    touched: BTreeMap<String, i64>,
    handles: BTreeSet<String>,
    compares: Vec<etcd_client::Compare>,
    ops: Vec<etcd_client::TxnOp>,
    decided: Vec<(usize, Attachment)>,
    now: u64,
}

impl<'a> Plan<'a> {
    fn new(ipam: &'a Ipam, seen: &Seen) -> Self {
        let keys = &ipam.keys;
        Plan {
            ipam,
            work: seen.clone(),
            touched: BTreeMap::new(),
            handles: BTreeSet::new(),
            compares: vec![
                store::prefix_unchanged_since(keys.pools_prefix(), seen.revision),
                store::prefix_unchanged_since(keys.app_pools_prefix(), seen.revision),
            ],
            ops: Vec::new(),
            decided: Vec::new(),
            now: now_secs(),
        }
    }

    /// Decides `req` on the memo if it can; a request it cannot decide is
    /// left to the ordinary path.
    fn add(&mut self, i: usize, req: &AssignRequest, reserving: &BTreeSet<String>) {
        let keys = &self.ipam.keys;
        let handle_key = keys.handle(&req.container_id, &req.ifname);
        if validate(req).is_err()
            || req.requested_ip.is_some()
            || req
                .pod_namespace
                .as_ref()
                .is_some_and(|ns| reserving.contains(ns))
            || self.handles.contains(&handle_key)
        {
            return;
        }
        // A stale memo may make the request look wrong (a pool it lacks):
        // the ordinary path, reading afresh, is the one to say so.
        let Ok((eligible, app)) = eligible_pools(&self.work.pools, req, &self.work.bindings) else {
            return;
        };
        let Some(pool) = eligible.first().map(|p| &p.value) else {
            return;
        };
        let ctx = Ctx {
            ipam: self.ipam,
            req,
            handle_key: &handle_key,
            now: self.now,
            full: BTreeSet::new(),
            bindings_revision: self.work.revision,
            app,
            wrote: Default::default(),
        };
        let Some((block, ip)) = self.work.pick(pool, self.now, ctx.cooldown()) else {
            return;
        };
        let mut b = block.clone();
        let att = ctx.allocate(pool, &mut b.value, ip);
        self.touched.entry(b.key.clone()).or_insert(b.mod_revision);
        self.work.put(b);
        self.compares.push(store::absent(&handle_key));
        if let Some((ns, name)) = pod_identity(req) {
            self.compares.push(store::absent(keys.sticky(ns, name)));
        }
        if let Some(ns) = &req.pod_namespace {
            self.compares
                .push(store::prefix_empty(keys.app_reserve_prefix(ns)));
        }
        self.ops.extend(ctx.attachment_ops(&att));
        self.handles.insert(handle_key);
        self.decided.push((i, att));
    }

    /// The plan's compares and writes, each touched block's included.
    fn into_commit(self) -> Commit {
        let Plan {
            work,
            touched,
            mut compares,
            mut ops,
            decided,
            ..
        } = self;
        let mut blocks = Vec::new();
        for (key, revision) in touched {
            let b = work
                .own
                .iter()
                .find(|b| b.key == key)
                .expect("a touched block is in the working copy");
            compares.push(store::unchanged(&key, Some(revision)));
            ops.push(store::put(&key, &b.value));
            blocks.push((key, b.value.clone()));
        }
        Commit {
            compares,
            ops,
            blocks,
            decided,
        }
    }
}

/// One read-decide-commit round; `None` when a compare failed.
async fn try_assign(
    ipam: &Ipam,
    req: &AssignRequest,
) -> Result<Option<(Assignment, Learned)>, IpamError> {
    let keys = &ipam.keys;
    let handle_key = keys.handle(&req.container_id, &req.ifname);
    let sticky_key = pod_identity(req).map(|(ns, name)| keys.sticky(ns, name));
    let mut reads = vec![
        store::get(&handle_key),
        store::get_prefix(keys.pools_prefix()),
        store::get_prefix(keys.node_blocks_prefix(&ipam.node)),
        store::get_prefix(keys.pool_full_prefix()),
        store::get_prefix(keys.app_pools_prefix()),
    ];
    if let Some(ns) = &req.pod_namespace {
        reads.push(store::get_prefix(keys.app_reserve_prefix(ns)));
    }
    if let Some(k) = &sticky_key {
        reads.push(store::get(k));
    }
    let batch = store::read(&ipam.client, reads).await?;
    let mut rest = batch.responses[5..].iter();
    if let Some(h) = store::decode_one::<Attachment>(&batch.responses[0])? {
        return Ok(Some((Assignment::new(h.value, false), Learned::default())));
    }
    let pools: Vec<Rec<Pool>> = store::decode_all(batch.responses[1].kvs())?;
    let own: Vec<Rec<Block>> = store::decode_all(batch.responses[2].kvs())?;
    let markers: Vec<Rec<FullMarker>> = store::decode_all(batch.responses[3].kvs())?;
    let bindings: Vec<Rec<AppBinding>> = store::decode_all(batch.responses[4].kvs())?;
    let reserve: Vec<Rec<AppReserved>> = match &req.pod_namespace {
        Some(_) => store::decode_all(rest.next().expect("reserve read").kvs())?,
        None => Vec::new(),
    };
    let sticky = match &sticky_key {
        Some(_) => store::decode_one::<StickyRecord>(rest.next().expect("sticky read"))?,
        None => None,
    };
    let now = now_secs();
    let full_prefix = keys.pool_full_prefix();
    let bindings: Vec<AppBinding> = bindings.into_iter().map(|b| b.value).collect();
    let (eligible, app) = eligible_pools(&pools, req, &bindings)?;
    let reserve_of = req
        .pod_namespace
        .clone()
        .map(|ns| (ns, !reserve.is_empty()));
    let ctx = Ctx {
        ipam,
        req,
        handle_key: &handle_key,
        now,
        full: markers
            .iter()
            .filter(|m| m.value.holds(now))
            .filter_map(|m| m.key.strip_prefix(&full_prefix).map(String::from))
            .collect(),
        bindings_revision: batch.revision,
        app,
        wrote: Default::default(),
    };
    let step = ctx.decide(&eligible, &own, sticky, reserve).await?;
    let learned = Learned {
        wrote: ctx.wrote.into_inner().unwrap_or_else(|e| e.into_inner()),
        reserve: reserve_of,
        seen: Some(Seen {
            revision: batch.revision,
            pools,
            bindings,
            own,
        }),
    };
    Ok(step.map(|att| (Assignment::new(att, true), learned)))
}

impl Ctx<'_> {
    /// The request's address, the pod's sticky one, the app's reserve, or
    /// any address, in that order.
    async fn decide(
        &self,
        eligible: &[&Rec<Pool>],
        own: &[Rec<Block>],
        sticky: Option<Rec<StickyRecord>>,
        reserve: Vec<Rec<AppReserved>>,
    ) -> Result<Step, IpamError> {
        let (req, now) = (self.req, self.now);
        if let Some(ip) = req.requested_ip {
            return self.specific(eligible, ip, None).await;
        }
        let mut wanted: Vec<(Ipv4Addr, Option<&str>)> = sticky
            .iter()
            .filter(|s| s.value.until > now)
            .map(|s| (s.value.ip, Some(s.key.as_str())))
            .collect();
        let reserve: Vec<AppReserved> = reserve.into_iter().map(|r| r.value).collect();
        let me = pod_identity(req).map(|(ns, n)| format!("{ns}/{n}"));
        wanted.extend(
            reserved_order(&reserve, me.as_deref(), now)
                .into_iter()
                .map(|ip| (ip, None)),
        );
        for (ip, sticky_key) in wanted {
            match self.specific(eligible, ip, sticky_key).await {
                // Someone took or excluded the address meanwhile, or the pool
                // is no longer the app's: the next one will do.
                Err(
                    IpamError::RequestedIpTaken { .. } | IpamError::RequestedIpNotInPool { .. },
                ) => {}
                other => return other,
            }
        }
        self.any(eligible, own).await
    }
}

/// The request's names become etcd key segments.
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
    if let Some(network) = &req.network {
        segment("network", network)?;
    }
    Ok(())
}

fn pod_identity(req: &AssignRequest) -> Option<(&str, &str)> {
    Some((req.pod_namespace.as_deref()?, req.pod_name.as_deref()?))
}

/// The pools this pod may use, in order (see [`crate::apps::eligible`]),
/// and its app when a binding chose them. Every pool named must exist.
fn eligible_pools<'a>(
    pools: &'a [Rec<Pool>],
    req: &AssignRequest,
    bindings: &[AppBinding],
) -> Result<(Vec<&'a Rec<Pool>>, Option<String>), IpamError> {
    let mut all: Vec<String> = pools.iter().map(|p| p.value.name.clone()).collect();
    all.sort();
    let e = eligible(&all, &req.pools, bindings, req.pod_namespace.as_deref());
    if e.pools.is_empty() && !all.is_empty() {
        return Err(IpamError::NoSharedPool {
            namespace: req
                .pod_namespace
                .clone()
                .unwrap_or_else(|| "no namespace".into()),
        });
    }
    let chosen = e
        .pools
        .iter()
        .map(|w| {
            pools
                .iter()
                .find(|p| &p.value.name == w)
                .ok_or_else(|| IpamError::UnknownPool(w.clone()))
        })
        .collect::<Result<_, _>>()?;
    Ok((chosen, e.app))
}

struct Ctx<'a> {
    ipam: &'a Ipam,
    req: &'a AssignRequest,
    handle_key: &'a str,
    now: u64,
    /// Pools whose "full" marker holds: nothing to claim or borrow there.
    full: BTreeSet<String>,
    /// The app bindings were read at this revision; every commit requires
    /// them unchanged, so no ADD lands in a pool bound meanwhile to another app.
    bindings_revision: i64,
    /// The pod's app, when its binding chose the pools.
    app: Option<String>,
    /// The node block this round's commit wrote, for the memo.
    wrote: std::sync::Mutex<Option<Rec<Block>>>,
}

impl Ctx<'_> {
    fn bindings_unchanged(&self) -> etcd_client::Compare {
        store::prefix_unchanged_since(self.ipam.keys.app_pools_prefix(), self.bindings_revision)
    }

    fn remember(&self, key: &str, value: Block, mod_revision: i64) {
        let rec = Rec {
            key: key.to_string(),
            value,
            mod_revision,
        };
        *self.wrote.lock().unwrap_or_else(|e| e.into_inner()) = Some(rec);
    }

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
            network: self.req.network.clone(),
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
            store::put(self.ipam.keys.node_ip(&att.node, att.ip), att),
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
            self.bindings_unchanged(),
        ];
        ops.push(store::put(&block.key, &b));
        ops.extend(self.attachment_ops(&att));
        let done = store::commit(&self.ipam.client, compares, ops).await?;
        let Some(revision) = done.revision() else {
            return Ok(None);
        };
        self.remember(&block.key, b, revision);
        Ok(Some(att))
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
            self.bindings_unchanged(),
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
            Ok(revision) => {
                tracing::info!(block = %cidr, pool = %p.name, node = %b.node, "claimed block");
                self.remember(&record_key, b, revision);
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
        let mut extra: Vec<_> = sticky_key.map(store::delete).into_iter().collect();
        if let Some(ns) = &self.req.pod_namespace {
            // Taken by its app, the address leaves the app's reserve.
            extra.push(store::delete(self.ipam.keys.app_reserve(ns, ip)));
        }
        let block = match owned_block(self.ipam, p, cidr).await? {
            Owned::Claimed(b) => b,
            Owned::Unclaimed { revision } => {
                let claimed = self.claim(pool, cidr, Some(ip), revision, extra);
                return Ok(claimed.await?.done());
            }
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
            if r.excludes(me.as_deref(), self.now) {
                let by = match &r.app {
                    Some(app) => format!("reserved for app {app} until {}", r.until),
                    None => format!("reserved for pod {} until {}", r.pod, r.until),
                };
                return Err(IpamError::RequestedIpTaken { ip, by });
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
            if self.full.contains(&p.name) {
                continue;
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
        let open: Vec<&Rec<Pool>> = eligible
            .iter()
            .copied()
            .filter(|p| !self.full.contains(&p.value.name))
            .collect();
        if !open.is_empty() {
            if let Some(step) = self.borrow(&open).await? {
                return Ok(step);
            }
        }
        let pools = eligible.iter().map(|p| p.value.name.clone()).collect();
        Err(match &self.app {
            Some(app) => IpamError::AppPoolsExhausted {
                app: app.clone(),
                pools,
            },
            None => IpamError::PoolExhausted { pools },
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
            keys.node_blocks_prefix(&self.ipam.node),
        )];
        reads.extend(prefixes.iter().map(store::get_prefix_keys));
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

    /// Last resort: a free address in a block another node owns, pool by
    /// pool, from one scan of every block record. When there is none, each
    /// pool is marked full so the next ADDs skip it without reading.
    async fn borrow(&self, pools: &[&Rec<Pool>]) -> Result<Option<Step>, IpamError> {
        let root = self.ipam.keys.node_blocks_root();
        let (blocks, revision) = store::scan_json::<Block>(&self.ipam.client, &root, 0).await?;
        for pool in pools {
            let p = &pool.value;
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
        }
        self.mark_full(pools, &blocks, revision).await?;
        Ok(None)
    }

    /// Leaves a "full" marker on each pool, valid only if no block record
    /// changed since the scan at `revision` and no block was given back
    /// since the pools were read (block release rewrites the pool record).
    /// Losing that race just means the next ADD scans again.
    async fn mark_full(
        &self,
        pools: &[&Rec<Pool>],
        blocks: &[Rec<Block>],
        revision: i64,
    ) -> Result<(), IpamError> {
        let keys = &self.ipam.keys;
        let mut compares = vec![store::prefix_unchanged_since(
            keys.node_blocks_root(),
            revision,
        )];
        let mut ops = Vec::new();
        for pool in pools {
            let name = &pool.value.name;
            let until = blocks
                .iter()
                .filter(|b| &b.value.pool == name)
                .flat_map(|b| b.value.reserved.values())
                .map(|r| r.until)
                .filter(|u| *u > self.now)
                .min();
            compares.push(store::unchanged(&pool.key, Some(pool.mod_revision)));
            ops.push(store::put(
                keys.pool_full(name),
                &FullMarker { revision, until },
            ));
        }
        if store::commit(&self.ipam.client, compares, ops)
            .await?
            .applied()
        {
            tracing::warn!(pools = ?pools.iter().map(|p| &p.value.name).collect::<Vec<_>>(), "pools exhausted");
        }
        Ok(())
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
}

/// Reads the claim of `cidr`, then claim and the owner's record of it in one
/// snapshot (a claim and its record are written and deleted together, so a
/// claim seen without its record there is corrupt, not a race).
pub(crate) async fn owned_block(
    ipam: &Ipam,
    pool: &Pool,
    cidr: Ipv4Net,
) -> Result<Owned, IpamError> {
    let (net, len) = (cidr.network(), cidr.prefix_len());
    let claim_key = ipam.keys.block(&pool.name, net, len);
    // The owner seen at the previous look; a first look, or a block that
    // changed hands meanwhile, reads again with that owner.
    let owner = std::sync::Mutex::new(None::<String>);
    let (owner, claim_key) = (&owner, claim_key.as_str());
    retry::optimistic::<_, IpamError, _, _>(ipam.opts.max_attempts, move || async move {
        let seen = owner.lock().expect("owner lock").clone();
        let mut reads = vec![store::get(claim_key)];
        if let Some(node) = &seen {
            reads.push(store::get(ipam.keys.node_block(node, &pool.name, net, len)));
        }
        let batch = store::read(&ipam.client, reads).await?;
        let Some(claim) = store::decode_one::<BlockClaim>(&batch.responses[0])? else {
            return Ok(Some(Owned::Unclaimed {
                revision: batch.revision,
            }));
        };
        if seen.as_deref() == Some(claim.value.node.as_str()) {
            return match store::decode_one::<Block>(&batch.responses[1])? {
                Some(b) => Ok(Some(Owned::Claimed(b))),
                None => Err(IpamError::Corrupt {
                    key: claim_key.to_string(),
                    reason: format!("block claimed by {} has no block record", claim.value.node),
                }),
            };
        }
        *owner.lock().expect("owner lock") = Some(claim.value.node);
        Ok(None)
    })
    .await?
    .ok_or_else(|attempts| IpamError::Contention {
        what: format!("read block {cidr}"),
        attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A claim prepared while the block was still unclaimed, committed after
    /// another node claimed it, used it and gave it back, must not hand out
    /// sequence numbers that node already used: a stale release of the old
    /// allocation (same container, ifname, address) would free the new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_claim_cannot_reuse_the_sequence_numbers_of_the_blocks_last_owner() {
        let etcd = leengine_testenv::Etcd::start();
        let client = etcd.root_client().await;
        let keys = leengine_store::Keys::new("/t");
        let opts = crate::IpamOptions {
            cooldown: Duration::ZERO,
            sticky_for: Duration::ZERO,
            ..Default::default()
        };
        let n1 = Ipam::new(client.clone(), keys.clone(), "n1").with_options(opts.clone());
        let n2 = Ipam::new(client, keys.clone(), "n2").with_options(opts);
        let pool = Pool::parse("p", "10.5.0.0/24", "10.5.0.1", 5, 16, &[]).unwrap();
        n1.add_pool(&pool).await.unwrap();
        let req = AssignRequest {
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/c".into(),
            ..Default::default()
        };

        // n1 reads: the pool, and the block unclaimed at that revision.
        let batch = store::read(&n1.client, vec![store::get(keys.pool("p"))])
            .await
            .unwrap();
        let pool_rec: Rec<Pool> = store::decode_one(&batch.responses[0]).unwrap().unwrap();
        // Meanwhile n2 claims a block, allocates, frees, gives the block back.
        let old = n2.assign(&req).await.unwrap();
        n2.release("c", "eth0").await.unwrap().unwrap();
        n2.release_block(&old.attachment.block.to_string())
            .await
            .unwrap();

        // n1 now commits the claim it prepared, for the same container.
        let handle_key = keys.handle("c", "eth0");
        let ctx = Ctx {
            ipam: &n1,
            req: &req,
            handle_key: &handle_key,
            now: now_secs(),
            full: BTreeSet::new(),
            bindings_revision: batch.revision,
            app: None,
            wrote: Default::default(),
        };
        let _ = ctx
            .claim(
                &pool_rec,
                old.attachment.block,
                None,
                batch.revision,
                Vec::new(),
            )
            .await
            .unwrap();
        let new = n1.assign(&req).await.unwrap();
        assert!(
            new.seq > old.seq,
            "seq {} reused after {}",
            new.seq,
            old.seq
        );
        assert!(!n1.release_if_unchanged(&old.attachment).await.unwrap());
        assert!(n1.handle("c", "eth0").await.unwrap().is_some());
    }
}
