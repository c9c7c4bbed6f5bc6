//! etcd as the source of truth: where the config lives in etcd, how
//! pylon-xds reaches etcd, and the revisions it reads and writes.
//!
//! **Layout.** The YAML, byte for byte as applied, is the value of one key
//! (`/pylon/config` in `etcd://HOST:PORT,HOST:PORT/pylon/config`). Every
//! write by `pylon-xds apply` or `rollback` also puts, in the same
//! transaction, a small JSON record at `KEY.meta` ([`Meta`]: when, by whom,
//! what). etcd's own revisions are the history: each write of the key is a
//! revision, kept until etcd compacts it. A value written around the CLI
//! (`etcdctl put`) is a revision too, without a record.
//!
//! **Talking to etcd.** One client per member, tried in turn from the one
//! that last answered ([`Etcd::call`]): a member that is down, or that has
//! lost its leader (requests carry etcd's `require leader` flag), is skipped
//! for the next one, and every request is bounded in time, so nothing waits
//! on a dead member. Reads are linearizable (etcd's default): a partitioned
//! member cannot answer with stale content.
//!
//! **Writes** are compare-and-swap on the key's `mod_revision` ([`Etcd::write`]):
//! a write based on revision N fails, writing nothing, when the key is no
//! longer at N, and says which revision it is at. A write retried on another
//! member after its answer was lost is recognised by its record's
//! `write_id`, so it is never reported as someone else's.
//!
//! Not owned here: serving what etcd holds (`etcd::serve`), and the
//! commands (`etcd::cli`).

pub mod cli;
pub mod serve;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};

/// How long one request to one member may take before the next is tried.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 keepalive on the watch: a member that vanished without closing
/// its connections (a dead host, a partition) is noticed within about 15 s.
/// etcd answers pings more frequent than every 5 s
/// (`--grpc-keepalive-min-time`) with GOAWAY `too_many_pings`, ending the
/// watch, and does not allow pings without a stream open.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause between two rounds of tries when no member answered.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The suffix of the key that holds the record of each write.
const META_SUFFIX: &str = ".meta";

/// `etcd://HOST:PORT[,HOST:PORT...]/KEY`: the members to reach, and the key
/// that holds the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// The members' client addresses, `HOST:PORT` (IPv6 in brackets).
    pub endpoints: Vec<String>,
    /// The key, starting with `/`.
    pub key: String,
}

impl std::str::FromStr for EtcdUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("etcd://").ok_or_else(|| {
            format!("{s:?}: expected etcd://HOST:PORT[,HOST:PORT...]/KEY, e.g. etcd://127.0.0.1:2379/pylon/config")
        })?;
        let (hosts, key) = rest
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: no key after the endpoints (etcd://HOST:PORT/KEY)"))?;
        let key = format!("/{key}");
        if key.len() < 2 || key.ends_with('/') {
            return Err(format!(
                "{s:?}: the key {key:?} must name a key, not a directory"
            ));
        }
        if key.ends_with(META_SUFFIX) {
            return Err(format!(
                "{s:?}: keys ending in {META_SUFFIX} hold pylon-xds's records of writes"
            ));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let host = host.trim();
            let (name, port) = host
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?}: endpoint {host:?} is not HOST:PORT"))?;
            let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
            if name.is_empty() || !port_ok {
                return Err(format!("{s:?}: endpoint {host:?} is not HOST:PORT"));
            }
            endpoints.push(host.to_string());
        }
        Ok(EtcdUrl { endpoints, key })
    }
}

impl std::fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd://{}{}", self.endpoints.join(","), self.key)
    }
}

/// TLS to etcd: files read at each (re)connect, so renewed ones are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA the members' certificates chain to (PEM).
    pub ca: PathBuf,
    /// The client certificate and key (PEM), when etcd asks for one.
    pub cert_key: Option<(PathBuf, PathBuf)>,
}

/// Where the config is in etcd, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Members and key.
    pub url: EtcdUrl,
    /// TLS (`--etcd-ca`, `--etcd-cert`, `--etcd-key`); `None`: plaintext.
    pub tls: Option<EtcdTls>,
}

/// Why etcd could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A TLS file could not be read or used.
    #[error("etcd TLS: {0}")]
    Tls(String),
    /// No member answered.
    #[error("etcd is unreachable: {0}")]
    Unreachable(String),
    /// A member answered with an error that another would give too.
    #[error("etcd: {0}")]
    Refused(String),
    /// The revision asked for is older than etcd's last compaction.
    #[error("etcd revision {0} has been compacted: etcd no longer holds it")]
    Compacted(i64),
}

/// One revision of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// The etcd revision that wrote this value (the key's `mod_revision`).
    pub revision: i64,
    /// The value: the YAML as written.
    pub value: Vec<u8>,
}

/// What a read of the key found.
#[derive(Debug, Clone)]
pub struct Read {
    /// The key's value, or `None` when it does not exist (at that revision).
    pub kv: Option<Revision>,
    /// etcd's revision when it answered: a watch from the next one misses
    /// nothing.
    pub header_revision: i64,
    /// The member that answered.
    pub member: String,
}

/// The record of one write by pylon-xds, kept at `KEY.meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// When it was written (ms since the Unix epoch, the writer's clock).
    pub at_unix_ms: u64,
    /// `user@host` of the writer.
    pub by: String,
    /// `apply FILE`, `rollback to N`, `watch-file FILE`.
    pub action: String,
    /// Tells this write from any other (a retried write finds itself).
    pub write_id: String,
}

impl Meta {
    /// A record of a write happening now.
    pub fn now(action: String) -> Meta {
        let at_unix_ms = crate::source::now_ms();
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".to_string());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Meta {
            at_unix_ms,
            by: format!("{user}@{host}"),
            action,
            write_id: format!("{host}-{}-{at_unix_ms}-{nanos}", std::process::id()),
        }
    }
}

/// What a compare-and-swap write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Written as this revision.
    Written(i64),
    /// Nothing written: the key is no longer at the revision the write was
    /// based on. `current` is where it is (`None`: it does not exist).
    Conflict {
        /// The key's revision now.
        current: Option<i64>,
    },
}

/// One member: its address and client.
#[derive(Clone)]
struct Member {
    endpoint: String,
    client: Client,
}

/// A connection to the etcd cluster holding one key. Cheap to share.
pub struct Etcd {
    members: Vec<Member>,
    key: String,
    /// The member that answered last: tried first.
    preferred: AtomicUsize,
    /// How long a request goes on trying the members again when none
    /// answered (a leader election takes about a second); zero: one round.
    patience: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoints: Vec<&str> = self.members.iter().map(|m| m.endpoint.as_str()).collect();
        f.debug_struct("Etcd")
            .field("endpoints", &endpoints)
            .field("key", &self.key)
            .finish()
    }
}

/// Whether an error means "this member cannot answer now" (try another)
/// rather than an answer.
fn member_failed(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) | E::EndpointError(_) | E::WatchError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Internal
                | tonic::Code::Aborted
        ),
        _ => false,
    }
}

/// The revision of a compaction error, if `e` is one.
fn compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::OutOfRange)
}

impl Etcd {
    /// Clients for every member of `opts` (TLS files read now). Nothing is
    /// dialled until the first request.
    pub async fn connect(opts: &EtcdOptions) -> Result<Etcd, EtcdError> {
        let mut connect = ConnectOptions::new()
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
            .with_connect_timeout(CALL_TIMEOUT)
            // A member without a leader refuses instead of answering from
            // its own, possibly stale, state (and ends watches).
            .with_require_leader(true);
        if let Some(tls) = &opts.tls {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| EtcdError::Tls(format!("{}: {e}", p.display())))
            };
            let mut config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.cert_key {
                config = config.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            connect = connect.with_tls(config);
        }
        let mut members = Vec::new();
        for endpoint in &opts.url.endpoints {
            let client = Client::connect([endpoint.as_str()], Some(connect.clone()))
                .await
                .map_err(|e| match &opts.tls {
                    Some(_) => EtcdError::Tls(format!("{endpoint}: {e}")),
                    None => EtcdError::Unreachable(format!("{endpoint}: {e}")),
                })?;
            members.push(Member {
                endpoint: endpoint.clone(),
                client,
            });
        }
        Ok(Etcd {
            members,
            key: opts.url.key.clone(),
            preferred: AtomicUsize::new(0),
            patience: Duration::ZERO,
        })
    }

    /// Makes each request try the members again, for up to `patience`,
    /// while none answers: what a command wants (an election or a member
    /// restart passes), where the serving loop has its own backoff.
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// Tries member `index` first from now on.
    pub fn prefer(&self, index: usize) {
        self.preferred.store(index, Ordering::Relaxed);
    }

    /// The member tried first (the one that answered last).
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    /// The key holding the config.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key holding the records of writes.
    pub fn meta_key(&self) -> String {
        format!("{}{META_SUFFIX}", self.key)
    }

    /// Runs `f` on one member after another, from the preferred one, until
    /// one answers; each try is bounded by [`CALL_TIMEOUT`]. Returns the
    /// answer and the member that gave it.
    async fn call<T, F, Fut>(&self, f: F) -> Result<(T, String), EtcdError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = tokio::time::Instant::now();
        loop {
            match self.round(&f).await {
                Err(EtcdError::Unreachable(e)) if started.elapsed() < self.patience => {
                    tracing::debug!(error = %e, "no etcd member answered; trying again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// One try of each member, from the preferred one.
    async fn round<T, F, Fut>(&self, f: &F) -> Result<(T, String), EtcdError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.members.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut failures = Vec::new();
        for i in 0..n {
            let at = (first + i) % n;
            let member = &self.members[at];
            match tokio::time::timeout(CALL_TIMEOUT, f(member.client.clone())).await {
                Ok(Ok(v)) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok((v, member.endpoint.clone()));
                }
                Ok(Err(e)) if compacted(&e) => return Err(EtcdError::Refused(e.to_string())),
                Ok(Err(e)) if member_failed(&e) => {
                    failures.push(format!("{}: {}", member.endpoint, short_error(&e)));
                }
                Ok(Err(e)) => return Err(EtcdError::Refused(e.to_string())),
                Err(_) => failures.push(format!(
                    "{}: no answer within {}s",
                    member.endpoint,
                    CALL_TIMEOUT.as_secs()
                )),
            }
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    /// The key's value now (`at: None`) or as of revision `at`.
    pub async fn read(&self, at: Option<i64>) -> Result<Read, EtcdError> {
        let key = self.key.clone();
        let result = self
            .call(|mut c| {
                let key = key.clone();
                async move {
                    let opts = at.map(|r| GetOptions::new().with_revision(r));
                    c.get(key, opts).await
                }
            })
            .await;
        let (resp, member) = match result {
            Err(EtcdError::Refused(m)) if at.is_some() && m.contains("compacted") => {
                return Err(EtcdError::Compacted(at.unwrap_or_default()))
            }
            other => other?,
        };
        let header_revision = resp.header().map_or(0, |h| h.revision());
        let kv = resp.kvs().first().map(|kv| Revision {
            revision: kv.mod_revision(),
            value: kv.value().to_vec(),
        });
        Ok(Read {
            kv,
            header_revision,
            member,
        })
    }

    /// The record written with revision `revision`, if pylon-xds wrote it.
    pub async fn meta(&self, revision: i64) -> Result<Option<Meta>, EtcdError> {
        let key = self.meta_key();
        let (resp, _) = self
            .call(|mut c| {
                let key = key.clone();
                async move {
                    c.get(key, Some(GetOptions::new().with_revision(revision)))
                        .await
                }
            })
            .await?;
        Ok(resp
            .kvs()
            .first()
            .filter(|kv| kv.mod_revision() == revision)
            .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    }

    /// Writes `value` (with its record `meta`) if the key is still at
    /// revision `base` (0: if it does not exist).
    pub async fn write(&self, base: i64, value: &[u8], meta: &Meta) -> Result<Write, EtcdError> {
        let key = self.key.clone();
        let meta_key = self.meta_key();
        let record = serde_json::to_vec(meta).map_err(|e| EtcdError::Refused(e.to_string()))?;
        let tries = std::sync::atomic::AtomicU32::new(0);
        let (resp, _) = self
            .call(|mut c| {
                tries.fetch_add(1, Ordering::Relaxed);
                let compare = if base == 0 {
                    Compare::version(key.clone(), CompareOp::Equal, 0)
                } else {
                    Compare::mod_revision(key.clone(), CompareOp::Equal, base)
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([
                        TxnOp::put(key.clone(), value.to_vec(), None),
                        TxnOp::put(meta_key.clone(), record.clone(), None),
                    ])
                    .or_else([TxnOp::get(key.clone(), None)]);
                async move { c.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            return Ok(Write::Written(resp.header().map_or(0, |h| h.revision())));
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        });
        // A try whose answer was lost may have written: if the key now holds
        // exactly this write, it is ours.
        if tries.load(Ordering::Relaxed) > 1 {
            if let Some(rev) = current {
                if self
                    .meta(rev)
                    .await?
                    .is_some_and(|m| m.write_id == meta.write_id)
                {
                    return Ok(Write::Written(rev));
                }
            }
        }
        Ok(Write::Conflict { current })
    }

    /// The revisions of the key etcd still holds, newest first, at most
    /// `limit`; `.1` says whether older ones were compacted away (rather
    /// than never written).
    pub async fn history(&self, limit: usize) -> Result<(Vec<Revision>, bool), EtcdError> {
        let mut out = Vec::new();
        let mut at = None;
        while out.len() < limit {
            let read = match self.read(at).await {
                Ok(r) => r,
                Err(EtcdError::Compacted(_)) => return Ok((out, true)),
                Err(e) => return Err(e),
            };
            let Some(kv) = read.kv else { break };
            let previous = kv.revision - 1;
            out.push(kv);
            if previous < 1 {
                break;
            }
            at = Some(previous);
        }
        Ok((out, false))
    }

    /// A watch on the key from `start_revision`, through the preferred
    /// member (falling back to the others). Returns the stream and the
    /// member it goes through.
    pub async fn watch(
        &self,
        start_revision: i64,
    ) -> Result<(etcd_client::WatchStream, String), EtcdError> {
        let key = self.key.clone();
        self.call(|mut c| {
            let key = key.clone();
            async move {
                let opts = etcd_client::WatchOptions::new().with_start_revision(start_revision);
                c.watch(key, Some(opts)).await
            }
        })
        .await
    }
}

/// An etcd client error in one line, without tonic's nesting noise.
pub fn short_error(e: &etcd_client::Error) -> String {
    // The causes say what went wrong (a refused connection, a TLS alert);
    // the top-level text often says only "transport error" or "cancelled".
    let with_causes = |mut text: String, top: &dyn std::error::Error| {
        let mut source = top.source();
        while let Some(s) = source {
            let cause = s.to_string();
            if !text.contains(&cause) {
                text = format!("{text}: {cause}");
            }
            source = s.source();
        }
        text
    };
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            with_causes(format!("{:?}: {}", s.code(), s.message()), s)
        }
        etcd_client::Error::TransportError(t) => with_causes(t.to_string(), t),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_members_and_key() {
        let u: EtcdUrl = "etcd://127.0.0.1:2379,127.0.0.1:22379/pylon/config"
            .parse()
            .unwrap();
        assert_eq!(u.endpoints, ["127.0.0.1:2379", "127.0.0.1:22379"]);
        assert_eq!(u.key, "/pylon/config");
        assert_eq!(
            u.to_string(),
            "etcd://127.0.0.1:2379,127.0.0.1:22379/pylon/config"
        );
        let v6: EtcdUrl = "etcd://[::1]:2379/k".parse().unwrap();
        assert_eq!(v6.endpoints, ["[::1]:2379"]);
        for bad in [
            "http://127.0.0.1:2379/k",
            "etcd://127.0.0.1:2379",
            "etcd://127.0.0.1:2379/",
            "etcd://127.0.0.1/k",
            "etcd://127.0.0.1:0/k",
            "etcd://:2379/k",
            "etcd://127.0.0.1:2379/pylon/",
            "etcd://127.0.0.1:2379/pylon/config.meta",
        ] {
            assert!(bad.parse::<EtcdUrl>().is_err(), "{bad} accepted");
        }
        let e = "etcd://127.0.0.1:2379".parse::<EtcdUrl>().unwrap_err();
        assert!(e.contains("no key"), "{e}");
    }

    #[test]
    fn records_of_writes_tell_writes_apart() {
        let a = Meta::now("apply a.yaml".into());
        let b = Meta::now("apply a.yaml".into());
        assert_ne!(a.write_id, b.write_id);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Meta>(&json).unwrap(), a);
    }
}
