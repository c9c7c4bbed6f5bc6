//! Process limits both binaries set at start: how many file descriptors the
//! process may hold.
//!
//! Every connection, upstream socket, splice pipe and watched directory takes
//! a descriptor. The soft `RLIMIT_NOFILE` most shells and service managers
//! hand out (often 1,024) is far below what a proxy or a control plane with
//! thousands of clients needs, while the hard limit the administrator allows
//! is usually much higher (systemd's default is 524,288; the units in
//! `deploy/systemd/` set 1,048,576). So, as Envoy and most servers do, both
//! binaries raise the soft limit to the hard one before they bind anything.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The descriptor limits before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit the process started with.
    pub was: u64,
    /// The soft limit now in force: how many descriptors the process may hold.
    pub soft: u64,
    /// The hard limit (the most the soft one may be raised to).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, logs the outcome, and
/// returns the limits. A limit that cannot be read or raised is logged as a
/// warning and the process goes on with what it has.
pub fn raise_nofile() -> Option<NoFile> {
    let (was, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the file descriptor limit");
            return None;
        }
    };
    let soft = if was < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft = was, hard, "cannot raise the file descriptor limit");
                was
            }
        }
    } else {
        was
    };
    let limits = NoFile { was, soft, hard };
    tracing::info!(
        limit = soft,
        was,
        hard,
        "file descriptors: at most {soft} open at once"
    );
    Some(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let limits = raise_nofile().expect("RLIMIT_NOFILE is readable");
        assert_eq!(limits.soft, limits.hard);
        assert!(limits.was <= limits.soft);
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("readable");
        assert_eq!((soft, hard), (limits.soft, limits.hard));
    }
}
