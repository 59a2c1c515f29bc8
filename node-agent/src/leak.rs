//! When a dead attachment may be reclaimed (pure).
//!
//! An allocation is released only when all of these hold:
//! * the latest scan saw it dead (netns gone, or interface/IP missing in it),
//!   and so did the scan before, with no failed or inconclusive scan between;
//! * the agent first saw it dead at least `grace` ago (by its own clock);
//! * the allocation itself is older than `grace` (by the record's wall clock),
//!   so a CNI ADD still in progress is never touched.
//!
//! Anything inconclusive (netlink error on this attachment, a scan that
//! could not list allocations) breaks the streak: "cannot tell" never counts
//! as dead. Suspects are keyed by (container id, ifname, sequence number), so
//! an address re-assigned to a new attachment starts from zero.

use std::collections::HashMap;
use std::time::Duration;

use leengine_ipam::Attachment;

/// What one scan found for one attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    Alive,
    Dead,
    /// The check itself failed (netlink error, permission...).
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    container_id: String,
    ifname: String,
    seq: u64,
}

impl Key {
    fn of(a: &Attachment) -> Self {
        Self {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            seq: a.seq,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Suspect {
    /// Agent clock (ms) when first seen dead.
    first_dead_ms: u64,
    /// Consecutive conclusive dead observations.
    streak: u32,
}

/// A suspect as reported on the control endpoint and in logs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SuspectView {
    pub container_id: String,
    pub ifname: String,
    pub seq: u64,
    pub dead_for_ms: u64,
    pub streak: u32,
}

#[derive(Debug)]
pub struct LeakTracker {
    grace: Duration,
    suspects: HashMap<Key, Suspect>,
}

/// Dead observations needed in a row.
const STREAK: u32 = 2;

impl LeakTracker {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            suspects: HashMap::new(),
        }
    }

    /// Feeds one complete scan (every allocation of the node with its
    /// observation). Returns the attachments that may be released now.
    /// `now_ms` is a monotonic agent clock; `wall_now_secs` is unix time.
    pub fn observe(
        &mut self,
        now_ms: u64,
        wall_now_secs: u64,
        scan: &[(Attachment, Observation)],
    ) -> Vec<Attachment> {
        let listed: std::collections::HashSet<Key> = scan.iter().map(|(a, _)| Key::of(a)).collect();
        self.suspects.retain(|k, _| listed.contains(k));
        let grace_ms = u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX);
        let mut release = Vec::new();
        for (a, obs) in scan {
            let key = Key::of(a);
            match obs {
                Observation::Alive => {
                    self.suspects.remove(&key);
                }
                Observation::Unknown => {
                    if let Some(s) = self.suspects.get_mut(&key) {
                        s.streak = 0;
                    }
                }
                Observation::Dead => {
                    let s = self.suspects.entry(key).or_insert(Suspect {
                        first_dead_ms: now_ms,
                        streak: 0,
                    });
                    s.streak += 1;
                    let dead_long_enough = now_ms.saturating_sub(s.first_dead_ms) >= grace_ms;
                    let old_enough = wall_now_secs.saturating_sub(a.since) >= self.grace.as_secs();
                    if s.streak >= STREAK && dead_long_enough && old_enough {
                        release.push(a.clone());
                    }
                }
            }
        }
        release
    }

    /// A scan failed as a whole (etcd or netlink unavailable): every streak
    /// starts over, so a decision always rests on two scans in a row.
    pub fn scan_failed(&mut self) {
        for s in self.suspects.values_mut() {
            s.streak = 0;
        }
    }

    /// Forgets a suspect after its release was done or refused as stale.
    pub fn forget(&mut self, a: &Attachment) {
        self.suspects.remove(&Key::of(a));
    }

    pub fn suspects(&self, now_ms: u64) -> Vec<SuspectView> {
        let mut v: Vec<SuspectView> = self
            .suspects
            .iter()
            .map(|(k, s)| SuspectView {
                container_id: k.container_id.clone(),
                ifname: k.ifname.clone(),
                seq: k.seq,
                dead_for_ms: now_ms.saturating_sub(s.first_dead_ms),
                streak: s.streak,
            })
            .collect();
        v.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn att(cid: &str, seq: u64, since: u64) -> Attachment {
        Attachment {
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{cid}"),
            pod_namespace: Some("app".into()),
            pod_name: Some(cid.into()),
            node: "n1".into(),
            network: None,
            ip: Ipv4Addr::new(10, 0, 0, 2),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            vlan: leengine_ipam::Vlan::new(100).unwrap(),
            pool: "p".into(),
            block: "10.0.0.0/28".parse().unwrap(),
            seq,
            since,
        }
    }

    const GRACE: Duration = Duration::from_secs(60);
    const WALL: u64 = 1_000_000;

    #[test]
    fn released_only_after_grace_and_two_dead_scans() {
        let mut t = LeakTracker::new(GRACE);
        let a = att("c1", 7, 0);
        let scan = [(a.clone(), Observation::Dead)];
        assert!(t.observe(0, WALL, &scan).is_empty(), "first sighting");
        assert!(t.observe(30_000, WALL, &scan).is_empty(), "inside grace");
        assert!(t.observe(59_999, WALL, &scan).is_empty(), "1 ms short");
        assert_eq!(t.observe(60_000, WALL, &scan), vec![a]);
    }

    #[test]
    fn one_scan_after_a_long_gap_is_not_enough() {
        let mut t = LeakTracker::new(GRACE);
        let a = att("c1", 7, 0);
        assert!(t
            .observe(0, WALL, &[(a.clone(), Observation::Dead)])
            .is_empty());
        t.scan_failed();
        // Grace long over, but the streak was broken by the failed scan.
        assert!(t
            .observe(600_000, WALL, &[(a.clone(), Observation::Dead)])
            .is_empty());
        assert_eq!(t.observe(610_000, WALL, &[(a, Observation::Dead)]).len(), 1);
    }

    #[test]
    fn unknown_breaks_the_streak_and_alive_clears() {
        let mut t = LeakTracker::new(GRACE);
        let a = att("c1", 7, 0);
        t.observe(0, WALL, &[(a.clone(), Observation::Dead)]);
        t.observe(70_000, WALL, &[(a.clone(), Observation::Unknown)]);
        assert!(t
            .observe(80_000, WALL, &[(a.clone(), Observation::Dead)])
            .is_empty());
        t.observe(90_000, WALL, &[(a.clone(), Observation::Alive)]);
        assert!(t.suspects(90_000).is_empty());
        // Dead again: the grace period starts over.
        assert!(t
            .observe(100_000, WALL, &[(a.clone(), Observation::Dead)])
            .is_empty());
        assert!(t
            .observe(110_000, WALL, &[(a.clone(), Observation::Dead)])
            .is_empty());
        assert_eq!(t.observe(160_000, WALL, &[(a, Observation::Dead)]).len(), 1);
    }

    #[test]
    fn young_allocations_are_kept_even_if_seen_dead_long() {
        let mut t = LeakTracker::new(GRACE);
        let a = att("c1", 7, WALL - 10);
        t.observe(0, WALL, &[(a.clone(), Observation::Dead)]);
        assert!(t
            .observe(120_000, WALL, &[(a.clone(), Observation::Dead)])
            .is_empty());
        assert_eq!(
            t.observe(130_000, WALL + 60, &[(a, Observation::Dead)])
                .len(),
            1
        );
    }

    #[test]
    fn a_reassigned_address_starts_from_zero() {
        let mut t = LeakTracker::new(GRACE);
        t.observe(0, WALL, &[(att("c1", 7, 0), Observation::Dead)]);
        // Same container/ifname but a new allocation (new seq).
        let fresh = att("c1", 8, 0);
        assert!(t
            .observe(100_000, WALL, &[(fresh.clone(), Observation::Dead)])
            .is_empty());
        assert_eq!(
            t.suspects(100_000).len(),
            1,
            "old suspect dropped when unlisted"
        );
        assert!(t
            .observe(110_000, WALL, &[(fresh, Observation::Dead)])
            .is_empty());
    }

    #[test]
    fn forget_and_views() {
        let mut t = LeakTracker::new(GRACE);
        let a = att("c1", 7, 0);
        t.observe(5, WALL, &[(a.clone(), Observation::Dead)]);
        let v = t.suspects(1005);
        assert_eq!(v[0].dead_for_ms, 1000);
        assert_eq!(v[0].streak, 1);
        t.forget(&a);
        assert!(t.suspects(2000).is_empty());
    }
}
