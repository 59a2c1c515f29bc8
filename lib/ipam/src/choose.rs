//! Address and block choice (pure).
//!
//! Reuse policy: among free addresses of a block, the one free for the
//! longest (never used counts as freed at time 0) wins, ties going to the
//! lowest address; addresses freed less than `cooldown` ago are skipped
//! unless the caller allows them (last resort). Addresses reserved for a
//! sticky pod identity are skipped while the reservation lasts.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::{Block, Pool};

/// Whether `ip` is free in `block` for a pod that is not the reservation holder.
pub fn is_free(pool: &Pool, block: &Block, ip: Ipv4Addr, now: u64) -> bool {
    pool.is_assignable(ip)
        && block.cidr.contains(&ip)
        && !block.allocations.contains_key(&ip)
        && block.reserved.get(&ip).is_none_or(|r| r.until <= now)
}

/// The best free address of `block`, or `None`. `cooldown_ok` allows
/// addresses freed less than `cooldown_secs` ago.
pub fn choose_address(
    pool: &Pool,
    block: &Block,
    now: u64,
    cooldown_secs: u64,
    cooldown_ok: bool,
) -> Option<Ipv4Addr> {
    pool.assignable_in(block.cidr)
        .filter(|ip| is_free(pool, block, *ip, now))
        .map(|ip| (block.freed_at.get(&ip).copied().unwrap_or(0), ip))
        .filter(|(freed, _)| cooldown_ok || freed.saturating_add(cooldown_secs) <= now)
        .min()
        .map(|(_, ip)| ip)
}

/// Free (unclaimed) blocks of `pool` with at least one assignable address.
pub fn free_blocks(pool: &Pool, claimed: &BTreeSet<Ipv4Net>) -> Vec<Ipv4Net> {
    pool.blocks()
        .filter(|b| !claimed.contains(b) && pool.assignable_in(*b).next().is_some())
        .collect()
}

/// Which free block `node` claims next: rendezvous hashing, i.e. the free
/// block with the highest hash of (node, block). Racing nodes land on
/// different blocks (uniformly, no clustering), while racing pods of one
/// node pick the same block even when their views of the free list differ
/// a little, so one node claims one block at a time.
pub fn pick_free_block(free: &[Ipv4Net], node: &str) -> Option<Ipv4Net> {
    free.iter().copied().max_by_key(|b| {
        let mut h = DefaultHasher::new();
        node.hash(&mut h);
        b.hash(&mut h);
        h.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Allocation, Reservation};
    use proptest::prelude::*;

    fn pool(excludes: &[&str]) -> Pool {
        let ex: Vec<String> = excludes.iter().map(|s| s.to_string()).collect();
        Pool::parse("p", "10.1.0.0/24", "10.1.0.1", 100, 16, &ex).unwrap()
    }

    fn block(cidr: &str) -> Block {
        Block {
            pool: "p".into(),
            cidr: cidr.parse().unwrap(),
            node: "n1".into(),
            claimed_at: 0,
            next_seq: 1,
            allocations: Default::default(),
            freed_at: Default::default(),
            reserved: Default::default(),
        }
    }

    fn alloc(seq: u64) -> Allocation {
        Allocation {
            seq,
            container_id: format!("c{seq}"),
            ifname: "eth0".into(),
            node: "n1".into(),
            since: 0,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn first_block_skips_network_and_gateway() {
        let p = pool(&[]);
        let b = block("10.1.0.0/28");
        assert_eq!(
            choose_address(&p, &b, 1000, 60, false),
            Some(ip("10.1.0.2"))
        );
    }

    #[test]
    fn longest_free_first_and_cooldown() {
        let p = pool(&[]);
        let mut b = block("10.1.0.16/28");
        for i in 16..32u8 {
            b.allocations
                .insert(Ipv4Addr::new(10, 1, 0, i), alloc(i.into()));
        }
        b.allocations.remove(&ip("10.1.0.20"));
        b.allocations.remove(&ip("10.1.0.25"));
        b.freed_at.insert(ip("10.1.0.20"), 900);
        b.freed_at.insert(ip("10.1.0.25"), 500);
        // .25 was freed earlier: it goes first.
        assert_eq!(
            choose_address(&p, &b, 1000, 60, false),
            Some(ip("10.1.0.25"))
        );
        // .25 freed at 980 is cooling down; .20 (freed at 900) is not.
        b.freed_at.insert(ip("10.1.0.25"), 980);
        assert_eq!(
            choose_address(&p, &b, 1000, 60, false),
            Some(ip("10.1.0.20"))
        );
        // Both cooling: only as a last resort.
        b.freed_at.insert(ip("10.1.0.20"), 990);
        assert_eq!(choose_address(&p, &b, 1000, 60, false), None);
        assert_eq!(
            choose_address(&p, &b, 1000, 60, true),
            Some(ip("10.1.0.25"))
        );
    }

    #[test]
    fn reservations_hold_until_they_expire() {
        let p = pool(&[]);
        let mut b = block("10.1.0.0/28");
        for i in 3..16u8 {
            b.allocations
                .insert(Ipv4Addr::new(10, 1, 0, i), alloc(i.into()));
        }
        let r = Reservation {
            pod: "ns/a".into(),
            until: 2000,
            app: None,
        };
        b.reserved.insert(ip("10.1.0.2"), r);
        assert_eq!(choose_address(&p, &b, 1000, 60, true), None);
        assert_eq!(choose_address(&p, &b, 2000, 60, true), Some(ip("10.1.0.2")));
    }

    #[test]
    fn excluded_addresses_never_chosen() {
        let p = pool(&["10.1.0.2-10.1.0.9", "10.1.0.12/30"]);
        let mut b = block("10.1.0.0/28");
        let mut got = Vec::new();
        while let Some(a) = choose_address(&p, &b, 0, 0, true) {
            b.allocations.insert(a, alloc(1));
            got.push(a.octets()[3]);
        }
        assert_eq!(got, vec![10, 11]);
    }

    #[test]
    fn free_blocks_skip_claimed_and_fully_excluded() {
        let p = pool(&["10.1.0.16/28"]);
        let claimed: BTreeSet<Ipv4Net> = ["10.1.0.0/28".parse().unwrap()].into();
        let free = free_blocks(&p, &claimed);
        assert_eq!(free.len(), 14);
        assert_eq!(free[0], "10.1.0.32/28".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn pick_free_block_spreads_nodes() {
        let p = pool(&[]);
        let free = free_blocks(&p, &BTreeSet::new());
        let picks: BTreeSet<_> = (0..50)
            .map(|n| pick_free_block(&free, &format!("node-{n}")).unwrap())
            .collect();
        assert!(picks.len() > 8, "50 nodes hit only {} blocks", picks.len());
        assert_eq!(pick_free_block(&[], "n"), None);
        // A node keeps its pick while other blocks come and go.
        let pick = pick_free_block(&free, "node-7").unwrap();
        let fewer: Vec<_> = free
            .iter()
            .copied()
            .filter(|b| *b == pick || b.network().octets()[3] % 32 == 0)
            .collect();
        assert_eq!(pick_free_block(&fewer, "node-7"), Some(pick));
        // Only one block left: that one.
        let last: Ipv4Net = "10.1.0.0/28".parse().unwrap();
        for n in 0..20 {
            assert_eq!(pick_free_block(&[last], &format!("n{n}")), Some(last));
        }
    }

    proptest! {
        /// Filling a block by repeated choice hands out every assignable
        /// address exactly once and nothing else.
        #[test]
        fn filling_a_block_is_exact(
            first in 2u8..15, len in 0u8..8, block_idx in 0u8..16,
        ) {
            let last = first.saturating_add(len).min(254);
            let ex = vec![format!("10.1.0.{}-10.1.0.{}", first, last)];
            let p = Pool::parse("p", "10.1.0.0/24", "10.1.0.1", 1, 16, &ex).unwrap();
            let cidr: Ipv4Net = format!("10.1.0.{}/28", block_idx * 16).parse().unwrap();
            let mut b = block(&cidr.to_string());
            let mut seen = BTreeSet::new();
            while let Some(a) = choose_address(&p, &b, 10, 5, true) {
                prop_assert!(seen.insert(a), "{} chosen twice", a);
                prop_assert!(p.is_assignable(a) && cidr.contains(&a));
                b.allocations.insert(a, alloc(1));
            }
            let expected: BTreeSet<_> = p.assignable_in(cidr).collect();
            prop_assert_eq!(seen, expected);
        }

        /// The chosen address is never younger-freed than another
        /// eligible one (longest-free-first).
        #[test]
        fn chosen_is_longest_free(freed in proptest::collection::vec(0u64..1000, 16)) {
            let p = pool(&[]);
            let mut b = block("10.1.0.16/28");
            for (i, t) in freed.iter().enumerate() {
                b.freed_at.insert(Ipv4Addr::new(10, 1, 0, 16 + u8::try_from(i).unwrap()), *t);
            }
            let now = 1000;
            if let Some(a) = choose_address(&p, &b, now, 100, false) {
                let ta = b.freed_at[&a];
                prop_assert!(ta + 100 <= now);
                for (ip, t) in &b.freed_at {
                    if t + 100 <= now && p.is_assignable(*ip) {
                        prop_assert!(ta <= *t);
                    }
                }
            } else {
                prop_assert!(b.freed_at.values().all(|t| t + 100 > now));
            }
        }
    }
}
