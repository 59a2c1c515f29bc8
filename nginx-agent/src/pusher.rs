//! Pushes peers into nginx's shared dict. Runs apart from the reconciler so
//! an upstream change never waits behind `nginx -t` or a reload.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leengine_slb::classify::upstream_changes;
use leengine_slb::{wire, Upstream};

use crate::admin::Admin;
use crate::files::write_atomic;
use crate::shared::Shared;

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
                if revision != reported {
                    reported = revision;
                    shared.update_report(|r| r.pushed_revision = revision);
                }
            }
            Err(e) => {
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
) -> Result<usize, String> {
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
        .map_err(|e| format!("writing {}: {e}", dump.display()))?;
    admin.post(&body, replace.then_some(token)).await?;
    Ok(n)
}
