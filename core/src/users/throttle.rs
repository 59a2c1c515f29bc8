//! Throttling of password checks.
//!
//! Every password check costs one argon2id hash (tens of ms of CPU), so
//! login, Basic auth with a password and `/v2/token` with a password are
//! limited three ways:
//! - per client (peer IP, IPv6 by /64): every check takes one unit of the
//!   client's bucket, so one client cannot burn the CPU;
//! - per user name: every check reserves one unit of the name's bucket and a
//!   success gives it back, so only failures count: guessing one account's
//!   password is slow from any number of clients;
//! - at most `hash_concurrency` hashes run at once (the rest wait), so the
//!   async threads and the other requests keep running.
//!
//! Access tokens are checked with one SHA-256 (256-bit secrets cannot be
//! guessed) and are not throttled: a user whose password is being attacked
//! keeps working with tokens, and the registry's hot path stays fast.
//!
//! The buckets are pure ([`Buckets`] takes the time as an argument) and live
//! in the memory of each replica: with N replicas behind a balancer, a
//! client gets up to N times the rate.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::problem::ApiError;

/// Operator limits (flags of `leengine-core`, see docs/core-api.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Password checks a client may make at once before it is slowed down.
    pub client_burst: u32,
    /// Password checks a client regains per minute; 0: clients are not limited.
    pub client_per_minute: u32,
    /// Failed password checks one user name may take at once.
    pub user_burst: u32,
    /// Failed checks a user name regains per minute; 0: names are not limited.
    pub user_per_minute: u32,
    /// Password hashes computed at the same time.
    pub hash_concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            client_burst: 30,
            client_per_minute: 60,
            user_burst: 10,
            user_per_minute: 6,
            hash_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// One kind of bucket: `burst` units, refilled at `per_minute`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub burst: u32,
    pub per_minute: u32,
}

impl Rule {
    fn enabled(&self) -> bool {
        self.per_minute > 0
    }

    fn per_sec(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    units: f64,
    at: Instant,
}

/// Buckets above this many keys are pruned of the full ones (a full bucket
/// is the same as no bucket).
const PRUNE_ABOVE: usize = 1 << 16;

/// Token buckets per key; the clock is passed in.
#[derive(Debug)]
pub struct Buckets<K> {
    rule: Rule,
    map: HashMap<K, Bucket>,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    pub fn new(rule: Rule) -> Self {
        Self {
            rule,
            map: HashMap::new(),
        }
    }

    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(b.at).as_secs_f64() * self.rule.per_sec();
        (b.units + gained).min(f64::from(self.rule.burst))
    }

    /// Takes one unit of `key`'s bucket, or says how long until one is there.
    pub fn take(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if !self.rule.enabled() {
            return Ok(());
        }
        let burst = f64::from(self.rule.burst);
        let units = self.map.get(key).map_or(burst, |b| self.level(b, now));
        if units < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - units) / self.rule.per_sec()));
        }
        if self.map.len() >= PRUNE_ABOVE && !self.map.contains_key(key) {
            let map = std::mem::take(&mut self.map);
            self.map = map
                .into_iter()
                .filter(|(_, b)| self.level(b, now) < burst)
                .collect();
        }
        self.map.insert(
            key.clone(),
            Bucket {
                units: units - 1.0,
                at: now,
            },
        );
        Ok(())
    }

    /// Gives back a unit taken by [`Buckets::take`].
    pub fn give_back(&mut self, key: &K, now: Instant) {
        let Some(b) = self.map.get(key).copied() else {
            return;
        };
        let units = (self.level(&b, now) + 1.0).min(f64::from(self.rule.burst));
        self.map.insert(key.clone(), Bucket { units, at: now });
    }
}

/// The key of a client: its address, IPv6 clients by their /64 (one host
/// usually holds a whole /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The limits of one replica, shared by every request.
#[derive(Debug)]
pub struct Throttle {
    clients: Mutex<Buckets<IpAddr>>,
    users: Mutex<Buckets<String>>,
    hashing: Semaphore,
}

/// A password check that was let through; report how it went with
/// [`Throttle::settle`].
#[must_use]
#[derive(Debug)]
pub struct Admission {
    user: String,
}

impl Throttle {
    pub fn new(limits: Limits) -> Self {
        Self {
            clients: Mutex::new(Buckets::new(Rule {
                burst: limits.client_burst,
                per_minute: limits.client_per_minute,
            })),
            users: Mutex::new(Buckets::new(Rule {
                burst: limits.user_burst,
                per_minute: limits.user_per_minute,
            })),
            hashing: Semaphore::new(limits.hash_concurrency.max(1)),
        }
    }

    /// Lets a password check for `user` from `client` through, or answers
    /// 429 with the time to wait. `client` is `None` when the request did
    /// not come over a socket (in-process calls).
    pub fn admit(&self, client: Option<IpAddr>, user: &str) -> Result<Admission, ApiError> {
        self.admit_at(client, user, Instant::now())
    }

    fn admit_at(
        &self,
        client: Option<IpAddr>,
        user: &str,
        now: Instant,
    ) -> Result<Admission, ApiError> {
        let user = user.to_string();
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(wait) = users.take(&user, now) {
            return Err(ApiError::too_many(
                "too many failed password checks for this user; use an access token or retry later",
                seconds(wait),
            ));
        }
        if let Some(ip) = client {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(wait) = clients.take(&client_key(ip), now) {
                users.give_back(&user, now);
                return Err(ApiError::too_many(
                    "too many password checks from this client; retry later",
                    seconds(wait),
                ));
            }
        }
        Ok(Admission { user })
    }

    /// A successful check gives the user's unit back: only failures count.
    pub fn settle(&self, admission: Admission, ok: bool) {
        if ok {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            users.give_back(&admission.user, Instant::now());
        }
    }

    /// Waits for a hashing slot; hold it while argon2 runs.
    pub async fn hashing(&self) -> Result<SemaphorePermit<'_>, ApiError> {
        self.hashing
            .acquire()
            .await
            .map_err(|_| ApiError::internal("hashing slots closed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt as _;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Buckets::new(Rule {
            burst: 3,
            per_minute: 6,
        });
        let k = "k".to_string();
        for _ in 0..3 {
            b.take(&k, t0).unwrap();
        }
        // Empty: one unit comes back every 10 s.
        assert_eq!(b.take(&k, t0), Err(10 * SEC));
        assert_eq!(b.take(&k, t0 + 4 * SEC), Err(6 * SEC));
        b.take(&k, t0 + 10 * SEC).unwrap();
        assert_eq!(b.take(&k, t0 + 10 * SEC), Err(10 * SEC));
        // Refilling stops at the burst.
        let later = t0 + 3600 * SEC;
        for _ in 0..3 {
            b.take(&k, later).unwrap();
        }
        assert!(b.take(&k, later).is_err());
        // Other keys have their own bucket.
        b.take(&"other".to_string(), t0).unwrap();
    }

    #[test]
    fn give_back_and_disabled_rules() {
        let t0 = Instant::now();
        let mut b = Buckets::new(Rule {
            burst: 1,
            per_minute: 1,
        });
        let k = 1u8;
        b.take(&k, t0).unwrap();
        b.give_back(&k, t0);
        b.take(&k, t0).unwrap();
        assert!(b.take(&k, t0).is_err());
        b.give_back(&k, t0);
        b.give_back(&k, t0);
        b.take(&k, t0).unwrap();
        assert!(b.take(&k, t0).is_err(), "give_back stops at the burst");

        let mut off = Buckets::new(Rule {
            burst: 0,
            per_minute: 0,
        });
        for _ in 0..100 {
            off.take(&k, t0).unwrap();
        }
    }

    #[test]
    fn pruning_keeps_partly_used_buckets() {
        let t0 = Instant::now();
        let mut b = Buckets::new(Rule {
            burst: 2,
            per_minute: 60,
        });
        for i in 0..u32::try_from(PRUNE_ABOVE).unwrap() {
            b.take(&i, t0).unwrap();
        }
        b.take(&0, t0).unwrap(); // key 0 is now empty
                                 // A second later the others are full again and go; key 0 is not.
        let t1 = t0 + SEC;
        b.take(&u32::MAX, t1).unwrap();
        assert_eq!(b.map.len(), 2);
        b.take(&0, t1).unwrap();
        assert!(b.take(&0, t1).is_err());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    fn limits() -> Limits {
        Limits {
            client_burst: 4,
            client_per_minute: 60,
            user_burst: 2,
            user_per_minute: 6,
            hash_concurrency: 1,
        }
    }

    #[test]
    fn only_failures_count_against_a_user() {
        let t = Throttle::new(limits());
        let t0 = Instant::now();
        for _ in 0..3 {
            let a = t.admit_at(None, "alice", t0).unwrap();
            t.settle(a, true);
        }
        for _ in 0..2 {
            let a = t.admit_at(None, "alice", t0).unwrap();
            t.settle(a, false);
        }
        let e = t.admit_at(None, "alice", t0).err().unwrap();
        assert_eq!((e.status.as_u16(), e.retry_after), (429, Some(10)));
        // The right password does not help now; another name is unaffected.
        assert!(t.admit_at(None, "alice", t0 + 9 * SEC).is_err());
        let a = t.admit_at(None, "alice", t0 + 10 * SEC).unwrap();
        t.settle(a, true);
        let a = t.admit_at(None, "bob", t0).unwrap();
        t.settle(a, false);
    }

    #[test]
    fn every_check_counts_against_a_client() {
        let t = Throttle::new(limits());
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..4 {
            let a = t.admit_at(Some(ip), &format!("u{i}"), t0).unwrap();
            t.settle(a, true);
        }
        let e = t.admit_at(Some(ip), "u9", t0).err().unwrap();
        assert_eq!((e.status.as_u16(), e.retry_after), (429, Some(1)));
        // Refused by the client bucket: the user's unit is not lost.
        for _ in 0..2 {
            let a = t.admit_at(None, "u9", t0).unwrap();
            t.settle(a, false);
        }
        assert!(t.admit_at(None, "u9", t0).is_err());
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let a = t.admit_at(Some(other), "u1", t0).unwrap();
        t.settle(a, true);
        let a = t.admit_at(Some(ip), "u1", t0 + SEC).unwrap();
        t.settle(a, true);
    }

    #[tokio::test]
    async fn hashing_slots_bound_concurrency() {
        let t = Throttle::new(limits());
        let held = t.hashing().await.unwrap();
        assert!(t.hashing().now_or_never().is_none(), "second hash waits");
        drop(held);
        assert!(t.hashing().now_or_never().is_some());
    }
}
