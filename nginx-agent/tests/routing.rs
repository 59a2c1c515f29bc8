//! Lua routing (`--routing lua`) against generated server blocks
//! (`--routing generated`): the same domains and requests through both,
//! compared response by response; then what lua routing adds: changes
//! without reload, refusals isolated and reported, restarts.

mod support;

use std::time::Duration;

use leengine_testenv as te;
use support::{request, upstream_of, Backend, Host, Response};

/// Domain configs; `{P}` and `{Q}` are the host's two listen ports.
const DOMAINS: &[(&str, &str, &str)] = &[
    (
        "a.example.com",
        "A",
        r#"{"serverNames":["a.example.com","*.a.example.com","alias.example.org"],
        "listen":[{"port":{P}}],"headers":{"X-Server":"s-$host"},"clientMaxBodySize":"1k",
        "locations":[
          {"path":"/"},
          {"path":"/api/","proxyHeaders":{"X-Real-IP":"$remote_addr","X-Empty":"$http_x_missing","Host":"backend.internal"},
           "headers":{"X-Loc":"api $uri"},"connectTimeout":"2s","readTimeout":"1s","sendTimeout":"3s","clientMaxBodySize":"2k",
           "rewrites":[{"pattern":"^/api/v1/(.*)$","replacement":"/$1","flag":"break"},
                       {"pattern":"^/api/old/(.*)$","replacement":"/new/$1","flag":"permanent"},
                       {"pattern":"^/api/tmp/(.*)$","replacement":"/tmp/$1?from=api","flag":"redirect"},
                       {"pattern":"^/api/ext/(.*)$","replacement":"https://other.example.com/$1"}]},
          {"path":"/exact","match":"exact","headers":{"X-Exact":"1"}},
          {"path":"^/img/.*\\.(png|jpg)$","match":"regex","headers":{"X-Img":"1"}},
          {"path":"^/img/special","match":"regex","headers":{"X-Img2":"1"}},
          {"path":"/jump","rewrites":[{"pattern":"^/jump/(.*)$","replacement":"/exact","flag":"last"}]},
          {"path":"/chain","rewrites":[{"pattern":"^/chain/a$","replacement":"/chain/b"},
                                       {"pattern":"^/chain/b$","replacement":"/api/v1/chained?c=1"}]},
          {"path":"/loop","rewrites":[{"pattern":"^/loop(.*)$","replacement":"/loop$1","flag":"last"}]},
          {"path":"/noargs","rewrites":[{"pattern":"^/noargs$","replacement":"/plain?","flag":"break"}]},
          {"path":"/slow","readTimeout":"1s"},
          {"path":"/big","clientMaxBodySize":"0"}]}"#,
    ),
    (
        "b.example.com",
        "B",
        r#"{"listen":[{"port":{P}},{"port":{Q},"address":"127.0.0.1"}]}"#,
    ),
    (
        "c.example.com",
        "C",
        r#"{"listen":[{"port":{Q},"address":"127.0.0.1"}],"serverNames":["c.example.com","*.c.example.com"],
        "locations":[{"path":"/","headers":{"X-C":"$request_method $request_uri"},"proxyHeaders":{"X-Fwd":"$proxy_add_x_forwarded_for"}}]}"#,
    ),
    (
        "d.example.com",
        "B",
        r#"{"listen":[{"port":{P}}],"serverNames":["*.deep.a.example.com"]}"#,
    ),
];

struct Req {
    second_port: bool,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [&'static str],
    body: usize,
}

const fn get(host: &'static str, path: &'static str) -> Req {
    Req {
        second_port: false,
        method: "GET",
        host,
        path,
        headers: &[],
        body: 0,
    }
}

const fn post(host: &'static str, path: &'static str, body: usize) -> Req {
    Req {
        method: "POST",
        body,
        ..get(host, path)
    }
}

const fn on_q(r: Req) -> Req {
    Req {
        second_port: true,
        ..r
    }
}

const REQUESTS: &[Req] = &[
    get("a.example.com", "/"),
    get("a.example.com", "/other?x=1"),
    Req {
        headers: &["X-Real-IP: 10.9.9.9", "X-Empty: from-client", "X-Keep: yes"],
        ..get("x.a.example.com", "/api/v1/users?id=7")
    },
    get("alias.example.org", "/api"),
    get("alias.example.org", "/api?k=v"),
    get("a.example.com", "/api/old/thing?q=1"),
    get("a.example.com", "/api/tmp/thing?q=1"),
    get("a.example.com", "/api/ext/x?q=2"),
    get("a.example.com", "/api/plain"),
    get("a.example.com", "/exact"),
    get("a.example.com", "/exact/more"),
    get("a.example.com", "/img/a.png"),
    get("a.example.com", "/img/special.png"),
    get("a.example.com", "/img/special"),
    get("a.example.com", "/jump/x"),
    get("a.example.com", "/chain/a?o=2"),
    get("a.example.com", "/loop/x"),
    get("a.example.com", "/noargs?z=1"),
    get("a.example.com", "/slow"),
    post("a.example.com", "/", 2000),
    post("a.example.com", "/", 900),
    post("a.example.com", "/api/v1/x", 1500),
    post("a.example.com", "/api/v1/x", 3000),
    post("a.example.com", "/big", 5000),
    get("x.deep.a.example.com", "/"),
    get("y.x.deep.a.example.com", "/"),
    get("deep.a.example.com", "/"),
    get("b.example.com", "/"),
    on_q(get("b.example.com", "/")),
    get("c.example.com", "/"),
    Req {
        headers: &["X-Forwarded-For: 10.1.1.1"],
        ..on_q(get("c.example.com", "/q?x=1"))
    },
    on_q(get("www.c.example.com", "/")),
    on_q(get("c.example.com.", "/")),
    on_q(post("c.example.com", "/", 1_500_000)),
    on_q(post("c.example.com", "/", 500_000)),
    on_q(get("a.example.com", "/")),
    get("unknown.example.com", "/"),
    get("A.Example.COM", "/exact"),
    get("a.example.com", "//api//v1/merged"),
    get("a.example.com", "/api/v1/sp%20ace?a=%20"),
];

/// A response with what differs by host only made equal: the date, and
/// the ports in `Location` and in the backend's view of the request.
fn normalized(r: &Response, ports: (u16, u16)) -> (u16, Vec<String>, String) {
    let fix = |s: &str| {
        s.replace(&format!(":{}", ports.0), ":P")
            .replace(&format!(":{}", ports.1), ":Q")
    };
    let mut headers: Vec<String> = r
        .headers
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("Date:"))
        .map(fix)
        .collect();
    headers.sort();
    (r.status, headers, fix(&r.body))
}

fn send(h: &Host, second: u16, r: &Req) -> Response {
    let port = if r.second_port { second } else { h.http_port };
    let body = "x".repeat(r.body);
    request(port, r.method, r.host, r.path, r.headers, &body)
}

fn config_for(h: &Host, second: u16, template: &str) -> String {
    template
        .replace("{P}", &h.http_port.to_string())
        .replace("{Q}", &second.to_string())
}

#[test]
fn lua_routing_answers_every_request_as_generated_server_blocks_do() {
    let etcd = te::Etcd::start();
    let mut generated = Host::in_group(&etcd, "generated");
    generated.routing = "generated";
    let mut lua = Host::in_group(&etcd, "lua");
    let backends: Vec<Backend> = ["A", "B", "C"]
        .iter()
        .map(|id| Backend::echo(&generated.rt, id))
        .collect();
    let backend = |id: &str| backends.iter().find(|b| b.id == id).expect("backend");
    let seconds = [te::free_port(), te::free_port()];
    for (h, second) in [(&mut generated, seconds[0]), (&mut lua, seconds[1])] {
        for (domain, id, template) in DOMAINS {
            h.put_domain(
                domain,
                &config_for(h, second, template),
                &upstream_of(&[backend(id)]),
            );
        }
        h.start_agent();
        h.wait_status("serving every domain", |s| {
            s.domains.len() == DOMAINS.len() && s.errors.is_empty()
        });
        h.start_nginx();
    }
    // The lua host's routes arrive by push: wait until one answers.
    for (h, _) in [(&generated, 0), (&lua, 1)] {
        assert!(
            te::wait_until(Duration::from_secs(15), || h
                .get("b.example.com", "/")
                .status
                == 200),
            "{} never served:\n{}",
            h.routing,
            h.agent_log()
        );
    }
    let mut differences = Vec::new();
    let mut statuses = Vec::new();
    for r in REQUESTS {
        let g = normalized(
            &send(&generated, seconds[0], r),
            (generated.http_port, seconds[0]),
        );
        let l = normalized(&send(&lua, seconds[1], r), (lua.http_port, seconds[1]));
        statuses.push(g.0);
        if g != l {
            differences.push(format!(
                "{} {}{} (second port: {}):\n  generated: {g:?}\n  lua:       {l:?}",
                r.method, r.host, r.path, r.second_port
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} requests differ:\n{}",
        differences.len(),
        REQUESTS.len(),
        differences.join("\n")
    );
    // What both answered is what the configs say (so equal cannot mean
    // equally broken).
    let expect = |i: usize, status: u16| {
        assert_eq!(
            statuses[i], status,
            "{} {}",
            REQUESTS[i].host, REQUESTS[i].path
        )
    };
    expect(0, 200);
    expect(5, 301);
    expect(6, 302);
    expect(16, 500);
    expect(18, 504);
    expect(19, 413);
    expect(22, 413);
    expect(23, 200);
    expect(29, 404);
    expect(33, 413);
    expect(36, 404);
    let users = send(&lua, seconds[1], &REQUESTS[2]);
    assert!(
        users.body.starts_with("A\nGET /users?id=7 HTTP/1.1"),
        "{users:?}"
    );
    assert!(users.body.contains("\nHost: backend.internal"), "{users:?}");
    assert!(users.body.contains("\nX-Real-IP: 127.0.0.1"), "{users:?}");
    assert!(!users.body.contains("X-Empty"), "{users:?}");
    assert!(users.headers.contains("X-Loc: api /users"), "{users:?}");
    assert!(send(&lua, seconds[1], &REQUESTS[24])
        .body
        .starts_with("B\n"));
    assert_eq!(
        lua.status().expect("status").reloads,
        0,
        "lua routing needed no reload"
    );
}

#[test]
fn lua_routing_changes_without_reload_and_isolates_refusals() {
    let etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    let (a, b) = (h.backend("a"), h.backend("b"));
    let port = h.http_port;
    let cfg = |extra: &str| format!(r#"{{"listen":[{{"port":{port}}}]{extra}}}"#);
    h.put_domain("a.example.com", &cfg(""), &upstream_of(&[&a]));
    h.put_domain("b.example.com", &cfg(""), &upstream_of(&[&b]));
    h.start_agent();
    h.wait_status("serving", |s| s.domains.len() == 2);
    h.start_nginx();
    h.wait_body("a.example.com", "a");
    let workers = h.settled_workers(2);

    // Headers, server names and locations change live.
    h.put_config(
        "a.example.com",
        &cfg(r#","serverNames":["a.example.com","new.example.com"],"headers":{"X-V":"2"}"#),
    );
    assert!(te::wait_until(Duration::from_secs(10), || {
        h.get("new.example.com", "/").headers.contains("X-V: 2")
    }));
    h.put_config("a.example.com", &cfg(r#","locations":[{"path":"/only"}]"#));
    assert!(te::wait_until(Duration::from_secs(10), || {
        h.get("a.example.com", "/").status == 404 && h.get("a.example.com", "/only").body == "a"
    }));
    assert_eq!(h.worker_pids(), workers, "no worker restarted");
    assert_eq!(h.status().expect("status").reloads, 0);

    // A regex PCRE refuses and an unknown variable: reported, last good kept,
    // the other domain goes on changing.
    h.put_config(
        "a.example.com",
        &cfg(r#","locations":[{"path":"^/(unclosed","match":"regex"}]"#),
    );
    let s = h.wait_status("bad regex reported", |s| {
        s.errors
            .get("a.example.com")
            .is_some_and(|e| e.kind == "nginx-test")
    });
    assert!(s.errors["a.example.com"].message.contains("pcre"), "{s:?}");
    h.put_config(
        "b.example.com",
        &cfg(r#","headers":{"X-B":"$no_such_variable"}"#),
    );
    let s = h.wait_status("unknown variable reported", |s| {
        s.errors
            .get("b.example.com")
            .is_some_and(|e| e.kind == "invalid")
    });
    assert!(
        s.errors["b.example.com"]
            .message
            .contains("no_such_variable"),
        "{s:?}"
    );
    h.put_config("b.example.com", &cfg(r#","headers":{"X-B":"ok"}"#));
    assert!(te::wait_until(Duration::from_secs(10), || {
        h.get("b.example.com", "/").headers.contains("X-B: ok")
    }));
    assert_eq!(h.get("a.example.com", "/only").body, "a", "last good route");

    // A new listen port is the one thing that reloads.
    let port2 = te::free_port();
    h.put_config(
        "b.example.com",
        &format!(
            r#"{{"listen":[{{"port":{}}},{{"port":{port2}}}]}}"#,
            h.http_port
        ),
    );
    h.wait_status("reloaded for the new port", |s| {
        s.reloads == 1 && s.errors.len() == 1
    });
    assert!(te::wait_until(Duration::from_secs(10), || {
        support::get(port2, "b.example.com", "/").body == "b"
    }));
    let log = std::fs::read_to_string(h.path("logs/error.log")).unwrap_or_default();
    assert!(!log.contains("server_names_hash"), "{log}");

    // Agent gone, nginx restarted without it: the dump restores the routes.
    h.kill_agent();
    h.stop_nginx();
    h.start_nginx();
    let restored = te::wait_until(Duration::from_secs(10), || {
        h.get("a.example.com", "/only").body == "a"
            && h.get("b.example.com", "/").body == "b"
            && support::get(port2, "b.example.com", "/").body == "b"
    });
    assert!(
        restored,
        "not restored: {:?} {:?} {:?}\ndump:\n{}",
        h.get("a.example.com", "/only"),
        h.get("b.example.com", "/"),
        support::get(port2, "b.example.com", "/"),
        std::fs::read_to_string(h.path("state/upstreams.dump")).unwrap_or_default()
    );
    assert_eq!(h.get("a.example.com", "/").status, 404);
}

/// Two hosts of one group on one machine, in both routing modes: each binds
/// the domain's port on its own address (`--listen-address`), so both start
/// on the same port, each serves the domain, and nothing binds the port on
/// the addresses they were not given.
#[test]
fn hosts_of_a_group_share_a_port_on_their_own_addresses() {
    let etcd = te::Etcd::start();
    for (group, routing) in [("shared-lua", "lua"), ("shared-generated", "generated")] {
        let port = te::free_port();
        let mut hosts: Vec<Host> = [("h1", "127.0.0.2"), ("h2", "127.0.0.3")]
            .into_iter()
            .map(|(name, addr)| {
                let mut h = Host::in_group(&etcd, group);
                (h.routing, h.name, h.listen_address, h.http_port) =
                    (routing, name, Some(addr), port);
                h
            })
            .collect();
        let backend = Backend::start(&hosts[0].rt, "A");
        hosts[0].put_domain(
            "a.com",
            &hosts[0].domain_config(),
            &upstream_of(&[&backend]),
        );
        for h in &mut hosts {
            h.start_agent();
            h.wait_status("serving a.com", |s| {
                s.domains.len() == 1 && s.errors.is_empty()
            });
            h.start_nginx();
        }
        for h in &hosts {
            h.wait_body("a.com", "A");
        }
        assert_eq!(
            request(port, "GET", "a.com", "/", &[], "").status,
            0,
            "{routing}: 127.0.0.1:{port} is nobody's"
        );
    }
}
