//! The data plane under test, whichever it is: a real Envoy or pylon-proxy,
//! bootstrapped for state-of-the-world or delta ADS. Scenarios are written
//! once against [`DataPlane`] and run for every [`Flavour`].
//!
//! Owns: the choice of process and its bootstrap (always
//! `control_plane::bootstrap::envoy_bootstrap`, unchanged, via
//! [`render_bootstrap`]), and handing out one [`AdminClient`] for
//! both, since pylon-proxy mirrors Envoy's admin API. Processes are `envoy`'s
//! and `pylon_proxy`'s business.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::admin::AdminClient;
use crate::envoy::{self, Envoy};
use crate::pylon::{render_bootstrap_replicas, Ads, Pylon};
use crate::pylon_proxy::{self, PylonProxy};

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A real Envoy.
    Envoy,
    /// pylon-proxy (crate `data-plane`).
    Pylon,
}

/// A proxy and the ADS flavour it is bootstrapped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flavour {
    pub kind: Kind,
    pub ads: Ads,
}

impl Flavour {
    pub const fn new(kind: Kind, ads: Ads) -> Self {
        Flavour { kind, ads }
    }

    /// The binary, or `None` after reporting it missing (a panic under CI).
    pub fn binary_or_skip(self) -> Option<PathBuf> {
        match self.kind {
            Kind::Envoy => envoy::binary_or_skip(),
            Kind::Pylon => pylon_proxy::binary_or_skip(),
        }
    }

    /// The stream protocol pylon-xds reports for this flavour (`/status` `nodes[].protocol`).
    pub fn protocol(self) -> &'static str {
        if self.ads.is_delta() {
            "ads-delta"
        } else {
            "ads"
        }
    }
}

/// `envoy-sotw`, `pylon-delta`, ...: used in node ids.
impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Envoy => "envoy",
            Kind::Pylon => "pylon",
        };
        let ads = if self.ads.is_delta() { "delta" } else { "sotw" };
        write!(f, "{kind}-{ads}")
    }
}

#[derive(Debug)]
enum Process {
    Envoy(Envoy),
    Pylon(PylonProxy),
}

/// A running data plane bootstrapped against a pylon-xds. Killed when dropped
/// (each process prints its log tail if the test panics).
#[derive(Debug)]
pub struct DataPlane {
    flavour: Flavour,
    node_id: String,
    process: Process,
}

impl DataPlane {
    /// Starts `binary` as `flavour.kind` with the bootstrap `pylon` renders
    /// for `node_id`, and waits until its admin API answers (not until it is
    /// ready: see [`AdminClient::wait_ready`]).
    pub async fn start(
        binary: &Path,
        flavour: Flavour,
        pylon: &Pylon,
        node_id: &str,
    ) -> anyhow::Result<DataPlane> {
        let xds = pylon.xds_addr()?;
        let tls = pylon.client_tls();
        Self::start_with(binary, flavour, &[xds], tls, node_id).await
    }

    /// As [`DataPlane::start`], bootstrapped against several pylon-xds
    /// replicas (`pylon-xds bootstrap --xds A,B,C`), in plaintext.
    pub async fn start_replicas(
        binary: &Path,
        flavour: Flavour,
        xds: &[SocketAddr],
        node_id: &str,
    ) -> anyhow::Result<DataPlane> {
        Self::start_with(binary, flavour, xds, None, node_id).await
    }

    async fn start_with(
        binary: &Path,
        flavour: Flavour,
        xds: &[SocketAddr],
        tls: Option<control_plane::bootstrap::ClientTlsFiles>,
        node_id: &str,
    ) -> anyhow::Result<DataPlane> {
        let render = |admin: SocketAddr| {
            render_bootstrap_replicas(node_id, flavour.ads, xds, admin, tls.as_ref())
        };
        let process = match flavour.kind {
            // Envoy picks its own admin port and reports it.
            Kind::Envoy => Process::Envoy(
                Envoy::start(
                    binary,
                    node_id,
                    &render(SocketAddr::from(([127, 0, 0, 1], 0))),
                )
                .await?,
            ),
            Kind::Pylon => Process::Pylon(PylonProxy::start(binary, node_id, render).await?),
        };
        Ok(DataPlane {
            flavour,
            node_id: node_id.to_string(),
            process,
        })
    }

    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    pub fn kind(&self) -> Kind {
        self.flavour.kind
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Its admin API.
    pub fn admin(&self) -> AdminClient {
        match &self.process {
            Process::Envoy(e) => e.admin_client(),
            Process::Pylon(p) => p.admin_client(),
        }
    }

    /// The process id (`None` once it has exited).
    pub fn pid(&self) -> Option<u32> {
        match &self.process {
            Process::Envoy(e) => e.pid(),
            Process::Pylon(p) => p.pid(),
        }
    }

    /// The process log so far.
    pub fn log(&self) -> String {
        match &self.process {
            Process::Envoy(e) => e.log(),
            Process::Pylon(p) => p.log(),
        }
    }

    /// The last `n` lines of the log, labelled.
    pub fn log_tail(&self, n: usize) -> String {
        match &self.process {
            Process::Envoy(e) => e.log_tail(n),
            Process::Pylon(p) => p.log_tail(n),
        }
    }
}
