//! The agent against real etcd and a real nginx with lua.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use leengine_testenv as te;
use support::{upstream_of, Host};

#[test]
fn routes_by_host_and_swaps_upstreams_without_reload() {
    let etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    let (a1, a2, b1) = (h.backend("a1"), h.backend("a2"), h.backend("b1"));
    h.put_domain("a.example.com", &h.domain_config(), &upstream_of(&[&a1]));
    h.put_domain("b.example.com", &h.domain_config(), &upstream_of(&[&b1]));
    h.start_agent();
    h.wait_status("serving both domains", |s| s.domains.len() == 2);
    h.start_nginx();

    h.wait_body("a.example.com", "a1");
    h.wait_body("b.example.com", "b1");
    assert_eq!(
        h.get("unknown.example.com", "/").status,
        404,
        "no default route to a domain"
    );

    let workers = h.settled_workers(2);
    let reloads = h.status().expect("status").reloads;
    h.put_upstream("a.example.com", &upstream_of(&[&a2]));
    h.wait_body("a.example.com", "a2");
    assert_eq!(h.get("b.example.com", "/").body, "b1");

    // Both peers serve under round robin, still without a reload.
    h.put_upstream("a.example.com", &upstream_of(&[&a1, &a2]));
    let mut seen = BTreeSet::new();
    te::wait_until(Duration::from_secs(10), || {
        seen.insert(h.get("a.example.com", "/").body);
        seen.len() == 2
    });
    assert_eq!(seen, BTreeSet::from(["a1".to_string(), "a2".to_string()]));

    assert_eq!(
        h.worker_pids(),
        workers,
        "an upstream change must not restart workers"
    );
    assert_eq!(
        h.status().expect("status").reloads,
        reloads,
        "no reload for upstream changes"
    );

    // No servers: 502, not a hang or another domain's backend.
    h.put_upstream("a.example.com", r#"{"servers":[]}"#);
    assert!(te::wait_until(Duration::from_secs(10), || h
        .get("a.example.com", "/")
        .status
        == 502));
}

#[test]
fn config_change_reloads_and_a_broken_config_is_never_applied() {
    let etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    // Server blocks per domain: every config change is a reload.
    h.routing = "generated";
    let (a1, b1) = (h.backend("a1"), h.backend("b1"));
    h.put_domain("a.example.com", &h.domain_config(), &upstream_of(&[&a1]));
    h.put_domain("b.example.com", &h.domain_config(), &upstream_of(&[&b1]));
    h.start_agent();
    h.wait_status("serving both domains", |s| s.domains.len() == 2);
    h.start_nginx();
    h.wait_body("a.example.com", "a1");
    let before = h.settled_workers(2);

    let with_header = |v: &str| {
        format!(
            r#"{{"listen":[{{"port":{}}}],"headers":{{"X-Version":"{v}"}}}}"#,
            h.http_port
        )
    };
    h.put_config("a.example.com", &with_header("one"));
    assert!(te::wait_until(Duration::from_secs(15), || h
        .get("a.example.com", "/")
        .headers
        .contains("X-Version: one")));
    let after = h.settled_workers(2);
    assert!(
        before.iter().all(|p| !after.contains(p)),
        "a config change reloads: workers {before:?} -> {after:?}"
    );

    // b breaks (nginx -t: unknown variable) while a changes in the same burst:
    // a's change goes live, b keeps its last good config and reports the error.
    let broken = format!(
        r#"{{"listen":[{{"port":{}}}],"headers":{{"X-Bad":"$no_such_variable"}}}}"#,
        h.http_port
    );
    h.put_config("b.example.com", &broken);
    h.put_config("a.example.com", &with_header("two"));
    let st = h.wait_status("reporting b's nginx -t error", |s| {
        s.errors.contains_key("b.example.com")
    });
    let err = &st.errors["b.example.com"];
    assert_eq!(err.kind, "nginx-test");
    assert!(err.message.contains("no_such_variable"), "{err:?}");
    assert!(!st.errors.contains_key("a.example.com"));
    assert!(te::wait_until(Duration::from_secs(15), || h
        .get("a.example.com", "/")
        .headers
        .contains("X-Version: two")));
    let b = h.get("b.example.com", "/");
    assert_eq!((b.status, b.body.as_str()), (200, "b1"));
    assert!(!b.headers.contains("X-Bad"));
    let live = std::fs::read_to_string(h.path("conf/domains/b.example.com.conf")).expect("b live");
    assert!(
        !live.contains("no_such_variable"),
        "broken file reached the live set"
    );

    // Invalid JSON is refused before nginx sees it; fixing b clears the error.
    h.put_config("a.example.com", r#"{"listen":[]}"#);
    let st = h.wait_status("reporting a's invalid config", |s| {
        s.errors
            .get("a.example.com")
            .is_some_and(|e| e.kind == "invalid")
    });
    assert!(
        st.errors["a.example.com"].message.contains("listen"),
        "{st:?}"
    );
    assert!(h
        .get("a.example.com", "/")
        .headers
        .contains("X-Version: two"));
    h.put_config("b.example.com", &h.domain_config());
    h.wait_status("clearing b's error", |s| {
        !s.errors.contains_key("b.example.com")
    });

    // Deleting a domain removes it from nginx.
    let mut c = h.etcd.clone();
    h.rt.block_on(c.delete(
        leengine_store::keys::slb_domain_prefix(support::GROUP, "b.example.com"),
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    ))
    .expect("delete");
    assert!(te::wait_until(Duration::from_secs(15), || h
        .get("b.example.com", "/")
        .status
        == 404));
}

#[test]
fn survives_agent_kill9_nginx_restart_and_etcd_outage() {
    let mut etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    let (a1, a2, a3) = (h.backend("a1"), h.backend("a2"), h.backend("a3"));
    h.put_domain("a.example.com", &h.domain_config(), &upstream_of(&[&a1]));
    h.start_agent();
    h.wait_status("serving a", |s| s.domains.len() == 1);
    h.start_nginx();
    h.wait_body("a.example.com", "a1");
    h.put_upstream("a.example.com", &upstream_of(&[&a2]));
    h.wait_body("a.example.com", "a2");

    // kill -9 the agent; nginx keeps serving; a new agent converges on the
    // same state, and a change made while it was down is picked up.
    h.kill_agent();
    assert_eq!(h.get("a.example.com", "/").body, "a2");
    h.put_upstream("a.example.com", &upstream_of(&[&a3]));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        h.get("a.example.com", "/").body,
        "a2",
        "nothing applies without the agent"
    );
    // The status key lives under the dead agent's lease.
    assert!(
        te::wait_until(Duration::from_secs(15), || h.status().is_none()),
        "status of a dead agent must expire"
    );
    h.start_agent();
    h.wait_body("a.example.com", "a3");

    // etcd down: nginx keeps serving, and even an nginx restart plus an
    // agent restart (no etcd at all) serve the last state from the dump.
    etcd.stop();
    assert_eq!(h.get("a.example.com", "/").body, "a3");
    h.kill_agent();
    h.stop_nginx();
    h.start_nginx();
    h.wait_body("a.example.com", "a3");
    h.start_agent();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.get("a.example.com", "/").body, "a3");

    // etcd back: the agent (still retrying) resumes and follows new writes.
    etcd.restart();
    h.put_upstream("a.example.com", &upstream_of(&[&a1]));
    h.wait_body("a.example.com", "a1");
}

#[test]
fn watch_resumes_across_an_etcd_restart() {
    let mut etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    let (a1, a2) = (h.backend("a1"), h.backend("a2"));
    h.put_domain("a.example.com", &h.domain_config(), &upstream_of(&[&a1]));
    h.start_agent();
    h.wait_status("serving a", |s| s.domains.len() == 1);
    h.start_nginx();
    h.wait_body("a.example.com", "a1");
    // The write happens while the agent's watch is broken and the agent
    // cannot reconnect yet: only resuming from its revision finds it.
    h.signal_agent(libc::SIGSTOP);
    etcd.restart();
    h.put_upstream("a.example.com", &upstream_of(&[&a2]));
    h.signal_agent(libc::SIGCONT);
    h.wait_body("a.example.com", "a2");
    assert_eq!(
        h.agent_log().matches("full sync").count(),
        1,
        "resumed, not resynced"
    );
    let mut c = h.etcd.clone();
    let key = leengine_store::keys::slb_domain_upstream(support::GROUP, "a.example.com");
    let resp = h.rt.block_on(c.get(key, None)).expect("get");
    let rev = resp.kvs()[0].mod_revision();
    h.wait_status("reporting the write as applied", |s| {
        s.applied_revision >= rev
    });
}

#[test]
fn balancing_methods_and_failed_servers() {
    let etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    let (b1, b2, b3) = (h.backend("b1"), h.backend("b2"), h.backend("b3"));
    let dead = te::free_port();
    // A dead server among live ones: every request still succeeds (the
    // balancer retries the next peer and marks the dead one failed).
    let up = format!(
        r#"{{"servers":[{{"address":"127.0.0.1:{dead}","maxFails":1,"failTimeout":30}},
            {{"address":"{}"}},{{"address":"{}"}}]}}"#,
        b1.addr, b2.addr
    );
    h.put_domain("rr.example.com", &h.domain_config(), &up);
    let hash = format!(
        r#"{{"servers":[{{"address":"{}"}},{{"address":"{}"}},{{"address":"{}"}}],
            "balancing":{{"method":"hash","key":"$arg_user"}}}}"#,
        b1.addr, b2.addr, b3.addr
    );
    h.put_domain("hash.example.com", &h.domain_config(), &hash);
    let lc = format!(
        r#"{{"servers":[{{"address":"{}"}},{{"address":"{}"}}],"balancing":{{"method":"least_conn"}}}}"#,
        b1.addr, b3.addr
    );
    h.put_domain("lc.example.com", &h.domain_config(), &lc);
    h.start_agent();
    h.wait_status("serving three domains", |s| s.domains.len() == 3);
    h.start_nginx();
    assert!(te::wait_until(Duration::from_secs(10), || h
        .get("rr.example.com", "/")
        .status
        == 200));

    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let r = h.get("rr.example.com", "/");
        assert_eq!(r.status, 200, "{r:?}");
        seen.insert(r.body);
    }
    assert_eq!(seen, BTreeSet::from(["b1".to_string(), "b2".to_string()]));
    let admin = h.admin("GET", "/leengine/upstreams", "").body;
    assert!(
        admin.contains(&format!("#down rr.example.com|127.0.0.1:{dead}")),
        "dead server not marked down:\n{admin}"
    );
    assert!(!admin.contains(&format!("#down rr.example.com|{}", b1.addr)));

    // Consistent hash: a user always lands on the same server; users spread.
    let mut owners = BTreeSet::new();
    for user in 0..30 {
        let path = format!("/?user=u{user}");
        let first = h.get("hash.example.com", &path).body;
        for _ in 0..3 {
            assert_eq!(
                h.get("hash.example.com", &path).body,
                first,
                "user u{user} moved"
            );
        }
        owners.insert(first);
    }
    assert!(owners.len() >= 2, "30 users all hashed to {owners:?}");

    // Least connections with idle servers spreads sequential requests.
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(h.get("lc.example.com", "/").body);
    }
    assert_eq!(seen, BTreeSet::from(["b1".to_string(), "b3".to_string()]));
}

#[test]
fn resyncs_after_its_revision_is_compacted() {
    let mut etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    let (a1, a2, b1) = (h.backend("a1"), h.backend("a2"), h.backend("b1"));
    h.put_domain("a.example.com", &h.domain_config(), &upstream_of(&[&a1]));
    h.put_domain("b.example.com", &h.domain_config(), &upstream_of(&[&b1]));
    h.start_agent();
    h.wait_status("serving both", |s| s.domains.len() == 2);
    h.start_nginx();
    h.wait_body("b.example.com", "b1");

    // Freeze the agent, break its watch, and compact away the history it
    // would resume from: only a full read can reveal b's deletion.
    h.signal_agent(libc::SIGSTOP);
    etcd.restart();
    h.put_upstream("a.example.com", &upstream_of(&[&a2]));
    let mut c = h.etcd.clone();
    let prefix = leengine_store::keys::slb_domain_prefix(support::GROUP, "b.example.com");
    let del =
        h.rt.block_on(c.delete(
            prefix,
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        ))
        .expect("delete");
    let rev = del.header().expect("header").revision();
    h.rt.block_on(c.compact(rev, None)).expect("compact");
    h.signal_agent(libc::SIGCONT);

    h.wait_body("a.example.com", "a2");
    assert!(te::wait_until(Duration::from_secs(15), || h
        .get("b.example.com", "/")
        .status
        == 404));
    assert!(h.agent_log().contains("resyncing"), "{}", h.agent_log());
}

#[test]
fn a_burst_of_config_changes_is_one_reload() {
    let etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    // Server blocks per domain: every config change is a reload.
    h.routing = "generated";
    h.debounce = "1s";
    let a1 = h.backend("a1");
    h.put_domain("a.example.com", &h.domain_config(), &upstream_of(&[&a1]));
    h.start_agent();
    h.wait_status("serving a", |s| s.domains.len() == 1);
    h.start_nginx();
    h.wait_body("a.example.com", "a1");
    let before = h.status().expect("status").reloads;
    // Ten writes at once (a slow disk makes sequential etcd puts slower
    // than the debounce); whichever lands last must be what is served.
    let key = leengine_store::keys::slb_domain_config(support::GROUP, "a.example.com");
    let port = h.http_port;
    h.rt.block_on(async {
        let puts: Vec<_> = (0..10)
            .map(|i| {
                let mut c = h.etcd.clone();
                let key = key.clone();
                let cfg = format!(r#"{{"listen":[{{"port":{port}}}],"headers":{{"X-V":"{i}"}}}}"#);
                tokio::spawn(async move { c.put(key, cfg, None).await })
            })
            .collect();
        for p in puts {
            p.await.expect("join").expect("put");
        }
    });
    let mut c = h.etcd.clone();
    let last: serde_json::Value =
        serde_json::from_slice(h.rt.block_on(c.get(key, None)).expect("get").kvs()[0].value())
            .expect("json");
    let want = format!("X-V: {}", last["headers"]["X-V"].as_str().expect("header"));
    assert!(te::wait_until(Duration::from_secs(15), || h
        .get("a.example.com", "/")
        .headers
        .contains(&want)));
    h.wait_status("counting the reload", |s| s.reloads > before);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.status().expect("status").reloads, before + 1);
}

#[test]
fn tls_domain_and_a_missing_certificate() {
    let etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    let a1 = h.backend("a1");
    let (cert, key) = (h.path("a.pem"), h.path("a.key"));
    let gen = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=a.example.com",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let tls_port = te::free_port();
    let http_port = h.http_port;
    let tls_cfg = |cert: &str| {
        format!(
            r#"{{"listen":[{{"port":{}}},{{"port":{tls_port},"ssl":true}}],
                "tls":{{"certificate":"{cert}","certificateKey":"{}"}}}}"#,
            http_port,
            key.display()
        )
    };
    h.put_domain(
        "a.example.com",
        &tls_cfg(&cert.display().to_string()),
        &upstream_of(&[&a1]),
    );
    h.start_agent();
    h.wait_status("serving a", |s| s.domains.len() == 1);
    h.start_nginx();
    let curl = |host: &str| {
        let out = Command::new("curl")
            .args(["-sk", "--resolve", &format!("{host}:{tls_port}:127.0.0.1")])
            .arg(format!("https://{host}:{tls_port}/"))
            .output()
            .expect("curl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(te::wait_until(Duration::from_secs(10), || curl(
        "a.example.com"
    )
    .1 == "a1"));
    // Unknown SNI: the catch-all refuses the handshake (curl exit 35).
    assert_eq!(curl("other.example.com").0, Some(35));

    // Lua routing (the default): the TLS domain's behaviour is its route,
    // so a header change is live over TLS without a reload.
    let reloads = h.status().expect("status").reloads;
    let with_header =
        tls_cfg(&cert.display().to_string()).replacen('{', r#"{"headers":{"X-V":"2"},"#, 1);
    h.put_config("a.example.com", &with_header);
    let headers = || {
        let out = Command::new("curl")
            .args([
                "-sik",
                "--resolve",
                &format!("a.example.com:{tls_port}:127.0.0.1"),
            ])
            .arg(format!("https://a.example.com:{tls_port}/"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
    };
    assert!(
        te::wait_until(Duration::from_secs(10), || headers().contains("x-v: 2")),
        "{}",
        headers()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        h.status().expect("status").reloads,
        reloads,
        "a TLS domain's header change reloaded nginx"
    );

    // A certificate that does not exist (yet): nginx -t refuses, TLS keeps
    // working; once the file appears the agent applies it by itself.
    let later = h.path("later.pem");
    h.put_config("a.example.com", &tls_cfg(&later.display().to_string()));
    let st = h.wait_status("reporting the missing certificate", |s| {
        s.errors.contains_key("a.example.com")
    });
    assert!(
        st.errors["a.example.com"].message.contains("later.pem"),
        "{st:?}"
    );
    assert_eq!(curl("a.example.com").1, "a1");
    let reloads = st.reloads;
    std::fs::copy(&cert, &later).expect("install certificate");
    h.wait_status("applying once the certificate exists", |s| {
        s.errors.is_empty() && s.reloads > reloads
    });
    assert_eq!(curl("a.example.com").1, "a1");
    let live = std::fs::read_to_string(h.path("conf/domains/a.example.com.conf")).expect("live");
    assert!(live.contains("later.pem"));
}

/// Mod revision of a key (what a status must reach to count it applied).
fn mod_revision(h: &Host, key: &str) -> i64 {
    let mut c = h.etcd.clone();
    let resp = h.rt.block_on(c.get(key, None)).expect("get");
    resp.kvs()[0].mod_revision()
}

#[test]
fn a_reload_nginx_refuses_is_rolled_back_and_only_that_domain_is_refused() {
    let etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    // Server blocks per domain: every config change is a reload.
    h.routing = "generated";
    let (a1, b1, c1) = (h.backend("a1"), h.backend("b1"), h.backend("c1"));
    h.put_domain("a.example.com", &h.domain_config(), &upstream_of(&[&a1]));
    h.put_domain("b.example.com", &h.domain_config(), &upstream_of(&[&b1]));
    h.start_agent();
    h.wait_status("serving a and b", |s| s.domains.len() == 2);
    h.start_nginx();
    h.wait_body("a.example.com", "a1");
    h.wait_body("b.example.com", "b1");

    // Another process holds a port c listens on: nginx -t passes, the
    // reload cannot bind it.
    let held = std::net::TcpListener::bind(("0.0.0.0", 0)).expect("hold a port");
    let held_port = held.local_addr().expect("addr").port();
    let c_cfg = format!(
        r#"{{"listen":[{{"port":{}}},{{"port":{held_port}}}]}}"#,
        h.http_port
    );
    h.put_domain("c.example.com", &c_cfg, &upstream_of(&[&c1]));
    let c_rev = mod_revision(
        &h,
        &leengine_store::keys::slb_domain_config(support::GROUP, "c.example.com"),
    );
    let never_claims_c = |s: &leengine_slb::AgentStatus| {
        assert!(
            s.applied_revision < c_rev || s.errors.contains_key("c.example.com"),
            "status claims c in sync while its port is held: {s:?}"
        );
    };
    let long = Duration::from_secs(60);
    let st = h.wait_status_for(long, "refusing c at reload", |s| {
        never_claims_c(s);
        s.errors
            .get("c.example.com")
            .is_some_and(|e| e.kind == "reload")
    });
    let err = &st.errors["c.example.com"];
    assert!(
        err.message.contains("Address already in use"),
        "nginx's reason: {err:?}"
    );
    assert_eq!(err.revision, c_rev);
    assert!(!st.domains.contains(&"c.example.com".to_string()), "{st:?}");
    assert!(
        !h.path("conf/domains/c.example.com.conf").exists(),
        "the refused file stays out of the live set"
    );
    assert_eq!(h.get("a.example.com", "/").body, "a1");
    assert_eq!(h.get("b.example.com", "/").body, "b1");
    assert_eq!(h.get("c.example.com", "/").status, 404);

    // The other domains keep applying (with c's file live every reload
    // would fail).
    let a_cfg = format!(
        r#"{{"listen":[{{"port":{}}}],"headers":{{"X-Version":"one"}}}}"#,
        h.http_port
    );
    h.put_config("a.example.com", &a_cfg);
    let a_rev = mod_revision(
        &h,
        &leengine_store::keys::slb_domain_config(support::GROUP, "a.example.com"),
    );
    h.wait_status_for(long, "applying a beside the refused c", |s| {
        never_claims_c(s);
        s.applied_revision >= a_rev
            && !s.errors.contains_key("a.example.com")
            && s.errors.contains_key("c.example.com")
    });
    assert!(h
        .get("a.example.com", "/")
        .headers
        .contains("X-Version: one"));
    assert_eq!(h.get("b.example.com", "/").body, "b1");

    // Once the port is free the periodic retry brings c in.
    drop(held);
    h.wait_status_for(long, "applying c once its port is free", |s| {
        s.errors.is_empty() && s.domains.contains(&"c.example.com".to_string())
    });
    h.wait_body("c.example.com", "c1");
}

#[test]
fn the_admin_endpoint_needs_the_secret_and_keeps_its_port() {
    let etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    let (a1, a2) = (h.backend("a1"), h.backend("a2"));
    h.put_domain("a.example.com", &h.domain_config(), &upstream_of(&[&a1]));
    h.start_agent();
    h.wait_status("serving a", |s| s.domains.len() == 1);
    h.start_nginx();
    h.wait_body("a.example.com", "a1");

    // Any local process can reach the port; without the secret it changes
    // nothing and reads nothing.
    let secret = h.admin_secret();
    let mut near = secret.clone().into_bytes();
    near[63] = if near[63] == b'0' { b'1' } else { b'0' };
    let near = format!(
        "X-Leengine-Admin-Secret: {}",
        String::from_utf8(near).expect("hex")
    );
    let redirect = format!("@a.example.com rr -\n{} 1 1 10 0\n", a2.addr);
    for headers in [
        vec![],
        vec!["X-Leengine-Admin-Secret: "],
        vec![near.as_str()],
    ] {
        for (method, path) in [
            ("POST", "/leengine/upstreams?mode=replace&gen=evil"),
            ("POST", "/leengine/upstreams?mode=merge"),
            ("GET", "/leengine/upstreams"),
            ("GET", "/leengine/upstreams?only=generation"),
        ] {
            let r = support::request(h.admin_port, method, "127.0.0.1", path, &headers, &redirect);
            assert_eq!(r.status, 403, "{method} {path} with {headers:?}: {r:?}");
            assert!(!r.body.contains(&a1.addr.to_string()), "{r:?}");
        }
    }
    for _ in 0..10 {
        assert_eq!(h.get("a.example.com", "/").body, "a1");
    }
    let state = h.admin("GET", "/leengine/upstreams", "");
    assert_eq!(state.status, 200, "{state:?}");
    assert!(state.body.contains(&a1.addr.to_string()), "{state:?}");
    assert!(!state.body.contains(&a2.addr.to_string()), "{state:?}");
    assert!(!state.body.contains("evil"), "{state:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(h.path("state/admin.secret"))
        .expect("secret file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the secret is the agent's alone: {mode:o}");

    // A domain on the admin port is refused; the admin server keeps
    // answering and peers keep being pushed.
    let on_admin = format!(
        r#"{{"listen":[{{"port":{},"address":"127.0.0.1"}}]}}"#,
        h.admin_port
    );
    h.put_domain("evil.example.com", &on_admin, &upstream_of(&[&a2]));
    let st = h.wait_status("refusing the domain on the admin port", |s| {
        s.errors.contains_key("evil.example.com")
    });
    let err = &st.errors["evil.example.com"];
    assert_eq!(err.kind, "invalid");
    assert!(err.message.contains("admin port"), "{err:?}");
    assert!(!h.path("conf/domains/evil.example.com.conf").exists());
    h.put_upstream("a.example.com", &upstream_of(&[&a2]));
    h.wait_body("a.example.com", "a2");
    let header = format!("X-Leengine-Admin-Secret: {secret}");
    let r = support::request(
        h.admin_port,
        "GET",
        "evil.example.com",
        "/leengine/upstreams?only=gen",
        &[&header],
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn a_full_shared_dict_refuses_and_reports_instead_of_evicting() {
    let etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    // Server blocks per domain: every config change is a reload.
    h.routing = "generated";
    // 32k holds about ten domains of the peers below.
    h.shared_dict_size = Some("32k");
    let a1 = h.backend("a1");
    let domains: Vec<String> = (0..24).map(|i| format!("d{i:02}.example.com")).collect();
    for d in &domains {
        h.put_config(d, &h.domain_config());
    }
    h.start_agent();
    h.wait_status("serving every domain", |s| s.domains.len() == domains.len());
    h.start_nginx();
    // One live peer plus 40 listed as down: about 1 KB per domain.
    let peers = |i: usize| {
        let mut servers = vec![format!(r#"{{"address":"{}"}}"#, a1.addr)];
        servers.extend((0..40).map(|j| {
            format!(
                r#"{{"address":"127.0.0.2:{}","down":true}}"#,
                10000 + i * 100 + j
            )
        }));
        format!(r#"{{"servers":[{}]}}"#, servers.join(","))
    };
    let mut full_at = None;
    for (i, d) in domains.iter().enumerate() {
        h.put_upstream(d, &peers(i));
        let key = leengine_store::keys::slb_domain_upstream(support::GROUP, d);
        let rev = mod_revision(&h, &key);
        let st = h.wait_status("handling the write", |s| s.applied_revision >= rev);
        if let Some(e) = st.errors.get(d) {
            assert_eq!(e.kind, "shared-dict-full", "{st:?}");
            assert_eq!(e.revision, rev);
            assert!(st.shared_dict_refusals >= 1, "{st:?}");
            full_at = Some(i);
            break;
        }
        h.wait_body(d, "a1");
    }
    let full_at = full_at.expect("the 32k dict never refused a write: it evicts instead");
    assert!(full_at > 0, "not even one domain fitted");
    // Nothing was evicted: every domain stored before still has its peers.
    for d in &domains[..full_at] {
        let r = h.get(d, "/");
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "a1"),
            "{d} lost its peers"
        );
    }
    assert_eq!(h.get(&domains[full_at], "/").status, 502);
    assert!(h.agent_log().contains("nginx refused pushed items"));

    // Room again (two domains drop their peers): the retry stores it.
    let mut c = h.etcd.clone();
    for d in &domains[..2] {
        let key = leengine_store::keys::slb_domain_upstream(support::GROUP, d);
        h.rt.block_on(c.delete(key, None)).expect("delete");
    }
    h.wait_status("storing the refused peers", |s| s.errors.is_empty());
    h.wait_body(&domains[full_at], "a1");
}
