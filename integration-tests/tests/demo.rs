//! `scripts/demo.sh` as a new user meets it when something is off: a part
//! that cannot start stops the whole demo loudly (it used to print "Pylon
//! demo is running" with pylon-xds dead and pylon-proxy subscribed to
//! whatever held port 18000), and a relative config path means the caller's
//! directory, not the repository's.
//!
//! Only failure paths run here: the working demo binds fixed ports (8000,
//! 9901, 18000, ...) that a test must not hold for long.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use integration_tests::{pylon_proxy, workspace_root};

/// The directory holding the built binaries, or `None` (skip; a failure under CI).
fn bin_dir() -> Option<PathBuf> {
    let proxy = pylon_proxy::binary_or_skip()?;
    let dir = proxy.parent()?.to_path_buf();
    for b in ["pylon-xds", "pylon-demo-backends"] {
        assert!(
            dir.join(b).is_file(),
            "{b} missing next to {}",
            proxy.display()
        );
    }
    Some(dir)
}

/// Runs the demo from `cwd` with `args`, using the built binaries; it must
/// end within 60 s.
fn demo(bin: &PathBuf, cwd: &std::path::Path, args: &[&str]) -> Output {
    let script = workspace_root().join("scripts/demo.sh");
    let mut child = Command::new(script)
        .args(args)
        .current_dir(cwd)
        .env("PYLON_BIN_DIR", bin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the demo did not stop by itself");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_part_that_cannot_start_stops_the_whole_demo() {
    let Some(bin) = bin_dir() else {
        return;
    };
    // Someone else holds the xDS port. (If another process already holds it,
    // the demo must fail just the same.)
    let _holder = TcpListener::bind("127.0.0.1:18000");
    let out = demo(&bin, &workspace_root(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stdout.contains("Pylon demo is running"), "{stdout}");
    assert!(
        stderr.contains("demo: pylon-xds did not start: it exited"),
        "{stderr}"
    );
    assert!(
        stderr.contains("binding xDS address 127.0.0.1:18000"),
        "{stderr}"
    );
    // What it had started is stopped: the demo backends no longer answer.
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect("127.0.0.1:8081").is_ok() {
        assert!(Instant::now() < end, "the demo backends are still up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_relative_config_path_is_the_callers() {
    let Some(bin) = bin_dir() else {
        return;
    };
    let elsewhere = tempfile::tempdir().unwrap();
    // `examples/front-proxy.yaml` exists in the repository, not here.
    let out = demo(&bin, elsewhere.path(), &["examples/front-proxy.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = elsewhere.path().join("examples/front-proxy.yaml");
    assert!(
        stderr.contains(&format!("demo: config file not found: {}", want.display())),
        "{stderr}"
    );
}
