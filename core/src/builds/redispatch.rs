//! Builder loss: when a builder's registration key disappears (its lease
//! expired), its unfinished tasks go to the next builder in rendezvous order,
//! once; a run that loses a second builder fails. Every move is recorded in
//! the run (`redispatches`) and its log.
//!
//! The watcher also sweeps at start (and after every watch error): tasks of a
//! builder that vanished while no core was watching are handled the same way.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use etcd_client::{Event, EventType, GetOptions};
use leengine_build::{BuildRun, BuildTask, LostDecision, Redispatch, RunStatus, Stage};
use leengine_store::follow::{follow, Follow, Follower, Snapshot};
use leengine_store::keys::BuilderKey;
use leengine_store::record;
use leengine_store::retry;

use super::dispatch::live_builders;
use super::BuildsState;

/// Besides every builder deletion, a sweep this often (and after every
/// resync) catches tasks whose builder vanished while no core was watching.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub(super) async fn watch_builders(state: BuildsState) {
    let what = Follow::prefix(state.keys.builders_prefix())
        .keys_only()
        .resync_every(SWEEP_EVERY);
    let etcd = state.etcd.clone();
    follow(&etcd, &what, &mut Watcher { state }, std::future::pending()).await;
}

struct Watcher {
    state: BuildsState,
}

impl Follower for Watcher {
    type Error = etcd_client::Error;

    /// A sweep: handles every builder that holds tasks but has no registration.
    async fn reset(&mut self, snapshot: Snapshot) -> Result<(), etcd_client::Error> {
        let keys = &self.state.keys;
        let mut live = BTreeSet::new();
        let mut holding = BTreeSet::new();
        for kv in &snapshot.kvs {
            match keys.parse_builder_key(kv.key_str()?) {
                Some(BuilderKey::Builder(b)) => {
                    live.insert(b.to_string());
                }
                Some(BuilderKey::Task { builder, .. }) => {
                    holding.insert(builder.to_string());
                }
                None => {}
            }
        }
        for b in holding.difference(&live) {
            handle_lost_builder(&self.state, b).await?;
        }
        Ok(())
    }

    async fn apply(&mut self, events: &[Event]) -> Result<(), etcd_client::Error> {
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            if ev.event_type() != EventType::Delete {
                continue;
            }
            if let Some(BuilderKey::Builder(b)) = self.state.keys.parse_builder_key(kv.key_str()?) {
                tracing::warn!(builder = b, "build host left");
                handle_lost_builder(&self.state, b).await?;
            }
        }
        Ok(())
    }
}

/// Moves or fails every unfinished task of `lost`, unless it registered again.
pub async fn handle_lost_builder(
    state: &BuildsState,
    lost: &str,
) -> Result<(), etcd_client::Error> {
    let mut etcd = state.etcd.clone();
    let tasks = etcd
        .get(
            state.keys.builder_tasks_prefix(lost),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    for kv in tasks.kvs() {
        let task_key = kv.key_str()?.to_string();
        let task: BuildTask = match serde_json::from_slice(kv.value()) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(key = %task_key, error = %e, "undecodable task left in place");
                continue;
            }
        };
        let (task_key, task) = (task_key.as_str(), &task);
        let moved = retry::optimistic(retry::BACKGROUND, move || async move {
            Ok::<_, etcd_client::Error>(move_task(state, lost, task_key, task).await?.then_some(()))
        })
        .await?;
        if let retry::Retried::Exhausted { attempts } = moved {
            // The next sweep tries again.
            tracing::warn!(key = %task_key, attempts, "task of a lost builder not moved: every attempt lost its race");
        }
    }
    Ok(())
}

/// One attempt; `false` when a compare failed and the caller should retry.
async fn move_task(
    state: &BuildsState,
    lost: &str,
    task_key: &str,
    task: &BuildTask,
) -> Result<bool, etcd_client::Error> {
    let mut etcd = state.etcd.clone();
    let keys = &state.keys;
    let live = live_builders(&mut etcd, keys).await?;
    if live.iter().any(|b| b == lost) {
        return Ok(true); // came back: the agent re-reads its tasks itself
    }
    let task_now = etcd.get(task_key, None).await?;
    let Some(task_kv) = task_now.kvs().first() else {
        return Ok(true);
    };
    let task_rev = task_kv.mod_revision();
    let run_key = keys.build_run(&task.config, &task.run);
    let run_resp = etcd.get(run_key.as_str(), None).await?;
    let Some(run_kv) = run_resp.kvs().first() else {
        // Config deleted: the task is an orphan.
        return delete_if_unchanged(&mut etcd, task_key, task_rev).await;
    };
    let mut run: BuildRun = match serde_json::from_slice(run_kv.value()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(run = %run_key, error = %e, "undecodable run; task left in place");
            return Ok(true);
        }
    };
    let run_rev = run_kv.mod_revision();
    let now = Utc::now();
    let decision = run.on_builder_lost(lost, &live);
    let mut ops = vec![record::delete(task_key)];
    let mut when = vec![
        record::unchanged(task_key, Some(task_rev)),
        record::unchanged(run_key.as_str(), Some(run_rev)),
    ];
    match &decision {
        LostDecision::Ignore => {
            return delete_if_unchanged(&mut etcd, task_key, task_rev).await;
        }
        LostDecision::Move(to) => {
            run.close_stage(false, now);
            run.redispatches.push(Redispatch {
                from: lost.to_string(),
                to: Some(to.clone()),
                at: now,
            });
            run.builder = to.clone();
            run.attempt += 1;
            run.status = RunStatus::Queued;
            run.log.push_str(&format!(
                "[core] builder {lost} lost; re-dispatched to {to}\n"
            ));
            let mut moved = task.clone();
            moved.attempt = run.attempt;
            when.push(record::present(keys.builder(to)));
            ops.push(record::put(keys.builder_task(to, &task.run), &moved));
        }
        LostDecision::Fail(reason) => {
            let stage = run.status.stage().unwrap_or(Stage::Dispatch);
            run.redispatches.push(Redispatch {
                from: lost.to_string(),
                to: None,
                at: now,
            });
            run.log.push_str(&format!("[core] {reason}\n"));
            run.fail(stage, reason.clone(), now);
        }
    }
    ops.push(record::put(run_key.as_str(), &run));
    let ok = record::commit(&etcd, when, ops).await?.applied();
    if ok {
        tracing::warn!(run = %task.run, config = %task.config, builder = lost, ?decision, "task of lost builder handled");
    }
    Ok(ok)
}

async fn delete_if_unchanged(
    etcd: &mut etcd_client::Client,
    key: &str,
    rev: i64,
) -> Result<bool, etcd_client::Error> {
    let done = record::commit(
        etcd,
        vec![record::unchanged(key, Some(rev))],
        vec![record::delete(key)],
    )
    .await?;
    Ok(done.applied())
}
