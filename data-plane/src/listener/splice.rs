//! Zero-copy TCP relaying with `splice(2)`: socket -> pipe -> socket, so
//! proxied bytes never enter user space.
//!
//! Owned here: moving bytes both ways between two connected sockets, with
//! half-close propagation, counting bytes and recording the last read time
//! for the idle timer. The kernel does the copying; per chunk there are two
//! system calls and no buffer in the process. [`Pipes::new`] reports
//! [`Unsupported`](std::io::ErrorKind::Unsupported) before any byte moves if
//! pipes cannot be made, so the caller can fall back to a user-space copy.
//!
//! Readiness comes from tokio (`readable`/`writable` + `try_io`), so a
//! would-block clears the right socket's readiness. Each direction drains its
//! pipe completely before reading again, so a would-block while filling comes
//! from the source socket and one while draining from the destination.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Pipe capacity asked for (the kernel may grant less); also the most moved per call.
const PIPE_SIZE: usize = 1 << 20;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// From `a` to `b`.
    pub a_to_b: u64,
    /// From `b` to `a`.
    pub b_to_a: u64,
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e))?;
        // A bigger pipe means fewer, larger splices; fall back to the default size.
        let size = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(64 * 1024);
        Ok(Pipe { read, write, size })
    }
}

/// The two pipes of one relay (one per direction).
pub struct Pipes(Pipe, Pipe);

impl std::fmt::Debug for Pipes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipes").field("size", &self.0.size).finish()
    }
}

impl Pipes {
    /// Makes the pipes; `Unsupported` when the system cannot.
    pub fn new() -> io::Result<Pipes> {
        Ok(Pipes(Pipe::new()?, Pipe::new()?))
    }

    /// Relays between `a` and `b` until both directions have ended (EOF
    /// propagated as a write shutdown) or an error occurs. `last` receives
    /// the time of the latest read, in milliseconds since `base`; `moved` the
    /// byte counts as they grow.
    pub async fn relay(
        &self,
        a: &TcpStream,
        b: &TcpStream,
        last: &AtomicU64,
        base: Instant,
        moved: &Moved64,
    ) -> io::Result<()> {
        let (r1, r2) = tokio::join!(
            one_way(a, b, &self.0, last, base, &moved.a_to_b),
            one_way(b, a, &self.1, last, base, &moved.b_to_a)
        );
        r1.and(r2)
    }
}

/// Byte counters shared with the caller while the relay runs.
#[derive(Debug, Default)]
pub struct Moved64 {
    /// From `a` to `b`.
    pub a_to_b: AtomicU64,
    /// From `b` to `a`.
    pub b_to_a: AtomicU64,
}

impl Moved64 {
    /// The counts so far.
    pub fn get(&self) -> Moved {
        Moved {
            a_to_b: self.a_to_b.load(Ordering::Relaxed),
            b_to_a: self.b_to_a.load(Ordering::Relaxed),
        }
    }
}

async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    last: &AtomicU64,
    base: Instant,
    count: &AtomicU64,
) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src.as_fd(), None, &pipe.write, None, pipe.size, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // EOF from src: half-close towards dst, keep the other direction going.
            let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
            return Ok(());
        }
        last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, dst.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn relays_both_ways_and_propagates_half_close() {
        // client <-> (a | relay | b) <-> server
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let last = AtomicU64::new(0);
        let moved = Moved64::default();
        let base = Instant::now();
        let pipes = Pipes::new().unwrap();
        let relay = pipes.relay(&a, &b, &last, base, &moved);
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let talk = async {
            let expect = payload.clone();
            let up = async {
                client.write_all(&payload).await.unwrap();
                client.shutdown().await.unwrap();
                let mut back = Vec::new();
                client.read_to_end(&mut back).await.unwrap();
                back
            };
            let down = async {
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, expect);
                server.write_all(b"bye").await.unwrap();
                server.shutdown().await.unwrap();
            };
            let (back, ()) = tokio::join!(up, down);
            back
        };
        let (r, back) = tokio::join!(relay, talk);
        r.unwrap();
        assert_eq!(back, b"bye");
        assert_eq!(
            moved.get(),
            Moved {
                a_to_b: 3_000_000,
                b_to_a: 3
            }
        );
    }
}
