//! The reconciler runs on one core replica at a time: the etcd election
//! picks one, the other waits, and takes over when the leader's lease ends.

mod common;

use std::time::Duration;

use common::Env;
use leengine_core::deploy::reconcile;
use leengine_core::server::Settings;

/// The current leader's value, if any.
async fn leader(env: &Env) -> Option<String> {
    let name = env.core.db.keys.reconciler_election();
    let mut etcd = env.core.db.etcd.clone();
    let resp = etcd.leader(name).await.ok()?;
    resp.kv()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

async fn wait_leader(env: &Env, not: Option<&str>) -> String {
    // Hang guard (the lease TTL is 10 s); not a timing assertion.
    for _ in 0..240 {
        if let Some(l) = leader(env).await.filter(|l| Some(l.as_str()) != not) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no new reconciler leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_a_takeover_when_it_dies() {
    let env = Env::start(Settings::default()).await;
    let a = tokio::spawn(reconcile::run(env.core.clone()));
    let first = wait_leader(&env, None).await;
    let b = tokio::spawn(reconcile::run(env.core.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        leader(&env).await.as_deref(),
        Some(first.as_str()),
        "the second replica waits"
    );
    // The leader dies without a word: its lease runs out, the other leads.
    a.abort();
    let second = wait_leader(&env, Some(&first)).await;
    assert_ne!(first, second);
    b.abort();
}
