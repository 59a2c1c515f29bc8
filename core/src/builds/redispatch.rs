//! Builder loss: when a builder's registration key disappears (its lease
//! expired), its unfinished tasks go to the next builder in rendezvous order,
//! once; a run that loses a second builder fails. Every move is recorded in
//! the run (`redispatches`) and its log.
//!
//! The watcher also sweeps at start (and after every watch error): tasks of a
//! builder that vanished while no core was watching are handled the same way.

use std::time::Duration;

use chrono::Utc;
use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp};
use leengine_build::{BuildRun, BuildTask, LostDecision, Redispatch, RunStatus, Stage};
use leengine_store::keys::BuilderKey;

use super::dispatch::live_builders;
use super::BuildsState;

/// A move can lose its compare to the agent's own update; re-read and retry.
const ATTEMPTS: usize = 5;
const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub(super) async fn watch_builders(state: BuildsState) {
    loop {
        if let Err(e) = watch_once(&state).await {
            tracing::warn!(error = %e, "builder watch failed; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn watch_once(state: &BuildsState) -> Result<(), etcd_client::Error> {
    let mut etcd = state.etcd.clone();
    let prefix = state.keys.builders_prefix();
    let rev = sweep(state).await?;
    let mut stream = leengine_store::watch_prefix_from(&mut etcd, &prefix, rev + 1).await?;
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Some(resp) = msg? else { return Ok(()) };
                if resp.canceled() {
                    return Ok(()); // compacted past our revision: sweep again
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    if ev.event_type() != EventType::Delete {
                        continue;
                    }
                    if let Some(BuilderKey::Builder(b)) = state.keys.parse_builder_key(kv.key_str()?) {
                        tracing::warn!(builder = b, "build host left");
                        handle_lost_builder(state, b).await?;
                    }
                }
            }
            _ = tick.tick() => { sweep(state).await?; }
        }
    }
}

/// Handles every builder that holds tasks but has no registration; returns
/// the revision the read was made at.
async fn sweep(state: &BuildsState) -> Result<i64, etcd_client::Error> {
    let mut etcd = state.etcd.clone();
    let resp = etcd
        .get(
            state.keys.builders_prefix(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut live = std::collections::BTreeSet::new();
    let mut holding = std::collections::BTreeSet::new();
    for kv in resp.kvs() {
        match state.keys.parse_builder_key(kv.key_str()?) {
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
        handle_lost_builder(state, b).await?;
    }
    Ok(rev)
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
        for _ in 0..ATTEMPTS {
            if move_task(state, lost, &task_key, &task).await? {
                break;
            }
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
    let mut ops = vec![TxnOp::delete(task_key, None)];
    let mut when = vec![
        Compare::mod_revision(task_key, CompareOp::Equal, task_rev),
        Compare::mod_revision(run_key.as_str(), CompareOp::Equal, run_rev),
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
            when.push(Compare::version(keys.builder(to), CompareOp::Greater, 0));
            ops.push(TxnOp::put(
                keys.builder_task(to, &task.run),
                serde_json::to_vec(&moved).map_err(json_err)?,
                None,
            ));
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
    ops.push(TxnOp::put(
        run_key.as_str(),
        serde_json::to_vec(&run).map_err(json_err)?,
        None,
    ));
    let ok = etcd
        .txn(Txn::new().when(when).and_then(ops))
        .await?
        .succeeded();
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
    let txn = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
        .and_then([TxnOp::delete(key, None)]);
    Ok(etcd.txn(txn).await?.succeeded())
}

fn json_err(e: serde_json::Error) -> etcd_client::Error {
    etcd_client::Error::InvalidArgs(e.to_string())
}
