//! What triggers a reload, and what a reload reports.
//!
//! Triggers: the pipeline file changing on disk, SIGHUP, and `POST /-/reload`. The file is
//! watched through its directory, so editors' atomic renames and Kubernetes ConfigMap symlink
//! swaps (`..data` replaced) are seen; changes are debounced, and a change that leaves the
//! file's content as it was (by SHA-256) triggers nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// A request to reload the pipeline file.
#[derive(Debug)]
pub struct ReloadRequest {
    /// `file`, `SIGHUP` or `api`.
    pub trigger: &'static str,
    pub reply: Option<oneshot::Sender<ReloadOutcome>>,
}

/// What a reload did, with a summary for a person.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    Applied(String),
    Unchanged(String),
    Rejected(String),
    RolledBack(String),
}

impl ReloadOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            ReloadOutcome::Applied(_) => "applied",
            ReloadOutcome::Unchanged(_) => "unchanged",
            ReloadOutcome::Rejected(_) => "rejected",
            ReloadOutcome::RolledBack(_) => "rolled_back",
        }
    }
}

fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// Watches `path` and sends a request (after `debounce` of quiet) whenever its content differs
/// from the last content seen (at first: `loaded`, the digest of what was loaded).
/// The returned watcher must be kept alive.
pub fn watch_file(
    path: &Path,
    loaded: Option<[u8; 32]>,
    debounce: Duration,
    requests: mpsc::Sender<ReloadRequest>,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.send(());
        }
    })?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let parent = |p: &Path| {
        p.parent().map(|d| {
            if d.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                d.to_path_buf()
            }
        })
    };
    if let Some(d) = parent(path) {
        dirs.push(d);
    }
    if let Ok(real) = std::fs::canonicalize(path)
        && let Some(d) = parent(&real)
        && !dirs.contains(&d)
    {
        dirs.push(d);
    }
    for d in &dirs {
        watcher.watch(d, RecursiveMode::NonRecursive)?;
    }
    let path = path.to_path_buf();
    tokio::spawn(async move {
        let mut last = loaded.or_else(|| digest(&path));
        while rx.recv().await.is_some() {
            // Debounce: wait until the directory has been quiet for a while.
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(())) => {}
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let now = digest(&path);
            if now.is_none() {
                // Mid-swap or deleted: wait for the next change.
                continue;
            }
            if now == last {
                tracing::debug!(file = %path.display(), "pipeline file touched but unchanged");
                continue;
            }
            last = now;
            tracing::info!(file = %path.display(), "pipeline file changed; reloading");
            if requests
                .send(ReloadRequest {
                    trigger: "file",
                    reply: None,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok(watcher)
}
