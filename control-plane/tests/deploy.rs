//! The systemd units in `deploy/systemd/` and the one README.md shows stay
//! the same, and both set the descriptor limit the binaries raise to; the
//! Kubernetes examples in `deploy/kubernetes/` only pass flags pylon-xds
//! has, and serve beyond loopback over TLS.

#![allow(clippy::unwrap_used)]

use std::path::Path;

/// The directives of a unit, without comments and blank lines.
fn directives(unit: &str) -> Vec<&str> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn read(relative: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(relative)).unwrap()
}

#[test]
fn the_readme_shows_the_shipped_pylon_xds_unit() {
    let readme = read("README.md");
    let start = readme
        .find("# /etc/systemd/system/pylon-xds.service")
        .expect("README shows the pylon-xds unit");
    let shown = &readme[start..];
    let shown = &shown[..shown.find("```").unwrap()];
    assert_eq!(
        directives(shown),
        directives(&read("deploy/systemd/pylon-xds.service"))
    );
}

#[test]
fn both_units_raise_the_descriptor_limit_and_keep_the_hardening() {
    for unit in ["pylon-xds.service", "pylon-proxy.service"] {
        let text = read(&format!("deploy/systemd/{unit}"));
        let d = directives(&text);
        for wanted in [
            "LimitNOFILE=1048576",
            "DynamicUser=yes",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadOnlyPaths=/etc/pylon",
            "Restart=on-failure",
        ] {
            assert!(d.contains(&wanted), "{unit} lacks {wanted}");
        }
    }
}

/// The containers' `args` of every Deployment in a manifest.
fn container_args(manifest: &str) -> Vec<Vec<String>> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(manifest) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if v["kind"].as_str() != Some("Deployment") {
            continue;
        }
        for c in v["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
        {
            let args = c["args"].as_sequence().unwrap();
            out.push(
                args.iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
            );
        }
    }
    out
}

#[test]
fn the_kubernetes_examples_pass_only_flags_pylon_xds_has() {
    for manifest in ["pylon-xds-etcd.yaml", "pylon-xds-configmap.yaml"] {
        let all = container_args(&read(&format!("deploy/kubernetes/{manifest}")));
        assert_eq!(all.len(), 1, "{manifest}: one pylon-xds container");
        for args in all {
            let help = std::process::Command::new(env!("CARGO_BIN_EXE_pylon-xds"))
                .args([args[0].as_str(), "--help"])
                .output()
                .unwrap();
            assert!(
                help.status.success(),
                "{manifest}: no subcommand {}",
                args[0]
            );
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in args.iter().filter(|a| a.starts_with("--")) {
                assert!(
                    help.contains(&format!("{flag} ")),
                    "{manifest}: {flag} is not a flag of `pylon-xds {}`",
                    args[0]
                );
            }
            // Beyond loopback, only over TLS.
            assert!(
                args.contains(&"--tls-cert".to_string()),
                "{manifest}: {args:?}"
            );
            assert!(!args.contains(&"--insecure".to_string()), "{manifest}");
        }
    }
    let etcd = container_args(&read("deploy/kubernetes/pylon-xds-etcd.yaml")).remove(0);
    let url = &etcd[etcd.iter().position(|a| a == "--etcd").unwrap() + 1];
    assert!(url.parse::<control_plane::etcd::EtcdUrl>().is_ok(), "{url}");
}
