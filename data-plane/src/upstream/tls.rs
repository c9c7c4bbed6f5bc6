//! TLS to upstream hosts, for health checks (rustls with the ring provider;
//! no OpenSSL).
//!
//! Owns the client config built from a model [`UpstreamTls`] (whose CA file
//! the model read when the cluster was accepted) and the handshake.
//! Verification is Envoy's for an `UpstreamTlsContext` whose validation
//! context holds only `trusted_ca`:
//! the server's chain must lead to one of the CA's certificates and be valid
//! now, and its names are not checked (Envoy checks them only with
//! `match_typed_subject_alt_names`, which pylon-proxy refuses). Without a
//! CA, as in Envoy without a validation context, the certificate is not
//! verified; the handshake's signatures still are. SNI is sent only when
//! `sni` is set. No ALPN is offered: the checks speak HTTP/1.1.
//!
//! Does not own what runs over the connection (`health`).

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::model::UpstreamTls;

/// A ready client side of TLS for one cluster's health checks.
#[derive(Clone)]
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
    sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("sni", &self.sni).finish()
    }
}

impl TlsClient {
    /// The client for `tls`. Fails only if the CA's certificates cannot be
    /// used as trust anchors (they were read when the cluster was accepted).
    pub fn new(tls: &UpstreamTls) -> Result<TlsClient, String> {
        // The ring provider, explicitly: no process-wide default is needed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match &tls.trusted_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for der in &ca.certs {
                    roots
                        .add(CertificateDer::from(der.clone()))
                        .map_err(|e| format!("{}: {e}", ca.filename))?;
                }
                Arc::new(ChainOnly {
                    roots: Arc::new(roots),
                    algs: provider.signature_verification_algorithms,
                })
            }
            None => Arc::new(Unverified {
                algs: provider.signature_verification_algorithms,
            }),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.enable_sni = tls.sni.is_some();
        let sni = match &tls.sni {
            Some(name) => {
                Some(ServerName::try_from(name.clone()).map_err(|e| format!("sni {name:?}: {e}"))?)
            }
            None => None,
        };
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            sni,
        })
    }

    /// The TLS handshake over `stream`, connected to `ip`.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        ip: IpAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        // Without `sni` nothing is sent (enable_sni is off); rustls still
        // needs a name, and an IP address is never sent as SNI anyway.
        let name = self
            .sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()));
        self.connector.connect(name, stream).await
    }
}

/// Envoy's check with `trusted_ca` alone: the chain, not the names.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// No validation context: any certificate, as Envoy does.
#[derive(Debug)]
struct Unverified {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
