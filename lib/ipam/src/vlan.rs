//! The one VLAN type: the 802.1Q id of a pool's L2 segment.
//!
//! Rule (docs/ipam.md, "VLANs"): every pool is tagged, with an id from 1
//! to 4094. 0 (priority-tagged / untagged) and 4095 (reserved) are refused
//! when a pool is made and when a record is read, so the plugin always
//! sets the access tag on a pod's OVS port and the node agent trunks only
//! real ids on the bond: there is no "untagged pool" case anywhere.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct Vlan(u16);

impl Vlan {
    pub const MIN: u16 = 1;
    pub const MAX: u16 = 4094;

    pub fn new(id: u16) -> Result<Self, InvalidVlan> {
        if (Self::MIN..=Self::MAX).contains(&id) {
            Ok(Self(id))
        } else {
            Err(InvalidVlan(u32::from(id)))
        }
    }

    /// The id as operators type it (a flag may hold any number).
    pub fn parse(id: u32) -> Result<Self, InvalidVlan> {
        u16::try_from(id)
            .map_err(|_| InvalidVlan(id))
            .and_then(Self::new)
    }

    pub fn id(self) -> u16 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("VLAN {0} is out of range 1-4094")]
pub struct InvalidVlan(pub u32);

impl TryFrom<u16> for Vlan {
    type Error = InvalidVlan;

    fn try_from(id: u16) -> Result<Self, InvalidVlan> {
        Self::new(id)
    }
}

impl From<Vlan> for u16 {
    fn from(v: Vlan) -> u16 {
        v.0
    }
}

impl fmt::Display for Vlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_1_to_4094_are_vlans() {
        for id in [1, 2, 100, 4093, 4094] {
            assert_eq!(Vlan::new(id).map(Vlan::id), Ok(id));
        }
    }

    #[test]
    fn zero_is_not_an_untagged_pool_but_refused() {
        assert_eq!(Vlan::new(0), Err(InvalidVlan(0)));
        assert_eq!(
            Vlan::new(0).unwrap_err().to_string(),
            "VLAN 0 is out of range 1-4094"
        );
    }

    #[test]
    fn reserved_and_wide_ids_are_refused() {
        assert_eq!(Vlan::new(4095), Err(InvalidVlan(4095)));
        assert_eq!(Vlan::parse(70_000), Err(InvalidVlan(70_000)));
        assert_eq!(Vlan::parse(161).map(Vlan::id), Ok(161));
    }

    #[test]
    fn records_keep_the_number_and_refuse_a_stored_zero() {
        let v: Vlan = serde_json::from_str("161").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "161");
        let err = serde_json::from_str::<Vlan>("0").unwrap_err().to_string();
        assert!(err.contains("VLAN 0 is out of range"), "{err}");
    }
}
