//! Pushes peers into nginx's shared dict. Runs apart from the reconciler so
//! an upstream change never waits behind `nginx -t` or a reload. A full
//! dict refuses a domain's write instead of evicting others' peers; the
//! refused domains are reported (`shared-dict-full`), counted, and retried
//! every second, while the other domains keep being pushed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leengine_slb::classify::upstream_changes;
use leengine_slb::{wire, Upstream};

use crate::admin::{Admin, PushError};
use crate::files::write_atomic;
use crate::shared::Shared;
use crate::state::domain_error;

/// How often the agent checks that nginx still holds its last full push
/// (a restarted nginx comes back with the dump's token instead).
const CHECK_EVERY: Duration = Duration::from_secs(1);

pub async fn run(shared: Arc<Shared>, admin: Admin, dump: PathBuf) {
    let token = format!(
        "agent-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    // None: nginx's state is unknown, the next push is a full replace.
    let mut pushed: Option<BTreeMap<String, Upstream>> = None;
    let mut last_error: Option<String> = None;
    let mut reported = -1;
    // Domains the shared dict refused at the last push, with lua's reason.
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.upstream_changed.notified() => {}
            () = shared.repush.notified() => pushed = None,
            _ = tick.tick() => {
                if pushed.is_some() && admin.gen().await.ok().as_deref() != Some(token.as_str()) {
                    tracing::info!("nginx does not hold the last push (reloaded or restarted); pushing all");
                    pushed = None;
                }
            }
        }
        let (desired, revision) = {
            let d = shared.desired();
            (d.upstreams(), d.revision)
        };
        let result = push(&admin, &dump, &token, pushed.as_ref(), &desired).await;
        match result {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(domains = n, revision, "upstreams pushed");
                }
                pushed = Some(desired);
                last_error = None;
                if revision != reported || !refused.is_empty() {
                    reported = revision;
                    refused.clear();
                    shared.update_report(|r| {
                        r.pushed_revision = revision;
                        r.push_errors.clear();
                    });
                }
            }
            Err(PushError::Full(full)) => {
                // What nginx holds now: the refused domains kept their
                // previous peers (or none); the diff retries them.
                let mut held = desired.clone();
                for (d, _) in &full {
                    match pushed.as_ref().and_then(|p| p.get(d)) {
                        Some(old) => held.insert(d.clone(), old.clone()),
                        None => held.remove(d),
                    };
                }
                let now_refused: BTreeMap<String, String> = full.into_iter().collect();
                let new = now_refused
                    .keys()
                    .filter(|d| !refused.contains_key(*d))
                    .count() as u64;
                if new > 0 {
                    tracing::error!(
                        domains = ?now_refused.keys().collect::<Vec<_>>(),
                        "nginx's shared dict is full: peers refused (previous ones kept); raise --shared-dict-size"
                    );
                }
                let errors = {
                    let d = shared.desired();
                    now_refused
                        .iter()
                        .filter(|(domain, _)| domain.as_str() != "-")
                        .map(|(domain, why)| {
                            let msg = format!("nginx's shared dict has no room for its peers ({why}); previous peers kept");
                            (domain.clone(), domain_error(d.upstream_revision(domain), "shared-dict-full", &msg))
                        })
                        .collect()
                };
                // The push token itself not stored: the next check repushes.
                pushed = (!now_refused.contains_key("-")).then_some(held);
                refused = now_refused;
                reported = revision;
                last_error = None;
                shared.update_report(|r| {
                    r.pushed_revision = revision;
                    r.push_errors = errors;
                    r.shared_dict_refusals += new;
                });
            }
            Err(PushError::Failed(e)) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "upstream push failed; will retry");
                }
                last_error = Some(e);
                pushed = None;
            }
        }
    }
}

/// Writes the dump first (so an nginx (re)start in between loads the newer
/// state), then sends the change. Returns how many domains were sent.
async fn push(
    admin: &Admin,
    dump: &std::path::Path,
    token: &str,
    pushed: Option<&BTreeMap<String, Upstream>>,
    desired: &BTreeMap<String, Upstream>,
) -> Result<usize, PushError> {
    let (body, n, replace) = match pushed {
        Some(p) => {
            let changes = upstream_changes(p, desired);
            if changes.is_empty() {
                return Ok(0);
            }
            let n = changes.len();
            (
                wire::encode(changes.iter().map(|(d, u)| (d.as_str(), *u))),
                n,
                false,
            )
        }
        None => (wire::encode_all(desired), desired.len(), true),
    };
    write_atomic(dump, &wire::encode_all(desired))
        .map_err(|e| PushError::Failed(format!("writing {}: {e}", dump.display())))?;
    admin.post(&body, replace.then_some(token)).await?;
    Ok(n)
}
