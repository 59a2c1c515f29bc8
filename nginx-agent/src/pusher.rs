//! Pushes peers, and with lua routing the routes and server names, into
//! nginx's shared dict. Runs apart from the reconciler so such a change
//! never waits behind `nginx -t` or a reload. A full dict refuses a write
//! instead of evicting other entries, and the router refuses a route it
//! cannot use (a bad regex: what `nginx -t` would say); refused items are
//! reported (`shared-dict-full`, `nginx-test`), counted, and retried every
//! second, while the others keep being pushed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leengine_slb::wire;
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
    // false: nginx's state is unknown, the next push is a full replace.
    let mut known = false;
    // What nginx (or the dump it loads) holds, also while that is unknown.
    let mut holds: Items = std::fs::read_to_string(&dump)
        .ok()
        .and_then(|t| wire::decode_all(&t).ok())
        .map(|d| d.items())
        .unwrap_or_default();
    // What nginx should hold, kept up to date item by item.
    let mut want = Items::new();
    // The keys that may differ between `holds` and `want`: those etcd
    // events touched and those nginx refused since the last push; `None`:
    // any may (after a full sync). A push compares only these, so a change
    // costs the same at 10 domains as at 10,000.
    let mut dirty: Option<BTreeSet<String>> = None;
    let mut last_error: Option<String> = None;
    let mut reported = -1;
    // Items refused at the last push, with the reason.
    let mut refused: BTreeMap<String, Refusal> = BTreeMap::new();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.upstream_changed.notified() => {}
            () = shared.repush.notified() => known = false,
            _ = tick.tick() => {
                if known && admin.gen().await.ok().as_deref() != Some(token.as_str()) {
                    tracing::info!("nginx does not hold the last push (reloaded or restarted); pushing all");
                    known = false;
                }
            }
        }
        let revision = {
            let mut d = shared.desired();
            refresh(&mut want, &mut d, &mut dirty);
            d.revision
        };
        let result = push(&admin, &token, known, &holds, &want, dirty.as_ref()).await;
        match result {
            Ok(sent) => {
                if sent.items() > 0 {
                    tracing::info!(items = sent.items(), revision, "pushed to nginx");
                }
                if sent.items() > 0 || sent.replace {
                    settle(&mut holds, &want, &sent, &BTreeMap::new());
                    write_dump(&dump, &holds);
                }
                dirty = Some(BTreeSet::new());
                known = true;
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
            Err(Failed::Refused(sent, list)) => {
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
                let errors = refusal_errors(&shared, &want, now_refused.values());
                // What nginx holds now: refused items kept their previous
                // value (or none); the next diff retries them. A restarted
                // nginx must load that, not what it refused.
                settle(&mut holds, &want, &sent, &now_refused);
                write_dump(&dump, &holds);
                // Refused items still differ: the next pushes retry them.
                dirty = Some(now_refused.keys().filter(|k| *k != "-").cloned().collect());
                let new_full = now_refused
                    .values()
                    .filter(|r| r.full && !refused.contains_key(&r.key))
                    .count();
                // The push token itself not stored: the next check repushes.
                known = !now_refused.contains_key("-");
                refused = now_refused;
                reported = revision;
                last_error = None;
                shared.update_report(|r| {
                    r.pushed_revision = revision;
                    r.push_errors = errors;
                    r.shared_dict_refusals += u64::try_from(new_full).unwrap_or(u64::MAX);
                });
            }
            Err(Failed::Other(e)) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "push to nginx failed; will retry");
                }
                last_error = Some(e);
                known = false;
            }
        }
    }
}

/// Brings `want` up to date: only the items etcd events touched (added to
/// `dirty`), all of them after a full sync (then any item may differ).
fn refresh(want: &mut Items, d: &mut crate::state::Desired, dirty: &mut Option<BTreeSet<String>>) {
    match d.take_touched() {
        None => {
            *want = d.pushed().items();
            *dirty = None;
        }
        Some(keys) => {
            for k in keys {
                match d.item(&k) {
                    Some(text) => want.insert(k.clone(), text),
                    None => want.remove(&k),
                };
                if let Some(set) = dirty {
                    set.insert(k);
                }
            }
        }
    }
}

/// What one push sent.
struct Sent {
    /// Changed keys (a merge); all of `want` for a replace.
    keys: Vec<String>,
    replace: bool,
}

impl Sent {
    fn items(&self) -> usize {
        self.keys.len()
    }
}

enum Failed {
    /// Some items were refused, the others stored.
    Refused(Sent, Vec<Refusal>),
    Other(String),
}

/// Brings `held` (what nginx holds) to `want` for what was sent, except
/// the refused items, which keep their previous value.
fn settle(held: &mut Items, want: &Items, sent: &Sent, refused: &BTreeMap<String, Refusal>) {
    if sent.replace {
        let mut next = want.clone();
        for k in refused.keys() {
            match held.get(k) {
                Some(old) => next.insert(k.clone(), old.clone()),
                None => next.remove(k),
            };
        }
        *held = next;
        return;
    }
    for k in sent.keys.iter().filter(|k| !refused.contains_key(*k)) {
        match want.get(k) {
            Some(text) => held.insert(k.clone(), text.clone()),
            None => held.remove(k),
        };
    }
}

/// An nginx restart loads this; one that comes between a push and this
/// write loads the older dump, and the token check then pushes all.
fn write_dump(dump: &std::path::Path, held: &Items) {
    let text: String = held.values().map(String::as_str).collect();
    if let Err(e) = write_atomic(dump, &text) {
        tracing::warn!(path = %dump.display(), error = %e, "writing the dump");
    }
}

/// Item key -> its wire text (`wire::State::items`).
type Items = BTreeMap<String, String>;

/// Status errors of refused items, by domain.
fn refusal_errors<'a>(
    shared: &Shared,
    want: &Items,
    refused: impl Iterator<Item = &'a Refusal>,
) -> BTreeMap<String, DomainError> {
    let d = shared.desired();
    let mut out = BTreeMap::new();
    for r in refused {
        let domain = match wire::item_domain(&r.key) {
            Some(domain) => domain,
            // A server name's item text ends with its domain.
            None => match want.get(&r.key).and_then(|t| t.trim_end().rsplit_once(' ')) {
                Some((_, domain)) => domain,
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

/// The merge body bringing `held` to `want` and its keys, looking only at
/// `dirty` when given.
fn differences(
    held: &Items,
    want: &Items,
    dirty: Option<&BTreeSet<String>>,
) -> (String, Vec<String>) {
    let mut body = String::new();
    let mut keys = Vec::new();
    let mut one = |k: &String| match (want.get(k), held.get(k)) {
        (Some(text), old) if old != Some(text) => {
            body.push_str(text);
            keys.push(k.clone());
        }
        (None, Some(_)) => {
            body.push_str(&wire::removal(k));
            keys.push(k.clone());
        }
        _ => {}
    };
    match dirty {
        Some(set) => set.iter().for_each(&mut one),
        None => want
            .keys()
            .chain(held.keys().filter(|k| !want.contains_key(*k)))
            .for_each(&mut one),
    }
    (body, keys)
}

/// Sends what differs from what nginx holds: a merge of the changed
/// items, or the whole state as a replace when that is unknown.
async fn push(
    admin: &Admin,
    token: &str,
    known: bool,
    held: &Items,
    want: &Items,
    dirty: Option<&BTreeSet<String>>,
) -> Result<Sent, Failed> {
    let (body, sent) = if known {
        let (body, keys) = differences(held, want, dirty);
        let sent = Sent {
            keys,
            replace: false,
        };
        if sent.items() == 0 {
            return Ok(sent);
        }
        (body, sent)
    } else {
        let body: String = want.values().map(String::as_str).collect();
        let sent = Sent {
            keys: want.keys().cloned().collect(),
            replace: true,
        };
        (body, sent)
    };
    match admin.post(&body, (!known).then_some(token)).await {
        Ok(()) => Ok(sent),
        Err(PushError::Refused(list)) => Err(Failed::Refused(sent, list)),
        Err(PushError::Failed(e)) => Err(Failed::Other(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(pairs: &[(&str, &str)]) -> Items {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn without_dirty_keys_everything_is_compared() {
        let held = items(&[("r:a", "A1\n"), ("r:b", "B\n"), ("r:gone", "G\n")]);
        let want = items(&[("r:a", "A2\n"), ("r:b", "B\n"), ("r:new", "N\n")]);
        let (body, keys) = differences(&held, &want, None);
        assert_eq!(keys, ["r:a", "r:new", "r:gone"]);
        assert_eq!(body, format!("A2\nN\n{}", wire::removal("r:gone")));
    }

    #[test]
    fn with_dirty_keys_only_those_are_compared() {
        let held = items(&[
            ("r:a", "A1\n"),
            ("r:b", "B1\n"),
            ("r:c", "C\n"),
            ("r:gone", "G\n"),
        ]);
        let want = items(&[("r:a", "A2\n"), ("r:b", "B2\n"), ("r:c", "C\n")]);
        let dirty: BTreeSet<String> = ["r:a", "r:c", "r:gone", "r:never"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (body, keys) = differences(&held, &want, Some(&dirty));
        // r:b differs but no event touched it; r:c was touched back to the same text.
        assert_eq!(keys, ["r:a", "r:gone"]);
        assert_eq!(body, format!("A2\n{}", wire::removal("r:gone")));
        assert_eq!(differences(&held, &want, Some(&BTreeSet::new())).1.len(), 0);
    }
}
