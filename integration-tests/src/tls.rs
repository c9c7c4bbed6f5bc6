//! A throw-away test CA and a server certificate it signs, for the TLS
//! apiserver-like backends (`backends::ApiServer`) and for kubectl.
//!
//! Owns certificate generation (rcgen) and the rustls configs built from it.
//! The server certificate's SANs are `127.0.0.1` and `localhost`: whatever
//! loopback address a backend listens on, clients reach it through Envoy at
//! 127.0.0.1 (TLS is passed through, never terminated by Envoy).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;

/// A CA, one server certificate signed by it, and the CA's PEM on disk.
#[derive(Debug)]
pub struct TestCa {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
    ca_path: PathBuf,
    _dir: TempDir,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // Explicit provider: never depend on a process-wide default being installed.
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestCa {
    /// Generates the CA and a server certificate for `127.0.0.1` / `localhost`.
    pub fn new() -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pylon test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;

        let dir = tempfile::Builder::new().prefix("pylon-ca-").tempdir()?;
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, ca_cert.pem())?;
        Ok(TestCa {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server_cert: cert.der().clone(),
            server_key: key.serialize_der(),
            ca_path,
            _dir: dir,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A file holding the CA certificate (for `kubectl --certificate-authority`).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// A server config presenting the server certificate, offering h2 and http/1.1.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.server_cert.clone(), self.ca_der.clone()], key)
            .context("server certificate")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client config trusting only this CA, speaking http/1.1.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A certificate and its key on disk (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
}

/// What a leaf certificate of a [`Pki`] says.
#[derive(Debug, Clone, Default)]
pub struct Leaf<'a> {
    /// DNS names and IP addresses (SANs).
    pub names: &'a [&'a str],
    /// A URI SAN (a SPIFFE id).
    pub uri: Option<&'a str>,
    /// Valid only in the past (2020).
    pub expired: bool,
    /// For a server (else for a client).
    pub server: bool,
}

/// A test public-key infrastructure on disk for the mutual-TLS tests: one
/// CA, and any number of server and client certificates it signs, written as
/// PEM files (what pylon-xds, Envoy, pylon-proxy and the gRPC clients read).
#[derive(Debug)]
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_path: PathBuf,
    dir: TempDir,
    issued: std::sync::atomic::AtomicUsize,
}

impl Pki {
    /// A new CA named `name`, in a temporary directory.
    pub fn new(name: &str) -> anyhow::Result<Pki> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let dir = tempfile::Builder::new().prefix("pylon-pki-").tempdir()?;
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, cert.pem())?;
        Ok(Pki {
            issuer: Issuer::new(params, key),
            ca_path,
            dir,
            issued: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The CA certificate file.
    pub fn ca(&self) -> &Path {
        &self.ca_path
    }

    /// The directory the files are written to.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a certificate as `leaf` says, written to `NAME.crt`/`NAME.key`
    /// (`NAME` unique per call).
    pub fn issue(&self, name: &str, leaf: &Leaf<'_>) -> anyhow::Result<CertFiles> {
        let n = self
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut params =
            CertificateParams::new(leaf.names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        if let Some(uri) = leaf.uri {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.to_string().try_into()?));
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![if leaf.server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        if leaf.expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}-{n}.crt")),
            key: self.dir.path().join(format!("{name}-{n}.key")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }

    /// A server certificate for `127.0.0.1` and `localhost`.
    pub fn server(&self, name: &str) -> anyhow::Result<CertFiles> {
        self.issue(
            name,
            &Leaf {
                names: &["127.0.0.1", "localhost"],
                server: true,
                ..Leaf::default()
            },
        )
    }

    /// A client certificate whose identity is the URI SAN `uri`.
    pub fn client(&self, name: &str, uri: &str) -> anyhow::Result<CertFiles> {
        self.issue(
            name,
            &Leaf {
                uri: Some(uri),
                ..Leaf::default()
            },
        )
    }
}
