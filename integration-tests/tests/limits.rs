//! Nothing from outside takes a data plane down: each limit of issue 8,
//! asserted through the bound an operator sees (a status code, a closed
//! connection, descriptors and memory back near their baseline), on Envoy and
//! pylon-proxy alike, over SotW and delta ADS (`<scenario>::{envoy,pylon}_{sotw,delta}`).
//!
//! 1. `circuit_breakers`: `max_connections: 2, max_pending_requests: 1` in
//!    front of a backend that never answers: two requests on two upstream
//!    connections, one pending, the rest 503 with `x-envoy-overloaded` and
//!    `upstream_rq_pending_overflow` counted; `/clusters` shows the thresholds.
//! 2. `http_limits`: 431 for headers over `max_request_headers_kb` and over
//!    `max_headers_count`; a kept-alive connection closed after `idle_timeout`;
//!    a request whose headers trickle closed by `request_headers_timeout`.
//! 3. `slowloris`: many connections trickling headers are all closed by the
//!    header timeout, the proxy's descriptors go back to their baseline and
//!    (pylon-proxy) its memory near it.
//! 4. `connection_header`: headers named in `Connection` are not forwarded,
//!    and nominating `x-forwarded-for` or ten headers is refused (400).
//! 5. `path_normalization`: `normalize_path` and `merge_slashes` decide the
//!    route and the path the backend receives; `%00` is refused (400).
//! 6. `tcp_descriptors`: an idle tcp_proxy connection costs two descriptors.
//!
//! Plus, pylon-proxy only: its built-in header timeout when
//! `request_headers_timeout` is unset (Envoy has none then).

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use integration_tests::backends::{HeaderEcho, HttpServer, Silent, TcpEcho};
use integration_tests::config::{
    CircuitBreakers, Cluster, Listener, NativeHttpListener, PylonConfig, Route,
};
use integration_tests::dataplane::{DataPlane, Flavour, Kind};
use integration_tests::http;
use integration_tests::ports::{free_addr, loopback, LOOPBACK};
use integration_tests::procfs;
use integration_tests::pylon::Ads;
use integration_tests::scenario::{stack, DEADLINE};
use integration_tests::{assert_eventually, every_data_plane};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

every_data_plane!(
    circuit_breakers,
    http_limits,
    slowloris,
    connection_header,
    path_normalization,
    tcp_descriptors,
);

/// The data plane's stats.
async fn stats(dp: &DataPlane) -> anyhow::Result<BTreeMap<String, u64>> {
    dp.admin().stats().await
}

/// Waits until stat `name` passes `check`; returns its value.
async fn wait_stat(dp: &DataPlane, name: &str, what: &str, check: impl Fn(u64) -> bool) -> u64 {
    assert_eventually!(DEADLINE, format!("{name} {what}"), async || {
        let v = stats(dp).await?.get(name).copied().unwrap_or(0);
        ensure!(check(v), "{name} = {v}");
        Ok(v)
    })
}

/// Waits until GET `/` through `listen` is answered 200.
async fn wait_serving(listen: SocketAddr) {
    assert_eventually!(
        DEADLINE,
        format!("GET {listen}/ answered 200"),
        async || {
            let r = http::get(listen, "/").await?;
            ensure!(r.status == 200, "{} {}", r.status, r.body);
            Ok(())
        }
    );
}

fn pid(dp: &DataPlane) -> u32 {
    dp.pid().expect("the data plane is running")
}

/// A GET of `path` with `extra` header lines, closing after the response.
fn get_request(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: limits.test\r\n{extra}connection: close\r\n\r\n")
        .into_bytes()
}

// ---------------------------------------------------------------------------
// 1. Circuit breakers

async fn circuit_breakers(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let hung = Silent::start(loopback(2)).await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let config = PylonConfig::new()
        .cluster(
            Cluster::new("hung", &[hung.addr()]).circuit_breakers(CircuitBreakers {
                max_connections: Some(2),
                max_pending_requests: Some(1),
                ..Default::default()
            }),
        )
        .listener(Listener::http(
            "front",
            listen,
            // Longer than the test: the held requests stay in flight.
            vec![Route::prefix("/", "hung").timeout(Duration::from_secs(60))],
        ));
    let (pylon, dp) = stack(&bin, flavour, "circuit-breakers", &config).await;
    let admin = dp.admin();
    assert_eventually!(
        DEADLINE,
        "hung's host and thresholds in /clusters",
        async || {
            let c = admin.clusters().await?;
            ensure!(c.hosts("hung") == [hung.addr().to_string()], "{}", c.raw);
            for (key, want) in [
                ("default_priority::max_connections", "2"),
                ("default_priority::max_pending_requests", "1"),
                ("default_priority::max_requests", "1024"),
                ("default_priority::max_retries", "3"),
            ] {
                let got = c.cluster_info.get(&("hung".to_string(), key.to_string()));
                ensure!(got.map(String::as_str) == Some(want), "{key}: {got:?}");
            }
            Ok(())
        }
    );

    // Two requests take the two connections; the third waits for one.
    let mut held = Vec::new();
    for i in 1..=3u64 {
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(b"GET /held HTTP/1.1\r\nhost: limits.test\r\n\r\n")
            .await
            .unwrap();
        held.push(s);
        if i <= 2 {
            assert_eventually!(DEADLINE, format!("{i} upstream connections"), async || {
                ensure!(hung.connections() == i, "{}", hung.connections());
                Ok(())
            });
            wait_stat(
                &dp,
                "cluster.hung.upstream_rq_active",
                &format!("= {i}"),
                |v| v == i,
            )
            .await;
        } else {
            wait_stat(&dp, "cluster.hung.upstream_rq_pending_active", "= 1", |v| {
                v == 1
            })
            .await;
        }
    }
    wait_stat(&dp, "cluster.hung.upstream_cx_overflow", ">= 1", |v| v >= 1).await;

    // Beyond them: 503 at once, flagged as overloaded.
    for _ in 0..2 {
        let r = http::raw(listen, &get_request("/more", "")).await.unwrap();
        assert_eq!(r.status, Some(503), "{}", r.text);
        assert_eq!(r.header("x-envoy-overloaded"), Some("true"), "{}", r.text);
        assert!(r.body().contains("overflow"), "{}", r.text);
    }
    wait_stat(
        &dp,
        "cluster.hung.upstream_rq_pending_overflow",
        "= 2",
        |v| v == 2,
    )
    .await;
    let s = stats(&dp).await.unwrap();
    assert_eq!(
        s.get("cluster.hung.upstream_rq_pending_active"),
        Some(&1),
        "{s:?}"
    );
    assert_eq!(hung.connections(), 2, "no third upstream connection");
    eprintln!(
        "{flavour}: cx_overflow {:?}, rq_pending_total {:?}, upstream_rq_5xx {:?}",
        s.get("cluster.hung.upstream_cx_overflow"),
        s.get("cluster.hung.upstream_rq_pending_total"),
        s.get("cluster.hung.upstream_rq_5xx"),
    );
    drop(held);
    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. HTTP timeouts and header limits

/// Reads until the peer closes the connection, at most `max`; the bytes read
/// and how long it took, or an error if it did not close.
async fn read_until_closed(s: &mut TcpStream, max: Duration) -> anyhow::Result<(String, Duration)> {
    let start = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(max, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    ensure!(
        closed.is_ok(),
        "still open after {max:?}; read so far: {text:?}"
    );
    Ok((text, start.elapsed()))
}

/// Sends the start of a request and then one more header byte every
/// `every`, never finishing the headers, until the connection is closed; the
/// time from the first byte until the close and what the proxy sent back.
async fn trickle_headers(
    addr: SocketAddr,
    every: Duration,
    max: Duration,
) -> anyhow::Result<(String, Duration)> {
    let s = TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(b"GET /slow HTTP/1.1\r\nhost: limits.test\r\nx-slow: ")
        .await?;
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(max, async {
        let mut chunk = [0u8; 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&buf).into_owned();
    ensure!(
        closed.is_ok(),
        "still open after {max:?}; read so far: {text:?}"
    );
    Ok((text, start.elapsed()))
}

async fn http_limits(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let web = HttpServer::start(loopback(2), "web-0").await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let config = PylonConfig::new()
        .cluster(Cluster::new("web", &[web.addr()]))
        .native_listener(
            NativeHttpListener::new("edge", listen, &[("/", "web")])
                .setting("request_headers_timeout: 1s")
                .setting("max_request_headers_kb: 8")
                .setting("common_http_protocol_options: {idle_timeout: 2s, max_headers_count: 20}"),
        );
    let (pylon, dp) = stack(&bin, flavour, "http-limits", &config).await;
    wait_serving(listen).await;

    // Within the limits: served.
    let fine = format!("x-a: {}\r\n", "a".repeat(5000))
        + &(0..10)
            .map(|i| format!("x-h{i}: 1\r\n"))
            .collect::<String>();
    let r = http::raw(listen, &get_request("/fine", &fine))
        .await
        .unwrap();
    assert_eq!(r.status, Some(200), "{}", r.text);

    // Headers over max_request_headers_kb, and more than max_headers_count: 431.
    let big = format!("x-big: {}\r\n", "a".repeat(9000));
    let r = http::raw(listen, &get_request("/big", &big)).await.unwrap();
    assert_eq!(r.status, Some(431), "{}", r.text);
    let many: String = (0..25).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let r = http::raw(listen, &get_request("/many", &many))
        .await
        .unwrap();
    assert_eq!(r.status, Some(431), "{}", r.text);
    wait_stat(&dp, "http.edge.downstream_rq_4xx", ">= 2", |v| v >= 2).await;

    // A kept-alive connection with nothing to do is closed after idle_timeout
    // (Envoy lets an HTTP/1 connection that carried a request drain first).
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"GET /once HTTP/1.1\r\nhost: limits.test\r\n\r\n")
        .await
        .unwrap();
    let (text, took) = read_until_closed(&mut s, DEADLINE).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}");
    wait_stat(&dp, "http.edge.downstream_cx_idle_timeout", ">= 1", |v| {
        v >= 1
    })
    .await;
    eprintln!("{flavour}: idle connection closed after {took:?}");

    // Headers that never end: closed by the header timeout, with a 408 from
    // both proxies.
    let (text, took) = trickle_headers(listen, Duration::from_millis(200), DEADLINE)
        .await
        .unwrap();
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");
    wait_stat(&dp, "http.edge.downstream_rq_header_timeout", "= 1", |v| {
        v == 1
    })
    .await;
    eprintln!(
        "{flavour}: trickled headers closed after {took:?}: {:?}",
        text.lines().next()
    );

    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. Slowloris

/// Connections in the slowloris wave: many, within this process's
/// descriptor limit (the four flavours run at once).
fn slowloris_connections() -> usize {
    let limit = procfs::own_fd_limit().unwrap_or(1024) as usize;
    (limit.saturating_sub(1024) / 8).clamp(100, 1000)
}

async fn slowloris(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let web = HttpServer::start(loopback(2), "web-0").await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let config = PylonConfig::new()
        .cluster(Cluster::new("web", &[web.addr()]))
        .native_listener(
            NativeHttpListener::new("edge", listen, &[("/", "web")])
                .setting("request_headers_timeout: 5s"),
        );
    let (pylon, dp) = stack(&bin, flavour, "slowloris", &config).await;
    wait_serving(listen).await;
    let pid = pid(&dp);
    let (fds_before, rss_before) = (procfs::fds(pid).unwrap(), procfs::rss_kib(pid).unwrap());

    // Each client sends 4 KiB of an unfinished header, then a byte every
    // half second, and counts itself closed when the proxy hangs up.
    let n = slowloris_connections();
    let closed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(listen).await.unwrap();
        let closed = closed.clone();
        clients.push(tokio::spawn(async move {
            let (mut rd, mut wr) = s.into_split();
            let start = format!(
                "GET / HTTP/1.1\r\nhost: limits.test\r\nx-pad: {}",
                "a".repeat(4096)
            );
            let writer = tokio::spawn(async move {
                if wr.write_all(start.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if wr.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            });
            let mut chunk = [0u8; 1024];
            while matches!(rd.read(&mut chunk).await, Ok(n) if n > 0) {}
            writer.abort();
            closed.fetch_add(1, Ordering::SeqCst);
        }));
    }
    let peak = assert_eventually!(
        DEADLINE,
        format!("{n} slowloris connections held"),
        async || {
            let fds = procfs::fds(pid)?;
            ensure!(
                fds >= fds_before + n * 9 / 10,
                "{fds} descriptors (baseline {fds_before}), {} clients closed",
                closed.load(Ordering::SeqCst)
            );
            procfs::rss_kib(pid)
        }
    );
    let started = Instant::now();
    assert_eventually!(
        DEADLINE,
        format!("all {n} closed by the header timeout"),
        async || {
            let c = closed.load(Ordering::SeqCst);
            ensure!(c == n, "{c} of {n} closed");
            Ok(())
        }
    );
    let took = started.elapsed();
    wait_stat(
        &dp,
        "http.edge.downstream_rq_header_timeout",
        &format!("= {n}"),
        |v| v == n as u64,
    )
    .await;
    assert_eventually!(DEADLINE, "descriptors back to the baseline", async || {
        let fds = procfs::fds(pid)?;
        ensure!(
            fds <= fds_before + 4,
            "{fds} descriptors (baseline {fds_before})"
        );
        Ok(())
    });
    // Memory: pylon-proxy's allocator gives back what the wave held, so it
    // ends near its baseline. Envoy's keeps freed memory for reuse (its RSS
    // is printed, not bounded).
    let rss_after = assert_eventually!(DEADLINE, "memory near the baseline", async || {
        let rss = procfs::rss_kib(pid)?;
        if flavour.kind == Kind::Pylon {
            ensure!(
                rss <= rss_before + 8 * 1024,
                "{} MiB (baseline {} MiB, peak {} MiB)",
                rss / 1024,
                rss_before / 1024,
                peak / 1024
            );
        }
        Ok(rss)
    });
    eprintln!(
        "{flavour}: {n} slowloris connections closed {took:?} after the last was held; \
         RSS {} MiB before, {} MiB with them, {} MiB after; descriptors {fds_before} before",
        rss_before / 1024,
        peak / 1024,
        rss_after / 1024,
    );
    for c in clients {
        c.await.unwrap();
    }
    pylon.shutdown().await;
}

/// pylon-proxy applies a header timeout when `request_headers_timeout` is
/// unset (Envoy then has none and would hold the connection).
#[tokio::test(flavor = "multi_thread")]
async fn builtin_header_timeout_pylon() {
    let flavour = Flavour::new(Kind::Pylon, Ads::Delta);
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let web = HttpServer::start(loopback(2), "web-0").await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let config = PylonConfig::new()
        .cluster(Cluster::new("web", &[web.addr()]))
        .listener(Listener::http(
            "front",
            listen,
            vec![Route::prefix("/", "web")],
        ));
    let (pylon, dp) = stack(&bin, flavour, "builtin-header-timeout", &config).await;
    wait_serving(listen).await;
    let (text, took) = trickle_headers(listen, Duration::from_millis(500), Duration::from_secs(20))
        .await
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(15)).contains(&took),
        "closed after {took:?}"
    );
    wait_stat(&dp, "http.front.downstream_rq_header_timeout", "= 1", |v| {
        v == 1
    })
    .await;
    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. Connection header

async fn connection_header(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let echo = HeaderEcho::start(loopback(2)).await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let config = PylonConfig::new()
        .cluster(Cluster::new("echo", &[echo.addr()]))
        .listener(Listener::http(
            "front",
            listen,
            vec![Route::prefix("/", "echo")],
        ));
    let (pylon, _dp) = stack(&bin, flavour, "connection-header", &config).await;
    wait_serving(listen).await;

    let r = http::raw(
        listen,
        b"GET /h HTTP/1.1\r\nhost: limits.test\r\nconnection: X-Hop, close\r\nx-hop: 1\r\nx-keep: 1\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, Some(200), "{}", r.text);
    let received: Vec<&str> = r.body().lines().collect();
    assert!(received.contains(&"x-keep: 1"), "{received:?}");
    assert!(
        !received.iter().any(|l| l.starts_with("x-hop")),
        "{received:?}"
    );
    assert!(
        !received.iter().any(|l| l.starts_with("connection")),
        "{received:?}"
    );
    // The way back: pylon-proxy drops what the upstream's Connection names
    // (RFC 9110 7.6.1); Envoy forwards it.
    assert_eq!(r.header("x-resp-keep"), Some("1"), "{}", r.text);
    match flavour.kind {
        Kind::Pylon => assert_eq!(r.header("x-resp-hop"), None, "{}", r.text),
        Kind::Envoy => assert_eq!(r.header("x-resp-hop"), Some("1"), "{}", r.text),
    }

    // Nominating x-forwarded-for, or ten headers, is refused.
    for connection in ["x-forwarded-for", "a, b, c, d, e, f, g, h, i, j"] {
        let req = format!(
            "GET /h HTTP/1.1\r\nhost: limits.test\r\nconnection: {connection}\r\nx-forwarded-for: 192.0.2.1\r\n\r\n"
        );
        let r = http::raw(listen, req.as_bytes()).await.unwrap();
        assert_eq!(r.status, Some(400), "{connection}: {}", r.text);
    }
    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5. Path normalisation

async fn path_normalization(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let ab = HttpServer::start(loopback(2), "ab").await.unwrap();
    let rest = HttpServer::start(loopback(3), "rest").await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let config = PylonConfig::new()
        .cluster(Cluster::new("ab", &[ab.addr()]))
        .cluster(Cluster::new("rest", &[rest.addr()]))
        .native_listener(
            NativeHttpListener::new("edge", listen, &[("/a/b", "ab"), ("/", "rest")])
                .setting("normalize_path: true")
                .setting("merge_slashes: true"),
        );
    let (pylon, dp) = stack(&bin, flavour, "path-normalization", &config).await;
    wait_serving(listen).await;

    let table: &[(&str, u16, &str, &str)] = &[
        // request path, status, backend, path the backend received
        ("/x/../a//b/./c", 200, "ab", "/a/b/c"),
        ("/a/%2e%2E/a/b", 200, "ab", "/a/b"),
        ("/%61/b/c", 200, "ab", "/a/b/c"),
        ("//a///b?q=//x", 200, "ab", "/a/b"),
        ("/a\\..\\a\\b", 200, "ab", "/a/b"),
        ("/a/b/../../x", 200, "rest", "/x"),
        ("/a/b%2Fc", 200, "ab", "/a/b%2Fc"),
    ];
    for (path, status, backend, received) in table {
        let r = http::raw(listen, &get_request(path, "")).await.unwrap();
        assert_eq!(r.status, Some(*status), "{path}: {}", r.text);
        assert_eq!(r.body(), *backend, "{path}: {}", r.text);
        assert_eq!(
            r.header("x-request-path"),
            Some(*received),
            "{path}: {}",
            r.text
        );
    }
    let r = http::raw(listen, &get_request("/a/b%00", ""))
        .await
        .unwrap();
    assert_eq!(r.status, Some(400), "{}", r.text);
    wait_stat(&dp, "http.edge.downstream_rq_4xx", ">= 1", |v| v >= 1).await;
    pylon.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. TCP proxy descriptors

async fn tcp_descriptors(flavour: Flavour) {
    let Some(bin) = flavour.binary_or_skip() else {
        return;
    };
    let echo = TcpEcho::start(loopback(2)).await.unwrap();
    let listen = free_addr(LOOPBACK).unwrap();
    let config = PylonConfig::new()
        .cluster(Cluster::new("echo", &[echo.addr()]))
        .listener(Listener::tcp_proxy("echo", listen, "echo"));
    let (pylon, dp) = stack(&bin, flavour, "tcp-descriptors", &config).await;
    let admin = dp.admin();
    assert_eventually!(DEADLINE, "echo host in /clusters", async || {
        let hosts = admin.clusters().await?.hosts("echo");
        ensure!(hosts == [echo.addr().to_string()], "{hosts:?}");
        Ok(())
    });
    // One round trip first: whatever the proxy sets up on first use (a
    // pipe in its pool, an upstream connection pool) is in the baseline.
    let mut first = TcpStream::connect(listen).await.unwrap();
    roundtrip(&mut first, b"warm").await;
    drop(first);
    let pid = pid(&dp);
    let before = assert_eventually!(DEADLINE, "descriptors settle", async || {
        let a = procfs::fds(pid)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b = procfs::fds(pid)?;
        ensure!(a == b, "{a} then {b}");
        Ok(b)
    });

    let n = 200;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(listen).await.unwrap();
        // Bytes both ways, then idle.
        roundtrip(&mut s, format!("hello {i}").as_bytes()).await;
        conns.push(s);
    }
    let held = procfs::fds(pid).unwrap();
    let per_connection = (held - before) as f64 / n as f64;
    eprintln!("{flavour}: {n} idle tcp_proxy connections: {before} -> {held} descriptors ({per_connection:.2} each)");
    assert!(
        held >= before + 2 * n && held <= before + 2 * n + 8,
        "{held} descriptors with {n} idle connections (baseline {before}): expected about 2 per connection"
    );

    // Half-close still propagates: the client's EOF reaches the backend,
    // which closes, and the client sees the end.
    for s in conns.iter_mut().take(5) {
        s.shutdown().await.unwrap();
        let (rest, _) = read_until_closed(s, DEADLINE).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }
    drop(conns);
    assert_eventually!(DEADLINE, "descriptors back to the baseline", async || {
        let fds = procfs::fds(pid)?;
        ensure!(fds <= before + 2, "{fds} descriptors (baseline {before})");
        Ok(())
    });
    pylon.shutdown().await;
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, msg);
}
