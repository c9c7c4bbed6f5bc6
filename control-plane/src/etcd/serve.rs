//! Serving from etcd: the first revision at start-up, then a watch that
//! hands every new revision of the key to the same [`Reloader`] a file
//! source uses (same validation, same content-hashed versions, same last
//! good revision on disk, which is the replica's cache).
//!
//! - **Start-up** reads the key. An invalid value, a missing key, or no
//!   member answering within [`START_TIMEOUT`] makes the replica serve the
//!   revision it last cached (its `--cache-dir`), so a restart during an etcd
//!   outage never empties a fleet's config; with no cached revision it
//!   refuses to start, naming both reasons.
//! - **The watch** starts right after the revision read, so nothing written
//!   in between is missed. Each put is validated and, if valid, published;
//!   an invalid one (written around `pylon-xds apply`) is logged and shown in
//!   `/status` with its etcd revision, and the last good snapshot keeps
//!   serving. A deleted key is treated the same way: nothing is withdrawn.
//! - **etcd unreachable** (the member watched died, lost its leader, or the
//!   connection broke): the replica keeps serving, shows the outage in
//!   `/status` (`etcd.connected`, `outage_since_unix_ms`, `last_error`) and
//!   reconnects with jittered exponential backoff, 100 ms to 10 s, through
//!   the next member. Reconnecting reads the key again before watching, so
//!   whatever was written meanwhile is served.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::EventType;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{short_error, Etcd, EtcdError, EtcdOptions, Read, Revision};
use crate::snapshot::Snapshot;
use crate::source::{now_ms, EtcdStatus, LoadError, Origin, Outcome, Reloader, Source, Started};

/// How long start-up waits for etcd before serving the cached revision.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect delay.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The origin of revision `rev` of the key.
fn origin(url: &super::EtcdUrl, rev: i64) -> Origin {
    Origin {
        name: format!("etcd:{}@{rev}", url.key),
        served_from: format!("{url}@{rev}").into(),
        saved_as: format!("{url}@{rev}"),
    }
}

/// The etcd revision a cached copy says it was (its header names
/// `etcd://...@REV`).
pub fn cached_revision(bytes: &[u8]) -> Option<i64> {
    let first = bytes.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?;
    let at = line.find("etcd://")?;
    let rest = &line[at..];
    let (_, rev) = rest.split_once('@')?;
    let digits: String = rev.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// How the first revision was found.
#[derive(Debug)]
pub struct EtcdStart {
    /// The first snapshot to serve.
    pub snapshot: Snapshot,
    /// For [`Reloader::new`].
    pub started: Started,
    /// For [`Reloader::set_etcd`].
    pub status: EtcdStatus,
    /// The connection, and the revision to watch from, when etcd answered.
    pub watch_from: Option<(Arc<Etcd>, i64)>,
}

/// Reads the first revision (or, failing that, the cached one). Fails only
/// when nothing can be served, or the TLS files cannot be used.
pub async fn start(source: &Source, opts: &EtcdOptions) -> anyhow::Result<EtcdStart> {
    let etcd = Arc::new(Etcd::connect(opts).await?);
    let url = &opts.url;
    let mut status = EtcdStatus {
        endpoints: url.endpoints.clone(),
        key: url.key.clone(),
        ..Default::default()
    };
    let read = match tokio::time::timeout(START_TIMEOUT, etcd.read(None)).await {
        Ok(r) => r,
        Err(_) => Err(EtcdError::Unreachable(format!(
            "no member answered within {}s",
            START_TIMEOUT.as_secs()
        ))),
    };
    let mut watch_from = None;
    let (origin, first) = match read {
        Ok(Read {
            kv: Some(kv),
            header_revision,
            member,
        }) => {
            status.connected = true;
            status.member = Some(member);
            status.latest_revision = Some(kv.revision);
            watch_from = Some((Arc::clone(&etcd), header_revision + 1));
            (origin(url, kv.revision), Ok(kv.value))
        }
        Ok(Read {
            kv: None,
            header_revision,
            member,
        }) => {
            status.connected = true;
            status.member = Some(member);
            watch_from = Some((Arc::clone(&etcd), header_revision + 1));
            let why = format!(
                "etcd key {} does not exist: write the config with `pylon-xds apply FILE --etcd {url}`",
                url.key
            );
            (origin(url, 0), Err(LoadError::Unavailable(why)))
        }
        Err(e) => {
            status.outage_since_unix_ms = Some(now_ms());
            status.last_error = Some(e.to_string());
            (origin(url, 0), Err(LoadError::Unavailable(e.to_string())))
        }
    };
    let starting = source.clone();
    let from = origin.clone();
    let (snapshot, started) =
        tokio::task::spawn_blocking(move || starting.start_with(&from, first)).await??;
    match started.saved() {
        Some(saved) => {
            status.served_from_cache = true;
            status.revision = cached_revision(&saved.bytes);
            status.invalid_revision = status.latest_revision;
        }
        None => status.revision = status.latest_revision,
    }
    info!(
        etcd = %url,
        revision = ?status.revision,
        from_cache = status.served_from_cache,
        "config loaded from etcd"
    );
    Ok(EtcdStart {
        snapshot,
        started,
        status,
        watch_from,
    })
}

/// Jittered exponential backoff: each delay is drawn from `[d/2, d]`, `d`
/// doubling from [`BACKOFF_BASE`] to [`BACKOFF_MAX`].
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let d = BACKOFF_BASE
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(2);
        // Jitter without a random number generator: the clock's nanoseconds
        // differ between replicas, which is all spreading them out needs.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| u64::from(t.subsec_nanos()))
            .unwrap_or(0);
        Duration::from_millis(ms / 2 + nanos % (ms / 2 + 1))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The watch loop: runs until `shutdown`. `first` is the connection and
/// revision start-up read, if etcd answered then. `trigger` (SIGHUP) reads
/// the key again and re-validates it.
pub async fn watch(
    reloader: Arc<Reloader>,
    opts: EtcdOptions,
    first: Option<(Arc<Etcd>, i64)>,
    trigger: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut w = Watcher {
        reloader,
        opts,
        last_seen: None,
        backoff: Backoff::default(),
        preferred: 0,
    };
    w.last_seen = w.reloader.status().etcd.and_then(|e| e.latest_revision);
    let mut resume = first;
    loop {
        let ended = tokio::select! {
            () = shutdown.cancelled() => return,
            e = w.session(resume.take(), &trigger) => e,
        };
        w.outage(ended);
        let delay = w.backoff.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

struct Watcher {
    reloader: Arc<Reloader>,
    opts: EtcdOptions,
    /// The newest revision of the key handed to the reloader.
    last_seen: Option<i64>,
    backoff: Backoff,
    /// The member that answered last, tried first after a reconnect.
    preferred: usize,
}

impl Watcher {
    /// One connection: read (unless `resume` says where start-up left
    /// off), then watch until something breaks. Returns why it ended.
    async fn session(&mut self, resume: Option<(Arc<Etcd>, i64)>, trigger: &Notify) -> String {
        let (etcd, from) = match resume {
            Some(r) => r,
            None => {
                // A new connection each time: renewed TLS files are read.
                let etcd = match Etcd::connect(&self.opts).await {
                    Ok(e) => Arc::new(e),
                    Err(e) => return e.to_string(),
                };
                etcd.prefer(self.preferred);
                let read = match etcd.read(None).await {
                    Ok(r) => r,
                    Err(e) => return e.to_string(),
                };
                self.connected(&read.member);
                self.current(read.kv).await;
                (etcd, read.header_revision + 1)
            }
        };
        let (mut stream, member) = match etcd.watch(from).await {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        self.preferred = etcd.preferred();
        self.connected(&member);
        self.backoff.reset();
        loop {
            tokio::select! {
                () = trigger.notified() => {
                    info!("re-reading the etcd key (reload requested)");
                    match etcd.read(None).await {
                        Ok(read) => {
                            if let Some(kv) = read.kv {
                                self.offer(kv, true).await;
                            }
                        }
                        Err(e) => return e.to_string(),
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            return match resp.compact_revision() {
                                0 => format!("the watch was cancelled: {}", resp.cancel_reason()),
                                r => format!("the watch was cancelled: etcd compacted up to revision {r}"),
                            };
                        }
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            match ev.event_type() {
                                EventType::Put => {
                                    let rev = Revision { revision: kv.mod_revision(), value: kv.value().to_vec() };
                                    self.offer(rev, false).await;
                                }
                                EventType::Delete => self.deleted(kv.mod_revision()),
                            }
                        }
                    }
                    Ok(None) => return format!("{member}: the watch stream ended"),
                    Err(e) => return format!("{member}: {}", short_error(&e)),
                }
            }
        }
    }

    /// The key as read after a (re)connect.
    async fn current(&mut self, kv: Option<Revision>) {
        match kv {
            Some(kv) if self.last_seen == Some(kv.revision) => {}
            Some(kv) => self.offer(kv, false).await,
            None => {
                // Written before, deleted while we were away.
                if self.last_seen.is_some() {
                    self.missing();
                }
            }
        }
    }

    /// Hands revision `kv` to the reloader and records the outcome.
    async fn offer(&mut self, kv: Revision, force: bool) {
        self.last_seen = Some(kv.revision);
        let origin = origin(&self.opts.url, kv.revision);
        let r = Arc::clone(&self.reloader);
        let rev = kv.revision;
        let outcome = tokio::task::spawn_blocking(move || r.accept(&origin, &kv.value, force))
            .await
            .unwrap_or(Outcome::Invalid);
        let failing = self.reloader.status().last_reload_error.is_some();
        self.reloader.update_etcd(|e| {
            e.latest_revision = Some(rev);
            let served = match outcome {
                Outcome::Published | Outcome::Unchanged => true,
                Outcome::Invalid => false,
                // The same bytes as the attempt before: as good as it was.
                Outcome::Skipped => !failing,
            };
            if served {
                e.revision = Some(rev);
                e.served_from_cache = false;
                e.invalid_revision = None;
            } else {
                e.invalid_revision = Some(rev);
            }
        });
        if outcome == Outcome::Invalid {
            warn!(
                revision = rev,
                "etcd revision {rev} is invalid; still serving the last good version"
            );
        }
    }

    fn deleted(&mut self, rev: i64) {
        self.last_seen = Some(rev);
        self.reloader.fail_source(format!(
            "etcd key {} was deleted at revision {rev}: still serving the last good version \
             (write the config again with `pylon-xds apply`)",
            self.opts.url.key
        ));
        self.reloader.update_etcd(|e| {
            e.latest_revision = Some(rev);
            e.invalid_revision = Some(rev);
        });
    }

    fn missing(&mut self) {
        self.reloader.fail_source(format!(
            "etcd key {} does not exist: still serving the last good version \
             (write the config with `pylon-xds apply`)",
            self.opts.url.key
        ));
    }

    fn connected(&self, member: &str) {
        let mut was_down = false;
        self.reloader.update_etcd(|e| {
            was_down = !e.connected;
            e.connected = true;
            e.member = Some(member.to_string());
            e.outage_since_unix_ms = None;
            e.last_error = None;
        });
        if was_down {
            info!(member, "etcd reachable; watching the key");
        }
    }

    fn outage(&self, why: String) {
        let mut was_up = false;
        self.reloader.update_etcd(|e| {
            was_up = e.connected;
            e.connected = false;
            e.member = None;
            if e.outage_since_unix_ms.is_none() {
                e.outage_since_unix_ms = Some(now_ms());
            }
            e.last_error = Some(why.clone());
        });
        if was_up {
            warn!(error = %why, "etcd unreachable; serving the last good version and reconnecting");
        } else {
            tracing::debug!(error = %why, "etcd still unreachable");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_copy_names_its_revision() {
        let header = b"# pylon-xds: the last good revision of etcd://127.0.0.1:2379/pylon/config@42, served as version abc.\n# ...\nclusters: []\n";
        assert_eq!(cached_revision(header), Some(42));
        assert_eq!(cached_revision(b"# pylon-xds: of /etc/pylon.yaml\n"), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(
            first >= BACKOFF_BASE / 2 && first <= BACKOFF_BASE,
            "{first:?}"
        );
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_MAX, "{d:?}");
        }
        assert!(b.next_delay() >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_BASE);
    }
}
