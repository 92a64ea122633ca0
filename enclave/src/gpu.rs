//! GPUs: with NVIDIA GPUs in confidential-computing mode, read the CC state, fetch each GPU's
//! attestation report with the binding nonce (NVML, loaded at run time so this compiles and runs
//! everywhere), and only then declare the GPU ready. Without a GPU the bundle says so. A GPU
//! check that did not happen is never claimed: every failure is an error, not "no GPU".

use chrysalis_attestation::nvgpu::verify_gpu_report;
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
    /// A GPU's report did not verify (signature, device chain, firmware identity or nonce).
    #[error("GPU {index}: its attestation report does not verify: {reason}")]
    Evidence {
        /// GPU index.
        index: u32,
        /// Why.
        reason: String,
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

/// The NVML calls the GPU check makes. A trait so that the check itself (order of steps, what
/// is refused) runs on recorded replies in tests; [`Nvml`] is the real library.
pub trait NvmlApi: Send + Sync {
    /// Number of GPUs.
    fn device_count(&self) -> Result<u32, String>;
    /// Driver version (informational).
    fn driver_version(&self) -> String;
    /// Product name and UUID of GPU `index` (informational).
    fn describe(&self, index: u32) -> Result<(String, String), String>;
    /// Whether GPU `index` is in confidential-computing mode.
    fn cc_enabled(&self, index: u32) -> Result<bool, String>;
    /// GPU `index`'s attestation report over `nonce`.
    fn attestation_report(&self, index: u32, nonce: [u8; 32]) -> Result<Vec<u8>, String>;
    /// GPU `index`'s device certificate chain (PEM, leaf first).
    fn certificate_chain(&self, index: u32) -> Result<Vec<u8>, String>;
    /// Let the GPUs accept work (system-wide ready state).
    fn set_ready(&self) -> Result<(), String>;
}

/// NVML itself, loaded at run time.
pub struct Nvml(nvml_wrapper::Nvml);

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nvml")
    }
}

impl NvmlApi for Nvml {
    fn device_count(&self) -> Result<u32, String> {
        self.0.device_count().map_err(|e| e.to_string())
    }
    fn driver_version(&self) -> String {
        self.0.sys_driver_version().unwrap_or_default()
    }
    fn describe(&self, index: u32) -> Result<(String, String), String> {
        let dev = self.0.device_by_index(index).map_err(|e| e.to_string())?;
        Ok((
            dev.name().unwrap_or_default(),
            dev.uuid().unwrap_or_default(),
        ))
    }
    fn cc_enabled(&self, index: u32) -> Result<bool, String> {
        let dev = self.0.device_by_index(index).map_err(|e| e.to_string())?;
        dev.is_cc_enabled().map_err(|e| e.to_string())
    }
    fn attestation_report(&self, index: u32, nonce: [u8; 32]) -> Result<Vec<u8>, String> {
        let dev = self.0.device_by_index(index).map_err(|e| e.to_string())?;
        dev.confidential_compute_gpu_attestation_report(nonce)
            .map(|r| r.attestation_report)
            .map_err(|e| e.to_string())
    }
    fn certificate_chain(&self, index: u32) -> Result<Vec<u8>, String> {
        let dev = self.0.device_by_index(index).map_err(|e| e.to_string())?;
        dev.confidential_compute_gpu_certificate()
            .map(|c| c.attestation_cert_chain)
            .map_err(|e| e.to_string())
    }
    fn set_ready(&self) -> Result<(), String> {
        // NVML's ready state is system-wide, set through any device.
        let dev = self.0.device_by_index(0).map_err(|e| e.to_string())?;
        dev.set_confidential_compute_state(true)
            .map_err(|e| e.to_string())
    }
}

/// NVIDIA GPUs: each must be in CC mode and produce a report over the nonce that verifies
/// (signature, device chain to NVIDIA's root, firmware identity, nonce) before any is made ready.
pub struct NvidiaGpus {
    api: Box<dyn NvmlApi>,
}

impl std::fmt::Debug for NvidiaGpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NvidiaGpus")
    }
}

impl NvidiaGpus {
    /// Load NVML. `Ok(None)` when the library or any GPU is absent (a CPU-only host).
    pub fn detect() -> Result<Option<Self>, GpuError> {
        let Ok(nvml) = nvml_wrapper::Nvml::init() else {
            return Ok(None);
        };
        let api = Nvml(nvml);
        let count = api.device_count().map_err(|message| GpuError::Nvml {
            index: 0,
            what: "device count",
            message,
        })?;
        if count == 0 {
            return Ok(None);
        }
        Ok(Some(Self::with_api(Box::new(api))))
    }

    /// GPUs behind any [`NvmlApi`] (recorded replies in tests).
    pub fn with_api(api: Box<dyn NvmlApi>) -> Self {
        Self { api }
    }
}

impl GpuDevice for NvidiaGpus {
    fn attest(&self, nonce: &[u8; 32]) -> Result<GpuReport, GpuError> {
        let api = &self.api;
        let err = |index: u32, what: &'static str| {
            move |message: String| GpuError::Nvml {
                index,
                what,
                message,
            }
        };
        let count = api.device_count().map_err(err(0, "device count"))?;
        let driver_version = api.driver_version();
        let mut gpus = Vec::new();
        for index in 0..count {
            let (name, uuid) = api.describe(index).map_err(err(index, "open"))?;
            let cc_mode = api
                .cc_enabled(index)
                .map_err(err(index, "confidential-computing state"))?;
            if !cc_mode {
                return Err(GpuError::NotConfidential { index, name });
            }
            let report = api
                .attestation_report(index, *nonce)
                .map_err(err(index, "attestation report"))?;
            let cert_chain_pem = api
                .certificate_chain(index)
                .map_err(err(index, "certificate chain"))?;
            let verified = verify_gpu_report(&report, &cert_chain_pem, nonce, crate::system_now())
                .map_err(|e| GpuError::Evidence {
                    index,
                    reason: e.to_string(),
                })?;
            tracing::info!(
                target: "chrysalis::gpu",
                index,
                name = %name,
                gpu_driver = verified.report.driver_version().unwrap_or_default(),
                vbios = verified.report.vbios_version().unwrap_or_default(),
                "GPU attestation report verified"
            );
            gpus.push(GpuEvidence {
                vendor: "nvidia".into(),
                name,
                uuid,
                cc_mode,
                driver_version: driver_version.clone(),
                report,
                cert_chain_pem,
                nonce: nonce.to_vec(),
            });
        }
        // Only now, with every report in hand and verified, do the GPUs accept work.
        if !gpus.is_empty() {
            api.set_ready().map_err(err(0, "set ready state"))?;
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

    /// NVML replies recorded on an H100 (the fixture of `attestation::nvgpu`), served for any
    /// nonce: the check must notice when the report answers another one.
    #[derive(Debug)]
    struct Recorded {
        cc: bool,
        report: Vec<u8>,
        chain: Vec<u8>,
        ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
        asked: std::sync::Arc<std::sync::Mutex<Vec<[u8; 32]>>>,
    }

    const RECORDED_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

    impl Recorded {
        fn h100() -> Self {
            let dir = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../attestation/testdata/nvidia-h100/"
            );
            let text = std::fs::read_to_string(format!("{dir}report.hex")).expect("report");
            Self {
                cc: true,
                report: hex::decode(text.trim()).expect("hex"),
                chain: std::fs::read(format!("{dir}cert-chain.pem")).expect("chain"),
                ready: Default::default(),
                asked: Default::default(),
            }
        }
    }

    impl NvmlApi for Recorded {
        fn device_count(&self) -> Result<u32, String> {
            Ok(1)
        }
        fn driver_version(&self) -> String {
            "550.90.07".into()
        }
        fn describe(&self, _: u32) -> Result<(String, String), String> {
            Ok(("NVIDIA H100 PCIe".into(), "GPU-recorded".into()))
        }
        fn cc_enabled(&self, _: u32) -> Result<bool, String> {
            Ok(self.cc)
        }
        fn attestation_report(&self, _: u32, nonce: [u8; 32]) -> Result<Vec<u8>, String> {
            self.asked.lock().expect("lock").push(nonce);
            Ok(self.report.clone())
        }
        fn certificate_chain(&self, _: u32) -> Result<Vec<u8>, String> {
            Ok(self.chain.clone())
        }
        fn set_ready(&self) -> Result<(), String> {
            self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    fn recorded_nonce() -> [u8; 32] {
        chrysalis_attestation::evidence::hex_array("nonce", RECORDED_NONCE).expect("nonce")
    }

    #[test]
    fn recorded_h100_is_attested_then_made_ready() {
        let rec = Recorded::h100();
        let (ready, asked) = (rec.ready.clone(), rec.asked.clone());
        let r = NvidiaGpus::with_api(Box::new(rec))
            .attest(&recorded_nonce())
            .expect("attested");
        assert_eq!(r.status, GpuStatus::Attested);
        assert_eq!(r.gpus.len(), 1);
        assert_eq!(r.gpus[0].nonce, recorded_nonce().to_vec());
        assert!(!r.gpus[0].report.is_empty() && !r.gpus[0].cert_chain_pem.is_empty());
        assert_eq!(asked.lock().expect("lock").as_slice(), &[recorded_nonce()]);
        assert!(ready.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_report_over_another_nonce_never_makes_the_gpu_ready() {
        let rec = Recorded::h100();
        let ready = rec.ready.clone();
        let e = NvidiaGpus::with_api(Box::new(rec))
            .attest(&[5; 32])
            .expect_err("stale report");
        assert!(matches!(e, GpuError::Evidence { index: 0, .. }), "{e}");
        assert!(e.to_string().contains("replayed"), "{e}");
        assert!(!ready.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_tampered_report_or_cc_off_is_refused() {
        let mut rec = Recorded::h100();
        rec.report[200] ^= 0x40;
        let ready = rec.ready.clone();
        let e = NvidiaGpus::with_api(Box::new(rec))
            .attest(&recorded_nonce())
            .expect_err("tampered");
        assert!(e.to_string().contains("signature"), "{e}");
        assert!(!ready.load(std::sync::atomic::Ordering::SeqCst));

        let mut rec = Recorded::h100();
        rec.cc = false;
        let asked = rec.asked.clone();
        let e = NvidiaGpus::with_api(Box::new(rec))
            .attest(&recorded_nonce())
            .expect_err("cc off");
        assert!(matches!(e, GpuError::NotConfidential { .. }), "{e}");
        assert!(
            asked.lock().expect("lock").is_empty(),
            "no report is asked of a non-CC GPU"
        );
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
