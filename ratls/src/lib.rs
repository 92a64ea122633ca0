//! RA-TLS and evidence bundles, for both ends of a connection: verify a peer's
//! [`EvidenceBundle`] under a policy (evidence, key binding, measured configuration, GPU
//! reports), read the bundle an RA-TLS certificate carries, and the rustls verifiers that accept
//! exactly the peers whose evidence verifies: [`RaTlsVerifier`] for a client checking an enclave,
//! [`RaTlsClientVerifier`] for an enclave checking a client that is itself an enclave (mutual
//! RA-TLS, enclave-to-enclave links).
//!
//! Pure apart from rustls: no network, no clock (time is a parameter), no disk.

use std::sync::{Arc, Mutex};

use chrysalis_attestation::measure::eventlog::replay_json;
use chrysalis_attestation::nvgpu::{check_gpu_rules, verify_gpu_report, VerifiedGpu};
use chrysalis_attestation::verify::{Endorsements, Measurements};
use chrysalis_attestation::{
    Evidence, Platform, Policy, Timestamp, VerifiedEvidence, Verifier, VerifyError,
};
use chrysalis_proto::binding::{self, BindingInputs, BINDING_VERSION};
use chrysalis_proto::{EvidenceBundle, GpuStatus};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256, Sha384};

/// OID of the RA-TLS evidence extension (see docs/protocol.md).
pub use chrysalis_proto::binding::RATLS_EXTENSION_OID_TEXT as RATLS_EXTENSION_OID;

mod client_auth;
pub use client_auth::{
    client_config, own_certificate, server_config, OwnCertificate, RaTlsClientVerifier,
};

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

/// Why a peer's evidence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

fn reject(m: impl Into<String>) -> Rejected {
    Rejected(m.into())
}

/// Check a bundle completely: evidence under `policy` at `now`, the key binding for this TLS key
/// and `nonce`, and the measured configuration.
pub fn verify_bundle(
    bundle: &EvidenceBundle,
    tls_spki_sha256: &[u8; 32],
    nonce: &[u8],
    policy: &Policy,
    now: Timestamp,
) -> Result<PeerAttestation, Rejected> {
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
pub fn bundle_endorsements(bundle: &EvidenceBundle) -> Result<Endorsements, Rejected> {
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
) -> Result<PeerAttestation, Rejected> {
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
) -> Result<Vec<VerifiedGpu>, Rejected> {
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
fn check_config(verified: &VerifiedEvidence, bundle: &EvidenceBundle) -> Result<(), Rejected> {
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
pub fn parse_ratls_cert(der: &[u8]) -> Result<(EvidenceBundle, [u8; 32], Vec<u8>), Rejected> {
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

    /// The endorsements supplied with [`RaTlsVerifier::with_endorsements`].
    pub fn endorsements(&self) -> Arc<Endorsements> {
        Arc::clone(&self.fallback)
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
        let reason = |e: &Rejected| e.0.clone();
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
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_with_spki(&self.provider, message, &self.spki_for(cert)?, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&self.provider)
    }
}

/// RA-TLS is TLS 1.3 only.
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("RA-TLS requires TLS 1.3".into()))
}

/// The handshake signature, checked against the raw SubjectPublicKeyInfo whose evidence
/// verified (webpki does not know the certificate's critical private extension).
fn verify_with_spki(
    provider: &rustls::crypto::CryptoProvider,
    message: &[u8],
    spki: &[u8],
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(spki),
        dss,
        &provider.signature_verification_algorithms,
    )
}

fn schemes(provider: &rustls::crypto::CryptoProvider) -> Vec<SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
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
}
