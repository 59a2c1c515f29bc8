//! Many plugin processes at once on one node, as kubelet does on a busy node.

mod common;

use common::*;
use leengine_testenv as te;
use std::collections::BTreeSet;
use std::sync::Arc;

#[test]
fn thirty_simultaneous_adds_get_distinct_ips_and_racing_dels_leave_nothing() {
    let c = Arc::new(Cluster::new("10.81.0.0/22", "10.81.0.1", 181));
    let conf = Arc::new(c.conf("1.1.0"));
    let namespaces: Vec<Arc<te::Netns>> = (0..45).map(|_| Arc::new(te::Netns::new())).collect();

    let run_all = |jobs: Vec<(&'static str, usize)>| -> Vec<(String, usize, Out)> {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(cmd, i)| {
                let (c, conf, ns) = (c.clone(), conf.clone(), namespaces[i].clone());
                std::thread::spawn(move || {
                    let out = c.call(cmd, &format!("pod{i}"), Some(ns.path()), "eth0", "", &conf);
                    (cmd.to_string(), i, out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };

    // 30 ADDs at once.
    let outs = run_all((0..30).map(|i| ("ADD", i)).collect());
    let mut ips = BTreeSet::new();
    for (_, i, out) in &outs {
        let addr = out.ok()["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(ips.insert(addr.clone()), "pod{i} got duplicate {addr}");
    }
    assert_eq!(ips.len(), 30);
    assert_eq!(c.ports().len(), 30);
    assert_eq!(c.handles().len(), 30);

    // DELs of pods 0..15 race ADDs of pods 30..45, and for pods 15..20 an ADD
    // races a DEL of the very same attachment.
    let mut jobs: Vec<(&'static str, usize)> = Vec::new();
    jobs.extend((0..15).map(|i| ("DEL", i)));
    jobs.extend((30..45).map(|i| ("ADD", i)));
    jobs.extend((15..20).map(|i| ("DEL", i)));
    jobs.extend((15..20).map(|i| ("ADD", i)));
    for (cmd, i, out) in run_all(jobs) {
        // A re-ADD of an attachment that is still fully there is refused (its
        // eth0 exists); everything else succeeds.
        if out.code != 0 {
            assert_eq!(
                (cmd.as_str(), out.err_code()),
                ("ADD", 103),
                "pod{i}: {:?}",
                out.json
            );
        }
    }
    let audit = c.block_on(async { c.ipam().await.audit().await.unwrap() });
    assert!(audit.is_empty(), "IPAM inconsistent: {audit:?}");

    // Every pod still present: one port and one handle each, distinct IPs.
    let live: Vec<usize> = (0..45)
        .filter(|i| ns_out(&namespaces[*i], &["ip", "-o", "link"]).contains(": eth0"))
        .collect();
    assert_eq!(
        c.ports().len(),
        live.len(),
        "ports {:?} vs live {live:?}",
        c.ports()
    );
    assert_eq!(c.handles().len(), live.len());

    // Tear everything down concurrently: nothing remains.
    run_all((0..45).map(|i| ("DEL", i)).collect())
        .iter()
        .for_each(|(_, _, o)| {
            o.ok();
        });
    c.assert_clean();
}
