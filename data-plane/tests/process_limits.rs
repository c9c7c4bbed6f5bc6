//! What a client can make the real `pylon-proxy` binary spend: file
//! descriptors (its listener's and admin's accept loops when none is left)
//! and admin connections (slow headers, cross-site and DNS-rebinding POSTs).
//!
//! Each test runs the binary as a child process from a static bootstrap: one
//! TCP listener proxying to an echo server in the test, and the admin API.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_pylon-proxy");
/// How long any single expected event may take.
const DEADLINE: Duration = Duration::from_secs(15);

fn free_addr() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An echo server on loopback, for traffic through the proxy's listener.
async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// `pylon-proxy -c bootstrap.yaml` as a child process; killed on drop.
struct Proxy {
    child: Child,
    dir: PathBuf,
    admin: SocketAddr,
    listener: SocketAddr,
}

impl Proxy {
    /// Starts the proxy (under a soft and hard `RLIMIT_NOFILE` of `nofile`
    /// when given) and waits until `/ready` says `LIVE`.
    async fn start(nofile: Option<u32>) -> Proxy {
        let upstream = echo().await;
        let (admin, listener) = (free_addr(), free_addr());
        let dir = std::env::temp_dir().join(format!(
            "pylon-proxy-limits-{}-{}",
            std::process::id(),
            listener.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let bootstrap = dir.join("bootstrap.yaml");
        std::fs::write(
            &bootstrap,
            format!(
                r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}
static_resources:
  listeners:
  - name: echo
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: echo
          cluster: echo
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}
"#,
                admin.port(),
                listener.port(),
                upstream.port()
            ),
        )
        .unwrap();
        let mut command = match nofile {
            // `ulimit -n` sets both limits, so the binary cannot raise them.
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .arg("-c")
            .arg(&bootstrap)
            .args(["--concurrency", "1"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut proxy = Proxy {
            child,
            dir,
            admin,
            listener,
        };
        let end = Instant::now() + DEADLINE;
        loop {
            if let Ok((StatusCode::OK, body)) = proxy.get("/ready").await {
                if body.trim() == "LIVE" {
                    break;
                }
            }
            if let Some(status) = proxy.child.try_wait().unwrap() {
                panic!("pylon-proxy exited ({status}):\n{}", proxy.log());
            }
            assert!(Instant::now() < end, "not LIVE:\n{}", proxy.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// One admin request on a fresh connection, with `headers` (a `Host`
    /// of the admin address unless given).
    async fn admin(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, String)> {
        let stream = tokio::time::timeout(DEADLINE, TcpStream::connect(self.admin)).await??;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req = req.header("host", self.admin.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(
            DEADLINE,
            sender.send_request(req.body(Empty::<Bytes>::new())?),
        )
        .await??;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        driver.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, String)> {
        self.admin(Method::GET, path, &[]).await
    }

    /// `/ready`'s answer.
    async fn ready(&self) -> String {
        let (_, body) = self.get("/ready").await.unwrap();
        body.trim().to_string()
    }

    /// Bytes sent through the listener come back from the echo server.
    async fn assert_proxies(&self) {
        let mut s = tokio::time::timeout(DEADLINE, TcpStream::connect(self.listener))
            .await
            .unwrap()
            .unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
            .await
            .expect("the echo answered through the proxy")
            .unwrap();
        assert_eq!(&buf, b"ping");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time (user + system) the process has used, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    let per_second: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Duration::from_millis(ticks * 1000 / per_second)
}

/// The descriptor limit the proxy runs under in the exhaustion test.
const NOFILE: u32 = 64;
/// How long the proxy is watched while it has no descriptor left.
const EXHAUSTED_WINDOW: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loops_back_off_and_recover() {
    let proxy = Proxy::start(Some(NOFILE)).await;
    proxy.assert_proxies().await;
    assert!(
        proxy
            .log()
            .contains(&format!("file descriptors: at most {NOFILE} open at once")),
        "{}",
        proxy.log()
    );
    let pid = proxy.child.id();
    let log0 = proxy.log().len();
    let failing = |log: &str, listener: &str| {
        log.lines()
            .filter(|l| l.contains("accept failed") && l.contains(&format!("listener={listener}")))
            .count()
    };

    // More connections than descriptors to the listener and to the admin.
    let mut held = Vec::new();
    for addr in [proxy.listener, proxy.admin] {
        for _ in 0..2 * NOFILE {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
    }
    let end = Instant::now() + DEADLINE;
    while failing(&proxy.log()[log0..], "echo") == 0 || failing(&proxy.log()[log0..], "admin") == 0
    {
        assert!(
            Instant::now() < end,
            "no accept failure logged for both listeners:\n{}",
            &proxy.log()[log0..]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let count = |log: &str| failing(log, "echo") + failing(log, "admin");
    let (cpu0, wall0, lines0) = (cpu_time(pid), Instant::now(), count(&proxy.log()));
    // A measurement window, not a wait for an event: the proxy is out of
    // descriptors throughout.
    tokio::time::sleep(EXHAUSTED_WINDOW).await;
    let (cpu, wall) = (cpu_time(pid) - cpu0, wall0.elapsed());
    let lines = count(&proxy.log()) - lines0;
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "out of descriptors for {wall:?}: {cpu:?} of CPU ({:.1}% of one core), {lines} accept warnings",
        share * 100.0
    );
    assert!(share < 0.3, "the proxy used {cpu:?} of CPU in {wall:?}");
    // One line a second per listener, give or take the window's edges.
    let bound = 2 * (wall.as_secs() as usize + 2);
    assert!(lines <= bound, "{lines} accept warnings in {wall:?}");

    // Descriptors free up: the listener proxies and the admin answers again.
    drop(held);
    let end = Instant::now() + DEADLINE;
    while proxy.get("/ready").await.is_err() {
        assert!(Instant::now() < end, "the admin never answered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.ready().await, "LIVE");
    proxy.assert_proxies().await;
}

#[tokio::test]
async fn posts_from_web_pages_are_refused_and_posts_from_the_operator_work() {
    let proxy = Proxy::start(None).await;
    let host = proxy.admin.to_string();
    let own_origin = format!("http://{host}");
    let refused: &[(&str, &[(&str, &str)])] = &[
        ("a cross-site POST", &[("origin", "http://evil.example")]),
        (
            "a POST from another local origin",
            &[("origin", "http://127.0.0.1:8000")],
        ),
        (
            "a DNS-rebinding POST",
            &[
                ("host", "evil.example:9901"),
                ("origin", "http://evil.example:9901"),
            ],
        ),
        ("a POST with a foreign Host", &[("host", "evil.example")]),
    ];
    for (what, headers) in refused {
        let (status, body) = proxy
            .admin(Method::POST, "/healthcheck/fail", headers)
            .await
            .unwrap();
        eprintln!("{what}: {status} {}", body.trim());
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
        assert_eq!(proxy.ready().await, "LIVE", "{what} changed the state");
    }
    assert!(
        proxy.log().contains("admin request refused"),
        "{}",
        proxy.log()
    );

    // curl: no Origin, Host the admin address; then a browser on the
    // admin's own origin.
    let (status, _) = proxy
        .admin(Method::POST, "/healthcheck/fail", &[])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(proxy.ready().await, "DRAINING");
    let (status, _) = proxy
        .admin(
            Method::POST,
            "/healthcheck/ok",
            &[("origin", own_origin.as_str()), ("host", "localhost")],
        )
        .await
        .unwrap();
    // The Origin names the admin address, the Host `localhost`: not the
    // same origin.
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = proxy
        .admin(
            Method::POST,
            "/healthcheck/ok",
            &[("origin", own_origin.as_str())],
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(proxy.ready().await, "LIVE");
    // Reads are not checked.
    let (status, _) = proxy
        .admin(
            Method::GET,
            "/ready",
            &[("host", "evil.example"), ("origin", "http://evil.example")],
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_slowloris_on_the_admin_is_closed_by_the_header_timeout() {
    let proxy = Proxy::start(None).await;
    let mut slow = TcpStream::connect(proxy.admin).await.unwrap();
    let mut silent = TcpStream::connect(proxy.admin).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /ready HTTP/1.1\r\n").await.unwrap();
    // A header line every 500 ms, never the blank line that ends them,
    // until the proxy closes the connection.
    let mut lines = 0;
    let closed_after = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut buf = [0; 512];
        let closed = match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
        {
            // End of stream, an error, or an answer: the server is done with it.
            Ok(_) => true,
            Err(_) => slow
                .write_all(format!("x-{lines}: y\r\n").as_bytes())
                .await
                .is_err(),
        };
        if closed {
            break started.elapsed();
        }
        lines += 1;
        assert!(
            started.elapsed() < pylon::admin_http::HEADER_READ_TIMEOUT + DEADLINE,
            "the slow connection is still open after {lines} header lines"
        );
    };
    eprintln!("slowloris closed after {closed_after:?} and {lines} header lines");
    assert!(closed_after >= pylon::admin_http::HEADER_READ_TIMEOUT - Duration::from_millis(500));
    // The connection that sent nothing at all is closed by then too.
    let mut buf = [0; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut buf))
        .await
        .expect("the silent connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(proxy.ready().await, "LIVE");
}
