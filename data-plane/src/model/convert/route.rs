//! `envoy.config.route.v3.RouteConfiguration` -> [`RouteConfig`] (RDS, and
//! an HTTP connection manager's inline `route_config`).

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, virtual_host, Route as PbRoute, RouteAction as PbRouteAction,
    RouteConfiguration, RouteMatch, VirtualHost as PbVirtualHost,
};

use super::{reject_set, required_name, retry, timeout_or_disabled, Check};
use crate::model::{NackError, PathMatch, Route, RouteAction, RouteConfig, VirtualHost};

/// Envoy's default route `timeout`.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

impl TryFrom<&RouteConfiguration> for RouteConfig {
    type Error = NackError;

    fn try_from(rc: &RouteConfiguration) -> Result<Self, NackError> {
        required_name(&rc.name)
            .and_then(|()| route_config("", rc))
            .map_err(|message| NackError {
                kind: Some(pylon::ResourceType::Route),
                name: rc.name.clone(),
                message,
            })
    }
}

/// Converts a route configuration; `p` prefixes field paths in messages
/// (`http_connection_manager.route_config.` when inline).
pub(super) fn route_config(p: &str, rc: &RouteConfiguration) -> Check<RouteConfig> {
    let RouteConfiguration {
        name,
        virtual_hosts,
        vhds,
        internal_only_headers,
        response_headers_to_add,
        response_headers_to_remove,
        request_headers_to_add,
        request_headers_to_remove,
        most_specific_header_mutations_wins,
        validate_clusters,
        max_direct_response_body_size_bytes,
        cluster_specifier_plugins,
        request_mirror_policies,
        ignore_port_in_host_matching,
        vhost_header,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        // Read by filters pylon-proxy does not have.
        metadata: _,
        route_specifiers,
    } = rc;
    reject_set!(p;
        vhds,
        internal_only_headers,
        response_headers_to_add,
        response_headers_to_remove,
        request_headers_to_add,
        request_headers_to_remove,
        most_specific_header_mutations_wins,
        max_direct_response_body_size_bytes,
        cluster_specifier_plugins,
        request_mirror_policies,
        ignore_port_in_host_matching,
        vhost_header,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        route_specifiers,
    );
    // With validate_clusters, Envoy rejects routes to unknown clusters;
    // pylon-proxy answers 503 for them, which is the `false` behaviour.
    if validate_clusters.as_ref().is_some_and(|b| b.value) {
        return Err(format!("{p}validate_clusters true is not supported"));
    }
    let virtual_hosts = virtual_hosts
        .iter()
        .enumerate()
        .map(|(i, vh)| virtual_host(&format!("{p}virtual_hosts[{i}]."), vh))
        .collect::<Check<Vec<_>>>()?;
    Ok(RouteConfig {
        name: name.clone(),
        virtual_hosts,
    })
}

fn virtual_host(p: &str, vh: &PbVirtualHost) -> Check<VirtualHost> {
    let PbVirtualHost {
        name,
        domains,
        routes,
        matcher,
        require_tls,
        // Per-virtual-cluster stats: observability only.
        virtual_clusters: _,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        // Read by filters pylon-proxy does not have.
        metadata: _,
        route_specifiers,
    } = vh;
    reject_set!(p;
        matcher,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        request_body_buffer_limit,
        request_mirror_policies,
        route_specifiers,
    );
    if *require_tls != virtual_host::TlsRequirementType::None as i32 {
        return Err(format!("{p}require_tls is not supported"));
    }
    if name.is_empty() {
        return Err(format!("{p}name is required"));
    }
    if domains.is_empty() {
        return Err(format!("{p}domains: at least one domain is required"));
    }
    let routes = routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(&format!("{p}routes[{i}]."), r))
        .collect::<Check<Vec<_>>>()?;
    Ok(VirtualHost {
        name: name.clone(),
        domains: domains.clone(),
        routes,
        retry_policy: retry_policy
            .as_ref()
            .map(|r| retry::retry_policy(&format!("{p}retry_policy."), r))
            .transpose()?,
        per_request_buffer_limit_bytes: per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
    })
}

fn route(p: &str, r: &PbRoute) -> Check<Route> {
    let PbRoute {
        // Observability only: the route's name, stats and tracing.
        name: _,
        stat_prefix: _,
        decorator: _,
        tracing: _,
        // Read by filters pylon-proxy does not have.
        metadata: _,
        r#match,
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        route_specifiers,
        action,
    } = r;
    reject_set!(p;
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        request_body_buffer_limit,
        route_specifiers,
    );
    let path = match r#match {
        None => return Err(format!("{p}match is required")),
        Some(m) => route_match(&format!("{p}match."), m)?,
    };
    let action = match action {
        None => return Err(format!("{p}route is required")),
        Some(route::Action::Route(a)) => {
            let mut a = route_action(&format!("{p}route."), a)?;
            a.per_request_buffer_limit_bytes =
                per_request_buffer_limit_bytes.as_ref().map(|v| v.value);
            a
        }
        Some(route::Action::Redirect(_)) => return Err(format!("{p}redirect is not supported")),
        Some(route::Action::DirectResponse(_)) => {
            return Err(format!("{p}direct_response is not supported"))
        }
        Some(route::Action::FilterAction(_)) => {
            return Err(format!("{p}filter_action is not supported"))
        }
        Some(route::Action::NonForwardingAction(_)) => {
            return Err(format!("{p}non_forwarding_action is not supported"))
        }
    };
    Ok(Route { path, action })
}

fn route_match(p: &str, m: &RouteMatch) -> Check<PathMatch> {
    let RouteMatch {
        case_sensitive,
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
        path_specifier,
    } = m;
    reject_set!(p;
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
    );
    // Matching is case sensitive, Envoy's default.
    if case_sensitive.as_ref().is_some_and(|b| !b.value) {
        return Err(format!("{p}case_sensitive false is not supported"));
    }
    use route_match::PathSpecifier as S;
    match path_specifier {
        Some(S::Prefix(prefix)) => Ok(PathMatch::Prefix(prefix.clone())),
        Some(S::Path(path)) => Ok(PathMatch::Exact(path.clone())),
        Some(S::PathSeparatedPrefix(prefix)) => Ok(PathMatch::SeparatedPrefix(prefix.clone())),
        Some(S::SafeRegex(_)) => Err(format!("{p}safe_regex is not supported")),
        Some(S::ConnectMatcher(_)) => Err(format!("{p}connect_matcher is not supported")),
        Some(S::PathMatchPolicy(_)) => Err(format!("{p}path_match_policy is not supported")),
        None => Err(format!(
            "{p}prefix, path or path_separated_prefix is required"
        )),
    }
}

fn route_action(p: &str, a: &PbRouteAction) -> Check<RouteAction> {
    let PbRouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        timeout,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = a;
    reject_set!(p;
        cluster_not_found_response_code,
        metadata_match,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
    );
    use route_action::{ClusterSpecifier as C, HostRewriteSpecifier as H};
    let cluster = match cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => c.clone(),
        Some(C::WeightedClusters(_)) => {
            return Err(format!("{p}weighted_clusters is not supported"))
        }
        Some(C::ClusterHeader(_)) => return Err(format!("{p}cluster_header is not supported")),
        Some(C::ClusterSpecifierPlugin(_)) | Some(C::InlineClusterSpecifierPlugin(_)) => {
            return Err(format!("{p}cluster_specifier_plugin is not supported"))
        }
        _ => return Err(format!("{p}cluster is required")),
    };
    if let Some(h) = host_rewrite_specifier {
        let field = match h {
            H::HostRewriteLiteral(_) => "host_rewrite_literal",
            H::AutoHostRewrite(_) => "auto_host_rewrite",
            H::HostRewriteHeader(_) => "host_rewrite_header",
            H::HostRewritePathRegex(_) => "host_rewrite_path_regex",
            H::HostRewrite(_) => "host_rewrite",
        };
        return Err(format!("{p}{field} is not supported"));
    }
    Ok(RouteAction {
        cluster,
        prefix_rewrite: (!prefix_rewrite.is_empty()).then(|| prefix_rewrite.clone()),
        timeout: timeout_or_disabled(p, "timeout", timeout, DEFAULT_ROUTE_TIMEOUT)?,
        retry_policy: retry_policy
            .as_ref()
            .map(|r| retry::retry_policy(&format!("{p}retry_policy."), r))
            .transpose()?,
        per_request_buffer_limit_bytes: None,
    })
}
