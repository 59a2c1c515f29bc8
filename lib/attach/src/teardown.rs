//! Taking one attachment apart: its OVS port(s), its veth, then its IP.
//!
//! CNI DEL, CNI GC, the rollback of a failed ADD and the node-agent's leak
//! reclaim all go through [`run`], so they follow the same rules:
//!
//! 1. **The port goes first.** The attachment leaves its VLAN before
//!    anything else is touched; and a Port row left behind its veth would be
//!    bound again by OVS to the next interface of that name, with the old tag.
//! 2. **Every datapath step is tried.** A failed step never skips the next
//!    one; every failure is kept, in one flat list ([`Failures`]).
//! 3. **The IP only once the datapath is gone.** The address is released
//!    only when every port and link step succeeded, so it is never handed out
//!    again while its old port (in the pool's VLAN) or veth (with its MAC)
//!    may still exist. Otherwise the IP is not touched at all and the caller
//!    retries (DEL answers "try again later", GC and reclaim come back).
//! 4. **A judged allocation is released only unchanged.** GC and reclaim
//!    decided on one allocation and release exactly that one
//!    ([`Release::IfUnchanged`]); DEL and ADD's rollback release whatever this
//!    (container, ifname) holds ([`Release::Held`]).
//! 5. **A step never begun is not undone.** ADD's rollback says which parts
//!    exist ([`Plan::ports`], [`Plan::links`]); the others are left alone, so
//!    an OVSDB that failed before the port was asked for cannot keep an IP
//!    that no port ever carried.
//! 6. **Gone is success.** A port, link or namespace already missing counts
//!    as removed: every caller may retry, and a retry finishes the job. This
//!    is the contract of every [`Ports`] and [`Links`] implementation.
//!
//! Concurrency is the caller's: each holds [`crate::lock::attachment`]
//! around [`run`], and GC and reclaim re-read the allocation under it.

use std::future::Future;
use std::path::Path;

use leengine_ipam::{Attachment, IpamError};
use leengine_netdp::NetdpError;

/// The attachment to take apart.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    /// The pod's network namespace when known (DEL, ADD): the sandbox end
    /// is removed there too, in case the veth pair was split.
    pub netns: Option<&'a Path>,
}

impl Target<'_> {
    /// The host end of the veth, which is also the OVS port's name.
    pub fn host_ifname(&self) -> String {
        leengine_netdp::host_veth_name(self.container_id, self.ifname)
    }
}

/// One OVS port of an attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub bridge: String,
    pub name: String,
}

/// What a teardown asks of OVSDB.
pub trait Ports {
    /// The ports this attachment may have left (none is fine).
    fn find(&self, t: &Target<'_>) -> impl Future<Output = Result<Vec<Port>, Failure>> + Send;
    /// Removes one port; one already gone is success.
    fn remove(&self, p: &Port) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// What a teardown asks of netlink.
pub trait Links {
    /// Removes the host end of the veth (its peer goes with it); gone is success.
    fn remove_host(&self, ifname: &str) -> impl Future<Output = Result<(), Failure>> + Send;
    /// Removes `ifname` inside the namespace; a namespace or interface gone is success.
    fn remove_sandbox(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// What a teardown asks of the IPAM.
pub trait Addresses {
    /// Releases whatever (container, ifname) holds; `None` when nothing.
    fn release(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> impl Future<Output = Result<Option<Attachment>, IpamError>> + Send;
    /// Releases `a` only if it is still exactly that allocation.
    fn release_if_unchanged(
        &self,
        a: &Attachment,
    ) -> impl Future<Output = Result<bool, IpamError>> + Send;
}

/// What to do with the IP once the datapath is gone (rule 3).
#[derive(Debug)]
pub enum Release<'a, A> {
    /// Leave it (no IPAM reachable, or the address was never this call's).
    Keep,
    /// Whatever the attachment holds (DEL, ADD rollback).
    Held(&'a A),
    /// Exactly this allocation, if unchanged (GC, reclaim).
    IfUnchanged(&'a A, &'a Attachment),
}

/// One teardown.
#[derive(Debug)]
pub struct Plan<'a, A> {
    pub target: Target<'a>,
    /// Whether an OVS port may exist (rule 5).
    pub ports: bool,
    /// Whether a veth may exist (rule 5).
    pub links: bool,
    pub ip: Release<'a, A>,
}

impl<'a, A> Plan<'a, A> {
    /// Everything that may exist: DEL, GC, reclaim.
    pub fn all(target: Target<'a>, ip: Release<'a, A>) -> Self {
        Self {
            target,
            ports: true,
            links: true,
            ip,
        }
    }
}

/// What became of the IP after a complete teardown.
#[derive(Debug, PartialEq, Eq)]
pub enum IpOutcome {
    Released(Box<Attachment>),
    /// Nothing was held by that attachment.
    NotHeld,
    /// The judged allocation changed meanwhile; it stays.
    Changed,
    /// [`Release::Keep`].
    Kept,
}

/// One failed step. The sources are boxed: a list of these is what every
/// teardown returns, and the rare failure need not make that big.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// OVSDB refused or did not answer.
    #[error("OVS port {port}: {source}")]
    Port {
        port: String,
        #[source]
        source: Box<leengine_ovsdb::OvsdbError>,
    },
    /// Looking the attachment's ports up failed.
    #[error("OVS ports of {container_id}/{ifname}: {source}")]
    FindPorts {
        container_id: String,
        ifname: String,
        #[source]
        source: Box<leengine_ovsdb::OvsdbError>,
    },
    /// Netlink refused or the namespace could not be entered.
    #[error(transparent)]
    Link(Box<NetdpError>),
    /// The IPAM could not release the address.
    #[error("IP: {0}")]
    Ip(Box<IpamError>),
    /// A backend could not even be reached (connection, socket); `reason`
    /// is the connecting error's own text, which names the backend.
    #[error("{reason}")]
    Unavailable { what: &'static str, reason: String },
}

impl From<NetdpError> for Failure {
    fn from(e: NetdpError) -> Self {
        Failure::Link(Box::new(e))
    }
}

impl From<IpamError> for Failure {
    fn from(e: IpamError) -> Self {
        Failure::Ip(Box::new(e))
    }
}

/// Every failure of one or more teardowns, flat: a list pushed into another
/// is spliced in, never nested, so an operator reads one list whatever
/// called whom.
#[derive(Debug, Default)]
pub struct Failures(Vec<Failure>);

impl Failures {
    pub fn push(&mut self, f: Failure) {
        self.0.push(f);
    }

    pub fn extend(&mut self, other: Failures) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Failure> {
        self.0.iter()
    }

    /// True when only the IP release failed: the datapath itself is gone.
    pub fn datapath_gone(&self) -> bool {
        self.0.iter().all(|f| matches!(f, Failure::Ip(_)))
    }

    /// The IPAM's own error when it is the only failure (its code matters to CNI).
    pub fn into_ip_error(self) -> Result<IpamError, Failures> {
        match <[Failure; 1]>::try_from(self.0) {
            Ok([Failure::Ip(e)]) => Ok(*e),
            Ok([other]) => Err(Failures(vec![other])),
            Err(v) => Err(Failures(v)),
        }
    }
}

impl std::fmt::Display for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failures {}

/// Takes the attachment apart by the rules at the top of this module.
/// `Err` always means the IP was not released.
pub async fn run<L: Links, P: Ports, A: Addresses>(
    links: &L,
    ports: &P,
    plan: Plan<'_, A>,
) -> Result<IpOutcome, Failures> {
    let mut failures = Failures::default();
    let t = &plan.target;
    if plan.ports {
        remove_ports(ports, t, &mut failures).await;
    }
    if plan.links {
        remove_links(links, t, &mut failures).await;
    }
    if !failures.is_empty() {
        return Err(failures);
    }
    release(t, plan.ip).await.map_err(|e| {
        failures.push(e.into());
        failures
    })
}

async fn remove_ports<P: Ports>(ports: &P, t: &Target<'_>, failures: &mut Failures) {
    match ports.find(t).await {
        Ok(found) => {
            for p in &found {
                if let Err(e) = ports.remove(p).await {
                    failures.push(e);
                }
            }
        }
        Err(e) => failures.push(e),
    }
}

async fn remove_links<L: Links>(links: &L, t: &Target<'_>, failures: &mut Failures) {
    if let Err(e) = links.remove_host(&t.host_ifname()).await {
        failures.push(e);
    }
    if let Some(ns) = t.netns {
        if let Err(e) = links.remove_sandbox(ns, t.ifname).await {
            failures.push(e);
        }
    }
}

async fn release<A: Addresses>(t: &Target<'_>, ip: Release<'_, A>) -> Result<IpOutcome, IpamError> {
    Ok(match ip {
        Release::Keep => IpOutcome::Kept,
        Release::Held(a) => match a.release(t.container_id, t.ifname).await? {
            Some(att) => IpOutcome::Released(Box::new(att)),
            None => IpOutcome::NotHeld,
        },
        Release::IfUnchanged(a, att) => {
            if a.release_if_unchanged(att).await? {
                IpOutcome::Released(Box::new(att.clone()))
            } else {
                IpOutcome::Changed
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{attachment, Call, Recording, Step};

    const NS: &str = "/run/netns/pod";

    fn target() -> Target<'static> {
        Target {
            container_id: "c1",
            ifname: "eth0",
            netns: Some(Path::new(NS)),
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn held(f: &Recording) -> Plan<'_, Recording> {
        Plan::all(target(), Release::Held(f))
    }

    #[test]
    fn the_port_goes_first_then_the_veth_then_the_ip() {
        let f = Recording::new().with_ports(&["br0", "br1"]).holding();
        let out = block_on(run(&f, &f, held(&f))).unwrap();
        assert!(matches!(out, IpOutcome::Released(_)), "{out:?}");
        let host = target().host_ifname();
        assert_eq!(
            f.calls(),
            vec![
                Call::FindPorts,
                Call::RemovePort(format!("br0/{host}")),
                Call::RemovePort(format!("br1/{host}")),
                Call::RemoveHostLink(host),
                Call::RemoveSandboxLink(format!("{NS}/eth0")),
                Call::Release("c1/eth0".into()),
            ]
        );
    }

    #[test]
    fn every_datapath_step_is_tried_and_every_failure_kept_flat() {
        let f = Recording::new()
            .with_ports(&["br0", "br1"])
            .failing(Step::RemovePort)
            .failing(Step::RemoveHostLink)
            .failing(Step::RemoveSandboxLink);
        let err = block_on(run(&f, &f, held(&f))).unwrap_err();
        // Two ports, the host end, the sandbox end: four entries, one level.
        assert_eq!(err.iter().count(), 4, "{err}");
        let calls = f.calls();
        assert!(calls.contains(&Call::RemovePort(format!("br1/{}", target().host_ifname()))));
        assert!(calls.contains(&Call::RemoveSandboxLink(format!("{NS}/eth0"))));
        let text = err.to_string();
        assert_eq!(text.matches("; ").count(), 3, "{text}");
    }

    #[test]
    fn the_ip_only_once_the_datapath_is_gone() {
        for step in [
            Step::FindPorts,
            Step::RemovePort,
            Step::RemoveHostLink,
            Step::RemoveSandboxLink,
        ] {
            let f = Recording::new()
                .with_ports(&["br0"])
                .failing(step)
                .holding();
            let err = block_on(run(&f, &f, held(&f))).unwrap_err();
            assert!(!err.datapath_gone(), "{step:?}: {err}");
            assert!(
                !f.calls().iter().any(Call::is_release),
                "{step:?}: IP touched although the datapath may remain: {:?}",
                f.calls()
            );
            // A failed lookup also means: no port may be removed blindly.
            if step == Step::FindPorts {
                assert!(!f.calls().iter().any(|c| matches!(c, Call::RemovePort(_))));
            }
        }
    }

    #[test]
    fn a_failed_release_is_reported_as_the_ipams_own_error() {
        let f = Recording::new().failing(Step::Release);
        let err = block_on(run(&f, &f, held(&f))).unwrap_err();
        assert!(err.datapath_gone(), "{err}");
        assert!(err.into_ip_error().is_ok());
        let both = Recording::new()
            .failing(Step::RemoveHostLink)
            .failing(Step::Release);
        let err = block_on(run(&both, &both, held(&both))).unwrap_err();
        assert!(err.into_ip_error().is_err(), "datapath failure hidden");
    }

    #[test]
    fn a_judged_allocation_is_released_only_unchanged() {
        let judged = attachment("c1", 7);
        let f = Recording::new();
        let plan = Plan::all(target(), Release::IfUnchanged(&f, &judged));
        let out = block_on(run(&f, &f, plan)).unwrap();
        assert_eq!(out, IpOutcome::Released(Box::new(judged.clone())));
        assert_eq!(
            f.calls().last(),
            Some(&Call::ReleaseIfUnchanged("c1/7".into()))
        );

        let moved = Recording::new().changed();
        let plan = Plan::all(target(), Release::IfUnchanged(&moved, &judged));
        assert_eq!(
            block_on(run(&moved, &moved, plan)).unwrap(),
            IpOutcome::Changed
        );
        // Held never turns into a judged release, nor the other way round.
        assert!(!moved.calls().contains(&Call::Release("c1/eth0".into())));
    }

    #[test]
    fn a_step_never_begun_is_not_undone() {
        let f = Recording::new().with_ports(&["br0"]).holding();
        let plan = Plan {
            target: target(),
            ports: false,
            links: true,
            ip: Release::Held(&f),
        };
        block_on(run(&f, &f, plan)).unwrap();
        assert!(!f
            .calls()
            .iter()
            .any(|c| matches!(c, Call::FindPorts | Call::RemovePort(_))));

        // Nothing was made but the IP (ADD failed at the veth's namespace).
        let g = Recording::new().failing(Step::RemovePort).holding();
        let plan = Plan {
            target: target(),
            ports: false,
            links: false,
            ip: Release::Held(&g),
        };
        let out = block_on(run(&g, &g, plan)).unwrap();
        assert!(matches!(out, IpOutcome::Released(_)));
        assert_eq!(g.calls(), vec![Call::Release("c1/eth0".into())]);
    }

    #[test]
    fn keep_leaves_the_ip_and_no_netns_leaves_the_sandbox_alone() {
        let f = Recording::new().holding();
        let t = Target {
            netns: None,
            ..target()
        };
        let out = block_on(run(&f, &f, Plan::<Recording>::all(t, Release::Keep))).unwrap();
        assert_eq!(out, IpOutcome::Kept);
        assert!(!f.calls().iter().any(Call::is_release));
        assert!(!f
            .calls()
            .iter()
            .any(|c| matches!(c, Call::RemoveSandboxLink(_))));
    }

    #[test]
    fn failures_of_many_teardowns_join_one_list() {
        let mut all = Failures::default();
        for _ in 0..2 {
            let f = Recording::new().failing(Step::RemoveHostLink);
            all.extend(block_on(run(&f, &f, held(&f))).unwrap_err());
        }
        assert_eq!(all.iter().count(), 2);
        assert!(!all.datapath_gone());
    }
}
