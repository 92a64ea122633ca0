//! TEE backends behind one trait, chosen once at start-up (`--tee auto|tdx|snp|simulated`).
//!
//! - [`tdx`]: quotes through configfs-tsm, else `/dev/tdx_guest` (TDREPORT) plus the host's
//!   quote-generation service over vsock; RTMR3 extension through the kernel's sysfs interface.
//! - [`snp`]: reports through configfs-tsm (certificates from `auxblob`), else `/dev/sev-guest`
//!   through the `sev` crate; the measured configuration is bound through HOST_DATA at launch.
//! - [`simulated`]: for machines without a TEE. NOT CONFIDENTIAL, and it says so.

pub mod configfs;
pub mod ioctl;
pub mod simulated;
pub mod snp;
pub mod tdx;

use std::path::PathBuf;

use chrysalis_proto::Platform;

/// Hardware evidence produced for one `report_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeeEvidence {
    /// The raw quote or report.
    pub evidence: Vec<u8>,
    /// SNP certificates the host provided (VCEK/VLEK, ASK, ARK), PEM; empty if none.
    pub cert_chain_pem: Vec<u8>,
    /// VCEK or VLEK, DER, if the host provided it.
    pub vcek_der: Vec<u8>,
    /// Which interface produced it (for logs): `configfs-tsm`, `tdx_guest+qgs`, `sev-guest`, ...
    pub interface: &'static str,
}

/// How the measured configuration reaches the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigBinding {
    /// Extended into RTMR3 (TDX); the event is in the event log.
    Rtmr3Extended,
    /// Checked equal to HOST_DATA set at launch (SNP).
    HostData,
    /// Carried in the simulated evidence's `config_digest`.
    Simulated,
}

/// Errors of a TEE backend.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    /// The interface is not there (not a TDX/SNP guest, module not loaded).
    #[error("{0}")]
    Unavailable(String),
    /// The interface answered something unexpected.
    #[error("{interface}: {message}")]
    Protocol {
        /// Interface.
        interface: &'static str,
        /// What was wrong.
        message: String,
    },
    /// An I/O error on a TEE interface.
    #[error("{path}: {source}")]
    Io {
        /// Path or endpoint.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl TeeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into().display().to_string(),
            source,
        }
    }
}

/// A TEE the enclave runs in.
pub trait TeeDevice: Send + Sync + std::fmt::Debug {
    /// The platform.
    fn platform(&self) -> Platform;
    /// Backend name for logs and the bundle.
    fn name(&self) -> &'static str;
    /// Whether this backend gives real confidentiality (false only for the simulator).
    fn is_confidential(&self) -> bool {
        self.platform() != Platform::Simulated
    }
    /// Evidence over `report_data`.
    fn attest(&self, report_data: &[u8; 64]) -> Result<TeeEvidence, TeeError>;
    /// Bind the measured configuration (its canonical JSON) into the evidence: extend RTMR3
    /// (TDX), check HOST_DATA (SNP), or carry its digest (simulator).
    fn bind_config(&self, config_json: &[u8]) -> Result<ConfigBinding, TeeError>;
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TeeChoice {
    /// Detect: TDX, then SNP; the simulator is never chosen automatically.
    Auto,
    /// Intel TDX.
    Tdx,
    /// AMD SEV-SNP.
    Snp,
    /// The development simulator (NOT CONFIDENTIAL).
    Simulated,
}

/// Paths of the guest interfaces (overridable for tests with recorded outputs).
#[derive(Debug, Clone)]
pub struct GuestPaths {
    /// configfs-tsm report directory.
    pub tsm_report: PathBuf,
    /// TDX guest device.
    pub tdx_guest: PathBuf,
    /// SEV guest device.
    pub sev_guest: PathBuf,
    /// TDX RTMR sysfs directory (Linux 6.16+).
    pub tdx_measurements: PathBuf,
}

impl Default for GuestPaths {
    fn default() -> Self {
        Self {
            tsm_report: PathBuf::from("/sys/kernel/config/tsm/report"),
            tdx_guest: PathBuf::from("/dev/tdx_guest"),
            sev_guest: PathBuf::from("/dev/sev-guest"),
            tdx_measurements: PathBuf::from("/sys/class/misc/tdx_guest/measurements"),
        }
    }
}

/// Open the chosen backend. `auto` never falls back to the simulator: without a TEE it fails
/// and says to pass `--tee simulated` explicitly.
pub fn open(choice: TeeChoice, paths: &GuestPaths) -> Result<Box<dyn TeeDevice>, TeeError> {
    match choice {
        TeeChoice::Tdx => Ok(Box::new(tdx::TdxDevice::open(paths)?)),
        TeeChoice::Snp => Ok(Box::new(snp::SnpDevice::open(paths)?)),
        TeeChoice::Simulated => Ok(Box::new(simulated::SimulatedDevice::new())),
        TeeChoice::Auto => {
            let provider = configfs::provider(&paths.tsm_report);
            let tdx_first = provider.as_deref() == Some("tdx_guest") || paths.tdx_guest.exists();
            if tdx_first {
                if let Ok(d) = tdx::TdxDevice::open(paths) {
                    return Ok(Box::new(d));
                }
            }
            if let Ok(d) = snp::SnpDevice::open(paths) {
                return Ok(Box::new(d));
            }
            Err(TeeError::Unavailable(
                "no TEE found (no configfs-tsm provider, /dev/tdx_guest or /dev/sev-guest); \
                 to run without confidentiality pass --tee simulated"
                    .into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::configfs::RecordedFs;
    use super::*;
    use chrysalis_attestation::Evidence;

    fn td(path: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../attestation/testdata/{path}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture")
    }

    fn snp_report() -> Vec<u8> {
        let hex_text = String::from_utf8(td("sev/report_milan.hex")).expect("hex");
        hex::decode(hex_text.split_whitespace().collect::<String>()).expect("hex")
    }

    /// Every backend, over recorded hardware outputs where it has hardware.
    fn backends() -> Vec<(Box<dyn TeeDevice>, chrysalis_attestation::Platform)> {
        let paths = GuestPaths::default();
        vec![
            (
                Box::new(tdx::TdxDevice::with_tsm(
                    &paths,
                    Box::new(RecordedFs::new(
                        "tdx_guest",
                        td("dcap-qvl/tdx_quote"),
                        vec![],
                    )),
                )),
                chrysalis_attestation::Platform::Tdx,
            ),
            (
                Box::new(snp::SnpDevice::with_tsm(
                    &paths,
                    Box::new(RecordedFs::new("sev_guest", snp_report(), vec![])),
                )),
                chrysalis_attestation::Platform::Snp,
            ),
            (
                Box::new(simulated::SimulatedDevice::new()),
                chrysalis_attestation::Platform::Simulated,
            ),
        ]
    }

    #[test]
    fn every_backend_produces_evidence_of_its_platform() {
        for (dev, platform) in backends() {
            let ev = dev
                .attest(&[0x5a; 64])
                .unwrap_or_else(|e| panic!("{}: {e}", dev.name()));
            let parsed = Evidence::from_bytes(&ev.evidence)
                .unwrap_or_else(|e| panic!("{}: {e}", dev.name()));
            assert_eq!(parsed.platform(), platform, "{}", dev.name());
            assert_eq!(
                dev.is_confidential(),
                platform != chrysalis_attestation::Platform::Simulated
            );
        }
    }

    #[test]
    fn simulated_evidence_binds_report_data_and_config_and_verifies_only_when_allowed() {
        use chrysalis_attestation::{Policy, Timestamp, Verifier};
        let dev = simulated::SimulatedDevice::new();
        assert_eq!(
            dev.bind_config(b"{\"x\":1}").expect("bind"),
            ConfigBinding::Simulated
        );
        let ev = dev.attest(&[7; 64]).expect("evidence");
        let parsed = Evidence::from_bytes(&ev.evidence).expect("parse");
        let v = Verifier::new()
            .verify(
                &parsed,
                &Default::default(),
                &Policy::baseline().allow_simulated(),
                Timestamp(1_800_000_000),
            )
            .expect("verifies with opt-in");
        assert_eq!(v.report_data(), &[7; 64]);
        assert!(Verifier::new()
            .verify(
                &parsed,
                &Default::default(),
                &Policy::baseline(),
                Timestamp(1_800_000_000)
            )
            .is_err());
    }

    #[test]
    fn a_provider_of_the_other_vendor_is_refused() {
        let paths = GuestPaths::default();
        let tdx_on_sev = tdx::TdxDevice::with_tsm(
            &paths,
            Box::new(RecordedFs::new("sev_guest", snp_report(), vec![])),
        );
        assert!(tdx_on_sev.attest(&[0; 64]).is_err());
        let snp_on_tdx = snp::SnpDevice::with_tsm(
            &paths,
            Box::new(RecordedFs::new(
                "tdx_guest",
                td("dcap-qvl/tdx_quote"),
                vec![],
            )),
        );
        assert!(snp_on_tdx.attest(&[0; 64]).is_err());
    }

    #[test]
    fn snp_refuses_a_launch_for_another_configuration() {
        // The recorded report's HOST_DATA is not SHA-256 of this configuration.
        let paths = GuestPaths::default();
        let dev = snp::SnpDevice::with_tsm(
            &paths,
            Box::new(RecordedFs::new("sev_guest", snp_report(), vec![])),
        );
        let err = dev.bind_config(b"{\"models\":[]}").expect_err("mismatch");
        assert!(err.to_string().contains("HOST_DATA"), "{err}");
    }

    #[test]
    fn snp_accepts_the_host_data_that_chrysalis_enclave_config_prints() {
        // The report as a host would have launched it with `snp_host_data` from
        // `chrysalis-enclave config --tee snp`.
        let config = b"{\"format\":\"chrysalis-enclave-config/v1\",\"models\":[]}";
        let mut report = snp_report();
        assert_eq!(report.len(), 1184);
        report[0xC0..0xE0].copy_from_slice(&crate::serve::config_digests(config).snp_host_data);
        let dev = snp::SnpDevice::with_tsm(
            &GuestPaths::default(),
            Box::new(RecordedFs::new("sev_guest", report, vec![])),
        );
        assert_eq!(
            dev.bind_config(config).expect("bound"),
            ConfigBinding::HostData
        );
        assert!(dev.bind_config(b"{\"models\":[1]}").is_err());
    }

    #[test]
    fn auto_without_a_tee_fails_and_never_picks_the_simulator() {
        let paths = GuestPaths {
            tsm_report: "/nonexistent/tsm".into(),
            tdx_guest: "/nonexistent/tdx_guest".into(),
            sev_guest: "/nonexistent/sev-guest".into(),
            tdx_measurements: "/nonexistent/m".into(),
        };
        let err = open(TeeChoice::Auto, &paths).expect_err("no TEE");
        assert!(err.to_string().contains("--tee simulated"), "{err}");
    }
}
