//! The last good config, kept on disk so that a restart never depends on the
//! file being valid at that moment.
//!
//! Owned here: where the state directory is, and writing and reading the last
//! accepted revision of one config file in it. Every revision the server
//! accepts is written atomically (a temporary file in the same directory,
//! flushed to disk, renamed over the previous one, the directory flushed), so
//! a crash leaves either the old or the new revision, never half of one. The
//! file is the accepted YAML itself behind a comment header, so it loads with
//! the same loader (and gives the same versions) as the original did.
//!
//! Several servers may share one state directory: each config file has its
//! own entry, named after a hash of the config's absolute path.
//!
//! Not owned here: deciding when to save or to fall back (`app`, `source`).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The default state directory: `$STATE_DIRECTORY` (set by systemd's
/// `StateDirectory=`), else `$XDG_STATE_HOME/pylon-xds`, else
/// `$HOME/.local/state/pylon-xds`; `None` when none of them is set.
pub fn default_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("STATE_DIRECTORY") {
        // systemd may list several, separated by colons: the first is ours.
        let first = dir.to_string_lossy().split(':').next().map(PathBuf::from);
        return first;
    }
    if let Some(dir) = var("XDG_STATE_HOME") {
        return Some(PathBuf::from(dir).join("pylon-xds"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".local/state/pylon-xds"))
}

/// Why the last good revision could not be saved or read.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct StateError {
    action: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

/// A revision read back from the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Where it was read from.
    pub path: PathBuf,
    /// The bytes as accepted (with the comment header).
    pub bytes: Vec<u8>,
}

/// The last good revision of one config file, in a state directory.
#[derive(Debug, Clone)]
pub struct LastGood {
    file: PathBuf,
}

impl LastGood {
    /// The entry of `config` in `dir` (neither needs to exist yet).
    pub fn new(dir: &Path, config: &Path) -> Self {
        let absolute = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
        let hash = Sha256::digest(absolute.as_os_str().as_encoded_bytes());
        let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let stem = config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config".to_string());
        LastGood {
            file: dir.join("last-good").join(format!("{stem}-{hex}.yaml")),
        }
    }

    /// The entry of the etcd key `key` in `dir`: `last-good/etcd-NAME-HASH.yaml`,
    /// NAME being the key's last segment and HASH a hash of the whole key,
    /// so that replicas of different keys can share a directory.
    pub fn for_etcd_key(dir: &Path, key: &str) -> Self {
        let hash = Sha256::digest(key.as_bytes());
        let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let stem: String = key
            .rsplit('/')
            .next()
            .unwrap_or("config")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        LastGood {
            file: dir
                .join("last-good")
                .join(format!("etcd-{stem}-{hex}.yaml")),
        }
    }

    /// The file the revision is kept in.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Writes `bytes` (an accepted revision of `what`, the config file or
    /// the etcd key at a revision, served as `version`) atomically,
    /// replacing the previous one. Skips the write when the same revision is
    /// already saved.
    pub fn save(&self, what: &str, version: &str, bytes: &[u8]) -> Result<(), StateError> {
        let mut content = format!(
            "# pylon-xds: the last good revision of {what}, served as version {version}.\n\
             # Served at start-up if the source is invalid or unreachable. Do not edit.\n",
        )
        .into_bytes();
        content.extend_from_slice(bytes);
        if fs::read(&self.file).is_ok_and(|old| old == content) {
            return Ok(());
        }
        let err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError {
                action,
                path,
                source,
            }
        };
        let dir = self.file.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(err("cannot create", dir))?;
        let tmp = self.file.with_extension("yaml.tmp");
        // Only this user may read it: with --allow-inline-secrets the
        // revision may hold private keys.
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt as _;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err("cannot write", &tmp))?
        };
        f.write_all(&content)
            .and_then(|()| f.sync_all())
            .map_err(err("cannot write", &tmp))?;
        drop(f);
        fs::rename(&tmp, &self.file).map_err(err("cannot replace", &self.file))?;
        // The rename itself is durable once the directory is flushed.
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err("cannot flush", dir))?;
        Ok(())
    }

    /// The saved revision, if there is one.
    pub fn load(&self) -> Result<Option<Saved>, StateError> {
        match fs::read(&self.file) {
            Ok(bytes) => Ok(Some(Saved {
                path: self.file.clone(),
                bytes,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError {
                action: "cannot read",
                path: self.file.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = LastGood::new(dir.path(), Path::new("/etc/pylon/pylon.yaml"));
        let b = LastGood::new(dir.path(), Path::new("/srv/other/pylon.yaml"));
        assert_ne!(a.path(), b.path(), "one entry per config path");
        assert_eq!(a.load().unwrap(), None);
        a.save("/etc/pylon/pylon.yaml", "v1", b"clusters: []\n")
            .unwrap();
        let saved = a.load().unwrap().unwrap();
        assert!(saved.bytes.ends_with(b"\nclusters: []\n"));
        assert!(String::from_utf8_lossy(&saved.bytes).contains("version v1"));
        a.save("/etc/pylon/pylon.yaml", "v2", b"clusters: [] # 2\n")
            .unwrap();
        assert!(a.load().unwrap().unwrap().bytes.ends_with(b"# 2\n"));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(a.path().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(a.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(b.load().unwrap(), None);
    }

    #[test]
    fn an_unwritable_directory_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "").unwrap();
        let lg = LastGood::new(&blocker, Path::new("pylon.yaml"));
        let e = lg.save("pylon.yaml", "v", b"x").unwrap_err();
        assert!(e.to_string().contains("cannot create"), "{e}");
    }
}
