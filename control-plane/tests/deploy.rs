//! The systemd units in `deploy/systemd/` and the one README.md shows stay
//! the same, and both set the descriptor limit the binaries raise to.

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
