//! Intel TDX DCAP quotes (v4, v5) and their verification through `dcap-qvl`.
//!
//! Spec: Intel TDX DCAP Quoting Library API, quote format appendix (`sgx_quote_4.h`,
//! `sgx_quote_5.h`). Decoding and the whole DCAP chain (PCK certificate chain to Intel's SGX root
//! CA, QE report signature and its binding to the attestation key, quote signature, TCB info and
//! QE identity, CRLs, TCB status and advisories) are `dcap-qvl`'s; this module adds strict framing
//! (no trailing bytes), maps its results onto our types and its errors onto [`VerifyError`].

use dcap_qvl::quote::{Quote, Report};
use dcap_qvl::verify::QuoteVerifier;
use dcap_qvl::{QuoteClaims, QuoteCollateralV3, QuotePolicy};

use crate::bytes::{le_u16_at, le_u32_at};
use crate::error::{ParseError, VerifyError};
use crate::time::Timestamp;

/// TEE type of a TDX quote header.
pub const TEE_TYPE_TDX: u32 = 0x0000_0081;
/// Attestation key type ECDSA-256-with-P-256.
const ATT_KEY_TYPE_ECDSA_P256: u16 = 2;
/// Intel's QE vendor ID `939a7233-f79c-4ca9-940a-0db3957f0607`.
const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];

/// Certification data type of a v4/v5 quote's signature data.
const QE_REPORT_CERT_DATA: u16 = 6;

/// TD_ATTRIBUTES bit 0: the TD is debuggable (the host can read its memory).
pub const TD_ATTR_DEBUG: u64 = 1 << 0;
/// TD_ATTRIBUTES bit 28: SEPT #VE disabled (the guest cannot be made to take EPT-violation #VE).
pub const TD_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;

/// The TD report body layout a quote carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TdBodyType {
    /// TD 1.0 (quote v4, or v5 body type 2), 584 bytes.
    Td10,
    /// TD 1.5 (quote v5 body type 3), 648 bytes.
    Td15,
    /// TD 1.5 "ex" (quote v5 body type 4), 885 bytes.
    Td15Ex,
}

/// A decoded TDX quote. Fields are read only through verification.
#[derive(Clone, Debug)]
pub struct TdxQuote {
    raw: Vec<u8>,
    pub(crate) quote: Quote,
    pub(crate) body_type: TdBodyType,
}

impl TdxQuote {
    /// Decode a quote, rejecting anything but a well-framed TDX v4/v5 quote (followed at most by
    /// zero padding).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, ParseError> {
        const WHAT: &str = "TDX quote";
        if raw.len() < 48 {
            return Err(ParseError::Truncated {
                what: WHAT,
                need: 48,
                have: raw.len(),
            });
        }
        let quote = Quote::parse(raw).map_err(|e| ParseError::malformed(WHAT, e.to_string()))?;
        let header = &quote.header;
        if !matches!(header.version, 4 | 5) {
            return Err(ParseError::UnsupportedVersion {
                what: WHAT,
                version: header.version.into(),
            });
        }
        if header.tee_type != TEE_TYPE_TDX {
            return Err(ParseError::malformed(
                WHAT,
                format!("TEE type {:#x} is not TDX", header.tee_type),
            ));
        }
        if header.attestation_key_type != ATT_KEY_TYPE_ECDSA_P256 {
            return Err(ParseError::malformed(
                WHAT,
                format!(
                    "attestation key type {} is not ECDSA P-256",
                    header.attestation_key_type
                ),
            ));
        }
        if header.qe_vendor_id != INTEL_QE_VENDOR_ID {
            return Err(ParseError::malformed(WHAT, "QE vendor ID is not Intel's"));
        }
        let body_type = match &quote.report {
            Report::TD10(_) => TdBodyType::Td10,
            Report::TD15(_) => TdBodyType::Td15,
            Report::TD15Ex(_) => TdBodyType::Td15Ex,
            Report::SgxEnclave(_) => {
                return Err(ParseError::malformed(
                    WHAT,
                    "body is an SGX enclave report, not a TD report",
                ))
            }
        };
        // Exact framing: signed part, u32 signature-data length, signature data, nothing after.
        let signed = quote.signed_length();
        let sig_len = le_u32_at(raw, signed).ok_or(ParseError::Truncated {
            what: WHAT,
            need: signed + 4,
            have: raw.len(),
        })? as usize;
        let total = signed + 4 + sig_len;
        // The signature data is ECDSA signature (64) ‖ attestation key (64) ‖ certification data
        // (u16 type, u32 size, data): its declared length must be exactly that.
        let cert_header = signed + 4 + 128;
        let cert_size =
            le_u32_at(raw, cert_header + 2)
                .map(|v| v as usize)
                .ok_or(ParseError::Truncated {
                    what: WHAT,
                    need: cert_header + 6,
                    have: raw.len(),
                })?;
        let cert_type = le_u16_at(raw, cert_header);
        if cert_type != Some(QE_REPORT_CERT_DATA) {
            return Err(ParseError::malformed(
                WHAT,
                format!(
                    "certification data type {cert_type:?} is not QE report certification data (6)"
                ),
            ));
        }
        if sig_len != 128 + 6 + cert_size {
            return Err(ParseError::malformed(
                WHAT,
                format!(
                    "signature data length {sig_len} does not match its content ({})",
                    128 + 6 + cert_size
                ),
            ));
        }
        if raw.len() < total {
            return Err(ParseError::Truncated {
                what: WHAT,
                need: total,
                have: raw.len(),
            });
        }
        // Quote-generation services hand out quotes in fixed-size buffers, so real quotes often
        // end in zero padding (the dcap-qvl and tdx-quote samples carry 70 bytes of it). Zero
        // padding is accepted; any non-zero byte after the signature data is not.
        if let Some(extra) = raw.get(total..) {
            if extra.iter().any(|b| *b != 0) {
                return Err(ParseError::TrailingBytes {
                    what: WHAT,
                    extra: extra.len(),
                });
            }
        }
        Ok(TdxQuote {
            raw: raw.to_vec(),
            quote,
            body_type,
        })
    }

    /// The bytes the quote was decoded from.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Quote format version (4 or 5).
    pub fn version(&self) -> u16 {
        self.quote.header.version
    }

    /// The TD report body layout.
    pub fn body_type(&self) -> TdBodyType {
        self.body_type
    }

    /// The RTMRs as the quote states them, NOT verified: only for checking an event log against
    /// a quote. Verified values come from [`crate::VerifiedEvidence`] alone.
    pub fn unverified_rtmrs(&self) -> [[u8; 48]; 4] {
        match self.quote.report.as_td10() {
            Some(r) => [r.rt_mr0, r.rt_mr1, r.rt_mr2, r.rt_mr3],
            None => [[0; 48]; 4],
        }
    }

    /// The FMSPC and CA of the PCK certificate embedded in the quote, for fetching collateral.
    pub fn pck_chain_pem(&self) -> Result<&[u8], ParseError> {
        self.quote
            .raw_cert_chain()
            .map_err(|e| ParseError::malformed("TDX quote certification data", e.to_string()))
    }
}

/// Parse Intel collateral in the PCS / `dcap-qvl` JSON format.
pub fn parse_collateral(json: &[u8]) -> Result<QuoteCollateralV3, ParseError> {
    serde_json::from_slice(json)
        .map_err(|e| ParseError::Collateral(format!("not dcap-qvl/PCS collateral JSON: {e}")))
}

/// Dates of the signed JSON collateral (TCB info and QE identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollateralDates {
    /// The older of the two `issueDate`s.
    pub issued: Timestamp,
    /// The earlier of the two `nextUpdate`s: after it the collateral is stale.
    pub next_update: Timestamp,
}

/// Read the issue and next-update dates of Intel collateral.
pub fn collateral_dates(collateral: &QuoteCollateralV3) -> Result<CollateralDates, ParseError> {
    fn dates(what: &str, json: &str) -> Result<(Timestamp, Timestamp), ParseError> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| ParseError::Collateral(format!("{what}: {e}")))?;
        let field = |name: &str| -> Result<Timestamp, ParseError> {
            let date = value
                .get(name)
                .and_then(|d| d.as_str())
                .ok_or_else(|| ParseError::Collateral(format!("{what} has no {name}")))?;
            Timestamp::from_rfc3339_field(what, date)
        };
        Ok((field("issueDate")?, field("nextUpdate")?))
    }
    let (tcb_issued, tcb_next) = dates("TCB info", &collateral.tcb_info)?;
    let (qe_issued, qe_next) = dates("QE identity", &collateral.qe_identity)?;
    Ok(CollateralDates {
        issued: tcb_issued.min(qe_issued),
        next_update: tcb_next.min(qe_next),
    })
}

/// Run the full DCAP verification at `now`, with no TCB policy applied yet.
pub(crate) fn verify_dcap(
    quote: &TdxQuote,
    collateral: &QuoteCollateralV3,
    now: Timestamp,
) -> Result<QuoteClaims, VerifyError> {
    QuoteVerifier::new_prod()
        .with_config::<dcap_qvl::configs::RingConfig>()
        .verify_with_policy(
            quote.raw(),
            collateral,
            now.secs(),
            &QuotePolicy::claims_only(now.secs()),
        )
        .map_err(|e| classify_dcap_error(&format!("{e:#}")))
}

/// Map `dcap-qvl`'s (string) errors onto typed ones where the distinction matters to a caller.
fn classify_dcap_error(message: &str) -> VerifyError {
    let lower = message.to_ascii_lowercase();
    let text = lowercase_first(message);
    if lower.contains("no matching tcb level") {
        VerifyError::NoMatchingTcbLevel
    } else if lower.contains("expired")
        || lower.contains("in the future")
        || lower.contains("not yet valid")
    {
        VerifyError::CollateralNotValidAt(text)
    } else {
        VerifyError::Dcap(text)
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        // Keep acronyms ("TCBInfo", "QE") as they are.
        (Some(c), Some(d)) if d.is_lowercase() => c
            .to_lowercase()
            .chain(std::iter::once(d))
            .chain(chars)
            .collect(),
        _ => s.to_string(),
    }
}
