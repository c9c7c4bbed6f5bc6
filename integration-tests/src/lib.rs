//! Test harness for end-to-end scenarios: pylon-xds driving a data plane,
//! either a real Envoy or pylon-proxy (`dataplane`), over SotW or delta ADS.
//!
//! Owns everything a scenario needs besides the code under test: finding and
//! running external tools (Envoy, pylon-proxy, kubectl, dnsmasq, proxyless gRPC clients
//! and their backends, an etcd cluster and pylon-xds replicas serving from it), an admin API client for both proxies, in-process
//! backends, a small HTTP client and a traffic loop, a config builder for
//! pylon-xds YAML, and `eventually`-style assertions. It owns no production
//! logic: the control plane is used only through its public API
//! (`control_plane::serve`, `control_plane::bootstrap`), and the data plane
//! only as a process.
//!
//! Tools are found at run time. A missing tool skips the test with a loud
//! message, except under `CI=true`, where it is a failure ([`missing_tool`]).

pub mod admin;
pub mod backends;
pub mod config;
pub mod dataplane;
pub mod dnsmasq;
pub mod envoy;
pub mod etcd;
pub mod eventually;
pub mod grpc_clients;
pub mod http;
pub mod interop;
pub mod kubectl;
pub mod logs;
pub mod ports;
pub mod procfs;
pub mod pylon;
pub mod pylon_proxy;
pub mod replica;
pub mod scenario;
pub mod tls;
pub mod traffic;

use std::path::PathBuf;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Whether we run under CI (`CI=true`), where a missing tool must fail the test.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Reports a missing external tool: panics under CI, otherwise prints a loud
/// skip notice and returns `None` so the caller can return early.
///
/// Usage: `let Some(envoy) = envoy::binary().or_else(|| missing_tool("envoy", hint)) else { return };`
pub fn missing_tool<T>(tool: &str, hint: &str) -> Option<T> {
    report_missing(tool, hint, in_ci())
}

fn report_missing<T>(tool: &str, hint: &str, ci: bool) -> Option<T> {
    if ci {
        panic!("required tool `{tool}` not found (CI=true makes this a failure): {hint}");
    }
    eprintln!(
        "\n*** SKIPPING: required tool `{tool}` not found: {hint}\n\
         *** (set CI=true to make this a failure; scripts/test.sh installs it)\n"
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_skips_outside_ci() {
        assert_eq!(report_missing::<()>("envoy", "hint", false), None);
    }

    #[test]
    #[should_panic(expected = "required tool `kubectl` not found (CI=true")]
    fn a_missing_tool_fails_under_ci() {
        report_missing::<()>("kubectl", "hint", true);
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root()
            .join("integration-tests/Cargo.toml")
            .is_file());
    }
}
