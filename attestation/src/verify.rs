//! The verifier: authenticity first, then the policy; the only way to reach measurements.

use dcap_qvl::quote::Report;
use dcap_qvl::{QuoteCollateralV3, TcbStatus};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use crate::bundle::EvidenceBundle;
use crate::error::{ParseError, PolicyViolation, VerifyError};
use crate::evidence::{hex_lower, Evidence, Platform};
use crate::policy::Policy;
use crate::simulated::SimulatedEvidence;
use crate::snp::{self, SnpReport, TcbVersion};
use crate::tdx::{self, TdxQuote};
use crate::time::Timestamp;

const DAY: u64 = 86_400;
/// How long a verified simulated report stays cached: it has no collateral to expire.
const SIMULATED_VALIDITY: u64 = 3_600;

fn ser_hex<S: Serializer, T: AsRef<[u8]>>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex_lower(value.as_ref()))
}

fn ser_hex_opt<S: Serializer, T: AsRef<[u8]>>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.serialize_str(&hex_lower(v.as_ref())),
        None => s.serialize_none(),
    }
}

fn ser_hex_list<S: Serializer>(value: &[[u8; 48]; 4], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(4))?;
    for v in value {
        seq.serialize_element(&hex_lower(v))?;
    }
    seq.end()
}

/// Endorsements that travel beside the evidence: collateral and certificates.
#[derive(Clone, Debug, Default)]
pub struct Endorsements {
    /// Intel collateral for a TDX quote.
    pub tdx_collateral: Option<QuoteCollateralV3>,
    /// VCEK or VLEK for an SNP report.
    pub vcek: Option<Certificate>,
    /// ASK/ARK or ASVK/ARK; empty means AMD's built-in chains.
    pub cert_chain: Vec<Certificate>,
}

impl Endorsements {
    /// Take the endorsements a bundle carries.
    pub fn from_bundle(bundle: &EvidenceBundle) -> Result<Self, ParseError> {
        let tdx_collateral = bundle
            .tdx_collateral
            .as_ref()
            .map(|v| {
                serde_json::from_value(v.clone()).map_err(|e| ParseError::Collateral(e.to_string()))
            })
            .transpose()?;
        let vcek = bundle
            .vcek
            .as_deref()
            .map(|p| snp::parse_certificate("VCEK", p.as_bytes()))
            .transpose()?;
        let cert_chain = match bundle.cert_chain.as_deref() {
            Some(pem) => snp::parse_pem_chain(pem.as_bytes())?,
            None => Vec::new(),
        };
        Ok(Endorsements {
            tdx_collateral,
            vcek,
            cert_chain,
        })
    }
}

/// Verified TDX measurements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TdxMeasurements {
    /// Quote version (4 or 5).
    pub quote_version: u16,
    /// MRTD.
    #[serde(serialize_with = "ser_hex")]
    pub mr_td: [u8; 48],
    /// RTMR0..3.
    #[serde(serialize_with = "ser_hex_list")]
    pub rtmr: [[u8; 48]; 4],
    /// MRCONFIGID.
    #[serde(serialize_with = "ser_hex")]
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    #[serde(serialize_with = "ser_hex")]
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    #[serde(serialize_with = "ser_hex")]
    pub mr_owner_config: [u8; 48],
    /// TD_ATTRIBUTES.
    #[serde(serialize_with = "ser_hex")]
    pub td_attributes: [u8; 8],
    /// XFAM.
    #[serde(serialize_with = "ser_hex")]
    pub xfam: [u8; 8],
    /// MRSEAM (the TDX module).
    #[serde(serialize_with = "ser_hex")]
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM.
    #[serde(serialize_with = "ser_hex")]
    pub mr_signer_seam: [u8; 48],
    /// TEE_TCB_SVN.
    #[serde(serialize_with = "ser_hex")]
    pub tee_tcb_svn: [u8; 16],
    /// TEE_TCB_SVN2 (TD 1.5).
    #[serde(serialize_with = "ser_hex_opt")]
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// MRSERVICETD (TD 1.5).
    #[serde(serialize_with = "ser_hex_opt")]
    pub mr_service_td: Option<[u8; 48]>,
    /// REPORTDATA.
    #[serde(serialize_with = "ser_hex")]
    pub report_data: [u8; 64],
}

/// Verified SEV-SNP measurements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnpMeasurements {
    /// Report version.
    pub version: u32,
    /// MEASUREMENT (launch digest).
    #[serde(serialize_with = "ser_hex")]
    pub measurement: [u8; 48],
    /// HOST_DATA.
    #[serde(serialize_with = "ser_hex")]
    pub host_data: [u8; 32],
    /// Guest POLICY, hex of the u64 (e.g. `0x30000`).
    pub policy: String,
    /// REPORT_DATA.
    #[serde(serialize_with = "ser_hex")]
    pub report_data: [u8; 64],
    /// CHIP_ID.
    #[serde(serialize_with = "ser_hex")]
    pub chip_id: [u8; 64],
    /// REPORTED_TCB.
    pub reported_tcb: TcbVersion,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// VMPL the report was requested at.
    pub vmpl: u32,
    /// FAMILY_ID.
    #[serde(serialize_with = "ser_hex")]
    pub family_id: [u8; 16],
    /// IMAGE_ID.
    #[serde(serialize_with = "ser_hex")]
    pub image_id: [u8; 16],
    /// ID_KEY_DIGEST.
    #[serde(serialize_with = "ser_hex")]
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST.
    #[serde(serialize_with = "ser_hex")]
    pub author_key_digest: [u8; 48],
    /// "VCEK" or "VLEK".
    pub signing_key: &'static str,
    /// The AMD root the chain ends at (Milan, Genoa, Turin).
    pub product: &'static str,
}

/// Measurements from the simulator (not confidential).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SimulatedMeasurements {
    /// Simulated launch measurement.
    #[serde(serialize_with = "ser_hex")]
    pub measurement: [u8; 48],
    /// Digest of the measured configuration.
    #[serde(serialize_with = "ser_hex")]
    pub config_digest: [u8; 48],
    /// Bound data.
    #[serde(serialize_with = "ser_hex")]
    pub report_data: [u8; 64],
}

/// Verified measurements, by platform.
// Built once per verification; boxing the larger variant buys nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Measurements {
    /// TDX.
    Tdx(TdxMeasurements),
    /// SEV-SNP.
    Snp(SnpMeasurements),
    /// Simulator.
    Simulated(SimulatedMeasurements),
}

impl Measurements {
    /// The bound `report_data`.
    pub fn report_data(&self) -> &[u8; 64] {
        match self {
            Measurements::Tdx(m) => &m.report_data,
            Measurements::Snp(m) => &m.report_data,
            Measurements::Simulated(m) => &m.report_data,
        }
    }
}

/// What the TCB check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TcbSummary {
    /// Intel's status word (`UpToDate`, `OutOfDate`, ...), or for SNP the reported TCB
    /// components (SNP has no Intel-style status), or `Simulated`.
    pub status: String,
    /// Intel security advisories that apply.
    pub advisory_ids: Vec<String>,
    /// Date of the matched Intel TCB level.
    pub tcb_date: Option<String>,
    /// Accepted only through the policy's out-of-date grace window.
    pub in_grace_window: bool,
}

/// Evidence that passed authenticity and policy checks: the only holder of measurements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifiedEvidence {
    platform: Platform,
    measurements: Measurements,
    tcb: TcbSummary,
    verified_at: Timestamp,
    expires_at: Timestamp,
    measurement_policy_applied: bool,
    #[serde(serialize_with = "ser_hex")]
    evidence_sha256: [u8; 32],
    trust_anchor: String,
}

impl VerifiedEvidence {
    /// The verified platform.
    pub fn platform(&self) -> Platform {
        self.platform
    }
    /// The verified measurements.
    pub fn measurements(&self) -> &Measurements {
        &self.measurements
    }
    /// The verified `report_data`.
    pub fn report_data(&self) -> &[u8; 64] {
        self.measurements.report_data()
    }
    /// TCB findings.
    pub fn tcb(&self) -> &TcbSummary {
        &self.tcb
    }
    /// When it was verified.
    pub fn verified_at(&self) -> Timestamp {
        self.verified_at
    }
    /// When the verdict lapses (earliest collateral or certificate expiry).
    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }
    /// Whether the policy pinned this platform's measurements.
    pub fn measurement_policy_applied(&self) -> bool {
        self.measurement_policy_applied
    }
    /// SHA-256 of the evidence bytes.
    pub fn evidence_sha256(&self) -> &[u8; 32] {
        &self.evidence_sha256
    }
    /// The root the evidence chains to.
    pub fn trust_anchor(&self) -> &str {
        &self.trust_anchor
    }
}

/// The verifier. Stateless; trust anchors are Intel's SGX root CA (inside `dcap-qvl`), AMD's
/// Milan/Genoa/Turin ARKs (inside `sev`) and the simulator root key.
#[derive(Clone, Debug, Default)]
pub struct Verifier {
    snp_chains: std::sync::Arc<snp::ChainMemo>,
}

fn allow_list<const N: usize>(
    field: &'static str,
    value: &[u8; N],
    allowed: &[[u8; N]],
) -> Result<(), PolicyViolation> {
    if allowed.iter().any(|a| a == value) {
        Ok(())
    } else {
        Err(PolicyViolation::NotAllowed {
            field,
            value: hex_lower(value),
        })
    }
}

fn check_report_data(policy: &Policy, actual: &[u8; 64]) -> Result<(), PolicyViolation> {
    match &policy.report_data {
        Some(expected) if expected != actual => Err(PolicyViolation::ReportDataMismatch {
            expected: hex_lower(expected),
            actual: hex_lower(actual),
        }),
        _ => Ok(()),
    }
}

/// Debug TDs are always rejected: the host can read their memory.
pub(crate) fn ensure_tdx_not_debug(td_attributes: u64) -> Result<(), PolicyViolation> {
    if td_attributes & tdx::TD_ATTR_DEBUG != 0 {
        return Err(PolicyViolation::DebugEnabled("TD_ATTRIBUTES.DEBUG is set"));
    }
    Ok(())
}

/// Debuggable SNP guests are always rejected.
pub(crate) fn ensure_snp_not_debug(policy_bits: u64) -> Result<(), PolicyViolation> {
    if policy_bits & snp::POLICY_DEBUG != 0 {
        return Err(PolicyViolation::DebugEnabled(
            "SNP guest POLICY.DEBUG is set",
        ));
    }
    Ok(())
}

/// Apply the policy's TCB statuses and grace window. Returns whether the status was accepted
/// only through the grace window: an `OutOfDate` platform whose matched TCB level is dated less
/// than `grace_days` before `now` (Intel dates a level by when it stopped being current).
pub(crate) fn evaluate_tcb_status(
    status: TcbStatus,
    tcb_date: Timestamp,
    policy: &Policy,
    now: Timestamp,
) -> Result<bool, PolicyViolation> {
    if policy.tcb.accepted.contains(&status) {
        return Ok(false);
    }
    let out_of_date = matches!(
        status,
        TcbStatus::OutOfDate | TcbStatus::OutOfDateConfigurationNeeded
    );
    match policy.tcb.grace_days {
        Some(days) if out_of_date => {
            if tcb_date.secs().saturating_add(u64::from(days) * DAY) >= now.secs() {
                Ok(true)
            } else {
                Err(PolicyViolation::OutOfDateBeyondGrace {
                    status: status.to_string(),
                    tcb_date: tcb_date.to_rfc3339(),
                    grace_days: days,
                })
            }
        }
        _ => Err(PolicyViolation::TcbStatusNotAccepted {
            status: status.to_string(),
            accepted: policy
                .tcb
                .accepted
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

impl Verifier {
    /// A verifier with the built-in trust anchors.
    pub fn new() -> Self {
        Verifier::default()
    }

    /// Verify `evidence` with its `endorsements` against `policy` at time `now`.
    pub fn verify(
        &self,
        evidence: &Evidence,
        endorsements: &Endorsements,
        policy: &Policy,
        now: Timestamp,
    ) -> Result<VerifiedEvidence, VerifyError> {
        let platform = evidence.platform();
        if !policy.allows(platform) {
            return Err(match platform {
                Platform::Simulated => PolicyViolation::SimulatedNotAllowed,
                other => PolicyViolation::PlatformNotAllowed(other),
            }
            .into());
        }
        let evidence_sha256: [u8; 32] = Sha256::digest(evidence.raw()).into();
        let mut verified = match evidence {
            Evidence::Tdx(q) => self.verify_tdx(q, endorsements, policy, now)?,
            Evidence::Snp(r) => self.verify_snp(r, endorsements, policy, now)?,
            Evidence::Simulated(s) => self.verify_simulated(s, policy, now)?,
        };
        verified.evidence_sha256 = evidence_sha256;
        check_report_data(policy, verified.report_data())?;
        Ok(verified)
    }

    fn verify_tdx(
        &self,
        quote: &TdxQuote,
        endorsements: &Endorsements,
        policy: &Policy,
        now: Timestamp,
    ) -> Result<VerifiedEvidence, VerifyError> {
        let collateral =
            endorsements
                .tdx_collateral
                .as_ref()
                .ok_or(VerifyError::MissingEndorsement {
                    platform: Platform::Tdx,
                    what: "Intel collateral (--collateral)",
                })?;
        let claims = tdx::verify_dcap(quote, collateral, now)?;
        let td10 = claims
            .report
            .as_td10()
            .ok_or_else(|| VerifyError::Dcap("quote body is not a TD report".into()))?;
        let (tee_tcb_svn2, mr_service_td) = match &claims.report {
            Report::TD15(r) => (Some(r.tee_tcb_svn2), Some(r.mr_service_td)),
            Report::TD15Ex(r) => (Some(r.base.tee_tcb_svn2), Some(r.base.mr_service_td)),
            _ => (None, None),
        };
        let m = TdxMeasurements {
            quote_version: quote.version(),
            mr_td: td10.mr_td,
            rtmr: [td10.rt_mr0, td10.rt_mr1, td10.rt_mr2, td10.rt_mr3],
            mr_config_id: td10.mr_config_id,
            mr_owner: td10.mr_owner,
            mr_owner_config: td10.mr_owner_config,
            td_attributes: td10.td_attributes,
            xfam: td10.xfam,
            mr_seam: td10.mr_seam,
            mr_signer_seam: td10.mr_signer_seam,
            tee_tcb_svn: td10.tee_tcb_svn,
            tee_tcb_svn2,
            mr_service_td,
            report_data: td10.report_data,
        };
        let attributes = u64::from_le_bytes(m.td_attributes);
        ensure_tdx_not_debug(attributes)?;

        // TCB status, with the bounded grace window for OutOfDate.
        let status = claims.tcb.status;
        let tcb_date = Timestamp(claims.platform.tcb_date_tag);
        let in_grace_window = evaluate_tcb_status(status, tcb_date, policy, now)?;
        if let Some(id) = claims.tcb.advisory_ids.iter().find(|id| {
            policy
                .tcb
                .rejected_advisories
                .iter()
                .any(|r| r.eq_ignore_ascii_case(id))
        }) {
            return Err(PolicyViolation::AdvisoryRejected(id.clone()).into());
        }
        let mut expires_at = Timestamp(claims.earliest_expiration_date);
        if let Some(days) = policy.tcb.collateral_max_age_days {
            let issued = tdx::collateral_dates(collateral)?.issued;
            let limit = issued.secs().saturating_add(u64::from(days) * DAY);
            if limit < now.secs() {
                return Err(PolicyViolation::CollateralTooOld {
                    issued: issued.to_rfc3339(),
                    max_age_days: days,
                }
                .into());
            }
            expires_at = expires_at.min(Timestamp(limit));
        }

        if let Some(rules) = &policy.tdx {
            if rules.require_sept_ve_disable && attributes & tdx::TD_ATTR_SEPT_VE_DISABLE == 0 {
                return Err(
                    PolicyViolation::AttributeRequired("TD_ATTRIBUTES.SEPT_VE_DISABLE").into(),
                );
            }
            if let Some(allowed) = &rules.mr_seam {
                allow_list("mr_seam", &m.mr_seam, allowed)?;
            }
            if let Some(min) = &rules.min_tee_tcb_svn {
                for (i, (have, need)) in m.tee_tcb_svn.iter().zip(min).enumerate() {
                    if have < need {
                        return Err(PolicyViolation::BelowMinimum {
                            field: format!("tee_tcb_svn[{i}]"),
                            value: have.to_string(),
                            minimum: need.to_string(),
                        }
                        .into());
                    }
                }
            }
            allow_list("mr_td", &m.mr_td, &rules.mr_td)?;
            if let Some(allowed) = &rules.mr_config_id {
                allow_list("mr_config_id", &m.mr_config_id, allowed)?;
            }
            if let Some(allowed) = &rules.rtmr0 {
                allow_list("rtmr0", &m.rtmr[0], allowed)?;
            }
            if let Some(allowed) = &rules.rtmr1 {
                allow_list("rtmr1", &m.rtmr[1], allowed)?;
            }
            if let Some(allowed) = &rules.rtmr2 {
                allow_list("rtmr2", &m.rtmr[2], allowed)?;
            }
            if let Some(sets) = &rules.rtmr {
                if !sets.iter().any(|set| set == &m.rtmr) {
                    return Err(PolicyViolation::NotAllowed {
                        field: "rtmr",
                        value: m
                            .rtmr
                            .iter()
                            .map(|r| hex_lower(r))
                            .collect::<Vec<_>>()
                            .join(","),
                    }
                    .into());
                }
            }
        }
        Ok(VerifiedEvidence {
            platform: Platform::Tdx,
            measurement_policy_applied: policy.pins_measurements(Platform::Tdx),
            measurements: Measurements::Tdx(m),
            tcb: TcbSummary {
                status: status.to_string(),
                advisory_ids: claims.tcb.advisory_ids.clone(),
                tcb_date: Some(claims.platform.tcb_level.tcb_date.clone()),
                in_grace_window,
            },
            verified_at: now,
            expires_at,
            evidence_sha256: [0; 32],
            trust_anchor: "Intel SGX Root CA".into(),
        })
    }

    fn verify_snp(
        &self,
        report: &SnpReport,
        endorsements: &Endorsements,
        policy: &Policy,
        now: Timestamp,
    ) -> Result<VerifiedEvidence, VerifyError> {
        let vek = endorsements
            .vcek
            .as_ref()
            .ok_or(VerifyError::MissingEndorsement {
                platform: Platform::Snp,
                what: "the VCEK or VLEK certificate (--vcek)",
            })?;
        let auth = snp::verify_snp(report, vek, &endorsements.cert_chain, now, &self.snp_chains)?;
        let r = &report.report;
        let policy_bits = report.policy_bits();
        ensure_snp_not_debug(policy_bits)?;
        let reported = TcbVersion::from(&r.reported_tcb);
        let m = SnpMeasurements {
            version: r.version,
            measurement: r.measurement,
            host_data: r.host_data,
            policy: format!("{policy_bits:#x}"),
            report_data: r.report_data,
            chip_id: r.chip_id,
            reported_tcb: reported,
            guest_svn: r.guest_svn,
            vmpl: r.vmpl,
            family_id: r.family_id,
            image_id: r.image_id,
            id_key_digest: r.id_key_digest,
            author_key_digest: r.author_key_digest,
            signing_key: auth.key_kind,
            product: auth.root,
        };
        if let Some(rules) = &policy.snp {
            if !rules.allow_smt && policy_bits & snp::POLICY_SMT != 0 {
                return Err(PolicyViolation::AttributeForbidden(
                    "SNP guest POLICY.SMT (SMT allowed)",
                )
                .into());
            }
            if !rules.allow_migration_agent && policy_bits & snp::POLICY_MIGRATE_MA != 0 {
                return Err(PolicyViolation::AttributeForbidden(
                    "SNP guest POLICY.MIGRATE_MA (migration agent allowed)",
                )
                .into());
            }
            if let Some(min) = &rules.min_tcb {
                let pairs = [
                    ("bootloader", reported.bootloader, min.bootloader),
                    ("tee", reported.tee, min.tee),
                    ("snp", reported.snp, min.snp),
                    ("microcode", reported.microcode, min.microcode),
                    ("fmc", reported.fmc.unwrap_or(0), min.fmc.unwrap_or(0)),
                ];
                for (name, have, need) in pairs {
                    if have < need {
                        return Err(PolicyViolation::BelowMinimum {
                            field: format!("reported_tcb.{name}"),
                            value: have.to_string(),
                            minimum: need.to_string(),
                        }
                        .into());
                    }
                }
            }
            if let Some(min) = rules.min_guest_svn {
                if m.guest_svn < min {
                    return Err(PolicyViolation::BelowMinimum {
                        field: "guest_svn".into(),
                        value: m.guest_svn.to_string(),
                        minimum: min.to_string(),
                    }
                    .into());
                }
            }
            allow_list("measurement", &m.measurement, &rules.measurement)?;
            if let Some(allowed) = &rules.host_data {
                allow_list("host_data", &m.host_data, allowed)?;
            }
            if let Some(allowed) = &rules.id_key_digest {
                allow_list("id_key_digest", &m.id_key_digest, allowed)?;
            }
            if let Some(allowed) = &rules.author_key_digest {
                allow_list("author_key_digest", &m.author_key_digest, allowed)?;
            }
        }
        Ok(VerifiedEvidence {
            platform: Platform::Snp,
            measurement_policy_applied: policy.pins_measurements(Platform::Snp),
            tcb: TcbSummary {
                status: reported.to_string(),
                advisory_ids: Vec::new(),
                tcb_date: None,
                in_grace_window: false,
            },
            measurements: Measurements::Snp(m),
            verified_at: now,
            expires_at: auth.expires,
            evidence_sha256: [0; 32],
            trust_anchor: format!("AMD ARK ({}) via {}", auth.root, auth.key_kind),
        })
    }

    fn verify_simulated(
        &self,
        evidence: &SimulatedEvidence,
        policy: &Policy,
        now: Timestamp,
    ) -> Result<VerifiedEvidence, VerifyError> {
        evidence.verify_signature()?;
        let c = &evidence.claims;
        if c.debug {
            return Err(PolicyViolation::DebugEnabled("simulated debug flag is set").into());
        }
        if let Some(rules) = &policy.simulated {
            allow_list("measurement", &c.measurement, &rules.measurement)?;
            if let Some(allowed) = &rules.config_digest {
                allow_list("config_digest", &c.config_digest, allowed)?;
            }
        }
        Ok(VerifiedEvidence {
            platform: Platform::Simulated,
            measurement_policy_applied: policy.pins_measurements(Platform::Simulated),
            measurements: Measurements::Simulated(SimulatedMeasurements {
                measurement: c.measurement,
                config_digest: c.config_digest,
                report_data: c.report_data,
            }),
            tcb: TcbSummary {
                status: "Simulated".into(),
                advisory_ids: Vec::new(),
                tcb_date: None,
                in_grace_window: false,
            },
            verified_at: now,
            expires_at: Timestamp(now.secs().saturating_add(SIMULATED_VALIDITY)),
            evidence_sha256: [0; 32],
            trust_anchor: "simulator root key (NOT CONFIDENTIAL)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";

    fn policy(tcb: &str) -> Policy {
        Policy::from_toml(&format!(
            "version = 1\nplatforms = [\"tdx\"]\n[tcb]\n{tcb}\n[tdx]\nmr_td = [\"{M}\"]\n"
        ))
        .expect("policy")
    }

    #[test]
    fn debug_bits_are_always_rejected() {
        assert!(ensure_tdx_not_debug(0).is_ok());
        assert!(ensure_tdx_not_debug(tdx::TD_ATTR_SEPT_VE_DISABLE).is_ok());
        assert!(matches!(
            ensure_tdx_not_debug(1),
            Err(PolicyViolation::DebugEnabled(_))
        ));
        assert!(matches!(
            ensure_tdx_not_debug(1 | tdx::TD_ATTR_SEPT_VE_DISABLE),
            Err(PolicyViolation::DebugEnabled(_))
        ));
        assert!(ensure_snp_not_debug(0x30000).is_ok());
        assert!(matches!(
            ensure_snp_not_debug(0x30000 | (1 << 19)),
            Err(PolicyViolation::DebugEnabled(_))
        ));
    }

    #[test]
    fn tcb_statuses_and_grace_window() {
        let day = 86_400;
        let now = Timestamp(1_750_000_000);
        let strict = policy("");
        assert_eq!(
            evaluate_tcb_status(TcbStatus::UpToDate, now, &strict, now),
            Ok(false)
        );
        for s in [
            TcbStatus::OutOfDate,
            TcbStatus::SWHardeningNeeded,
            TcbStatus::ConfigurationNeeded,
            TcbStatus::Revoked,
        ] {
            assert!(
                matches!(
                    evaluate_tcb_status(s, now, &strict, now),
                    Err(PolicyViolation::TcbStatusNotAccepted { .. })
                ),
                "{s}"
            );
        }
        let sw = policy("accepted_statuses = [\"UpToDate\", \"SWHardeningNeeded\"]");
        assert_eq!(
            evaluate_tcb_status(TcbStatus::SWHardeningNeeded, now, &sw, now),
            Ok(false)
        );
        let grace = policy("out_of_date_grace_days = 30");
        // Inside the window: accepted, and flagged as such.
        assert_eq!(
            evaluate_tcb_status(
                TcbStatus::OutOfDate,
                Timestamp(now.0 - 29 * day),
                &grace,
                now
            ),
            Ok(true)
        );
        assert_eq!(
            evaluate_tcb_status(
                TcbStatus::OutOfDateConfigurationNeeded,
                Timestamp(now.0 - 30 * day),
                &grace,
                now
            ),
            Ok(true)
        );
        // Past it: rejected.
        assert!(matches!(
            evaluate_tcb_status(
                TcbStatus::OutOfDate,
                Timestamp(now.0 - 31 * day),
                &grace,
                now
            ),
            Err(PolicyViolation::OutOfDateBeyondGrace { grace_days: 30, .. })
        ));
        // The window is for OutOfDate only.
        assert!(evaluate_tcb_status(TcbStatus::SWHardeningNeeded, now, &grace, now).is_err());
        assert!(evaluate_tcb_status(TcbStatus::Revoked, now, &grace, now).is_err());
    }
}
