//! One pylon-xds server per test, run in-process through its public API
//! (`control_plane::serve`) on port 0, with its YAML in a private temp dir.
//!
//! Owns: starting and stopping the server (and starting it again on the
//! same xDS address, as a restarted pylon-xds would be), rewriting its config file the two
//! ways editors do (atomic rename, truncate + write), reading its admin
//! `/status`, and rendering the Envoy bootstrap that points at it. It does not
//! know what the YAML means: `config` builds it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use control_plane::bootstrap::{envoy_bootstrap, BootstrapOptions, ClientTlsFiles};
use control_plane::{Running, ServeOptions};
use tempfile::TempDir;

use crate::tls::CertFiles;

use crate::envoy::Envoy;
use crate::eventually::eventually;

/// Quiet period after the last file event before pylon-xds reloads.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// Which ADS flavour Envoy is bootstrapped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ads {
    /// State-of-the-world.
    Sotw,
    /// Delta (incremental).
    Delta,
}

impl Ads {
    pub fn is_delta(self) -> bool {
        self == Ads::Delta
    }
}

/// How long [`Pylon::start_again`] retries binding the previous xDS address.
pub const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// The bootstrap `pylon-xds bootstrap` prints for these arguments.
pub fn render_bootstrap(
    node_id: &str,
    ads: Ads,
    xds: SocketAddr,
    admin: SocketAddr,
    tls: Option<&ClientTlsFiles>,
) -> String {
    render_bootstrap_replicas(node_id, ads, &[xds], admin, tls)
}

/// The bootstrap `pylon-xds bootstrap --xds A,B,C` prints: one xDS cluster
/// listing every replica.
pub fn render_bootstrap_replicas(
    node_id: &str,
    ads: Ads,
    xds: &[SocketAddr],
    admin: SocketAddr,
    tls: Option<&ClientTlsFiles>,
) -> String {
    envoy_bootstrap(&BootstrapOptions {
        node_id: node_id.to_string(),
        node_cluster: "pylon-test".to_string(),
        xds: xds
            .iter()
            .map(|a| control_plane::bootstrap::XdsAddress {
                host: a.ip().to_string(),
                port: a.port(),
            })
            .collect(),
        delta: ads.is_delta(),
        admin,
        tls: tls.cloned(),
    })
}

/// pylon-xds over mutual TLS: its certificate (at fixed paths, so a test can
/// renew it in place), the CA clients must chain to, and the certificate the
/// data planes present.
#[derive(Debug, Clone)]
pub struct MutualTls {
    /// pylon-xds's certificate and key.
    pub server: CertFiles,
    /// The CA of both sides.
    pub ca: PathBuf,
    /// What the data planes' bootstraps present.
    pub client: CertFiles,
}

/// A running pylon-xds. It can be stopped and started again on the same
/// xDS address, keeping its config file.
#[derive(Debug)]
pub struct Pylon {
    running: Option<Running>,
    /// `--dns-server`, kept for [`Pylon::start_again`].
    dns_server: Option<SocketAddr>,
    /// The xDS address of the first start, reused by [`Pylon::start_again`].
    xds_addr: SocketAddr,
    config: PathBuf,
    tls: Option<MutualTls>,
    _dir: TempDir,
}

impl Pylon {
    /// Writes `yaml` and serves it (xDS and admin on 127.0.0.1:0).
    pub async fn start(yaml: &str) -> anyhow::Result<Pylon> {
        Pylon::launch(yaml, None, None).await
    }

    /// As [`Pylon::start`], over mutual TLS when `tls` is given.
    pub async fn start_with(yaml: &str, tls: Option<MutualTls>) -> anyhow::Result<Pylon> {
        Pylon::launch(yaml, tls, None).await
    }

    /// As [`Pylon::start`], resolving endpoint host names with `dns_server`
    /// (`--dns-server`) rather than the system's resolver.
    pub async fn start_with_dns(
        yaml: &str,
        dns_server: Option<SocketAddr>,
    ) -> anyhow::Result<Pylon> {
        Pylon::launch(yaml, None, dns_server).await
    }

    async fn launch(
        yaml: &str,
        tls: Option<MutualTls>,
        dns_server: Option<SocketAddr>,
    ) -> anyhow::Result<Pylon> {
        let dir = tempfile::Builder::new().prefix("pylon-xds-").tempdir()?;
        let config = dir.path().join("pylon.yaml");
        std::fs::write(&config, yaml)?;
        let running = serve(
            &config,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            tls.as_ref(),
            dns_server,
        )
        .await?;
        Ok(Pylon {
            dns_server,
            xds_addr: running.xds_addr,
            running: Some(running),
            config,
            tls,
            _dir: dir,
        })
    }

    /// What a client's bootstrap needs to reach this server over TLS.
    pub fn client_tls(&self) -> Option<ClientTlsFiles> {
        self.tls.as_ref().map(|t| ClientTlsFiles {
            ca: t.ca.clone(),
            cert_key: Some((t.client.cert.clone(), t.client.key.clone())),
            sni: Some("localhost".to_string()),
        })
    }

    /// Shuts the server down (as `Running::shutdown`: streams closed, tasks
    /// awaited) but keeps its config file, which may be edited meanwhile.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Serves the config file again on the same xDS address as before (a new
    /// admin port). Binding is retried for [`REBIND_TIMEOUT`] while the
    /// address is still in use.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.running.is_none(), "pylon-xds is still running");
        let (config, addr, tls, dns) = (
            &self.config,
            self.xds_addr,
            self.tls.as_ref(),
            self.dns_server,
        );
        let running = eventually(
            format!("pylon-xds binding {addr} again"),
            REBIND_TIMEOUT,
            async || match serve(config, addr, tls, dns).await {
                Ok(r) => Ok(Ok(r)),
                Err(e) if is_addr_in_use(&e) => Err(e),
                // Not retried: only a busy address may clear up.
                Err(e) => Ok(Err(e)),
            },
        )
        .await
        .and_then(|r| r)?;
        self.running = Some(running);
        Ok(())
    }

    fn running(&self) -> anyhow::Result<&Running> {
        self.running.as_ref().context("pylon-xds was shut down")
    }

    /// The xDS (gRPC) address.
    pub fn xds_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.running()?.xds_addr)
    }

    /// The admin HTTP address.
    pub fn admin_addr(&self) -> anyhow::Result<SocketAddr> {
        self.running()?
            .admin_addr
            .context("pylon-xds has no admin listener")
    }

    /// The config file being watched.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Replaces the config the way most editors and `kubectl cp` do: write a
    /// sibling file, then rename it over the original.
    pub fn write_config_atomic(&self, yaml: &str) -> anyhow::Result<()> {
        let tmp = self.config.with_extension("yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, &self.config)?;
        Ok(())
    }

    /// Replaces the config in place: truncate, then write (as `>` in a shell).
    pub fn write_config_in_place(&self, yaml: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.config)?;
        f.write_all(yaml.as_bytes())?;
        f.sync_all()?;
        Ok(())
    }

    /// `GET /status` on the admin API, as JSON.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        let r = crate::http::get(self.admin_addr()?, "/status").await?;
        anyhow::ensure!(r.status.is_success(), "/status: {} {}", r.status, r.body);
        serde_json::from_str(&r.body).with_context(|| format!("/status body: {}", r.body))
    }

    /// The bootstrap for an Envoy with `node_id`, admin on 127.0.0.1:0.
    pub fn bootstrap(&self, node_id: &str, ads: Ads) -> anyhow::Result<String> {
        Ok(render_bootstrap(
            node_id,
            ads,
            self.xds_addr()?,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            self.client_tls().as_ref(),
        ))
    }

    /// The status of the stream of `node` in `/status` (`nodes[]`), if connected.
    pub async fn node_status(&self, node: &str) -> anyhow::Result<Option<serde_json::Value>> {
        let status = self.status().await?;
        Ok(status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node"] == node)
            .cloned())
    }

    /// Starts an Envoy bootstrapped against this server.
    pub async fn start_envoy(
        &self,
        binary: &Path,
        node_id: &str,
        ads: Ads,
    ) -> anyhow::Result<Envoy> {
        let bootstrap = self.bootstrap(node_id, ads)?;
        Envoy::start(binary, node_id, &bootstrap).await
    }

    /// Stops the server and waits for its tasks.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }
}

async fn serve(
    config: &Path,
    xds_listen: SocketAddr,
    tls: Option<&MutualTls>,
    dns_server: Option<SocketAddr>,
) -> anyhow::Result<Running> {
    control_plane::serve(ServeOptions {
        debounce: DEBOUNCE,
        tls: tls.map(|t| pylon::tls::Files {
            cert: t.server.cert.clone(),
            key: t.server.key.clone(),
            ca: Some(t.ca.clone()),
        }),
        dns_server,
        ..ServeOptions::new(
            config.to_path_buf(),
            xds_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        )
    })
    .await
    .context("control_plane::serve")
}

fn is_addr_in_use(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    })
}
