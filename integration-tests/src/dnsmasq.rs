//! A real DNS server on loopback for one test: Debian's dnsmasq, run
//! unprivileged on a high port of 127.0.0.1.
//!
//! Owns: finding the binary (`PYLON_DNSMASQ`, else `dnsmasq` on `PATH` or in
//! `/usr/sbin`), starting it from the test process with its hosts file in a
//! private temp dir, answering only from that file (`--local=/#/`: every name
//! is local, so an unknown name is NXDOMAIN and a name without AAAA is
//! NODATA, never a forward to a server that is not there), changing the
//! answers (the file is rewritten and dnsmasq gets SIGHUP, as an operator
//! would do), stopping and starting it again on the same port, and a minimal
//! A query to see what it answers. Answers have a TTL of 0, so nothing
//! caches them.
//!
//! It does not know what the names mean to a test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;
use tokio::process::Child;

use crate::eventually::eventually;

/// How long dnsmasq may take to answer after a start or a reload.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where dnsmasq is, if anywhere.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PYLON_DNSMASQ") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("dnsmasq"))
        .find(|p| p.is_file())
}

/// The binary, or `None` after reporting it missing (a panic under CI).
pub fn binary_or_skip() -> Option<PathBuf> {
    binary().or_else(|| {
        crate::missing_tool(
            "dnsmasq",
            "run scripts/test.sh (installs Debian's dnsmasq-base) or set PYLON_DNSMASQ",
        )
    })
}

/// A running dnsmasq answering from a hosts file. Killed when dropped.
#[derive(Debug)]
pub struct Dnsmasq {
    binary: PathBuf,
    addr: SocketAddr,
    dir: TempDir,
    child: Option<Child>,
}

/// `(name, address)` pairs, one line each in the hosts file.
pub type Records<'a> = &'a [(&'a str, IpAddr)];

impl Dnsmasq {
    /// Starts dnsmasq on a free port of 127.0.0.1 answering `records`.
    pub async fn start(binary: PathBuf, records: Records<'_>) -> anyhow::Result<Dnsmasq> {
        let dir = tempfile::Builder::new()
            .prefix("pylon-dnsmasq-")
            .tempdir()?;
        let mut d = Dnsmasq {
            binary,
            addr: free_udp_and_tcp()?,
            dir,
            child: None,
        };
        d.write_hosts(records)?;
        d.start_again().await?;
        Ok(d)
    }

    /// The address it answers on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn hosts(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    fn write_hosts(&self, records: Records<'_>) -> anyhow::Result<()> {
        let text: String = records
            .iter()
            .map(|(name, ip)| format!("{ip} {name}\n"))
            .collect();
        let tmp = self.dir.path().join("hosts.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.hosts())?;
        Ok(())
    }

    /// Starts dnsmasq (again) on its port, and waits until it answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "dnsmasq is already running");
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg(format!("--port={}", self.addr.port()))
            .arg(format!("--listen-address={}", self.addr.ip()))
            .arg("--bind-interfaces")
            .args(["--no-resolv", "--no-hosts", "--no-poll"])
            .arg(format!("--addn-hosts={}", self.hosts().display()))
            .arg("--local=/#/")
            .arg("--local-ttl=0")
            .arg("--cache-size=0")
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("pid").display()
            ))
            .args(["--log-queries", "--log-facility=-"]);
        if running_as_root() {
            // Keep root: dnsmasq would switch to `nobody`, who cannot read
            // the private temp dir on SIGHUP.
            cmd.args(["--user=root", "--group=root"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.path().join("stdout"))?)
            .stderr(std::fs::File::create(self.dir.path().join("stderr"))?)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        let addr = self.addr;
        let child = &mut self.child;
        let up = eventually("dnsmasq answering", START_TIMEOUT, async || {
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                // Not retried: an exited dnsmasq will not come back.
                return Ok(Err(anyhow::anyhow!("dnsmasq exited: {status}")));
            }
            query_a(addr, "pylon-probe.invalid").map(|_| Ok(()))
        })
        .await
        .and_then(|r| r);
        if let Err(e) = up {
            self.child = None;
            anyhow::bail!("{e:#}\n{}", self.log());
        }
        Ok(())
    }

    /// Replaces the answers (rewrite the hosts file, SIGHUP) and waits until
    /// dnsmasq gives the new ones.
    pub async fn set(&self, records: Records<'_>) -> anyhow::Result<()> {
        self.write_hosts(records)?;
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("dnsmasq is not running")?;
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .context("kill -HUP")?;
        anyhow::ensure!(status.success(), "kill -HUP {pid}: {status}");
        let mut want: Vec<(String, Vec<Ipv4Addr>)> = Vec::new();
        for (name, ip) in records {
            if let IpAddr::V4(v4) = ip {
                match want.iter_mut().find(|(n, _)| n == name) {
                    Some((_, ips)) => ips.push(*v4),
                    None => want.push((name.to_string(), vec![*v4])),
                }
            }
        }
        let addr = self.addr;
        eventually(
            "dnsmasq giving the new answers",
            START_TIMEOUT,
            async || {
                for (name, ips) in &want {
                    let mut got = query_a(addr, name)?;
                    got.sort();
                    let mut ips = ips.clone();
                    ips.sort();
                    anyhow::ensure!(got == ips, "{name}: {got:?}, want {ips:?}");
                }
                Ok(())
            },
        )
        .await
    }

    /// Replaces the answers it will give when started again (while stopped).
    pub fn set_before_start(&self, records: Records<'_>) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "dnsmasq is running: use set");
        self.write_hosts(records)
    }

    /// Kills dnsmasq: lookups get no answer until [`Dnsmasq::start_again`].
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    /// Its log (queries included) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- dnsmasq log (last lines) ---\n{}", tail.join("\n"));
        }
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A port of 127.0.0.1 free for both UDP and TCP a moment ago, below the
/// kernel's ephemeral range (32768 and up by default): while dnsmasq is
/// stopped, no socket the system hands out (a resolver's query socket, a
/// connection's local port) can take it before it starts again.
fn free_udp_and_tcp() -> anyhow::Result<SocketAddr> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    for i in 0..200u32 {
        let port = 20_000 + (seed.wrapping_add(i.wrapping_mul(7919)) % 12_000) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let Ok(_udp) = UdpSocket::bind(addr) else {
            continue;
        };
        if std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    anyhow::bail!("no port free for both UDP and TCP")
}

/// Asks `server` for the A records of `name` (one UDP query, 1 s timeout).
/// NXDOMAIN and NODATA give an empty list; no answer is an error.
pub fn query_a(server: SocketAddr, name: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let id: u16 = rand_id();
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len()).context("label too long")?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, server)?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).context("no answer")?;
    let r = buf.get(..n).context("short answer")?;
    anyhow::ensure!(
        r.len() >= 12 && r[..2] == id.to_be_bytes(),
        "not our answer"
    );
    let rcode = r[3] & 0x0f;
    if rcode == 3 {
        return Ok(Vec::new());
    }
    anyhow::ensure!(rcode == 0, "rcode {rcode}");
    let answers = u16::from_be_bytes([r[6], r[7]]);
    // Skip the question: our own name, type and class.
    let mut at = q.len();
    let mut out = Vec::new();
    for _ in 0..answers {
        // Name: a pointer (2 bytes) or labels.
        loop {
            let b = *r.get(at).context("truncated")?;
            if b & 0xc0 == 0xc0 {
                at += 2;
                break;
            }
            at += 1 + usize::from(b);
            if b == 0 {
                break;
            }
        }
        let head = r.get(at..at + 10).context("truncated")?;
        let (rtype, len) = (
            u16::from_be_bytes([head[0], head[1]]),
            usize::from(u16::from_be_bytes([head[8], head[9]])),
        );
        at += 10;
        let data = r.get(at..at + len).context("truncated")?;
        if rtype == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += len;
    }
    Ok(out)
}

fn rand_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos & 0xffff) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_change_on_reload_and_stop_silences_it() {
        let Some(bin) = binary_or_skip() else { return };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut d = Dnsmasq::start(
            bin,
            &[("a.test", ip("127.0.0.21")), ("a.test", ip("127.0.0.22"))],
        )
        .await
        .unwrap();
        let mut got = query_a(d.addr(), "a.test").unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![Ipv4Addr::new(127, 0, 0, 21), Ipv4Addr::new(127, 0, 0, 22)]
        );
        assert!(query_a(d.addr(), "nope.test").unwrap().is_empty());
        d.set(&[("a.test", ip("127.0.0.23"))]).await.unwrap();
        assert_eq!(
            query_a(d.addr(), "a.test").unwrap(),
            vec![Ipv4Addr::new(127, 0, 0, 23)]
        );
        d.stop().await.unwrap();
        assert!(query_a(d.addr(), "a.test").is_err());
        d.start_again().await.unwrap();
        assert_eq!(
            query_a(d.addr(), "a.test").unwrap(),
            vec![Ipv4Addr::new(127, 0, 0, 23)]
        );
    }
}
