//! Fixture loading shared by the integration tests. Every fixture has a README with its source.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use chrysalis_attestation::evidence::decode_binary_or_hex;
use chrysalis_attestation::snp::{parse_certificate, parse_pem_chain};
use chrysalis_attestation::tdx::parse_collateral;
use chrysalis_attestation::verify::Endorsements;
use chrysalis_attestation::{Evidence, Policy, Timestamp, VerifiedEvidence, Verifier, VerifyError};

pub fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

pub fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

/// A real evidence case: bytes, endorsements and a time inside the endorsements' validity.
#[derive(Clone)]
pub struct Case {
    pub name: &'static str,
    pub evidence: Vec<u8>,
    pub endorsements: Endorsements,
    pub now: Timestamp,
}

impl Case {
    pub fn verify(&self, policy: &Policy) -> Result<VerifiedEvidence, VerifyError> {
        verify_bytes(&self.evidence, &self.endorsements, policy, self.now)
    }
}

pub fn verify_bytes(
    bytes: &[u8],
    endorsements: &Endorsements,
    policy: &Policy,
    now: Timestamp,
) -> Result<VerifiedEvidence, VerifyError> {
    let evidence = Evidence::from_bytes(bytes)?;
    Verifier::new().verify(&evidence, endorsements, policy, now)
}

pub fn tdx_case(name: &'static str, quote: &str, collateral: &str, now: &str) -> Case {
    Case {
        name,
        evidence: decode_binary_or_hex(&fixture(quote)).unwrap(),
        endorsements: Endorsements {
            tdx_collateral: Some(parse_collateral(&fixture(collateral)).unwrap()),
            ..Default::default()
        },
        now: at(now),
    }
}

pub fn snp_case(
    name: &'static str,
    report: Vec<u8>,
    vcek: &str,
    chain: Option<&str>,
    now: &str,
) -> Case {
    Case {
        name,
        evidence: report,
        endorsements: Endorsements {
            vcek: Some(parse_certificate("VCEK", &fixture(vcek)).unwrap()),
            cert_chain: chain
                .map(|c| parse_pem_chain(&fixture(c)).unwrap())
                .unwrap_or_default(),
            ..Default::default()
        },
        now: at(now),
    }
}

pub fn tdx_v4() -> Case {
    tdx_case(
        "dcap-qvl tdx_quote (v4)",
        "dcap-qvl/tdx_quote",
        "dcap-qvl/tdx_quote_collateral.json",
        "2025-06-20T00:00:00Z",
    )
}
pub fn tdx_v4_hex() -> Case {
    tdx_case(
        "dcap-qvl tdx-quote.hex (v4, hex)",
        "dcap-qvl/tdx-quote.hex",
        "dcap-qvl/tdx_quote_collateral.json",
        "2025-06-20T00:00:00Z",
    )
}
pub fn tdx_v5_td15() -> Case {
    tdx_case(
        "dcap-qvl tdx_quote_outdated (v5, TD 1.5)",
        "dcap-qvl/tdx_quote_outdated",
        "dcap-qvl/tdx_quote_outdated_collateral.json",
        "2026-02-20T00:00:00Z",
    )
}
pub fn tdx_v5_td15ex() -> Case {
    tdx_case(
        "dcap-qvl tdx_quote_td15ex (v5, TD 1.5 ex)",
        "dcap-qvl/tdx_quote_td15ex",
        "dcap-qvl/tdx_quote_td15ex_collateral.json",
        "2026-10-10T00:00:00Z",
    )
}
pub fn snp_milan_v2() -> Case {
    snp_case(
        "sev report_milan (v2)",
        decode_binary_or_hex(&fixture("sev/report_milan.hex")).unwrap(),
        "sev/vcek_milan.der",
        Some("sev/cert_chain_milan"),
        "2025-06-20T00:00:00Z",
    )
}
pub fn snp_dstack_v3() -> Case {
    let raw = fixture("dstack/sev_snp_attestation.bin");
    snp_case(
        "dstack sev_snp_attestation (v3)",
        raw[4..4 + 1184].to_vec(),
        "dstack/sev_snp_vcek.pem",
        Some("dstack/sev_snp_ask.pem"),
        "2026-07-01T00:00:00Z",
    )
}
pub fn snp_az_other_chip() -> Case {
    let raw = fixture("az-snp-vtpm/hcl-report-snp.bin");
    let certs = parse_pem_chain(&fixture("az-snp-vtpm/certs.pem")).unwrap();
    Case {
        name: "az-snp-vtpm hcl report with another chip's VCEK",
        evidence: raw[0x20..0x20 + 1184].to_vec(),
        endorsements: Endorsements {
            vcek: Some(certs[0].clone()),
            cert_chain: certs[1..].to_vec(),
            ..Default::default()
        },
        now: at("2025-06-20T00:00:00Z"),
    }
}
