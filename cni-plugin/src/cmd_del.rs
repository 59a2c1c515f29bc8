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

pub async fn del(env: &CniEnv, conf: &NetConf, s: &Sessions) -> CniResult<()> {
    let cid = env.container_id.as_deref().unwrap_or_default();
    let ifname = env.ifname.as_deref().unwrap_or_default();
    let (ovs, ipam) = tokio::join!(s.ovs(conf), s.ipam(conf));
    let host = backend::host_netlink(conf);
    let ports = OvsPorts::new(
        ovs.as_ref().map_err(|e| e.msg.clone()),
        PortScope::Bridge(&conf.bridge),
    );
    let links = HostLinks::new(host.as_ref().map_err(|e| e.msg.clone()));
    let target = Target {
        container_id: cid,
        ifname,
        netns: env.netns.as_deref(),
    };
    let ahead = ipam
        .as_ref()
        .ok()
        .map(|ipam| ReadAhead::start(ipam, cid, ifname));
    let ip = match &ahead {
        Some(a) => Release::Held(a),
        None => Release::Keep,
    };
    match teardown::run(&links, &ports, Plan::all(target, ip)).await {
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
