//! Planning the transaction that converges a bond port (pure).

use serde_json::{json, Value};

use super::model::{BondMode, Converge, PortInfo};
use crate::datum::{self, map, named_uuid, set, uuid};
use crate::error::{OvsdbError, Result};
use crate::op::{Cond, Mutation, Op, Until};

/// Without a LACP partner a balance-tcp bond would carry nothing; falling back to
/// active-backup keeps the node reachable while the switch side is being fixed.
const LACP_FALLBACK: &str = "lacp-fallback-ab";

/// A validated bond request: members and trunks sorted and unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BondSpec {
    pub name: String,
    pub members: Vec<String>,
    pub mode: BondMode,
    pub trunks: Vec<u16>,
}

impl BondSpec {
    pub(crate) fn new(
        name: &str,
        members: &[String],
        mode: BondMode,
        trunks: &[u16],
    ) -> Result<Self> {
        if name.is_empty() {
            return Err(OvsdbError::Invalid("bond name is empty".into()));
        }
        if members.is_empty() {
            return Err(OvsdbError::Invalid(format!(
                "bond {name} needs at least one member"
            )));
        }
        let mut m: Vec<String> = members.to_vec();
        m.sort();
        if let Some(w) = m.windows(2).find(|w| w[0] == w[1]) {
            return Err(OvsdbError::Invalid(format!(
                "bond {name}: member {} given twice",
                w[0]
            )));
        }
        if m.iter().any(|x| x.is_empty() || x == name) {
            return Err(OvsdbError::Invalid(format!(
                "bond {name}: member names must be non-empty and differ from the bond's"
            )));
        }
        if let Some(v) = trunks.iter().find(|v| **v > 4095) {
            return Err(OvsdbError::Invalid(format!(
                "bond {name}: VLAN {v} out of range 0-4095"
            )));
        }
        let mut t = trunks.to_vec();
        t.sort_unstable();
        t.dedup();
        Ok(BondSpec {
            name: name.to_string(),
            members: m,
            mode,
            trunks: t,
        })
    }

    fn member_names_of(port: &PortInfo) -> Vec<String> {
        let mut names: Vec<String> = port.interfaces.iter().map(|i| i.name.clone()).collect();
        names.sort();
        names
    }

    fn matches(&self, port: &PortInfo) -> bool {
        Self::member_names_of(port) == self.members
            && port.trunks == self.trunks
            && port.bond_mode.as_deref() == Some(self.mode.bond_mode())
            && port.lacp.as_deref() == Some(self.mode.lacp())
            && port.tag.is_none()
    }

    fn other_config_mutation(&self) -> Mutation {
        if self.mode == BondMode::BalanceTcpLacp {
            Mutation::insert("other_config", map([(LACP_FALLBACK, "true")]))
        } else {
            Mutation::delete("other_config", set([LACP_FALLBACK]))
        }
    }

    fn new_member_ops(&self, names: &[&String]) -> (Vec<Op>, Vec<Value>) {
        let mut ops = Vec::new();
        let mut refs = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let handle = format!("member{i}");
            ops.push(Op::insert_named(
                "Interface",
                json!({"name": name, "type": "system"}),
                &handle,
            ));
            refs.push(named_uuid(&handle));
        }
        (ops, refs)
    }

    /// The operations that make the bond match this spec, given the port as it is now.
    /// On update, the first operation is a guard that fails ("timed out", op 0) if the
    /// port changed since it was read, so a racing writer is never overwritten blindly.
    pub(crate) fn plan(&self, bridge: &str, current: Option<&PortInfo>) -> (Converge, Vec<Op>) {
        let trunks = set(self.trunks.iter().copied());
        let Some(port) = current else {
            let members: Vec<&String> = self.members.iter().collect();
            let (mut ops, refs) = self.new_member_ops(&members);
            ops.insert(
                0,
                Op::assert_absent("Port", vec![Cond::eq("name", self.name.as_str())]),
            );
            let mut row = json!({"name": self.name, "interfaces": set(refs), "trunks": trunks,
                                 "bond_mode": self.mode.bond_mode(), "lacp": self.mode.lacp()});
            if self.mode == BondMode::BalanceTcpLacp {
                row["other_config"] = map([(LACP_FALLBACK, "true")]);
            }
            ops.push(Op::insert_named("Port", row, "bond"));
            ops.push(Op::mutate(
                "Bridge",
                vec![Cond::eq("name", bridge)],
                vec![Mutation::insert("ports", set([named_uuid("bond")]))],
            ));
            return (Converge::Created, ops);
        };
        if self.matches(port) {
            return (Converge::Unchanged, Vec::new());
        }
        let by_uuid = vec![Cond::eq("_uuid", uuid(&port.uuid))];
        let old_ifaces: Vec<Value> = port.interfaces.iter().map(|i| uuid(&i.uuid)).collect();
        let mut ops = vec![Op::wait(
            "Port",
            by_uuid.clone(),
            &["interfaces", "trunks", "bond_mode", "lacp"],
            Until::Equal,
            vec![json!({
                "interfaces": set(old_ifaces),
                "trunks": set(port.trunks.iter().copied()),
                "bond_mode": datum::optional(port.bond_mode.clone()),
                "lacp": datum::optional(port.lacp.clone()),
            })],
            Some(std::time::Duration::ZERO),
        )];
        let mut keep: Vec<Value> = port
            .interfaces
            .iter()
            .filter(|i| self.members.contains(&i.name))
            .map(|i| uuid(&i.uuid))
            .collect();
        let missing: Vec<&String> = self
            .members
            .iter()
            .filter(|m| !port.interfaces.iter().any(|i| &i.name == *m))
            .collect();
        let (inserts, refs) = self.new_member_ops(&missing);
        ops.extend(inserts);
        keep.extend(refs);
        // Interfaces dropped from the set are garbage-collected by the server.
        ops.push(Op::update(
            "Port",
            by_uuid.clone(),
            json!({"interfaces": set(keep), "trunks": trunks, "tag": datum::empty_set(),
                   "bond_mode": self.mode.bond_mode(), "lacp": self.mode.lacp()}),
        ));
        ops.push(Op::mutate(
            "Port",
            by_uuid,
            vec![self.other_config_mutation()],
        ));
        (Converge::Updated, ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vswitch::model::InterfaceInfo;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn iface(uuid: &str, name: &str) -> InterfaceInfo {
        InterfaceInfo {
            uuid: uuid.into(),
            name: name.into(),
            ofport: Some(1),
            error: None,
            link_state: Some("up".into()),
            admin_state: Some("up".into()),
            mac_in_use: None,
        }
    }

    fn bond_port(members: &[(&str, &str)], trunks: &[u16]) -> PortInfo {
        PortInfo {
            uuid: "P".into(),
            name: "bond1".into(),
            bridge: Some("br0".into()),
            tag: None,
            trunks: trunks.to_vec(),
            external_ids: Default::default(),
            interfaces: members.iter().map(|(u, n)| iface(u, n)).collect(),
            bond_mode: Some("active-backup".into()),
            lacp: Some("off".into()),
            bond_active_slave: None,
        }
    }

    #[test]
    fn validates_and_normalises() {
        let b = BondSpec::new(
            "bond1",
            &s(&["eth2", "eth1"]),
            BondMode::ActiveBackup,
            &[200, 100, 200],
        )
        .unwrap();
        assert_eq!(b.members, s(&["eth1", "eth2"]));
        assert_eq!(b.trunks, vec![100, 200]);
        for (name, members, trunks) in [
            ("", s(&["a"]), vec![]),
            ("b", vec![], vec![]),
            ("b", s(&["a", "a"]), vec![]),
            ("b", s(&["a", ""]), vec![]),
            ("b", s(&["a", "b"]), vec![]),
            ("b", s(&["a", "c"]), vec![4096]),
        ] {
            assert!(
                matches!(
                    BondSpec::new(name, &members, BondMode::ActiveBackup, &trunks),
                    Err(OvsdbError::Invalid(_))
                ),
                "{name} {members:?} {trunks:?}"
            );
        }
    }

    #[test]
    fn creates_when_absent() {
        let b = BondSpec::new(
            "bond1",
            &s(&["eth1", "eth2"]),
            BondMode::BalanceTcpLacp,
            &[100],
        )
        .unwrap();
        let (c, ops) = b.plan("br0", None);
        assert_eq!(c, Converge::Created);
        let labels: Vec<_> = ops.iter().map(Op::label).collect();
        assert_eq!(
            labels,
            [
                "wait Port",
                "insert Interface",
                "insert Interface",
                "insert Port",
                "mutate Bridge"
            ]
        );
        let port = ops[3].to_json();
        assert_eq!(port["row"]["bond_mode"], "balance-tcp");
        assert_eq!(port["row"]["lacp"], "active");
        assert_eq!(port["row"]["trunks"], json!(["set", [100]]));
        assert_eq!(
            port["row"]["interfaces"],
            json!([
                "set",
                [["named-uuid", "member0"], ["named-uuid", "member1"]]
            ])
        );
        assert_eq!(
            port["row"]["other_config"],
            json!(["map", [["lacp-fallback-ab", "true"]]])
        );
    }

    #[test]
    fn unchanged_when_matching_in_any_order() {
        let b = BondSpec::new(
            "bond1",
            &s(&["eth2", "eth1"]),
            BondMode::ActiveBackup,
            &[200, 100],
        )
        .unwrap();
        let port = bond_port(&[("I1", "eth1"), ("I2", "eth2")], &[100, 200]);
        let (c, ops) = b.plan("br0", Some(&port));
        assert_eq!(c, Converge::Unchanged);
        assert!(ops.is_empty());
    }

    #[test]
    fn updates_members_and_trunks_keeping_existing_interfaces() {
        let b = BondSpec::new(
            "bond1",
            &s(&["eth2", "eth3"]),
            BondMode::ActiveBackup,
            &[100, 300],
        )
        .unwrap();
        let port = bond_port(&[("I1", "eth1"), ("I2", "eth2")], &[100]);
        let (c, ops) = b.plan("br0", Some(&port));
        assert_eq!(c, Converge::Updated);
        let labels: Vec<_> = ops.iter().map(Op::label).collect();
        assert_eq!(
            labels,
            [
                "wait Port",
                "insert Interface",
                "update Port",
                "mutate Port"
            ]
        );
        let guard = ops[0].to_json();
        assert_eq!(guard["timeout"], 0);
        assert_eq!(guard["rows"][0]["trunks"], json!(["set", [100]]));
        assert_eq!(ops[1].to_json()["row"]["name"], "eth3");
        let row = &ops[2].to_json()["row"];
        assert_eq!(
            row["interfaces"],
            json!(["set", [["uuid", "I2"], ["named-uuid", "member0"]]])
        );
        assert_eq!(row["trunks"], json!(["set", [100, 300]]));
        assert_eq!(
            ops[3].to_json()["mutations"][0],
            json!(["other_config", "delete", ["set", ["lacp-fallback-ab"]]])
        );
    }

    #[test]
    fn mode_change_is_an_update() {
        let b =
            BondSpec::new("bond1", &s(&["eth1", "eth2"]), BondMode::BalanceSlb, &[100]).unwrap();
        let port = bond_port(&[("I1", "eth1"), ("I2", "eth2")], &[100]);
        let (c, ops) = b.plan("br0", Some(&port));
        assert_eq!(c, Converge::Updated);
        assert_eq!(ops[1].to_json()["row"]["bond_mode"], "balance-slb");
    }
}
