//! Loopback tests of the HTTP/1.1 wire behaviour pylon-proxy owns: raw
//! clients and backends, so that framing, keep-alive and connection reuse
//! are seen byte for byte.

use std::time::Instant as StdInstant;

use http_body_util::Full;
use tokio::io::AsyncBufReadExt;

use super::*;

/// An inline HTTP listener routing `/` to `cluster`.
async fn listener(rt: &Arc<Runtime>, cluster: &str) -> SocketAddr {
    let rc = route_config(
        "inline",
        vec![route(PathMatch::Prefix("/".into()), cluster, None, None)],
    );
    rt.set_listeners(vec![http_listener("web", RouteSource::Inline(rc))])
        .await
        .unwrap();
    bound(rt, "web")
}

/// A hyper backend echoing the request: `<method> <path> <body>`, its
/// body streamed back as it arrives (chunked: no content-length).
async fn echo_http_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    if path == "/stream" {
                        // The body back as it comes, chunked.
                        return Ok::<_, std::convert::Infallible>(Response::new(
                            http_body_util::Either::Left(req.into_body()),
                        ));
                    }
                    if path == "/big" {
                        let big = Bytes::from(vec![b'x'; 1 << 20]);
                        return Ok(Response::new(http_body_util::Either::Right(Full::new(big))));
                    }
                    let method = req.method().to_string();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let text = format!("{method} {path} {}", body.len());
                    Ok(Response::new(http_body_util::Either::Right(Full::new(
                        Bytes::from(text),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Reads one response (head, then a body framed by content-length or
/// chunked) from `r`; returns the head's lines and the body.
async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> (Vec<String>, Vec<u8>) {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let header = |name: &str| {
        head.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let mut body = Vec::new();
    if let Some(n) = header("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).await.unwrap();
    } else if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await.unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    (head, body)
}

#[tokio::test]
async fn pipelined_requests_and_bodies_both_ways() {
    let rt = runtime(Duration::from_secs(1));
    let b = echo_http_backend().await;
    rt.set_clusters(vec![static_cluster("b", &[b])])
        .await
        .unwrap();
    let addr = listener(&rt, "b").await;
    let s = TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = s.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    // Three requests in one write: a GET, a POST with a length, a chunked POST.
    wr.write_all(
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
          POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
          POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    for want in ["GET /a 0", "POST /b 5", "POST /c 7"] {
        let (head, body) = read_response(&mut rd).await;
        assert_eq!(head[0], "HTTP/1.1 200 OK");
        assert_eq!(String::from_utf8_lossy(&body), want);
    }
    // A body streamed back as it comes (chunked upstream): re-chunked, and
    // the connection stays usable.
    wr.write_all(
        b"POST /stream HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let mut line = String::new();
    rd.read_line(&mut line).await.unwrap();
    assert_eq!(line, "HTTP/1.1 200 OK\r\n");
    wr.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    loop {
        let mut l = String::new();
        rd.read_line(&mut l).await.unwrap();
        if l == "\r\n" {
            break;
        }
        rest.push(l);
    }
    assert!(
        rest.iter()
            .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked\r\n")),
        "{rest:?}"
    );
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        rd.read_line(&mut size).await.unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0u8; n + 2];
        rd.read_exact(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body, b"hello world");
    // HEAD: the upstream's content-length, and no body: the next bytes are
    // the next response.
    wr.write_all(b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\nGET /after HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    loop {
        let mut l = String::new();
        rd.read_line(&mut l).await.unwrap();
        if l == "\r\n" {
            break;
        }
        head.push(l);
    }
    assert!(
        head.iter()
            .any(|l| l.to_ascii_lowercase().starts_with("content-length: 9")),
        "{head:?}"
    );
    let (head, body) = read_response(&mut rd).await;
    assert_eq!(head[0], "HTTP/1.1 200 OK");
    assert_eq!(body, b"GET /after 0");
    // One upstream connection carried everything.
    let host = &rt.clusters_view()[0].hosts[0];
    assert_eq!(host.cx_total, 1);
}

#[tokio::test]
async fn http10_expect_continue_and_large_bodies() {
    let rt = runtime(Duration::from_secs(1));
    let b = echo_http_backend().await;
    rt.set_clusters(vec![static_cluster("b", &[b])])
        .await
        .unwrap();
    let addr = listener(&rt, "b").await;

    // HTTP/1.0 without keep-alive: one response, then the connection closes.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /old HTTP/1.0\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.ends_with("GET /old 0"), "{text}");
    // With keep-alive, it stays open.
    let s = TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = s.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    for _ in 0..2 {
        wr.write_all(b"GET /ka HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut rd).await;
        assert!(
            head.iter()
                .any(|l| l.eq_ignore_ascii_case("connection: keep-alive")),
            "{head:?}"
        );
        assert_eq!(body, b"GET /ka 0");
    }

    // Expect: 100-continue: the proxy says continue before the body is sent.
    let s = TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = s.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    wr.write_all(
        b"PUT /e HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut line = String::new();
    rd.read_line(&mut line).await.unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    rd.read_line(&mut line).await.unwrap();
    wr.write_all(b"abc").await.unwrap();
    let (head, body) = read_response(&mut rd).await;
    assert_eq!(head[0], "HTTP/1.1 200 OK");
    assert_eq!(body, b"PUT /e 3");

    // A 1 MiB request body and a 1 MiB response body.
    let big = vec![b'y'; 1 << 20];
    let mut req = format!(
        "POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    wr.write_all(&req).await.unwrap();
    let (_, body) = read_response(&mut rd).await;
    assert_eq!(body, format!("POST /up {}", 1 << 20).as_bytes());
    wr.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut rd).await;
    assert!(
        head.iter()
            .any(|l| l.eq_ignore_ascii_case("content-length: 1048576")),
        "{head:?}"
    );
    assert!(body.len() == 1 << 20 && body.iter().all(|&b| b == b'x'));
}

/// A backend that answers each request `200 ok`, then closes the
/// connection `linger` later (without saying so in the response).
async fn closing_backend(linger: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(linger).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn idle_connections_the_host_closes_leave_the_pool() {
    let rt = runtime(Duration::from_secs(1));
    let b = closing_backend(Duration::from_millis(100)).await;
    rt.set_clusters(vec![static_cluster("b", &[b])])
        .await
        .unwrap();
    let addr = listener(&rt, "b").await;
    let mut c = client(addr).await;
    assert_eq!(get(&mut c, "/").await, (StatusCode::OK, "ok".into()));
    // Pooled, then closed by the host: dropped from the pool without a
    // request, so the connection count goes back to 0.
    assert_eventually!(view_active(&rt) == 0);
    // The next request opens a new connection, and is not failed by the
    // closed one.
    assert_eq!(get(&mut c, "/").await, (StatusCode::OK, "ok".into()));
    assert_eq!(rt.clusters_view()[0].hosts[0].cx_total, 2);
}

#[tokio::test]
async fn a_client_going_away_cancels_its_upstream_request() {
    let rt = runtime(Duration::from_secs(1));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = l.local_addr().unwrap();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        // Reads the request, never answers, and reports when the proxy closes.
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                let _ = closed_tx.send(()).await;
                return;
            }
        }
    });
    rt.set_clusters(vec![static_cluster("b", &[b])])
        .await
        .unwrap();
    let addr = listener(&rt, "b").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eventually!(stat(&rt, "cluster.b.upstream_rq_active") == 1);
    let t0 = StdInstant::now();
    drop(s);
    tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
        .await
        .expect("the upstream connection was not closed")
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eventually!(stat(&rt, "cluster.b.upstream_rq_active") == 0);
    assert_eventually!(stat(&rt, "http.web.downstream_rq_active") == 0);
}

#[tokio::test]
async fn heads_over_the_limit_and_bad_framing_are_refused() {
    let rt = runtime(Duration::from_secs(1));
    let b = echo_http_backend().await;
    rt.set_clusters(vec![static_cluster("b", &[b])])
        .await
        .unwrap();
    let mut l = http_listener(
        "web",
        RouteSource::Inline(route_config(
            "inline",
            vec![route(PathMatch::Prefix("/".into()), "b", None, None)],
        )),
    );
    if let ListenerKind::Http(h) = &mut l.kind {
        h.limits.max_request_headers_kb = 1;
        h.limits.max_headers_count = 3;
    }
    rt.set_listeners(vec![l]).await.unwrap();
    let addr = bound(&rt, "web");
    let raw = |req: Vec<u8>| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all).await;
        String::from_utf8_lossy(&all).into_owned()
    };
    // Whole in one write and over the limit, or more headers than allowed: 431.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-a: {}\r\n\r\n",
        "a".repeat(1100)
    );
    assert!(raw(big.into_bytes()).await.starts_with("HTTP/1.1 431 "));
    let many = b"GET / HTTP/1.1\r\nhost: x\r\na: 1\r\nb: 1\r\nc: 1\r\n\r\n".to_vec();
    assert!(raw(many).await.starts_with("HTTP/1.1 431 "));
    // Both framings, or two lengths: 400.
    let both =
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    assert!(raw(both).await.starts_with("HTTP/1.1 400 "));
    let two =
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n".to_vec();
    assert!(raw(two).await.starts_with("HTTP/1.1 400 "));
    assert!(raw(b"NOT HTTP\r\n\r\n".to_vec())
        .await
        .starts_with("HTTP/1.1 400 "));
    assert_eq!(stat(&rt, "http.web.downstream_cx_protocol_error"), 5);
    assert_eq!(stat(&rt, "http.web.downstream_rq_4xx"), 5);
    // Within the limits: served.
    let fine = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec();
    assert!(raw(fine).await.starts_with("HTTP/1.1 200 "));
}
