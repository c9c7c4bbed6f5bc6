//! TLS for both binaries (rustls with the ring provider; no OpenSSL): PEM
//! files in, rustls configurations out, replaced while running when the files
//! change.
//!
//! Owned here:
//! - [`ServerTls`]: a server certificate and key, and with a client CA,
//!   mutual TLS (a client without a certificate signed by that CA is refused
//!   during the handshake). The certificate, key and CA are read again when
//!   their files change ([`watch`]): new handshakes use the new ones,
//!   established connections are not touched, and an unreadable or
//!   mismatched set is an error in [`TlsStatus`] while the last good set stays
//!   in use.
//! - [`accept`]: the handshakes of a stream of accepted TCP connections, run
//!   concurrently and under a deadline, so a slow or silent client holds up
//!   nobody.
//! - [`ClientTls`]: the client side (a CA to trust, optionally a client
//!   certificate), reloaded the same way, for pylon-proxy's xDS connection.
//! - [`Identity`]: who a peer certificate names (its URI and DNS SANs).
//!
//! Not owned: what an identity may do (pylon-xds's `clients:` rules), or
//! whether plaintext is allowed where (the binaries decide, see
//! [`is_loopback`]).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures::{Stream, StreamExt};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long a client has to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether plaintext on `addr` stays on this host.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The crypto provider used everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a certificate, key or CA could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no usable PEM.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The files are readable but do not make a usable configuration (a key
    /// that does not match the certificate, a CA rustls refuses).
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The certificate chain in the PEM file at `path` (leaf first).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// The CA certificates in the PEM file at `path`, as trust anchors.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// When the certificate `der` stops being valid (Unix seconds), if it parses.
pub fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Who a peer certificate names.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// URI SANs (SPIFFE ids, for example).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
}

impl Identity {
    /// The SANs of the certificate `der` (empty if it does not parse).
    pub fn of(der: &CertificateDer<'_>) -> Identity {
        use x509_parser::extensions::GeneralName;
        let mut id = Identity::default();
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return id;
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => id.uris.push((*u).to_string()),
                    GeneralName::DNSName(d) => id.dns.push((*d).to_string()),
                    _ => {}
                }
            }
        }
        id
    }

    /// How logs and status pages name it: the first URI SAN, else the first
    /// DNS SAN, else `(no SAN)`.
    pub fn display(&self) -> String {
        self.uris
            .first()
            .or(self.dns.first())
            .cloned()
            .unwrap_or_else(|| "(no SAN)".to_string())
    }
}

/// The files of a server (or client) identity, and the CA to check peers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signs peers' certificates (PEM); with it, peers must
    /// present one.
    pub ca: Option<PathBuf>,
}

impl Files {
    fn all(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        if let Some(ca) = &self.ca {
            v.push(ca);
        }
        v
    }
}

/// What `/status` and the metrics show about one TLS endpoint.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TlsStatus {
    /// The certificate file.
    pub cert: PathBuf,
    /// The client CA file, with mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// When the certificate in use expires (Unix seconds).
    pub not_after_unix: Option<i64>,
    /// When the set in use was loaded (ms since the Unix epoch).
    pub loaded_at_unix_ms: u64,
    /// How many times a changed set was loaded after the first.
    pub reloads: u64,
    /// Why the last reload failed, if it did; cleared by a good one.
    pub last_error: Option<String>,
    /// When it failed.
    pub last_error_at_unix_ms: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The certificate a server presents, replaceable while it runs.
#[derive(Debug)]
struct SwapCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for SwapCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The client verifier, replaceable while the server runs.
#[derive(Debug)]
struct SwapVerifier(ArcSwap<Arc<dyn ClientCertVerifier>>);

impl SwapVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.0.load())
    }
}

impl ClientCertVerifier for SwapVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from a verifier that may be replaced: send
        // none (clients then offer whatever certificate they have).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// A loaded set: the certified key, the client verifier, and what the
/// status shows of them.
struct Loaded {
    key: Arc<CertifiedKey>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    not_after: Option<i64>,
    /// The bytes of the files, to tell a real change from a touch.
    bytes: Vec<Vec<u8>>,
}

fn load_server(files: &Files) -> Result<Loaded, TlsError> {
    let mut bytes = Vec::new();
    for p in files.all() {
        bytes.push(std::fs::read(p).map_err(|e| file_error(p, e))?);
    }
    let chain = read_certs(&files.cert)?;
    let not_after = chain.first().and_then(not_after);
    let key = read_key(&files.key)?;
    let provider = provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        TlsError::Config(format!(
            "{} and {} do not make a certificate and its key: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    let verifier = match &files.ca {
        Some(ca) => {
            let roots = read_roots(ca)?;
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
            Some(v)
        }
        None => None,
    };
    Ok(Loaded {
        key: Arc::new(key),
        verifier,
        not_after,
        bytes,
    })
}

/// A server's TLS: the rustls configuration its acceptor uses, and the
/// files it is reloaded from.
pub struct ServerTls {
    files: Files,
    cert: Arc<SwapCert>,
    verifier: Option<Arc<SwapVerifier>>,
    acceptor: TlsAcceptor,
    status: Mutex<TlsStatus>,
    bytes: Mutex<Vec<Vec<u8>>>,
    reload_errors: AtomicU64,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ServerTls {
    /// Loads `files` (an error if they are unusable: a server does not start
    /// without them) for a server speaking the `alpn` protocols (`h2` for
    /// gRPC).
    pub fn load(files: Files, alpn: &[&[u8]]) -> Result<Arc<ServerTls>, TlsError> {
        let loaded = load_server(&files)?;
        let cert = Arc::new(SwapCert(ArcSwap::new(loaded.key)));
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = loaded
            .verifier
            .map(|v| Arc::new(SwapVerifier(ArcSwap::new(Arc::new(v)))));
        let mut config = match &verifier {
            Some(v) => {
                builder.with_client_cert_verifier(Arc::clone(v) as Arc<dyn ClientCertVerifier>)
            }
            None => builder.with_no_client_auth(),
        }
        .with_cert_resolver(Arc::clone(&cert) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let status = TlsStatus {
            cert: files.cert.clone(),
            client_ca: files.ca.clone(),
            not_after_unix: loaded.not_after,
            loaded_at_unix_ms: now_ms(),
            ..Default::default()
        };
        Ok(Arc::new(ServerTls {
            files,
            cert,
            verifier,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            status: Mutex::new(status),
            bytes: Mutex::new(loaded.bytes),
            reload_errors: AtomicU64::new(0),
        }))
    }

    /// Whether clients must present a certificate from the client CA.
    pub fn mutual(&self) -> bool {
        self.verifier.is_some()
    }

    /// The acceptor handshakes go through.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// A copy of the status.
    pub fn status(&self) -> TlsStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reloads that failed since start.
    pub fn reload_errors(&self) -> u64 {
        self.reload_errors.load(Ordering::Relaxed)
    }

    /// Reads the files again. A changed, usable set is used for the next
    /// handshakes; an unusable one is recorded and the last good set stays.
    /// Returns whether a new set took effect.
    pub fn reload(&self) -> bool {
        match load_server(&self.files) {
            Ok(loaded) => {
                if let Ok(mut b) = self.bytes.lock() {
                    if *b == loaded.bytes {
                        if let Ok(mut s) = self.status.lock() {
                            s.last_error = None;
                            s.last_error_at_unix_ms = None;
                        }
                        return false;
                    }
                    *b = loaded.bytes;
                }
                self.cert.0.store(loaded.key);
                if let (Some(swap), Some(v)) = (&self.verifier, loaded.verifier) {
                    swap.0.store(Arc::new(v));
                }
                if let Ok(mut s) = self.status.lock() {
                    s.not_after_unix = loaded.not_after;
                    s.loaded_at_unix_ms = now_ms();
                    s.reloads += 1;
                    s.last_error = None;
                    s.last_error_at_unix_ms = None;
                }
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                self.reload_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "TLS files unusable; the last good certificate stays in use");
                if let Ok(mut s) = self.status.lock() {
                    s.last_error = Some(e.to_string());
                    s.last_error_at_unix_ms = Some(now_ms());
                }
                false
            }
        }
    }

    /// The files watched for changes.
    pub fn files(&self) -> Vec<PathBuf> {
        self.files
            .all()
            .into_iter()
            .map(Path::to_path_buf)
            .collect()
    }
}

/// The TLS handshakes of the connections `incoming` yields, each run on its
/// own task under [`HANDSHAKE_TIMEOUT`]; the stream yields the connections
/// whose handshake succeeded, in the order they complete. A failed handshake
/// (no client certificate, one from another CA, an expired one, plaintext)
/// is logged at debug level and reported to `refused`.
pub fn accept<S, F>(
    incoming: S,
    tls: Arc<ServerTls>,
    refused: F,
) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
    F: Fn() + Clone + Send + Sync + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        while let Some(next) = incoming.next().await {
            let Ok(tcp) = next else { continue };
            if tx.is_closed() {
                break;
            }
            let (acceptor, done, refused) = (tls.acceptor(), tx.clone(), refused.clone());
            tokio::spawn(async move {
                let peer = tcp.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = done.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        refused();
                        tracing::debug!(?peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        refused();
                        tracing::debug!(?peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A client's TLS (a CA to trust, optionally its own certificate),
/// replaceable while it runs: every new connection uses the current one.
#[derive(Debug)]
pub struct ClientTls {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    alpn: Vec<Vec<u8>>,
    config: ArcSwap<rustls::ClientConfig>,
    bytes: Mutex<Vec<Vec<u8>>>,
}

impl ClientTls {
    /// Loads the CA (and the client certificate and key when given).
    pub fn load(
        ca: PathBuf,
        identity: Option<(PathBuf, PathBuf)>,
        alpn: &[&[u8]],
    ) -> Result<Arc<ClientTls>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let (config, bytes) = client_config(&ca, identity.as_ref(), &alpn)?;
        Ok(Arc::new(ClientTls {
            ca,
            identity,
            alpn,
            config: ArcSwap::new(Arc::new(config)),
            bytes: Mutex::new(bytes),
        }))
    }

    /// A connector with the current configuration.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.config.load_full())
    }

    /// Reads the files again (see [`ServerTls::reload`]).
    pub fn reload(&self) -> bool {
        match client_config(&self.ca, self.identity.as_ref(), &self.alpn) {
            Ok((config, bytes)) => {
                if let Ok(mut b) = self.bytes.lock() {
                    if *b == bytes {
                        return false;
                    }
                    *b = bytes;
                }
                self.config.store(Arc::new(config));
                tracing::info!(ca = %self.ca.display(), "TLS client files reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS client files unusable; the last good ones stay in use");
                false
            }
        }
    }

    /// The files watched for changes.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.ca.clone()];
        if let Some((c, k)) = &self.identity {
            v.push(c.clone());
            v.push(k.clone());
        }
        v
    }

    /// Connects TLS over `tcp` to the server named `name` (a host name or
    /// an IP address, checked against its certificate).
    pub async fn connect(
        &self,
        name: &str,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.connector().connect(name, tcp).await
    }
}

fn client_config(
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
    alpn: &[Vec<u8>],
) -> Result<(rustls::ClientConfig, Vec<Vec<u8>>), TlsError> {
    let mut bytes = vec![std::fs::read(ca).map_err(|e| file_error(ca, e))?];
    let roots = read_roots(ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            for p in [cert, key] {
                bytes.push(std::fs::read(p).map_err(|e| file_error(p, e))?);
            }
            builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| {
                    TlsError::Config(format!(
                        "{} and {} do not make a certificate and its key: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.to_vec();
    Ok((config, bytes))
}

/// Something whose files can be read again.
pub trait Reload: Send + Sync + 'static {
    /// Reads the files again; true when a new set took effect.
    fn reload(&self) -> bool;
}

impl Reload for ServerTls {
    fn reload(&self) -> bool {
        ServerTls::reload(self)
    }
}

impl Reload for ClientTls {
    fn reload(&self) -> bool {
        ClientTls::reload(self)
    }
}

/// Reloads `target` whenever one of `files` changes (a write, a rename into
/// place, a symlink swap as with Kubernetes secrets), after `debounce` of
/// quiet, until `stop` is cancelled. Renewal tools write the certificate and
/// the key one after the other: a reload in between sees a mismatched pair,
/// which is refused and reported, and the next event loads the new pair.
pub async fn watch(
    target: Arc<dyn Reload>,
    files: Vec<PathBuf>,
    debounce: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> notify::Result<()> {
    use notify::Watcher as _;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
    let names: Vec<std::ffi::OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
        .collect();
    let symlinked = files
        .iter()
        .any(|f| std::fs::symlink_metadata(f).is_ok_and(|m| m.file_type().is_symlink()));
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        use notify::EventKind;
        let Ok(event) = res else { return };
        let ours = symlinked
            || event
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| names.iter().any(|x| x == n)));
        // A file closed after writing or renamed into place; not a bare
        // modification, whose writer may not be done.
        let complete = matches!(
            event.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Any
                | EventKind::Other
        );
        if ours && complete {
            let _ = tx.try_send(());
        }
    })?;
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|f| {
            f.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        watcher.watch(d, notify::RecursiveMode::NonRecursive)?;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            ev = rx.recv() => {
                if ev.is_none() {
                    break;
                }
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(debounce) => break,
                        more = rx.recv() => if more.is_none() { break },
                    }
                }
                let t = Arc::clone(&target);
                let _ = tokio::task::spawn_blocking(move || t.reload()).await;
            }
        }
    }
    drop(watcher);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A certificate for `dns` names (and a URI SAN) signed by `ca`; `(cert, key)` PEM.
    fn leaf(ca: &Ca, dns: &[&str], uri: Option<&str>, expired: bool) -> (String, String) {
        let mut p =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some(u) = uri {
            p.subject_alt_names
                .push(SanType::URI(u.to_string().try_into().unwrap()));
        }
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A TLS echo server on loopback with `tls`; returns its address.
    async fn server(tls: Arc<ServerTls>) -> (SocketAddr, Arc<AtomicU64>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let failures = Arc::new(AtomicU64::new(0));
        let incoming = crate::accept::incoming(l, "test");
        let count = Arc::clone(&failures);
        let refused = move || {
            count.fetch_add(1, Ordering::Relaxed);
        };
        let mut conns = Box::pin(accept(incoming, tls, refused));
        tokio::spawn(async move {
            while let Some(Ok(mut s)) = conns.next().await {
                let who = s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| Identity::of(c).display())
                    .unwrap_or_default();
                tokio::spawn(async move {
                    let _ = s.write_all(who.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (addr, failures)
    }

    /// Connects with `client` and returns what the server says (the client
    /// identity it saw) and the server certificate's not-after.
    async fn call(addr: SocketAddr, client: &ClientTls) -> io::Result<(String, Option<i64>)> {
        let tcp = TcpStream::connect(addr).await?;
        let mut s = client.connect("localhost", tcp).await?;
        let server_cert = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().map(not_after));
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok((out, server_cert.flatten()))
    }

    #[tokio::test]
    async fn mutual_tls_admits_the_ca_s_clients_only_and_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (ca1, ca2) = (ca("one"), ca("two"));
        let (scert, skey) = leaf(&ca1, &["localhost"], None, false);
        let files = Files {
            cert: write(d, "server.crt", &scert),
            key: write(d, "server.key", &skey),
            ca: Some(write(d, "ca.crt", &ca1.pem)),
        };
        let tls = ServerTls::load(files, &[b"h2"]).unwrap();
        assert!(tls.mutual());
        let (addr, failures) = server(Arc::clone(&tls)).await;
        let ca_file = write(d, "trust.crt", &ca1.pem);
        let client = |name: &str, cert: Option<(String, String)>| {
            let id = cert.map(|(c, k)| {
                (
                    write(d, &format!("{name}.crt"), &c),
                    write(d, &format!("{name}.key"), &k),
                )
            });
            ClientTls::load(ca_file.clone(), id, &[b"h2"]).unwrap()
        };

        let good = client(
            "good",
            Some(leaf(
                &ca1,
                &["edge-1.example"],
                Some("spiffe://pylon.test/edge/1"),
                false,
            )),
        );
        let (who, _) = call(addr, &good).await.unwrap();
        assert_eq!(who, "spiffe://pylon.test/edge/1");

        let refused = [
            ("anonymous", client("anonymous", None)),
            (
                "other CA",
                client("other", Some(leaf(&ca2, &["x.example"], None, false))),
            ),
            (
                "expired",
                client("expired", Some(leaf(&ca1, &["x.example"], None, true))),
            ),
        ];
        for (what, c) in &refused {
            // The handshake fails on the server's side; the client sees the
            // connection end without its answer.
            let r = call(addr, c).await;
            assert!(
                r.as_ref().map_or(true, |(who, _)| who.is_empty()),
                "{what}: {r:?}"
            );
        }
        assert_eq!(failures.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_used_for_new_connections_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca1 = ca("one");
        let (scert, skey) = leaf(&ca1, &["localhost"], None, true);
        // Start with an expired server certificate: clients refuse it.
        let files = Files {
            cert: write(d, "server.crt", &scert),
            key: write(d, "server.key", &skey),
            ca: None,
        };
        let tls = ServerTls::load(files, &[b"h2"]).unwrap();
        let (addr, _) = server(Arc::clone(&tls)).await;
        let client = ClientTls::load(write(d, "ca.crt", &ca1.pem), None, &[b"h2"]).unwrap();
        assert!(
            call(addr, &client).await.is_err(),
            "an expired certificate was accepted"
        );

        // Renewed in place: the next connection uses it.
        let (scert, skey) = leaf(&ca1, &["localhost"], None, false);
        write(d, "server.crt", &scert);
        write(d, "server.key", &skey);
        assert!(tls.reload());
        assert!(call(addr, &client).await.is_ok());
        assert_eq!(tls.status().reloads, 1);
        assert!(!tls.reload(), "unchanged files are not a new set");

        // A key that does not match: refused, reported, the good pair stays.
        let (_, other_key) = leaf(&ca1, &["localhost"], None, false);
        write(d, "server.key", &other_key);
        assert!(!tls.reload());
        let s = tls.status();
        assert!(
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("do not make a certificate and its key")),
            "{s:?}"
        );
        assert_eq!(tls.reload_errors(), 1);
        assert!(call(addr, &client).await.is_ok());
        // Fixed: the error clears.
        write(d, "server.key", &skey);
        tls.reload();
        assert!(tls.status().last_error.is_none());
    }

    #[test]
    fn identity_reads_uri_and_dns_sans() {
        let ca1 = ca("one");
        let (cert, _) = leaf(
            &ca1,
            &["a.edge.example", "b.edge.example"],
            Some("spiffe://pylon.test/x"),
            false,
        );
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let id = Identity::of(&der);
        assert_eq!(id.uris, ["spiffe://pylon.test/x"]);
        assert_eq!(id.dns, ["a.edge.example", "b.edge.example"]);
        assert_eq!(id.display(), "spiffe://pylon.test/x");
        assert_eq!(Identity::default().display(), "(no SAN)");
    }

    #[test]
    fn unreadable_files_are_errors_that_name_them() {
        let e = ServerTls::load(
            Files {
                cert: "/nonexistent/server.crt".into(),
                key: "/nonexistent/server.key".into(),
                ca: None,
            },
            &[b"h2"],
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent/server.crt: "),
            "{e}"
        );
    }
}
