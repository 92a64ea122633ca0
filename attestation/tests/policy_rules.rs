//! Each policy rule, applied to real evidence: the matching value accepts, another rejects with
//! the reason that names the rule.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use chrysalis_attestation::simulated::{root_signing_key, SimulatedClaims, SimulatedEvidence};
use chrysalis_attestation::verify::{Endorsements, Measurements, SnpMeasurements, TdxMeasurements};
use chrysalis_attestation::{Policy, PolicyViolation, VerificationCache, Verifier, VerifyError};
use common::*;

const OTHER48: &str = "111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111";

fn tdx_measurements() -> TdxMeasurements {
    match tdx_v4()
        .verify(&Policy::baseline())
        .unwrap()
        .measurements()
        .clone()
    {
        Measurements::Tdx(m) => m,
        _ => panic!("tdx"),
    }
}

fn snp_measurements() -> SnpMeasurements {
    match snp_milan_v2()
        .verify(&Policy::baseline())
        .unwrap()
        .measurements()
        .clone()
    {
        Measurements::Snp(m) => m,
        _ => panic!("snp"),
    }
}

fn tdx_policy(extra_tdx: &str, top: &str) -> Policy {
    let m = tdx_measurements();
    Policy::from_toml(&format!(
        "version = 1\nplatforms = [\"tdx\"]\n{top}\n[tdx]\nmr_td = [\"{}\"]\n{extra_tdx}\n",
        hex::encode(m.mr_td)
    ))
    .unwrap()
}

fn snp_policy(extra_snp: &str) -> Policy {
    let m = snp_measurements();
    Policy::from_toml(&format!(
        "version = 1\nplatforms = [\"snp\"]\n[snp]\nmeasurement = [\"{}\"]\n{extra_snp}\n",
        hex::encode(m.measurement)
    ))
    .unwrap()
}

fn violation(r: Result<chrysalis_attestation::VerifiedEvidence, VerifyError>) -> PolicyViolation {
    match r {
        Err(VerifyError::Policy(v)) => v,
        other => panic!("expected a policy violation, got {other:?}"),
    }
}

#[test]
fn tdx_measurement_allowlists() {
    let m = tdx_measurements();
    let v = tdx_v4().verify(&tdx_policy("", "")).unwrap();
    assert!(v.measurement_policy_applied());

    let wrong = Policy::from_toml(&format!(
        "version = 1\nplatforms = [\"tdx\"]\n[tdx]\nmr_td = [\"{OTHER48}\"]\n"
    ))
    .unwrap();
    assert!(matches!(
        violation(tdx_v4().verify(&wrong)),
        PolicyViolation::NotAllowed { field: "mr_td", .. }
    ));

    let rtmr_ok = format!(
        "rtmr = [[{}]]",
        m.rtmr
            .iter()
            .map(|r| format!("\"{}\"", hex::encode(r)))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(tdx_v4().verify(&tdx_policy(&rtmr_ok, "")).is_ok());
    let mut bad = m.rtmr;
    bad[2][0] ^= 1;
    let rtmr_bad = format!(
        "rtmr = [[{}]]",
        bad.iter()
            .map(|r| format!("\"{}\"", hex::encode(r)))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(matches!(
        violation(tdx_v4().verify(&tdx_policy(&rtmr_bad, ""))),
        PolicyViolation::NotAllowed { field: "rtmr", .. }
    ));

    // Each RTMR alone: the quote's own value passes, another is named in the violation.
    for (i, field) in ["rtmr0", "rtmr1", "rtmr2"].into_iter().enumerate() {
        let ok = format!("{field} = [\"{OTHER48}\", \"{}\"]", hex::encode(m.rtmr[i]));
        assert!(tdx_v4().verify(&tdx_policy(&ok, "")).is_ok(), "{field}");
        let bad = format!("{field} = [\"{OTHER48}\"]");
        match violation(tdx_v4().verify(&tdx_policy(&bad, ""))) {
            PolicyViolation::NotAllowed { field: f, .. } => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }

    let cfg_bad = format!("mr_config_id = [\"{OTHER48}\"]");
    assert!(matches!(
        violation(tdx_v4().verify(&tdx_policy(&cfg_bad, ""))),
        PolicyViolation::NotAllowed {
            field: "mr_config_id",
            ..
        }
    ));
}

#[test]
fn tdx_module_allowlist_mrseam() {
    let m = tdx_measurements();
    assert!(tdx_v4()
        .verify(&tdx_policy(
            &format!("mr_seam = [\"{}\"]", hex::encode(m.mr_seam)),
            ""
        ))
        .is_ok());
    assert!(matches!(
        violation(tdx_v4().verify(&tdx_policy(&format!("mr_seam = [\"{OTHER48}\"]"), ""))),
        PolicyViolation::NotAllowed {
            field: "mr_seam",
            ..
        }
    ));
}

#[test]
fn tdx_minimum_tee_tcb_svn() {
    let m = tdx_measurements();
    assert!(tdx_v4()
        .verify(&tdx_policy(
            &format!("min_tee_tcb_svn = \"{}\"", hex::encode(m.tee_tcb_svn)),
            ""
        ))
        .is_ok());
    let mut higher = m.tee_tcb_svn;
    higher[0] = higher[0].saturating_add(1);
    assert!(matches!(
        violation(tdx_v4().verify(&tdx_policy(
            &format!("min_tee_tcb_svn = \"{}\"", hex::encode(higher)),
            ""
        ))),
        PolicyViolation::BelowMinimum { .. }
    ));
}

#[test]
fn tdx_sept_ve_disable_requirement() {
    let m = tdx_measurements();
    let set = u64::from_le_bytes(m.td_attributes)
        & chrysalis_attestation::tdx::TD_ATTR_SEPT_VE_DISABLE
        != 0;
    let r = tdx_v4().verify(&tdx_policy("require_sept_ve_disable = true", ""));
    if set {
        assert!(r.is_ok());
    } else {
        assert_eq!(
            violation(r),
            PolicyViolation::AttributeRequired("TD_ATTRIBUTES.SEPT_VE_DISABLE")
        );
    }
    assert!(tdx_v4()
        .verify(&tdx_policy("require_sept_ve_disable = false", ""))
        .is_ok());
}

#[test]
fn tdx_tcb_status_rules_on_real_evidence() {
    // The sample is UpToDate: a policy accepting only another status rejects it.
    let p = tdx_policy("", "[tcb]\naccepted_statuses = [\"SWHardeningNeeded\"]");
    assert!(matches!(
        violation(tdx_v4().verify(&p)),
        PolicyViolation::TcbStatusNotAccepted { .. }
    ));
}

#[test]
fn tdx_collateral_maximum_age() {
    // Collateral issued 2025-06-19; verified on 2025-07-10 it is 21 days old.
    let mut case = tdx_v4();
    case.now = at("2025-07-10T00:00:00Z");
    assert!(case
        .verify(&tdx_policy("", "[tcb]\ncollateral_max_age_days = 30"))
        .is_ok());
    assert!(matches!(
        violation(case.verify(&tdx_policy("", "[tcb]\ncollateral_max_age_days = 7"))),
        PolicyViolation::CollateralTooOld {
            max_age_days: 7,
            ..
        }
    ));
}

#[test]
fn report_data_binding() {
    for case in [tdx_v4(), snp_milan_v2()] {
        let actual = *case.verify(&Policy::baseline()).unwrap().report_data();
        assert!(case
            .verify(&Policy::baseline().require_report_data(actual))
            .is_ok());
        let mut other = actual;
        other[63] ^= 0x80;
        assert!(matches!(
            violation(case.verify(&Policy::baseline().require_report_data(other))),
            PolicyViolation::ReportDataMismatch { .. }
        ));
    }
}

#[test]
fn snp_measurement_host_data_and_tcb_rules() {
    let m = snp_measurements();
    assert!(snp_milan_v2()
        .verify(&snp_policy(""))
        .unwrap()
        .measurement_policy_applied());
    let wrong = Policy::from_toml(&format!(
        "version = 1\nplatforms = [\"snp\"]\n[snp]\nmeasurement = [\"{OTHER48}\"]\n"
    ))
    .unwrap();
    assert!(matches!(
        violation(snp_milan_v2().verify(&wrong)),
        PolicyViolation::NotAllowed {
            field: "measurement",
            ..
        }
    ));

    assert!(snp_milan_v2()
        .verify(&snp_policy(&format!(
            "host_data = [\"{}\"]",
            hex::encode(m.host_data)
        )))
        .is_ok());
    assert!(matches!(
        violation(snp_milan_v2().verify(&snp_policy(&format!(
            "host_data = [\"{}\"]",
            "22".repeat(32)
        )))),
        PolicyViolation::NotAllowed {
            field: "host_data",
            ..
        }
    ));

    // The real report was launched without an ID block: its key digests are zero, so a policy
    // that requires a signing key refuses it, and one naming the zero digest is the only way in.
    assert_eq!(m.id_key_digest, [0; 48]);
    for field in ["id_key_digest", "author_key_digest"] {
        assert!(matches!(
            violation(snp_milan_v2().verify(&snp_policy(&format!(
                "{field} = [\"{}\"]",
                "2c".repeat(48)
            )))),
            PolicyViolation::NotAllowed { field: f, .. } if f == field
        ));
        assert!(snp_milan_v2()
            .verify(&snp_policy(&format!("{field} = [\"{}\"]", "00".repeat(48))))
            .is_ok());
    }

    let t = m.reported_tcb;
    let at_min = format!(
        "min_tcb = {{ bootloader = {}, tee = {}, snp = {}, microcode = {} }}",
        t.bootloader, t.tee, t.snp, t.microcode
    );
    assert!(snp_milan_v2().verify(&snp_policy(&at_min)).is_ok());
    let above = format!(
        "min_tcb = {{ bootloader = {}, tee = {}, snp = {}, microcode = {} }}",
        t.bootloader,
        t.tee,
        t.snp,
        t.microcode + 1
    );
    assert!(matches!(
        violation(snp_milan_v2().verify(&snp_policy(&above))),
        PolicyViolation::BelowMinimum { .. }
    ));

    // POLICY 0x30000 has SMT allowed (bit 16).
    assert_eq!(m.policy, "0x30000");
    assert!(snp_milan_v2()
        .verify(&snp_policy("allow_smt = true"))
        .is_ok());
    assert!(matches!(
        violation(snp_milan_v2().verify(&snp_policy("allow_smt = false"))),
        PolicyViolation::AttributeForbidden(_)
    ));
    assert!(matches!(
        violation(
            snp_milan_v2().verify(&snp_policy(&format!("min_guest_svn = {}", m.guest_svn + 1)))
        ),
        PolicyViolation::BelowMinimum { .. }
    ));
}

#[test]
fn platform_allowlist() {
    let only_snp = snp_policy("");
    assert!(matches!(
        violation(tdx_v4().verify(&only_snp)),
        PolicyViolation::PlatformNotAllowed(_)
    ));
}

fn simulated(debug: bool) -> SimulatedEvidence {
    SimulatedEvidence::sign(
        &SimulatedClaims {
            measurement: [0x11; 48],
            config_digest: [0x22; 48],
            report_data: [0x33; 64],
            debug,
        },
        &root_signing_key(),
    )
}

#[test]
fn simulated_needs_naming_and_debug_is_rejected() {
    let now = at("2026-01-01T00:00:00Z");
    let none = Endorsements::default();
    let named = Policy::from_toml(&format!(
        "version = 1\nplatforms = [\"simulated\"]\n[simulated]\nmeasurement = [\"{OTHER48}\"]\n"
    ))
    .unwrap();
    assert!(verify_bytes(simulated(false).raw(), &none, &named, now).is_ok());
    assert!(matches!(
        violation(verify_bytes(simulated(true).raw(), &none, &named, now)),
        PolicyViolation::DebugEnabled(_)
    ));
    let tdx_only = tdx_policy("", "");
    assert_eq!(
        violation(verify_bytes(simulated(false).raw(), &none, &tdx_only, now)),
        PolicyViolation::SimulatedNotAllowed
    );
    let wrong_measurement = Policy::from_toml(&format!(
        "version = 1\nplatforms = [\"simulated\"]\n[simulated]\nmeasurement = [\"{}\"]\n",
        "ab".repeat(48)
    ))
    .unwrap();
    assert!(matches!(
        violation(verify_bytes(
            simulated(false).raw(),
            &none,
            &wrong_measurement,
            now
        )),
        PolicyViolation::NotAllowed { .. }
    ));
}

#[test]
fn cache_serves_until_expiry_and_keys_on_policy() {
    let cache = VerificationCache::new(4);
    let case = tdx_v4();
    let evidence = chrysalis_attestation::Evidence::from_bytes(&case.evidence).unwrap();
    let verifier = Verifier::new();
    let first = cache
        .verify(
            &verifier,
            &evidence,
            &case.endorsements,
            &Policy::baseline(),
            case.now,
        )
        .unwrap();
    assert_eq!(cache.len(), 1);
    let key = VerificationCache::key(&evidence, &case.endorsements, &Policy::baseline());
    assert_eq!(cache.lookup(&key, case.now), Some(first.clone()));
    // After expiry the entry is not served, and re-verification fails on expired collateral.
    let later = chrysalis_attestation::Timestamp(first.expires_at().secs() + 1);
    assert_eq!(cache.lookup(&key, later), None);
    assert!(cache
        .verify(
            &verifier,
            &evidence,
            &case.endorsements,
            &Policy::baseline(),
            later
        )
        .is_err());
    // A different policy is a different key: a stricter policy is not answered from the cache.
    let strict = tdx_policy(&format!("mr_seam = [\"{OTHER48}\"]"), "");
    assert!(cache
        .verify(&verifier, &evidence, &case.endorsements, &strict, case.now)
        .is_err());
    assert_eq!(cache.len(), 1, "rejections are not cached");
}
