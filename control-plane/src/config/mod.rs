//! The YAML source of truth: one file in, the Envoy v3 resources of one
//! revision ([`Resources`]) out, or every problem found, each with file, line,
//! column and path.
//!
//! A file holds a concise form (`clusters:`, `listeners:`, `grpc_services:`),
//! an Envoy-native form (`static_resources:` as in an envoy.yaml), or both,
//! plus an optional `nodes:` section saying which node receives what. Both
//! forms end up as the same protos: clusters served as EDS over ADS, HTTP
//! routes served over RDS.
//!
//! Files of this module, from the bottom up (a file imports only files
//! listed above it):
//! - `duration.rs`, `address.rs`: the concise form's scalar types.
//! - `v2.rs`: recognising Envoy v2 syntax in `static_resources` (reported all
//!   at once, with the v3 spelling) and rewriting it (`pylon-xds migrate`).
//! - `issue.rs`: what every check shares: a problem at a path ([`Issue`]) and
//!   the names both forms define and reference (`Catalog`).
//! - `proto.rs`: Envoy proto building blocks both forms share (the ADS config
//!   source, EDS over ADS, locality weights, packing in an `Any`).
//! - `schema.rs`: the serde types of the file: the concise form, the
//!   top-level keys, and the native form's `static_resources` (each cluster
//!   and listener read with prost-reflect).
//! - `health_tls.rs`: what an `https` health check becomes (a TLS socket
//!   only the health check selects) and its checks.
//! - `native.rs`: normalising `static_resources` into servable resources,
//!   plus native-only checks.
//! - `reuse.rs`: on a reload, cutting the file into its concise clusters
//!   and the rest, so that clusters whose text did not change are not parsed
//!   again ([`Memo`]).
//! - `translate.rs`: pure functions, concise model -> Envoy protos.
//! - `validate.rs`: semantic checks and cross-references over both forms.
//! - `mod.rs`: the public API, the pipeline below, and turning problems into
//!   [`ConfigError`]s with positions.
//!
//! The pipeline: (0) the bytes are bounded ([`Limits::max_bytes`]), must be
//! UTF-8 (an invalid byte is an error with its position, at start-up and on
//! reload alike: [`load_bytes`] is the one way in) and pass the first pass of
//! [`pylon::yaml`] (depth, node count, no anchors or aliases, without
//! recursion; the path -> line/column index is built only when a position
//! is asked for). (1) One serde pass reads both forms (on a reload through
//! a [`Memo`], the clusters whose text is unchanged are taken from the
//! previous read instead, and any parse failure falls back to reading the
//! whole file, so errors are the same). Structural problems (YAML
//! syntax, unknown or misspelt keys, wrong types, bad durations, addresses or
//! ports) stop it, so only the first one is reported; its path comes from
//! serde_path_to_error and its position from serde_yaml. (2) Semantic checks
//! run on the typed values and collect every problem (duplicate names and
//! addresses, undefined clusters, health check and route rules...); their
//! positions come from that index. (3) Translation and
//! normalisation produce the protos, returned only when no problem was found
//! and no type has more than [`Limits::max_resources`] resources.
//!
//! This module does not watch files, version or encode resources: `source` and
//! `snapshot` do.

mod address;
mod duration;
mod health_tls;
mod issue;
mod native;
mod proto;
mod reuse;
mod schema;
mod translate;
mod v2;
mod validate;

use std::fmt;
use std::io::Read as _;
use std::path::Path;

use crate::resources::Resources;
use crate::selection::{ClientRule, Glob, IdentityGlob, Names, Policy, Selector};
use issue::{Catalog, Issue};
pub use pylon::yaml::Limits;
use pylon::yaml::{self, PositionIndex};
pub use reuse::Memo;

/// One problem in a config file.
///
/// `line` and `column` are 1-based; both are 0 when the position is unknown.
/// `path` names the node, like `clusters[1].endpoints[2]` (`.` is the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 && self.column == 0 && self.path == "." {
            // About the whole file (unreadable, empty, too large).
            write!(f, "{}: {}", self.file, self.message)
        } else if self.line == 0 && self.column == 0 {
            write!(f, "{}: {}: {}", self.file, self.path, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.path, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file, in file order. Never empty when
/// returned by [`load_file`] or [`load_str`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigError {
    /// An error about the whole file, with no position.
    fn whole_file(file: &str, message: String) -> Self {
        ConfigError {
            file: file.to_string(),
            line: 0,
            column: 0,
            path: ".".to_string(),
            message,
        }
    }
}

/// Reads the config file at `path`, refusing one larger than
/// `limits.max_bytes` without reading past the limit. Errors name the file as
/// given.
pub fn read_file(path: &Path, limits: &Limits) -> Result<Vec<u8>, ConfigErrors> {
    let file_name = path.display().to_string();
    let cannot = |e: std::io::Error| {
        ConfigErrors(vec![ConfigError::whole_file(
            &file_name,
            format!("cannot read the file: {e}"),
        )])
    };
    let file = std::fs::File::open(path).map_err(cannot)?;
    let cap = u64::try_from(limits.max_bytes).unwrap_or(u64::MAX);
    // Sized from the file's length (within the bound), so that reading does
    // not grow and copy the buffer again and again; the length is only a
    // hint, the bound is `take`'s.
    let hint = file
        .metadata()
        .map_or(0, |m| m.len().min(cap.saturating_add(1)));
    let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0).saturating_add(1));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() > limits.max_bytes {
        return Err(too_large(&file_name, limits));
    }
    Ok(bytes)
}

fn too_large(file_name: &str, limits: &Limits) -> ConfigErrors {
    ConfigErrors(vec![ConfigError::whole_file(
        file_name,
        format!(
            "the file is larger than {} bytes (--max-config-bytes)",
            limits.max_bytes
        ),
    )])
}

/// How a config file is read: its bounds, and what it may hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Bounds on the file.
    pub limits: Limits,
    /// Accept private keys and other secrets written inline in TLS contexts
    /// (`--allow-inline-secrets`); refused by default, since every node
    /// selected for the resource receives them.
    pub allow_inline_secrets: bool,
}

/// Reads and loads the config file at `path`; errors name the file as given.
pub fn load_file(path: &Path, options: &Options) -> Result<Resources, ConfigErrors> {
    let bytes = read_file(path, &options.limits)?;
    load_bytes(&path.display().to_string(), &bytes, options)
}

/// Loads the bytes of a config file: the one way in, at start-up and on every
/// reload. `file_name` is only used in error messages.
pub fn load_bytes(
    file_name: &str,
    bytes: &[u8],
    options: &Options,
) -> Result<Resources, ConfigErrors> {
    load_bytes_with(file_name, bytes, options, None)
}

/// [`load_bytes`] for the next revision of a source read before through
/// `memo`: concise clusters whose text did not change are not parsed again
/// (see `config/reuse.rs`). The result, errors included, is the same.
pub fn load_bytes_reusing(
    file_name: &str,
    bytes: &[u8],
    options: &Options,
    memo: &mut Memo,
) -> Result<Resources, ConfigErrors> {
    load_bytes_with(file_name, bytes, options, Some(memo))
}

fn load_bytes_with(
    file_name: &str,
    bytes: &[u8],
    options: &Options,
    memo: Option<&mut Memo>,
) -> Result<Resources, ConfigErrors> {
    let limits = &options.limits;
    if bytes.len() > limits.max_bytes {
        return Err(too_large(file_name, limits));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = yaml::line_column(bytes, e.valid_up_to());
        ConfigErrors(vec![ConfigError {
            file: file_name.to_string(),
            line,
            column,
            path: ".".to_string(),
            message: format!(
                "invalid UTF-8 (byte 0x{:02X}): a config file must be UTF-8 text",
                bytes[e.valid_up_to()]
            ),
        }])
    })?;
    load_text(file_name, text, options, memo)
}

/// Loads config text with the default [`Limits`]; `file_name` is only used
/// in error messages.
pub fn load_str(file_name: &str, text: &str) -> Result<Resources, ConfigErrors> {
    load_text(file_name, text, &Options::default(), None)
}

fn load_text(
    file_name: &str,
    text: &str,
    options: &Options,
    memo: Option<&mut Memo>,
) -> Result<Resources, ConfigErrors> {
    let limits = &options.limits;
    if text.len() > limits.max_bytes {
        return Err(too_large(file_name, limits));
    }
    let edit = memo
        .as_deref()
        .and_then(|m| reuse::check_edit(m, text, limits));
    let checked;
    let shape = match &edit {
        Some(edit) => &edit.shape,
        None => {
            checked = yaml::check(text, limits).map_err(|r| refused(file_name, r))?;
            &checked
        }
    };
    let positions = Positions::new(text, limits);
    // The resource lists, counted before anything is built from them.
    for section in [
        "clusters",
        "listeners",
        "grpc_services",
        "static_resources.clusters",
        "static_resources.listeners",
    ] {
        if shape.items(section) > limits.max_resources {
            let path = format!("{section}[{}]", limits.max_resources);
            let (line, column) = positions.get().value(&path).unwrap_or((0, 0));
            return Err(ConfigErrors(vec![ConfigError {
                file: file_name.to_string(),
                line,
                column,
                path,
                message: format!(
                    "more than {} entries in `{section}` (the limit per file)",
                    limits.max_resources
                ),
            }]));
        }
    }
    let (file, entries) =
        match memo.and_then(|m| reuse::load(text, shape, limits, m, edit.as_ref())) {
            Some(read) => read,
            None => (read_whole(file_name, text, &positions)?, Vec::new()),
        };

    let mut catalog = Catalog::default();
    let mut issues = Vec::new();
    validate::concise(&file, &mut catalog, &mut issues);
    let mut resources = Resources::default();
    for (i, c) in file.clusters.iter().enumerate() {
        // Read through the memo, a cluster is translated and encoded once,
        // and later revisions that keep its text share it.
        if let Some(encoded) = entries.get(i).and_then(|e| e.encoded()) {
            resources.encoded.push(encoded);
            continue;
        }
        let parts = translate::cluster_parts(c);
        resources.names.extend(parts.names);
        resources.clusters.push(parts.cluster);
        resources.endpoints.push(parts.endpoints);
    }
    for l in &file.listeners {
        let (listener, routes) = translate::listener(l);
        resources.listeners.push(listener);
        resources.routes.extend(routes);
    }
    for g in &file.grpc_services {
        let (listener, routes, cluster, endpoints) = translate::grpc_service(g);
        resources.names.extend(translate::named_assignment(
            &endpoints.cluster_name,
            &g.endpoints,
            translate::DEFAULT_DNS_REFRESH,
        ));
        resources.listeners.push(listener);
        resources.routes.push(routes);
        resources.clusters.push(cluster);
        resources.endpoints.push(endpoints);
    }
    resources.policy = policy(&file.nodes, &file.clients);
    if let Some(native) = file.static_resources {
        let written = |path: &str| positions.get().key(path).is_some();
        native::normalise(native, &written, &mut resources, &mut catalog, &mut issues);
    }
    if !options.allow_inline_secrets {
        for e in &resources.encoded {
            for at in &e.inline_secrets {
                issues.push(inline_secret(
                    native_path("clusters", &e.name, &catalog),
                    at,
                ));
            }
        }
        for c in &resources.clusters {
            for at in crate::secrets::in_cluster(c) {
                issues.push(inline_secret(
                    native_path("clusters", &c.name, &catalog),
                    &at,
                ));
            }
        }
        for l in &resources.listeners {
            for at in crate::secrets::in_listener(l) {
                issues.push(inline_secret(
                    native_path("listeners", &l.name, &catalog),
                    &at,
                ));
            }
        }
    }
    validate::cross_references(&catalog, &mut issues);
    for (count, kind) in [
        (
            resources.clusters.len() + resources.encoded.len(),
            "clusters",
        ),
        (
            resources.endpoints.len() + resources.encoded.len(),
            "load assignments",
        ),
        (resources.listeners.len(), "listeners"),
        (resources.routes.len(), "route configurations"),
    ] {
        if count > limits.max_resources {
            issues.push(Issue::new(
                ".",
                format!(
                    "{count} {kind} is over the limit of {} per file",
                    limits.max_resources
                ),
            ));
        }
    }

    if issues.is_empty() {
        return Ok(resources);
    }
    let mut errors: Vec<ConfigError> = issues
        .into_iter()
        .map(|Issue { path, message }| {
            let (line, column) = positions.get().value(&path).unwrap_or((0, 0));
            ConfigError {
                file: file_name.to_string(),
                line,
                column,
                path,
                message,
            }
        })
        .collect();
    // Stable: problems at the same node keep the order they were found in.
    errors.sort_by_key(|e| (e.line, e.column));
    Err(ConfigErrors(errors))
}

/// The first pass's refusal of `file_name`, as the one error of the load.
fn refused(file_name: &str, r: yaml::Refused) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: file_name.to_string(),
        line: r.position.0,
        column: r.position.1,
        path: r.path,
        message: r.message,
    }])
}

/// Reads the whole of a text that passed the bounded first pass; errors are
/// placed with `positions`.
fn read_whole(
    file_name: &str,
    text: &str,
    positions: &Positions<'_>,
) -> Result<schema::File, ConfigErrors> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, Option<schema::File>>(deserializer) {
        Ok(Some(file)) => Ok(file),
        Ok(None) => {
            // A truncated or emptied file must not be served as "no resources".
            Err(ConfigErrors(vec![ConfigError::whole_file(
                file_name,
                "file is empty; write `clusters: []` to serve nothing".to_string(),
            )]))
        }
        Err(e) => {
            // A v2 file stops the v3 reader at its first v2 construct: report
            // every one instead, each with its v3 spelling.
            if let Some(errors) = v2_errors(file_name, text, positions.get()) {
                return Err(errors);
            }
            Err(ConfigErrors(vec![structural(
                file_name,
                e,
                positions.get(),
            )]))
        }
    }
}

/// The position index of a text that passed [`yaml::check`], built the first
/// time a position is asked for: a valid file without Envoy-native resources
/// never needs one.
struct Positions<'t> {
    text: &'t str,
    limits: &'t Limits,
    index: std::cell::OnceCell<PositionIndex>,
}

impl<'t> Positions<'t> {
    fn new(text: &'t str, limits: &'t Limits) -> Self {
        Positions {
            text,
            limits,
            index: std::cell::OnceCell::new(),
        }
    }

    fn get(&self) -> &PositionIndex {
        // The text passed the same bounds already, so this cannot fail.
        self.index
            .get_or_init(|| yaml::scan(self.text, self.limits).unwrap_or_default())
    }
}

/// The file path of the native resource `name` of `kind` (`clusters`,
/// `listeners`): inline TLS contexts only come from `static_resources`.
fn native_path(kind: &str, name: &str, catalog: &Catalog) -> String {
    let named = if kind == "clusters" {
        &catalog.clusters
    } else {
        &catalog.listeners
    };
    named
        .iter()
        .find(|n| n.name == name && n.path.starts_with("static_resources."))
        .and_then(|n| n.path.strip_suffix(".name"))
        .map(str::to_string)
        .unwrap_or_else(|| format!("static_resources.{kind}"))
}

fn inline_secret(resource: String, at: &str) -> Issue {
    Issue::new(
        format!("{resource}.{at}"),
        "a secret written inline is sent to every node that receives this resource: \
         reference a file on the proxy's host instead (`filename: /etc/envoy/tls.key`), \
         or start pylon-xds with --allow-inline-secrets",
    )
}

/// The Envoy v2 constructs of `text`, as errors, if it has any.
fn v2_errors(file_name: &str, text: &str, index: &PositionIndex) -> Option<ConfigErrors> {
    if !text.contains("static_resources") {
        return None;
    }
    let doc: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    let m = v2::migrate(v2::snake_keys(doc));
    if m.changes.is_empty() {
        return None;
    }
    let mut errors: Vec<ConfigError> = m
        .changes
        .into_iter()
        .chain(m.unknown)
        .map(|c| {
            let (line, column) = index.value(&c.path).unwrap_or((0, 0));
            ConfigError {
                file: file_name.to_string(),
                line,
                column,
                path: c.path,
                message: c.message,
            }
        })
        .collect();
    errors.sort_by_key(|e| (e.line, e.column));
    errors.push(ConfigError::whole_file(
        file_name,
        format!("this is an Envoy v2 config: `pylon-xds migrate {file_name}` prints its v3 form"),
    ));
    Some(ConfigErrors(errors))
}

/// What `pylon-xds migrate` prints for a file: its `static_resources` in v3
/// (with `keep_bootstrap`, the file's other top-level keys too), preceded by a
/// comment listing what changed. Errors are those of the bounded read; a file
/// that is not YAML is an error too.
pub fn migrate(
    file_name: &str,
    bytes: &[u8],
    limits: &Limits,
    keep_bootstrap: bool,
) -> Result<(String, usize), ConfigErrors> {
    let one = |line, column, message: String| {
        ConfigErrors(vec![ConfigError {
            file: file_name.to_string(),
            line,
            column,
            path: ".".to_string(),
            message,
        }])
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = yaml::line_column(bytes, e.valid_up_to());
        one(
            line,
            column,
            "invalid UTF-8: a config file must be UTF-8 text".to_string(),
        )
    })?;
    let index = yaml::scan(text, limits).map_err(|r| refused(file_name, r))?;
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| one(0, 0, yaml::bare_message(&e)))?;
    let mut m = v2::migrate(v2::snake_keys(doc));
    let mut dropped = Vec::new();
    if let Some(map) = m.document.as_mapping_mut() {
        if !keep_bootstrap {
            map.retain(|k, _| {
                let keep = k.as_str() == Some("static_resources");
                if !keep {
                    dropped.push(k.as_str().unwrap_or("?").to_string());
                }
                keep
            });
        }
    }
    let mut out = format!("# The v3 form of {file_name}, written by `pylon-xds migrate`.\n");
    for c in &m.changes {
        let (line, _) = index.value(&c.path).unwrap_or((0, 0));
        out.push_str(&format!("# - line {line}: {}: {}\n", c.path, c.message));
    }
    for c in &m.unknown {
        let (line, _) = index.value(&c.path).unwrap_or((0, 0));
        out.push_str(&format!(
            "# - line {line}: {}: NOT CONVERTED: {}\n",
            c.path, c.message
        ));
    }
    if !dropped.is_empty() {
        out.push_str(&format!(
            "# Left out (bootstrap settings pylon-xds does not serve; --bootstrap keeps them): {}\n",
            dropped.join(", ")
        ));
    }
    out.push_str(&serde_yaml::to_string(&m.document).map_err(|e| one(0, 0, e.to_string()))?);
    Ok((out, m.changes.len()))
}

/// The `nodes:` and `clients:` sections as a [`Policy`].
fn policy(nodes: &[schema::NodeSelection], clients: &[schema::ClientRule]) -> Policy {
    let names = |list: &schema::NameList| match list {
        schema::NameList::All => Names::All,
        schema::NameList::Only(names) => Names::Only(names.iter().cloned().collect()),
    };
    Policy {
        selectors: nodes
            .iter()
            .map(|n| {
                let m = n.matcher.as_ref();
                Selector {
                    name: n.name.clone(),
                    id: m.and_then(|m| m.id.clone()).map(Glob::new),
                    cluster: m.and_then(|m| m.cluster.clone()).map(Glob::new),
                    metadata: m
                        .map(|m| {
                            m.metadata
                                .iter()
                                .map(|(k, v)| (k.clone(), Glob::new(v.clone())))
                                .collect()
                        })
                        .unwrap_or_default(),
                    listeners: names(&n.listeners),
                    clusters: names(&n.clusters),
                }
            })
            .collect(),
        clients: clients
            .iter()
            .filter_map(|c| {
                let identity = match (&c.identity, &c.dns) {
                    (Some(u), _) => IdentityGlob::Uri(Glob::new(u.clone())),
                    (None, Some(d)) => IdentityGlob::Dns(Glob::new(d.clone())),
                    // Refused by validation.
                    (None, None) => return None,
                };
                Some(ClientRule {
                    identity,
                    nodes: c.nodes.as_ref().map(|n| {
                        (
                            n.id.clone().map(Glob::new),
                            n.cluster.clone().map(Glob::new),
                        )
                    }),
                    csds: c.csds,
                })
            })
            .collect(),
    }
}

/// The first structural error, with serde_path_to_error's path and serde_yaml's
/// position.
fn structural(
    file_name: &str,
    error: serde_path_to_error::Error<serde_yaml::Error>,
    index: &PositionIndex,
) -> ConfigError {
    let yaml::Located {
        position: (line, column),
        path,
        message,
    } = yaml::locate(error, index);
    ConfigError {
        file: file_name.to_string(),
        line,
        column,
        path,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        match load_str("pylon.yaml", text) {
            Ok(_) => "loaded".to_string(),
            Err(e) => e.to_string(),
        }
    }

    /// The seed TCP scenario: a TCP proxy for three kube-apiservers.
    const KUBE_CONCISE: &str = "\
clusters:
  - name: kube-apiserver
    health_check:
      tcp: {}
      interval: 10s
      unhealthy_threshold: 3
      healthy_threshold: 2
    endpoints:
      - 127.0.0.1:6443
      - 127.0.0.2:6443
      - 127.0.0.3:6443
listeners:
  - name: kube-apiserver
    address: 127.0.0.1:7443
    tcp_proxy: {cluster: kube-apiserver}
";

    const KUBE_NATIVE: &str = r#"
static_resources:
  listeners:
  - name: kube-apiserver
    address:
      socket_address: {address: 127.0.0.1, port_value: 7443}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: kube-apiserver
          cluster: kube-apiserver
          max_connect_attempts: 3
  clusters:
  - name: kube-apiserver
    connect_timeout: 5s
    type: STATIC
    lb_policy: ROUND_ROBIN
    health_checks:
    - timeout: 1s
      interval: 10s
      no_traffic_interval: 10s
      unhealthy_threshold: 3
      healthy_threshold: 2
      tcp_health_check: {}
    load_assignment:
      cluster_name: kube-apiserver
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 6443}}}
        - endpoint: {address: {socket_address: {address: 127.0.0.2, port_value: 6443}}}
        - endpoint: {address: {socket_address: {address: 127.0.0.3, port_value: 6443}}}
"#;

    /// The seed HTTP scenario: the front proxy for /service/1 and /service/2.
    const FRONT_CONCISE: &str = "\
clusters:
  - {name: service1, endpoints: [127.0.0.1:8081, 127.0.0.1:8082, 127.0.0.1:8083]}
  - {name: service2, endpoints: [127.0.0.1:8084]}
listeners:
  - name: front
    address: 127.0.0.1:8000
    http:
      routes:
        - {prefix: /service/1, cluster: service1}
        - {prefix: /service/2, cluster: service2}
";

    const FRONT_NATIVE: &str = r#"
static_resources:
  listeners:
  - name: front
    address: {socketAddress: {address: 127.0.0.1, portValue: 8000}}
    filterChains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typedConfig:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          statPrefix: front
          routeConfig:
            name: front
            virtualHosts:
            - name: front
              domains: ["*"]
              routes:
              - {match: {prefix: /service/1}, route: {cluster: service1}}
              - {match: {prefix: /service/2}, route: {cluster: service2}}
          httpFilters:
          - name: envoy.filters.http.router
            typedConfig: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: service1
    connectTimeout: 5s
    loadAssignment:
      endpoints:
      - lbEndpoints:
        - endpoint: {address: {socketAddress: {address: 127.0.0.1, portValue: 8081}}}
        - endpoint: {address: {socketAddress: {address: 127.0.0.1, portValue: 8082}}}
        - endpoint: {address: {socketAddress: {address: 127.0.0.1, portValue: 8083}}}
  - name: service2
    connectTimeout: 5s
    type: STATIC
    loadAssignment:
      endpoints:
      - lbEndpoints:
        - endpoint: {address: {socketAddress: {address: 127.0.0.1, portValue: 8084}}}
"#;

    #[test]
    fn seed_scenarios_load_identically_in_both_forms() {
        let concise = load_str("kube.yaml", KUBE_CONCISE).unwrap();
        assert_eq!(concise.clusters.len(), 1);
        assert_eq!(concise.endpoints[0].endpoints[0].lb_endpoints.len(), 3);
        assert_eq!(concise.listeners.len(), 1);
        assert!(concise.routes.is_empty());
        let native = load_str("kube-native.yaml", KUBE_NATIVE).unwrap();
        assert_eq!(concise, native);

        let concise = load_str("front.yaml", FRONT_CONCISE).unwrap();
        assert_eq!(concise.clusters.len(), 2);
        assert_eq!(concise.endpoints.len(), 2);
        assert_eq!(concise.routes.len(), 1);
        assert_eq!(concise.routes[0].virtual_hosts[0].routes.len(), 2);
        let native = load_str("front-native.yaml", FRONT_NATIVE).unwrap();
        assert_eq!(concise, native);
    }

    #[test]
    fn both_forms_mix_in_one_file() {
        let mixed = format!("{KUBE_CONCISE}{}", FRONT_NATIVE.trim_start());
        let resources = load_str("mixed.yaml", &mixed).unwrap();
        let names = |v: Vec<&str>| v.into_iter().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            resources
                .clusters
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>(),
            names(vec!["kube-apiserver", "service1", "service2"])
        );
        assert_eq!(
            resources
                .listeners
                .iter()
                .map(|l| l.name.clone())
                .collect::<Vec<_>>(),
            names(vec!["kube-apiserver", "front"])
        );
    }

    #[test]
    fn every_example_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut loaded = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let resources =
                    load_file(&path, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
                assert!(!resources.listeners.is_empty(), "{}", path.display());
                loaded.push(path.file_name().unwrap().to_string_lossy().to_string());
            }
        }
        loaded.sort();
        for name in [
            "front-proxy-native.yaml",
            "front-proxy.yaml",
            "kube-apiserver.yaml",
        ] {
            assert!(
                loaded.iter().any(|l| l == name),
                "{name} missing from {loaded:?}"
            );
        }
        let concise = load_file(&dir.join("front-proxy.yaml"), &Options::default()).unwrap();
        let native = load_file(&dir.join("front-proxy-native.yaml"), &Options::default()).unwrap();
        assert_eq!(concise, native);
    }

    #[test]
    fn structural_errors_table() {
        let native_cluster = "static_resources:\n  clusters:\n  - name: a\n";
        let table = [
            ("", "pylon.yaml: file is empty; write `clusters: []` to serve nothing"),
            ("# nothing yet\n\n", "pylon.yaml: file is empty; write `clusters: []` to serve nothing"),
            (
                "admin: {}\n",
                "pylon.yaml:1:1: admin: `admin` belongs to an Envoy bootstrap, not a pylon-xds config (top-level keys: `clusters`, `listeners`, `grpc_services`, `nodes`, `clients`, `static_resources`)",
            ),
            (
                "clusters: []\nroutes: []\n",
                "pylon.yaml:2:1: routes: unknown top-level key `routes`: expected `clusters`, `listeners`, `grpc_services`, `nodes`, `clients` or `static_resources`",
            ),
            (
                "clusters:\n  - name: a\n    conect_timeout: 5s\n",
                "pylon.yaml:3:5: clusters[0].conect_timeout: unknown field `conect_timeout`, expected one of `name`, `connect_timeout`, `lb_policy`, `health_check`, `endpoints`, `circuit_breakers`, `dns_refresh`, `outlier_detection`",
            ),
            (
                "clusters:\n  - name: a\n    connect_timeout: 5\n",
                "pylon.yaml:3:22: clusters[0].connect_timeout: a bare number is not a duration: write \"5s\" (units: ms, s, m, h)",
            ),
            (
                "clusters:\n  - name: a\n    connect_timeout: 5x\n",
                "pylon.yaml:3:22: clusters[0].connect_timeout: invalid duration `5x`: expected a number and a unit (ms, s, m or h), like \"5s\" or \"250ms\"",
            ),
            (
                "clusters:\n  - name: a\n    endpoints:\n      - 127.0.0.1:1\n      - backend_1.test:80\n",
                "pylon.yaml:5:9: clusters[0].endpoints[1]: `backend_1.test` in address `backend_1.test:80` is neither an IP address nor a host name",
            ),
            (
                "clusters:\n  - name: a\n    endpoints: [{address: 127.0.0.1:70000}]\n",
                "pylon.yaml:3:27: clusters[0].endpoints[0].address: port 70000 in address `127.0.0.1:70000` is out of range 1..=65535",
            ),
            (
                "clusters:\n  - endpoints: []\n",
                "pylon.yaml:2:5: clusters[0]: missing field `name`",
            ),
            (
                "clusters:\n  - name: a\n    lb_policy: maglev\n",
                "pylon.yaml:3:16: clusters[0].lb_policy: unknown variant `maglev`, expected one of `round_robin`, `least_request`, `random`",
            ),
            (
                "clusters:\n  - name: a\n    endpoints: 127.0.0.1:1\n",
                "pylon.yaml:3:16: clusters[0].endpoints: invalid type: string \"127.0.0.1:1\", expected a sequence",
            ),
            (
                "clusters: [\n",
                "pylon.yaml:2:1: clusters[0]: invalid YAML: while parsing a node, did not find expected node content",
            ),
            (
                "- name: a\n",
                "pylon.yaml:1:1: .: invalid type: sequence, expected a map with `clusters`, `listeners`, `grpc_services`, `nodes`, `clients` and/or `static_resources`",
            ),
            (
                "static_resources:\n  secrets: []\n",
                "pylon.yaml:2:3: static_resources.secrets: `secrets` are not served by pylon-xds: static_resources may hold only `clusters` and `listeners`",
            ),
            (
                "static_resources:\n  clusters:\n  - name: a\n    conectTimeout: 5s\n",
                "pylon.yaml:4:5: static_resources.clusters[0].conectTimeout: unrecognized field name 'conectTimeout'",
            ),
            (
                &format!("{native_cluster}    connect_timeout: 5\n"),
                "pylon.yaml:4:22: static_resources.clusters[0].connect_timeout: failed to parse duration: native durations are seconds with an `s`, like \"5s\" or \"0.25s\"",
            ),
            (
                &format!("{native_cluster}    type: STATICX\n"),
                "pylon.yaml:4:11: static_resources.clusters[0].type: unrecognized enum value 'STATICX'",
            ),
            (
                "static_resources:\n  listeners:\n  - name: a\n    filter_chains:\n    - filters:\n      - name: x\n        typed_config:\n          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: x\n          clustr: y\n",
                "pylon.yaml:10:11: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.clustr: unrecognized field name 'clustr'",
            ),
        ];
        for (yaml, want) in table {
            assert_eq!(errors(yaml), want, "{yaml}");
        }
    }

    /// A removed host leaves rotation at once on Envoy too: every cluster
    /// says so, unless a native cluster sets the field itself.
    #[test]
    fn removed_hosts_are_drained_unless_the_file_says_otherwise() {
        let native = |extra: &str| {
            format!(
                "static_resources:\n  clusters:\n  - name: n\n    type: STATIC\n{extra}    load_assignment:\n      endpoints: []\n"
            )
        };
        let drains = |text: &str| {
            let r = load_str("pylon.yaml", text).unwrap();
            r.clusters
                .iter()
                .map(|c| (c.name.clone(), c.ignore_health_on_host_removal))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            drains(FRONT_CONCISE),
            [("service1".into(), true), ("service2".into(), true)]
        );
        assert_eq!(drains(&native("")), [("n".into(), true)]);
        for kept in [
            "    ignore_health_on_host_removal: false\n",
            "    ignoreHealthOnHostRemoval: false\n",
        ] {
            assert_eq!(drains(&native(kept)), [("n".into(), false)], "{kept}");
        }
    }

    #[test]
    fn client_rules_are_read_and_checked() {
        let text = "\
clients:
  - identity: \"spiffe://pylon.example/edge/*\"
    nodes: {cluster: edge, id: \"edge-*\"}
  - dns: \"ops.example\"
    csds: true
";
        let r = load_str("pylon.yaml", text).unwrap();
        let c = &r.policy.clients;
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0].identity,
            IdentityGlob::Uri(Glob::new("spiffe://pylon.example/edge/*"))
        );
        assert!(c[1].csds && c[1].nodes.is_none());
        assert_eq!(
            errors(
                "clients:\n  - identity: a\n    dns: b\n    csds: true\n  - csds: true\n  - identity: c\n  - identity: d\n    nodes: {}\n  - identity: e\n    node: {id: x}\n"
            ),
            "pylon.yaml:10:5: clients[4].node: unknown field `node`, expected one of `identity`, `dns`, `nodes`, `csds`"
        );
        assert_eq!(
            errors(
                "clients:\n  - identity: a\n    dns: b\n    csds: true\n  - csds: true\n  - identity: c\n  - identity: d\n    nodes: {}\n"
            ),
            "pylon.yaml:2:5: clients[0]: a client rule names one identity: `identity` (a URI SAN) or `dns` (a DNS SAN), not both (write two rules)\n\
             pylon.yaml:5:5: clients[1]: a client rule needs `identity` (a URI SAN glob, like \"spiffe://example.org/edge/*\") or `dns` (a DNS SAN glob, like \"*.edge.example\")\n\
             pylon.yaml:6:5: clients[2]: this rule allows nothing: give `nodes` (which nodes the identity may claim) and/or `csds: true`\n\
             pylon.yaml:8:12: clients[3].nodes: `nodes` needs `id` and/or `cluster` globs (write `{id: \"*\"}` for any node)"
        );
    }

    #[test]
    fn inline_secrets_are_refused_unless_allowed() {
        let cluster = |key: &str| {
            format!(
                r#"static_resources:
  clusters:
  - name: upstream
    type: STATIC
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_certificates:
          - certificate_chain: {{filename: /etc/envoy/tls.crt}}
            private_key: {key}
    load_assignment: {{endpoints: []}}
"#
            )
        };
        let inline = cluster("{inline_string: \"-----BEGIN PRIVATE KEY-----\"}");
        assert_eq!(
            errors(&inline),
            "pylon.yaml:12:26: static_resources.clusters[0].transport_socket.typed_config.common_tls_context.tls_certificates[0].private_key: \
             a secret written inline is sent to every node that receives this resource: reference a file on the proxy's host \
             instead (`filename: /etc/envoy/tls.key`), or start pylon-xds with --allow-inline-secrets"
        );
        let allowed = Options {
            allow_inline_secrets: true,
            ..Options::default()
        };
        assert!(load_bytes("pylon.yaml", inline.as_bytes(), &allowed).is_ok());
        assert_eq!(errors(&cluster("{filename: /etc/envoy/tls.key}")), "loaded");
    }

    #[test]
    fn bytes_are_bounded_and_must_be_utf8() {
        let limits = Limits {
            max_bytes: 64,
            max_resources: 1,
            ..Limits::default()
        };
        let load = |bytes: &[u8]| match load_bytes(
            "pylon.yaml",
            bytes,
            &Options {
                limits,
                ..Options::default()
            },
        ) {
            Ok(_) => "loaded".to_string(),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            load(b"clusters:\n  - name: caf\xc3\xa9\xe9\n"),
            "pylon.yaml:2:15: .: invalid UTF-8 (byte 0xE9): a config file must be UTF-8 text"
        );
        assert_eq!(
            load(&[b'#'; 65]),
            "pylon.yaml: the file is larger than 64 bytes (--max-config-bytes)"
        );
        assert_eq!(
            load(b"clusters: [{name: a}, {name: b}]\n"),
            "pylon.yaml:1:23: clusters[1]: more than 1 entries in `clusters` (the limit per file)"
        );
        // And per type of resource, whatever section made them.
        assert_eq!(
            load(b"clusters: [{name: a}]\ngrpc_services: [{name: g, port: 1}]\n"),
            "pylon.yaml:1:1: .: 2 clusters is over the limit of 1 per file\n\
             pylon.yaml:1:1: .: 2 load assignments is over the limit of 1 per file"
        );
        assert_eq!(load(b"clusters: [{name: a}]\n"), "loaded");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_positions() {
        let yaml = "\
clusters:
  - name: a
    health_check:
      interval: 5s
      healthy_threshold: 0
    endpoints:
      - 127.0.0.1:1
      - {address: 127.0.0.2:1, weight: 0}
  - name: a
    health_check:
      http: {path: /healthz, expected_statuses: [200, 700]}
listeners:
  - name: web
    address: 127.0.0.1:8000
    http:
      routes: []
  - name: web
    address: 127.0.0.1:8000
    tcp_proxy: {cluster: nope}
  - name: api
    address: 127.0.0.1:8001
    http:
      routes:
        - {prefix: /, path: /x, cluster: a}
        - {prefix: /b, cluster: b}
";
        let want = "\
pylon.yaml:3:5: clusters[0].health_check: health check needs a kind: `tcp: {}`, `http: {path: /healthz}` or `https: {path: /readyz, ca: /etc/pylon/ca.crt}`
pylon.yaml:5:26: clusters[0].health_check.healthy_threshold: healthy_threshold must be at least 1
pylon.yaml:8:40: clusters[0].endpoints[1].weight: weight must be at least 1
pylon.yaml:9:11: clusters[1].name: duplicate cluster name `a` (first at clusters[0].name)
pylon.yaml:11:55: clusters[1].health_check.http.expected_statuses[1]: status 700 is outside 100..=599
pylon.yaml:16:15: listeners[0].http.routes: routes must not be empty (with no routes every request gets a 404)
pylon.yaml:17:11: listeners[1].name: duplicate listener name `web` (first at listeners[0].name)
pylon.yaml:18:14: listeners[1].address: duplicate listener address `127.0.0.1:8000` (first at listeners[0].address)
pylon.yaml:19:26: listeners[1].tcp_proxy.cluster: cluster `nope` is not defined
pylon.yaml:24:11: listeners[2].http.routes[0]: route needs exactly one of `prefix`, `path` or `path_separated_prefix`
pylon.yaml:25:33: listeners[2].http.routes[1].cluster: cluster `b` is not defined";
        assert_eq!(errors(yaml), want);
    }

    #[test]
    fn semantic_errors_span_both_forms() {
        let yaml = r#"
clusters:
  - name: service1
listeners:
  - name: front
    address: 127.0.0.1:8000
    http: {routes: [{prefix: /, cluster: service1}]}
static_resources:
  clusters:
  - name: service1
  - name: eds
    type: EDS
  listeners:
  - name: front
    address: {socket_address: {address: 127.0.0.1, port_value: 8000}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: x
          routeConfig:
            virtualHosts:
            - name: x
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route: {cluster: service9}
  - name: other
    address: {socket_address: {address: 127.0.0.1, port_value: 99999}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: x
          rds: {route_config_name: front}
"#;
        let want = "\
pylon.yaml:10:11: static_resources.clusters[0].name: duplicate cluster name `service1` (first at clusters[0].name)
pylon.yaml:12:11: static_resources.clusters[1].type: EDS clusters cannot be given in static_resources: pylon-xds serves endpoints itself; make the cluster STATIC and list its endpoints in `load_assignment`
pylon.yaml:14:11: static_resources.listeners[0].name: duplicate listener name `front` (first at listeners[0].name)
pylon.yaml:15:14: static_resources.listeners[0].address: duplicate listener address `127.0.0.1:8000` (first at listeners[0].address)
pylon.yaml:22:11: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config: duplicate route configuration name `front` (first at listeners[0].name)
pylon.yaml:28:34: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.cluster: cluster `service9` is not defined
pylon.yaml:30:64: static_resources.listeners[1].address.socket_address.port_value: port 99999 is out of range 1..=65535
pylon.yaml:37:16: static_resources.listeners[1].filter_chains[0].filters[0].typed_config.rds: `rds` cannot be used in static_resources: nothing would serve that route configuration; give the routes inline in `route_config`";
        assert_eq!(errors(yaml), want);
    }

    #[test]
    fn display_formats() {
        let known = ConfigError {
            file: "a.yaml".to_string(),
            line: 3,
            column: 7,
            path: "clusters[1].endpoints[2]".to_string(),
            message: "bad".to_string(),
        };
        let unknown = ConfigError {
            line: 0,
            column: 0,
            ..known.clone()
        };
        assert_eq!(
            known.to_string(),
            "a.yaml:3:7: clusters[1].endpoints[2]: bad"
        );
        assert_eq!(unknown.to_string(), "a.yaml: clusters[1].endpoints[2]: bad");
        assert_eq!(
            ConfigErrors(vec![known, unknown]).to_string(),
            "a.yaml:3:7: clusters[1].endpoints[2]: bad\na.yaml: clusters[1].endpoints[2]: bad"
        );
    }

    #[test]
    fn load_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pylon.yaml");
        std::fs::write(&path, "clusters:\n  - name: a\n    weight: 1\n").unwrap();
        let err = load_file(&path, &Options::default()).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].file, path.display().to_string());
        assert_eq!((err.0[0].line, err.0[0].column), (3, 5));
        assert_eq!(err.0[0].path, "clusters[0].weight");

        let missing = dir.path().join("missing.yaml");
        let err = load_file(&missing, &Options::default()).unwrap_err();
        assert_eq!(err.0[0].line, 0);
        assert!(err.to_string().contains("cannot read the file"), "{err}");

        std::fs::write(&path, "clusters: []\n").unwrap();
        assert_eq!(
            load_file(&path, &Options::default()),
            Ok(Resources::default())
        );
    }

    const GRPC_AND_NODES: &str = "\
clusters:
  - name: web
    endpoints: [127.0.0.1:8081]
listeners:
  - name: front
    address: 127.0.0.1:8000
    http:
      routes: [{prefix: /, cluster: web}]
grpc_services:
  - name: greeter.example
    port: 50051
    endpoints: [127.0.0.1:50061, {address: 127.0.0.1:50062, weight: 2}]
nodes:
  - name: grpc
    match: {id: \"grpc-*\", metadata: {lang: python}}
    listeners: [\"greeter.example:50051\"]
  - name: edge
    match: {cluster: edge}
    listeners: [front]
    clusters: all
";

    #[test]
    fn grpc_services_become_what_grpc_clients_ask_for() {
        use envoy_types::pb::envoy::config::cluster::v3::cluster::{
            ClusterDiscoveryType, DiscoveryType, LbPolicy,
        };
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
            http_connection_manager::RouteSpecifier, HttpConnectionManager,
        };
        use prost::Message;

        let r = load_str("pylon.yaml", GRPC_AND_NODES).unwrap();
        let name = "greeter.example:50051";
        let l = r.listeners.iter().find(|l| l.name == name).unwrap();
        assert!(l.address.is_none() && l.filter_chains.is_empty());
        let any = l
            .api_listener
            .as_ref()
            .unwrap()
            .api_listener
            .as_ref()
            .unwrap();
        assert_eq!(any.type_url, pylon::type_url::HTTP_CONNECTION_MANAGER);
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => assert_eq!(rds.route_config_name, name),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            hcm.http_filters.last().unwrap().name,
            pylon::type_url::ROUTER_FILTER
        );
        let rc = r.routes.iter().find(|rc| rc.name == name).unwrap();
        assert_eq!(rc.virtual_hosts[0].domains, [name, "greeter.example"]);
        let c = r.clusters.iter().find(|c| c.name == name).unwrap();
        assert_eq!(c.lb_policy, LbPolicy::RoundRobin as i32);
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        );
        let cla = r.endpoints.iter().find(|e| e.cluster_name == name).unwrap();
        assert_eq!(cla.endpoints.len(), 1);
        assert!(cla.endpoints[0].load_balancing_weight.is_some());
        let weights: Vec<u32> = cla.endpoints[0]
            .lb_endpoints
            .iter()
            .map(|e| e.load_balancing_weight.map_or(1, |w| w.value))
            .collect();
        assert_eq!(weights, [1, 2]);

        let p = &r.policy.selectors;
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "grpc");
        assert_eq!(p[0].id.as_ref().unwrap().as_str(), "grpc-*");
        assert_eq!(p[0].metadata[0].0, "lang");
        assert_eq!(p[1].clusters, crate::selection::Names::All);
        // The whole config makes a consistent snapshot.
        crate::snapshot::Snapshot::build(r, None).unwrap();
    }

    #[test]
    fn grpc_service_and_node_errors_are_positioned() {
        let text = "\
grpc_services:
  - name: greeter.example:50051
    port: 0
    endpoints: [{address: 127.0.0.1:1, weight: 0}]
nodes:
  - name: a
    match: {}
    listeners: [nope]
    clusters: [missing]
  - name: a
";
        assert_eq!(
            errors(text),
            "pylon.yaml:2:11: grpc_services[0].name: a gRPC service name is the host part of the \
             target (`greeter.example`); it must not contain `:`, `/` or spaces (the port goes in `port`)\n\
             pylon.yaml:3:11: grpc_services[0].port: port must be between 1 and 65535\n\
             pylon.yaml:4:48: grpc_services[0].endpoints[0].weight: weight must be at least 1\n\
             pylon.yaml:7:12: nodes[0].match: match needs at least one of `id`, `cluster` or \
             `metadata` (leave `match` out to match every node)\n\
             pylon.yaml:8:17: nodes[0].listeners[0]: listener `nope` is not defined\n\
             pylon.yaml:9:16: nodes[0].clusters[0]: cluster `missing` is not defined\n\
             pylon.yaml:10:11: nodes[1].name: duplicate node selection name `a` (first at nodes[0].name)"
        );
        assert_eq!(
            errors("nodes:\n  - name: a\n    listeners: some\n"),
            "pylon.yaml:3:16: nodes[0].listeners: expected `all` or a list of names, found \
             \"some\" (write [some] for one name)"
        );
        assert_eq!(
            errors("grpc_services:\n  - name: g\n    port: 70000\n"),
            "pylon.yaml:3:11: grpc_services[0].port: invalid value: integer `70000`, expected u16"
        );
    }
}
