//! Runs the real `kubectl` against a server address with a CA file and an empty
//! kubeconfig, so nothing from the user's environment leaks in.
//!
//! Owns finding the binary (`PYLON_KUBECTL`, else `/usr/bin/kubectl`, else
//! `PATH`) and invoking it; it knows nothing about what answers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;

/// Upper bound on one kubectl run.
pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(15);

/// A kubectl binary plus an isolated kubeconfig and cache dir.
#[derive(Debug)]
pub struct Kubectl {
    binary: PathBuf,
    dir: TempDir,
}

/// Where kubectl is, if anywhere.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PYLON_KUBECTL") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let usr = PathBuf::from("/usr/bin/kubectl");
    if usr.is_file() {
        return Some(usr);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

impl Kubectl {
    /// kubectl, or `None` after reporting it missing (a panic under CI).
    pub fn find_or_skip() -> Option<Self> {
        let binary = binary()
            .or_else(|| crate::missing_tool("kubectl", "install kubectl or set PYLON_KUBECTL"))?;
        match Self::new(binary) {
            Ok(k) => Some(k),
            Err(err) => panic!("kubectl setup: {err:#}"),
        }
    }

    pub fn new(binary: PathBuf) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("pylon-kubectl-")
            .tempdir()?;
        std::fs::write(dir.path().join("kubeconfig"), "")?;
        Ok(Kubectl { binary, dir })
    }

    /// `kubectl --server https://{server} --certificate-authority {ca} {args}`;
    /// returns stdout, or an error carrying the exit status and stderr.
    pub async fn run(
        &self,
        server: SocketAddr,
        ca: &Path,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .arg("--server")
            .arg(format!("https://{server}"))
            .arg("--certificate-authority")
            .arg(ca)
            // Without credentials kubectl prompts for a username; the test
            // apiservers ignore the token.
            .arg("--token=pylon-test")
            .arg("--request-timeout=5s")
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(KUBECTL_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("kubectl {args:?} against {server}: timed out"))?
            .with_context(|| format!("running {}", self.binary.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(
            out.status.success(),
            "kubectl {args:?} against {server}: {}; stderr: {}; stdout: {stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(stdout)
    }

    /// `kubectl get --raw {path}`.
    pub async fn get_raw(
        &self,
        server: SocketAddr,
        ca: &Path,
        path: &str,
    ) -> anyhow::Result<String> {
        self.run(server, ca, &["get", "--raw", path]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::ApiServer;
    use crate::ports::LOOPBACK;
    use crate::tls::TestCa;

    #[tokio::test(flavor = "multi_thread")]
    async fn kubectl_reaches_a_tls_backend_directly() {
        let Some(kubectl) = Kubectl::find_or_skip() else {
            return;
        };
        let ca = TestCa::new().unwrap();
        let api = ApiServer::start(LOOPBACK, "direct", &ca).await.unwrap();
        let out = kubectl
            .get_raw(api.addr(), ca.ca_path(), "/healthz")
            .await
            .unwrap();
        assert_eq!(out.trim(), "ok");
        let out = kubectl
            .run(api.addr(), ca.ca_path(), &["version", "-o", "json"])
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["serverVersion"]["gitVersion"], "v1.32.4-pylon-direct",
            "{out}"
        );
        assert!(api.requests() >= 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn kubectl_rejects_a_server_outside_the_ca() {
        let Some(kubectl) = Kubectl::find_or_skip() else {
            return;
        };
        let ca = TestCa::new().unwrap();
        let other = TestCa::new().unwrap();
        let api = ApiServer::start(LOOPBACK, "x", &ca).await.unwrap();
        let err = kubectl
            .get_raw(api.addr(), other.ca_path(), "/healthz")
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("certificate"), "{err:#}");
        assert_eq!(api.requests(), 0);
    }
}
