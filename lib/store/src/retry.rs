//! The one optimistic-retry loop: read, decide, commit under compares; when
//! a compare fails, back off a little and do it all again, up to a budget.
//!
//! The budgets are here, in one place, each sized to how many writers race
//! for the same keys where it is used:
//!
//! | budget | used by | why this many |
//! |---|---|---|
//! | [`CONTENDED`] = 100 | IPAM (assign, release, pools, blocks) | every pod starting on a node races for the same block record, and every node of a Cell for the same free blocks: at 64 concurrent allocations one writer can lose dozens of rounds in a row. A round is ~1 ms plus at most 64 ms of backoff, so the budget still ends far inside kubelet's CNI timeout |
//! | [`REQUEST`] = 16 | the core's API handlers | a handful of requests race on one user's, app's or image's record; after 16 lost rounds the client is better served by a 409 "retry" than by a slow answer |
//! | [`BACKGROUND`] = 5 | build dispatch and re-dispatch | one other writer at most (the build agent updating its run, a builder leaving); the caller repeats anyway (a new request, the next sweep) |

use std::future::Future;
use std::time::Duration;

pub const CONTENDED: u32 = 100;
pub const REQUEST: u32 = 16;
pub const BACKGROUND: u32 = 5;

/// Longest pause between two attempts.
const MAX_BACKOFF_MS: u64 = 64;

/// The outcome of [`optimistic`]: a result, or every attempt lost its race.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retried<T> {
    Done(T),
    Exhausted { attempts: u32 },
}

impl<T> Retried<T> {
    /// The result, or the caller's error for an exhausted budget.
    pub fn ok_or_else<E>(self, exhausted: impl FnOnce(u32) -> E) -> Result<T, E> {
        match self {
            Retried::Done(t) => Ok(t),
            Retried::Exhausted { attempts } => Err(exhausted(attempts)),
        }
    }
}

/// Runs `attempt` until it answers `Some` (done) or an error, at most
/// `budget` times. `Ok(None)` from an attempt means a compare failed: it is
/// retried after a random pause of up to 1, 2, 4 … 64 ms ("full jitter", so
/// that the writers who collided do not collide again in step).
pub async fn optimistic<T, E, F, Fut>(budget: u32, mut attempt: F) -> Result<Retried<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    for n in 0..budget {
        if let Some(t) = attempt().await? {
            return Ok(Retried::Done(t));
        }
        if n + 1 < budget {
            backoff(n).await;
        }
    }
    Ok(Retried::Exhausted { attempts: budget })
}

/// The pause after the `n`th lost attempt (0-based).
pub async fn backoff(n: u32) {
    tokio::time::sleep(pause(n, rand::random::<f64>())).await;
}

/// `unit` in [0, 1) picks the pause within the attempt's window.
fn pause(n: u32, unit: f64) -> Duration {
    let window = (1u64 << n.min(6)).min(MAX_BACKOFF_MS);
    Duration::from_micros((window as f64 * 1000.0 * unit) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn pauses_grow_then_cap() {
        assert_eq!(pause(0, 0.999), Duration::from_micros(999));
        assert_eq!(pause(3, 0.5), Duration::from_millis(4));
        assert_eq!(pause(6, 0.5), Duration::from_millis(32));
        assert_eq!(pause(60, 0.5), Duration::from_millis(32));
        assert_eq!(pause(9, 0.0), Duration::ZERO);
    }

    #[tokio::test]
    async fn retries_conflicts_until_done() {
        let calls = AtomicU32::new(0);
        let r: Result<_, ()> = optimistic(10, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Ok((n == 2).then_some(n))
        })
        .await;
        assert_eq!(r, Ok(Retried::Done(2)));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn stops_at_the_budget() {
        let calls = AtomicU32::new(0);
        let r: Result<Retried<()>, ()> = optimistic(3, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        })
        .await;
        assert_eq!(r, Ok(Retried::Exhausted { attempts: 3 }));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            r.unwrap().ok_or_else(|n| format!("gave up after {n}")),
            Err("gave up after 3".to_string())
        );
    }

    #[tokio::test]
    async fn an_error_ends_at_once() {
        let calls = AtomicU32::new(0);
        let r: Result<Retried<()>, &str> = optimistic(5, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err("etcd down")
        })
        .await;
        assert_eq!(r, Err("etcd down"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
