//! Semantic checks: the rules serde cannot express, all collected and reported
//! together.
//!
//! This file owns two things: the checks on concise values (one health check
//! kind, thresholds, statuses, one route match, non-empty route lists...) and
//! the cross-reference checks over both forms (duplicate names and addresses,
//! references to clusters that do not exist). Envoy-native values are checked by
//! `native`, which feeds the same [`Catalog`]. Each problem is an [`Issue`] with
//! a path; `mod.rs` turns paths into lines and columns.

use std::collections::{HashMap, HashSet};

use super::issue::{Catalog, Issue, Named};
use super::schema::{
    Cluster, File, GrpcService, HealthCheck, Http, Listener, NameList, NodeSelection,
    OutlierDetection, Retries, RetryOn, Route,
};
use crate::resources::MAX_NAME_BYTES;

/// Checks the concise part of `file` and records its names in `catalog`.
pub fn concise(file: &File, catalog: &mut Catalog, issues: &mut Vec<Issue>) {
    for (i, c) in file.clusters.iter().enumerate() {
        cluster(c, &format!("clusters[{i}]"), catalog, issues);
    }
    for (i, l) in file.listeners.iter().enumerate() {
        listener(l, &format!("listeners[{i}]"), catalog, issues);
    }
    for (i, g) in file.grpc_services.iter().enumerate() {
        grpc_service(g, &format!("grpc_services[{i}]"), catalog, issues);
    }
    let mut names: HashMap<&str, String> = HashMap::new();
    for (i, n) in file.nodes.iter().enumerate() {
        let path = format!("nodes[{i}]");
        non_empty_name(&n.name, "node selection", &path, issues);
        if let Some(first) = names.get(n.name.as_str()) {
            issues.push(Issue::new(
                format!("{path}.name"),
                format!(
                    "duplicate node selection name `{}` (first at {first})",
                    n.name
                ),
            ));
        } else {
            names.insert(&n.name, format!("{path}.name"));
        }
        node_selection(n, &path, catalog, issues);
    }
    for (i, c) in file.clients.iter().enumerate() {
        client_rule(c, &format!("clients[{i}]"), issues);
    }
}

/// One `clients:` rule: one identity, and something it is allowed.
fn client_rule(c: &super::schema::ClientRule, path: &str, issues: &mut Vec<Issue>) {
    match (&c.identity, &c.dns) {
        (Some(_), Some(_)) => issues.push(Issue::new(
            path,
            "a client rule names one identity: `identity` (a URI SAN) or `dns` (a DNS SAN), \
             not both (write two rules)",
        )),
        (None, None) => issues.push(Issue::new(
            path,
            "a client rule needs `identity` (a URI SAN glob, like \"spiffe://example.org/edge/*\") \
             or `dns` (a DNS SAN glob, like \"*.edge.example\")",
        )),
        (Some(g), None) | (None, Some(g)) if g.is_empty() => issues.push(Issue::new(
            format!("{path}.{}", if c.identity.is_some() { "identity" } else { "dns" }),
            "the identity glob must not be empty",
        )),
        _ => {}
    }
    match &c.nodes {
        Some(n) if n.id.is_none() && n.cluster.is_none() => issues.push(Issue::new(
            format!("{path}.nodes"),
            "`nodes` needs `id` and/or `cluster` globs (write `{id: \"*\"}` for any node)",
        )),
        None if !c.csds => issues.push(Issue::new(
            path,
            "this rule allows nothing: give `nodes` (which nodes the identity may claim) \
             and/or `csds: true`",
        )),
        _ => {}
    }
}

fn grpc_service(g: &GrpcService, path: &str, catalog: &mut Catalog, issues: &mut Vec<Issue>) {
    non_empty_name(&g.name, "gRPC service", path, issues);
    if g.name.contains([':', '/', ' ']) {
        issues.push(Issue::new(
            format!("{path}.name"),
            "a gRPC service name is the host part of the target (`greeter.example`); \
             it must not contain `:`, `/` or spaces (the port goes in `port`)",
        ));
    }
    if g.port == 0 {
        issues.push(Issue::new(
            format!("{path}.port"),
            "port must be between 1 and 65535",
        ));
    }
    // The listener, route configuration and cluster are all named after the
    // target authority.
    let authority = format!("{}:{}", g.name, g.port);
    for list in [
        &mut catalog.listeners,
        &mut catalog.route_configs,
        &mut catalog.clusters,
    ] {
        list.push(Named::new(&authority, format!("{path}.name")));
    }
    for (k, e) in g.endpoints.iter().enumerate() {
        if e.weight == 0 {
            issues.push(Issue::new(
                format!("{path}.endpoints[{k}].weight"),
                "weight must be at least 1",
            ));
        }
    }
}

fn node_selection(n: &NodeSelection, path: &str, catalog: &mut Catalog, issues: &mut Vec<Issue>) {
    if let Some(m) = &n.matcher {
        if m.id.is_none() && m.cluster.is_none() && m.metadata.is_empty() {
            issues.push(Issue::new(
                format!("{path}.match"),
                "match needs at least one of `id`, `cluster` or `metadata` \
                 (leave `match` out to match every node)",
            ));
        }
    }
    for (field, list, refs) in [
        ("listeners", &n.listeners, &mut catalog.listener_refs),
        ("clusters", &n.clusters, &mut catalog.cluster_refs),
    ] {
        if let NameList::Only(names) = list {
            for (k, name) in names.iter().enumerate() {
                refs.push(Named::new(name, format!("{path}.{field}[{k}]")));
            }
        }
    }
}

fn non_empty_name(name: &str, what: &str, path: &str, issues: &mut Vec<Issue>) {
    if name.is_empty() {
        issues.push(Issue::new(
            format!("{path}.name"),
            format!("{what} name must not be empty"),
        ));
    }
}

fn cluster(c: &Cluster, path: &str, catalog: &mut Catalog, issues: &mut Vec<Issue>) {
    non_empty_name(&c.name, "cluster", path, issues);
    catalog
        .clusters
        .push(Named::new(&c.name, format!("{path}.name")));
    if c.connect_timeout.is_zero() {
        issues.push(Issue::new(
            format!("{path}.connect_timeout"),
            "connect_timeout must be greater than 0s",
        ));
    }
    for (k, e) in c.endpoints.iter().enumerate() {
        if e.weight == 0 {
            issues.push(Issue::new(
                format!("{path}.endpoints[{k}].weight"),
                "weight must be at least 1",
            ));
        }
    }
    if let Some(hc) = &c.health_check {
        health_check(hc, &format!("{path}.health_check"), issues);
    }
    if c.dns_refresh.is_some_and(|d| d.is_zero()) {
        issues.push(Issue::new(
            format!("{path}.dns_refresh"),
            "dns_refresh must be greater than 0s",
        ));
    }
    for (field, value) in c.circuit_breakers.unwrap_or_default().fields() {
        if value == Some(0) {
            issues.push(Issue::new(
                format!("{path}.circuit_breakers.{field}"),
                format!("{field} must be at least 1 (leave it out for Envoy's default)"),
            ));
        }
    }
    if let Some(od) = &c.outlier_detection {
        outlier_detection(od, &format!("{path}.outlier_detection"), issues);
    }
}

fn outlier_detection(od: &OutlierDetection, path: &str, issues: &mut Vec<Issue>) {
    for (field, value) in [
        (
            "consecutive_gateway_failure",
            od.consecutive_gateway_failure,
        ),
        (
            "consecutive_local_origin_failure",
            od.consecutive_local_origin_failure,
        ),
    ] {
        if value == Some(0) {
            issues.push(Issue::new(
                format!("{path}.{field}"),
                format!("{field} must be at least 1 (leave it out to not count these)"),
            ));
        }
    }
    if od.consecutive_5xx == Some(0)
        && od.consecutive_gateway_failure.is_none()
        && od.consecutive_local_origin_failure.is_none()
    {
        issues.push(Issue::new(
            format!("{path}.consecutive_5xx"),
            "with consecutive_5xx 0 and no other count, outlier detection ejects nothing \
             (leave outlier_detection out instead)",
        ));
    }
    for (field, value) in [
        ("interval", od.interval),
        ("base_ejection_time", od.base_ejection_time),
    ] {
        if value.is_some_and(|d| d.is_zero()) {
            issues.push(Issue::new(
                format!("{path}.{field}"),
                format!("{field} must be greater than 0s"),
            ));
        }
    }
    if let Some(p) = od.max_ejection_percent {
        if !(1..=100).contains(&p) {
            issues.push(Issue::new(
                format!("{path}.max_ejection_percent"),
                format!("max_ejection_percent {p} is not a percentage from 1 to 100"),
            ));
        }
    }
}

fn retries(r: &Retries, path: &str, issues: &mut Vec<Issue>) {
    if let Some(on) = &r.on {
        if on.is_empty() {
            issues.push(Issue::new(
                format!("{path}.on"),
                "on must name at least one condition (leave retries out for none)",
            ));
        }
        for (k, o) in on.iter().enumerate() {
            if on[..k].contains(o) {
                issues.push(Issue::new(
                    format!("{path}.on[{k}]"),
                    format!("duplicate retry condition `{}`", o.as_str()),
                ));
            }
        }
    }
    if r.num_retries == Some(0) {
        issues.push(Issue::new(
            format!("{path}.num_retries"),
            "num_retries must be at least 1 (leave retries out for none)",
        ));
    }
    if r.per_try_timeout.is_some_and(|d| d.is_zero()) {
        issues.push(Issue::new(
            format!("{path}.per_try_timeout"),
            "per_try_timeout must be greater than 0s (leave it out for none)",
        ));
    }
    let by_status =
        r.on.as_ref()
            .is_some_and(|on| on.contains(&RetryOn::RetriableStatusCodes));
    if by_status && r.retriable_status_codes.is_empty() {
        issues.push(Issue::new(
            format!("{path}.on"),
            "`retriable-status-codes` needs `retriable_status_codes: [...]`",
        ));
    }
    if !by_status && !r.retriable_status_codes.is_empty() {
        issues.push(Issue::new(
            format!("{path}.retriable_status_codes"),
            "retriable_status_codes are used only with `retriable-status-codes` in `on`",
        ));
    }
    for (k, status) in r.retriable_status_codes.iter().enumerate() {
        if !(100..=599).contains(status) {
            issues.push(Issue::new(
                format!("{path}.retriable_status_codes[{k}]"),
                format!("status {status} is outside 100..=599"),
            ));
        }
    }
}

fn health_check(hc: &HealthCheck, path: &str, issues: &mut Vec<Issue>) {
    let kinds: Vec<&str> = [
        ("tcp", hc.tcp.is_some()),
        ("http", hc.http.is_some()),
        ("https", hc.https.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| *k)
    .collect();
    match kinds.as_slice() {
        [] => issues.push(Issue::new(
            path,
            "health check needs a kind: `tcp: {}`, `http: {path: /healthz}` or `https: {path: /readyz, ca: /etc/pylon/ca.crt}`",
        )),
        [_] => {}
        [a, b] => issues.push(Issue::new(
            path,
            format!("health check has both `{a}` and `{b}`; keep one"),
        )),
        _ => issues.push(Issue::new(
            path,
            "health check has `tcp`, `http` and `https`; keep one",
        )),
    }
    let durations = [
        ("interval", Some(hc.interval)),
        ("timeout", Some(hc.timeout)),
        ("no_traffic_interval", hc.no_traffic_interval),
    ];
    for (field, value) in durations {
        if value.is_some_and(|d| d.is_zero()) {
            issues.push(Issue::new(
                format!("{path}.{field}"),
                format!("{field} must be greater than 0s"),
            ));
        }
    }
    let thresholds = [
        ("unhealthy_threshold", hc.unhealthy_threshold),
        ("healthy_threshold", hc.healthy_threshold),
    ];
    for (field, value) in thresholds {
        if value == 0 {
            issues.push(Issue::new(
                format!("{path}.{field}"),
                format!("{field} must be at least 1"),
            ));
        }
    }
    let http_like = [
        hc.http
            .as_ref()
            .map(|h| ("http", h.path.as_str(), &h.expected_statuses)),
        hc.https
            .as_ref()
            .map(|h| ("https", h.path.as_str(), &h.expected_statuses)),
    ];
    for (kind, check_path, statuses) in http_like.into_iter().flatten() {
        if !check_path.starts_with('/') {
            issues.push(Issue::new(
                format!("{path}.{kind}.path"),
                "health check path must start with `/`",
            ));
        }
        for (k, status) in statuses.iter().enumerate() {
            if !(100..=599).contains(status) {
                issues.push(Issue::new(
                    format!("{path}.{kind}.expected_statuses[{k}]"),
                    format!("status {status} is outside 100..=599"),
                ));
            }
        }
    }
    if let Some(https) = &hc.https {
        super::health_tls::validate(https, &format!("{path}.https"), issues);
    }
}

fn listener(l: &Listener, path: &str, catalog: &mut Catalog, issues: &mut Vec<Issue>) {
    non_empty_name(&l.name, "listener", path, issues);
    catalog
        .listeners
        .push(Named::new(&l.name, format!("{path}.name")));
    catalog
        .addresses
        .push(Named::new(l.address.to_string(), format!("{path}.address")));
    match (&l.tcp_proxy, &l.http) {
        (None, None) => issues.push(Issue::new(
            path,
            "listener needs one of `tcp_proxy` or `http`",
        )),
        (Some(_), Some(_)) => issues.push(Issue::new(
            path,
            "listener has both `tcp_proxy` and `http`; keep one",
        )),
        _ => {}
    }
    if let Some(tcp) = &l.tcp_proxy {
        catalog.cluster_refs.push(Named::new(
            &tcp.cluster,
            format!("{path}.tcp_proxy.cluster"),
        ));
        if tcp.max_connect_attempts == Some(0) {
            issues.push(Issue::new(
                format!("{path}.tcp_proxy.max_connect_attempts"),
                "max_connect_attempts must be at least 1",
            ));
        }
    }
    if let Some(h) = &l.http {
        // The route configuration is named after the listener.
        catalog
            .route_configs
            .push(Named::new(&l.name, format!("{path}.name")));
        http(h, &format!("{path}.http"), catalog, issues);
    }
}

fn http(h: &Http, path: &str, catalog: &mut Catalog, issues: &mut Vec<Issue>) {
    match (&h.routes, &h.virtual_hosts) {
        (None, None) => issues.push(Issue::new(
            path,
            "http needs one of `routes` or `virtual_hosts`",
        )),
        (Some(_), Some(_)) => issues.push(Issue::new(
            path,
            "http has both `routes` and `virtual_hosts`; keep one",
        )),
        _ => {}
    }
    if let Some(list) = &h.routes {
        routes(list, &format!("{path}.routes"), catalog, issues);
    }
    let Some(hosts) = &h.virtual_hosts else {
        return;
    };
    if hosts.is_empty() {
        issues.push(Issue::new(
            format!("{path}.virtual_hosts"),
            "virtual_hosts must not be empty",
        ));
    }
    let mut names = HashMap::new();
    let mut domains = HashMap::new();
    for (v, vh) in hosts.iter().enumerate() {
        let vpath = format!("{path}.virtual_hosts[{v}]");
        non_empty_name(&vh.name, "virtual host", &vpath, issues);
        if let Some(first) = names.insert(vh.name.as_str(), v) {
            if !vh.name.is_empty() {
                issues.push(Issue::new(
                    format!("{vpath}.name"),
                    format!(
                        "duplicate virtual host name `{}` (first at {path}.virtual_hosts[{first}].name)",
                        vh.name
                    ),
                ));
            }
        }
        if vh.domains.is_empty() {
            issues.push(Issue::new(
                format!("{vpath}.domains"),
                "domains must not be empty (write [\"*\"] to match every host)",
            ));
        }
        for (d, domain) in vh.domains.iter().enumerate() {
            let dpath = format!("{vpath}.domains[{d}]");
            if let Some(first) = domains.get(domain.as_str()) {
                issues.push(Issue::new(
                    &dpath,
                    format!("duplicate domain `{domain}` (first at {first})"),
                ));
            } else {
                domains.insert(domain.as_str(), dpath);
            }
        }
        routes(&vh.routes, &format!("{vpath}.routes"), catalog, issues);
    }
}

fn routes(list: &[Route], path: &str, catalog: &mut Catalog, issues: &mut Vec<Issue>) {
    if list.is_empty() {
        issues.push(Issue::new(
            path,
            "routes must not be empty (with no routes every request gets a 404)",
        ));
    }
    for (k, r) in list.iter().enumerate() {
        let rpath = format!("{path}[{k}]");
        let matches = [&r.prefix, &r.path, &r.path_separated_prefix]
            .iter()
            .filter(|m| m.is_some())
            .count();
        if matches != 1 {
            issues.push(Issue::new(
                &rpath,
                "route needs exactly one of `prefix`, `path` or `path_separated_prefix`",
            ));
        }
        catalog
            .cluster_refs
            .push(Named::new(&r.cluster, format!("{rpath}.cluster")));
        if let Some(re) = &r.retries {
            retries(re, &format!("{rpath}.retries"), issues);
        }
    }
}

/// Duplicate names and addresses, and references to undefined clusters, over
/// everything both forms put in `catalog`.
pub fn cross_references(catalog: &Catalog, issues: &mut Vec<Issue>) {
    for (what, defined) in [
        ("cluster", &catalog.clusters),
        ("listener", &catalog.listeners),
        ("route configuration", &catalog.route_configs),
    ] {
        for n in defined {
            // A concise HTTP listener's route configuration has its name
            // and path: report it once.
            if n.name.len() > MAX_NAME_BYTES && !issues.iter().any(|i| i.path == n.path) {
                issues.push(Issue::new(
                    &n.path,
                    format!(
                        "{what} name is {} bytes long; at most {MAX_NAME_BYTES} are served \
                         (xDS clients cannot subscribe to a longer name)",
                        n.name.len()
                    ),
                ));
            }
        }
    }
    duplicates(&catalog.clusters, "cluster name", issues);
    duplicates(&catalog.listeners, "listener name", issues);
    // A concise HTTP listener's route configuration is recorded at the
    // listener's name, so a duplicate listener is not reported twice.
    duplicates(&catalog.route_configs, "route configuration name", issues);
    duplicates(&catalog.addresses, "listener address", issues);
    for (what, defined, refs) in [
        ("cluster", &catalog.clusters, &catalog.cluster_refs),
        ("listener", &catalog.listeners, &catalog.listener_refs),
    ] {
        let defined: HashSet<&str> = defined.iter().map(|c| c.name.as_str()).collect();
        for reference in refs {
            if !defined.contains(reference.name.as_str()) {
                issues.push(Issue::new(
                    &reference.path,
                    format!("{what} `{}` is not defined", reference.name),
                ));
            }
        }
    }
}

fn duplicates(entries: &[Named], what: &str, issues: &mut Vec<Issue>) {
    let mut first: HashMap<&str, &str> = HashMap::new();
    for entry in entries {
        if entry.name.is_empty() {
            // Reported as an empty name.
            continue;
        }
        match first.get(entry.name.as_str()) {
            Some(first_path) => {
                if !issues.iter().any(|i| i.path == entry.path) {
                    issues.push(Issue::new(
                        &entry.path,
                        format!("duplicate {what} `{}` (first at {first_path})", entry.name),
                    ));
                }
            }
            None => {
                first.insert(&entry.name, &entry.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Vec<(String, String)> {
        let file: File = serde_yaml::from_str(yaml).unwrap();
        let mut catalog = Catalog::default();
        let mut issues = Vec::new();
        concise(&file, &mut catalog, &mut issues);
        cross_references(&catalog, &mut issues);
        issues.into_iter().map(|i| (i.path, i.message)).collect()
    }

    #[test]
    fn valid_files_have_no_issues() {
        let yaml = "\
clusters:
- {name: a, endpoints: [127.0.0.1:1]}
- {name: b}
listeners:
- {name: t, address: 127.0.0.1:2, tcp_proxy: {cluster: a}}
- name: h
  address: 127.0.0.1:3
  http:
    virtual_hosts:
    - {name: x, domains: [x.test], routes: [{prefix: /, cluster: b}]}
    - {name: y, domains: ['*'], routes: [{path: /y, cluster: a}]}
";
        assert_eq!(check(yaml), vec![]);
    }

    #[test]
    fn names_longer_than_clients_can_ask_for_are_refused() {
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        let at_cap = "m".repeat(MAX_NAME_BYTES);
        let yaml = format!(
            "clusters: [{{name: {long}}}, {{name: {at_cap}}}]
listeners:
- {{name: {long}, address: 127.0.0.1:2, http: {{routes: [{{prefix: /, cluster: {at_cap}}}]}}}}
"
        );
        let issues = check(&yaml);
        let paths: Vec<&str> = issues.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["clusters[0].name", "listeners[0].name"],
            "{issues:?}"
        );
        assert_eq!(
            issues[0].1,
            "cluster name is 1025 bytes long; at most 1024 are served \
             (xDS clients cannot subscribe to a longer name)"
        );
    }

    #[test]
    fn issues_table() {
        let table: &[(&str, &[(&str, &str)])] = &[
            (
                "clusters: [{name: a}, {name: a}]",
                &[("clusters[1].name", "duplicate cluster name `a` (first at clusters[0].name)")],
            ),
            (
                "clusters: [{name: ''}]",
                &[("clusters[0].name", "cluster name must not be empty")],
            ),
            (
                "clusters: [{name: a, connect_timeout: 0s, endpoints: [{address: 127.0.0.1:1, weight: 0}]}]",
                &[
                    ("clusters[0].connect_timeout", "connect_timeout must be greater than 0s"),
                    ("clusters[0].endpoints[0].weight", "weight must be at least 1"),
                ],
            ),
            (
                "clusters: [{name: a, health_check: {interval: 5s}}]",
                &[("clusters[0].health_check", "health check needs a kind: `tcp: {}`, `http: {path: /healthz}` or `https: {path: /readyz, ca: /etc/pylon/ca.crt}`")],
            ),
            (
                "clusters: [{name: a, health_check: {tcp: {}, http: {path: /}}}]",
                &[("clusters[0].health_check", "health check has both `tcp` and `http`; keep one")],
            ),
            (
                "clusters: [{name: a, health_check: {tcp: {}, healthy_threshold: 0, unhealthy_threshold: 0, timeout: 0s}}]",
                &[
                    ("clusters[0].health_check.timeout", "timeout must be greater than 0s"),
                    ("clusters[0].health_check.unhealthy_threshold", "unhealthy_threshold must be at least 1"),
                    ("clusters[0].health_check.healthy_threshold", "healthy_threshold must be at least 1"),
                ],
            ),
            (
                "clusters: [{name: a, health_check: {http: {path: healthz, expected_statuses: [200, 99, 600]}}}]",
                &[
                    ("clusters[0].health_check.http.path", "health check path must start with `/`"),
                    ("clusters[0].health_check.http.expected_statuses[1]", "status 99 is outside 100..=599"),
                    ("clusters[0].health_check.http.expected_statuses[2]", "status 600 is outside 100..=599"),
                ],
            ),
            (
                "clusters: [{name: a, circuit_breakers: {max_connections: 0, max_pending_requests: 1, max_retries: 0}}]",
                &[
                    ("clusters[0].circuit_breakers.max_connections", "max_connections must be at least 1 (leave it out for Envoy's default)"),
                    ("clusters[0].circuit_breakers.max_retries", "max_retries must be at least 1 (leave it out for Envoy's default)"),
                ],
            ),
            (
                "clusters: [{name: a, outlier_detection: {consecutive_gateway_failure: 0, consecutive_local_origin_failure: 0, interval: 0s, base_ejection_time: 0s, max_ejection_percent: 0}}]",
                &[
                    ("clusters[0].outlier_detection.consecutive_gateway_failure", "consecutive_gateway_failure must be at least 1 (leave it out to not count these)"),
                    ("clusters[0].outlier_detection.consecutive_local_origin_failure", "consecutive_local_origin_failure must be at least 1 (leave it out to not count these)"),
                    ("clusters[0].outlier_detection.interval", "interval must be greater than 0s"),
                    ("clusters[0].outlier_detection.base_ejection_time", "base_ejection_time must be greater than 0s"),
                    ("clusters[0].outlier_detection.max_ejection_percent", "max_ejection_percent 0 is not a percentage from 1 to 100"),
                ],
            ),
            (
                "clusters: [{name: a, outlier_detection: {consecutive_5xx: 0, max_ejection_percent: 101}}]",
                &[
                    ("clusters[0].outlier_detection.consecutive_5xx", "with consecutive_5xx 0 and no other count, outlier detection ejects nothing (leave outlier_detection out instead)"),
                    ("clusters[0].outlier_detection.max_ejection_percent", "max_ejection_percent 101 is not a percentage from 1 to 100"),
                ],
            ),
            (
                "clusters: [{name: a, outlier_detection: {consecutive_5xx: 0, consecutive_local_origin_failure: 2}}]",
                &[],
            ),
            (
                "clusters: [{name: c}]\nlisteners: [{name: l, address: 127.0.0.1:1, http: {routes: [{prefix: /, cluster: c, retries: {on: [], num_retries: 0, per_try_timeout: 0s}}, {prefix: /, cluster: c, retries: {on: [reset, 5xx, reset], retriable_status_codes: [503]}}, {prefix: /, cluster: c, retries: {on: [retriable-status-codes]}}, {prefix: /, cluster: c, retries: {on: [retriable-status-codes], retriable_status_codes: [99]}}]}}]",
                &[
                    ("listeners[0].http.routes[0].retries.on", "on must name at least one condition (leave retries out for none)"),
                    ("listeners[0].http.routes[0].retries.num_retries", "num_retries must be at least 1 (leave retries out for none)"),
                    ("listeners[0].http.routes[0].retries.per_try_timeout", "per_try_timeout must be greater than 0s (leave it out for none)"),
                    ("listeners[0].http.routes[1].retries.on[2]", "duplicate retry condition `reset`"),
                    ("listeners[0].http.routes[1].retries.retriable_status_codes", "retriable_status_codes are used only with `retriable-status-codes` in `on`"),
                    ("listeners[0].http.routes[2].retries.on", "`retriable-status-codes` needs `retriable_status_codes: [...]`"),
                    ("listeners[0].http.routes[3].retries.retriable_status_codes[0]", "status 99 is outside 100..=599"),
                ],
            ),
            (
                "listeners: [{name: l, address: 127.0.0.1:1}]",
                &[("listeners[0]", "listener needs one of `tcp_proxy` or `http`")],
            ),
            (
                "clusters: [{name: c}]\nlisteners: [{name: l, address: 127.0.0.1:1, tcp_proxy: {cluster: c}, http: {routes: [{prefix: /, cluster: c}]}}]",
                &[("listeners[0]", "listener has both `tcp_proxy` and `http`; keep one")],
            ),
            (
                "listeners: [{name: l, address: 127.0.0.1:1, tcp_proxy: {cluster: nope, max_connect_attempts: 0}}]",
                &[
                    ("listeners[0].tcp_proxy.max_connect_attempts", "max_connect_attempts must be at least 1"),
                    ("listeners[0].tcp_proxy.cluster", "cluster `nope` is not defined"),
                ],
            ),
            (
                "listeners: [{name: l, address: 127.0.0.1:1, http: {routes: []}}]",
                &[("listeners[0].http.routes", "routes must not be empty (with no routes every request gets a 404)")],
            ),
            (
                "listeners: [{name: l, address: 127.0.0.1:1, http: {}}]",
                &[("listeners[0].http", "http needs one of `routes` or `virtual_hosts`")],
            ),
            (
                "clusters: [{name: c}]\nlisteners: [{name: l, address: 127.0.0.1:1, http: {routes: [{cluster: c}, {prefix: /, path: /x, cluster: c}]}}]",
                &[
                    ("listeners[0].http.routes[0]", "route needs exactly one of `prefix`, `path` or `path_separated_prefix`"),
                    ("listeners[0].http.routes[1]", "route needs exactly one of `prefix`, `path` or `path_separated_prefix`"),
                ],
            ),
            (
                "clusters: [{name: c}]\nlisteners: [{name: l, address: 127.0.0.1:1, http: {virtual_hosts: [{name: v, domains: [], routes: [{prefix: /, cluster: c}]}, {name: v, domains: ['*', '*'], routes: []}]}}]",
                &[
                    ("listeners[0].http.virtual_hosts[0].domains", "domains must not be empty (write [\"*\"] to match every host)"),
                    ("listeners[0].http.virtual_hosts[1].name", "duplicate virtual host name `v` (first at listeners[0].http.virtual_hosts[0].name)"),
                    ("listeners[0].http.virtual_hosts[1].domains[1]", "duplicate domain `*` (first at listeners[0].http.virtual_hosts[1].domains[0])"),
                    ("listeners[0].http.virtual_hosts[1].routes", "routes must not be empty (with no routes every request gets a 404)"),
                ],
            ),
            (
                "clusters: [{name: c}]\nlisteners:\n- {name: l, address: 127.0.0.1:1, http: {routes: [{prefix: /, cluster: c}]}}\n- {name: l, address: 127.0.0.1:1, http: {routes: [{prefix: /, cluster: c}]}}",
                &[
                    ("listeners[1].name", "duplicate listener name `l` (first at listeners[0].name)"),
                    ("listeners[1].address", "duplicate listener address `127.0.0.1:1` (first at listeners[0].address)"),
                ],
            ),
        ];
        for (yaml, want) in table {
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(p, m)| (p.to_string(), m.to_string()))
                .collect();
            assert_eq!(check(yaml), want, "{yaml}");
        }
    }

    /// Outlier detection and retry errors as `pylon-xds validate` prints
    /// them: file, line, column, path and message, structural and semantic.
    #[test]
    fn outlier_detection_and_retry_errors_are_positioned() {
        let errors = |yaml: &str| match crate::config::load_str("pylon.yaml", yaml) {
            Ok(_) => "loaded".to_string(),
            Err(e) => e.to_string(),
        };
        let table = [
            (
                "clusters:\n  - name: a\n    outlier_detection:\n      max_ejection_percent: 150\n      interval: 0s\n",
                "pylon.yaml:4:29: clusters[0].outlier_detection.max_ejection_percent: max_ejection_percent 150 is not a percentage from 1 to 100\n\
                 pylon.yaml:5:17: clusters[0].outlier_detection.interval: interval must be greater than 0s",
            ),
            (
                "clusters:\n  - name: a\n    outlier_detection: {consecutive_5xxx: 3}\n",
                "pylon.yaml:3:25: clusters[0].outlier_detection.consecutive_5xxx: unknown field `consecutive_5xxx`, expected one of `consecutive_5xx`, `consecutive_gateway_failure`, `consecutive_local_origin_failure`, `interval`, `base_ejection_time`, `max_ejection_percent`",
            ),
            (
                "clusters:\n  - name: a\n    outlier_detection: {base_ejection_time: 30}\n",
                "pylon.yaml:3:45: clusters[0].outlier_detection.base_ejection_time: a bare number is not a duration: write \"30s\" (units: ms, s, m, h)",
            ),
            (
                "clusters: [{name: c}]\nlisteners:\n  - name: l\n    address: 127.0.0.1:1\n    http:\n      routes:\n        - prefix: /\n          cluster: c\n          retries: {on: [connect-failure, 4xx]}\n",
                "pylon.yaml:9:43: listeners[0].http.routes[0].retries.on[1]: unknown variant `4xx`, expected one of `connect-failure`, `reset`, `gateway-error`, `5xx`, `retriable-status-codes`",
            ),
            (
                "clusters: [{name: c}]\nlisteners:\n  - name: l\n    address: 127.0.0.1:1\n    http:\n      routes:\n        - prefix: /\n          cluster: c\n          retries:\n            num_retries: 0\n",
                "pylon.yaml:10:26: listeners[0].http.routes[0].retries.num_retries: num_retries must be at least 1 (leave retries out for none)",
            ),
            (
                "clusters:\n  - name: a\n    outlier_detection: {consecutive_local_origin_failure: 2}\nlisteners: [{name: l, address: 127.0.0.1:1, http: {routes: [{prefix: /, cluster: a, retries: {on: [5xx], per_try_timeout: 1s}}]}}]\n",
                "loaded",
            ),
        ];
        for (yaml, want) in table {
            assert_eq!(errors(yaml), want, "{yaml}");
        }
    }

    /// Circuit breaker errors as `pylon-xds validate` prints them: file, line,
    /// column, path and message, structural (serde) and semantic alike.
    #[test]
    fn circuit_breaker_errors_are_positioned() {
        let errors = |yaml: &str| match crate::config::load_str("pylon.yaml", yaml) {
            Ok(_) => "loaded".to_string(),
            Err(e) => e.to_string(),
        };
        let table = [
            (
                "clusters:\n  - name: a\n    circuit_breakers:\n      max_connections: 0\n      max_requests: 0\n",
                "pylon.yaml:4:24: clusters[0].circuit_breakers.max_connections: max_connections must be at least 1 (leave it out for Envoy's default)\n\
                 pylon.yaml:5:21: clusters[0].circuit_breakers.max_requests: max_requests must be at least 1 (leave it out for Envoy's default)",
            ),
            (
                "clusters:\n  - name: a\n    circuit_breakers: {max_pending_requests: -1}\n",
                "pylon.yaml:3:46: clusters[0].circuit_breakers.max_pending_requests: invalid type: integer `-1`, expected u32",
            ),
            (
                "clusters:\n  - name: a\n    circuit_breakers: {max_connection: 5}\n",
                "pylon.yaml:3:24: clusters[0].circuit_breakers.max_connection: unknown field `max_connection`, expected one of `max_connections`, `max_pending_requests`, `max_requests`, `max_retries`",
            ),
            (
                "clusters:\n  - name: a\n    circuit_breakers: {max_connections: 2, max_pending_requests: 1}\n",
                "loaded",
            ),
        ];
        for (yaml, want) in table {
            assert_eq!(errors(yaml), want, "{yaml}");
        }
    }
}
