//! Typed operations on the Open_vSwitch database, each one transaction (plus, where a
//! row must be found by name before it can be referenced by uuid, one read before it).

mod bond;
mod model;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

pub mod ext_ids;
pub use model::{BondMode, BondStatus, Converge, InterfaceInfo, MemberStatus, PortInfo};

use crate::client::Client;
use crate::datum::{self, map, named_uuid, set, uuid};
use crate::error::{OvsdbError, Result};
use crate::op::{Cond, Mutation, Op, OpResult, Until};
use model::{assemble_ports, parse_bridges, BRIDGE_COLUMNS, INTERFACE_COLUMNS, PORT_COLUMNS};

/// The database ovs-vswitchd reads its configuration from.
pub const DB: &str = "Open_vSwitch";

/// Extra time on top of a `wait` operation's own timeout for the reply to arrive.
const WAIT_REPLY_SLACK: Duration = Duration::from_secs(2);

fn failed_at(err: &OvsdbError, at: usize, what: &str) -> bool {
    matches!(err, OvsdbError::Operation { index: Some(i), error, .. } if *i == at && error == what)
}

fn validate_vlan(tag: u16) -> Result<()> {
    if tag > 4095 {
        return Err(OvsdbError::Invalid(format!(
            "VLAN tag {tag} out of range 0-4095"
        )));
    }
    Ok(())
}

impl Client {
    /// Runs `ops` on the Open_vSwitch database.
    async fn vs(&self, ops: Vec<Op>) -> Result<Vec<OpResult>> {
        self.transact(DB, ops).await
    }

    /// Reads ports matching `port_conds` with their interfaces and owning bridge.
    async fn read_ports(&self, port_conds: Vec<Cond>) -> Result<Vec<PortInfo>> {
        let r = self
            .vs(vec![
                Op::select("Bridge", vec![], BRIDGE_COLUMNS),
                Op::select("Port", port_conds, PORT_COLUMNS),
                Op::select("Interface", vec![], INTERFACE_COLUMNS),
            ])
            .await?;
        assemble_ports(r[0].rows()?, r[1].rows()?, r[2].rows()?)
    }

    /// Creates the bridge (with its internal port and interface) and hooks it into the
    /// Open_vSwitch row, or sets `datapath_type` ("netdev", "system") on an existing one.
    pub async fn ensure_bridge(&self, name: &str, datapath_type: &str) -> Result<Converge> {
        if name.is_empty() {
            return Err(OvsdbError::Invalid("bridge name is empty".into()));
        }
        let by_name = || vec![Cond::eq("name", name)];
        let created = self
            .vs(vec![
                Op::assert_absent("Bridge", by_name()),
                Op::insert_named("Interface", json!({"name": name, "type": "internal"}), "iface"),
                Op::insert_named(
                    "Port",
                    json!({"name": name, "interfaces": named_uuid("iface")}),
                    "port",
                ),
                Op::insert_named(
                    "Bridge",
                    json!({"name": name, "ports": set([named_uuid("port")]), "datapath_type": datapath_type}),
                    "bridge",
                ),
                Op::mutate(
                    "Open_vSwitch",
                    vec![],
                    vec![Mutation::insert("bridges", set([named_uuid("bridge")]))],
                ),
            ])
            .await;
        match created {
            Ok(r) => {
                // Without an Open_vSwitch row nothing refers to the new bridge and the
                // server garbage-collects it in the same commit.
                if r[4].count()? == 0 {
                    return Err(OvsdbError::NotInitialised);
                }
                tracing::info!(bridge = name, datapath_type, "created OVS bridge");
                Ok(Converge::Created)
            }
            Err(e) if failed_at(&e, 0, "timed out") => {
                let mut differs = by_name();
                differs.push(Cond::ne("datapath_type", datapath_type));
                let r = self
                    .vs(vec![Op::update(
                        "Bridge",
                        differs,
                        json!({"datapath_type": datapath_type}),
                    )])
                    .await?;
                if r[0].count()? == 0 {
                    return Ok(Converge::Unchanged);
                }
                tracing::info!(
                    bridge = name,
                    datapath_type,
                    "changed OVS bridge datapath type"
                );
                Ok(Converge::Updated)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a bridge of that name exists.
    pub async fn bridge_exists(&self, name: &str) -> Result<bool> {
        let r = self
            .vs(vec![Op::select(
                "Bridge",
                vec![Cond::eq("name", name)],
                &["_uuid"],
            )])
            .await?;
        Ok(!r[0].rows()?.is_empty())
    }

    /// The bridge's `datapath_type` (`""` means the default, `system`), or
    /// `None` when there is no such bridge.
    pub async fn bridge_datapath_type(&self, name: &str) -> Result<Option<String>> {
        let r = self
            .vs(vec![Op::select(
                "Bridge",
                vec![Cond::eq("name", name)],
                &["datapath_type"],
            )])
            .await?;
        Ok(r[0].rows()?.first().map(|row| {
            row.get("datapath_type")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        }))
    }

    /// Adds an access port (one Interface of type system, Port with `tag`) to `bridge`.
    /// Fails with `NoBridge` if the bridge is missing and `PortExists` if a port of that
    /// name exists anywhere; nothing is changed then. Returns the Port's uuid.
    pub async fn add_access_port(
        &self,
        bridge: &str,
        port: &str,
        vlan_tag: Option<u16>,
        external_ids: &BTreeMap<String, String>,
    ) -> Result<String> {
        if port.is_empty() {
            return Err(OvsdbError::Invalid("port name is empty".into()));
        }
        if let Some(tag) = vlan_tag {
            validate_vlan(tag)?;
        }
        let bridge_cond = || vec![Cond::eq("name", bridge)];
        let r = self
            .vs(vec![
                Op::assert_present("Bridge", bridge_cond()),
                Op::assert_absent("Port", vec![Cond::eq("name", port)]),
                Op::insert_named("Interface", json!({"name": port, "type": "system"}), "iface"),
                Op::insert_named(
                    "Port",
                    json!({"name": port, "interfaces": named_uuid("iface"),
                           "tag": datum::optional(vlan_tag), "external_ids": map(external_ids.clone())}),
                    "port",
                ),
                Op::mutate(
                    "Bridge",
                    bridge_cond(),
                    vec![Mutation::insert("ports", set([named_uuid("port")]))],
                ),
            ])
            .await
            .map_err(|e| {
                if failed_at(&e, 0, "timed out") {
                    OvsdbError::NoBridge(bridge.to_string())
                } else if failed_at(&e, 1, "timed out") {
                    OvsdbError::PortExists(port.to_string())
                } else {
                    e
                }
            })?;
        Ok(r[3].uuid()?.to_string())
    }

    /// Waits until ovs-vswitchd has given `iface` an OpenFlow port number and returns it.
    /// Fails with `InterfaceFailed` (carrying Interface.error) if ovs-vswitchd could not
    /// open the device, `NoInterface` if the row is missing, `OfportTimeout` otherwise.
    pub async fn wait_ofport(&self, iface: &str, timeout: Duration) -> Result<u32> {
        let by_name = || vec![Cond::eq("name", iface)];
        let read = Op::select("Interface", by_name(), &["ofport", "error"]);
        // The server holds the transaction until ofport is set, so no polling is needed.
        let waited = self
            .transact_timeout(
                DB,
                vec![
                    Op::wait(
                        "Interface",
                        by_name(),
                        &["ofport"],
                        Until::NotEqual,
                        vec![json!({"ofport": datum::empty_set()})],
                        Some(timeout),
                    ),
                    read.clone(),
                ],
                timeout + WAIT_REPLY_SLACK,
            )
            .await;
        let rows = match waited {
            Ok(r) => r[1].rows()?.to_vec(),
            Err(e) if failed_at(&e, 0, "timed out") => {
                let r = self.vs(vec![read]).await?;
                let rows = r[0].rows()?;
                if let Some(error) = rows
                    .first()
                    .map(|row| datum::optional_string(&row["error"]))
                    .transpose()?
                    .flatten()
                {
                    return Err(OvsdbError::InterfaceFailed {
                        iface: iface.to_string(),
                        error,
                    });
                }
                if rows.is_empty() {
                    return Err(OvsdbError::NoInterface(iface.to_string()));
                }
                return Err(OvsdbError::OfportTimeout {
                    iface: iface.to_string(),
                    timeout,
                });
            }
            Err(e) => return Err(e),
        };
        let Some(row) = rows.first() else {
            return Err(OvsdbError::NoInterface(iface.to_string()));
        };
        let ofport = datum::optional_int(&row["ofport"])?;
        let error = datum::optional_string(&row["error"])?;
        match (ofport, error) {
            (Some(p), None) if p > 0 => {
                u32::try_from(p).map_err(|_| OvsdbError::protocol(format!("ofport {p}")))
            }
            (_, Some(error)) => Err(OvsdbError::InterfaceFailed {
                iface: iface.to_string(),
                error,
            }),
            (p, None) => Err(OvsdbError::InterfaceFailed {
                iface: iface.to_string(),
                error: format!("ofport {p:?}"),
            }),
        }
    }

    /// Removes `port` (and its interfaces) from `bridge`. A missing port is success
    /// (returns false); a port on another bridge is an error and stays.
    pub async fn del_port(&self, bridge: &str, port: &str) -> Result<bool> {
        let r = self
            .vs(vec![
                Op::select("Port", vec![Cond::eq("name", port)], &["_uuid"]),
                Op::select("Bridge", vec![Cond::eq("name", bridge)], BRIDGE_COLUMNS),
            ])
            .await?;
        let Some(port_row) = r[0].rows()?.first() else {
            return Ok(false);
        };
        let port_uuid = datum::as_uuid(&port_row["_uuid"])?.to_string();
        let Some((_, ports)) = parse_bridges(r[1].rows()?)?.into_iter().next() else {
            return Err(OvsdbError::NoBridge(bridge.to_string()));
        };
        if !ports.contains(&port_uuid) {
            return Err(OvsdbError::PortNotOnBridge {
                port: port.to_string(),
                bridge: bridge.to_string(),
            });
        }
        // By uuid, so a port re-created under the same name meanwhile is left alone;
        // the unreferenced Port and its Interfaces are garbage-collected by the server.
        let r = self
            .vs(vec![Op::mutate(
                "Bridge",
                vec![Cond::eq("name", bridge)],
                vec![Mutation::delete("ports", set([uuid(&port_uuid)]))],
            )])
            .await?;
        Ok(r[0].count()? > 0)
    }

    /// Ports whose external_ids hold `key` = `value`, on any bridge.
    pub async fn find_ports_by_external_id(&self, key: &str, value: &str) -> Result<Vec<PortInfo>> {
        self.read_ports(vec![Cond::includes("external_ids", map([(key, value)]))])
            .await
    }

    /// All ports of `bridge`, including the bridge's own internal port.
    pub async fn list_ports(&self, bridge: &str) -> Result<Vec<PortInfo>> {
        let r = self
            .vs(vec![
                Op::select("Bridge", vec![Cond::eq("name", bridge)], BRIDGE_COLUMNS),
                Op::select("Bridge", vec![], BRIDGE_COLUMNS),
                Op::select("Port", vec![], PORT_COLUMNS),
                Op::select("Interface", vec![], INTERFACE_COLUMNS),
            ])
            .await?;
        if r[0].rows()?.is_empty() {
            return Err(OvsdbError::NoBridge(bridge.to_string()));
        }
        let ports = assemble_ports(r[1].rows()?, r[2].rows()?, r[3].rows()?)?;
        Ok(ports
            .into_iter()
            .filter(|p| p.bridge.as_deref() == Some(bridge))
            .collect())
    }

    /// The port of that name, if any.
    pub async fn port_info(&self, name: &str) -> Result<Option<PortInfo>> {
        Ok(self
            .read_ports(vec![Cond::eq("name", name)])
            .await?
            .into_iter()
            .next())
    }

    /// Makes `bond` on `bridge` have exactly `members`, `mode` and `trunks` (an empty
    /// `trunks` carries every VLAN). Creates the bond, updates what differs, or does
    /// nothing. A concurrent change between read and write is retried.
    pub async fn ensure_bond<S: AsRef<str>>(
        &self,
        bridge: &str,
        bond: &str,
        members: &[S],
        mode: BondMode,
        trunks: &[u16],
    ) -> Result<Converge> {
        let members: Vec<String> = members.iter().map(|m| m.as_ref().to_string()).collect();
        let spec = bond::BondSpec::new(bond, &members, mode, trunks)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if !self.bridge_exists(bridge).await? {
                return Err(OvsdbError::NoBridge(bridge.to_string()));
            }
            let current = self.port_info(bond).await?;
            if let Some(p) = &current {
                if p.bridge.as_deref() != Some(bridge) {
                    return Err(OvsdbError::PortNotOnBridge {
                        port: bond.to_string(),
                        bridge: bridge.to_string(),
                    });
                }
            }
            let (outcome, ops) = spec.plan(bridge, current.as_ref());
            if ops.is_empty() {
                return Ok(outcome);
            }
            match self.vs(ops).await {
                Ok(_) => {
                    tracing::info!(bridge, bond, ?outcome, %mode, trunks = ?spec.trunks, members = ?spec.members, "converged OVS bond");
                    return Ok(outcome);
                }
                Err(e) if attempts < 3 && failed_at(&e, 0, "timed out") => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Health of `bond`: members up/down and the active member.
    pub async fn bond_status(&self, bond: &str) -> Result<BondStatus> {
        let port = self
            .port_info(bond)
            .await?
            .ok_or_else(|| OvsdbError::NoPort(bond.to_string()))?;
        Ok(BondStatus::from_port(&port))
    }
}
