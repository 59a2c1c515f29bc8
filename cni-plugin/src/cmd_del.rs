//! DEL: best effort and idempotent, through the one attachment teardown
//! (`leengine_attach::teardown`: port, veth, then the IP — and the IP only
//! once both are gone). Missing pieces are fine; a failed teardown keeps the
//! IP and answers "try again later" so the runtime's next DEL finishes the job.
//! The IPAM's reads run while the datapath is taken apart; only its commit
//! waits for the datapath to be gone.

use crate::backend::{self, Sessions};
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::{CniError, CniResult, TRY_AGAIN_LATER};
use leengine_attach::{
    teardown, Addresses, Failures, HostLinks, IpOutcome, OvsPorts, Plan, PortScope, Release, Target,
};
use leengine_ipam::{Attachment, Ipam, IpamError, PreparedRelease};
use std::sync::Mutex;
use tokio::task::JoinHandle;

/// What a warm service finishes after it has answered: the veth and the
/// address of a DEL (see [`del`]).
pub type Tail = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// In a plugin process everything is done before the answer. In the
/// node-agent's warm service DEL answers once the pod is off the switch
/// (its port removed) and hands back the rest — the veth, whose removal
/// waits for the kernel's RCU grace period (10–30 ms), then the address —
/// for the service to finish under the same attachment lock, so a call for
/// this attachment waits for it. Only with etcd and the host namespace both
/// reached: otherwise the runtime must hear that the IP is kept.
pub async fn del(env: &CniEnv, conf: &NetConf, s: &Sessions) -> CniResult<Option<Tail>> {
    let (ovs, ipam) = tokio::join!(s.ovs(conf), s.ipam(conf));
    let host = backend::host_netlink(conf).await;
    let ports = OvsPorts::new(
        ovs.as_ref().map_err(|e| e.msg.clone()),
        PortScope::Bridge(&conf.bridge),
    );
    match (s.is_warm(), ipam, host) {
        (true, Ok(ipam), Ok(host)) => answer_first(env, &ports, ipam, host).await.map(Some),
        (_, ipam, host) => all_now(env, &ports, ipam, host).await.map(|()| None),
    }
}

fn target(env: &CniEnv) -> Target<'_> {
    Target {
        container_id: env.container_id.as_deref().unwrap_or_default(),
        ifname: env.ifname.as_deref().unwrap_or_default(),
        netns: env.netns.as_deref(),
    }
}

async fn all_now(
    env: &CniEnv,
    ports: &OvsPorts<'_>,
    ipam: CniResult<Ipam>,
    host: CniResult<leengine_netdp::Netlink>,
) -> CniResult<()> {
    let t = target(env);
    let (cid, ifname) = (t.container_id, t.ifname);
    let links = HostLinks::new(host.as_ref().map_err(|e| e.msg.clone()));
    let ahead = ipam
        .as_ref()
        .ok()
        .map(|ipam| ReadAhead::start(ipam, cid, ifname));
    let ip = match &ahead {
        Some(a) => Release::Held(a),
        None => Release::Keep,
    };
    match teardown::run(&links, ports, Plan::all(t, ip)).await {
        Ok(IpOutcome::Released(att)) => {
            tracing::info!(container = cid, ifname, ip = %att.ip, "released");
        }
        Ok(IpOutcome::Kept) => return ipam.map(drop),
        Ok(_) => tracing::debug!(container = cid, ifname, "no IP held"),
        Err(failures) => {
            return Err(match failures.into_ip_error() {
                Ok(ipam_error) => ipam_error.into(),
                Err(datapath) => kept_ip(cid, ifname, &datapath),
            })
        }
    }
    Ok(())
}

/// The port now; the veth and the address in the returned tail.
async fn answer_first(
    env: &CniEnv,
    ports: &OvsPorts<'_>,
    ipam: Ipam,
    host: leengine_netdp::Netlink,
) -> CniResult<Tail> {
    let t = target(env);
    let (cid, ifname) = (t.container_id.to_string(), t.ifname.to_string());
    let no_links = HostLinks::new(Err("not in this step".into()));
    let keep: Release<'_, Ipam> = Release::Keep;
    let port_only = Plan {
        target: t,
        ports: true,
        links: false,
        ip: keep,
    };
    if let Err(f) = teardown::run(&no_links, ports, port_only).await {
        return Err(kept_ip(&cid, &ifname, &f));
    }
    let netns = env.netns.clone();
    Ok(Box::pin(async move {
        let links = HostLinks::new(Ok(&host));
        let no_ports = OvsPorts::new(
            Err("removed before the answer".into()),
            PortScope::Bridge(""),
        );
        let ahead = ReadAhead::start(&ipam, &cid, &ifname);
        let plan = Plan {
            target: Target {
                container_id: &cid,
                ifname: &ifname,
                netns: netns.as_deref(),
            },
            ports: false,
            links: true,
            ip: Release::Held(&ahead),
        };
        match teardown::run(&links, &no_ports, plan).await {
            Ok(IpOutcome::Released(att)) => {
                tracing::info!(container = cid, ifname, ip = %att.ip, "released");
            }
            Ok(_) => tracing::debug!(container = cid, ifname, "no IP held"),
            // The runtime heard "done": the address waits for its next DEL,
            // or for the node-agent's reclaim of an IP with no datapath.
            Err(f) => tracing::warn!(container = cid, ifname, error = %f,
                "DEL after its answer: the IP is kept"),
        }
    }))
}

/// The IPAM with the reads of the release already under way.
struct ReadAhead<'a> {
    ipam: &'a Ipam,
    reads: Mutex<Option<JoinHandle<Result<PreparedRelease, IpamError>>>>,
}

impl<'a> ReadAhead<'a> {
    fn start(ipam: &'a Ipam, cid: &str, ifname: &str) -> Self {
        let (i, c, f) = (ipam.clone(), cid.to_string(), ifname.to_string());
        let reads = tokio::spawn(async move { i.prepare_release(&c, &f).await });
        Self {
            ipam,
            reads: Mutex::new(Some(reads)),
        }
    }
}

impl Addresses for ReadAhead<'_> {
    async fn release(&self, cid: &str, ifname: &str) -> Result<Option<Attachment>, IpamError> {
        let reads = self.reads.lock().ok().and_then(|mut r| r.take());
        match reads {
            Some(r) => match r.await {
                Ok(Ok(prepared)) => self.ipam.release_prepared(prepared).await,
                // A failed read is retried the ordinary way, which reports it.
                _ => self.ipam.release(cid, ifname).await,
            },
            None => self.ipam.release(cid, ifname).await,
        }
    }

    async fn release_if_unchanged(&self, a: &Attachment) -> Result<bool, IpamError> {
        self.ipam.release_if_unchanged(a).await
    }
}

/// The answer when the host side could not be torn down: retryable
/// whatever the cause, the IP untouched, every failure in the details.
fn kept_ip(cid: &str, ifname: &str, datapath: &Failures) -> CniError {
    CniError::new(
        TRY_AGAIN_LATER,
        format!("DEL of {cid}/{ifname} incomplete: its datapath is not gone, so its IP is kept"),
    )
    .with_details(datapath.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use leengine_attach::Failure;

    #[test]
    fn any_teardown_failure_keeps_the_ip_and_is_retryable() {
        let mut failures = Failures::default();
        failures.push(Failure::Unavailable {
            what: "netlink",
            reason: "refused".into(),
        });
        failures.push(Failure::Unavailable {
            what: "OVSDB",
            reason: "gone away".into(),
        });
        let e = kept_ip("c", "eth0", &failures);
        assert_eq!(e.code, TRY_AGAIN_LATER);
        assert!(e.msg.contains("IP is kept"), "{}", e.msg);
        assert!(
            e.details.contains("refused") && e.details.contains("gone away"),
            "{}",
            e.details
        );
    }
}
