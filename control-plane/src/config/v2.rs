//! Envoy v2 syntax in `static_resources`: recognising it and writing the v3
//! form (`pylon-xds migrate`).
//!
//! Many tutorials, the front-proxy seed among them, still show v2 configs:
//! filters configured with `config:` (a Struct) instead of `typed_config:`
//! with an `@type`, clusters with `hosts:` instead of `load_assignment`,
//! lower-case enum values (`type: strict_dns`), the short filter names
//! (`envoy.router`), `http2_protocol_options` on a cluster and `tls_context`.
//! Envoy 1.40 reads none of them. A v2 file fed to the v3 reader stops at the
//! first one; this module finds them all in one pass over the YAML value, with
//! the v3 spelling of each, so `validate` can report every one at once, and
//! rewrites them for `migrate`.
//!
//! Owned here: the v2 -> v3 table for the constructs above. Not owned: reading
//! or checking v3 (`native`). The walk is over a `serde_yaml::Value` of a file
//! that already passed the bounded first pass (`pylon::yaml::check` or `scan`), so its depth is
//! bounded.

use serde_yaml::{Mapping, Value};

use pylon::yaml::snake_case;

/// One v2 construct found (and, in the migrated value, rewritten).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Where, like `static_resources.clusters[0].hosts`.
    pub path: String,
    /// What it is and how v3 spells it.
    pub message: String,
}

/// The result of rewriting a file's `static_resources` from v2 to v3.
#[derive(Debug)]
pub struct Migrated {
    /// The document with `static_resources` in v3 (other keys as they were).
    pub document: Value,
    /// Every construct rewritten, in file order.
    pub changes: Vec<Change>,
    /// Constructs with no known v3 spelling, left as they were.
    pub unknown: Vec<Change>,
}

const HCM: (&str, &str) = (
    "envoy.filters.network.http_connection_manager",
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
);
const TCP_PROXY: (&str, &str) = (
    "envoy.filters.network.tcp_proxy",
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
);
const ROUTER: (&str, &str) = (
    "envoy.filters.http.router",
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
);
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// The v3 name and `@type` of a filter known by a v2 or v3 name.
fn filter_v3(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "envoy.http_connection_manager" | "envoy.filters.network.http_connection_manager" => {
            Some(HCM)
        }
        "envoy.tcp_proxy" | "envoy.filters.network.tcp_proxy" => Some(TCP_PROXY),
        "envoy.router" | "envoy.filters.http.router" => Some(ROUTER),
        _ => None,
    }
}

/// Enum-valued fields whose v2 configs were often written in lower case.
const ENUM_FIELDS: [&str; 5] = [
    "type",
    "lb_policy",
    "codec_type",
    "dns_lookup_family",
    "forward_client_cert_details",
];

/// Finds and rewrites the v2 constructs of `document`'s `static_resources`.
pub fn migrate(mut document: Value) -> Migrated {
    let mut w = Walk::default();
    if let Some(sr) = document
        .as_mapping_mut()
        .and_then(|m| m.get_mut("static_resources"))
        .and_then(Value::as_mapping_mut)
    {
        if let Some(Value::Sequence(listeners)) = sr.get_mut("listeners") {
            for (i, l) in listeners.iter_mut().enumerate() {
                if let Some(l) = l.as_mapping_mut() {
                    w.listener(l, &format!("static_resources.listeners[{i}]"), i);
                }
            }
        }
        if let Some(Value::Sequence(clusters)) = sr.get_mut("clusters") {
            for (i, c) in clusters.iter_mut().enumerate() {
                if let Some(c) = c.as_mapping_mut() {
                    w.cluster(c, &format!("static_resources.clusters[{i}]"));
                }
            }
        }
    }
    Migrated {
        document,
        changes: w.changes,
        unknown: w.unknown,
    }
}

#[derive(Default)]
struct Walk {
    changes: Vec<Change>,
    unknown: Vec<Change>,
}

impl Walk {
    fn change(&mut self, path: String, message: String) {
        self.changes.push(Change { path, message });
    }

    fn listener(&mut self, l: &mut Mapping, path: &str, index: usize) {
        if !l.contains_key("name") {
            // v2 static listeners could go unnamed; served over LDS, a
            // listener is known by its name.
            let name = format!("listener_{index}");
            self.change(
                format!("{path}.name"),
                format!("a listener served over LDS needs a `name` (`{name}` given)"),
            );
            l.insert("name".into(), name.into());
        }
        if l.remove("use_original_dst").is_some() {
            self.change(
                format!("{path}.use_original_dst"),
                "`use_original_dst` is v2: v3 uses the `envoy.filters.listener.original_dst` \
                 listener filter (removed here: pylon-proxy and the seeds do not need it)"
                    .to_string(),
            );
        }
        if let Some(Value::Sequence(chains)) = l.get_mut("filter_chains") {
            for (c, chain) in chains.iter_mut().enumerate() {
                let chain_path = format!("{path}.filter_chains[{c}]");
                if let Some(Value::Sequence(filters)) =
                    chain.as_mapping_mut().and_then(|m| m.get_mut("filters"))
                {
                    for (f, filter) in filters.iter_mut().enumerate() {
                        if let Some(filter) = filter.as_mapping_mut() {
                            self.filter(filter, &format!("{chain_path}.filters[{f}]"));
                        }
                    }
                }
            }
        }
    }

    /// A network or HTTP filter: its name, and `config` -> `typed_config`.
    fn filter(&mut self, filter: &mut Mapping, path: &str) {
        let name = filter
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let v3 = filter_v3(&name);
        if let Some((v3_name, _)) = v3 {
            if v3_name != name {
                filter.insert("name".into(), v3_name.into());
                self.change(
                    format!("{path}.name"),
                    format!("filter name `{name}` is v2: v3 calls it `{v3_name}`"),
                );
            }
        }
        let Some(config) = filter.remove("config") else {
            if let Some(tc) = filter
                .get_mut("typed_config")
                .and_then(Value::as_mapping_mut)
            {
                self.filter_body(v3.map(|v| v.0), tc, &format!("{path}.typed_config"));
            }
            return;
        };
        // Paths name the construct where the v2 file has it (under `config`).
        let config_path = format!("{path}.config");
        let Some((v3_name, type_url)) = v3 else {
            self.unknown.push(Change {
                path: config_path,
                message: format!(
                    "`config` is v2 and filter `{name}` has no v3 spelling known to pylon-xds: \
                     write `typed_config` with its `\"@type\"` by hand"
                ),
            });
            filter.insert("config".into(), config);
            return;
        };
        let mut typed = Mapping::new();
        typed.insert("@type".into(), type_url.into());
        if let Value::Mapping(body) = config {
            typed.extend(body);
        }
        self.change(
            config_path,
            format!("`config` is v2: v3 writes `typed_config` with \"@type\": {type_url}"),
        );
        self.filter_body(Some(v3_name), &mut typed, &format!("{path}.config"));
        filter.insert("typed_config".into(), Value::Mapping(typed));
    }

    /// Inside a filter's config: enum case, and the HTTP filters of an HCM.
    fn filter_body(&mut self, v3_name: Option<&str>, body: &mut Mapping, path: &str) {
        self.enums(body, path);
        if v3_name != Some(HCM.0) {
            return;
        }
        if let Some(Value::Sequence(http_filters)) = body.get_mut("http_filters") {
            for (i, f) in http_filters.iter_mut().enumerate() {
                if let Some(f) = f.as_mapping_mut() {
                    self.filter(f, &format!("{path}.http_filters[{i}]"));
                }
            }
        }
    }

    /// Lower-case values of the enum fields of `m` in upper case.
    fn enums(&mut self, m: &mut Mapping, path: &str) {
        for field in ENUM_FIELDS {
            let Some(Value::String(v)) = m.get_mut(field) else {
                continue;
            };
            let upper = v.to_ascii_uppercase();
            if *v != upper {
                let message = format!(
                    "lower-case `{field}: {v}` is v2: v3 enum values are upper case (`{upper}`)"
                );
                *v = upper;
                self.change(format!("{path}.{field}"), message);
            }
        }
    }

    fn cluster(&mut self, c: &mut Mapping, path: &str) {
        self.enums(c, path);
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(hosts) = c.remove("hosts") {
            let lb_endpoints: Vec<Value> = match hosts {
                Value::Sequence(hosts) => hosts
                    .into_iter()
                    .map(|address| {
                        let mut endpoint = Mapping::new();
                        endpoint.insert("address".into(), address);
                        let mut lb = Mapping::new();
                        lb.insert("endpoint".into(), Value::Mapping(endpoint));
                        Value::Mapping(lb)
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let mut locality = Mapping::new();
            locality.insert("lb_endpoints".into(), Value::Sequence(lb_endpoints));
            let mut la = Mapping::new();
            la.insert("cluster_name".into(), name.clone().into());
            la.insert(
                "endpoints".into(),
                Value::Sequence(vec![Value::Mapping(locality)]),
            );
            c.insert("load_assignment".into(), Value::Mapping(la));
            self.change(
                format!("{path}.hosts"),
                "`hosts` is v2: v3 lists endpoints in `load_assignment: {cluster_name, \
                 endpoints: [{lb_endpoints: [{endpoint: {address: ...}}]}]}`"
                    .to_string(),
            );
        }
        if let Some(h2) = c.remove("http2_protocol_options") {
            let mut explicit = Mapping::new();
            explicit.insert("http2_protocol_options".into(), h2);
            let mut options = Mapping::new();
            options.insert(
                "@type".into(),
                format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}").into(),
            );
            options.insert("explicit_http_config".into(), Value::Mapping(explicit));
            let typed = c
                .entry("typed_extension_protocol_options".into())
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if let Some(typed) = typed.as_mapping_mut() {
                typed.insert(HTTP_PROTOCOL_OPTIONS.into(), Value::Mapping(options));
            }
            self.change(
                format!("{path}.http2_protocol_options"),
                format!(
                    "`http2_protocol_options` on a cluster is v2: v3 sets it in \
                     `typed_extension_protocol_options` under `{HTTP_PROTOCOL_OPTIONS}` \
                     (`explicit_http_config`)"
                ),
            );
        }
        if let Some(tls) = c.remove("tls_context") {
            let mut typed = Mapping::new();
            typed.insert("@type".into(), UPSTREAM_TLS.into());
            if let Value::Mapping(body) = tls {
                typed.extend(body);
            }
            let mut socket = Mapping::new();
            socket.insert("name".into(), "envoy.transport_sockets.tls".into());
            socket.insert("typed_config".into(), Value::Mapping(typed));
            c.insert("transport_socket".into(), Value::Mapping(socket));
            self.change(
                format!("{path}.tls_context"),
                format!(
                    "`tls_context` is v2: v3 writes `transport_socket: {{name: \
                     envoy.transport_sockets.tls, typed_config: {{\"@type\": {UPSTREAM_TLS}}}}}`"
                ),
            );
        }
    }
}

/// Normalises every key of `value` to snake_case (v2 and v3 both accept
/// camelCase; the walk above matches snake_case names).
pub fn snake_keys(value: Value) -> Value {
    match value {
        Value::Mapping(m) => Value::Mapping(
            m.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        // `@type` and map keys such as filter names keep
                        // their spelling: only camelCase words change.
                        Value::String(s) if !s.contains(['.', '@']) => {
                            Value::String(snake_case(&s))
                        }
                        other => other,
                    };
                    (k, snake_keys(v))
                })
                .collect(),
        ),
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(snake_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The front-proxy seed's `static_resources`, as the tutorial writes it
    /// (loopback addresses and names instead of its examples).
    pub const SEED_V2: &str = r#"
static_resources:
  listeners:
  - address:
      socket_address:
        address: 127.0.0.1
        port_value: 8000
    filter_chains:
    - filters:
      - name: envoy.http_connection_manager
        config:
          codec_type: auto
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains:
              - "*"
              routes:
              - match:
                  prefix: "/service/1"
                route:
                  cluster: service1
              - match:
                  prefix: "/service/2"
                route:
                  cluster: service2
          http_filters:
          - name: envoy.router
            config: {}
  clusters:
  - name: service1
    connect_timeout: 0.25s
    type: strict_dns
    lb_policy: round_robin
    http2_protocol_options: {}
    hosts:
    - socket_address:
        address: localhost
        port_value: 8081
  - name: service2
    connect_timeout: 0.25s
    type: strict_dns
    lb_policy: round_robin
    http2_protocol_options: {}
    hosts:
    - socket_address:
        address: localhost
        port_value: 8082
"#;

    #[test]
    fn every_v2_construct_of_the_seed_is_found_and_rewritten() {
        let doc: Value = serde_yaml::from_str(SEED_V2).unwrap();
        let m = migrate(snake_keys(doc));
        let paths: Vec<&str> = m.changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "static_resources.listeners[0].name",
                "static_resources.listeners[0].filter_chains[0].filters[0].name",
                "static_resources.listeners[0].filter_chains[0].filters[0].config",
                "static_resources.listeners[0].filter_chains[0].filters[0].config.codec_type",
                "static_resources.listeners[0].filter_chains[0].filters[0].config.http_filters[0].name",
                "static_resources.listeners[0].filter_chains[0].filters[0].config.http_filters[0].config",
                "static_resources.clusters[0].type",
                "static_resources.clusters[0].lb_policy",
                "static_resources.clusters[0].hosts",
                "static_resources.clusters[0].http2_protocol_options",
                "static_resources.clusters[1].type",
                "static_resources.clusters[1].lb_policy",
                "static_resources.clusters[1].hosts",
                "static_resources.clusters[1].http2_protocol_options",
            ]
        );
        assert!(m.unknown.is_empty(), "{:?}", m.unknown);
        // The result reads as v3 and is servable.
        let text = serde_yaml::to_string(&m.document).unwrap();
        let r = crate::config::load_str("migrated.yaml", &text).unwrap();
        assert_eq!(r.clusters.len(), 2);
        assert_eq!(r.routes.len(), 1);
        // Migrating again changes nothing.
        assert!(migrate(m.document).changes.is_empty());
    }

    #[test]
    fn unknown_v2_filters_are_left_and_named() {
        let doc: Value = serde_yaml::from_str(
            "static_resources:\n  listeners:\n  - name: l\n    filter_chains:\n    - filters:\n      - name: envoy.cors\n        config: {}\n",
        )
        .unwrap();
        let m = migrate(doc);
        assert!(m.changes.is_empty());
        assert_eq!(
            m.unknown[0].path,
            "static_resources.listeners[0].filter_chains[0].filters[0].config"
        );
    }
}
