//! `check` and `release`: leaked = allocated in etcd but alive nowhere.
//! A release always takes a second look (a fresh check) and frees an
//! address only if the very allocation judged leaked is still in place.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{bail, Context};
use leengine_ipam::{Attachment, CheckOptions, CheckReport, IpState, Ipam, Leak};
use serde::Serialize;

use crate::cli::{Liveness, Output, ReleaseArgs};
use crate::table::{age, now, opt, time, Table};
use crate::{print_json, Done, Etcd};
use leengine_apiserver::{self as apiserver, ApiError};

pub async fn check(etcd: &Etcd, args: &Liveness, out: Output) -> anyhow::Result<Done> {
    let ipam = etcd.ipam().await?;
    let report = run_check(&ipam, args).await?;
    match out {
        Output::Json => print_json(&report)?,
        Output::Table => print!("{}", report_text(&report)),
    }
    Ok(if report.leaked.is_empty() {
        Done::Ok
    } else {
        Done::Attention
    })
}

async fn run_check(ipam: &Ipam, args: &Liveness) -> anyhow::Result<CheckReport> {
    let api = if args.no_apiserver {
        None
    } else {
        let client = apiserver::client(args.kubeconfig.as_deref())
            .await
            .map_err(|e| {
                let hint = matches!(e, ApiError::NoConfig(_));
                let e = anyhow::Error::new(e);
                if hint {
                    e.context("cannot ask the apiserver (use --kubeconfig or --no-apiserver)")
                } else {
                    e
                }
            })?;
        Some(apiserver::view(client).await?)
    };
    let opts = CheckOptions {
        now: now(),
        grace_secs: args.grace.as_secs(),
        max_report_age_secs: args.max_report_age.as_secs(),
    };
    Ok(ipam.check(api, &opts).await?)
}

fn report_text(r: &CheckReport) -> String {
    let mut s = format!(
        "{} allocated: {} alive, {} in grace ({}), {} unknown, {} leaked{}\n",
        r.allocated,
        r.alive,
        r.in_grace,
        age(r.grace_secs),
        r.unknown.len(),
        r.leaked.len(),
        if r.apiserver_consulted {
            ""
        } else {
            " (apiserver not consulted)"
        }
    );
    if !r.leaked.is_empty() {
        let mut t = Table::new(&["IP", "NODE", "CONTAINER", "IFNAME", "POD", "AGE", "REASON"]);
        for l in &r.leaked {
            let a = &l.attachment;
            t.row(vec![
                a.ip.to_string(),
                a.node.clone(),
                a.container_id.clone(),
                a.ifname.clone(),
                opt(a.pod().as_deref()),
                age(l.age_secs),
                serde_json::to_value(l.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
            ]);
        }
        s.push('\n');
        s.push_str(&t.render());
    }
    s
}

/// What to release: an address as given, or a leak as a report recorded it.
enum Target {
    Ip(Ipv4Addr),
    Reported(Box<Attachment>),
}

impl Target {
    fn ip(&self) -> Ipv4Addr {
        match self {
            Target::Ip(ip) => *ip,
            Target::Reported(a) => a.ip,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    ip: Ipv4Addr,
    released: bool,
    detail: String,
}

pub async fn release(etcd: &Etcd, args: &ReleaseArgs, out: Output) -> anyhow::Result<Done> {
    let targets = targets(etcd, args)?;
    let ipam = etcd.ipam().await?;
    let pools = ipam.list_pools().await?;
    for t in &targets {
        if !pools.iter().any(|p| p.cidr.contains(&t.ip())) {
            bail!("IP {} is not in any pool", t.ip());
        }
    }
    let fresh = run_check(&ipam, &args.liveness).await?;
    let leaked: BTreeMap<Ipv4Addr, &Leak> =
        fresh.leaked.iter().map(|l| (l.attachment.ip, l)).collect();
    let mut outcomes = Vec::new();
    for t in &targets {
        let ip = t.ip();
        let outcome = match (t, leaked.get(&ip)) {
            (Target::Ip(_), Some(l)) => free(&ipam, &l.attachment).await?,
            (Target::Reported(r), Some(l)) if same(r, &l.attachment) => free(&ipam, r).await?,
            (Target::Reported(_), Some(_)) => skip(ip, "re-assigned since the report"),
            (_, None) => skip(ip, &why_not_leaked(&ipam, &fresh, ip).await?),
        };
        outcomes.push(outcome);
    }
    match out {
        Output::Json => print_json(&outcomes)?,
        Output::Table => {
            let mut t = Table::new(&["IP", "RESULT", "DETAIL"]);
            for o in &outcomes {
                let result = if o.released { "released" } else { "skipped" };
                t.row(vec![o.ip.to_string(), result.into(), o.detail.clone()]);
            }
            print!("{}", t.render());
        }
    }
    Ok(if outcomes.iter().all(|o| o.released) {
        Done::Ok
    } else {
        Done::Attention
    })
}

/// Reads and vets the targets before anything touches etcd.
fn targets(etcd: &Etcd, args: &ReleaseArgs) -> anyhow::Result<Vec<Target>> {
    let Some(path) = &args.from_report else {
        let unique: BTreeSet<Ipv4Addr> = args.ips.iter().copied().collect();
        return Ok(unique.into_iter().map(Target::Ip).collect());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read report {}", path.display()))?;
    let report: CheckReport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a `cnictl check -o json` report", path.display()))?;
    let prefix = etcd.prefix();
    if report.prefix != prefix {
        bail!(
            "report {} was made for prefix {} but this is prefix {prefix}",
            path.display(),
            report.prefix
        );
    }
    Ok(report
        .leaked
        .into_iter()
        .map(|l| Target::Reported(Box::new(l.attachment)))
        .collect())
}

fn same(a: &Attachment, b: &Attachment) -> bool {
    a.ip == b.ip && a.seq == b.seq && a.container_id == b.container_id && a.ifname == b.ifname
}

async fn free(ipam: &Ipam, a: &Attachment) -> anyhow::Result<Outcome> {
    Ok(if ipam.release_if_unchanged(a).await? {
        Outcome {
            ip: a.ip,
            released: true,
            detail: format!(
                "was container {} {} on node {} since {}",
                a.container_id,
                a.ifname,
                a.node,
                time(a.since)
            ),
        }
    } else {
        skip(a.ip, "changed while releasing")
    })
}

fn skip(ip: Ipv4Addr, why: &str) -> Outcome {
    Outcome {
        ip,
        released: false,
        detail: why.to_string(),
    }
}

async fn why_not_leaked(ipam: &Ipam, fresh: &CheckReport, ip: Ipv4Addr) -> anyhow::Result<String> {
    if fresh.unknown.iter().any(|a| a.ip == ip) {
        return Ok("liveness unknown (no apiserver, no fresh node report)".into());
    }
    Ok(match ipam.ip_info(ip).await?.state {
        IpState::Allocated { .. } => "not leaked (alive or within the grace period)".into(),
        _ => "not allocated".into(),
    })
}
