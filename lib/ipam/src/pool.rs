//! Pool validation, exclusions and block carving (pure).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::IpamError;
use crate::model::Pool;
use crate::Vlan;

/// Widest and narrowest pool CIDRs accepted.
pub const MIN_POOL_PREFIX: u8 = 16;
pub const MAX_POOL_PREFIX: u8 = 28;
pub const DEFAULT_BLOCK_SIZE: u32 = 16;
/// Smallest block: 4 addresses, so a block is never only network/broadcast.
pub const MIN_BLOCK_SIZE: u32 = 4;

/// An address, an inclusive `a-b` range or a CIDR never handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusion {
    Ip(Ipv4Addr),
    Range(Ipv4Addr, Ipv4Addr),
    Cidr(Ipv4Net),
}

impl Exclusion {
    /// Inclusive `(first, last)` as integers.
    pub fn bounds(&self) -> (u32, u32) {
        match *self {
            Exclusion::Ip(ip) => (ip.into(), ip.into()),
            Exclusion::Range(a, b) => (a.into(), b.into()),
            Exclusion::Cidr(net) => (net.network().into(), net.broadcast().into()),
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (a, b) = self.bounds();
        (a..=b).contains(&u32::from(ip))
    }
}

impl FromStr for Exclusion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some((a, b)) = s.split_once('-') {
            let a = parse_ip(a)?;
            let b = parse_ip(b)?;
            if a > b {
                return Err(format!("exclusion range {s} ends before it starts"));
            }
            return Ok(Exclusion::Range(a, b));
        }
        if s.contains('/') {
            return parse_network(s).map(Exclusion::Cidr);
        }
        parse_ip(s).map(Exclusion::Ip)
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Ip(ip) => write!(f, "{ip}"),
            Exclusion::Range(a, b) => write!(f, "{a}-{b}"),
            Exclusion::Cidr(net) => write!(f, "{net}"),
        }
    }
}

impl Serialize for Exclusion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Exclusion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{:?} is not an IPv4 address", s.trim()))
}

/// Parses `a.b.c.d/len`, refusing host bits (a typo there usually means a wrong range).
pub fn parse_network(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s
        .trim()
        .parse()
        .map_err(|_| format!("{:?} is not an IPv4 CIDR (a.b.c.d/len)", s.trim()))?;
    if net.addr() != net.network() {
        return Err(format!(
            "CIDR {net} has host bits set (network would be {}/{})",
            net.network(),
            net.prefix_len()
        ));
    }
    Ok(net)
}

/// Pool names go into etcd key segments and CLI tables.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "pool name {name:?} must be 1-63 characters of [A-Za-z0-9._-] not starting with '.'"
        ))
    }
}

impl Pool {
    /// Builds and validates a pool from operator input.
    pub fn parse(
        name: &str,
        cidr: &str,
        gateway: &str,
        vlan: u32,
        block_size: u32,
        excludes: &[String],
    ) -> Result<Pool, IpamError> {
        let invalid = IpamError::InvalidPool;
        let cidr = parse_network(cidr).map_err(invalid)?;
        let gateway = parse_ip(gateway).map_err(|e| invalid(format!("gateway: {e}")))?;
        let vlan = Vlan::parse(vlan).map_err(|e| invalid(e.to_string()))?;
        let excludes = excludes
            .iter()
            .map(|e| e.parse::<Exclusion>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let pool = Pool {
            name: name.to_string(),
            cidr,
            gateway,
            vlan,
            block_size,
            excludes,
        };
        pool.validate()?;
        Ok(pool)
    }

    /// Every rule a stored pool must satisfy.
    pub fn validate(&self) -> Result<(), IpamError> {
        self.check().map_err(IpamError::InvalidPool)
    }

    fn check(&self) -> Result<(), String> {
        check_name(&self.name)?;
        let len = self.cidr.prefix_len();
        if !(MIN_POOL_PREFIX..=MAX_POOL_PREFIX).contains(&len) {
            return Err(format!(
                "CIDR {} must be between /{MIN_POOL_PREFIX} and /{MAX_POOL_PREFIX}",
                self.cidr
            ));
        }
        if self.cidr.addr() != self.cidr.network() {
            return Err(format!("CIDR {} has host bits set", self.cidr));
        }
        if !self.cidr.contains(&self.gateway)
            || self.gateway == self.cidr.network()
            || self.gateway == self.cidr.broadcast()
        {
            return Err(format!(
                "gateway {} is not a host address of {}",
                self.gateway, self.cidr
            ));
        }
        let size = self.size();
        if !self.block_size.is_power_of_two()
            || self.block_size < MIN_BLOCK_SIZE
            || u64::from(self.block_size) > size
        {
            return Err(format!(
                "block size {} must be a power of two between {MIN_BLOCK_SIZE} and the pool size {size}",
                self.block_size
            ));
        }
        for ex in &self.excludes {
            let (a, b) = ex.bounds();
            if !self.cidr.contains(&Ipv4Addr::from(a)) || !self.cidr.contains(&Ipv4Addr::from(b)) {
                return Err(format!("exclusion {ex} is not inside {}", self.cidr));
            }
        }
        if self.assignable_count() == 0 {
            return Err(format!("pool {} has no assignable address left", self.cidr));
        }
        Ok(())
    }

    /// Number of addresses in the CIDR.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.cidr.prefix_len())
    }

    pub fn block_prefix_len(&self) -> u8 {
        // A u32 has at most 32 trailing zeros.
        32 - u8::try_from(self.block_size.trailing_zeros()).expect("at most 32")
    }

    pub fn block_count(&self) -> u64 {
        self.size() / u64::from(self.block_size)
    }

    pub fn overlaps(&self, other: &Pool) -> bool {
        self.cidr.contains(&other.cidr.network()) || other.cidr.contains(&self.cidr.network())
    }

    /// Why `ip` can never be handed out from this pool, if so.
    pub fn unassignable_reason(&self, ip: Ipv4Addr) -> Option<String> {
        if !self.cidr.contains(&ip) {
            Some(format!("outside pool {} ({})", self.name, self.cidr))
        } else if ip == self.cidr.network() {
            Some("network address".into())
        } else if ip == self.cidr.broadcast() {
            Some("broadcast address".into())
        } else if ip == self.gateway {
            Some("gateway address".into())
        } else {
            self.excludes
                .iter()
                .find(|e| e.contains(ip))
                .map(|e| format!("excluded by {e}"))
        }
    }

    pub fn is_assignable(&self, ip: Ipv4Addr) -> bool {
        self.unassignable_reason(ip).is_none()
    }

    /// The block that holds `ip` (whether claimed or not).
    pub fn block_of(&self, ip: Ipv4Addr) -> Option<Ipv4Net> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        Ipv4Net::new(ip, self.block_prefix_len())
            .ok()
            .map(|n| n.trunc())
    }

    /// All blocks of the pool, in address order.
    pub fn blocks(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let base = u32::from(self.cidr.network());
        let bs = self.block_size;
        let len = self.block_prefix_len();
        (0..u32::try_from(self.block_count()).expect("a /16 or smaller pool")).map(move |i| {
            Ipv4Net::new(Ipv4Addr::from(base + i * bs), len).expect("prefix length <= 32")
        })
    }

    /// Assignable addresses of one block, in address order.
    pub fn assignable_in(&self, block: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let first = u32::from(block.network());
        let last = u32::from(block.broadcast());
        (first..=last)
            .map(Ipv4Addr::from)
            .filter(move |ip| self.is_assignable(*ip))
    }

    pub fn assignable_count(&self) -> u64 {
        self.blocks()
            .map(|b| self.assignable_in(b).count() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(cidr: &str, gw: &str, vlan: u32, bs: u32, ex: &[&str]) -> Result<Pool, String> {
        let ex: Vec<String> = ex.iter().map(|s| s.to_string()).collect();
        Pool::parse("p1", cidr, gw, vlan, bs, &ex).map_err(|e| e.to_string())
    }

    #[test]
    fn valid_pool_parses() {
        let p = parse(
            "10.1.0.0/22",
            "10.1.0.1",
            100,
            16,
            &["10.1.0.2", "10.1.0.10-10.1.0.20", "10.1.3.0/28"],
        )
        .unwrap();
        assert_eq!(p.block_count(), 64);
        assert_eq!(p.block_prefix_len(), 28);
        // 1024 - network - broadcast - gateway - 1 - 11 - 16
        assert_eq!(p.assignable_count(), 1024 - 3 - 1 - 11 - 16);
        assert_eq!(p.excludes[1].to_string(), "10.1.0.10-10.1.0.20");
    }

    #[test]
    fn bad_pools_are_refused_with_a_reason() {
        let cases = [
            (
                parse("10.1.0.0/33", "10.1.0.1", 1, 16, &[]),
                "not an IPv4 CIDR",
            ),
            (parse("10.1.0.5/22", "10.1.0.1", 1, 16, &[]), "host bits"),
            (
                parse("10.0.0.0/8", "10.0.0.1", 1, 16, &[]),
                "between /16 and /28",
            ),
            (
                parse("10.1.0.0/29", "10.1.0.1", 1, 4, &[]),
                "between /16 and /28",
            ),
            (
                parse("10.1.0.0/22", "10.2.0.1", 1, 16, &[]),
                "gateway 10.2.0.1",
            ),
            (
                parse("10.1.0.0/22", "10.1.0.0", 1, 16, &[]),
                "gateway 10.1.0.0",
            ),
            (parse("10.1.0.0/22", "x", 1, 16, &[]), "gateway"),
            (parse("10.1.0.0/22", "10.1.0.1", 0, 16, &[]), "VLAN 0"),
            (parse("10.1.0.0/22", "10.1.0.1", 4095, 16, &[]), "VLAN 4095"),
            (
                parse("10.1.0.0/22", "10.1.0.1", 1, 24, &[]),
                "block size 24",
            ),
            (parse("10.1.0.0/22", "10.1.0.1", 1, 2, &[]), "block size 2"),
            (
                parse("10.1.0.0/28", "10.1.0.1", 1, 32, &[]),
                "block size 32",
            ),
            (
                parse("10.1.0.0/22", "10.1.0.1", 1, 16, &["10.1.0.9-10.1.0.3"]),
                "ends before",
            ),
            (
                parse("10.1.0.0/22", "10.1.0.1", 1, 16, &["10.9.0.1"]),
                "not inside",
            ),
            (
                parse("10.1.0.0/22", "10.1.0.1", 1, 16, &["10.1.0.3/30"]),
                "host bits",
            ),
            (
                parse("10.1.0.0/22", "10.1.0.1", 1, 16, &["10.1.0.0/21"]),
                "not inside",
            ),
            (
                parse("10.1.0.0/28", "10.1.0.1", 1, 16, &["10.1.0.0/28"]),
                "no assignable",
            ),
        ];
        for (got, want) in cases {
            let err = got.expect_err(want);
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
        let bad_name = Pool::parse("a/b", "10.1.0.0/22", "10.1.0.1", 1, 16, &[]);
        assert!(bad_name.unwrap_err().to_string().contains("pool name"));
    }

    #[test]
    fn overlap_both_ways() {
        let a = parse("10.1.0.0/22", "10.1.0.1", 1, 16, &[]).unwrap();
        let b = parse("10.1.2.0/24", "10.1.2.1", 1, 16, &[]).unwrap();
        let c = parse("10.1.4.0/22", "10.1.4.1", 1, 16, &[]).unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
    }

    #[test]
    fn unassignable_reasons() {
        let p = parse("10.1.0.0/24", "10.1.0.254", 1, 16, &["10.1.0.7"]).unwrap();
        let r = |s: &str| p.unassignable_reason(s.parse().unwrap());
        assert_eq!(r("10.1.0.0").as_deref(), Some("network address"));
        assert_eq!(r("10.1.0.255").as_deref(), Some("broadcast address"));
        assert_eq!(r("10.1.0.254").as_deref(), Some("gateway address"));
        assert_eq!(r("10.1.0.7").as_deref(), Some("excluded by 10.1.0.7"));
        assert!(r("10.1.1.7").unwrap().contains("outside"));
        assert_eq!(r("10.1.0.8"), None);
        // The block boundaries inside the pool are ordinary addresses.
        assert_eq!(r("10.1.0.16"), None);
        assert_eq!(r("10.1.0.15"), None);
    }

    #[test]
    fn exclusions_serialize_as_strings() {
        let p = parse(
            "10.1.0.0/24",
            "10.1.0.1",
            1,
            16,
            &["10.1.0.5-10.1.0.6", "10.1.0.64/26"],
        )
        .unwrap();
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(
            j["excludes"],
            serde_json::json!(["10.1.0.5-10.1.0.6", "10.1.0.64/26"])
        );
        assert_eq!(serde_json::from_value::<Pool>(j).unwrap(), p);
    }

    proptest! {
        /// Blocks tile the pool exactly: disjoint, aligned, covering every address.
        #[test]
        fn blocks_tile_the_pool(len in 16u8..=28, bs_log in 2u32..=8, base in any::<u32>()) {
            let bs = 1u32 << bs_log;
            prop_assume!(u64::from(bs) <= 1u64 << (32 - len));
            let net = Ipv4Net::new(Ipv4Addr::from(base), len).unwrap().trunc();
            let gw = Ipv4Addr::from(u32::from(net.network()) + 1);
            let p = Pool { name: "p".into(), cidr: net, gateway: gw, vlan: Vlan::new(1).unwrap(), block_size: bs, excludes: vec![] };
            prop_assert!(p.validate().is_ok());
            let blocks: Vec<_> = p.blocks().collect();
            prop_assert_eq!(blocks.len() as u64, p.block_count());
            let mut next = u64::from(u32::from(net.network()));
            for b in &blocks {
                prop_assert_eq!(u64::from(u32::from(b.network())), next);
                prop_assert_eq!(b.prefix_len(), p.block_prefix_len());
                prop_assert_eq!(p.block_of(b.network()), Some(*b));
                prop_assert_eq!(p.block_of(b.broadcast()), Some(*b));
                next += u64::from(bs);
            }
            prop_assert_eq!(next, u64::from(u32::from(net.broadcast())) + 1);
        }

        /// An exclusion parsed from its display form is the same exclusion,
        /// and `contains` agrees with its bounds.
        #[test]
        fn exclusion_round_trip(a in any::<u32>(), span in 0u32..1000, probe in any::<u32>()) {
            let b = a.saturating_add(span);
            let ex = Exclusion::Range(Ipv4Addr::from(a), Ipv4Addr::from(b));
            let back: Exclusion = ex.to_string().parse().unwrap();
            prop_assert_eq!(back, ex);
            prop_assert_eq!(ex.contains(Ipv4Addr::from(probe)), (a..=b).contains(&probe));
        }
    }
}
