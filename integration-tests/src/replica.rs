//! pylon-xds replicas as child processes (`pylon-xds serve --etcd URL`), so
//! that a test can kill one with SIGKILL, as a crashed machine would, and
//! start it again on the same addresses and cache directory.
//!
//! Owns: finding the binary, starting it from the test process with fixed
//! loopback ports (from [`crate::ports`]) and a private cache directory,
//! waiting until its admin API says it is ready, reading `/status` and
//! `/nodes`, killing and restarting it, and printing its log tail when the
//! test panics. The in-process server (`crate::pylon`) stays the harness for
//! everything a file source covers.
//!
//! The binary is `PYLON_XDS` when set, else `pylon-xds` beside the running
//! test executable's profile directory (as for pylon-proxy), else
//! `$CARGO_TARGET_DIR/debug` or `<workspace>/target/debug`; `scripts/test.sh`
//! builds it with `cargo build --workspace --bins`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;
use tokio::process::Child;

use crate::eventually::eventually;
use crate::ports::{free_addr, LOOPBACK};

/// The binary's file name.
pub const BINARY_NAME: &str = "pylon-xds";

/// How long a replica may take to be ready (etcd unreachable at start-up
/// costs its 5 s wait before the cached revision is served).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the binary is, if anywhere.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PYLON_XDS") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let exe = std::env::current_exe().ok();
    let mut candidates = Vec::new();
    if let Some(dir) = exe.as_deref().and_then(Path::parent) {
        let profile = if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent().unwrap_or(dir)
        } else {
            dir
        };
        candidates.push(profile.join(BINARY_NAME));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    candidates.push(target.join("debug").join(BINARY_NAME));
    candidates.into_iter().find(|p| p.is_file())
}

/// The binary, or `None` after reporting it missing (a panic under CI).
pub fn binary_or_skip() -> Option<PathBuf> {
    binary().or_else(|| {
        crate::missing_tool(
            BINARY_NAME,
            "run `cargo build --workspace --bins` (scripts/test.sh does) or set PYLON_XDS",
        )
    })
}

/// One pylon-xds process serving an etcd key. Killed when dropped.
#[derive(Debug)]
pub struct Replica {
    binary: PathBuf,
    name: String,
    url: String,
    /// More arguments for `serve` (TLS to etcd).
    args: Vec<String>,
    xds: SocketAddr,
    admin: SocketAddr,
    child: Option<Child>,
    dir: TempDir,
}

impl Replica {
    /// Starts `pylon-xds serve --etcd url` on free loopback ports and waits
    /// until it is ready.
    pub async fn start(binary: &Path, name: &str, url: &str) -> anyhow::Result<Replica> {
        Self::start_with(binary, name, url, &[]).await
    }

    /// As [`Replica::start`], with more arguments for `serve`.
    pub async fn start_with(
        binary: &Path,
        name: &str,
        url: &str,
        args: &[String],
    ) -> anyhow::Result<Replica> {
        let dir = tempfile::Builder::new()
            .prefix("pylon-xds-replica-")
            .tempdir()?;
        let mut r = Replica {
            binary: binary.to_path_buf(),
            name: name.to_string(),
            url: url.to_string(),
            args: args.to_vec(),
            xds: free_addr(LOOPBACK)?,
            admin: free_addr(LOOPBACK)?,
            child: None,
            dir,
        };
        r.spawn()?;
        r.wait_ready().await?;
        Ok(r)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))?;
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("serve")
            .arg("--etcd")
            .arg(&self.url)
            .arg("--listen")
            .arg(self.xds.to_string())
            .arg("--admin")
            .arg(self.admin.to_string())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("PYLON_XDS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawning {}", self.binary.display()))?,
        );
        Ok(())
    }

    /// Waits until `/readyz` answers 200, failing at once if the process
    /// exits.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let admin = self.admin;
        let name = self.name.clone();
        let child = self.child.as_mut().context("not running")?;
        let ready = eventually(
            format!("pylon-xds {name} ready"),
            START_TIMEOUT,
            async || {
                if let Some(status) = child.try_wait()? {
                    return Ok(Err(anyhow::anyhow!("pylon-xds exited early: {status}")));
                }
                let r = crate::http::get(admin, "/readyz").await?;
                anyhow::ensure!(r.status == 200, "/readyz: {}", r.status);
                Ok(Ok(()))
            },
        )
        .await
        .and_then(|r| r);
        ready.map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.log_tail(60)))
    }

    /// SIGKILLs it (by its process id) and waits for it to exit.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Starts it again on the same addresses and cache, and waits until it
    /// is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is running", self.name);
        self.spawn()?;
        self.wait_ready().await
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its name in the test.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The xDS address.
    pub fn xds_addr(&self) -> SocketAddr {
        self.xds
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// `GET path` on the admin API, as JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let r = crate::http::get(self.admin, path).await?;
        anyhow::ensure!(r.status.is_success(), "{path}: {} {}", r.status, r.body);
        serde_json::from_str(&r.body).with_context(|| format!("{path} body: {}", r.body))
    }

    /// `/status`.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        self.get_json("/status").await
    }

    /// The `/nodes` entry of `node`, if it has a stream here.
    pub async fn node(&self, node: &str) -> anyhow::Result<Option<serde_json::Value>> {
        let nodes = self.get_json("/nodes").await?;
        Ok(nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node"] == node)
            .cloned())
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The last `n` lines of the log, labelled.
    pub fn log_tail(&self, n: usize) -> String {
        crate::logs::tail(
            &self.dir.path().join("log"),
            &format!("pylon-xds `{}`", self.name),
            n,
        )
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = crate::logs::panic_tail_lines("PYLON_XDS_LOG_TAIL");
            eprintln!("{}", self.log_tail(lines));
        }
        // kill_on_drop ends the process.
    }
}
