//! The `pylon-xds` binary as an operator uses it: `validate`, `bootstrap`,
//! `serve` (with file edits, SIGHUP and SIGTERM) and `status`.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pylon-xds");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Polls `f` until it returns `Some` or `deadline` passes.
fn eventually<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn validate_accepts_every_example() {
    let mut files: Vec<String> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "examples missing: {files:?}");
    let args: Vec<&str> = std::iter::once("validate")
        .chain(files.iter().map(String::as_str))
        .collect();
    let out = run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches(": ok, version ").count(),
        files.len(),
        "{stdout}"
    );
}

#[test]
fn validate_prints_every_error_with_position_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "clusters:\n  - name: a\n    endpoints: [127.0.0.1:7001]\n  - name: a\n    endpoints: [127.0.0.1:7002]\nlisteners:\n  - name: l\n    address: 127.0.0.1:6443\n    tcp_proxy: { cluster: missing }\n",
    )
    .unwrap();
    let out = run(&["validate", f.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = f.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:4:")),
        "duplicate cluster not located: {stderr}"
    );
    assert!(stderr.contains("clusters[1].name"), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:9:")),
        "missing cluster not located: {stderr}"
    );
    assert!(stderr.contains("missing"), "{stderr}");

    std::fs::write(&f, "clusters:\n  - name: a\n    conect_timeout: 5s\n").unwrap();
    let out = run(&["validate", f.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains(&format!("{file}:3:5")), "{stderr}");
    assert!(stderr.contains("conect_timeout"), "{stderr}");

    let out = run(&["validate", dir.path().join("absent.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bootstrap_prints_an_ads_bootstrap() {
    let out = run(&[
        "bootstrap",
        "--node-id",
        "edge-1",
        "--xds",
        "127.0.0.1:18123",
        "--delta",
    ]);
    assert!(out.status.success());
    let y = String::from_utf8_lossy(&out.stdout);
    assert!(y.contains("id: \"edge-1\""), "{y}");
    assert!(y.contains("api_type: DELTA_GRPC"), "{y}");
    assert!(y.contains("port_value: 18123"), "{y}");
    let out = run(&["bootstrap", "--node-id", "edge-1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("api_type: GRPC"));
}

#[test]
fn serve_reloads_reports_errors_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pylon.yaml");
    std::fs::copy(examples().join("kube-apiserver.yaml"), &cfg).unwrap();
    let (xds, admin) = (free_addr(), free_addr());
    let log_path = dir.path().join("pylon-xds.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--debounce-ms",
            "20",
        ])
        .args(["--listen", &xds.to_string(), "--admin", &admin.to_string()])
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    let admin_s = admin.to_string();
    let status = |extra: &[&str]| {
        let mut args = vec!["status", "--admin", admin_s.as_str()];
        args.extend_from_slice(extra);
        run(&args)
    };
    let first = eventually(
        Duration::from_secs(20),
        "pylon-xds to answer status",
        || {
            let out = status(&["--json"]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    let v1: serde_json::Value = serde_json::from_str(&first).unwrap();
    let version1 = v1["version"].as_str().unwrap().to_string();
    assert_eq!(v1["resources"]["clusters"], 1);

    // A broken edit: the status shows it, exits 1, and the version stays.
    std::fs::write(
        &cfg,
        "clusters:\n  - name: k8s-api\n    endpoints: [127.0.0.1:99999]\n",
    )
    .unwrap();
    // `fs::write` truncates, then writes: a reload may land in between and
    // report the empty file first. Wait for the error about the content.
    let table = eventually(Duration::from_secs(10), "the reload error", || {
        let out = status(&[]);
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code() == Some(1) && s.contains("pylon.yaml:3:")).then_some(s)
    });
    assert!(table.contains("reload:   FAILED"), "{table}");
    assert!(table.contains("99999"), "{table}");
    assert!(table.contains(&version1), "{table}");

    // Fixed: a new version, no error.
    std::fs::write(
        &cfg,
        "clusters:\n  - name: k8s-api\n    endpoints: [127.0.0.1:7001]\n",
    )
    .unwrap();
    let fixed = eventually(Duration::from_secs(10), "the fixed config", || {
        let out = status(&["--json"]);
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !s.contains(&version1)).then_some(s)
    });
    let v2: serde_json::Value = serde_json::from_str(&fixed).unwrap();
    assert!(v2["last_reload_error"].is_null());
    assert_eq!(v2["resources"]["listeners"], 0);

    // SIGHUP reloads too: the log records the requested reload.
    let read_log = || std::fs::read_to_string(&log_path).unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    eventually(
        Duration::from_secs(10),
        "the SIGHUP reload in the log",
        || read_log().contains("reload requested").then_some(()),
    );
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = eventually(Duration::from_secs(10), "exit on SIGTERM", || {
        child.try_wait().unwrap()
    });
    assert!(out.success(), "exit status {out:?}");
    let log = read_log();
    assert!(log.contains("reload requested"), "{log}");
    assert!(
        log.contains("\"level\":\"ERROR\""),
        "JSON logs expected: {log}"
    );
}
