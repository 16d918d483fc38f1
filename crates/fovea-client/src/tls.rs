//! Which node certificates the client trusts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::{ClientError, NodeUrl};

/// How the client decides whether to trust a node's certificate.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Trust {
    /// For a loopback URL, the local node's self-signed certificate
    /// (`<default data dir>/node.crt`) when it exists; otherwise the system's root
    /// certificates (for nodes with certificates from a public or company CA).
    #[default]
    Auto,
    /// Certificates (CA or self-signed node certificates) from these PEM files.
    CaFiles(Vec<PathBuf>),
    /// Accept any certificate. For tests only: anyone on the path can impersonate the node.
    Insecure,
}

/// The data dir fovea uses by default: `$FOVEA_DATA_DIR` when set (as `fovea node` reads
/// it, so a client finds the certificate of a local node started with it), else the
/// platform data dir (`~/.local/share/fovea` on Linux).
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FOVEA_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("fovea")
}

/// ring's provider with AES-128-GCM offered first: its key schedule (SHA-256) runs on the
/// CPU's SHA extensions where AES-256-GCM's (SHA-384) does not. The node prefers the same
/// (`fovea_node`'s `tls::provider`, which says what it saves).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256],
        ..rustls::crypto::ring::default_provider()
    })
}

pub(crate) fn client_crypto(
    trust: &Trust,
    client_cert: Option<&(PathBuf, PathBuf)>,
    url: &NodeUrl,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let builder = match trust {
        Trust::Insecure => builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider))),
        other => {
            let mut roots = rustls::RootCertStore::empty();
            let local = default_data_dir().join("node.crt");
            let files = match other {
                Trust::CaFiles(files) => files.clone(),
                _ if url.is_loopback() && local.exists() => vec![local.clone()],
                _ => Vec::new(),
            };
            for f in &files {
                for cert in read_certs(f)? {
                    roots
                        .add(cert)
                        .map_err(|e| ClientError::Tls(format!("{}: unusable certificate: {e}", f.display())))?;
                }
            }
            if files.is_empty() {
                // Unreadable entries in the system store are skipped, as browsers do.
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(ClientError::Tls(format!(
                        "no certificate to trust for {url}: the system has no root certificates{}; \
                         pass --ca FILE (the node's node.crt or its CA), or --insecure for a test",
                        if url.is_loopback() {
                            format!(" and {} does not exist", local.display())
                        } else {
                            String::new()
                        }
                    )));
                }
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut cfg = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let data = std::fs::read(key)
                .map_err(|e| ClientError::Tls(format!("cannot read client key {}: {e}", key.display())))?;
            let key_der = rustls::pki_types::PrivateKeyDer::from_pem_slice(&data)
                .map_err(|e| ClientError::Tls(format!("{}: not a PEM private key: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ClientError::Tls(format!("client certificate and key do not work together: {e}")))?
        }
    };
    cfg.alpn_protocols = vec![fovea_core::frame::ALPN.to_vec()];
    Ok(cfg)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let data =
        std::fs::read(path).map_err(|e| ClientError::Tls(format!("cannot read CA file {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Tls(format!("{}: not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Tls(format!("{}: no `BEGIN CERTIFICATE` block found", path.display())));
    }
    Ok(certs)
}

/// Accepts any certificate but still checks the handshake signatures, so the session is
/// at least bound to the key the peer presented.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
