//! Full build logs on disk are kept for `--log-retention`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const SWEEP_EVERY: Duration = Duration::from_secs(3600);

pub async fn sweep_forever(dir: PathBuf, keep: Duration) {
    loop {
        let d = dir.clone();
        let removed = tokio::task::spawn_blocking(move || sweep(&d, keep, SystemTime::now()))
            .await
            .unwrap_or(0);
        if removed > 0 {
            tracing::info!(removed, "old build logs deleted");
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

/// Deletes `*.log` files under `dir/{config}/` last written before
/// `now - keep`, and config directories left empty. Returns files removed.
pub fn sweep(dir: &Path, keep: Duration, now: SystemTime) -> usize {
    let Some(cutoff) = now.checked_sub(keep) else {
        return 0;
    };
    let Ok(configs) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for cfg in configs.flatten() {
        let Ok(files) = std::fs::read_dir(cfg.path()) else {
            continue;
        };
        for f in files.flatten() {
            let old = f
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t < cutoff)
                .unwrap_or(false);
            let is_log = f.path().extension().is_some_and(|e| e == "log");
            if old && is_log && std::fs::remove_file(f.path()).is_ok() {
                removed += 1;
            }
        }
        let _ = std::fs::remove_dir(cfg.path()); // only succeeds when empty
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_old_logs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("app");
        std::fs::create_dir(&cfg).unwrap();
        std::fs::write(cfg.join("r1-1.log"), "x").unwrap();
        std::fs::write(cfg.join("keep.txt"), "x").unwrap();
        let now = SystemTime::now();
        assert_eq!(sweep(dir.path(), Duration::from_secs(3600), now), 0);
        let later = now + Duration::from_secs(7200);
        assert_eq!(sweep(dir.path(), Duration::from_secs(3600), later), 1);
        assert!(!cfg.join("r1-1.log").exists());
        assert!(cfg.join("keep.txt").exists(), "non-log files are not ours");
    }
}
