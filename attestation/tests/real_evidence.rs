//! Verification of real evidence captured on real hardware (see testdata/*/README.md), at pinned
//! times inside and outside the endorsements' validity.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use chrysalis_attestation::evidence::decode_binary_or_hex;
use chrysalis_attestation::snp::{parse_certificate, parse_pem_chain, verify_endorsement_chain};
use chrysalis_attestation::verify::{Endorsements, Measurements};
use chrysalis_attestation::{Evidence, ParseError, Platform, Policy, PolicyViolation, VerifyError};
use common::*;

fn accepted() -> Vec<Case> {
    vec![tdx_v4(), tdx_v5_td15ex(), snp_milan_v2(), snp_dstack_v3()]
}

#[test]
fn real_evidence_is_accepted_with_its_measurements() {
    for case in accepted() {
        let v = case
            .verify(&Policy::baseline())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert!(
            !v.measurement_policy_applied(),
            "{}: baseline pins nothing",
            case.name
        );
        assert!(v.expires_at() > case.now, "{}", case.name);
    }
    // Known values, read independently from the fixtures' bytes at the spec offsets.
    let v = tdx_v4().verify(&Policy::baseline()).unwrap();
    assert_eq!(v.platform(), Platform::Tdx);
    assert_eq!(v.tcb().status, "UpToDate");
    let Measurements::Tdx(m) = v.measurements() else {
        panic!("not tdx")
    };
    let raw = decode_binary_or_hex(&fixture("dcap-qvl/tdx_quote")).unwrap();
    assert_eq!(m.quote_version, 4);
    assert_eq!(&m.mr_td[..], &raw[184..232], "MRTD at absolute offset 184");
    assert_eq!(&m.rtmr[0][..], &raw[48 + 328..48 + 376]);
    assert_eq!(&m.rtmr[3][..], &raw[48 + 472..48 + 520]);
    assert_eq!(&m.report_data[..], &raw[48 + 520..48 + 584]);

    let v = tdx_v5_td15ex().verify(&Policy::baseline()).unwrap();
    let Measurements::Tdx(m) = v.measurements() else {
        panic!("not tdx")
    };
    assert_eq!(m.quote_version, 5);
    assert!(
        m.tee_tcb_svn2.is_some() && m.mr_service_td.is_some(),
        "TD 1.5 fields"
    );

    let v = snp_milan_v2().verify(&Policy::baseline()).unwrap();
    let Measurements::Snp(m) = v.measurements() else {
        panic!("not snp")
    };
    assert_eq!(m.version, 2);
    assert_eq!(hex::encode(m.measurement), "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f");
    assert_eq!(
        (
            m.reported_tcb.bootloader,
            m.reported_tcb.tee,
            m.reported_tcb.snp,
            m.reported_tcb.microcode
        ),
        (3, 0, 8, 115)
    );
    assert_eq!(v.tcb().status, "bootloader=3 tee=0 snp=8 microcode=115");
    assert_eq!(m.product, "Milan");

    let v = snp_dstack_v3().verify(&Policy::baseline()).unwrap();
    let Measurements::Snp(m) = v.measurements() else {
        panic!("not snp")
    };
    assert_eq!(m.version, 3);
    assert!(m.report_data.starts_with(b"attest-test-fixture-2026"));
}

#[test]
fn hex_text_and_binary_forms_are_the_same_quote() {
    let hex_form = decode_binary_or_hex(&fixture("dcap-qvl/tdx-quote.hex")).unwrap();
    let parsed = Evidence::from_bytes(&hex_form).unwrap();
    assert_eq!(parsed.platform(), Platform::Tdx);
}

#[test]
fn platform_below_every_tcb_level_is_rejected() {
    let err = tdx_v5_td15().verify(&Policy::baseline()).unwrap_err();
    assert_eq!(err, VerifyError::NoMatchingTcbLevel);
}

#[test]
fn collateral_outside_its_window_is_rejected() {
    for (when, what) in [
        ("2025-06-01T00:00:00Z", "before issue"),
        ("2025-08-01T00:00:00Z", "after nextUpdate"),
    ] {
        let mut case = tdx_v4();
        case.now = at(when);
        let err = case.verify(&Policy::baseline()).unwrap_err();
        assert!(
            matches!(err, VerifyError::CollateralNotValidAt(_)),
            "{what}: {err}"
        );
    }
    let mut case = tdx_v5_td15ex();
    case.now = at("2026-11-21T00:00:00Z");
    assert!(matches!(
        case.verify(&Policy::baseline()),
        Err(VerifyError::CollateralNotValidAt(_))
    ));
}

#[test]
fn tdx_without_collateral_is_rejected_not_accepted() {
    let mut case = tdx_v4();
    case.endorsements = Endorsements::default();
    assert!(matches!(
        case.verify(&Policy::baseline()),
        Err(VerifyError::MissingEndorsement {
            platform: Platform::Tdx,
            ..
        })
    ));
}

#[test]
fn collateral_of_another_platform_is_rejected() {
    // The v4 quote with the TD 1.5 quote's collateral: a different FMSPC.
    let mut case = tdx_v4();
    case.endorsements = tdx_v5_td15ex().endorsements;
    case.now = at("2026-10-10T00:00:00Z");
    assert!(case.verify(&Policy::baseline()).is_err());
}

#[test]
fn snp_certificates_outside_validity_are_rejected() {
    for when in ["2022-01-01T00:00:00Z", "2031-01-01T00:00:00Z"] {
        let mut case = snp_milan_v2();
        case.now = at(when);
        assert!(
            matches!(
                case.verify(&Policy::baseline()),
                Err(VerifyError::CertificateNotValid { .. })
            ),
            "{when}"
        );
    }
}

#[test]
fn another_chips_valid_chain_is_rejected_for_the_chip_id() {
    let case = snp_az_other_chip();
    // The chain itself is genuine AMD...
    let vek = case.endorsements.vcek.clone().unwrap();
    assert_eq!(
        verify_endorsement_chain(&vek, &case.endorsements.cert_chain, case.now)
            .unwrap()
            .0,
        "Milan"
    );
    // ...but it belongs to another chip.
    assert!(matches!(
        case.verify(&Policy::baseline()),
        Err(VerifyError::ChipIdMismatch { .. })
    ));
}

#[test]
fn turin_chain_verifies_and_turin_vcek_cannot_sign_a_milan_report() {
    let vek = parse_certificate("VCEK", &fixture("sev/vcek_turin.der")).unwrap();
    let chain = parse_pem_chain(&fixture("sev/cert_chain_turin")).unwrap();
    let (root, _) = verify_endorsement_chain(&vek, &chain, at("2025-06-20T00:00:00Z")).unwrap();
    assert_eq!(root, "Turin");
    // With AMD's built-in roots only.
    assert_eq!(
        verify_endorsement_chain(&vek, &[], at("2025-06-20T00:00:00Z"))
            .unwrap()
            .0,
        "Turin"
    );
    let mut case = snp_milan_v2();
    case.endorsements = Endorsements {
        vcek: Some(vek),
        cert_chain: chain,
        ..Default::default()
    };
    assert!(case.verify(&Policy::baseline()).is_err());
}

#[test]
fn a_self_made_root_is_untrusted() {
    // The Turin ARK offered as the root of a Milan VCEK: it is an AMD root, but not this chain's.
    let mut case = snp_milan_v2();
    let turin = parse_pem_chain(&fixture("sev/cert_chain_turin")).unwrap();
    case.endorsements.cert_chain = turin;
    assert!(matches!(
        case.verify(&Policy::baseline()),
        Err(VerifyError::CertificateChain(_))
    ));
    // A VCEK offered as its own root is not an AMD root at all.
    let mut case = snp_milan_v2();
    let vcek = case.endorsements.vcek.clone().unwrap();
    let mut fake_root = vcek.clone();
    fake_root.tbs_certificate.issuer = fake_root.tbs_certificate.subject.clone();
    case.endorsements.cert_chain = vec![fake_root];
    assert_eq!(
        case.verify(&Policy::baseline()).unwrap_err(),
        VerifyError::UntrustedRoot { vendor: "AMD" }
    );
}

#[test]
fn snp_without_vcek_is_rejected() {
    let mut case = snp_milan_v2();
    case.endorsements = Endorsements::default();
    assert!(matches!(
        case.verify(&Policy::baseline()),
        Err(VerifyError::MissingEndorsement {
            platform: Platform::Snp,
            ..
        })
    ));
}

#[test]
fn the_sgx_quote_is_refused_clearly() {
    let err = Evidence::from_bytes(&fixture("dcap-qvl/sgx_quote")).unwrap_err();
    assert!(
        matches!(err, ParseError::UnknownFormat(ref m) if m.contains("SGX")),
        "{err}"
    );
}

#[test]
fn truncation_and_trailing_garbage_are_rejected() {
    for case in accepted() {
        // Cutting the zero padding some quotes carry is harmless; cutting the last meaningful
        // byte is not.
        let last_nonzero = case.evidence.iter().rposition(|b| *b != 0).unwrap();
        for cut in [0, 1, 47, 48, case.evidence.len() / 2, last_nonzero] {
            let r = verify_bytes(
                &case.evidence[..cut],
                &case.endorsements,
                &Policy::baseline(),
                case.now,
            );
            assert!(r.is_err(), "{} truncated to {cut}", case.name);
        }
        let mut longer = case.evidence.clone();
        longer.push(0x5a);
        assert!(
            verify_bytes(&longer, &case.endorsements, &Policy::baseline(), case.now).is_err(),
            "{} + garbage",
            case.name
        );
    }
}

#[test]
fn baseline_policy_rejects_simulated_evidence() {
    let ev = chrysalis_attestation::simulated::SimulatedEvidence::sign(
        &chrysalis_attestation::simulated::SimulatedClaims {
            measurement: [7; 48],
            config_digest: [8; 48],
            report_data: [9; 64],
            debug: false,
        },
        &chrysalis_attestation::simulated::root_signing_key(),
    );
    let err = verify_bytes(
        ev.raw(),
        &Endorsements::default(),
        &Policy::baseline(),
        at("2026-01-01T00:00:00Z"),
    )
    .unwrap_err();
    assert_eq!(
        err,
        VerifyError::Policy(PolicyViolation::SimulatedNotAllowed)
    );
    let ok = verify_bytes(
        ev.raw(),
        &Endorsements::default(),
        &Policy::baseline().allow_simulated(),
        at("2026-01-01T00:00:00Z"),
    )
    .unwrap();
    assert_eq!(ok.platform(), Platform::Simulated);
    assert_eq!(ok.tcb().status, "Simulated");
}
