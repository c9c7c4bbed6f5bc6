//! The `pylon-xds` binary as an operator uses it: `validate`, `bootstrap`,
//! `serve` (with file edits, SIGHUP and SIGTERM) and `status`; and as a
//! careless editor or an attacker writes its config: bounded parsing, files
//! read only once complete, one decoding path for start and reload, and the
//! last good revision served after a restart with an invalid file.

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
        .arg("--state-dir")
        .arg(dir.path().join("state"))
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

/// A `pylon-xds serve` process on free loopback ports, stopped when dropped.
struct Serve {
    child: std::process::Child,
    admin: String,
    log: std::path::PathBuf,
}

impl Serve {
    /// Starts `serve --config cfg --state-dir state` and waits until its
    /// admin answers; `None` if the process exits first (its log then says why).
    fn start(cfg: &Path, state: &Path, log: &Path) -> Option<Serve> {
        let (xds, admin) = (free_addr(), free_addr());
        let child = Command::new(BIN)
            .args(["serve", "--debounce-ms", "20", "--config"])
            .arg(cfg)
            .arg("--state-dir")
            .arg(state)
            .args(["--listen", &xds.to_string(), "--admin", &admin.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
            .spawn()
            .unwrap();
        let mut s = Serve {
            child,
            admin: admin.to_string(),
            log: log.to_path_buf(),
        };
        eventually(
            Duration::from_secs(20),
            "pylon-xds to start or exit",
            || {
                if s.child.try_wait().unwrap().is_some() {
                    return Some(false);
                }
                s.status_json().map(|_| true)
            },
        )
        .then_some(s)
    }

    /// `/status` as JSON (whatever `status` exits with), if the admin answers.
    fn status_json(&self) -> Option<serde_json::Value> {
        let out = run(&["status", "--admin", &self.admin, "--json"]);
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The `/status` document once `f` holds for it.
    fn wait_status(&self, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        eventually(Duration::from_secs(20), what, || {
            self.status_json().filter(|s| f(s))
        })
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// A line of `/proc/PID/status` (`VmRSS`, `VmHWM`) in KiB.
    fn proc_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        eventually(Duration::from_secs(10), "exit on SIGTERM", || {
            self.child.try_wait().unwrap()
        });
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("pylon-xds log:\n{log}");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TWO_CLUSTERS: &str = "\
clusters:
  - {name: a, endpoints: [127.0.0.1:7001]}
  - {name: b, endpoints: [127.0.0.1:7002]}
listeners:
  - {name: l, address: 127.0.0.1:7443, tcp_proxy: {cluster: a}}
";

/// Every probe of a hostile or careless edit is refused with a message that
/// says why, and the running server neither dies nor grows: the probes that
/// used to overflow the stack (6,000 nested lists in 12 KB), expand aliases
/// into millions of nodes, or parse a 58 MB file for a minute.
#[test]
fn hostile_edits_are_refused_before_parsing_and_the_server_survives() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pylon.yaml");
    std::fs::write(&cfg, TWO_CLUSTERS).unwrap();
    let mut serve = Serve::start(&cfg, &dir.path().join("state"), &dir.path().join("log")).unwrap();
    let v1 = serve.status_json().unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    let baseline_kib = serve.proc_kib("VmRSS");

    let anchored = {
        let mut t = String::from("clusters:\n  - name: c0\n    endpoints: &e\n");
        for i in 0..2_000 {
            t.push_str(&format!("      - 127.0.{}.{}:80\n", i / 250, i % 250 + 1));
        }
        for i in 1..2_000 {
            t.push_str(&format!("  - {{name: c{i}, endpoints: *e}}\n"));
        }
        t
    };
    let huge = {
        let line = "  - {name: c, endpoints: [127.0.0.1:80, 127.0.0.2:80, 127.0.0.3:80]}\n";
        format!("clusters:\n{}", line.repeat(58_000_000 / line.len()))
    };
    let latin1 = {
        let mut b = format!("{TWO_CLUSTERS}# caf").into_bytes();
        b.extend_from_slice(b"\xe9\n");
        b
    };
    let probes: [(&str, Vec<u8>, &str); 5] = [
        (
            "6,000 nested lists",
            format!("clusters:\n  {}x\n", "- ".repeat(6_000)).into_bytes(),
            "nesting deeper than 64 levels",
        ),
        (
            "20,000 nested lists",
            format!("clusters:\n  {}x\n", "- ".repeat(20_000)).into_bytes(),
            "nesting deeper than 64 levels",
        ),
        (
            "an anchored list aliased 2,000 times",
            anchored.into_bytes(),
            "YAML anchors (`&name`) are not supported",
        ),
        (
            "a 58 MB file",
            huge.into_bytes(),
            "the file is larger than 8388608 bytes",
        ),
        (
            "a comment with a Latin-1 byte",
            latin1.clone(),
            "pylon.yaml:6:6: .: invalid UTF-8 (byte 0xE9)",
        ),
    ];
    for (what, bytes, want) in probes {
        std::fs::write(&cfg, &bytes).unwrap();
        let status = serve.wait_status(what, |s| {
            s["last_reload_error"]
                .as_str()
                .is_some_and(|e| e.contains(want))
        });
        assert!(serve.alive(), "{what}: the server died");
        assert_eq!(
            status["version"],
            v1.as_str(),
            "{what}: the last good version stays"
        );
        // Restore, so the next probe is a change the watcher sees.
        std::fs::write(&cfg, TWO_CLUSTERS).unwrap();
        serve.wait_status(&format!("the config restored after {what}"), |s| {
            s["last_reload_error"].is_null()
        });
    }
    // `validate` reads the file as start-up and reloads do: the same error,
    // at line 6 (after the five lines of TWO_CLUSTERS), column 6 (after `# caf`).
    let out = {
        let bad = dir.path().join("latin1.yaml");
        std::fs::write(&bad, latin1).unwrap();
        run(&["validate", bad.to_str().unwrap()])
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("latin1.yaml:6:6: .: invalid UTF-8 (byte 0xE9)"),
        "{stderr}"
    );
    // Peak memory over all the probes stays near the baseline (the alias
    // probe alone used to take 1.9 GB, the 58 MB file as much).
    let peak_kib = serve.proc_kib("VmHWM");
    assert!(
        peak_kib < baseline_kib + 128 * 1024,
        "peak RSS {peak_kib} KiB against a baseline of {baseline_kib} KiB"
    );
    serve.stop();
}

/// A file written in two parts with a pause between them (one open, two
/// writes) is read once its writer closes it, never half-written.
#[test]
fn a_file_written_in_two_parts_is_served_only_once_complete() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pylon.yaml");
    std::fs::write(&cfg, TWO_CLUSTERS).unwrap();
    let serve = Serve::start(&cfg, &dir.path().join("state"), &dir.path().join("log")).unwrap();
    let v1 = serve.status_json().unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();

    // The first half is valid on its own (clusters, no listeners): served,
    // it would drain every proxy's listeners.
    let full = format!(
        "{TWO_CLUSTERS}  - {{name: m, address: 127.0.0.1:7444, tcp_proxy: {{cluster: b}}}}\n"
    );
    let (first, rest) = full.split_at(TWO_CLUSTERS.find("listeners:").unwrap());
    let mut f = std::fs::File::create(&cfg).unwrap();
    f.write_all(first.as_bytes()).unwrap();
    f.flush().unwrap();
    // The writer's pause is the scenario; the watcher's debounce is 20 ms.
    std::thread::sleep(Duration::from_millis(400));
    let during = serve.status_json().unwrap();
    assert_eq!(
        during["version"],
        v1.as_str(),
        "half a file was served: {during}"
    );
    assert!(
        during["last_reload_error"].is_null(),
        "half a file was read: {during}"
    );
    f.write_all(rest.as_bytes()).unwrap();
    drop(f);
    let done = serve.wait_status("the complete file", |s| s["version"] != v1.as_str());
    assert_eq!(done["resources"]["listeners"], 2, "{done}");
    let metrics = run_get(&serve.admin, "/metrics");
    assert!(metrics.contains("pylon_xds_reloads_total 1\n"), "{metrics}");
    serve.stop();
}

/// A restart with an invalid file serves the last revision that was accepted
/// (marked invalid everywhere an operator looks); with none ever accepted,
/// start-up fails and says why.
#[test]
fn an_invalid_file_at_start_serves_the_last_good_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, state, log) = (
        dir.path().join("pylon.yaml"),
        dir.path().join("state"),
        dir.path().join("log"),
    );
    std::fs::write(&cfg, TWO_CLUSTERS).unwrap();
    let serve = Serve::start(&cfg, &state, &log).unwrap();
    let v1 = serve.status_json().unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    // An edit that is accepted becomes the last good revision.
    let edited = TWO_CLUSTERS.replace("7002", "7003");
    std::fs::write(&cfg, &edited).unwrap();
    let v2 = serve.wait_status("the edit", |s| s["version"] != v1.as_str())["version"]
        .as_str()
        .unwrap()
        .to_string();
    serve.stop();

    // Broken while the server was down (a bad deploy, a half-copied file).
    std::fs::write(
        &cfg,
        "clusters:\n  - name: a\n    endpoints: [127.0.0.1:99999]\n",
    )
    .unwrap();
    let serve = Serve::start(&cfg, &state, &log).unwrap();
    let s = serve.status_json().unwrap();
    assert_eq!(s["version"], v2.as_str(), "{s}");
    assert!(
        s["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("pylon.yaml:3:"),
        "{s}"
    );
    assert!(
        s["served_from"].as_str().unwrap().contains("last-good"),
        "{s}"
    );
    assert_eq!(s["resources"]["clusters"], 2);
    let metrics = run_get(&serve.admin, "/metrics");
    assert!(metrics.contains("pylon_xds_config_valid 0\n"), "{metrics}");
    let out = run(&["status", "--admin", &serve.admin]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("last good revision"), "{table}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("serving the last good revision"),
        "{logged}"
    );
    // The next valid edit takes over.
    std::fs::write(&cfg, TWO_CLUSTERS).unwrap();
    let s = serve.wait_status("the fixed file", |s| s["version"] == v1.as_str());
    assert!(s["last_reload_error"].is_null(), "{s}");
    assert_eq!(s["served_from"], cfg.to_str().unwrap());
    serve.stop();

    // No revision was ever accepted with this state directory: start-up fails.
    std::fs::write(&cfg, "clusters: [\n").unwrap();
    let empty = dir.path().join("fresh-state");
    assert!(Serve::start(&cfg, &empty, &log).is_none());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("no last good revision to serve instead"),
        "{logged}"
    );
    assert!(logged.contains("pylon.yaml:2:1"), "{logged}");
}

/// GETs `path` from the admin address.
fn run_get(admin: &str, path: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (code, body) = rt
        .block_on(control_plane::admin::get(admin.parse().unwrap(), path))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    body
}

/// The front-proxy seed's envoy.yaml, exactly as the tutorial prints it (an
/// Envoy v2 file), cut out of the seed document.
fn seed_front_proxy() -> String {
    let seed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/seeds/004_8771ba3f8aabcd48.txt");
    let text = std::fs::read_to_string(&seed).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the seed documents live in shared/seeds beside the workspace)",
            seed.display()
        )
    });
    let start = text.find("static_resources:").unwrap();
    let end = start + text[start..].find("port_value: 8001").unwrap();
    format!("{}port_value: 8001\n", &text[start..end])
}

/// `validate` names every v2 construct of the seed in one run, each with its
/// v3 spelling; `migrate` prints a v3 file that validates.
#[test]
fn a_v2_config_is_recognised_whole_and_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("envoy.yaml");
    std::fs::write(&v2, seed_front_proxy()).unwrap();
    let out = run(&["validate", v2.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = v2.display().to_string();
    for want in [
        ":9:15: static_resources.listeners[0].filter_chains[0].filters[0].name: filter name `envoy.http_connection_manager` is v2",
        ":10:9: static_resources.listeners[0].filter_chains[0].filters[0].config: `config` is v2: v3 writes `typed_config`",
        ":34:11: static_resources.clusters[0].type: lower-case `type: strict_dns` is v2",
        ":37:5: static_resources.clusters[0].hosts: `hosts` is v2",
        ":46:5: static_resources.clusters[1].hosts: `hosts` is v2",
    ] {
        assert!(stderr.contains(&format!("{file}{want}")), "{want}\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), 15, "{stderr}");
    assert!(stderr.contains("pylon-xds migrate"), "{stderr}");

    let out = run(&["migrate", v2.to_str().unwrap()]);
    assert!(out.status.success());
    let v3 = dir.path().join("pylon.yaml");
    std::fs::write(&v3, &out.stdout).unwrap();
    let out = run(&["validate", v3.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("(2 clusters, 0 load assignments, 1 listeners, 1 route configurations)"),
        "{stdout}"
    );
    // Migrating the result again finds nothing to rewrite.
    let again = run(&["migrate", v3.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stderr).contains(": 0 v2 construct(s) rewritten"));
}

#[test]
fn render_prints_what_each_node_receives_with_the_served_versions() {
    let fleet = examples().join("mixed-fleet.yaml");
    let fleet = fleet.to_str().unwrap();
    let validated = String::from_utf8(run(&["validate", fleet]).stdout).unwrap();
    let render = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["render", fleet];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let names = |doc: &serde_json::Value, key: &str| -> Vec<String> {
        doc[key]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    // Everything, with the version `validate` (and `serve`) gives the revision.
    let all = render(&[]);
    let version = all["version"].as_str().unwrap();
    assert!(
        validated.contains(&format!("ok, version {version} ")),
        "{validated} vs {version}"
    );
    assert_eq!(names(&all, "clusters"), ["greeter.example:50051", "web"]);
    for r in all["endpoints"]["resources"].as_array().unwrap() {
        assert_eq!(r["version"].as_str().unwrap().len(), 16, "{r}");
        assert_eq!(
            r["resource"]["@type"],
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
        );
    }
    // A node's view: its selection, the same versions.
    let grpc = render(&["--node-id", "grpc-1"]);
    assert_eq!(grpc["selection"], "proxyless");
    assert_eq!(grpc["version"], all["version"]);
    assert_eq!(names(&grpc, "listeners"), ["greeter.example:50051"]);
    assert_eq!(grpc["listeners"]["version"], all["listeners"]["version"]);
    let edge = render(&["--node-id", "e-1", "--node-cluster", "edge"]);
    assert_eq!(edge["selection"], "edge");
    assert_eq!(names(&edge, "listeners"), ["front"]);
    assert_eq!(names(&edge, "clusters"), ["web"]);
    let other = render(&["--node-id", "someone"]);
    assert_eq!(other["selection"], "nothing");
    assert!(names(&other, "clusters").is_empty());

    // An invalid file: its errors, with positions, and no document.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "clusters:\n  - name: a\n    endpoints: [127.0.0.1:70000]\n",
    )
    .unwrap();
    let out = run(&["render", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:3:"), "{err}");
}

#[test]
fn render_never_prints_inline_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.yaml");
    std::fs::write(
        &path,
        "static_resources:\n  clusters:\n  - name: tls\n    type: STATIC\n    load_assignment:\n      cluster_name: tls\n      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 443}}}}]}]\n    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        common_tls_context:\n          tls_certificates:\n          - certificate_chain: {filename: /etc/tls.crt}\n            private_key: {inline_string: \"-----BEGIN PRIVATE KEY-----TOPSECRET\"}\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    // Refused as `serve` refuses it, unless allowed...
    let out = run(&["render", path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("TOPSECRET"));
    // ... and then redacted.
    let out = run(&["render", "--allow-inline-secrets", path]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("TOPSECRET"), "{text}");
    assert!(text.contains("[redacted by pylon-xds]"), "{text}");
}
