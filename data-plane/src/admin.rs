//! pylon-proxy's admin API, compatible with Envoy's so existing scripts,
//! health checks and dashboards keep working.
//!
//! Owned here: HTTP routing of admin requests and Envoy's output formats
//! (`/clusters` text, `/stats` lines, `/stats/prometheus` names and labels,
//! `/listeners`, `/server_info`, `/ready`). The data comes from the runtime's
//! read-only views; the only state this module owns is the health-check
//! override (`POST /healthcheck/fail|ok`). Mutating endpoints are POST only; a
//! GET to them is answered 400, as Envoy does. The server underneath
//! (`pylon::admin_http`) refuses a POST from a web page (cross-site `Origin`,
//! or a `Host` that is not this admin: DNS rebinding) with 403 before it
//! reaches [`Admin::handle`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;
use crate::xds::XdsState;

/// Envoy's server states, as `/ready` and `/server_info` report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Waiting for the first configuration.
    PreInitializing,
    /// Configuration received; clusters warming (first health checks).
    Initializing,
    /// Serving.
    Live,
    /// Failing health checks on purpose (`/healthcheck/fail`) or shutting down.
    Draining,
}

impl ServerState {
    fn as_str(self) -> &'static str {
        match self {
            ServerState::PreInitializing => "PRE_INITIALIZING",
            ServerState::Initializing => "INITIALIZING",
            ServerState::Live => "LIVE",
            ServerState::Draining => "DRAINING",
        }
    }
}

/// What the admin API reads and the little it owns.
#[derive(Debug)]
pub struct Admin {
    runtime: Arc<Runtime>,
    node_id: String,
    node_cluster: String,
    concurrency: usize,
    started: Instant,
    /// The xDS client's state, when configured over ADS.
    xds: Option<Arc<XdsState>>,
    /// Set once the static configuration has been applied.
    pub initialized: AtomicBool,
    health_failed: AtomicBool,
    shutting_down: AtomicBool,
}

impl Admin {
    /// An admin API over `runtime`.
    pub fn new(
        runtime: Arc<Runtime>,
        node_id: String,
        node_cluster: String,
        concurrency: usize,
        xds: Option<Arc<XdsState>>,
    ) -> Self {
        Admin {
            runtime,
            node_id,
            node_cluster,
            concurrency,
            started: Instant::now(),
            xds,
            initialized: AtomicBool::new(false),
            health_failed: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Marks the server as shutting down (`/ready` turns `DRAINING`).
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// The server state.
    pub fn state(&self) -> ServerState {
        if self.health_failed.load(Ordering::Relaxed) || self.shutting_down.load(Ordering::Relaxed)
        {
            ServerState::Draining
        } else if !self.initialized.load(Ordering::Relaxed)
            || self.xds.as_ref().is_some_and(|x| !x.status().initialized)
        {
            ServerState::PreInitializing
        } else if !self.runtime.ready() {
            ServerState::Initializing
        } else {
            ServerState::Live
        }
    }

    /// Answers one admin request.
    pub fn handle(&self, method: &Method, path_and_query: &str) -> Response<Full<Bytes>> {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let post_only = ["/healthcheck/fail", "/healthcheck/ok"];
        if post_only.contains(&path) {
            if method != Method::POST {
                return text(
                    StatusCode::BAD_REQUEST,
                    "This endpoint requires POST.\n".into(),
                );
            }
            self.health_failed
                .store(path == "/healthcheck/fail", Ordering::Relaxed);
            return text(StatusCode::OK, "OK\n".into());
        }
        if method != Method::GET && method != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            );
        }
        match path {
            "/ready" => {
                let state = self.state();
                let code = if state == ServerState::Live {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text(code, format!("{}\n", state.as_str()))
            }
            "/clusters" if query.contains("format=json") => json(&self.clusters_json()),
            "/clusters" => text(StatusCode::OK, self.clusters_text()),
            "/stats" if query.contains("format=json") => json(&serde_json::json!({
                "stats": self.all_stats().into_iter().map(|(name, value)| serde_json::json!({"name": name, "value": value})).collect::<Vec<_>>()
            })),
            "/stats" => {
                let mut out = String::new();
                for (name, value) in self.all_stats() {
                    let _ = writeln!(out, "{name}: {value}");
                }
                text(StatusCode::OK, out)
            }
            "/stats/prometheus" => {
                let mut r = text(
                    StatusCode::OK,
                    prometheus(&self.all_stats(), &self.cluster_names()),
                );
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "text/plain; version=0.0.4; charset=utf-8",
                    ),
                );
                r
            }
            "/config_dump" => {
                let mut dump = self.runtime.config_dump();
                if let (Some(x), Some(obj)) = (&self.xds, dump.as_object_mut()) {
                    let st = x.status();
                    obj.insert(
                        "xds".into(),
                        serde_json::json!({
                            "connected": st.connected,
                            "server": st.server,
                            "versions": {
                                "clusters": st.versions[pylon::ResourceType::Cluster],
                                "endpoints": st.versions[pylon::ResourceType::Endpoint],
                                "listeners": st.versions[pylon::ResourceType::Listener],
                                "routes": st.versions[pylon::ResourceType::Route],
                            },
                            "last_nack": st.last_nack,
                            "last_apply_error": st.last_apply_error,
                        }),
                    );
                }
                json(&dump)
            }
            "/listeners" if query.contains("format=json") => json(&serde_json::json!({
                "listener_statuses": self.runtime.listeners_view().into_iter().map(|(name, addr)| serde_json::json!({
                    "name": name,
                    "local_address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}},
                })).collect::<Vec<_>>()
            })),
            "/listeners" => {
                let mut out = String::new();
                for (name, addr) in self.runtime.listeners_view() {
                    let _ = writeln!(out, "{name}::{addr}");
                }
                text(StatusCode::OK, out)
            }
            "/server_info" => json(&serde_json::json!({
                "version": format!("pylon-proxy/{}", env!("CARGO_PKG_VERSION")),
                "state": self.state().as_str(),
                "uptime_current_epoch": format!("{}s", self.started.elapsed().as_secs()),
                "uptime_all_epochs": format!("{}s", self.started.elapsed().as_secs()),
                "node": {"id": self.node_id, "cluster": self.node_cluster},
                "command_line_options": {"concurrency": self.concurrency},
            })),
            "/" | "/help" => text(StatusCode::OK, HELP.into()),
            _ => text(
                StatusCode::NOT_FOUND,
                format!("invalid path: {path}\n{HELP}"),
            ),
        }
    }

    fn cluster_names(&self) -> Vec<String> {
        self.runtime
            .clusters_view()
            .into_iter()
            .map(|c| c.name)
            .collect()
    }

    fn all_stats(&self) -> BTreeMap<String, u64> {
        let mut stats: BTreeMap<String, u64> = self.runtime.stats().into_iter().collect();
        stats.insert("server.uptime".into(), self.started.elapsed().as_secs());
        stats.insert("server.concurrency".into(), self.concurrency as u64);
        stats.insert(
            "server.live".into(),
            u64::from(self.state() == ServerState::Live),
        );
        stats
    }

    fn clusters_text(&self) -> String {
        let mut out = String::new();
        for c in self.runtime.clusters_view() {
            let n = &c.name;
            let _ = writeln!(out, "{n}::observability_name::{n}");
            let cb = &c.circuit_breakers;
            let _ = writeln!(
                out,
                "{n}::default_priority::max_connections::{}",
                cb.max_connections
            );
            let _ = writeln!(
                out,
                "{n}::default_priority::max_pending_requests::{}",
                cb.max_pending_requests
            );
            let _ = writeln!(
                out,
                "{n}::default_priority::max_requests::{}",
                cb.max_requests
            );
            let _ = writeln!(
                out,
                "{n}::default_priority::max_retries::{}",
                cb.max_retries
            );
            let _ = writeln!(out, "{n}::added_via_api::{}", c.added_via_api);
            for h in &c.hosts {
                let a = h.addr;
                let _ = writeln!(out, "{n}::{a}::cx_active::{}", h.cx_active);
                let _ = writeln!(out, "{n}::{a}::cx_connect_fail::{}", h.cx_connect_fail);
                let _ = writeln!(out, "{n}::{a}::cx_total::{}", h.cx_total);
                let _ = writeln!(out, "{n}::{a}::rq_active::{}", h.rq_active);
                let _ = writeln!(out, "{n}::{a}::rq_total::{}", h.rq_total);
                let _ = writeln!(out, "{n}::{a}::hostname::");
                let _ = writeln!(out, "{n}::{a}::health_flags::{}", h.health_flags);
                let _ = writeln!(out, "{n}::{a}::weight::{}", h.weight);
                let _ = writeln!(out, "{n}::{a}::region::");
                let _ = writeln!(out, "{n}::{a}::zone::");
                let _ = writeln!(out, "{n}::{a}::sub_zone::");
                let _ = writeln!(out, "{n}::{a}::canary::false");
                let _ = writeln!(out, "{n}::{a}::priority::0");
                let rate = |r: Option<f64>| r.map_or_else(|| "-1".to_owned(), |r| r.to_string());
                let _ = writeln!(out, "{n}::{a}::success_rate::{}", rate(h.success_rate));
                let _ = writeln!(
                    out,
                    "{n}::{a}::local_origin_success_rate::{}",
                    rate(h.local_origin_success_rate)
                );
            }
        }
        out
    }

    fn clusters_json(&self) -> serde_json::Value {
        let statuses: Vec<serde_json::Value> = self
            .runtime
            .clusters_view()
            .into_iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "added_via_api": c.added_via_api,
                    "host_statuses": c.hosts.iter().map(|h| serde_json::json!({
                        "address": {"socket_address": {"address": h.addr.ip().to_string(), "port_value": h.addr.port()}},
                        "stats": [
                            {"name": "cx_active", "value": h.cx_active},
                            {"name": "cx_connect_fail", "value": h.cx_connect_fail},
                            {"name": "cx_total", "value": h.cx_total},
                            {"name": "rq_active", "value": h.rq_active},
                            {"name": "rq_total", "value": h.rq_total},
                        ],
                        "health_status": {
                            "eds_health_status": "HEALTHY",
                            "failed_active_health_check": h.health_flags.contains("failed_active_hc"),
                            "failed_outlier_check": h.health_flags.contains("failed_outlier_check"),
                            "pending_dynamic_removal": h.health_flags.contains("pending_dynamic_removal"),
                        },
                        "weight": h.weight,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({ "cluster_statuses": statuses })
    }
}

const HELP: &str = "admin commands are:
  /: this list
  /clusters: upstream cluster status (?format=json)
  /config_dump: dump current configuration
  /healthcheck/fail: cause the server to fail health checks (POST)
  /healthcheck/ok: cause the server to pass health checks (POST)
  /help: this list
  /listeners: print listener info (?format=json)
  /ready: print server state, return 200 if LIVE, otherwise return 503
  /server_info: print server version/status information
  /stats: print server stats (?format=json)
  /stats/prometheus: print server stats in prometheus format
";

/// Gauges among the stats (everything else is a counter).
fn is_gauge(stat: &str) -> bool {
    [
        "_active",
        "_open",
        "membership_healthy",
        "membership_total",
        "health_check.healthy",
        "server.uptime",
        "server.concurrency",
        "server.live",
    ]
    .iter()
    .any(|suffix| stat.ends_with(suffix))
}

/// Envoy's Prometheus naming: `envoy_` prefix, dots to underscores, and the
/// well-known tags (cluster name, listener address, connection-manager and
/// tcp prefixes) lifted into labels.
pub fn prometheus(stats: &BTreeMap<String, u64>, cluster_names: &[String]) -> String {
    let mut families: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (name, value) in stats {
        let (family, labels) = split_tags(name, cluster_names);
        families.entry(family).or_default().push((labels, *value));
    }
    let mut out = String::new();
    for (family, samples) in families {
        let kind = if is_gauge(&family.replace('_', ".")) || is_gauge(&family) {
            "gauge"
        } else {
            "counter"
        };
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{family}{labels} {value}");
        }
    }
    out
}

fn split_tags(stat: &str, cluster_names: &[String]) -> (String, String) {
    let sanitize = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let label = |k: &str, v: &str| {
        format!(
            "{{{k}=\"{}\"}}",
            v.replace('\\', "\\\\").replace('"', "\\\"")
        )
    };
    if let Some(rest) = stat.strip_prefix("cluster.") {
        // Cluster names may contain dots: take the longest known name.
        let mut best: Option<&str> = None;
        for n in cluster_names {
            if rest.len() > n.len() + 1
                && rest.starts_with(n.as_str())
                && rest.as_bytes()[n.len()] == b'.'
                && best.is_none_or(|b| n.len() > b.len())
            {
                best = Some(n);
            }
        }
        let (name, tail) = match best {
            Some(n) => (n, &rest[n.len() + 1..]),
            None => rest.split_once('.').unwrap_or((rest, "")),
        };
        return (
            format!("envoy_cluster_{}", sanitize(tail)),
            label("envoy_cluster_name", name),
        );
    }
    for (category, tag) in [
        ("listener.", "envoy_listener_address"),
        ("http.", "envoy_http_conn_manager_prefix"),
        ("tcp.", "envoy_tcp_prefix"),
    ] {
        if let Some(rest) = stat.strip_prefix(category) {
            // A listener address contains dots and a colon: it ends at the last
            // component that starts the stat proper (`downstream_...`).
            let split = if category == "listener." {
                rest.find(".downstream_").or_else(|| rest.rfind('.'))
            } else {
                rest.find('.')
            };
            if let Some(i) = split {
                let (value, tail) = (&rest[..i], &rest[i + 1..]);
                return (
                    format!(
                        "envoy_{}_{}",
                        &category[..category.len() - 1],
                        sanitize(tail)
                    ),
                    label(tag, value),
                );
            }
        }
    }
    (format!("envoy_{}", sanitize(stat)), String::new())
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Serves the admin API on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let handler: pylon::admin_http::Handler = Arc::new(move |req: &hyper::http::request::Parts| {
        admin.handle(
            &req.method,
            req.uri.path_and_query().map_or("/", |p| p.as_str()),
        )
    });
    pylon::admin_http::serve(listener, handler, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_and_labels_follow_envoy() {
        let stats: BTreeMap<String, u64> = [
            ("cluster.service1.upstream_cx_total", 10),
            ("cluster.svc.v2.upstream_rq_total", 4),
            ("cluster.service1.upstream_cx_active", 2),
            ("listener.127.0.0.1_8000.downstream_cx_total", 3),
            ("http.front.downstream_rq_total", 7),
            ("tcp.k8s.downstream_cx_total", 1),
            ("server.uptime", 5),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let out = prometheus(&stats, &["service1".into(), "svc.v2".into()]);
        for line in [
            "# TYPE envoy_cluster_upstream_cx_total counter",
            "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"service1\"} 10",
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"svc.v2\"} 4",
            "# TYPE envoy_cluster_upstream_cx_active gauge",
            "envoy_listener_downstream_cx_total{envoy_listener_address=\"127.0.0.1_8000\"} 3",
            "envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"front\"} 7",
            "envoy_tcp_downstream_cx_total{envoy_tcp_prefix=\"k8s\"} 1",
            "envoy_server_uptime 5",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }
}
