//! Latency of the calls a CNI ADD/DEL makes, one fresh connection per iteration (as a
//! plugin process would): connect + add_access_port + wait_ofport, then connect +
//! del_port. Driven by hack/bench/ovsdb.sh, which prepares OVS and the veths.
//!
//! usage: ovsdb_bench DB_URL BRIDGE VETH...

use std::time::{Duration, Instant};

use leengine_ovsdb::Client;

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a percentile index: a fraction in [0, 1] of a length"
)]
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<28} n={:<4} p50={:.2}ms p90={:.2}ms p99={:.2}ms",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, bridge, veths @ ..] = args.as_slice() else {
        return Err("usage: ovsdb_bench DB_URL BRIDGE VETH...".into());
    };
    let mut connect_echo = Vec::new();
    let mut add = Vec::new();
    let mut wait = Vec::new();
    let mut del = Vec::new();
    for veth in veths {
        let t = Instant::now();
        let c = Client::connect(url).await?;
        c.echo().await?;
        connect_echo.push(t.elapsed());
        drop(c);

        let t = Instant::now();
        let c = Client::connect(url).await?;
        let ids = [("bench".to_string(), veth.clone())].into_iter().collect();
        c.add_access_port(bridge, veth, Some(100), &ids).await?;
        let added = t.elapsed();
        c.wait_ofport(veth, Duration::from_secs(10)).await?;
        add.push(t.elapsed());
        wait.push(t.elapsed() - added);
        drop(c);

        let t = Instant::now();
        let c = Client::connect(url).await?;
        if !c.del_port(bridge, veth).await? {
            return Err(format!("{veth} was not removed").into());
        }
        del.push(t.elapsed());
    }
    report("connect+echo", connect_echo);
    report("connect+add+wait_ofport", add);
    report("  of which wait_ofport", wait);
    report("connect+del_port", del);
    Ok(())
}
