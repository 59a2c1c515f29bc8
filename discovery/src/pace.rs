//! When a domain's upstream may be written: at once if the last write was
//! at least `min_interval` ago (an isolated change costs no delay), else at
//! `last + min_interval` with whatever the state is then (a burst becomes
//! one write per interval, and the last state wins). Clocks are passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Pacer<K> {
    min_interval: Duration,
    last: HashMap<K, Instant>,
}

impl<K: Hash + Eq> Pacer<K> {
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last: HashMap::new(),
        }
    }

    /// The earliest instant `key` may be written.
    pub fn due(&self, key: &K, now: Instant) -> Instant {
        self.last
            .get(key)
            .map_or(now, |l| (*l + self.min_interval).max(now))
    }

    pub fn wrote(&mut self, key: K, now: Instant) {
        self.last.insert(key, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_isolated_change_is_written_at_once() {
        let p: Pacer<&str> = Pacer::new(Duration::from_millis(100));
        let now = Instant::now();
        assert_eq!(p.due(&"a", now), now);
    }

    #[test]
    fn a_burst_waits_for_the_interval_and_other_keys_do_not() {
        let mut p = Pacer::new(Duration::from_millis(100));
        let t0 = Instant::now();
        p.wrote("a", t0);
        let t1 = t0 + Duration::from_millis(30);
        assert_eq!(p.due(&"a", t1), t0 + Duration::from_millis(100));
        assert_eq!(p.due(&"b", t1), t1);
        let t2 = t0 + Duration::from_millis(250);
        assert_eq!(p.due(&"a", t2), t2);
    }

    #[test]
    fn fifty_changes_in_a_second_make_at_most_eleven_writes() {
        let mut p = Pacer::new(Duration::from_millis(100));
        let t0 = Instant::now();
        let mut writes = 0;
        let mut pending = false;
        for i in 0..=1000u64 {
            let now = t0 + Duration::from_millis(i);
            if i % 20 == 0 && i < 1000 {
                pending = true;
            }
            if pending && p.due(&"a", now) <= now {
                p.wrote("a", now);
                writes += 1;
                pending = false;
            }
        }
        assert!(!pending, "the last state was written");
        assert!(writes <= 11, "{writes} writes");
    }
}
