//! Mutual RA-TLS: an enclave's check of a client that presents an RA-TLS certificate of its own
//! (enclave-to-enclave links), and the TLS configurations of both ends.

use std::collections::VecDeque;

use rustls::pki_types::PrivateKeyDer;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::DistinguishedName;

use super::*;

/// How many verified client identities are remembered for [`RaTlsClientVerifier::peer`].
const REMEMBERED: usize = 64;

/// The rustls verifier of an RA-TLS server that requires its clients to be attested enclaves:
/// a client certificate is accepted only if the evidence it carries verifies under the policy at
/// the clock's time and binds that certificate's key. Holds no per-handshake state, so one
/// verifier serves any number of concurrent handshakes.
#[derive(Debug)]
pub struct RaTlsClientVerifier {
    policy: Policy,
    clock: fn() -> Timestamp,
    fallback: Endorsements,
    provider: Arc<rustls::crypto::CryptoProvider>,
    verified: Mutex<VecDeque<([u8; 32], PeerAttestation)>>,
}

impl RaTlsClientVerifier {
    /// A verifier for `policy`, checking certificates and collateral at `clock()`.
    pub fn new(policy: Policy, clock: fn() -> Timestamp) -> Self {
        Self {
            policy,
            clock,
            fallback: Endorsements::default(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            verified: Mutex::new(VecDeque::new()),
        }
    }

    /// Supply what a client's bundle lacks (see [`verify_bundle_endorsed`]).
    pub fn with_endorsements(mut self, fallback: Endorsements) -> Self {
        self.fallback = fallback;
        self
    }

    /// What the client presenting `cert_der` proved, once its handshake verified it.
    pub fn peer(&self, cert_der: &[u8]) -> Option<PeerAttestation> {
        let (_, spki_sha256, _) = parse_ratls_cert(cert_der).ok()?;
        self.remembered(&spki_sha256)
    }

    fn remembered(&self, spki_sha256: &[u8; 32]) -> Option<PeerAttestation> {
        let list = self.verified.lock().ok()?;
        list.iter()
            .find(|(k, _)| k == spki_sha256)
            .map(|(_, a)| a.clone())
    }

    fn remember(&self, spki_sha256: [u8; 32], attestation: PeerAttestation) {
        if let Ok(mut list) = self.verified.lock() {
            list.retain(|(k, _)| k != &spki_sha256);
            if list.len() >= REMEMBERED {
                list.pop_front();
            }
            list.push_back((spki_sha256, attestation));
        }
    }
}

impl ClientCertVerifier for RaTlsClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let general =
            |e: Rejected| rustls::Error::General(format!("client attestation rejected: {e}"));
        let (bundle, spki_sha256, _) = parse_ratls_cert(end_entity).map_err(general)?;
        let attestation = verify_bundle_endorsed(
            &bundle,
            &spki_sha256,
            &[],
            &self.policy,
            (self.clock)(),
            &self.fallback,
        )
        .map_err(general)?;
        self.remember(spki_sha256, attestation);
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The certificate is the one `verify_client_cert` accepted in this handshake; its key
        // must be one whose evidence verified.
        let (_, spki_sha256, spki) =
            parse_ratls_cert(cert).map_err(|e| rustls::Error::General(e.to_string()))?;
        if self.remembered(&spki_sha256).is_none() {
            return Err(rustls::Error::General("client not verified".into()));
        }
        verify_with_spki(&self.provider, message, &spki, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&self.provider)
    }
}

/// Our own RA-TLS certificate with its signing key, ready to present.
pub type OwnCertificate = Arc<rustls::sign::CertifiedKey>;

/// Load our RA-TLS certificate (DER) and its PKCS#8 key.
pub fn own_certificate(
    cert_der: &[u8],
    pkcs8_key_der: &[u8],
) -> Result<OwnCertificate, rustls::Error> {
    let provider = rustls::crypto::ring::default_provider();
    let key = PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        pkcs8_key_der.to_vec(),
    ));
    let signing_key = provider.key_provider.load_private_key(key)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![CertificateDer::from(cert_der.to_vec())],
        signing_key,
    )))
}

/// Presents the one RA-TLS certificate. (`with_single_cert` and `with_client_auth_cert` run the
/// certificate through webpki, which refuses our critical evidence extension: correct for web
/// PKI, not for RA-TLS, whose certificates are checked by the verifiers above.)
#[derive(Debug)]
struct Presents(OwnCertificate);

impl rustls::server::ResolvesServerCert for Presents {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<OwnCertificate> {
        Some(Arc::clone(&self.0))
    }
}

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<OwnCertificate> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The TLS client configuration towards an RA-TLS enclave: TLS 1.3 only, ALPN h2, the peer
/// checked by `verifier`; with `own`, our RA-TLS certificate is presented for mutual RA-TLS.
pub fn client_config(
    verifier: Arc<RaTlsVerifier>,
    own: Option<OwnCertificate>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match own {
        Some(own) => builder.with_client_cert_resolver(Arc::new(Presents(own))),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// The TLS server configuration of an RA-TLS enclave: TLS 1.3 only, ALPN h2, presenting `own`;
/// with `clients`, every client must itself be an attested enclave (mutual RA-TLS).
pub fn server_config(
    own: OwnCertificate,
    clients: Option<Arc<RaTlsClientVerifier>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match clients {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(Presents(own)));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}
