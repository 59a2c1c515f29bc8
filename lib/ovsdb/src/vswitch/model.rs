//! Typed views of Open_vSwitch rows, built from `select` results (pure, no I/O).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::datum;
use crate::error::{OvsdbError, Result};

/// How a bond spreads traffic over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BondMode {
    /// One member carries everything; another takes over when it fails. Needs nothing
    /// from the switches.
    ActiveBackup,
    /// Source-MAC load balancing without LACP.
    BalanceSlb,
    /// L4 hash balancing; needs LACP with the switches (falls back to active-backup
    /// when the partner does not speak LACP).
    BalanceTcpLacp,
}

impl BondMode {
    pub(crate) fn bond_mode(self) -> &'static str {
        match self {
            BondMode::ActiveBackup => "active-backup",
            BondMode::BalanceSlb => "balance-slb",
            BondMode::BalanceTcpLacp => "balance-tcp",
        }
    }

    pub(crate) fn lacp(self) -> &'static str {
        match self {
            BondMode::BalanceTcpLacp => "active",
            _ => "off",
        }
    }
}

impl fmt::Display for BondMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BondMode::BalanceTcpLacp => f.write_str("balance-tcp+lacp"),
            other => f.write_str(other.bond_mode()),
        }
    }
}

impl FromStr for BondMode {
    type Err = OvsdbError;

    /// Accepts `active-backup`, `balance-slb`, and `balance-tcp`, `balance-tcp+lacp` or `lacp`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "active-backup" => Ok(BondMode::ActiveBackup),
            "balance-slb" => Ok(BondMode::BalanceSlb),
            "balance-tcp" | "balance-tcp+lacp" | "lacp" => Ok(BondMode::BalanceTcpLacp),
            _ => Err(OvsdbError::Invalid(format!(
                "bond mode {s:?}: expected active-backup, balance-slb or balance-tcp+lacp"
            ))),
        }
    }
}

/// What a converging call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Converge {
    Created,
    Updated,
    Unchanged,
}

/// One Interface row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub uuid: String,
    pub name: String,
    /// OpenFlow port number; `None` until ovs-vswitchd has handled the interface,
    /// `-1` when it could not open it (see `error`).
    pub ofport: Option<i64>,
    /// Why ovs-vswitchd could not use the interface.
    pub error: Option<String>,
    /// "up" / "down" as ovs-vswitchd sees the link.
    pub link_state: Option<String>,
    pub admin_state: Option<String>,
    pub mac_in_use: Option<String>,
}

/// One Port row with its interfaces and the bridge holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub uuid: String,
    pub name: String,
    /// `None` for a port no bridge refers to (about to be garbage-collected).
    pub bridge: Option<String>,
    /// Access VLAN.
    pub tag: Option<u16>,
    /// VLANs a trunk port carries; empty on a port without `tag` means all VLANs.
    pub trunks: Vec<u16>,
    pub external_ids: BTreeMap<String, String>,
    pub interfaces: Vec<InterfaceInfo>,
    pub bond_mode: Option<String>,
    pub lacp: Option<String>,
    /// MAC of the active bond member, as ovs-vswitchd reports it.
    pub bond_active_slave: Option<String>,
}

impl PortInfo {
    /// The ofport of a single-interface port.
    pub fn ofport(&self) -> Option<i64> {
        match self.interfaces.as_slice() {
            [only] => only.ofport,
            _ => None,
        }
    }
}

/// Health of one bond member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub name: String,
    pub link_up: bool,
    pub admin_up: bool,
    pub ofport: Option<i64>,
    pub error: Option<String>,
}

impl MemberStatus {
    pub fn is_up(&self) -> bool {
        self.link_up && self.admin_up && self.error.is_none()
    }
}

/// Health of a bond, from its Port and Interface rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BondStatus {
    pub name: String,
    pub bridge: Option<String>,
    pub mode: Option<String>,
    pub lacp: Option<String>,
    pub trunks: Vec<u16>,
    /// Name of the member carrying traffic (active-backup), if ovs-vswitchd reported one.
    pub active_member: Option<String>,
    pub members: Vec<MemberStatus>,
}

impl BondStatus {
    pub fn members_up(&self) -> usize {
        self.members.iter().filter(|m| m.is_up()).count()
    }

    pub fn members_down(&self) -> usize {
        self.members.len() - self.members_up()
    }

    /// At least one member carries traffic.
    pub fn is_up(&self) -> bool {
        self.members_up() > 0
    }

    /// Every member is up.
    pub fn is_healthy(&self) -> bool {
        !self.members.is_empty() && self.members_down() == 0
    }

    pub(crate) fn from_port(port: &PortInfo) -> Self {
        let members = port
            .interfaces
            .iter()
            .map(|i| MemberStatus {
                name: i.name.clone(),
                link_up: i.link_state.as_deref() == Some("up"),
                admin_up: i.admin_state.as_deref() == Some("up"),
                ofport: i.ofport,
                error: i.error.clone(),
            })
            .collect();
        let active_member = port.bond_active_slave.as_deref().and_then(|mac| {
            port.interfaces
                .iter()
                .find(|i| {
                    i.mac_in_use
                        .as_deref()
                        .is_some_and(|m| m.eq_ignore_ascii_case(mac))
                })
                .map(|i| i.name.clone())
        });
        BondStatus {
            name: port.name.clone(),
            bridge: port.bridge.clone(),
            mode: port.bond_mode.clone(),
            lacp: port.lacp.clone(),
            trunks: port.trunks.clone(),
            active_member,
            members,
        }
    }
}

pub(crate) const BRIDGE_COLUMNS: &[&str] = &["_uuid", "name", "ports"];
pub(crate) const PORT_COLUMNS: &[&str] = &[
    "_uuid",
    "name",
    "interfaces",
    "tag",
    "trunks",
    "external_ids",
    "bond_mode",
    "lacp",
    "bond_active_slave",
];
pub(crate) const INTERFACE_COLUMNS: &[&str] = &[
    "_uuid",
    "name",
    "ofport",
    "error",
    "link_state",
    "admin_state",
    "mac_in_use",
];

fn col<'a>(row: &'a Value, name: &str) -> Result<&'a Value> {
    row.get(name)
        .ok_or_else(|| OvsdbError::protocol(format!("row without column {name}: {row}")))
}

fn string_col(row: &Value, name: &str) -> Result<String> {
    col(row, name)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| OvsdbError::protocol(format!("column {name} is not a string: {row}")))
}

fn uuid_col(row: &Value) -> Result<String> {
    datum::as_uuid(col(row, "_uuid")?).map(str::to_string)
}

fn vlans(v: &Value) -> Result<Vec<u16>> {
    datum::int_set(v)?
        .into_iter()
        .map(|i| {
            u16::try_from(i).map_err(|_| OvsdbError::protocol(format!("VLAN out of range: {i}")))
        })
        .collect()
}

/// Bridge rows → (bridge name, port uuids).
pub(crate) fn parse_bridges(rows: &[Value]) -> Result<Vec<(String, Vec<String>)>> {
    rows.iter()
        .map(|r| Ok((string_col(r, "name")?, datum::uuid_set(col(r, "ports")?)?)))
        .collect()
}

pub(crate) fn parse_interface(row: &Value) -> Result<InterfaceInfo> {
    Ok(InterfaceInfo {
        uuid: uuid_col(row)?,
        name: string_col(row, "name")?,
        ofport: datum::optional_int(col(row, "ofport")?)?,
        error: datum::optional_string(col(row, "error")?)?,
        link_state: datum::optional_string(col(row, "link_state")?)?,
        admin_state: datum::optional_string(col(row, "admin_state")?)?,
        mac_in_use: datum::optional_string(col(row, "mac_in_use")?)?,
    })
}

/// Joins Port rows with their Interface rows and owning bridges.
pub(crate) fn assemble_ports(
    bridge_rows: &[Value],
    port_rows: &[Value],
    iface_rows: &[Value],
) -> Result<Vec<PortInfo>> {
    let mut owner: HashMap<String, String> = HashMap::new();
    for (name, ports) in parse_bridges(bridge_rows)? {
        for p in ports {
            owner.insert(p, name.clone());
        }
    }
    let ifaces: HashMap<String, InterfaceInfo> = iface_rows
        .iter()
        .map(|r| parse_interface(r).map(|i| (i.uuid.clone(), i)))
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(port_rows.len());
    for row in port_rows {
        let uuid = uuid_col(row)?;
        let mut interfaces: Vec<InterfaceInfo> = datum::uuid_set(col(row, "interfaces")?)?
            .iter()
            .filter_map(|u| ifaces.get(u).cloned())
            .collect();
        interfaces.sort_by(|a, b| a.name.cmp(&b.name));
        let tag = vlans(col(row, "tag")?)?.first().copied();
        out.push(PortInfo {
            bridge: owner.get(&uuid).cloned(),
            uuid,
            name: string_col(row, "name")?,
            tag,
            trunks: vlans(col(row, "trunks")?)?,
            external_ids: datum::string_map(col(row, "external_ids")?)?,
            interfaces,
            bond_mode: datum::optional_string(col(row, "bond_mode")?)?,
            lacp: datum::optional_string(col(row, "lacp")?)?,
            bond_active_slave: datum::optional_string(col(row, "bond_active_slave")?)?,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn iface(uuid: &str, name: &str, ofport: Value, link: &str, mac: &str) -> Value {
        json!({"_uuid": ["uuid", uuid], "name": name, "ofport": ofport, "error": ["set", []],
               "link_state": link, "admin_state": "up", "mac_in_use": mac})
    }

    fn fixture() -> Vec<PortInfo> {
        let bridges = [json!({"_uuid": ["uuid", "b1"], "name": "br0",
                               "ports": ["set", [["uuid", "p1"], ["uuid", "p2"]]]})];
        let ports = [
            json!({"_uuid": ["uuid", "p1"], "name": "veth1", "interfaces": ["uuid", "i1"], "tag": 100,
                   "trunks": ["set", []], "external_ids": ["map", [["container", "c1"]]],
                   "bond_mode": ["set", []], "lacp": ["set", []], "bond_active_slave": ["set", []]}),
            json!({"_uuid": ["uuid", "p2"], "name": "bond1",
                   "interfaces": ["set", [["uuid", "i3"], ["uuid", "i2"]]], "tag": ["set", []],
                   "trunks": ["set", [100, 200]], "external_ids": ["map", []],
                   "bond_mode": "active-backup", "lacp": "off", "bond_active_slave": "AA:00:00:00:00:03"}),
            json!({"_uuid": ["uuid", "p3"], "name": "orphan", "interfaces": ["uuid", "i9"], "tag": ["set", []],
                   "trunks": ["set", []], "external_ids": ["map", []],
                   "bond_mode": ["set", []], "lacp": ["set", []], "bond_active_slave": ["set", []]}),
        ];
        let ifaces = [
            iface("i1", "veth1", json!(5), "up", "aa:00:00:00:00:01"),
            iface("i2", "eth1", json!(6), "down", "aa:00:00:00:00:02"),
            iface("i3", "eth2", json!(7), "up", "aa:00:00:00:00:03"),
            iface("i9", "x", json!(["set", []]), "up", "aa:00:00:00:00:09"),
        ];
        assemble_ports(&bridges, &ports, &ifaces).unwrap()
    }

    #[test]
    fn assembles_ports_with_interfaces_and_bridge() {
        let ports = fixture();
        let names: Vec<_> = ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["bond1", "orphan", "veth1"]);
        let veth = &ports[2];
        assert_eq!(veth.bridge.as_deref(), Some("br0"));
        assert_eq!(veth.tag, Some(100));
        assert_eq!(veth.ofport(), Some(5));
        assert_eq!(veth.external_ids["container"], "c1");
        let bond = &ports[0];
        assert_eq!(bond.trunks, vec![100, 200]);
        assert_eq!(bond.tag, None);
        assert_eq!(bond.ofport(), None, "a bond has no single ofport");
        let members: Vec<_> = bond.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(members, ["eth1", "eth2"]);
        assert_eq!(ports[1].bridge, None);
        assert_eq!(ports[1].ofport(), None);
    }

    #[test]
    fn bond_status_counts_members_and_finds_active_by_mac() {
        let ports = fixture();
        let st = BondStatus::from_port(&ports[0]);
        assert_eq!(
            st.active_member.as_deref(),
            Some("eth2"),
            "MAC match ignores case"
        );
        assert_eq!(st.members_up(), 1);
        assert_eq!(st.members_down(), 1);
        assert!(st.is_up());
        assert!(!st.is_healthy());
        assert_eq!(st.mode.as_deref(), Some("active-backup"));
    }

    #[test]
    fn bond_mode_parses_and_maps() {
        for (s, mode, ovs, lacp) in [
            (
                "active-backup",
                BondMode::ActiveBackup,
                "active-backup",
                "off",
            ),
            ("balance-slb", BondMode::BalanceSlb, "balance-slb", "off"),
            (
                "balance-tcp+lacp",
                BondMode::BalanceTcpLacp,
                "balance-tcp",
                "active",
            ),
            ("lacp", BondMode::BalanceTcpLacp, "balance-tcp", "active"),
        ] {
            let m: BondMode = s.parse().unwrap();
            assert_eq!(m, mode);
            assert_eq!(m.bond_mode(), ovs);
            assert_eq!(m.lacp(), lacp);
            assert_eq!(m.to_string().parse::<BondMode>().unwrap(), m);
        }
        assert!(matches!(
            "roundrobin".parse::<BondMode>(),
            Err(OvsdbError::Invalid(_))
        ));
    }

    #[test]
    fn rejects_malformed_rows() {
        let bad_port = [json!({"_uuid": ["uuid", "p"], "name": "x"})];
        assert!(matches!(
            assemble_ports(&[], &bad_port, &[]),
            Err(OvsdbError::Protocol(_))
        ));
        let bad_vlan = [
            json!({"_uuid": ["uuid", "p"], "name": "x", "interfaces": ["set", []], "tag": 70000,
            "trunks": ["set", []], "external_ids": ["map", []], "bond_mode": ["set", []], "lacp": ["set", []],
            "bond_active_slave": ["set", []]}),
        ];
        assert!(matches!(
            assemble_ports(&[], &bad_vlan, &[]),
            Err(OvsdbError::Protocol(_))
        ));
    }
}
