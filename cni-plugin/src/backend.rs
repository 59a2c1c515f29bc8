//! Connections to etcd (IPAM) and OVSDB, with their failures mapped to CNI codes.

use crate::config::NetConf;
use crate::error::{CniError, CniResult, INVALID_CONFIG, TRY_AGAIN_LATER};
use leengine_ipam::{AssignRequest, Assignment, Ipam, IpamError, Memo};
use leengine_netdp::{NetdpError, Netlink, NetnsFile};
use leengine_ovsdb::Client as Ovs;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the follow-up after ADD waits for ovs-vswitchd to give the
/// port an OpenFlow number.
pub const OFPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-request limit for etcd and OVSDB: a dead server must turn into
/// "try again later" quickly, not hang the runtime.
const TIMEOUT: Duration = Duration::from_secs(3);

/// external_ids keys on the OVS port of every attachment.
pub use leengine_ovsdb::vswitch::ext_ids::{
    CONTAINER_ID as EXT_CONTAINER, IFNAME as EXT_IFNAME, IP as EXT_IP, NETWORK as EXT_NETWORK,
    OWNER as EXT_OWNER, OWNER_CNI as OWNER, POD_NAME as EXT_POD_NAME, POD_NAMESPACE as EXT_POD_NS,
};

/// Where a call gets its etcd and OVSDB sessions. A one-shot plugin
/// process connects afresh ([`Sessions::cold`]); the node-agent's CNI
/// service ([`crate::serve`]) keeps them across calls ([`Sessions::warm`]),
/// so a call skips the TLS handshake with etcd and the OVSDB connect — the
/// part of ADD that grew most when many pods start at once.
#[derive(Default)]
pub struct Sessions {
    warm: Option<Warm>,
}

#[derive(Default)]
struct Warm {
    /// By OVSDB URL; a closed one is replaced on the next call.
    ovs: Mutex<HashMap<String, Ovs>>,
    /// By the whole etcd configuration (endpoints, TLS files, user); the
    /// client reconnects on its own when etcd comes back.
    etcd: Mutex<HashMap<String, etcd_client::Client>>,
    /// By etcd configuration and node (see [`Turn`]).
    assign: Mutex<HashMap<String, Arc<Turn>>>,
}

type Answer = Result<Assignment, IpamError>;

/// One node's address assignments, made in turn: calls of one node write
/// the same blocks, so at once they would mostly lose their compares and
/// back off. The turn holds the node's IPAM memo, which makes most of them
/// one etcd round trip instead of two; and whoever takes the turn makes
/// every assignment queued meanwhile, so pods starting together share
/// that round trip instead of waiting for one each.
#[derive(Default)]
struct Turn {
    memo: tokio::sync::Mutex<Memo>,
    waiting: Mutex<Vec<(AssignRequest, tokio::sync::oneshot::Sender<Answer>)>>,
}

impl Turn {
    async fn assign(&self, ipam: &Ipam, req: AssignRequest) -> Answer {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        lock(&self.waiting).push((req.clone(), tx));
        let mut memo = self.memo.lock().await;
        // Whoever held the turn answered everything it took from the queue
        // before letting go; still unanswered means still queued (or taken
        // by a call cancelled meanwhile, which dropped its answers).
        match rx.try_recv() {
            Ok(answer) => return answer,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                // A replay: the handle makes it find what a lost commit wrote.
                return ipam.assign_remembering(&req, &mut memo).await;
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
        }
        let (reqs, replies): (Vec<_>, Vec<_>) = std::mem::take(&mut *lock(&self.waiting))
            .into_iter()
            .unzip();
        let answers = ipam.assign_all_remembering(&reqs, &mut memo).await;
        for (reply, answer) in replies.into_iter().zip(answers) {
            if let Err(Ok(orphan)) = reply.send(answer) {
                give_back(ipam, &orphan, "its ADD was cancelled while queued").await;
            }
        }
        drop(memo);
        rx.await.unwrap_or_else(|_| {
            unreachable!("this call's own request was in the batch it answered")
        })
    }
}

/// Gives back an address taken for a call that will make nothing of it
/// (`why`): no rollback and no DEL would free it. One an earlier call took
/// (a replay) is not this call's to give back.
pub async fn give_back(ipam: &Ipam, a: &Assignment, why: &str) {
    if !a.created {
        return;
    }
    match ipam.release_if_unchanged(&a.attachment).await {
        Ok(_) => tracing::debug!(ip = %a.ip, why, "address given back"),
        Err(e) => {
            tracing::warn!(ip = %a.ip, why, error = %e, "cannot give the address back; GC will")
        }
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Sessions");
        match &self.warm {
            None => d.field("warm", &false),
            Some(w) => d
                .field("ovs", &lock(&w.ovs).keys().collect::<Vec<_>>())
                .field("etcd", &lock(&w.etcd).len()),
        }
        .finish()
    }
}

impl Sessions {
    pub fn cold() -> Sessions {
        Sessions::default()
    }

    pub fn warm() -> Sessions {
        Sessions {
            warm: Some(Warm::default()),
        }
    }

    /// Kept across calls: work that follows a call (the gratuitous ARPs)
    /// can run in this process rather than in a detached one.
    pub fn is_warm(&self) -> bool {
        self.warm.is_some()
    }

    pub async fn ovs(&self, conf: &NetConf) -> CniResult<Ovs> {
        let Some(w) = &self.warm else {
            return ovs_at(&conf.ovsdb).await;
        };
        if let Some(c) = lock(&w.ovs).get(&conf.ovsdb).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        // Connected outside the lock: a dead server must not make every
        // waiting call queue behind one connect timeout.
        let c = ovs_at(&conf.ovsdb).await?;
        lock(&w.ovs).insert(conf.ovsdb.clone(), c.clone());
        Ok(c)
    }

    pub async fn ipam(&self, conf: &NetConf) -> CniResult<Ipam> {
        let client = match &self.warm {
            None => etcd(conf).await?,
            Some(w) => {
                let key = serde_json::to_string(&conf.etcd).unwrap_or_default();
                let cached = lock(&w.etcd).get(&key).cloned();
                match cached {
                    Some(c) => c,
                    None => {
                        let c = etcd(conf).await?;
                        lock(&w.etcd).insert(key, c.clone());
                        c
                    }
                }
            }
        };
        Ok(Ipam::new(client, conf.etcd.keys(), node_name(conf)?))
    }
}

impl Sessions {
    /// Takes an address for `req`. A warm call takes it in this node's
    /// turn (see [`Turn`]); a cold call, alone in its process, directly.
    pub async fn assign(&self, conf: &NetConf, ipam: &Ipam, req: AssignRequest) -> Answer {
        let Some(w) = &self.warm else {
            return ipam.assign(&req).await;
        };
        let key = format!(
            "{}\n{}",
            serde_json::to_string(&conf.etcd).unwrap_or_default(),
            conf.node.as_deref().unwrap_or_default()
        );
        let turn = lock(&w.assign).entry(key).or_default().clone();
        turn.assign(ipam, req).await
    }
}

/// The maps are only read and written, never held across an await: a
/// poisoned one still holds usable sessions.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// OVSDB at `url` (`unix:PATH`, `tcp:HOST:PORT`).
pub async fn ovs_at(url: &str) -> CniResult<Ovs> {
    let opts = leengine_ovsdb::Options {
        connect_timeout: TIMEOUT,
        request_timeout: TIMEOUT,
    };
    Ovs::connect_with(url, opts).await.map_err(CniError::from)
}

async fn etcd(conf: &NetConf) -> CniResult<etcd_client::Client> {
    leengine_store::connect_with_timeout(&conf.etcd, TIMEOUT)
        .await
        .map_err(|e| {
            let code = match e {
                leengine_store::StoreError::Unavailable { .. } => TRY_AGAIN_LATER,
                _ => INVALID_CONFIG,
            };
            CniError::new(code, format!("etcd: {e}"))
        })
}

/// A netlink socket in the namespace of the host veth ends (`hostNetns`).
pub async fn host_netlink(conf: &NetConf) -> CniResult<Netlink> {
    match &conf.host_netns {
        None => Ok(Netlink::host()?),
        Some(p) => match NetnsFile::open(p) {
            Ok(ns) => Ok(Netlink::in_netns(&ns).await?),
            Err(NetdpError::NetnsMissing(_)) => Err(CniError::new(
                INVALID_CONFIG,
                format!("hostNetns {} does not exist", p.display()),
            )),
            Err(e) => Err(e.into()),
        },
    }
}

/// The configured node name, else the host name.
pub fn node_name(conf: &NetConf) -> CniResult<String> {
    if let Some(n) = &conf.node {
        return Ok(n.clone());
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            CniError::new(
                INVALID_CONFIG,
                "no \"node\" configured and the host name is unreadable",
            )
        })
}

#[derive(Debug)]
pub struct PortIds<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub pod_namespace: Option<&'a str>,
    pub pod_name: Option<&'a str>,
    pub ip: std::net::Ipv4Addr,
}

pub fn external_ids(ids: &PortIds<'_>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(EXT_OWNER.into(), OWNER.into());
    m.insert(EXT_NETWORK.into(), ids.network.into());
    m.insert(EXT_CONTAINER.into(), ids.container_id.into());
    m.insert(EXT_IFNAME.into(), ids.ifname.into());
    m.insert(EXT_IP.into(), ids.ip.to_string());
    if let Some(ns) = ids.pod_namespace {
        m.insert(EXT_POD_NS.into(), ns.into());
    }
    if let Some(n) = ids.pod_name {
        m.insert(EXT_POD_NAME.into(), n.into());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use leengine_testenv as te;

    fn req(cid: &str) -> AssignRequest {
        AssignRequest {
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{cid}"),
            ..AssignRequest::default()
        }
    }

    async fn ipam(etcd: &te::Etcd) -> Ipam {
        let ipam = Ipam::new(etcd.root_client().await, etcd.keys().clone(), "n1");
        let pool =
            leengine_ipam::Pool::parse("p1", "10.9.0.0/24", "10.9.0.1", 9, 16, &[]).expect("pool");
        ipam.add_pool(&pool).await.expect("add pool");
        ipam
    }

    /// Against a real etcd: `a` waits behind the turn held by the test; `b`
    /// queues behind it and is cancelled there. Whoever takes the turn next
    /// makes both assignments and gives `b`'s address back, since nobody is
    /// left to use it or DEL it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_call_cancelled_before_its_answer_leaves_no_address_behind() {
        let etcd = te::Etcd::start();
        let ipam = Arc::new(ipam(&etcd).await);
        let turn = Arc::new(Turn::default());
        let held = turn.memo.lock().await;
        let spawn = |cid: &'static str| {
            let (turn, ipam) = (turn.clone(), ipam.clone());
            tokio::spawn(async move { turn.assign(&ipam, req(cid)).await })
        };
        let queued = |n: usize| {
            let turn = turn.clone();
            // Hang guard, not a timing assertion.
            tokio::time::timeout(Duration::from_secs(30), async move {
                while lock(&turn.waiting).len() < n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let a = spawn("a");
        queued(1).await.expect("a queued");
        let b = spawn("b");
        queued(2).await.expect("b queued");
        b.abort();
        assert!(b.await.expect_err("aborted").is_cancelled());
        drop(held);
        let got = a.await.expect("a ran").expect("a assigned");
        assert!(got.created);
        assert_eq!(
            ipam.handle("a", "eth0").await.expect("read").map(|h| h.ip),
            Some(got.ip)
        );
        assert!(
            ipam.handle("b", "eth0").await.expect("read").is_none(),
            "b's address was left taken"
        );
    }
}
