//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the stable smoke test that runs
//! the same code without nightly. Each takes arbitrary bytes and must never panic.

use crate::bundle::EvidenceBundle;
use crate::evidence::{decode_binary_or_hex, Evidence};
use crate::policy::Policy;
use crate::simulated::SimulatedEvidence;
use crate::snp::{parse_certificate, parse_pem_chain, SnpReport};
use crate::tdx::{parse_collateral, TdxQuote};
use crate::time::Timestamp;
use crate::verify::{Endorsements, Verifier};

/// Real endorsements for the fuzzer to verify against, so mutated evidence reaches the deep
/// signature and TCB paths: Intel collateral for the dcap-qvl v4 sample and the Milan VCEK.
pub fn sample_endorsements(collateral_json: &[u8], vcek_der: &[u8]) -> Endorsements {
    Endorsements {
        tdx_collateral: parse_collateral(collateral_json).ok(),
        vcek: parse_certificate("VCEK", vcek_der).ok(),
        cert_chain: Vec::new(),
    }
}

/// Every evidence parser, and the verifier on whatever parses (at 2025-06-20, inside the sample
/// collateral's validity).
pub fn evidence(data: &[u8], endorsements: &Endorsements) {
    let _ = TdxQuote::from_bytes(data);
    let _ = SnpReport::from_bytes(data);
    let _ = SimulatedEvidence::from_bytes(data);
    if let Ok(bytes) = decode_binary_or_hex(data) {
        if let Ok(ev) = Evidence::from_bytes(&bytes) {
            let policy = Policy::baseline().allow_simulated();
            let _ = Verifier::new().verify(&ev, endorsements, &policy, Timestamp(1_750_377_600));
        }
    }
}

/// Policy TOML.
pub fn policy(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = Policy::from_toml(text) {
            // What parses must round-trip.
            let again = Policy::from_toml(&p.to_toml());
            assert!(
                again.is_ok(),
                "a parsed policy must re-parse from its own TOML"
            );
        }
    }
}

/// Evidence bundles, Intel collateral JSON and certificates.
pub fn endorsements(data: &[u8]) {
    if let Ok((bundle, _)) = EvidenceBundle::from_json(data) {
        let _ = Endorsements::from_bundle(&bundle);
    }
    let _ = parse_collateral(data);
    let _ = parse_certificate("fuzz", data);
    let _ = parse_pem_chain(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Timestamp::parse(text);
    }
}

/// Measurement parsers: TDVF metadata and MRTD, PE/COFF Authenticode and the QEMU header patch,
/// CCEL and JSON event logs.
pub fn measure(data: &[u8]) {
    use crate::measure::{eventlog, kernel, tdvf};
    let _ = tdvf::tdvf_sections(data);
    if data.len() <= 1 << 20 {
        let _ = tdvf::mrtd(data, tdvf::PageAddOrder::SinglePass);
    }
    let _ = kernel::authenticode_sha384(data);
    let _ = kernel::qemu_patch_header(data, 1 << 30, 4096);
    let _ = eventlog::replay_ccel(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = eventlog::replay_json(text);
    }
}
