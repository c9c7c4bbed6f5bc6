//! Zero-copy TCP relaying with `splice(2)`: socket -> pipe -> socket, so
//! proxied bytes never enter user space.
//!
//! Owned here: moving bytes both ways between two connected sockets, with
//! half-close propagation, counting bytes and recording the last read time
//! for the idle timer; and each worker thread's small pool of pipes. The
//! kernel does the copying; per chunk there are two system calls and no
//! buffer in the process. [`Splice::new`] reports
//! [`Unsupported`](std::io::ErrorKind::Unsupported) before any byte moves if
//! pipes cannot be made, so the caller can fall back to a user-space copy.
//!
//! A direction holds a pipe only while bytes are in flight: it takes one from
//! its thread's pool when its source turns readable, and gives it back once
//! the pipe is drained into the destination (a pipe that still holds bytes
//! stays with its direction until they are written, or is closed with the
//! connection). So an idle connection costs its two sockets and nothing
//! else, as in Envoy, instead of two sockets and two pipes (six
//! descriptors). The pool keeps at most [`POOL_PIPES`] pipes per thread;
//! pipes given back beyond that are closed.
//!
//! Readiness comes from tokio (`readable`/`writable` + `try_io`), so a
//! would-block clears the right socket's readiness. Each direction drains its
//! pipe completely before reading again, so a would-block while filling comes
//! from the source socket and one while draining from the destination.

use std::cell::RefCell;
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

/// Empty pipes kept for reuse per worker thread.
pub const POOL_PIPES: usize = 16;

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

thread_local! {
    /// This worker's empty pipes. A task may move between workers between
    /// two polls; a pipe is taken and given back without an `.await` in
    /// between the pool accesses, so each access sees one thread's pool.
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// An empty pipe: the thread's last given back, or a new one.
fn take_pipe() -> io::Result<Pipe> {
    match POOL.with(|p| p.borrow_mut().pop()) {
        Some(pipe) => Ok(pipe),
        None => Pipe::new(),
    }
}

/// Gives back an empty pipe; closes it if the pool is full.
fn give_back(pipe: Pipe) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_PIPES {
            pool.push(pipe);
        }
    });
}

/// Pipes in this thread's pool (for tests).
pub fn pooled() -> usize {
    POOL.with(|p| p.borrow().len())
}

/// Relaying through the worker's pipe pool.
#[derive(Debug)]
pub struct Splice(());

impl Splice {
    /// Checks that a pipe can be had (it goes straight back to the pool);
    /// `Unsupported` when the system cannot make pipes.
    pub fn new() -> io::Result<Splice> {
        give_back(take_pipe()?);
        Ok(Splice(()))
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
            one_way(a, b, last, base, &moved.a_to_b),
            one_way(b, a, last, base, &moved.b_to_a)
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
    last: &AtomicU64,
    base: Instant,
    count: &AtomicU64,
) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        src.readable().await?;
        // Bytes (or EOF) are there: only now does this direction need a pipe.
        let pipe = take_pipe()?;
        let filled = src.try_io(Interest::READABLE, || {
            splice(src.as_fd(), None, &pipe.write, None, pipe.size, flags).map_err(io::Error::from)
        });
        let n = match filled {
            Ok(n) => n,
            Err(e) => {
                // Nothing entered the pipe: it is still empty.
                give_back(pipe);
                if e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
        };
        if n == 0 {
            give_back(pipe);
            // EOF from src: half-close towards dst, keep the other direction going.
            let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
            return Ok(());
        }
        last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
        let mut left = n;
        while left > 0 {
            // The pipe holds bytes: it stays with this direction (an error
            // closes it with them).
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, dst.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        give_back(pipe);
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
        let splice = Splice::new().unwrap();
        let relay = splice.relay(&a, &b, &last, base, &moved);
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

    #[tokio::test]
    async fn idle_relays_hold_no_pipe_and_the_pool_is_bounded() {
        // One thread (tokio's test runtime), so one pool.
        Splice::new().unwrap();
        let before = pooled();
        assert!(before >= 1);
        let mut ends = Vec::new();
        for _ in 0..20 {
            let (client, a) = pair().await;
            let (b, server) = pair().await;
            tokio::spawn(async move {
                let (last, moved) = (AtomicU64::new(0), Moved64::default());
                let splice = Splice::new().unwrap();
                let _ = splice.relay(&a, &b, &last, Instant::now(), &moved).await;
            });
            ends.push((client, server));
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // Twenty idle relays, and no pipe taken out of the pool.
        assert_eq!(pooled(), before);
        for (client, server) in &mut ends {
            client.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await.unwrap();
            server.write_all(b"pong").await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong");
        }
        // Drained pipes went back; the pool never holds more than its bound.
        assert!((1..=POOL_PIPES).contains(&pooled()), "{}", pooled());
        let many: Vec<Pipe> = (0..POOL_PIPES + 4).map(|_| take_pipe().unwrap()).collect();
        assert_eq!(pooled(), 0);
        many.into_iter().for_each(give_back);
        assert_eq!(pooled(), POOL_PIPES);
    }
}
