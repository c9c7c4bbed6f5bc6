//! Builds pylon-xds config files (the concise YAML form) for tests.
//!
//! Owns rendering only: the schema and its validation belong to
//! `control_plane::config`. Every scenario builds its YAML here, so a schema
//! change is one edit in this file.
//!
//! Schema rendered: `clusters[].{name, connect_timeout, lb_policy,
//! health_check{tcp: {} | http: {path}, interval, timeout,
//! unhealthy_threshold, healthy_threshold}, endpoints: ["ip:port"]}` and
//! `listeners[].{name, address, tcp_proxy: {cluster} | http: {routes:
//! [{prefix, cluster, prefix_rewrite?}]}}`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

/// A whole config file.
#[derive(Debug, Clone, Default)]
pub struct PylonConfig {
    pub clusters: Vec<Cluster>,
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub connect_timeout: Option<Duration>,
    pub lb_policy: Option<String>,
    pub health_check: Option<HealthCheck>,
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Debug, Clone)]
pub enum HealthCheckKind {
    Tcp,
    Http { path: String },
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
    TcpProxy { cluster: String },
    Http { routes: Vec<Route> },
}

#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub cluster: String,
    pub prefix_rewrite: Option<String>,
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
        }
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

impl Listener {
    pub fn tcp_proxy(name: &str, address: SocketAddr, cluster: &str) -> Self {
        Listener {
            name: name.to_string(),
            address,
            kind: ListenerKind::TcpProxy {
                cluster: cluster.to_string(),
            },
        }
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
        }
    }

    pub fn rewrite(mut self, to: &str) -> Self {
        self.prefix_rewrite = Some(to.to_string());
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
                }
                let _ = writeln!(y, "      interval: {}", q(&duration(hc.interval)));
                let _ = writeln!(y, "      timeout: {}", q(&duration(hc.timeout)));
                let _ = writeln!(y, "      unhealthy_threshold: {}", hc.unhealthy_threshold);
                let _ = writeln!(y, "      healthy_threshold: {}", hc.healthy_threshold);
            }
            if c.endpoints.is_empty() {
                y.push_str("    endpoints: []\n");
            } else {
                y.push_str("    endpoints:\n");
                for e in &c.endpoints {
                    let _ = writeln!(y, "      - {}", q(&e.to_string()));
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
                ListenerKind::TcpProxy { cluster } => {
                    let _ = writeln!(y, "    tcp_proxy:\n      cluster: {}", q(cluster));
                }
                ListenerKind::Http { routes } => {
                    y.push_str("    http:\n      routes:\n");
                    for r in routes {
                        let _ = writeln!(y, "        - prefix: {}", q(&r.prefix));
                        let _ = writeln!(y, "          cluster: {}", q(&r.cluster));
                        if let Some(rw) = &r.prefix_rewrite {
                            let _ = writeln!(y, "          prefix_rewrite: {}", q(rw));
                        }
                    }
                }
            }
        }
        y
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
}
