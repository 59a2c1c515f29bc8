//! Pushes peers, and with lua routing the routes and server names, into
//! nginx's shared dict. Runs apart from the reconciler so such a change
//! never waits behind `nginx -t` or a reload. A full dict refuses a write
//! instead of evicting other entries, and the router refuses a route it
//! cannot use (a bad regex: what `nginx -t` would say); refused items are
//! reported (`shared-dict-full`, `nginx-test`), counted, and retried every
//! second, while the others keep being pushed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leengine_slb::wire::{self, State};
use leengine_slb::DomainError;

use crate::admin::{Admin, PushError, Refusal};
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
    let mut pushed: Option<Items> = None;
    // What nginx (or the dump it loads) holds, also while `pushed` is unknown.
    let mut holds: Items = std::fs::read_to_string(&dump)
        .ok()
        .and_then(|t| wire::decode_all(&t).ok())
        .map(|d| d.items())
        .unwrap_or_default();
    let mut last_error: Option<String> = None;
    let mut reported = -1;
    // Items refused at the last push, with the reason.
    let mut refused: BTreeMap<String, Refusal> = BTreeMap::new();
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
        let (state, revision) = {
            let d = shared.desired();
            (d.pushed(), d.revision)
        };
        let desired = state.items();
        let result = push(&admin, &dump, &token, pushed.as_ref(), &desired, &state).await;
        match result {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(items = n, revision, "pushed to nginx");
                }
                holds.clone_from(&desired);
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
            Err(PushError::Refused(list)) => {
                // What nginx holds now: refused items kept their previous
                // value (or none); the next diff retries them.
                let mut held = desired.clone();
                for r in &list {
                    match holds.get(&r.key) {
                        Some(old) => held.insert(r.key.clone(), old.clone()),
                        None => held.remove(&r.key),
                    };
                }
                let now_refused: BTreeMap<String, Refusal> =
                    list.into_iter().map(|r| (r.key.clone(), r)).collect();
                let new = now_refused
                    .keys()
                    .filter(|k| !refused.contains_key(*k))
                    .count();
                if new > 0 {
                    tracing::error!(
                        items = ?now_refused.values().collect::<Vec<_>>(),
                        "nginx refused pushed items (previous ones kept)"
                    );
                }
                let errors = refusal_errors(&shared, &state, now_refused.values());
                // A restarted nginx must load what this one holds, not
                // what it refused.
                let text: String = held.values().map(String::as_str).collect();
                if let Err(e) = write_atomic(&dump, &text) {
                    tracing::warn!(error = %e, "writing the dump");
                }
                let new_full = now_refused
                    .values()
                    .filter(|r| r.full && !refused.contains_key(&r.key))
                    .count();
                holds.clone_from(&held);
                // The push token itself not stored: the next check repushes.
                pushed = (!now_refused.contains_key("-")).then_some(held);
                refused = now_refused;
                reported = revision;
                last_error = None;
                shared.update_report(|r| {
                    r.pushed_revision = revision;
                    r.push_errors = errors;
                    r.shared_dict_refusals += u64::try_from(new_full).unwrap_or(u64::MAX);
                });
            }
            Err(PushError::Failed(e)) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "push to nginx failed; will retry");
                }
                last_error = Some(e);
                pushed = None;
            }
        }
    }
}

/// Item key -> its wire text (`wire::State::items`).
type Items = BTreeMap<String, String>;

/// Status errors of refused items, by domain.
fn refusal_errors<'a>(
    shared: &Shared,
    state: &State,
    refused: impl Iterator<Item = &'a Refusal>,
) -> BTreeMap<String, DomainError> {
    let d = shared.desired();
    let mut out = BTreeMap::new();
    for r in refused {
        let domain = match wire::item_domain(&r.key) {
            Some(domain) => domain,
            None => match r.key.strip_prefix("h:").and_then(|h| state.hosts.get(h)) {
                Some(domain) => domain.as_str(),
                None => continue,
            },
        };
        let peers = r.key.starts_with("u:");
        let (what, revision) = if peers {
            ("peers", d.upstream_revision(domain))
        } else {
            ("route", d.config_revision(domain))
        };
        let err = if r.full {
            let msg = format!(
                "nginx's shared dict has no room for its {what} ({}); previous {what} kept",
                r.reason
            );
            domain_error(revision, "shared-dict-full", &msg)
        } else {
            domain_error(revision, "nginx-test", &r.reason)
        };
        out.entry(domain.to_string()).or_insert(err);
    }
    out
}

/// Sends the change, then writes what nginx now holds to the dump (a
/// refusal writes what it kept instead, in the caller). An nginx restart
/// in between loads the older dump: the token check then pushes all.
/// Returns how many items were sent.
async fn push(
    admin: &Admin,
    dump: &std::path::Path,
    token: &str,
    pushed: Option<&Items>,
    desired: &Items,
    state: &State,
) -> Result<usize, PushError> {
    let (body, n, replace) = match pushed {
        Some(p) => {
            let mut body = String::new();
            let mut n = 0;
            for (k, text) in desired {
                if p.get(k) != Some(text) {
                    body.push_str(text);
                    n += 1;
                }
            }
            for k in p.keys().filter(|k| !desired.contains_key(*k)) {
                body.push_str(&wire::removal(k));
                n += 1;
            }
            if n == 0 {
                return Ok(0);
            }
            (body, n, false)
        }
        None => (desired.values().cloned().collect(), desired.len(), true),
    };
    admin.post(&body, replace.then_some(token)).await?;
    write_atomic(dump, &wire::encode_all(state))
        .map_err(|e| PushError::Failed(format!("writing {}: {e}", dump.display())))?;
    Ok(n)
}
