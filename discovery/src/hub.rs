//! State shared by the watchers (which fill the [`World`]), the writer
//! (which reads it when told something changed) and the status endpoint.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio::sync::Notify;

use crate::model::{CellSlices, World};

/// Where a Cell's watch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchState {
    /// Not listed yet.
    Connecting,
    /// Listed; following changes.
    Watching,
    /// The apiserver cannot be reached: its last known slices stay in use.
    Unreachable,
}

impl WatchState {
    pub fn metric(self) -> u8 {
        match self {
            Self::Connecting => 0,
            Self::Watching => 1,
            Self::Unreachable => 2,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CellStatus {
    pub state: WatchState,
    pub resource_version: String,
    pub slices: usize,
    /// Full lists (the first, and one per `410 Gone`).
    pub lists: u64,
    /// Watch streams opened (the first after each list, then one per resume).
    pub watches: u64,
    pub events: u64,
    #[serde(skip)]
    pub last_change: Option<SystemTime>,
    pub last_change_rfc3339: Option<String>,
    pub last_error: Option<String>,
}

impl Default for CellStatus {
    fn default() -> Self {
        Self {
            state: WatchState::Connecting,
            resource_version: String::new(),
            slices: 0,
            lists: 0,
            watches: 0,
            events: 0,
            last_change: None,
            last_change_rfc3339: None,
            last_error: None,
        }
    }
}

/// Histogram buckets (seconds) of the change → upstream written lag.
pub const LAG_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Debug, Default)]
pub struct Lag {
    pub buckets: [u64; LAG_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

#[derive(Debug, Default)]
pub struct Hub {
    world: Mutex<World>,
    /// When the oldest change not yet looked at by the writer arrived.
    changed_at: Mutex<Option<Instant>>,
    pub changed: Notify,
    cells: Mutex<BTreeMap<String, CellStatus>>,
    lag: Mutex<Lag>,
    pub active: AtomicBool,
    pub writes: AtomicU64,
    pub write_conflicts: AtomicU64,
    pub write_errors: AtomicU64,
    pub acks: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// Changes the world and wakes the writer.
    pub fn update(&self, f: impl FnOnce(&mut World)) {
        f(&mut lock(&self.world));
        lock(&self.changed_at).get_or_insert_with(Instant::now);
        self.changed.notify_one();
    }

    /// A copy of the world, and when the oldest change in it arrived.
    pub fn take(&self) -> (World, Option<Instant>) {
        let since = lock(&self.changed_at).take();
        (lock(&self.world).clone(), since)
    }

    /// Forgets everything (leadership lost: the next term starts afresh).
    pub fn reset(&self) {
        *lock(&self.world) = World::default();
        lock(&self.cells).clear();
    }

    /// A Cell listed in full: its slices replace what was known.
    pub fn cell_listed(&self, cell: &str, slices: CellSlices, rv: &str) {
        let n = slices.len();
        self.update(|w| {
            w.cells.insert(cell.to_string(), Some(slices));
        });
        self.cell_status(cell, |s| {
            s.state = WatchState::Watching;
            s.resource_version = rv.to_string();
            s.slices = n;
            s.lists += 1;
            s.last_error = None;
            touched(s);
        });
    }

    pub fn cell_status(&self, cell: &str, f: impl FnOnce(&mut CellStatus)) {
        f(lock(&self.cells).entry(cell.to_string()).or_default());
    }

    pub fn cells(&self) -> BTreeMap<String, CellStatus> {
        lock(&self.cells).clone()
    }

    pub fn forget_cell(&self, cell: &str) {
        lock(&self.cells).remove(cell);
        self.update(|w| {
            w.cells.remove(cell);
        });
    }

    pub fn record_lag(&self, secs: f64) {
        let mut l = lock(&self.lag);
        for (i, b) in LAG_BUCKETS.iter().enumerate() {
            if secs <= *b {
                l.buckets[i] += 1;
            }
        }
        l.count += 1;
        l.sum += secs;
    }

    pub fn with_lag<R>(&self, f: impl FnOnce(&Lag) -> R) -> R {
        f(&lock(&self.lag))
    }

    pub fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Marks a Cell's slices as changed now.
pub fn touched(s: &mut CellStatus) {
    let now = SystemTime::now();
    s.last_change = Some(now);
    s.last_change_rfc3339 = Some(chrono::DateTime::<chrono::Utc>::from(now).to_rfc3339());
}
