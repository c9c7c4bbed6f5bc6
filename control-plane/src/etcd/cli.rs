//! The commands that edit the config in etcd: `apply`, `history`, `diff`,
//! `rollback`, and `apply --watch-file`.
//!
//! Every write goes through [`write_revision`]: the new content is
//! validated first (nothing is written if it is invalid), compared resource
//! by resource with what etcd holds, and written with a compare-and-swap on
//! the revision that was read (or the one `--expect-revision` pins). If the
//! key moved in between, nothing is written and the error names both
//! revisions: no edit is ever lost silently. Each function returns the text
//! to print; the binary prints it and picks the exit code.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use tracing::{error, info};

use super::{Etcd, EtcdError, Meta, Write};
use crate::config::{self, Options};
use crate::diff::diff;
use crate::snapshot::Snapshot;
use crate::source::{self, LoadError};

/// Why a command failed. Its text is what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The content is invalid; nothing was written.
    #[error("{0}\nnothing written: the file is invalid")]
    Invalid(LoadError),
    /// The key is not at the revision the write was based on.
    #[error("{}", conflict_text(*.read, *.current, *.pinned))]
    Conflict {
        /// The revision read (or pinned with `--expect-revision`).
        read: i64,
        /// Where the key is now (`None`: it does not exist).
        current: Option<i64>,
        /// `--expect-revision` gave `read`.
        pinned: bool,
    },
    /// etcd could not answer.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A revision asked for does not hold the config.
    #[error("{0}")]
    Revision(String),
}

fn conflict_text(read: i64, current: Option<i64>, pinned: bool) -> String {
    let now = match current {
        Some(c) => format!("revision {c}"),
        None => "no revision (the key does not exist)".to_string(),
    };
    let see = match current {
        Some(c) => format!(" See what changed with `pylon-xds diff {read} {c}`, then apply again."),
        None => String::new(),
    };
    if pinned {
        format!(
            "conflict: the etcd key is at {now}, not at revision {read} (--expect-revision): \
             nothing written.{see}"
        )
    } else {
        format!(
            "conflict: someone else wrote the etcd key: it is at {now}, while this write was based on \
             revision {read}: nothing written.{see}"
        )
    }
}

/// The snapshot of `bytes` named `name` (host names are not resolved).
fn snapshot(name: &str, bytes: &[u8], options: &Options) -> Result<Snapshot, LoadError> {
    source::load_bytes(name, bytes, options)
}

/// How a revision of the key is named in errors.
fn name_of(etcd: &Etcd, rev: i64) -> String {
    format!("etcd:{}@{rev}", etcd.key())
}

/// Validates `bytes` (`name` in errors), shows what changes against what
/// etcd holds, and writes it with a compare-and-swap on the revision read,
/// or on `expect`. Returns the text to print and the revision the key is at
/// afterwards (the one written, or the one that already held the content).
pub async fn write_revision(
    etcd: &Etcd,
    name: &str,
    bytes: &[u8],
    options: &Options,
    expect: Option<i64>,
    action: String,
) -> Result<(String, i64), CliError> {
    let new = snapshot(name, bytes, options).map_err(CliError::Invalid)?;
    let current = etcd.read(None).await?;
    let base = current.kv.as_ref().map_or(0, |kv| kv.revision);
    if let Some(n) = expect {
        if n != base {
            return Err(CliError::Conflict {
                read: n,
                current: current.kv.as_ref().map(|kv| kv.revision),
                pinned: true,
            });
        }
    }
    let mut out = String::new();
    let old = match &current.kv {
        None => {
            let _ = writeln!(
                out,
                "etcd key {} does not exist yet: every resource is added",
                etcd.key()
            );
            None
        }
        Some(kv) => match snapshot(&name_of(etcd, kv.revision), &kv.value, options) {
            Ok(s) => Some(s),
            Err(e) => {
                let first = e.to_string();
                let first = first.lines().next().unwrap_or_default().to_string();
                let _ = writeln!(
                    out,
                    "etcd revision {} is invalid ({first}): every resource is shown as added",
                    kv.revision
                );
                None
            }
        },
    };
    let from = match base {
        0 => format!("etcd:{} (absent)", etcd.key()),
        _ => name_of(etcd, base),
    };
    let _ = writeln!(out, "{from} -> {name}:");
    out.push_str(&diff(old.as_ref(), &new).render());
    if current.kv.as_ref().is_some_and(|kv| kv.value == bytes) {
        let _ = writeln!(
            out,
            "etcd revision {base} already holds exactly this content: nothing written"
        );
        return Ok((out, base));
    }
    match etcd.write(base, bytes, &Meta::now(action)).await? {
        Write::Written(rev) => {
            let _ = writeln!(out, "wrote etcd revision {rev} (version {})", new.version);
            Ok((out, rev))
        }
        Write::Conflict { current } => Err(CliError::Conflict {
            read: base,
            current,
            pinned: expect.is_some(),
        }),
    }
}

/// `pylon-xds apply FILE`.
pub async fn apply(
    etcd: &Etcd,
    file: &Path,
    options: &Options,
    expect: Option<i64>,
) -> Result<String, CliError> {
    let bytes = config::read_file(file, &options.limits)
        .map_err(|e| CliError::Invalid(LoadError::Config(e)))?;
    let name = file.display().to_string();
    write_revision(
        etcd,
        &name,
        &bytes,
        options,
        expect,
        format!("apply {name}"),
    )
    .await
    .map(|(text, _)| text)
}

/// `pylon-xds rollback REV`: writes the content the key had at `rev`, byte
/// for byte, through the same compare-and-swap as `apply`.
pub async fn rollback(
    etcd: &Etcd,
    rev: i64,
    options: &Options,
    expect: Option<i64>,
) -> Result<String, CliError> {
    let target = etcd.read(Some(rev)).await?;
    let Some(kv) = target.kv else {
        return Err(CliError::Revision(format!(
            "etcd key {} did not exist at revision {rev}: nothing to roll back to",
            etcd.key()
        )));
    };
    let name = name_of(etcd, kv.revision);
    if let Err(e) = snapshot(&name, &kv.value, options) {
        return Err(CliError::Revision(format!(
            "{e}\nrevision {} is invalid: refusing to roll back to it",
            kv.revision
        )));
    }
    let mut out = String::new();
    if kv.revision != rev {
        let _ = writeln!(
            out,
            "the key as of revision {rev} is the content written at revision {}",
            kv.revision
        );
    }
    out.push_str(
        &write_revision(
            etcd,
            &name,
            &kv.value,
            options,
            expect,
            format!("rollback to {}", kv.revision),
        )
        .await?
        .0,
    );
    Ok(out)
}

/// `pylon-xds diff REV [REV]`: what changes from the key as of `from` to
/// the key as of `to` (default: now), resource by resource.
pub async fn diff_revisions(
    etcd: &Etcd,
    from: i64,
    to: Option<i64>,
    options: &Options,
) -> Result<String, CliError> {
    let a = etcd.read(Some(from)).await?;
    let b = etcd.read(to).await?;
    let mut out = String::new();
    let old = match &a.kv {
        None => {
            let _ = writeln!(out, "(the key did not exist at revision {from})");
            None
        }
        Some(kv) => match snapshot(&name_of(etcd, kv.revision), &kv.value, options) {
            Ok(s) => Some(s),
            Err(e) => {
                let _ = writeln!(
                    out,
                    "(revision {} is invalid: every resource is shown as added)\n{e}",
                    kv.revision
                );
                None
            }
        },
    };
    let Some(kv) = b.kv else {
        return Err(CliError::Revision(format!(
            "etcd key {} does not exist at revision {}",
            etcd.key(),
            to.map_or_else(|| "now".to_string(), |t| t.to_string())
        )));
    };
    let new = snapshot(&name_of(etcd, kv.revision), &kv.value, options)
        .map_err(|e| CliError::Revision(format!("{e}\nrevision {} is invalid", kv.revision)))?;
    let from_rev = a.kv.as_ref().map_or(from, |k| k.revision);
    let _ = writeln!(
        out,
        "{} -> {}:",
        name_of(etcd, from_rev),
        name_of(etcd, kv.revision)
    );
    out.push_str(&diff(old.as_ref(), &new).render());
    Ok(out)
}

/// `pylon-xds history`: the revisions etcd still holds, newest first, at
/// most `limit`, with when and by whom pylon-xds wrote them, their version,
/// and what each changed.
pub async fn history(etcd: &Etcd, limit: usize, options: &Options) -> Result<String, CliError> {
    // One more than shown: the oldest shown is compared with it.
    let (revisions, compacted) = etcd.history(limit.saturating_add(1)).await?;
    let snaps: Vec<Result<Snapshot, LoadError>> = revisions
        .iter()
        .map(|r| snapshot(&name_of(etcd, r.revision), &r.value, options))
        .collect();
    let mut rows = vec![[
        "REVISION".to_string(),
        "WRITTEN (UTC)".into(),
        "VERSION".into(),
        "CHANGE".into(),
        "BY".into(),
    ]];
    for (i, rev) in revisions.iter().enumerate().take(limit) {
        let meta = etcd.meta(rev.revision).await?;
        let (version, change) = match &snaps[i] {
            Err(e) => {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default().to_string();
                ("INVALID".to_string(), first)
            }
            Ok(s) => {
                let change = match snaps.get(i + 1) {
                    Some(Ok(prev)) => diff(Some(prev), s).summary(),
                    Some(Err(_)) => {
                        format!("{} (after an invalid revision)", diff(None, s).summary())
                    }
                    None if compacted || i + 1 < revisions.len() => {
                        "(earlier revisions compacted)".to_string()
                    }
                    None => format!("first: {}", diff(None, s).summary()),
                };
                (s.version.clone(), change)
            }
        };
        let (when, by) = match &meta {
            Some(m) => (utc(m.at_unix_ms), format!("{} ({})", m.by, m.action)),
            None => ("-".to_string(), "(written outside pylon-xds)".to_string()),
        };
        let mark = if i == 0 { " *" } else { "" };
        rows.push([format!("{}{mark}", rev.revision), when, version, change, by]);
    }
    let mut out = String::new();
    let _ = writeln!(out, "etcd key {} (* = current)", etcd.key());
    if revisions.is_empty() {
        let _ = writeln!(out, "no revision: the key does not exist");
        return Ok(out);
    }
    crate::table::write(&mut out, &rows);
    if revisions.len() > limit {
        let _ = writeln!(out, "(older revisions not shown: --limit N shows more)");
    } else if compacted {
        let _ = writeln!(out, "(older revisions were compacted by etcd)");
    }
    Ok(out)
}

/// `pylon-xds apply --watch-file FILE`: applies the file now, then each
/// time it is written, until `shutdown`. Each write is based on the revision
/// this loop last wrote, so an edit made in etcd meanwhile is never
/// overwritten: on such a conflict nothing more is written from the file
/// (each save logs why) until the command is started again, which shows the
/// diff against the newer revision first. An invalid save is logged and
/// skipped, as `apply` would refuse it.
pub async fn watch_file(
    etcd: &Etcd,
    file: &Path,
    options: &Options,
    debounce: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use notify::Watcher as _;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
    let watched = file.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if ev.paths.iter().any(|p| p.file_name() == watched.as_deref()) {
                // A full channel already holds a wake-up.
                let _ = tx.try_send(());
            }
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    let name = file.display().to_string();
    let mut based_on: Option<i64> = None;
    let mut last_bytes: Option<Vec<u8>> = None;
    let mut conflict: Option<String> = None;
    loop {
        match config::read_file(file, &options.limits) {
            Err(e) => error!(error = %e, "cannot read the file; waiting for the next change"),
            Ok(bytes) if last_bytes.as_ref() == Some(&bytes) => {}
            Ok(_) if conflict.is_some() => {
                error!(
                    "{}; not applied: start `pylon-xds apply --watch-file` again to apply over the newer revision",
                    conflict.as_deref().unwrap_or_default()
                );
            }
            Ok(bytes) => {
                let action = format!("watch-file {name}");
                match write_revision(etcd, &name, &bytes, options, based_on, action).await {
                    Ok((text, rev)) => {
                        info!("{}", text.trim_end());
                        based_on = Some(rev);
                        last_bytes = Some(bytes);
                    }
                    Err(CliError::Conflict { read, current, .. }) => {
                        let now = current.map_or("no revision".to_string(), |c| c.to_string());
                        let text = format!(
                            "the etcd key was written by someone else (it is at {now}; this file was applied as revision {read})"
                        );
                        error!("{text}: not overwritten");
                        conflict = Some(text);
                    }
                    Err(e) => error!("{e}"),
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            ev = rx.recv() => if ev.is_none() { break },
        }
        // Quiet for `debounce` before reading: the write is complete.
        loop {
            tokio::select! {
                () = tokio::time::sleep(debounce) => break,
                more = rx.recv() => if more.is_none() { break },
            }
        }
    }
    let _ = watcher.unwatch(&dir);
    Ok(())
}

/// `ms` since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_041_845_000), "2026-11-30 12:30:45");
    }

    #[test]
    fn conflicts_name_both_revisions() {
        let e = CliError::Conflict {
            read: 5,
            current: Some(7),
            pinned: false,
        };
        let text = e.to_string();
        assert!(text.contains("at revision 7"), "{text}");
        assert!(text.contains("based on revision 5"), "{text}");
        assert!(text.contains("nothing written"), "{text}");
        assert!(text.contains("pylon-xds diff 5 7"), "{text}");
        let pinned = CliError::Conflict {
            read: 5,
            current: Some(7),
            pinned: true,
        }
        .to_string();
        assert!(
            pinned.contains("not at revision 5 (--expect-revision)"),
            "{pinned}"
        );
    }
}
