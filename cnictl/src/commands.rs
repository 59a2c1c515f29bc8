//! `pool`, `block` and `ip` commands.

use leengine_ipam::{AppBinding, BindRequest, Block, Filter, IpInfo, IpState, Pool, PoolUsage};

use crate::cli::{BlockCmd, FilterArgs, IpCmd, Output, PoolCmd};
use crate::table::{now, opt, time, Table};
use crate::{print_json, Done, Etcd};

pub async fn pool(etcd: &Etcd, cmd: PoolCmd, out: Output) -> crate::Result<Done> {
    match cmd {
        PoolCmd::Add {
            name,
            cidr,
            gateway,
            vlan,
            block_size,
            excludes,
        } => {
            let pool = Pool::parse(&name, &cidr, &gateway, vlan, block_size, &excludes)?;
            etcd.ipam().await?.add_pool(&pool).await?;
            match out {
                Output::Json => print_json(&pool)?,
                Output::Table => println!(
                    "pool {} added: {} gateway {} vlan {} ({} blocks of {})",
                    pool.name,
                    pool.cidr,
                    pool.gateway,
                    pool.vlan,
                    pool.block_count(),
                    pool.block_size
                ),
            }
        }
        PoolCmd::List => {
            let usage = etcd.ipam().await?.pool_usage(None).await?;
            match out {
                Output::Json => print_json(&usage)?,
                Output::Table => print!("{}", usage_table(&usage)),
            }
        }
        PoolCmd::Show { name, blocks } => {
            let ipam = etcd.ipam().await?;
            let usage = ipam.pool_usage(Some(&name)).await?.remove(0);
            let list = if blocks {
                let f = Filter {
                    pool: Some(name),
                    node: None,
                };
                Some(ipam.list_blocks(&f).await?)
            } else {
                None
            };
            match out {
                Output::Json => print_json(&serde_json::json!({ "usage": usage, "blocks": list }))?,
                Output::Table => {
                    print!("{}", pool_details(&usage));
                    if let Some(b) = list {
                        println!();
                        print!("{}", blocks_table(&b, &usage.pool));
                    }
                }
            }
        }
        PoolCmd::Bind {
            name,
            app,
            shared_fallback,
            reserve,
        } => {
            let req = BindRequest {
                app,
                pool: name,
                shared_fallback,
                reserve_secs: reserve.map(|d| d.as_secs()),
            };
            let b = etcd.ipam().await?.bind(&req).await?;
            match out {
                Output::Json => print_json(&b)?,
                Output::Table => println!(
                    "pool {} bound to app {}: {}",
                    req.pool,
                    b.app,
                    binding_line(&b)
                ),
            }
        }
        PoolCmd::Unbind { name, app } => {
            let left = etcd.ipam().await?.unbind(&app, &name).await?;
            match out {
                Output::Json => print_json(
                    &serde_json::json!({ "app": app, "unbound": name, "binding": left }),
                )?,
                Output::Table => match left {
                    Some(b) => println!("pool {name} unbound from app {app}: {}", binding_line(&b)),
                    None => println!(
                        "pool {name} unbound from app {app}: no pool left, binding removed"
                    ),
                },
            }
        }
        PoolCmd::Export { app } => {
            let ranges = etcd.ipam().await?.app_ranges(app.as_deref()).await?;
            match out {
                Output::Json => {
                    print_json(&serde_json::json!({ "prefix": etcd.prefix(), "ranges": ranges }))?
                }
                Output::Table => {
                    for r in &ranges {
                        println!("{} {} {} {}", r.cidr, r.app, r.pool, r.vlan);
                    }
                }
            }
        }
        PoolCmd::App { app } => {
            let ipam = etcd.ipam().await?;
            let binding = ipam.bindings().await?.into_iter().find(|b| b.app == app);
            let reserve = ipam.app_reserve(&app).await?;
            match out {
                Output::Json => print_json(
                    &serde_json::json!({ "app": app, "binding": binding, "reserve": reserve }),
                )?,
                Output::Table => {
                    match &binding {
                        Some(b) => println!("app {app}: {}", binding_line(b)),
                        None => println!("app {app}: no bound pool (shared pools, no reserve)"),
                    }
                    let mut t = Table::new(&["RESERVED", "POOL", "FROM POD", "UNTIL"]);
                    for r in &reserve {
                        t.row(vec![
                            r.ip.to_string(),
                            r.pool.clone(),
                            r.pod.clone(),
                            time(r.until),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
        PoolCmd::Rm { name } => {
            etcd.ipam().await?.remove_pool(&name).await?;
            match out {
                Output::Json => print_json(&serde_json::json!({ "removed": name }))?,
                Output::Table => println!("pool {name} removed"),
            }
        }
    }
    Ok(Done::Ok)
}

fn binding_line(b: &AppBinding) -> String {
    format!(
        "pools {}, shared fallback {}, reserve {}s",
        b.pools.join(","),
        if b.shared_fallback { "yes" } else { "no" },
        b.reserve_secs
    )
}

fn filter(f: FilterArgs) -> Filter {
    Filter {
        node: f.node,
        pool: f.pool,
    }
}

pub async fn block(etcd: &Etcd, cmd: BlockCmd, out: Output) -> crate::Result<Done> {
    match cmd {
        BlockCmd::List(f) => {
            let ipam = etcd.ipam().await?;
            let blocks = ipam.list_blocks(&filter(f)).await?;
            match out {
                Output::Json => print_json(&blocks)?,
                Output::Table => {
                    let pools = ipam.list_pools().await?;
                    let mut t = Table::new(&[
                        "POOL", "BLOCK", "NODE", "USED", "FREE", "RESERVED", "CLAIMED",
                    ]);
                    for b in &blocks {
                        let pool = pools.iter().find(|p| p.name == b.pool);
                        t.row(block_row(b, pool));
                    }
                    print!("{}", t.render());
                }
            }
        }
        BlockCmd::Release { block } => {
            // Parse before connecting: a typo must not need etcd to be reported.
            leengine_ipam::pool::parse_network(&block).map_err(anyhow::Error::msg)?;
            let b = etcd.ipam().await?.release_block(&block).await?;
            match out {
                Output::Json => print_json(&b)?,
                Output::Table => println!("block {} released (was claimed by {})", b.cidr, b.node),
            }
        }
    }
    Ok(Done::Ok)
}

pub async fn ip(etcd: &Etcd, cmd: IpCmd, out: Output) -> crate::Result<Done> {
    match cmd {
        IpCmd::List(f) => {
            let ips = etcd.ipam().await?.list_ips(&filter(f)).await?;
            match out {
                Output::Json => print_json(&ips)?,
                Output::Table => {
                    let mut t =
                        Table::new(&["IP", "POOL", "NODE", "CONTAINER", "IFNAME", "POD", "SINCE"]);
                    for a in &ips {
                        t.row(vec![
                            a.ip.to_string(),
                            a.pool.clone(),
                            a.node.clone(),
                            a.container_id.clone(),
                            a.ifname.clone(),
                            opt(a.pod().as_deref()),
                            time(a.since),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
        IpCmd::Show { ip } => {
            let info = etcd.ipam().await?.ip_info(ip).await?;
            match out {
                Output::Json => print_json(&info)?,
                Output::Table => print!("{}", ip_details(&info)),
            }
        }
    }
    Ok(Done::Ok)
}

fn usage_table(usage: &[PoolUsage]) -> String {
    let mut t = Table::new(&[
        "NAME", "CIDR", "GATEWAY", "VLAN", "BLOCKS", "USED", "RESERVED", "FREE", "USE%", "APPS",
    ]);
    for u in usage {
        t.row(vec![
            u.pool.name.clone(),
            u.pool.cidr.to_string(),
            u.pool.gateway.to_string(),
            u.pool.vlan.to_string(),
            format!("{}/{}", u.blocks_claimed, u.blocks_total),
            u.ips_used.to_string(),
            u.ips_reserved.to_string(),
            u.ips_free.to_string(),
            format!("{:.1}", u.percent_used()),
            apps_cell(&u.apps),
        ]);
    }
    t.render()
}

fn pool_details(u: &PoolUsage) -> String {
    let p = &u.pool;
    let excludes: Vec<String> = p.excludes.iter().map(|e| e.to_string()).collect();
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for (k, v) in [
        ("name", p.name.clone()),
        ("cidr", p.cidr.to_string()),
        ("gateway", p.gateway.to_string()),
        ("vlan", p.vlan.to_string()),
        ("block size", p.block_size.to_string()),
        (
            "excludes",
            if excludes.is_empty() {
                "-".into()
            } else {
                excludes.join(",")
            },
        ),
        (
            "blocks",
            format!("{}/{} claimed", u.blocks_claimed, u.blocks_total),
        ),
        ("apps", apps_cell(&u.apps)),
        (
            "ips",
            format!(
                "{} used, {} reserved, {} free of {} ({:.1}% used)",
                u.ips_used,
                u.ips_reserved,
                u.ips_free,
                u.ips_assignable,
                u.percent_used()
            ),
        ),
    ] {
        t.row(vec![k.to_string(), v]);
    }
    t.render()
}

/// Apps bound to a pool; `-` for a shared pool.
fn apps_cell(apps: &[String]) -> String {
    if apps.is_empty() {
        "-".into()
    } else {
        apps.join(",")
    }
}

fn block_row(b: &Block, pool: Option<&Pool>) -> Vec<String> {
    let now = now();
    let assignable = pool.map(|p| p.assignable_in(b.cidr).count()).unwrap_or(0);
    let reserved = b.reserved.values().filter(|r| r.until > now).count();
    vec![
        b.pool.clone(),
        b.cidr.to_string(),
        b.node.clone(),
        b.allocations.len().to_string(),
        assignable.saturating_sub(b.allocations.len()).to_string(),
        reserved.to_string(),
        time(b.claimed_at),
    ]
}

fn blocks_table(blocks: &[Block], pool: &Pool) -> String {
    let mut t = Table::new(&[
        "POOL", "BLOCK", "NODE", "USED", "FREE", "RESERVED", "CLAIMED",
    ]);
    for b in blocks {
        t.row(block_row(b, Some(pool)));
    }
    t.render()
}

fn ip_details(info: &IpInfo) -> String {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    let mut kv = |k: &str, v: String| t.row(vec![k.to_string(), v]);
    kv("ip", info.ip.to_string());
    kv("pool", info.pool.clone());
    kv("block", info.block.to_string());
    kv("block node", opt(info.block_node.as_deref()));
    match &info.state {
        IpState::Unassignable { reason } => kv("state", format!("unassignable ({reason})")),
        IpState::Unclaimed => kv("state", "free (block not claimed)".into()),
        IpState::Free { freed_at } => {
            kv("state", "free".into());
            kv(
                "freed",
                freed_at.map(time).unwrap_or_else(|| "never used".into()),
            );
        }
        IpState::Reserved { reservation } => {
            kv("state", "reserved".into());
            kv("for pod", reservation.pod.clone());
            if let Some(app) = &reservation.app {
                kv("for app", app.clone());
            }
            kv("until", time(reservation.until));
        }
        IpState::Allocated { attachment: a } => {
            kv("state", "allocated".into());
            kv("container", a.container_id.clone());
            kv("ifname", a.ifname.clone());
            kv("pod", opt(a.pod().as_deref()));
            kv("node", a.node.clone());
            kv("netns", a.netns.clone());
            kv("since", time(a.since));
            kv("seq", a.seq.to_string());
        }
    }
    t.render()
}
