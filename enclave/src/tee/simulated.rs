//! The development simulator: evidence of its own type, signed with the simulator root key
//! (public knowledge by design), accepted only by policies that name `simulated`.
//! NOT CONFIDENTIAL: the host can read everything. It says so in every log line it causes.

use chrysalis_attestation::simulated::{root_signing_key, SimulatedClaims, SimulatedEvidence};
use chrysalis_proto::Platform;
use sha2::{Digest, Sha384};
use std::sync::Mutex;

use super::{ConfigBinding, TeeDevice, TeeError, TeeEvidence};

/// The loud line.
pub const WARNING: &str =
    "SIMULATED TEE: NOT CONFIDENTIAL. The host can read every prompt. For development only.";

/// The simulator.
#[derive(Debug)]
pub struct SimulatedDevice {
    measurement: [u8; 48],
    config_digest: Mutex<[u8; 48]>,
}

impl SimulatedDevice {
    /// A simulator whose "launch measurement" is the SHA-384 of this executable.
    pub fn new() -> Self {
        let measurement = exe_sha384();
        tracing::warn!(target: "chrysalis::tee", "{WARNING}");
        Self {
            measurement,
            config_digest: Mutex::new([0; 48]),
        }
    }

    /// The simulated launch measurement.
    /// The simulator inside an image's VM: it measures the enclave binary and the kernel
    /// command line (`chrysalis_attestation::simulated::image_measurement`), the value the
    /// image manifest publishes.
    pub fn for_image(kernel_cmdline: &str) -> Self {
        tracing::warn!(target: "chrysalis::tee", "{WARNING}");
        Self {
            measurement: chrysalis_attestation::simulated::image_measurement(
                &exe_sha384(),
                kernel_cmdline,
            ),
            config_digest: Mutex::new([0; 48]),
        }
    }

    pub fn measurement(&self) -> [u8; 48] {
        self.measurement
    }
}

/// SHA-384 of this process's binary (zeros when it cannot be read: the simulator proves nothing
/// either way).
fn exe_sha384() -> [u8; 48] {
    std::env::current_exe()
        .and_then(std::fs::read)
        .map(|b| Sha384::digest(&b).into())
        .unwrap_or([0; 48])
}

impl Default for SimulatedDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl TeeDevice for SimulatedDevice {
    fn platform(&self) -> Platform {
        Platform::Simulated
    }
    fn name(&self) -> &'static str {
        "simulated"
    }
    fn attest(&self, report_data: &[u8; 64]) -> Result<TeeEvidence, TeeError> {
        tracing::warn!(target: "chrysalis::tee", "producing simulated evidence: {WARNING}");
        let config_digest = *self
            .config_digest
            .lock()
            .map_err(|_| TeeError::Unavailable("simulator state poisoned".into()))?;
        let claims = SimulatedClaims {
            measurement: self.measurement,
            config_digest,
            report_data: *report_data,
            debug: false,
        };
        let ev = SimulatedEvidence::sign(&claims, &root_signing_key());
        Ok(TeeEvidence {
            evidence: ev.raw().to_vec(),
            cert_chain_pem: Vec::new(),
            vcek_der: Vec::new(),
            interface: "simulator",
        })
    }
    fn bind_config(&self, config_json: &[u8]) -> Result<ConfigBinding, TeeError> {
        let d: [u8; 48] = Sha384::digest(config_json).into();
        *self
            .config_digest
            .lock()
            .map_err(|_| TeeError::Unavailable("simulator state poisoned".into()))? = d;
        Ok(ConfigBinding::Simulated)
    }
}
