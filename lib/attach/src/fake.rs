//! A recording fake of [`Ports`], [`Links`] and [`Addresses`]: every call is
//! logged in order and any kind of step can be made to fail, so the
//! teardown's ordering rules are tested without root, OVS or etcd.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;

use leengine_ipam::{Attachment, IpamError};

use crate::teardown::{Addresses, Failure, Links, Port, Ports, Target};

/// One call, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    FindPorts,
    /// `bridge/port`
    RemovePort(String),
    RemoveHostLink(String),
    /// `netns/ifname`
    RemoveSandboxLink(String),
    /// `container/ifname`
    Release(String),
    /// `container/seq`
    ReleaseIfUnchanged(String),
}

impl Call {
    pub fn is_release(&self) -> bool {
        matches!(self, Call::Release(_) | Call::ReleaseIfUnchanged(_))
    }
}

/// A kind of step that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    FindPorts,
    RemovePort,
    RemoveHostLink,
    RemoveSandboxLink,
    Release,
}

#[derive(Debug, Default)]
pub struct Recording {
    calls: Mutex<Vec<Call>>,
    failing: BTreeSet<Step>,
    /// Bridges on which the attachment has a port.
    bridges: Vec<String>,
    holds: bool,
    changed: bool,
}

impl Recording {
    pub fn new() -> Self {
        Self::default()
    }

    /// The attachment has a port on each of these bridges.
    pub fn with_ports(mut self, bridges: &[&str]) -> Self {
        self.bridges = bridges.iter().map(|b| b.to_string()).collect();
        self
    }

    pub fn failing(mut self, step: Step) -> Self {
        self.failing.insert(step);
        self
    }

    /// The IPAM holds an address for the attachment.
    pub fn holding(mut self) -> Self {
        self.holds = true;
        self
    }

    /// The judged allocation changed meanwhile.
    pub fn changed(mut self) -> Self {
        self.changed = true;
        self
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    fn record(&self, call: Call, step: Step) -> Result<(), Failure> {
        self.calls.lock().expect("calls").push(call);
        if self.failing.contains(&step) {
            Err(Failure::Unavailable {
                what: "fake",
                reason: format!("{step:?} made to fail"),
            })
        } else {
            Ok(())
        }
    }

    fn release_step(&self, call: Call) -> Result<(), IpamError> {
        self.record(call, Step::Release)
            .map_err(|e| IpamError::Contention {
                what: e.to_string(),
                attempts: 1,
            })
    }
}

impl Ports for Recording {
    async fn find(&self, t: &Target<'_>) -> Result<Vec<Port>, Failure> {
        self.record(Call::FindPorts, Step::FindPorts)?;
        Ok(self
            .bridges
            .iter()
            .map(|b| Port {
                bridge: b.clone(),
                name: t.host_ifname(),
            })
            .collect())
    }

    async fn remove(&self, p: &Port) -> Result<(), Failure> {
        self.record(
            Call::RemovePort(format!("{}/{}", p.bridge, p.name)),
            Step::RemovePort,
        )
    }
}

impl Links for Recording {
    async fn remove_host(&self, ifname: &str) -> Result<(), Failure> {
        self.record(Call::RemoveHostLink(ifname.into()), Step::RemoveHostLink)
    }

    async fn remove_sandbox(&self, netns: &Path, ifname: &str) -> Result<(), Failure> {
        self.record(
            Call::RemoveSandboxLink(format!("{}/{ifname}", netns.display())),
            Step::RemoveSandboxLink,
        )
    }
}

impl Addresses for Recording {
    async fn release(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Attachment>, IpamError> {
        self.release_step(Call::Release(format!("{container_id}/{ifname}")))?;
        Ok(self.holds.then(|| attachment(container_id, 1)))
    }

    async fn release_if_unchanged(&self, a: &Attachment) -> Result<bool, IpamError> {
        self.release_step(Call::ReleaseIfUnchanged(format!(
            "{}/{}",
            a.container_id, a.seq
        )))?;
        Ok(!self.changed)
    }
}

/// An allocation of `container_id`/eth0 with sequence number `seq`.
pub fn attachment(container_id: &str, seq: u64) -> Attachment {
    Attachment {
        container_id: container_id.into(),
        ifname: "eth0".into(),
        netns: String::new(),
        pod_namespace: None,
        pod_name: None,
        node: "n1".into(),
        network: None,
        ip: Ipv4Addr::new(10, 0, 0, 2),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 0, 0, 1),
        vlan: 0,
        pool: "p".into(),
        block: "10.0.0.0/28".parse().expect("block"),
        seq,
        since: 0,
    }
}
