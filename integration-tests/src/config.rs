//! Builds pylon-xds config files (the concise YAML form) for tests.
//!
//! Owns rendering only: the schema and its validation belong to
//! `control_plane::config`. Every scenario builds its YAML here, so a schema
//! change is one edit in this file.
//!
//! Schema rendered: `clusters[].{name, connect_timeout, lb_policy,
//! health_check{tcp: {} | http: {path} | https: {path, ca |
//! insecure_skip_verify}, interval, timeout,
//! unhealthy_threshold, healthy_threshold}, endpoints: ["ip:port"],
//! circuit_breakers?, outlier_detection?}` and `listeners[].{name, address,
//! tcp_proxy: {cluster, max_connect_attempts?} | http: {routes: [{prefix,
//! cluster, prefix_rewrite?, timeout?, retries?}]}}`, plus Envoy-native HTTP
//! listeners ([`NativeHttpListener`]) and health-checked STATIC clusters
//! ([`NativeCluster`]) under `static_resources`, for settings the concise
//! form does not have.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

/// A whole config file.
#[derive(Debug, Clone, Default)]
pub struct PylonConfig {
    pub clusters: Vec<Cluster>,
    pub listeners: Vec<Listener>,
    pub native_listeners: Vec<NativeHttpListener>,
    pub native_clusters: Vec<NativeCluster>,
    /// Envoy-native clusters written as YAML, each one `static_resources.clusters`
    /// entry (a map, without the leading `- `), such as a STRICT_DNS cluster.
    pub native_cluster_yaml: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub connect_timeout: Option<Duration>,
    pub lb_policy: Option<String>,
    pub health_check: Option<HealthCheck>,
    pub endpoints: Vec<SocketAddr>,
    /// Endpoints written as `host:port`, after `endpoints` (pylon-xds resolves them).
    pub named_endpoints: Vec<String>,
    /// `dns_refresh`, for the names.
    pub dns_refresh: Option<Duration>,
    pub circuit_breakers: Option<CircuitBreakers>,
    pub outlier_detection: Option<OutlierDetection>,
}

/// `outlier_detection` of a concise cluster; `None` leaves a field out.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutlierDetection {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_failure: Option<u32>,
    pub consecutive_local_origin_failure: Option<u32>,
    pub interval: Option<Duration>,
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<u32>,
}

/// `retries` of a concise route; `None` leaves a field out (`Retries::default()`
/// renders `retries: {}`).
#[derive(Debug, Clone, Default)]
pub struct Retries {
    /// Conditions, as written in the YAML (`connect-failure`, `5xx`, ...).
    pub on: Option<Vec<String>>,
    pub num_retries: Option<u32>,
    pub per_try_timeout: Option<Duration>,
}

/// An Envoy-native STATIC cluster (served as EDS by pylon-xds) with a TCP
/// health check and, when set, an explicit `ignore_health_on_host_removal`.
#[derive(Debug, Clone)]
pub struct NativeCluster {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    /// The check's interval, timeout and `no_traffic_interval`; thresholds 1.
    pub check_interval: Duration,
    pub ignore_health_on_host_removal: Option<bool>,
}

/// `circuit_breakers` of a concise cluster; `None` leaves a threshold out.
#[derive(Debug, Clone, Copy, Default)]
pub struct CircuitBreakers {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
}

/// An Envoy-native HTTP listener: an HttpConnectionManager with the router,
/// `settings` (YAML `key: value` lines of the connection manager, such as
/// `request_headers_timeout: 1s`) and an inline route configuration.
#[derive(Debug, Clone)]
pub struct NativeHttpListener {
    pub name: String,
    pub address: SocketAddr,
    pub settings: Vec<String>,
    /// `(prefix, cluster)`, in order.
    pub routes: Vec<(String, String)>,
}

impl NativeHttpListener {
    pub fn new(name: &str, address: SocketAddr, routes: &[(&str, &str)]) -> Self {
        NativeHttpListener {
            name: name.to_string(),
            address,
            settings: Vec::new(),
            routes: routes
                .iter()
                .map(|(p, c)| (p.to_string(), c.to_string()))
                .collect(),
        }
    }

    /// Adds a connection manager setting, one YAML `key: value` line.
    pub fn setting(mut self, line: &str) -> Self {
        self.settings.push(line.to_string());
        self
    }
}

#[derive(Debug, Clone)]
pub enum HealthCheckKind {
    Tcp,
    Http {
        path: String,
    },
    /// `https: {path, ca}`, or `insecure_skip_verify: true` without a CA.
    Https {
        path: String,
        ca: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub kind: ListenerKind,
}

#[derive(Debug, Clone)]
pub enum ListenerKind {
    TcpProxy {
        cluster: String,
        max_connect_attempts: Option<u32>,
    },
    Http {
        routes: Vec<Route>,
    },
}

#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub cluster: String,
    pub prefix_rewrite: Option<String>,
    pub timeout: Option<Duration>,
    pub retries: Option<Retries>,
}

/// Renders a duration in the concise form (`"250ms"`).
pub fn duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Cluster {
    /// A round-robin cluster without health checks.
    pub fn new(name: &str, endpoints: &[SocketAddr]) -> Self {
        Cluster {
            name: name.to_string(),
            connect_timeout: Some(Duration::from_secs(1)),
            lb_policy: Some("round_robin".to_string()),
            health_check: None,
            endpoints: endpoints.to_vec(),
            named_endpoints: Vec::new(),
            dns_refresh: None,
            circuit_breakers: None,
            outlier_detection: None,
        }
    }

    /// Adds endpoints written as `host:port`, looked up again every `refresh`.
    pub fn names(mut self, names: &[&str], refresh: Duration) -> Self {
        self.named_endpoints
            .extend(names.iter().map(|n| n.to_string()));
        self.dns_refresh = Some(refresh);
        self
    }

    /// Sets `outlier_detection`.
    pub fn outlier_detection(mut self, od: OutlierDetection) -> Self {
        self.outlier_detection = Some(od);
        self
    }

    /// Sets `circuit_breakers`.
    pub fn circuit_breakers(mut self, cb: CircuitBreakers) -> Self {
        self.circuit_breakers = Some(cb);
        self
    }

    /// Sets `lb_policy` (`round_robin`, `least_request`, `random`).
    pub fn lb_policy(mut self, policy: &str) -> Self {
        self.lb_policy = Some(policy.to_string());
        self
    }

    /// Adds a TCP health check (connect, then close).
    pub fn tcp_health_check(
        mut self,
        interval: Duration,
        timeout: Duration,
        unhealthy: u32,
        healthy: u32,
    ) -> Self {
        self.health_check = Some(HealthCheck {
            kind: HealthCheckKind::Tcp,
            interval,
            timeout,
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
        });
        self
    }
}

impl Cluster {
    /// Adds an `https` health check: `GET path` over TLS, verified against
    /// `ca` (a file on the proxy's host), or not verified without one.
    pub fn https_health_check(
        mut self,
        path: &str,
        ca: Option<&std::path::Path>,
        interval: Duration,
        timeout: Duration,
        unhealthy: u32,
        healthy: u32,
    ) -> Self {
        self.health_check = Some(HealthCheck {
            kind: HealthCheckKind::Https {
                path: path.to_string(),
                ca: ca.map(std::path::Path::to_path_buf),
            },
            interval,
            timeout,
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
        });
        self
    }
}

impl Listener {
    pub fn tcp_proxy(name: &str, address: SocketAddr, cluster: &str) -> Self {
        Listener {
            name: name.to_string(),
            address,
            kind: ListenerKind::TcpProxy {
                cluster: cluster.to_string(),
                max_connect_attempts: None,
            },
        }
    }

    /// Sets a TCP proxy's `max_connect_attempts`.
    pub fn max_connect_attempts(mut self, n: u32) -> Self {
        if let ListenerKind::TcpProxy {
            max_connect_attempts,
            ..
        } = &mut self.kind
        {
            *max_connect_attempts = Some(n);
        }
        self
    }

    pub fn http(name: &str, address: SocketAddr, routes: Vec<Route>) -> Self {
        Listener {
            name: name.to_string(),
            address,
            kind: ListenerKind::Http { routes },
        }
    }
}

impl Route {
    pub fn prefix(prefix: &str, cluster: &str) -> Self {
        Route {
            prefix: prefix.to_string(),
            cluster: cluster.to_string(),
            prefix_rewrite: None,
            timeout: None,
            retries: None,
        }
    }

    /// Sets `retries`.
    pub fn retries(mut self, r: Retries) -> Self {
        self.retries = Some(r);
        self
    }

    pub fn rewrite(mut self, to: &str) -> Self {
        self.prefix_rewrite = Some(to.to_string());
        self
    }

    /// Sets the route timeout (`0s` disables it).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
}

/// A YAML double-quoted string (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl PylonConfig {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cluster(mut self, c: Cluster) -> Self {
        self.clusters.push(c);
        self
    }

    pub fn listener(mut self, l: Listener) -> Self {
        self.listeners.push(l);
        self
    }

    pub fn native_listener(mut self, l: NativeHttpListener) -> Self {
        self.native_listeners.push(l);
        self
    }

    pub fn native_cluster(mut self, c: NativeCluster) -> Self {
        self.native_clusters.push(c);
        self
    }

    /// The native cluster named `name`, for in-place edits between pushes.
    pub fn native_cluster_mut(&mut self, name: &str) -> Option<&mut NativeCluster> {
        self.native_clusters.iter_mut().find(|c| c.name == name)
    }

    /// The cluster named `name`, for in-place edits between pushes.
    pub fn cluster_mut(&mut self, name: &str) -> Option<&mut Cluster> {
        self.clusters.iter_mut().find(|c| c.name == name)
    }

    /// The listener named `name`, for in-place edits between pushes.
    pub fn listener_mut(&mut self, name: &str) -> Option<&mut Listener> {
        self.listeners.iter_mut().find(|l| l.name == name)
    }

    /// Renders the YAML text.
    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        // `write!` to a String cannot fail; the results are ignored on purpose.
        if self.clusters.is_empty() {
            y.push_str("clusters: []\n");
        } else {
            y.push_str("clusters:\n");
        }
        for c in &self.clusters {
            let _ = writeln!(y, "  - name: {}", q(&c.name));
            if let Some(t) = c.connect_timeout {
                let _ = writeln!(y, "    connect_timeout: {}", q(&duration(t)));
            }
            if let Some(p) = &c.lb_policy {
                let _ = writeln!(y, "    lb_policy: {p}");
            }
            if let Some(hc) = &c.health_check {
                y.push_str("    health_check:\n");
                match &hc.kind {
                    HealthCheckKind::Tcp => y.push_str("      tcp: {}\n"),
                    HealthCheckKind::Http { path } => {
                        let _ = writeln!(y, "      http:\n        path: {}", q(path));
                    }
                    HealthCheckKind::Https { path, ca } => {
                        let _ = writeln!(y, "      https:\n        path: {}", q(path));
                        match ca {
                            Some(ca) => {
                                let _ = writeln!(y, "        ca: {}", q(&ca.display().to_string()));
                            }
                            None => y.push_str("        insecure_skip_verify: true\n"),
                        }
                    }
                }
                let _ = writeln!(y, "      interval: {}", q(&duration(hc.interval)));
                let _ = writeln!(y, "      timeout: {}", q(&duration(hc.timeout)));
                let _ = writeln!(y, "      unhealthy_threshold: {}", hc.unhealthy_threshold);
                let _ = writeln!(y, "      healthy_threshold: {}", hc.healthy_threshold);
            }
            if let Some(cb) = &c.circuit_breakers {
                y.push_str("    circuit_breakers:\n");
                for (key, value) in [
                    ("max_connections", cb.max_connections),
                    ("max_pending_requests", cb.max_pending_requests),
                    ("max_requests", cb.max_requests),
                    ("max_retries", cb.max_retries),
                ] {
                    if let Some(v) = value {
                        let _ = writeln!(y, "      {key}: {v}");
                    }
                }
            }
            if let Some(d) = c.dns_refresh {
                let _ = writeln!(y, "    dns_refresh: {}", q(&duration(d)));
            }
            if let Some(od) = &c.outlier_detection {
                y.push_str("    outlier_detection:\n");
                for (key, value) in [
                    ("consecutive_5xx", od.consecutive_5xx),
                    (
                        "consecutive_gateway_failure",
                        od.consecutive_gateway_failure,
                    ),
                    (
                        "consecutive_local_origin_failure",
                        od.consecutive_local_origin_failure,
                    ),
                    ("max_ejection_percent", od.max_ejection_percent),
                ] {
                    if let Some(v) = value {
                        let _ = writeln!(y, "      {key}: {v}");
                    }
                }
                for (key, value) in [
                    ("interval", od.interval),
                    ("base_ejection_time", od.base_ejection_time),
                ] {
                    if let Some(v) = value {
                        let _ = writeln!(y, "      {key}: {}", q(&duration(v)));
                    }
                }
                if y.ends_with("outlier_detection:\n") {
                    y.truncate(y.len() - 1);
                    y.push_str(" {}\n");
                }
            }
            if c.endpoints.is_empty() && c.named_endpoints.is_empty() {
                y.push_str("    endpoints: []\n");
            } else {
                y.push_str("    endpoints:\n");
                for e in &c.endpoints {
                    let _ = writeln!(y, "      - {}", q(&e.to_string()));
                }
                for n in &c.named_endpoints {
                    let _ = writeln!(y, "      - {}", q(n));
                }
            }
        }
        if self.listeners.is_empty() {
            y.push_str("listeners: []\n");
        } else {
            y.push_str("listeners:\n");
        }
        for l in &self.listeners {
            let _ = writeln!(y, "  - name: {}", q(&l.name));
            let _ = writeln!(y, "    address: {}", q(&l.address.to_string()));
            match &l.kind {
                ListenerKind::TcpProxy {
                    cluster,
                    max_connect_attempts,
                } => {
                    let _ = writeln!(y, "    tcp_proxy:\n      cluster: {}", q(cluster));
                    if let Some(n) = max_connect_attempts {
                        let _ = writeln!(y, "      max_connect_attempts: {n}");
                    }
                }
                ListenerKind::Http { routes } => {
                    y.push_str("    http:\n      routes:\n");
                    for r in routes {
                        let _ = writeln!(y, "        - prefix: {}", q(&r.prefix));
                        let _ = writeln!(y, "          cluster: {}", q(&r.cluster));
                        if let Some(rw) = &r.prefix_rewrite {
                            let _ = writeln!(y, "          prefix_rewrite: {}", q(rw));
                        }
                        if let Some(t) = r.timeout {
                            let _ = writeln!(y, "          timeout: {}", q(&duration(t)));
                        }
                        if let Some(re) = &r.retries {
                            render_retries(&mut y, re);
                        }
                    }
                }
            }
        }
        if !self.native_listeners.is_empty()
            || !self.native_clusters.is_empty()
            || !self.native_cluster_yaml.is_empty()
        {
            y.push_str("static_resources:\n");
        }
        if !self.native_listeners.is_empty() {
            y.push_str("  listeners:\n");
        }
        for l in &self.native_listeners {
            l.render(&mut y);
        }
        if !self.native_clusters.is_empty() || !self.native_cluster_yaml.is_empty() {
            y.push_str("  clusters:\n");
        }
        for c in &self.native_clusters {
            c.render(&mut y);
        }
        for c in &self.native_cluster_yaml {
            for (i, line) in c.lines().enumerate() {
                let lead = if i == 0 { "  - " } else { "    " };
                let _ = writeln!(y, "{lead}{line}");
            }
        }
        y
    }

    /// Adds an Envoy-native cluster written as YAML (see
    /// [`PylonConfig::native_cluster_yaml`]).
    pub fn native_cluster_yaml(mut self, yaml: &str) -> Self {
        self.native_cluster_yaml.push(yaml.to_string());
        self
    }
}

fn render_retries(y: &mut String, r: &Retries) {
    let mut fields = Vec::new();
    if let Some(on) = &r.on {
        fields.push(format!("on: [{}]", on.join(", ")));
    }
    if let Some(n) = r.num_retries {
        fields.push(format!("num_retries: {n}"));
    }
    if let Some(t) = r.per_try_timeout {
        fields.push(format!("per_try_timeout: {}", q(&duration(t))));
    }
    let _ = writeln!(y, "          retries: {{{}}}", fields.join(", "));
}

impl NativeCluster {
    /// A cluster of `endpoints` checked every `check_interval`.
    pub fn new(name: &str, endpoints: &[SocketAddr], check_interval: Duration) -> Self {
        NativeCluster {
            name: name.to_string(),
            endpoints: endpoints.to_vec(),
            check_interval,
            ignore_health_on_host_removal: None,
        }
    }

    fn render(&self, y: &mut String) {
        let _ = writeln!(y, "  - name: {}", q(&self.name));
        y.push_str("    type: STATIC\n    connect_timeout: 1s\n");
        if let Some(keep) = self.ignore_health_on_host_removal {
            let _ = writeln!(y, "    ignore_health_on_host_removal: {keep}");
        }
        // Native durations are seconds: "0.2s".
        let i = format!("{}s", self.check_interval.as_secs_f64());
        let _ = writeln!(
            y,
            "    health_checks:\n    - {{timeout: {i}, interval: {i}, no_traffic_interval: {i}, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {{}}}}"
        );
        let _ = writeln!(
            y,
            "    load_assignment:\n      cluster_name: {}\n      endpoints:\n      - lb_endpoints:",
            q(&self.name)
        );
        if self.endpoints.is_empty() {
            y.truncate(y.len() - "\n      - lb_endpoints:\n".len());
            y.push_str(" []\n");
        }
        for e in &self.endpoints {
            let _ = writeln!(
                y,
                "        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}",
                q(&e.ip().to_string()),
                e.port()
            );
        }
    }
}

impl NativeHttpListener {
    fn render(&self, y: &mut String) {
        let _ = writeln!(y, "  - name: {}", q(&self.name));
        let _ = writeln!(
            y,
            "    address: {{socket_address: {{address: {}, port_value: {}}}}}",
            q(&self.address.ip().to_string()),
            self.address.port()
        );
        y.push_str("    filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n");
        y.push_str("          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n");
        let _ = writeln!(y, "          stat_prefix: {}", q(&self.name));
        for line in &self.settings {
            let _ = writeln!(y, "          {line}");
        }
        y.push_str("          http_filters:\n          - name: envoy.filters.http.router\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}\n");
        let _ = writeln!(
            y,
            "          route_config:\n            name: {}",
            q(&self.name)
        );
        let _ = writeln!(
            y,
            "            virtual_hosts:\n            - name: {}\n              domains: [\"*\"]\n              routes:",
            q(&self.name)
        );
        for (prefix, cluster) in &self.routes {
            let _ = writeln!(
                y,
                "              - match: {{prefix: {}}}\n                route: {{cluster: {}}}",
                q(prefix),
                q(cluster)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_concise_schema() {
        let a: SocketAddr = "127.0.0.2:6443".parse().unwrap();
        let y = PylonConfig::new()
            .cluster(Cluster::new("api", &[a]).tcp_health_check(
                Duration::from_millis(200),
                Duration::from_millis(200),
                3,
                2,
            ))
            .listener(Listener::tcp_proxy(
                "api",
                "127.0.0.1:7000".parse().unwrap(),
                "api",
            ))
            .listener(Listener::http(
                "front",
                "127.0.0.1:7001".parse().unwrap(),
                vec![Route::prefix("/service/1", "s1").rewrite("/")],
            ))
            .to_yaml();
        let expected = r#"clusters:
  - name: "api"
    connect_timeout: "1000ms"
    lb_policy: round_robin
    health_check:
      tcp: {}
      interval: "200ms"
      timeout: "200ms"
      unhealthy_threshold: 3
      healthy_threshold: 2
    endpoints:
      - "127.0.0.2:6443"
listeners:
  - name: "api"
    address: "127.0.0.1:7000"
    tcp_proxy:
      cluster: "api"
  - name: "front"
    address: "127.0.0.1:7001"
    http:
      routes:
        - prefix: "/service/1"
          cluster: "s1"
          prefix_rewrite: "/"
"#;
        assert_eq!(y, expected);
    }

    #[test]
    fn renders_circuit_breakers_and_native_listeners() {
        let a: SocketAddr = "127.0.0.2:8080".parse().unwrap();
        let y = PylonConfig::new()
            .cluster(Cluster::new("web", &[a]).circuit_breakers(CircuitBreakers {
                max_connections: Some(2),
                max_pending_requests: Some(1),
                ..Default::default()
            }))
            .listener(Listener::http(
                "front",
                "127.0.0.1:7001".parse().unwrap(),
                vec![Route::prefix("/", "web").timeout(Duration::from_secs(30))],
            ))
            .native_listener(
                NativeHttpListener::new("edge", "127.0.0.1:7002".parse().unwrap(), &[("/", "web")])
                    .setting("request_headers_timeout: 1s"),
            )
            .to_yaml();
        let control = control_plane::config::load_str("t.yaml", &y);
        assert!(control.is_ok(), "{y}\n{:?}", control.err());
        assert!(
            y.contains(
                "    circuit_breakers:\n      max_connections: 2\n      max_pending_requests: 1\n"
            ),
            "{y}"
        );
        assert!(y.contains("          timeout: \"30000ms\"\n"), "{y}");
        assert!(
            y.contains("static_resources:\n  listeners:\n  - name: \"edge\"\n"),
            "{y}"
        );
        assert!(y.contains("          request_headers_timeout: 1s\n"), "{y}");
    }

    #[test]
    fn renders_outlier_detection_retries_and_native_clusters() {
        let a: SocketAddr = "127.0.0.2:8080".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:8080".parse().unwrap();
        let y = PylonConfig::new()
            .cluster(
                Cluster::new("web", &[a]).outlier_detection(OutlierDetection {
                    consecutive_5xx: Some(3),
                    base_ejection_time: Some(Duration::from_secs(3)),
                    ..Default::default()
                }),
            )
            .cluster(Cluster::new("plain", &[a]).outlier_detection(OutlierDetection::default()))
            .native_cluster(NativeCluster {
                ignore_health_on_host_removal: Some(false),
                ..NativeCluster::new("keep", &[a, b], Duration::from_millis(200))
            })
            .native_cluster(NativeCluster::new("none", &[], Duration::from_secs(1)))
            .listener(
                Listener::tcp_proxy("api", "127.0.0.1:7000".parse().unwrap(), "web")
                    .max_connect_attempts(1),
            )
            .listener(Listener::http(
                "front",
                "127.0.0.1:7001".parse().unwrap(),
                vec![
                    Route::prefix("/a", "web").retries(Retries {
                        on: Some(vec!["5xx".into()]),
                        num_retries: Some(1),
                        per_try_timeout: Some(Duration::from_secs(2)),
                    }),
                    Route::prefix("/b", "keep").retries(Retries::default()),
                ],
            ))
            .to_yaml();
        let control = control_plane::config::load_str("t.yaml", &y);
        assert!(control.is_ok(), "{y}\n{:?}", control.err());
        for want in [
            "    outlier_detection:\n      consecutive_5xx: 3\n      base_ejection_time: \"3000ms\"\n",
            "    outlier_detection: {}\n",
            "      max_connect_attempts: 1\n",
            "          retries: {on: [5xx], num_retries: 1, per_try_timeout: \"2000ms\"}\n",
            "          retries: {}\n",
            "static_resources:\n  clusters:\n  - name: \"keep\"\n",
            "    ignore_health_on_host_removal: false\n",
            "      endpoints: []\n",
        ] {
            assert!(y.contains(want), "{want}\n---\n{y}");
        }
        let r = control.unwrap();
        let keep = r.clusters.iter().find(|c| c.name == "keep").unwrap();
        assert!(
            !keep.ignore_health_on_host_removal,
            "an explicit false is kept"
        );
    }
}
