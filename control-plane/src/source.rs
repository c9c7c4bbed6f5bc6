//! The YAML file as the source of truth: load, watch, reload, and fall back to
//! the last good revision.
//!
//! Owned here: turning the file into a [`Snapshot`] and publishing it into the
//! [`Cache`], keeping the last good revision on disk (`state`), and the reload
//! status shown by `/status` and the metrics. An invalid edit is logged,
//! counted and shown, and publishes nothing: the last good snapshot keeps
//! being served until the file is fixed. Start-up and reloads read the file
//! the same way ([`config::read_file`] then [`config::load_bytes`]: bounded
//! size, UTF-8 or an error with its position).
//!
//! **Only complete files are read.** A reload happens when a file is closed
//! after writing (inotify's `IN_CLOSE_WRITE`) or renamed into place
//! (`IN_MOVED_TO`), never on a bare modification, so a file being written in
//! several parts is read once its writer has closed it. The whole directory
//! is watched: a rename replaces the file's inode, and a Kubernetes ConfigMap
//! swaps a symlink (`..data`). Events are debounced (`debounce` of quiet
//! before a reload), and a reload whose file content is identical to the
//! previous attempt is skipped. An empty file is an error, never "serve
//! nothing". SIGHUP (wired by `main`) forces a reload of whatever is on disk.
//! Tools that write the file should still replace it atomically (write a
//! temporary file, then rename it over the config), as editors do.
//!
//! **Last good revision.** With a state directory, every accepted revision is
//! saved ([`LastGood`]). If the file is invalid at start-up, the saved
//! revision is served instead, the config is marked invalid (metrics,
//! `/status`, log) and the next valid edit takes over; only when no revision
//! was ever accepted does start-up fail.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cache::Cache;
use crate::config::{self, ConfigErrors, Options};
use crate::dns::Dns;
use crate::metrics::Metrics;
use crate::resources::Resources;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::state::LastGood;

/// Why a file could not become a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The YAML is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// The resources are inconsistent (a defect of translation if it happens).
    #[error("{file}: {source}")]
    Snapshot {
        /// The file.
        file: String,
        /// The consistency error.
        source: SnapshotError,
    },
    /// The source could not be read at all (etcd unreachable, the key
    /// absent).
    #[error("{0}")]
    Unavailable(String),
    /// The file is invalid and no good revision was ever saved.
    #[error("{error}\nno last good revision to serve instead ({why})")]
    NoLastGood {
        /// Why the file was refused.
        error: Box<LoadError>,
        /// Why there is no saved revision.
        why: String,
    },
}

/// Loads `path` into a snapshot, sharing unchanged resources with
/// `previous`. Host names in endpoints are not resolved (`validate`).
pub fn load(
    path: &Path,
    options: &Options,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, LoadError> {
    let bytes = config::read_file(path, &options.limits)?;
    build(
        &path.display().to_string(),
        &bytes,
        options,
        previous,
        None,
        None,
    )
    .map(|(s, _)| s)
}

/// Loads `bytes`, named `file` in errors, into a snapshot. Host names in
/// endpoints are not resolved (`apply`, `history`, `diff`).
pub fn load_bytes(file: &str, bytes: &[u8], options: &Options) -> Result<Snapshot, LoadError> {
    build(file, bytes, options, None, None, None).map(|(s, _)| s)
}

/// Loads the bytes of a config file named `file` into a snapshot. With
/// `dns`, endpoint host names are tracked (new ones looked up first: this
/// blocks on the runtime, so it runs on a blocking thread) and filled in;
/// the resources as loaded, before filling, come back when there are names,
/// for rebuilding the snapshot when an answer changes. With `memo`, what did
/// not change since the revision read before is not read again.
fn build(
    file: &str,
    bytes: &[u8],
    options: &Options,
    previous: Option<&Snapshot>,
    dns: Option<&Dns>,
    memo: Option<&mut config::Memo>,
) -> Result<(Snapshot, Option<Resources>), LoadError> {
    let mut resources = match memo {
        Some(memo) => config::load_bytes_reusing(file, bytes, options, memo)?,
        None => config::load_bytes(file, bytes, options)?,
    };
    let template = match dns {
        Some(dns) if !resources.names.is_empty() => {
            let template = resources.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.block_on(dns.track(&resources.names));
            }
            dns.fill(&mut resources);
            Some(template)
        }
        Some(dns) => {
            // No names any more: stop looking the old ones up.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.block_on(dns.track(&[]));
            }
            None
        }
        None => None,
    };
    let snapshot = Snapshot::build(resources, previous).map_err(|source| LoadError::Snapshot {
        file: file.to_string(),
        source,
    })?;
    Ok((snapshot, template))
}

/// Where the config comes from and how it is bounded and kept.
#[derive(Debug, Clone)]
pub struct Source {
    /// The YAML file.
    pub path: PathBuf,
    /// How the file is read (bounds, inline secrets).
    pub options: Options,
    /// Where the last good revision is kept; `None` keeps none.
    pub last_good: Option<LastGood>,
    /// Resolves endpoint host names; `None` leaves them out of the snapshot.
    pub dns: Option<Arc<Dns>>,
}

/// How start-up found the snapshot it serves first.
#[derive(Debug)]
pub struct Started {
    /// The file's digest (or `None` if it could not be read).
    digest: Option<[u8; 32]>,
    /// Why the file itself was refused, when the last good revision is
    /// served instead.
    refused: Option<String>,
    /// What the snapshot was read from.
    served_from: PathBuf,
    /// Why the revision could not be saved, if it could not.
    save_error: Option<String>,
    /// The served revision as loaded, before its host names were filled in
    /// (only when it has some).
    template: Option<Resources>,
    /// The saved revision served, when the source itself was refused.
    saved: Option<crate::state::Saved>,
}

impl Started {
    /// The saved last good revision being served, when the source itself
    /// could not be (invalid or unreachable at start-up).
    pub fn saved(&self) -> Option<&crate::state::Saved> {
        self.saved.as_ref()
    }
}

/// Where one revision came from: how errors name it, what `/status` shows
/// as its source, and how the saved copy describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The name errors start with: the file, or `etcd:KEY@REVISION`.
    pub name: String,
    /// What `/status` shows in `served_from`.
    pub served_from: PathBuf,
    /// What the header of the saved last good revision says it is.
    pub saved_as: String,
}

impl Origin {
    /// A revision read from the file at `path`.
    pub fn file(path: &Path) -> Origin {
        let name = path.display().to_string();
        Origin {
            served_from: path.to_path_buf(),
            saved_as: name.clone(),
            name,
        }
    }
}

/// What [`Reloader::accept`] did with a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Valid, and published: it changed what is served.
    Published,
    /// Valid, and it serves exactly what was served already.
    Unchanged,
    /// Byte for byte the previous attempt: not looked at again.
    Skipped,
    /// Invalid: logged, shown, and the last good snapshot kept.
    Invalid,
}

impl Source {
    /// Loads the file; if it is invalid, the last good revision. Fails only
    /// when neither can be served. With host names to resolve, it blocks on
    /// the runtime: call it on a blocking thread.
    pub fn start(&self) -> Result<(Snapshot, Started), LoadError> {
        let read = config::read_file(&self.path, &self.options.limits).map_err(LoadError::from);
        self.start_with(&Origin::file(&self.path), read)
    }

    /// As [`Source::start`], with the first revision already read (or why
    /// it could not be) from `origin`.
    pub fn start_with(
        &self,
        origin: &Origin,
        read: Result<Vec<u8>, LoadError>,
    ) -> Result<(Snapshot, Started), LoadError> {
        let digest = read.as_ref().ok().map(|b| digest(b));
        let dns = self.dns.as_deref();
        let error = match read.and_then(|bytes| {
            build(&origin.name, &bytes, &self.options, None, dns, None).map(|s| (s, bytes))
        }) {
            Ok(((snapshot, template), bytes)) => {
                let save_error = self.save(origin, &snapshot, &bytes);
                return Ok((
                    snapshot,
                    Started {
                        digest,
                        refused: None,
                        served_from: origin.served_from.clone(),
                        save_error,
                        template,
                        saved: None,
                    },
                ));
            }
            Err(e) => e,
        };
        let Some(last_good) = &self.last_good else {
            return Err(error);
        };
        let saved = match last_good.load() {
            Ok(Some(saved)) => saved,
            Ok(None) => {
                return Err(LoadError::NoLastGood {
                    error: Box::new(error),
                    why: format!("{} does not exist", last_good.path().display()),
                })
            }
            Err(e) => {
                return Err(LoadError::NoLastGood {
                    error: Box::new(error),
                    why: e.to_string(),
                })
            }
        };
        let saved_name = saved.path.display().to_string();
        match build(&saved_name, &saved.bytes, &self.options, None, dns, None) {
            Ok((snapshot, template)) => {
                error!(
                    error = %error,
                    last_good = %saved_name,
                    version = %snapshot.version,
                    "the config cannot be served (invalid, or its source unreachable); serving the last good revision"
                );
                Ok((
                    snapshot,
                    Started {
                        digest,
                        refused: Some(error.to_string()),
                        served_from: saved.path.clone(),
                        save_error: None,
                        template,
                        saved: Some(saved),
                    },
                ))
            }
            Err(e) => Err(LoadError::NoLastGood {
                error: Box::new(error),
                why: format!("the saved revision is invalid too: {e}"),
            }),
        }
    }

    /// Saves an accepted revision; a failure is logged and returned as text
    /// for `/status`.
    fn save(&self, origin: &Origin, snapshot: &Snapshot, bytes: &[u8]) -> Option<String> {
        let last_good = self.last_good.as_ref()?;
        match last_good.save(&origin.saved_as, &snapshot.version, bytes) {
            Ok(()) => None,
            Err(e) => {
                warn!(error = %e, "cannot save the last good revision; a restart with an invalid file would not start");
                Some(e.to_string())
            }
        }
    }
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
    /// The file the served version was read from: the config file, or the
    /// saved last good revision when the config was invalid at start-up.
    pub served_from: PathBuf,
    /// Where the last good revision is kept (`null`: not kept).
    pub last_good: Option<PathBuf>,
    /// Why the last good revision could not be saved, if the last save failed.
    pub last_good_error: Option<String>,
    /// The error of the last reload attempt, if it failed; cleared by a good one.
    pub last_reload_error: Option<String>,
    /// When the last reload attempt failed.
    pub last_reload_error_at_unix_ms: Option<u64>,
    /// With an etcd source: its revisions and connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdStatus>,
}

/// What `/status` shows of an etcd source (`etcd` in the document). Defined
/// here, beside the status that carries it, and kept current by `etcd::serve`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EtcdStatus {
    /// The members, as given.
    pub endpoints: Vec<String>,
    /// The key holding the config.
    pub key: String,
    /// The etcd revision of the content being served (`null` when the
    /// cached copy does not say).
    pub revision: Option<i64>,
    /// Whether what is served came from the replica's cache rather than
    /// from etcd (at start-up, with etcd unreachable or invalid).
    pub served_from_cache: bool,
    /// The newest revision of the key this replica has seen.
    pub latest_revision: Option<i64>,
    /// The newest revision, when it could not be served (invalid, or the
    /// key deleted): the last good one above is served instead.
    pub invalid_revision: Option<i64>,
    /// A member answers and the key is watched.
    pub connected: bool,
    /// The member the watch goes through.
    pub member: Option<String>,
    /// Since when no member answers (ms since the Unix epoch); `null`
    /// while connected.
    pub outage_since_unix_ms: Option<u64>,
    /// Why the last attempt to reach etcd failed; `null` while connected.
    pub last_error: Option<String>,
}

/// Reloads the file into the cache and keeps [`SourceStatus`] current.
#[derive(Debug)]
pub struct Reloader {
    source: Source,
    cache: Cache,
    metrics: Arc<Metrics>,
    status: Mutex<SourceStatus>,
    last_attempt: Mutex<Option<[u8; 32]>>,
    /// The served revision before its host names were filled in, when it
    /// has some: rebuilt with new answers by [`Reloader::republish`].
    template: Mutex<Option<Resources>>,
    /// Held while a snapshot is built and published, so a reload and a DNS
    /// republish cannot publish out of order. It keeps what the last reload
    /// read, for the next one to reuse.
    publishing: Mutex<config::Memo>,
}

impl Reloader {
    /// A reloader for `source`, publishing into `cache` (which already serves
    /// what `started` loaded).
    pub fn new(source: Source, started: &Started, cache: Cache, metrics: Arc<Metrics>) -> Self {
        let current = cache.current();
        metrics.set_version(&current.version);
        let now = now_ms();
        let mut status = SourceStatus {
            config: source.path.clone(),
            version: current.version.clone(),
            published_at_unix_ms: now,
            served_from: started.served_from.clone(),
            last_good: source.last_good.as_ref().map(|l| l.path().to_path_buf()),
            last_good_error: started.save_error.clone(),
            ..Default::default()
        };
        match &started.refused {
            Some(e) => {
                metrics.config_valid.set(0);
                metrics.reload_errors.inc();
                status.last_reload_error = Some(e.clone());
                status.last_reload_error_at_unix_ms = Some(now);
            }
            None => {
                metrics.config_valid.set(1);
            }
        }
        Reloader {
            source,
            cache,
            metrics,
            status: Mutex::new(status),
            last_attempt: Mutex::new(started.digest),
            template: Mutex::new(started.template.clone()),
            publishing: Mutex::new(config::Memo::default()),
        }
    }

    /// The resolver of endpoint host names, if any.
    pub fn dns(&self) -> Option<&Arc<Dns>> {
        self.source.dns.as_ref()
    }

    /// Rebuilds the served revision with the current DNS answers and
    /// publishes it if it changed (blocking: call it on a blocking thread).
    /// Returns whether a new snapshot was published.
    pub fn republish(&self) -> bool {
        let _publishing = self
            .publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (Some(dns), Some(mut resources)) = (
            self.source.dns.as_ref(),
            self.template
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        ) else {
            return false;
        };
        dns.fill(&mut resources);
        let previous = self.cache.current();
        let snap = match Snapshot::build(resources, Some(&previous)) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "rebuilding the snapshot with new DNS answers failed");
                return false;
            }
        };
        let version = snap.version.clone();
        let changed = self.cache.publish(snap);
        if changed {
            self.metrics.set_version(&version);
            if let Ok(mut s) = self.status.lock() {
                s.version = version.clone();
                s.published_at_unix_ms = now_ms();
            }
            info!(%version, "DNS answers changed endpoints; pushing");
        }
        changed
    }

    /// A copy of the current status.
    pub fn status(&self) -> SourceStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The config file.
    pub fn path(&self) -> &Path {
        &self.source.path
    }

    /// Reads the file and publishes it if valid. `force` reloads even when the
    /// content is the same as the previous attempt. Returns whether a new
    /// snapshot was published.
    pub fn reload(&self, force: bool) -> bool {
        let path = &self.source.path;
        match config::read_file(path, &self.source.options.limits) {
            Ok(bytes) => self.accept(&Origin::file(path), &bytes, force) == Outcome::Published,
            Err(e) => {
                // Whatever comes next differs from this attempt.
                if let Ok(mut last) = self.last_attempt.lock() {
                    *last = None;
                }
                self.fail(e.to_string());
                false
            }
        }
    }

    /// Validates one revision of the source, read from `origin`, and
    /// publishes it if it is valid (blocking: call it on a blocking thread).
    /// `force` looks at it even when it is byte for byte the previous
    /// attempt.
    pub fn accept(&self, origin: &Origin, bytes: &[u8], force: bool) -> Outcome {
        let d = digest(bytes);
        if let Ok(mut last) = self.last_attempt.lock() {
            if !force && *last == Some(d) {
                debug!(source = %origin.name, "content unchanged; reload skipped");
                return Outcome::Skipped;
            }
            *last = Some(d);
        }
        let mut memo = self
            .publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = self.cache.current();
        let dns = self.source.dns.as_deref();
        match build(
            &origin.name,
            bytes,
            &self.source.options,
            Some(&previous),
            dns,
            Some(&mut memo),
        ) {
            Ok((snap, template)) => {
                *self.template.lock().unwrap_or_else(PoisonError::into_inner) = template;
                let version = snap.version.clone();
                let counts = snap.counts();
                let saved = self.source.save(origin, &snap, bytes);
                let changed = self.cache.publish(snap);
                self.metrics.config_valid.set(1);
                if let Ok(mut s) = self.status.lock() {
                    s.last_reload_error = None;
                    s.last_reload_error_at_unix_ms = None;
                    s.last_good_error = saved;
                    s.served_from = origin.served_from.clone();
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
                if changed {
                    Outcome::Published
                } else {
                    Outcome::Unchanged
                }
            }
            Err(e) => {
                self.fail(e.to_string());
                Outcome::Invalid
            }
        }
    }

    /// Changes the etcd part of the status (a no-op for a file source).
    pub fn update_etcd(&self, f: impl FnOnce(&mut EtcdStatus)) {
        if let Ok(mut s) = self.status.lock() {
            if let Some(e) = s.etcd.as_mut() {
                f(e);
            }
        }
    }

    /// Makes the status show an etcd source.
    pub fn set_etcd(&self, status: EtcdStatus) {
        if let Ok(mut s) = self.status.lock() {
            s.etcd = Some(status);
        }
    }

    /// Records that the source holds nothing to serve (a deleted etcd key):
    /// as [`Reloader::fail`], and the next revision is looked at whatever
    /// its content.
    pub fn fail_source(&self, message: String) {
        if let Ok(mut last) = self.last_attempt.lock() {
            *last = None;
        }
        self.fail(message);
    }

    /// Records a revision that could not be served: logged, counted, shown
    /// in `/status`; the last good snapshot stays.
    pub fn fail(&self, message: String) {
        error!(error = %message, "invalid config; still serving the last good version");
        self.metrics.reload_errors.inc();
        self.metrics.config_valid.set(0);
        if let Ok(mut s) = self.status.lock() {
            s.last_reload_error = Some(message);
            s.last_reload_error_at_unix_ms = Some(now_ms());
        }
    }
}

/// Whether `event` means that the config may now hold a complete new
/// revision: a file closed after writing or renamed into place, concerning
/// the config itself, or anything renamed when the config is a symlink (a
/// ConfigMap swaps the `..data` link its files point through). A bare
/// modification never does: its writer may not be done.
fn completes_a_write(event: &notify::Event, config: &Path, via_symlink: bool) -> bool {
    let is_config = |p: &PathBuf| p.file_name().is_some() && p.file_name() == config.file_name();
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            event.paths.iter().any(is_config)
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Any)) => {
            via_symlink || event.paths.iter().any(is_config)
        }
        // (from, to): the destination counts.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            via_symlink || event.paths.last().is_some_and(is_config)
        }
        // The watcher lost events (queue overflow): the file may have changed.
        EventKind::Any | EventKind::Other => true,
        _ => false,
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
    let config = reloader.path().to_path_buf();
    let dir = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (tx, mut rx) = mpsc::channel::<()>(64);
    let via_symlink = std::fs::symlink_metadata(&config).is_ok_and(|m| m.file_type().is_symlink());
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            // A full channel already holds a wake-up: dropping this one loses nothing.
            Ok(event) if completes_a_write(&event, &config, via_symlink) => {
                let _ = tx.try_send(());
            }
            Ok(event) => debug!(?event, "file event ignored (not a completed write)"),
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
