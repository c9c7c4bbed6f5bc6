//! Accept loops that survive running out of file descriptors.
//!
//! When the process (`EMFILE`) or the system (`ENFILE`) has no descriptor
//! left, `accept` fails while the connection stays queued, so the listening
//! socket is readable again at once: a loop that logs and retries spins a
//! core and writes a line per attempt until a descriptor frees up. Every
//! accept loop of both binaries (the admin servers, pylon-xds's gRPC
//! listener, pylon-proxy's listeners) goes through [`AcceptBackoff`]
//! instead: after a failed accept it waits, from [`FIRST_DELAY`] doubling up
//! to [`MAX_DELAY`], and a success resets the wait. Its warning is written at
//! most once a second, with the number of failures left out since the last
//! one.
//!
//! [`incoming`] turns a listener into the stream of connections tonic's
//! `serve_with_incoming_shutdown` takes, with the same backoff, so tonic
//! (which retries an accept error at once) never sees one.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};

use crate::throttle::Throttle;

/// The wait after the first failed accept in a row.
pub const FIRST_DELAY: Duration = Duration::from_millis(10);
/// The longest wait between two accepts, however many failed in a row.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// The backoff and the rate-limited warning of one accept loop.
#[derive(Debug)]
pub struct AcceptBackoff {
    listener: String,
    next: Duration,
    warn: Throttle,
}

impl AcceptBackoff {
    /// The backoff of the loop accepting on `listener` (a name for the log:
    /// `admin`, `xds`, a listener's name).
    pub fn new(listener: impl Into<String>) -> Self {
        AcceptBackoff {
            listener: listener.into(),
            next: FIRST_DELAY,
            warn: Throttle::per_second(),
        }
    }

    /// A connection was accepted: the next failure waits [`FIRST_DELAY`] again.
    pub fn accepted(&mut self) {
        self.next = FIRST_DELAY;
    }

    /// An accept failed with `error`: logs it (at most once a second) and
    /// returns how long to wait before accepting again.
    pub fn failed(&mut self, error: &io::Error) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        if let Some(suppressed) = self.warn.allow() {
            let hint = match error.raw_os_error() {
                Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE => {
                    " (out of file descriptors: raise LimitNOFILE / ulimit -n, or shed connections)"
                }
                _ => "",
            };
            tracing::warn!(
                listener = %self.listener,
                %error,
                retry_in_ms = wait.as_millis() as u64,
                suppressed,
                "accept failed{hint}; backing off"
            );
        }
        wait
    }

    /// Accepts the next connection on `listener`, waiting out failures.
    pub async fn accept(&mut self, listener: &TcpListener) -> (TcpStream, SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(accepted) => {
                    self.accepted();
                    return accepted;
                }
                Err(e) => tokio::time::sleep(self.failed(&e)).await,
            }
        }
    }
}

/// The connections accepted on `listener`, forever, with [`AcceptBackoff`]
/// between failures: the stream never yields an error (the `io::Error` item
/// type is what tonic asks for).
pub fn incoming(
    listener: TcpListener,
    name: &str,
) -> impl Stream<Item = io::Result<TcpStream>> + Send + 'static {
    let backoff = AcceptBackoff::new(name);
    futures::stream::unfold((listener, backoff), |(listener, mut backoff)| async move {
        let (stream, _peer) = backoff.accept(&listener).await;
        Some((Ok(stream), (listener, backoff)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_maximum_and_reset_on_success() {
        let mut b = AcceptBackoff::new("test");
        let e = io::Error::from_raw_os_error(nix::libc::EMFILE);
        let waits: Vec<u64> = (0..10).map(|_| b.failed(&e).as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.accepted();
        assert_eq!(b.failed(&e), FIRST_DELAY);
    }
}
