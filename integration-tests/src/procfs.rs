//! What a test can read about another process from `/proc`: how many file
//! descriptors it holds and its resident memory. Linux only, like the proxies
//! under test.
//!
//! Owns only the reading; what counts as a bound is the test's business.

use anyhow::Context as _;

/// Open file descriptors of process `pid`.
pub fn fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count())
}

/// Resident memory of process `pid` (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .context("no VmRSS line")
}

/// This process's soft limit on open files.
pub fn own_fd_limit() -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .context("no `Max open files` line")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(fds(pid).unwrap() >= 3);
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(own_fd_limit().unwrap() > 0);
    }
}
