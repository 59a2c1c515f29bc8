//! ADD: IP from etcd, veth born in the pod netns, OVS access port in the
//! pool's VLAN, L3 setup, gratuitous ARP. Any failure undoes what was done.

use crate::backend::{self, PortIds};
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::{CniError, CniResult, IFACE_EXISTS, NO_BRIDGE};
use crate::garp_follow;
use crate::result::{CniResult as Res, Interface, IpConfig, Route};
use leengine_attach::{teardown, Addresses, HostLinks, OvsPorts, Plan, PortScope, Release, Target};
use leengine_ipam::{AssignRequest, Assignment, Ipam};
use leengine_netdp::{
    configure_sandbox, create_veth, format_mac, host_veth_name, mac_from_ipv4, GarpSpec,
    NetdpError, Netlink, NetnsFile, SandboxConfig, VethSpec,
};
use leengine_ovsdb::Client as Ovs;
use serde_json::Value;

/// What has been done so far, to be undone in reverse on failure.
#[derive(Default)]
struct Undo {
    ip: bool,
    veth: bool,
    port: bool,
}

pub async fn add(env: &CniEnv, conf: &NetConf) -> CniResult<Value> {
    tracing::debug!("ADD start");
    let cid = env.container_id.as_deref().unwrap_or_default();
    let ifname = env.ifname.as_deref().unwrap_or_default();
    let ns_path = env.netns.as_deref().unwrap_or(std::path::Path::new(""));
    let ns = NetnsFile::open(ns_path)?;
    let host = backend::host_netlink(conf)?;
    let sandbox = Netlink::in_netns(&ns)?;
    if sandbox.link_by_name(ifname).await?.is_some() {
        return Err(CniError::new(
            IFACE_EXISTS,
            format!("interface {ifname} already exists in {}", ns_path.display()),
        ));
    }
    let (ovs, ipam) = tokio::try_join!(backend::ovs(conf), backend::ipam(conf))?;
    tracing::debug!("connected to OVSDB and etcd");
    if !ovs.bridge_exists(&conf.bridge).await? {
        return Err(CniError::new(
            NO_BRIDGE,
            format!("OVS bridge {} does not exist", conf.bridge),
        ));
    }
    let host_if = host_veth_name(cid, ifname);
    let mut undo = Undo::default();
    let ctx = Ctx {
        env,
        conf,
        cid,
        ifname,
        host_if: &host_if,
        ns: &ns,
        host: &host,
        sandbox: &sandbox,
        ovs: &ovs,
        ipam: &ipam,
    };
    match ctx.steps(&mut undo).await {
        Ok(v) => Ok(v),
        Err(e) => {
            ctx.rollback(&undo).await;
            Err(e)
        }
    }
}

struct Ctx<'a> {
    env: &'a CniEnv,
    conf: &'a NetConf,
    cid: &'a str,
    ifname: &'a str,
    host_if: &'a str,
    ns: &'a NetnsFile,
    host: &'a Netlink,
    sandbox: &'a Netlink,
    ovs: &'a Ovs,
    ipam: &'a Ipam,
}

impl Ctx<'_> {
    async fn steps(&self, undo: &mut Undo) -> CniResult<Value> {
        let req = AssignRequest {
            container_id: self.cid.to_string(),
            ifname: self.ifname.to_string(),
            netns: self.ns.path().display().to_string(),
            pod_namespace: self.env.args.pod_namespace.clone(),
            pod_name: self.env.args.pod_name.clone(),
            network: Some(self.conf.name.clone()),
            pools: self.conf.pools.clone(),
            requested_ip: self.env.args.ip.or(self.conf.runtime_ips.first().copied()),
        };
        let a: Assignment = self.ipam.assign(&req).await?;
        // A replayed ADD found the handle of an earlier call: that IP is not
        // ours to give back if this call fails.
        undo.ip = a.created;
        tracing::debug!(ip = %a.ip, pool = %a.pool, vlan = a.vlan, "assigned");

        let mac = self.conf.runtime_mac.unwrap_or_else(|| mac_from_ipv4(a.ip));
        // Same name = same attachment (and we hold its lock): anything left by
        // a crashed earlier call is stale.
        self.host.del_link(self.host_if).await?;
        let spec = VethSpec {
            host_ifname: self.host_if.to_string(),
            sandbox_ifname: self.ifname.to_string(),
            mtu: self.conf.mtu,
            sandbox_mac: Some(mac),
        };
        undo.veth = true;
        let (host_link, _) = create_veth(self.host, self.sandbox, self.ns, &spec).await?;
        tracing::debug!(host_if = self.host_if, "veth created");

        let ids = backend::external_ids(&PortIds {
            network: &self.conf.name,
            container_id: self.cid,
            ifname: self.ifname,
            pod_namespace: self.env.args.pod_namespace.as_deref(),
            pod_name: self.env.args.pod_name.as_deref(),
            ip: a.ip,
        });
        let tag = backend::vlan_tag(a.vlan);
        // Set before the call: when its reply is lost the transaction may
        // still have committed, and only a delete by name can tell.
        undo.port = true;
        let added = self
            .ovs
            .add_access_port(&self.conf.bridge, self.host_if, tag, &ids)
            .await;
        if let Err(leengine_ovsdb::Error::PortExists(_)) = added {
            self.ovs.del_port(&self.conf.bridge, self.host_if).await?;
            self.ovs
                .add_access_port(&self.conf.bridge, self.host_if, tag, &ids)
                .await?;
        } else {
            added?;
        }
        tracing::debug!(port = self.host_if, "OVS port added");
        self.ovs
            .wait_ofport(self.host_if, backend::OFPORT_TIMEOUT)
            .await?;
        tracing::debug!(port = self.host_if, "OVS port live");

        // The userspace datapath forwards what the veth hands it as is, so
        // the pod must checksum its own packets (see leengine_netdp::set_tx_checksum).
        let userspace = self
            .ovs
            .bridge_datapath_type(&self.conf.bridge)
            .await?
            .is_some_and(|t| t == "netdev");
        let cfg = SandboxConfig {
            ifname: self.ifname.to_string(),
            ip: a.ip,
            prefix_len: a.prefix_len,
            gateway: Some(a.gateway),
            arp_notify: true,
            garp_socket: self.conf.garp.is_some(),
            software_tx_checksum: userspace,
        };
        let configured = configure_sandbox(self.sandbox, self.ns, &cfg).await?;
        let sandbox_link = configured.link;
        tracing::debug!(ifname = self.ifname, "sandbox configured");
        if let Some(g) = self.conf.garp {
            // The first announcement before answering: the pod is reachable
            // and announced when the runtime gets the result.
            if let Some(sock) = &configured.garp {
                sock.send(sandbox_link.index, mac, a.ip)
                    .map_err(|source| NetdpError::Garp {
                        ifname: self.ifname.to_string(),
                        source,
                    })?;
            }
            tracing::debug!(ip = %a.ip, "gratuitous ARP sent");
            if g.count > 1 {
                let rest = GarpSpec {
                    ifname: self.ifname.to_string(),
                    mac,
                    ip: a.ip,
                    count: g.count - 1,
                    interval: g.interval,
                };
                if let Err(e) = garp_follow::spawn(self.ns.path(), &rest) {
                    tracing::warn!(error = %e, "cannot start follow-up gratuitous ARPs");
                }
            }
        }
        tracing::info!(
            network = %self.conf.name, container = self.cid, ifname = self.ifname, ip = %a.ip, vlan = a.vlan,
            port = self.host_if, "attached"
        );
        let res = self.result(&a, &host_link, sandbox_link.mac.unwrap_or(mac))?;
        Ok(res.to_json(&self.conf.cni_version))
    }

    fn result(&self, a: &Assignment, host: &leengine_netdp::Link, mac: [u8; 6]) -> CniResult<Res> {
        let address = ipnet::Ipv4Net::new(a.ip, a.prefix_len).map_err(|_| {
            CniError::new(
                crate::error::IPAM,
                format!("pool {} has prefix length {}", a.pool, a.prefix_len),
            )
        })?;
        Ok(Res {
            interfaces: vec![
                Interface {
                    name: self.host_if.to_string(),
                    mac: host.mac.as_ref().map(format_mac).unwrap_or_default(),
                    mtu: Some(self.conf.mtu),
                    sandbox: None,
                },
                Interface {
                    name: self.ifname.to_string(),
                    mac: format_mac(&mac),
                    mtu: Some(self.conf.mtu),
                    sandbox: Some(self.ns.path().display().to_string()),
                },
            ],
            ips: vec![IpConfig {
                address,
                gateway: Some(a.gateway),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: ipnet::Ipv4Net::default(),
                gw: Some(a.gateway),
            }],
            dns: self.conf.dns.clone(),
        })
    }

    /// Undoes what was done through the one attachment teardown: every step
    /// is tried, failures are logged, and the IP is given back only when
    /// port and veth are gone (otherwise the handle stays for the runtime's
    /// DEL to finish).
    async fn rollback(&self, undo: &Undo) {
        let fresh;
        let ovs = if undo.port && self.ovs.is_closed() {
            // A lost reply may have closed the connection: a fresh one removes the port.
            match backend::ovs(self.conf).await {
                Ok(c) => {
                    fresh = c;
                    Ok(&fresh)
                }
                Err(e) => Err(e.msg),
            }
        } else {
            Ok(self.ovs)
        };
        let ports = OvsPorts::new(ovs, PortScope::Bridge(&self.conf.bridge));
        let links = HostLinks::new(Ok(self.host));
        let target = Target {
            container_id: self.cid,
            ifname: self.ifname,
            netns: Some(self.ns.path()),
        };
        if let Err(f) = teardown::run(&links, &ports, rollback_plan(undo, target, self.ipam)).await
        {
            if f.datapath_gone() {
                tracing::error!(container = self.cid, error = %f, "rollback: cannot release IP");
            } else {
                tracing::warn!(
                    container = self.cid,
                    ifname = self.ifname,
                    error = %f,
                    "rollback: IP kept until DEL removes the datapath"
                );
            }
        }
    }
}

/// Only what this call made is undone: the port once it was asked for (its
/// reply may have been lost), the veth once its creation began, the IP only
/// when this call assigned it (a replayed ADD found an earlier call's).
fn rollback_plan<'a, A: Addresses>(undo: &Undo, target: Target<'a>, ipam: &'a A) -> Plan<'a, A> {
    Plan {
        target,
        ports: undo.port,
        links: undo.veth,
        ip: if undo.ip {
            Release::Held(ipam)
        } else {
            Release::Keep
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leengine_attach::fake::{Call, Recording, Step};
    use leengine_attach::IpOutcome;

    fn target() -> Target<'static> {
        Target {
            container_id: "c1",
            ifname: "eth0",
            netns: Some(std::path::Path::new("/run/netns/pod")),
        }
    }

    fn rollback(undo: &Undo, f: &Recording) -> Result<IpOutcome, leengine_attach::Failures> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(teardown::run(f, f, rollback_plan(undo, target(), f)))
    }

    #[test]
    fn rollback_after_the_ip_only_gives_the_ip_back() {
        let f = Recording::new().holding();
        let undo = Undo {
            ip: true,
            ..Undo::default()
        };
        assert!(matches!(rollback(&undo, &f), Ok(IpOutcome::Released(_))));
        assert_eq!(f.calls(), vec![Call::Release("c1/eth0".into())]);
    }

    #[test]
    fn rollback_of_a_replayed_add_keeps_the_earlier_calls_ip() {
        let f = Recording::new().with_ports(&["br0"]).holding();
        let undo = Undo {
            ip: false,
            veth: true,
            port: true,
        };
        assert_eq!(rollback(&undo, &f).unwrap(), IpOutcome::Kept);
        assert!(!f.calls().iter().any(Call::is_release), "{:?}", f.calls());
        assert!(f.calls().contains(&Call::FindPorts));
    }

    #[test]
    fn rollback_whose_port_removal_failed_keeps_the_ip_for_del() {
        let f = Recording::new()
            .with_ports(&["br0"])
            .failing(Step::RemovePort)
            .holding();
        let undo = Undo {
            ip: true,
            veth: true,
            port: true,
        };
        let err = rollback(&undo, &f).unwrap_err();
        assert!(!err.datapath_gone(), "{err}");
        assert!(!f.calls().iter().any(Call::is_release), "{:?}", f.calls());
        // The veth was still removed: every step is tried.
        assert!(f
            .calls()
            .iter()
            .any(|c| matches!(c, Call::RemoveHostLink(_))));
    }
}
