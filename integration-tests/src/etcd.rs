//! A real etcd cluster for one test: `n` members (Debian's `etcd-server`,
//! 3.4) as child processes on loopback ports, each with its data in a
//! private temp dir.
//!
//! Owns: finding the binary, starting the members from the test process
//! (never from a shell that exits), killing one by its process id
//! (SIGKILL) and starting it again on the same ports and data, asking which
//! member leads, and printing each member's log tail when the test panics.
//! Raft timings are shortened (heartbeat 50 ms, election 500 ms) so a lost
//! leader is replaced within about a second.
//!
//! The binary is `PYLON_ETCD` when set, else `etcd` on `PATH`, else
//! `/usr/bin/etcd` (what `apt-get install etcd-server` gives).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;
use tokio::process::Child;

use crate::eventually::eventually;
use crate::ports::{free_addr, LOOPBACK};

/// How long a cluster may take to elect its first leader.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the binary is, if anywhere.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PYLON_ETCD") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/bin/etcd");
        p.is_file().then_some(p)
    })
}

/// The binary, or `None` after reporting it missing (a panic under CI).
pub fn binary_or_skip() -> Option<PathBuf> {
    binary().or_else(|| {
        crate::missing_tool(
            "etcd",
            "Debian: apt-get install etcd-server (scripts/test.sh does), or set PYLON_ETCD",
        )
    })
}

#[derive(Debug)]
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Started once already: a restart joins the existing cluster.
    started: bool,
}

/// Mutual TLS on the members' client port: the members' certificate, the
/// CA that signs clients, and a client certificate for the harness itself.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA of both sides.
    pub ca: PathBuf,
    /// What the members present.
    pub server: crate::tls::CertFiles,
    /// What the harness presents.
    pub client: crate::tls::CertFiles,
}

/// A running etcd cluster. Every member is killed when it is dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    token: String,
    tls: Option<ClientTls>,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers a write.
    pub async fn start(binary: &Path, n: usize) -> anyhow::Result<EtcdCluster> {
        Self::start_with(binary, n, None).await
    }

    /// As [`EtcdCluster::start`], with clients over mutual TLS when `tls`
    /// is given (`https://` client URLs, `--client-cert-auth`).
    pub async fn start_with(
        binary: &Path,
        n: usize,
        tls: Option<ClientTls>,
    ) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::Builder::new().prefix("pylon-etcd-").tempdir()?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client: free_addr(LOOPBACK)?,
                peer: free_addr(LOOPBACK)?,
                data: dir.path().join(format!("m{i}.data")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
                started: false,
            });
        }
        let token = dir
            .path()
            .file_name()
            .map_or("pylon-test".to_string(), |n| {
                n.to_string_lossy().into_owned()
            });
        let mut cluster = EtcdCluster {
            binary: binary.to_path_buf(),
            members,
            token,
            tls,
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_writable(START_TIMEOUT).await?;
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let initial = self.initial_cluster();
        let m = &mut self.members[i];
        let state = if m.started { "existing" } else { "new" };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data)
            .arg("--listen-client-urls")
            .arg(format!("{scheme}://{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("{scheme}://{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-cluster")
            .arg(&initial)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"]);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server.cert)
                .arg("--key-file")
                .arg(&t.server.key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        m.child = Some(child);
        m.started = true;
        Ok(())
    }

    /// The members' client addresses, `HOST:PORT`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.to_string()).collect()
    }

    /// `etcd://A,B,C/KEY` for this cluster.
    pub fn url(&self, key: &str) -> String {
        format!("etcd://{}{key}", self.endpoints().join(","))
    }

    /// The process id of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().and_then(|c| c.id())
    }

    /// SIGKILLs member `i` (by its process id) and waits for it to exit.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.members[i].child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Starts member `i` again on its ports and data.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i)
    }

    /// A client for the members that run.
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let live: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client.to_string())
            .collect();
        Ok(etcd_client::Client::connect(live, self.connect_options()?).await?)
    }

    fn connect_options(&self) -> anyhow::Result<Option<etcd_client::ConnectOptions>> {
        let Some(t) = &self.tls else { return Ok(None) };
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&t.ca)?))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(&t.client.cert)?,
                std::fs::read(&t.client.key)?,
            ));
        Ok(Some(etcd_client::ConnectOptions::new().with_tls(tls)))
    }

    /// Waits until a write through any live member succeeds.
    pub async fn wait_writable(&self, deadline: Duration) -> anyhow::Result<()> {
        eventually("an etcd write succeeds", deadline, async || {
            let mut c = self.client().await?;
            tokio::time::timeout(
                Duration::from_secs(2),
                c.put("/pylon-test/probe", "1", None),
            )
            .await
            .context("no answer")??;
            Ok(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.log_tails(30)))
    }

    /// The index of the member that leads now (asked of each live member
    /// until one answers).
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for m in &self.members {
            if m.child.is_none() {
                ids.push(None);
                continue;
            }
            let mut c =
                etcd_client::Client::connect([m.client.to_string()], self.connect_options()?)
                    .await?;
            match tokio::time::timeout(Duration::from_secs(2), c.status()).await {
                Ok(Ok(s)) => {
                    ids.push(s.header().map(|h| h.member_id()));
                    if s.leader() != 0 {
                        leader = Some(s.leader());
                    }
                }
                _ => ids.push(None),
            }
        }
        let leader = leader.context("no member knows a leader")?;
        ids.iter()
            .position(|id| *id == Some(leader))
            .context("the leader is not among the members that answered")
    }

    /// The value of `key` now, through any live member.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<(i64, Vec<u8>)>> {
        let mut c = self.client().await?;
        let r = c.get(key, None).await?;
        Ok(r.kvs()
            .first()
            .map(|kv| (kv.mod_revision(), kv.value().to_vec())))
    }

    /// Puts `value` at `key` around pylon-xds (as `etcdctl put` would);
    /// returns the revision written.
    pub async fn put(&self, key: &str, value: &[u8]) -> anyhow::Result<i64> {
        let mut c = self.client().await?;
        let r = c.put(key, value, None).await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// Every member's log tail, labelled.
    pub fn log_tails(&self, n: usize) -> String {
        self.members
            .iter()
            .map(|m| crate::logs::tail(&m.log, &format!("etcd {}", m.name), n))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = crate::logs::panic_tail_lines("PYLON_ETCD_LOG_TAIL");
            eprintln!("{}", self.log_tails(lines));
        }
        // kill_on_drop ends the processes.
    }
}
