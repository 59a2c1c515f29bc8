//! Cost of the lua request counters (run by hack/bench/lb-metrics.sh): two
//! agent-driven nginx hosts on the same 2 loopback backends, one with
//! `--lb-metrics true`, one with `false`; wrk -t2 -c50 alternates between
//! them in rounds (each round measures both back to back, the order
//! alternating, so drift in machine load hits both), same run. Prints the
//! throughput of each, the median of the rounds' on/off ratios and their
//! spread (target >= 97 %).

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use leengine_testenv as te;
use support::{get, upstream_of, Host};

const DOMAIN: &str = "bench.example.com";

fn host(etcd: &te::Etcd, on: bool) -> Host {
    let mut h = Host::new(etcd);
    h.extra_args = vec!["--lb-metrics".into(), on.to_string()];
    h
}

fn main() {
    let secs: u64 = std::env::var("LB_METRICS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let rounds: u32 = std::env::var("LB_METRICS_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let seg = (secs / u64::from(rounds)).max(1);
    // Two etcds: both hosts serve group g1 under the same host name.
    let (e_on, e_off) = (te::Etcd::start(), te::Etcd::start());
    let mut on = host(&e_on, true);
    let mut off = host(&e_off, false);
    let backends = [on.backend("b1"), on.backend("b2")];
    let up = upstream_of(&backends.iter().collect::<Vec<_>>());
    for h in [&mut on, &mut off] {
        h.put_domain(DOMAIN, &h.domain_config(), &up);
        h.start_agent();
        h.wait_status("serving", |s| s.domains.len() == 1);
        h.start_nginx();
        let port = h.http_port;
        assert!(te::wait_until(Duration::from_secs(10), || get(
            port, DOMAIN, "/"
        )
        .status
            == 200));
    }
    let (mut rps_on, mut rps_off) = (0.0, 0.0);
    let mut ratios = Vec::new();
    for k in 0..rounds {
        // Alternate which goes first.
        let order = if k % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut pair = [0.0; 2];
        for which in order {
            let port = if which { on.http_port } else { off.http_port };
            pair[usize::from(which)] = wrk(port, seg);
        }
        rps_off += pair[0] / f64::from(rounds);
        rps_on += pair[1] / f64::from(rounds);
        ratios.push(100.0 * pair[1] / pair[0]);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let counted = get(on.admin_port, "127.0.0.1", "/leengine/metrics").body;
    let line = counted
        .lines()
        .find(|l| {
            l.starts_with("leengine_lb_requests_total{domain=\"bench.example.com\",class=\"2xx\"}")
        })
        .unwrap_or("none")
        .to_string();
    println!(
        "# lua counters: wrk -t2 -c50, {rounds} rounds of {seg}s per side, order alternating; {} CPUs; load {}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    println!("| lua counters | rps |\n|---|---|");
    println!("| on | {rps_on:.0} |\n| off | {rps_off:.0} |");
    println!(
        "\nratio on/off: mean rps {:.1}%, median of rounds {median:.1}% (rounds {:.1}%..{:.1}%; target >= 97%)",
        100.0 * rps_on / rps_off,
        ratios[0],
        ratios[ratios.len() - 1]
    );
    println!("counted by lua on the 'on' host: {line}");
}

/// Requests per second wrk measured.
fn wrk(port: u16, secs: u64) -> f64 {
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c50",
            &format!("-d{secs}s"),
            "-H",
            &format!("Host: {DOMAIN}"),
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk (apt install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("Requests/sec:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
