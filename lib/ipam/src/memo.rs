//! What one node's assignments last read and wrote, kept between them by a
//! caller that makes that node's assignments one at a time (the node-agent's
//! CNI service, under its per-node turn).
//!
//! An assignment normally costs two round trips: one read of everything it
//! decides on, one guarded commit. With a memo, the common case — a pod with
//! no sticky or reserved address, a free address in one of the node's own
//! blocks — is decided on the memo and committed in one. The decision is
//! only as good as the memo, so the commit carries compares for every fact
//! the memo supplied that the commit would not otherwise check:
//!
//! 1. the chosen block is as the memo has it (its `mod_revision`);
//! 2. no pool and no app binding changed since the memo's read (`revision`);
//! 3. the pod has no sticky address and its namespace no reserve.
//!
//! When any of them fails, nothing is written, the memo is dropped, and the
//! assignment takes the ordinary path, whose read refills the memo. So a
//! memo can be stale, never wrong: it makes an assignment cheaper, it cannot
//! make it different from what the ordinary path would do for the first
//! eligible pool (later pools, new blocks and cooling addresses are the
//! ordinary path's to choose).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use leengine_store::record::Rec;

use crate::apps::AppBinding;
use crate::choose::choose_address;
use crate::model::{Block, Pool};

/// Kept by the caller between assignments of one node; start with
/// `Memo::default()`. Only sound when the caller never runs two
/// assignments with one memo at once (it is taken by `&mut`).
#[derive(Debug, Default)]
pub struct Memo {
    pub(crate) seen: Option<Seen>,
    /// Namespaces whose app reserve was found non-empty: their pods take
    /// the ordinary path, which reads the reserve.
    pub(crate) reserving: BTreeSet<String>,
}

/// The shared part of an assignment's read, at `revision`, with this
/// node's blocks as they stand after the commits made since.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub revision: i64,
    pub pools: Vec<Rec<Pool>>,
    pub bindings: Vec<AppBinding>,
    pub own: Vec<Rec<Block>>,
}

/// What an ordinary-path assignment teaches the memo.
#[derive(Debug, Default)]
pub(crate) struct Learned {
    pub seen: Option<Seen>,
    /// The node block the commit wrote (allocated in or claimed), at the
    /// commit's revision.
    pub wrote: Option<Rec<Block>>,
    /// The pod's namespace, and whether its app reserve held anything.
    pub reserve: Option<(String, bool)>,
}

impl Seen {
    /// Replaces (or adds, for a block just claimed) one of the node's blocks.
    pub fn put(&mut self, block: Rec<Block>) {
        match self.own.iter_mut().find(|b| b.key == block.key) {
            Some(b) => *b = block,
            None => self.own.push(block),
        }
    }

    /// The address the ordinary path's first choice would give in `pool`:
    /// the best address of the node's own blocks, in CIDR order, that is
    /// free and not cooling down.
    pub fn pick<'a>(
        &'a self,
        pool: &Pool,
        now: u64,
        cooldown_secs: u64,
    ) -> Option<(&'a Rec<Block>, Ipv4Addr)> {
        let mut mine: Vec<&Rec<Block>> = self
            .own
            .iter()
            .filter(|b| b.value.pool == pool.name)
            .collect();
        mine.sort_by_key(|b| b.value.cidr);
        mine.into_iter().find_map(|b| {
            Some((
                b,
                choose_address(pool, &b.value, now, cooldown_secs, false)?,
            ))
        })
    }
}

impl Memo {
    pub(crate) fn learn(&mut self, learned: Learned) {
        if let Some((ns, holds)) = learned.reserve {
            if holds {
                self.reserving.insert(ns);
            } else {
                self.reserving.remove(&ns);
            }
        }
        let Some(mut seen) = learned.seen else {
            return;
        };
        if let Some(b) = learned.wrote {
            seen.put(b);
        }
        self.seen = Some(seen);
    }

    pub(crate) fn forget(&mut self) {
        self.seen = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Allocation;

    fn pool() -> Pool {
        Pool::parse("p1", "10.1.0.0/24", "10.1.0.1", 100, 16, &[]).unwrap()
    }

    fn block(cidr: &str, taken: &[&str], freed: &[(&str, u64)]) -> Rec<Block> {
        let cidr: ipnet::Ipv4Net = cidr.parse().unwrap();
        let mut b = Block {
            pool: "p1".into(),
            cidr,
            node: "n1".into(),
            claimed_at: 0,
            next_seq: 1,
            allocations: Default::default(),
            freed_at: Default::default(),
            reserved: Default::default(),
        };
        for ip in taken {
            b.allocations.insert(
                ip.parse().unwrap(),
                Allocation {
                    seq: 1,
                    container_id: "c".into(),
                    ifname: "eth0".into(),
                    node: "n1".into(),
                    since: 0,
                },
            );
        }
        for (ip, at) in freed {
            b.freed_at.insert(ip.parse().unwrap(), *at);
        }
        Rec {
            key: format!("/blocks/{cidr}"),
            value: b,
            mod_revision: 7,
        }
    }

    fn seen(own: Vec<Rec<Block>>) -> Seen {
        Seen {
            revision: 5,
            pools: Vec::new(),
            bindings: Vec::new(),
            own,
        }
    }

    fn every(from: u8, to: u8) -> Vec<String> {
        (from..=to).map(|i| format!("10.1.0.{i}")).collect()
    }

    #[test]
    fn the_pick_is_the_lowest_block_with_a_free_address_that_is_not_cooling() {
        let full: Vec<String> = every(2, 15);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let s = seen(vec![
            block("10.1.0.32/28", &[], &[]),
            block("10.1.0.0/28", &full, &[]),
        ]);
        let (b, ip) = s.pick(&pool(), 1000, 60).unwrap();
        assert_eq!(b.value.cidr.to_string(), "10.1.0.32/28");
        assert_eq!(ip, "10.1.0.32".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn only_cooling_addresses_left_is_no_pick_the_ordinary_path_claims_a_block_first() {
        let taken: Vec<String> = every(2, 14);
        let taken: Vec<&str> = taken.iter().map(String::as_str).collect();
        let s = seen(vec![block("10.1.0.0/28", &taken, &[("10.1.0.15", 990)])]);
        assert!(s.pick(&pool(), 1000, 60).is_none());
        // Once cooled, the address is the pick.
        assert!(s.pick(&pool(), 1051, 60).is_some());
    }

    #[test]
    fn blocks_of_other_pools_are_never_picked() {
        let mut b = block("10.1.0.0/28", &[], &[]);
        b.value.pool = "other".into();
        assert!(seen(vec![b]).pick(&pool(), 1000, 60).is_none());
    }

    #[test]
    fn learning_a_write_replaces_that_block_and_adds_a_claimed_one() {
        let mut m = Memo::default();
        let mut wrote = block("10.1.0.0/28", &["10.1.0.2"], &[]);
        wrote.mod_revision = 9;
        m.learn(Learned {
            seen: Some(seen(vec![block("10.1.0.0/28", &[], &[])])),
            wrote: Some(wrote.clone()),
            reserve: None,
        });
        let s = m.seen.as_ref().unwrap();
        assert_eq!(s.own, vec![wrote]);
        let mut s = s.clone();
        s.put(block("10.1.0.16/28", &[], &[]));
        assert_eq!(s.own.len(), 2);
    }

    #[test]
    fn a_namespace_seen_with_a_reserve_is_remembered_until_seen_without() {
        let mut m = Memo::default();
        let reserve = |holds| Learned {
            reserve: Some(("shop".into(), holds)),
            ..Learned::default()
        };
        m.learn(reserve(true));
        assert!(m.reserving.contains("shop"));
        m.learn(reserve(false));
        assert!(m.reserving.is_empty());
    }

    #[test]
    fn learning_without_a_read_keeps_what_the_memo_had() {
        // A replayed ADD finds its handle and reads nothing else.
        let mut m = Memo::default();
        m.learn(Learned {
            seen: Some(seen(Vec::new())),
            ..Learned::default()
        });
        m.learn(Learned::default());
        assert!(m.seen.is_some());
        m.forget();
        assert!(m.seen.is_none());
    }
}
