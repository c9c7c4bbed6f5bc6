//! The logs of the child processes tests start (Envoy, pylon-proxy, the gRPC
//! clients and servers): each writes its stderr to a file in its temp dir, and
//! a failing test prints the end of it.

use std::path::Path;

/// The last `n` lines of the log at `path`, between two lines naming `what`
/// (e.g. "envoy `edge-1`"). An unreadable log reads as empty.
pub fn tail(path: &Path, what: &str, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    format!("----- {what} log, last {n} lines -----\n{tail}\n----- end of {what} log -----")
}

/// How many log lines a process prints when the test using it panics: the
/// environment variable `var` if it holds a number, else 80.
pub fn panic_tail_lines(var: &str) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_lines_labelled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(
            tail(&path, "envoy `x`", 2),
            "----- envoy `x` log, last 2 lines -----\nb\nc\n----- end of envoy `x` log -----"
        );
        assert!(tail(&dir.path().join("missing"), "p", 5).contains("last 5 lines -----\n\n"));
    }
}
