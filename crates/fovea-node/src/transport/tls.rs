//! The node's TLS identity: a PEM pair given by the operator, or a self-signed certificate
//! created in the data dir on first start and reused afterwards (so clients that trust it
//! keep trusting it across restarts).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;
use crate::error::NodeError;

/// File name of the self-signed certificate in the data dir. Clients on the same machine
/// trust this file by default.
pub const CERT_FILE: &str = "node.crt";
/// File name of the self-signed certificate's private key in the data dir.
pub const KEY_FILE: &str = "node.key";

/// A loaded identity.
pub(crate) struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The certificate file clients should trust, when the node made it itself.
    pub self_signed: Option<PathBuf>,
}

pub(crate) fn load_identity(data_dir: &Path, files: Option<&TlsFiles>) -> Result<Identity, NodeError> {
    match files {
        Some(f) => Ok(Identity { chain: read_chain(&f.cert)?, key: read_key(&f.key)?, self_signed: None }),
        None => {
            let (cert, key) = (data_dir.join(CERT_FILE), data_dir.join(KEY_FILE));
            if !cert.exists() || !key.exists() {
                create_self_signed(data_dir, &cert, &key)?;
            }
            Ok(Identity { chain: read_chain(&cert)?, key: read_key(&key)?, self_signed: Some(cert) })
        }
    }
}

fn create_self_signed(dir: &Path, cert: &Path, key: &Path) -> Result<(), NodeError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source: io::Error| NodeError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| NodeError::Tls(format!("cannot generate a self-signed certificate: {e}")))?;
    write_private(key, made.signing_key.serialize_pem().as_bytes()).map_err(io_err(key))?;
    fs::write(cert, made.cert.pem()).map_err(io_err(cert))?;
    tracing::info!(cert = %cert.display(), "created a self-signed certificate");
    Ok(())
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, NodeError> {
    let data = fs::read(path).map_err(|source| NodeError::Io { path: path.to_owned(), source })?;
    let chain = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NodeError::Tls(format!("{}: not a PEM certificate chain: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(NodeError::Tls(format!(
            "{}: no certificate found (expected PEM `BEGIN CERTIFICATE`)",
            path.display()
        )));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, NodeError> {
    let data = fs::read(path).map_err(|source| NodeError::Io { path: path.to_owned(), source })?;
    PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| NodeError::Tls(format!("{}: not a PEM private key: {e}", path.display())))
}

/// The SHA-256 fingerprint of a DER certificate, as `AB:CD:…` (the form `openssl x509
/// -fingerprint -sha256` prints).
pub fn fingerprint(cert: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// ring's provider with the TLS 1.3 suites in the order the node prefers: AES-128-GCM
/// first. rustls's default puts AES-256-GCM with SHA-384 first, whose key schedule runs
/// on SHA-512 code without hardware help, where SHA-256 has it (SHA extensions), and
/// every handshake pays it. AES-128-GCM is also the suite QUIC's Initial packets use, and
/// takes 10 AES rounds per block against 14. The SDK offers the same order.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256],
        ..rustls::crypto::ring::default_provider()
    })
}

/// The rustls server configuration: TLS 1.3 only (QUIC requires it), ALPN `fovea/1`.
pub(crate) fn server_crypto(id: &Identity) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, NodeError> {
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls(id)?)
        .map_err(|e| NodeError::Tls(e.to_string()))?;
    Ok(Arc::new(quic))
}

/// The TLS of the stream transports: as QUIC's, with ALPN `alpn` (`fovea/1` over TCP,
/// `http/1.1` for WebSocket, which browsers ask for; a client that names none is served).
pub(crate) fn stream_tls(id: &Identity, alpn: &[u8]) -> Result<tokio_rustls::TlsAcceptor, NodeError> {
    let mut cfg = server_tls(id)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// [`server_crypto`]'s TLS part.
fn server_tls(id: &Identity) -> Result<rustls::ServerConfig, NodeError> {
    let provider = provider();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NodeError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(PeerKeys::client_certs(provider)))
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| NodeError::Tls(format!("certificate and key do not work together: {e}")))?;
    cfg.alpn_protocols = vec![fovea_core::frame::ALPN.to_vec()];
    // The node's order, not the client's: the node's CPU is what many clients share.
    cfg.ignore_client_order = true;
    // Session tickets cost memory per connection and buy nothing for long-lived clients.
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// The node's mesh identity: a key pair kept in the data dir (created on first start) and
/// a self-signed certificate around it. Its node id is the SHA-256 of the public key.
pub const MESH_CERT_FILE: &str = "mesh.crt";
pub const MESH_KEY_FILE: &str = "mesh.key";

/// The mesh identity from operator files (`--mesh-cert`/`--mesh-key`, issued by the mesh
/// CA), or the self-signed one in the data dir.
pub(crate) fn mesh_identity(data_dir: &Path, files: Option<&TlsFiles>) -> Result<Identity, NodeError> {
    match files {
        Some(f) => Ok(Identity { chain: read_chain(&f.cert)?, key: read_key(&f.key)?, self_signed: None }),
        None => load_mesh_identity(data_dir),
    }
}

/// Reads the mesh CA's certificates.
pub(crate) fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, NodeError> {
    read_chain(path)
}

/// A new mesh CA: (certificate PEM, key PEM). Keep the key offline; give nodes the
/// certificate (`--mesh-ca`) and certificates it signed ([`new_mesh_node_cert`]).
pub fn new_mesh_ca(name: &str) -> Result<(String, String), NodeError> {
    let err = |e: rcgen::Error| NodeError::Tls(format!("cannot make the mesh CA: {e}"));
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A node certificate signed by the mesh CA: (certificate PEM, key PEM), usable for both
/// ends of a link.
pub fn new_mesh_node_cert(name: &str, ca_cert_pem: &str, ca_key_pem: &str) -> Result<(String, String), NodeError> {
    let err = |e: rcgen::Error| NodeError::Tls(format!("cannot issue the node certificate: {e}"));
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(err)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(err)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub(crate) fn load_mesh_identity(data_dir: &Path) -> Result<Identity, NodeError> {
    let (cert, key) = (data_dir.join(MESH_CERT_FILE), data_dir.join(MESH_KEY_FILE));
    if !cert.exists() || !key.exists() {
        create_self_signed(data_dir, &cert, &key)?;
    }
    Ok(Identity { chain: read_chain(&cert)?, key: read_key(&key)?, self_signed: Some(cert) })
}

/// SHA-256 of a certificate's public key (its DER SubjectPublicKeyInfo): a node id that
/// survives re-issuing the certificate around the same key. `None` for a certificate
/// that does not parse.
pub(crate) fn public_key_id(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    digest.as_ref().try_into().ok()
}

/// TLS for mesh links, both directions. Each side presents its mesh certificate and
/// proves it holds the key (the handshake signature is checked); *who may join* is
/// decided after the handshake, from the mesh secret's proof bound to this session
/// (see `mesh.rs`), so the certificates themselves need no CA.
pub(crate) fn mesh_crypto(
    id: &Identity,
    ca: Option<Vec<CertificateDer<'static>>>,
) -> Result<(Arc<quinn::crypto::rustls::QuicServerConfig>, Arc<quinn::crypto::rustls::QuicClientConfig>), NodeError> {
    let provider = provider();
    let ca = ca.map(Arc::new);
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NodeError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(PeerKeys::mesh(provider.clone(), ca.clone())))
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| NodeError::Tls(format!("mesh certificate and key do not work together: {e}")))?;
    server.alpn_protocols = vec![MESH_ALPN.to_vec()];
    server.ignore_client_order = true;
    server.send_tls13_tickets = 0;
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NodeError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerKeys::mesh(provider, ca)))
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| NodeError::Tls(format!("mesh certificate and key do not work together: {e}")))?;
    client.alpn_protocols = vec![MESH_ALPN.to_vec()];
    let server =
        quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| NodeError::Tls(e.to_string()))?;
    let client =
        quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| NodeError::Tls(e.to_string()))?;
    Ok((Arc::new(server), Arc::new(client)))
}

/// ALPN of node-to-node links.
pub const MESH_ALPN: &[u8] = b"fovea-mesh/1";

/// Identity by key: a peer certificate is accepted when its handshake signature checks out
/// (the peer holds the key), and — only with `roots` — when its chain leads to them.
///
/// Clients: certificates are optional and identify a user by their SHA-256 fingerprint
/// (`cert_sha256` in the configuration), as SSH keys do; the fingerprint decides in the
/// `HELLO` handling whether it admits anyone. No CA, no expiry: revocation is removing the
/// fingerprint and reloading. Mesh links: both ends present a certificate; membership is
/// the secret's proof, or the mesh CA as `roots`.
#[derive(Debug)]
struct PeerKeys {
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: Option<Arc<Vec<CertificateDer<'static>>>>,
    mandatory: bool,
}

impl PeerKeys {
    fn client_certs(provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        PeerKeys { provider, roots: None, mandatory: false }
    }

    fn mesh(provider: Arc<rustls::crypto::CryptoProvider>, roots: Option<Arc<Vec<CertificateDer<'static>>>>) -> Self {
        PeerKeys { provider, roots, mandatory: true }
    }

    /// With a mesh CA: the peer's chain must lead to it (for either role; names are not
    /// checked, the node id is the key). Without: any certificate (the secret admits).
    fn check_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), rustls::Error> {
        let Some(roots) = &self.roots else { return Ok(()) };
        let anchors: Vec<_> = roots.iter().filter_map(|c| webpki::anchor_from_trusted_cert(c).ok()).collect();
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("mesh peer certificate: {e}")))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| rustls::Error::General(format!("mesh peer certificate is not from the mesh CA: {e}")))
    }
}

impl rustls::server::danger::ClientCertVerifier for PeerKeys {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.check_chain(end_entity, intermediates, now, webpki::KeyUsage::client_auth())?;
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl rustls::client::danger::ServerCertVerifier for PeerKeys {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.check_chain(end_entity, intermediates, now, webpki::KeyUsage::server_auth())?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moves what `from` has to send into `to`; whether anything moved.
    fn pump(
        from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl rustls::SideData>>,
        to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl rustls::SideData>>,
    ) -> bool {
        let mut buf = Vec::new();
        from.write_tls(&mut buf).unwrap();
        let moved = !buf.is_empty();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
        }
        to.process_new_packets().unwrap();
        moved
    }

    #[test]
    fn the_node_picks_aes_128_even_for_a_client_that_prefers_aes_256() {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let id = Identity {
            chain: vec![made.cert.der().clone()],
            key: PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap(),
            self_signed: None,
        };
        let mut server = rustls::ServerConnection::new(Arc::new(server_tls(&id).unwrap())).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(made.cert.der().clone()).unwrap();
        // rustls's own order offers AES-256-GCM first.
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert_eq!(client.crypto_provider().cipher_suites[0].suite(), rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
        let mut client = rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
        for _ in 0..10 {
            let a = pump(&mut client, &mut server);
            let b = pump(&mut server, &mut client);
            if !a && !b {
                break;
            }
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        assert_eq!(
            server.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
}
