//! SLB benchmark (run by hack/bench/slb.sh): real etcd, nginx+lua driven by
//! the agent, 4 loopback backends, wrk as the load generator; the same
//! changes applied "the confd way" (render a static upstream, nginx -t,
//! nginx -s reload) on a second nginx, side by side.
//!
//! (a) 30 s of load with 100 upstream swaps: errors and throughput against
//!     the same load without changes;
//! (b) etcd put -> first response from the new backend, p50/p99 over 100
//!     changes.

#[path = "common.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{cpu_ticks, percentiles, wrk, WrkResult};
use leengine_testenv as te;
use support::{get, upstream_of, Backend, Host};

const DOMAIN: &str = "bench.example.com";
const SWAPS: usize = 100;
const SEGMENTS: usize = 6;

fn main() {
    let secs: u64 = std::env::var("SLB_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    let backends: Vec<Backend> = (1..=4).map(|i| h.backend(&format!("b{i}"))).collect();
    let sets: Vec<Vec<&Backend>> = vec![
        vec![&backends[0], &backends[1]],
        vec![&backends[2], &backends[3]],
        vec![&backends[0], &backends[2]],
        vec![&backends[1], &backends[3]],
    ];
    h.put_domain(DOMAIN, &h.domain_config(), &upstream_of(&sets[0]));
    h.start_agent();
    h.wait_status("serving", |s| s.domains.len() == 1);
    h.start_nginx();
    assert!(te::wait_until(Duration::from_secs(10), || get(
        h.http_port,
        DOMAIN,
        "/"
    )
    .status
        == 200));

    let confd = Confd::start(&backends);
    let confd_key = leengine_store::keys::slb_domain_upstream("confd", DOMAIN);
    let watcher = confd.watch(&h, confd_key.clone());
    std::thread::sleep(Duration::from_millis(500));
    h.put(&confd_key, &upstream_of(&sets[0]));
    assert!(te::wait_until(Duration::from_secs(10), || get(
        confd.port, DOMAIN, "/"
    )
    .status
        == 200));

    let agent_key = leengine_store::keys::slb_domain_upstream(support::GROUP, DOMAIN);
    // The machine is shared with other work whose load drifts: no-change
    // and swap segments alternate, so both see the same background.
    let seg = (secs / SEGMENTS as u64).max(1);

    println!(
        "# SLB benchmark: wrk -t2 -c50, {SEGMENTS} x {seg}s without changes alternating with \
         {SEGMENTS} x {seg}s carrying {SWAPS} swaps in total; 4 loopback backends"
    );
    let mut rows = Vec::new();
    for (name, port, key) in [
        ("agent (lua, no reload)", h.http_port, &agent_key),
        ("confd way (render+reload)", confd.port, &confd_key),
    ] {
        let mut base = WrkResult {
            rps: 0.0,
            errors: 0,
        };
        let mut swapped = WrkResult {
            rps: 0.0,
            errors: 0,
        };
        let agent_cpu = cpu_ticks(h.agent.as_ref().map(std::process::Child::id));
        let mut done = 0;
        for k in 0..SEGMENTS {
            let b = wrk(port, DOMAIN, seg, || {});
            let n = SWAPS / SEGMENTS + usize::from(k < SWAPS % SEGMENTS);
            let period = Duration::from_secs(seg) / (u32::try_from(n).expect("at most SWAPS") + 1);
            let w = wrk(port, DOMAIN, seg, || {
                for _ in 0..n {
                    std::thread::sleep(period);
                    done += 1;
                    h.put(key, &upstream_of(&sets[done % sets.len()]));
                }
            });
            base.rps += b.rps / SEGMENTS as f64;
            base.errors += b.errors;
            swapped.rps += w.rps / SEGMENTS as f64;
            swapped.errors += w.errors;
        }
        assert_eq!(done, SWAPS);
        let agent_cpu = cpu_ticks(h.agent.as_ref().map(std::process::Child::id)) - agent_cpu;
        println!(
            "{name}: load average {}; agent CPU over the {} s {} ticks",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim(),
            2 * seg * SEGMENTS as u64,
            agent_cpu
        );
        h.put(key, &upstream_of(&sets[0]));
        std::thread::sleep(Duration::from_secs(1));
        let lat = latencies(&h, port, key, &backends);
        rows.push((name, base, swapped, lat));
    }
    println!();
    println!("| way | rps no changes | rps with {SWAPS} swaps | ratio | errors (non-2xx + socket) during swaps | put->new backend p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, base, swapped, lat) in &rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.1}% | {} (no-change segments: {}) | {:.1} ms | {:.1} ms | {:.1} ms |",
            base.rps,
            swapped.rps,
            100.0 * swapped.rps / base.rps,
            swapped.errors,
            base.errors,
            lat.0,
            lat.1,
            lat.2
        );
    }
    let st = h.status().expect("status");
    println!("\nagent reloads during the whole run: {}", st.reloads);
    drop(watcher);
}

/// p50, p99, max in ms of etcd put -> first answer from the new backend.
fn latencies(h: &Host, port: u16, key: &str, backends: &[Backend]) -> (f64, f64, f64) {
    let mut samples = Vec::with_capacity(SWAPS);
    let mut current = get(port, DOMAIN, "/").body;
    for i in 0..SWAPS {
        let next = backends
            .iter()
            .cycle()
            .skip(i)
            .find(|b| b.id != current)
            .expect("another backend");
        let t0 = Instant::now();
        h.put(key, &upstream_of(&[next]));
        loop {
            if get(port, DOMAIN, "/").body == next.id {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{} never served",
                next.id
            );
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        current = next.id.clone();
        std::thread::sleep(Duration::from_millis(20));
    }
    percentiles(samples)
}

/// A plain nginx (no lua) whose upstream is rendered from etcd and applied
/// by `nginx -t` + `nginx -s reload`, as confd does.
struct Confd {
    dir: tempfile::TempDir,
    port: u16,
    nginx: std::process::Child,
}

impl Confd {
    fn start(backends: &[Backend]) -> Confd {
        let dir = tempfile::Builder::new()
            .prefix("confd-")
            .tempdir_in(te::run_dir())
            .expect("dir");
        let port = te::free_port();
        let d = dir.path().display().to_string();
        std::fs::write(
            dir.path().join("upstream.conf"),
            render_static(&[backends[0].addr]),
        )
        .expect("write");
        let conf = format!(
            "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  proxy_http_version 1.1;\n  include {d}/upstream.conf;\n\
               server {{\n    listen {port};\n    server_name {DOMAIN};\n    location / {{\n      proxy_set_header Connection \"\";\n      proxy_pass http://confd_up;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("write");
        let nginx = Command::new("nginx")
            .args([
                "-p",
                &d,
                "-c",
                &format!("{d}/nginx.conf"),
                "-g",
                "daemon off;",
            ])
            .spawn()
            .expect("nginx");
        Confd { dir, port, nginx }
    }

    /// The confd loop: watch the key, render, test, reload.
    fn watch(&self, h: &Host, key: String) -> tokio::task::JoinHandle<()> {
        let mut client = h.etcd.clone();
        let d = self.dir.path().to_path_buf();
        h.rt.spawn(async move {
            let mut stream = client.watch(key, None).await.expect("watch");
            while let Ok(Some(resp)) = stream.message().await {
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Ok(up) = leengine_slb::Upstream::parse(kv.value()) else {
                        continue;
                    };
                    let addrs: Vec<_> = up.servers.iter().map(|s| s.address).collect();
                    std::fs::write(d.join("upstream.conf"), render_static(&addrs)).expect("write");
                    let conf = d.join("nginx.conf");
                    let ok = tokio::process::Command::new("nginx")
                        .arg("-t")
                        .arg("-q")
                        .arg("-p")
                        .arg(&d)
                        .arg("-c")
                        .arg(&conf)
                        .status()
                        .await
                        .is_ok_and(|s| s.success());
                    if ok {
                        let _ = tokio::process::Command::new("nginx")
                            .arg("-p")
                            .arg(&d)
                            .arg("-c")
                            .arg(&conf)
                            .args(["-s", "reload"])
                            .stderr(std::process::Stdio::null())
                            .status()
                            .await;
                    }
                }
            }
        })
    }
}

impl Drop for Confd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; SIGQUIT = graceful shutdown of master and workers.
        unsafe { libc::kill(support::pid_t(self.nginx.id()), libc::SIGQUIT) };
        let _ = self.nginx.wait();
    }
}

fn render_static(addrs: &[std::net::SocketAddr]) -> String {
    let servers: String = addrs.iter().map(|a| format!("  server {a};\n")).collect();
    format!("upstream confd_up {{\n{servers}  keepalive 64;\n}}\n")
}
