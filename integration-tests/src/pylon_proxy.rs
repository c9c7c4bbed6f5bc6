//! A real pylon-proxy child process for one test (the `pylon-proxy` binary of
//! crate `data-plane`).
//!
//! Owns: finding the binary, starting it from the test process (never from a
//! shell that exits) as `pylon-proxy -c <bootstrap> --concurrency 1` with its
//! bootstrap and log in a private temp dir, killing it on drop, and printing
//! its log tail when the test panics. It does not build bootstraps: the caller
//! renders one with `control_plane::bootstrap::envoy_bootstrap`, unchanged, so
//! the claim that an Envoy bootstrap runs pylon-proxy as is gets tested.
//!
//! pylon-proxy has no `--admin-address-path`, so its admin address is a port
//! from [`crate::ports`] written into the bootstrap. Another process may take
//! that port before pylon-proxy binds it; then pylon-proxy exits, and the
//! start is retried with a fresh port.
//!
//! The binary is `PYLON_PROXY` when set (and only there), else `pylon-proxy`
//! in the target profile directory of the running test executable
//! (`<target>/debug/deps/<test>` -> `<target>/debug/pylon-proxy`, which follows
//! `CARGO_TARGET_DIR`), else `$CARGO_TARGET_DIR/debug` or
//! `<workspace>/target/debug`. Cargo does not build another package's binaries
//! for a test, so `scripts/test.sh` runs `cargo build --workspace --bins` first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;
use tokio::process::Child;

use crate::admin::AdminClient;
use crate::eventually::eventually;
use crate::ports::{free_addr, LOOPBACK};

/// The binary's file name.
pub const BINARY_NAME: &str = "pylon-proxy";

/// How long pylon-proxy may take to answer on its admin address.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts at finding a free admin port that pylon-proxy can bind.
const START_ATTEMPTS: usize = 3;

/// Where the binary is, if anywhere (see the module docs for the order).
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PYLON_PROXY") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let exe = std::env::current_exe().ok();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from);
    candidates(exe.as_deref(), target_dir.as_deref())
        .into_iter()
        .find(|p| p.is_file())
}

/// Candidate paths, best first, for a test executable at `exe`.
fn candidates(exe: Option<&Path>, target_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        // Test executables live in `<target>/<profile>/deps/`.
        let profile = if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent().unwrap_or(dir)
        } else {
            dir
        };
        out.push(profile.join(BINARY_NAME));
    }
    let target = target_dir
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    out.push(target.join("debug").join(BINARY_NAME));
    out
}

/// The binary, or `None` after reporting it missing (a panic under CI).
pub fn binary_or_skip() -> Option<PathBuf> {
    binary().or_else(|| {
        crate::missing_tool(
            BINARY_NAME,
            "run `cargo build --workspace --bins` (scripts/test.sh does) or set PYLON_PROXY",
        )
    })
}

/// A running pylon-proxy. Killed when dropped.
#[derive(Debug)]
pub struct PylonProxy {
    child: Child,
    admin: SocketAddr,
    dir: TempDir,
    name: String,
}

impl PylonProxy {
    /// Starts pylon-proxy with the bootstrap `bootstrap(admin)` renders for a
    /// free loopback admin address, and waits until its admin API answers.
    /// `name` labels log output.
    pub async fn start(
        binary: &Path,
        name: &str,
        bootstrap: impl Fn(SocketAddr) -> String,
    ) -> anyhow::Result<PylonProxy> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new().prefix("pylon-proxy-").tempdir()?;
            let admin = free_addr(LOOPBACK)?;
            let config = dir.path().join("bootstrap.yaml");
            std::fs::write(&config, bootstrap(admin))?;
            let mut cmd = tokio::process::Command::new(binary);
            cmd.arg("-c")
                .arg(&config)
                .args(["--concurrency", "1"])
                .env(
                    "RUST_LOG",
                    std::env::var("PYLON_PROXY_LOG").unwrap_or_else(|_| "info".into()),
                )
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.path().join("stdout"))?)
                .stderr(std::fs::File::create(dir.path().join("stderr"))?)
                .kill_on_drop(true);
            let child = cmd
                .spawn()
                .with_context(|| format!("spawning {}", binary.display()))?;
            let mut proxy = PylonProxy {
                child,
                admin,
                dir,
                name: name.to_string(),
            };
            match proxy.wait_admin().await {
                Ok(()) => return Ok(proxy),
                Err(err) if proxy.log().contains("binding admin address") => {
                    // Someone took the port in the meantime: try another
                    // (dropping `proxy` kills the process).
                    last_err = Some(err);
                }
                Err(err) => anyhow::bail!("{err:#}\n{}", proxy.log_tail(60)),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!("{START_ATTEMPTS} admin ports were all taken")))
    }

    /// Waits until the admin API answers anything (its `/ready` is 503 until
    /// the first config), failing at once if the process exits.
    async fn wait_admin(&mut self) -> anyhow::Result<()> {
        let admin = self.admin_client();
        let child = &mut self.child;
        eventually("pylon-proxy admin API", START_TIMEOUT, async || {
            if let Some(status) = child.try_wait()? {
                // Not retried: an exited pylon-proxy will not come back.
                return Ok(Err(anyhow::anyhow!("pylon-proxy exited early: {status}")));
            }
            admin.get("/ready").await?;
            Ok(Ok(()))
        })
        .await
        .and_then(|r| r)
    }

    /// The process id, for reading `/proc/PID` (descriptors, memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The admin API address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// A client for its admin API.
    pub fn admin_client(&self) -> AdminClient {
        AdminClient::new(self.admin, &format!("pylon-proxy {}", self.name))
    }

    /// The temp dir holding bootstrap and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log (its stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// The last `n` lines of the log, labelled.
    pub fn log_tail(&self, n: usize) -> String {
        crate::logs::tail(
            &self.dir.path().join("stderr"),
            &format!("pylon-proxy `{}`", self.name),
            n,
        )
    }

    /// Kills pylon-proxy and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

impl Drop for PylonProxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = crate::logs::panic_tail_lines("PYLON_PROXY_LOG_TAIL");
            eprintln!("{}", self.log_tail(lines));
        }
        // kill_on_drop ends the process.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_looked_for_beside_the_test_executable_first() {
        let got = candidates(
            Some(Path::new("/t/target/debug/deps/scenarios-0123abcd")),
            None,
        );
        assert_eq!(got[0], PathBuf::from("/t/target/debug/pylon-proxy"));
        assert_eq!(
            got[1],
            crate::workspace_root().join("target/debug/pylon-proxy")
        );
    }

    #[test]
    fn cargo_target_dir_is_the_fallback() {
        let got = candidates(
            Some(Path::new("/elsewhere/release/scenarios")),
            Some(Path::new("/ct")),
        );
        assert_eq!(
            got,
            vec![
                PathBuf::from("/elsewhere/release/pylon-proxy"),
                PathBuf::from("/ct/debug/pylon-proxy"),
            ]
        );
    }
}
