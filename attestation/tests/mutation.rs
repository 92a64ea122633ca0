//! Flip bytes across the signed region of every real quote and report: every mutation must be
//! rejected. For quotes whose collateral we lack, the unmutated quote stops at TCB matching
//! (after every signature check passed), so each mutation must be caught earlier, by a
//! structural or signature check.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use chrysalis_attestation::evidence::decode_binary_or_hex;
use chrysalis_attestation::{Policy, VerifyError};
use common::*;

/// Header + body, then the signature, attestation key, certification data header and QE report.
fn tdx_signed_region(quote: &[u8]) -> std::ops::Range<usize> {
    let version = u16::from_le_bytes([quote[0], quote[1]]);
    let signed = if version == 5 {
        let body = u32::from_le_bytes([quote[50], quote[51], quote[52], quote[53]]) as usize;
        48 + 6 + body
    } else {
        48 + 584
    };
    // u32 length, signature 64, attestation key 64, cert type/size 6, QE report 384, QE sig 64.
    0..signed + 4 + 64 + 64 + 6 + 384 + 64
}

fn flip_all(
    case: &Case,
    region: std::ops::Range<usize>,
    policy: &Policy,
    baseline: &Result<(), VerifyError>,
) -> usize {
    let mut count = 0;
    for offset in region {
        for mask in [0x01u8, 0x80] {
            let mut mutated = case.evidence.clone();
            mutated[offset] ^= mask;
            let r = verify_bytes(&mutated, &case.endorsements, policy, case.now);
            match (&r, baseline) {
                (Ok(_), _) => panic!("{}: byte {offset:#x} ^ {mask:#x} was accepted", case.name),
                (Err(e), Err(b)) if e == b => {
                    panic!(
                        "{}: byte {offset:#x} ^ {mask:#x} was caught only as {e}",
                        case.name
                    )
                }
                _ => count += 1,
            }
        }
    }
    count
}

#[test]
fn every_tdx_mutation_is_rejected() {
    let policy = Policy::baseline();
    let mut cases = vec![tdx_v4(), tdx_v5_td15ex()];
    for (name, file) in [
        (
            "tdx-quote known_pck_quote_1",
            "tdx-quote/known_pck_quote_1.dat",
        ),
        (
            "tdx-quote known_pck_quote_2",
            "tdx-quote/known_pck_quote_2.dat",
        ),
        ("dcap-qvl tdx-quote.hex", "dcap-qvl/tdx-quote.hex"),
        (
            "dcap-qvl quote-from-tappd.hex",
            "dcap-qvl/quote-from-tappd.hex",
        ),
    ] {
        let mut c = tdx_v4();
        c.name = name;
        c.evidence = decode_binary_or_hex(&fixture(file)).unwrap();
        cases.push(c);
    }
    cases.push(tdx_v5_td15());
    let mut total = 0;
    for case in &cases {
        let baseline = case.verify(&policy).map(|_| ());
        if let Err(e) = &baseline {
            // Quotes without their own collateral got through every signature check.
            assert_eq!(e, &VerifyError::NoMatchingTcbLevel, "{}", case.name);
        }
        total += flip_all(case, tdx_signed_region(&case.evidence), &policy, &baseline);
    }
    assert!(total > 7 * 2 * 1000, "{total} mutations");
}

#[test]
fn every_snp_mutation_is_rejected() {
    let policy = Policy::baseline();
    let mut total = 0;
    for case in [snp_milan_v2(), snp_dstack_v3()] {
        let baseline = case.verify(&policy).map(|_| ());
        assert!(baseline.is_ok(), "{}", case.name);
        // The signed part 0x000..0x2A0, then the signature R and S.
        total += flip_all(&case, 0..0x2A0 + 144, &policy, &baseline);
    }
    // The other chip's report is rejected before and after every mutation.
    let other = snp_az_other_chip();
    for offset in 0..0x2A0 {
        let mut mutated = other.evidence.clone();
        mutated[offset] ^= 0x01;
        assert!(verify_bytes(&mutated, &other.endorsements, &policy, other.now).is_err());
        total += 1;
    }
    assert!(total > 2 * 2 * 0x2A0);
}

#[test]
fn every_simulated_mutation_is_rejected() {
    use chrysalis_attestation::simulated::*;
    let ev = SimulatedEvidence::sign(
        &SimulatedClaims {
            measurement: [1; 48],
            config_digest: [2; 48],
            report_data: [3; 64],
            debug: false,
        },
        &root_signing_key(),
    );
    let policy = Policy::baseline().allow_simulated();
    let case = Case {
        name: "simulated",
        evidence: ev.raw().to_vec(),
        endorsements: Default::default(),
        now: at("2026-01-01T00:00:00Z"),
    };
    let baseline = case.verify(&policy).map(|_| ());
    assert!(baseline.is_ok());
    flip_all(&case, 0..LEN, &policy, &baseline);
}
