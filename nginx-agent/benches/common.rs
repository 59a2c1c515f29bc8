//! Measuring helpers of the SLB benchmarks.

#![allow(dead_code)] // each benchmark uses a different part

use std::process::Command;

#[derive(Debug)]
pub struct WrkResult {
    pub rps: f64,
    pub errors: u64,
}

/// Runs wrk for `secs` against `host` while `during` runs, returns
/// throughput and errors.
pub fn wrk(port: u16, host: &str, secs: u64, during: impl FnOnce()) -> WrkResult {
    let child = Command::new("wrk")
        .args([
            "-t2",
            "-c50",
            &format!("-d{secs}s"),
            "-H",
            &format!("Host: {host}"),
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wrk (apt install wrk)");
    during();
    let out = child.wait_with_output().expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let num_after = |label: &str| -> Option<f64> {
        let rest = text.split(label).nth(1)?;
        rest.split_whitespace()
            .next()?
            .trim_end_matches(',')
            .parse()
            .ok()
    };
    let rps = num_after("Requests/sec:").unwrap_or(0.0);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a count wrk printed as a number"
    )]
    let non2xx = num_after("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    let socket: u64 = ["connect ", "read ", "write ", "timeout "]
        .iter()
        .filter_map(|l| {
            text.split("Socket errors:")
                .nth(1)
                .and_then(|s| s.split(l).nth(1))
        })
        .filter_map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    WrkResult {
        rps,
        errors: non2xx + socket,
    }
}

/// utime + stime of a process in clock ticks (0 if unknown).
pub fn cpu_ticks(pid: Option<u32>) -> u64 {
    let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
    else {
        return 0;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |r| r.1)
        .split_whitespace()
        .collect();
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

/// p50, p99 and max of samples (at least one).
pub fn percentiles(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a percentile index: a fraction in [0, 1] of a length"
    )]
    let pct = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    (pct(0.50), pct(0.99), samples[samples.len() - 1])
}
