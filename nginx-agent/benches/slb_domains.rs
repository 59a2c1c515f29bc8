//! Thousands of domains in one group (issue 22), run by
//! hack/bench/slb-domains.sh: the agent with generated server blocks
//! (`--routing generated`) and with lua routing (`--routing lua`), in the
//! same run, on real etcd, nginx+lua and wrk. Per domain count and way:
//! agent initial sync, nginx start until every domain answers, a domain's
//! config change (one header) put -> visible p50/p99, upstream swap put ->
//! new backend p50/p99, wrk on one domain during config changes (errors,
//! throughput against the same load without changes, in alternating
//! rounds, with the CPU time of the agent, nginx, etcd and this process
//! on each side), reloads, RSS; and,
//! for lua routing, a change nginx cannot make at run time (a domain moved
//! to a new listen port and back: a reload each way) put -> visible.

#[path = "common.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use common::{percentiles, wrk};
use leengine_testenv as te;
use support::{upstream_of, Backend, Host};

const HOT: &str = "d0.example.com";

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let counts: Vec<usize> = std::env::var("SLB_DOMAINS")
        .unwrap_or_else(|_| "2000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let changes = env_num("SLB_CHANGES", 100);
    // A generated-config change costs seconds at these counts: fewer samples.
    let gen_changes = env_num("SLB_GENERATED_CHANGES", 10);
    let secs = u64::try_from(env_num("SLB_WRK_SECS", 20)).unwrap_or(20);
    let etcd = te::Etcd::start();
    println!("# SLB domains benchmark: {counts:?} domains, 2 peers each of 4 loopback backends, one listen port");
    println!("| domains | way | agent sync | nginx start -> all served | config change p50 / p99 / max | samples | upstream swap p50 / p99 | wrk rps no change / with changes | ratio | wrk errors | reloads | nginx RSS | agent RSS | hash warnings | listen change (reload) p50 / p99 / max | CPU s no change / with changes: agent, nginx, etcd, bench, rest (wrk, kernel) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // SLB_WAYS=lua skips the generated side (minutes per row at 10,000).
    let ways = std::env::var("SLB_WAYS").unwrap_or_else(|_| "lua,generated".into());
    for &n in &counts {
        for (way, samples) in [("lua", changes), ("generated", gen_changes)] {
            if !ways.split(',').any(|w| w.trim() == way) {
                continue;
            }
            let row = run(&etcd, n, way, samples, secs);
            println!("{row}");
        }
    }
}

fn group(n: usize, way: &str) -> &'static str {
    Box::leak(format!("{way}-{n}").into_boxed_str())
}

fn domain(i: usize) -> String {
    format!("d{i}.example.com")
}

fn run(etcd: &te::Etcd, n: usize, way: &'static str, samples: usize, secs: u64) -> String {
    let mut h = Host::in_group(etcd, group(n, way));
    h.routing = way;
    h.debounce = "20ms";
    h.shared_dict_size = Some("256m");
    let backends: Vec<Backend> = (1..=4).map(|i| h.backend(&format!("b{i}"))).collect();
    let port = h.http_port;
    let cfg = |v: usize| format!(r#"{{"listen":[{{"port":{port}}}],"headers":{{"X-V":"{v}"}}}}"#);
    let pair = |i: usize| upstream_of(&[&backends[i % 4], &backends[(i + 1) % 4]]);
    put_all(&h, n, &cfg(0), &pair);

    let t0 = Instant::now();
    h.start_agent();
    // Synced: every domain's files written (nginx is not running yet, so
    // the pushes wait for it; they are part of "nginx start -> all served").
    h.wait_status_for(Duration::from_secs(600), "synced", |s| s.domains.len() == n);
    let sync = t0.elapsed();
    let t1 = Instant::now();
    h.start_nginx();
    let last = domain(n - 1);
    assert!(
        te::wait_until(Duration::from_secs(600), || {
            h.get(&last, "/").status == 200 && h.get(HOT, "/").status == 200
        }),
        "never served:\n{}",
        h.agent_log()
    );
    let start = t1.elapsed();
    let reloads0 = h.status().map_or(0, |s| s.reloads);

    // Config changes: one header of a domain spread over the set.
    let mut lat = Vec::new();
    for k in 0..samples {
        let d = domain((k * 7919) % n);
        let v = k + 1;
        let t = Instant::now();
        h.put_config(&d, &cfg(v));
        let want = format!("X-V: {v}");
        while !h.get(&d, "/").headers.contains(&want) {
            assert!(t.elapsed() < Duration::from_secs(120), "{d} never changed");
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (c50, c99, cmax) = percentiles(lat);

    // Upstream swaps: one backend alone, then another.
    let mut lat = Vec::new();
    for k in 0..changes_for_swaps(samples) {
        let d = domain((k * 104_729 + 1) % n);
        let b = &backends[k % 4];
        let t = Instant::now();
        h.put_upstream(&d, &upstream_of(&[b]));
        while h.get(&d, "/").body != b.id {
            assert!(t.elapsed() < Duration::from_secs(60), "{d} never swapped");
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (u50, u99, _) = percentiles(lat);

    // Throughput on the hot domain: rounds without changes alternating
    // with rounds during config changes to other domains and to the hot
    // one itself, so a drift of the machine's load hits both sides alike.
    let rounds = env_num("SLB_WRK_ROUNDS", 6).max(1);
    let round_secs = (secs / u64::try_from(rounds).unwrap_or(1)).max(2);
    let per_round = samples.div_ceil(rounds);
    let period = Duration::from_secs(round_secs) / u32::try_from(per_round + 1).unwrap_or(1);
    let (mut base, mut during) = (Vec::new(), Vec::new());
    let (mut cpu_base, mut cpu_during) = (Cpu::default(), Cpu::default());
    let mut k = 0;
    for _ in 0..rounds {
        let c0 = Cpu::now(&h);
        base.push(wrk(h.http_port, HOT, round_secs, || {}));
        let c1 = Cpu::now(&h);
        during.push(wrk(h.http_port, HOT, round_secs, || {
            for _ in 0..per_round {
                std::thread::sleep(period);
                let d = if k % 10 == 0 { 0 } else { (k * 31) % n };
                h.put_config(&domain(d), &cfg(1000 + k));
                k += 1;
            }
        }));
        let c2 = Cpu::now(&h);
        cpu_base.add(c0, c1);
        cpu_during.add(c1, c2);
    }
    let mean = |v: &[common::WrkResult]| v.iter().map(|w| w.rps).sum::<f64>() / v.len() as f64;
    let errors = |v: &[common::WrkResult]| v.iter().map(|w| w.errors).sum::<u64>();
    let mut ratios: Vec<f64> = base
        .iter()
        .zip(&during)
        .map(|(b, d)| 100.0 * d.rps / b.rps)
        .collect();
    eprintln!("{n} {way}: round ratios {ratios:.1?}");
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let st = h.status().expect("status");
    let reloads = st.reloads - reloads0;
    let nginx_rss = h.nginx.as_ref().map_or(0, |c| {
        rss_kb(c.id())
            + te::nginx_worker_pids(c.id())
                .into_iter()
                .map(rss_kb)
                .sum::<u64>()
    });
    let agent_rss = h.agent.as_ref().map_or(0, |c| rss_kb(c.id()));
    let hash_warnings = std::fs::read_to_string(h.path("logs/error.log"))
        .unwrap_or_default()
        .matches("could not build optimal")
        .count();
    let listen = if way == "lua" {
        let (l50, l99, lmax) = listen_changes(&h, n, port);
        format!("{l50:.0} / {l99:.0} / {lmax:.0} ms")
    } else {
        "— (every change reloads)".into()
    };
    format!(
        "| {n} | {way} | {:.2} s | {:.2} s | {c50:.1} / {c99:.1} / {cmax:.1} ms | {samples} | {u50:.1} / {u99:.1} ms | {:.0} / {:.0} | {:.1}% (median of {rounds} rounds {median:.1}%) | {} (no-change: {}) | {reloads} | {} MB | {} MB | {hash_warnings} | {listen} | {cpu_base} / {cpu_during} |",
        sync.as_secs_f64(),
        start.as_secs_f64(),
        mean(&base),
        mean(&during),
        100.0 * mean(&during) / mean(&base),
        errors(&during),
        errors(&base),
        nginx_rss / 1024,
        agent_rss / 1024,
    )
}

/// A domain moved to a port no other domain listens on, then back: each
/// move is a new (or a dropped) listen socket, so each reloads nginx. Put
/// -> the domain answers with the new header on its new port.
fn listen_changes(h: &Host, n: usize, port: u16) -> (f64, f64, f64) {
    let samples = env_num("SLB_LISTEN_CHANGES", 10);
    let extra = te::free_port();
    let mut lat = Vec::new();
    for k in 0..samples {
        let d = domain((k * 613 + 3) % n);
        for (to, v) in [(extra, 2 * k + 5000), (port, 2 * k + 5001)] {
            let cfg = format!(r#"{{"listen":[{{"port":{to}}}],"headers":{{"X-V":"{v}"}}}}"#);
            let want = format!("X-V: {v}");
            let t = Instant::now();
            h.put_config(&d, &cfg);
            while !support::get(to, &d, "/").headers.contains(&want) {
                assert!(
                    t.elapsed() < Duration::from_secs(120),
                    "{d} never moved to {to}"
                );
            }
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    percentiles(lat)
}

/// Swaps never reload in either way: as many as the config changes, at least 20.
fn changes_for_swaps(samples: usize) -> usize {
    samples.max(20)
}

/// Puts every domain's two keys, in transactions of 64 puts.
fn put_all(h: &Host, n: usize, cfg: &str, pair: &dyn Fn(usize) -> String) {
    let group = h.group;
    let mut c = h.etcd.clone();
    h.rt.block_on(async {
        for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .flat_map(|&i| {
                    let d = domain(i);
                    [
                        etcd_client::TxnOp::put(
                            leengine_store::keys::slb_domain_config(group, &d),
                            cfg,
                            None,
                        ),
                        etcd_client::TxnOp::put(
                            leengine_store::keys::slb_domain_upstream(group, &d),
                            pair(i),
                            None,
                        ),
                    ]
                })
                .collect();
            c.txn(etcd_client::Txn::new().and_then(ops))
                .await
                .expect("txn");
        }
    });
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time in clock ticks (USER_HZ, 100 on Linux): the agent, nginx
/// (master and workers) and the whole machine's busy time, to see who
/// takes the CPU the changes cost.
#[derive(Default, Clone, Copy)]
struct Cpu {
    agent: u64,
    nginx: u64,
    etcd: u64,
    /// This process: the etcd client making the changes and probing.
    bench: u64,
    machine: u64,
}

impl Cpu {
    fn now(h: &Host) -> Cpu {
        let nginx = h.nginx.as_ref().map_or(0, |c| {
            ticks(c.id())
                + te::nginx_worker_pids(c.id())
                    .into_iter()
                    .map(ticks)
                    .sum::<u64>()
        });
        Cpu {
            agent: h.agent.as_ref().map_or(0, |c| ticks(c.id())),
            nginx,
            etcd: pids_named("etcd").into_iter().map(ticks).sum(),
            bench: ticks(std::process::id()),
            machine: machine_busy(),
        }
    }

    fn add(&mut self, from: Cpu, to: Cpu) {
        self.agent += to.agent.saturating_sub(from.agent);
        self.nginx += to.nginx.saturating_sub(from.nginx);
        self.etcd += to.etcd.saturating_sub(from.etcd);
        self.bench += to.bench.saturating_sub(from.bench);
        self.machine += to.machine.saturating_sub(from.machine);
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |t: u64| t as f64 / 100.0;
        let rest = self
            .machine
            .saturating_sub(self.agent + self.nginx + self.etcd + self.bench);
        write!(
            f,
            "{:.1}, {:.1}, {:.1}, {:.1}, {:.1}",
            s(self.agent),
            s(self.nginx),
            s(self.etcd),
            s(self.bench),
            s(rest)
        )
    }
}

/// utime + stime of a process (fields 14 and 15 of /proc/pid/stat).
fn ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // After the name, field 3 (the state) comes first.
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// All CPUs' busy ticks: every field of /proc/stat's first line but idle
/// and iowait.
fn machine_busy() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(f.iter().sum::<u64>() - f.get(3)? - f.get(4)?)
        })
        .unwrap_or(0)
}

fn pids_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}
