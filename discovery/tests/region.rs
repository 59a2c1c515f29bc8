//! Discovery against real Cells whose EndpointSlices the test writes
//! (Services without selector): merging, outages, resumes, 410 Gone,
//! failover, churn, and the drain contract with real nginx agents.

mod support;

use std::time::{Duration, Instant};

use support::*;

const D: &str = "a.example.com";

fn lists(d: &Discovery, cell: &str) -> f64 {
    d.metric(&format!(
        "leengine_discovery_cell_lists_total{{cell=\"{cell}\"}}"
    ))
    .unwrap_or(-1.0)
}

#[test]
fn two_cells_merge_and_an_unreachable_cell_keeps_its_endpoints() {
    let r = Region::start();
    let (a, b) = (bare_cell(), bare_cell());
    let mut a = a;
    let proxy = Proxy::start(&r.rt, api_addr(&a));
    r.register_cell("ca", &a, &proxy.url());
    r.register_cell("cb", &b, &b.api_url());
    selectorless_service(&a, "web");
    selectorless_service(&b, "web");
    let (ka, kb) = (kube(&r.rt, &a), kube(&r.rt, &b));
    set_slice(
        &r.rt,
        &ka,
        "web",
        "web-1",
        &[up("10.9.0.1", "a1"), ep("10.9.0.2", false, false, "a2")],
    );
    set_slice(&r.rt, &kb, "web", "web-1", &[up("10.9.1.1", "b1")]);
    r.publish_domain(D, 80);
    r.bind("ca", "web", D);
    r.bind("cb", "web", D);
    let d = r.discovery("d1", &[]);
    d.wait_active();
    r.wait_upstream(
        D,
        &["10.9.0.1:8080", "10.9.1.1:8080"],
        "both Cells merged, the unready endpoint left out",
    );
    assert_eq!(lists(&d, "ca"), 1.0);

    // A dropped connection: the watch resumes from its resourceVersion.
    let watches = d
        .metric("leengine_discovery_cell_watches_total{cell=\"ca\"}")
        .unwrap();
    proxy.cut();
    set_slice(
        &r.rt,
        &ka,
        "web",
        "web-1",
        &[up("10.9.0.1", "a1"), up("10.9.0.2", "a2")],
    );
    r.wait_upstream(
        D,
        &["10.9.0.1:8080", "10.9.0.2:8080", "10.9.1.1:8080"],
        "the change made as the connection dropped",
    );
    d.wait_metric(
        "leengine_discovery_cell_watches_total{cell=\"ca\"}",
        |v| v > watches,
        "the watch was resumed",
    );
    assert_eq!(
        lists(&d, "ca"),
        1.0,
        "a dropped connection resumes, it does not list again"
    );

    // The apiserver dies: A's endpoints stay, B's changes go on.
    a.stop_apiserver();
    d.wait_metric(
        "leengine_discovery_cell_watch_state{cell=\"ca\"}",
        |v| v == 2.0,
        "A unreachable",
    );
    set_slice(
        &r.rt,
        &kb,
        "web",
        "web-1",
        &[up("10.9.1.1", "b1"), up("10.9.1.2", "b2")],
    );
    r.wait_upstream(
        D,
        &[
            "10.9.0.1:8080",
            "10.9.0.2:8080",
            "10.9.1.1:8080",
            "10.9.1.2:8080",
        ],
        "written while A is down, A's last known endpoints kept",
    );
    a.start_apiserver_again();
    set_slice(
        &r.rt,
        &ka,
        "web",
        "web-1",
        &[ep("10.9.0.1", false, true, "a1"), up("10.9.0.2", "a2")],
    );
    r.wait_upstream(
        D,
        &["10.9.0.2:8080", "10.9.1.1:8080", "10.9.1.2:8080"],
        "changes resume after the restart; a terminating endpoint leaves at once",
    );
    d.wait_metric(
        "leengine_discovery_cell_watch_state{cell=\"ca\"}",
        |v| v == 1.0,
        "A watched again",
    );

    // Cut off while A changes, its etcd is compacted and its apiserver
    // restarted (its watch cache starts after the compaction): resuming
    // from the old resourceVersion gets 410 Gone, and the new list is the
    // truth (a slice deleted meanwhile is gone).
    set_slice(&r.rt, &ka, "web", "web-2", &[up("10.9.0.30", "a30")]);
    r.wait_upstream(
        D,
        &[
            "10.9.0.2:8080",
            "10.9.0.30:8080",
            "10.9.1.1:8080",
            "10.9.1.2:8080",
        ],
        "second slice",
    );
    let before = lists(&d, "ca");
    proxy.block(true);
    for i in 0..5 {
        set_slice(
            &r.rt,
            &ka,
            "web",
            "web-1",
            &[up(&format!("10.9.0.{}", 10 + i), "a")],
        );
    }
    let del = a.kubectl(&["-n", NS, "delete", "endpointslice", "web-2"]);
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    compact(&r.rt, &a.etcd_endpoint());
    a.stop_apiserver();
    a.start_apiserver_again();
    proxy.block(false);
    r.wait_upstream(
        D,
        &["10.9.0.14:8080", "10.9.1.1:8080", "10.9.1.2:8080"],
        "after 410 Gone the relist has the latest state",
    );
    assert!(
        lists(&d, "ca") > before,
        "the Cell was listed again:\n{}",
        d.log()
    );
    assert!(d.log().contains("410 Gone"), "{}", d.log());
}

/// Compacts the Cell's etcd up to its current revision.
fn compact(rt: &tokio::runtime::Runtime, endpoint: &str) {
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        let rev = c.get("/", None).await.unwrap().header().unwrap().revision();
        c.compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    });
}

#[test]
fn standby_takes_over_after_kill_9_no_change_is_lost_and_churn_coalesces() {
    let r = Region::start();
    let cell = bare_cell();
    r.register_cell("c1", &cell, &cell.api_url());
    selectorless_service(&cell, "web");
    let k = kube(&r.rt, &cell);
    set_slice(&r.rt, &k, "web", "web-1", &[up("10.8.0.1", "p1")]);
    r.publish_domain(D, 80);
    r.bind("c1", "web", D);
    let mut d1 = r.discovery("d1", &["--min-write-interval", "250ms"]);
    d1.wait_active();
    let d2 = r.discovery("d2", &["--min-write-interval", "250ms"]);
    assert!(te_wait(|| d2.status().is_some()), "d2 serves its status");
    assert!(!d2.is_active(), "one active replica at a time");
    r.wait_upstream(D, &["10.8.0.1:8080"], "first");

    d1.kill9();
    set_slice(
        &r.rt,
        &k,
        "web",
        "web-1",
        &[up("10.8.0.1", "p1"), up("10.8.0.2", "p2")],
    );
    d2.wait_active();
    r.wait_upstream(
        D,
        &["10.8.0.1:8080", "10.8.0.2:8080"],
        "the standby took over and found the change",
    );

    // 50 changes in a burst: few writes, the last state wins.
    let writes = || {
        d2.metric("leengine_discovery_upstream_writes_total")
            .unwrap()
    };
    let w0 = writes();
    let t0 = Instant::now();
    for i in 0..50 {
        set_slice(
            &r.rt,
            &k,
            "web",
            "web-1",
            &[up(&format!("10.8.1.{i}"), "p")],
        );
    }
    let burst = t0.elapsed();
    r.wait_upstream(D, &["10.8.1.49:8080"], "the last state wins");
    std::thread::sleep(Duration::from_millis(600));
    let n = writes() - w0;
    // Pacing allows one write at the start and one per 250 ms after it.
    let bound = 2.0 + burst.as_secs_f64() / 0.25;
    assert!(
        n >= 1.0 && n <= bound && n < 50.0,
        "{n} writes for 50 changes in {burst:?} (bound {bound})"
    );
    println!("churn: 50 changes in {burst:?} -> {n} upstream writes");

    // The registry is followed: a Cell removed takes its endpoints along,
    // registered again it is watched again, without a restart.
    r.delete(&r.keys().cell("c1"));
    r.wait_upstream(D, &[], "a Cell removed from the registry");
    r.register_cell("c1", &cell, &cell.api_url());
    r.wait_upstream(D, &["10.8.1.49:8080"], "the Cell registered again");

    // A bound domain slb-core has not published yet gets no orphan
    // upstream; once its config exists, its upstream follows.
    selectorless_service(&cell, "api");
    set_slice(&r.rt, &k, "api", "api-1", &[up("10.8.2.1", "q1")]);
    r.bind("c1", "api", "b.example.com");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        r.upstream("b.example.com").is_none(),
        "no upstream without a config"
    );
    r.publish_domain("b.example.com", 80);
    r.wait_upstream(
        "b.example.com",
        &["10.8.2.1:8080"],
        "written once the config exists",
    );
}

fn te_wait(f: impl FnMut() -> bool) -> bool {
    leengine_testenv::wait_until(PATIENCE, f)
}

#[test]
fn a_drain_is_acked_only_when_every_live_agent_applied_it() {
    let r = Region::start();
    let cell = bare_cell();
    r.register_cell("c1", &cell, &cell.api_url());
    selectorless_service(&cell, "web");
    let k = kube(&r.rt, &cell);
    let all = [
        up("10.7.0.1", "p1"),
        up("10.7.0.2", "p2"),
        up("10.7.0.3", "p3"),
    ];
    set_slice(&r.rt, &k, "web", "web-1", &all);
    r.publish_domain(D, leengine_testenv::free_port());
    let (h1, h2) = (r.agent("h1"), r.agent("h2"));
    r.bind("c1", "web", D);
    let d = r.discovery("d1", &[]);
    d.wait_active();
    let three = ["10.7.0.1:8080", "10.7.0.2:8080", "10.7.0.3:8080"];
    r.wait_upstream(D, &three, "all three");
    for h in [&h1, &h2] {
        assert!(
            te_wait(|| h.live_peers(D).len() == 3),
            "{} has the peers:\n{}",
            h.host,
            h.log()
        );
    }

    // Both agents live: the ack comes, and by then both nginx hold the
    // upstream without p2.
    r.drain(D, "r1", "c1", &["p2"]);
    assert!(te_wait(|| r.ack(D, "r1").is_some()), "ack r1:\n{}", d.log());
    let ack = r.ack(D, "r1").unwrap();
    for h in [&h1, &h2] {
        let peers = h.live_peers(D);
        assert!(
            !peers.contains(&"10.7.0.2:8080".parse().unwrap()) && peers.len() == 2,
            "{} still serves the drained pod at ack time: {peers:?}",
            h.host
        );
    }
    let (_, rev) = r.upstream(D).unwrap();
    assert_eq!(
        ack.revision, rev,
        "the ack names the write that excluded the pod"
    );
    assert!(r.upstream(D).unwrap().0.len() == 2);

    // Core deletes the request: the ack goes, and p2 (still in the slice
    // in this test) comes back.
    r.delete(&r.keys().drain_request(support::GROUP, D, "r1"));
    assert!(
        te_wait(|| r.ack(D, "r1").is_none()),
        "ack deleted with its request"
    );
    r.wait_upstream(D, &three, "request gone");

    // A pod already out of the upstream is acked at the upstream's revision.
    set_slice(&r.rt, &k, "web", "web-1", &all[..2]);
    let rev = r.wait_upstream(D, &three[..2], "p3 gone by itself");
    r.drain(D, "r2", "c1", &["p3"]);
    assert!(te_wait(|| r.ack(D, "r2").is_some()), "ack r2");
    assert_eq!(r.ack(D, "r2").unwrap().revision, rev);

    // An agent that cannot apply (stopped) holds the ack back while its
    // status record is live; its lease (4 s) runs out, then the ack comes.
    h2.signal(libc::SIGSTOP);
    r.drain(D, "r3", "c1", &["p1"]);
    r.wait_upstream(D, &["10.7.0.2:8080"], "p1 drained");
    assert!(
        te_wait(|| r.ack(D, "r3").is_some()),
        "ack r3 after h2 left:\n{}",
        d.log()
    );
    assert!(
        r.agent_status("h2").is_none(),
        "acked while the stopped agent h2 was still live with an older revision"
    );
    assert_eq!(h1.live_peers(D).len(), 1);
    h2.signal(libc::SIGCONT);
}
