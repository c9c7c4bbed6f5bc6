//! What every end-to-end scenario starts from: the macro that runs a scenario
//! on each data plane and ADS flavour, and the stack it runs on (pylon-xds on
//! a config, a data plane bootstrapped against it, both ready).
//!
//! Owns the scenario scaffolding shared by the scenario test files; the
//! scenarios and their assertions belong to those files.

use std::path::Path;
use std::time::Duration;

use anyhow::ensure;

use crate::config::PylonConfig;
use crate::dataplane::{DataPlane, Flavour};
use crate::pylon::Pylon;

/// Deadline for anything pushed to the proxy or decided by its health checks.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Runs each named scenario (an `async fn(Flavour)` in the calling module)
/// for every data plane and ADS flavour, as `<scenario>::envoy_sotw`,
/// `::envoy_delta`, `::pylon_sotw` and `::pylon_delta`.
#[macro_export]
macro_rules! every_data_plane {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use $crate::dataplane::{Flavour, Kind};
            use $crate::pylon::Ads;

            #[tokio::test(flavor = "multi_thread")]
            async fn envoy_sotw() {
                super::$scenario(Flavour::new(Kind::Envoy, Ads::Sotw)).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn envoy_delta() {
                super::$scenario(Flavour::new(Kind::Envoy, Ads::Delta)).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn pylon_sotw() {
                super::$scenario(Flavour::new(Kind::Pylon, Ads::Sotw)).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn pylon_delta() {
                super::$scenario(Flavour::new(Kind::Pylon, Ads::Delta)).await
            }
        }
    )*};
}

/// pylon-xds on `config`, and a data plane bootstrapped against it, ready.
/// Panics (with the bootstrap) if the data plane does not get ready.
pub async fn stack(
    bin: &Path,
    flavour: Flavour,
    scenario: &str,
    config: &PylonConfig,
) -> (Pylon, DataPlane) {
    let yaml = config.to_yaml();
    let pylon = match Pylon::start(&yaml).await {
        Ok(p) => p,
        Err(err) => panic!("pylon-xds did not start: {err:#}\n{yaml}"),
    };
    let node = format!("{scenario}-{flavour}");
    let dp = match DataPlane::start(bin, flavour, &pylon, &node).await {
        Ok(dp) => dp,
        Err(err) => panic!("{flavour} did not start: {err:#}"),
    };
    if let Err(err) = dp.admin().wait_ready(DEADLINE).await {
        panic!(
            "{err:#}\nbootstrap:\n{}",
            pylon.bootstrap(&node, flavour.ads).unwrap_or_default()
        );
    }
    // The stream is the flavour asked for, as pylon-xds sees it.
    wait_node(&pylon, &dp).await;
    (pylon, dp)
}

/// As [`stack`], with pylon-xds resolving endpoint host names through
/// `dns_server` (its `--dns-server`).
pub async fn stack_with_dns(
    bin: &Path,
    flavour: Flavour,
    scenario: &str,
    yaml: &str,
    dns_server: std::net::SocketAddr,
) -> (Pylon, DataPlane) {
    let pylon = match Pylon::start_with_dns(yaml, Some(dns_server)).await {
        Ok(p) => p,
        Err(err) => panic!("pylon-xds did not start: {err:#}\n{yaml}"),
    };
    let node = format!("{scenario}-{flavour}");
    let dp = match DataPlane::start(bin, flavour, &pylon, &node).await {
        Ok(dp) => dp,
        Err(err) => panic!("{flavour} did not start: {err:#}"),
    };
    if let Err(err) = dp.admin().wait_ready(DEADLINE).await {
        panic!("{err:#}");
    }
    wait_node(&pylon, &dp).await;
    (pylon, dp)
}

/// Waits until pylon-xds lists the data plane's node on a stream of its flavour.
pub async fn wait_node(pylon: &Pylon, dp: &DataPlane) -> serde_json::Value {
    let (node, protocol) = (dp.node_id(), dp.flavour().protocol());
    crate::assert_eventually!(
        DEADLINE,
        format!("{node} on an `{protocol}` stream in /status"),
        async || {
            let Some(n) = pylon.node_status(node).await? else {
                anyhow::bail!("not connected: {}", pylon.status().await?);
            };
            ensure!(n["protocol"] == protocol, "{n}");
            Ok(n)
        }
    )
}

/// Waits until the data plane's `/clusters` lists exactly `want` as the
/// hosts of `cluster`.
pub async fn wait_hosts(dp: &DataPlane, cluster: &str, want: &[std::net::SocketAddr]) {
    let mut want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
    want.sort();
    let admin = dp.admin();
    crate::assert_eventually!(
        DEADLINE,
        format!("{cluster} hosts = {want:?}"),
        async || {
            let hosts = admin.clusters().await?.hosts(cluster);
            ensure!(hosts == want, "hosts = {hosts:?}");
            Ok(())
        }
    );
}

/// Waits until `/clusters` shows `flag` among the health flags of `host` in
/// `cluster`; `healthy` must be the only flag.
pub async fn wait_flags(dp: &DataPlane, cluster: &str, host: std::net::SocketAddr, flag: &str) {
    let host = host.to_string();
    let admin = dp.admin();
    crate::assert_eventually!(DEADLINE, format!("{cluster}/{host} {flag}"), async || {
        let c = admin.clusters().await?;
        let flags = c.health_flags(cluster, &host).unwrap_or("<host absent>");
        if flag == "healthy" {
            ensure!(flags == "healthy", "health_flags = {flags}");
        } else {
            ensure!(flags.contains(flag), "health_flags = {flags}");
        }
        Ok(())
    });
}
