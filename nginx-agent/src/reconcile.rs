//! Turns the desired domain files into live ones: stage, `nginx -t` the
//! complete config, swap, reload, confirm. A domain that fails the test is
//! left out (it keeps its last good file) and the others go ahead. Changes
//! that arrive within the debounce window share one reload.
//!
//! `nginx -t` cannot see everything (a listen port held by another
//! process): a reload counts only once the admin endpoint serves the new
//! generation's marker. Otherwise the files are rolled back to the last
//! good set (nginx still runs it: a failed reload keeps the old workers)
//! and each change is tried alone, so only the culprit is refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use leengine_slb::classify::{apply_file_changes, file_changes};
use leengine_slb::render::{render_main, MainParams, NamesHash};
use leengine_slb::DomainError;

use crate::admin::Admin;
use crate::files::{write_if_changed, Layout};
use crate::nginx::Nginx;
use crate::shared::{now, Shared};
use crate::state::{domain_error, ROUTER};

#[derive(Debug)]
pub struct Reconciler {
    pub shared: Arc<Shared>,
    pub layout: Layout,
    pub nginx: Nginx,
    pub params: MainParams,
    pub debounce: Duration,
    /// Live domain files (the last good set).
    pub applied: BTreeMap<String, String>,
    pub gen: u64,
    /// Files that failed `nginx -t`, not retried until something else changes.
    pub failed: BTreeMap<String, (String, DomainError)>,
    /// Something could not be applied: retry after `retry_refused`.
    pub stuck: bool,
    pub retry_refused: Duration,
    pub admin: Admin,
    /// How long new workers get to serve a new generation's marker.
    pub reload_timeout: Duration,
    /// Makes markers unique to this agent process (generation numbers
    /// restart with a wiped conf dir).
    pub token: String,
}

/// What is live on disk at start (`Layout::prepare`, `Layout::read_live`).
#[derive(Debug)]
pub struct Live {
    /// Domain files by name.
    pub applied: BTreeMap<String, String>,
    pub gen: u64,
}

/// How the reconciler paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Quiet time that gathers a burst of changes into one reload.
    pub debounce: Duration,
    /// When refused files are tried again without an etcd change.
    pub retry_refused: Duration,
    /// How long new workers get to serve a new generation's marker.
    pub reload_timeout: Duration,
}

/// Why an install did not go live.
enum InstallError {
    /// nginx refused the new generation at reload; the files are rolled back.
    Reload(String),
    /// Writing files or signalling failed: a host problem.
    Host(String),
}

impl Reconciler {
    pub fn new(
        shared: Arc<Shared>,
        layout: Layout,
        nginx: Nginx,
        params: MainParams,
        admin: Admin,
        live: Live,
        timing: Timing,
    ) -> Self {
        Self {
            shared,
            layout,
            nginx,
            params,
            debounce: timing.debounce,
            applied: live.applied,
            gen: live.gen,
            failed: BTreeMap::new(),
            stuck: false,
            retry_refused: timing.retry_refused,
            admin,
            reload_timeout: timing.reload_timeout,
            token: format!(
                "{}-{}",
                std::process::id(),
                chrono::Utc::now().timestamp_millis()
            ),
        }
    }

    pub async fn run(mut self) {
        loop {
            // Refused files and a broken live config are retried now and
            // then: what nginx -t refused may depend on the host (a
            // certificate installed later), not only on etcd.
            let retry = self.stuck;
            tokio::select! {
                () = self.shared.config_changed.notified() => {}
                () = tokio::time::sleep(self.retry_refused), if retry => self.failed.clear(),
            }
            tokio::time::sleep(self.debounce).await;
            self.step().await;
        }
    }

    async fn step(&mut self) {
        let (files, mut errors, revision, synced, routed) = {
            let d = self.shared.desired();
            let (files, errors) = d.files(&self.applied);
            let routed: Vec<String> = d.routed().map(str::to_string).collect();
            (files, errors, d.revision, d.synced, routed)
        };
        // Until the first full read the agent knows only the dump: keep
        // whatever nginx serves.
        if !synced {
            return;
        }
        self.params.names_hash = NamesHash::for_files(files.values().map(String::as_str));
        let main_text = render_main(&MainParams {
            domains_dir: self.layout.domains_link(),
            ..self.params.clone()
        });
        let main_dirty = std::fs::read_to_string(self.layout.main_conf())
            .ok()
            .as_ref()
            != Some(&main_text);
        let mut changes = file_changes(&self.applied, &files);
        // Known-bad files are retried only together with another change.
        let only_known_bad = changes.iter().all(
            |(d, c)| matches!((c, self.failed.get(d)), (Some(text), Some((bad, _))) if text == bad),
        );
        if only_known_bad && !main_dirty {
            for (d, (_, e)) in &self.failed {
                if changes.contains_key(d) {
                    errors.entry(d.clone()).or_insert_with(|| e.clone());
                }
            }
            changes.clear();
        }
        let mut host_error = None;
        if !changes.is_empty() || main_dirty {
            let (accepted, test_errors, fatal) = self.select(&changes).await;
            host_error = fatal;
            self.failed.clear();
            for (d, msg) in test_errors {
                let rev = self.shared.desired().config_revision(&d);
                let err = domain_error(rev, "nginx-test", &msg);
                tracing::warn!(domain = %d, error = %msg, "domain config refused by nginx -t; keeping last good");
                if let Some(Some(text)) = changes.get(&d) {
                    self.failed.insert(d.clone(), (text.clone(), err.clone()));
                }
                errors.insert(d, err);
            }
            if host_error.is_none() && (accepted != self.applied || main_dirty) {
                let (refused, fatal) = self.go_live(&accepted, &main_text, main_dirty).await;
                host_error = fatal;
                for (d, msg) in refused {
                    let rev = self.shared.desired().config_revision(&d);
                    let err = domain_error(rev, "reload", &msg);
                    tracing::warn!(domain = %d, error = %msg, "nginx refused the domain at reload; rolled back to last good");
                    if let Some(Some(text)) = changes.get(&d) {
                        self.failed.insert(d.clone(), (text.clone(), err.clone()));
                    }
                    errors.insert(d, err);
                }
            }
        }
        let mut domains: Vec<String> = self
            .applied
            .keys()
            .filter(|d| d.as_str() != ROUTER)
            .cloned()
            .chain(routed)
            .collect();
        domains.sort();
        domains.dedup();
        self.stuck = host_error.is_some() || !self.failed.is_empty();
        self.shared.update_report(|r| {
            r.reconciled_revision = revision;
            r.errors = errors;
            r.error = host_error;
            r.domains = domains;
        });
    }

    /// The largest good set: everything if it passes; otherwise each change
    /// on its own on top of what was accepted so far. Third value: the
    /// current config itself fails (nothing can be judged).
    async fn select(
        &mut self,
        changes: &BTreeMap<String, Option<String>>,
    ) -> (
        BTreeMap<String, String>,
        BTreeMap<String, String>,
        Option<String>,
    ) {
        let all = apply_file_changes(&self.applied, changes);
        let mut errors = BTreeMap::new();
        if self.test(&all).await.is_ok() {
            return (all, errors, None);
        }
        if let Err(e) = self.test(&self.applied.clone()).await {
            let msg = format!("the live config fails nginx -t, nothing changed: {e}");
            tracing::error!(error = %msg);
            return (self.applied.clone(), errors, Some(msg));
        }
        let mut accepted = self.applied.clone();
        for (d, c) in changes {
            let one: BTreeMap<_, _> = [(d.clone(), c.clone())].into();
            let candidate = apply_file_changes(&accepted, &one);
            match self.test(&candidate).await {
                Ok(()) => accepted = candidate,
                Err(e) => {
                    errors.insert(d.clone(), e);
                }
            }
        }
        (accepted, errors, None)
    }

    async fn test(&self, files: &BTreeMap<String, String>) -> Result<(), String> {
        let dir = self
            .layout
            .write_gen(self.gen + 1, "test", files, &self.applied)
            .map_err(|e| format!("staging: {e}"))?;
        let staging = render_main(&MainParams {
            domains_dir: dir,
            ..self.params.clone()
        });
        std::fs::write(self.layout.staging_conf(), staging).map_err(|e| format!("staging: {e}"))?;
        self.nginx.test(&self.layout.staging_conf()).await
    }

    /// Installs `accepted` (and the main config); if the reload fails, each
    /// change alone on top of what went live so far. Returns the refused
    /// domains with nginx's reason, and a host error if the new main config
    /// itself fails (the domains are then tried with the old one).
    async fn go_live(
        &mut self,
        accepted: &BTreeMap<String, String>,
        main_text: &str,
        main_dirty: bool,
    ) -> (BTreeMap<String, String>, Option<String>) {
        let mut refused = BTreeMap::new();
        let changes = file_changes(&self.applied, accepted);
        let whole = match self.install(accepted, main_text).await {
            Ok(()) => return (refused, None),
            Err(InstallError::Host(e)) => return (refused, Some(e)),
            Err(InstallError::Reload(e)) => e,
        };
        if changes.len() == 1 && !main_dirty {
            refused.extend(changes.into_keys().map(|d| (d, whole.clone())));
            return (refused, None);
        }
        let mut host_error = None;
        let mut main = main_text.to_string();
        if main_dirty {
            let applied = self.applied.clone();
            match self.install(&applied, main_text).await {
                Ok(()) => {}
                Err(InstallError::Host(e)) => return (refused, Some(e)),
                Err(InstallError::Reload(e)) => {
                    let msg = format!("nginx refused the new nginx.conf at reload: {e}");
                    tracing::error!(error = %msg);
                    host_error = Some(msg);
                    main = std::fs::read_to_string(self.layout.main_conf()).unwrap_or_default();
                }
            }
        }
        for (d, c) in changes {
            let one: BTreeMap<_, _> = [(d.clone(), c)].into();
            let candidate = apply_file_changes(&self.applied, &one);
            match self.install(&candidate, &main).await {
                Ok(()) => {}
                Err(InstallError::Reload(e)) => {
                    refused.insert(d, e);
                }
                Err(InstallError::Host(e)) => return (refused, Some(e)),
            }
        }
        (refused, host_error)
    }

    /// Writes generation N+1, swaps it in, reloads and waits for the new
    /// workers. A refused reload restores the last good files (as
    /// generation N+2) and the old main config.
    async fn install(
        &mut self,
        files: &BTreeMap<String, String>,
        main_text: &str,
    ) -> Result<(), InstallError> {
        let next = self.gen + 1;
        let marker = format!("{next}-{}", self.token);
        let io = |e: std::io::Error| InstallError::Host(format!("writing config: {e}"));
        let old_main = std::fs::read_to_string(self.layout.main_conf()).ok();
        self.layout
            .write_gen(next, &marker, files, &self.applied)
            .map_err(io)?;
        self.layout.swap_to(next).map_err(io)?;
        write_if_changed(&self.layout.main_conf(), main_text).map_err(io)?;
        self.gen = next;
        let log_end = self.nginx.error_log_end();
        if !self.nginx.reload().map_err(InstallError::Host)? {
            tracing::info!(
                generation = next,
                "config swapped; nginx not running, no reload"
            );
            self.applied = files.clone();
            return Ok(());
        }
        if let Err(e) = self.confirm(&marker, log_end).await {
            let back = self.gen + 1;
            let applied = self.applied.clone();
            self.layout
                .write_gen(back, "rollback", &applied, files)
                .map_err(io)?;
            self.layout.swap_to(back).map_err(io)?;
            if let Some(m) = old_main {
                write_if_changed(&self.layout.main_conf(), &m).map_err(io)?;
            }
            self.gen = back;
            tracing::warn!(generation = next, error = %e, "nginx did not take the new config; rolled back");
            return Err(InstallError::Reload(e));
        }
        self.applied = files.clone();
        tracing::info!(
            domains = files.len(),
            generation = next,
            "config swapped; nginx reloaded"
        );
        let at = now();
        self.shared.update_report(|r| {
            r.reloads += 1;
            r.last_reload = Some(at);
        });
        self.shared.repush.notify_one();
        Ok(())
    }

    /// Polls the admin endpoint until the workers answering it serve
    /// `marker` (old workers stop accepting once new ones run), for at most
    /// `reload_timeout`. The error is nginx's log since the signal.
    async fn confirm(&self, marker: &str, log_end: u64) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.reload_timeout;
        loop {
            if self.admin.generation().await.ok().as_deref() == Some(marker) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let logged = self.nginx.errors_since(log_end);
                return Err(if logged.is_empty() {
                    format!(
                        "nginx did not serve the new config within {:?} of the reload",
                        self.reload_timeout
                    )
                } else {
                    logged
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
