//! Talking to an attested enclave: RA-TLS, evidence checks, sealed requests, verified streams.
//!
//! Order of operations, which is the point of the design:
//! 1. TLS handshake with a verifier that accepts the peer only if its certificate carries
//!    evidence that verifies under the policy and binds this certificate's key.
//! 2. Only then is the request sealed (HPKE) to the attested key and sent.
//! 3. Every answer chunk is opened in order; the answer counts only when the chunk marked last
//!    arrived. If any step fails, nothing of the prompt has left the process.

use std::sync::{Arc, Mutex};

use crate::collateral::CollateralSource;
use chrysalis_attestation::measure::eventlog::replay_json;
use chrysalis_attestation::nvgpu::{check_gpu_rules, verify_gpu_report, VerifiedGpu};
use chrysalis_attestation::verify::{Endorsements, Measurements};
use chrysalis_attestation::{
    Evidence, Platform, Policy, Timestamp, VerifiedEvidence, Verifier, VerifyError,
};
use chrysalis_proto::binding::{self, BindingInputs, BINDING_VERSION};
use chrysalis_proto::enclave_client::EnclaveClient;
use chrysalis_proto::seal::{seal_request, SealError};
use chrysalis_proto::{AttestRequest, EvidenceBundle, GpuStatus, SealedChunk};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256, Sha384};
use zeroize::Zeroizing;

/// OID of the RA-TLS evidence extension (see docs/protocol.md).
pub use chrysalis_proto::binding::RATLS_EXTENSION_OID_TEXT as RATLS_EXTENSION_OID;

/// Why talking to an enclave failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The URL is not `https://HOST:PORT`.
    #[error("bad URL {0:?}: expected https://HOST:PORT")]
    Url(String),
    /// The evidence was rejected.
    #[error("attestation rejected: {0}")]
    Rejected(String),
    /// Connection or TLS failure.
    #[error("cannot connect to {url}: {message}")]
    Connect {
        /// URL.
        url: String,
        /// Cause.
        message: String,
    },
    /// The enclave answered with an error status.
    #[error("the enclave refused: {0}")]
    Status(String),
    /// The sealed stream failed its checks.
    #[error("the answer failed verification: {0}")]
    Seal(#[from] SealError),
    /// The enclave's answer could not be understood.
    #[error("malformed answer: {0}")]
    Protocol(String),
}

/// What a verified peer proved.
#[derive(Debug, Clone)]
pub struct PeerAttestation {
    /// The verified evidence.
    pub verified: VerifiedEvidence,
    /// The bundle it came in.
    pub bundle: EvidenceBundle,
    /// The attested HPKE public key.
    pub hpke_public_key: [u8; 32],
    /// The measured configuration (JSON), checked against the evidence.
    pub config: serde_json::Value,
    /// The GPUs whose reports verified (empty when the enclave attests none).
    pub gpus: Vec<VerifiedGpu>,
}

impl PeerAttestation {
    /// The platform.
    pub fn platform(&self) -> Platform {
        self.verified.platform()
    }

    /// GPU status as the enclave declared it (bound into the evidence).
    pub fn gpu_status(&self) -> GpuStatus {
        GpuStatus::try_from(self.bundle.gpu_status).unwrap_or(GpuStatus::Unspecified)
    }
}

fn reject(m: impl Into<String>) -> RemoteError {
    RemoteError::Rejected(m.into())
}

/// Check a bundle completely: evidence under `policy` at `now`, the key binding for this TLS key
/// and `nonce`, and the measured configuration.
pub fn verify_bundle(
    bundle: &EvidenceBundle,
    tls_spki_sha256: &[u8; 32],
    nonce: &[u8],
    policy: &Policy,
    now: Timestamp,
) -> Result<PeerAttestation, RemoteError> {
    verify_bundle_endorsed(
        bundle,
        tls_spki_sha256,
        nonce,
        policy,
        now,
        &Endorsements::default(),
    )
}

/// The endorsements a bundle carries (Intel collateral; VCEK and chain).
pub fn bundle_endorsements(bundle: &EvidenceBundle) -> Result<Endorsements, RemoteError> {
    let mut endorsements = Endorsements::default();
    if !bundle.tdx_collateral_json.is_empty() {
        endorsements.tdx_collateral = Some(
            serde_json::from_slice(&bundle.tdx_collateral_json)
                .map_err(|e| reject(format!("TDX collateral: {e}")))?,
        );
    }
    if !bundle.vcek_der.is_empty() {
        endorsements.vcek = Some(
            chrysalis_attestation::snp::parse_certificate("VCEK", &bundle.vcek_der)
                .map_err(|e| reject(e.to_string()))?,
        );
    }
    if !bundle.cert_chain_pem.is_empty() {
        endorsements.cert_chain =
            chrysalis_attestation::snp::parse_pem_chain(&bundle.cert_chain_pem)
                .map_err(|e| reject(e.to_string()))?;
    }
    Ok(endorsements)
}

/// [`verify_bundle`], with `fallback` supplying what the bundle does not carry (collateral from
/// the host's cache, Intel PCS or AMD KDS: signed by the vendor, so it needs no trust in who
/// served it).
pub fn verify_bundle_endorsed(
    bundle: &EvidenceBundle,
    tls_spki_sha256: &[u8; 32],
    nonce: &[u8],
    policy: &Policy,
    now: Timestamp,
    fallback: &Endorsements,
) -> Result<PeerAttestation, RemoteError> {
    if bundle.version != 1 {
        return Err(reject(format!(
            "unsupported bundle version {}",
            bundle.version
        )));
    }
    if bundle.binding_version != BINDING_VERSION {
        return Err(reject(format!(
            "unsupported binding version {}",
            bundle.binding_version
        )));
    }
    let evidence = Evidence::from_bytes(&bundle.evidence).map_err(|e| reject(e.to_string()))?;
    let declared = match chrysalis_proto::Platform::try_from(bundle.platform) {
        Ok(chrysalis_proto::Platform::Tdx) => Platform::Tdx,
        Ok(chrysalis_proto::Platform::Snp) => Platform::Snp,
        Ok(chrysalis_proto::Platform::Simulated) => Platform::Simulated,
        _ => return Err(reject(format!("unknown platform {}", bundle.platform))),
    };
    if declared != evidence.platform() {
        return Err(reject(format!(
            "bundle says {declared} but the evidence is {}",
            evidence.platform()
        )));
    }
    let mut endorsements = bundle_endorsements(bundle)?;
    if endorsements.tdx_collateral.is_none() {
        endorsements.tdx_collateral = fallback.tdx_collateral.clone();
    }
    if endorsements.vcek.is_none() {
        endorsements.vcek = fallback.vcek.clone();
    }
    if endorsements.cert_chain.is_empty() {
        endorsements.cert_chain = fallback.cert_chain.clone();
    }
    let verified = Verifier::new()
        .verify(&evidence, &endorsements, policy, now)
        .map_err(|e: VerifyError| reject(e.to_string()))?;
    if bundle.tls_spki_sha256.as_slice() != tls_spki_sha256 {
        return Err(reject(
            "the evidence is bound to another TLS key than this connection's",
        ));
    }
    if bundle.nonce.as_slice() != nonce {
        return Err(reject(
            "the evidence is not over our nonce (replayed evidence?)",
        ));
    }
    let hpke_public_key: [u8; 32] = bundle
        .hpke_public_key
        .as_slice()
        .try_into()
        .map_err(|_| reject("HPKE public key is not 32 bytes"))?;
    let gpu_status = GpuStatus::try_from(bundle.gpu_status).unwrap_or(GpuStatus::Unspecified);
    if gpu_status == GpuStatus::Unspecified {
        return Err(reject("the bundle does not say whether a GPU was checked"));
    }
    let gpu_digest = binding::gpu_digest(gpu_status, &bundle.gpus);
    let want = binding::report_data_v1(&BindingInputs {
        hpke_public_key: &hpke_public_key,
        tls_spki_sha256,
        gpu_digest: &gpu_digest,
        nonce,
    });
    if verified.report_data() != &want {
        return Err(reject(
            "report_data does not bind the enclave's keys, GPU evidence and nonce",
        ));
    }
    check_config(&verified, bundle)?;
    let config = serde_json::from_slice(&bundle.config_json)
        .map_err(|e| reject(format!("configuration: {e}")))?;
    let gpus = verify_gpus(bundle, gpu_status, &hpke_public_key, nonce, policy, now)?;
    Ok(PeerAttestation {
        verified,
        bundle: bundle.clone(),
        hpke_public_key,
        config,
        gpus,
    })
}

/// Every GPU report in the bundle must verify (signature, device chain to NVIDIA's root,
/// firmware identity) over the nonce derived from this bundle's key and nonce; then the
/// policy's `[gpu]` rules apply.
fn verify_gpus(
    bundle: &EvidenceBundle,
    status: GpuStatus,
    hpke_public_key: &[u8; 32],
    nonce: &[u8],
    policy: &Policy,
    now: Timestamp,
) -> Result<Vec<VerifiedGpu>, RemoteError> {
    let expected = binding::gpu_nonce(nonce, hpke_public_key);
    let gpus = match status {
        GpuStatus::None if bundle.gpus.is_empty() => Vec::new(),
        GpuStatus::None => return Err(reject("the bundle says no GPU but carries GPU evidence")),
        GpuStatus::Attested if bundle.gpus.is_empty() => {
            return Err(reject(
                "the bundle says its GPUs are attested but carries no GPU evidence",
            ))
        }
        GpuStatus::Attested => bundle
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| {
                if g.vendor != "nvidia" {
                    return Err(reject(format!("GPU {i}: unknown vendor {:?}", g.vendor)));
                }
                if g.nonce.as_slice() != expected.as_slice() {
                    return Err(reject(format!(
                        "GPU {i}: the report was fetched with another nonce than this evidence's"
                    )));
                }
                verify_gpu_report(&g.report, &g.cert_chain_pem, &expected, now)
                    .map_err(|e| reject(format!("GPU {i} ({}): {e}", g.name)))
            })
            .collect::<Result<Vec<_>, _>>()?,
        GpuStatus::Unspecified => {
            return Err(reject("the bundle does not say whether a GPU was checked"))
        }
    };
    check_gpu_rules(&gpus, policy.gpu()).map_err(|e| reject(e.to_string()))?;
    Ok(gpus)
}

/// The configuration in the bundle must be the one the evidence measures.
fn check_config(verified: &VerifiedEvidence, bundle: &EvidenceBundle) -> Result<(), RemoteError> {
    match verified.measurements() {
        Measurements::Simulated(m) => {
            let d: [u8; 48] = Sha384::digest(&bundle.config_json).into();
            if d != m.config_digest {
                return Err(reject(
                    "the configuration does not match the simulated evidence's config_digest",
                ));
            }
        }
        Measurements::Snp(m) => {
            let d: [u8; 32] = Sha256::digest(&bundle.config_json).into();
            if d != m.host_data {
                return Err(reject("the configuration does not match HOST_DATA"));
            }
        }
        Measurements::Tdx(m) => {
            let log = std::str::from_utf8(&bundle.event_log_json)
                .map_err(|_| reject("event log is not UTF-8"))?;
            let rtmrs = replay_json(log).map_err(|e| reject(format!("event log: {e}")))?;
            if rtmrs.values().get(3) != m.rtmr.get(3) {
                return Err(reject("the event log does not reproduce RTMR3"));
            }
            let events: Vec<serde_json::Value> =
                serde_json::from_str(log).map_err(|e| reject(e.to_string()))?;
            let has_config = events.iter().any(|e| {
                e.get("event").and_then(|v| v.as_str()) == Some("chrysalis-config")
                    && e.get("event_payload").and_then(|v| v.as_str())
                        == Some(hex::encode(&bundle.config_json).as_str())
            });
            if !has_config {
                return Err(reject(
                    "RTMR3's event log does not contain this configuration",
                ));
            }
        }
    }
    Ok(())
}

/// Parse an RA-TLS certificate: the bundle it carries and the SHA-256 of its key.
pub fn parse_ratls_cert(der: &[u8]) -> Result<(EvidenceBundle, [u8; 32], Vec<u8>), RemoteError> {
    use prost::Message;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| reject(format!("certificate: {e}")))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    let spki_sha256: [u8; 32] = Sha256::digest(spki).into();
    let ext = cert
        .tbs_certificate
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == RATLS_EXTENSION_OID)
        .ok_or_else(|| {
            reject("the server certificate carries no Chrysalis evidence (not an RA-TLS enclave)")
        })?;
    if !ext.critical {
        return Err(reject("the evidence extension is not marked critical"));
    }
    let bundle = EvidenceBundle::decode(ext.value)
        .map_err(|e| reject(format!("evidence extension: {e}")))?;
    Ok((bundle, spki_sha256, spki.to_vec()))
}

/// What one handshake proved (with the peer's SPKI), or why it failed.
type HandshakeOutcome = Result<(PeerAttestation, Vec<u8>), String>;

/// The rustls verifier of an RA-TLS server: accepts exactly the peers whose evidence verifies.
#[derive(Debug)]
pub struct RaTlsVerifier {
    policy: Policy,
    now: Timestamp,
    fallback: Arc<Endorsements>,
    seen: Mutex<Option<EvidenceBundle>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    outcome: Mutex<Option<HandshakeOutcome>>,
}

impl RaTlsVerifier {
    /// A verifier for `policy` at `now`.
    pub fn new(policy: Policy, now: Timestamp) -> Self {
        Self {
            policy,
            now,
            fallback: Arc::default(),
            seen: Mutex::new(None),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            outcome: Mutex::new(None),
        }
    }

    /// Supply what a peer's bundle lacks (see [`verify_bundle_endorsed`]).
    pub fn with_endorsements(mut self, fallback: Endorsements) -> Self {
        self.fallback = Arc::new(fallback);
        self
    }

    /// The bundle the peer presented, verified or not.
    pub fn seen_bundle(&self) -> Option<EvidenceBundle> {
        self.seen.lock().ok()?.clone()
    }

    /// What the handshake proved (or why it failed).
    pub fn outcome(&self) -> Option<Result<PeerAttestation, String>> {
        self.outcome.lock().ok()?.clone().map(|r| r.map(|(a, _)| a))
    }

    fn spki_for(&self, cert: &CertificateDer<'_>) -> Result<Vec<u8>, rustls::Error> {
        match self.outcome.lock().ok().and_then(|o| o.clone()) {
            Some(Ok((_, spki))) => {
                let (_, _, this) =
                    parse_ratls_cert(cert).map_err(|e| rustls::Error::General(e.to_string()))?;
                if this == spki {
                    Ok(spki)
                } else {
                    Err(rustls::Error::General(
                        "certificate changed during the handshake".into(),
                    ))
                }
            }
            _ => Err(rustls::Error::General("peer not verified".into())),
        }
    }
}

impl ServerCertVerifier for RaTlsVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = parse_ratls_cert(end_entity).and_then(|(bundle, spki_sha256, spki)| {
            if let Ok(mut seen) = self.seen.lock() {
                *seen = Some(bundle.clone());
            }
            verify_bundle_endorsed(
                &bundle,
                &spki_sha256,
                &[],
                &self.policy,
                self.now,
                &self.fallback,
            )
            .map(|a| (a, spki))
        });
        let ok = result.is_ok();
        let reason = |e: &RemoteError| match e {
            RemoteError::Rejected(r) => r.clone(),
            other => other.to_string(),
        };
        let msg = result.as_ref().err().map(reason);
        if let Ok(mut o) = self.outcome.lock() {
            *o = Some(result.map_err(|e| reason(&e)));
        }
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(msg.unwrap_or_default()))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("RA-TLS requires TLS 1.3".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The certificate's critical private extension is unknown to webpki, so the signature is
        // checked against the raw SubjectPublicKeyInfo we verified above.
        let spki = self.spki_for(cert)?;
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(spki.as_slice()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `https://HOST:PORT` → (host, port).
pub fn parse_url(url: &str) -> Result<(String, u16), RemoteError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| RemoteError::Url(url.into()))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| RemoteError::Url(url.into()))?;
    let port: u16 = port.parse().map_err(|_| RemoteError::Url(url.into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(RemoteError::Url(url.into()));
    }
    Ok((host.to_owned(), port))
}

/// An attested connection.
#[derive(Debug)]
pub struct Attested {
    /// The gRPC client (over the verified TLS connection).
    pub client: EnclaveClient<tonic::transport::Channel>,
    /// What the peer proved in the handshake.
    pub attestation: PeerAttestation,
    /// Endorsements from outside the bundle it was verified with (for fresh evidence too);
    /// shared, as sessions are cloned per request.
    pub endorsements: Arc<Endorsements>,
}

/// Connect to `url`, verifying the enclave in the TLS handshake with the endorsements its
/// bundle carries.
pub async fn connect(url: &str, policy: &Policy, now: Timestamp) -> Result<Attested, RemoteError> {
    connect_with(url, policy, now, &CollateralSource::Bundle).await
}

/// Connect to `url`, verifying the enclave in the TLS handshake; when its bundle lacks the
/// vendor's endorsements (a TDX quote's collateral, an SNP report's VCEK), take them from
/// `source` and handshake again.
pub async fn connect_with(
    url: &str,
    policy: &Policy,
    now: Timestamp,
    source: &CollateralSource,
) -> Result<Attested, RemoteError> {
    let (err, seen) = match connect_once(url, policy, now, Endorsements::default()).await {
        Ok(a) => return Ok(a),
        Err(e) => e,
    };
    let lacking = seen.filter(crate::collateral::bundle_lacks_endorsements);
    let (Some(bundle), false) = (lacking, matches!(source, CollateralSource::Bundle)) else {
        return Err(err);
    };
    let fallback = endorsements_from(source, &bundle, now).await?;
    connect_once(url, policy, now, fallback)
        .await
        .map_err(|(e, _)| e)
}

/// Endorsements for `bundle`'s evidence from `source`.
pub async fn endorsements_from(
    source: &CollateralSource,
    bundle: &EvidenceBundle,
    now: Timestamp,
) -> Result<Endorsements, RemoteError> {
    let no = |m: String| reject(format!("the evidence has no endorsements with it and {m}"));
    match source {
        CollateralSource::Bundle => Ok(Endorsements::default()),
        CollateralSource::Store(store) => {
            let (store, mut b) = (store.clone(), bundle.clone());
            tokio::task::spawn_blocking(move || {
                crate::collateral::complete_bundle(&mut b, &store, now).map(|_| b)
            })
            .await
            .map_err(|e| no(e.to_string()))?
            .map_err(|e| no(e.to_string()))
            .and_then(|b| bundle_endorsements(&b))
        }
        CollateralSource::Host(base) => {
            let served = host_bundle(base)
                .await
                .map_err(|e| no(format!("the host's collateral ({base}): {e}")))?;
            if served.platform != bundle.platform {
                return Err(no(format!("the host ({base}) serves another platform's")));
            }
            bundle_endorsements(&served)
        }
    }
}

/// The evidence bundle a host agent serves (`GET /v1/attestation`), collateral included.
pub async fn host_bundle(base: &str) -> Result<EvidenceBundle, String> {
    use prost::Message;
    let url = match base.split_once('?') {
        Some((b, q)) => format!("{}/v1/attestation?{q}", b.trim_end_matches('/')),
        None => format!("{}/v1/attestation", base.trim_end_matches('/')),
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            v.get("error").and_then(|e| e.as_str()).unwrap_or("")
        ));
    }
    if let Some(e) = v.get("collateral_error").and_then(|e| e.as_str()) {
        return Err(format!("the host could not get it: {e}"));
    }
    let hexed = v
        .get("bundle_protobuf")
        .and_then(|b| b.as_str())
        .ok_or("no bundle_protobuf in the answer")?;
    let bytes = hex::decode(hexed).map_err(|e| e.to_string())?;
    EvidenceBundle::decode(bytes.as_slice()).map_err(|e| e.to_string())
}

/// One connection attempt; on failure, also the bundle the peer presented (if any).
async fn connect_once(
    url: &str,
    policy: &Policy,
    now: Timestamp,
    fallback: Endorsements,
) -> Result<Attested, (RemoteError, Option<EvidenceBundle>)> {
    let verifier = Arc::new(RaTlsVerifier::new(policy.clone(), now).with_endorsements(fallback));
    connect_verified(url, &verifier)
        .await
        .map_err(|e| (e, verifier.seen_bundle()))
}

async fn connect_verified(
    url: &str,
    verifier: &Arc<RaTlsVerifier>,
) -> Result<Attested, RemoteError> {
    let (host, port) = parse_url(url)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RemoteError::Connect {
            url: url.into(),
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| RemoteError::Url(url.into()))?
        .to_owned();
    // Handshake once here, so a rejection is reported as such before anything else happens.
    let addr = format!("{host}:{port}");
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| RemoteError::Connect {
            url: url.into(),
            message: e.to_string(),
        })?;
    // Small frames (sealed chunks, HTTP/2 acks) must not wait for Nagle and delayed ACKs.
    let _ = tcp.set_nodelay(true);
    let tls = connector.connect(server_name.clone(), tcp).await;
    let attestation = match (tls, verifier.outcome()) {
        (Ok(stream), Some(Ok(a))) => {
            drop(stream);
            a
        }
        (_, Some(Err(reason))) => return Err(RemoteError::Rejected(reason)),
        (Err(e), _) => {
            return Err(RemoteError::Connect {
                url: url.into(),
                message: e.to_string(),
            })
        }
        (Ok(_), None) => return Err(reject("the handshake completed without evidence")),
    };
    let expected_spki = attestation.bundle.tls_spki_sha256.clone();
    // The gRPC channel makes its own connections through the same verifier, and each must
    // present the very key that was attested.
    let conn = connector.clone();
    let name = server_name.clone();
    let v2 = verifier.clone();
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
            RemoteError::Connect {
                url: url.into(),
                message: e.to_string(),
            }
        })?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
            let conn = conn.clone();
            let name = name.clone();
            let addr = addr.clone();
            let v2 = v2.clone();
            let expected = expected_spki.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let tls = conn.connect(name, tcp).await?;
                match v2.outcome() {
                    Some(Ok(a)) if a.bundle.tls_spki_sha256 == expected => {}
                    _ => {
                        return Err(std::io::Error::other(
                            "the enclave's key changed since it was attested",
                        ))
                    }
                }
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| RemoteError::Connect {
            url: url.into(),
            message: e.to_string(),
        })?;
    Ok(Attested {
        client: EnclaveClient::new(channel),
        attestation,
        endorsements: Arc::clone(&verifier.fallback),
    })
}

/// A TLS certificate verifier that accepts any certificate. Only for untrusted intermediaries
/// (the host agent's readiness checks and its evidence relay): nothing learned through such a
/// connection is trusted, and no prompt is ever sent over it.
#[derive(Debug)]
struct AcceptAnyForRelay(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyForRelay {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        // Nothing learned over this connection is trusted: there is nothing to check it against.
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An UNVERIFIED gRPC client to an enclave at `host:port`, for untrusted intermediaries (the
/// host agent) that check readiness and pass the evidence bundle on for clients to verify
/// themselves. Never seal a prompt over it: use [`connect`].
pub async fn connect_unverified(
    addr: std::net::SocketAddr,
) -> Result<EnclaveClient<tonic::transport::Channel>, RemoteError> {
    let url = format!("https://{addr}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RemoteError::Connect {
            url: url.clone(),
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyForRelay(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| RemoteError::Connect {
            url: url.clone(),
            message: e.to_string(),
        })?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
            let conn = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from("enclave")
                    .map_err(std::io::Error::other)?
                    .to_owned();
                let tls = conn.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| RemoteError::Connect {
            url,
            message: e.to_string(),
        })?;
    Ok(EnclaveClient::new(channel))
}

/// Ask for fresh evidence over a random nonce and verify it (proves liveness of the key).
pub async fn attest_fresh(
    a: &mut Attested,
    policy: &Policy,
    now: Timestamp,
) -> Result<PeerAttestation, RemoteError> {
    let mut nonce = [0u8; 32];
    rand_core::TryRngCore::try_fill_bytes(&mut rand_core::OsRng, &mut nonce)
        .map_err(|e| RemoteError::Protocol(format!("no randomness for the nonce: {e}")))?;
    let bundle = a
        .client
        .attest(AttestRequest {
            nonce: nonce.to_vec(),
        })
        .await
        .map_err(|s| RemoteError::Status(s.message().to_owned()))?
        .into_inner();
    let spki: [u8; 32] = a
        .attestation
        .bundle
        .tls_spki_sha256
        .as_slice()
        .try_into()
        .map_err(|_| reject("bad TLS key hash"))?;
    let fresh = verify_bundle_endorsed(&bundle, &spki, &nonce, policy, now, &a.endorsements)?;
    if fresh.hpke_public_key != a.attestation.hpke_public_key {
        return Err(reject(
            "fresh evidence names another HPKE key than the handshake's",
        ));
    }
    Ok(fresh)
}

/// One piece of a verified answer.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerPiece {
    /// Text.
    Text(String),
    /// The end, with the enclave's totals (JSON).
    Done(serde_json::Value),
}

/// Seal a chat request (JSON body) to the attested key and stream the verified answer.
/// `on_piece` sees each piece as it is opened; the function returns Ok only when the whole
/// answer, up to the chunk marked last, arrived and verified.
pub async fn generate(
    a: &mut Attested,
    body: &serde_json::Value,
    mut on_piece: impl FnMut(&AnswerPiece),
) -> Result<serde_json::Value, RemoteError> {
    let plain =
        Zeroizing::new(serde_json::to_vec(body).map_err(|e| RemoteError::Protocol(e.to_string()))?);
    let (sealed, mut opener) = seal_request(&a.attestation.hpke_public_key, &plain)?;
    drop(plain);
    let mut stream = a
        .client
        .generate(sealed)
        .await
        .map_err(|s| RemoteError::Status(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    loop {
        let chunk: Option<SealedChunk> = stream
            .message()
            .await
            .map_err(|s| RemoteError::Status(format!("{:?}: {}", s.code(), s.message())))?;
        let Some(chunk) = chunk else {
            opener.finish()?;
            return Err(RemoteError::Protocol(
                "stream ended after its last chunk without a result".into(),
            ));
        };
        let (plain, last) = opener.open(&chunk)?;
        let v: serde_json::Value =
            serde_json::from_slice(&plain).map_err(|e| RemoteError::Protocol(e.to_string()))?;
        match v.get("type").and_then(|t| t.as_str()) {
            Some("text") if !last => {
                let t = v
                    .get("text")
                    .and_then(|t| t.as_str())
                    .unwrap_or("")
                    .to_owned();
                on_piece(&AnswerPiece::Text(t));
            }
            Some("done") if last => {
                let usage = v.get("usage").cloned().unwrap_or_default();
                on_piece(&AnswerPiece::Done(usage.clone()));
                // Nothing may follow the last chunk.
                if let Ok(Some(_)) = stream.message().await {
                    return Err(SealError::AfterLast.into());
                }
                return Ok(usage);
            }
            Some("error") if last => {
                let m = v
                    .get("message")
                    .and_then(|t| t.as_str())
                    .unwrap_or("unknown error");
                return Err(RemoteError::Status(m.to_owned()));
            }
            _ => return Err(RemoteError::Protocol("unexpected chunk".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &[u64] = chrysalis_proto::binding::RATLS_EXTENSION_OID;

    /// A self-signed certificate with `ext` (content, critical) under our OID, as the enclave
    /// makes them; with its key's SPKI DER.
    fn cert(ext: Option<(&[u8], bool)>) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["chrysalis-enclave".to_owned()]).expect("params");
        if let Some((content, critical)) = ext {
            let mut e = rcgen::CustomExtension::from_oid_content(OID, content.to_vec());
            e.set_criticality(critical);
            params.custom_extensions.push(e);
        }
        let der = params.self_signed(&key).expect("cert").der().to_vec();
        (der, key.public_key_der())
    }

    fn rejection(der: &[u8]) -> String {
        parse_ratls_cert(der)
            .map(|_| "accepted".to_string())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn ratls_certificates_are_read_strictly() {
        use prost::Message;
        let bundle = EvidenceBundle {
            version: 1,
            evidence: vec![1, 2, 3],
            ..Default::default()
        };
        assert_eq!(
            OID.iter().map(u64::to_string).collect::<Vec<_>>().join("."),
            RATLS_EXTENSION_OID,
            "the arcs and the dotted form name the same OID"
        );
        let (der, spki) = cert(Some((&bundle.encode_to_vec(), true)));
        let (got, spki_sha256, got_spki) = parse_ratls_cert(&der).expect("a well-formed one");
        assert_eq!(got, bundle);
        assert_eq!(got_spki, spki);
        assert_eq!(spki_sha256, <[u8; 32]>::from(Sha256::digest(&spki)));

        // Not a certificate, or cut short.
        assert!(rejection(b"not a certificate").contains("certificate:"));
        assert!(rejection(&der[..der.len() / 2]).contains("certificate:"));
        // A certificate without our extension: an ordinary TLS server, not an enclave.
        let (plain, _) = cert(None);
        assert!(rejection(&plain).contains("carries no Chrysalis evidence"));
        // The extension must be critical, so that a verifier that does not know it fails.
        let (lax, _) = cert(Some((&bundle.encode_to_vec(), false)));
        assert!(rejection(&lax).contains("not marked critical"));
        // Content that is not a bundle.
        let (junk, _) = cert(Some((&[0xff, 0xff, 0xff], true)));
        assert!(rejection(&junk).contains("evidence extension"));
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://127.0.0.1:7443").ok(),
            Some(("127.0.0.1".into(), 7443))
        );
        assert_eq!(
            parse_url("https://[::1]:7443/").ok(),
            Some(("::1".into(), 7443))
        );
        for bad in [
            "http://x:1",
            "https://x",
            "https://:1",
            "https://x:99999",
            "x:1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
