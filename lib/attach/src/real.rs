//! The real [`Ports`], [`Links`] and [`Addresses`]: OVSDB, netlink, the IPAM.
//!
//! A backend that could not be reached is still passed in (as its error
//! text): the teardown then records that step as failed and goes on with
//! the others (rules 2 and 3), instead of every caller special-casing it.

use std::path::Path;

use leengine_ipam::{Attachment, Ipam, IpamError};
use leengine_netdp::Netlink;
use leengine_ovsdb::vswitch::ext_ids::{CONTAINER_ID, IFNAME};
use leengine_ovsdb::Client as Ovs;

use crate::teardown::{Addresses, Failure, Links, Port, Ports, Target};

/// Where an attachment's ports may be.
#[derive(Clone, Copy, Debug)]
pub enum PortScope<'a> {
    /// The plugin's own bridge, under the name it gives every port: no
    /// lookup needed (DEL, GC, ADD's rollback).
    Bridge(&'a str),
    /// Any bridge, by name or by the container id the plugin records in
    /// external_ids: the node-agent does not know which network's bridge
    /// an allocation used.
    Anywhere,
}

pub struct OvsPorts<'a> {
    ovs: Result<&'a Ovs, String>,
    scope: PortScope<'a>,
}

impl<'a> OvsPorts<'a> {
    /// `ovs` is the connection, or why there is none.
    pub fn new(ovs: Result<&'a Ovs, String>, scope: PortScope<'a>) -> Self {
        Self { ovs, scope }
    }

    fn client(&self) -> Result<&'a Ovs, Failure> {
        self.ovs
            .as_ref()
            .copied()
            .map_err(|reason| Failure::Unavailable {
                what: "OVSDB",
                reason: reason.clone(),
            })
    }
}

impl Ports for OvsPorts<'_> {
    async fn find(&self, t: &Target<'_>) -> Result<Vec<Port>, Failure> {
        let name = t.host_ifname();
        let bridge = match self.scope {
            PortScope::Bridge(b) => {
                return Ok(vec![Port {
                    bridge: b.to_string(),
                    name,
                }])
            }
            PortScope::Anywhere => self.client()?,
        };
        let failed = |source| Failure::FindPorts {
            container_id: t.container_id.to_string(),
            ifname: t.ifname.to_string(),
            source: Box::new(source),
        };
        let mut found = bridge
            .find_ports_by_external_id(CONTAINER_ID, t.container_id)
            .await
            .map_err(failed)?;
        found.retain(|p| p.external_ids.get(IFNAME).is_none_or(|i| i == t.ifname));
        if let Some(p) = bridge.port_info(&name).await.map_err(failed)? {
            if !found.iter().any(|x| x.uuid == p.uuid) {
                found.push(p);
            }
        }
        // A port no bridge refers to is already on its way out.
        Ok(found
            .into_iter()
            .filter_map(|p| {
                Some(Port {
                    bridge: p.bridge?,
                    name: p.name,
                })
            })
            .collect())
    }

    async fn remove(&self, p: &Port) -> Result<(), Failure> {
        match self.client()?.del_port(&p.bridge, &p.name).await {
            // The bridge itself is gone: so is every port it had.
            Ok(_) | Err(leengine_ovsdb::Error::NoBridge(_)) => Ok(()),
            Err(source) => Err(Failure::Port {
                port: p.name.clone(),
                source: Box::new(source),
            }),
        }
    }
}

/// Netlink in the namespace of the host veth ends.
pub struct HostLinks<'a> {
    host: Result<&'a Netlink, String>,
}

impl<'a> HostLinks<'a> {
    /// `host` is the socket, or why there is none.
    pub fn new(host: Result<&'a Netlink, String>) -> Self {
        Self { host }
    }
}

impl Links for HostLinks<'_> {
    async fn remove_host(&self, ifname: &str) -> Result<(), Failure> {
        let host = self.host.as_ref().map_err(|reason| Failure::Unavailable {
            what: "netlink",
            reason: reason.clone(),
        })?;
        host.del_link(ifname).await?;
        Ok(())
    }

    async fn remove_sandbox(&self, netns: &Path, ifname: &str) -> Result<(), Failure> {
        leengine_netdp::del_link_in(netns, ifname).await?;
        Ok(())
    }
}

impl Addresses for Ipam {
    async fn release(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Attachment>, IpamError> {
        Ipam::release(self, container_id, ifname).await
    }

    async fn release_if_unchanged(&self, a: &Attachment) -> Result<bool, IpamError> {
        Ipam::release_if_unchanged(self, a).await
    }
}
