//! GPUs: with NVIDIA GPUs in confidential-computing mode, read the CC state, fetch each GPU's
//! attestation report with the binding nonce (NVML, loaded at run time so this compiles and runs
//! everywhere), and only then declare the GPU ready. Without a GPU the bundle says so. A GPU
//! check that did not happen is never claimed: every failure is an error, not "no GPU".

use chrysalis_proto::{GpuEvidence, GpuStatus};

/// Errors of the GPU check.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// NVML reported a failure.
    #[error("GPU {index}: {what}: {message}")]
    Nvml {
        /// GPU index.
        index: u32,
        /// The step.
        what: &'static str,
        /// NVML's message.
        message: String,
    },
    /// A GPU is present but not in confidential-computing mode.
    #[error("GPU {index} ({name}) is not in confidential-computing mode; refusing to use it")]
    NotConfidential {
        /// GPU index.
        index: u32,
        /// Name.
        name: String,
    },
}

/// The result of a GPU check.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReport {
    /// What was found.
    pub status: GpuStatus,
    /// Per-GPU evidence (empty when none).
    pub gpus: Vec<GpuEvidence>,
}

impl GpuReport {
    /// No GPU attached.
    pub fn none() -> Self {
        Self {
            status: GpuStatus::None,
            gpus: Vec::new(),
        }
    }
}

/// A source of GPU evidence.
pub trait GpuDevice: Send + Sync + std::fmt::Debug {
    /// Check every GPU and fetch its attestation over `nonce`.
    fn attest(&self, nonce: &[u8; 32]) -> Result<GpuReport, GpuError>;
}

/// No GPU: inference on the CPU inside the TEE. Says so in the bundle.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGpu;

impl GpuDevice for NoGpu {
    fn attest(&self, _nonce: &[u8; 32]) -> Result<GpuReport, GpuError> {
        Ok(GpuReport::none())
    }
}

/// NVIDIA GPUs through NVML.
#[derive(Debug)]
pub struct NvidiaGpus {
    nvml: NvmlHandle,
}

struct NvmlHandle(nvml_wrapper::Nvml);

impl std::fmt::Debug for NvmlHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nvml")
    }
}

impl NvidiaGpus {
    /// Load NVML. `Ok(None)` when the library or any GPU is absent (a CPU-only host).
    pub fn detect() -> Result<Option<Self>, GpuError> {
        let Ok(nvml) = nvml_wrapper::Nvml::init() else {
            return Ok(None);
        };
        let count = nvml.device_count().map_err(|e| GpuError::Nvml {
            index: 0,
            what: "device count",
            message: e.to_string(),
        })?;
        if count == 0 {
            return Ok(None);
        }
        Ok(Some(Self {
            nvml: NvmlHandle(nvml),
        }))
    }
}

impl GpuDevice for NvidiaGpus {
    fn attest(&self, nonce: &[u8; 32]) -> Result<GpuReport, GpuError> {
        let nvml = &self.nvml.0;
        let err = |index: u32, what: &'static str| {
            move |e: nvml_wrapper::error::NvmlError| GpuError::Nvml {
                index,
                what,
                message: e.to_string(),
            }
        };
        let count = nvml.device_count().map_err(err(0, "device count"))?;
        let driver_version = nvml.sys_driver_version().unwrap_or_default();
        let mut gpus = Vec::new();
        for index in 0..count {
            let dev = nvml.device_by_index(index).map_err(err(index, "open"))?;
            let name = dev.name().unwrap_or_default();
            let uuid = dev.uuid().unwrap_or_default();
            let cc_mode = dev
                .is_cc_enabled()
                .map_err(err(index, "confidential-computing state"))?;
            if !cc_mode {
                return Err(GpuError::NotConfidential { index, name });
            }
            let report = dev
                .confidential_compute_gpu_attestation_report(*nonce)
                .map_err(err(index, "attestation report"))?;
            let cert = dev
                .confidential_compute_gpu_certificate()
                .map_err(err(index, "certificate chain"))?;
            gpus.push(GpuEvidence {
                vendor: "nvidia".into(),
                name,
                uuid,
                cc_mode,
                driver_version: driver_version.clone(),
                report: report.attestation_report,
                cert_chain_pem: cert.attestation_cert_chain,
                nonce: nonce.to_vec(),
            });
        }
        // Only now, with every report in hand, do the GPUs accept work.
        // (NVML's ready state is system-wide, set through any device.)
        if !gpus.is_empty() {
            let dev = nvml.device_by_index(0).map_err(err(0, "open"))?;
            dev.set_confidential_compute_state(true)
                .map_err(err(0, "set ready state"))?;
        }
        Ok(GpuReport {
            status: GpuStatus::Attested,
            gpus,
        })
    }
}

/// Pick the GPU source: NVIDIA if NVML finds GPUs, otherwise none.
pub fn detect() -> Result<Box<dyn GpuDevice>, GpuError> {
    Ok(match NvidiaGpus::detect()? {
        Some(g) => Box::new(g),
        None => Box::new(NoGpu),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gpu_says_so() {
        let r = NoGpu.attest(&[0; 32]).expect("report");
        assert_eq!(r.status, GpuStatus::None);
        assert!(r.gpus.is_empty());
    }

    #[test]
    fn detection_on_a_host_without_nvml_is_no_gpu() {
        // This machine has no NVIDIA driver: NVML fails to load and nothing is claimed.
        if std::path::Path::new("/dev/nvidiactl").exists() {
            return;
        }
        assert!(NvidiaGpus::detect().expect("detect").is_none());
    }
}
