//! The interop matrix's bookkeeping: which clients and checks it has, where a
//! test run records each result, and the README table made from them.
//!
//! Owns: the names of the matrix's rows ([`ClientId`]) and columns
//! ([`CheckId`]), the result files under `target/interop/` (one per cell,
//! written by a [`Recorder`] when its test ends, pass or fail), and rendering
//! them as Markdown between two marker comments in README.md. The checks
//! themselves are in `tests/interop.rs`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A row of the matrix: one xDS client and the protocol variant it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientId {
    EnvoySotw,
    EnvoyDelta,
    PylonSotw,
    PylonDelta,
    Grpcio,
    GrpcJs,
    GrpcGo,
    GrpcJava,
}

impl ClientId {
    /// Every client, in table order.
    pub const ALL: [ClientId; 8] = [
        ClientId::EnvoySotw,
        ClientId::EnvoyDelta,
        ClientId::PylonSotw,
        ClientId::PylonDelta,
        ClientId::Grpcio,
        ClientId::GrpcJs,
        ClientId::GrpcGo,
        ClientId::GrpcJava,
    ];

    /// The test-name and file-name form, e.g. `envoy_delta`.
    pub fn key(self) -> &'static str {
        match self {
            ClientId::EnvoySotw => "envoy_sotw",
            ClientId::EnvoyDelta => "envoy_delta",
            ClientId::PylonSotw => "pylon_sotw",
            ClientId::PylonDelta => "pylon_delta",
            ClientId::Grpcio => "grpcio",
            ClientId::GrpcJs => "grpc_js",
            ClientId::GrpcGo => "grpc_go",
            ClientId::GrpcJava => "grpc_java",
        }
    }

    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            ClientId::EnvoySotw => "Envoy 1.40 (SotW ADS)",
            ClientId::EnvoyDelta => "Envoy 1.40 (delta ADS)",
            ClientId::PylonSotw => "pylon-proxy (SotW ADS)",
            ClientId::PylonDelta => "pylon-proxy (delta ADS)",
            ClientId::Grpcio => "Python grpcio 1.85 (xds:///)",
            ClientId::GrpcJs => "Node @grpc/grpc-js-xds 1.14",
            ClientId::GrpcGo => "grpc-go 1.84 (xds:///)",
            ClientId::GrpcJava => "grpc-java 1.85 (xds:///)",
        }
    }

    /// Whether it speaks incremental xDS (the gRPC clients speak SotW).
    pub fn is_delta(self) -> bool {
        matches!(self, ClientId::EnvoyDelta | ClientId::PylonDelta)
    }

    /// Whether it is a proxy (Envoy or pylon-proxy) rather than a proxyless
    /// gRPC client.
    pub fn is_proxy(self) -> bool {
        !matches!(
            self,
            ClientId::Grpcio | ClientId::GrpcJs | ClientId::GrpcGo | ClientId::GrpcJava
        )
    }
}

/// A column of the matrix: one protocol behaviour checked against every client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckId {
    FirstSync,
    Edits,
    Nack,
    Restart,
    StaleNonce,
    RequestedBeforeItExists,
    MutualTls,
}

impl CheckId {
    /// Every check, in table order.
    pub const ALL: [CheckId; 7] = [
        CheckId::FirstSync,
        CheckId::Edits,
        CheckId::Nack,
        CheckId::Restart,
        CheckId::StaleNonce,
        CheckId::RequestedBeforeItExists,
        CheckId::MutualTls,
    ];

    /// The test-module and file-name form.
    pub fn key(self) -> &'static str {
        match self {
            CheckId::FirstSync => "first_sync",
            CheckId::Edits => "add_change_remove",
            CheckId::Nack => "nack",
            CheckId::Restart => "restart",
            CheckId::StaleNonce => "stale_nonce",
            CheckId::RequestedBeforeItExists => "requested_before_it_exists",
            CheckId::MutualTls => "mutual_tls",
        }
    }

    /// The column label.
    pub fn label(self) -> &'static str {
        match self {
            CheckId::FirstSync => "1. first sync = selection",
            CheckId::Edits => "2. add, change, remove",
            CheckId::Nack => "3. NACK recorded, not resent",
            CheckId::Restart => "4. restart: same versions",
            CheckId::StaleNonce => "5. stale nonce: no push",
            CheckId::RequestedBeforeItExists => "6. requested before it exists",
            CheckId::MutualTls => "7. over mutual TLS",
        }
    }
}

/// Where a run's results go: `target/interop/` in the workspace.
pub fn results_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    target.join("interop")
}

fn result_path(client: ClientId, check: CheckId) -> PathBuf {
    results_dir().join(format!("{}.{}", client.key(), check.key()))
}

/// Records one cell of the matrix: `pass` when [`Recorder::pass`] was called,
/// `fail` when the test ended (panicked) before, `skip` when the client's
/// tools are missing outside CI.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    done: bool,
}

impl Recorder {
    /// Starts recording a cell, clearing the result of an earlier run.
    pub fn start(client: ClientId, check: CheckId) -> Recorder {
        let path = result_path(client, check);
        let _ = std::fs::create_dir_all(results_dir());
        let _ = std::fs::remove_file(&path);
        Recorder { path, done: false }
    }

    /// The check passed.
    pub fn pass(mut self) {
        self.write("pass");
    }

    /// The check could not run here (a tool is missing outside CI).
    pub fn skip(mut self) {
        self.write("skip");
    }

    /// The client cannot do what the check needs (shown as such, not as a
    /// pass; the test that records it asserts that it indeed fails).
    pub fn unsupported(mut self) {
        self.write("unsupported");
    }

    fn write(&mut self, result: &str) {
        self.done = true;
        if let Err(e) = std::fs::write(&self.path, result) {
            eprintln!("cannot record {}: {e}", self.path.display());
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done {
            self.write("fail");
        }
    }
}

/// The README table from the results in `dir`: ✅ pass, ❌ fail, ⏭ skipped,
/// `-` not run.
pub fn render_table(dir: &Path) -> String {
    let mut out = String::new();
    let _ = write!(out, "| client |");
    for check in CheckId::ALL {
        let _ = write!(out, " {} |", check.label());
    }
    let _ = write!(out, "\n|---|");
    for _ in CheckId::ALL {
        let _ = write!(out, ":---:|");
    }
    out.push('\n');
    for client in ClientId::ALL {
        let _ = write!(out, "| {} |", client.label());
        for check in CheckId::ALL {
            let file = dir.join(format!("{}.{}", client.key(), check.key()));
            let cell = match std::fs::read_to_string(file).as_deref() {
                Ok("pass") => "✅",
                Ok("fail") => "❌",
                Ok("skip") => "⏭",
                Ok("unsupported") => "🚫",
                _ => "-",
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out
}

/// The comment lines the generated table sits between in README.md.
pub const BEGIN: &str = "<!-- interop-matrix:begin (generated by scripts/test.sh; do not edit) -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- interop-matrix:end -->";

/// `readme` with the text between [`BEGIN`] and [`END`] replaced by `table`
/// (and a line saying when it was made), or `None` without both markers.
pub fn replace_table(readme: &str, table: &str, stamp: &str) -> Option<String> {
    let start = readme.find(BEGIN)? + BEGIN.len();
    let end = readme[start..].find(END)? + start;
    Some(format!(
        "{}\n{table}\n{stamp}\n{}",
        &readme[..start],
        &readme[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_every_cell() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("envoy_sotw.first_sync"), "pass").unwrap();
        std::fs::write(dir.path().join("grpc_js.nack"), "fail").unwrap();
        let t = render_table(dir.path());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + ClientId::ALL.len());
        assert!(
            lines[2].starts_with("| Envoy 1.40 (SotW ADS) | ✅ | - |"),
            "{t}"
        );
        assert!(lines[7].contains("| - | - | ❌ |"), "{t}");
    }

    #[test]
    fn the_table_replaces_what_is_between_the_markers() {
        let readme = format!("a\n{BEGIN}\nold\n{END}\nb\n");
        let new = replace_table(&readme, "T", "stamp").unwrap();
        assert_eq!(new, format!("a\n{BEGIN}\nT\nstamp\n{END}\nb\n"));
        assert_eq!(replace_table("no markers", "T", "s"), None);
    }
}
