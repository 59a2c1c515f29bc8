//! The shared etcd mechanisms against a real (TLS, authenticated) etcd.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Event, EventType};
use leengine_store::follow::{follow, Follow, Follower, Snapshot};
use leengine_store::lease::{campaign, LeasedRecord, Registration, Source};
use leengine_store::record::{self, Commit, ReadError};
use leengine_store::retry::{self, Retried};
use leengine_testenv as te;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Counter {
    n: u32,
}

async fn lease_of(c: &Client, key: &str) -> Option<i64> {
    let resp = c.kv_client().get(key, None).await.expect("get");
    resp.kvs().first().map(|kv| kv.lease())
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn commits_say_applied_or_conflict_and_unchanged_means_one_thing() {
    let etcd = te::Etcd::start();
    let c = etcd.root_client().await;
    let key = "/leengine/test/counter";
    let first = record::commit(
        &c,
        vec![record::unchanged(key, None)],
        vec![record::put(key, &Counter { n: 1 })],
    )
    .await
    .unwrap();
    let Commit::Applied { revision } = first else {
        panic!("an absent key is unchanged-as-absent: {first:?}")
    };
    // Absent no more: the same compare now fails and writes nothing.
    let again = record::commit(
        &c,
        vec![record::unchanged(key, None)],
        vec![record::put(key, &Counter { n: 99 })],
    )
    .await
    .unwrap();
    assert_eq!(again, Commit::Conflict);

    let rec = record::get_json::<Counter>(&c, key).await.unwrap().unwrap();
    assert_eq!(rec.value, Counter { n: 1 });
    assert_eq!(rec.mod_revision, revision);
    assert_eq!(rec.key, key);
    let next = record::commit(
        &c,
        vec![rec.unchanged()],
        vec![record::put(key, &Counter { n: 2 })],
    )
    .await
    .unwrap();
    assert!(next.revision().unwrap() > revision);
    // The record read before that write is stale now.
    let stale = record::commit(&c, vec![rec.unchanged()], vec![record::delete(key)])
        .await
        .unwrap();
    assert_eq!(stale, Commit::Conflict);

    // An else-read tells why in the same round trip.
    let why = record::commit_else(
        &c,
        vec![record::absent(key)],
        vec![record::delete(key)],
        vec![record::get(key)],
    )
    .await
    .unwrap()
    .expect_err("the key exists");
    let held = record::decode_one::<Counter>(&why[0]).unwrap().unwrap();
    assert_eq!(held.value, Counter { n: 2 });

    c.kv_client()
        .put("/leengine/test/bad", "{nope", None)
        .await
        .unwrap();
    match record::get_json::<Counter>(&c, "/leengine/test/bad").await {
        Err(ReadError::Corrupt(e)) => {
            assert_eq!(e.key, "/leengine/test/bad");
            assert!(
                e.to_string()
                    .starts_with("record /leengine/test/bad is corrupt: "),
                "{e}"
            );
        }
        other => panic!("a corrupt record is named: {other:?}"),
    }
    let (all, _) = record::scan_json::<Counter>(&c, "/leengine/test/counter", 0)
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn racing_writers_all_land_through_the_retry_helper() {
    let etcd = te::Etcd::start();
    let c = etcd.root_client().await;
    let key = "/leengine/test/race";
    let lost_rounds = Arc::new(AtomicU32::new(0));
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let (c, lost_rounds) = (c.clone(), lost_rounds.clone());
            tokio::spawn(async move {
                let c = &c;
                let lost_rounds = &lost_rounds;
                retry::optimistic(retry::CONTENDED, move || async move {
                    let cur = record::get_json::<Counter>(c, key).await.unwrap();
                    let n = cur.as_ref().map_or(0, |r| r.value.n);
                    let guard = record::unchanged(key, cur.map(|r| r.mod_revision));
                    let done = record::commit(
                        c,
                        vec![guard],
                        vec![record::put(key, &Counter { n: n + 1 })],
                    )
                    .await?
                    .revision();
                    if done.is_none() {
                        lost_rounds.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok::<_, etcd_client::Error>(done)
                })
                .await
            })
        })
        .collect();
    for w in writers {
        assert!(matches!(w.await.unwrap().unwrap(), Retried::Done(_)));
    }
    let end = record::get_json::<Counter>(&c, key).await.unwrap().unwrap();
    assert_eq!(end.value.n, 16, "no increment lost");
    // Not asserted (it depends on scheduling), but shown when the test is run with --nocapture.
    println!("lost rounds: {}", lost_rounds.load(Ordering::SeqCst));
}

/// A registration source whose value and changes the test drives.
struct Driven {
    value: Arc<std::sync::Mutex<String>>,
    changes: mpsc::UnboundedReceiver<()>,
}

impl Source for Driven {
    async fn value(&mut self) -> Vec<u8> {
        self.value.lock().unwrap().clone().into_bytes()
    }

    async fn changed(&mut self) {
        if self.changes.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

#[tokio::test]
async fn a_registration_survives_a_lost_lease_and_is_revoked_on_stop() {
    let etcd = te::Etcd::start();
    let c = etcd.root_client().await;
    let key = "/leengine/test/agents/a1";
    let value = Arc::new(std::sync::Mutex::new("v1".to_string()));
    let (change, changes) = mpsc::unbounded_channel();
    let mut reg = Registration::new(
        c.clone(),
        key.to_string(),
        Duration::from_secs(3),
        Driven {
            value: value.clone(),
            changes,
        },
    );
    let first = reg.register().await.unwrap();
    let lease1 = first.lease().id();
    assert_eq!(lease_of(&c, key).await, Some(lease1));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let run = tokio::spawn(reg.run(Some(first), async {
        let _ = stop_rx.await;
    }));

    // A change is written under the same lease.
    *value.lock().unwrap() = "v2".into();
    change.send(()).unwrap();
    eventually("v2 written", || async {
        let r = c.kv_client().get(key, None).await.unwrap();
        r.kvs()
            .first()
            .is_some_and(|kv| kv.value() == b"v2" && kv.lease() == lease1)
    })
    .await;

    // The lease goes (an operator revokes it, or it expired in an outage):
    // the key vanishes, and the registration comes back under a new lease.
    c.lease_client().revoke(lease1).await.unwrap();
    eventually("registered again", || async {
        lease_of(&c, key).await.is_some_and(|l| l != lease1)
    })
    .await;
    let lease2 = lease_of(&c, key).await.unwrap();
    // Kept alive: still there after more than a TTL.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(lease_of(&c, key).await, Some(lease2));

    // A clean stop deletes it at once (no TTL wait) and ends the lease.
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease_of(&c, key).await, None);
    let ttl = c.lease_client().time_to_live(lease2, None).await.unwrap();
    assert!(ttl.ttl() <= 0, "lease {lease2:x} revoked");
}

#[tokio::test]
async fn a_campaign_waits_for_the_holder_and_the_holder_learns_it_lost() {
    let etcd = te::Etcd::start();
    let c = etcd.root_client().await;
    let key = "/leengine/test/leader";
    let ttl = Duration::from_secs(3);
    let a = LeasedRecord::create(&c, key, b"a".to_vec(), ttl)
        .await
        .unwrap()
        .expect("a wins an absent key");
    assert!(
        LeasedRecord::create(&c, key, b"b".to_vec(), ttl)
            .await
            .unwrap()
            .is_none(),
        "a held key is not taken"
    );
    let c2 = c.clone();
    let b = tokio::spawn(async move { campaign(&c2, key, b"b".to_vec(), ttl).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!b.is_finished(), "b waits while a holds the key");
    assert!(a
        .update(&c, b"a2".to_vec())
        .await
        .unwrap()
        .revision()
        .is_some());

    // a's lease is lost: a is told, b takes over.
    c.lease_client().revoke(a.lease().id()).await.unwrap();
    tokio::time::timeout(ttl, a.lost())
        .await
        .expect("a learns it lost");
    assert!(a.lease().is_lost());
    let b = tokio::time::timeout(WAIT, b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let held = c.kv_client().get(key, None).await.unwrap();
    assert_eq!(held.kvs()[0].value(), b"b");
    assert_eq!(held.kvs()[0].lease(), b.lease().id());
    // The loser's guarded rewrite cannot clobber the new holder.
    assert_eq!(
        a.update(&c, b"a3".to_vec()).await.unwrap(),
        Commit::Conflict
    );
    assert_eq!(
        c.kv_client().get(key, None).await.unwrap().kvs()[0].value(),
        b"b"
    );

    // Resigning frees the key at once.
    b.release().await;
    assert_eq!(lease_of(&c, key).await, None);
}

/// What a [`Mirror`] reports after each step: resets so far, and what it holds.
type Seen = mpsc::UnboundedReceiver<(u32, BTreeMap<String, String>)>;

/// A follower that keeps a map of the prefix and reports what it did.
struct Mirror {
    held: BTreeMap<String, String>,
    resets: u32,
    seen: mpsc::UnboundedSender<(u32, BTreeMap<String, String>)>,
}

impl Follower for Mirror {
    type Error = std::convert::Infallible;

    async fn reset(&mut self, snapshot: Snapshot) -> Result<(), Self::Error> {
        self.held = snapshot
            .kvs
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                )
            })
            .collect();
        self.resets += 1;
        let _ = self.seen.send((self.resets, self.held.clone()));
        Ok(())
    }

    async fn apply(&mut self, events: &[Event]) -> Result<(), Self::Error> {
        for ev in events {
            let kv = ev.kv().unwrap();
            let k = kv.key_str().unwrap().to_string();
            match ev.event_type() {
                EventType::Put => self.held.insert(k, kv.value_str().unwrap().to_string()),
                EventType::Delete => self.held.remove(&k),
            };
        }
        let _ = self.seen.send((self.resets, self.held.clone()));
        Ok(())
    }
}

fn mirror() -> (Mirror, Seen) {
    let (seen, rx) = mpsc::unbounded_channel();
    (
        Mirror {
            held: BTreeMap::new(),
            resets: 0,
            seen,
        },
        rx,
    )
}

async fn until(
    rx: &mut Seen,
    pred: impl Fn(u32, &BTreeMap<String, String>) -> bool,
) -> (u32, BTreeMap<String, String>) {
    tokio::time::timeout(WAIT, async {
        loop {
            let (resets, held) = rx.recv().await.expect("follower running");
            if pred(resets, &held) {
                return (resets, held);
            }
        }
    })
    .await
    .expect("the follower got there")
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_follower_resumes_after_a_broken_stream_without_a_full_read() {
    let mut etcd = te::Etcd::start();
    let c = etcd.root_client().await;
    let p = "/leengine/test/follow/";
    c.kv_client().put(format!("{p}a"), "1", None).await.unwrap();
    let (mut m, mut rx) = mirror();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let c2 = c.clone();
    let task = tokio::spawn(async move {
        follow(&c2, &Follow::prefix(p), &mut m, async {
            let _ = stop_rx.await;
        })
        .await;
        m
    });
    until(&mut rx, |r, h| {
        r == 1 && *h == map(&[("/leengine/test/follow/a", "1")])
    })
    .await;
    c.kv_client().put(format!("{p}b"), "2", None).await.unwrap();
    until(&mut rx, |_, h| h.len() == 2).await;

    // etcd goes down and comes back: the watch breaks and resumes.
    etcd.restart();
    let c = etcd.root_client().await;
    c.kv_client().put(format!("{p}c"), "3", None).await.unwrap();
    c.kv_client().delete(format!("{p}a"), None).await.unwrap();
    let (resets, held) = until(&mut rx, |_, h| {
        h.len() == 2 && h.contains_key("/leengine/test/follow/c")
    })
    .await;
    assert_eq!(resets, 1, "resumed from its revision, no full read");
    assert_eq!(
        held,
        map(&[
            ("/leengine/test/follow/b", "2"),
            ("/leengine/test/follow/c", "3")
        ])
    );
    stop_tx.send(()).unwrap();
    let m = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert_eq!(m.resets, 1);
}

#[tokio::test]
async fn a_follower_whose_revision_was_compacted_resyncs_with_a_full_read() {
    let etcd = te::Etcd::start();
    let c = etcd.root_client().await;
    let p = "/leengine/test/compact/";
    let at = c.kv_client().put(format!("{p}a"), "1", None).await.unwrap();
    let held_at = at.header().unwrap().revision();
    // After the follower's revision: a change and a delete it never saw,
    // then the history it would resume from is compacted away.
    c.kv_client().put(format!("{p}b"), "2", None).await.unwrap();
    c.kv_client().delete(format!("{p}a"), None).await.unwrap();
    let last = c.kv_client().put(format!("{p}c"), "3", None).await.unwrap();
    c.kv_client()
        .compact(last.header().unwrap().revision(), None)
        .await
        .unwrap();

    let (mut m, mut rx) = mirror();
    m.held = map(&[("/leengine/test/compact/a", "1")]);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let c2 = c.clone();
    let task = tokio::spawn(async move {
        follow(
            &c2,
            &Follow::prefix(p).resume_after(held_at),
            &mut m,
            async {
                let _ = stop_rx.await;
            },
        )
        .await;
    });
    let (resets, held) = until(&mut rx, |r, _| r >= 1).await;
    assert_eq!(resets, 1);
    assert_eq!(
        held,
        map(&[
            ("/leengine/test/compact/b", "2"),
            ("/leengine/test/compact/c", "3")
        ]),
        "only a full read reveals the delete of a"
    );
    // And it follows on from there.
    c.kv_client().put(format!("{p}d"), "4", None).await.unwrap();
    let (resets, held) = until(&mut rx, |_, h| h.len() == 3).await;
    assert_eq!(resets, 1);
    assert!(held.contains_key("/leengine/test/compact/d"));
    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

/// A follower that fails once in `apply`: the next thing it gets is a full read.
struct FailsOnce {
    inner: Mirror,
    failed: bool,
}

#[derive(Debug)]
struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl Follower for FailsOnce {
    type Error = Boom;

    async fn reset(&mut self, s: Snapshot) -> Result<(), Boom> {
        self.inner.reset(s).await.map_err(|e| match e {})
    }

    async fn apply(&mut self, events: &[Event]) -> Result<(), Boom> {
        if !self.failed {
            self.failed = true;
            return Err(Boom);
        }
        self.inner.apply(events).await.map_err(|e| match e {})
    }
}

#[tokio::test]
async fn a_failed_handler_and_the_resync_period_both_mean_a_full_read() {
    let etcd = te::Etcd::start();
    let c = etcd.root_client().await;
    let p = "/leengine/test/fails/";
    let (inner, mut rx) = mirror();
    let mut f = FailsOnce {
        inner,
        failed: false,
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let c2 = c.clone();
    let task = tokio::spawn(async move {
        let what = Follow::prefix(p).resync_every(Duration::from_secs(2));
        follow(&c2, &what, &mut f, async {
            let _ = stop_rx.await;
        })
        .await;
    });
    until(&mut rx, |r, _| r == 1).await;
    c.kv_client().put(format!("{p}a"), "1", None).await.unwrap();
    // The failed apply is not lost: the full read after it has the key.
    let (resets, held) = until(&mut rx, |_, h| h.len() == 1).await;
    assert_eq!(resets, 2);
    assert_eq!(held, map(&[("/leengine/test/fails/a", "1")]));
    // Then, with nothing changing, a periodic full read.
    until(&mut rx, |r, _| r == 3).await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}
