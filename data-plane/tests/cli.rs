//! `pylon-proxy`'s command line as the seed guides type it: Envoy's common
//! flags (`--log-level`/`-l`, `--service-cluster`, `--service-node`,
//! `--concurrency`, `--base-id`, `--drain-time-s`), host names for `--xds`
//! and `--admin`, and bootstrap errors written `file:line:column: path:
//! message` as pylon-xds writes config errors.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use std::io::{Read as _, Write as _};

const BIN: &str = env!("CARGO_BIN_EXE_pylon-proxy");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A bootstrap with one static TCP listener on loopback and no admin block.
fn bootstrap(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("envoy.yaml");
    std::fs::write(
        &path,
        format!(
            "static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: l
          cluster: c
  clusters:
  - name: c
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}
",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    path
}

/// A running pylon-proxy, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` on `admin` over HTTP/1.0, once it answers (within 15 s).
fn admin_get(admin: SocketAddr, path: &str, child: &mut Child) -> String {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(child.try_wait().unwrap().is_none(), "pylon-proxy exited");
        if let Ok(mut s) = TcpStream::connect(admin) {
            write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
            let mut body = String::new();
            if s.read_to_string(&mut body).is_ok() && !body.is_empty() {
                return body;
            }
        }
        assert!(Instant::now() < end, "admin {admin} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(args: &[&str]) -> Running {
    Running(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// The seeds' command lines (`envoy -c envoy.yaml --log-level info`,
/// `envoy -c /etc/front-envoy.yaml --service-cluster front-proxy`) and the
/// other flags operators carry over from Envoy start pylon-proxy, with
/// Envoy's meaning.
#[test]
fn envoys_common_flags_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bootstrap(dir.path());
    let cfg = cfg.to_str().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut p = start(&[
        "-c",
        cfg,
        "--log-level",
        "info",
        "--service-cluster",
        "front-proxy",
        "--service-node",
        "front-1",
        "--concurrency",
        "1",
        "--base-id",
        "7",
        "--drain-time-s",
        "1",
        "--admin",
        &admin,
    ]);
    let info = admin_get(admin.parse().unwrap(), "/server_info", &mut p.0);
    let body = &info[info.find("\r\n\r\n").unwrap() + 4..];
    let info: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(info["node"]["cluster"], "front-proxy", "{info}");
    assert_eq!(info["node"]["id"], "front-1", "{info}");
    assert_eq!(info["command_line_options"]["concurrency"], 1, "{info}");
    drop(p);

    for level in ["-l", "--log-level"] {
        for value in ["trace", "debug", "warning", "error", "critical", "off"] {
            let admin = format!("127.0.0.1:{}", free_port());
            let mut p = start(&["-c", cfg, level, value, "--admin", &admin]);
            admin_get(admin.parse().unwrap(), "/ready", &mut p.0);
        }
    }
    let out = run(&["-c", cfg, "--log-level", "loud"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown log level `loud`"), "{stderr}");
}

/// `--xds` and `--admin` take host names, resolved at start-up.
#[test]
fn host_names_are_accepted_for_xds_and_admin() {
    let admin_port = free_port();
    let admin = format!("localhost:{admin_port}");
    // Nothing listens on the xDS port: the proxy starts and keeps retrying.
    let xds = format!("localhost:{}", free_port());
    let mut p = start(&["--xds", &xds, "--node-id", "n", "--admin", &admin]);
    let resolved = admin.to_socket_addrs().unwrap().next().unwrap();
    let ready = admin_get(resolved, "/ready", &mut p.0);
    assert!(ready.contains("PRE_INITIALIZING"), "{ready}");

    let out = run(&["--xds", "no-such-host.invalid:1", "--node-id", "n"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--xds no-such-host.invalid:1"), "{stderr}");
}

/// A bootstrap error names the file, the line and column of the offending
/// key and its path.
#[test]
fn bootstrap_errors_have_the_right_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("envoy.yaml");
    std::fs::write(
        &cfg,
        "admin:\n  address:\n    socket_address: {address: 127.0.0.1, port_value: 9901}\n  bogus: 1\n",
    )
    .unwrap();
    let out = run(&["-c", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:4:3: admin.bogus: unrecognized field name 'bogus'",
            cfg.display()
        )),
        "{stderr}"
    );
}
