//! The YAML file as the source of truth: load, watch, debounce, reload.
//!
//! Owned here: turning the file into a [`Snapshot`] and publishing it into the
//! [`Cache`], and the reload status shown by `/status` and the metrics. An
//! invalid edit is logged, counted and shown, and publishes nothing: the last
//! good snapshot keeps being served until the file is fixed.
//!
//! Editors save by rename, by truncate-and-write, or in several writes, so the
//! whole directory is watched (a rename replaces the file's inode; a
//! Kubernetes ConfigMap swaps a symlink) and a reload happens only after
//! `debounce` passes without events. A reload whose file content is identical
//! to the previous attempt is skipped. An empty file is an error, never "serve
//! nothing". SIGHUP (wired by `main`) forces a reload.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::{RecursiveMode, Watcher};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cache::Cache;
use crate::config::{self, ConfigErrors};
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, SnapshotError};

/// Why a file could not become a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The YAML is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The resources are inconsistent (a defect of translation if it happens).
    #[error("{file}: {source}")]
    Snapshot {
        /// The file.
        file: String,
        /// The consistency error.
        source: SnapshotError,
    },
}

/// Loads `path` into a snapshot, sharing unchanged resources with `previous`.
pub fn load(path: &Path, previous: Option<&Snapshot>) -> Result<Snapshot, LoadError> {
    let resources = config::load_file(path)?;
    Snapshot::build(resources, previous).map_err(|source| LoadError::Snapshot {
        file: path.display().to_string(),
        source,
    })
}

/// What `/status` shows about the source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    /// The config file.
    pub config: PathBuf,
    /// The version being served.
    pub version: String,
    /// When that version was published (ms since the Unix epoch).
    pub published_at_unix_ms: u64,
    /// The error of the last reload attempt, if it failed; cleared by a good one.
    pub last_reload_error: Option<String>,
    /// When the last reload attempt failed.
    pub last_reload_error_at_unix_ms: Option<u64>,
}

/// Reloads the file into the cache and keeps [`SourceStatus`] current.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    cache: Cache,
    metrics: Arc<Metrics>,
    status: Mutex<SourceStatus>,
    last_attempt: Mutex<Option<[u8; 32]>>,
}

impl Reloader {
    /// A reloader for `path`, publishing into `cache` (which already serves the
    /// snapshot loaded at start).
    pub fn new(path: PathBuf, cache: Cache, metrics: Arc<Metrics>) -> Self {
        let current = cache.current();
        metrics.set_version(&current.version);
        metrics.config_valid.set(1);
        let status = SourceStatus {
            config: path.clone(),
            version: current.version.clone(),
            published_at_unix_ms: now_ms(),
            ..Default::default()
        };
        let digest = std::fs::read(&path).ok().map(|b| digest(&b));
        Reloader {
            path,
            cache,
            metrics,
            status: Mutex::new(status),
            last_attempt: Mutex::new(digest),
        }
    }

    /// A copy of the current status.
    pub fn status(&self) -> SourceStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reads the file and publishes it if valid. `force` reloads even when the
    /// content is the same as the previous attempt. Returns whether a new
    /// snapshot was published.
    pub fn reload(&self, force: bool) -> bool {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                self.fail(format!("{}: cannot read: {e}", self.path.display()));
                return false;
            }
        };
        let d = digest(&bytes);
        if let Ok(mut last) = self.last_attempt.lock() {
            if !force && *last == Some(d) {
                debug!(file = %self.path.display(), "content unchanged; reload skipped");
                return false;
            }
            *last = Some(d);
        }
        let previous = self.cache.current();
        let text = String::from_utf8_lossy(&bytes);
        let result = config::load_str(&self.path.display().to_string(), &text)
            .map_err(LoadError::from)
            .and_then(|r| {
                Snapshot::build(r, Some(&previous)).map_err(|source| LoadError::Snapshot {
                    file: self.path.display().to_string(),
                    source,
                })
            });
        match result {
            Ok(snap) => {
                let version = snap.version.clone();
                let counts = snap.counts();
                let changed = self.cache.publish(snap);
                self.metrics.config_valid.set(1);
                if let Ok(mut s) = self.status.lock() {
                    s.last_reload_error = None;
                    s.last_reload_error_at_unix_ms = None;
                    if changed {
                        s.version = version.clone();
                        s.published_at_unix_ms = now_ms();
                    }
                }
                if changed {
                    self.metrics.reloads.inc();
                    self.metrics.set_version(&version);
                    info!(
                        %version, clusters = counts[0], endpoints = counts[1],
                        listeners = counts[2], routes = counts[3], "config reloaded; pushing"
                    );
                } else {
                    info!(%version, "config reloaded; nothing changed");
                }
                changed
            }
            Err(e) => {
                self.fail(e.to_string());
                false
            }
        }
    }

    fn fail(&self, message: String) {
        error!(error = %message, "invalid config; still serving the last good version");
        self.metrics.reload_errors.inc();
        self.metrics.config_valid.set(0);
        if let Ok(mut s) = self.status.lock() {
            s.last_reload_error = Some(message);
            s.last_reload_error_at_unix_ms = Some(now_ms());
        }
    }
}

/// Watches the file's directory and reloads after each burst of changes, and
/// whenever `trigger` is notified. Ends when `shutdown` is cancelled.
pub async fn watch(
    reloader: Arc<Reloader>,
    debounce: Duration,
    trigger: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dir = reloader
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (tx, mut rx) = mpsc::channel::<()>(64);
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            // A full channel already holds a wake-up: dropping this one loses nothing.
            Ok(_) => {
                let _ = tx.try_send(());
            }
            Err(e) => warn!(error = %e, "file watch error"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    info!(dir = %dir.display(), "watching for config changes");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = trigger.notified() => {
                info!("reload requested");
                reload_blocking(&reloader, true).await;
            }
            ev = rx.recv() => {
                if ev.is_none() {
                    break;
                }
                // Debounce: wait until the directory has been quiet for `debounce`.
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(debounce) => break,
                        more = rx.recv() => if more.is_none() { break },
                    }
                }
                reload_blocking(&reloader, false).await;
            }
        }
    }
    drop(watcher);
    Ok(())
}

async fn reload_blocking(reloader: &Arc<Reloader>, force: bool) {
    let r = Arc::clone(reloader);
    if let Err(e) = tokio::task::spawn_blocking(move || r.reload(force)).await {
        error!(error = %e, "reload task failed");
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
