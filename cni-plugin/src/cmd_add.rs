//! ADD: IP from etcd, veth born in the pod netns, OVS access port in the
//! pool's VLAN, L3 setup. Any failure undoes what was done.
//!
//! Steps that do not need each other run side by side: the address is
//! taken, the bridge read, and the sandbox opened and its veth made, all
//! from the start (a call that fails before making anything gives back an
//! address it took); the port is added while the pod's addresses and routes
//! are set. ADD does not wait
//! for ovs-vswitchd to bring the port up (its cost grows with the number of
//! ports on the userspace datapath): nothing in the result depends on it.
//! The detached follow-up process waits for it and then sends the
//! gratuitous ARPs; CHECK reports a port that never came up.

use crate::backend::{self, PortIds, Sessions};
use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::{CniError, CniResult, IFACE_EXISTS, NO_BRIDGE};
use crate::garp_follow;
use crate::result::{Interface, IpConfig, Route, SuccessResult};
use leengine_attach::{teardown, Addresses, HostLinks, OvsPorts, Plan, PortScope, Release, Target};
use leengine_ipam::{AssignRequest, Assignment, Ipam};
use leengine_netdp::{
    configure_sandbox, create_veth, format_mac, host_veth_name, mac_from_ipv4, GarpSpec, Link,
    Netlink, NetnsFile, SandboxConfig, VethSpec,
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

/// The connections, once both answered and the bridge exists.
struct Backends {
    ovs: Ovs,
    ipam: Ipam,
    /// The bridge is on the userspace (`netdev`) datapath.
    userspace: bool,
}

pub async fn add(env: &CniEnv, conf: &NetConf, sessions: &Sessions) -> CniResult<Value> {
    tracing::debug!("ADD start");
    let cid = env.container_id.as_deref().unwrap_or_default();
    let ifname = env.ifname.as_deref().unwrap_or_default();
    let ns_path = env.netns.as_deref().unwrap_or(std::path::Path::new(""));
    let host_if = host_veth_name(cid, ifname);
    let start = Start {
        env,
        conf,
        sessions,
        cid,
        ifname,
        ns_path,
    };
    // Neither the address nor the bridge needs the sandbox: all three begin
    // at once, and the veth with the sandbox, so it counts as made from the start.
    let (bridge, assigned, local) =
        tokio::join!(start.bridge(), start.assign(), start.local(&host_if));
    let local = match local {
        Ok(l) => l,
        Err(e) => {
            // Nothing was made on the node: an address taken meanwhile is all.
            if let Ok((ipam, a)) = &assigned {
                backend::give_back(ipam, a, "the call failed before making anything").await;
            }
            return Err(e);
        }
    };
    let ctx = Ctx {
        env,
        conf,
        sessions,
        cid,
        ifname,
        host_if: &host_if,
        ns: &local.ns,
        host: &local.host,
        sandbox: &local.sandbox,
    };
    let mut undo = Undo {
        veth: true,
        // A replayed ADD found the handle of an earlier call: that IP is not
        // ours to give back if this call fails.
        ip: assigned.as_ref().is_ok_and(|(_, a)| a.created),
        port: false,
    };
    let (backends, a) = match (bridge, assigned) {
        (Ok((ovs, userspace)), Ok((ipam, a))) => (
            Backends {
                ovs,
                ipam,
                userspace,
            },
            a,
        ),
        // The bridge's error first: with no bridge, nothing else matters.
        (Err(e), assigned) => {
            let ipam = assigned.as_ref().ok().map(|(ipam, _)| ipam);
            ctx.rollback(&undo, Err("OVSDB not connected".into()), ipam)
                .await;
            return Err(e);
        }
        // An IPAM failure takes no address: the veth is all there is.
        (Ok(_), Err(e)) => {
            ctx.rollback(&undo, Err("OVSDB not connected".into()), None)
                .await;
            return Err(e);
        }
    };
    let attached = match local.veth {
        Ok(host_link) => ctx.attach(&backends, &a, &host_link, &mut undo).await,
        Err(e) => Err(e),
    };
    match attached {
        Ok(v) => Ok(v),
        Err(e) => {
            ctx.rollback(&undo, Ok(&backends.ovs), Some(&backends.ipam))
                .await;
            Err(e)
        }
    }
}

/// The veth pair, its sandbox end still without the address-derived MAC
/// (the address is being taken meanwhile).
async fn veth(
    conf: &NetConf,
    host: &Netlink,
    sandbox: &Netlink,
    ns: &NetnsFile,
    host_if: &str,
    ifname: &str,
) -> CniResult<Link> {
    // Same name = same attachment (and we hold its lock): anything left by
    // a crashed earlier call is stale.
    host.del_link(host_if).await?;
    let spec = VethSpec {
        host_ifname: host_if.to_string(),
        sandbox_ifname: ifname.to_string(),
        mtu: conf.mtu,
        sandbox_mac: conf.runtime_mac,
    };
    let (host_link, _) = create_veth(host, sandbox, ns, &spec).await?;
    tracing::debug!(host_if, "veth created");
    Ok(host_link)
}

/// What ADD needs before the sandbox is open.
struct Start<'a> {
    env: &'a CniEnv,
    conf: &'a NetConf,
    sessions: &'a Sessions,
    cid: &'a str,
    ifname: &'a str,
    ns_path: &'a std::path::Path,
}

/// The sandbox, the host's netlink, and the veth between them.
struct Local {
    ns: NetnsFile,
    host: Netlink,
    sandbox: Netlink,
    veth: CniResult<Link>,
}

impl Start<'_> {
    /// OVSDB, with the bridge and its datapath read in one request.
    async fn bridge(&self) -> CniResult<(Ovs, bool)> {
        let ovs = self.sessions.ovs(self.conf).await?;
        match ovs.bridge_datapath_type(&self.conf.bridge).await? {
            Some(t) => Ok((ovs, t == "netdev")),
            None => Err(CniError::new(
                NO_BRIDGE,
                format!("OVS bridge {} does not exist", self.conf.bridge),
            )),
        }
    }

    /// The address. When it fails none was taken.
    async fn assign(&self) -> CniResult<(Ipam, Assignment)> {
        let ipam = self.sessions.ipam(self.conf).await?;
        let req = AssignRequest {
            container_id: self.cid.to_string(),
            ifname: self.ifname.to_string(),
            netns: self.ns_path.display().to_string(),
            pod_namespace: self.env.args.pod_namespace.clone(),
            pod_name: self.env.args.pod_name.clone(),
            network: Some(self.conf.name.clone()),
            pools: self.conf.pools.clone(),
            requested_ip: self.env.args.ip.or(self.conf.runtime_ips.first().copied()),
        };
        let a = self.sessions.assign(self.conf, &ipam, req).await?;
        tracing::debug!(ip = %a.ip, pool = %a.pool, vlan = a.vlan.id(), "assigned");
        Ok((ipam, a))
    }

    /// The sandbox and the veth; an error before the veth is begun means
    /// nothing was made.
    async fn local(&self, host_if: &str) -> CniResult<Local> {
        let ns = NetnsFile::open(self.ns_path)?;
        let host = backend::host_netlink(self.conf).await?;
        let sandbox = Netlink::in_netns(&ns).await?;
        if sandbox.link_by_name(self.ifname).await?.is_some() {
            return Err(CniError::new(
                IFACE_EXISTS,
                format!(
                    "interface {} already exists in {}",
                    self.ifname,
                    self.ns_path.display()
                ),
            ));
        }
        let veth = veth(self.conf, &host, &sandbox, &ns, host_if, self.ifname).await;
        Ok(Local {
            ns,
            host,
            sandbox,
            veth,
        })
    }
}

struct Ctx<'a> {
    env: &'a CniEnv,
    conf: &'a NetConf,
    sessions: &'a Sessions,
    cid: &'a str,
    ifname: &'a str,
    host_if: &'a str,
    ns: &'a NetnsFile,
    host: &'a Netlink,
    sandbox: &'a Netlink,
}

impl Ctx<'_> {
    /// The OVS port and the sandbox's L3 setup, side by side; then the
    /// follow-up that announces the pod once the port is live.
    async fn attach(
        &self,
        b: &Backends,
        a: &Assignment,
        host_link: &Link,
        undo: &mut Undo,
    ) -> CniResult<Value> {
        let mac = self.conf.runtime_mac.unwrap_or_else(|| mac_from_ipv4(a.ip));
        // Set before the call: when its reply is lost the transaction may
        // still have committed, and only a delete by name can tell.
        undo.port = true;
        let cfg = SandboxConfig {
            ifname: self.ifname.to_string(),
            mac: Some(mac),
            ip: a.ip,
            prefix_len: a.prefix_len,
            gateway: Some(a.gateway),
            arp_notify: true,
            // The userspace datapath forwards what the veth hands it as is, so
            // the pod must checksum its own packets (see leengine_netdp::set_tx_checksum).
            software_tx_checksum: b.userspace,
        };
        let (port, configured) = tokio::join!(
            self.add_port(&b.ovs, a),
            configure_sandbox(self.sandbox, self.ns, &cfg)
        );
        port?;
        let sandbox_link = configured?;
        tracing::debug!(ifname = self.ifname, "sandbox configured");
        if let Some(g) = self.conf.garp {
            let spec = GarpSpec {
                ifname: self.ifname.to_string(),
                mac,
                ip: a.ip,
                count: g.count,
                interval: g.interval,
            };
            self.announce(&b.ovs, spec);
        }
        tracing::info!(
            network = %self.conf.name, container = self.cid, ifname = self.ifname, ip = %a.ip, vlan = a.vlan.id(),
            port = self.host_if, "attached"
        );
        let res = self.result(a, host_link, sandbox_link.mac.unwrap_or(mac))?;
        Ok(res.to_json(&self.conf.cni_version))
    }

    /// Starts the follow-up that sends the gratuitous ARPs once the port is
    /// live: a task of the warm service, else a detached process (a one-shot
    /// plugin exits as soon as it has answered).
    fn announce(&self, ovs: &Ovs, spec: GarpSpec) {
        let started = if self.sessions.is_warm() {
            NetnsFile::open(self.ns.path())
                .map(|ns| {
                    let (ovs, port) = (ovs.clone(), self.host_if.to_string());
                    tokio::spawn(async move {
                        if let Err(e) = garp_follow::follow(&ovs, &port, &ns, spec).await {
                            tracing::debug!(error = %e, port, "garp follow-up stopped");
                        }
                    });
                })
                .map_err(|e| e.to_string())
        } else {
            let port = garp_follow::Port {
                ovsdb: &self.conf.ovsdb,
                name: self.host_if,
            };
            garp_follow::spawn(self.ns.path(), &port, &spec).map_err(|e| e.to_string())
        };
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the gratuitous ARPs");
        }
    }

    /// The access port in the pool's VLAN; a stale one of the same name
    /// (a crashed earlier call for this attachment) is replaced.
    async fn add_port(&self, ovs: &Ovs, a: &Assignment) -> CniResult<()> {
        let ids = backend::external_ids(&PortIds {
            network: &self.conf.name,
            container_id: self.cid,
            ifname: self.ifname,
            pod_namespace: self.env.args.pod_namespace.as_deref(),
            pod_name: self.env.args.pod_name.as_deref(),
            ip: a.ip,
        });
        let tag = Some(a.vlan.id());
        let added = ovs
            .add_access_port(&self.conf.bridge, self.host_if, tag, &ids)
            .await;
        if let Err(leengine_ovsdb::OvsdbError::PortExists(_)) = added {
            ovs.del_port(&self.conf.bridge, self.host_if).await?;
            ovs.add_access_port(&self.conf.bridge, self.host_if, tag, &ids)
                .await?;
        } else {
            added?;
        }
        tracing::debug!(port = self.host_if, "OVS port added");
        Ok(())
    }

    fn result(
        &self,
        a: &Assignment,
        host: &leengine_netdp::Link,
        mac: [u8; 6],
    ) -> CniResult<SuccessResult> {
        let address = ipnet::Ipv4Net::new(a.ip, a.prefix_len).map_err(|_| {
            CniError::new(
                crate::error::IPAM,
                format!("pool {} has prefix length {}", a.pool, a.prefix_len),
            )
        })?;
        Ok(SuccessResult {
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
    async fn rollback(&self, undo: &Undo, ovs: Result<&Ovs, String>, ipam: Option<&Ipam>) {
        let fresh;
        let ovs = match ovs {
            Ok(o) if undo.port && o.is_closed() => {
                // A lost reply may have closed the connection: a fresh one removes the port.
                match self.sessions.ovs(self.conf).await {
                    Ok(c) => {
                        fresh = c;
                        Ok(&fresh)
                    }
                    Err(e) => Err(e.msg),
                }
            }
            other => other,
        };
        let ports = OvsPorts::new(ovs, PortScope::Bridge(&self.conf.bridge));
        let links = HostLinks::new(Ok(self.host));
        let target = Target {
            container_id: self.cid,
            ifname: self.ifname,
            netns: Some(self.ns.path()),
        };
        if let Err(f) = teardown::run(&links, &ports, rollback_plan(undo, target, ipam)).await {
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
fn rollback_plan<'a, A: Addresses>(
    undo: &Undo,
    target: Target<'a>,
    ipam: Option<&'a A>,
) -> Plan<'a, A> {
    Plan {
        target,
        ports: undo.port,
        links: undo.veth,
        ip: match ipam {
            Some(ipam) if undo.ip => Release::Held(ipam),
            _ => Release::Keep,
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
            .block_on(teardown::run(f, f, rollback_plan(undo, target(), Some(f))))
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
    fn rollback_before_an_address_was_taken_removes_just_the_veth() {
        // The veth is made while etcd and OVSDB are still being reached: a
        // failure there (etcd down, pool full) leaves only it.
        let f = Recording::new().with_ports(&["br0"]).holding();
        let undo = Undo {
            veth: true,
            ..Undo::default()
        };
        let plan = rollback_plan::<Recording>(&undo, target(), None);
        let run = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(teardown::run(&f, &f, plan));
        assert_eq!(run.unwrap(), IpOutcome::Kept);
        assert_eq!(
            f.calls(),
            vec![
                Call::RemoveHostLink(leengine_netdp::host_veth_name("c1", "eth0")),
                Call::RemoveSandboxLink("/run/netns/pod/eth0".into()),
            ]
        );
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
