//! Proxyless gRPC: real gRPC clients resolving `xds:///greeter.example:50051`
//! through pylon-xds, with no proxy in between. Each scenario runs once per
//! client implementation, grpcio (Python, gRPC C core),
//! `@grpc/grpc-js-xds` (Node), grpc-go and grpc-java, against three real gRPC
//! backends (grpc-go's for grpc-go, grpc-java's for grpc-java, grpcio's for
//! the others):
//!
//! 1. 30 calls spread exactly round robin, 10 per backend;
//! 2. the client's node is selected by a `nodes:` entry and shows up in
//!    `/status` with every type ACKed;
//! 3. an edit removing backend 3 sends every call to backends 1 and 2 (15/15),
//!    with no failed call;
//! 4. an edit adding backend 4 brings it into the rotation (10/10/10 over
//!    backends 1, 2 and 4).

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::ensure;
use integration_tests::eventually::eventually;
use integration_tests::grpc_clients::{CallCounts, ClientKind, GrpcBackends, GrpcClient};
use integration_tests::pylon::Pylon;

/// Deadline for the client's first xDS fetch and connections, and for each
/// pushed edit to show in the spread of calls.
const DEADLINE: Duration = Duration::from_secs(30);

/// Deadline of one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Calls per round: a multiple of 2 and 3, so round robin splits it exactly.
const CALLS: usize = 30;

const SERVICE: &str = "greeter.example";
const PORT: u16 = 50051;
const TARGET: &str = "xds:///greeter.example:50051";
const NODE_CLUSTER: &str = "proxyless-test";

#[tokio::test(flavor = "multi_thread")]
async fn python_round_robin_and_endpoint_changes() {
    round_robin_and_endpoint_changes(ClientKind::Python, "grpc-python-1").await
}

#[tokio::test(flavor = "multi_thread")]
async fn node_round_robin_and_endpoint_changes() {
    round_robin_and_endpoint_changes(ClientKind::Node, "grpc-node-1").await
}

#[tokio::test(flavor = "multi_thread")]
async fn go_round_robin_and_endpoint_changes() {
    round_robin_and_endpoint_changes(ClientKind::Go, "grpc-go-1").await
}

#[tokio::test(flavor = "multi_thread")]
async fn java_round_robin_and_endpoint_changes() {
    round_robin_and_endpoint_changes(ClientKind::Java, "grpc-java-1").await
}

/// pylon-xds YAML serving one gRPC service over `endpoints`, and a `nodes:`
/// entry giving `grpc-*` nodes its listener.
fn config(endpoints: &[SocketAddr]) -> String {
    let mut yaml = String::new();
    writeln!(yaml, "grpc_services:").unwrap();
    writeln!(yaml, "  - name: {SERVICE}").unwrap();
    writeln!(yaml, "    port: {PORT}").unwrap();
    writeln!(yaml, "    endpoints:").unwrap();
    for e in endpoints {
        writeln!(yaml, "      - {e}").unwrap();
    }
    writeln!(yaml, "nodes:").unwrap();
    writeln!(yaml, "  - name: grpc").unwrap();
    writeln!(yaml, "    match: {{id: \"grpc-*\"}}").unwrap();
    writeln!(yaml, "    listeners: [\"{SERVICE}:{PORT}\"]").unwrap();
    yaml
}

/// A spread of calls with no failures and exactly these counts per backend.
fn expect_split(counts: &CallCounts, want: &[(&str, usize)]) -> anyhow::Result<()> {
    let want: BTreeMap<String, usize> = want.iter().map(|(b, n)| (b.to_string(), *n)).collect();
    ensure!(
        counts.errors.is_empty() && counts.ok == want,
        "want {want:?} and no errors, got ok {:?} errors {:?}",
        counts.ok,
        counts.errors
    );
    Ok(())
}

/// Adds the failures of `counts` to `into`.
fn add_errors(into: &mut BTreeMap<String, usize>, counts: &CallCounts) {
    for (code, n) in &counts.errors {
        *into.entry(code.clone()).or_default() += n;
    }
}

/// Like `assert_eventually!`, but a failure also shows what pylon-xds knows
/// of its nodes (a NACK's message above all).
macro_rules! assert_eventually_or_dump {
    ($pylon:expr, $what:expr, $check:expr $(,)?) => {
        match eventually($what, DEADLINE, $check).await {
            Ok(value) => value,
            Err(err) => panic!("{err:?}\n{}", nodes_dump($pylon).await),
        }
    };
}

/// pylon-xds's `/status` nodes, pretty-printed, for failure messages.
async fn nodes_dump(pylon: &Pylon) -> String {
    match pylon.status().await {
        Ok(status) => format!(
            "----- pylon-xds /status nodes -----\n{:#}\n----- end of nodes -----",
            status["nodes"]
        ),
        Err(err) => format!("(pylon-xds /status unavailable: {err:#})"),
    }
}

/// One call first, so that a client still waiting for xDS or connections
/// fails the check after one deadline rather than after 30.
async fn spread(client: &mut GrpcClient) -> anyhow::Result<CallCounts> {
    let probe = client.call(TARGET, 1, CALL_TIMEOUT).await?;
    ensure!(
        probe.errors.is_empty(),
        "probe call failed: ok {:?} errors {:?}",
        probe.ok,
        probe.errors
    );
    client.call(TARGET, CALLS, CALL_TIMEOUT).await
}

async fn round_robin_and_endpoint_changes(kind: ClientKind, node_id: &str) {
    if !kind.tools_or_skip() {
        return;
    }
    // b4 listens from the start but is not in the config until step 4, so
    // whatever reaches it was sent there by pylon-xds.
    let backends = GrpcBackends::start_kind(kind.backends(), &["b1", "b2", "b3", "b4"])
        .await
        .unwrap();
    let [b1, b2, b3, b4] = ["b1", "b2", "b3", "b4"].map(|b| backends.addr(b).unwrap());

    let pylon = Pylon::start(&config(&[b1, b2, b3])).await.unwrap();
    let Some(mut client) =
        GrpcClient::start(kind, pylon.xds_addr().unwrap(), node_id, NODE_CLUSTER)
            .await
            .unwrap()
    else {
        return;
    };

    // 1. Exact round robin once all three subchannels are READY.
    assert_eventually_or_dump!(
        &pylon,
        "30 calls split 10/10/10 over b1, b2, b3",
        async || {
            let counts = spread(&mut client).await?;
            expect_split(&counts, &[("b1", 10), ("b2", 10), ("b3", 10)])
        }
    );

    // 2. The node is connected, selected and in sync on every type.
    let node = assert_eventually_or_dump!(
        &pylon,
        format!("{node_id} connected and SYNCED in /status"),
        async || {
            let node = pylon.node_status(node_id).await?;
            let node = node.ok_or_else(|| anyhow::anyhow!("{node_id} not in /status nodes"))?;
            for ty in ["lds", "rds", "cds", "eds"] {
                let state = &node["types"][ty]["state"];
                ensure!(state == "SYNCED", "{ty} state {state}: {node:#}");
            }
            Ok(node)
        }
    );
    assert_eq!(node["cluster"], NODE_CLUSTER, "{node:#}");
    assert_eq!(node["selection"], "grpc", "{node:#}");
    eprintln!(
        "{} client connected as {node_id}: user agent {}, protocol {}",
        kind.name(),
        node["user_agent"],
        node["protocol"]
    );

    // 3. Backend 3 removed: only b1 and b2 answer, and nothing fails.
    // Calls keep flowing through both edits; none may fail meanwhile.
    let mut failed = BTreeMap::<String, usize>::new();
    pylon.write_config_atomic(&config(&[b1, b2])).unwrap();
    assert_eventually_or_dump!(&pylon, "30 calls split 15/15 over b1, b2", async || {
        let counts = client.call(TARGET, CALLS, CALL_TIMEOUT).await?;
        add_errors(&mut failed, &counts);
        expect_split(&counts, &[("b1", 15), ("b2", 15)])
    });

    // 4. Backend 4 added: it joins the rotation.
    pylon.write_config_atomic(&config(&[b1, b2, b4])).unwrap();
    assert_eventually_or_dump!(&pylon, "b4 answers; 10/10/10 over b1, b2, b4", async || {
        let counts = client.call(TARGET, CALLS, CALL_TIMEOUT).await?;
        add_errors(&mut failed, &counts);
        expect_split(&counts, &[("b1", 10), ("b2", 10), ("b4", 10)])
    });
    assert!(
        failed.is_empty(),
        "calls failed during the edits: {failed:?}"
    );

    client.stop().await.unwrap();
    pylon.shutdown().await;
    backends.stop().await.unwrap();
}
