//! Small HTTP backends for the README demo: `pylon-demo-backends ADDR=ID...`
//! serves, on each loopback address, `Hello from ID (ADDR): METHOD PATH`.
//! Non-loopback addresses are refused. Stops on Ctrl-C or SIGTERM.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut servers = Vec::new();
    for arg in std::env::args().skip(1) {
        let (addr, id) = arg
            .split_once('=')
            .with_context(|| format!("expected ADDR=ID, got {arg:?}"))?;
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("bad address {addr:?}"))?;
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "{addr}: demo backends bind loopback only"
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        servers.push(tokio::spawn(serve(listener, addr, id.to_string())));
    }
    anyhow::ensure!(!servers.is_empty(), "usage: pylon-demo-backends ADDR=ID...");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

async fn serve(listener: tokio::net::TcpListener, addr: SocketAddr, id: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let id = id.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = format!("Hello from {id} ({addr}): {} {}\n", req.method(), req.uri());
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
