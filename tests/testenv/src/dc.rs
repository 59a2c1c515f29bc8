use std::process::Command;

use crate::netns::Netns;
use crate::ovs::Ovs;
use crate::run::{must, unique_name};

/// A virtual data centre in one [`Ovs`] instance: N compute-node bridges,
/// each with a 2-member bond of veths up to a shared top-of-rack bridge,
/// VLAN trunks on both ends, plus hosts (pods, an external database host)
/// attached as access ports.
#[derive(Debug)]
pub struct DataCentre<'a> {
    ovs: &'a Ovs,
    tor: String,
    nodes: Vec<Uplink>,
    vlans: Vec<u16>,
}

/// One node's uplink: the veth ends on the node side and whether they are
/// bonded on a node bridge yet.
#[derive(Debug)]
pub struct Uplink {
    pub bridge: Option<String>,
    pub bond: Option<String>,
    pub members: [String; 2],
}

/// A host attached to an access port: its namespace, the port and its IP.
#[derive(Debug)]
pub struct Pod {
    pub netns: Netns,
    pub port: String,
    pub ip: String,
}

impl<'a> DataCentre<'a> {
    /// `nodes` node bridges, each bonded (active-backup) to the ToR, trunking `vlans`.
    pub fn new(ovs: &'a Ovs, nodes: usize, vlans: &[u16]) -> Self {
        let mut dc = Self::uplinks_only(ovs, nodes, vlans);
        for i in 0..nodes {
            let bridge = ovs.add_bridge();
            let bond = unique_name("bond");
            let [m0, m1] = dc.nodes[i].members.clone();
            let trunks = format!("trunks={}", join(vlans));
            let mut args = vec![
                "add-bond",
                &bridge,
                &bond,
                &m0,
                &m1,
                "bond_mode=active-backup",
            ];
            if !vlans.is_empty() {
                args.push(&trunks);
            }
            ovs.vsctl(&args);
            dc.nodes[i].bridge = Some(bridge);
            dc.nodes[i].bond = Some(bond);
        }
        dc
    }

    /// The ToR bridge and, per node, two veth pairs whose ToR ends are trunk
    /// ports; the node ends are left for the node-agent to bond.
    pub fn uplinks_only(ovs: &'a Ovs, nodes: usize, vlans: &[u16]) -> Self {
        let tor = ovs.add_bridge();
        let mut uplinks = Vec::new();
        for _ in 0..nodes {
            let members = [unique_name("up"), unique_name("up")];
            for m in &members {
                let peer = unique_name("tor");
                must(&mut ovs.command(&[
                    "ip", "link", "add", m, "type", "veth", "peer", "name", &peer,
                ]));
                for dev in [m.as_str(), peer.as_str()] {
                    must(&mut ovs.command(&["ip", "link", "set", dev, "up"]));
                }
                let mut args = vec!["add-port".to_string(), tor.clone(), peer.clone()];
                if !vlans.is_empty() {
                    args.push(format!("trunks={}", join(vlans)));
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                ovs.vsctl(&args);
            }
            uplinks.push(Uplink {
                bridge: None,
                bond: None,
                members,
            });
        }
        DataCentre {
            ovs,
            tor,
            nodes: uplinks,
            vlans: vlans.to_vec(),
        }
    }

    pub fn ovs(&self) -> &Ovs {
        self.ovs
    }

    pub fn tor_bridge(&self) -> &str {
        &self.tor
    }

    pub fn vlans(&self) -> &[u16] {
        &self.vlans
    }

    pub fn node(&self, i: usize) -> &Uplink {
        &self.nodes[i]
    }

    /// The bridge of node `i` (panics for an uplinks-only data centre).
    pub fn node_bridge(&self, i: usize) -> &str {
        self.nodes[i].bridge.as_deref().expect("node has a bridge")
    }

    /// Sets one bond member of node `i` down or up (a cable pulled / back).
    pub fn set_member(&self, node: usize, member: usize, up: bool) {
        let dev = &self.nodes[node].members[member];
        let state = if up { "up" } else { "down" };
        must(&mut self.ovs.command(&["ip", "link", "set", dev, state]));
    }

    /// A pod on node `i`: a netns with `eth0` at `cidr`, access port in `vlan`.
    pub fn add_pod(&self, node: usize, vlan: u16, cidr: &str) -> Pod {
        self.attach(self.node_bridge(node), vlan, cidr)
    }

    /// A host outside the cluster (say, a database) on the ToR in `vlan`.
    pub fn add_external_host(&self, vlan: u16, cidr: &str) -> Pod {
        self.attach(&self.tor, vlan, cidr)
    }

    fn attach(&self, bridge: &str, vlan: u16, cidr: &str) -> Pod {
        attach_host(self.ovs, bridge, vlan, cidr)
    }

    /// The member OVS currently forwards on for node `i`'s bond.
    pub fn active_member(&self, node: usize) -> Option<String> {
        let bond = self.nodes[node].bond.as_deref()?;
        let out = Command::new("ovs-appctl")
            .arg(format!(
                "--target={}",
                self.ovs.dir().join("vswitchd.ctl").display()
            ))
            .args(["bond/show", bond])
            .output()
            .ok()?;
        // "active member mac: 9e:06:..:af(up00d1c4)"
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("active member mac:"))?;
        let name = line.split_once('(')?.1.trim_end_matches(')');
        (!name.is_empty() && name != "none").then(|| name.to_string())
    }
}

fn join(vlans: &[u16]) -> String {
    vlans
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A host (a netns with `eth0` at `cidr`) on an access port of `bridge` in `vlan`.
pub(crate) fn attach_host(ovs: &Ovs, bridge: &str, vlan: u16, cidr: &str) -> Pod {
    let netns = Netns::new();
    let port = unique_name("vp");
    must(&mut ovs.command(&[
        "ip",
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        netns.name(),
    ]));
    must(&mut ovs.command(&["ip", "link", "set", &port, "up"]));
    ovs.vsctl(&["add-port", bridge, &port, &format!("tag={vlan}")]);
    netns.must(&["ip", "addr", "add", cidr, "dev", "eth0"]);
    netns.must(&["ip", "link", "set", "eth0", "up"]);
    // OVS's userspace datapath forwards a veth's packets as they are, with
    // the TCP checksum left to "hardware": the sender must fill it in.
    crate::run::require_bin("ethtool", "ethtool");
    netns.must(&["ethtool", "-K", "eth0", "tx", "off"]);
    let ip = cidr.split('/').next().unwrap_or(cidr).to_string();
    Pod { netns, port, ip }
}
