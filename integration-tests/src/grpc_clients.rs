//! Real proxyless gRPC peers for one test: gRPC backends ([`GrpcBackends`],
//! Python grpcio servers, or grpc-go (grpc-java) servers for the grpc-go
//! (grpc-java) client) and xDS-resolving gRPC clients ([`GrpcClient`], Python
//! grpcio, Node `@grpc/grpc-js` + `@grpc/grpc-js-xds`, grpc-go or grpc-java),
//! each a child process started from the test process.
//!
//! Owns: finding the runtimes (a Python that imports `grpc`, Node with the
//! client's `node_modules` installed, the grpc-go program built from
//! `clients/go`, the grpc-java launcher built from `clients/java`), writing
//! the client's xDS bootstrap (`GRPC_XDS_BOOTSTRAP`) into a private temp
//! dir, spawning the programs in
//! `integration-tests/clients/`, speaking their line protocol (one command on
//! stdin, one JSON answer on stdout, see `clients/grpc_client.py`), capturing
//! their stderr into a log whose tail goes into errors and panics, and killing
//! them on drop. It does not know what pylon-xds serves: tests write the YAML.
//!
//! The scripts hold no state worth keeping beyond a test: they exit when
//! their stdin closes, so they die with the test process even if it is killed.
//!
//! Runtimes are found at run time:
//! - Python: `PYLON_PYTHON` when set (and only there), else
//!   `<workspace>/.venv/bin/python3`; it must import `grpc` (`scripts/test.sh`
//!   installs grpcio into `.venv`). Backends always need it.
//! - Node: `PYLON_NODE` when set, else `node` on `PATH`, and
//!   `integration-tests/clients/node/node_modules` installed
//!   (`scripts/test.sh` runs `npm ci` there).
//! - grpc-go: `PYLON_GRPC_GO` when set, else `<target>/clients/grpc-go-client`
//!   (`scripts/test.sh` builds it from `integration-tests/clients/go` with
//!   `go build`). Its row of the matrix calls grpc-go backends (the same
//!   program), so it needs no Python.
//! - grpc-java: `PYLON_GRPC_JAVA` when set, else
//!   `<target>/clients/grpc-java-client`, a launcher script that
//!   `scripts/test.sh` writes after building `integration-tests/clients/java`
//!   with Maven (it runs `java` on the jar and the classpath Maven resolved).
//!   Like grpc-go, its row calls its own backends (the same program).
//!
//! `PYLON_GRPC_TRACE` turns on the clients' own tracing (into their log):
//! `1` picks xDS and load-balancing tracers; any other value is passed as
//! `GRPC_TRACE` (Python) or `GRPC_NODE_TRACE` (Node) as is; grpc-go logs
//! everything at `info` with any value; for grpc-java, other values are
//! `java.util.logging` logger names (comma-separated) to log at every level.
//!
//! Everything listens on and dials 127.0.0.1 only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::ports::{free_port, LOOPBACK};

/// How long a script may take to start (importing grpcio on a busy 2-core
/// machine takes a few seconds).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Added to `n * timeout` when waiting for the answer to a `call`.
pub const ANSWER_SLACK: Duration = Duration::from_secs(10);

/// Attempts at finding free ports that the backends can all bind.
const START_ATTEMPTS: usize = 3;

/// The unary method every backend answers with its own name.
pub const METHOD: &str = "/pylon.test.Echo/Who";

/// Tracers for `PYLON_GRPC_TRACE=1` (grpcio's C core).
const PYTHON_TRACERS: &str =
    "xds_client,xds_resolver,cds_lb,xds_cluster_impl_lb,xds_cluster_manager_lb,priority_lb,weighted_target_lb,round_robin";

/// Tracers for `PYLON_GRPC_TRACE=1` (grpc-js).
const NODE_TRACERS: &str =
    "xds_client,xds_resolver,cds_balancer,xds_cluster_impl,xds_cluster_manager,priority,weighted_target,round_robin,resolving_load_balancer";

/// Loggers for `PYLON_GRPC_TRACE=1` (grpc-java: its xDS client and balancers,
/// and the channels' own log).
const JAVA_TRACERS: &str = "io.grpc.xds,io.grpc.util,io.grpc.ChannelLogger";

/// Environment variables that would send the clients' traffic (xDS included)
/// through a proxy instead of straight to 127.0.0.1.
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "grpc_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "GRPC_PROXY",
    "ALL_PROXY",
];

/// `integration-tests/clients`, where the scripts live.
pub fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// The Node client's package directory.
pub fn node_package_dir() -> PathBuf {
    clients_dir().join("node")
}

/// The grpc-go program's module directory.
pub fn go_module_dir() -> PathBuf {
    clients_dir().join("go")
}

/// The grpc-java program's Maven project directory.
pub fn java_project_dir() -> PathBuf {
    clients_dir().join("java")
}

/// A client program `scripts/test.sh` builds into `<target>/clients/`, or
/// wherever the variable `var` points.
fn built_client(var: &str, file: &str) -> Option<PathBuf> {
    let path = match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::workspace_root().join("target"));
            target.join("clients").join(file)
        }
    };
    path.is_file().then_some(path)
}

/// The grpc-go program, if built (see the module docs for where).
pub fn grpc_go() -> Option<PathBuf> {
    built_client("PYLON_GRPC_GO", "grpc-go-client")
}

/// The grpc-java launcher, if built (see the module docs for where).
pub fn grpc_java() -> Option<PathBuf> {
    built_client("PYLON_GRPC_JAVA", "grpc-java-client")
}

/// The grpc-java launcher, or `None` after reporting it missing (a panic
/// under CI).
pub fn grpc_java_or_skip() -> Option<PathBuf> {
    grpc_java().or_else(|| {
        crate::missing_tool(
            "grpc-java-client",
            "run scripts/test.sh (builds integration-tests/clients/java with Maven into \
             target/clients/java and writes the launcher target/clients/grpc-java-client; \
             needs a JDK >= 17 and mvn) or set PYLON_GRPC_JAVA",
        )
    })
}

/// The grpc-go program, or `None` after reporting it missing (a panic under
/// CI).
pub fn grpc_go_or_skip() -> Option<PathBuf> {
    grpc_go().or_else(|| {
        crate::missing_tool(
            "grpc-go-client",
            "run scripts/test.sh (builds integration-tests/clients/go into target/clients/ \
             with `go build`; needs Go 1.26) or set PYLON_GRPC_GO",
        )
    })
}

/// A Python that imports `grpc`, if any (see the module docs for the order).
pub fn python() -> Option<PathBuf> {
    let path = match std::env::var_os("PYLON_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => crate::workspace_root().join(".venv/bin/python3"),
    };
    if !path.is_file() {
        return None;
    }
    // Run from the test process; a quick import check is cheaper than a
    // confusing failure later.
    let imports = std::process::Command::new(&path)
        .args(["-c", "import grpc"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    imports.then_some(path)
}

/// The Node binary, if any, provided the client's `node_modules` is installed.
pub fn node() -> Option<PathBuf> {
    let installed = node_package_dir()
        .join("node_modules/@grpc/grpc-js-xds/package.json")
        .is_file();
    if !installed {
        return None;
    }
    if let Some(p) = std::env::var_os("PYLON_NODE") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("node"))
        .find(|p| p.is_file())
}

/// Python with grpcio, or `None` after reporting it missing (a panic under CI).
pub fn python_or_skip() -> Option<PathBuf> {
    python().or_else(|| {
        crate::missing_tool(
            "python3 with grpcio",
            "run scripts/test.sh (installs grpcio==1.85.1 into .venv) or set PYLON_PYTHON",
        )
    })
}

/// Node with the client's packages, or `None` after reporting it missing (a
/// panic under CI).
pub fn node_or_skip() -> Option<PathBuf> {
    node().or_else(|| {
        crate::missing_tool(
            "node with @grpc/grpc-js-xds",
            "install node and npm, then run scripts/test.sh (runs `npm ci --prefix \
             integration-tests/clients/node`); PYLON_NODE names another node binary",
        )
    })
}

/// Which gRPC implementation a [`GrpcClient`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// grpcio (gRPC C core) with its built-in `xds:` resolver.
    Python,
    /// `@grpc/grpc-js` with `@grpc/grpc-js-xds` registered.
    Node,
    /// grpc-go with `google.golang.org/grpc/xds` imported.
    Go,
    /// grpc-java with `io.grpc:grpc-xds` on the classpath.
    Java,
}

impl ClientKind {
    /// A short label for logs.
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Python => "python",
            ClientKind::Node => "node",
            ClientKind::Go => "go",
            ClientKind::Java => "java",
        }
    }

    /// The program and arguments that run this kind of client, or `None`
    /// after reporting what is missing.
    fn command_or_skip(self) -> Option<(PathBuf, Vec<PathBuf>)> {
        match self {
            ClientKind::Python => {
                python_or_skip().map(|p| (p, vec![clients_dir().join("grpc_client.py")]))
            }
            ClientKind::Node => {
                node_or_skip().map(|n| (n, vec![node_package_dir().join("grpc_client.js")]))
            }
            ClientKind::Go => grpc_go_or_skip().map(|g| (g, vec![PathBuf::from("client")])),
            ClientKind::Java => grpc_java_or_skip().map(|j| (j, vec![PathBuf::from("client")])),
        }
    }

    /// The backends its tests call: grpc-go's for grpc-go, grpc-java's for
    /// grpc-java, grpcio's for the others.
    pub fn backends(self) -> BackendKind {
        match self {
            ClientKind::Go => BackendKind::Go,
            ClientKind::Java => BackendKind::Java,
            ClientKind::Python | ClientKind::Node => BackendKind::Python,
        }
    }

    /// Whether everything a test with this client needs is installed: the
    /// client's runtime, and its [`GrpcBackends`]. Reports what is missing
    /// (a panic under CI).
    pub fn tools_or_skip(self) -> bool {
        match self {
            ClientKind::Python => python_or_skip().is_some(),
            ClientKind::Node => python_or_skip().is_some() && node_or_skip().is_some(),
            ClientKind::Go => grpc_go_or_skip().is_some(),
            ClientKind::Java => grpc_java_or_skip().is_some(),
        }
    }

    /// Sets the tracing variables for `PYLON_GRPC_TRACE`.
    fn trace_env(self, cmd: &mut Command) {
        let Some(trace) = std::env::var("PYLON_GRPC_TRACE")
            .ok()
            .filter(|t| !t.is_empty())
        else {
            return;
        };
        let pick = |default: &str| {
            if trace == "1" {
                default.to_string()
            } else {
                trace.clone()
            }
        };
        match self {
            ClientKind::Python => {
                cmd.env("GRPC_TRACE", pick(PYTHON_TRACERS))
                    .env("GRPC_VERBOSITY", "DEBUG");
            }
            ClientKind::Node => {
                cmd.env("GRPC_NODE_TRACE", pick(NODE_TRACERS))
                    .env("GRPC_NODE_VERBOSITY", "DEBUG");
            }
            ClientKind::Go => {
                cmd.env("GRPC_GO_LOG_SEVERITY_LEVEL", "info")
                    .env("GRPC_GO_LOG_VERBOSITY_LEVEL", "99");
            }
            ClientKind::Java => {
                cmd.env("PYLON_GRPC_JAVA_TRACE", pick(JAVA_TRACERS));
            }
        }
    }
}

/// The xDS bootstrap of a proxyless client: one insecure xDS server on
/// loopback, speaking v3, and the node identity.
pub fn bootstrap_json(xds: SocketAddr, node_id: &str, node_cluster: &str) -> serde_json::Value {
    serde_json::json!({
        "xds_servers": [{
            "server_uri": xds.to_string(),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": node_id,
            "cluster": node_cluster,
            "locality": {},
        },
    })
}

/// What a `call` command observed: answers by backend name, failures by
/// status code name (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Successful calls, by the name of the backend that answered.
    pub ok: BTreeMap<String, usize>,
    /// Failed calls, by gRPC status code name.
    pub errors: BTreeMap<String, usize>,
}

impl CallCounts {
    /// Calls answered by `backend`.
    pub fn ok_from(&self, backend: &str) -> usize {
        self.ok.get(backend).copied().unwrap_or(0)
    }

    /// Every successful call.
    pub fn total_ok(&self) -> usize {
        self.ok.values().sum()
    }

    /// Every failed call.
    pub fn total_errors(&self) -> usize {
        self.errors.values().sum()
    }

    /// Parses a client's answer line.
    pub fn parse(line: &str) -> anyhow::Result<CallCounts> {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("answer is not JSON: {line}"))?;
        if let Some(err) = v.get("error") {
            anyhow::bail!("client refused the command: {err}");
        }
        let counts = |key: &str| -> anyhow::Result<BTreeMap<String, usize>> {
            let map = v
                .get(key)
                .and_then(|m| m.as_object())
                .with_context(|| format!("answer has no `{key}` object: {line}"))?;
            map.iter()
                .map(|(k, n)| {
                    let n = n
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .with_context(|| format!("`{key}.{k}` is not a count: {line}"))?;
                    Ok((k.clone(), n))
                })
                .collect()
        };
        Ok(CallCounts {
            ok: counts("ok")?,
            errors: counts("errors")?,
        })
    }
}

/// A command for a client or backend program: stdin and stdout piped,
/// stderr into `log`, no proxy settings, killed on drop, run from `dir`.
fn script_command(
    program: &Path,
    args: &[PathBuf],
    dir: &Path,
    log: &Path,
) -> anyhow::Result<Command> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .kill_on_drop(true);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    Ok(cmd)
}

/// Which program serves [`GrpcBackends`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// `clients/grpc_backends.py` on grpcio.
    Python,
    /// `grpc-go-client backends`.
    Go,
    /// `grpc-java-client backends`.
    Java,
}

/// gRPC servers on loopback, one per name, each answering [`METHOD`] with its
/// own name, all in one process (grpcio, grpc-go or grpc-java). Killed when dropped.
#[derive(Debug)]
pub struct GrpcBackends {
    child: Child,
    // Held open: the script exits when it closes.
    _stdin: ChildStdin,
    addrs: BTreeMap<String, SocketAddr>,
    dir: TempDir,
}

impl GrpcBackends {
    /// Starts one grpcio backend per name on free loopback ports and waits
    /// until all listen. Ports taken by someone else in the meantime are
    /// retried.
    pub async fn start(names: &[&str]) -> anyhow::Result<GrpcBackends> {
        GrpcBackends::start_kind(BackendKind::Python, names).await
    }

    /// [`GrpcBackends::start`] with the backends of `kind`.
    pub async fn start_kind(kind: BackendKind, names: &[&str]) -> anyhow::Result<GrpcBackends> {
        let (program, args) = match kind {
            BackendKind::Python => {
                let python = python().context(
                    "python3 with grpcio not found: run scripts/test.sh (installs grpcio into .venv) \
                     or set PYLON_PYTHON",
                )?;
                (python, vec![clients_dir().join("grpc_backends.py")])
            }
            BackendKind::Go => {
                let go = grpc_go().context(
                    "grpc-go-client not found: run scripts/test.sh (builds it) or set PYLON_GRPC_GO",
                )?;
                (go, vec![PathBuf::from("backends")])
            }
            BackendKind::Java => {
                let java = grpc_java().context(
                    "grpc-java-client not found: run scripts/test.sh (builds it) or set \
                     PYLON_GRPC_JAVA",
                )?;
                (java, vec![PathBuf::from("backends")])
            }
        };
        anyhow::ensure!(!names.is_empty(), "no backend names");
        for name in names {
            anyhow::ensure!(
                !name.is_empty() && !name.contains(['=', ' ']),
                "backend name {name:?} must be non-empty, without `=` or spaces"
            );
        }
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&program, &args, names).await? {
                Ok(backends) => return Ok(backends),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!(
                "{START_ATTEMPTS} sets of backend ports were all taken"
            )))
    }

    /// One attempt: `Ok(Err(_))` means a port was taken (worth retrying).
    async fn try_start(
        program: &Path,
        args: &[PathBuf],
        names: &[&str],
    ) -> anyhow::Result<anyhow::Result<GrpcBackends>> {
        let dir = tempfile::Builder::new()
            .prefix("pylon-grpc-backends-")
            .tempdir()?;
        let mut addrs = BTreeMap::new();
        for name in names {
            let mut port = free_port()?;
            while addrs.values().any(|a: &SocketAddr| a.port() == port) {
                port = free_port()?;
            }
            addrs.insert(name.to_string(), SocketAddr::new(LOOPBACK, port));
        }
        anyhow::ensure!(addrs.len() == names.len(), "duplicate backend names");
        let log = dir.path().join("stderr");
        let mut cmd = script_command(program, args, &clients_dir(), &log)?;
        cmd.args(names.iter().map(|n| format!("{n}={}", addrs[*n].port())));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {} {args:?}", program.display()))?;
        let stdin = child.stdin.take().context("backends: no stdin pipe")?;
        let stdout = child.stdout.take().context("backends: no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let backends = GrpcBackends {
            child,
            _stdin: stdin,
            addrs,
            dir,
        };
        let failure = match first {
            Ok(Ok(Some(line))) if line.trim() == "READY" => return Ok(Ok(backends)),
            Ok(Ok(Some(line))) => format!("the backends printed {line:?} instead of READY"),
            Ok(Ok(None)) => "the backends exited before READY".to_string(),
            Ok(Err(err)) => format!("reading the backends stdout: {err}"),
            Err(_) => format!("the backends not READY within {START_TIMEOUT:?}"),
        };
        let tail = backends.log_tail(40);
        if tail.contains("bind failed:") {
            // Dropping `backends` kills what is left of the process.
            return Ok(Err(anyhow::anyhow!("{failure}\n{tail}")));
        }
        anyhow::bail!("{failure}\n{tail}")
    }

    /// The address of the backend called `name`.
    pub fn addr(&self, name: &str) -> anyhow::Result<SocketAddr> {
        self.addrs
            .get(name)
            .copied()
            .with_context(|| format!("no backend named {name:?}"))
    }

    /// Every backend's address, by name.
    pub fn addrs(&self) -> &BTreeMap<String, SocketAddr> {
        &self.addrs
    }

    /// The last `n` lines of the backends' log (their stderr).
    pub fn log_tail(&self, n: usize) -> String {
        crate::logs::tail(&self.dir.path().join("stderr"), "grpc backends", n)
    }

    /// Kills the backends and waits for the process to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

impl Drop for GrpcBackends {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}",
                self.log_tail(crate::logs::panic_tail_lines("PYLON_GRPC_LOG_TAIL"))
            );
        }
        // kill_on_drop ends the process (and so does closing its stdin).
    }
}

/// A proxyless gRPC client process bootstrapped against a pylon-xds. Killed
/// when dropped.
#[derive(Debug)]
pub struct GrpcClient {
    kind: ClientKind,
    node_id: String,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Commands sent whose answer was not read (a `call` future dropped
    /// mid-way, e.g. by `eventually`'s deadline): drained before the next.
    unanswered: usize,
    /// How long the slowest unanswered command may take.
    unanswered_limit: Duration,
    dir: TempDir,
}

impl GrpcClient {
    /// Writes a bootstrap for `node_id`/`node_cluster` pointing at `xds` and
    /// starts a client of `kind` with it. `Ok(None)` when the client's runtime
    /// is missing (after [`crate::missing_tool`], which panics under CI).
    pub async fn start(
        kind: ClientKind,
        xds: SocketAddr,
        node_id: &str,
        node_cluster: &str,
    ) -> anyhow::Result<Option<GrpcClient>> {
        anyhow::ensure!(
            xds.ip().is_loopback(),
            "xDS server {xds} is not on loopback"
        );
        let text = serde_json::to_string_pretty(&bootstrap_json(xds, node_id, node_cluster))?;
        GrpcClient::start_with_bootstrap(kind, &text, node_id).await
    }

    /// Starts a client of `kind` with the bootstrap JSON `bootstrap` (whose
    /// node is `node_id`), as `pylon-xds bootstrap --grpc` prints it.
    pub async fn start_with_bootstrap(
        kind: ClientKind,
        bootstrap_text: &str,
        node_id: &str,
    ) -> anyhow::Result<Option<GrpcClient>> {
        let doc: serde_json::Value = serde_json::from_str(bootstrap_text)?;
        for server in doc["xds_servers"].as_array().into_iter().flatten() {
            let uri = server["server_uri"].as_str().unwrap_or_default();
            let addr: SocketAddr = uri
                .parse()
                .with_context(|| format!("xDS server {uri:?} is not an address"))?;
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "xDS server {uri} is not on loopback"
            );
        }
        let Some((program, args)) = kind.command_or_skip() else {
            return Ok(None);
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("pylon-grpc-{}-", kind.name()))
            .tempdir()?;
        let bootstrap = dir.path().join("bootstrap.json");
        std::fs::write(&bootstrap, bootstrap_text)?;
        let log = dir.path().join("stderr");
        let cwd = match kind {
            ClientKind::Node => node_package_dir(),
            ClientKind::Python | ClientKind::Go | ClientKind::Java => clients_dir(),
        };
        let mut cmd = script_command(&program, &args, &cwd, &log)?;
        cmd.env("GRPC_XDS_BOOTSTRAP", &bootstrap);
        kind.trace_env(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {} {args:?}", program.display()))?;
        let stdin = child.stdin.take().context("client: no stdin pipe")?;
        let stdout = child.stdout.take().context("client: no stdout pipe")?;
        Ok(Some(GrpcClient {
            kind,
            node_id: node_id.to_string(),
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            unanswered: 0,
            unanswered_limit: Duration::ZERO,
            dir,
        }))
    }

    /// Which implementation this is.
    pub fn kind(&self) -> ClientKind {
        self.kind
    }

    /// The node id in its bootstrap.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The temp dir holding its bootstrap and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `n` lines of its log (its stderr).
    pub fn log_tail(&self, n: usize) -> String {
        crate::logs::tail(
            &self.dir.path().join("stderr"),
            &format!("{} gRPC client `{}`", self.kind.name(), self.node_id),
            n,
        )
    }

    /// Makes `n` sequential unary calls to [`METHOD`] on the client's channel
    /// for `target` (e.g. `xds:///greeter.example:50051`; one channel per
    /// target, created on first use and kept), each with deadline `timeout`.
    pub async fn call(
        &mut self,
        target: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<CallCounts> {
        anyhow::ensure!(
            !target.is_empty() && !target.contains(char::is_whitespace),
            "target {target:?} must be one word"
        );
        let timeout_ms = timeout.as_millis().max(1);
        let limit = Duration::from_millis(u64::try_from(timeout_ms)?)
            .saturating_mul(u32::try_from(n)?)
            .saturating_add(ANSWER_SLACK);
        self.drain_unanswered().await?;
        self.unanswered += 1;
        self.unanswered_limit = self.unanswered_limit.max(limit);
        let command = format!("call {target} {n} {timeout_ms}\n");
        let line = self.request(&command, limit).await?;
        self.unanswered -= 1;
        if self.unanswered == 0 {
            self.unanswered_limit = Duration::ZERO;
        }
        CallCounts::parse(&line).map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.log_tail(40)))
    }

    /// Reads and discards the answers of commands whose caller gave up.
    async fn drain_unanswered(&mut self) -> anyhow::Result<()> {
        while self.unanswered > 0 {
            self.read_answer(self.unanswered_limit).await?;
            self.unanswered -= 1;
        }
        self.unanswered_limit = Duration::ZERO;
        Ok(())
    }

    /// Sends one command line and reads its answer.
    async fn request(&mut self, command: &str, limit: Duration) -> anyhow::Result<String> {
        let sent = async {
            self.stdin.write_all(command.as_bytes()).await?;
            self.stdin.flush().await
        }
        .await;
        if let Err(err) = sent {
            anyhow::bail!(
                "writing to the {} client: {err} ({})\n{}",
                self.kind.name(),
                self.exit_status(),
                self.log_tail(60)
            );
        }
        self.read_answer(limit).await
    }

    /// Reads one answer line, failing with the log tail if none comes.
    async fn read_answer(&mut self, limit: Duration) -> anyhow::Result<String> {
        let failure = match tokio::time::timeout(limit, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => return Ok(line),
            Ok(Ok(None)) => format!("client closed its stdout ({})", self.exit_status()),
            Ok(Err(err)) => format!("reading the client's stdout: {err}"),
            Err(_) => format!("no answer within {limit:?}"),
        };
        anyhow::bail!(
            "{} gRPC client `{}`: {failure}\n{}",
            self.kind.name(),
            self.node_id,
            self.log_tail(60)
        )
    }

    /// Whether and how the process ended, for error messages.
    fn exit_status(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => format!("exited: {status}"),
            Ok(None) => "still running".to_string(),
            Err(err) => format!("status unknown: {err}"),
        }
    }

    /// Asks the client to quit and waits for it (killing it if it does not
    /// exit within a few seconds).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // A client that already died cannot take the command: kill below.
        let _ = self.stdin.write_all(b"quit\n").await;
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }
}

impl Drop for GrpcClient {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}",
                self.log_tail(crate::logs::panic_tail_lines("PYLON_GRPC_LOG_TAIL"))
            );
        }
        // kill_on_drop ends the process (and so does closing its stdin).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_into_counts() {
        let c = CallCounts::parse(r#"{"errors": {"UNAVAILABLE": 2}, "ok": {"b1": 3, "b2": 1}}"#)
            .unwrap();
        assert_eq!(c.ok_from("b1"), 3);
        assert_eq!(c.ok_from("b3"), 0);
        assert_eq!(c.total_ok(), 4);
        assert_eq!(c.total_errors(), 2);
        assert_eq!(c.errors["UNAVAILABLE"], 2);
    }

    #[test]
    fn refusals_and_garbage_are_errors() {
        let err = CallCounts::parse(r#"{"error": "unknown command"}"#).unwrap_err();
        assert!(format!("{err:#}").contains("unknown command"), "{err:#}");
        assert!(CallCounts::parse("READY").is_err());
        assert!(CallCounts::parse(r#"{"ok": {"b1": -1}, "errors": {}}"#).is_err());
        assert!(CallCounts::parse(r#"{"ok": {}}"#).is_err());
    }

    #[test]
    fn the_bootstrap_names_one_insecure_v3_server_and_the_node() {
        let b = bootstrap_json("127.0.0.1:18000".parse().unwrap(), "grpc-1", "c");
        assert_eq!(b["xds_servers"][0]["server_uri"], "127.0.0.1:18000");
        assert_eq!(b["xds_servers"][0]["channel_creds"][0]["type"], "insecure");
        assert_eq!(b["xds_servers"][0]["server_features"][0], "xds_v3");
        assert_eq!(b["node"]["id"], "grpc-1");
        assert_eq!(b["node"]["cluster"], "c");
        assert!(b["node"]["locality"].is_object());
    }

    #[test]
    fn the_scripts_are_where_the_harness_looks() {
        assert!(clients_dir().join("grpc_backends.py").is_file());
        assert!(clients_dir().join("grpc_client.py").is_file());
        assert!(node_package_dir().join("grpc_client.js").is_file());
        assert!(node_package_dir().join("package-lock.json").is_file());
        assert!(go_module_dir().join("main.go").is_file());
        assert!(go_module_dir().join("go.sum").is_file());
        assert!(java_project_dir().join("pom.xml").is_file());
        assert!(java_project_dir()
            .join("src/main/java/pylon/test/GrpcJavaClient.java")
            .is_file());
    }
}
