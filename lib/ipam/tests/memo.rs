//! Assignments with a memo (`Ipam::assign_remembering`), against a real
//! etcd: one round trip when the memo holds, and never an outcome the
//! ordinary path would not give when something changed behind the memo.

mod common;

use std::collections::BTreeSet;

use common::{etcd_requests, opts, pod_req, req, Env};
use leengine_ipam::{BindRequest, IpamError, Memo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_memo_an_assignment_in_an_own_block_is_one_round_trip() {
    // The first one read (and claimed a block): the memo was empty.
    let (env, n1, mut memo, first) = warm().await;
    let mut got = BTreeSet::from([first.ip]);
    for i in 1..10 {
        let before = etcd_requests(&env.etcd, "Txn");
        let a = n1
            .assign_remembering(
                &pod_req(&format!("c{i}"), "web", &format!("w{i}")),
                &mut memo,
            )
            .await
            .unwrap();
        assert_eq!(
            etcd_requests(&env.etcd, "Txn") - before,
            1,
            "assignment {i}"
        );
        assert_eq!(a.attachment.block, first.attachment.block);
        assert!(got.insert(a.ip), "{} handed out twice", a.ip);
    }
    // A replay is answered from its handle, as without a memo.
    let again = n1.assign_remembering(&req("c0"), &mut memo).await.unwrap();
    assert_eq!((again.ip, again.created), (first.ip, false));
    env.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memo_left_behind_by_other_writers_never_hands_out_a_taken_address() {
    let env = Env::start().await;
    env.add_pool("p1", "10.1.0.0/28", "10.1.0.1", 100, 16, &[])
        .await;
    let n1 = env.ipam("n1");
    let other = env.ipam("n1"); // another process of the node, no memo
    let mut memo = Memo::default();
    let mut got = BTreeSet::new();
    for i in 0..13 {
        let a = if i % 3 == 0 {
            other.assign(&req(&format!("o{i}"))).await.unwrap()
        } else {
            n1.assign_remembering(&req(&format!("m{i}")), &mut memo)
                .await
                .unwrap()
        };
        assert!(got.insert(a.ip), "{} handed out twice", a.ip);
    }
    // The pool's 13 addresses are gone: the memo's block looks full, the
    // ordinary path says so.
    let e = n1
        .assign_remembering(&req("late"), &mut memo)
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::PoolExhausted { .. }), "{e}");
    // A release elsewhere makes room, and the memo path finds it.
    let freed = other.release("o3", "eth0").await.unwrap().unwrap();
    let a = n1
        .assign_remembering(&req("late"), &mut memo)
        .await
        .unwrap();
    assert_eq!(a.ip, freed.ip);
    env.assert_consistent().await;
}

/// The sticky address and the reserve live in another node's block, so the
/// block the memo picks from is unchanged: only the compares on the sticky
/// record and on the reserve can send the assignment the ordinary way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_address_and_an_app_reserve_made_after_the_memo_still_come_first() {
    let env = Env::start().await;
    env.add_pool("p1", "10.1.0.0/24", "10.1.0.1", 100, 16, &[])
        .await;
    env.add_pool("shop", "10.2.0.0/24", "10.2.0.1", 200, 16, &[])
        .await;
    let n1 = env.ipam_with("n1", opts(0, 300));
    let n2 = env.ipam_with("n2", opts(0, 300));
    n2.bind(&BindRequest {
        app: "shop".into(),
        pool: "shop".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut memo = Memo::default();
    n1.assign_remembering(&req("warm"), &mut memo)
        .await
        .unwrap();
    n1.assign_remembering(&pod_req("s0", "shop", "shop-0"), &mut memo)
        .await
        .unwrap();

    // Sticky: web-0 ran on n2; it restarts on n1.
    let web0 = n2.assign(&pod_req("a", "plain", "web-0")).await.unwrap();
    n2.release("a", "eth0").await.unwrap().unwrap();
    let back = n1
        .assign_remembering(&pod_req("b", "plain", "web-0"), &mut memo)
        .await
        .unwrap();
    assert_eq!(back.ip, web0.ip, "the pod's sticky address");

    // App reserve: shop scales down on n2, then up on n1.
    let gone = n2.assign(&pod_req("s1", "shop", "shop-1")).await.unwrap();
    n2.release("s1", "eth0").await.unwrap().unwrap();
    let up = n1
        .assign_remembering(&pod_req("s2", "shop", "shop-2"), &mut memo)
        .await
        .unwrap();
    assert_eq!(up.ip, gone.ip, "the app's reserved address");
    env.assert_consistent().await;
}

/// The memo's view has p1 open to everyone and a block of it on this node;
/// only the compare on the bindings keeps blog's pod out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_bound_to_an_app_after_the_memo_is_closed_to_other_pods() {
    let env = Env::start().await;
    env.add_pool("p1", "10.1.0.0/24", "10.1.0.1", 100, 16, &[])
        .await;
    env.add_pool("p2", "10.2.0.0/24", "10.2.0.1", 200, 16, &[])
        .await;
    let n1 = env.ipam("n1");
    let mut memo = Memo::default();
    let shop = n1
        .assign_remembering(&pod_req("c0", "shop", "s-0"), &mut memo)
        .await
        .unwrap();
    assert_eq!(shop.pool, "p1");
    env.ipam("admin")
        .bind(&BindRequest {
            app: "shop".into(),
            pool: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let blog = n1
        .assign_remembering(&pod_req("c1", "blog", "b-0"), &mut memo)
        .await
        .unwrap();
    assert_eq!(blog.pool, "p2", "blog got {} in shop's pool", blog.ip);
    let shop = n1
        .assign_remembering(&pod_req("c2", "shop", "s-1"), &mut memo)
        .await
        .unwrap();
    assert_eq!(shop.pool, "p1");
    env.assert_consistent().await;
}

/// Node n1 of pool p1 (a /24 of 16-address blocks) with a warm memo: its
/// first assignment (`c0`, returned) made, which read everything and
/// claimed a block.
async fn warm() -> (Env, leengine_ipam::Ipam, Memo, leengine_ipam::Assignment) {
    let env = Env::start().await;
    env.add_pool("p1", "10.1.0.0/24", "10.1.0.1", 100, 16, &[])
        .await;
    let n1 = env.ipam("n1");
    let mut memo = Memo::default();
    let first = n1.assign_remembering(&req("c0"), &mut memo).await.unwrap();
    (env, n1, memo, first)
}

/// Calls queued for the node's turn (`Ipam::assign_all_remembering`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_queued_together_on_a_warm_memo_share_one_commit() {
    let (env, n1, mut memo, first) = warm().await;
    let reqs: Vec<_> = (1..11)
        .map(|i| pod_req(&format!("c{i}"), "web", &format!("w{i}")))
        .collect();
    let before = etcd_requests(&env.etcd, "Txn");
    let answers = n1.assign_all_remembering(&reqs, &mut memo).await;
    assert_eq!(etcd_requests(&env.etcd, "Txn") - before, 1);
    let mut got = BTreeSet::from([first.ip]);
    for (r, a) in reqs.iter().zip(answers) {
        let a = a.unwrap();
        assert_eq!(
            a.attachment.container_id, r.container_id,
            "answers in order"
        );
        assert!(a.created);
        assert!(got.insert(a.ip), "{} handed out twice", a.ip);
    }
    env.assert_consistent().await;
}

/// Sixteen addresses per block, one already taken: the batch fills the
/// memo's block and the rest claim a new one the ordinary way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_blocks_free_addresses_still_gets_distinct_ones() {
    let (env, n1, mut memo, _) = warm().await;
    let reqs: Vec<_> = (1..41).map(|i| req(&format!("c{i}"))).collect();
    let answers = n1.assign_all_remembering(&reqs, &mut memo).await;
    let mut got = BTreeSet::new();
    let mut blocks = BTreeSet::new();
    for a in answers {
        let a = a.unwrap();
        blocks.insert(a.attachment.block);
        assert!(got.insert(a.ip), "{} handed out twice", a.ip);
    }
    assert_eq!(got.len(), 40);
    assert!(
        blocks.len() >= 3,
        "41 addresses fit in no fewer than 3 blocks"
    );
    env.assert_consistent().await;
}

/// A replay in the batch makes its commit fail on the handle's compare:
/// every request then goes the ordinary way, the replay gets its address
/// back, the others new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_in_a_batch_gets_its_address_back_and_the_others_new_ones() {
    let (env, n1, mut memo, first) = warm().await;
    let reqs = vec![req("c1"), req("c0"), req("c2"), req("c1")];
    let answers: Vec<_> = n1
        .assign_all_remembering(&reqs, &mut memo)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!((answers[1].ip, answers[1].created), (first.ip, false));
    assert!(answers[0].created && answers[2].created);
    assert_eq!((answers[3].ip, answers[3].created), (answers[0].ip, false));
    let ips: BTreeSet<_> = [first.ip, answers[0].ip, answers[2].ip].into();
    assert_eq!(ips.len(), 3);
    env.assert_consistent().await;
}

/// An invalid request is the ordinary path's to refuse; the rest of the
/// batch is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_in_a_batch_fails_alone() {
    let (env, n1, mut memo, _) = warm().await;
    let reqs = vec![req("c1"), req("a/b"), req("c2")];
    let answers = n1.assign_all_remembering(&reqs, &mut memo).await;
    assert!(answers[0].is_ok() && answers[2].is_ok());
    let e = answers[1].as_ref().unwrap_err();
    assert!(matches!(e, IpamError::InvalidRequest(_)), "{e}");
    env.assert_consistent().await;
}
