//! The enclave's identity: keys born inside, the measured configuration, and evidence bound to
//! them (a cached bundle for RA-TLS, fresh ones per client nonce, rate-limited).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrysalis_proto::binding::{self, BindingInputs, BINDING_VERSION};
use chrysalis_proto::seal::HpkeKeyPair;
use chrysalis_proto::{EvidenceBundle, Platform};
use prost::Message;
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::gpu::GpuDevice;
use crate::tee::{ConfigBinding, TeeDevice};

pub use chrysalis_proto::binding::RATLS_EXTENSION_OID;

/// Errors while building the identity or evidence.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The TEE failed.
    #[error("TEE: {0}")]
    Tee(#[from] crate::tee::TeeError),
    /// The GPU check failed.
    #[error("GPU: {0}")]
    Gpu(#[from] crate::gpu::GpuError),
    /// Certificate generation failed.
    #[error("TLS certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A bad nonce.
    #[error("{0}")]
    Nonce(String),
    /// Too many fresh-evidence requests.
    #[error("fresh evidence is rate-limited: retry in {0:?}")]
    RateLimited(Duration),
}

/// The measured configuration: what a verifier learns it is talking to.
#[derive(Debug, Clone, Serialize)]
pub struct EnclaveConfig {
    /// Always "chrysalis-enclave-config/v1".
    pub format: &'static str,
    /// Enclave version.
    pub enclave_version: &'static str,
    /// TEE backend.
    pub tee: String,
    /// Models served, with their file digests.
    pub models: Vec<chrysalis_inference::ModelIdentity>,
    /// Scheduler limits.
    pub max_active: usize,
    /// Queue bound.
    pub max_queued: usize,
    /// report_data binding version.
    pub binding_version: u32,
    /// Mutual RA-TLS: SHA-256 of the policy clients must satisfy (absent: any client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_policy_sha256: Option<String>,
}

impl EnclaveConfig {
    /// The configuration of this enclave build on backend `tee`, serving `models` with these
    /// scheduler limits; `peer_policy_sha256` when mutual RA-TLS is required.
    pub fn new(
        tee: &str,
        models: Vec<chrysalis_inference::ModelIdentity>,
        max_active: usize,
        max_queued: usize,
        peer_policy_sha256: Option<[u8; 32]>,
    ) -> Self {
        Self {
            format: "chrysalis-enclave-config/v1",
            enclave_version: env!("CARGO_PKG_VERSION"),
            tee: tee.to_owned(),
            models,
            max_active,
            max_queued,
            binding_version: chrysalis_proto::binding::BINDING_VERSION,
            peer_policy_sha256: peer_policy_sha256.map(hex::encode),
        }
    }

    /// Canonical JSON (field order fixed by the struct, no whitespace).
    pub fn canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The TLS identity: a P-256 key born here and a self-signed certificate carrying the evidence.
pub struct TlsIdentity {
    /// Certificate, DER.
    pub cert_der: Vec<u8>,
    /// Private key, PKCS#8 DER (zeroized on drop).
    pub key_der: Zeroizing<Vec<u8>>,
    /// SHA-256 of the SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("spki_sha256", &hex::encode(self.spki_sha256))
            .field("key_der", &"<redacted>")
            .finish()
    }
}

/// Token bucket for fresh (nonce-bound) evidence: real quotes cost ~40 ms of the TEE's time.
#[derive(Debug)]
struct RateLimit {
    capacity: f64,
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    fn new(per_second: f64, burst: f64) -> Self {
        Self {
            capacity: burst,
            per_second,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    fn take(&self) -> Result<(), Duration> {
        let Ok(mut s) = self.state.lock() else {
            return Err(Duration::from_secs(1));
        };
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.per_second;
        s.0 = (s.0 + refill).min(self.capacity);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.0) / self.per_second))
        }
    }
}

/// Everything the enclave proves about itself.
#[derive(Debug)]
pub struct Identity {
    tee: Box<dyn TeeDevice>,
    gpu: Box<dyn GpuDevice>,
    hpke: HpkeKeyPair,
    tls: TlsIdentity,
    config_json: Vec<u8>,
    event_log_json: Vec<u8>,
    config_binding: ConfigBinding,
    cached: EvidenceBundle,
    fresh_limit: RateLimit,
}

impl Identity {
    /// Make the keys, bind the configuration, produce the cached evidence and the RA-TLS
    /// certificate that carries it.
    pub fn new(
        tee: Box<dyn TeeDevice>,
        gpu: Box<dyn GpuDevice>,
        config: &EnclaveConfig,
        fresh_per_second: f64,
    ) -> Result<Self, IdentityError> {
        let hpke = HpkeKeyPair::generate();
        let config_json = config.canonical_json();
        let config_binding = tee.bind_config(&config_json)?;
        let event_log_json = match config_binding {
            ConfigBinding::Rtmr3Extended => crate::tee::tdx::config_event_log(&config_json),
            _ => Vec::new(),
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let spki_sha256: [u8; 32] = Sha256::digest(key.public_key_der()).into();
        let mut me = Self {
            tee,
            gpu,
            hpke,
            tls: TlsIdentity {
                cert_der: Vec::new(),
                key_der: Zeroizing::new(key.serialize_der()),
                spki_sha256,
            },
            config_json,
            event_log_json,
            config_binding,
            cached: EvidenceBundle::default(),
            fresh_limit: RateLimit::new(
                fresh_per_second.max(0.01),
                (fresh_per_second * 2.0).max(1.0),
            ),
        };
        me.cached = me.produce(&[])?;
        let mut params = CertificateParams::new(vec!["chrysalis-enclave".to_owned()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Chrysalis enclave (RA-TLS)");
        params.distinguished_name = dn;
        let mut ext =
            CustomExtension::from_oid_content(RATLS_EXTENSION_OID, me.cached.encode_to_vec());
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
        me.tls.cert_der = params.self_signed(&key)?.der().to_vec();
        tracing::info!(
            target: "chrysalis::enclave",
            tee = me.tee.name(),
            config_binding = ?me.config_binding,
            hpke_public_key = %hex::encode(me.hpke.public_key()),
            tls_spki_sha256 = %hex::encode(spki_sha256),
            "enclave identity ready"
        );
        Ok(me)
    }

    fn produce(&self, nonce: &[u8]) -> Result<EvidenceBundle, IdentityError> {
        binding::check_nonce(nonce).map_err(IdentityError::Nonce)?;
        let gpu = self
            .gpu
            .attest(&binding::gpu_nonce(nonce, self.hpke.public_key()))?;
        let gpu_digest = binding::gpu_digest(gpu.status, &gpu.gpus);
        let report_data = binding::report_data_v1(&BindingInputs {
            hpke_public_key: self.hpke.public_key(),
            tls_spki_sha256: &self.tls.spki_sha256,
            gpu_digest: &gpu_digest,
            nonce,
        });
        let ev = self.tee.attest(&report_data)?;
        Ok(EvidenceBundle {
            version: 1,
            platform: self.tee.platform() as i32,
            evidence: ev.evidence,
            tdx_collateral_json: Vec::new(),
            vcek_der: ev.vcek_der,
            cert_chain_pem: ev.cert_chain_pem,
            event_log_json: self.event_log_json.clone(),
            gpu_status: gpu.status as i32,
            gpus: gpu.gpus,
            hpke_public_key: self.hpke.public_key().to_vec(),
            tls_spki_sha256: self.tls.spki_sha256.to_vec(),
            binding_version: BINDING_VERSION,
            nonce: nonce.to_vec(),
            config_json: self.config_json.clone(),
        })
    }

    /// Evidence for a client nonce: the cached bundle for an empty one, else fresh (rate-limited).
    pub fn evidence(&self, nonce: &[u8]) -> Result<EvidenceBundle, IdentityError> {
        if nonce.is_empty() {
            return Ok(self.cached.clone());
        }
        binding::check_nonce(nonce).map_err(IdentityError::Nonce)?;
        self.fresh_limit
            .take()
            .map_err(IdentityError::RateLimited)?;
        self.produce(nonce)
    }

    /// The HPKE key pair.
    pub fn hpke(&self) -> &HpkeKeyPair {
        &self.hpke
    }

    /// The TLS identity.
    pub fn tls(&self) -> &TlsIdentity {
        &self.tls
    }

    /// The RA-TLS certificate and its key, to present as a server or, for mutual RA-TLS, as a
    /// client of another enclave.
    pub fn own_certificate(&self) -> Result<chrysalis_ratls::OwnCertificate, rustls::Error> {
        chrysalis_ratls::own_certificate(&self.tls.cert_der, &self.tls.key_der)
    }

    /// The TLS client configuration for connecting to another enclave whose evidence `verifier`
    /// checks, presenting this enclave's own RA-TLS certificate (mutual RA-TLS).
    pub fn peer_client_config(
        &self,
        verifier: Arc<chrysalis_ratls::RaTlsVerifier>,
    ) -> Result<rustls::ClientConfig, rustls::Error> {
        chrysalis_ratls::client_config(verifier, Some(self.own_certificate()?))
    }

    /// The platform.
    pub fn platform(&self) -> Platform {
        self.tee.platform()
    }

    /// Whether this is the simulator.
    pub fn is_simulated(&self) -> bool {
        !self.tee.is_confidential()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_refuses_bursts_beyond_capacity() {
        let r = RateLimit::new(1.0, 2.0);
        assert!(r.take().is_ok());
        assert!(r.take().is_ok());
        let wait = r.take().expect_err("limited");
        assert!(wait > Duration::from_millis(100) && wait <= Duration::from_secs(1));
    }
}
