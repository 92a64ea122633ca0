//! GPU evidence as a client sees it: an enclave (simulated TEE) whose GPU source hands back a
//! real H100 report recorded elsewhere must be refused, because the report does not answer the
//! nonce derived from this enclave's key; and `[gpu] required` refuses an enclave without a GPU.

use chrysalis_attestation::{Policy, Timestamp};
use chrysalis_client::remote::{self, Rejected};
use chrysalis_enclave::gpu::{GpuDevice, GpuError, GpuReport, NoGpu};
use chrysalis_enclave::identity::{EnclaveConfig, Identity};
use chrysalis_enclave::tee::simulated::SimulatedDevice;
use chrysalis_proto::{GpuEvidence, GpuStatus};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../attestation/testdata/nvidia-h100/"
);

/// A GPU source that replays the recorded report, claiming it answers `claim` (or the nonce it
/// was asked for, when `None`): what a compromised enclave build could try.
#[derive(Debug)]
struct ReplayedGpu {
    claim: Option<[u8; 32]>,
}

impl GpuDevice for ReplayedGpu {
    fn attest(&self, nonce: &[u8; 32]) -> Result<GpuReport, GpuError> {
        let text = std::fs::read_to_string(format!("{FIXTURE}report.hex")).expect("report");
        Ok(GpuReport {
            status: GpuStatus::Attested,
            gpus: vec![GpuEvidence {
                vendor: "nvidia".into(),
                name: "NVIDIA H100 PCIe".into(),
                uuid: "GPU-recorded".into(),
                cc_mode: true,
                driver_version: "550.90.07".into(),
                report: hex::decode(text.trim()).expect("hex"),
                cert_chain_pem: std::fs::read(format!("{FIXTURE}cert-chain.pem")).expect("chain"),
                nonce: self.claim.unwrap_or(*nonce).to_vec(),
            }],
        })
    }
}

fn identity(gpu: Box<dyn GpuDevice>) -> (Identity, [u8; 48]) {
    let tee = SimulatedDevice::new();
    let measurement = tee.measurement();
    let config = EnclaveConfig::new("simulated", Vec::new(), 1, 1, None);
    (
        Identity::new(Box::new(tee), gpu, &config, 1.0).expect("identity"),
        measurement,
    )
}

fn policy(measurement: &[u8; 48], extra: &str) -> Policy {
    Policy::from_toml(&format!(
        "version = 1\nplatforms = [\"simulated\"]\n[simulated]\nmeasurement = [\"{}\"]\n{extra}",
        hex::encode(measurement)
    ))
    .expect("policy")
}

fn now() -> Timestamp {
    Timestamp::parse("2026-11-22T00:00:00Z").expect("time")
}

fn verify(id: &Identity, policy: &Policy) -> Result<remote::PeerAttestation, Rejected> {
    let bundle = id.evidence(&[]).expect("bundle");
    remote::verify_bundle(&bundle, &id.tls().spki_sha256, &[], policy, now())
}

#[test]
fn a_replayed_gpu_report_is_refused() {
    let (id, m) = identity(Box::new(ReplayedGpu { claim: None }));
    let e = verify(&id, &policy(&m, "")).expect_err("replayed report");
    let text = e.to_string();
    assert!(
        text.contains("GPU 0") && text.contains("replayed"),
        "{text}"
    );

    // Claiming the report's own nonce does not help: it is not the one this evidence derives.
    let recorded: [u8; 32] =
        hex::decode("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
            .expect("hex")
            .try_into()
            .expect("32");
    let (id, m) = identity(Box::new(ReplayedGpu {
        claim: Some(recorded),
    }));
    let e = verify(&id, &policy(&m, "")).expect_err("other nonce");
    assert!(e.to_string().contains("another nonce"), "{e}");
}

#[test]
fn gpu_required_refuses_a_cpu_only_enclave() {
    let (id, m) = identity(Box::new(NoGpu));
    let ok = verify(&id, &policy(&m, "")).expect("CPU-only accepted by default");
    assert!(ok.gpus.is_empty());
    let e = verify(&id, &policy(&m, "[gpu]\nrequired = true")).expect_err("GPU required");
    assert!(e.to_string().contains("attested GPU"), "{e}");
}
