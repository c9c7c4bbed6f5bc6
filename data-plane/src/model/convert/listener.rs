//! `envoy.config.listener.v3.Listener` -> [`Listener`]: one filter chain,
//! one network filter (tcp_proxy, or the HTTP connection manager with only
//! the router).
//!
//! Network and HTTP filters are recognised by the `@type` of their
//! `typed_config`, as Envoy does, so legacy names (`envoy.tcp_proxy`) work;
//! messages name the filter by its configured name.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    http_protocol_options::HeadersWithUnderscoresAction, HttpProtocolOptions,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, FilterChainMatch, Listener as PbListener,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy, TcpProxy as PbTcpProxy,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use pylon::type_url;

use super::route::route_config;
use super::{
    ads_source, duration, enum_name, reject_set, required_name, socket_addr, timeout_or_disabled,
    unset_or_empty, Check,
};
use crate::model::{
    HttpLimits, HttpManager, Listener, ListenerKind, NackError, RouteSource, TcpProxy,
};

/// Envoy's default tcp_proxy `idle_timeout`.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl TryFrom<&PbListener> for Listener {
    type Error = NackError;

    fn try_from(l: &PbListener) -> Result<Self, NackError> {
        listener(l).map_err(|message| NackError {
            kind: Some(pylon::ResourceType::Listener),
            name: l.name.clone(),
            message,
        })
    }
}

fn listener(l: &PbListener) -> Check<Listener> {
    let PbListener {
        name,
        address,
        additional_addresses,
        // Observability only.
        stat_prefix: _,
        stats_matcher: _,
        filter_chains,
        fcds_config,
        filter_chain_matcher,
        use_original_dst,
        default_filter_chain,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        // Read by filters pylon-proxy does not have.
        metadata: _,
        deprecated_v1,
        drain_type,
        listener_filters,
        // Only meaningful with listener filters, which are rejected.
        listener_filters_timeout: _,
        continue_on_listener_filters_timeout: _,
        transparent,
        freebind,
        socket_options,
        tcp_fast_open_queue_length,
        // A hint for tracing and stats: observability only.
        traffic_direction: _,
        udp_listener_config,
        api_listener,
        connection_balance_config,
        reuse_port,
        enable_reuse_port,
        access_log,
        tcp_backlog_size,
        max_connections_to_accept_per_socket_event,
        bind_to_port,
        enable_mptcp,
        // pylon-proxy has neither a global connection limit nor an overload
        // manager, so opting out of them changes nothing.
        ignore_global_conn_limit: _,
        bypass_overload_manager: _,
        tcp_keepalive,
        listener_specifier,
    } = l;
    required_name(name)?;
    reject_set!("";
        additional_addresses,
        fcds_config,
        filter_chain_matcher,
        use_original_dst,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        deprecated_v1,
        drain_type,
        listener_filters,
        transparent,
        freebind,
        socket_options,
        tcp_fast_open_queue_length,
        udp_listener_config,
        api_listener,
        connection_balance_config,
        reuse_port,
        enable_reuse_port,
        access_log,
        tcp_backlog_size,
        max_connections_to_accept_per_socket_event,
        enable_mptcp,
        tcp_keepalive,
        listener_specifier,
    );
    if bind_to_port.as_ref().is_some_and(|b| !b.value) {
        return Err("bind_to_port false is not supported".to_string());
    }
    let addr = socket_addr("", "address", address)?;

    let mut chains: Vec<(String, &FilterChain)> = filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]."), c))
        .collect();
    if let Some(c) = default_filter_chain {
        chains.push(("default_filter_chain.".to_string(), c));
    }
    let (p, chain) = match chains.as_slice() {
        [] => return Err("filter_chains: a filter chain is required".to_string()),
        [one] => one,
        _ => return Err("filter_chains: only one filter chain is supported".to_string()),
    };
    let kind = filter_chain(p, chain)?;
    Ok(Listener {
        name: name.clone(),
        addr,
        kind,
    })
}

fn filter_chain(p: &str, chain: &FilterChain) -> Check<ListenerKind> {
    let FilterChain {
        filter_chain_match,
        filters,
        use_proxy_proto,
        // Read by filters pylon-proxy does not have.
        metadata: _,
        transport_socket,
        transport_socket_connect_timeout,
        // Observability only.
        name: _,
    } = chain;
    reject_set!(p; transport_socket, transport_socket_connect_timeout, use_proxy_proto);
    // A match that matches everything is as good as none.
    if filter_chain_match
        .as_ref()
        .is_some_and(|m| *m != FilterChainMatch::default())
    {
        return Err(format!("{p}filter_chain_match is not supported"));
    }
    match filters.as_slice() {
        [] => Err(format!("{p}filters: a network filter is required")),
        [f] => network_filter(f),
        _ => Err(format!("{p}filters: only one network filter is supported")),
    }
}

fn network_filter(f: &Filter) -> Check<ListenerKind> {
    let Filter { name, config_type } = f;
    let any = match config_type {
        None => return Err(format!("network filter {name}: typed_config is required")),
        Some(filter::ConfigType::ConfigDiscovery(_)) => {
            return Err(format!(
                "network filter {name}: config_discovery is not supported"
            ))
        }
        Some(filter::ConfigType::TypedConfig(any)) => any,
    };
    match any.type_url.as_str() {
        type_url::TCP_PROXY => {
            tcp_proxy(&decode_any::<PbTcpProxy>(name, any)?).map(ListenerKind::Tcp)
        }
        type_url::HTTP_CONNECTION_MANAGER => {
            http_manager(&decode_any::<HttpConnectionManager>(name, any)?).map(ListenerKind::Http)
        }
        _ => Err(format!("network filter {name} is not supported")),
    }
}

fn decode_any<M: Message + Default>(filter: &str, any: &Any) -> Check<M> {
    M::decode(any.value.as_slice())
        .map_err(|e| format!("filter {filter}: typed_config does not decode: {e}"))
}

fn tcp_proxy(t: &PbTcpProxy) -> Check<TcpProxy> {
    let PbTcpProxy {
        stat_prefix,
        on_demand,
        metadata_match,
        idle_timeout,
        downstream_idle_timeout,
        upstream_idle_timeout,
        access_log,
        max_connect_attempts,
        backoff_options,
        hash_policy,
        tunneling_config,
        max_downstream_connection_duration,
        max_downstream_connection_duration_jitter_percentage,
        access_log_flush_interval,
        flush_access_log_on_connected,
        access_log_options,
        proxy_protocol_tlvs,
        proxy_protocol_tlv_merge_policy,
        upstream_connect_mode,
        max_early_data_bytes,
        check_drain_close,
        cluster_specifier,
    } = t;
    let p = "tcp_proxy.";
    reject_set!(p;
        on_demand,
        metadata_match,
        downstream_idle_timeout,
        upstream_idle_timeout,
        access_log,
        backoff_options,
        hash_policy,
        tunneling_config,
        max_downstream_connection_duration,
        max_downstream_connection_duration_jitter_percentage,
        access_log_flush_interval,
        flush_access_log_on_connected,
        access_log_options,
        proxy_protocol_tlvs,
        proxy_protocol_tlv_merge_policy,
        upstream_connect_mode,
        max_early_data_bytes,
        check_drain_close,
    );
    let cluster = match cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) if !c.is_empty() => c.clone(),
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(_)) => {
            return Err(format!("{p}weighted_clusters is not supported"))
        }
        _ => return Err(format!("{p}cluster is required")),
    };
    let max_connect_attempts = match max_connect_attempts {
        None => 1,
        Some(v) if v.value == 0 => {
            return Err(format!("{p}max_connect_attempts must be at least 1"))
        }
        Some(v) => v.value,
    };
    Ok(TcpProxy {
        stat_prefix: stat_prefix.clone(),
        cluster,
        max_connect_attempts,
        idle_timeout: timeout_or_disabled(
            p,
            "idle_timeout",
            idle_timeout,
            DEFAULT_TCP_IDLE_TIMEOUT,
        )?,
    })
}

fn http_manager(h: &HttpConnectionManager) -> Check<HttpManager> {
    let HttpConnectionManager {
        codec_type,
        stat_prefix,
        http_filters,
        add_user_agent,
        tracing,
        common_http_protocol_options,
        http1_safe_max_connection_duration,
        http_protocol_options,
        http2_protocol_options,
        http3_protocol_options,
        server_name,
        server_header_transformation,
        scheme_header_transformation,
        max_request_headers_kb,
        stream_idle_timeout,
        stream_flush_timeout,
        request_timeout,
        request_headers_timeout,
        drain_timeout,
        drain_timeout_jitter,
        delayed_close_timeout,
        access_log,
        access_log_flush_interval,
        flush_access_log_on_new_request,
        access_log_options,
        use_remote_address,
        xff_num_trusted_hops,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config,
        skip_xff_append,
        via,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        forward_client_cert_details,
        set_current_client_cert_details,
        forward_client_cert_matcher,
        proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs,
        normalize_path,
        merge_slashes,
        path_with_escaped_slashes_action,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port,
        stream_error_on_invalid_http_message,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        append_local_overload,
        add_proxy_protocol_connection_state,
        forward_proto_config,
        route_specifier,
        strip_port_mode,
    } = h;
    let p = "http_connection_manager.";
    reject_set!(p;
        add_user_agent,
        tracing,
        http1_safe_max_connection_duration,
        server_name,
        server_header_transformation,
        scheme_header_transformation,
        stream_flush_timeout,
        request_timeout,
        drain_timeout,
        drain_timeout_jitter,
        delayed_close_timeout,
        access_log,
        access_log_flush_interval,
        flush_access_log_on_new_request,
        access_log_options,
        use_remote_address,
        xff_num_trusted_hops,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config,
        skip_xff_append,
        via,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        forward_client_cert_details,
        set_current_client_cert_details,
        forward_client_cert_matcher,
        proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs,
        path_with_escaped_slashes_action,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port,
        stream_error_on_invalid_http_message,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        append_local_overload,
        add_proxy_protocol_connection_state,
        forward_proto_config,
        strip_port_mode,
    );
    let (idle_timeout, max_headers_count) =
        protocol_options(p, common_http_protocol_options.as_ref())?;
    unset_or_empty(p, "http_protocol_options", http_protocol_options)?;
    unset_or_empty(p, "http2_protocol_options", http2_protocol_options)?;
    unset_or_empty(p, "http3_protocol_options", http3_protocol_options)?;
    match CodecType::try_from(*codec_type) {
        Ok(CodecType::Auto | CodecType::Http1 | CodecType::Http2) => {}
        _ => {
            return Err(format!(
                "{p}codec_type {} is not supported",
                enum_name(*codec_type, |v| CodecType::try_from(v)
                    .ok()
                    .map(|c| c.as_str_name()))
            ))
        }
    }
    router_only(http_filters)?;
    let routes = match route_specifier {
        None => return Err(format!("{p}rds or route_config is required")),
        Some(RouteSpecifier::Rds(Rds {
            config_source,
            route_config_name,
        })) => {
            ads_source(&format!("{p}rds."), "config_source", config_source)?;
            if route_config_name.is_empty() {
                return Err(format!("{p}rds.route_config_name is required"));
            }
            RouteSource::Rds(route_config_name.clone())
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            RouteSource::Inline(route_config(&format!("{p}route_config."), rc)?)
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(format!("{p}scoped_routes is not supported"))
        }
    };
    let defaults = HttpLimits::default();
    let max_request_headers_kb = match max_request_headers_kb {
        None => defaults.max_request_headers_kb,
        // Envoy's own bounds.
        Some(v) if (1..=8192).contains(&v.value) => v.value,
        Some(v) => {
            return Err(format!(
                "{p}max_request_headers_kb {} is out of range 1..=8192",
                v.value
            ))
        }
    };
    let limits = HttpLimits {
        // Unset and 0 both mean "disabled" to Envoy; pylon-proxy applies its
        // built-in bound then (see `listener::http`).
        request_headers_timeout: duration(p, "request_headers_timeout", request_headers_timeout)?
            .filter(|d| !d.is_zero()),
        stream_idle_timeout: timeout_or_disabled(
            p,
            "stream_idle_timeout",
            stream_idle_timeout,
            defaults.stream_idle_timeout.unwrap_or_default(),
        )?,
        idle_timeout: match idle_timeout {
            None => defaults.idle_timeout,
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        },
        max_request_headers_kb,
        max_headers_count: max_headers_count.unwrap_or(defaults.max_headers_count),
    };
    Ok(HttpManager {
        stat_prefix: stat_prefix.clone(),
        routes,
        limits,
        // Envoy's default (false) unless the runtime key says otherwise;
        // pylon-proxy has no runtime.
        normalize_path: normalize_path.as_ref().is_some_and(|b| b.value),
        merge_slashes: *merge_slashes,
    })
}

/// `common_http_protocol_options` of the connection manager: its
/// `idle_timeout` (set: `Some`, 0 meaning disabled) and `max_headers_count`.
fn protocol_options(
    p: &str,
    o: Option<&HttpProtocolOptions>,
) -> Check<(Option<Duration>, Option<u32>)> {
    let Some(o) = o else {
        return Ok((None, None));
    };
    let HttpProtocolOptions {
        idle_timeout,
        max_connection_duration,
        max_connection_duration_jitter,
        max_headers_count,
        max_response_headers_kb,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    } = o;
    let p = format!("{p}common_http_protocol_options.");
    reject_set!(&p;
        max_connection_duration,
        max_connection_duration_jitter,
        max_response_headers_kb,
        max_stream_duration,
        max_requests_per_connection,
    );
    if *headers_with_underscores_action != HeadersWithUnderscoresAction::Allow as i32 {
        return Err(format!(
            "{p}headers_with_underscores_action {} is not supported",
            enum_name(*headers_with_underscores_action, |v| {
                HeadersWithUnderscoresAction::try_from(v)
                    .ok()
                    .map(|a| a.as_str_name())
            })
        ));
    }
    let max_headers_count = match max_headers_count {
        None => None,
        Some(v) if v.value == 0 => return Err(format!("{p}max_headers_count must be at least 1")),
        Some(v) => Some(v.value),
    };
    Ok((
        duration(&p, "idle_timeout", idle_timeout)?,
        max_headers_count,
    ))
}

/// The HTTP filters must be exactly the router, with its default config.
fn router_only(filters: &[HttpFilter]) -> Check<()> {
    let mut routers = 0;
    for f in filters {
        let HttpFilter {
            name,
            // Optional or not, an unknown filter is rejected below.
            is_optional: _,
            disabled,
            config_type,
        } = f;
        let config = match config_type {
            None if name == type_url::ROUTER_FILTER => Router::default(),
            Some(http_filter::ConfigType::TypedConfig(any)) if any.type_url == type_url::ROUTER => {
                decode_any::<Router>(name, any)?
            }
            Some(http_filter::ConfigType::ConfigDiscovery(_))
                if name == type_url::ROUTER_FILTER =>
            {
                return Err(format!(
                    "http filter {name}: config_discovery is not supported"
                ))
            }
            _ => return Err(format!("http filter {name} is not supported")),
        };
        if *disabled {
            return Err(format!("http filter {name}: disabled is not supported"));
        }
        router(name, &config)?;
        routers += 1;
    }
    match routers {
        0 => Err(format!(
            "http_connection_manager.http_filters: the router ({}) is required",
            type_url::ROUTER_FILTER
        )),
        1 => Ok(()),
        _ => Err("http_connection_manager.http_filters: only one router is supported".to_string()),
    }
}

fn router(name: &str, r: &Router) -> Check<()> {
    let Router {
        // Stats and tracing only.
        dynamic_stats: _,
        start_child_span: _,
        suppress_grpc_request_failure_code_stats: _,
        upstream_log,
        upstream_log_options,
        suppress_envoy_headers,
        strict_check_headers,
        respect_expected_rq_timeout,
        upstream_http_filters,
        reject_connect_request_early_data,
    } = r;
    let p = format!("http filter {name}: ");
    reject_set!(&p;
        upstream_log,
        upstream_log_options,
        suppress_envoy_headers,
        strict_check_headers,
        respect_expected_rq_timeout,
        upstream_http_filters,
        reject_connect_request_early_data,
    );
    Ok(())
}
