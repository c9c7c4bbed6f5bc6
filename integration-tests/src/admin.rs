//! A client for the Envoy admin API, which pylon-proxy mirrors: the same
//! paths and formats answer for both data planes, so a scenario asserts on
//! either through this one client.
//!
//! Owns: the requests (`/ready`, `/clusters`, `/listeners`, `/config_dump`,
//! `/stats`, `/stats/prometheus`) and the parsers of their answers. It knows
//! nothing about processes: `envoy` and `pylon_proxy` start them and hand out
//! an [`AdminClient`] for their admin address.
//!
//! Where the two differ, the parser takes the union: pylon-proxy's
//! `/config_dump` carries no per-resource `version_info` but adds a top-level
//! `xds` object (connection state, per-type versions, last NACK), which
//! [`ConfigDump::versions`] and [`ConfigDump::xds_connected`] read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::StatusCode;

use crate::eventually::eventually;
use crate::http;

/// The admin API of one data plane. `label` names it in failure messages.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    label: String,
}

impl AdminClient {
    pub fn new(addr: SocketAddr, label: &str) -> Self {
        AdminClient {
            addr,
            label: label.to_string(),
        }
    }

    /// The admin API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET` on the admin API.
    pub async fn get(&self, path: &str) -> anyhow::Result<http::Response> {
        http::get(self.addr, path).await
    }

    /// `POST` on the admin API.
    pub async fn post(&self, path: &str) -> anyhow::Result<http::Response> {
        http::post(self.addr, path).await
    }

    /// `POST` on the admin API with extra `headers` (`host` replaces the
    /// default, the admin address).
    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<http::Response> {
        http::request_with(self.addr, hyper::Method::POST, path, headers).await
    }

    /// `/ready`: its status and state (`LIVE`, `DRAINING`, ...).
    pub async fn ready(&self) -> anyhow::Result<(StatusCode, String)> {
        let r = self.get("/ready").await?;
        Ok((r.status, r.body.trim().to_string()))
    }

    /// `GET` expecting 200; the body.
    async fn get_ok(&self, path: &str) -> anyhow::Result<String> {
        let r = self.get(path).await?;
        anyhow::ensure!(
            r.status == StatusCode::OK,
            "{path}: {} {}",
            r.status,
            r.body
        );
        Ok(r.body)
    }

    /// Waits until `/ready` answers `200 LIVE` (for ADS: after the first CDS and LDS).
    pub async fn wait_ready(&self, deadline: Duration) -> anyhow::Result<()> {
        eventually(
            format!("`{}` /ready LIVE", self.label),
            deadline,
            async || {
                let r = self.get("/ready").await?;
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
        Ok(Clusters::parse(&self.get_ok("/clusters").await?))
    }

    /// `GET /listeners`: (name, address) pairs.
    pub async fn listeners(&self) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .get_ok("/listeners")
            .await?
            .lines()
            .filter_map(|l| l.split_once("::"))
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect())
    }

    /// `GET /config_dump?include_eds`, as JSON.
    pub async fn config_dump(&self) -> anyhow::Result<ConfigDump> {
        let body = self.get_ok("/config_dump?include_eds").await?;
        Ok(ConfigDump(serde_json::from_str(&body)?))
    }

    /// `GET /stats`: `name: value` lines (counters and gauges; histograms skipped).
    pub async fn stats(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        Ok(self
            .get_ok("/stats")
            .await?
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
            .collect())
    }

    /// `GET /stats/prometheus`: the text exposition.
    pub async fn prometheus(&self) -> anyhow::Result<String> {
        self.get_ok("/stats/prometheus").await
    }

    /// Whether the data plane holds an open ADS stream: Envoy's
    /// `control_plane.connected_state` stat, or pylon-proxy's
    /// `/config_dump` `xds.connected`.
    pub async fn xds_connected(&self) -> anyhow::Result<bool> {
        if let Some(c) = self.config_dump().await?.xds_connected() {
            return Ok(c);
        }
        let stats = self.stats().await?;
        let state = stats
            .get("control_plane.connected_state")
            .ok_or_else(|| anyhow::anyhow!("no control_plane.connected_state in /stats"))?;
        Ok(*state == 1)
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

    /// Names of the clusters added over xDS (`added_via_api::true`). Envoy
    /// also lists its static clusters, such as the bootstrap's `pylon_xds`;
    /// pylon-proxy leaves that one out.
    pub fn dynamic_names(&self) -> Vec<String> {
        self.cluster_info
            .iter()
            .filter(|((_, key), value)| key == "added_via_api" && value.as_str() == "true")
            .map(|((c, _), _)| c.clone())
            .collect()
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
        // pylon-proxy: no per-resource version, but the per-type versions in force.
        if let Some(types) = self.0["xds"]["versions"].as_object() {
            for (ty, v) in types {
                out.insert(format!("xds/{ty}"), v.as_str().unwrap_or("").to_string());
            }
        }
        out
    }

    /// pylon-proxy's `xds.connected` (`None` for Envoy, which has no `xds` key).
    pub fn xds_connected(&self) -> Option<bool> {
        self.0["xds"]["connected"].as_bool()
    }

    /// pylon-proxy's `xds.last_nack`: the message of the last NACK it sent.
    pub fn xds_last_nack(&self) -> Option<&str> {
        self.0["xds"]["last_nack"].as_str()
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
            "pylon_xds::observability_name::pylon_xds\n\
             pylon_xds::added_via_api::false\n\
             service1::observability_name::service1\n\
             service1::default_priority::max_connections::1024\n\
             service1::added_via_api::true\n\
             service1::127.0.0.1:8081::cx_active::2\n\
             service1::127.0.0.1:8081::health_flags::/failed_active_hc/active_hc_timeout\n\
             service1::127.0.0.2:8082::health_flags::healthy\n\
             service1::127.0.0.2:8082::rq_total::120\n",
        );
        assert_eq!(c.names(), vec!["pylon_xds", "service1"]);
        assert_eq!(c.dynamic_names(), vec!["service1"]);
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

    #[test]
    fn reads_the_xds_section_of_a_pylon_proxy_dump() {
        let dump = ConfigDump(serde_json::json!({
            "configs": [{
                "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "dynamic_active_clusters": [{"cluster": {"name": "web"}}],
            }],
            "xds": {
                "connected": false,
                "last_nack": "cluster rnd: lb_policy RANDOM is not supported",
                "versions": {"clusters": "c1", "endpoints": null},
            },
        }));
        assert_eq!(dump.dynamic_clusters(), vec!["web"]);
        assert_eq!(dump.xds_connected(), Some(false));
        assert_eq!(
            dump.xds_last_nack(),
            Some("cluster rnd: lb_policy RANDOM is not supported")
        );
        let v = dump.versions();
        assert_eq!(v["cluster/web"], "");
        assert_eq!(v["xds/clusters"], "c1");
        assert_eq!(v["xds/endpoints"], "");
        // Envoy has no `xds` key.
        assert_eq!(
            ConfigDump(serde_json::json!({"configs": []})).xds_connected(),
            None
        );
    }
}
