//! Route tables: compiled route configurations and their lookup, plus the
//! RDS route configurations in force.
//!
//! Owns: [`RouteTable`] (a `model::RouteConfig` compiled for lookup: virtual
//! hosts indexed by domain, routes resolved to [`ClusterSlot`]s), the
//! [`RouteSlot`] through which HTTP listeners see the current version of an RDS
//! route configuration on every request, and the [`RouteManager`].
//!
//! Matching (Envoy's, see docs/envoy-behaviour.md):
//! - virtual host by Host (case-insensitive): exact domain, then the longest
//!   `*suffix`, then the longest `prefix*`; if none matches and Host has a port,
//!   the same again without the port; then `*`;
//! - routes in order, first match wins: `Prefix` is a plain string prefix of
//!   the path with its query, `Exact` compares the path without the query,
//!   `SeparatedPrefix` needs the prefix to be followed by the end, `/` or `?`;
//! - `prefix_rewrite` replaces the matched part of the path;
//! - a route's `retry_policy` (and `per_request_buffer_limit_bytes`)
//!   replaces its virtual host's, as in Envoy.
//!
//! Does not own the HTTP handling itself (see `listener::http`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::model::{self, NackError, PathMatch, RetryPolicy, DEFAULT_RETRY_BUFFER_LIMIT};
use crate::upstream::{ClusterManager, ClusterSlot};

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    path: PathMatch,
    /// Upstream cluster.
    pub cluster: Arc<ClusterSlot>,
    /// Replacement of the matched prefix.
    pub prefix_rewrite: Option<String>,
    /// Route timeout (`None`: disabled).
    pub timeout: Option<Duration>,
    /// The route's retry policy, else its virtual host's.
    pub retry: Option<Arc<RetryPolicy>>,
    /// Largest request body kept for retries.
    pub retry_buffer_limit: usize,
}

impl Route {
    /// Whether the route matches `path` (no query) / `path_and_query`.
    #[inline]
    pub fn matches(&self, path: &str, path_and_query: &str) -> bool {
        match &self.path {
            PathMatch::Prefix(p) => path_and_query.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::SeparatedPrefix(p) => {
                path_and_query.starts_with(p.as_str())
                    && matches!(
                        path_and_query.as_bytes().get(p.len()),
                        None | Some(b'/' | b'?')
                    )
            }
        }
    }

    /// The rewritten path-and-query, if the route has a `prefix_rewrite`
    /// (`path_and_query` must be one the route matched).
    pub fn rewrite(&self, path_and_query: &str) -> Option<String> {
        let rewrite = self.prefix_rewrite.as_deref()?;
        let matched = match &self.path {
            PathMatch::Prefix(p) | PathMatch::Exact(p) | PathMatch::SeparatedPrefix(p) => p.len(),
        };
        let rest = path_and_query.get(matched..).unwrap_or("");
        let mut out = String::with_capacity(rewrite.len() + rest.len());
        out.push_str(rewrite);
        out.push_str(rest);
        Some(out)
    }
}

/// A compiled virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    /// Name.
    pub name: String,
    /// Routes, in order.
    pub routes: Vec<Route>,
}

/// A compiled route configuration.
#[derive(Debug)]
pub struct RouteTable {
    /// The route configuration's name.
    pub name: String,
    vhosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    /// `*suffix` domains: (suffix, vhost), longest first.
    suffix: Vec<(String, usize)>,
    /// `prefix*` domains: (prefix, vhost), longest first.
    prefix: Vec<(String, usize)>,
    default: Option<usize>,
}

impl RouteTable {
    /// Compiles `rc`, resolving clusters through `slot`.
    pub fn compile(
        rc: &model::RouteConfig,
        slot: impl Fn(&str) -> Arc<ClusterSlot>,
    ) -> Result<RouteTable, NackError> {
        let nack = |message: String| NackError {
            kind: Some(pylon::ResourceType::Route),
            name: rc.name.clone(),
            message,
        };
        let mut t = RouteTable {
            name: rc.name.clone(),
            vhosts: Vec::with_capacity(rc.virtual_hosts.len()),
            exact: HashMap::new(),
            suffix: Vec::new(),
            prefix: Vec::new(),
            default: None,
        };
        let mut seen = HashSet::new();
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                if !seen.insert(d.clone()) {
                    return Err(nack(format!(
                        "virtual host {}: duplicate domain {d} (domains must be unique across virtual hosts)",
                        vh.name
                    )));
                }
                if d == "*" {
                    t.default = Some(i);
                } else if let Some(s) = d.strip_prefix('*') {
                    t.suffix.push((s.to_owned(), i));
                } else if let Some(p) = d.strip_suffix('*') {
                    t.prefix.push((p.to_owned(), i));
                } else {
                    t.exact.insert(d, i);
                }
            }
            t.vhosts.push(VirtualHost {
                name: vh.name.clone(),
                routes: vh
                    .routes
                    .iter()
                    .map(|r| Route {
                        path: r.path.clone(),
                        cluster: slot(&r.action.cluster),
                        prefix_rewrite: r.action.prefix_rewrite.clone(),
                        timeout: r.action.timeout,
                        // Envoy: a route's policy replaces its virtual host's.
                        retry: r
                            .action
                            .retry_policy
                            .as_ref()
                            .or(vh.retry_policy.as_ref())
                            .map(|p| Arc::new(p.clone())),
                        retry_buffer_limit: r
                            .action
                            .per_request_buffer_limit_bytes
                            .or(vh.per_request_buffer_limit_bytes)
                            .unwrap_or(DEFAULT_RETRY_BUFFER_LIMIT)
                            as usize,
                    })
                    .collect(),
            });
        }
        t.suffix.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        t.prefix.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(t)
    }

    fn match_domain(&self, host: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        // The wildcard must stand for at least one character.
        if let Some((_, i)) = self
            .suffix
            .iter()
            .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
        {
            return Some(*i);
        }
        self.prefix
            .iter()
            .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
            .map(|(_, i)| *i)
    }

    /// The virtual host for a Host header value.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        if !self.reads_host() {
            // Only a `*` virtual host (or none): nothing to look up.
            return self.default.and_then(|i| self.vhosts.get(i));
        }
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let i = self
            .match_domain(&host)
            .or_else(|| strip_port(&host).and_then(|h| self.match_domain(h)))
            .or(self.default)?;
        self.vhosts.get(i)
    }

    /// Whether choosing a virtual host reads the request's host: not when
    /// the only one is `*` (or there is none).
    #[inline]
    pub fn reads_host(&self) -> bool {
        !(self.exact.is_empty() && self.suffix.is_empty() && self.prefix.is_empty())
    }

    /// The route for a request: Host header, path without query, path with query.
    #[inline]
    pub fn route(&self, host: &str, path: &str, path_and_query: &str) -> Option<&Route> {
        self.virtual_host(host)?
            .routes
            .iter()
            .find(|r| r.matches(path, path_and_query))
    }
}

/// `host` without its `:port`, if it has one (`[::1]:80` -> `[::1]`).
fn strip_port(host: &str) -> Option<&str> {
    let (h, port) = host.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if h.contains(':') && !h.ends_with(']') {
        return None; // a bare IPv6 address
    }
    Some(h)
}

/// The current version of an RDS route configuration, by name.
#[derive(Debug)]
pub struct RouteSlot {
    name: String,
    current: ArcSwapOption<RouteTable>,
}

impl RouteSlot {
    /// The route configuration name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current table (a guard: do not hold it across an `.await`).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Option<Arc<RouteTable>>> {
        self.current.load()
    }

    fn store(&self, t: Option<Arc<RouteTable>>) {
        self.current.store(t);
    }
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<String, Arc<RouteSlot>>,
    configs: BTreeMap<String, model::RouteConfig>,
}

/// The RDS route configurations in force.
#[derive(Debug, Default)]
pub struct RouteManager {
    state: Mutex<State>,
}

impl RouteManager {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot of route configuration `name` (empty until it arrives).
    pub fn slot(&self, name: &str) -> Arc<RouteSlot> {
        let mut st = self.lock();
        if let Some(s) = st.slots.get(name) {
            return s.clone();
        }
        let s = Arc::new(RouteSlot {
            name: name.to_owned(),
            current: ArcSwapOption::empty(),
        });
        st.slots.insert(name.to_owned(), s.clone());
        s
    }

    /// Replaces the set of RDS route configurations: compiles them all first
    /// (any error: nothing changes), then swaps each changed one in.
    pub fn set(
        &self,
        rcs: Vec<model::RouteConfig>,
        clusters: &ClusterManager,
    ) -> Result<(), NackError> {
        let mut names = HashSet::new();
        for rc in &rcs {
            if !names.insert(rc.name.as_str()) {
                return Err(NackError {
                    kind: Some(pylon::ResourceType::Route),
                    name: rc.name.clone(),
                    message: "duplicate route configuration name".into(),
                });
            }
        }
        let current = self.lock().configs.clone();
        let mut compiled = Vec::new();
        for rc in &rcs {
            if current.get(&rc.name) == Some(rc) {
                continue;
            }
            compiled.push(Arc::new(RouteTable::compile(rc, |c| clusters.slot(c))?));
        }
        for t in compiled {
            let slot = self.slot(&t.name);
            slot.store(Some(t));
        }
        let mut st = self.lock();
        let next: BTreeMap<String, model::RouteConfig> =
            rcs.into_iter().map(|r| (r.name.clone(), r)).collect();
        for name in st.configs.keys() {
            if !next.contains_key(name) {
                if let Some(s) = st.slots.get(name) {
                    s.store(None);
                }
            }
        }
        st.configs = next;
        let State { slots, configs } = &mut *st;
        slots.retain(|n, s| Arc::strong_count(s) > 1 || configs.contains_key(n));
        Ok(())
    }

    /// The route configurations in force, by name.
    pub fn configs(&self) -> Vec<model::RouteConfig> {
        self.lock().configs.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RouteAction, RouteConfig};
    use tokio_util::sync::CancellationToken;

    fn route(path: PathMatch, cluster: &str, rewrite: Option<&str>) -> model::Route {
        model::Route {
            path,
            action: RouteAction {
                cluster: cluster.into(),
                prefix_rewrite: rewrite.map(str::to_owned),
                timeout: Some(Duration::from_secs(15)),
                retry_policy: None,
                per_request_buffer_limit_bytes: None,
            },
        }
    }

    fn vh(name: &str, domains: &[&str], routes: Vec<model::Route>) -> model::VirtualHost {
        model::VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
            retry_policy: None,
            per_request_buffer_limit_bytes: None,
        }
    }

    fn table() -> RouteTable {
        let cm = ClusterManager::new(CancellationToken::new());
        let rc = RouteConfig {
            name: "rc".into(),
            virtual_hosts: vec![
                vh(
                    "api",
                    &["api.example.com", "api.example.com:8443"],
                    vec![
                        route(PathMatch::Exact("/health".into()), "health", None),
                        route(PathMatch::SeparatedPrefix("/v1".into()), "v1", Some("/")),
                        route(PathMatch::Prefix("/service/1".into()), "s1", None),
                        route(PathMatch::Prefix("/service/".into()), "s", Some("/svc/")),
                        route(PathMatch::Prefix("/".into()), "api", None),
                    ],
                ),
                vh(
                    "wild",
                    &["*.example.com"],
                    vec![route(PathMatch::Prefix("/".into()), "wild", None)],
                ),
                vh(
                    "longwild",
                    &["*.eu.example.com"],
                    vec![route(PathMatch::Prefix("/".into()), "eu", None)],
                ),
                vh(
                    "pre",
                    &["internal.*"],
                    vec![route(PathMatch::Prefix("/".into()), "pre", None)],
                ),
                vh(
                    "def",
                    &["*"],
                    vec![route(PathMatch::Prefix("/only".into()), "def", None)],
                ),
            ],
        };
        RouteTable::compile(&rc, |c| cm.slot(c)).unwrap()
    }

    fn cluster_of(t: &RouteTable, host: &str, pq: &str) -> Option<String> {
        let path = pq.split('?').next().unwrap();
        t.route(host, path, pq).map(|r| r.cluster.name().to_owned())
    }

    #[test]
    fn route_matching_table() {
        let t = table();
        let cases: &[(&str, &str, Option<&str>)] = &[
            // Prefix is a plain string prefix: /service/1 also matches /service/10.
            ("api.example.com", "/service/1", Some("s1")),
            ("api.example.com", "/service/10", Some("s1")),
            ("api.example.com", "/service/2", Some("s")),
            // Exact ignores the query; it does not match a longer path.
            ("api.example.com", "/health", Some("health")),
            ("api.example.com", "/health?x=1", Some("health")),
            ("api.example.com", "/healthz", Some("api")),
            // Separated prefix: end, '/' or '?' after the prefix.
            ("api.example.com", "/v1", Some("v1")),
            ("api.example.com", "/v1/users", Some("v1")),
            ("api.example.com", "/v1?a=b", Some("v1")),
            ("api.example.com", "/v10", Some("api")),
            // Virtual hosts: case-insensitive exact, port kept then stripped.
            ("API.Example.COM", "/x", Some("api")),
            ("api.example.com:8443", "/x", Some("api")),
            ("api.example.com:9999", "/x", Some("api")),
            // Suffix wildcards, longest first; the wildcard needs one character.
            ("www.example.com", "/x", Some("wild")),
            ("a.eu.example.com", "/x", Some("eu")),
            ("www.example.com:80", "/x", Some("wild")),
            // Prefix wildcard.
            ("internal.corp", "/x", Some("pre")),
            // Default vhost; no route there -> None (404).
            ("other.org", "/only/this", Some("def")),
            ("other.org", "/x", None),
            ("example.com", "/x", None),
        ];
        for (host, pq, want) in cases {
            assert_eq!(cluster_of(&t, host, pq).as_deref(), *want, "{host} {pq}");
        }
        assert_eq!(t.virtual_host("example.com").unwrap().name, "def");
        assert_eq!(t.virtual_host("[::1]:80").unwrap().name, "def");
    }

    #[test]
    fn prefix_rewrite_results() {
        let t = table();
        let rw = |pq: &str| {
            let path = pq.split('?').next().unwrap();
            t.route("api.example.com", path, pq)
                .and_then(|r| r.rewrite(pq))
        };
        assert_eq!(rw("/service/abc?q=1").as_deref(), Some("/svc/abc?q=1"));
        assert_eq!(rw("/v1/users").as_deref(), Some("//users"));
        assert_eq!(rw("/v1").as_deref(), Some("/"));
        assert_eq!(rw("/service/1"), None);
    }

    #[test]
    fn strip_port_cases() {
        assert_eq!(strip_port("a.com:80"), Some("a.com"));
        assert_eq!(strip_port("a.com"), None);
        assert_eq!(strip_port("[::1]:80"), Some("[::1]"));
        assert_eq!(strip_port("::1"), None);
        assert_eq!(strip_port("a.com:"), None);
    }

    #[test]
    fn duplicate_domains_are_rejected() {
        let cm = ClusterManager::new(CancellationToken::new());
        let rc = RouteConfig {
            name: "rc".into(),
            virtual_hosts: vec![vh("a", &["x.com"], vec![]), vh("b", &["X.com"], vec![])],
        };
        let err = RouteTable::compile(&rc, |c| cm.slot(c)).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("route configuration rc: virtual host b: duplicate domain x.com"));
    }

    #[tokio::test(start_paused = true)]
    async fn route_manager_swaps_tables_in_slots() {
        let cm = ClusterManager::new(CancellationToken::new());
        let rm = Arc::new(RouteManager::default());
        let slot = rm.slot("rc");
        assert!(slot.load().is_none());
        let rc = RouteConfig {
            name: "rc".into(),
            virtual_hosts: vec![vh(
                "a",
                &["*"],
                vec![route(PathMatch::Prefix("/".into()), "c", None)],
            )],
        };
        rm.set(vec![rc.clone()], &cm).unwrap();
        let first = slot.load_full_for_test();
        // Unchanged: same table.
        rm.set(vec![rc], &cm).unwrap();
        assert!(Arc::ptr_eq(&first, &slot.load_full_for_test()));
        rm.set(vec![], &cm).unwrap();
        assert!(slot.load().is_none());
    }

    impl RouteSlot {
        fn load_full_for_test(&self) -> Arc<RouteTable> {
            self.current.load_full().unwrap()
        }
    }
}
